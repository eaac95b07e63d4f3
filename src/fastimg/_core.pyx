# cython: language_level=3
# The other directives (boundscheck, wraparound, cdivision, initializedcheck) are
# set by setup.py: off, and on with FASTIMG_DEBUG=1.  A directive written here
# would override setup.py's and make the debug build check nothing.
"""Compiled kernels of fastimg: ``nogil`` code only, no validation.

Callers (``fastimg.search``) validate shapes, dtypes, contiguity, finiteness and
ranges first; these functions trust their arguments (beyond O(1) shape checks
that keep a direct call from crashing the process).

Selection keeps, per query, the ``kk`` *best* (id, value) pairs under the total
order "higher value first, then lower id", in a bounded min-heap whose root is the
worst kept pair (``fi_heap.h``, declared in ``_heap.pxd``).  Because the order is
total and every row's value is computed by the same arithmetic whatever thread
processes it, results do not depend on the thread count.  Values are "higher is
better": callers negate distances.

The scanning kernels are plain C in ``fi_scan.h`` (declared in ``_scan.pxd``),
compiled twice through ``target_clones`` on x86-64 Linux (x86-64-v3: AVX2 + FMA,
and a baseline), so a portable build still runs AVX2 code where the CPU has it.
The reduced-precision kernels (``fi_lowp.h``, ``_lowp.pxd``: :func:`i8_topk`,
:func:`f16_topk`) are compiled once per target (scalar, AVX2, AVX-512 VNNI,
AVX-VNNI) with ``target`` attributes and picked at run time
(``__builtin_cpu_supports``; ``LOWP_BEST``); every target computes the same values.
Every function here returns ``(ids, values)``, the order of every search layer.
"""
cimport openmp
from cython.parallel cimport parallel, prange, threadid
from libc.stdint cimport int8_t, int16_t, int32_t, int64_t, uint8_t, uint16_t
from libc.string cimport memset

from fastimg._heap cimport fi_heap_init, fi_heap_push, fi_heap_sort
from fastimg._lowp cimport (FI_LP_AVX2, FI_LP_N_TARGETS, FI_LP_PW, FI_LP_SCALAR, FI_LP_TILE_LCM, FI_LP_TILE_ROWS,
                            fi_f16_rows_panels, fi_f16_rows_q1, fi_i8_rows_panels, fi_i8_rows_q1, fi_lp_best,
                            fi_lp_compiled, fi_lp_cpu_has)
from fastimg._rescore cimport (FI_RS_BHATTACHARYYA, FI_RS_COSINE, FI_RS_L2, FI_RS_N, FI_RS_PEARSON, fi_rs_pair,
                               fi_rs_query, fi_rs_score, fi_rs_topk)
from fastimg._scan cimport (FI_HAVE_VEC, FI_KIND_CHISQR, FI_KIND_CHISQR_ALT, FI_KIND_INTERSECT, FI_KIND_IP,
                            FI_KIND_KL_DIV, FI_KIND_L1, FI_N_KINDS, FI_TILE_LCM, fi_direct_rows, fi_ip_rows_panels8,
                            fi_ip_rows_panels16, fi_ip_rows_q1, fi_ip_rows_q4, fi_kind, fi_panels_fast, fi_sum_rows)

import numpy as np

#: panel widths of the batch kernel; ``fused_topk`` (``panels=-1``) uses narrow
#: panels for batches of ``PANEL_MIN_QUERIES`` .. ``PANEL_NARROW_MAX`` queries and
#: wide panels above (measured in bench/search.md)
PANEL_WIDTHS = (8, 16)
#: True when the panel kernels run as AVX2 + FMA code on this CPU; otherwise the
#: automatic choice keeps the 2 x 4 tiles (the panels spill without 16 ymm registers)
PANELS_FAST = bool(fi_panels_fast())
PANEL_MIN_QUERIES = 6
PANEL_NARROW_MAX = 8

#: what :func:`fused_topk` computes (``kind``), the ``fi_kind`` enum of fi_scan.h;
#: ``fastimg.metrics.Metric.kernel`` names the one of each metric
KIND_IP = FI_KIND_IP
KIND_CHISQR = FI_KIND_CHISQR
KIND_CHISQR_ALT = FI_KIND_CHISQR_ALT
KIND_INTERSECT = FI_KIND_INTERSECT
KIND_KL_DIV = FI_KIND_KL_DIV
KIND_L1 = FI_KIND_L1


def openmp_max_threads() -> int:
    """Number of threads OpenMP would use by default (1 if built without OpenMP)."""
    return openmp.omp_get_max_threads()


def openmp_num_procs() -> int:
    """Number of processors OpenMP sees."""
    return openmp.omp_get_num_procs()


def _aligned_rows(Py_ssize_t nrows, Py_ssize_t ncols, float fill):
    """float32 (nrows, >= ncols) filled with ``fill``, each row whole 64-byte lines
    starting on a 64-byte boundary."""
    cdef Py_ssize_t stride = (ncols + 15) // 16 * 16
    buf = np.full(nrows * stride + 16, fill, dtype=np.float32)
    off = (-buf.ctypes.data % 64) // 4
    return buf[off:off + nrows * stride].reshape(nrows, stride)


cdef inline const float* _fptr(const float[::1] a) noexcept nogil:
    return &a[0] if a.shape[0] > 0 else NULL


cdef inline const uint8_t* _mptr(const uint8_t[::1] a) noexcept nogil:
    return &a[0] if a.shape[0] > 0 else NULL


cdef void _init_heaps(float[:, :, ::1] hv, int64_t[:, :, ::1] hi, Py_ssize_t nt, Py_ssize_t nq,
                      Py_ssize_t kk) noexcept nogil:
    """Every per-thread heap (nt, nq, kk) empty."""
    cdef Py_ssize_t t, qi
    for t in range(nt):
        for qi in range(nq):
            fi_heap_init(&hv[t, qi, 0], &hi[t, qi, 0], kk)


cdef void _merge_heaps(float[:, :, ::1] hv, int64_t[:, :, ::1] hi, int nt, Py_ssize_t nq,
                       Py_ssize_t kk) noexcept nogil:
    """Merge the per-thread heaps into thread 0's, then sort each query's (best first)."""
    cdef Py_ssize_t qi, e
    cdef int t
    for qi in prange(nq, num_threads=nt, schedule="static"):
        for t in range(1, nt):
            for e in range(kk):
                fi_heap_push(&hv[0, qi, 0], &hi[0, qi, 0], kk, hv[t, qi, e], hi[t, qi, e])
        fi_heap_sort(&hv[0, qi, 0], &hi[0, qi, 0], kk)


def fused_topk(
    const float[:, ::1] data,
    const float[:, ::1] queries,
    Py_ssize_t kk,
    int kind=FI_KIND_IP,
    const float[::1] bias=None,
    const uint8_t[::1] mask=None,
    const float[:, ::1] aux=None,
    const int32_t[:, ::1] active=None,
    const int64_t[::1] n_active=None,
    int n_threads=1,
    Py_ssize_t chunk_rows=2048,
    int64_t[:, ::1] out_ids=None,
    float[:, ::1] out_values=None,
    int panels=-1,
):
    """Top-``kk`` rows per query in one fused scoring + selection pass.

    Parameters
    ----------
    data : float32 (N, D), C-contiguous (read-only memmaps accepted)
        Rows (prepared rows for ``kind == KIND_IP``).
    queries : float32 (Q, D), C-contiguous
        Queries (prepared queries for ``kind == KIND_IP``).
    kk : int
        Number of results per query, ``0 <= kk``; slots beyond the available rows
        come back with id -1 and value -inf.
    kind : int
        ``KIND_IP`` (value = query . row + bias[row]) or one of the direct kinds.
    bias : float32 (N,) or None
    mask : uint8 (N,) or None
        Rows with a non-zero mask are skipped.
    aux, active, n_active
        Per-query auxiliary data of the direct kinds (see ``fastimg.search``).
    n_threads : int
        OpenMP threads; the rows are cut into ``chunk_rows`` chunks, statically
        distributed, each thread keeping its own heaps (merged at the end).
    chunk_rows : int
    out_ids, out_values : (Q, kk) arrays, optional
        Written in place (at the very end) and returned instead of new arrays.
    panels : int
        ``KIND_IP`` only: the register-blocked query-panel kernel with panels of
        8 or 16 queries (12 x 8 or 6 x 16 tiles), 0 for the older 4-query tiles,
        -1 (default) to choose by batch size (``PANEL_MIN_QUERIES``,
        ``PANEL_NARROW_MAX``; a single query streams each row once), panels only
        where ``PANELS_FAST``.

    Returns
    -------
    ids : int64 (Q, kk)
        Best first; slots beyond the available rows hold -1.
    values : float32 (Q, kk)
        The ("higher is better") values of ``ids``; -inf in empty slots.

    Notes
    -----
    NumPy equivalent for ``KIND_IP`` (up to float32 rounding)::

        s = queries @ data.T + bias; s[:, mask != 0] = -inf
        order = np.lexsort((ids, -s)) per query, first kk
    """
    cdef Py_ssize_t n = data.shape[0], d = data.shape[1], nq = queries.shape[0]
    # shape checks only (O(1)): they keep a direct call from crashing the process
    if queries.shape[1] != d:
        raise ValueError(f"queries must have {d} columns; got {queries.shape[1]}")
    if kk < 0 or chunk_rows < 1 or n_threads < 1:
        raise ValueError(f"need kk >= 0, chunk_rows >= 1, n_threads >= 1; got {kk}, {chunk_rows}, {n_threads}")
    if kind < 0 or kind >= FI_N_KINDS:
        raise ValueError(f"kind must be one of the KIND_* constants (0..{FI_N_KINDS - 1}); got {kind}")
    if bias is not None and bias.shape[0] < n:
        raise ValueError(f"bias must have {n} entries; got {bias.shape[0]}")
    if mask is not None and mask.shape[0] < n:
        raise ValueError(f"mask must have {n} entries; got {mask.shape[0]}")
    if kind != FI_KIND_IP:
        if aux is None or active is None or n_active is None:
            raise ValueError("the direct kinds need aux, active and n_active")
        if aux.shape[0] != nq or aux.shape[1] != d or active.shape[0] != nq or active.shape[1] != d \
                or n_active.shape[0] != nq:
            raise ValueError(f"aux and active must have shape ({nq}, {d}) and n_active ({nq},)")
        if kind == FI_KIND_KL_DIV and nq > 0:
            na = np.asarray(n_active)
            act = np.asarray(active)
            if na.min() < 0 or na.max() > d or act.min() < 0 or act.max() >= d:
                raise ValueError(f"n_active must be in [0, {d}] and active ids in [0, {d - 1}]")
    chunk_rows = min(chunk_rows, max(n, 1))  # no overflow below, whatever was passed
    cdef Py_ssize_t n_chunks = (n + chunk_rows - 1) // chunk_rows if n > 0 else 0
    cdef int nt = <int>max(1, min(<Py_ssize_t>n_threads, n_chunks))
    cdef Py_ssize_t c, r0, r1, t, qi, e, qb
    cdef int tid = 0
    cdef const float* pbias = _fptr(bias) if bias is not None else NULL
    cdef const uint8_t* pmask = _mptr(mask) if mask is not None else NULL
    cdef const float* paux = NULL
    cdef const int32_t* pact = NULL
    cdef const int64_t* pnact = NULL
    if kind != FI_KIND_IP:
        paux = &aux[0, 0]
        pact = &active[0, 0]
        pnact = &n_active[0]

    if panels not in (-1, 0, 8, 16):
        raise ValueError(f"panels must be -1, 0, 8 or 16; got {panels}")
    cdef int pw = panels
    if panels < 0:
        pw = 0 if nq < PANEL_MIN_QUERIES or not PANELS_FAST else (8 if nq <= PANEL_NARROW_MAX else 16)
    if kind != FI_KIND_IP or nq == 0 or not FI_HAVE_VEC:
        pw = 0
    cdef Py_ssize_t npan = (nq + pw - 1) // pw if pw else 0
    cdef float[:, :, ::1] qt
    cdef float[:, ::1] thr
    if pw:
        # queries transposed into zero-padded panels: qt[p, j, l] = queries[p * pw + l, j]
        qpad = np.zeros((npan * pw, d), dtype=np.float32)
        qpad[:nq] = queries
        qt = np.ascontiguousarray(qpad.reshape(npan, pw, d).transpose(0, 2, 1))
        # per-thread heap-root values; padding lanes never admit a row (rows of
        # whole 64-byte lines from a 64-byte boundary: threads share no line)
        thr_arr = _aligned_rows(nt, npan * pw, np.inf)
        thr_arr[:, :nq] = -np.inf
        thr = thr_arr
        if chunk_rows % FI_TILE_LCM:  # whole tiles per chunk
            chunk_rows += FI_TILE_LCM - chunk_rows % FI_TILE_LCM
            n_chunks = (n + chunk_rows - 1) // chunk_rows if n > 0 else 0
            nt = <int>max(1, min(<Py_ssize_t>n_threads, n_chunks))
    heap_v_arr = np.empty((nt, nq, kk), dtype=np.float32)
    heap_i_arr = np.empty((nt, nq, kk), dtype=np.int64)
    cdef float[:, :, ::1] hv = heap_v_arr
    cdef int64_t[:, :, ::1] hi = heap_i_arr
    cdef const float* X = &data[0, 0] if n > 0 else NULL
    cdef const float* Qp = &queries[0, 0] if nq > 0 else NULL
    cdef bint has_out = out_ids is not None or out_values is not None
    if has_out:
        if out_ids is None or out_values is None or out_values.shape[0] != nq or out_values.shape[1] != kk \
                or out_ids.shape[0] != nq or out_ids.shape[1] != kk:
            raise ValueError(f"out_ids and out_values must both have shape ({nq}, {kk})")
    if nq == 0 or kk == 0:
        if has_out:
            return out_ids.base, out_values.base
        return heap_i_arr[0], heap_v_arr[0]

    with nogil:
        _init_heaps(hv, hi, nt, nq, kk)
        with parallel(num_threads=nt):
            tid = threadid()
            for c in prange(n_chunks, schedule="static"):
                r0 = c * chunk_rows
                r1 = min(n, r0 + chunk_rows)
                if pw == 16:
                    fi_ip_rows_panels16(X, d, r0, r1, &qt[0, 0, 0], npan, nq, pbias, pmask,
                                        &hv[tid, 0, 0], &hi[tid, 0, 0], kk, &thr[tid, 0])
                elif pw == 8:
                    fi_ip_rows_panels8(X, d, r0, r1, &qt[0, 0, 0], npan, nq, pbias, pmask,
                                       &hv[tid, 0, 0], &hi[tid, 0, 0], kk, &thr[tid, 0])
                elif kind == FI_KIND_IP:
                    qb = 0
                    while qb + 4 <= nq:
                        fi_ip_rows_q4(X, d, r0, r1, Qp + qb * d, pbias, pmask,
                                      &hv[tid, qb, 0], &hi[tid, qb, 0], kk)
                        qb = qb + 4
                    while qb < nq:
                        fi_ip_rows_q1(X, d, r0, r1, Qp + qb * d, pbias, pmask,
                                      &hv[tid, qb, 0], &hi[tid, qb, 0], kk)
                        qb = qb + 1
                else:
                    fi_direct_rows(<fi_kind>kind, X, d, r0, r1, Qp, paux, pact, pnact, nq, pmask,
                                   &hv[tid, 0, 0], &hi[tid, 0, 0], kk)
        _merge_heaps(hv, hi, nt, nq, kk)
        if has_out:
            for qi in range(nq):
                for e in range(kk):
                    out_values[qi, e] = hv[0, qi, e]
                    out_ids[qi, e] = hi[0, qi, e]
    if has_out:
        return out_ids.base, out_values.base
    return heap_i_arr[0], heap_v_arr[0]


def read_sum(const float[:, ::1] data, int n_threads=1, Py_ssize_t chunk_rows=4096) -> float:
    """Sum of all elements, read like :func:`fused_topk` reads rows (OpenMP over
    row chunks, vector loads).  The memory-read ceiling of the benchmarks.

    NumPy equivalent: ``float(data.sum(dtype=np.float64))`` (up to float32 rounding).
    """
    cdef Py_ssize_t n = data.shape[0], d = data.shape[1], c, r0
    cdef Py_ssize_t n_chunks = (n + chunk_rows - 1) // chunk_rows
    cdef int nt = <int>max(1, min(<Py_ssize_t>n_threads, n_chunks))
    cdef double total = 0.0
    if n == 0 or d == 0:
        return 0.0
    cdef const float* X = &data[0, 0]
    with nogil:
        for c in prange(n_chunks, num_threads=nt, schedule="static"):
            r0 = c * chunk_rows
            total += fi_sum_rows(X, d, r0, min(n, r0 + chunk_rows))
    return total


# ---------------------------------------------------------------------------
# re-scoring (fi_rescore.h): the exact float64 values of candidate rows
# ---------------------------------------------------------------------------

#: metrics :func:`rescore_rows` computes (``fastimg.search.rescore``'s compiled path);
#: the other metrics keep NumPy's ``fastimg.metrics.exact_scores_many``
RESCORE_COSINE = FI_RS_COSINE
RESCORE_PEARSON = FI_RS_PEARSON
RESCORE_L2 = FI_RS_L2
RESCORE_BHATTACHARYYA = FI_RS_BHATTACHARYYA


cdef inline int _rescore_query(const float[:, ::1] data, const float[:, ::1] queries,
                                const int64_t[:, ::1] cand, double[:, ::1] o, double[:, ::1] qs, int metric,
                                Py_ssize_t i) noexcept nogil:
    """Row ``i`` of :func:`rescore_rows`; returns how many of its ids were out of range (scored 0)."""
    cdef Py_ssize_t j, d = data.shape[1], n = data.shape[0]
    cdef int64_t r
    cdef int bad = 0
    fi_rs_query(metric, &queries[i, 0], d, &qs[i, 0])
    for j in range(cand.shape[1]):
        r = cand[i, j]
        if r < 0 or r >= n:
            bad += 1
            o[i, j] = 0.0
        else:
            o[i, j] = fi_rs_score(metric, &data[r, 0], &queries[i, 0], d, &qs[i, 0])
    return bad


def rescore_rows(const float[:, ::1] data, const float[:, ::1] queries, const int64_t[:, ::1] cand, int metric,
                 int n_threads=1):
    """float64 ``(Q, C)``: the metric's value of ``queries[i]`` against ``data[cand[i, j]]``,
    bit-identical to ``fastimg.metrics.exact_scores_many`` of the gathered rows (the
    same formulas, NumPy's pairwise summation order: fi_rescore.h), without
    gathering them.  ``metric``: a ``RESCORE_*`` constant.

    Raises IndexError for an id outside ``data`` (nothing else is validated)."""
    cdef Py_ssize_t nq = cand.shape[0], nc = cand.shape[1], d = data.shape[1], n = data.shape[0], i
    cdef int bad = 0
    if queries.shape[0] != nq or queries.shape[1] != d:
        raise ValueError(f"queries must have shape ({nq}, {d}); got ({queries.shape[0]}, {queries.shape[1]})")
    if metric < 0 or metric >= FI_RS_N:
        raise ValueError(f"unknown metric code {metric}")
    out = np.empty((nq, nc), dtype=np.float64)
    if nq == 0 or nc == 0:
        return out
    cdef double[:, ::1] o = out
    cdef double[:, ::1] qs = np.empty((nq, 2), dtype=np.float64)  # one row per query: no sharing between threads
    cdef int nt = <int>max(1, min(<Py_ssize_t>n_threads, nq // 32))
    if nt == 1:  # no thread team for a few queries
        with nogil:
            for i in range(nq):
                bad += _rescore_query(data, queries, cand, o, qs, metric, i)
        if bad:
            raise IndexError(f"candidate ids must be in [0, {n - 1}]")
        return out
    with nogil:
        for i in prange(nq, num_threads=nt, schedule="static"):
            bad += _rescore_query(data, queries, cand, o, qs, metric, i)
    if bad:
        raise IndexError(f"candidate ids must be in [0, {n - 1}]")
    return out


def rescore_topk(const float[:, ::1] data, const float[:, ::1] queries, const int64_t[:, ::1] cand, Py_ssize_t k,
                 int metric, bint higher, int n_threads=1):
    """``(ids int64 (Q, k), scores float32 (Q, k))``: the ``k`` best of each query's
    candidates by the metric's float64 value (:func:`rescore_rows`' values), best
    first (``higher``: a similarity), ties by the lower id, NaN last: the order of
    ``fastimg.search.rescore``'s stable argsort over ascending ids, in one call.

    Raises IndexError for an id outside ``data``, ValueError for bad shapes / k."""
    cdef Py_ssize_t nq = cand.shape[0], nc = cand.shape[1], d = data.shape[1], n = data.shape[0], i, j
    cdef Py_ssize_t bad = 0
    if queries.shape[0] != nq or queries.shape[1] != d:
        raise ValueError(f"queries must have shape ({nq}, {d}); got ({queries.shape[0]}, {queries.shape[1]})")
    if metric < 0 or metric >= FI_RS_N:
        raise ValueError(f"unknown metric code {metric}")
    if nq and not 1 <= k <= nc:
        raise ValueError(f"k must be in [1, {nc}]; got {k}")
    out_i = np.empty((nq, k), dtype=np.int64)
    out_s = np.empty((nq, k), dtype=np.float32)
    if nq == 0:
        return out_i, out_s
    cdef int64_t[:, ::1] oi = out_i
    cdef float[:, ::1] os = out_s
    with nogil:
        for i in range(nq):
            for j in range(nc):
                if cand[i, j] < 0 or cand[i, j] >= n:
                    bad += 1
    if bad:
        raise IndexError(f"candidate ids must be in [0, {n - 1}]")
    cdef int nt = <int>max(1, min(<Py_ssize_t>n_threads, nq // 32))
    scratch_arr = np.empty((nt, nc * sizeof(fi_rs_pair)), dtype=np.uint8)
    cdef uint8_t[:, ::1] scratch = scratch_arr
    cdef const float* X = &data[0, 0]
    if nt == 1:  # no thread team for one query (Index.search)
        with nogil:
            for i in range(nq):
                fi_rs_topk(metric, higher, X, d, &queries[i, 0], &cand[i, 0], nc, k, &oi[i, 0], &os[i, 0],
                           <fi_rs_pair*>&scratch[0, 0])
        return out_i, out_s
    with nogil, parallel(num_threads=nt):
        for i in prange(nq, schedule="static"):
            fi_rs_topk(metric, higher, X, d, &queries[i, 0], &cand[i, 0], nc, k, &oi[i, 0], &os[i, 0],
                       <fi_rs_pair*>&scratch[threadid(), 0])
    return out_i, out_s


# ---------------------------------------------------------------------------
# reduced-precision scans (fi_lowp.h): candidate selection on int8 / float16 rows
# ---------------------------------------------------------------------------

#: names of the dispatch targets of the reduced-precision kernels, by FI_LP_* value
LOWP_TARGETS = ("scalar", "avx2", "avx512", "avxvnni")
#: the target the reduced-precision kernels use on this CPU (``target=-1``)
LOWP_BEST = LOWP_TARGETS[fi_lp_best()]
#: batches of at least this many queries go through the int8 / float16 panels
#: (``panels=-1``); smaller ones scan each chunk (kept in L2) once per query
#: (measured crossovers, bench/search.md)
I8_PANEL_MIN_QUERIES = 6
F16_PANEL_MIN_QUERIES = 8


def lowp_target_info() -> dict:
    """``{target name: (compiled in, runs on this CPU)}`` of the reduced-precision kernels."""
    return {name: (bool(fi_lp_compiled(t)), bool(fi_lp_cpu_has(t))) for t, name in enumerate(LOWP_TARGETS)}


cdef struct _LpJob:
    int prec              # 0: int8, 1: float16
    int target
    int pw                # 0: one query at a time; FI_LP_PW: panels
    const uint8_t* X8
    const uint16_t* X16
    Py_ssize_t ld         # row stride (elements)
    const int8_t* Q8      # int8 queries (nq, ld) (panels: the packed layout, in QT)
    const int16_t* Q16    # the same widened (FI_LP_AVX2, one query at a time)
    const float* Qf       # float16 kernels: float32 queries (nq, ld)
    const void* QT        # packed panels
    Py_ssize_t nq
    Py_ssize_t npan
    const float* qs
    const int32_t* qoff
    const float* alpha
    const float* rscale
    const float* err
    const float* bias
    const uint8_t* mask
    Py_ssize_t kk


cdef void _lp_rows(const _LpJob* j, Py_ssize_t r0, Py_ssize_t r1, float* hv, int64_t* hi, float* thr,
                   void* scratch) noexcept nogil:
    cdef Py_ssize_t qi, kk = j.kk
    if j.pw:
        if j.prec == 0:
            fi_i8_rows_panels(j.target, j.X8, j.ld, r0, r1, j.QT, j.npan, j.nq, j.qs, j.qoff, j.alpha, j.rscale,
                              j.err, j.bias, j.mask, hv, hi, kk, thr, scratch)
        else:
            fi_f16_rows_panels(j.target, j.X16, j.ld, r0, r1, <const float*>j.QT, j.npan, j.nq, j.rscale, j.alpha,
                               j.err, j.bias, j.mask, hv, hi, kk, thr, scratch)
        return
    for qi in range(j.nq):
        if j.prec == 0:
            fi_i8_rows_q1(j.target, j.X8, j.ld, r0, r1, j.Q8 + qi * j.ld, j.Q16 + qi * j.ld if j.Q16 != NULL else NULL,
                          j.qoff[qi], j.qs[qi], j.alpha[qi], j.rscale, j.err, j.bias, j.mask, hv + qi * kk,
                          hi + qi * kk, kk)
        else:
            fi_f16_rows_q1(j.target, j.X16, j.ld, r0, r1, j.Qf + qi * j.ld, j.rscale, j.alpha[qi], j.err, j.bias,
                           j.mask, hv + qi * kk, hi + qi * kk, kk)


cdef int _lp_check(Py_ssize_t n, Py_ssize_t nq, Py_ssize_t kk, int n_threads, Py_ssize_t chunk_rows, int panels,
                   int target, dict rows, dict per_query) except -1:
    """O(1) shape checks of the reduced-precision entry points; returns the target."""
    if kk < 0 or chunk_rows < 1 or n_threads < 1:
        raise ValueError(f"need kk >= 0, chunk_rows >= 1, n_threads >= 1; got {kk}, {chunk_rows}, {n_threads}")
    if panels not in (-1, 0, FI_LP_PW):
        raise ValueError(f"panels must be -1, 0 or {FI_LP_PW}; got {panels}")
    for name, a in rows.items():
        if a is not None and a.shape[0] < n:
            raise ValueError(f"{name} must have {n} entries; got {a.shape[0]}")
    for name, a in per_query.items():
        if a.shape[0] < nq:
            raise ValueError(f"{name} must have {nq} entries (one per query); got {a.shape[0]}")
    if target == -1:
        return fi_lp_best()
    if not 0 <= target < FI_LP_N_TARGETS or not fi_lp_cpu_has(target):
        raise ValueError(f"target {target} is not one this CPU runs; available: "
                         f"{[i for i in range(FI_LP_N_TARGETS) if fi_lp_cpu_has(i)]} "
                         f"(names in LOWP_TARGETS)")
    return target


cdef object _lp_run(_LpJob* job, Py_ssize_t n, int n_threads, Py_ssize_t chunk_rows, Py_ssize_t scratch_bytes):
    """Chunked OpenMP scan of ``job`` with per-thread heaps; returns (ids, values)."""
    cdef Py_ssize_t nq = job.nq, kk = job.kk
    chunk_rows = min(chunk_rows, max(n, 1))
    if job.pw and chunk_rows % FI_LP_TILE_LCM:
        chunk_rows += FI_LP_TILE_LCM - chunk_rows % FI_LP_TILE_LCM
    cdef Py_ssize_t n_chunks = (n + chunk_rows - 1) // chunk_rows if n > 0 else 0
    cdef int nt = <int>max(1, min(<Py_ssize_t>n_threads, n_chunks))
    heap_v_arr = np.empty((nt, nq, kk), dtype=np.float32)
    heap_i_arr = np.empty((nt, nq, kk), dtype=np.int64)
    if nq == 0 or kk == 0:
        return heap_i_arr[0], heap_v_arr[0]
    cdef float[:, :, ::1] hv = heap_v_arr
    cdef int64_t[:, :, ::1] hi = heap_i_arr
    cdef Py_ssize_t npw = max(job.npan * FI_LP_PW, 1)
    thr_arr = _aligned_rows(nt, npw, np.inf)
    thr_arr[:, :nq] = -np.inf
    cdef float[:, ::1] thr = thr_arr
    cdef Py_ssize_t sstride = (max(scratch_bytes, 64) + 63) // 64 * 64
    scratch_arr = np.empty(nt * sstride + 64, dtype=np.uint8)
    cdef uint8_t[::1] scr = scratch_arr
    cdef Py_ssize_t soff = (-scratch_arr.ctypes.data) % 64
    cdef Py_ssize_t c, r0
    cdef int tid = 0
    with nogil:
        _init_heaps(hv, hi, nt, nq, kk)
        with parallel(num_threads=nt):
            tid = threadid()
            for c in prange(n_chunks, schedule="static"):
                r0 = c * chunk_rows
                _lp_rows(job, r0, min(n, r0 + chunk_rows), &hv[tid, 0, 0], &hi[tid, 0, 0], &thr[tid, 0],
                         &scr[soff + tid * sstride])
        _merge_heaps(hv, hi, nt, nq, kk)
    return heap_i_arr[0], heap_v_arr[0]


cdef inline const float* _fopt(const float[::1] a) noexcept nogil:
    return NULL if a is None else _fptr(a)


cdef _LpJob _lp_job(int prec, int target, int pw, Py_ssize_t ld, Py_ssize_t nq, Py_ssize_t kk,
                    const float[::1] rscale, const float[::1] err, const float[::1] bias,
                    const uint8_t[::1] mask) except *:
    """A job with the fields both precisions share set, every pointer else NULL."""
    if rscale is None:
        raise ValueError("rscale is required")
    cdef _LpJob job
    memset(&job, 0, sizeof(job))
    job.prec = prec
    job.target = target
    job.pw = pw
    job.ld = ld
    job.nq = nq
    job.npan = (nq + FI_LP_PW - 1) // FI_LP_PW if pw else 0
    job.rscale = _fptr(rscale)
    job.err = _fopt(err)
    job.bias = _fopt(bias)
    job.mask = NULL if mask is None else _mptr(mask)
    job.kk = kk
    return job


cdef object _pad_lanes(a, Py_ssize_t npan, dtype):
    out = np.zeros(max(npan * FI_LP_PW, 1), dtype=dtype)
    out[:a.shape[0]] = a
    return out


def i8_topk(
    const uint8_t[:, ::1] codes,
    const int8_t[:, ::1] queries,
    Py_ssize_t kk,
    const float[::1] qscale,
    const int32_t[::1] qoff,
    const float[::1] alpha,
    const float[::1] rscale,
    const float[::1] err=None,
    const float[::1] bias=None,
    const uint8_t[::1] mask=None,
    int n_threads=1,
    Py_ssize_t chunk_rows=4096,
    int panels=-1,
    int target=-1,
):
    """Top-``kk`` rows per query by the int8 kernels' values (candidate selection).

    Parameters
    ----------
    codes : uint8 (N, L), C-contiguous, ``L % 4 == 0``
        Row codes ``u``; row ``r`` stands for ``rscale[r] * (u[r] - z)`` (zero point
        ``z`` folded into ``qoff``).  Padding columns may hold anything.
    queries : int8 (Q, L), C-contiguous
        Query codes (padding columns must be 0).
    kk : int
        Results per query (slots beyond the available rows: id -1, value -inf).
    qscale, qoff, alpha : (Q,) float32, int32, float32
        Per-query scale, ``z * queries[i].sum()``, and the factor of ``err``.
    rscale, err, bias : (N,) float32 (err, bias may be None)
    mask : uint8 (N,) or None
        Rows with a non-zero mask are skipped.
    n_threads, chunk_rows
        OpenMP threads over chunks of rows (per-thread heaps, merged).
    panels : int
        -1 (default): query panels for ``I8_PANEL_MIN_QUERIES`` queries or more;
        0: one query at a time over each chunk; 16: panels.
    target : int
        Index in ``LOWP_TARGETS`` to force a dispatch target (ValueError if this CPU
        cannot run it); -1: ``LOWP_BEST``.

    Returns
    -------
    ids : int64 (Q, kk), values : float32 (Q, kk)
        Best first under "higher value, then lower id".

    Notes
    -----
    NumPy equivalent (every target computes exactly these float32 values)::

        acc = codes.astype(np.int64) @ queries.T.astype(np.int64)      # (N, Q), exact
        t = (acc - qoff).astype(np.float32); w = qscale * rscale[:, None]
        v = fma(alpha, err[:, None], fma(t, w, bias[:, None]))          # correctly rounded
        order = np.lexsort((ids, -v[:, i]))[:kk] per query
    """
    cdef Py_ssize_t n = codes.shape[0], ld = codes.shape[1], nq = queries.shape[0]
    if queries.shape[1] != ld:
        raise ValueError(f"queries must have {ld} columns (the codes'); got {queries.shape[1]}")
    if ld % 4:
        raise ValueError(f"codes must have a multiple of 4 columns; got {ld}")
    if n > 0 and ld == 0:
        raise ValueError("codes must have at least one column")
    cdef int t = _lp_check(n, nq, kk, n_threads, chunk_rows, panels, target,
                           {"rscale": rscale, "err": err, "bias": bias, "mask": mask},
                           {"qscale": qscale, "qoff": qoff, "alpha": alpha})
    cdef _LpJob job = _lp_job(0, t, FI_LP_PW if (panels < 0 and nq >= I8_PANEL_MIN_QUERIES) or panels > 0 else 0,
                              ld, nq, kk, rscale, err, bias, mask)
    cdef int pw = job.pw
    job.X8 = &codes[0, 0] if n > 0 else NULL
    job.Q8 = &queries[0, 0] if nq > 0 else NULL
    cdef Py_ssize_t npan = job.npan
    q = np.asarray(queries)
    cdef const float[::1] qs_v = qscale
    cdef const int32_t[::1] qo_v = qoff
    cdef const float[::1] al_v = alpha
    cdef const int8_t[::1] qt8
    cdef const int16_t[::1] qt16
    cdef const int16_t[:, ::1] q16
    if pw:
        qs_v = _pad_lanes(np.asarray(qscale)[:nq], npan, np.float32)
        qo_v = _pad_lanes(np.asarray(qoff)[:nq], npan, np.int32)
        al_v = _pad_lanes(np.asarray(alpha)[:nq], npan, np.float32)
        qpad = np.zeros((npan * FI_LP_PW, ld), dtype=np.int8)
        qpad[:nq] = q
        if t == FI_LP_SCALAR:
            job.QT = job.Q8
        elif t == FI_LP_AVX2:
            # QT16[p][h][lane][2] = Q[p*16 + lane][2h + b], as int16
            qt16 = np.ascontiguousarray(qpad.astype(np.int16).reshape(npan, FI_LP_PW, ld // 2, 2)
                                        .transpose(0, 2, 1, 3)).ravel()
            job.QT = &qt16[0]
        else:
            # QT8[p][g][lane][4] = Q[p*16 + lane][4g + b]
            qt8 = np.ascontiguousarray(qpad.reshape(npan, FI_LP_PW, ld // 4, 4).transpose(0, 2, 1, 3)).ravel()
            job.QT = &qt8[0]
    elif t == FI_LP_AVX2 and nq > 0:
        q16 = q.astype(np.int16)
        job.Q16 = &q16[0, 0]
    job.qs = _fptr(qs_v)
    job.qoff = &qo_v[0] if qo_v.shape[0] > 0 else NULL
    job.alpha = _fptr(al_v)
    return _lp_run(&job, n, n_threads, chunk_rows, FI_LP_TILE_ROWS * ld * 2)


def f16_topk(
    const uint16_t[:, ::1] codes,
    const float[:, ::1] queries,
    Py_ssize_t kk,
    const float[::1] alpha,
    const float[::1] rscale,
    const float[::1] err=None,
    const float[::1] bias=None,
    const uint8_t[::1] mask=None,
    int n_threads=1,
    Py_ssize_t chunk_rows=4096,
    int panels=-1,
    int target=-1,
):
    """Top-``kk`` rows per query by the float16 kernels' values (candidate selection).

    Parameters
    ----------
    codes : uint16 (N, D), C-contiguous
        IEEE half bit patterns (``float16_array.view(np.uint16)``); row ``r`` stands
        for ``rscale[r] * codes[r]``.
    queries : float32 (Q, D), C-contiguous
    kk, alpha, rscale, err, bias, mask, n_threads, chunk_rows, panels, target
        As in :func:`i8_topk` (``alpha``: (Q,) factor of ``err``; panels from
        ``F16_PANEL_MIN_QUERIES`` queries).

    Returns
    -------
    ids : int64 (Q, kk), values : float32 (Q, kk)

    Notes
    -----
    The value of (row r, query i) is ``fma(alpha_i, err[r], fma(dot, rscale[r], bias[r]))``
    with ``dot`` a float32 FMA sum in the fixed order fi_lowp.h documents (one
    order for one query at a time, a sequential one for panels); every target
    computes the same values.  NumPy equivalent up to float32 rounding::

        v = rscale[:, None] * (codes.view(np.float16) @ queries.T) + bias[:, None] + alpha * err[:, None]
    """
    cdef Py_ssize_t n = codes.shape[0], d = codes.shape[1], nq = queries.shape[0]
    if queries.shape[1] != d:
        raise ValueError(f"queries must have {d} columns (the codes'); got {queries.shape[1]}")
    cdef int t = _lp_check(n, nq, kk, n_threads, chunk_rows, panels, target,
                           {"rscale": rscale, "err": err, "bias": bias, "mask": mask}, {"alpha": alpha})
    cdef _LpJob job = _lp_job(1, t, FI_LP_PW if (panels < 0 and nq >= F16_PANEL_MIN_QUERIES) or panels > 0 else 0,
                              d, nq, kk, rscale, err, bias, mask)
    cdef int pw = job.pw
    job.X16 = &codes[0, 0] if n > 0 and d > 0 else NULL
    job.Qf = &queries[0, 0] if nq > 0 and d > 0 else NULL
    cdef Py_ssize_t npan = job.npan
    cdef const float[::1] al_v = alpha
    cdef const float[::1] qtf
    if pw:
        al_v = _pad_lanes(np.asarray(alpha)[:nq], npan, np.float32)
        qpad = np.zeros((npan * FI_LP_PW, d), dtype=np.float32)
        qpad[:nq] = queries
        # QT[p][j][lane] = Q[p*16 + lane][j]
        qtf = np.ascontiguousarray(qpad.reshape(npan, FI_LP_PW, d).transpose(0, 2, 1)).ravel()
        if qtf.shape[0] > 0:
            job.QT = &qtf[0]
    job.alpha = _fptr(al_v)
    return _lp_run(&job, n, n_threads, chunk_rows, FI_LP_TILE_ROWS * d * 4)
