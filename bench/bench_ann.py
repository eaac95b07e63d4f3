"""Approximate search: fastimg's ann mode vs raw hnswlib vs faiss HNSWFlat vs exact.

Same vectors, same run, one group per (what, N, D, ef):

* ``build``: ``HnswGraph.build`` (preparation + insertion, 2 threads) vs raw
  ``hnswlib.Index.add_items`` on the already-prepared rows vs faiss
  ``IndexHNSWFlat.add`` (M = 16, ef_construction = 200 for all);
* ``query ef=E``: a batch of queries on ONE thread: ``HnswGraph.search`` (query
  preparation + graph + exact float64 re-scoring) vs ``knn_query`` vs faiss
  ``search`` vs fastimg's exact ``ExactSearcher.search``.  recall@10 against the
  exact search and queries/s go to ``extra_info``; the ratio of interest is
  fastimg ann / raw hnswlib.

Sizes by ``FASTIMG_BENCH_SCALE``: tiny N=2,000 D=32; small N=20,000 D=128; full
N=200,000 D=256 (Gaussian clusters, metric pearson).  For the recall/QPS curve,
the PNG and N = 1,000,000 use ``bench/ann_curve.py`` (results in ``bench/ann.md``).
"""
from __future__ import annotations

import numpy as np
import pytest
from conftest import pick

hnswlib = pytest.importorskip("hnswlib")

N = pick(2_000, 20_000, 200_000)
D = pick(32, 128, 256)
Q = pick(20, 200, 1000)
K = 10
M, EFC = 16, 200
EFS = pick((10, 50), (10, 20, 50, 100, 200), (10, 20, 50, 100, 200))
METRIC = "pearson"
BUILD_THREADS = 2


def _clustered(n, d, nq, clusters=pick(20, 200, 1000), seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(clusters, d)).astype(np.float32)
    spread = rng.uniform(0.3, 0.6, clusters).astype(np.float32)

    def draw(m):
        lab = rng.integers(0, clusters, m)
        return centres[lab] + rng.standard_normal((m, d), dtype=np.float32) * spread[lab, None]

    return draw(n), draw(nq)


def _recall(found, truth):
    return sum(len(set(f.tolist()) & set(t.tolist())) for f, t in zip(found, truth)) / truth.size


@pytest.fixture(scope="module")
def data():
    from fastimg.metrics import prepare_rows
    from fastimg.search import ExactSearcher

    x, q = _clustered(N, D, Q)
    exact = ExactSearcher(x, METRIC, threads=BUILD_THREADS)
    truth, _ = exact.search(q, K)
    prepared, _ = prepare_rows(METRIC, x)
    qp, _ = prepare_rows(METRIC, q)
    return {"x": x, "q": q, "truth": truth, "prepared": prepared, "qp": qp, "exact": exact}


def _build_fastimg(x):
    from fastimg.ann import HnswGraph

    return HnswGraph.build(x, METRIC, M=M, ef_construction=EFC, threads=BUILD_THREADS)


def _build_raw(prepared):
    p = hnswlib.Index(space="ip", dim=prepared.shape[1])
    p.init_index(max_elements=prepared.shape[0], M=M, ef_construction=EFC, random_seed=100)
    p.add_items(prepared, np.arange(prepared.shape[0]), num_threads=BUILD_THREADS)
    return p


def _build_faiss(prepared):
    import faiss

    faiss.omp_set_num_threads(BUILD_THREADS)
    f = faiss.IndexHNSWFlat(prepared.shape[1], M, faiss.METRIC_INNER_PRODUCT)
    f.hnsw.efConstruction = EFC
    f.add(prepared)
    return f


@pytest.fixture(scope="module")
def graphs(data):
    out = {"fastimg": _build_fastimg(data["x"]), "raw": _build_raw(data["prepared"])}
    out["fastimg"].threads = 1
    try:
        out["faiss"] = _build_faiss(data["prepared"])
    except ImportError:
        out["faiss"] = None
    return out


# -- build ------------------------------------------------------------------

def test_build_fastimg(benchmark, data):
    benchmark.group = f"ann build N={N} D={D}"
    g = benchmark.pedantic(_build_fastimg, args=(data["x"],), rounds=1, iterations=1)
    assert len(g) == N


def test_build_raw_hnswlib(benchmark, data):
    benchmark.group = f"ann build N={N} D={D}"
    p = benchmark.pedantic(_build_raw, args=(data["prepared"],), rounds=1, iterations=1)
    assert p.element_count == N


def test_build_faiss_hnswflat(benchmark, data):
    pytest.importorskip("faiss", reason="faiss-cpu not installed: competitor skipped")
    benchmark.group = f"ann build N={N} D={D}"
    f = benchmark.pedantic(_build_faiss, args=(data["prepared"],), rounds=1, iterations=1)
    assert f.ntotal == N


# -- queries ----------------------------------------------------------------

def _record(benchmark, ids, truth, ef):
    rec = _recall(np.asarray(ids, np.int64), truth)
    benchmark.extra_info.update({"recall@10": round(rec, 4), "queries": Q, "ef": ef})
    return rec


@pytest.mark.parametrize("ef", EFS)
def test_query_fastimg_ann(benchmark, data, graphs, ef):
    benchmark.group = f"ann query N={N} D={D} ef={ef}"
    g = graphs["fastimg"]
    ids, scores = benchmark(g.search, data["q"], K, data=data["x"], ef=ef)
    rec = _record(benchmark, ids, data["truth"], ef)
    if ef >= 50:
        assert rec >= 0.9
    assert np.isfinite(scores).all()


@pytest.mark.parametrize("ef", EFS)
def test_query_raw_hnswlib(benchmark, data, graphs, ef):
    benchmark.group = f"ann query N={N} D={D} ef={ef}"
    p = graphs["raw"]
    p.set_ef(ef)
    ids, _ = benchmark(p.knn_query, data["qp"], k=K, num_threads=1)
    _record(benchmark, ids, data["truth"], ef)


@pytest.mark.parametrize("ef", EFS)
def test_query_faiss_hnswflat(benchmark, data, graphs, ef):
    if graphs["faiss"] is None:
        pytest.skip("faiss-cpu not installed: competitor skipped")
    import faiss

    benchmark.group = f"ann query N={N} D={D} ef={ef}"
    f = graphs["faiss"]
    f.hnsw.efSearch = ef
    faiss.omp_set_num_threads(1)
    _, ids = benchmark(f.search, data["qp"], K)
    _record(benchmark, ids, data["truth"], ef)


@pytest.mark.parametrize("ef", EFS)
def test_query_fastimg_exact(benchmark, data, ef):
    """The exact scan, same batch, one thread (repeated in each ef group as the baseline)."""
    from fastimg.search import ExactSearcher

    benchmark.group = f"ann query N={N} D={D} ef={ef}"
    ex = data["exact"]
    one = ExactSearcher(data["x"], METRIC, threads=1, prepared=ex.prepared, bias=ex.bias)
    ids, _ = benchmark.pedantic(one.search, args=(data["q"], K), rounds=pick(1, 3, 1), iterations=1)
    assert _record(benchmark, ids, data["truth"], ef) == 1.0
