"""``fastimg index``, ``info``, ``remove`` and ``compact``: building and keeping the index."""
from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Any

from fastimg.cli.common import (
    EXIT_OK,
    INDEX_RULE,
    PROG,
    CommandError,
    add_command,
    add_scheduler_argument,
    check_descriptor,
    check_metric,
    emit_json,
    index_path,
    missing_files,
    open_index,
    positive_int,
    progress_bar,
    shown,
    warn_missing,
)

__all__ = ["add_index_parser", "add_info_parser", "add_remove_parser", "add_compact_parser",
           "cmd_index", "cmd_info", "cmd_remove", "cmd_compact"]


# --------------------------------------------------------------------------- #
# parsers
# --------------------------------------------------------------------------- #

def add_index_parser(sub: Any, ix: argparse.ArgumentParser) -> None:
    """``fastimg index DIR...``."""
    p = add_command(sub, "index", "create or update an index from folders of images",
                    "Create the index (first run) or update it incrementally: new files are added,\n"
                    "changed files re-described, deleted files removed. Ends with a summary.",
                    f"""\
examples:
  fastimg index ~/Pictures
  fastimg index photos/ scans/ --index /data/photos.fastimg --descriptor hsv72
  fastimg index photos/ --exclude '*/thumbnails/*' --exclude '*.gif' --ann
  fastimg index photos/ -q --json          # no progress bar; the summary as JSON
  fastimg index photos/ --whiten 128       # then fit PCA-whitening (128 dims) on the index
  fastimg index photos/ --shards 8 --scheduler tcp://sched:8786   # shards built on a Dask cluster

{INDEX_RULE}
An existing index keeps the descriptor and metric it was created with; asking for
another with --descriptor/--metric is an error (use a new --index). When fastimg's
version of the descriptor changed since the index was made, the indexed files are
described again first (one line says so).

Paths: a new index records the folder that contains it as an absolute path and
stores file paths relative to it (or absolute), so the index can be copied or moved
anywhere on the machine. --relative-to DIR records DIR relative to the index
instead: a collection moved together with its index (e.g. the index inside the
photo folder) keeps working. If the photos move on their own: `fastimg relocate`.
A file name that is not UTF-8 or holds control characters is indexed like any
other and shown escaped (\\xe9, \\n).
--precision sets what exact searches read (new or existing index; stored in it):
float32 rows, or float16 / int8 copies of them (2x / 4x fewer bytes, the same
results: candidates are certified and re-scored from the float32 vectors); auto
picks int8 from about 4 M values (images x dimensions). Reduced precisions need an
inner-product metric (pearson, bhattacharyya, cosine, l2). `fastimg info` shows
the bytes of each.""", [ix])
    p.add_argument("dirs", nargs="+", metavar="DIR", help="folders (or image files) to index")
    p.add_argument("--descriptor", metavar="NAME", default=None,
                   help="descriptor for a new index (see `fastimg descriptors`)")
    p.add_argument("--metric", metavar="NAME", default=None,
                   help="default metric of a new index (default: the descriptor's)")
    p.add_argument("--precision", choices=("float32", "float16", "int8", "auto"), default=None,
                   help="what exact searches read (default: float32 for a new index; an existing "
                        "index keeps its own unless given)")
    p.add_argument("--workers", type=positive_int, metavar="N", default=None,
                   help="processes/threads describing images (default: all cores)")
    p.add_argument("--exclude", action="append", metavar="GLOB", default=None,
                   help="skip files and folders whose name, path, or path relative to the folder "
                        "indexed matches GLOB, e.g. 'edits/*' or '*.gif' (repeatable)")
    p.add_argument("--no-recursive", dest="recursive", action="store_false",
                   help="do not descend into sub-folders")
    p.add_argument("--relative-to", metavar="DIR", default=None,
                   help="for a new index: store paths relative to DIR, recorded relative to the index "
                        "(move DIR and the index together); default: absolute")
    p.add_argument("--ann", action="store_true",
                   help="build/update the HNSW graph for approximate search afterwards")
    p.add_argument("--whiten", type=positive_int, nargs="?", const=0, default=None, metavar="DIM",
                   help="after indexing, fit (or re-fit) PCA-whitening on the indexed vectors, "
                        "optionally to DIM dimensions; searches then run in the whitened space "
                        "(needs a signed metric: cosine, pearson, l2, l1; put it after the folders)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar and no summary")
    p.add_argument("--show-skipped", action="store_true",
                   help="list every skipped file with the reason")
    p.add_argument("--json", action="store_true", help="print the summary as one JSON document")
    p.add_argument("--shards", type=positive_int, metavar="N", default=None,
                   help="build a sharded index of N ordinary indexes (fastimg.distributed; docs/scaling.md); "
                        "an existing sharded index is updated without it")
    add_scheduler_argument(p)
    p.set_defaults(func=cmd_index)


def add_info_parser(sub: Any, ix: argparse.ArgumentParser) -> None:
    """``fastimg info``."""
    p = add_command(sub, "info", "describe the index",
                    "Image count, descriptor, dimension, metric, precision, size on disk, the bytes\n"
                    "of each representation (representation_bytes: the vectors, and what an exact\n"
                    "search of the metric reads in float32, float16 and int8), ANN status.",
                    f"""\
examples:
  fastimg info
  fastimg info --index /data/photos.fastimg --json

{INDEX_RULE}""", [ix])
    p.add_argument("--json", action="store_true", help="print one JSON document")
    p.set_defaults(func=cmd_info)


def add_remove_parser(sub: Any, ix: argparse.ArgumentParser) -> None:
    """``fastimg remove PATH...``."""
    p = add_command(sub, "remove", "remove images from the index",
                    "Remove images (given by path, or a folder for every indexed image under it)\n"
                    "from the index: they are no longer found by queries. Files on disk are not\n"
                    "touched, and the index does not remember them: a later `fastimg index` of their\n"
                    "folder adds them again (use --exclude there to keep them out, or delete the\n"
                    "files). Space is reclaimed by `fastimg compact`.",
                    """\
examples:
  fastimg remove photos/old.jpg photos/older.jpg
  fastimg remove photos/2019/
  fastimg index photos/ --exclude '*/2019/*'   # later updates leave 2019 out""", [ix])
    p.add_argument("paths", nargs="+", metavar="PATH", help="image files or folders")
    p.add_argument("-q", "--quiet", action="store_true", help="no summary")
    p.set_defaults(func=cmd_remove)


def add_compact_parser(sub: Any, ix: argparse.ArgumentParser) -> None:
    """``fastimg compact``."""
    p = add_command(sub, "compact", "rewrite the index without removed images",
                    "Rewrite the vectors without the rows of removed images and rebuild caches.",
                    """\
examples:
  fastimg compact
  fastimg compact --index /data/photos.fastimg""", [ix])
    p.add_argument("-q", "--quiet", action="store_true", help="no summary")
    p.set_defaults(func=cmd_compact)


# --------------------------------------------------------------------------- #
# commands
# --------------------------------------------------------------------------- #

def _report_counts(report: Any) -> dict[str, int]:
    """The counts of an :class:`fastimg.index.AddReport` (``skipped`` is a dict path -> reason)."""
    return {"added": report.added, "unchanged": report.unchanged, "updated": report.updated,
            "moved": report.moved, "removed": report.removed, "skipped": len(report.skipped)}


def cmd_index(args: argparse.Namespace) -> int:
    from fastimg.errors import IndexNotFoundError
    from fastimg.index import Index

    for d in args.dirs:
        if not os.path.exists(d):
            raise CommandError(f"{d}: no such file or directory")
    if args.relative_to is not None and not os.path.isdir(args.relative_to):
        raise CommandError(f"--relative-to {args.relative_to}: no such folder")
    path = index_path(args)
    args.metric = check_metric(args.metric)
    check_descriptor(args.descriptor)
    from fastimg.distributed import is_sharded

    if args.shards is not None or args.scheduler is not None or is_sharded(path):
        from fastimg.cli.sharded import cmd_index_sharded

        return cmd_index_sharded(args, path)
    existed = os.path.exists(path)
    created = False
    try:
        index = Index.open(path, mode="a")
    except IndexNotFoundError:
        kwargs: dict[str, Any] = {}
        if args.descriptor is not None:
            kwargs["descriptor"] = args.descriptor
        if args.metric is not None:
            kwargs["metric"] = args.metric
        if args.relative_to is not None:
            kwargs["root"] = args.relative_to
        if args.precision is not None:
            kwargs["precision"] = args.precision
        index = Index.create(path, **kwargs)
        created = True
    empty: list[str] = []
    try:
        with index:
            if not created:
                have_m = index.metric
                # the descriptor's name only when one is asked for (info() walks the index directory)
                have_d = None if args.descriptor is None else str(index.info()["descriptor"]["name"])
                if args.descriptor is not None and have_d is not None and args.descriptor != have_d:
                    raise CommandError(
                        f"descriptor mismatch: the index at {path} uses {have_d!r}, not "
                        f"{args.descriptor!r} (omit --descriptor, or use a new --index)")
                if args.metric is not None and have_m is not None and args.metric != have_m:
                    raise CommandError(
                        f"metric mismatch: the index at {path} has default metric {have_m!r}, not "
                        f"{args.metric!r} (choose the metric per query: fastimg query --metric)")
                if args.relative_to is not None and os.path.abspath(args.relative_to) != str(index.root):
                    raise CommandError(
                        f"--relative-to: the index at {path} resolves paths against {index.root}; "
                        "--relative-to applies when an index is created (`fastimg relocate OLD NEW` tells it "
                        "its files moved)")
            if not created and args.precision is not None and args.precision != index.precision:
                index.set_precision(args.precision)
            if args.whiten is not None:
                from fastimg.metrics import get_metric

                if get_metric(index.metric).nonneg:
                    raise CommandError(
                        f"--whiten: the index's metric {index.metric!r} needs non-negative vectors but whitened "
                        "vectors are signed; use an index created with --metric cosine (or pearson, l2, l1)")
            show = not args.quiet and not args.json and sys.stderr.isatty()
            totals = {"added": 0, "unchanged": 0, "updated": 0, "moved": 0, "removed": 0, "skipped": 0}
            skipped: list[tuple[str, str, str]] = []
            redescribed, not_redescribed, spec = 0, {}, None
            per_dir = []
            for d in args.dirs:
                progress, bar = progress_bar(os.path.basename(os.path.normpath(d)) or d, show)
                try:
                    report = index.add([d], recursive=args.recursive, workers=args.workers,
                                       progress=progress, exclude=args.exclude or None)
                finally:
                    if bar is not None:
                        bar.close()
                counts = _report_counts(report)
                for k, v in counts.items():
                    totals[k] += v
                skipped.extend((str(p), str(r), str(report.details.get(p) or "")) for p, r in report.skipped.items())
                if report.redescribed or report.not_redescribed:
                    redescribed += report.redescribed
                    not_redescribed.update(report.not_redescribed)
                    spec = index.info()["descriptor"]
                per_dir.append({"dir": os.path.abspath(d), **counts})
                if sum(counts[k] for k in ("added", "unchanged", "updated", "moved", "skipped")) == 0 \
                        and os.path.isdir(d):
                    empty.append(d)
            if len(empty) == len(args.dirs):
                raise CommandError(f"{empty[0]}: no images found" if len(empty) == 1 else
                                    f"no images found in {', '.join(empty)}")
            whitening = None
            if args.whiten is not None:
                whitening = index.fit_whitening(dim=args.whiten or None)
            ann = ann_meta = None
            if args.ann:
                progress, bar = progress_bar("HNSW graph", show)
                t0 = time.perf_counter()
                try:
                    ann_meta = index.build_ann(progress=progress)
                finally:
                    if bar is not None:
                        bar.close()
                ann_meta = dict(ann_meta, seconds=time.perf_counter() - t0)
                ann = True
            count = len(index)
            precision = index.precision
    except BaseException:
        # an index this command created and left without a single row is removed;
        # one with committed rows is kept (re-running the command resumes)
        if created and not existed and _has_no_rows(path):
            import shutil

            shutil.rmtree(path, ignore_errors=True)
        raise
    for d in empty:
        sys.stderr.write(shown(f"{PROG}: warning: {d}: no images found") + "\n")

    if args.json:
        emit_json({"index": path, "count": count, "created": created, "precision": precision, **totals,
                    "skipped_files": [{"path": p, "reason": r, **({"detail": dt} if dt else {})}
                                      for p, r, dt in skipped],
                    "redescribed": redescribed,
                    "not_redescribed": [{"path": p, "reason": r} for p, r in not_redescribed.items()],
                    "dirs": per_dir, "ann": ann, "whitening": whitening})
        return EXIT_OK
    if not args.quiet:
        verb = "created" if created else "updated"
        if spec is not None:
            print(f"re-described {redescribed} indexed images for descriptor {spec['name']!r} version "
                  f"{spec.get('version')} (this fastimg computes it differently from the one that made the index)"
                  + (f"; {len(not_redescribed)} could not be read and keep their old vectors until indexed again"
                     if not_redescribed else ""))
        print(shown(f"{verb} {path}: {count} images "
                    f"({totals['added']} added, {totals['unchanged']} unchanged, {totals['updated']} updated, "
                    + (f"{totals['moved']} moved, " if totals["moved"] else "")
                    + f"{totals['removed']} removed, {totals['skipped']} skipped)"
                    + ("" if precision == "float32" else f"; precision {precision}")))
        if skipped:
            reasons: dict[str, int] = {}
            for _, r, _ in skipped:
                reasons[r] = reasons.get(r, 0) + 1
            print("skipped: " + ", ".join(f"{n} {r}" for r, n in sorted(reasons.items())) +
                  ("" if args.show_skipped else " (--show-skipped lists them)"))
        if args.show_skipped:
            for p, r, dt in skipped:
                print(shown(f"  {p}: {r}" + (f" ({dt})" if dt else "")))
        if whitening:
            print(f"whitening fitted on {whitening['n_fit']} images ({whitening['dim']} dimensions)")
        if ann_meta:
            print(f"HNSW graph built: {ann_meta['rows']} rows, metric {ann_meta['metric']}, M={ann_meta['M']}, "
                  f"ef_construction={ann_meta['ef_construction']}, search ef={ann_meta['ef']} "
                  f"({ann_meta['seconds']:.1f} s)")
    return EXIT_OK


def _has_no_rows(path: str) -> bool:
    from fastimg.index import Index

    try:
        with Index.open(path, mode="r") as index:
            return int(index.info()["rows"]) == 0
    except Exception:
        return False


def cmd_info(args: argparse.Namespace) -> int:
    path = index_path(args)
    with open_index(args, "r", sharded=True) as index:
        info = dict(index.info())
        info.setdefault("path", path)
        info.setdefault("count", len(index))
        missing = missing_files(index)
    if args.json:
        emit_json(dict(info, missing_files=missing) if missing else info)
    else:
        for key, value in _flatten(info):
            print(shown(f"{key}: {_human(key, value)}"))
    warn_missing(missing, "sampled indexed files")
    return EXIT_OK


def _flatten(d: dict, prefix: str = "") -> list[tuple[str, Any]]:
    rows: list[tuple[str, Any]] = []
    for key, value in d.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            rows.extend(_flatten(value, name + "."))
        else:
            rows.append((name, value))
    return rows


def _human(key: str, value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return str(value).lower() if isinstance(value, bool) else "-"
    if isinstance(value, int) and "bytes" in key:  # not "...size": a descriptor's input_size is pixels
        size = float(value)
        for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
            if size < 1024 or unit == "TiB":
                return f"{value} ({size:.1f} {unit})" if unit != "B" else f"{value} B"
            size /= 1024
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, (list, tuple)):
        return ", ".join(str(v) for v in value) if value else "-"
    if isinstance(value, dict):
        return "-"
    return str(value)


def cmd_remove(args: argparse.Namespace) -> int:
    path = index_path(args)
    with open_index(args, "a") as index:
        # a path that is not in the index raises (and nothing is removed)
        removed = int(index.remove(list(args.paths)))
        after = len(index)
    if not args.quiet:
        print(shown(f"removed {removed} image{'s' if removed != 1 else ''} from {path} ({after} left)"))
    return EXIT_OK


def cmd_compact(args: argparse.Namespace) -> int:
    path = index_path(args)
    with open_index(args, "a") as index:
        before = index.info()
        index.compact()
        after = index.info()
        count = len(index)
    if not args.quiet:
        print(shown(f"compacted {path}: {count} images, {before['size_bytes']} -> {after['size_bytes']} bytes "
                    "on disk"))
    return EXIT_OK
