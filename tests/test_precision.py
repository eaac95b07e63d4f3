"""Reduced-precision exact search (fastimg.precision, ExactSearcher(precision=...)).

The claim under test: whatever the precision, the answer (ids AND scores) is the
one of the float32 path, and the one of a NumPy brute force (every row's exact
float64 value, lexsort best first, ties by lower id), on adversarial data:
near-ties, duplicated rows, constant rows, zero rows, tiny and huge norms, the
bias metrics (pearson with constant rows, l2), degenerate queries, exclusions.
Oracles: the float32 searcher, the brute force, and cv2.compareHist / scipy
(test_search's oracle) with a tolerance.
"""
from __future__ import annotations

import numpy as np
import pytest

import fastimg
from fastimg import metrics as M
from fastimg.precision import (INT8_MAX_DIM, ReducedRows, ReducedScan, reduce_prepared, reduce_rows,
                               zero_point)
from fastimg.search import ExactSearcher, topk

from test_search import assert_topk_equivalent, oracle_scores

pytest.importorskip("fastimg._core", reason="compiled core not built (run `make install`)")

IP = ["pearson", "bhattacharyya", "cosine", "l2"]
REDUCED = ["float16", "int8"]


def adversarial(metric: str, d: int = 72, seed: int = 0, n: int = 2400):
    """(data float32 (N, d), queries float32 (Q, d)) full of ties and edge rows."""
    rng = np.random.default_rng(seed)
    hist = M.METRICS[metric].nonneg

    def draw(m):
        if hist:
            x = rng.random((m, d))
            x[x < 0.3] = 0
            return x
        return rng.standard_normal((m, d))

    base = draw(n)
    c = base[:6].copy()
    parts = [base]
    parts.append(c[0] * (1 + 1e-7 * np.arange(1, 31))[:, None])  # scaled copies: near-ties
    ulp = np.repeat(c[1][None].astype(np.float32), 30, axis=0)  # one element 1..30 ulps away
    for i in range(30):
        j = i % d
        for _ in range(i + 1):
            ulp[i, j] = np.nextafter(ulp[i, j], np.float32(np.inf))
    parts.append(ulp.astype(np.float64))
    parts.append(np.repeat(c[2][None], 60, axis=0))  # exact duplicates
    parts.append(c[3] + 1e-4 * draw(30))  # near duplicates
    parts.append(c[4] * np.array([1e-5, 1e-3, 1e3])[:, None])  # tiny and large norms
    parts.append(np.zeros((10, d)))  # zero rows
    if metric == "pearson":  # constant rows score exactly 1 (OpenCV): all tied at the top
        parts.append(np.repeat(rng.uniform(-2, 2, (25, 1)), d, axis=1))
    if metric == "cosine":
        parts.append(c[5] * np.array([1e-20, 1e-10, 1e15])[:, None])
    if metric == "l2":
        parts.append(c[5] * np.array([1e-20, 1e15])[:, None])
        parts.append(rng.standard_normal((20, d)) * 1e4)
    x = np.concatenate(parts)
    x = x[rng.permutation(len(x))].astype(np.float32)
    q = [c[0], c[1], c[2], c[3], c[4] * 1e-5, c[5], c[2] + 1e-3 * draw(1)[0], draw(1)[0]]
    if not hist:
        q.append(np.full(d, 0.7))  # constant: a degenerate pearson query
    q.append(np.zeros(d))  # zero query
    return x, np.asarray(q, dtype=np.float32)


def brute_force(metric: str, data: np.ndarray, q: np.ndarray, k: int, exclude=()):
    """Every row's exact float64 value, lexsort best first (ties by lower id)."""
    m = M.METRICS[metric]
    scores = M.exact_scores_many(m, q, np.broadcast_to(data, (len(q),) + data.shape))
    key = -scores if m.higher_is_better else scores.copy()
    key[:, list(exclude)] = np.inf
    ids = np.arange(data.shape[0])
    k = min(k, data.shape[0] - len(set(exclude)))
    order = np.array([np.lexsort((ids, key[i]))[:k] for i in range(len(q))])
    return order, np.take_along_axis(scores, order, 1).astype(np.float32)


_cache: dict = {}


def searchers(metric: str, d: int = 72, seed: int = 0):
    key = (metric, d, seed)
    if key not in _cache:
        x, q = adversarial(metric, d, seed)
        _cache[key] = (x, q, {p: ExactSearcher(x, metric, precision=p, threads=2) for p in ["float32"] + REDUCED})
    return _cache[key]


@pytest.mark.parametrize("metric", IP)
@pytest.mark.parametrize("k", [1, 10, 40])
def test_reduced_search_equals_float32_path_and_brute_force(metric, k):
    x, q, s = searchers(metric)
    ref_ids, ref_scores = brute_force(metric, x, q, k)
    ids32, sc32 = s["float32"].search(q, k)
    # the data stays within what the float32 path guarantees (else the test proves nothing)
    np.testing.assert_array_equal(ids32, ref_ids)
    np.testing.assert_array_equal(sc32, ref_scores)
    for p in REDUCED:
        stats: dict = {}
        batch = s[p].search(q, k, stats=stats)  # batch: the panel kernels
        np.testing.assert_array_equal(batch[0], ids32, err_msg=f"{p} batch ids")
        np.testing.assert_array_equal(batch[1], sc32, err_msg=f"{p} batch scores")
        assert stats["precision"] == p and stats["queries"] == len(q)
        assert stats["rescored"] >= len(q) * min(len(x), k + max(8, k // 8)) and stats["scans"] >= 1
        for i in range(len(q)):  # one query at a time: the row-stream kernels
            ids, sc = s[p].search(q[i], k)
            np.testing.assert_array_equal(ids[0], ids32[i], err_msg=f"{p} query {i} ids")
            np.testing.assert_array_equal(sc[0], sc32[i], err_msg=f"{p} query {i} scores")


@pytest.mark.parametrize("metric", IP)
def test_reduced_search_agrees_with_cv2_and_scipy(metric):
    """The independent oracle (cv2.compareHist / scipy per row), with a float32 tolerance."""
    x, q, s = searchers(metric)
    m = M.METRICS[metric]
    for p in REDUCED:
        ids, scores = s[p].search(q, 10)
        for i in range(len(q)):
            all_scores = oracle_scores(metric, q[i], x)
            if metric == "pearson":
                # OpenCV's float64 variance of some constant rows comes out slightly
                # negative (NaN); at variance 0 it scores them 1, as fastimg does
                flat = (x == x[:, :1]).all(axis=1)
                assert np.isnan(all_scores[~flat]).sum() == 0
                all_scores[flat & np.isnan(all_scores)] = 1.0
            assert_topk_equivalent(ids[i], scores[i], all_scores, m.higher_is_better, 10, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("metric", ["pearson", "l2"])
@pytest.mark.parametrize("d", [256, 13])
def test_other_dimensions_threads_and_exclusions(metric, d):
    x, q, s = searchers(metric, d=d, seed=d)
    rng = np.random.default_rng(d)
    exclude = rng.choice(len(x), 200, replace=False)
    ref = brute_force(metric, x, q, 12, exclude)
    for p in REDUCED:
        for threads in (1, 2):
            sp = ExactSearcher(x, metric, precision=p, threads=threads, chunk_rows=97,
                               reduced=s[p].reduced, bias=s[p].bias)
            ids, sc = sp.search(q, 12, exclude=exclude)
            np.testing.assert_array_equal(ids, ref[0])
            np.testing.assert_array_equal(sc, ref[1])


@pytest.mark.parametrize("p", ["float32"] + REDUCED)
def test_many_ties_widen_the_scan_until_certified(p):
    """500 copies of the query row: the first candidate scan cannot exclude the
    tied rows, the scan widens (stats) and the answer is still the lowest ids
    (the float32 scan too: its kk candidates alone would be any 18 of the 500)."""
    rng = np.random.default_rng(3)
    x = rng.standard_normal((3000, 64)).astype(np.float32)
    dup = rng.choice(3000, 500, replace=False)
    x[dup] = x[0]
    for metric in ("cosine", "pearson"):
        s = ExactSearcher(x, metric, precision=p)
        stats: dict = {}
        ids, sc = s.search(x[0], 10, stats=stats)
        assert stats["scans"] >= 2 and stats["widened"] == 1
        np.testing.assert_array_equal(ids[0], np.unique(np.concatenate([[0], dup]))[:10])
        np.testing.assert_array_equal((ids, sc), brute_force(metric, x, x[:1], 10))


def test_degenerate_and_small_cases_behave_as_the_float32_path():
    x, q, s = searchers("pearson")
    for p in REDUCED:
        # k beyond N, all rows excluded but two, a single row
        for k, exclude in ((len(x) + 5, None), (5, np.arange(2, len(x)))):
            np.testing.assert_array_equal(s[p].search(q, k, exclude=exclude),
                                          s["float32"].search(q, k, exclude=exclude))
        one = ExactSearcher(x[:1], "pearson", precision=p)
        np.testing.assert_array_equal(one.search(q, 3), ExactSearcher(x[:1], "pearson").search(q, 3))
        st: dict = {}
        out = s[p].search(np.empty((0, x.shape[1]), np.float32), 3, stats=st)
        assert out[0].shape == (0, 3) and st["queries"] == 0


# ---------------------------------------------------------------------------
# the reduced rows
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("metric", IP)
@pytest.mark.parametrize("p", REDUCED)
def test_reduced_rows_bound_their_error_and_build_row_by_row(metric, p):
    x, _ = adversarial(metric, d=37, seed=5)
    red, bias = reduce_rows(metric, x, p)
    prep, bias32 = M.prepare_rows(metric, x)
    np.testing.assert_array_equal(bias, bias32)
    # what the codes stand for, decoded independently
    if p == "int8":
        z = zero_point(metric)
        assert z == (0 if metric == "bhattacharyya" else 128)
        assert red.codes.shape == (len(x), 40) and (red.codes[:, 37:] == z).all()
        lo = 0 if z == 0 else 1
        assert red.codes.min() >= lo
        xh = red.scale[:, None].astype(np.float64) * (red.codes[:, :37].astype(np.float64) - z)
    else:
        e = np.log2(red.scale)
        assert (e == np.round(e)).all() and np.isfinite(red.codes.astype(np.float64)).all()
        assert (np.abs(red.codes.astype(np.float64)) <= 1).all()
        xh = red.scale[:, None].astype(np.float64) * red.codes.astype(np.float64)
    true_err = np.sqrt(((prep.astype(np.float64) - xh) ** 2).sum(1))
    assert (red.err.astype(np.float64) >= true_err).all()
    assert (red.err.astype(np.float64) <= true_err * (1 + 1e-6) + 1e-30).all()
    # rows are reduced independently: chunks concatenate to the whole
    parts = [reduce_rows(metric, x[a:a + 700], p)[0] for a in range(0, len(x), 700)]
    for field in ("codes", "scale", "err"):
        np.testing.assert_array_equal(np.concatenate([getattr(r, field) for r in parts]), getattr(red, field))
    # from the prepared rows, into preallocated arrays
    out = ReducedRows.empty(p, len(x), 37)
    assert reduce_prepared(metric, prep, p, out=out) is out
    for field in ("codes", "scale", "err"):
        np.testing.assert_array_equal(getattr(out, field), getattr(red, field))


def test_float16_rows_never_overflow_and_zero_rows_are_exact():
    x = np.array([[1e15, -3e14, 0.0], [1e-30, 0.0, 2e-30], [0.0, 0.0, 0.0]], dtype=np.float32)
    red, _ = reduce_rows("l2", x, "float16")  # float16 alone tops out at 65504
    assert np.isfinite(red.codes.astype(np.float32)).all()
    assert red.err[2] == 0 and red.scale[2] == 1
    assert (red.err <= 1e-3 * np.linalg.norm(x.astype(np.float64), axis=1)).all()


@pytest.mark.parametrize("d", [72, 256])
def test_nbytes_of_reduced_rows(d):
    x = np.random.default_rng(d).random((500, d), dtype=np.float32)
    for metric in ("pearson", "bhattacharyya"):
        s32 = ExactSearcher(x, metric)
        s8 = ExactSearcher(x, metric, precision="int8")
        s16 = ExactSearcher(x, metric, precision="float16")
        assert s32.nbytes == s32.prepared.nbytes + (0 if s32.bias is None else s32.bias.nbytes)
        assert s8.prepared is None and s8.nbytes == s8.reduced.nbytes + (0 if s8.bias is None else s8.bias.nbytes)
        assert s8.nbytes <= 0.3 * s32.nbytes
        assert s16.nbytes <= 0.55 * s32.nbytes
    assert ExactSearcher(x, "chisqr").nbytes == 0


def test_persisted_reduced_rows_are_used_in_place(tmp_path):
    x, q, s = searchers("l2")
    red = s["int8"].reduced
    for name, arr in red.arrays().items():
        np.save(tmp_path / f"{name}.npy", arr)
    np.save(tmp_path / "bias.npy", s["int8"].bias)
    loaded = ReducedRows("int8", *(np.load(tmp_path / f"{n}.npy", mmap_mode="r") for n in ("codes", "scale", "err")))
    sp = ExactSearcher(x, "l2", precision="int8", reduced=loaded, bias=np.load(tmp_path / "bias.npy", mmap_mode="r"))
    assert sp.reduced is loaded
    np.testing.assert_array_equal(sp.search(q, 10), s["float32"].search(q, 10))
    # from persisted float32 prepared rows: reduced built from them, not kept
    sp = ExactSearcher(x, "l2", precision="float16", prepared=s["float32"].prepared, bias=s["float32"].bias)
    assert sp.prepared is None and sp.reduced.precision == "float16"
    np.testing.assert_array_equal(sp.search(q, 10), s["float32"].search(q, 10))


def test_precision_arguments_are_checked():
    x = np.random.default_rng(0).random((50, 8), dtype=np.float32)
    red, bias = reduce_rows("pearson", x, "int8")
    with pytest.raises(fastimg.ArgumentError, match="precision must be one of"):
        ExactSearcher(x, "pearson", precision="int4")
    for metric in ("chisqr", "l1", "intersect"):  # no reduced form: an error, never a silent float32
        for p in ("int8", "float16"):
            with pytest.raises(fastimg.ArgumentError, match=f"precision='{p}' needs an inner-product metric.*"
                                                            f"metric '{metric}'"):
                ExactSearcher(x, metric, precision=p)
    with pytest.raises(fastimg.ArgumentError, match=f"precision='int8' supports D <= {INT8_MAX_DIM}"):
        ExactSearcher(np.zeros((1, INT8_MAX_DIM + 4), np.float32), "cosine", precision="int8")
    with pytest.raises(ValueError, match="precision is 'float32'"):
        ExactSearcher(x, "pearson", reduced=red, bias=bias)
    with pytest.raises(ValueError, match="reduced rows are 'int8' but precision='float16'"):
        ExactSearcher(x, "pearson", precision="float16", reduced=red, bias=bias)
    with pytest.raises(ValueError, match="needs the bias"):
        ExactSearcher(x, "pearson", precision="int8", reduced=red)
    with pytest.raises(ValueError, match=r"reduced.codes must be a C-contiguous uint8 array of shape \(40, 8\)"):
        ExactSearcher(x[:40], "pearson", precision="int8", reduced=red, bias=bias[:40])
    with pytest.raises(ValueError, match=r"reduced.scale must be a C-contiguous float32"):
        ExactSearcher(x, "pearson", precision="int8", reduced=ReducedRows("int8", red.codes, red.scale[::2], red.err),
                      bias=bias)
    with pytest.raises(TypeError, match="ReducedRows"):
        ExactSearcher(x, "pearson", precision="int8", reduced=red.arrays(), bias=bias)
    with pytest.raises(ValueError, match="reduced precision must be one of"):
        reduce_rows("pearson", x, "float32")
    with pytest.raises(ValueError, match="no inner-product form"):
        reduce_rows("chisqr", x, "int8")
    with pytest.raises(ValueError, match=f"D <= {INT8_MAX_DIM}"):
        reduce_prepared("cosine", np.zeros((1, INT8_MAX_DIM + 1), np.float32), "int8")
    with pytest.raises(TypeError, match="stats must be a dict"):
        ExactSearcher(x, "pearson").search(x[0], stats=[])


def test_auto_precision_rule(monkeypatch):
    x = np.random.default_rng(0).random((300, 16), dtype=np.float32)
    assert ExactSearcher(x, "pearson", precision="auto").precision == "float32"  # small: float32
    monkeypatch.setattr(ExactSearcher, "AUTO_INT8_MIN_ELEMENTS", 300 * 16)
    s = ExactSearcher(x, "pearson", precision="auto")
    assert s.precision == "int8" and s.reduced is not None
    assert ExactSearcher(x, "chisqr", precision="auto").precision == "float32"  # no inner-product form
    assert ExactSearcher(x, "l1", precision="auto").precision == "float32"
    np.testing.assert_array_equal(s.search(x[:5], 7), topk(x, x[:5], 7))


def test_excluded_bound_holds_for_every_row():
    """The bound of the rows a scan leaves out is >= their float32 surrogate
    (checked on every row, including those the scan kept)."""
    for metric in IP:
        x, q = adversarial(metric, d=40, seed=9)
        prep, bias = M.prepare_rows(metric, x)
        qp = M.prepare_queries(metric, q)
        s_true = qp.astype(np.float64) @ prep.T.astype(np.float64) + (0 if bias is None else bias)
        for p in REDUCED:
            red, _ = reduce_rows(metric, x, p)
            scan = ReducedScan(M.METRICS[metric], red, bias, 40)
            rq = scan.queries(qp)
            ids, vals = scan.topk(rq, len(x), None, 1, 4096)  # every row, with its kernel value
            bound = np.stack([scan.excluded_bound(rq, vals[:, j]) for j in range(len(x))], axis=1)
            assert (bound >= np.take_along_axis(s_true, ids, 1)).all(), (metric, p)
