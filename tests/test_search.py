"""fastimg.search (ExactSearcher / topk) against brute-force oracles.

Oracles: ``cv2.compareHist`` per row (histogram metrics), scipy.spatial.distance
(cosine, l2, l1), then a NumPy lexsort top-K (best first, ties by lower id).
"""
from __future__ import annotations

import os
import sys
import threading

import cv2
import numpy as np
import pytest
from scipy.spatial import distance

from fastimg import metrics as M
from fastimg.search import ExactSearcher, degenerate_queries, rank_degenerate, resolve_threads, topk

_core = pytest.importorskip("fastimg._core", reason="compiled core not built (run `make install`)")

CV2 = {m.name: m.cv2_method for m in M.METRICS.values() if m.cv2_method is not None}
ALL = M.metric_names()


# ---------------------------------------------------------------------------
# oracle and the float32 quasi-equality helper
# ---------------------------------------------------------------------------

def oracle_scores(metric: str, q: np.ndarray, data: np.ndarray) -> np.ndarray:
    """Independent per-row scores: cv2.compareHist or scipy."""
    q64, x64 = q.astype(np.float64), data.astype(np.float64)
    if metric in CV2:
        return np.array([cv2.compareHist(q, row, CV2[metric]) for row in data])
    if metric == "cosine":
        return np.array([0.0 if not r.any() or not q.any() else 1 - distance.cosine(q64, r) for r in x64])
    if metric == "l2":
        return np.array([distance.euclidean(q64, r) for r in x64])
    if metric == "l1":
        return np.array([distance.cityblock(q64, r) for r in x64])
    raise AssertionError(metric)


def oracle_topk(metric: str, q: np.ndarray, data: np.ndarray, k: int, exclude=()):
    s = oracle_scores(metric, q, data)
    key = -s if M.METRICS[metric].higher_is_better else s.copy()
    key = key.astype(np.float64)
    key[list(exclude)] = np.inf
    order = np.lexsort((np.arange(len(s)), key))
    order = order[: min(k, len(s) - len(set(exclude)))]
    return order, s


def assert_topk_equivalent(ids, scores, all_scores, higher_is_better, k, *, rtol=1e-6, atol=1e-6, excluded=()):
    """Check one query's result against the oracle's scores of every row.

    Accepts any order among rows whose scores are equal within float32-like
    tolerance (near-ties at the k boundary may be resolved either way), but
    requires: the right length, no duplicates, scores equal to the oracle's for
    the returned ids, best-first order, and that no dropped row is clearly better
    than the worst returned one.
    """
    ids = np.asarray(ids)
    scores = np.asarray(scores, dtype=np.float64)
    n_avail = len(all_scores) - len(set(excluded))
    assert len(ids) == min(k, n_avail), f"expected {min(k, n_avail)} results, got {len(ids)}"
    assert len(set(ids.tolist())) == len(ids), f"duplicate ids in {ids}"
    assert not set(ids.tolist()) & set(excluded), "an excluded id was returned"
    np.testing.assert_allclose(scores, all_scores[ids], rtol=rtol, atol=atol)
    sign = 1.0 if higher_is_better else -1.0
    good = sign * all_scores
    tol = atol + rtol * np.abs(good[ids])
    assert np.all(np.diff(sign * scores) <= tol[1:]), f"not sorted best first: {scores}"
    dropped = np.setdiff1d(np.arange(len(all_scores)), np.concatenate([ids, np.asarray(list(excluded), int)]))
    if len(ids) and len(dropped):
        worst = good[ids].min()
        assert good[dropped].max() <= worst + atol + rtol * abs(worst), "a better row was dropped"


class TestQuasiEqualityHelper:
    s = np.array([0.9, 0.5, 0.5000000001, 0.1, 0.7])

    def test_accepts_exact(self):
        assert_topk_equivalent([0, 4, 1], self.s[[0, 4, 1]], self.s, True, 3)

    def test_accepts_near_tie_swap_at_boundary(self):
        assert_topk_equivalent([0, 4, 1], self.s[[0, 4, 1]], self.s, True, 3)
        assert_topk_equivalent([0, 4, 2], self.s[[0, 4, 2]], self.s, True, 3)

    def test_rejects_worse_row(self):
        with pytest.raises(AssertionError, match="a better row was dropped"):
            assert_topk_equivalent([0, 4, 3], self.s[[0, 4, 3]], self.s, True, 3)

    def test_rejects_duplicates_unsorted_wrong_scores_wrong_length(self):
        with pytest.raises(AssertionError, match="duplicate"):
            assert_topk_equivalent([0, 0, 4], self.s[[0, 0, 4]], self.s, True, 3)
        with pytest.raises(AssertionError, match="not sorted"):
            assert_topk_equivalent([4, 0, 1], self.s[[4, 0, 1]], self.s, True, 3)
        with pytest.raises(AssertionError):
            assert_topk_equivalent([0, 4, 1], [0.9, 0.7, 0.4], self.s, True, 3)
        with pytest.raises(AssertionError, match="expected 3 results"):
            assert_topk_equivalent([0, 4], self.s[[0, 4]], self.s, True, 3)

    def test_direction_and_exclusion(self):
        assert_topk_equivalent([3, 1], self.s[[3, 1]], self.s, False, 2)
        with pytest.raises(AssertionError, match="excluded"):
            assert_topk_equivalent([3, 1], self.s[[3, 1]], self.s, False, 2, excluded=(3,))


# ---------------------------------------------------------------------------
# data
# ---------------------------------------------------------------------------

def make_data(n=300, d=72, seed=0):
    """Histograms with zero bins, zero rows, constant rows and exact duplicates (ties)."""
    rng = np.random.default_rng(seed)
    x = rng.random((n, d), dtype=np.float32)
    x[rng.random(x.shape) < 0.3] = 0
    x[::37] = 0                        # zero rows
    x[5] = 0.2                          # constant rows
    x[6] = 0.2
    if n > 210:
        x[10:20] = x[100]               # exact duplicates of row 100 -> ties
        x[200:203] = x[7]
    return x


@pytest.fixture(scope="module")
def data():
    return make_data()


# ---------------------------------------------------------------------------
# correctness against the oracle
# ---------------------------------------------------------------------------

# batch sizes that take each candidate kernel: 2x4 tiles (4), 12x8 panels (7), 6x16 panels (20)
_BATCHES = {4: [100, 7, 3, 150], 7: [100, 7, 3, 150, 5, 37, 250],
            20: [100, 7, 3, 150, 5, 37, 250, 0, 1, 2, 10, 11, 60, 61, 62, 63, 200, 201, 299, 298]}


@pytest.mark.parametrize("nq", sorted(_BATCHES))
@pytest.mark.parametrize("metric", ALL)
def test_every_metric_matches_oracle(data, metric, nq):
    queries = data[_BATCHES[nq]]  # zero rows, constant rows and duplicated rows among them
    k = 12
    s = ExactSearcher(data, metric, chunk_rows=64)
    ids, scores = s.search(queries, k)
    assert ids.dtype == np.int64 and scores.dtype == np.float32 and ids.shape == (nq, k)
    for i, q in enumerate(queries):
        ref_ids, ref = oracle_topk(metric, q, data, k)
        assert_topk_equivalent(ids[i], scores[i], ref, M.METRICS[metric].higher_is_better, k)
        # exact ties (duplicate rows) come back in id order, exactly as the lexsort oracle
        np.testing.assert_array_equal(ids[i], ref_ids)


@pytest.mark.parametrize("metric", ALL)
def test_ties_broken_by_lower_id(metric):
    x = np.tile(np.array([[1, 2, 3, 0.5]], dtype=np.float32), (9, 1))
    x[4] = [3, 2, 1, 0.5]
    ids, _ = topk(x, x[0], k=5, metric=metric)
    assert ids.tolist() == [0, 1, 2, 3, 5]  # eight identical rows, row 4 differs


def test_pearson_is_the_original_pearsonr_ranking(data):
    from scipy.stats import pearsonr

    q = data[42]
    rows = [i for i in range(len(data)) if data[i].max() != data[i].min()]  # pearsonr needs variance
    r = np.array([pearsonr(q.astype(np.float64), data[i].astype(np.float64))[0] for i in rows])
    expected = np.array(rows)[np.lexsort((rows, -r))][:10]
    sub_exclude = np.setdiff1d(np.arange(len(data)), rows)
    ids, scores = topk(data, q, k=10, metric="pearson", exclude=sub_exclude)
    assert ids.tolist() == expected.tolist()
    np.testing.assert_allclose(scores, np.sort(r)[::-1][:10], rtol=1e-6)


@pytest.mark.parametrize("metric", ALL)
def test_k1_kN_and_beyond(data, metric):
    q = data[50]
    ref_ids, ref = oracle_topk(metric, q, data, len(data))
    ids1, sc1 = topk(data, q, k=1, metric=metric)
    assert ids1.shape == (1,)
    assert_topk_equivalent(ids1, sc1, ref, M.METRICS[metric].higher_is_better, 1)
    idsn, scn = topk(data, q, k=len(data) + 5, metric=metric)
    assert idsn.shape == (len(data),)
    assert sorted(idsn.tolist()) == list(range(len(data)))
    assert_topk_equivalent(idsn, scn, ref, M.METRICS[metric].higher_is_better, len(data))


@pytest.mark.parametrize("metric", ALL)
def test_single_row_and_single_dimension(metric):
    one = np.array([[0.3, 0.0, 0.7]], dtype=np.float32)
    ids, scores = topk(one, [0.2, 0.1, 0.7], k=3, metric=metric)
    assert ids.tolist() == [0]
    np.testing.assert_allclose(scores[0], oracle_scores(metric, np.float32([0.2, 0.1, 0.7]), one)[0], rtol=1e-6)

    col = np.array([[0.5], [2.0], [0.0], [1.0], [2.0]], dtype=np.float32)
    q = np.array([1.5], dtype=np.float32)
    ids, scores = topk(col, q, k=5, metric=metric)
    ref_ids, ref = oracle_topk(metric, q, col, 5)
    assert ids.tolist() == ref_ids.tolist()
    np.testing.assert_allclose(scores, ref[ref_ids], rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("metric", ALL)
def test_exclude(data, metric):
    q = data[100]
    ex = [100, 10, 11, 3, 299]
    ids, scores = topk(data, q, k=8, metric=metric, exclude=ex)
    ref_ids, ref = oracle_topk(metric, q, data, 8, exclude=ex)
    assert_topk_equivalent(ids, scores, ref, M.METRICS[metric].higher_is_better, 8, excluded=ex)
    assert ids.tolist() == ref_ids.tolist()
    # more excluded than left: returns what remains
    small = data[:6]
    ids, _ = topk(small, q, k=10, metric=metric, exclude=[0, 2, 4])
    assert sorted(ids.tolist()) == [1, 3, 5]
    ids, scores = topk(small, q, k=3, metric=metric, exclude=np.arange(6))
    assert ids.shape == (0,) and scores.shape == (0,)


@pytest.mark.parametrize("metric", ["pearson", "bhattacharyya", "cosine"])
def test_degenerate_query_scores_every_row_alike(data, metric):
    """A constant (pearson) or zero query: cv2 gives every row the same value."""
    q = np.zeros(data.shape[1], dtype=np.float32) + (0.5 if metric == "pearson" else 0.0)
    ids, scores = topk(data, q, k=5, metric=metric, exclude=[1])
    assert ids.tolist() == [0, 2, 3, 4, 5]
    np.testing.assert_allclose(scores, oracle_scores(metric, q, data[[0, 2, 3, 4, 5]]), rtol=1e-6)


@pytest.mark.parametrize("metric", ALL)
def test_one_and_two_threads_identical(metric):
    x = make_data(n=2000, d=40, seed=3)
    queries = x[[1, 100, 500, 999, 1500]]
    results = []
    for threads, chunk in [(1, 4096), (2, 37), (2, 256), (3, 5)]:
        s = ExactSearcher(x, metric, threads=threads, chunk_rows=chunk)
        results.append(s.search(queries, 15, exclude=[1, 2]))
    for ids, scores in results[1:]:
        np.testing.assert_array_equal(ids, results[0][0])
        np.testing.assert_array_equal(scores, results[0][1])


def test_kernel_candidates_identical_across_threads():
    """The raw kernel output (values and ids), not only the re-scored result."""
    rng = np.random.default_rng(5)
    x = rng.random((3001, 19), dtype=np.float32)
    x[1000:1100] = x[5]  # ties
    q = rng.random((6, 19), dtype=np.float32)
    ref_ids, ref_values = _core.fused_topk(x, q, 40, n_threads=1, chunk_rows=3001)
    for threads, chunk in [(2, 7), (2, 1000), (4, 1)]:
        ids, values = _core.fused_topk(x, q, 40, n_threads=threads, chunk_rows=chunk)
        np.testing.assert_array_equal(ids, ref_ids)
        np.testing.assert_array_equal(values, ref_values)
    # and the selection equals NumPy's (value desc, id asc) ordering of the same dot products
    s = q.astype(np.float64) @ x.T.astype(np.float64)
    for i in range(6):
        order = np.lexsort((np.arange(len(x)), -s[i]))[:40]
        np.testing.assert_allclose(ref_values[i], s[i, order], rtol=1e-5)


def test_memmap_input_used_in_place(tmp_path, data):
    path = tmp_path / "vectors.f32"
    mm = np.memmap(path, dtype=np.float32, mode="w+", shape=data.shape)
    mm[:] = data
    mm.flush()
    ro = np.memmap(path, dtype=np.float32, mode="r", shape=data.shape)
    for metric in ("pearson", "chisqr"):
        s = ExactSearcher(ro, metric)
        assert s.data is ro  # not copied
        got = s.search(data[[100, 7]], 10)
        ref = ExactSearcher(data, metric).search(data[[100, 7]], 10)
        np.testing.assert_array_equal(got[0], ref[0])
        np.testing.assert_array_equal(got[1], ref[1])


def test_prepared_cache_roundtrip(tmp_path, data):
    """The index persists .prepared/.bias and passes them back as memmaps."""
    s = ExactSearcher(data, "pearson")
    assert s.prepared.ctypes.data % 64 == 0
    np.save(tmp_path / "p.npy", s.prepared)
    np.save(tmp_path / "b.npy", s.bias)
    p = np.load(tmp_path / "p.npy", mmap_mode="r")
    b = np.load(tmp_path / "b.npy", mmap_mode="r")
    s2 = ExactSearcher(data, "pearson", prepared=p, bias=b)
    assert s2.prepared is p
    np.testing.assert_array_equal(s2.search(data[:3], 7)[0], s.search(data[:3], 7)[0])


def test_topk_one_query_in_one_row_out(data):
    """numpy's convention: a (D,) query gives (k,) answers; a (1, D) batch gives (1, k)."""
    ref_ids, _ = oracle_topk("pearson", data[7], data, 4)
    ids, scores = topk(data, data[7], k=4)
    assert ids.shape == scores.shape == (4,)
    assert ids.tolist() == ref_ids[:4].tolist()
    ids2, scores2 = topk(data, data[7:8], k=4)
    assert ids2.shape == scores2.shape == (1, 4)
    np.testing.assert_array_equal(ids2[0], ids)
    np.testing.assert_array_equal(scores2[0], scores)


def test_queries_coerced(data):
    q64 = data[100].astype(np.float64).tolist()
    ids, _ = topk(data, q64, k=3)
    ref, _ = topk(data, data[100], k=3)
    np.testing.assert_array_equal(ids, ref)
    ids, scores = topk(data, np.empty((0, data.shape[1])), k=3)
    assert ids.shape == (0, 3) and scores.shape == (0, 3)


# ---------------------------------------------------------------------------
# errors
# ---------------------------------------------------------------------------

def test_errors_name_expected_and_received(data, monkeypatch):
    q = data[0]
    with pytest.raises(TypeError, match="data must have dtype float32; got float64"):
        topk(data.astype(np.float64), q)
    with pytest.raises(TypeError, match="data must be a numpy.ndarray.*got list"):
        topk(data.tolist(), q)
    with pytest.raises(ValueError, match="data must be C-contiguous"):
        topk(np.asfortranarray(data), q)
    with pytest.raises(ValueError, match=r"data must be 2-D with shape \(N, D\); got 1-D"):
        topk(data[0], q)
    with pytest.raises(ValueError, match="at least one row"):
        topk(data[:0], q)
    with pytest.raises(ValueError, match="query dimension mismatch: expected D=72.*got 71"):
        topk(data, q[:71])
    with pytest.raises(ValueError, match=r"queries must have shape \(D,\) or \(Q, D\)"):
        topk(data, q.reshape(1, 1, -1))
    with pytest.raises(TypeError, match="queries must hold real numbers"):
        topk(data, np.array(["a"] * 72))
    bad = data.copy()
    bad[17, 3] = np.nan
    with pytest.raises(ValueError, match="data must be finite; got NaN or infinity in row 17"):
        topk(bad, q)
    with pytest.raises(ValueError, match="queries must be finite; query 1 has NaN or inf"):
        topk(data, np.stack([q, bad[17]]))
    neg = data.copy()
    neg[4, 0] = -1
    with pytest.raises(ValueError, match="'chisqr' compares histograms.*data row 4 has a negative value"):
        topk(neg, q, metric="chisqr")
    with pytest.raises(ValueError, match="'kl_div' compares histograms.*query 0 has a negative value"):
        topk(data, -q - 1, metric="kl_div")
    topk(neg, q, metric="pearson")  # pearson accepts negative values
    with pytest.raises(ValueError, match="k must be >= 1; got k=0"):
        topk(data, q, k=0)
    with pytest.raises(TypeError, match="k must be an integer"):
        topk(data, q, k=2.5)
    with pytest.raises(ValueError, match="unknown metric 'hamming'; expected one of"):
        topk(data, q, metric="hamming")
    with pytest.raises(ValueError, match=r"exclude ids must be in \[0, 299\].*got 300"):
        topk(data, q, exclude=[300])
    with pytest.raises(TypeError, match="exclude must be row ids"):
        topk(data, q, exclude=[1.5])
    with pytest.raises(ValueError, match="threads must be a positive integer"):
        topk(data, q, threads=0)
    monkeypatch.setenv("FASTIMG_NUM_THREADS", "many")
    with pytest.raises(ValueError, match="FASTIMG_NUM_THREADS must be a positive integer; got 'many'"):
        topk(data, q)


def test_prepared_argument_errors(data):
    p, b = M.prepare_rows("pearson", data)
    with pytest.raises(ValueError, match="needs the bias"):
        ExactSearcher(data, "pearson", prepared=p)
    with pytest.raises(ValueError, match=r"prepared must have the shape of data \(300, 72\); got \(299, 72\)"):
        ExactSearcher(data, "pearson", prepared=p[:-1], bias=b)
    with pytest.raises(ValueError, match="has no inner-product form"):
        ExactSearcher(data, "chisqr", prepared=p)
    with pytest.raises(ValueError, match=r"strategy must be one of \('auto', 'fused'\); got 'gemm'"):
        ExactSearcher(data, "pearson", strategy="gemm")


def test_resolve_threads(monkeypatch):
    monkeypatch.delenv("FASTIMG_NUM_THREADS", raising=False)
    assert resolve_threads(3) == 3
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    assert resolve_threads(None) == cores
    monkeypatch.setenv("FASTIMG_NUM_THREADS", "2")
    assert resolve_threads(None) == 2
    assert ExactSearcher(make_data(20, 4), "l1").threads == 2
    assert resolve_threads(1) == 1
    with pytest.raises(ValueError):
        resolve_threads(True)


# ---------------------------------------------------------------------------
# the GIL is released while scanning
# ---------------------------------------------------------------------------

def _run_with_observer(call, observe):
    """Run ``call()`` in this thread while another thread, released just before
    the call, records ``observe()``.  A long switch interval means the observer can
    only run before ``call()`` returns if ``call`` releases the GIL."""
    go = threading.Event()
    seen = {}

    def observer():
        go.wait()
        seen["during"] = observe()

    old = sys.getswitchinterval()
    t = threading.Thread(target=observer)
    t.start()
    sys.setswitchinterval(5.0)
    try:
        go.set()
        call()
    finally:
        sys.setswitchinterval(old)
        t.join()
    return seen["during"]


def test_fused_kernel_releases_the_gil():
    rng = np.random.default_rng(0)
    x = rng.random((400_000, 32), dtype=np.float32)
    q = rng.random((1, 32), dtype=np.float32)
    out_v = np.full((1, 10), 7.0, dtype=np.float32)
    out_i = np.full((1, 10), -7, dtype=np.int64)
    active = np.arange(32, dtype=np.int32)[None]

    def call():
        _core.fused_topk(x, q, 10, kind=_core.KIND_KL_DIV, aux=q, active=active,
                         n_active=np.array([32], np.int64), n_threads=1, out_ids=out_i, out_values=out_v)

    # the observer ran while the result was not written yet
    assert _run_with_observer(call, lambda: bool((out_i == -7).all()))
    assert (out_i >= 0).all()  # and the kernel did finish


@pytest.mark.parametrize("nq", [1, 7])
def test_constant_pearson_query_ranks_like_opencv(data, nq):
    """A constant query has a zero prepared vector, but OpenCV's scores are not all
    equal (constant and zero rows score 1, the rest float64 rounding noise): the
    result must still be cv2's ranking, exclusions included."""
    queries = np.repeat(data[[5]], nq, axis=0)
    s = ExactSearcher(data, "pearson")
    ids, scores = s.search(queries, 12, exclude=[0, 37])
    ref = np.array([cv2.compareHist(data[5], r, cv2.HISTCMP_CORREL) for r in data])
    ref[[0, 37]] = -np.inf
    order = np.lexsort((np.arange(len(data)), -ref))[:12]
    for i in range(nq):
        np.testing.assert_array_equal(ids[i], order)
        np.testing.assert_allclose(scores[i], ref[order], rtol=1e-6, atol=1e-6)


# ---------------------------------------------------------------------------
# queries a surrogate cannot rank (shared with the HNSW graph)
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("metric", ALL)
def test_degenerate_queries_are_ranked_like_opencv(data, metric):
    """In every space a metric is searched in (its prepared rows; the graph's rows),
    a query whose embedded vector is zero is classified and ranked as the oracle
    says: a tie means cv2/scipy give every row one value (lowest ids first), a
    scan reproduces the oracle's ranking; other queries are left to the surrogate."""
    m = M.METRICS[metric]
    queries = np.stack([np.zeros(72, np.float32), np.full(72, 0.2, np.float32), data[100], data[7]])
    spaces = {m.ip_space, M.METRICS[m.graph_rows].ip_space if m.graph_rows != "raw" else "raw"} - {None}
    skip = np.zeros(len(data), bool)
    skip[[0, 1, 150]] = True
    for space in spaces:
        embedded = M.embed(space, queries)
        ties, scans = degenerate_queries(m, queries, embedded, space)
        degenerate = np.union1d(ties, scans)
        np.testing.assert_array_equal(degenerate, [] if space == "raw" else np.flatnonzero(~embedded.any(axis=1)))
        cand = rank_degenerate(m, queries, ties, scans, data, 6, skip)
        assert cand.shape == (degenerate.size, 6)
        for i, ids in zip(np.concatenate([ties, scans]), cand):
            ref = oracle_scores(metric, queries[i], data)
            if i in ties:
                assert np.ptp(ref) == 0  # a true tie: every row scores alike
            ref_ids, _ = oracle_topk(metric, queries[i], data, 6, exclude=(0, 1, 150))
            np.testing.assert_array_equal(ids, ref_ids)
