"""Cost of each re-ranking against the plain query it starts from.

One query at a time (the interactive case), exact search (ExactSearcher) over N
random hsv72-like histograms (D = 72, bhattacharyya, the default descriptor and
metric).  Each benchmark times the whole pipeline: the initial search (``k = 10``
for the plain query and QE, ``depth`` = 200 candidates for DBA / k-reciprocal) plus
``fastimg.rerank.apply``.

* pytest-benchmark, group per N::

      FASTIMG_BENCH_SCALE=full flock /tmp/fastimg-bench.lock \
          .venv/bin/python -m pytest bench/bench_rerank.py --benchmark-columns=min,median,mean

* side-by-side markdown table, ms per query and the ratio to the plain query::

      FASTIMG_BENCH_SCALE=full flock /tmp/fastimg-bench.lock .venv/bin/python bench/bench_rerank.py

Sizes: tiny N=2,000 (``make test``), small N=100,000, full N=1,000,000.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from conftest import pick, scale  # noqa: E402

N = pick(2_000, 100_000, 1_000_000)
D = 72
K = 10
METRIC = "bhattacharyya"
RERANKS = ["qe", "alpha-qe", "dba", "k-reciprocal", "auto"]


def _data(n: int = N, d: int = D, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = rng.random((n, d), dtype=np.float32) ** 4  # peaked, histogram-like
    x /= x.sum(axis=1, keepdims=True)
    return np.ascontiguousarray(x, dtype=np.float32)


class Pipeline:
    """One searcher and the callbacks the index would pass to rerank.apply."""

    def __init__(self, n: int = N):
        from fastimg.search import ExactSearcher

        self.data = _data(n)
        self.searcher = ExactSearcher(self.data, METRIC)
        self.queries = _data(64, seed=1)
        self.i = 0

    def _next(self) -> np.ndarray:
        self.i = (self.i + 1) % len(self.queries)
        return self.queries[self.i]

    def search(self, v: np.ndarray, k: int):
        return self.searcher.search(v, k)

    def plain(self):
        return self.searcher.search(self._next(), K)

    def rerank(self, spec: str):
        from fastimg.rerank import apply, candidates_needed, parse_spec

        sp = parse_spec(spec)
        q = self._next()
        first = max(K, candidates_needed(sp, K))
        ids, sc = self.searcher.search(q, first)
        return apply(sp, q, ids[0], sc[0], get_vectors=lambda i: self.data[i], search=self.search, k=K,
                     metric=METRIC)


@pytest.fixture(scope="module")
def pipeline() -> Pipeline:
    return Pipeline()


def test_plain_query(benchmark, pipeline):
    benchmark.group = f"rerank N={N:,} D={D}"
    ids, _ = benchmark(pipeline.plain)
    assert ids.shape == (1, K)


@pytest.mark.parametrize("spec", RERANKS)
def test_rerank(benchmark, pipeline, spec):
    benchmark.group = f"rerank N={N:,} D={D}"
    ids, scores = benchmark(pipeline.rerank, spec)
    assert ids.shape == (K,) and len(set(ids.tolist())) == K


def _time(fn, reps: int) -> float:
    fn()  # warm-up (imports, first-call costs)
    best = []
    for _ in range(3):
        t0 = time.perf_counter()
        for _ in range(reps):
            fn()
        best.append((time.perf_counter() - t0) / reps)
    return min(best)


def main() -> None:
    """Print a markdown table: ms per query and ratio to the plain query."""
    p = Pipeline()
    reps = pick(20, 10, 5)
    plain = _time(p.plain, reps)
    print(f"N = {N:,}, D = {D}, metric = {METRIC}, k = {K}, scale = {scale()} (best of 3 x {reps} queries)\n")
    print("| query | ms / query | ratio to plain |")
    print("|---|---:|---:|")
    print(f"| plain top-{K} | {plain * 1e3:.2f} | 1.0 |")
    for spec in RERANKS:
        t = _time(lambda: p.rerank(spec), reps)
        print(f"| {spec} | {t * 1e3:.2f} | {t / plain:.1f} |")


if __name__ == "__main__":
    main()


def test_rerank_suite_machinery(tmp_path):
    """bench/rerank_suite.py end to end on generated vectors (the real collections are
    images under ../shared; this keeps the script's evaluation code from rotting):
    held-out halves, a sweep with its pick, the report section, one image edit."""
    import rerank_suite as rs

    rng = np.random.default_rng(0)
    base = rng.normal(size=(30, 6)) * 3
    x = np.vstack([base, base + 0.05 * rng.normal(size=base.shape), rng.normal(size=(40, 6)) * 3])
    labels = np.concatenate([np.arange(30), np.arange(30), 100 + np.arange(40)])
    queries = np.arange(60)
    col = rs.Collection("pairs", [f"v{i}" for i in range(len(x))], labels, queries, labels[queries] % 2)
    runs = [rs.Run(col, "custom", "l2", x.astype(np.float32))]
    specs = [None, "qe:n=2,gap=0", "k-reciprocal:k1=3,k2=2,lambda=0.5", "auto{3,2,0.5|30,3,0.5}:threshold=0.7",
             "auto:tightness=collection"]
    res = rs.evaluate_specs(runs, specs, 0, progress=lambda s: None)
    assert res[("pairs", "custom", "none")] == pytest.approx(runs[0].rerank(None)[col.half == 0].mean())
    pick, score = rs.choose(res, runs, specs[1:3])
    assert pick in specs[1:3] and score[pick][0] == max(v[0] for v in score.values())
    pq: dict = {}
    rs.evaluate_specs(runs, specs[:3], 0, progress=lambda s: None, per_query=pq)
    assert np.mean(pq[("pairs", "custom", specs[1])]) == pytest.approx(res[("pairs", "custom", specs[1])])
    # lower_bound: Corel's clusters are its queries (the textbook standard error); 15 groups
    # here are too few for one (the mean change); 40 groups of 3: the cluster sums' spread
    d = rng.normal(size=120) * 0.05
    syn = {("corel", "x", "s"): d, ("corel", "x", "none"): np.zeros(120)}
    assert rs.lower_bound(syn, "corel", "x", "s") == pytest.approx(
        d.mean() - rs.Z_LOWER * d.std(ddof=1) / np.sqrt(d.size))
    assert rs.lower_bound(pq, "pairs", "custom", specs[1]) == pytest.approx(
        res[("pairs", "custom", specs[1])] - res[("pairs", "custom", "none")])
    syn = {("g", "x", "s"): d, ("g", "x", "none"): np.zeros(120), ("g", "x", "group"): np.repeat(np.arange(40), 3)}
    sums = d.reshape(40, 3).sum(axis=1) - 3 * d.mean()
    assert rs.lower_bound(syn, "g", "x", "s") == pytest.approx(
        d.mean() - rs.Z_LOWER * np.sqrt(40 / 39 * (sums ** 2).sum()) / 120)
    res_b = rs.evaluate_specs(runs, [s for _, s in rs.REPORT], 1, progress=lambda s: None)
    out = tmp_path / "q.md"
    out.write_text("# title\n")
    rs.write_section(out, rs.report_markdown(runs, res_b, None, 1.0))
    rs.write_section(out, rs.report_markdown(runs, res_b, None, 2.0))  # replaced, not appended
    text = out.read_text()
    assert text.startswith("# title") and text.count(rs.MARK_BEGIN) == 1 and "auto (collection tightness)" in text
    img = (rng.random((64, 96, 3)) * 255).astype(np.uint8)
    edited = rs._edit(img, np.random.default_rng(1))
    assert edited.shape == img.shape and edited.dtype == np.uint8 and not np.array_equal(edited, img)
