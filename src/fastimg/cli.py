"""The ``fastimg`` command line: parses arguments and prints; never computes.

Every command imports the library modules it needs inside its own function, so
``fastimg --help`` (and every ``--help``) starts without importing NumPy, Numba,
OpenCV or hnswlib.

Exit status: 0 success, 1 error (one line ``fastimg: error: ...`` on stderr, no
traceback unless ``--debug``), 2 usage error (argparse's usage line and message).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any, Callable, Sequence

from fastimg._version import __version__

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2

PROG = "fastimg"

_INDEX_RULE = (
    "index location (the same rule for every command, fastimg.index.default_index_path):\n"
    "  --index PATH, else $FASTIMG_INDEX, else $FASTIMG_DATADIR/index, else\n"
    "  $XDG_DATA_HOME/fastimg/index (~/.local/share/fastimg/index; macOS:\n"
    "  ~/Library/Application Support/fastimg/index). `fastimg info` prints the path."
)

_EXIT_CODES = "exit status: 0 ok, 1 error (one line on stderr), 2 usage error."

_MAIN_EPILOG = f"""\
examples:
  fastimg index ~/Pictures                  build or update the index
  fastimg query photo.jpg -k 5              the 5 images most similar to photo.jpg
  fastimg query a.jpg b.jpg --json | jq .   machine-readable results
  fastimg query photo.jpg --html out.html   a page of thumbnails
  fastimg info                              what is in the index
  fastimg dedup                             groups of near-duplicate images

{_INDEX_RULE}
{_EXIT_CODES}
"""


class UsageError(Exception):
    """A bad combination of arguments found after parsing (exit status 2)."""


# --------------------------------------------------------------------------- #
# argument types
# --------------------------------------------------------------------------- #

def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer; got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer; got {value}")
    return value


def _float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number; got {text!r}") from None
    if value != value or value in (float("inf"), float("-inf")):
        raise argparse.ArgumentTypeError(f"expected a finite number; got {text!r}")
    return value


# --------------------------------------------------------------------------- #
# parser
# --------------------------------------------------------------------------- #

def _common(debug_default: Any = argparse.SUPPRESS) -> argparse.ArgumentParser:
    """Options accepted both before and after the command name."""
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--debug", action="store_true", default=debug_default,
                   help="show the Python traceback on errors")
    return p


def _index_opt() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("-i", "--index", metavar="PATH", default=None,
                   help="index directory (default: $FASTIMG_INDEX, else see 'index location' below)")
    return p


def _sub(subparsers: Any, name: str, help: str, description: str, epilog: str,
         parents: Sequence[argparse.ArgumentParser] = ()) -> argparse.ArgumentParser:
    return subparsers.add_parser(
        name, help=help, description=description,
        epilog=epilog.rstrip() + "\n\n" + _EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        parents=[_common(), *parents],
    )


def build_parser(*, with_eval: bool = False) -> argparse.ArgumentParser:
    """Build the argument parser.

    ``with_eval=True`` asks :mod:`fastimg.eval` to add the real ``eval`` command
    (it imports the evaluation module, so it is only done when ``eval`` is the
    command being run); otherwise ``eval`` is a light placeholder entry.
    """
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Search a collection of images by image.",
        epilog=_MAIN_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        parents=[_common(debug_default=False)],
    )
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", title="commands")
    ix = _index_opt()

    # index --------------------------------------------------------------
    p = _sub(sub, "index", "create or update an index from folders of images",
             "Create the index (first run) or update it incrementally: new files are added,\n"
             "changed files re-described, deleted files removed. Ends with a summary.",
             f"""\
examples:
  fastimg index ~/Pictures
  fastimg index photos/ scans/ --index /data/photos.fastimg --descriptor hsv72
  fastimg index photos/ --exclude '*/thumbnails/*' --exclude '*.gif' --ann
  fastimg index photos/ -q --json          # no progress bar; the summary as JSON
  fastimg index photos/ --whiten 128       # then fit PCA-whitening (128 dims) on the index

{_INDEX_RULE}
An existing index keeps the descriptor and metric it was created with; asking for
another with --descriptor/--metric is an error (use a new --index).""", [ix])
    p.add_argument("dirs", nargs="+", metavar="DIR", help="folders (or image files) to index")
    p.add_argument("--descriptor", metavar="NAME", default=None,
                   help="descriptor for a new index (see `fastimg descriptors`)")
    p.add_argument("--metric", metavar="NAME", default=None,
                   help="default metric of a new index (default: the descriptor's)")
    p.add_argument("--workers", type=_positive_int, metavar="N", default=None,
                   help="processes/threads describing images (default: all cores)")
    p.add_argument("--exclude", action="append", metavar="GLOB", default=None,
                   help="skip files whose path matches GLOB (repeatable)")
    p.add_argument("--no-recursive", dest="recursive", action="store_false",
                   help="do not descend into sub-folders")
    p.add_argument("--ann", action="store_true",
                   help="build/update the HNSW graph for approximate search afterwards")
    p.add_argument("--whiten", type=_positive_int, nargs="?", const=0, default=None, metavar="DIM",
                   help="after indexing, fit (or re-fit) PCA-whitening on the indexed vectors, "
                        "optionally to DIM dimensions; searches then run in the whitened space "
                        "(needs a signed metric: cosine, pearson, l2, l1; put it after the folders)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar and no summary")
    p.add_argument("--show-skipped", action="store_true",
                   help="list every skipped file with the reason")
    p.add_argument("--json", action="store_true", help="print the summary as one JSON document")
    p.set_defaults(func=cmd_index)

    # query --------------------------------------------------------------
    p = _sub(sub, "query", "find the images most similar to one or more query images",
             "Print rank, score and path of the K most similar indexed images for each\n"
             "query image. With several queries, each block starts with '==> QUERY <=='.",
             """\
examples:
  fastimg query photo.jpg
  fastimg query photo.jpg -k 20 --metric bhattacharyya
  fastimg query a.jpg b.jpg --json > hits.json
  fastimg query photo.jpg --ann --ef 100
  fastimg query photo.jpg --html results.html
  curl -s https://example.org/cat.jpg | fastimg query - -k 5

--json prints one JSON document. For one query image it is the object
  {"query": PATH, "index": PATH, "metric": NAME, "took_ms": FLOAT,
   "results": [{"rank": 1, "id": INT, "path": PATH, "score": FLOAT}, ...]}
and for several query images a JSON list of such objects, in argument order.
"query" and "index" are absolute paths; took_ms is the time of the search call
(describing the query image included, opening the index excluded). Scores are the
metric's own values: higher is better for similarities (pearson, cosine,
intersect), lower is better for distances (bhattacharyya, chisqr, chisqr_alt,
kl_div, l2, l1).
A query image that is itself in the index is left out of its own results unless
--include-self is given (for '-', the first indexed image with the identical
descriptor vector is left out).""", [ix])
    p.add_argument("images", nargs="+", metavar="IMAGE",
                   help="query image file(s); '-' reads one encoded image from standard input")
    p.add_argument("-k", type=_positive_int, default=10, metavar="K",
                   help="number of results per query (default 10; capped at the index size)")
    p.add_argument("--metric", metavar="NAME", default=None,
                   help="similarity/distance (default: the index's metric)")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--exact", dest="mode", action="store_const", const="exact",
                      help="exhaustive exact search")
    mode.add_argument("--ann", dest="mode", action="store_const", const="ann",
                      help="approximate search on the HNSW graph (fastimg index --ann)")
    p.set_defaults(mode="auto")
    p.add_argument("--ef", type=_positive_int, metavar="N", default=None,
                   help="HNSW search breadth (higher: better recall, slower)")
    p.add_argument("--rerank", metavar="SPEC", default=None,
                   help="re-ranking: qe, aqe, alpha-qe, dba, k-reciprocal[:param=value,...]")
    p.add_argument("--include-self", action="store_true",
                   help="keep the query image in its own results when it is indexed")
    p.add_argument("--json", action="store_true", help="print one JSON document")
    p.add_argument("--html", metavar="FILE", default=None,
                   help="also write a self-contained HTML page with thumbnails")
    p.set_defaults(func=cmd_query)

    # info ---------------------------------------------------------------
    p = _sub(sub, "info", "describe the index",
             "Image count, descriptor, dimension, metric, size on disk, ANN status.",
             f"""\
examples:
  fastimg info
  fastimg info --index /data/photos.fastimg --json

{_INDEX_RULE}""", [ix])
    p.add_argument("--json", action="store_true", help="print one JSON document")
    p.set_defaults(func=cmd_info)

    # remove -------------------------------------------------------------
    p = _sub(sub, "remove", "remove images from the index",
             "Remove images (given by path, or a folder for every indexed image under it)\n"
             "from the index. Space is reclaimed by `fastimg compact`.",
             """\
examples:
  fastimg remove photos/old.jpg photos/older.jpg
  fastimg remove photos/2019/""", [ix])
    p.add_argument("paths", nargs="+", metavar="PATH", help="image files or folders")
    p.add_argument("-q", "--quiet", action="store_true", help="no summary")
    p.set_defaults(func=cmd_remove)

    # compact ------------------------------------------------------------
    p = _sub(sub, "compact", "rewrite the index without removed images",
             "Rewrite the vectors without the rows of removed images and rebuild caches.",
             """\
examples:
  fastimg compact
  fastimg compact --index /data/photos.fastimg""", [ix])
    p.add_argument("-q", "--quiet", action="store_true", help="no summary")
    p.set_defaults(func=cmd_compact)

    # dedup --------------------------------------------------------------
    p = _sub(sub, "dedup", "find groups of near-duplicate images",
             "Compare every indexed image with every other one (exact search, in batches)\n"
             "and print the groups of images linked by a pair within the threshold\n"
             "(connected components: A~B and B~C put A, B and C in one group).",
             """\
examples:
  fastimg dedup
  fastimg dedup --metric pearson --threshold 0.995
  fastimg dedup --json | jq '.groups[] | map(.path)'

The threshold's meaning follows the metric's direction:
  similarity metrics (higher is better: pearson, cosine, intersect):
      a pair is a duplicate when score >= T
  distance metrics (lower is better: bhattacharyya, chisqr, chisqr_alt, kl_div, l2, l1):
      a pair is a duplicate when score <= T
Default T per metric: pearson 0.99, cosine 0.99, bhattacharyya 0.1; and, for the
built-in histogram descriptors (not a descriptor='custom' index), l1 0.05 and
intersect 0.975. Other metrics need --threshold.

--json prints {"index", "metric", "threshold", "higher_is_better",
  "groups": [[{"id", "path"}, ...], ...],   largest group first
  "pairs": [{"a": ID, "b": ID, "score": FLOAT}, ...]}   every pair within T, a < b""",
             [ix])
    p.add_argument("--threshold", type=_float, metavar="T", default=None,
                   help="duplicate threshold (see below)")
    p.add_argument("--metric", metavar="NAME", default=None,
                   help="metric (default: the index's metric)")
    p.add_argument("--batch", type=_positive_int, metavar="N", default=256,
                   help="query rows per exact-search batch (default 256)")
    p.add_argument("--json", action="store_true", help="print one JSON document")
    p.set_defaults(func=cmd_dedup)

    # descriptors --------------------------------------------------------
    p = _sub(sub, "descriptors", "list the available image descriptors",
             "Name, dimension, default metric and a one-line description of each descriptor.",
             """\
examples:
  fastimg descriptors
  fastimg descriptors --json""")
    p.add_argument("--json", action="store_true", help="print one JSON document")
    p.set_defaults(func=cmd_descriptors)

    # eval ---------------------------------------------------------------
    _add_eval(sub, with_eval)
    return parser


def _add_eval(sub: Any, with_eval: bool) -> None:
    desc = "evaluate retrieval quality (mAP, P@k, ...) on a labelled image collection"
    if with_eval:
        try:
            from fastimg.eval import add_cli_parser
        except ImportError as exc:
            reason = f"fastimg.eval is not available ({exc})"
        else:
            add_cli_parser(sub)
            return
    else:
        reason = None
    long = desc[0].upper() + desc[1:] + "."
    if reason:
        long += f"\n\nUnavailable in this installation: {reason}."
    p = _sub(sub, "eval", desc, long,
             """\
examples:
  fastimg eval ../shared/data/corel1k --layout folders
  fastimg eval --help     # the full list of options""")
    p.add_argument("rest", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    p.set_defaults(func=_eval_unavailable, eval_reason=reason)


def _eval_unavailable(args: argparse.Namespace) -> int:
    raise _CommandError(f"`fastimg eval` is unavailable: {args.eval_reason or 'fastimg.eval is not available'}")


class _CommandError(Exception):
    """An error detected by the CLI itself (exit status 1)."""


def _wants_eval(argv: Sequence[str]) -> bool:
    """True when the command word (first non-option argument) is ``eval``."""
    for arg in argv:
        if arg == "--":
            return False
        if not arg.startswith("-"):
            return arg == "eval"
    return False


# --------------------------------------------------------------------------- #
# helpers shared by the commands
# --------------------------------------------------------------------------- #

def _index_path(args: argparse.Namespace) -> str:
    """--index, else FASTIMG_INDEX, else the library's documented default."""
    if getattr(args, "index", None):
        return os.path.abspath(os.path.expanduser(args.index))
    from fastimg.index import default_index_path

    return os.path.abspath(os.fspath(default_index_path()))


def _open(args: argparse.Namespace, mode: str = "r") -> Any:
    from fastimg.index import Index

    return Index.open(_index_path(args), mode=mode)


def _emit_json(doc: Any) -> None:
    json.dump(doc, sys.stdout, indent=2, ensure_ascii=False, default=_json_default)
    sys.stdout.write("\n")


def _json_default(obj: Any) -> Any:
    # NumPy scalars/arrays, Paths, sets ... without importing NumPy here.
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if hasattr(obj, "__fspath__"):
        return os.fspath(obj)
    if isinstance(obj, (set, frozenset, tuple)):
        return list(obj)
    return str(obj)


def _info(index: Any) -> dict:
    return dict(index.info())


def _index_metric(index: Any, info: dict | None = None) -> str:
    """The index's default metric (``info()["metric"]``)."""
    return str((_info(index) if info is None else info)["metric"])


def _index_descriptor(info: dict) -> str:
    """The index's descriptor name (``info()["descriptor"]`` is its spec dict)."""
    return str(info["descriptor"]["name"])


def _check_metric(name: str | None) -> str | None:
    """The canonical metric name (usage error if unknown)."""
    if name is None:
        return None
    from fastimg.metrics import get_metric, metric_names

    try:
        return get_metric(name).name
    except ValueError:
        raise UsageError(f"unknown metric {name!r}; choose one of: {', '.join(metric_names())}") from None


def _report_counts(report: Any) -> dict[str, int]:
    """The counts of an :class:`fastimg.index.AddReport` (``skipped`` is a dict path -> reason)."""
    return {"added": report.added, "unchanged": report.unchanged, "updated": report.updated,
            "moved": report.moved, "removed": report.removed, "skipped": len(report.skipped)}


def _progress_bar(desc: str, enabled: bool) -> tuple[Any, Any]:
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


# --------------------------------------------------------------------------- #
# commands
# --------------------------------------------------------------------------- #

def cmd_index(args: argparse.Namespace) -> int:
    from fastimg.errors import IndexNotFoundError
    from fastimg.index import Index

    for d in args.dirs:
        if not os.path.exists(d):
            raise _CommandError(f"{d}: no such file or directory")
    path = _index_path(args)
    args.metric = _check_metric(args.metric)
    _check_descriptor(args.descriptor)
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
        index = Index.create(path, **kwargs)
        created = True
    empty: list[str] = []
    try:
        with index:
            info = _info(index)
            if not created:
                have_d, have_m = _index_descriptor(info), _index_metric(index, info)
                if args.descriptor is not None and have_d is not None and args.descriptor != have_d:
                    raise _CommandError(
                        f"descriptor mismatch: the index at {path} uses {have_d!r}, not "
                        f"{args.descriptor!r} (omit --descriptor, or use a new --index)")
                if args.metric is not None and have_m is not None and args.metric != have_m:
                    raise _CommandError(
                        f"metric mismatch: the index at {path} has default metric {have_m!r}, not "
                        f"{args.metric!r} (choose the metric per query: fastimg query --metric)")
            if args.whiten is not None:
                from fastimg.metrics import get_metric

                if get_metric(index.metric).nonneg:
                    raise _CommandError(
                        f"--whiten: the index's metric {index.metric!r} needs non-negative vectors but whitened "
                        "vectors are signed; use an index created with --metric cosine (or pearson, l2, l1)")
            show = not args.quiet and not args.json and sys.stderr.isatty()
            totals = {"added": 0, "unchanged": 0, "updated": 0, "moved": 0, "removed": 0, "skipped": 0}
            skipped: list[tuple[str, str]] = []
            per_dir = []
            for d in args.dirs:
                progress, bar = _progress_bar(os.path.basename(os.path.normpath(d)) or d, show)
                try:
                    report = index.add([d], recursive=args.recursive, workers=args.workers,
                                       progress=progress, exclude=args.exclude or None)
                finally:
                    if bar is not None:
                        bar.close()
                counts = _report_counts(report)
                for k, v in counts.items():
                    totals[k] += v
                skipped.extend((str(p), str(r)) for p, r in report.skipped.items())
                per_dir.append({"dir": os.path.abspath(d), **counts})
                if sum(counts[k] for k in ("added", "unchanged", "updated", "moved", "skipped")) == 0 \
                        and os.path.isdir(d):
                    empty.append(d)
            if len(empty) == len(args.dirs):
                raise _CommandError(f"{empty[0]}: no images found" if len(empty) == 1 else
                                    f"no images found in {', '.join(empty)}")
            whitening = None
            if args.whiten is not None:
                whitening = index.fit_whitening(dim=args.whiten or None)
            ann = ann_meta = None
            if args.ann:
                progress, bar = _progress_bar("HNSW graph", show)
                t0 = time.perf_counter()
                try:
                    ann_meta = index.build_ann(progress=progress)
                finally:
                    if bar is not None:
                        bar.close()
                ann_meta = dict(ann_meta, seconds=time.perf_counter() - t0)
                ann = True
            count = len(index)
    except BaseException:
        # an index this command created and left without a single row is removed;
        # one with committed rows is kept (re-running the command resumes)
        if created and not existed and _has_no_rows(path):
            import shutil

            shutil.rmtree(path, ignore_errors=True)
        raise
    for d in empty:
        sys.stderr.write(f"{PROG}: warning: {d}: no images found\n")

    if args.json:
        _emit_json({"index": path, "count": count, "created": created, **totals,
                    "skipped_files": [{"path": p, "reason": r} for p, r in skipped],
                    "dirs": per_dir, "ann": ann, "whitening": whitening})
        return EXIT_OK
    if not args.quiet:
        verb = "created" if created else "updated"
        print(f"{verb} {path}: {count} images "
              f"({totals['added']} added, {totals['unchanged']} unchanged, {totals['updated']} updated, "
              + (f"{totals['moved']} moved, " if totals["moved"] else "")
              + f"{totals['removed']} removed, {totals['skipped']} skipped)")
        if skipped:
            reasons: dict[str, int] = {}
            for _, r in skipped:
                reasons[r] = reasons.get(r, 0) + 1
            print("skipped: " + ", ".join(f"{n} {r}" for r, n in sorted(reasons.items())) +
                  ("" if args.show_skipped else " (--show-skipped lists them)"))
        if args.show_skipped:
            for p, r in skipped:
                print(f"  {p}: {r}")
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


def _check_descriptor(name: str | None) -> None:
    if name is None:
        return
    from fastimg.errors import DescriptorError
    from fastimg.features.registry import get_descriptor

    try:
        get_descriptor(name)
    except DescriptorError as exc:
        raise UsageError(f"{exc} (see `fastimg descriptors`)") from None


def _hit_dict(hit: Any) -> dict:
    return {"rank": int(hit.rank), "id": int(hit.id), "path": os.fspath(hit.path),
            "score": float(hit.score)}


def cmd_query(args: argparse.Namespace) -> int:
    if args.ef is not None and args.mode == "exact":
        raise UsageError("--ef applies to approximate search; it cannot be combined with --exact")
    args.metric = _check_metric(args.metric)
    if args.images.count("-") > 1:
        raise UsageError("standard input ('-') can be given once")
    for img in args.images:
        if img == "-":
            continue
        if not os.path.exists(img):
            raise _CommandError(f"{img}: no such file")
        if os.path.isdir(img):
            raise _CommandError(f"{img}: is a directory, not an image")
    path = _index_path(args)
    docs = []
    with _open(args, "r") as index:
        info = _info(index)
        metric = args.metric or _index_metric(index, info)
        ann = info.get("ann") or {}
        if args.mode == "ann" and not ann.get("built"):
            raise _CommandError(f"--ann: the index at {path} has no HNSW graph (build it with "
                                f"`fastimg index DIR --ann`)")
        if args.mode == "ann" and ann.get("metric") not in (None, metric):
            raise _CommandError(f"--ann: the HNSW graph of {path} serves metric {ann.get('metric')!r}, "
                                f"not {metric!r} (use --exact, or --metric {ann.get('metric')})")
        kwargs: dict[str, Any] = {"exclude_self": not args.include_self, "mode": args.mode}
        if args.metric is not None:
            kwargs["metric"] = args.metric
        if args.ef is not None:
            kwargs["ef"] = args.ef
        if args.rerank is not None:
            kwargs["rerank"] = args.rerank
        for img in args.images:
            query: Any = img
            if img == "-":
                query = sys.stdin.buffer.read()
                if not query:
                    raise _CommandError("-: standard input is empty (expected an encoded image)")
            t0 = time.perf_counter()
            hits = index.search(query, args.k, **kwargs)
            took = (time.perf_counter() - t0) * 1000.0
            docs.append({"query": "-" if img == "-" else os.path.abspath(img), "index": path, "metric": metric,
                         "took_ms": round(took, 3), "results": [_hit_dict(h) for h in hits]})
    if args.html:
        from fastimg._html import write_results_page

        write_results_page(docs, args.html)
    if args.json:
        _emit_json(docs[0] if len(docs) == 1 else docs)
        return EXIT_OK
    out = sys.stdout
    for i, doc in enumerate(docs):
        if len(docs) > 1:
            out.write(("\n" if i else "") + f"==> {doc['query']} <==\n")
        scores = [r["score"] for r in doc["results"]]
        fixed = all(s == 0 or 1e-4 <= abs(s) < 1e6 for s in scores)
        cells = [f"{s:.6f}" if fixed else f"{s:.6g}" for s in scores]
        width = max([len(c) for c in cells] or [1])
        for r, cell in zip(doc["results"], cells):
            out.write(f"{r['rank']:>3}  {cell:>{width}}  {r['path']}\n")
        if not doc["results"]:
            out.write("(no results)\n")
    if args.html:
        sys.stderr.write(f"wrote {args.html}\n")
    return EXIT_OK


def cmd_info(args: argparse.Namespace) -> int:
    path = _index_path(args)
    with _open(args, "r") as index:
        info = _info(index)
        info.setdefault("path", path)
        info.setdefault("count", len(index))
    if args.json:
        _emit_json(info)
        return EXIT_OK
    for key, value in _flatten(info):
        print(f"{key}: {_human(key, value)}")
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
    if isinstance(value, int) and ("bytes" in key or key.endswith("size")):
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
    path = _index_path(args)
    with _open(args, "a") as index:
        # a path that is not in the index raises (and nothing is removed)
        removed = int(index.remove(list(args.paths)))
        after = len(index)
    if not args.quiet:
        print(f"removed {removed} image{'s' if removed != 1 else ''} from {path} ({after} left)")
    return EXIT_OK


def cmd_compact(args: argparse.Namespace) -> int:
    path = _index_path(args)
    with _open(args, "a") as index:
        before = _info(index)
        index.compact()
        after = _info(index)
        count = len(index)
    if not args.quiet:
        print(f"compacted {path}: {count} images, {before['size_bytes']} -> {after['size_bytes']} bytes on disk")
    return EXIT_OK


# default --threshold per metric (only where a universal default makes sense)
DEDUP_DEFAULTS = {"pearson": 0.99, "cosine": 0.99, "bhattacharyya": 0.1}
# ... and for metrics whose scale is fixed only for L1-normalised histograms (every
# built-in descriptor but cnn-*; not a descriptor='custom' index's own vectors)
DEDUP_HISTOGRAM_DEFAULTS = {"l1": 0.05, "intersect": 0.975}


def cmd_dedup(args: argparse.Namespace) -> int:
    path = _index_path(args)
    args.metric = _check_metric(args.metric)
    with _open(args, "r") as index:
        metric = args.metric or _index_metric(index)
        if args.threshold is None:
            defaults = dict(DEDUP_DEFAULTS)
            if index.info()["descriptor"].get("name", "custom") != "custom":
                defaults.update(DEDUP_HISTOGRAM_DEFAULTS)
            if metric not in defaults:
                raise UsageError(f"metric {metric!r} has no default duplicate threshold for this index; "
                                 "give --threshold")
            threshold = defaults[metric]
        else:
            threshold = args.threshold
        from fastimg.metrics import get_metric

        higher = bool(get_metric(metric).higher_is_better)
        pairs = _near_duplicate_pairs(index, metric, threshold, higher, args.batch)
        groups = _union_find_groups(pairs)
        ids = sorted({i for g in groups for i in g})
        paths = dict(zip(ids, index.paths(ids))) if ids else {}
    doc = {
        "index": path, "metric": metric, "threshold": threshold, "higher_is_better": higher,
        "groups": [[{"id": i, "path": os.fspath(paths[i])} for i in g] for g in groups],
        "pairs": [{"a": a, "b": b, "score": s} for a, b, s in pairs],
    }
    if args.json:
        _emit_json(doc)
        return EXIT_OK
    op = ">=" if higher else "<="
    if not groups:
        print(f"no near-duplicates ({metric} {op} {threshold:g})")
    for i, g in enumerate(doc["groups"], 1):
        print(("\n" if i > 1 else "") + f"group {i} ({len(g)} images, {metric} {op} {threshold:g}):")
        for item in g:
            print(f"  {item['path']}")
    return EXIT_OK


def _near_duplicate_pairs(index: Any, metric: str, threshold: float, higher: bool,
                          batch: int) -> list[tuple[int, int, float]]:
    """Every pair (a < b) of indexed images whose score is within ``threshold``.

    Exact search of every live row against the whole index, ``batch`` rows at a
    time. A row whose K-th neighbour is still within the threshold is searched
    again with 4*K, so the pairs are complete whatever the size of a duplicate
    group. For an asymmetric metric (chisqr, kl_div) a pair counts when either
    direction is within the threshold; its score is the first direction found
    within it (the lower id as the query when both are).
    """
    import numpy as np

    vectors = index.vectors  # row i is id i; deleted rows included, hence live_ids
    live = np.asarray(index.live_ids(), dtype=np.int64)
    if live.size < 2:
        return []

    def within(scores: Any) -> Any:
        return scores >= threshold if higher else scores <= threshold

    n = int(live.size)
    found: dict[tuple[int, int], float] = {}
    k0 = min(n, 16)
    for start in range(0, live.size, batch):
        pending = live[start:start + batch]
        k = k0
        while pending.size:
            ids, scores = index.search_batch(np.ascontiguousarray(vectors[pending]), k, metric=metric,
                                             exclude_self=False, mode="exact")
            ids = np.asarray(ids)
            scores = np.asarray(scores, dtype=np.float64)
            ok = within(scores) & (ids >= 0)
            for r, qid in enumerate(pending.tolist()):
                for j in np.flatnonzero(ok[r]):
                    other = int(ids[r, j])
                    if other == qid:
                        continue
                    key = (min(qid, other), max(qid, other))
                    found.setdefault(key, float(scores[r, j]))
            if k >= n:
                break
            pending = pending[ok[:, -1]]  # rows whose every neighbour so far is a duplicate
            k = min(n, k * 4)
    return sorted((a, b, s) for (a, b), s in found.items())


def _union_find_groups(pairs: list[tuple[int, int, float]]) -> list[list[int]]:
    parent: dict[int, int] = {}

    def find(x: int) -> int:
        parent.setdefault(x, x)
        root = x
        while parent[root] != root:
            root = parent[root]
        while parent[x] != root:
            parent[x], x = root, parent[x]
        return root

    for a, b, _ in pairs:
        ra, rb = find(a), find(b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)
    groups: dict[int, list[int]] = {}
    for x in parent:
        groups.setdefault(find(x), []).append(x)
    return sorted((sorted(g) for g in groups.values()), key=lambda g: (-len(g), g[0]))


def cmd_descriptors(args: argparse.Namespace) -> int:
    from fastimg.features.registry import descriptors

    items = [dict(d) for d in descriptors()]
    if args.json:
        _emit_json(items)
        return EXIT_OK
    def cell(v: Any) -> str:
        return "-" if v is None or v == "" else str(v)

    rows = [(cell(d.get("name")), cell(d.get("dim")), cell(d.get("default_metric")),
             (str(d.get("doc") or "").strip().splitlines() or [""])[0]) for d in items]
    header = ("name", "dim", "metric", "description")
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(3)]
    for r in [header, *rows]:
        print(f"{r[0]:<{widths[0]}}  {r[1]:>{widths[1]}}  {r[2]:<{widths[2]}}  {r[3]}".rstrip())
    return EXIT_OK


# --------------------------------------------------------------------------- #
# entry point
# --------------------------------------------------------------------------- #

def _error_line(exc: BaseException) -> str:
    from fastimg.errors import FastimgError, IndexNotFoundError

    if isinstance(exc, IndexNotFoundError):
        msg = str(exc)
        if "fastimg index" not in msg:
            msg += " (create one with `fastimg index DIR`)"
        return msg
    if isinstance(exc, (FastimgError, _CommandError)):
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
    parser = build_parser(with_eval=_wants_eval(argv))
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
        sys.stderr.write(f"{PROG}: error: {_error_line(exc)}\n")
        return EXIT_ERROR


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
