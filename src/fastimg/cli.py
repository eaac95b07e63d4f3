"""The ``fastimg`` command line (placeholder until the CLI issue lands)."""
from __future__ import annotations

import argparse
import sys

from fastimg._version import __version__


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="fastimg", description="Search a collection of images by image.")
    parser.add_argument("--version", action="version", version=f"fastimg {__version__}")
    parser.parse_args(argv)
    parser.print_help()
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
