"""HNSW graph (fastimg.ann): recall against brute force, exact scores, deletions,
growth, persistence, and clear errors.

Oracles are independent of the graph: NumPy brute force (``np.corrcoef``,
explicit formulas), ``cv2.compareHist``, ``scipy.spatial.distance.cdist`` and
hnswlib's own ``BFIndex``; recall is measured against them, never against values
copied from the implementation.
"""
from __future__ import annotations

import json
import re
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("hnswlib")

from fastimg import errors  # noqa: E402
from fastimg.ann import (  # noqa: E402
    DEFAULT_EF,
    graph_file,
    META_FILE,
    AnnSearchError,
    HnswGraph,
    default_candidates,
    metric_space,
)
from fastimg.metrics import get_metric, metric_names  # noqa: E402


# ---------------------------------------------------------------------------
# data and oracles
# ---------------------------------------------------------------------------

def clustered(n: int, d: int, n_queries: int, *, clusters: int = 40, seed: int = 0, nonneg: bool = False):
    """Gaussian clusters (realistic neighbourhoods, unlike uniform noise);
    queries are fresh draws from the same clusters."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(scale=4.0, size=(clusters, d))
    spread = rng.uniform(0.5, 1.5, size=clusters)

    def draw(m):
        lab = rng.integers(0, clusters, m)
        return centres[lab] + rng.normal(size=(m, d)) * spread[lab, None]

    x, q = draw(n), draw(n_queries)
    if nonneg:  # histogram-like: positive, L1-normalised
        x, q = np.exp(x / 4), np.exp(q / 4)
        x /= x.sum(1, keepdims=True)
        q /= q.sum(1, keepdims=True)
    return x.astype(np.float32), q.astype(np.float32)


def brute_scores(metric: str, q: np.ndarray, x: np.ndarray) -> np.ndarray:
    """(Q, N) float64 scores from textbook formulas (not fastimg.metrics)."""
    q64, x64 = q.astype(np.float64), x.astype(np.float64)
    if metric == "pearson":
        qc = q64 - q64.mean(1, keepdims=True)
        xc = x64 - x64.mean(1, keepdims=True)
        return (qc / np.linalg.norm(qc, axis=1, keepdims=True)) @ (xc / np.linalg.norm(xc, axis=1, keepdims=True)).T
    if metric == "cosine":
        return (q64 / np.linalg.norm(q64, axis=1, keepdims=True)) @ (x64 / np.linalg.norm(x64, axis=1,
                                                                                          keepdims=True)).T
    if metric == "l2":
        from scipy.spatial.distance import cdist

        return cdist(q64, x64)
    if metric == "l1":
        from scipy.spatial.distance import cdist

        return cdist(q64, x64, "cityblock")
    if metric == "bhattacharyya":
        bc = np.sqrt(q64 / q64.sum(1, keepdims=True)) @ np.sqrt(x64 / x64.sum(1, keepdims=True)).T
        return np.sqrt(np.maximum(1 - bc, 0))
    import cv2

    method = {"chisqr": cv2.HISTCMP_CHISQR, "chisqr_alt": cv2.HISTCMP_CHISQR_ALT,
              "intersect": cv2.HISTCMP_INTERSECT, "kl_div": cv2.HISTCMP_KL_DIV}[metric]
    return np.array([[cv2.compareHist(qi, xj, method) for xj in x] for qi in q])


def row_oracle(metric: str, q: np.ndarray, x: np.ndarray) -> np.ndarray:
    """(N,) float64 values of one query, row by row: cv2.compareHist, or scipy with
    cosine defined as 0 for a zero vector (zero and constant vectors allowed)."""
    import cv2
    from scipy.spatial.distance import cdist

    if get_metric(metric).cv2_method is not None:
        return np.array([cv2.compareHist(q, r, get_metric(metric).cv2_method) for r in x])
    q64, x64 = q.astype(np.float64)[None], x.astype(np.float64)
    if metric == "cosine":
        if not q64.any():
            return np.zeros(len(x))
        return np.where(x64.any(axis=1), 1 - cdist(q64, x64, "cosine")[0], 0.0)
    return cdist(q64, x64, "euclidean" if metric == "l2" else "cityblock")[0]


def brute_topk(metric: str, q: np.ndarray, x: np.ndarray, k: int, live: np.ndarray | None = None):
    s = brute_scores(metric, q, x)
    if get_metric(metric).higher_is_better:
        s = -s
    if live is not None:
        s = np.where(live[None, :], s, np.inf)
    return np.argsort(s, axis=1, kind="stable")[:, :k]


def recall(found: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(set(f.tolist()) & set(t.tolist())) / truth.shape[1] for f, t in zip(found, truth)]))


def test_recall_helper_counts_overlap():
    truth = np.array([[1, 2, 3, 4], [5, 6, 7, 8]])
    found = np.array([[4, 3, 9, 9], [5, 6, 7, 8]])
    assert recall(found, truth) == pytest.approx((2 / 4 + 4 / 4) / 2)


def test_brute_oracle_matches_hnswlib_bruteforce():
    """The l2 oracle agrees with hnswlib's own BFIndex."""
    import hnswlib

    x, q = clustered(500, 16, 20)
    bf = hnswlib.BFIndex(space="l2", dim=16)
    bf.init_index(max_elements=500)
    bf.add_items(x)
    labels, _ = bf.knn_query(q, k=5)
    np.testing.assert_array_equal(np.sort(labels, 1), np.sort(brute_topk("l2", q, x, 5), 1))


@pytest.fixture(scope="module")
def dense():
    return clustered(4000, 32, 60, seed=1)


@pytest.fixture(scope="module")
def hist():
    return clustered(3000, 24, 40, seed=2, nonneg=True)


@pytest.fixture(scope="module")
def corel_features(corel_dir):
    import csv

    from fastimg.features.registry import describe_many

    with open(corel_dir / "labels.csv", newline="") as fh:
        paths = [str(corel_dir / row["path"]) for row in csv.DictReader(fh)]
    x, failed = describe_many(paths, "hsv72")
    assert not failed
    return np.ascontiguousarray(x, dtype=np.float32)


# ---------------------------------------------------------------------------
# mapping
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("metric", metric_names())
def test_graph_space_ranks_like_the_metric(hist, dense, metric):
    """metric_space(): rows prepared as it says, in the hnswlib space it names,
    searched exhaustively by hnswlib's BFIndex: for an "exact" graph order the
    ranking is the metric's (brute-force oracle); for a "surrogate" order, the
    default candidate count holds nearly all the true top 10."""
    import hnswlib

    from fastimg.metrics import prepare_queries, prepare_rows

    m = get_metric(metric)
    x, q = hist if m.nonneg else dense
    x, q = x[:1500], q[:20]
    space, rows = metric_space(metric)
    gx, gq = (x, q) if rows == "raw" else (prepare_rows(rows, x)[0], prepare_queries(rows, q))
    bf = hnswlib.BFIndex(space=space, dim=x.shape[1])
    bf.init_index(max_elements=len(x))
    bf.add_items(gx)
    truth = brute_topk(metric, q, x, 10)
    if m.graph_order == "exact":
        labels, _ = bf.knn_query(gq, k=10)
        assert recall(labels, truth) >= 0.99  # float32 near-ties aside
    else:
        labels, _ = bf.knn_query(gq, k=default_candidates(metric, 10))
        assert recall(labels, truth) >= 0.95


def test_metric_space_examples():
    assert metric_space("pearson") == ("ip", "pearson")
    assert metric_space("chisqr") == ("ip", "bhattacharyya")
    assert metric_space("l1") == ("l2", "raw")


def test_unknown_metric_lists_valid_names():
    with pytest.raises(AnnSearchError, match="unknown metric 'hamming'.*pearson"):
        metric_space("hamming")
    with pytest.raises(errors.FastimgError):
        HnswGraph.build(np.ones((3, 2), np.float32), "hamming")


# ---------------------------------------------------------------------------
# recall and exact scores
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("metric", ["pearson", "cosine", "l2", "l1"])
def test_recall_clustered_dense(dense, metric):
    x, q = dense
    g = HnswGraph.build(x, metric, M=12, ef_construction=100, threads=2)
    ids, scores = g.search(q, 10, data=x, ef=40)
    assert ids.shape == scores.shape == (len(q), 10)
    assert ids.dtype == np.int64 and scores.dtype == np.float32
    assert recall(ids, brute_topk(metric, q, x, 10)) >= 0.95


@pytest.mark.parametrize("metric", ["bhattacharyya", "chisqr_alt", "intersect", "kl_div", "chisqr"])
def test_recall_clustered_histograms(hist, metric):
    x, q = hist
    g = HnswGraph.build(x, metric, M=12, ef_construction=100, threads=2)
    ids, _ = g.search(q, 10, data=x, ef=60)
    assert recall(ids, brute_topk(metric, q, x, 10)) >= 0.95


@pytest.mark.parametrize("metric", ["bhattacharyya", "pearson", "chisqr_alt", "intersect"])
def test_recall_corel(corel_features, metric):
    x = corel_features
    q = x[::10]  # 100 database images as queries (themselves excluded)
    own = np.arange(0, len(x), 10)
    g = HnswGraph.build(x, metric, threads=2)
    found = np.stack([g.search(q[i], 10, data=x, exclude=[own[i]])[0][0] for i in range(len(q))])
    s = brute_scores(metric, q, x)
    if get_metric(metric).higher_is_better:
        s = -s
    s[np.arange(len(q)), own] = np.inf
    truth = np.argsort(s, axis=1, kind="stable")[:, :10]
    assert recall(found, truth) >= 0.95


@pytest.mark.parametrize("metric", metric_names())
def test_scores_are_the_metrics_values(hist, metric):
    x, q = hist
    g = HnswGraph.build(x[:1500], metric, threads=2)
    ids, scores = g.search(q[:15], 7, data=x)
    expect = brute_scores(metric, q[:15], x[:1500])
    picked = np.take_along_axis(expect, ids, axis=1)
    np.testing.assert_allclose(scores, picked, rtol=2e-6, atol=2e-6)
    # best first (exact order among the candidates)
    step = np.diff(scores.astype(np.float64), axis=1)
    assert (step <= 0).all() if get_metric(metric).higher_is_better else (step >= 0).all()


@pytest.mark.parametrize("metric", ["pearson", "bhattacharyya", "chisqr"])
def test_scores_equal_exact_mode_for_the_same_ids(hist, metric):
    from fastimg.search import topk

    x, q = hist
    g = HnswGraph.build(x, metric, threads=2)
    ids, scores = g.search(q, 10, data=x)
    eids, escores = topk(x, q, 10, metric)
    common = 0
    for r in range(len(q)):
        exact = dict(zip(eids[r].tolist(), escores[r].tolist()))
        for i, s in zip(ids[r].tolist(), scores[r].tolist()):
            if i in exact:
                assert s == exact[i]
                common += 1
    assert common >= 0.95 * ids.size


def test_pearson_constant_rows_score_one_and_are_found():
    x, q = clustered(2000, 16, 10, seed=3)
    x[[7, 500, 1999]] = 3.0  # constant rows: pearson is exactly 1 for any query (OpenCV's rule)
    g = HnswGraph.build(x, "pearson", threads=1)
    ids, scores = g.search(q, 5, data=x)
    assert (ids[:, :3] == [7, 500, 1999]).all()  # ties broken by lower id
    assert (scores[:, :3] == 1.0).all()
    g.mark_deleted([500])
    ids, _ = g.search(q, 5, data=x)
    assert (ids[:, :2] == [7, 1999]).all() and not (ids == 500).any()


def test_constant_query_ties_every_row_and_returns_lowest_ids():
    x, _ = clustered(1000, 16, 1, seed=4)
    g = HnswGraph.build(x, "pearson", threads=1)
    g.mark_deleted([1])
    ids, scores = g.search(np.full(16, 2.0, np.float32), 4, data=x, exclude=[0])
    assert ids.tolist() == [[2, 3, 4, 5]]
    assert (scores == 1.0).all()


def test_constant_query_with_rounding_noise_ranks_like_opencv():
    """0.2 is not exact in float32: OpenCV's variance of the constant query is
    rounding noise, not zero, so only the constant rows score 1; the rest follow."""
    import cv2

    x, _ = clustered(600, 72, 3, seed=5)
    x[[40, 90]] = 0.7  # constant rows
    g = HnswGraph.build(x, "pearson", threads=1)
    g.mark_deleted([90])
    q = np.full(72, 0.2, np.float32)  # at D = 72 OpenCV's variance of it is not 0 (at D = 16 it is)
    ids, scores = g.search(q, 6, data=x, exclude=[3])
    ref = np.array([cv2.compareHist(q, r, cv2.HISTCMP_CORREL) for r in x])
    ref[[90, 3]] = -np.inf
    assert ids[0, 0] == 40 and scores[0, 0] == 1.0  # the live constant row, then rounding-noise scores
    np.testing.assert_allclose(scores[0], ref[ids[0]], rtol=1e-6, atol=1e-6)
    rest = np.delete(ref, ids[0])
    assert rest.max() <= scores[0].min() + 1e-6  # nothing better was left out (noise-level order aside)


@pytest.mark.parametrize("metric", metric_names())
def test_zero_query_answers_like_the_exact_oracle(hist, metric):
    """A zero query has a zero graph vector (except in the raw l2 space): the graph
    cannot rank it, and the answer must still be the oracle's (the lowest live ids
    when the metric ties every row, e.g. chisqr; an exact ranking otherwise, e.g.
    chisqr_alt, whose value is 2 sum(x))."""
    x, _ = hist
    x = x[:400] * np.random.default_rng(3).uniform(0.5, 2.0, (400, 1)).astype(np.float32)  # masses differ
    g = HnswGraph.build(x, metric, threads=1)
    g.mark_deleted([0, 2])
    q = np.zeros((1, x.shape[1]), np.float32)
    ids, scores = g.search(q, 5, data=x, exclude=[3])
    expect = row_oracle(metric, q[0], x)  # zero vectors handled as cv2 / the definitions do
    key = (-expect if get_metric(metric).higher_is_better else expect).copy()
    key[[0, 2, 3]] = np.inf
    truth = np.lexsort((np.arange(len(x)), key))[:5]
    np.testing.assert_allclose(scores[0], expect[ids[0]], rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(scores[0], expect[truth], rtol=1e-6, atol=1e-6)
    if np.ptp(expect) == 0:  # a true tie: the lowest live ids, like the exact scan
        assert ids[0].tolist() == [1, 4, 5, 6, 7]


def test_query_errors_are_the_exact_searchs(dense):
    """One query validation (fastimg.search.check_queries) for both searches."""
    from fastimg.search import ExactSearcher

    x, q = dense
    x = np.abs(x)
    g = HnswGraph.build(x[:300], "bhattacharyya", threads=1)
    s = ExactSearcher(x[:300], "bhattacharyya")
    nan_q = q[:2].copy()
    nan_q[1, 3] = np.nan
    for bad in (q[:, :5], nan_q, -np.abs(q[:2]), np.array([["a"] * 32]), q[None]):
        with pytest.raises((TypeError, ValueError)) as exact_err:
            s.search(bad, 3)
        with pytest.raises(AnnSearchError) as graph_err:
            g.search(bad, 3, data=x)
        assert str(graph_err.value) == str(exact_err.value)


def test_search_does_not_depend_on_thread_count(dense):
    x, q = dense
    g = HnswGraph.build(x, "pearson", threads=2)
    a = g.search(q, 10, data=x)
    g.threads = 1
    b = g.search(q, 10, data=x)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])


def test_ef_and_candidates_trade_recall(dense):
    """A tiny ef/candidates list loses recall, the defaults do not (the knobs are live)."""
    x, q = dense
    g = HnswGraph.build(x, "l2", M=6, ef_construction=32, threads=2)
    truth = brute_topk("l2", q, x, 10)
    low = recall(g.search(q, 10, data=x, ef=1, candidates=10)[0], truth)
    high = recall(g.search(q, 10, data=x, ef=200)[0], truth)
    assert high >= 0.95 and low < high


def test_memmap_data_is_read_in_place(tmp_path, dense):
    x, q = dense
    path = tmp_path / "v.f32"
    mm = np.memmap(path, dtype=np.float32, mode="w+", shape=x.shape)
    mm[:] = x
    mm.flush()
    ro = np.memmap(path, dtype=np.float32, mode="r", shape=x.shape)
    g = HnswGraph.build(ro, "cosine", threads=2)
    a = g.search(q, 5, data=ro)
    b = g.search(q, 5, data=x)
    np.testing.assert_array_equal(a[0], b[0])


# ---------------------------------------------------------------------------
# deletions, growth, exclusion
# ---------------------------------------------------------------------------

def test_deleted_ids_never_come_back(dense):
    x, q = dense
    g = HnswGraph.build(x, "pearson", threads=2)
    first = g.search(q, 10, data=x)[0]
    rng = np.random.default_rng(5)
    gone = np.union1d(first[:, :3].ravel(), rng.choice(len(x), 800, replace=False))
    g.mark_deleted(gone)
    g.mark_deleted(gone[:5])  # idempotent
    assert len(g) == len(x) - gone.size
    ids, _ = g.search(q, 10, data=x)
    assert not np.isin(ids, gone).any()
    live = np.ones(len(x), bool)
    live[gone] = False
    assert recall(ids, brute_topk("pearson", q, x, 10, live)) >= 0.95
    # exclusion of deleted ids costs nothing extra and changes nothing
    ids2, _ = g.search(q, 10, data=x, exclude=gone)
    np.testing.assert_array_equal(ids, ids2)
    # re-adding brings an id back
    g.add(x[first[:1, 0]], first[:1, 0])
    assert g.search(x[first[0, 0]], 1, data=x)[0][0, 0] == first[0, 0]


def test_delete_unknown_id_is_an_error_and_changes_nothing(dense):
    x, _ = dense
    g = HnswGraph.build(x[:100], "l2", threads=1)
    with pytest.raises(AnnSearchError, match=r"not in the graph: \[100, 5000\]"):
        g.mark_deleted([3, 100, 5000])
    assert len(g) == 100
    with pytest.raises(AnnSearchError, match="integers"):
        g.mark_deleted([1.5])


def test_growth_after_build_is_found(dense):
    x, q = dense
    half = len(x) // 2
    g = HnswGraph.build(x[:half], "cosine", threads=2)
    cap = g.params["capacity"]
    g.add(x[half:], np.arange(half, len(x)))
    assert len(g) == len(x) and g.params["capacity"] > cap
    # a new row queried by itself comes first
    probe = np.arange(half, len(x), 97)
    ids, _ = g.search(x[probe], 1, data=x)
    np.testing.assert_array_equal(ids[:, 0], probe)
    assert recall(g.search(q, 10, data=x)[0], brute_topk("cosine", q, x, 10)) >= 0.95


def test_build_empty_then_grow(dense):
    x, q = dense
    g = HnswGraph.build(np.empty((0, 32), np.float32), "l2", threads=2)
    assert len(g) == 0
    with pytest.raises(AnnSearchError, match="empty"):
        g.search(q, 1, data=x)
    g.add(x[:1000], np.arange(1000))
    assert recall(g.search(q, 5, data=x)[0], brute_topk("l2", q, x[:1000], 5)) >= 0.95


def test_custom_ids_address_rows_of_data(dense):
    x, q = dense
    ids_in = np.arange(1000, 3000)
    g = HnswGraph.build(x[1000:3000], "l2", ids=ids_in, threads=2)
    ids, _ = g.search(q, 10, data=x)
    assert ((ids >= 1000) & (ids < 3000)).all()
    truth = brute_topk("l2", q, x[1000:3000], 10) + 1000
    assert recall(ids, truth) >= 0.95
    with pytest.raises(AnnSearchError, match="holds id 2999"):
        g.search(q, 10, data=x[:2000])


def test_exclude_and_padding():
    x, _ = clustered(50, 8, 1, seed=6)
    g = HnswGraph.build(x, "l2", threads=1)
    ids, scores = g.search(x[10], 3, data=x, exclude=[10])
    assert 10 not in ids
    assert ids[0, 0] == brute_topk("l2", x[10:11], x, 2)[0, 1]
    ids, scores = g.search(x[10], 5, data=x, exclude=np.arange(47))
    assert sorted(ids[0, :3].tolist()) == [47, 48, 49]
    assert ids[0, 3:].tolist() == [-1, -1] and np.isnan(scores[0, 3:]).all()


def test_add_replaces_an_existing_id(dense):
    x, _ = dense
    g = HnswGraph.build(x[:200], "l2", threads=1)
    g.add(x[300:301], [5])  # id 5 now has row 300's vector
    assert len(g) == 200
    data = x[:200].copy()
    data[5] = x[300]  # the caller's matrix holds the new vector at row 5
    ids, scores = g.search(x[300], 1, data=data)
    assert ids[0, 0] == 5 and scores[0, 0] == 0.0


# ---------------------------------------------------------------------------
# persistence
# ---------------------------------------------------------------------------

def test_save_load_round_trip(tmp_path, dense):
    x, q = dense
    g = HnswGraph.build(x, "pearson", M=10, ef_construction=80, ef=37, threads=2)
    g.mark_deleted(np.arange(0, 4000, 7))
    before = g.search(q, 10, data=x)
    g.save(tmp_path / "ann")
    (gf,) = [p.name for p in (tmp_path / "ann").iterdir() if p.name != META_FILE]
    assert gf == graph_file(tmp_path / "ann").name and re.fullmatch(r"hnsw\.[0-9a-f]{12}\.bin", gf)
    h = HnswGraph.load(tmp_path / "ann", threads=1)
    after = h.search(q, 10, data=x)
    np.testing.assert_array_equal(before[0], after[0])
    np.testing.assert_array_equal(before[1], after[1])
    p = dict(h.params, threads=g.threads)
    assert p == g.params
    assert h.ef == 37 and h.M == 10 and h.ef_construction == 80 and len(h) == len(g)
    with pytest.raises(AnnSearchError, match="holds id 3999"):
        h.search(q, 10, data=x[:3999])
    # the loaded graph keeps growing and deleting
    h.add(q[:3] * 1.0, [4000, 4001, 4002])
    both = np.vstack([x, q[:3]])
    assert h.search(q[1], 1, data=both)[0][0, 0] == 4001
    h.mark_deleted([4001])
    assert 4001 not in h.search(q[1], 5, data=both)[0]


def test_default_ef_is_persisted_not_hnswlibs(tmp_path, hist):
    x, _ = hist
    g = HnswGraph.build(x[:300], "bhattacharyya", threads=1)
    assert g.ef == DEFAULT_EF
    g.save(tmp_path)
    meta = json.loads((tmp_path / META_FILE).read_text())
    assert meta["ef"] == DEFAULT_EF and meta["metric"] == "bhattacharyya" and meta["space"] == "ip"
    assert HnswGraph.load(tmp_path).ef == DEFAULT_EF


def _saved(tmp_path: Path, x) -> Path:
    g = HnswGraph.build(x[:300], "l2", threads=1)
    g.save(tmp_path / "g")
    return tmp_path / "g"


def test_load_missing_is_not_found(tmp_path):
    with pytest.raises(errors.IndexNotFoundError, match="no HNSW graph"):
        HnswGraph.load(tmp_path / "nothing")


def test_load_corrupt_graph_file(tmp_path, dense):
    d = _saved(tmp_path, dense[0])
    raw = bytearray(graph_file(d).read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    graph_file(d).write_bytes(bytes(raw))
    with pytest.raises(errors.IndexCorruptError, match="checksum"):
        HnswGraph.load(d)


def test_load_truncated_graph_file(tmp_path, dense):
    d = _saved(tmp_path, dense[0])
    raw = graph_file(d).read_bytes()
    graph_file(d).write_bytes(raw[:-100])
    with pytest.raises(errors.IndexCorruptError, match="rebuild"):
        HnswGraph.load(d)


def test_load_wrong_version_or_bad_metadata(tmp_path, dense):
    d = _saved(tmp_path, dense[0])
    meta = json.loads((d / META_FILE).read_text())
    (d / META_FILE).write_text(json.dumps(dict(meta, format_version=99)))
    with pytest.raises(errors.IndexFormatError, match="version 99"):
        HnswGraph.load(d)
    (d / META_FILE).write_text("{not json")
    with pytest.raises(errors.IndexFormatError, match="unreadable"):
        HnswGraph.load(d)
    (d / META_FILE).write_text(json.dumps(dict(meta, space="ip")))
    with pytest.raises(errors.IndexFormatError, match="space"):
        HnswGraph.load(d)
    (d / META_FILE).write_text(json.dumps(dict(meta, M=99)))
    with pytest.raises(errors.IndexCorruptError, match="M=16"):
        HnswGraph.load(d)


# ---------------------------------------------------------------------------
# bad input
# ---------------------------------------------------------------------------

def test_bad_build_input(dense, hist):
    x, _ = dense
    with pytest.raises(AnnSearchError, match="2-D"):
        HnswGraph.build(x[0], "l2")
    bad = x[:10].copy()
    bad[4, 2] = np.nan
    with pytest.raises(AnnSearchError, match="NaN or infinity.*row 4"):
        HnswGraph.build(bad, "l2")
    with pytest.raises(AnnSearchError, match="non-negative"):
        HnswGraph.build(x[:10], "chisqr")
    with pytest.raises(AnnSearchError, match="duplicates"):
        HnswGraph.build(x[:3], "l2", ids=[1, 1, 2])
    with pytest.raises(AnnSearchError, match=r"one id per row \(3,\)"):
        HnswGraph.build(x[:3], "l2", ids=[1, 2])
    with pytest.raises(AnnSearchError, match=">= 0"):
        HnswGraph.build(x[:3], "l2", ids=[-1, 0, 1])
    with pytest.raises(AnnSearchError, match=r"M must be \[2, 1024\]"):
        HnswGraph.build(x[:3], "l2", M=1)
    with pytest.raises(AnnSearchError, match="ef must be >= 1"):
        HnswGraph.build(x[:3], "l2", ef=0)
    with pytest.raises(ValueError, match="threads"):
        HnswGraph.build(x[:3], "l2", threads=0)
    with pytest.raises(AnnSearchError, match="real numbers"):
        HnswGraph.build(np.array([["a", "b"]]), "l2")


def test_bad_search_input(dense):
    x, q = dense
    g = HnswGraph.build(x[:500], "l2", threads=1)
    with pytest.raises(AnnSearchError, match="D=32"):
        g.search(q[:, :31], 5, data=x)
    with pytest.raises(AnnSearchError, match=r"k must be \[1, 500\]; got k=501"):
        g.search(q, 501, data=x)
    with pytest.raises(AnnSearchError, match="k must be"):
        g.search(q, 0, data=x)
    with pytest.raises(AnnSearchError, match="candidates must be >= 10"):
        g.search(q, 10, data=x, candidates=5)
    nanq = q[:2].copy()
    nanq[1, 0] = np.inf
    with pytest.raises(AnnSearchError, match="NaN or infinity"):
        g.search(nanq, 5, data=x)
    with pytest.raises(AnnSearchError, match=r"raw \(N, 32\) matrix"):
        g.search(q, 5, data=x[:, :8])
    with pytest.raises(AnnSearchError, match="integer ids"):
        g.search(q, 5, data=x, exclude=[0.5])
    with pytest.raises(AnnSearchError, match="D=32"):
        g.add(q[:, :3], [600])


class _FailingIndex:
    """Stands in for hnswlib.Index to check the translation of its RuntimeError."""

    def __init__(self, real):
        self._real = real

    def knn_query(self, *args, **kwargs):
        raise RuntimeError("Cannot return the results in a contiguous 2D array. Probably ef or M is too small")

    def __getattr__(self, name):
        return getattr(self._real, name)


def test_hnswlib_failure_becomes_advice(dense):
    x, q = dense
    g = HnswGraph.build(x[:200], "l2", threads=1)
    g._index = _FailingIndex(g._index)
    with pytest.raises(AnnSearchError, match="larger ef, or rebuild"):
        g.search(q, 5, data=x)


# ---------------------------------------------------------------------------
# state machine (Python set as the oracle) and concurrency
# ---------------------------------------------------------------------------

def test_add_delete_sequences_match_a_set_oracle():
    from hypothesis import given, settings
    from hypothesis import strategies as st

    x, _ = clustered(120, 6, 1, seed=7)
    ops = st.lists(st.tuples(st.sampled_from(["add", "del"]), st.lists(st.integers(0, 119), min_size=1,
                                                                           max_size=15, unique=True)),
                   min_size=1, max_size=8)

    @settings(max_examples=25, deadline=None)
    @given(ops)
    def run(seq):
        g = HnswGraph.build(x[:10], "l2", threads=1)
        added, live = set(range(10)), set(range(10))
        for op, ids in seq:
            if op == "add":
                g.add(x[ids], ids)
                added |= set(ids)
                live |= set(ids)
            elif set(ids) <= added:
                g.mark_deleted(ids)
                live -= set(ids)
            else:
                with pytest.raises(AnnSearchError):
                    g.mark_deleted(ids)
        assert len(g) == len(live)
        if live:
            got, _ = g.search(x[0], len(live), data=x, ef=200)
            assert set(got[0].tolist()) == live

    run()


def test_concurrent_searches_and_adds(dense):
    x, q = dense
    g = HnswGraph.build(x[:2000], "pearson", threads=1)
    failures = []

    def searcher():
        try:
            for _ in range(20):
                ids, _ = g.search(q[:5], 5, data=x)
                assert (ids >= 0).all() and (ids < len(x)).all()
        except Exception as exc:  # pragma: no cover - reported below
            failures.append(exc)

    workers = [threading.Thread(target=searcher) for _ in range(3)]
    for w in workers:
        w.start()
    for start in range(2000, 4000, 250):
        g.add(x[start:start + 250], np.arange(start, start + 250))
    for w in workers:
        w.join()
    assert not failures
    assert len(g) == 4000


def test_import_does_not_load_hnswlib():
    code = "import sys, fastimg.ann; print('hnswlib' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_threads_from_environment_and_progress_bar(monkeypatch, capsys):
    x, q = clustered(300, 8, 3, seed=8)
    monkeypatch.setenv("FASTIMG_NUM_THREADS", "1")
    g = HnswGraph.build(x, "l2", progress=True)
    assert g.threads == 1 and g.params["threads"] == 1
    assert "300" in capsys.readouterr().err  # tqdm reports the rows inserted
    assert HnswGraph.build(x, "l2", threads=2).threads == 2
    monkeypatch.setenv("FASTIMG_NUM_THREADS", "zero")
    with pytest.raises(ValueError, match="FASTIMG_NUM_THREADS"):
        HnswGraph.build(x, "l2")


# ---------------------------------------------------------------------------
# the re-scoring step shared with the exact scan (fastimg.search.rescore)
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("metric", ["pearson", "l2", "intersect"])
def test_rescore_orders_by_exact_score_then_lower_id(metric):
    """rescore == brute-force scores of the candidates, sorted best first with ties
    (duplicated rows) broken by the lower id, whatever order the candidates come in."""
    from fastimg.search import rescore

    x, q = clustered(60, 6, 5, seed=9, nonneg=metric == "intersect")
    x[10] = x[40] = x[25]  # exact ties: 10 < 25 < 40
    q[0] = x[25]
    rng = np.random.default_rng(1)
    cand = np.stack([rng.permutation(np.r_[[40, 25, 10], rng.choice(np.r_[:10, 11:25, 26:40, 41:60], 9,
                                                                       replace=False)]) for _ in range(5)])
    ids, scores = rescore(metric, q, x, cand, 7)
    assert ids.shape == scores.shape == (5, 7) and ids.dtype == np.int64 and scores.dtype == np.float32
    for i in range(5):
        s = brute_scores(metric, q[i:i + 1], x[cand[i]])[0]
        key = -s if get_metric(metric).higher_is_better else s
        order = np.lexsort((cand[i], np.round(key, 9)))[:7]
        assert ids[i].tolist() == cand[i][order].tolist()
        np.testing.assert_allclose(scores[i], s[order], rtol=1e-6, atol=1e-6)
    tied = [j for j in ids[0].tolist() if j in (10, 25, 40)]
    assert tied == [10, 25, 40]  # identical rows: lower id first


def test_changed_flag_follows_adds_deletions_and_saves(tmp_path):
    x = np.random.default_rng(9).random((40, 6)).astype(np.float32)
    g = HnswGraph.build(x[:30], "l2", M=8, ef_construction=32)
    assert g.changed  # built, never saved
    g.save(tmp_path / "g", extra={"rows": 30})
    assert not g.changed and g.extra == {"rows": 30}
    g.add(x[30:], np.arange(30, 40))
    assert g.changed and g.max_id == 39
    g.save(tmp_path / "g")
    assert g.mark_deleted([3, 4]) == 2 and g.changed
    g.save(tmp_path / "g")
    assert g.mark_deleted([3]) == 0 and not g.changed  # nothing new: unchanged
    loaded = HnswGraph.load(tmp_path / "g")
    assert not loaded.changed and len(loaded) == 38
