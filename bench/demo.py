#!/usr/bin/env python
"""``make demo``: index a folder of images with the fastimg CLI, then query it by image.

Usage: ``python bench/demo.py [DIR]``

DIR defaults to ``../shared/data/corel1k`` (beside the repository) when it exists,
else to scikit-image's bundled sample photos. The index goes into a temporary
directory that is deleted afterwards. Both steps run the real command line
(``python -m fastimg index ...`` then ``python -m fastimg query <first image> -k 5``)
in a subprocess, and their output is shown as is. Exits with the CLI's status.
"""
from __future__ import annotations

import importlib.util
import os
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
COREL = REPO.parent / "shared" / "data" / "corel1k"
IMAGE_EXTS = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"}


def default_dir() -> Path | None:
    if COREL.is_dir():
        return COREL
    spec = importlib.util.find_spec("skimage")
    if spec is not None and spec.origin:
        data = Path(spec.origin).parent / "data"
        if data.is_dir():
            return data
    return None


def first_image(root: Path) -> Path | None:
    if root.is_file():
        return root
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(filenames):
            if Path(name).suffix.lower() in IMAGE_EXTS:
                return Path(dirpath) / name
    return None


def fastimg(*args: str) -> int:
    cmd = [sys.executable, "-m", "fastimg", *args]
    print("$ fastimg " + " ".join(shlex.quote(a) for a in args), flush=True)
    return subprocess.run(cmd).returncode


def main(argv: list[str]) -> int:
    if len(argv) > 1 or (argv and argv[0] in ("-h", "--help")):
        print(__doc__)
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    root = Path(argv[0]) if argv else default_dir()
    if root is None:
        print("demo: no folder given, ../shared/data/corel1k not found and scikit-image's sample "
              "images not installed; run `make demo DIR=/path/to/images`", file=sys.stderr)
        return 1
    if not root.exists():
        print(f"demo: {root}: no such file or directory", file=sys.stderr)
        return 1
    query = first_image(root)
    if query is None:
        print(f"demo: no image files ({', '.join(sorted(IMAGE_EXTS))}) under {root}", file=sys.stderr)
        return 1
    with tempfile.TemporaryDirectory(prefix="fastimg-demo-") as tmp:
        index = os.path.join(tmp, "demo.fastimg")
        rc = fastimg("index", str(root), "--index", index)
        if rc != 0:
            print(f"demo: indexing {root} failed (exit status {rc}); see the error above", file=sys.stderr)
            return rc
        print(flush=True)
        rc = fastimg("query", str(query), "--index", index, "-k", "5")
        if rc != 0:
            print(f"demo: the query failed (exit status {rc}); see the error above", file=sys.stderr)
        return rc


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
