"""Re-ranking evaluation suite: collections with different group sizes, held out.

Collections (every image of a group queries the rest of the collection, leave-one-out;
AP over the whole ranking):

* ``corel``    - Corel-1k, 10 classes x 100: 99 relevant images per query.
* ``ukbench``  - UKBench-56, 14 objects x 4 views: 3 relevant per query (the query is
  left out of its own ranking here, unlike the N-S protocol of ``fastimg eval``).
* ``neardup``  - generated instance groups of 2-4: 300 Corel images (30 per class),
  each with 1-3 strong edits (a crop keeping 50-70 % of the area, a rotation of
  8-25 degrees, or a perspective warp moving the corners by up to 18 %; then with
  probability 0.7 a colour shift; always a JPEG re-encoding at quality 25-60), among
  the other 700 Corel images as distractors (not queried).  1-3 relevant per query.
  The edits are made with OpenCV from fixed seeds into ``--cache`` (never the
  repository) and reused when present.

Held out: the queries of each collection are split in two halves - by group
(``ukbench``, ``neardup``: even / odd group number) or, for Corel's 10 classes, by
image (even / odd position inside its class).  The database is always the whole
collection.  Parameters are chosen on half ``A`` (``--tune``: each method's grid point with
the best worst-case change over the runs; for qe and alpha-qe the worst one-sided 95 %
lower confidence bound, :func:`lower_bound`) and reported on half ``B`` (``--report``).  Features are extracted once per (image, descriptor) and cached as
``.npy`` under ``--cache`` (default ``/tmp/fastimg-rerank-suite``), keyed by the image's bytes.

Descriptors are arguments (``--descriptor NAME[@METRIC]``, default ``classic``,
``correlogram``, ``cnn-crow`` with their default metrics: l1, l1, cosine).

Commands (heavy: run niced on a shared machine)::

    flock -s /tmp/fastimg-bench.lock nice .venv/bin/python bench/rerank_suite.py --tune all --json A.json
    flock -s /tmp/fastimg-bench.lock nice .venv/bin/python bench/rerank_suite.py --tune qe --tune alpha-qe --json A-qe.json
    flock -s /tmp/fastimg-bench.lock nice .venv/bin/python bench/rerank_suite.py --report --tuned A.json --tuned A-qe.json
    nice .venv/bin/python bench/rerank_suite.py --spec auto --spec k-reciprocal
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from conftest import SHARED_DATA  # noqa: E402

DEFAULT_CACHE = Path("/tmp/fastimg-rerank-suite")
DEFAULT_DESCRIPTORS = ["classic", "correlogram", "cnn-crow"]
COLLECTIONS = ["corel", "ukbench", "neardup"]


def log(s: str) -> None:
    print(s, flush=True)  # a script, not library code


# --------------------------------------------------------------------------- collections
@dataclass
class Collection:
    """A labelled collection: ``labels[i]`` groups image ``i``; ``queries`` are ids;
    ``half[j]`` is 0 (tuning half A) or 1 (report half B) for query ``j``."""

    name: str
    paths: list
    labels: np.ndarray
    queries: np.ndarray
    half: np.ndarray

    def __len__(self) -> int:
        return len(self.paths)


def corel_collection(root: Path = SHARED_DATA / "corel1k") -> Collection:
    from fastimg.eval import load_dataset

    ds = load_dataset(root, "folders")
    labels = np.asarray(ds.labels, np.int64)
    pos = np.zeros(len(labels), np.int64)
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        pos[idx] = np.arange(idx.size)
    return Collection("corel", [str(p) for p in ds.paths], labels, np.arange(len(labels)), pos % 2)


def ukbench_collection(root: Path = SHARED_DATA / "ukbench56") -> Collection:
    from fastimg.eval import load_dataset

    ds = load_dataset(root, "ukbench")
    labels = np.asarray(ds.labels, np.int64)
    return Collection("ukbench", [str(p) for p in ds.paths], labels, np.arange(len(labels)), labels % 2)


def _edit(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One strong edit: a geometric change, maybe a colour shift (JPEG is applied on writing)."""
    import cv2

    h, w = img.shape[:2]
    kind = rng.integers(3)
    if kind == 0:  # crop keeping 50-70 % of the area, resized back
        area = rng.uniform(0.5, 0.7)
        aspect = rng.uniform(0.8, 1.25)
        cw = int(round(min(w, w * np.sqrt(area * aspect))))
        ch = int(round(min(h, h * area * w / max(cw, 1))))
        x0 = int(rng.integers(0, w - cw + 1))
        y0 = int(rng.integers(0, h - ch + 1))
        out = cv2.resize(img[y0:y0 + ch, x0:x0 + cw], (w, h), interpolation=cv2.INTER_AREA)
    elif kind == 1:  # rotation, zoomed so that no border shows
        ang = rng.uniform(8, 25) * rng.choice([-1, 1])
        t = np.deg2rad(abs(ang))
        zoom = max((w * np.cos(t) + h * np.sin(t)) / w, (w * np.sin(t) + h * np.cos(t)) / h)
        m = cv2.getRotationMatrix2D((w / 2, h / 2), ang, zoom)
        out = cv2.warpAffine(img, m, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT101)
    else:  # viewpoint-like perspective warp
        src = np.float32([[0, 0], [w, 0], [w, h], [0, h]])
        jit = rng.uniform(0.06, 0.18, (4, 2)) * [w, h] * rng.choice([-1, 1], (4, 2))
        dst = np.float32(src + jit)
        m = cv2.getPerspectiveTransform(src, dst)
        out = cv2.warpPerspective(img, m, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT101)
    if rng.random() < 0.7:  # colour shift: hue, saturation, brightness
        hsv = cv2.cvtColor(out, cv2.COLOR_BGR2HSV).astype(np.float32)
        hsv[..., 0] = (hsv[..., 0] + rng.uniform(4, 12) * rng.choice([-1, 1])) % 180
        hsv[..., 1] = np.clip(hsv[..., 1] * rng.uniform(0.6, 1.4), 0, 255)
        hsv[..., 2] = np.clip(hsv[..., 2] * rng.uniform(0.7, 1.3), 0, 255)
        out = cv2.cvtColor(hsv.astype(np.uint8), cv2.COLOR_HSV2BGR)
    return out


def neardup_collection(cache: Path, corel: Optional[Collection] = None, per_class: int = 30,
                       seed: int = 0) -> Collection:
    """Corel bases + 1-3 edits each (groups of 2-4), the rest of Corel as distractors."""
    import cv2

    corel = corel or corel_collection()
    out_dir = cache / f"neardup-s{seed}-p{per_class}"
    out_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    bases = np.concatenate([np.sort(rng.choice(np.flatnonzero(corel.labels == c), per_class, replace=False))
                            for c in np.unique(corel.labels)])
    paths, labels = [], []
    for g, b in enumerate(bases):
        paths.append(corel.paths[b])
        labels.append(g)
        r = np.random.default_rng([seed, int(b)])
        n_edits = int(r.integers(1, 4))
        img = None
        for e in range(n_edits):
            f = out_dir / f"g{g:04d}_e{e}.jpg"
            if not f.exists():
                if img is None:
                    img = cv2.imread(corel.paths[b], cv2.IMREAD_COLOR)
                edited = _edit(img, np.random.default_rng([seed, int(b), e]))
                q = int(np.random.default_rng([seed, int(b), e, 1]).integers(25, 61))
                ok, buf = cv2.imencode(".jpg", edited, [cv2.IMWRITE_JPEG_QUALITY, q])
                if not ok:
                    raise RuntimeError(f"cannot encode {f}")
                tmp = f.with_suffix(".tmp")
                tmp.write_bytes(buf.tobytes())
                os.replace(tmp, f)
            paths.append(str(f))
            labels.append(g)
    n_groups = len(bases)
    queries = np.arange(len(paths))
    rest = np.setdiff1d(np.arange(len(corel)), bases)
    paths += [corel.paths[i] for i in rest]
    labels += list(range(n_groups, n_groups + rest.size))  # singletons: never relevant
    labels = np.asarray(labels, np.int64)
    return Collection("neardup", paths, labels, queries, labels[queries] % 2)


def load_collections(names: Sequence[str], cache: Path) -> list:
    corel = corel_collection()
    out = []
    for n in names:
        if n == "corel":
            out.append(corel)
        elif n == "ukbench":
            out.append(ukbench_collection())
        elif n == "neardup":
            out.append(neardup_collection(cache, corel))
        else:
            raise SystemExit(f"rerank_suite.py: unknown collection {n!r}; expected one of {COLLECTIONS}")
    return out


# --------------------------------------------------------------------------- features
def features(paths: Sequence[str], descriptor: str, cache: Path) -> np.ndarray:
    """Descriptor rows of ``paths``, cached per image under ``cache/features/<descriptor>/``."""
    from fastimg.features.registry import describe_many

    d = cache / "features" / descriptor.replace("/", "_").replace(":", "_")
    d.mkdir(parents=True, exist_ok=True)

    def key(p: str) -> Path:  # by content: a re-mounted copy of the data keeps its cache
        h = hashlib.sha1(Path(p).read_bytes()).hexdigest()[:20]
        return d / f"{h}.npy"

    keys = [key(p) for p in paths]
    todo = [i for i, k in enumerate(keys) if not k.exists()]
    if todo:
        t0 = time.perf_counter()
        mat, errors = describe_many([paths[i] for i in todo], descriptor, workers=2)
        if errors:
            raise RuntimeError(f"{descriptor}: {len(errors)} image(s) failed, e.g. {next(iter(errors.values()))}")
        for i, row in zip(todo, mat):
            np.save(keys[i], row)
        log(f"  {descriptor}: described {len(todo)} image(s) in {time.perf_counter() - t0:.0f} s")
    return np.stack([np.load(k) for k in keys]).astype(np.float32)


# --------------------------------------------------------------------------- evaluation
class Run:
    """One (collection, descriptor, metric): the plain rankings and per-query AP of any spec."""

    def __init__(self, col: Collection, descriptor: str, metric: str, data: np.ndarray):
        from fastimg.search import ExactSearcher

        self.col, self.descriptor, self.metric, self.data = col, descriptor, metric, data
        n = data.shape[0]
        s = ExactSearcher(data, metric)
        ids, scores = s.search(data[col.queries], n)
        keep = ids != col.queries[:, None]
        self.ids = ids[keep].reshape(len(col.queries), n - 1)
        self.scores = scores[keep].reshape(len(col.queries), n - 1)
        self.searcher = ExactSearcher(data, metric, prepared=s.prepared, bias=s.bias, threads=1, check=False)
        self.n_rel = np.array([(col.labels == col.labels[q]).sum() - 1 for q in col.queries])
        self._tightness: Optional[float] = None

    def tightness(self) -> float:
        """:func:`fastimg.rerank.collection_tightness` of the collection (no labels used)."""
        from fastimg.rerank import collection_tightness

        if self._tightness is None:
            self._tightness = collection_tightness(self.data, self.metric)
        return self._tightness

    def ap(self, ranked: np.ndarray) -> np.ndarray:
        from fastimg.eval import average_precision

        rel = self.col.labels[ranked] == self.col.labels[self.col.queries][:, None]
        return average_precision(rel, self.n_rel)

    def rerank(self, spec: Optional[str], rows: Optional[np.ndarray] = None) -> np.ndarray:
        """Per-query AP of ``spec`` (None = the plain ranking) on the query positions ``rows``."""
        from fastimg.rerank import apply

        rows = np.arange(len(self.col.queries)) if rows is None else rows
        if spec is None:
            return self.ap(self.ids)[rows]
        ranked = self.ids.copy()
        data = self.data
        for r in rows:
            qid = int(self.col.queries[r])

            def search(v: np.ndarray, k: int, _ex: list = [qid]) -> tuple:
                return self.searcher.search(v, k, exclude=_ex)

            new, _ = apply(spec, data[qid], self.ids[r], self.scores[r], get_vectors=lambda i: data[i],
                           search=search, k=self.ids.shape[1], metric=self.metric, complete=True)
            ranked[r, :new.shape[0]] = new
        from fastimg.eval import average_precision

        rel = self.col.labels[ranked[rows]] == self.col.labels[self.col.queries[rows]][:, None]
        return average_precision(rel, self.n_rel[rows])


def parse_descriptor(text: str) -> tuple:
    from fastimg.features.registry import get_descriptor

    name, _, metric = text.partition("@")
    return name, metric or get_descriptor(name).default_metric


def build_runs(cols: Sequence[Collection], descriptors: Sequence[str], cache: Path) -> list:
    runs = []
    for col in cols:
        for dtext in descriptors:
            name, metric = parse_descriptor(dtext)
            x = features(col.paths, name, cache)
            runs.append(Run(col, name, metric, x))
            ap = runs[-1].rerank(None)
            log(f"{col.name:8s} {name:12s} {metric:8s} N={len(col):5d} Q={len(col.queries):5d} "
                f"plain mAP {ap.mean():.4f} (A {ap[col.half == 0].mean():.4f}, B {ap[col.half == 1].mean():.4f})")
    return runs


class _PairwiseCache:
    """Memoise ``fastimg.rerank._pairwise_distance`` during a sweep: many specs re-rank
    the same query's same candidates, so their local distance matrix is computed once
    (keyed by the exact bytes of the rows; the real function computes every value)."""

    def __init__(self):
        from fastimg import rerank

        self.mod, self.orig, self.memo = rerank, rerank._pairwise_distance, {}

    def __enter__(self):
        def cached(m, z):
            key = (m.name, z.shape, hashlib.sha1(np.ascontiguousarray(z).tobytes()).digest())
            hit = self.memo.get(key)
            if hit is None:
                hit = self.memo[key] = self.orig(m, z)
            return hit.copy()

        self.mod._pairwise_distance = cached
        return self

    def __exit__(self, *exc):
        self.mod._pairwise_distance = self.orig
        self.memo.clear()


def _auto_variant(spec: str) -> tuple:
    """``"auto{3,2,0.5|30,3,0.5}:..."`` -> (spec without the braces, small, large): a
    sweep of the regimes (``fastimg.rerank.AUTO_SMALL`` / ``AUTO_LARGE``) of ``auto``."""
    if not spec.startswith("auto{"):
        return spec, None, None
    inner, rest = spec[5:].split("}", 1)
    small, large = ([float(v) for v in part.split(",")] for part in inner.split("|"))
    as_kr = lambda v: {"k1": int(v[0]), "k2": int(v[1]), "lambda": float(v[2])}  # noqa: E731
    return "auto" + rest, as_kr(small), as_kr(large)


def evaluate_specs(runs: Sequence[Run], specs: Sequence[Optional[str]], half: Optional[int],
                   progress: Callable[[str], None] = log, per_query: Optional[dict] = None) -> dict:
    """{(collection, descriptor, spec): mAP on ``half`` (None = all queries)}; spec None -> 'none'.

    ``tightness=collection`` in a spec is replaced by the run's
    :func:`fastimg.rerank.collection_tightness`; ``auto{...}`` sets auto's regimes
    (:func:`_auto_variant`).  ``per_query``, if given, receives the same keys with each
    query's AP (for :func:`lower_bound`) and ``(collection, descriptor, "group")`` with
    the queries' group labels."""
    from fastimg import rerank

    out = {}
    for run in runs:
        rows = np.arange(len(run.col.queries)) if half is None else np.flatnonzero(run.col.half == half)
        with _PairwiseCache():
            for spec in specs:
                t0 = time.perf_counter()
                real, small, large = _auto_variant(spec) if spec else (None, None, None)
                if real and "tightness=collection" in real:
                    real = real.replace("tightness=collection", f"tightness={run.tightness():.4f}")
                saved = rerank.AUTO_SMALL, rerank.AUTO_LARGE
                if small is not None:
                    rerank.AUTO_SMALL, rerank.AUTO_LARGE = small, large
                try:
                    aps = run.rerank(real, rows)
                finally:
                    rerank.AUTO_SMALL, rerank.AUTO_LARGE = saved
                m = float(aps.mean())
                out[(run.col.name, run.descriptor, spec or "none")] = m
                if per_query is not None:
                    per_query[(run.col.name, run.descriptor, spec or "none")] = aps
                    per_query[(run.col.name, run.descriptor, "group")] = run.col.labels[run.col.queries[rows]]
                progress(f"  {run.col.name:8s} {run.descriptor:12s} {spec or 'none':40s} {m:.4f} "
                         f"({time.perf_counter() - t0:.1f} s)")
    return out


# --------------------------------------------------------------------------- tuning
def _grid() -> dict:
    """Candidate parameters per method, swept on half A (``--tune``).  Kept small (about
    150 specs, ~40 min on two shared cores); the neighbourhoods are small because the
    worst case is a group of 2-4.  QE and alpha-QE: the gap test's strictness (``gap``,
    ``ref``) and, for alpha-QE, large exponents (``alpha`` 10, 30: a neighbour's weight
    ``sim^alpha`` falls fast below the closest matches)."""
    g = {
        "qe": [f"qe:n={n},gap={gp},ref={ref}" for n in (1, 2, 3) for gp in (0.5, 0.6, 0.7, 0.8)
               for ref in (20, 50)],
        "alpha-qe": [f"alpha-qe:n={n},alpha={a},gap={gp}" for n in (1, 2, 3) for a in (3, 10, 30)
                     for gp in (0, 0.6, 0.7, 0.8)],
        "dba": [f"dba:n=1,gap=0,depth={d}" for d in (50, 200)] + [
            f"dba:n={n},gap={gp},depth={d}" for n in (2, 3, 5) for gp in (0.5, 0.6, 0.7) for d in (50, 200)],
        "k-reciprocal": [f"k-reciprocal:k1={k1},k2={k2},lambda={lam}" for k1 in (3, 4, 6, 10) for k2 in (1, 2, 3)
                         for lam in (0.3, 0.5)],
    }
    g["auto"] = [f"auto{{{s}|{l}}}:threshold={t}" for s in ("3,2,0.5", "4,2,0.5")
                 for l in ("30,3,0.5", "20,3,0.5", "30,6,0.3") for t in (0.6, 0.75, 0.9)]
    return g


#: Methods whose pick is by the lower confidence bound of the change (:func:`lower_bound`),
#: not by the mean change on half A.  QE moves a query's whole ranking when it expands
#: it, so its per-query changes are large and a half's mean is noisy: the first held-out
#: pick by mean (``qe:n=1,gap=0.8``: -0.0004 on half A of neardup correlogram) lost
#: 0.012 on half B.  The other methods' picks agree between the halves and were made by
#: the mean (before this criterion existed).
BY_LOWER_BOUND = ("qe", "alpha-qe")
#: one-sided 95 %
Z_LOWER = 1.645


#: fewer clusters than this: no standard error (UKBench-56's half has 7 groups)
MIN_CLUSTERS = 30


def lower_bound(per_query: dict, col: str, desc: str, spec: str, z: float = Z_LOWER) -> float:
    """Mean change of AP minus ``z`` cluster-robust standard errors (clusters: the queries'
    groups - Corel's are its images, since every Corel query has its own held-out
    neighbourhood; UKBench's and neardup's, the groups, whose queries move together).
    With fewer than :data:`MIN_CLUSTERS` clusters the mean change itself (a standard
    error from a handful of groups means nothing)."""
    d = np.asarray(per_query[(col, desc, spec)]) - np.asarray(per_query[(col, desc, "none")])
    groups = np.arange(d.size) if col == "corel" else np.asarray(per_query[(col, desc, "group")])
    _, inv = np.unique(groups, return_inverse=True)
    mean = d.mean()
    sums = np.bincount(inv, weights=d - mean)
    g = sums.size
    if g < MIN_CLUSTERS:
        return float(mean)
    se = np.sqrt(g / (g - 1) * (sums ** 2).sum()) / d.size
    return float(mean - z * se)


def choose(results: dict, runs: Sequence["Run"], specs: Sequence[str], tol: float = 0.001,
           per_query: Optional[dict] = None) -> tuple:
    """The spec with the best worst-case change over ``runs`` (ties within ``tol``: best mean).

    With ``per_query`` the worst case is over :func:`lower_bound` instead of the mean change.
    Returns (pick, {spec: (worst, mean change)}) - worst of the criterion used."""
    keys = [(r.col.name, r.descriptor) for r in runs]
    score = {}
    for s in specs:
        d = [results[(c, dd, s)] - results[(c, dd, "none")] for c, dd in keys]
        w = d if per_query is None else [lower_bound(per_query, c, dd, s) for c, dd in keys]
        score[s] = (min(w), float(np.mean(d)))
    best_worst = max(v[0] for v in score.values())
    pick = max((s for s in specs if score[s][0] >= best_worst - tol), key=lambda s: score[s][1])
    return pick, score


# --------------------------------------------------------------------------- report
#: the defaults before issue 22 (tuned on Corel-1k alone), for comparison
OLD_DEFAULTS = {"qe": "qe:n=5,gap=0", "alpha-qe": "alpha-qe:n=5,alpha=3,gap=0",
                "dba": "dba:n=5,alpha=3,depth=200,gap=0", "k-reciprocal": "k-reciprocal:k1=30,k2=6,lambda=0.3"}
#: the first held-out picks of qe and alpha-qe (by the mean change on half A), replaced
#: because they missed the -0.005 floor on half B
FIRST_PICKS = {"qe": "qe:n=1,gap=0.8,ref=20", "alpha-qe": "alpha-qe:n=2,alpha=3,gap=0.8,ref=20"}
REPORT = [("none", None)] + [(f"{m} (old default)", s) for m, s in OLD_DEFAULTS.items()] + [
    (f"{m} (first held-out pick)", s) for m, s in FIRST_PICKS.items()] + [
    (f"{m} (default)", m) for m in OLD_DEFAULTS] + [
    ("auto (per-query tightness)", "auto"), ("auto (collection tightness)", "auto:tightness=collection")]
MARK_BEGIN = "<!-- rerank_suite.py: begin (generated; edit the script, not this section) -->"
MARK_END = "<!-- rerank_suite.py: end -->"


def _load_avg() -> str:
    try:
        return " / ".join(f"{v:.1f}" for v in os.getloadavg())
    except OSError:
        return "unknown"


def _targets(runs: Sequence["Run"], res_b: dict) -> list:
    """Issue 22's targets, checked on half B: each default >= -0.005 on every run; auto
    >= +0.01 on two collections or more, one of them with groups of <= 4; Corel >= +0.03."""
    keys = [(r.col.name, r.descriptor) for r in runs]
    delta = {(k, s): res_b[(*k, s)] - res_b[(*k, "none")] for k in keys for _, s in REPORT[1:]}
    out = ["Targets of issue 22 on half B:", ""]
    for m in OLD_DEFAULTS:
        bad = [f"{c} {d} {delta[((c, d), m)]:+.4f}" for c, d in keys if delta[((c, d), m)] < -0.005]
        out.append(f"- `{m}` default >= -0.005 everywhere: " + ("met" if not bad else "**missed** on " + ", ".join(bad)))
    for d in dict.fromkeys(dd for _, dd in keys):
        gains = {c: delta[((c, dd), "auto")] for c, dd in keys if dd == d}
        won = [c for c, g in gains.items() if g >= 0.01]
        small = [c for c in won if c != "corel"]
        corel = gains.get("corel")
        ok = len(won) >= 2 and small and (corel is None or corel >= 0.03)
        out.append(f"- `auto` with {d}: +0.01 or more on {', '.join(won) or 'no collection'}"
                   + (f"; Corel {corel:+.4f}" if corel is not None else "")
                   + (": met" if ok else ": **missed**"))
    return out


def report_markdown(runs: Sequence["Run"], res_b: dict, res_a: Optional[dict], seconds: float,
                    pq_a: Optional[dict] = None) -> str:
    from fastimg import rerank

    keys = [(r.col.name, r.descriptor) for r in runs]
    plain = {k: res_b[(*k, "none")] for k in keys}
    head = "| re-ranking | " + " | ".join(f"{c} {d}" for c, d in keys) + " | worst |"
    lines = [head, "|---|" + "---:|" * (len(keys) + 1),
             "| plain mAP | " + " | ".join(f"{plain[k]:.4f}" for k in keys) + " | |"]
    for label, spec in REPORT[1:]:
        d = [res_b[(*k, spec)] - plain[k] for k in keys]
        lines.append(f"| {label} | " + " | ".join(f"{v:+.4f}" for v in d) + f" | {min(d):+.4f} |")
    cols = ", ".join(f"{r.col.name} {r.descriptor}: {r.tightness():.2f}" for r in runs)
    defaults = "; ".join(f"`{n}`: " + ", ".join(f"{p}={v[1]}" for p, v in t.items())
                         for n, t in rerank.PARAMS.items())
    out = [MARK_BEGIN, "", "## Re-ranking on collections of different group sizes (held out)", "",
           "Produced by `nice .venv/bin/python bench/rerank_suite.py --report --tuned A.json --tuned A-qe.json` (%.0f s; machine shared, load "
           "average %s).  Collections, protocol and split: the docstring of `bench/rerank_suite.py` - Corel-1k "
           "(99 relevant per query), UKBench-56 left out of its own ranking (3), and generated near-duplicate "
           "groups of 2-4 among 700 Corel distractors (`neardup`, 1-3).  Each collection's queries are split "
           "in two halves; the defaults and `auto`'s rule were chosen on half A (`--tune all --json A.json`; `qe` and `alpha-qe` again with `--tune qe --tune alpha-qe --json A-qe.json`), the table "
           "below is half B: the change of mAP from the plain ranking." % (seconds, _load_avg()),
           "", *lines, "",
           *_targets(runs, res_b), "",
           f"Defaults now: {defaults}.  `auto`: small groups `k-reciprocal` "
           + ", ".join(f"{k}={v}" for k, v in rerank.AUTO_SMALL.items()) + "; large groups "
           + ", ".join(f"{k}={v}" for k, v in rerank.AUTO_LARGE.items())
           + f".  Collection tightness (`fastimg.rerank.collection_tightness`, no labels): {cols}.", ""]
    if res_a:
        out += ["### Tuning on half A", "",
                "Each method's default is the grid point with the best worst-case change over the nine "
                "collection x descriptor runs of half A (ties within 0.001: the best mean).  For "
                + ", ".join(f"`{m}`" for m in BY_LOWER_BOUND) + " the worst case is over the one-sided 95 % "
                "lower bound of each run's change (mean - 1.645 cluster-robust standard errors; clusters: "
                "neardup's groups, Corel's images; UKBench's half has 7 groups, too few: its mean change), not over the mean: a QE changes a query's "
                "whole ranking, and the first pick by the mean (`qe:n=1,gap=0.8`, -0.0004 on half A of neardup "
                "correlogram) lost 0.012 on half B.  Cells: the mean change on half A; `worst` is of the "
                "criterion (the lower bound for those methods).  Best five per method:", ""]
        grid = _grid()
        for mth, specs in grid.items():
            if not all((*keys[0], s) in res_a for s in specs):
                continue
            by_lb = mth in BY_LOWER_BOUND and pq_a and all((*k, s) in pq_a for k in keys for s in specs)
            if mth in BY_LOWER_BOUND and not by_lb:
                continue
            pick, score = choose(res_a, runs, specs, per_query=pq_a if by_lb else None)
            ranked = sorted(specs, key=lambda s: (-score[s][0], -score[s][1]))[:5]
            if pick not in ranked:
                ranked = ranked[:4] + [pick]
            worst = "worst lower bound" if by_lb else "worst"
            out.append(f"| {mth} (A) | " + " | ".join(f"{c} {d}" for c, d in keys) + f" | {worst} | mean |")
            out.append("|---|" + "---:|" * (len(keys) + 2))
            for s in ranked:
                d = [res_a[(*k, s)] - res_a[(*k, "none")] for k in keys]
                tag = " (picked)" if s == pick else ""
                out.append(f"| `{s}`{tag} | " + " | ".join(f"{v:+.4f}" for v in d)
                           + f" | {score[s][0]:+.4f} | {score[s][1]:+.4f} |")
            out.append("")
    out.append(MARK_END)
    return "\n".join(out)


def write_section(path: Path, section: str) -> None:
    """Replace the generated section of ``path`` (or append it)."""
    text = path.read_text() if path.exists() else ""
    if MARK_BEGIN in text and MARK_END in text:
        pre, rest = text.split(MARK_BEGIN, 1)
        post = rest.split(MARK_END, 1)[1]
        text = pre + section + post
    else:
        text = text.rstrip("\n") + "\n\n" + section + "\n"
    path.write_text(text)


# --------------------------------------------------------------------------- main
def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--descriptor", action="append", default=None, metavar="NAME[@METRIC]")
    ap.add_argument("--collection", action="append", default=None, choices=COLLECTIONS)
    ap.add_argument("--spec", action="append", default=None, help="re-ranking specs to evaluate")
    ap.add_argument("--half", default="B", choices=["A", "B", "all"])
    ap.add_argument("--tune", action="append", default=None, metavar="METHOD",
                    help="sweep this method's grid on half A and pick its defaults (repeatable; 'all')")
    ap.add_argument("--report", action="store_true",
                    help="evaluate the report's specs on half B and write its section of bench/quality.md")
    ap.add_argument("--tuned", action="append", default=None, metavar="JSON",
                    help="with --report: a --tune --json output, to include the half-A tables (repeatable: "
                         "merged, later files win)")
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent / "quality.md"))
    ap.add_argument("--cache", default=str(DEFAULT_CACHE))
    ap.add_argument("--json", default=None, help="write the results as JSON here")
    args = ap.parse_args(argv)
    t_all = time.perf_counter()
    cache = Path(args.cache)
    cols = load_collections(args.collection or COLLECTIONS, cache)
    runs = build_runs(cols, args.descriptor or DEFAULT_DESCRIPTORS, cache)
    out = {}
    if args.tune:
        grid = _grid()
        methods = list(grid) if "all" in args.tune else args.tune
        pq: dict = {}
        res = evaluate_specs(runs, [None] + [s for mth in methods for s in grid[mth]], 0, per_query=pq)
        out["A"] = res
        out["A_per_query"] = {k: v.tolist() for k, v in pq.items()}
        for mth in methods:
            pick, score = choose(res, runs, grid[mth], per_query=pq if mth in BY_LOWER_BOUND else None)
            log(f"{mth}: picked {pick} (worst {score[pick][0]:+.4f}, mean {score[pick][1]:+.4f})")
    elif args.report:
        res_b = evaluate_specs(runs, [s for _, s in REPORT], 1)
        out["B"] = res_b
        res_a, pq_a = None, None
        if args.tuned:  # later files win (a re-tuned method's sweep over an older one)
            res_a, pq_a = {}, {}
            for f in args.tuned:
                saved = json.loads(Path(f).read_text())
                res_a.update({tuple(r[:3]): r[3] for r in saved["A"]})
                pq_a.update({tuple(r[:3]): np.asarray(r[3]) for r in saved.get("A_per_query", [])})
        md = report_markdown(runs, res_b, res_a, time.perf_counter() - t_all, pq_a)
        write_section(Path(args.out), md)
        log(md)
    else:
        half = {"A": 0, "B": 1, "all": None}[args.half]
        specs = [None] + (args.spec or ["qe", "alpha-qe", "dba", "k-reciprocal", "auto"])
        out[args.half] = evaluate_specs(runs, specs, half)
    if args.json:
        Path(args.json).write_text(json.dumps({h: [[*k, v] for k, v in r.items()] for h, r in out.items()}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
