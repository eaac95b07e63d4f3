"""Direct tests of fastimg._core kernels against NumPy equivalents."""
from __future__ import annotations

import numpy as np
import pytest

_core = pytest.importorskip("fastimg._core", reason="compiled core not built (run `make install`)")


def lexsort_topk(values: np.ndarray, k: int, ids=None):
    ids = np.arange(len(values)) if ids is None else ids
    order = np.lexsort((ids, -values))[:k]
    return values[order], ids[order]


@pytest.mark.parametrize("shape", [(1, 1), (7, 3), (1000, 72), (333, 257)])
@pytest.mark.parametrize("threads", [1, 2])
def test_read_sum_equals_numpy_sum(shape, threads):
    x = np.random.default_rng(sum(shape)).random(shape, dtype=np.float32)
    assert _core.read_sum(x, threads, chunk_rows=50) == pytest.approx(float(x.sum(dtype=np.float64)), rel=1e-5)


@pytest.mark.parametrize("threads", [1, 2])
def test_heap_push_block_matches_lexsort(threads):
    rng = np.random.default_rng(3)
    n, nq, kk = 1000, 5, 13
    scores = rng.integers(0, 20, size=(nq, n)).astype(np.float32)  # many ties
    bias = rng.integers(0, 3, size=n).astype(np.float32)
    mask = (rng.random(n) < 0.1).astype(np.uint8)
    hv, hi = _core.heap_new(nq, kk)
    for r0 in range(0, n, 300):  # several blocks, as the GEMM path feeds them
        _core.heap_push_block(np.ascontiguousarray(scores[:, r0:r0 + 300]), r0, hv, hi, bias=bias, mask=mask,
                              n_threads=threads)
    _core.heap_finish(hv, hi, n_threads=threads)
    keep = np.flatnonzero(mask == 0)
    for q in range(nq):
        v, i = lexsort_topk((scores[q] + bias)[keep], kk, keep)
        np.testing.assert_array_equal(hi[q], i)
        np.testing.assert_array_equal(hv[q], v)


def test_fused_topk_bias_mask_and_padding():
    rng = np.random.default_rng(4)
    x = rng.random((50, 9), dtype=np.float32)
    q = rng.random((3, 9), dtype=np.float32)
    bias = rng.random(50, dtype=np.float32)
    mask = np.zeros(50, np.uint8)
    mask[::2] = 1
    vals, ids = _core.fused_topk(x, q, 30, bias=bias, mask=mask, n_threads=2, chunk_rows=4)
    s = q.astype(np.float64) @ x.T.astype(np.float64) + bias
    keep = np.flatnonzero(mask == 0)  # 25 rows: 5 empty slots
    for i in range(3):
        ref_v, ref_i = lexsort_topk(s[i][keep], 25, keep)
        np.testing.assert_array_equal(ids[i, :25], ref_i)
        np.testing.assert_allclose(vals[i, :25], ref_v, rtol=1e-5)
        assert (ids[i, 25:] == -1).all() and np.isneginf(vals[i, 25:]).all()


def test_fused_topk_out_arrays_checked():
    x = np.ones((4, 2), dtype=np.float32)
    with pytest.raises(ValueError, match=r"out_values and out_ids must both have shape \(1, 2\)"):
        _core.fused_topk(x, x[:1], 2, out_values=np.empty((1, 3), np.float32), out_ids=np.empty((1, 3), np.int64))


def test_kernels_reject_wrong_layout_instead_of_crashing():
    """The typed memoryviews refuse non-contiguous / wrong-dtype buffers."""
    x = np.ones((4, 6), dtype=np.float32)
    with pytest.raises(ValueError, match="contiguous"):
        _core.fused_topk(x[:, ::2], x[:1, ::2].copy(), 2)
    with pytest.raises(ValueError, match="Buffer dtype mismatch"):
        _core.fused_topk(x.astype(np.float64), x[:1], 2)


def test_direct_calls_with_inconsistent_shapes_raise():
    x = np.ones((4, 3), dtype=np.float32)
    q = np.ones((2, 3), dtype=np.float32)
    with pytest.raises(ValueError, match="queries must have 3 columns; got 2"):
        _core.fused_topk(x, q[:, :2].copy(), 2)
    with pytest.raises(ValueError, match="the direct kinds need aux, active and n_active"):
        _core.fused_topk(x, q, 2, kind=_core.KIND_CHISQR)
    with pytest.raises(ValueError, match="kind must be in 0..5"):
        _core.fused_topk(x, q, 2, kind=9)
    with pytest.raises(ValueError, match="bias must have 4 entries; got 3"):
        _core.fused_topk(x, q, 2, bias=np.zeros(3, np.float32))
    with pytest.raises(ValueError, match="active ids in"):
        _core.fused_topk(x, q, 2, kind=_core.KIND_KL_DIV, aux=q, active=np.full((2, 3), 7, np.int32),
                         n_active=np.full(2, 3, np.int64))
    hv, hi = _core.heap_new(2, 5)
    with pytest.raises(ValueError, match="bias and mask must cover rows 2..4"):
        _core.heap_push_block(q.copy(), 2, hv, hi, mask=np.zeros(4, np.uint8))
    with pytest.raises(ValueError, match=r"heaps must have shape \(1, 5\)"):
        _core.heap_push_block(q[:1].copy(), 0, hv, hi)


# ---------------------------------------------------------------------------
# the query-panel batch kernel (KIND_IP, panels of PANEL_WIDTH queries)
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("n, d, nq, kk", [
    (1, 1, 6, 1),        # one row, one column
    (5, 3, 7, 9),        # kk > n: padding slots
    (97, 8, 16, 10),     # exactly one panel, n not a multiple of the 6-row tile
    (250, 17, 17, 18),   # one query into a second panel, odd d
    (1000, 72, 100, 18), # the hsv72 shape, 7 panels
])
@pytest.mark.parametrize("with_bias_mask", [False, True])
@pytest.mark.parametrize("width", [8, 16])
def test_panel_kernel_equals_numpy_lexsort_exactly(n, d, nq, kk, with_bias_mask, width):
    """Small integers make every float32 sum exact, so the oracle is exact and
    full of ties: ids must come out in (value desc, id asc) order."""
    rng = np.random.default_rng(n + d + nq)
    x = rng.integers(0, 4, size=(n, d)).astype(np.float32)
    q = rng.integers(0, 4, size=(nq, d)).astype(np.float32)
    bias = rng.integers(0, 3, size=n).astype(np.float32) if with_bias_mask else None
    mask = (rng.random(n) < 0.2).astype(np.uint8) if with_bias_mask else None
    s = q.astype(np.float64) @ x.T.astype(np.float64) + (0.0 if bias is None else bias)
    keep = np.arange(n) if mask is None else np.flatnonzero(mask == 0)
    m = min(kk, keep.size)
    for threads in (1, 2):
        vals, ids = _core.fused_topk(x, q, kk, bias=bias, mask=mask, n_threads=threads, chunk_rows=7, panels=width)
        for i in range(nq):
            ref_v, ref_i = lexsort_topk(s[i][keep], m, keep)
            np.testing.assert_array_equal(ids[i, :m], ref_i)
            np.testing.assert_array_equal(vals[i, :m], ref_v.astype(np.float32))
            assert (ids[i, m:] == -1).all() and np.isneginf(vals[i, m:]).all()


@pytest.mark.parametrize("width", [8, 16])
def test_panel_kernel_independent_of_threads_and_chunks_on_real_valued_data(width):
    rng = np.random.default_rng(11)
    x = rng.standard_normal((3001, 256)).astype(np.float32)
    q = rng.standard_normal((40, 256)).astype(np.float32)
    runs = [_core.fused_topk(x, q, 25, n_threads=t, chunk_rows=c, panels=width)
            for t, c in ((1, 3001), (2, 64), (2, 6))]
    for v, i in runs[1:]:
        np.testing.assert_array_equal(i, runs[0][1])
        np.testing.assert_array_equal(v, runs[0][0])
    # and it agrees with float64 brute force up to float32 rounding
    s = q.astype(np.float64) @ x.T.astype(np.float64)
    ref = np.sort(s, axis=1)[:, ::-1][:, :25]
    np.testing.assert_allclose(runs[0][0], ref, rtol=1e-4, atol=1e-3)


@pytest.mark.parametrize("nq", [1, 2, 5, 8, 9, 13])
def test_every_batch_kernel_picks_the_same_rows(nq):
    """Auto choice, both panel widths and the 4-query tiles agree (exact sums)."""
    rng = np.random.default_rng(12 + nq)
    x = rng.integers(0, 5, size=(2000, 40)).astype(np.float32)
    q = rng.integers(0, 5, size=(nq, 40)).astype(np.float32)
    ref_v, ref_i = _core.fused_topk(x, q, 12, n_threads=1, panels=0)
    for panels in (-1, 8, 16):
        v, i = _core.fused_topk(x, q, 12, n_threads=2, chunk_rows=250, panels=panels)  # 8 chunks
        np.testing.assert_array_equal(i, ref_i)
        np.testing.assert_array_equal(v, ref_v)


def test_panels_argument_is_checked():
    x = np.ones((4, 3), dtype=np.float32)
    with pytest.raises(ValueError, match="panels must be -1, 0, 8 or 16; got 4"):
        _core.fused_topk(x, x[:2], 2, panels=4)


def test_huge_chunk_rows_and_empty_requests():
    x = np.arange(30, dtype=np.float32).reshape(10, 3)
    q = np.ones((7, 3), dtype=np.float32)
    for panels in (0, 8, 16):
        _, ids = _core.fused_topk(x, q, 3, chunk_rows=2**63 - 5, panels=panels)
        assert (ids == [9, 8, 7]).all()
    ov, oi = np.empty((7, 0), np.float32), np.empty((7, 0), np.int64)
    v, i = _core.fused_topk(x, q, 0, out_values=ov, out_ids=oi)
    assert v is ov and i is oi


def test_aligned_rows_are_64_byte_aligned_whole_lines():
    a = _core._aligned_rows(3, 17, np.inf)
    assert a.shape == (3, 32) and a.ctypes.data % 64 == 0 and np.isinf(a).all()


def test_panels_used_automatically_only_where_they_run_as_avx2():
    """Without 16 ymm registers a panel tile spills (3-8x slower than the tiles), so
    the automatic choice may use panels only where PANELS_FAST; on an x86-64 Linux
    CPU with AVX2 + FMA the default build (GCC target_clones) has them."""
    import platform

    assert isinstance(_core.PANELS_FAST, bool)
    try:
        with open("/proc/cpuinfo") as fh:
            flags = next((line for line in fh if line.startswith("flags")), "").split()
    except OSError:
        flags = []
    if platform.machine() == "x86_64" and {"avx2", "fma"} <= set(flags):
        assert _core.PANELS_FAST
    if not _core.PANELS_FAST:  # auto then equals the tiles, whatever the batch size
        x = np.random.default_rng(1).random((500, 16), dtype=np.float32)
        q = np.random.default_rng(2).random((20, 16), dtype=np.float32)
        np.testing.assert_array_equal(_core.fused_topk(x, q, 5)[1], _core.fused_topk(x, q, 5, panels=0)[1])
