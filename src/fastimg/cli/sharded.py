"""``fastimg index --shards N [--scheduler ADDRESS|local]``: building a sharded index
(the work: :func:`fastimg.distributed.build_shards`)."""
from __future__ import annotations

import argparse
import os
import sys

from fastimg.cli.common import EXIT_OK, CommandError, UsageError, emit_json, progress_bar

__all__ = ["cmd_index_sharded"]


def cmd_index_sharded(args: argparse.Namespace, path: str) -> int:
    """``fastimg index`` on a sharded root (new with ``--shards``, or existing)."""
    from fastimg.distributed import MANIFEST, build_shards, connect, is_sharded

    if args.whiten is not None:
        raise UsageError("--whiten does not apply to a sharded index (each shard would be whitened in its own "
                         "space and their scores could not be merged)")
    if args.precision is not None:
        raise UsageError("--precision applies to a single index (sharded indexes scan float32 rows)")
    existed = is_sharded(path)
    if not existed:
        if args.shards is None:
            raise UsageError(f"{path} is not a sharded index: give --shards N to create one")
        if os.path.isfile(os.path.join(path, "manifest.json")):
            raise CommandError(f"{path} holds a single (unsharded) index; give a new --index for the shards")
    show = not args.quiet and not args.json and sys.stderr.isatty()
    client = connect(args.scheduler) if args.scheduler else None
    progress, bar = progress_bar("shards", show)
    try:
        report = build_shards(args.dirs, path, shards=args.shards, descriptor=args.descriptor, metric=args.metric,
                              client=client, progress=progress, recursive=args.recursive,
                              exclude=args.exclude or None, workers=args.workers, ann=bool(args.ann))
    except ValueError as exc:
        raise CommandError(str(exc)) from None
    finally:
        if bar is not None:
            bar.close()
        if client is not None:
            client.close()
    counts = {"added": report.added, "unchanged": report.unchanged, "updated": report.updated,
              "moved": report.moved, "removed": report.removed, "skipped": report.n_skipped}
    if sum(counts[k] for k in ("added", "unchanged", "updated", "moved", "skipped")) == 0 and report.count == 0:
        dirs = [d for d in args.dirs if os.path.isdir(d)]
        if dirs:
            raise CommandError(f"no images found in {', '.join(dirs)}")
    n = len(report.per_shard)
    if args.json:
        emit_json({"index": path, "count": report.count, "created": not existed, "shards": n, **counts,
                   "skipped_files": [{"path": p, "reason": r} for p, r in report.skipped.items()],
                   "per_shard": report.per_shard, "manifest": os.path.join(path, MANIFEST),
                   "scheduler": args.scheduler or "in-process"})
        return EXIT_OK
    if not args.quiet:
        verb = "updated" if existed else "created"
        print(f"{verb} {path}: {report.count} images in {n} shards "
              f"({counts['added']} added, {counts['unchanged']} unchanged, {counts['updated']} updated, "
              f"{counts['removed']} removed, {counts['skipped']} skipped)")
        sizes = [int(d.get("count", 0)) for d in report.per_shard.values()]
        if sizes:
            print(f"images per shard: {min(sizes)} to {max(sizes)}")
        if report.skipped:
            reasons: dict[str, int] = {}
            for r in report.skipped.values():
                reasons[r] = reasons.get(r, 0) + 1
            print("skipped: " + ", ".join(f"{k} {r}" for r, k in sorted(reasons.items())) +
                  ("" if args.show_skipped else " (--show-skipped lists them)"))
        if args.show_skipped:
            for p, r in report.skipped.items():
                print(f"  {p}: {r}")
    return EXIT_OK

