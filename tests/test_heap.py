"""The bounded top-K heap of fastimg._core, against a pure-Python oracle."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

_core = pytest.importorskip("fastimg._core", reason="compiled core not built (run `make install`)")

finite32 = st.floats(allow_nan=False, allow_infinity=True, width=32)


def oracle_topk(values, ids, k):
    """Best first: higher value, then lower id; padded with (-inf, -1)."""
    pairs = sorted(zip(values, ids), key=lambda p: (-p[0], p[1]))[:k]
    pairs += [(-np.inf, -1)] * (k - len(pairs))
    return [float(v) for v, _ in pairs], [int(i) for _, i in pairs]


def test_hand_computed_example():
    vals, ids = _core._heap_topk_test(np.array([3, 1, 3, 2, 5], dtype=np.float32), 3)
    assert ids.tolist() == [4, 0, 2]          # 5, then the two 3s by lower id
    assert vals.tolist() == [5.0, 3.0, 3.0]


def test_padding_when_k_exceeds_n():
    vals, ids = _core._heap_topk_test(np.array([1.5, -2.0], dtype=np.float32), 4)
    assert ids.tolist() == [0, 1, -1, -1]
    assert vals[:2].tolist() == [1.5, -2.0]
    assert np.isneginf(vals[2:]).all()


def test_k_must_be_positive():
    with pytest.raises(ValueError, match="k must be >= 1"):
        _core._heap_topk_test(np.zeros(3, dtype=np.float32), 0)


def test_ids_length_checked():
    with pytest.raises(ValueError, match="ids must have the length of values"):
        _core._heap_topk_test(np.zeros(3, dtype=np.float32), 2, np.arange(2, dtype=np.int64))


@settings(max_examples=300, deadline=None)
@given(values=st.lists(finite32, min_size=0, max_size=60), k=st.integers(1, 70))
def test_matches_sorted_oracle(values, k):
    arr = np.array(values, dtype=np.float32)
    got_v, got_i = _core._heap_topk_test(arr, k)
    exp_v, exp_i = oracle_topk(arr.tolist(), list(range(len(arr))), k)
    assert got_i.tolist() == exp_i
    assert got_v.tolist() == exp_v


@settings(max_examples=200, deadline=None)
@given(values=st.lists(st.sampled_from([0.0, 1.0, -1.0, 2.5]), min_size=1, max_size=80),
       k=st.integers(1, 20), seed=st.integers(0, 2**31 - 1))
def test_heavy_ties_any_id_order(values, k, seed):
    """Many equal values, ids pushed in random order: ties still go to the lower id."""
    n = len(values)
    ids = np.random.default_rng(seed).permutation(10 * n)[:n].astype(np.int64)
    arr = np.array(values, dtype=np.float32)
    got_v, got_i = _core._heap_topk_test(arr, k, ids)
    exp_v, exp_i = oracle_topk(arr.tolist(), ids.tolist(), k)
    assert got_i.tolist() == exp_i
    assert got_v.tolist() == exp_v


@settings(max_examples=100, deadline=None)
@given(values=st.lists(finite32, min_size=1, max_size=50), k=st.integers(1, 10))
def test_result_invariants(values, k):
    """Sorted best first, no duplicate ids, every kept value >= every dropped value."""
    arr = np.array(values, dtype=np.float32)
    got_v, got_i = _core._heap_topk_test(arr, k)
    m = min(k, len(arr))
    kept = got_i[:m]
    assert len(set(kept.tolist())) == m
    assert np.all(got_v[:m - 1] >= got_v[1:m])
    dropped = np.setdiff1d(np.arange(len(arr)), kept)
    if len(dropped):
        assert arr[dropped].max() <= got_v[m - 1]
