"""``fastimg query`` and ``fastimg dedup``: searching the index."""
from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Any

from fastimg.cli.common import (
    EXIT_ERROR,
    EXIT_OK,
    PROG,
    CommandError,
    UsageError,
    add_command,
    add_scheduler_argument,
    check_metric,
    emit_json,
    finite_float,
    index_path,
    missing_files,
    open_index,
    positive_int,
    progress_bar,
    shown,
    warn_missing,
)
from fastimg.errors import ImageError, escape_text

__all__ = ["add_query_parser", "add_dedup_parser", "cmd_query", "cmd_dedup"]


# --------------------------------------------------------------------------- #
# parsers
# --------------------------------------------------------------------------- #

def add_query_parser(sub: Any, ix: argparse.ArgumentParser) -> None:
    """``fastimg query IMAGE...``."""
    p = add_command(sub, "query", "find the images most similar to one or more query images",
                    "Print rank, score and path of the K most similar indexed images for each\n"
                    "query image (or indexed image, --id). With several queries, each block\n"
                    "starts with '==> QUERY <=='.",
                    """\
examples:
  fastimg query photo.jpg
  fastimg query photo.jpg -k 20 --metric bhattacharyya
  fastimg query --id 22 -k 5
  fastimg query photo.jpg --under ~/photos/2019 --threshold 0.9
  fastimg query a.jpg b.jpg --json > hits.json
  fastimg query photo.jpg --ann --ef 100
  fastimg query photo.jpg --html results.html
  curl -s https://example.org/cat.jpg | fastimg query - -k 5

--json prints one JSON document. For one query image it is the object
  {"query": PATH, "index": PATH, "metric": NAME, "took_ms": FLOAT,
   "results": [{"rank": 1, "id": INT, "path": PATH, "score": FLOAT}, ...]}
and for several query images a JSON list of such objects, in argument order,
followed by {"query": PATH, "error": MESSAGE} for each query image that could
not be read (missing, not an image): the others are still answered, each failure
is one 'fastimg: error:' line on stderr, and the exit status is 1.
"query" and "index" are absolute paths; took_ms is the time of the search call
(describing the query image included, opening the index excluded). Scores are the
metric's own values: higher is better for similarities (pearson, cosine,
intersect), lower is better for distances (bhattacharyya, chisqr, chisqr_alt,
kl_div, l2, l1).
A query image that is itself in the index (or --id) is left out of its own
results unless --include-self is given; an identical copy of it stays (for '-',
the first indexed image with the identical descriptor vector is left out).
An --id query is the indexed image's stored vector; its JSON object also has
"id": N, and "query" is that image's path. Queries run in argument order, the
--id ones after the images.
--threshold T keeps results within T in the metric's direction (score >= T for
similarities, score <= T for distances); --under DIR keeps indexed images under
DIR (repeatable; the search is then exact).""", [ix])
    p.add_argument("images", nargs="*", metavar="IMAGE",
                   help="query image file(s); '-' reads one encoded image from standard input")
    p.add_argument("--id", dest="ids", type=nonneg_int, action="append", default=[], metavar="N",
                   help="search by the indexed image with this id (repeatable; `--json` shows ids)")
    p.add_argument("-k", type=positive_int, default=10, metavar="K",
                   help="number of results per query (default 10; capped at the index size)")
    p.add_argument("--metric", metavar="NAME", default=None,
                   help="similarity/distance (default: the index's metric)")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--exact", dest="mode", action="store_const", const="exact",
                      help="exhaustive exact search")
    mode.add_argument("--ann", dest="mode", action="store_const", const="ann",
                      help="approximate search on the HNSW graph (fastimg index --ann)")
    p.set_defaults(mode="auto")
    p.add_argument("--ef", type=positive_int, metavar="N", default=None,
                   help="HNSW search breadth (higher: better recall, slower)")
    p.add_argument("--rerank", metavar="SPEC", default=None,
                   help="re-ranking: qe, aqe, alpha-qe, dba, k-reciprocal[:param=value,...], or auto "
                        "(k-reciprocal sized from the data, or none)")
    p.add_argument("--threshold", type=finite_float, metavar="T", default=None,
                   help="keep results within T (>= T for similarities, <= T for distances)")
    p.add_argument("--under", action="append", default=[], metavar="DIR",
                   help="keep indexed images under DIR (repeatable)")
    p.add_argument("--include-self", action="store_true",
                   help="keep the query image in its own results when it is indexed")
    p.add_argument("--json", action="store_true", help="print one JSON document")
    p.add_argument("--html", metavar="FILE", default=None,
                   help="also write a self-contained HTML page with thumbnails")
    add_scheduler_argument(p)
    p.set_defaults(func=cmd_query)


def add_dedup_parser(sub: Any, ix: argparse.ArgumentParser) -> None:
    """``fastimg dedup`` (the algorithm and the default thresholds: :mod:`fastimg.dedup`)."""
    from fastimg.dedup import (VERIFY_CANDIDATES, VERIFY_HASH_BITS, VERIFY_MIN_AGREEMENT,  # light
                               VERIFY_MIN_INLIERS, VERIFY_MIN_INLIERS_SCENE, defaults_text)

    p = add_command(sub, "dedup", "find groups of near-duplicate images",
                    "Find pairs of near-duplicate images and print the groups they link\n"
                    "(connected components: A~B and B~C put A, B and C in one group).\n"
                    "Default (--verify orb): each image's nearest neighbours in the index and\n"
                    "the pairs with close perceptual (DCT) hashes are candidates; a candidate\n"
                    "is a duplicate when enough ORB keypoint matches fit one rotation + scale +\n"
                    "shift (RANSAC) and the two images, one warped onto the other, agree pixel\n"
                    "by pixel (copies of one photo; --same-scene also groups two photos of one\n"
                    "scene taken moments apart).  It reads every indexed image again.  With\n"
                    "--threshold (or --verify none): every pair within the threshold (exact search).",
                    f"""\
examples:
  fastimg dedup
  fastimg dedup --min-inliers 40          # stricter verification
  fastimg dedup --same-scene              # also group bursts (shots of one scene)
  fastimg dedup --metric pearson --threshold 0.995
  fastimg dedup --json | jq '.groups[] | map(.path)'

Verification (default): held out on Corel-1k copies (resize 50 %, JPEG q30,
90 % crop, +-20 % brightness, 3-5 deg rotation) it finds >= 0.95 of the copies at
precision >= 0.99, bursts of one scene counted as false pairs (bench/quality.md);
cost: one image read + ORB per image and about one match per candidate pair (a
few ms each).  Defaults: {VERIFY_CANDIDATES} neighbours per image, hash distance <= {VERIFY_HASH_BITS}
bits, >= {VERIFY_MIN_INLIERS} inliers and agreement >= {VERIFY_MIN_AGREEMENT} (the correlation of the two
96 px grey thumbnails over their overlap); --same-scene: >= {VERIFY_MIN_INLIERS_SCENE} inliers alone.

The threshold's meaning follows the metric's direction:
  similarity metrics (higher is better: pearson, cosine, intersect):
      a pair is a duplicate when score >= T
  distance metrics (lower is better: bhattacharyya, chisqr, chisqr_alt, kl_div, l2, l1):
      a pair is a duplicate when score <= T
With --verify none and no --threshold, T is per built-in descriptor, for its
default metric (calibrated on the same copies; bench/quality.md):
{defaults_text()}
Other metrics, other descriptor parameters, custom vectors and whitened
indexes need --threshold.  --verify orb with --threshold: a verified pair must
also be within T.

--json prints {{"index", "metric", "threshold", "higher_is_better", "verify",
  "groups": [[{{"id", "path"}}, ...], ...],   largest group first
  "pairs": [{{"a": ID, "b": ID, "score": FLOAT, "inliers": INT|null,
             "agreement": FLOAT|null}}, ...]}}   a < b""",
                    [ix])
    p.add_argument("--threshold", type=finite_float, metavar="T", default=None,
                   help="duplicate threshold (see below; without --verify, it turns verification off)")
    p.add_argument("--verify", choices=("orb", "none"), default=None,
                   help="orb: verify candidates on the images (default without --threshold); "
                        "none: the threshold alone (default with --threshold)")
    p.add_argument("--min-inliers", type=positive_int, metavar="N", default=None,
                   help=f"--verify orb: matches a transform must explain (default {VERIFY_MIN_INLIERS}; "
                        f"{VERIFY_MIN_INLIERS_SCENE} with --same-scene)")
    p.add_argument("--same-scene", action="store_true",
                   help="--verify orb: inliers alone, so two photos of one scene from one spot (a burst) "
                        "are grouped too (library: same_photo=False)")
    p.add_argument("--min-agreement", type=finite_float, metavar="T", default=None,
                   help=f"--verify orb: pixel agreement a verified pair needs, a correlation in [-1, 1] "
                        f"(default {VERIFY_MIN_AGREEMENT}; not with --same-scene)")
    p.add_argument("--candidates", type=positive_int, metavar="N", default=VERIFY_CANDIDATES,
                   help=f"--verify orb: nearest neighbours per image checked (default {VERIFY_CANDIDATES})")
    p.add_argument("--workers", type=positive_int, metavar="N", default=None,
                   help="--verify orb: threads reading and matching images (default: one per CPU)")
    p.add_argument("--metric", metavar="NAME", default=None,
                   help="metric (default: the index's metric)")
    p.add_argument("--batch", type=positive_int, metavar="N", default=256,
                   help="query rows per exact-search batch (default 256)")
    p.add_argument("--json", action="store_true", help="print one JSON document")
    p.set_defaults(func=cmd_dedup)


# --------------------------------------------------------------------------- #
# commands
# --------------------------------------------------------------------------- #

def _hit_dict(hit: Any) -> dict:
    return {"rank": int(hit.rank), "id": int(hit.id), "path": os.fspath(hit.path),
            "score": float(hit.score)}


def nonneg_int(text: str) -> int:
    """argparse type: an integer >= 0."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an id (an integer >= 0); got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected an id (an integer >= 0); got {value}")
    return value


def cmd_query(args: argparse.Namespace) -> int:
    if not args.images and not args.ids:
        raise UsageError("give a query IMAGE (or '-' for standard input), or --id N")
    if args.ef is not None and args.mode == "exact":
        raise UsageError("--ef applies to approximate search; it cannot be combined with --exact")
    if args.under and args.mode == "ann":
        raise UsageError("--under searches exactly; it cannot be combined with --ann")
    args.metric = check_metric(args.metric)
    if args.images.count("-") > 1:
        raise UsageError("standard input ('-') can be given once")
    # like `ls a missing b`: every query that can be answered is answered; the others are
    # reported one line each on stderr and the exit status is 1
    failed: dict[str, str] = {}
    for img in args.images:
        if img == "-":
            continue
        if not os.path.exists(img):
            failed[img] = f"{img}: no such file"
        elif os.path.isdir(img):
            failed[img] = f"{img}: is a directory, not an image"
    if failed and len(failed) == len(args.images) and not args.ids:
        raise CommandError(next(iter(failed.values())))
    path = index_path(args)
    docs = []
    with open_index(args, "r", sharded=True) as index:
        metric = args.metric or index.metric
        if args.mode == "ann":  # the graph's status, for a message in the command line's terms
            _check_graph(index, path, metric)
        kwargs: dict[str, Any] = {"mode": args.mode}
        if args.metric is not None:
            kwargs["metric"] = args.metric
        if args.ef is not None:
            kwargs["ef"] = args.ef
        if args.rerank is not None:
            kwargs["rerank"] = args.rerank
        if args.threshold is not None:
            kwargs["threshold"] = args.threshold
        if args.under:
            kwargs["where"] = [os.path.abspath(os.path.expanduser(d)) for d in args.under]
            for given, full in zip(args.under, kwargs["where"]):
                if not os.path.isdir(full):  # a typo, or a folder named from the index root: say so
                    sys.stderr.write(shown(f"{PROG}: warning: --under {given}: {full} is not a directory "
                                           "(DIR is a folder, relative to the current directory)") + "\n")
        several = len(args.images) + len(args.ids) > 1
        for img in args.images:
            if img in failed:
                continue
            query: Any = img
            if img == "-":
                query = sys.stdin.buffer.read()
                if not query:
                    raise CommandError("-: standard input is empty (expected an encoded image)")
            t0 = time.perf_counter()
            try:
                hits = index.search(query, args.k, exclude_self=not args.include_self, **kwargs)
            except ImageError as exc:  # this query's file; the others are still answered
                if not several:
                    raise
                failed[img] = str(exc)
                continue
            took = (time.perf_counter() - t0) * 1000.0
            docs.append({"query": "-" if img == "-" else os.path.abspath(img), "index": path, "metric": metric,
                         "took_ms": round(took, 3), "results": [_hit_dict(h) for h in hits]})
        for i in args.ids:
            if i not in index:
                raise CommandError(f"--id {i}: no such image in the index at {path} (ids: `fastimg query "
                                   "IMAGE --json`, `fastimg info`)")
            t0 = time.perf_counter()
            if args.include_self:
                hits = index.search(index.vectors_of([i])[0], args.k, exclude_self=False, **kwargs)
            else:
                hits = index.similar(i, args.k, **kwargs)
            took = (time.perf_counter() - t0) * 1000.0
            docs.append({"query": index.entry(i).path, "id": i, "index": path, "metric": metric,
                         "took_ms": round(took, 3), "results": [_hit_dict(h) for h in hits]})
        # the files of the hits: still there? (one stat each; a warning line if not)
        missing = missing_files(index, [r["id"] for d in docs for r in d["results"]])
    rc = EXIT_ERROR if failed else EXIT_OK
    if args.html:
        from fastimg._html import write_results_page

        write_results_page(docs, args.html)

    if args.json:
        errors = [{"query": "-" if img == "-" else os.path.abspath(img), "error": msg}
                  for img, msg in failed.items()]
        emit_json(docs[0] if len(docs) == 1 and not failed else docs + errors)
        warn_missing(missing, "result files")
        _report_failed(failed)
        return rc
    out = sys.stdout
    for i, doc in enumerate(docs):
        if len(args.images) + len(args.ids) > 1:
            out.write(("\n" if i else "") + f"==> {shown(doc['query'])} <==\n")
        scores = [r["score"] for r in doc["results"]]
        fixed = all(s == 0 or 1e-4 <= abs(s) < 1e6 for s in scores)
        cells = [f"{s:.6f}" if fixed else f"{s:.6g}" for s in scores]
        width = max([len(c) for c in cells] or [1])
        for r, cell in zip(doc["results"], cells):
            out.write(f"{r['rank']:>3}  {cell:>{width}}  {shown(r['path'])}\n")
        if not doc["results"]:
            out.write("(no results)\n")
    if args.html:
        sys.stderr.write(f"wrote {args.html}\n")
    warn_missing(missing, "result files")
    _report_failed(failed)
    return rc


def _report_failed(failed: dict[str, str]) -> None:
    """One ``fastimg: error:`` line per query that could not be answered (paths escaped)."""
    sys.stdout.flush()
    for message in failed.values():
        sys.stderr.write(f"{PROG}: error: {escape_text(message)}\n")


def _check_graph(index: Any, path: str, metric: str) -> None:
    """``--ann``: an error naming the command to run when the graph cannot serve ``metric``."""
    ann = index.ann_info()
    if not ann.get("built"):
        raise CommandError(f"--ann: the index at {path} has no HNSW graph (build it with "
                           f"`fastimg index DIR --ann`)")
    if ann.get("metric") not in (None, metric):
        raise CommandError(f"--ann: the HNSW graph of {path} serves metric {ann.get('metric')!r}, "
                           f"not {metric!r} (use --exact, or --metric {ann.get('metric')})")


def cmd_dedup(args: argparse.Namespace) -> int:
    from fastimg.dedup import _no_default, default_threshold
    from fastimg.metrics import get_metric

    path = index_path(args)
    args.metric = check_metric(args.metric)
    verify = args.verify or ("orb" if args.threshold is None else "none")
    if args.same_scene and args.min_agreement is not None:
        raise UsageError("--min-agreement applies without --same-scene only (--same-scene accepts a pair on its "
                         "inliers alone)")
    if verify == "none" and (args.same_scene or args.min_agreement is not None or args.min_inliers is not None):
        raise UsageError("--same-scene, --min-agreement and --min-inliers apply to --verify orb only "
                         "(the default without --threshold)")
    with open_index(args, "r") as index:
        metric = args.metric or index.metric
        threshold = args.threshold
        if threshold is None and verify == "none":
            threshold = default_threshold(index, metric)
            if threshold is None:
                raise UsageError(f"metric {metric!r} has no default duplicate threshold for this index: "
                                 f"{_no_default(index, metric)}; give --threshold (or drop --verify none)")
        higher = bool(get_metric(metric).higher_is_better)
        show = not args.json and sys.stderr.isatty()
        progress, bar = progress_bar("duplicates", show)
        try:
            groups = index.duplicates(threshold, metric=metric, batch=args.batch, progress=progress or None,
                                      verify=verify, candidates=args.candidates, min_inliers=args.min_inliers,
                                      workers=args.workers, same_photo=not args.same_scene,
                                      min_agreement=args.min_agreement)
        finally:
            if bar is not None:
                bar.close()
    pairs = sorted((p for g in groups for p in g.pairs), key=lambda p: (p.a, p.b))
    doc = {
        "index": path, "metric": metric, "threshold": threshold, "higher_is_better": higher, "verify": verify,
        "groups": [[{"id": i, "path": p} for i, p in zip(g.ids, g.paths)] for g in groups],
        "pairs": [{"a": p.a, "b": p.b, "score": p.score, "inliers": p.inliers, "agreement": p.agreement}
                  for p in pairs],
    }
    if args.json:
        emit_json(doc)
        return EXIT_OK
    rules = []
    if verify == "orb":
        from fastimg.dedup import VERIFY_MIN_AGREEMENT, VERIFY_MIN_INLIERS, VERIFY_MIN_INLIERS_SCENE

        n_in = args.min_inliers or (VERIFY_MIN_INLIERS_SCENE if args.same_scene else VERIFY_MIN_INLIERS)
        rules.append(f">= {n_in} ORB inliers")
        if not args.same_scene:
            agree = VERIFY_MIN_AGREEMENT if args.min_agreement is None else args.min_agreement
            rules.append(f"agreement >= {agree:g}")
    if threshold is not None:
        rules.append(f"{metric} {'>=' if higher else '<='} {threshold:g}")
    rule = ", ".join(rules)
    if not groups:
        print(f"no near-duplicates ({rule})")
    for i, g in enumerate(doc["groups"], 1):
        print(("\n" if i > 1 else "") + f"group {i} ({len(g)} images, {rule}):")
        for item in g:
            print(f"  {shown(item['path'])}")
    return EXIT_OK

