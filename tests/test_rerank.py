"""Tests of fastimg.rerank.

Oracles: hand-computed expansions; brute-force NumPy searches written here (not
fastimg's search); a line-by-line transcription of Zhong et al.'s published
re-ranking code (CVPR 2017, github.com/zhunzhong07/person-re-ranking) for the
k-reciprocal distance.
"""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fastimg import rerank
from fastimg.errors import ArgumentError
from fastimg.metrics import exact_scores, get_metric


# ---------------------------------------------------------------------------
# oracles
# ---------------------------------------------------------------------------

def zhong_re_ranking(q_g_dist, q_q_dist, g_g_dist, k1=20, k2=6, lambda_value=0.3):
    """The authors' re_ranking() (re_ranking_ranklist.py), transcribed verbatim."""
    original_dist = np.concatenate(
        [np.concatenate([q_q_dist, q_g_dist], axis=1),
         np.concatenate([q_g_dist.T, g_g_dist], axis=1)],
        axis=0)
    return zhong_from_matrix(original_dist, q_g_dist.shape[0], k1, k2, lambda_value)


def zhong_from_matrix(original_dist, query_num, k1=20, k2=6, lambda_value=0.3):
    """The rest of the authors' re_ranking(), verbatim, on the assembled (M, M)
    distance matrix (probes first): what an asymmetric matrix needs, the authors'
    assembly mirroring the probe-gallery block."""
    all_num = original_dist.shape[0]
    gallery_num = all_num
    original_dist = np.power(original_dist, 2).astype(np.float32)
    original_dist = np.transpose(1. * original_dist / np.max(original_dist, axis=0))
    V = np.zeros_like(original_dist).astype(np.float32)
    initial_rank = np.argsort(original_dist).astype(np.int32)
    for i in range(all_num):
        forward_k_neigh_index = initial_rank[i, :k1 + 1]
        backward_k_neigh_index = initial_rank[forward_k_neigh_index, :k1 + 1]
        fi = np.where(backward_k_neigh_index == i)[0]
        k_reciprocal_index = forward_k_neigh_index[fi]
        k_reciprocal_expansion_index = k_reciprocal_index
        for j in range(len(k_reciprocal_index)):
            candidate = k_reciprocal_index[j]
            candidate_forward_k_neigh_index = initial_rank[candidate, :int(np.around(k1 / 2.)) + 1]
            candidate_backward_k_neigh_index = initial_rank[candidate_forward_k_neigh_index,
                                                            :int(np.around(k1 / 2.)) + 1]
            fi_candidate = np.where(candidate_backward_k_neigh_index == candidate)[0]
            candidate_k_reciprocal_index = candidate_forward_k_neigh_index[fi_candidate]
            if len(np.intersect1d(candidate_k_reciprocal_index, k_reciprocal_index)) > \
                    2. / 3 * len(candidate_k_reciprocal_index):
                k_reciprocal_expansion_index = np.append(k_reciprocal_expansion_index,
                                                         candidate_k_reciprocal_index)
        k_reciprocal_expansion_index = np.unique(k_reciprocal_expansion_index)
        weight = np.exp(-original_dist[i, k_reciprocal_expansion_index])
        V[i, k_reciprocal_expansion_index] = 1. * weight / np.sum(weight)
    original_dist = original_dist[:query_num, ]
    if k2 != 1:
        V_qe = np.zeros_like(V, dtype=np.float32)
        for i in range(all_num):
            V_qe[i, :] = np.mean(V[initial_rank[i, :k2], :], axis=0)
        V = V_qe
    invIndex = []
    for i in range(gallery_num):
        invIndex.append(np.where(V[:, i] != 0)[0])
    jaccard_dist = np.zeros_like(original_dist, dtype=np.float32)
    for i in range(query_num):
        temp_min = np.zeros(shape=[1, gallery_num], dtype=np.float32)
        indNonZero = np.where(V[i, :] != 0)[0]
        indImages = [invIndex[ind] for ind in indNonZero]
        for j in range(len(indNonZero)):
            temp_min[0, indImages[j]] = temp_min[0, indImages[j]] + np.minimum(
                V[i, indNonZero[j]], V[indImages[j], indNonZero[j]])
        jaccard_dist[i] = 1 - temp_min / (2. - temp_min)
    final_dist = jaccard_dist * (1 - lambda_value) + original_dist * lambda_value
    return final_dist[:query_num, query_num:]


def brute_search(data, metric, exclude=()):
    """Search callback over `data` by full sort of exact_scores (ties by lower id)."""
    m = get_metric(metric)
    data = np.asarray(data, dtype=np.float32)

    def search(vectors, k):
        ids, scs = [], []
        for v in np.atleast_2d(vectors):
            s = exact_scores(m, v, data)
            cand = [i for i in range(len(data)) if i not in exclude]
            cand.sort(key=lambda i: ((-s[i] if m.higher_is_better else s[i]), i))
            cand = cand[:k]
            ids.append(cand)
            scs.append(s[cand])
        return np.array(ids, dtype=np.int64), np.array(scs, dtype=np.float32)
    return search


def oracle_space(metric, v):
    """Where a metric's averages are taken, written out: centred unit (pearson),
    unit (cosine), L1-normalised (histogram metrics), as is (l2, l1)."""
    v = np.asarray(v, np.float64)
    if metric == "pearson":
        v = v - v.mean()
    if metric in ("pearson", "cosine"):
        return v / np.linalg.norm(v)
    if get_metric(metric).nonneg:
        return v / v.sum()
    return v


def oracle_sim(metric, a, b):
    """Weight similarity in [0, 1]: Bhattacharyya coefficient of the L1-normalised
    histograms, else the cosine of the averaging space's vectors, clipped at 0."""
    if get_metric(metric).nonneg:
        return np.sqrt(oracle_space(metric, a) * oracle_space(metric, b)).sum()
    a, b = oracle_space(metric, a), oracle_space(metric, b)
    return max(0.0, a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def oracle_expand(metric, base, neighbours, weights):
    """(space(base) + sum w_i space(n_i)) / (1 + sum w), back to the base's mass for histograms."""
    e = (oracle_space(metric, base) + sum(w * oracle_space(metric, n) for w, n in zip(weights, neighbours)))
    e = e / (1 + sum(weights))
    return np.maximum(e, 0) * np.sum(base, dtype=np.float64) if get_metric(metric).nonneg else e


def clusters(seed=0, n_per=12, d=16, n_classes=4, noise=0.6, nonneg=True):
    rng = np.random.default_rng(seed)
    centres = rng.random((n_classes, d)) * 2
    x = np.repeat(centres, n_per, axis=0) + noise * rng.random((n_classes * n_per, d))
    labels = np.repeat(np.arange(n_classes), n_per)
    if not nonneg:
        x = x - 1.0
    return x.astype(np.float32), labels


# ---------------------------------------------------------------------------
# parse_spec
# ---------------------------------------------------------------------------

def test_parse_spec_defaults_and_aliases():
    assert rerank.parse_spec("qe").name == "qe"
    assert rerank.parse_spec("AQE").name == "qe"
    assert rerank.parse_spec("krr").name == "k-reciprocal"
    sp = rerank.parse_spec("k-reciprocal:k1=25, lambda=0.4")
    assert sp.params == {"k1": 25, "k2": rerank.PARAMS["k-reciprocal"]["k2"][1], "lambda": 0.4,
                         "depth": rerank.PARAMS["k-reciprocal"]["depth"][1]}
    assert isinstance(sp.params["k1"], int) and isinstance(sp.params["lambda"], float)
    assert str(sp) == "k-reciprocal:k1=25,lambda=0.4"
    assert rerank.parse_spec(sp) is sp
    assert set(rerank.rerank_names()) == {"qe", "alpha-qe", "dba", "k-reciprocal", "auto"}


@pytest.mark.parametrize("spec, match", [
    ("foo", r"unknown re-ranking 'foo'.*\['qe', 'alpha-qe', 'dba', 'k-reciprocal', 'auto'\]"),
    ("qe:m=3", r"unknown parameter 'm' for re-ranking 'qe'; expected one of \['n', 'gap', 'ref'\]"),
    ("qe:n", "malformed re-ranking parameter 'n'"),
    ("qe:n=", "malformed"),
    ("qe:n=2.5", "parameter 'n' must be an integer; got '2.5'"),
    ("qe:n=0", "parameter 'n' must be >= 1; got 0"),
    ("alpha-qe:alpha=x", "parameter 'alpha' must be a number"),
    ("alpha-qe:alpha=nan", "must be finite"),
    ("k-reciprocal:lambda=1.5", r"'lambda' must be in \[0.0, 1.0\]; got 1.5"),
    ("dba:depth=-1", "'depth' must be >= 1"),
])
def test_parse_spec_errors(spec, match):
    with pytest.raises(ValueError, match=match):
        rerank.parse_spec(spec)


def test_parse_spec_type_error():
    with pytest.raises(TypeError, match="rerank spec must be a str"):
        rerank.parse_spec(3)


# ---------------------------------------------------------------------------
# natural spaces, weights, expansion (hand computed)
# ---------------------------------------------------------------------------

def test_expand_histogram_stays_a_histogram_with_base_mass():
    # L1-normalised: [.5,.5,0] and [0,.5,.5]; mean [.25,.5,.25]; times sum(base)=4
    out = rerank.expand("bhattacharyya", [2, 2, 0], [[0, 1, 1]], [1.0])
    np.testing.assert_allclose(out, [1, 2, 1], rtol=1e-6)
    out = rerank.expand("intersect", [1, 0, 0], [[0, 0, 5], [0, 3, 0]], [2.0, 1.0])
    np.testing.assert_allclose(out, [0.25, 0.25, 0.5], rtol=1e-6)  # (e0 + 2 e2 + e1) / 4
    assert out.dtype == np.float32


def test_expand_pearson_averages_centred_unit_vectors():
    # centred unit vectors: [-1,0,1]/sqrt2 and [1,0,-1]/sqrt2 ; (e_b + 3 e_n) / 4
    out = rerank.expand("pearson", [1, 2, 3], [[30, 20, 10]], [3.0])
    np.testing.assert_allclose(out, np.array([1, 0, -1]) / (2 * np.sqrt(2)), atol=1e-7)


def test_expand_l2_is_plain_weighted_mean():
    out = rerank.expand("l2", [0, 0], [[2, 0], [0, 4]], [1.0, 0.5])
    np.testing.assert_allclose(out, [2 / 2.5, 2 / 2.5])


def test_expand_rejects_bad_weights():
    with pytest.raises(ValueError, match="one value per neighbour"):
        rerank.expand("l2", [0, 0], [[1, 1]], [1.0, 2.0])
    with pytest.raises(ValueError, match=">= 0"):
        rerank.expand("l2", [0, 0], [[1, 1]], [-1.0])


@pytest.mark.parametrize("metric", ["pearson", "bhattacharyya", "chisqr", "intersect", "cosine", "l2", "l1"])
def test_expansion_space_and_similarity_against_the_formulas(metric):
    x, _ = clusters(seed=8, nonneg=get_metric(metric).nonneg)
    np.testing.assert_allclose(rerank.expansion_space(metric, x), [oracle_space(metric, v) for v in x],
                               rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(rerank.similarity(metric, x[0], x), [oracle_sim(metric, x[0], v) for v in x],
                               rtol=1e-12, atol=1e-15)


def test_vectors_without_direction_map_to_zeros():
    """A constant vector has no pearson direction (it is not a rounding-noise
    direction), a zero vector no unit or histogram one."""
    const = np.full((2, 24), 0.1)
    assert not rerank.expansion_space("pearson", const).any()
    assert not rerank.expansion_space("cosine", np.zeros(5)).any()
    assert not rerank.expansion_space("bhattacharyya", np.zeros(5)).any()
    np.testing.assert_array_equal(rerank.similarity("pearson", const[0], const), [0.0, 0.0])


def test_similarity_hand_computed():
    np.testing.assert_allclose(rerank.similarity("bhattacharyya", [1, 0], [[1, 0], [0, 1], [1, 1]]),
                               [1.0, 0.0, np.sqrt(0.5)])
    rng = np.random.default_rng(3)
    q, rows = rng.random(10), rng.random((5, 10))
    corr = [np.corrcoef(q, r)[0, 1] for r in rows]
    np.testing.assert_allclose(rerank.similarity("pearson", q, rows), np.clip(corr, 0, 1), atol=1e-12)
    np.testing.assert_allclose(rerank.similarity("cosine", [1, 0], [[-1, 0], [1, 1]]), [0.0, np.sqrt(0.5)])


# ---------------------------------------------------------------------------
# k-reciprocal: vectorised version == the authors' code
# ---------------------------------------------------------------------------

@settings(max_examples=25, deadline=None)
@given(st.integers(8, 40), st.integers(1, 3), st.integers(1, 12), st.integers(1, 6),
       st.sampled_from([0.0, 0.3, 1.0]), st.integers(0, 2**32 - 1))
def test_k_reciprocal_distance_matches_authors_code(m, n_probe, k1, k2, lam, seed):
    rng = np.random.default_rng(seed)
    pts = rng.normal(size=(m, 5))
    pts[: m // 2] += 3.0  # two clusters
    eu = np.sqrt(((pts[:, None, :] - pts[None, :, :]) ** 2).sum(-1))
    k2 = min(k2, m)
    expected = zhong_re_ranking(eu[:n_probe, n_probe:], eu[:n_probe, :n_probe], eu[n_probe:, n_probe:],
                                k1=k1, k2=k2, lambda_value=lam)
    got = rerank.k_reciprocal_distance(eu ** 2, k1=k1, k2=k2, lam=lam, n_probe=n_probe)
    np.testing.assert_allclose(got, expected, atol=2e-5)


@settings(max_examples=25, deadline=None)
@given(st.integers(8, 30), st.integers(1, 3), st.integers(1, 10), st.integers(1, 5), st.integers(0, 2**32 - 1))
def test_k_reciprocal_distance_matches_authors_code_on_asymmetric_distances(m, n_probe, k1, k2, seed):
    """chisqr / kl_div / intersect give asymmetric matrices: row i ranks the others
    for node i (the authors' code reads columns, so it gets the transpose)."""
    rng = np.random.default_rng(seed)
    pts = rng.normal(size=(m, 4))
    d = ((pts[:, None, :] - pts[None, :, :]) ** 2).sum(-1) * rng.uniform(0.5, 1.5, (m, m))
    np.fill_diagonal(d, 0.0)
    k2 = min(k2, m)
    expected = zhong_from_matrix(np.sqrt(d.T), n_probe, k1=k1, k2=k2, lambda_value=0.3)
    got = rerank.k_reciprocal_distance(d, k1=k1, k2=k2, lam=0.3, n_probe=n_probe)
    np.testing.assert_allclose(got, expected, atol=2e-5)


def test_k_reciprocal_distance_pure_original_when_lambda_is_one():
    d = np.array([[0, 2, 4.0], [2, 0, 1], [4, 1, 0]])
    np.testing.assert_allclose(rerank.k_reciprocal_distance(d, k1=1, k2=1, lam=1.0), [[0.5, 1.0]])


# ---------------------------------------------------------------------------
# apply(): query expansion
# ---------------------------------------------------------------------------

def test_aqe_on_a_hand_made_example():
    # l2 in 2-D.  Query (0,0); class A along the x axis; distractors close to the query.
    data = np.array([[1.0, 0], [1.3, 0], [1.6, 0], [1.9, 0], [-1.1, 0], [0, -1.2], [0, 1.25]], np.float32)
    rel = np.array([1, 1, 1, 1, 0, 0, 0], bool)
    q = np.zeros(2, np.float32)
    search = brute_search(data, "l2")
    ids0, sc0 = search(q, 7)
    # initial ranking: 0 (1.0), 4 (1.1), 5 (1.2), 6 (1.25), 1 (1.3), 2, 3
    np.testing.assert_array_equal(ids0[0], [0, 4, 5, 6, 1, 2, 3])
    ids, sc = rerank.apply("qe:n=1,gap=0", q, ids0[0], sc0[0], get_vectors=lambda i: data[i], search=search,
                           k=7, metric="l2")
    # expanded query = mean((0,0), (1,0)) = (0.5, 0): distances 0.5, .8, 1.1, 1.4, 1.6, 1.3, 1.346
    np.testing.assert_array_equal(ids, [0, 1, 2, 5, 6, 3, 4])
    np.testing.assert_allclose(sc, [0.5, 0.8, 1.1, np.hypot(.5, 1.2), np.hypot(.5, 1.25), 1.4, 1.6], rtol=1e-6)
    from fastimg.eval import average_precision
    assert average_precision(rel[ids]) > average_precision(rel[ids0[0]])


@pytest.mark.parametrize("metric", ["pearson", "cosine", "bhattacharyya", "chisqr", "intersect", "l2", "l1"])
@pytest.mark.parametrize("spec, alpha", [("qe:n=3,gap=0", 0.0), ("alpha-qe:n=4,alpha=3,gap=0", 3.0)])
def test_query_expansion_equals_formula(metric, spec, alpha):
    x, _ = clusters(seed=1, nonneg=get_metric(metric).nonneg)
    q = x[5]
    search = brute_search(x, metric, exclude={5})
    ids0, sc0 = search(q, 20)
    n = int(spec.split("n=")[1].split(",")[0])
    # oracle: the formula written out here
    top = ids0[0][:n]
    w = [oracle_sim(metric, q, x[i]) ** alpha for i in top]
    qe = oracle_expand(metric, q, x[top], w)
    exp_ids, exp_sc = search(qe.astype(np.float32), 10)
    ids, sc = rerank.apply(spec, q, ids0[0], sc0[0], get_vectors=lambda i: x[i], search=search, k=10,
                           metric=metric)
    np.testing.assert_array_equal(ids, exp_ids[0])
    np.testing.assert_allclose(sc, exp_sc[0], rtol=1e-4, atol=1e-5)
    assert 5 not in ids


def test_qe_fetches_more_candidates_when_given_too_few():
    x, _ = clusters(seed=2)
    search = brute_search(x, "l2")
    ids0, sc0 = search(x[0], 1)
    a = rerank.apply("qe:n=5,gap=0", x[0], ids0[0], sc0[0], get_vectors=lambda i: x[i], search=search, k=5,
                     metric="l2")
    top5 = search(x[0], 5)[0][0]  # what apply must fetch: the top 5, averaged with the query
    exp_ids, exp_sc = search(x[[0, *top5]].astype(np.float64).mean(axis=0).astype(np.float32), 5)
    np.testing.assert_array_equal(a[0], exp_ids[0])
    np.testing.assert_allclose(a[1], exp_sc[0], rtol=1e-5)


# ---------------------------------------------------------------------------
# DBA
# ---------------------------------------------------------------------------

def test_augment_database_hand_computed_1d():
    x = np.array([[0.0], [1.0], [3.0], [10.0]], np.float32)
    out = rerank.augment_database(x, "l2", n=1, alpha=0.0, search=brute_search(x, "l2"))
    # nearest other row: 0->1, 1->0, 3->1, 10->3 ; plain mean with itself
    np.testing.assert_allclose(out[:, 0], [0.5, 0.5, 2.0, 6.5])
    assert out is not x and x[0, 0] == 0.0


@pytest.mark.parametrize("metric", ["bhattacharyya", "cosine"])
def test_augment_database_equals_brute_force(metric):
    x, _ = clusters(seed=4, n_per=6)
    out = rerank.augment_database(x, metric, n=3, alpha=2.0, search=brute_search(x, metric))
    m = get_metric(metric)
    for r in range(len(x)):
        s = exact_scores(m, x[r], x)
        others = sorted((i for i in range(len(x)) if i != r),
                        key=lambda i: ((-s[i] if m.higher_is_better else s[i]), i))[:3]
        w = [oracle_sim(metric, x[r], x[i]) ** 2.0 for i in others]
        np.testing.assert_allclose(out[r], oracle_expand(metric, x[r], x[others], w), rtol=1e-5)
    if m.nonneg:
        assert (out >= 0).all()


def test_augment_database_errors():
    with pytest.raises(ValueError, match="2-D"):
        rerank.augment_database(np.zeros(3), "l2")
    with pytest.raises(ValueError, match="n must be an int >= 1"):
        rerank.augment_database(np.zeros((3, 2)), "l2", n=0)
    with pytest.raises(ValueError, match="NaN"):
        rerank.augment_database(np.full((3, 2), np.nan), "l2", search=lambda v, k: None)


@pytest.mark.parametrize("metric", ["bhattacharyya", "pearson", "l1", "chisqr"])
def test_query_time_dba_augments_candidates_from_the_query_and_the_other_candidates(metric):
    m = get_metric(metric)
    x, _ = clusters(seed=5, n_per=8, nonneg=m.nonneg)
    q = x[3]
    search = brute_search(x, metric, exclude={3})
    ids0, sc0 = search(q, 31)
    ids, sc = rerank.apply("dba:n=3,alpha=1,depth=12,gap=0", q, ids0[0], sc0[0], get_vectors=lambda i: x[i],
                           search=search, k=20, metric=metric)
    # oracle: each of the 12 candidates, averaged with its 3 nearest among the query
    # (node -1 here, first on ties) and the other candidates
    head = list(ids0[0][:12])
    vec = {-1: q, **{i: x[i] for i in head}}
    aug_head, with_query = [], 0
    for r in head:
        s = {i: exact_scores(m, x[r], v[None, :])[0] for i, v in vec.items()}
        others = sorted((i for i in vec if i != r),
                        key=lambda i: ((-s[i] if m.higher_is_better else s[i]), list(vec).index(i)))[:3]
        with_query += -1 in others
        w = [oracle_sim(metric, x[r], vec[i]) for i in others]
        aug_head.append(oracle_expand(metric, x[r], [vec[i] for i in others], w))
    assert with_query > 0
    new = exact_scores(m, q, np.array(aug_head))
    order = sorted(range(12), key=lambda j: ((-new[j] if m.higher_is_better else new[j]), head[j]))
    np.testing.assert_array_equal(ids[:12], np.array(head)[order])
    np.testing.assert_allclose(sc[:12], new[order], rtol=1e-5, atol=1e-6)
    # past depth: the initial order and scores
    np.testing.assert_array_equal(ids[12:], ids0[0][12:20])
    np.testing.assert_allclose(sc[12:], sc0[0][12:20])


# ---------------------------------------------------------------------------
# apply(): k-reciprocal
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("metric", ["pearson", "bhattacharyya", "l2", "l1", "chisqr", "intersect"])
def test_apply_k_reciprocal_uses_local_graph(metric):
    x, _ = clusters(seed=6, n_per=10, nonneg=get_metric(metric).nonneg)
    q = x[0]
    search = brute_search(x, metric, exclude={0})
    ids0, sc0 = search(q, 39)
    ids, sc = rerank.apply("k-reciprocal:k1=6,k2=3,lambda=0.3,depth=25", q, ids0[0], sc0[0],
                           get_vectors=lambda i: x[i], search=search, k=30, metric=metric)
    head = ids0[0][:25]
    # oracle: local distances on the metric's squared scale, then the authors' code
    m = get_metric(metric)
    z = np.vstack([q, x[head]]).astype(np.float64)
    s = np.array([exact_scores(m, a, z) for a in z])
    if metric == "pearson":
        d = 1 - s
    elif metric in ("bhattacharyya", "l2"):
        d = s ** 2
    elif metric == "intersect":
        d = np.diag(s)[:, None] - s  # sum(z_i) - intersection(z_i, z_j)
    else:
        d = s
    d = np.maximum(d, 0)
    if metric not in ("chisqr", "intersect"):  # symmetric: the authors' own entry point
        final = zhong_re_ranking(np.sqrt(d[:1, 1:]), np.sqrt(d[:1, :1]), np.sqrt(d[1:, 1:]), 6, 3, 0.3)[0]
    else:  # asymmetric: the authors' code on the whole matrix (it reads columns: pass the transpose)
        final = zhong_from_matrix(np.sqrt(d.T), 1, 6, 3, 0.3)[0]
    order = sorted(range(25), key=lambda j: (final[j], head[j]))
    np.testing.assert_array_equal(ids[:25], head[order])
    exp_sc = 1 - final[order] if m.higher_is_better else final[order]
    np.testing.assert_allclose(sc[:25], exp_sc, atol=1e-4)
    assert sorted(ids[:25]) == sorted(head)
    np.testing.assert_array_equal(ids[25:], ids0[0][25:30])


def test_k_reciprocal_improves_ap_on_clustered_data():
    x, labels = clusters(seed=7, n_per=15, noise=1.6, d=8)
    metric = "l2"
    from fastimg.eval import average_precision
    gains = []
    for qid in range(0, len(x), 5):
        search = brute_search(x, metric, exclude={qid})
        ids0, sc0 = search(x[qid], len(x) - 1)
        ids, _ = rerank.apply("k-reciprocal:k1=10,k2=4,depth=40", x[qid], ids0[0], sc0[0],
                              get_vectors=lambda i: x[i], search=search, k=len(x) - 1, metric=metric)
        rel0 = labels[ids0[0]] == labels[qid]
        rel1 = labels[ids] == labels[qid]
        gains.append(average_precision(rel1) - average_precision(rel0))
    assert np.mean(gains) > 0


def test_apply_input_errors():
    x = np.eye(3, dtype=np.float32)
    kw = dict(get_vectors=lambda i: x[i], search=brute_search(x, "l2"), metric="l2")
    with pytest.raises(ValueError, match="query_vec must be 1-D"):
        rerank.apply("qe", x[:2], [0], [0.0], k=2, **kw)
    with pytest.raises(ValueError, match="NaN"):
        rerank.apply("qe", [np.nan, 0, 0], [0], [0.0], k=2, **kw)
    with pytest.raises(ValueError, match="ids must be a 1-D integer"):
        rerank.apply("qe", x[0], [[0]], [[0.0]], k=2, **kw)
    with pytest.raises(ValueError, match="scores must have the shape of ids"):
        rerank.apply("qe", x[0], [0, 1], [0.0], k=2, **kw)
    with pytest.raises(ValueError, match="k must be an int >= 1"):
        rerank.apply("qe", x[0], [0], [0.0], k=0, **kw)
    with pytest.raises(ValueError, match="unknown metric"):
        rerank.apply("qe", x[0], [0], [0.0], k=1, get_vectors=kw["get_vectors"], search=kw["search"],
                     metric="hamming")


# ---------------------------------------------------------------------------
# the gap test (defaults of qe, alpha-qe, dba), tightness and auto
# ---------------------------------------------------------------------------

def oracle_dist(metric, a, b):
    """The pairwise scale of re-ranking's local graphs, written out: 1 - correlation /
    cosine / Bhattacharyya coefficient, squared Euclidean, L1, sum(a) - intersection,
    else the metric's own distance."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if metric == "pearson":
        return 1.0 - np.corrcoef(a, b)[0, 1]
    if metric == "cosine":
        return 1.0 - a @ b / (np.linalg.norm(a) * np.linalg.norm(b))
    if metric == "bhattacharyya":
        return 1.0 - oracle_sim(metric, a, b)
    if metric == "l2":
        return ((a - b) ** 2).sum()
    if metric == "l1":
        return np.abs(a - b).sum()
    if metric == "intersect":
        return a.sum() - np.minimum(a, b).sum()
    return float(exact_scores(get_metric(metric), a, b[None, :])[0])


def oracle_tightness(dist):
    """Median over nodes of log(d(4)/d(1)) / log(d(hi)/d(lo)), others sorted; lo, hi =
    20, 80 capped at L // 4, L (L = number of others)."""
    vals = []
    for i in range(len(dist)):
        o = sorted(dist[i][j] for j in range(len(dist)) if j != i)
        lo, hi = min(20, len(o) // 4), min(80, len(o))
        num, den = np.log(o[3] / o[0]), np.log(o[hi - 1] / o[lo - 1])
        if den != 0:
            vals.append(num / den)
    return float(np.median(vals))


def pairs_and_blobs(seed=0, n_pairs=60, n_blobs=0, per_blob=0, d=6):
    """Tight pairs (a point and a near copy) spread over the space, and/or large blobs."""
    rng = np.random.default_rng(seed)
    parts, labels = [], []
    if n_pairs:
        base = rng.normal(size=(n_pairs, d)) * 3
        parts += [base, base + 0.05 * rng.normal(size=base.shape)]
        labels += [np.arange(n_pairs)] * 2
    for b in range(n_blobs):
        parts.append(rng.normal(size=(per_blob, d)) + rng.normal(size=d) * 6)
        labels.append(np.full(per_blob, 1000 + b))
    return np.vstack(parts).astype(np.float32), np.concatenate(labels)


def test_parse_auto():
    sp = rerank.parse_spec("auto")
    assert sp.name == "auto" and sp.params == {"threshold": 0.75, "tightness": None, "depth": 200}
    assert str(sp) == "auto"
    sp = rerank.parse_spec("AUTO:tightness=1.25,depth=50")
    assert sp.params["tightness"] == 1.25 and sp.params["depth"] == 50
    assert str(sp) == "auto:tightness=1.25,depth=50"
    assert rerank.parse_spec(str(sp)) == sp
    with pytest.raises(ValueError, match=r"unknown parameter 'k1' for re-ranking 'auto'; expected one of "
                                         r"\['threshold', 'tightness', 'depth'\]"):
        rerank.parse_spec("auto:k1=3")
    with pytest.raises(ValueError, match="'depth' must be >= 10; got 5"):
        rerank.parse_spec("auto:depth=5")
    with pytest.raises(ValueError, match="'tightness' must be >= 0.0; got -1"):
        rerank.parse_spec("auto:tightness=-1")
    with pytest.raises(ValueError, match=r"'gap' must be in \[0.0, 1.0\]; got 1.5"):
        rerank.parse_spec("qe:gap=1.5")
    assert rerank.candidates_needed("auto:depth=50", 10) == 50
    assert rerank.candidates_needed("auto:depth=50", 80) == 80
    assert rerank.candidates_needed("qe:n=2,gap=0.5,ref=15", 10) == 15
    assert rerank.candidates_needed("qe:n=2,gap=0", 10) == 2


@pytest.mark.parametrize("metric", ["pearson", "cosine", "bhattacharyya", "l2", "l1", "intersect", "chisqr"])
def test_distances_from_is_the_pairwise_scale(metric):
    x, _ = clusters(seed=9, nonneg=get_metric(metric).nonneg)
    got = rerank._distances_from(get_metric(metric), x[0], x[1:])
    np.testing.assert_allclose(got, [max(oracle_dist(metric, x[0], v), 0.0) for v in x[1:]], rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("m", [30, 150])
def test_local_tightness_against_the_formula(m):
    rng = np.random.default_rng(m)
    d = rng.random((m, m)) + 0.01
    np.fill_diagonal(d, 0.0)
    assert rerank.local_tightness(d) == pytest.approx(oracle_tightness(d), rel=1e-12)
    with pytest.raises(ArgumentError, match="at least 9 nodes"):
        rerank.local_tightness(d[:8, :8])


def test_tightness_tells_tight_pairs_from_large_blobs():
    sq = lambda x: ((x[:, None, :] - x[None, :, :]) ** 2).sum(-1)  # noqa: E731 - l2's pairwise scale
    pairs, _ = pairs_and_blobs(n_pairs=60)
    blobs, _ = pairs_and_blobs(n_pairs=0, n_blobs=3, per_blob=70)
    t_pairs, t_blobs = rerank.local_tightness(sq(pairs)), rerank.local_tightness(sq(blobs))
    assert t_pairs == pytest.approx(oracle_tightness(sq(pairs)))
    threshold = rerank.PARAMS["auto"]["threshold"][1]
    assert t_pairs > 2 * threshold and t_blobs < threshold


def _local_krr_oracle(x, q, head, k1, k2, lam):
    """l2: local squared distances, then the authors' code (it squares: pass the root)."""
    z = np.vstack([q, x[head]]).astype(np.float64)
    d = np.array([[oracle_dist("l2", a, b) for b in z] for a in z])
    final = zhong_re_ranking(np.sqrt(d[:1, 1:]), np.sqrt(d[:1, :1]), np.sqrt(d[1:, 1:]), k1, k2, lam)[0]
    order = sorted(range(len(head)), key=lambda j: (final[j], head[j]))
    return head[order], final[order], d


@pytest.mark.parametrize("kind", ["pairs", "blobs", "blobs-forced-small"])
def test_auto_picks_k_reciprocal_parameters_from_the_tightness(kind):
    x, _ = pairs_and_blobs(n_pairs=60) if kind == "pairs" else pairs_and_blobs(n_pairs=0, n_blobs=3, per_blob=70)
    qid = 3
    search = brute_search(x, "l2", exclude={qid})
    ids0, sc0 = search(x[qid], 100)
    spec = "auto:depth=60" + (",tightness=9" if kind == "blobs-forced-small" else "")
    ids, sc = rerank.apply(spec, x[qid], ids0[0], sc0[0], get_vectors=lambda i: x[i], search=search, k=80,
                           metric="l2")
    small = kind != "blobs"
    kr = rerank.AUTO_SMALL if small else rerank.AUTO_LARGE
    head = ids0[0][:60]
    exp_ids, exp_d, d = _local_krr_oracle(x, x[qid], head, kr["k1"], kr["k2"], kr["lambda"])
    assert (oracle_tightness(d) > rerank.PARAMS["auto"]["threshold"][1]) == (kind == "pairs")
    np.testing.assert_array_equal(ids[:60], exp_ids)
    np.testing.assert_allclose(sc[:60], exp_d, atol=1e-4)
    np.testing.assert_array_equal(ids[60:], ids0[0][60:80])  # past depth: the initial order


def test_auto_gains_on_pairs_and_on_blobs():
    """Behaviour, not a formula: over every query, auto's mAP is above the plain one
    on both kinds of collection."""
    from fastimg.eval import average_precision
    for x, labels in (pairs_and_blobs(seed=1, n_pairs=40, n_blobs=2, per_blob=25, d=4),
                      pairs_and_blobs(seed=2, n_pairs=0, n_blobs=4, per_blob=30, d=3)):
        gains = []
        for qid in range(0, len(x), 3):
            search = brute_search(x, "l2", exclude={qid})
            ids0, sc0 = search(x[qid], len(x) - 1)
            ids, _ = rerank.apply("auto:depth=60", x[qid], ids0[0], sc0[0], get_vectors=lambda i: x[i],
                                  search=search, k=len(x) - 1, metric="l2")
            n_rel = (labels == labels[qid]).sum() - 1
            gains.append(average_precision(labels[ids] == labels[qid], n_rel)
                         - average_precision(labels[ids0[0]] == labels[qid], n_rel))
        assert np.mean(gains) > 0


def test_auto_leaves_the_ranking_alone_when_it_cannot_help():
    """A query nobody has among its close neighbours (an outlier beside a dense blob:
    every blob member's nearest are other members) has no reciprocal structure to
    use; and with fewer than AUTO_MIN_CANDIDATES candidates there is none to see.
    Both return the initial ranking and scores unchanged."""
    rng = np.random.default_rng(5)
    blob = rng.normal(size=(80, 3)).astype(np.float32)
    x = np.vstack([blob, [[9.0, 9.0, 9.0]]]).astype(np.float32)
    q = x[80]
    search = brute_search(x, "l2", exclude={80})
    ids0, sc0 = search(q, 80)
    for spec in ("auto", "auto:tightness=0", "auto:tightness=9"):  # either regime
        ids, sc = rerank.apply(spec, q, ids0[0], sc0[0], get_vectors=lambda i: x[i], search=search, k=30,
                               metric="l2")
        np.testing.assert_array_equal(ids, ids0[0][:30])
        np.testing.assert_array_equal(sc, sc0[0][:30])
    # the same blob, queried from inside: it does re-rank
    search = brute_search(x, "l2", exclude={0})
    ids0, sc0 = search(x[0], 80)
    ids, _ = rerank.apply("auto", x[0], ids0[0], sc0[0], get_vectors=lambda i: x[i], search=search, k=30,
                          metric="l2")
    assert not np.array_equal(ids, ids0[0][:30])
    # too few candidates
    small = x[:rerank.AUTO_MIN_CANDIDATES]
    search = brute_search(small, "l2", exclude={0})
    ids0, sc0 = search(small[0], 9)
    ids, sc = rerank.apply("auto", small[0], ids0[0], sc0[0], get_vectors=lambda i: small[i], search=search,
                           k=5, metric="l2", complete=True)
    np.testing.assert_array_equal(ids, ids0[0][:5])
    np.testing.assert_array_equal(sc, sc0[0][:5])


def test_auto_and_tightness_are_deterministic():
    x, _ = pairs_and_blobs(seed=3, n_pairs=30, n_blobs=2, per_blob=40)
    search = brute_search(x, "l2", exclude={7})
    ids0, sc0 = search(x[7], 100)
    runs = [rerank.apply("auto", x[7], ids0[0], sc0[0], get_vectors=lambda i: x[i], search=search, k=50,
                         metric="l2") for _ in range(2)]
    np.testing.assert_array_equal(runs[0][0], runs[1][0])
    np.testing.assert_array_equal(runs[0][1], runs[1][1])
    a = rerank.collection_tightness(x, "l2", sample=20, depth=40, seed=1)
    assert a == rerank.collection_tightness(x.copy(), "l2", sample=20, depth=40, seed=1)


def test_collection_tightness_is_the_median_over_rows():
    x, _ = pairs_and_blobs(seed=4, n_pairs=25, n_blobs=1, per_blob=30, d=3)
    n = len(x)
    got = rerank.collection_tightness(x, "l2", sample=n, depth=30)  # every row
    vals = []
    for r in range(n):
        nb = [int(i) for i in brute_search(x, "l2", exclude={r})(x[r], 30)[0][0]]
        z = x[[r] + nb].astype(np.float64)
        vals.append(oracle_tightness(np.array([[oracle_dist("l2", a, b) for b in z] for a in z])))
    assert got == pytest.approx(float(np.median(vals)), rel=1e-9)
    assert rerank.collection_tightness(x[:10], "l2") is None  # too few rows to have a local graph
    with pytest.raises(ArgumentError, match="depth must be an int >= 10"):
        rerank.collection_tightness(x, "l2", depth=3)


def _group_of_two(seed=0, n=60, d=1024):
    """Row 0 is the query, row 1 its near copy; the other rows are strangers, all at about
    the same distance (high dimension: squared distances 2d +- a few %)."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d))
    x[1] = x[0] + 0.01 * rng.normal(size=d)
    return x.astype(np.float32)


@pytest.mark.parametrize("name", ["qe", "alpha-qe"])
def test_gap_test_on_a_group_of_two_pulls_in_only_that_neighbour(name):
    """n=5 would average four strangers into the query; the default gap test keeps the near copy only."""
    x = _group_of_two()
    search = brute_search(x, "l2", exclude={0})
    ids0, sc0 = search(x[0], 30)
    assert ids0[0][0] == 1
    ids, sc = rerank.apply(f"{name}:n=5", x[0], ids0[0], sc0[0], get_vectors=lambda i: x[i], search=search,
                           k=10, metric="l2")
    p = rerank.parse_spec(name).params
    assert p["gap"] > 0  # the default has the test on
    d = [oracle_dist("l2", x[0], x[i]) for i in ids0[0]]
    assert d[0] < p["gap"] * d[p["ref"] - 1] <= d[1]  # the copy passes the test, the strangers do not
    w = oracle_sim("l2", x[0], x[1]) ** p.get("alpha", 0.0)
    expanded = (x[0].astype(np.float64) + w * x[1]) / (1 + w)
    exp_ids, exp_sc = search(expanded.astype(np.float32), 10)
    np.testing.assert_array_equal(ids, exp_ids[0])
    np.testing.assert_allclose(sc, exp_sc[0], rtol=1e-5)


def test_default_qe_without_a_close_neighbour_keeps_the_plain_ranking():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(60, 1024)).astype(np.float32)  # high dimension: every distance about the same
    search = brute_search(x, "l2", exclude={0})
    ids0, sc0 = search(x[0], 30)
    d = [oracle_dist("l2", x[0], x[i]) for i in ids0[0]]
    p = rerank.parse_spec("qe").params
    assert d[0] >= p["gap"] * d[p["ref"] - 1]  # the nearest fails the gap test
    ids, sc = rerank.apply("qe", x[0], ids0[0], sc0[0], get_vectors=lambda i: x[i], search=search, k=10,
                           metric="l2")
    np.testing.assert_array_equal(ids, ids0[0][:10])
    np.testing.assert_array_equal(sc, sc0[0][:10])


@pytest.mark.parametrize("metric", ["l1", "bhattacharyya"])
def test_dba_gap_test_against_numpy(metric):
    m = get_metric(metric)
    x, _ = clusters(seed=11, n_per=10, noise=0.9)
    q = x[2]
    search = brute_search(x, metric, exclude={2})
    ids0, sc0 = search(q, 39)
    spec = "dba:n=4,alpha=1,depth=20,gap=0.8,ref=6"
    ids, sc = rerank.apply(spec, q, ids0[0], sc0[0], get_vectors=lambda i: x[i], search=search, k=20, metric=metric)
    head = list(ids0[0][:20])
    vec = {-1: q, **{i: x[i] for i in head}}  # the query is a node of the local graph too
    aug, used = [], 0
    for r in head:
        others = sorted((i for i in vec if i != r), key=lambda i: (oracle_dist(metric, x[r], vec[i]), list(vec).index(i)))
        ref_d = oracle_dist(metric, x[r], vec[others[5]])
        keep = [i for i in others[:4] if oracle_dist(metric, x[r], vec[i]) < 0.8 * ref_d]
        used += len(keep)
        w = [oracle_sim(metric, x[r], vec[i]) for i in keep]
        aug.append(oracle_expand(metric, x[r], [vec[i] for i in keep], w) if keep else x[r].astype(np.float64))
    assert 0 < used < 4 * 20  # the test keeps some neighbours and drops others
    new = exact_scores(m, q, np.array(aug))
    order = sorted(range(20), key=lambda j: ((-new[j] if m.higher_is_better else new[j]), head[j]))
    np.testing.assert_array_equal(ids, np.array(head)[order])
    np.testing.assert_allclose(sc, new[order], rtol=1e-5, atol=1e-6)


def oracle_auto_l2(x, qid, k, depth=200, threshold=0.75, tightness=None):
    """``auto`` written out for l2, from its documented rule: the plain ranking (brute
    force, the query left out); the tightness of the local graph of the query and its
    top ``depth``; k-reciprocal with the small- or large-group sizes (the authors' code)
    unless the query has no k1-reciprocal neighbour, then the plain ranking.  Returns
    (ids, scores, which): which in {"small", "large", "plain"}."""
    ids0, sc0 = brute_search(x, "l2", exclude={qid})(x[qid], len(x) - 1)
    ids0, sc0 = ids0[0], sc0[0]
    head = ids0[:depth]
    z = np.vstack([x[qid], x[head]]).astype(np.float64)
    d = np.array([[oracle_dist("l2", a, b) for b in z] for a in z])
    t = oracle_tightness(d) if tightness is None else tightness
    which = "small" if t > threshold else "large"
    kr = rerank.AUTO_SMALL if which == "small" else rerank.AUTO_LARGE
    k1 = kr["k1"]
    near = [set(sorted(range(len(z)), key=lambda j: (d[i][j], j))[:k1 + 1]) for i in range(len(z))]
    if not any(j in near[0] and 0 in near[j] for j in range(1, len(z))):
        return ids0[:k], sc0[:k], "plain"
    final = zhong_re_ranking(np.sqrt(d[:1, 1:]), np.sqrt(d[:1, :1]), np.sqrt(d[1:, 1:]), k1, kr["k2"],
                             kr["lambda"])[0]
    order = sorted(range(len(head)), key=lambda j: (final[j], head[j]))
    ids = np.concatenate([head[order], ids0[depth:]])[:k]
    sc = np.concatenate([final[order], sc0[depth:]])[:k]
    return ids, sc, which


def test_index_search_takes_auto(tmp_path):
    """Index.search(rerank="auto") re-ranks as auto's rule says: against the rule written
    out here (brute-force ranking, tightness, k-reciprocal by the authors' code)."""
    from fastimg import Index

    x, _ = pairs_and_blobs(seed=6, n_pairs=50, n_blobs=1, per_blob=40)
    seen = set()
    with Index.create(tmp_path / "ix", descriptor="custom", dim=x.shape[1], metric="l2") as ix:
        ix.add_vectors(x, [f"v{i}" for i in range(len(x))])
        for qid, given in ((0, None), (120, None), (120, 0.0)):  # 0.0: the large-group regime
            exp_ids, exp_sc, which = oracle_auto_l2(x, qid, 10, tightness=given)
            seen.add(which)
            hits = ix.search(x[qid], k=10, rerank="auto" if given is None else f"auto:tightness={given}")
            assert [h.id for h in hits] == exp_ids.tolist()
            np.testing.assert_allclose([h.score for h in hits], exp_sc, rtol=1e-4, atol=1e-5)
    assert seen == {"small", "large"}  # both regimes re-rank (the test would not see the wiring otherwise)


@pytest.mark.parametrize("metric", ["l2", "cosine"])
@pytest.mark.parametrize("name, n, gap, alpha", [("qe", 2, 0.6, 0.0), ("alpha-qe", 2, 0.7, 10.0)])
def test_default_qe_rules_as_documented(metric, name, n, gap, alpha):
    """The defaults' rules, written out: the query's top ``n`` whose distance is below
    ``gap`` x the 20th's, weighted 1 (qe) or sim^alpha (alpha-qe).  A group of three: a
    near copy, a looser copy (cosine about 0.89: weight 0.33 at alpha 10) and strangers."""
    rng = np.random.default_rng(3)
    x = rng.normal(size=(60, 256))
    x[1] = x[0] + 0.01 * rng.normal(size=256)
    x[2] = x[0] + 0.5 * rng.normal(size=256)
    x = x.astype(np.float32)
    p = rerank.PARAMS[name]
    assert (p["n"][1], p["gap"][1], p["ref"][1], p.get("alpha", (0, 0.0))[1]) == (n, gap, 20, alpha)
    search = brute_search(x, metric, exclude={0})
    ids0, sc0 = search(x[0], 30)
    d = [oracle_dist(metric, x[0], x[i]) for i in ids0[0]]
    keep = [i for j, i in enumerate(ids0[0][:n]) if d[j] < gap * d[19]]
    assert sorted(keep) == [1, 2]  # both copies pass the test; the strangers (d ~ d[19]) would not
    w = [oracle_sim(metric, x[0], x[i]) ** alpha for i in keep]
    if alpha:
        assert w[list(keep).index(2)] < 0.5 < w[list(keep).index(1)]  # the looser copy counts less
    exp_ids, exp_sc = search(oracle_expand(metric, x[0], x[keep], w).astype(np.float32), 10)
    ids, sc = rerank.apply(name, x[0], ids0[0], sc0[0], get_vectors=lambda i: x[i], search=search, k=10,
                           metric=metric)
    np.testing.assert_array_equal(ids, exp_ids[0])
    np.testing.assert_allclose(sc, exp_sc[0], rtol=1e-5, atol=1e-6)
