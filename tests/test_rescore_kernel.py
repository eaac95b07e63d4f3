"""The compiled re-scoring (``_core.rescore_rows``, fi_rescore.h) against NumPy.

The claim: for cosine, pearson, l2 and bhattacharyya the compiled values are
bit-identical to ``fastimg.metrics.exact_scores_many`` (NumPy's float64 formulas
with its pairwise summation), for every length the pairwise sum treats
differently (below 8, one block of at most 128, recursive halves above), so
``fastimg.search.rescore`` orders exact ties exactly as the NumPy brute force
does.  Oracles: NumPy (bit for bit), cv2.compareHist / math.fsum (tolerance),
and the NumPy path of ``rescore`` itself (ids and scores equal).
"""
from __future__ import annotations

import math

import numpy as np
import pytest

from fastimg import metrics as M
from fastimg import search as S

core = pytest.importorskip("fastimg._core", reason="compiled core not built (run `make install`)")

CODES = {"cosine": core.RESCORE_COSINE, "pearson": core.RESCORE_PEARSON, "l2": core.RESCORE_L2,
         "bhattacharyya": core.RESCORE_BHATTACHARYYA}
# every branch of NumPy's pairwise sum: n < 8, 8 <= n <= 128 (with and without a
# rest), n > 128 split once and several times, odd halves
DIMS = [1, 2, 5, 7, 8, 9, 15, 16, 17, 63, 72, 127, 128, 129, 136, 200, 255, 256, 257, 300, 513, 1000, 2049]


def rows_for(metric: str, n: int, d: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if M.METRICS[metric].nonneg:
        x = rng.random((n, d)) ** 3  # skewed: many small values
        x[rng.random((n, d)) < 0.3] = 0
    else:
        x = rng.standard_normal((n, d)) * np.exp(rng.uniform(-8, 8, (n, 1)))
    x[0] = 0  # zero row
    x[1] = x[2] * 3.0  # scaled copy
    x[3] = 0.25  # constant row
    return x.astype(np.float32)


@pytest.mark.parametrize("metric", sorted(CODES))
@pytest.mark.parametrize("d", DIMS)
def test_bit_identical_to_numpy_scores(metric, d):
    x = rows_for(metric, 64, d, seed=d)
    q = np.concatenate([x[:4], rows_for(metric, 4, d, seed=d + 1000)])  # incl. the zero and constant rows
    rng = np.random.default_rng(d)
    cand = rng.integers(0, x.shape[0], (q.shape[0], 40)).astype(np.int64)
    got = core.rescore_rows(x, q, cand, CODES[metric])
    want = M.exact_scores_many(metric, q, x[cand])
    assert got.dtype == np.float64 and got.shape == want.shape
    np.testing.assert_array_equal(got.view(np.int64), want.view(np.int64))  # every bit, NaN and -0.0 too


@pytest.mark.parametrize("threads", [1, 2, 4])
def test_threads_and_batches_do_not_change_values(threads):
    x = rows_for("cosine", 500, 96, seed=1)
    q = rows_for("cosine", 300, 96, seed=2)
    cand = np.random.default_rng(3).integers(0, 500, (300, 50)).astype(np.int64)
    got = core.rescore_rows(x, q, cand, core.RESCORE_COSINE, threads)
    np.testing.assert_array_equal(got, M.exact_scores_many("cosine", q, x[cand]))


def test_values_against_independent_oracles():
    """cv2.compareHist for the histogram metrics, math.fsum-based formulas for cosine / l2."""
    cv2 = pytest.importorskip("cv2")
    rng = np.random.default_rng(5)
    d = 72
    xh = rng.random((30, d)).astype(np.float32)
    qh = rng.random((1, d)).astype(np.float32)
    cand = np.arange(30, dtype=np.int64)[None]
    for metric, method in (("pearson", cv2.HISTCMP_CORREL), ("bhattacharyya", cv2.HISTCMP_BHATTACHARYYA)):
        got = core.rescore_rows(xh, qh, cand, CODES[metric])[0]
        want = [cv2.compareHist(qh[0], xh[i], method) for i in range(30)]
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)
    x = rng.standard_normal((30, 200)).astype(np.float32)
    q = rng.standard_normal((1, 200)).astype(np.float32)
    got_cos = core.rescore_rows(x, q, cand, core.RESCORE_COSINE)[0]
    got_l2 = core.rescore_rows(x, q, cand, core.RESCORE_L2)[0]
    for i in range(30):
        a, b = q[0].astype(float), x[i].astype(float)
        cos = math.fsum(a * b) / math.sqrt(math.fsum(a * a) * math.fsum(b * b))
        assert got_cos[i] == pytest.approx(cos, rel=1e-12, abs=1e-12)
        assert got_l2[i] == pytest.approx(math.sqrt(math.fsum((a - b) ** 2)), rel=1e-12)


def test_bad_arguments_raise_instead_of_reading_out_of_bounds():
    x = np.zeros((5, 4), np.float32)
    q = np.zeros((1, 4), np.float32)
    with pytest.raises(IndexError):
        core.rescore_rows(x, q, np.array([[0, 5]], np.int64), core.RESCORE_COSINE)
    with pytest.raises(IndexError):
        core.rescore_rows(x, q, np.array([[-1]], np.int64), core.RESCORE_COSINE)
    with pytest.raises(ValueError):
        core.rescore_rows(x, np.zeros((1, 3), np.float32), np.array([[0]], np.int64), core.RESCORE_COSINE)
    with pytest.raises(ValueError):
        core.rescore_rows(x, q, np.array([[0]], np.int64), 99)


@pytest.mark.parametrize("metric", sorted(CODES))
def test_rescore_compiled_path_equals_numpy_path(metric, monkeypatch):
    """search.rescore with the kernel == without it (ids and scores), exact ties included:
    rows that are exact copies and scaled copies of the query tie, broken by the lower id."""
    rng = np.random.default_rng(7)
    x = rows_for(metric, 400, 72, seed=11)
    x[100:110] = x[5]  # exact copies
    x[110:120] = x[5] * np.float32(2.0)  # scaled copies (cosine / pearson / bhattacharyya ties)
    q = np.ascontiguousarray(np.concatenate([x[5:6], x[:3], rows_for(metric, 6, 72, seed=12)[4:]]))
    cand = np.stack([rng.permutation(400)[:60] for _ in range(len(q))]).astype(np.int64)
    cand[0, :20] = np.arange(100, 120)[rng.permutation(20)]
    got = S.rescore(metric, q, x, cand, 25)
    monkeypatch.setattr(S, "_RESCORE_CODES", {})
    want = S.rescore(metric, q, x, cand, 25)
    np.testing.assert_array_equal(got[0], want[0])
    np.testing.assert_array_equal(got[1].view(np.int32), want[1].view(np.int32))


@pytest.mark.parametrize("metric", sorted(CODES))
@pytest.mark.parametrize("threads", [1, 3])
def test_topk_orders_as_a_stable_argsort_by_id(metric, threads):
    """rescore_topk == lexsort by (score in the metric's direction, id) of rescore_rows' values:
    many exact ties (duplicated rows), candidates in random order, every k."""
    rng = np.random.default_rng(8)
    x = rows_for(metric, 300, 40, seed=13)
    x[200:260] = x[rng.integers(0, 6, 60)]  # 60 rows copying 6 others: exact ties
    q = np.ascontiguousarray(np.concatenate([x[:6], rows_for(metric, 70, 40, seed=14)[4:]]))
    cand = np.stack([rng.permutation(300)[:90] for _ in range(len(q))]).astype(np.int64)
    hib = M.METRICS[metric].higher_is_better
    vals = core.rescore_rows(x, q, cand, CODES[metric])
    for k in (1, 7, 90):
        ids, scores = core.rescore_topk(x, q, cand, k, CODES[metric], hib, threads)
        for i in range(len(q)):
            order = np.lexsort((cand[i], -vals[i] if hib else vals[i]))[:k]
            np.testing.assert_array_equal(ids[i], cand[i][order])
            np.testing.assert_array_equal(scores[i], vals[i][order].astype(np.float32))
    with pytest.raises(ValueError):
        core.rescore_topk(x, q, cand, 91, CODES[metric], hib)
    with pytest.raises(IndexError):
        core.rescore_topk(x, q[:1], np.array([[0, 300]], np.int64), 1, CODES[metric], hib)
