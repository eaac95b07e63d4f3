"""``fastimg learn``: learn a projection from labelled images and store it in the index."""
from __future__ import annotations

import argparse
import sys
from typing import Any

from fastimg.cli.common import EXIT_OK, INDEX_RULE, UsageError, add_command, emit_json, open_index, positive_int

__all__ = ["add_learn_parser", "cmd_learn"]

METHODS = ("lda", "nca")  # fastimg.learn.METHODS (not imported here: `fastimg --help` stays light)


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1]; got {text!r}") from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1]; got {text!r}")
    return value


def add_learn_parser(sub: Any, ix: argparse.ArgumentParser) -> None:
    """``fastimg learn``."""
    p = add_command(
        sub, "learn", "learn from labelled images what 'similar' means (a projection stored in the index)",
        "Fit a linear projection (metric learning: LDA, or NCA) on the indexed images the labels name,\n"
        "and store it in the index: every later search runs in the learned space. It replaces a\n"
        "PCA-whitening (one linear map per index); an HNSW graph is rebuilt in the new space.",
        f"""\
labels:
  groups.csv  rows 'path,label' (optional header; paths as given, or relative to the CSV)
  DIR         one sub-directory per class (the 'folders' layout of `fastimg eval`)
  labelled files that are not in the index are reported and ignored.

examples:
  fastimg learn --labels groups.csv                 # LDA, n_classes - 1 dimensions
  fastimg learn -i photos.fastimg --labels labelled/ --dim 64 --shrinkage 0.9
  fastimg learn --labels groups.csv --method nca
  fastimg learn --clear                             # back to the raw descriptors

{INDEX_RULE}""", [ix])
    what = p.add_mutually_exclusive_group()
    what.add_argument("--labels", metavar="CSV|DIR", default=None, help="the labelled images (see above)")
    what.add_argument("--clear", action="store_true", help="remove the learned projection")
    p.add_argument("--method", choices=METHODS, default="lda", help="lda (default; closed form) or nca")
    p.add_argument("--dim", type=positive_int, default=None, metavar="N",
                   help="output dimension (default: n_classes - 1 for lda, min(D, 64) for nca)")
    p.add_argument("--shrinkage", type=_fraction, default=None, metavar="S",
                   help="covariance shrinkage in [0, 1] (default 0.5); larger carries over better to "
                        "classes the labels do not cover")
    p.add_argument("--json", action="store_true", help="print the fit as one JSON document")
    p.set_defaults(func=cmd_learn)


def cmd_learn(args: argparse.Namespace) -> int:
    """Fit (:meth:`fastimg.Index.fit_projection`) or clear the learned projection."""
    if not args.clear and args.labels is None:
        raise UsageError("give --labels CSV|DIR (or --clear)")
    with open_index(args, "a") as index:
        if args.clear:
            had = index.info()["projection"] is not None
            index.clear_projection()
            if args.json:
                emit_json({"index": str(index.path), "cleared": had})
            else:
                print(f"{index.path}: " + ("learned projection removed" if had else "no learned projection"))
            return EXIT_OK
        options = {} if args.shrinkage is None else {"shrinkage": args.shrinkage}
        fit = index.fit_projection(args.labels, method=args.method, dim=args.dim, **options)
        ann = index.ann_info()
        rebuilt = None
        if ann.get("built"):  # the graph served the previous space: rebuild it with its parameters
            rebuilt = index.build_ann(M=ann["M"], ef_construction=ann["ef_construction"], metric=ann["metric"],
                                      ef=ann.get("ef"))
    if args.json:
        emit_json({"index": str(index.path), "projection": fit, "ann": rebuilt})
        return EXIT_OK
    lab = fit["labels"]
    print(f"{index.path}: {fit['method']} projection learned from {lab['matched']} labelled images in "
          f"{lab['classes']} classes ({index.dim} -> {fit['dim']} dimensions)")
    if lab["not_in_index"]:
        n = lab["not_in_index"]
        print(f"{n} labelled item{'s' if n != 1 else ''} not in the index (ignored), e.g. "
              + ", ".join(map(str, fit["not_in_index_examples"])))
    if rebuilt:
        print(f"HNSW graph rebuilt in the learned space: {rebuilt['rows']} rows")
    sys.stdout.flush()
    return EXIT_OK
