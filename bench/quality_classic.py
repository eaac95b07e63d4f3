"""Retrieval quality of the classic descriptors on Corel-1k (Wang): the table in bench/descriptors.md.

Protocol (classic Wang): every one of the 1000 images queries the other 999
(the query is left out); relevant = same class (99 per query).  For each
descriptor, every metric is scored with the float64 reference
``fastimg.metrics.exact_scores`` (identical to ``cv2.compareHist`` for the
histogram metrics), ranked (ties by lower id) and evaluated with
``fastimg.eval.evaluate_scores`` (mAP, P@10).

Usage::

    nice .venv/bin/python bench/quality_classic.py [--quick] [--only NAME ...] [--combos]

Descriptor matrices are cached in ``$TMPDIR/fastimg-quality-cache`` (keyed by
the descriptor spec) so re-runs only re-score.
"""
from __future__ import annotations

import argparse
import csv
import hashlib
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
COREL = REPO.parent / "shared" / "data" / "corel1k"

METRICS = ["bhattacharyya", "chisqr", "chisqr_alt", "intersect", "kl_div", "pearson", "cosine", "l1", "l2"]

# (descriptor name, params)
CONFIGS = [
    ("hsv72", {}),
    ("rgb64", {}),
    ("rgb512", {}),
    ("hsv", {"bins": [8, 12, 3]}),
    ("hsv", {"bins": [18, 3, 3]}),
    ("spatial-hsv72", {}),
    ("spatial-hsv", {"bins": [8, 12, 3]}),
    ("spatial-hsv", {"bins": [8, 4, 4]}),
    ("spatial-hsv", {"bins": [8, 12, 3], "grid": [3, 3], "center": False}),
    ("correlogram", {"colors": "hsv72"}),
    ("correlogram", {"colors": "rgb64"}),
    ("lbp", {"mapping": "u2"}),
    ("lbp", {"mapping": "riu2"}),
    ("spatial-lbp", {}),
    ("ehd", {}),
    ("classic", {}),
]


def load_corel():
    rows = list(csv.DictReader(open(COREL / "labels.csv", newline="")))
    paths = [str(COREL / r["path"]) for r in rows]
    labels = np.array([int(r["class_id"]) for r in rows])
    return paths, labels


def describe_cached(paths, name, params, cache: Path):
    from fastimg.registry import describe_many, get_descriptor

    d = get_descriptor(name, **params)
    key = hashlib.sha1(json.dumps(d.spec(), sort_keys=True).encode()).hexdigest()[:16]
    f = cache / f"{d.name}-{key}.npy"
    if f.exists():
        return d, np.load(f), None
    t = time.perf_counter()
    mat, errors = describe_many(paths, d, workers=2)
    dt = time.perf_counter() - t
    if errors:
        raise SystemExit(f"{len(errors)} images failed: {list(errors.values())[:3]}")
    cache.mkdir(parents=True, exist_ok=True)
    np.save(f, mat)
    return d, mat, dt / len(paths)


def score_matrix(metric: str, mat: np.ndarray, check: int = 3) -> np.ndarray:
    """All-pairs scores ``s[q, i] = metric(mat[q], mat[i])`` by numpy brute force (float64),
    spot-checked against ``fastimg.metrics.exact_scores`` on ``check`` queries."""
    x = np.asarray(mat, dtype=np.float64)
    n, dim = x.shape
    eps = np.finfo(np.float64).eps
    if metric == "bhattacharyya":
        sx = x.sum(axis=1)
        bc = np.sqrt(x) @ np.sqrt(x).T
        s = np.sqrt(np.maximum(0.0, 1.0 - bc / np.sqrt(np.outer(sx, sx))))
    elif metric == "pearson":
        s = np.corrcoef(x)
    elif metric == "cosine":
        nrm = np.linalg.norm(x, axis=1)
        s = (x @ x.T) / np.maximum(np.outer(nrm, nrm), 1e-300)
    elif metric == "l2":
        sq = (x * x).sum(axis=1)
        s = np.sqrt(np.maximum(sq[:, None] + sq[None, :] - 2 * x @ x.T, 0.0))
    elif metric == "chisqr":
        mask = x > eps
        inv = np.where(mask, 1.0 / np.where(mask, x, 1.0), 0.0)
        s = (np.where(mask, x, 0).sum(axis=1)[:, None] - 2 * mask.astype(np.float64) @ x.T + inv @ (x * x).T)
    elif metric == "kl_div":
        mask = x > eps
        qlogq = np.where(mask, x * np.log(np.where(mask, x, 1.0)), 0.0).sum(axis=1)
        logx = np.log(np.where(x > eps, x, 1e-10))
        s = qlogq[:, None] - np.where(mask, x, 0.0) @ logx.T
    else:
        s = np.empty((n, n))
        step = max(1, 4_000_000 // max(n * dim, 1))
        for a in range(0, n, step):
            q = x[a:a + step, None, :]
            if metric == "l1":
                s[a:a + step] = np.abs(q - x[None]).sum(axis=2)
            elif metric == "intersect":
                s[a:a + step] = np.minimum(q, x[None]).sum(axis=2)
            elif metric == "chisqr_alt":
                num = (q - x[None]) ** 2
                den = q + x[None]
                s[a:a + step] = 2 * np.where(den > eps, num / np.where(den > eps, den, 1.0), 0.0).sum(axis=2)
            else:
                raise ValueError(metric)
    if check:
        from fastimg.metrics import exact_scores

        for q in np.linspace(0, n - 1, check).astype(int):
            ref = exact_scores(metric, mat[q], mat)
            if not np.allclose(s[q], ref, rtol=1e-4, atol=1e-6):
                raise AssertionError(f"{metric}: brute force disagrees with exact_scores on query {q}: "
                                     f"max |diff| {np.abs(s[q] - ref).max()}")
    return s


def evaluate(metric: str, mat: np.ndarray, labels: np.ndarray) -> dict:
    from fastimg.eval import evaluate_scores
    from fastimg.metrics import get_metric

    s = score_matrix(metric, mat)
    return evaluate_scores(s, labels, higher_is_better=get_metric(metric).higher_is_better,
                           exclude_self=True, metrics=("map", "p@10"))


def combos(paths, labels, cache, metrics):
    """A small search over weighted concatenations (the 'combo' descriptor)."""
    out = []
    parts_sets = [
        [("spatial-hsv", {"bins": [8, 12, 3]}, 1.0), ("correlogram", {"colors": "hsv72"}, 1.0)],
        [("spatial-hsv", {"bins": [8, 12, 3]}, 1.0), ("correlogram", {"colors": "hsv72"}, 1.0), ("lbp", {}, 0.5)],
        [("spatial-hsv", {"bins": [8, 12, 3]}, 1.0), ("correlogram", {"colors": "hsv72"}, 1.0), ("ehd", {}, 0.5)],
        [("spatial-hsv", {"bins": [8, 12, 3]}, 1.0), ("correlogram", {"colors": "hsv72"}, 0.5), ("spatial-lbp", {}, 0.5)],
        [("spatial-hsv", {"bins": [8, 12, 3]}, 1.0), ("correlogram", {"colors": "hsv72"}, 1.0), ("lbp", {}, 0.5), ("ehd", {}, 0.5)],
        [("spatial-hsv", {"bins": [8, 12, 3]}, 1.0), ("lbp", {}, 0.5)],
    ]
    for ps in parts_sets:
        parts = [{"name": n, "params": p, "weight": w} for n, p, w in ps]
        out.append(("combo", {"parts": parts}))
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="only bhattacharyya, chisqr_alt, l1 and pearson")
    ap.add_argument("--only", nargs="*", help="descriptor names to run")
    ap.add_argument("--combos", action="store_true", help="also search weighted combinations")
    ap.add_argument("--cache", default=os.path.join(tempfile.gettempdir(), "fastimg-quality-cache"))
    args = ap.parse_args(argv)
    if not (COREL / "labels.csv").exists():
        print(f"Corel-1k not found at {COREL}", file=sys.stderr)
        return 2
    paths, labels = load_corel()
    metrics = ["bhattacharyya", "chisqr_alt", "l1", "pearson"] if args.quick else METRICS
    configs = [c for c in CONFIGS if not args.only or c[0] in args.only]
    if args.combos:
        configs += combos(paths, labels, Path(args.cache), metrics)
    print("| descriptor | params | dim | " + " | ".join(metrics) + " | best (mAP / P@10) | ms/img (2 threads) |")
    print("|---|---|---|" + "---|" * len(metrics) + "---|---|")
    for name, params in configs:
        d, mat, per_img = describe_cached(paths, name, params, Path(args.cache))
        res = {}
        for m in metrics:
            r = evaluate(m, mat, labels)
            res[m] = (r["map"], r["p@10"])
        best = max(res, key=lambda m: res[m][0])
        shown = {k: v for k, v in d.params.items() if k != "parts"}
        if "parts" in d.params:
            shown["parts"] = "+".join(f"{p['name']}x{p['weight']:g}" for p in d.params["parts"])
        cells = " | ".join(f"**{res[m][0]:.3f}**" if m == best else f"{res[m][0]:.3f}" for m in metrics)
        ms = f"{per_img * 1000:.2f}" if per_img is not None else "(cached)"
        print(f"| {d.name} | {json.dumps(shown)} | {d.dim} | {cells} | {best}: {res[best][0]:.3f} / {res[best][1]:.3f} | {ms} |",
              flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
