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
RERANKS = ["qe", "alpha-qe", "dba", "k-reciprocal"]


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
        from fastimg.rerank import apply, parse_spec

        sp = parse_spec(spec)
        q = self._next()
        first = max(K, sp.params.get("depth", K), sp.params.get("n", 0))
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
