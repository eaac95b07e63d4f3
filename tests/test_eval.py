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
    assert res["ns"] >= 1.0


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


@pytest.mark.parametrize("name", ["mAP", "p@10", "R@3", "map@100", "ns"])
def test_parse_metric_accepts(name):
    kind, k = ev.parse_metric(name)
    assert kind in ("map", "p", "r", "ns")


@pytest.mark.parametrize("name", ["p", "p@0", "ns@4", "ap", "p@x", "map@-1"])
def test_parse_metric_rejects(name):
    with pytest.raises(ValueError, match="evaluation metric|cut-off"):
        ev.parse_metric(name)
