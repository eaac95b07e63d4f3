"""The ``fastimg`` command line: parses arguments and prints; never computes.

One module per group of commands, each adding its parsers and holding its
``cmd_*`` functions:

* :mod:`fastimg.cli.indexing` - ``index``, ``info``, ``remove``, ``compact``;
* :mod:`fastimg.cli.sharded` - ``index --shards`` (the work: :mod:`fastimg.distributed`);
* :mod:`fastimg.cli.maintenance` - ``check``, ``relocate``;
* :mod:`fastimg.cli.searching` - ``query``, ``dedup`` (the algorithm: :mod:`fastimg.dedup`);
* :mod:`fastimg.cli.evaluating` - ``descriptors``, ``eval`` (the measures: :mod:`fastimg.eval`);
* :mod:`fastimg.cli.serving` - ``serve`` (the HTTP service: :mod:`fastimg.serve`);
* :mod:`fastimg.cli.learning` - ``learn`` (the method: :mod:`fastimg.learn`);
* :mod:`fastimg.cli.common` - argument types, parser pieces, index location, output.

Every command imports the library modules it needs inside its own function, so
``fastimg --help`` (and every ``--help``) starts without importing NumPy, Numba,
OpenCV or hnswlib.

Exit status: 0 success, 1 error (one line ``fastimg: error: ...`` on stderr, no
traceback unless ``--debug``), 2 usage error (argparse's usage line and message).
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import Callable

from fastimg._version import __version__
from fastimg.cli.common import (
    EXIT_CODES,
    EXIT_ERROR,
    EXIT_OK,
    EXIT_USAGE,
    INDEX_RULE,
    PROG,
    CommandError,
    UsageError,
    common_options,
    index_option,
)
from fastimg.cli.evaluating import add_descriptors_parser, add_eval_parser, wants_eval
from fastimg.cli.indexing import add_compact_parser, add_index_parser, add_info_parser, add_remove_parser
from fastimg.cli.learning import add_learn_parser
from fastimg.cli.maintenance import add_check_parser, add_relocate_parser
from fastimg.cli.searching import add_dedup_parser, add_query_parser
from fastimg.cli.serving import add_serve_parser

__all__ = ["main", "build_parser", "EXIT_OK", "EXIT_ERROR", "EXIT_USAGE", "UsageError", "CommandError"]

MAIN_EPILOG = f"""\
examples:
  fastimg index ~/Pictures                  build or update the index
  fastimg query photo.jpg -k 5              the 5 images most similar to photo.jpg
  fastimg query a.jpg b.jpg --json | jq .   machine-readable results
  fastimg query photo.jpg --html out.html   a page of thumbnails
  fastimg info                              what is in the index
  fastimg check                             verify the index's files
  fastimg relocate /old/photos /new/photos  the photos moved
  fastimg dedup                             groups of near-duplicate images
  fastimg serve                             a search page and an HTTP API on 127.0.0.1:8000

{INDEX_RULE}
{EXIT_CODES}
"""


def build_parser(*, with_eval: bool = False) -> argparse.ArgumentParser:
    """Build the argument parser.

    ``with_eval=True`` adds the real ``eval`` command (it imports the evaluation
    module, so it is only done when ``eval`` is the command being run);
    otherwise ``eval`` is a light placeholder entry.
    """
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Search a collection of images by image.",
        epilog=MAIN_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        parents=[common_options(debug_default=False)],
    )
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", title="commands")
    ix = index_option()
    add_index_parser(sub, ix)
    add_query_parser(sub, ix)
    add_info_parser(sub, ix)
    add_remove_parser(sub, ix)
    add_compact_parser(sub, ix)
    add_check_parser(sub, ix)
    add_relocate_parser(sub, ix)
    add_dedup_parser(sub, ix)
    add_serve_parser(sub, ix)
    add_learn_parser(sub, ix)
    add_descriptors_parser(sub)
    add_eval_parser(sub, with_eval)
    return parser


# --------------------------------------------------------------------------- #
# entry point
# --------------------------------------------------------------------------- #

def error_line(exc: BaseException) -> str:
    """The one-line message printed after ``fastimg: error:`` for an exception."""
    from fastimg.errors import FastimgError, IndexNotFoundError

    if isinstance(exc, IndexNotFoundError):
        msg = str(exc)
        if "fastimg index" not in msg:
            msg += " (create one with `fastimg index DIR`)"
        return msg
    if isinstance(exc, (FastimgError, CommandError)):
        return str(exc)
    if isinstance(exc, ModuleNotFoundError) and (exc.name or "").startswith("fastimg"):
        return f"this command needs {exc.name}, which is not available yet ({exc})"
    if isinstance(exc, OSError):
        if exc.filename is not None and exc.strerror:
            return f"{exc.filename}: {exc.strerror}"
        return str(exc) or type(exc).__name__
    if isinstance(exc, (ValueError, KeyError)):
        return str(exc).strip("'\"") or type(exc).__name__
    return f"unexpected {type(exc).__name__}: {exc} (run with --debug for the traceback)"


def main(argv: list[str] | None = None) -> int:
    """Run the ``fastimg`` command line; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(with_eval=wants_eval(argv))
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version (0) and usage errors (2)
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    if args.command is None:
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    func: Callable[[argparse.Namespace], int] = args.func
    if not args.debug:  # OpenCV's native warnings (e.g. on a skipped corrupt file) are noise here
        os.environ.setdefault("OPENCV_LOG_LEVEL", "ERROR")
    else:  # the library's log (which file was skipped and why, codec messages) on stderr
        import logging

        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(name)s: %(levelname)s: %(message)s"))
        log = logging.getLogger("fastimg")
        log.addHandler(handler)
        log.setLevel(logging.DEBUG)
    try:
        rc = func(args)
        sys.stdout.flush()
        return EXIT_OK if rc is None else int(rc)
    except UsageError as exc:
        sub = parser._subparsers._group_actions[0].choices[args.command]  # type: ignore[union-attr]
        sub.print_usage(sys.stderr)
        sys.stderr.write(f"{sub.prog}: error: {exc}\n")
        return EXIT_USAGE
    except KeyboardInterrupt:
        if args.debug:
            raise
        sys.stderr.write(f"{PROG}: interrupted\n")
        return 130
    except BrokenPipeError:
        # e.g. `fastimg query ... | head -1`: stop quietly, silence the final flush
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_ERROR
    except Exception as exc:
        if args.debug:
            raise
        from fastimg.errors import escape_text

        sys.stderr.write(f"{PROG}: error: {escape_text(error_line(exc))}\n")  # one line, whatever the paths
        return EXIT_ERROR
