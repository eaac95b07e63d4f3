"""Tests of fastimg.eval.

Oracles: hand-computed rankings / AP values (worked in the comments), and a plain
Python transcription of the textbook definitions (`_ap_loop`, sorted() with an
explicit (score, id) key) for randomised cases.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fastimg import eval as ev


# ---------------------------------------------------------------------------
# independent oracles
# ---------------------------------------------------------------------------

def _ap_loop(rel, n_relevant):
    """AP as written in the IR textbooks: sum of P@i at relevant ranks / R."""
    if n_relevant == 0:
        return 0.0
    hits, total = 0, 0.0
    for i, r in enumerate(rel, start=1):
        if r:
            hits += 1
            total += hits / i
    return total / n_relevant


def _rank_loop(scores_row, higher_is_better, exclude=None):
    ids = [i for i in range(len(scores_row)) if i != exclude]
    sign = -1.0 if higher_is_better else 1.0
    return sorted(ids, key=lambda i: (sign * scores_row[i], i))


# ---------------------------------------------------------------------------
# scalar metrics, hand computed
# ---------------------------------------------------------------------------

def test_average_precision_hand_computed():
    # relevant at ranks 1 and 3: (1/1 + 2/3) / 2
    assert ev.average_precision([True, False, True, False]) == pytest.approx((1 + 2 / 3) / 2)
    # same list, but 4 relevant items exist: two are never retrieved
    assert ev.average_precision([1, 0, 1, 0], n_relevant=4) == pytest.approx((1 + 2 / 3) / 4)
    # relevant at ranks 2 and 5 out of 3: (1/2 + 2/5) / 3 = 0.3
    assert ev.average_precision([0, 1, 0, 0, 1], n_relevant=3) == pytest.approx(0.3)
    assert ev.average_precision([1, 1, 1]) == pytest.approx(1.0)
    assert ev.average_precision([0, 0, 0, 1]) == pytest.approx(0.25)


def test_average_precision_no_relevant_is_zero():
    assert ev.average_precision([False, False]) == 0.0
    assert ev.average_precision([0, 0, 0], n_relevant=0) == 0.0
    assert ev.average_precision(np.zeros(0, dtype=bool), n_relevant=0) == 0.0


def test_average_precision_batch_matches_rows():
    rel = np.array([[1, 0, 1, 0], [0, 1, 0, 0], [0, 0, 0, 0]], dtype=bool)
    ap = ev.average_precision(rel, n_relevant=[2, 2, 0])
    np.testing.assert_allclose(ap, [(1 + 2 / 3) / 2, 0.5 / 2, 0.0])


def test_average_precision_errors():
    with pytest.raises(ValueError, match="n_relevant is smaller"):
        ev.average_precision([1, 1, 0], n_relevant=1)
    with pytest.raises(ValueError, match=">= 0"):
        ev.average_precision([0, 0], n_relevant=-1)
    with pytest.raises(ValueError, match="booleans"):
        ev.average_precision([0, 2, 1])
    with pytest.raises(ValueError, match="1-D .* or 2-D"):
        ev.average_precision(np.zeros((2, 2, 2), dtype=bool))
    with pytest.raises(ValueError, match=r"shape \(2,\)"):
        ev.average_precision(np.ones((2, 3), dtype=bool), n_relevant=[3, 3, 3])


def test_mean_average_precision_skips_queries_without_relevant():
    rel = np.array([[1, 0], [0, 0], [0, 1]], dtype=bool)
    # query 1 has no relevant item: skipped (trec_eval convention), not counted as 0
    assert ev.mean_average_precision(rel, n_relevant=[1, 0, 1]) == pytest.approx((1.0 + 0.5) / 2)
    with pytest.raises(ValueError, match="no query has any relevant"):
        ev.mean_average_precision(np.zeros((2, 3), dtype=bool), n_relevant=0)
    with pytest.raises(ValueError, match="2-D"):
        ev.mean_average_precision([1, 0])


def test_precision_recall_at_k_hand_computed():
    rel = [1, 0, 1, 1, 0]
    assert ev.precision_at_k(rel, 1) == 1.0
    assert ev.precision_at_k(rel, 3) == pytest.approx(2 / 3)
    assert ev.precision_at_k(rel, 10) == pytest.approx(3 / 10)  # short list: denominator stays k
    assert ev.recall_at_k(rel, 2, n_relevant=6) == pytest.approx(1 / 6)
    assert ev.recall_at_k(rel, 4) == pytest.approx(1.0)
    assert ev.recall_at_k([0, 0], 2, n_relevant=0) == 0.0
    np.testing.assert_allclose(ev.precision_at_k([[1, 1], [0, 1]], 2), [1.0, 0.5])
    for bad in (0, -3):
        with pytest.raises(ValueError, match="k must be >= 1"):
            ev.precision_at_k(rel, bad)
    with pytest.raises(TypeError, match="k must be an int"):
        ev.recall_at_k(rel, 2.5)


def test_ukbench_ns_score_counts_top4_only():
    assert ev.ukbench_ns_score([1, 1, 0, 1, 1, 1]) == 3.0
    assert ev.ukbench_ns_score([0, 0, 0, 0, 1, 1, 1, 1]) == 0.0
    np.testing.assert_allclose(ev.ukbench_ns_score([[1, 1, 1, 1], [1, 0, 0, 1]]), [4.0, 2.0])


@settings(max_examples=200, deadline=None)
@given(st.lists(st.booleans(), min_size=0, max_size=30), st.integers(0, 10))
def test_average_precision_matches_textbook_loop(rel, extra):
    n = sum(rel) + extra
    assert ev.average_precision(np.array(rel, dtype=bool), n_relevant=n) == pytest.approx(_ap_loop(rel, n))


# ---------------------------------------------------------------------------
# rankings from scores, ties, evaluators
# ---------------------------------------------------------------------------

def test_rank_by_scores_ties_by_lower_id():
    s = np.array([[0.2, 0.5, 0.5, 0.9], [1.0, 1.0, 1.0, 1.0]])
    np.testing.assert_array_equal(ev.rank_by_scores(s), [[3, 1, 2, 0], [0, 1, 2, 3]])
    np.testing.assert_array_equal(ev.rank_by_scores(s, higher_is_better=False), [[0, 1, 2, 3], [0, 1, 2, 3]])
    np.testing.assert_array_equal(ev.rank_by_scores(s, exclude=[1, 0]), [[3, 2, 0], [1, 2, 3]])
    with pytest.raises(ValueError, match="NaN"):
        ev.rank_by_scores([[np.nan, 1.0]])
    with pytest.raises(ValueError, match=r"exclude ids must be in \[0, 2\)"):
        ev.rank_by_scores([[0.0, 1.0]], exclude=[2])


def test_evaluate_scores_hand_computed_with_ties():
    labels = np.array([0, 0, 1, 1])
    s = np.array([
        [9.0, 0.5, 0.5, 0.2],   # q0: tie 1 vs 2 -> id 1 first: ranking 1,2,3 ; relevant {1} -> AP 1
        [0.1, 9.0, 0.3, 0.3],   # q1: ranking 2,3,0 ; relevant {0} at rank 3 -> AP 1/3
        [0.4, 0.6, 9.0, 0.2],   # q2: ranking 1,0,3 ; relevant {3} at rank 3 -> AP 1/3
        [0.7, 0.1, 0.7, 9.0],   # q3: tie 0 vs 2 -> ranking 0,2,1 ; relevant {2} at rank 2 -> AP 1/2
    ])
    res = ev.evaluate_scores(s, labels, metrics=["map", "p@1", "r@2", "map@1"])
    assert res["map"] == pytest.approx((1 + 1 / 3 + 1 / 3 + 1 / 2) / 4)
    assert res["p@1"] == pytest.approx(1 / 4)
    assert res["r@2"] == pytest.approx((1 + 0 + 0 + 1) / 4)
    assert res["map@1"] == pytest.approx(1 / 4)
    assert res["n_queries"] == 4 and res["n_skipped"] == 0
    # as distances the order reverses: q0 ranking 3,1,2 (tie 1,2 by id): relevant {1} at 2 -> 1/2
    res_d = ev.evaluate_scores(s, labels, higher_is_better=False, metrics=["map"])
    # q1: 0(0.1),2(0.3),3(0.3) -> rel{0} rank1 -> 1 ; q2: 3,0,1 -> rel{3} -> 1 ; q3: 1,0,2 -> rel{2} rank 3
    assert res_d["map"] == pytest.approx((1 / 2 + 1 + 1 + 1 / 3) / 4)


def test_evaluate_scores_ukbench_counts_query_itself():
    labels = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    rng = np.random.default_rng(1)
    s = rng.random((8, 8))
    np.fill_diagonal(s, 2.0)  # each query ranks itself first
    res = ev.evaluate_scores(s, labels, exclude_self=False, metrics=["ns"])
    expected = np.mean([sum(labels[j] == labels[q] for j in _rank_loop(s[q], True)[:4]) for q in range(8)])
    assert res["ns"] == pytest.approx(expected)


@settings(max_examples=40, deadline=None)
@given(st.integers(2, 12), st.integers(1, 4), st.integers(0, 2**32 - 1), st.booleans())
def test_evaluate_scores_matches_brute_force(n, n_classes, seed, hib):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, n_classes, n)
    s = rng.integers(0, 4, (n, n)).astype(float)  # few values: many ties
    res = ev.evaluate_scores(s, labels, higher_is_better=hib, metrics=["map", "p@2", "r@3"])
    aps, ps, rs = [], [], []
    for q in range(n):
        ranking = _rank_loop(s[q], hib, exclude=q)
        rel = [labels[i] == labels[q] for i in ranking]
        r_tot = sum(rel)
        if r_tot == 0:
            continue
        aps.append(_ap_loop(rel, r_tot))
        ps.append(sum(rel[:2]) / 2)
        rs.append(sum(rel[:3]) / r_tot)
    if not aps:
        assert res["n_queries"] == 0 and math.isnan(res["map"])
        return
    assert res["n_queries"] == len(aps)
    assert res["map"] == pytest.approx(np.mean(aps))
    assert res["p@2"] == pytest.approx(np.mean(ps))
    assert res["r@3"] == pytest.approx(np.mean(rs))


def test_evaluate_ranking_truncated_padded_and_self_removed():
    labels = np.array([0, 0, 0, 1, 1])
    # query 0 ranked list contains itself (removed), then 3, 1, then padding
    ranked = np.array([[0, 3, 1, -1], [1, 0, 2, 3]])
    res = ev.evaluate_ranking(ranked, labels, query_ids=[0, 1], metrics=["map", "p@2"])
    # q0 after removal: 3, 1, -1 ; relevant {1, 2}: 1 at rank 2 -> (1/2) / 2 = 0.25
    # q1 after removal: 0, 2, 3 ; relevant {0, 2} at 1, 2 -> 1
    assert res["map"] == pytest.approx((0.25 + 1.0) / 2)
    assert res["p@2"] == pytest.approx((0.5 + 1.0) / 2)


def test_evaluate_ranking_external_queries():
    labels = np.array([0, 1, 1, 2])
    res = ev.evaluate_ranking([[1, 0, 2], [3, 0, 1]], labels, query_labels=[1, 5], metrics=["map"])
    # q0 (label 1): relevant {1, 2} at ranks 1, 3 -> (1 + 2/3) / 2 ; q1 label 5: no relevant, skipped
    assert res["map"] == pytest.approx((1 + 2 / 3) / 2)
    assert res["n_skipped"] == 1
    with pytest.raises(ValueError, match="not both"):
        ev.evaluate_ranking([[0]], labels, query_ids=[0], query_labels=[0])


@pytest.mark.parametrize("name,parsed", [("mAP", ("map", None)), ("p@10", ("p", 10)), ("R@3", ("r", 3)),
                                         ("map@100", ("map", 100)), (" ns ", ("ns", None))])
def test_parse_metric_accepts(name, parsed):
    assert ev.parse_metric(name) == parsed


@pytest.mark.parametrize("name", ["p", "p@0", "ns@4", "ap", "p@x", "map@-1"])
def test_parse_metric_rejects(name):
    with pytest.raises(ValueError, match="evaluation metric|cut-off"):
        ev.parse_metric(name)


# ---------------------------------------------------------------------------
# dataset layouts
# ---------------------------------------------------------------------------

def _touch(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")
    return path


def test_load_folders_layout(tmp_path):
    _touch(tmp_path / "b_cars" / "2.jpg")
    _touch(tmp_path / "b_cars" / "1.PNG")
    _touch(tmp_path / "a_dogs" / "sub" / "x.jpeg")
    _touch(tmp_path / "a_dogs" / "y.jpg")
    _touch(tmp_path / "a_dogs" / "notes.txt")
    _touch(tmp_path / "a_dogs" / ".hidden.jpg")
    (tmp_path / "empty").mkdir()
    _touch(tmp_path / "top.jpg")  # a file at the root belongs to no class
    ds = ev.load_dataset(tmp_path, "folders")
    assert [p.relative_to(tmp_path).as_posix() for p in ds.paths] == [
        "a_dogs/sub/x.jpeg", "a_dogs/y.jpg", "b_cars/1.PNG", "b_cars/2.jpg"]
    np.testing.assert_array_equal(ds.labels, [0, 0, 1, 1])
    np.testing.assert_array_equal(ds.queries, [0, 1, 2, 3])
    assert ds.class_names == ["a_dogs", "b_cars"] and ds.exclude_query
    np.testing.assert_array_equal(ds.n_relevant, [1, 1, 1, 1])


def test_load_ukbench_layout_by_numbering(tmp_path):
    for i in (7, 0, 3, 1, 2, 4, 6, 5):
        _touch(tmp_path / "images" / f"ukbench{i:05d}.jpg")
    ds = ev.load_dataset(tmp_path, "ukbench")
    assert [p.name for p in ds.paths] == [f"ukbench{i:05d}.jpg" for i in range(8)]
    np.testing.assert_array_equal(ds.labels, [0, 0, 0, 0, 1, 1, 1, 1])
    assert not ds.exclude_query
    np.testing.assert_array_equal(ds.n_relevant, [4] * 8)  # the query counts


def test_load_ukbench_layout_groups_file(tmp_path):
    for n in ("a.jpg", "b.jpg", "c.jpg"):
        _touch(tmp_path / n)
    (tmp_path / "groups.csv").write_text("file,group\nc.jpg,7\na.jpg,3\nb.jpg,7\n")
    ds = ev.load_dataset(tmp_path, "ukbench")
    assert [p.name for p in ds.paths] == ["c.jpg", "a.jpg", "b.jpg"]
    np.testing.assert_array_equal(ds.labels, [1, 0, 1])
    (tmp_path / "groups.csv").write_text("name,cls\na.jpg,1\n")
    with pytest.raises(ValueError, match="expected the columns 'file,group'"):
        ev.load_dataset(tmp_path, "ukbench")
    (tmp_path / "groups.csv").write_text("file,group\nmissing.jpg,1\n")
    with pytest.raises(ValueError, match="listed image not found"):
        ev.load_dataset(tmp_path, "ukbench")


def test_load_holidays_layout(tmp_path):
    for n in (100001, 100000, 100100, 100002, 100101, 100200):
        _touch(tmp_path / f"{n}.jpg")
    ds = ev.load_dataset(tmp_path, "holidays")
    assert [p.stem for p in ds.paths] == ["100000", "100001", "100002", "100100", "100101", "100200"]
    np.testing.assert_array_equal(ds.labels, [0, 0, 0, 1, 1, 2])
    np.testing.assert_array_equal(ds.queries, [0, 3, 5])
    assert ds.exclude_query
    np.testing.assert_array_equal(ds.n_relevant, [2, 1, 0])  # 100200 has no relevant image
    _touch(tmp_path / "holiday.jpg")
    with pytest.raises(ValueError, match="not named by its image number"):
        ev.load_dataset(tmp_path, "holidays")


def test_load_dataset_errors(tmp_path):
    with pytest.raises(ValueError, match=r"layout must be one of \['folders', 'ukbench', 'holidays'\]"):
        ev.load_dataset(tmp_path, "wang")
    with pytest.raises(FileNotFoundError, match="dataset directory not found"):
        ev.load_dataset(tmp_path / "nope")
    with pytest.raises(ValueError, match="no class sub-directory with images"):
        ev.load_dataset(tmp_path, "folders")
    _touch(tmp_path / "100001.jpg")
    with pytest.raises(ValueError, match="no query image"):
        ev.load_dataset(tmp_path, "holidays")


def test_corel_layout_agrees_with_labels_csv(corel_dir):
    import csv
    ds = ev.load_dataset(corel_dir, "folders")
    with open(corel_dir / "labels.csv", newline="") as fh:
        truth = {r["path"]: r["class_name"] for r in csv.DictReader(fh)}
    assert len(ds) == len(truth) == 1000
    got = {p.relative_to(corel_dir).as_posix(): ds.class_names[l] for p, l in zip(ds.paths, ds.labels)}
    assert got == truth
    np.testing.assert_array_equal(ds.n_relevant, np.full(1000, 99))


def test_ukbench_layout_agrees_with_readme_rule(ukbench_dir):
    ds = ev.load_dataset(ukbench_dir, "ukbench")
    nums = [int(p.stem[-5:]) for p in ds.paths]
    assert nums == list(range(56))
    np.testing.assert_array_equal(ds.labels, np.arange(56) // 4)
    # the numbering rule gives the same groups as groups.csv
    ds2 = ev.load_dataset(ukbench_dir, "ukbench", groups_file=None)
    np.testing.assert_array_equal(ds2.labels, ds.labels)


def test_parse_descriptor():
    assert ev.parse_descriptor("hsv") == ("hsv", {})
    assert ev.parse_descriptor("hsv:bins=8x12x3, max_side=256") == ("hsv", {"bins": (8, 12, 3), "max_side": 256})
    assert ev.parse_descriptor("x:a=0.5,b=none,c=true,d=abc") == ("x", {"a": 0.5, "b": None, "c": True, "d": "abc"})
    with pytest.raises(ValueError, match="malformed descriptor parameter"):
        ev.parse_descriptor("hsv:bins")


# ---------------------------------------------------------------------------
# evaluate() end to end (registry descriptors, exact search, re-ranking)
# ---------------------------------------------------------------------------

def _scores(metric, q, x):
    """Scores of the rows of x for query q, independently of fastimg: cv2.compareHist
    (query first) for bhattacharyya, NumPy for l1."""
    import cv2

    if metric == "l1":
        return np.abs(x.astype(np.float64) - np.asarray(q, np.float64)).sum(axis=1)
    assert metric == "bhattacharyya"
    q32 = np.asarray(q, np.float32)
    return np.array([cv2.compareHist(q32, np.asarray(r, np.float32), cv2.HISTCMP_BHATTACHARYYA) for r in x])


def _rank(metric, q, x, drop=()):
    """Ids of x best first (ties by lower id), without ``drop``."""
    s = _scores(metric, q, x)
    key = -s if metric in ("pearson", "cosine", "intersect") else s
    return [int(i) for i in np.lexsort((np.arange(len(x)), key)) if int(i) not in drop]


def test_evaluate_ukbench_ns_matches_brute_force(ukbench_dir):
    from fastimg.features.registry import describe_many
    ds = ev.load_dataset(ukbench_dir, "ukbench")
    cache = {}
    rows = ev.evaluate(ds, descriptors=["hsv72"], metrics=["bhattacharyya", "l1"], measures=["ns", "map"],
                       features=cache)
    x, errors = describe_many([str(p) for p in ds.paths], "hsv72")
    assert not errors
    np.testing.assert_array_equal(cache["hsv72"][0], x)
    assert [r["metric"] for r in rows] == ["bhattacharyya", "l1"]
    for row in rows:
        rankings = [_rank(row["metric"], x[q], x) for q in range(56)]  # UKBench: the query stays in
        ns = np.mean([sum(ds.labels[i] == ds.labels[q] for i in r[:4]) for q, r in enumerate(rankings)])
        aps = [_ap_loop([ds.labels[i] == ds.labels[q] for i in r], 4) for q, r in enumerate(rankings)]
        assert row["ns"] == pytest.approx(ns)
        assert row["map"] == pytest.approx(np.mean(aps))
        assert row["n_queries"] == 56 and row["n_failed"] == 0 and row["rerank"] == "none"


def _qe_oracle(q, x, ranking, n, own):
    """Average query expansion on histograms, written from its definition: the mean of the
    L1-normalised query and its top n, rescaled to the query's mass, searched again
    (the query itself left out)."""
    e = lambda v: np.asarray(v, np.float64) / np.sum(v)  # noqa: E731
    expanded = (e(q) + sum(e(x[i]) for i in ranking[:n])) / (1 + n) * float(np.sum(q))
    return _rank("bhattacharyya", expanded.astype(np.float32), x, drop={own})


def _k_reciprocal_oracle(dist, k1, k2, lam):
    """Zhong et al.'s re-ranked distance of node 0 to nodes 1.. (loops, after their reference
    code; distances normalised by each row's maximum, ties ranked by node index)."""
    m = len(dist)
    d = dist / dist.max(axis=1, keepdims=True)
    rank = [sorted(range(m), key=lambda j, i=i: (d[i, j], j)) for i in range(m)]

    def reciprocal(i, k):
        return {j for j in rank[i][:k + 1] if i in rank[j][:k + 1]}

    v = np.zeros((m, m))
    for i in range(m):
        r = reciprocal(i, k1)
        nodes = set(r)
        for c in r:
            rc = reciprocal(c, int(round(k1 / 2)))
            if len(rc & r) > 2 / 3 * len(rc):
                nodes |= rc
        nodes = sorted(nodes)
        w = np.exp(-d[i, nodes])
        v[i, nodes] = w / w.sum()
    v = np.array([v[rank[i][:k2]].mean(axis=0) for i in range(m)])  # local query expansion
    out = []
    for g in range(1, m):
        inter = np.minimum(v[0], v[g]).sum()
        out.append((1 - lam) * (1 - inter / (2 - inter)) + lam * d[0, g])
    return np.array(out)


def _krr_oracle(q, x, ranking, k1, k2, lam, depth):
    head = ranking[:depth]
    z = np.vstack([q, x[head]]).astype(np.float64)
    e = np.sqrt(z / z.sum(axis=1, keepdims=True))  # Bhattacharyya: 1 - BC = squared Hellinger distance
    dist = np.maximum(1.0 - e @ e.T, 0.0)
    final = _k_reciprocal_oracle(dist, k1, k2, lam)
    order = np.lexsort((head, final))
    return [head[i] for i in order] + ranking[depth:]


def test_evaluate_folders_with_rerank_matches_manual_pipeline(corel_dir):
    """evaluate() with re-ranking equals QE and k-reciprocal written out here (each query left
    out of its own searches), on an 80-image subset of Corel-1k."""
    from fastimg.features.registry import describe_many
    full = ev.load_dataset(corel_dir, "folders")
    pick = np.concatenate([np.flatnonzero(full.labels == c)[:8] for c in range(10)])  # 80 images
    ds = ev.Dataset(full.root, "folders", [full.paths[i] for i in pick], full.labels[pick],
                    np.arange(pick.size), True, full.class_names)
    krr = "k-reciprocal:k1=5,k2=3,lambda=0.3,depth=30"
    rows = ev.evaluate(ds, descriptors=["hsv72"], metrics=["bhattacharyya"], reranks=[None, "qe:n=3,gap=0", krr],
                       measures=["map", "p@5"])
    x, _ = describe_many([str(p) for p in ds.paths], "hsv72")
    want = {"none": [], "qe:n=3,gap=0": [], krr: []}
    for q in range(80):
        base = _rank("bhattacharyya", x[q], x, drop={q})
        for name, ranking in (("none", base), ("qe:n=3,gap=0", _qe_oracle(x[q], x, base, 3, q)),
                              (krr, _krr_oracle(x[q], x, base, 5, 3, 0.3, 30))):
            rel = [ds.labels[i] == ds.labels[q] for i in ranking]
            want[name].append((_ap_loop(rel, 7), sum(rel[:5]) / 5))
    assert [r["rerank"] for r in rows] == ["none", "qe:n=3,gap=0", krr]
    for row in rows:
        aps, p5 = np.array(want[row["rerank"]]).T
        assert row["map"] == pytest.approx(aps.mean(), abs=1e-9), row["rerank"]
        assert row["p@5"] == pytest.approx(p5.mean(), abs=1e-9), row["rerank"]
    assert rows[2]["map"] != pytest.approx(rows[0]["map"])  # the re-ranking changed the rankings


def _write_holidays(tmp_path):
    import cv2
    rng = np.random.default_rng(0)
    colours = {1000: (0, 0, 220), 1001: (220, 0, 0), 1002: (0, 200, 0)}  # BGR red, blue, green scenes
    for g, c in colours.items():
        for j in range(3):
            img = np.clip(np.array(c) + rng.integers(-25, 25, (32, 32, 3)), 0, 255).astype(np.uint8)
            cv2.imwrite(str(tmp_path / f"{g * 100 + j}.png"), img)


def test_evaluate_holidays_synthetic_groups(tmp_path):
    _write_holidays(tmp_path)
    rows = ev.evaluate(tmp_path, "holidays", descriptors=["hsv72"], measures=["map", "p@1"],
                       reranks=[None, "qe:n=1"])
    # each group is one colour: both group members rank first for its query
    for row in rows:
        assert row["n_queries"] == 3
        assert row["map"] == pytest.approx(1.0) and row["p@1"] == pytest.approx(1.0)


def test_evaluate_reports_failed_images_and_bad_metric(tmp_path):
    _write_holidays(tmp_path)
    (tmp_path / "100202.png").write_bytes(b"not an image")
    rows = ev.evaluate(tmp_path, "holidays", descriptors=["hsv72"], metrics=["bhattacharyya"], measures=["map"])
    assert rows[0]["n_failed"] == 1 and rows[0]["map"] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="unknown metric"):
        ev.evaluate(tmp_path, "holidays", descriptors=["hsv72"], metrics=["hamming"])
    with pytest.raises(ValueError, match="unknown evaluation metric"):
        ev.evaluate(tmp_path, "holidays", descriptors=["hsv72"], measures=["ndcg"])
    with pytest.raises(ValueError, match="unknown re-ranking"):
        ev.evaluate(tmp_path, "holidays", descriptors=["hsv72"], reranks=["magic"])


def test_cli_eval_table_and_json(tmp_path, capsys):
    import json

    from fastimg.cli import main
    (tmp_path / "h").mkdir()
    _write_holidays(tmp_path / "h")
    out = tmp_path / "r.json"
    assert main(["eval", str(tmp_path / "h"), "--layout", "holidays", "--descriptor", "hsv72",
                 "--rerank", "none", "--rerank", "qe:n=3,gap=0", "--json", "-o", str(out)]) == 0
    doc = json.loads(out.read_text())
    assert json.loads(capsys.readouterr().out) == doc
    assert doc["layout"] == "holidays" and doc["n_queries"] == 3
    assert [r["rerank"] for r in doc["results"]] == ["none", "qe:n=3,gap=0"]
    assert doc["results"][0]["map"] == pytest.approx(1.0)
    capsys.readouterr()
    assert main(["eval", str(tmp_path / "h"), "--layout", "holidays", "--descriptor", "hsv72",
                 "--measure", "map"]) == 0
    text = capsys.readouterr().out
    assert "hsv72" in text and "1.0000" in text and "3 queries" in text
    assert main(["eval", str(tmp_path / "h"), "--layout", "holidays", "--rerank", "nope"]) == 1
    assert "unknown re-ranking 'nope'" in capsys.readouterr().err


def test_evaluate_needs_two_describable_images(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "x.png").write_bytes(b"broken")
    (tmp_path / "a" / "y.png").write_bytes(b"broken")
    with pytest.raises(ValueError, match=r"described 0 image\(s\) \(2 failed\)"):
        ev.evaluate(tmp_path, "folders", descriptors=["hsv72"])


def test_format_table_lists_every_row():
    rows = [{"descriptor": "hsv72", "metric": "l1", "rerank": "none", "map": 0.51234, "p@10": 0.7,
             "n_queries": 3, "n_skipped": 0, "n_failed": 0, "ms_per_query": 1.234},
            {"descriptor": "hsv72", "metric": "pearson", "rerank": "qe", "error": "negative values"}]
    text = ev.format_table(rows, ["map", "p@10"])
    lines = text.splitlines()
    assert lines[0].split() == ["descriptor", "metric", "rerank", "map", "p@10", "ms/query"]
    assert lines[2].split() == ["hsv72", "l1", "none", "0.5123", "0.7000", "1.23"]
    assert "error: negative values" in lines[3]
    assert ev.format_table([]) == "(no results)"
