"""``fastimg descriptors`` and ``fastimg eval``: what can describe images, and how well.

``eval``'s full parser needs :mod:`fastimg.eval` (its layouts), which imports
NumPy: it is built only when ``eval`` is the command being run
(:func:`wants_eval`); otherwise a light placeholder lists the command.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Sequence

from fastimg.cli.common import EXIT_OK, CommandError, UsageError, add_command, emit_json, positive_int

__all__ = ["add_descriptors_parser", "add_eval_parser", "cmd_descriptors", "cmd_eval", "wants_eval"]

EVAL_HELP = "evaluate retrieval quality (mAP, P@k, N-S) on a labelled image collection"


# --------------------------------------------------------------------------- #
# descriptors
# --------------------------------------------------------------------------- #

def add_descriptors_parser(sub: Any) -> None:
    """``fastimg descriptors``."""
    p = add_command(sub, "descriptors", "list the available image descriptors",
                    "Name, dimension, default metric and a one-line description of each descriptor.",
                    """\
examples:
  fastimg descriptors
  fastimg descriptors --json""")
    p.add_argument("--json", action="store_true", help="print one JSON document")
    p.set_defaults(func=cmd_descriptors)


def cmd_descriptors(args: argparse.Namespace) -> int:
    from fastimg.features.registry import descriptors

    items = [dict(d) for d in descriptors()]
    if args.json:
        emit_json(items)
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
# eval
# --------------------------------------------------------------------------- #

def wants_eval(argv: Sequence[str]) -> bool:
    """True when the command word (first non-option argument) is ``eval``."""
    for arg in argv:
        if arg == "--":
            return False
        if not arg.startswith("-"):
            return arg == "eval"
    return False


def add_eval_parser(sub: Any, full: bool) -> None:
    """``fastimg eval``: the full parser when ``full`` (imports :mod:`fastimg.eval`),
    else a placeholder that only lists the command."""
    reason = None
    if full:
        try:
            from fastimg.eval import LAYOUTS
        except ImportError as exc:
            reason = f"fastimg.eval is not available ({exc})"
        else:
            _add_full_eval_parser(sub, LAYOUTS)
            return
    long = EVAL_HELP[0].upper() + EVAL_HELP[1:] + "."
    if reason:
        long += f"\n\nUnavailable in this installation: {reason}."
    p = add_command(sub, "eval", EVAL_HELP, long,
                    """\
examples:
  fastimg eval ../shared/data/corel1k --layout folders
  fastimg eval --help     # the full list of options""")
    p.add_argument("rest", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    p.set_defaults(func=_eval_unavailable, eval_reason=reason)


def _eval_unavailable(args: argparse.Namespace) -> int:
    raise CommandError(f"`fastimg eval` is unavailable: {args.eval_reason or 'fastimg.eval is not available'}")


def _add_full_eval_parser(sub: Any, layouts: Sequence[str]) -> None:
    p = add_command(
        sub, "eval", EVAL_HELP,
        "Evaluate every descriptor x metric x re-ranking combination on a labelled collection;\n"
        "features are extracted once per descriptor.",
        """\
layouts:
  folders   one sub-directory per class (Corel/Wang); every image queries the rest
  ukbench   groups.csv or groups of 4 consecutive numbers; the query counts (N-S score)
  holidays  NNNNNN.jpg, group = NNNNNN // 100, the ...00 image is the query

measures: map, map@K, p@K, r@K, ns
re-rankings: qe, alpha-qe, dba, k-reciprocal, with parameters as name:param=value,...

held-out evaluation of metric learning (--train-fraction):
  each --learn model (none, whiten, lda, nca; name:param=value,...) is fitted on the train
  part and only the held-out part is ranked and scored; --split image keeps every class in
  both parts, --split class holds whole classes out (repeat --split to report both).

examples:
  fastimg eval ../shared/data/corel1k --descriptor hsv --rerank none --rerank k-reciprocal
  fastimg eval ../shared/data/ukbench56 --layout ukbench --json
  fastimg eval DIR --layout holidays --rerank none --rerank qe -o results.json
  fastimg eval ../shared/data/corel1k --descriptor classic --train-fraction 0.5 \
      --split image --split class --learn none --learn whiten --learn lda""")
    p.add_argument("dir", metavar="DIR", help="the labelled image collection")
    p.add_argument("--layout", choices=layouts, default="folders", help="dataset layout (default: folders)")
    p.add_argument("--descriptor", action="append", metavar="SPEC", default=None,
                   help="descriptor name or name:param=value,... (repeatable; default: hsv72, the index default)")
    p.add_argument("--metric", action="append", metavar="NAME", default=None,
                   help="metric (repeatable; default: each descriptor's own)")
    p.add_argument("--rerank", action="append", metavar="SPEC", default=None,
                   help="re-ranking: none, auto, qe, alpha-qe, dba or k-reciprocal, "
                        "optionally with :param=value,... (repeatable; default: none)")
    p.add_argument("--measure", action="append", metavar="NAME", default=None,
                   help="measure: map, map@K, p@K, r@K, ns (repeatable; default depends on the layout)")
    p.add_argument("-k", "--depth", type=positive_int, default=None, metavar="K",
                   help="evaluate the top K of each ranking (default: the whole collection)")
    p.add_argument("--workers", type=positive_int, default=None, metavar="N",
                   help="feature extraction threads (default: all cores)")
    p.add_argument("--train-fraction", type=_open_fraction, default=None, metavar="F",
                   help="fit the --learn models on this share of the images (or of the classes, "
                        "--split class) and report on the rest only")
    p.add_argument("--split", action="append", choices=("image", "class"), default=None,
                   help="how the held-out part is drawn (repeatable; default: image)")
    p.add_argument("--seed", type=int, default=0, metavar="S", help="seed of the split (default: 0)")
    p.add_argument("--learn", action="append", metavar="SPEC", default=None,
                   help="none, whiten, lda or nca, with parameters as name:param=value,... "
                        "(repeatable; default with --train-fraction: none and lda)")
    p.add_argument("--json", action="store_true", help="print one JSON document instead of the table")
    p.add_argument("-o", "--output", metavar="FILE", default=None,
                   help="also write the JSON document to FILE")
    p.add_argument("--progress", action="store_true", help="progress bar during feature extraction")
    p.set_defaults(func=cmd_eval)


def _open_fraction(text: str) -> float:
    """argparse type: a number strictly between 0 and 1."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number between 0 and 1; got {text!r}") from None
    if not 0.0 < value < 1.0:
        raise argparse.ArgumentTypeError(f"expected a number strictly between 0 and 1; got {text!r}")
    return value


def cmd_eval(args: argparse.Namespace) -> int:
    """Evaluate (:func:`fastimg.eval.evaluate`); print a table or one JSON document."""
    from fastimg.eval import DEFAULT_MEASURES, evaluate, format_table, load_dataset

    if args.train_fraction is None and (args.split or args.learn):
        raise UsageError("--split and --learn need --train-fraction (a held-out evaluation)")
    ds = load_dataset(args.dir, args.layout)
    rows = evaluate(ds, descriptors=args.descriptor or ["hsv72"], metrics=args.metric,
                    reranks=args.rerank or [None], measures=args.measure, depth=args.depth,
                    workers=args.workers, progress=args.progress, train_fraction=args.train_fraction,
                    splits=args.split or ["image"], seed=args.seed, learn=args.learn)
    clean = [{k: (None if isinstance(v, float) and v != v else v) for k, v in r.items()} for r in rows]  # NaN -> null
    doc = {"dataset": str(ds.root), "layout": ds.layout, "n_images": len(ds), "n_queries": int(len(ds.queries)),
           "results": clean}
    if args.train_fraction is not None:
        doc["held_out"] = {"train_fraction": args.train_fraction, "splits": args.split or ["image"],
                           "seed": args.seed}
    if args.output:
        Path(args.output).write_text(json.dumps(doc, indent=2) + "\n")
    if args.json:
        emit_json(doc)
        return EXIT_OK
    sys.stdout.write(ds.describe() + "\n")
    if args.train_fraction is not None:
        sys.stdout.write(f"held out: models fitted on a train part ({args.train_fraction:g} of each class's "
                         f"images, or of the classes: --split), seed {args.seed}; scores on the rest only\n")
    failed = {r["descriptor"]: (r.get("n_failed") or 0, r.get("n_queries")) for r in rows if r.get("n_failed")}
    for spec, (n_failed, n_queries) in failed.items():
        sys.stdout.write(f"{spec}: {n_failed} of {len(ds)} images could not be read and were left out "
                         f"({n_queries} queries measured)\n")
    sys.stdout.write("\n")
    sys.stdout.write(format_table(rows, args.measure or DEFAULT_MEASURES[ds.layout]) + "\n")
    return EXIT_OK
