"""The bounded top-K heap (fi_heap.h), through the public kernel fastimg._core.fused_topk,
against a NumPy lexsort oracle (best first: higher value, then lower id).

With one column and queries of +-1, the inner-product kernel's value of row ``i``
is exactly ``values[i] * sign`` (+ bias): whatever is pushed is known exactly, so
the heap's selection and order are checked bit for bit, through every push path
(one-query stream, 4-query tiles, query panels, the direct kernels) and the
merge of per-thread heaps.
"""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

_core = pytest.importorskip("fastimg._core", reason="compiled core not built (run `make install`)")

finite32 = st.floats(allow_nan=False, allow_infinity=True, width=32)
tied32 = st.sampled_from([0.0, -0.0, 1.0, -1.0, 2.5, np.inf, -np.inf])
values_lists = st.one_of(st.lists(finite32, max_size=60), st.lists(tied32, max_size=80))


def oracle_topk(values: np.ndarray, k: int, mask=None):
    """(ids, values) of the k best by NumPy: lexsort on (-value, id); padded with (-1, -inf)."""
    ids = np.arange(len(values)) if mask is None else np.flatnonzero(~np.asarray(mask, bool))
    order = np.lexsort((ids, -values[ids]))[:k]
    out_i = np.full(k, -1, np.int64)
    out_v = np.full(k, -np.inf, np.float32)
    out_i[:order.size] = ids[order]
    out_v[:order.size] = values[ids[order]]
    return out_i, out_v


def test_oracle_hand_computed():
    i, v = oracle_topk(np.array([3, 1, 3, 2, 5], np.float32), 6, mask=[0, 0, 0, 1, 0])
    assert i.tolist() == [4, 0, 2, 1, -1, -1] and v.tolist() == [5, 3, 3, 1, -np.inf, -np.inf]


def test_hand_computed_example():
    x = np.array([[3], [1], [3], [2], [5]], dtype=np.float32)
    ids, vals = _core.fused_topk(x, np.ones((1, 1), np.float32), 3)
    assert ids.tolist() == [[4, 0, 2]]          # 5, then the two 3s by lower id
    assert vals.tolist() == [[5.0, 3.0, 3.0]]


def test_padding_when_k_exceeds_n():
    x = np.array([[1.5], [-2.0]], dtype=np.float32)
    ids, vals = _core.fused_topk(x, np.ones((1, 1), np.float32), 4)
    assert ids.tolist() == [[0, 1, -1, -1]]
    assert vals[0, :2].tolist() == [1.5, -2.0] and np.isneginf(vals[0, 2:]).all()


@settings(max_examples=300, deadline=None)
@given(values=values_lists, k=st.integers(1, 70), data=st.data())
def test_inner_product_pushes_match_lexsort(values, k, data):
    """Every inner-product path (stream, tiles, panels), any thread count and chunk
    size, bias and mask: the heap keeps exactly NumPy's top k, in its order."""
    x = np.array(values, dtype=np.float32).reshape(-1, 1)
    n = x.shape[0]
    signs = np.array(data.draw(st.lists(st.sampled_from([1.0, -1.0]), min_size=1, max_size=20)), np.float32)
    threads = data.draw(st.integers(1, 3))
    chunk = data.draw(st.integers(1, max(n, 1)))
    panels = data.draw(st.sampled_from([-1, 0, 8, 16]))
    bias = data.draw(st.none() | st.lists(st.floats(-2.0**100, 2.0**100, width=32), min_size=n, max_size=n))
    mask = data.draw(st.none() | st.lists(st.booleans(), min_size=n, max_size=n))
    b = None if bias is None else np.array(bias, np.float32)
    m = None if mask is None else np.array(mask, np.uint8)
    ids, vals = _core.fused_topk(x, signs[:, None], k, bias=b, mask=m, n_threads=threads, chunk_rows=chunk,
                                 panels=panels)
    for j, sign in enumerate(signs):
        v = x[:, 0] * sign if b is None else x[:, 0] * sign + b
        exp_i, exp_v = oracle_topk(v, k, mask)
        assert ids[j].tolist() == exp_i.tolist()
        np.testing.assert_array_equal(vals[j], exp_v)


@settings(max_examples=150, deadline=None)
@given(values=values_lists, k=st.integers(1, 70), nq=st.integers(1, 4), threads=st.integers(1, 3),
       data=st.data())
def test_direct_kernel_pushes_match_lexsort(values, k, nq, threads, data):
    """The direct kernels' push path: intersect with a +inf query scores each row
    as its own value (min(x, inf) = x)."""
    x = np.array(values, dtype=np.float32).reshape(-1, 1)
    n = x.shape[0]
    chunk = data.draw(st.integers(1, max(n, 1)))
    mask = data.draw(st.none() | st.lists(st.booleans(), min_size=n, max_size=n))
    q = np.full((nq, 1), np.inf, np.float32)
    zeros = np.zeros((nq, 1), np.float32)
    ids, vals = _core.fused_topk(x, q, k, kind=_core.KIND_INTERSECT, aux=zeros, active=zeros.astype(np.int32),
                                 n_active=np.zeros(nq, np.int64), n_threads=threads, chunk_rows=chunk,
                                 mask=None if mask is None else np.array(mask, np.uint8))
    exp_i, exp_v = oracle_topk(x[:, 0], k, mask)
    for j in range(nq):
        assert ids[j].tolist() == exp_i.tolist()
        np.testing.assert_array_equal(vals[j], exp_v)
