"""``fastimg check`` and ``fastimg relocate``: keeping an index sound and pointed at its files."""
from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from fastimg.cli.common import (
    EXIT_ERROR,
    EXIT_OK,
    INDEX_RULE,
    PROG,
    CommandError,
    add_command,
    emit_json,
    index_path,
    open_index,
    shown,
)

__all__ = ["add_check_parser", "add_relocate_parser", "cmd_check", "cmd_relocate"]


# --------------------------------------------------------------------------- #
# parsers
# --------------------------------------------------------------------------- #

def add_check_parser(sub: Any, ix: argparse.ArgumentParser) -> None:
    """``fastimg check [--repair]``."""
    p = add_command(sub, "check", "verify the index's files (and repair its caches)",
                    "Verify every file of the index against its metadata and checksums: the manifest,\n"
                    "the SQLite database (integrity_check, the committed rows), the vector file\n"
                    "(length, finite values), the caches (CRC-32), the HNSW graph, the whitening, and\n"
                    "what an interrupted write left behind. Prints one line per finding:\n"
                    "'problem:' (something is damaged) or 'note:' (harmless: leftovers of a killed\n"
                    "writer, files that moved, an outdated version), then a summary.",
                    f"""\
examples:
  fastimg check
  fastimg check --repair             # drop/rebuild caches, rebuild the graph, re-fit the whitening
  fastimg check --json | jq .ok

--repair opens the index for writing and never touches committed rows: it removes
bad or stale caches and leftovers, rebuilds the HNSW graph and re-fits the whitening
with their recorded parameters. A damaged database or vector file stays a problem.
--json prints {{"path", "ok", "rows", "live", "caches", "stale_rows",
  "missing_files": {{"checked", "missing", "examples"}},
  "findings": [{{"problem", "file", "what", "repair", "repaired"}}, ...]}}.
A problem found (with --repair: one left) makes the exit status 1, as an error does;
notes do not count.

{INDEX_RULE}""", [ix])
    p.add_argument("--repair", action="store_true",
                   help="repair what can be repaired without touching committed rows")
    p.add_argument("--json", action="store_true", help="print the report as one JSON document")
    p.add_argument("-q", "--quiet", action="store_true", help="print problems only (no notes, no summary)")
    p.set_defaults(func=cmd_check)


def add_relocate_parser(sub: Any, ix: argparse.ArgumentParser) -> None:
    """``fastimg relocate OLD NEW``."""
    p = add_command(sub, "relocate", "tell the index its files moved",
                    "The indexed files that were under folder OLD are now under folder NEW: rewrite\n"
                    "their stored paths (one transaction; nothing on disk is moved, ids, vectors and\n"
                    "metadata are kept). Use it after moving or renaming a photo folder, or after\n"
                    "copying an index whose paths are relative (`fastimg index --relative-to`) to a\n"
                    "place where they no longer resolve.",
                    f"""\
examples:
  fastimg relocate /media/old-disk/photos /media/new-disk/photos
  fastimg relocate ~/Pictures/2019 ~/Archive/2019 -i /data/photos.fastimg

`fastimg info` and `fastimg query` warn when indexed files no longer exist.

{INDEX_RULE}""", [ix])
    p.add_argument("old", metavar="OLD_PREFIX", help="the folder the files were in")
    p.add_argument("new", metavar="NEW_PREFIX", help="the folder they are in now")
    p.add_argument("-q", "--quiet", action="store_true", help="no summary")
    p.set_defaults(func=cmd_relocate)


# --------------------------------------------------------------------------- #
# commands
# --------------------------------------------------------------------------- #

def cmd_check(args: argparse.Namespace) -> int:
    from fastimg.index.check import check_index

    path = index_path(args)
    report = check_index(path, repair=args.repair)
    if args.json:
        emit_json(report.to_dict())
        return EXIT_OK if report.ok else EXIT_ERROR
    for f in report.findings:
        if args.quiet and not (f.problem and not f.repaired):
            continue
        kind = "problem" if f.problem else "note"
        tail = ""
        if f.repaired:
            tail = f" [repaired: {f.repair}]"
        elif f.repair and not args.repair:
            tail = f" (--repair: {f.repair})"
        print(shown(f"{kind}: {f.file}: {f.what}{tail}"))
    if not args.quiet:
        left = len(report.problems)
        fixed = sum(1 for f in report.findings if f.repaired)
        notes = sum(1 for f in report.findings if not f.problem)
        status = "ok" if report.ok else f"{left} problem{'s' if left != 1 else ''}"
        print(shown(f"{status}: {path}: {report.rows} rows ({report.live} live), {report.caches} cache files, "
                    f"{notes} note{'s' if notes != 1 else ''}" + (f", {fixed} repaired" if fixed else "")))
    return EXIT_OK if report.ok else EXIT_ERROR


def cmd_relocate(args: argparse.Namespace) -> int:
    path = index_path(args)
    old = os.path.abspath(os.path.expanduser(args.old))
    new = os.path.abspath(os.path.expanduser(args.new))
    if not os.path.isdir(new):
        raise CommandError(f"{new}: no such folder (relocate tells the index where its files are now; "
                           "move them first)")
    with open_index(args, "a") as index:
        n = index.relocate(old, new)
        missing = index.missing_files(warn=False)
    if n == 0:
        sys.stderr.write(shown(f"{PROG}: warning: no indexed file was under {old}") + "\n")
    elif missing["missing"]:
        sys.stderr.write(shown(f"{PROG}: warning: {missing['missing']} of {missing['checked']} sampled indexed "
                               f"files still do not exist (e.g. {missing['examples'][0]})") + "\n")
    if not args.quiet:
        print(shown(f"relocated {n} file{'s' if n != 1 else ''} from {old} to {new} in {path}"))
    return EXIT_OK
