"""fastimg.metrics against cv2.compareHist, scipy and hand-computed values."""
from __future__ import annotations

import cv2
import numpy as np
import pytest
from scipy.spatial import distance
from scipy.stats import pearsonr

from fastimg import metrics as M

CV2_METHODS = {
    "pearson": cv2.HISTCMP_CORREL,
    "bhattacharyya": cv2.HISTCMP_BHATTACHARYYA,
    "chisqr": cv2.HISTCMP_CHISQR,
    "chisqr_alt": cv2.HISTCMP_CHISQR_ALT,
    "intersect": cv2.HISTCMP_INTERSECT,
    "kl_div": cv2.HISTCMP_KL_DIV,
}


def histograms(rng, n, d):
    """Random non-negative rows with zero bins, a zero row, a constant row, a duplicate."""
    x = rng.random((n, d), dtype=np.float32)
    x[rng.random(x.shape) < 0.25] = 0
    x[0] = 0
    x[1] = 0.25
    x[2] = x[3]
    x[4] /= max(float(x[4].sum()), 1e-6)  # L1-normalised like a descriptor
    return x


def test_names_and_cv2_methods():
    assert M.metric_names() == ["pearson", "bhattacharyya", "chisqr", "chisqr_alt", "intersect",
                                "kl_div", "cosine", "l2", "l1"]
    for name, m in M.METRICS.items():
        assert m.name == name
        assert m.cv2_method == CV2_METHODS.get(name)  # cv2's own constants


@pytest.mark.parametrize("name", M.metric_names())
def test_direction_is_the_oracles(name):
    """higher_is_better: a histogram compared with itself gets the oracle's best
    score (L1-normalised: KL divergence is >= 0 only between distributions)."""
    rng = np.random.default_rng(11)
    x = rng.random((30, 16), dtype=np.float32) + np.float32(0.05)
    x /= x.sum(axis=1, keepdims=True)
    for q in x[:5]:
        self_score = _oracle(name, q, q)
        others = np.array([_oracle(name, q, r) for r in x[5:]])
        assert (self_score > others.max()) if M.METRICS[name].higher_is_better else (self_score < others.min())


@pytest.mark.parametrize("name", M.metric_names())
def test_zero_query_ties_is_the_oracles(name):
    """Metric.zero_query_ties: an all-zero query gets one oracle value for every row."""
    rng = np.random.default_rng(12)
    rows = rng.random((25, 9), dtype=np.float32)
    rows[3] = 0
    rows[4] = 0.5
    values = np.array([_oracle(name, np.zeros(9, np.float32), r) for r in rows])
    assert (np.ptp(values) == 0) == M.METRICS[name].zero_query_ties


def test_bad_metric_record_is_refused():
    with pytest.raises(ValueError, match="inconsistent Metric record"):
        M.Metric("odd", True, None, True, False, kernel="KIND_L1", ip_space="raw")


def test_get_metric():
    assert M.get_metric("Pearson") is M.METRICS["pearson"]
    assert M.get_metric(M.METRICS["l1"]) is M.METRICS["l1"]
    with pytest.raises(ValueError, match=r"unknown metric 'euclid'; expected one of \['pearson'") as info:
        M.get_metric("euclid")
    from fastimg.errors import ArgumentError

    assert isinstance(info.value, ArgumentError)  # Index.search(metric="euclid") raises it as it is
    with pytest.raises(TypeError, match="metric must be a str"):
        M.get_metric(3)


@pytest.mark.parametrize("name", sorted(CV2_METHODS))
@pytest.mark.parametrize("d", [1, 2, 3, 5, 8, 13, 72, 256])
def test_exact_scores_match_compareHist(name, d):
    rng = np.random.default_rng(d)
    x = histograms(rng, 40, d) if d >= 2 else rng.random((40, 1), dtype=np.float32)
    method = CV2_METHODS[name]
    for qi in (5, 0, 1, 3, 4):
        q = x[qi]
        expected = np.array([cv2.compareHist(q, row, method) for row in x])
        got = M.exact_scores(name, q, x)
        assert got.dtype == np.float64 and got.shape == (40,)
        np.testing.assert_allclose(got, expected, rtol=1e-10, atol=1e-12)


def test_query_is_the_first_histogram():
    """chisqr and kl_div are asymmetric: the query plays cv2's H1."""
    q = np.array([0.5, 0.25, 0.25, 0.0], dtype=np.float32)
    x = np.array([[0.1, 0.2, 0.3, 0.4]], dtype=np.float32)
    # hand computed: sum over bins with q > 0 of (q - x)^2 / q
    assert M.exact_scores("chisqr", q, x)[0] == pytest.approx(0.16 / 0.5 + 0.0025 / 0.25 + 0.0025 / 0.25, rel=1e-6)
    assert M.exact_scores("chisqr", x[0], q[None])[0] != pytest.approx(M.exact_scores("chisqr", q, x)[0])
    kl = 0.5 * np.log(0.5 / 0.1) + 0.25 * np.log(0.25 / 0.2) + 0.25 * np.log(0.25 / 0.3)
    assert M.exact_scores("kl_div", q, x)[0] == pytest.approx(kl, rel=1e-6)


def test_pearson_against_scipy():
    rng = np.random.default_rng(7)
    x = rng.normal(size=(20, 30)).astype(np.float32)
    q = rng.normal(size=30).astype(np.float32)
    expected = [pearsonr(q.astype(np.float64), row.astype(np.float64))[0] for row in x]
    np.testing.assert_allclose(M.exact_scores("pearson", q, x), expected, rtol=1e-10)


def test_non_cv2_metrics_against_scipy():
    rng = np.random.default_rng(8)
    x = rng.normal(size=(25, 17)).astype(np.float32)
    x[0] = 0
    q = rng.normal(size=17).astype(np.float32)
    x64, q64 = x.astype(np.float64), q.astype(np.float64)
    np.testing.assert_allclose(M.exact_scores("l2", q, x), [distance.euclidean(q64, r) for r in x64], rtol=1e-12)
    np.testing.assert_allclose(M.exact_scores("l1", q, x), [distance.cityblock(q64, r) for r in x64], rtol=1e-12)
    cos = M.exact_scores("cosine", q, x)
    assert cos[0] == 0.0  # zero row: defined as 0
    np.testing.assert_allclose(cos[1:], [1 - distance.cosine(q64, r) for r in x64[1:]], rtol=1e-10)


def test_special_cases_hand_computed():
    zero = np.zeros(4, dtype=np.float32)
    h = np.array([[1, 2, 3, 4]], dtype=np.float32)
    const = np.full((1, 4), 3.0, dtype=np.float32)
    assert M.exact_scores("pearson", h[0], const)[0] == 1.0      # zero variance -> 1
    assert M.exact_scores("bhattacharyya", h[0], zero[None])[0] == 1.0
    assert M.exact_scores("chisqr", zero, h)[0] == 0.0           # every query bin skipped
    assert M.exact_scores("kl_div", h[0], zero[None])[0] == pytest.approx(
        sum(p * np.log(p / 1e-10) for p in (1, 2, 3, 4)))
    assert M.exact_scores("intersect", h[0], const)[0] == 1 + 2 + 3 + 3


def test_exact_scores_shape_checked():
    with pytest.raises(ValueError, match=r"rows must have shape \(M, 3\)"):
        M.exact_scores("l2", np.zeros(3), np.zeros((2, 4)))


def _oracle(name, q, row):
    """Independent reference value: cv2.compareHist, or scipy for the other metrics."""
    if name in CV2_METHODS:
        return cv2.compareHist(q, row, CV2_METHODS[name])
    q64, r64 = q.astype(np.float64), row.astype(np.float64)
    if name == "cosine":
        return 0.0 if not (q64.any() and r64.any()) else 1 - distance.cosine(q64, r64)
    return distance.euclidean(q64, r64) if name == "l2" else distance.cityblock(q64, r64)


@pytest.mark.parametrize("name", M.metric_names())
@pytest.mark.parametrize("d", [1, 3, 8, 72])
@pytest.mark.parametrize("nq,nc", [(1, 1), (1, 9), (7, 1), (13, 6)])
def test_exact_scores_many_matches_oracles(name, d, nq, nc):
    """exact_scores_many == cv2.compareHist / scipy per (query, row); zero and
    constant rows and queries included."""
    rng = np.random.default_rng(100 * d + 10 * nq + nc)
    pool = histograms(rng, 40, d) if d >= 2 else rng.random((40, 1), dtype=np.float32)
    if not M.METRICS[name].nonneg:
        pool = pool - np.float32(0.3) * (np.arange(40) % 2)[:, None].astype(np.float32)  # signed rows too
    qi = rng.integers(0, 40, nq)
    qi[0] = 0                      # a zero query (histogram pool row 0)
    if nq > 1:
        qi[1] = 1                  # a constant query
    queries = pool[qi]
    rows = pool[rng.integers(0, 40, (nq, nc))]
    rows[0, 0] = pool[0]           # a zero row
    if nc > 1:
        rows[-1, 1] = pool[1]      # a constant row
    got = M.exact_scores_many(name, queries, rows)
    assert got.dtype == np.float64 and got.shape == (nq, nc)
    expected = np.array([[_oracle(name, queries[i], rows[i, j]) for j in range(nc)] for i in range(nq)])
    np.testing.assert_allclose(got, expected, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("name", M.metric_names())
def test_exact_scores_many_blocks(name, monkeypatch):
    """Splitting into blocks (over queries, or over one query's rows) changes nothing."""
    rng = np.random.default_rng(3)
    pool = histograms(rng, 64, 72)
    queries, rows = pool[rng.integers(0, 64, 11)], pool[rng.integers(0, 64, (11, 20, 1))][:, :, 0]
    whole = M.exact_scores_many(name, queries, rows)
    for elems in (72 * 20 * 3, 72 * 7, 1):  # 3 queries per block; 7 rows per block; one row per block
        monkeypatch.setattr(M, "_SCORE_ELEMS", elems)
        np.testing.assert_allclose(M.exact_scores_many(name, queries, rows), whole, rtol=1e-12, atol=1e-15)


def test_exact_scores_many_shapes():
    assert M.exact_scores_many("l2", np.zeros((0, 3)), np.zeros((0, 5, 3))).shape == (0, 5)
    assert M.exact_scores_many("l2", np.zeros((2, 3)), np.zeros((2, 0, 3))).shape == (2, 0)
    with pytest.raises(ValueError, match=r"queries must have shape \(Q, D\); got \(3,\)"):
        M.exact_scores_many("l2", np.zeros(3), np.zeros((1, 2, 3)))
    with pytest.raises(ValueError, match=r"rows must have shape \(Q, C, D\) = \(2, C, 3\) for queries of "
                                         r"shape \(2, 3\); got \(2, 4\)"):
        M.exact_scores_many("l2", np.zeros((2, 3)), np.zeros((2, 4)))
    with pytest.raises(ValueError, match=r"got \(3, 4, 3\)"):
        M.exact_scores_many("l2", np.zeros((2, 3)), np.zeros((3, 4, 3)))


@pytest.mark.parametrize("name", ["pearson", "bhattacharyya", "cosine", "l2"])
def test_prepared_layout(name):
    rng = np.random.default_rng(1)
    x = histograms(rng, 70, 9)
    prepared, bias = M.prepare_rows(name, x)
    assert prepared.dtype == np.float32 and prepared.shape == x.shape
    assert prepared.flags.c_contiguous and prepared.ctypes.data % 64 == 0
    assert (bias is not None) == M.METRICS[name].bias
    if bias is not None:
        assert bias.dtype == np.float32 and bias.shape == (70,)


def test_surrogates_reproduce_the_metric():
    """Hand-derived relations between the inner product and the oracle metric."""
    rng = np.random.default_rng(2)
    x = histograms(rng, 200, 72)
    for q in (x[5], x[4], x[10]):
        # pearson: the surrogate *is* the correlation (constant rows via bias = 1)
        p, b = M.prepare_rows("pearson", x)
        sur = p @ M.prepare_query("pearson", q) + b
        ref = [cv2.compareHist(q, r, cv2.HISTCMP_CORREL) for r in x]
        np.testing.assert_allclose(sur, ref, atol=2e-6)
        # bhattacharyya: distance = sqrt(1 - surrogate)
        p, b = M.prepare_rows("bhattacharyya", x)
        assert b is None
        sur = p @ M.prepare_query("bhattacharyya", q)
        ref = [cv2.compareHist(q, r, cv2.HISTCMP_BHATTACHARYYA) for r in x]
        np.testing.assert_allclose(np.sqrt(np.maximum(1 - sur, 0)), ref, atol=2e-3)
        np.testing.assert_allclose(1 - sur, np.square(ref), atol=5e-6)
        # l2: |q - x|^2 = |q|^2 - surrogate
        p, b = M.prepare_rows("l2", x)
        sur = p @ M.prepare_query("l2", q) + b
        ref = [distance.sqeuclidean(q.astype(np.float64), r.astype(np.float64)) for r in x]
        np.testing.assert_allclose(float(q.astype(np.float64) @ q) - sur, ref, atol=1e-4)
        # cosine
        p, _ = M.prepare_rows("cosine", x)
        sur = p @ M.prepare_query("cosine", q)
        ref = [0.0 if not r.any() else 1 - distance.cosine(q.astype(np.float64), r) for r in x]
        np.testing.assert_allclose(sur, ref, atol=2e-6)


def test_prepare_rows_rejects_direct_metrics():
    with pytest.raises(ValueError, match="'chisqr' has no inner-product form"):
        M.prepare_rows("chisqr", np.ones((2, 3), dtype=np.float32))
    with pytest.raises(ValueError, match=r"data must be 2-D \(N, D\)"):
        M.prepare_rows("pearson", np.ones(3, dtype=np.float32))


def test_aligned_empty():
    for shape in [(3, 5), (1, 1), (100, 72)]:
        a = M.aligned_empty(shape)
        assert a.shape == shape and a.dtype == np.float32 and a.ctypes.data % 64 == 0 and a.flags.c_contiguous


def _expected_prepared_query(metric, q):
    """The documented preparation of one query, written out in float64."""
    q = q.astype(np.float64)
    if metric == "l2":
        return 2 * q
    if metric == "pearson":
        c = q - q.mean()
        return np.zeros_like(q) if q.max() == q.min() else c / np.linalg.norm(c)
    if metric == "cosine":
        return np.zeros_like(q) if not q.any() else q / np.linalg.norm(q)
    return np.zeros_like(q) if not q.any() else np.sqrt(q / q.sum())  # bhattacharyya


@pytest.mark.parametrize("metric", ["pearson", "bhattacharyya", "cosine", "l2"])
def test_prepare_queries_against_the_formulas(metric):
    rng = np.random.default_rng(5)
    q = rng.random((9, 13)).astype(np.float32)
    q[3] = 0.0          # zero query
    q[4] = 0.25         # constant query
    q[5, ::2] = 0.0     # sparse query
    batch = M.prepare_queries(metric, q)
    assert batch.dtype == np.float32 and batch.flags.c_contiguous and batch.shape == q.shape
    expected = np.stack([_expected_prepared_query(metric, row) for row in q])
    np.testing.assert_allclose(batch, expected, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(M.prepare_query(metric, q[5]), expected[5], rtol=1e-6, atol=1e-7)
    with pytest.raises(ValueError, match=r"queries must be 2-D \(Q, D\); got shape \(13,\)"):
        M.prepare_queries(metric, q[0])


@pytest.mark.parametrize("metric", ["pearson", "bhattacharyya", "cosine", "l2"])
def test_one_query_prepared_alone_is_bit_identical_to_its_row_in_a_batch(metric):
    """A search per call prepares one row (a shorter path for the unit space): the bits
    must be those of the batch preparation and of the rows' (the graph compares them)."""
    rng = np.random.default_rng(6)
    q = (rng.standard_normal((12, 200)) * np.exp(rng.uniform(-20, 20, (12, 1)))).astype(np.float32)
    if metric == "bhattacharyya":
        q = np.abs(q)
    q[3] = 0.0
    q[4] = 0.25
    q[5, :199] = 0.0  # one non-zero value
    batch = M.prepare_queries(metric, q)
    rows, _ = M.prepare_rows(metric, q)
    for i in range(len(q)):
        one = M.prepare_queries(metric, q[i:i + 1])[0]
        np.testing.assert_array_equal(one.view(np.int32), batch[i].view(np.int32))
        if metric != "l2":  # l2 queries are doubled, its rows are raw
            np.testing.assert_array_equal(one.view(np.int32), np.asarray(rows[i], np.float32).view(np.int32))


# ---------------------------------------------------------------------------
# the shared vector spaces
# ---------------------------------------------------------------------------

def test_embed_spaces_against_independent_oracles():
    rng = np.random.default_rng(6)
    x = rng.random((40, 11)).astype(np.float32)
    x[x < 0.3] = 0
    x[0] = 0            # zero row
    x[1] = 0.4          # constant row
    s = M.embed("sqrt_l1", x)
    bc = 1 - np.array([[cv2.compareHist(a, b, cv2.HISTCMP_BHATTACHARYYA) ** 2 for b in x[2:]] for a in x[2:]])
    np.testing.assert_allclose(s[2:] @ s[2:].T, bc, atol=1e-6)  # dot product = Bhattacharyya coefficient
    c = M.embed("centred_unit", x)
    np.testing.assert_allclose(c[2:] @ c[2:].T, np.corrcoef(x[2:].astype(np.float64)), atol=1e-12)
    u = M.embed("unit", x)
    cos = 1 - distance.cdist(x[1:].astype(np.float64), x[1:].astype(np.float64), "cosine")
    np.testing.assert_allclose(u[1:] @ u[1:].T, cos, atol=1e-12)
    x64 = x[2:].astype(np.float64)
    np.testing.assert_allclose(M.embed("l1", x)[2:], x64 / x64.sum(axis=1, keepdims=True), rtol=1e-15)
    np.testing.assert_array_equal(M.embed("raw", x), x.astype(np.float64))
    # rows without a direction map to zeros (a constant row has no centred direction)
    for space in ("unit", "centred_unit", "l1", "sqrt_l1"):
        assert not M.embed(space, x)[0].any()
    assert not c[1].any() and u[1].any()


def test_embed_shapes_copies_and_errors():
    v = np.array([3.0, 4.0])
    out = M.embed("unit", v)
    np.testing.assert_allclose(out, [0.6, 0.8])
    assert out.shape == (2,) and v.tolist() == [3.0, 4.0]
    raw = M.embed("raw", v)
    raw[0] = 9
    assert v[0] == 3.0  # a new array, never the input
    with pytest.raises(ValueError, match=r"unknown space 'l3'; expected one of \['raw'"):
        M.embed("l3", v)
