"""What every ``fastimg`` command shares: argument types, parser pieces, the index
location, JSON output, errors and the progress bar.

Standard library only at import time (``fastimg --help`` stays light); the
library modules are imported inside the functions that need them.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import sys
from typing import Any, Sequence

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2

PROG = "fastimg"

INDEX_RULE = (
    "index location (the same rule for every command, fastimg.index.default_index_path):\n"
    "  --index PATH, else $FASTIMG_INDEX, else $FASTIMG_DATADIR/index, else\n"
    "  $XDG_DATA_HOME/fastimg/index (~/.local/share/fastimg/index; macOS:\n"
    "  ~/Library/Application Support/fastimg/index). `fastimg info` prints the path."
)

EXIT_CODES = "exit status: 0 ok, 1 error (one line on stderr), 2 usage error."


class UsageError(Exception):
    """A bad combination of arguments found after parsing (exit status 2)."""


class CommandError(Exception):
    """An error detected by the CLI itself (exit status 1)."""


# --------------------------------------------------------------------------- #
# argument types
# --------------------------------------------------------------------------- #

def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer; got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer; got {value}")
    return value


def finite_float(text: str) -> float:
    """argparse type: a finite number."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number; got {text!r}") from None
    if value != value or value in (float("inf"), float("-inf")):
        raise argparse.ArgumentTypeError(f"expected a finite number; got {text!r}")
    return value


# --------------------------------------------------------------------------- #
# parser pieces
# --------------------------------------------------------------------------- #

def common_options(debug_default: Any = argparse.SUPPRESS) -> argparse.ArgumentParser:
    """Options accepted both before and after the command name."""
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--debug", action="store_true", default=debug_default,
                   help="show the Python traceback on errors, fastimg's debug log and "
                        "OpenCV's own messages on stderr")
    return p


def index_option() -> argparse.ArgumentParser:
    """The ``-i/--index PATH`` option (a parent parser)."""
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("-i", "--index", metavar="PATH", default=None,
                   help="index directory (default: $FASTIMG_INDEX, else see 'index location' below)")
    return p


def add_command(subparsers: Any, name: str, help: str, description: str, epilog: str,
                parents: Sequence[argparse.ArgumentParser] = ()) -> argparse.ArgumentParser:
    """A sub-command parser: ``--debug``, the epilog followed by the exit codes."""
    return subparsers.add_parser(
        name, help=help, description=description,
        epilog=epilog.rstrip() + "\n\n" + EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        parents=[common_options(), *parents],
    )


# --------------------------------------------------------------------------- #
# the index, metrics, descriptors
# --------------------------------------------------------------------------- #

def index_path(args: argparse.Namespace) -> str:
    """--index, else FASTIMG_INDEX, else the library's documented default."""
    if getattr(args, "index", None):
        return os.path.abspath(os.path.expanduser(args.index))
    from fastimg.index import default_index_path

    return os.path.abspath(os.fspath(default_index_path()))


def open_index(args: argparse.Namespace, mode: str = "r", *, sharded: bool = False) -> Any:
    """``Index.open`` of :func:`index_path`; with ``sharded``, a sharded root is
    opened as a :class:`fastimg.distributed.ShardedIndex` (on ``--scheduler``'s
    cluster when given), otherwise it is an error naming the command."""
    from fastimg.distributed import is_sharded
    from fastimg.index import Index

    path = index_path(args)
    if is_sharded(path):
        if not sharded:
            raise CommandError(f"{path} is a sharded index: `{PROG} {args.command}` works on a single index "
                               f"(update the shards with `{PROG} index DIR... --index {path}`)")
        from fastimg.distributed import ShardedIndex

        return ShardedIndex.open(path, client=getattr(args, "scheduler", None))
    return Index.open(path, mode=mode)


def add_scheduler_argument(p: argparse.ArgumentParser) -> None:
    """The ``--scheduler ADDRESS|local`` option (sharded indexes, the ``dask`` extra)."""
    p.add_argument("--scheduler", metavar="ADDRESS", default=None,
                   help="sharded index: run on this Dask scheduler (tcp://host:8786), or 'local' for a "
                        "local cluster of worker processes (default: in this process; needs fastimg[dask])")


def check_metric(name: str | None) -> str | None:
    """The canonical metric name (usage error if unknown)."""
    if name is None:
        return None
    from fastimg.metrics import get_metric, metric_names

    try:
        return get_metric(name).name
    except ValueError:
        raise UsageError(f"unknown metric {name!r}; choose one of: {', '.join(metric_names())}") from None


def check_descriptor(name: str | None) -> None:
    """Usage error if ``name`` is not a known descriptor."""
    if name is None:
        return
    from fastimg.errors import DescriptorError
    from fastimg.features.registry import get_descriptor

    try:
        get_descriptor(name)
    except DescriptorError as exc:
        raise UsageError(f"{exc} (see `fastimg descriptors`)") from None


# --------------------------------------------------------------------------- #
# output
# --------------------------------------------------------------------------- #

def emit_json(doc: Any) -> None:
    """One JSON document on standard output.

    Text is UTF-8; a file name that is not UTF-8 is a ``str`` with surrogate
    escapes (``os.fsdecode``), written as JSON's ``\\udcXX`` escapes (what
    ``json.loads`` gives back, ``os.fsencode`` turns into the name's bytes)."""
    text = json.dumps(doc, indent=2, ensure_ascii=False, default=json_default)
    sys.stdout.write(_SURROGATE.sub(lambda m: f"\\u{ord(m.group()):04x}", text))
    sys.stdout.write("\n")


_SURROGATE = re.compile("[\ud800-\udfff]")


def shown(text: Any) -> str:
    """A path (or any text) for a line of output: control characters and bytes of
    a name that are not UTF-8 escaped (``\\n``, ``\\xe9``; :func:`fastimg.errors.escape_text`)."""
    from fastimg.errors import escape_text

    return escape_text(os.fspath(text) if hasattr(text, "__fspath__") else str(text))


def json_default(obj: Any) -> Any:
    """JSON form of NumPy scalars/arrays, paths and sets (without importing NumPy)."""
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if hasattr(obj, "__fspath__"):
        return os.fspath(obj)
    if isinstance(obj, (set, frozenset, tuple)):
        return list(obj)
    return str(obj)


def progress_bar(desc: str, enabled: bool) -> tuple[Any, Any]:
    """A ``progress(done, total)`` callback drawing a tqdm bar on stderr, and an
    object whose ``close()`` removes the bar (``(False, None)`` when disabled)."""
    if not enabled:
        return False, None

    class _Bar:
        bar: Any = None

        def __call__(self, done: int, total: int | None = None, *_: Any) -> None:
            if self.bar is None:
                from tqdm import tqdm

                try:  # a terminal that reports 0 columns would get an empty bar
                    size = os.get_terminal_size(sys.stderr.fileno())
                    sized = size.columns > 0 and size.lines > 0
                except OSError:
                    sized = False
                self.bar = tqdm(total=total, desc=desc, unit="img", file=sys.stderr, dynamic_ncols=sized,
                                ncols=None if sized else 80, nrows=None if sized else 24, leave=False,
                                mininterval=0.2)
            elif total is not None and total != self.bar.total:
                self.bar.total = total
            self.bar.update(max(0, done - self.bar.n))

        def close(self) -> None:
            if self.bar is not None:
                self.bar.refresh()  # show the final count even if the last update was throttled
                self.bar.close()

    bar = _Bar()
    return bar, bar


def missing_files(index: Any, ids: Any = None) -> dict:
    """``Index.missing_files`` (without its log warning: the CLI prints its own line);
    ``{}`` for a sharded root (its shards are indexes of their own: `fastimg info -i
    ROOT/shard-NNN` checks one)."""
    if not hasattr(index, "missing_files"):
        return {}
    return index.missing_files(ids, warn=False)


def warn_missing(missing: dict, what: str) -> None:
    """One ``fastimg: warning:`` line when some indexed files do not exist."""
    if missing.get("missing"):
        sys.stderr.write(shown(
            f"{PROG}: warning: {missing['missing']} of {missing['checked']} {what} do not exist "
            f"(e.g. {missing['examples'][0]}): if the files moved, run `fastimg relocate OLD NEW`") + "\n")
