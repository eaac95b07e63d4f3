"""Retrieval quality of the classic descriptors on Corel-1k (Wang): the table in bench/descriptors.md.

Protocol (classic Wang): every one of the 1000 images queries the other 999
(the query is left out); relevant = same class (99 per query).  For each
descriptor, every metric is scored with the float64 reference
``fastimg.metrics.exact_scores`` (identical to ``cv2.compareHist`` for the
histogram metrics), ranked (ties by lower id) and evaluated with
``fastimg.eval.evaluate_scores`` (mAP, P@10).

Usage::

    nice .venv/bin/python bench/quality_classic.py [--quick] [--only NAME ...] [--search]

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
    ("cedd", {}),
    ("spatial-cedd", {}),
    ("classic", {}),
    ("classic-fast", {}),
]


def load_corel():
    rows = list(csv.DictReader(open(COREL / "labels.csv", newline="")))
    paths = [str(COREL / r["path"]) for r in rows]
    labels = np.array([int(r["class_id"]) for r in rows])
    return paths, labels


def describe_cached(paths, name, params, cache: Path):
    from fastimg.features.registry import describe_many, get_descriptor

    d = get_descriptor(name, **params)
    from fastimg.features import classic

    presets = {"classic": classic.CLASSIC_PARTS, "classic-fast": classic.CLASSIC_FAST_PARTS}
    ident = [d.spec(), presets.get(d.name)]  # presets' parts are not in their spec
    key = hashlib.sha1(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:16]
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


# candidate parts for the weighted-concatenation search: label -> (name, params)
PARTS = {
    "shsv72": ("spatial-hsv72", {}),
    "shsv": ("spatial-hsv", {"bins": [8, 12, 3]}),
    "corr": ("correlogram", {"colors": "hsv72"}),
    "lbp": ("lbp", {"mapping": "u2"}),
    "slbp": ("spatial-lbp", {}),
    "cedd": ("cedd", {}),
    "ehd": ("ehd", {}),
}

# weighted combinations tried by --search (label -> weight)
SEARCH = [
    {"shsv72": 1, "lbp": 1},
    {"shsv72": 1, "corr": 1},
    {"shsv72": 1, "cedd": 1},
    {"shsv72": 1, "corr": 1, "lbp": 1},
    {"shsv72": 1, "corr": 0.5, "lbp": 0.5},
    {"shsv72": 1, "corr": 1, "lbp": 0.5},
    {"shsv72": 1, "corr": 0.5, "lbp": 1},
    {"shsv72": 1, "corr": 1, "slbp": 1},
    {"shsv72": 1, "corr": 1, "lbp": 1, "cedd": 1},
    {"shsv72": 1, "corr": 1, "lbp": 1, "ehd": 0.5},
    {"shsv72": 1, "corr": 0.5, "lbp": 0.5, "cedd": 0.5},
    {"shsv": 1, "corr": 1, "lbp": 1},
    {"shsv72": 2, "corr": 1, "lbp": 1, "cedd": 1},
    {"shsv72": 1, "corr": 1, "lbp": 1.5, "cedd": 1},
    {"shsv72": 1, "corr": 1.5, "lbp": 1, "cedd": 1},
    {"shsv72": 1, "lbp": 1.5},
    {"shsv72": 1, "lbp": 2},
    {"shsv72": 1, "corr": 1, "lbp": 1.5},
    {"shsv72": 1, "corr": 1, "lbp": 2},
    {"shsv72": 1, "corr": 0.5, "lbp": 1.5},
    {"shsv72": 1, "corr": 1, "lbp": 1.5, "ehd": 0.5},
    {"shsv72": 1, "corr": 1, "lbp": 1.5, "ehd": 1},
    {"shsv72": 1, "corr": 1, "slbp": 1.5},
]


def combine(mats: dict, weights: dict) -> np.ndarray:
    """The ``combo`` descriptor from cached part matrices: each part row scaled to sum 1,
    times ``weight / sum(weights)``, concatenated (as fastimg's combo computes it)."""
    total = sum(weights.values())
    cols = []
    for label, w in weights.items():
        m = mats[label].astype(np.float64)
        s = m.sum(axis=1, keepdims=True)
        cols.append(np.where(s > 0, m / np.where(s > 0, s, 1), 0) * (w / total))
    return np.concatenate(cols, axis=1).astype(np.float32)


def search(paths, labels, cache: Path, metrics, start: int = 0) -> None:
    mats = {}
    for label, (name, params) in PARTS.items():
        mats[label] = describe_cached(paths, name, params, cache)[1]
    print("\n| combination (weights) | dim | " + " | ".join(metrics) + " | best (mAP / P@10) |")
    print("|---|---|" + "---|" * len(metrics) + "---|")
    for weights in SEARCH[start:]:
        mat = combine(mats, weights)
        res = {m: evaluate(m, mat, labels) for m in metrics}
        best = max(res, key=lambda m: res[m]["map"])
        cells = " | ".join(f"**{res[m]['map']:.3f}**" if m == best else f"{res[m]['map']:.3f}" for m in metrics)
        label = " + ".join(f"{k}x{v:g}" for k, v in weights.items())
        print(f"| {label} | {mat.shape[1]} | {cells} | {best}: {res[best]['map']:.3f} / {res[best]['p@10']:.3f} |",
              flush=True)


def ukbench(cache: Path) -> None:
    """N-S score on the 56-image UKBench sample (every image queries all 56, itself included)."""
    from fastimg.eval import evaluate_scores
    from fastimg.metrics import get_metric

    root = REPO.parent / "shared" / "data" / "ukbench56"
    rows = list(csv.DictReader(open(root / "groups.csv", newline="")))
    paths = [str(root / r["file"]) for r in rows]
    labels = np.array([int(r["group"]) for r in rows])
    print("\n| descriptor | metric | N-S (max 4) |\n|---|---|---|")
    for name in ["hsv72", "hsv", "spatial-hsv72", "correlogram", "lbp", "cedd", "classic-fast", "classic"]:
        from fastimg.features.registry import describe_many, get_descriptor

        d = get_descriptor(name)
        mat, errors = describe_many(paths, d, workers=2)
        assert not errors, errors
        s = score_matrix(d.default_metric, mat)
        r = evaluate_scores(s, labels, higher_is_better=get_metric(d.default_metric).higher_is_better,
                            exclude_self=False, metrics=("ns",))
        print(f"| {name} | {d.default_metric} | {r['ns']:.2f} |", flush=True)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="only bhattacharyya, chisqr_alt, l1 and pearson")
    ap.add_argument("--only", nargs="*", help="descriptor names to run")
    ap.add_argument("--search", action="store_true", help="only the weighted-combination search (from cached parts)")
    ap.add_argument("--start", type=int, default=0, help="skip the first START combinations of the search")
    ap.add_argument("--ukbench", action="store_true", help="only the N-S score on the 56-image UKBench sample")
    ap.add_argument("--cache", default=os.path.join(tempfile.gettempdir(), "fastimg-quality-cache"))
    args = ap.parse_args(argv)
    if not (COREL / "labels.csv").exists():
        print(f"Corel-1k not found at {COREL}", file=sys.stderr)
        return 2
    paths, labels = load_corel()
    metrics = ["bhattacharyya", "chisqr_alt", "l1", "pearson"] if args.quick else METRICS
    if args.ukbench:
        ukbench(Path(args.cache))
        return 0
    if args.search:
        search(paths, labels, Path(args.cache), ["bhattacharyya", "chisqr_alt", "l1"] if args.quick else metrics,
               args.start)
        return 0
    configs = [c for c in CONFIGS if not args.only or c[0] in args.only]
    print("| descriptor | params | dim | " + " | ".join(metrics) + " | best (mAP / P@10) |")
    print("|---|---|---|" + "---|" * len(metrics) + "---|")
    for name, params in configs:
        d, mat, _ = describe_cached(paths, name, params, Path(args.cache))
        res = {}
        for m in metrics:
            r = evaluate(m, mat, labels)
            res[m] = (r["map"], r["p@10"])
        best = max(res, key=lambda m: res[m][0])
        shown = {k: v for k, v in d.params.items() if k != "parts"}
        if "parts" in d.params:
            shown["parts"] = "+".join(f"{p['name']}x{p['weight']:g}" for p in d.params["parts"])
        cells = " | ".join(f"**{res[m][0]:.3f}**" if m == best else f"{res[m][0]:.3f}" for m in metrics)
        print(f"| {d.name} | {json.dumps(shown)} | {d.dim} | {cells} | {best}: {res[best][0]:.3f} / {res[best][1]:.3f} |",
              flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
