"""Exact top-K search: validation and strategy in Python, kernels in ``fastimg._core``.

Two entry points:

* :class:`ExactSearcher` prepares a database matrix once for a metric and answers
  many :meth:`ExactSearcher.search` calls;
* :func:`topk` is the one-shot convenience over it.

How a search runs:

1. arguments are validated here, once (dtype, shape, finiteness, sign, ``k``,
   ``exclude``, metric name), with messages that say what was expected and what
   was received; the compiled kernels never validate.  :func:`check_queries`
   and :func:`check_values` are also the HNSW graph's checks;
2. candidates are selected by a compiled kernel, the one ``Metric.kernel`` names:

   * inner-product metrics (pearson, bhattacharyya, cosine, l2) scan the prepared
     rows (:func:`fastimg.metrics.prepare_rows`) in the searcher's precision:
     float32 rows with a fused dot product + bounded heap pass (OpenMP over row
     chunks, per-thread heaps merged at the end; one query streams each row once;
     2-5 queries share each row read in 2-row x 4-query tiles; batches of 6 or
     more go through register-blocked query panels - see
     ``fastimg._core.fused_topk``), or their float16 / int8 copies
     (:mod:`fastimg.precision`, ``fastimg._core.i8_topk`` / ``f16_topk``: AVX-512
     VNNI, AVX-VNNI or AVX2 code picked at run time).  Every precision is
     *certified*: each kernel value comes with a bound on the row's float32
     surrogate; the candidates that can reach the k-th result are re-scored
     exactly, and a query whose excluded rows are not all certified worse is
     scanned again with 4x the candidates (:meth:`ExactSearcher.search`'s
     ``stats`` count them).  So the answer is the same in every precision, and
     the same as an exact ranking of every row, ties included.  A query whose
     prepared vector is zero cannot be ranked by the surrogate
     (:func:`degenerate_queries`, shared with the HNSW graph): it is answered by
     :func:`rank_degenerate`;
   * the other metrics (chisqr, chisqr_alt, intersect, kl_div, l1) use a fused
     direct kernel on the raw rows, and ``k + max(8, k // 8)`` candidates;

3. candidates are re-scored in float64 with
   :func:`fastimg.metrics.exact_scores_many` (the values ``cv2.compareHist``
   returns), and sorted best first, ties broken by the lower row id
   (:func:`rescore`, shared with the HNSW graph's search).

Every layer returns ``(ids, scores)``.  Results do not depend on the thread count.
"""
from __future__ import annotations

import logging
import numbers
from typing import Any, Optional, Tuple

import numpy as np
import numpy.typing as npt

from fastimg._threads import resolve_threads
from fastimg.errors import ArgumentError, ArgumentTypeError
from fastimg.metrics import (METRICS, Metric, exact_scores_many, get_metric, metric_names, prepare_queries, prepare_rows,
                             surrogate_of_scores)
from fastimg.precision import (INT8_MAX_DIM, REDUCED, CandidateScan, Float32Scan, ReducedRows, ReducedScan,
                               check_precision, reduce_prepared, reduce_rows)

__all__ = ["ExactSearcher", "resolve_precision", "topk", "rescore", "exact_scan", "check_queries", "check_values", "degenerate_queries",
           "rank_degenerate", "resolve_threads", "METRICS", "metric_names"]

log = logging.getLogger(__name__)

_DBL_EPS = float(np.finfo(np.float64).eps)
_STRATEGIES = ("auto", "fused")
#: queries per kernel call (bounds per-thread heap memory)
_QUERY_BATCH = 256
#: element operations (rows x dim x queries) per extra thread: smaller jobs use
#: fewer threads (a thread team costs more than it saves on tiny scans, and a lot
#: on a loaded machine where a second thread may wait for a time slice)
_WORK_PER_THREAD = 1 << 21
#: rows of the database validated per step
_CHECK_ROWS = 1 << 16
#: candidate values (queries x candidates x D) gathered and re-scored per step
_RESCORE_ELEMS = 1 << 20
#: metrics re-scored by the compiled ``_core.rescore_rows`` (bit-identical to
#: :func:`fastimg.metrics.exact_scores_many`: fi_rescore.h sums in NumPy's pairwise
#: order); the others gather the rows and call ``exact_scores_many``
_RESCORE_CODES = {"cosine": "RESCORE_COSINE", "pearson": "RESCORE_PEARSON", "l2": "RESCORE_L2",
                  "bhattacharyya": "RESCORE_BHATTACHARYYA"}
_NO_QUERIES = np.empty(0, dtype=np.intp)
#: a scan's first candidate count per query is this many times ``kk`` (``k +
#: max(8, k // 8)``), plus ``_FIRST_EXTRA``; an uncertified query is scanned again
#: with ``_GROWTH`` times more.  Only the candidates whose bound reaches the k-th
#: result are re-scored, so a wide first scan costs little (heap pushes) and
#: spares a second pass over the rows (bench/search.md)
_FIRST = {"float32": 1, "float16": 4, "int8": 8}
_FIRST_EXTRA = {"float32": 0, "float16": 16, "int8": 16}
_GROWTH = 4


# ---------------------------------------------------------------------------
# validation
# ---------------------------------------------------------------------------

def _check_matrix(arr: Any, name: str, hint: str = "") -> np.ndarray:
    """A float32 (N, D) C-contiguous ndarray, never copied."""
    if not isinstance(arr, np.ndarray):
        raise ArgumentTypeError(f"{name} must be a numpy.ndarray (or np.memmap) of float32 with shape (N, D); "
                        f"got {type(arr).__name__}{hint}")
    if arr.ndim != 2:
        raise ArgumentError(f"{name} must be 2-D with shape (N, D); got {arr.ndim}-D array of shape {arr.shape}")
    if arr.dtype != np.float32:
        raise ArgumentTypeError(f"{name} must have dtype float32; got {arr.dtype} (convert once with "
                        f"{name}.astype(np.float32): fastimg never copies the database matrix)")
    if not arr.flags.c_contiguous:
        raise ArgumentError(f"{name} must be C-contiguous; got a non-contiguous array of shape {arr.shape} "
                         f"(use np.ascontiguousarray({name}) once: fastimg never copies the database matrix)")
    if arr.shape[0] < 1 or arr.shape[1] < 1:
        raise ArgumentError(f"{name} must have at least one row and one column; got shape {arr.shape}")
    return arr


def check_values(arr: np.ndarray, name: str, metric: Metric) -> None:
    """Raise ``ValueError`` if the (N, D) ``arr`` holds NaN/inf, or negative values
    for a histogram metric (``metric.nonneg``); the message names the first bad row.

    Reads ``arr`` in blocks of rows (no N x D temporaries); the one value check of
    :class:`ExactSearcher` and :class:`fastimg.ann.HnswGraph`.
    """
    for start in range(0, arr.shape[0], _CHECK_ROWS):
        block = arr[start:start + _CHECK_ROWS]
        if not block.size:
            continue
        lo = block.min()
        hi = block.max()
        if not (np.isfinite(lo) and np.isfinite(hi)):
            bad = np.nonzero(~np.isfinite(block).all(axis=1))[0]
            raise ArgumentError(f"{name} must be finite; got NaN or infinity in row {start + int(bad[0])}"
                             f" ({len(bad)} such rows in rows {start}..{start + len(block) - 1}): drop or fix "
                             f"failed rows first")
        if metric.nonneg and lo < 0:
            bad = np.nonzero((block < 0).any(axis=1))[0]
            raise ArgumentError(f"metric {metric.name!r} compares histograms and needs non-negative values; "
                             f"{name} row {start + int(bad[0])} has a negative value (min {float(lo)!r})")


def check_queries(queries: Any, dim: int, metric: Metric) -> np.ndarray:
    """Validated queries: a float32 (Q, D) C-contiguous array (a 1-D query is one row).

    The one query check of :meth:`ExactSearcher.search` and
    :meth:`fastimg.ann.HnswGraph.search`: real numbers, shape (D,) or (Q, D) with
    ``D == dim``, finite, and non-negative for a histogram metric.

    Raises
    ------
    TypeError
        Not an array of real numbers.
    ValueError
        Wrong shape or dimension, NaN/inf, or a negative value for a histogram metric
        (the message names the first bad query).
    """
    try:
        q = np.asarray(queries)
    except Exception as exc:  # pragma: no cover - exotic inputs
        raise ArgumentTypeError(f"queries must be an array of shape (D,) or (Q, D); got {type(queries).__name__}") from exc
    if q.dtype == object or not (np.issubdtype(q.dtype, np.floating) or np.issubdtype(q.dtype, np.integer)
                                 or q.dtype == np.bool_):
        raise ArgumentTypeError(f"queries must hold real numbers (float32 preferred); got dtype {q.dtype}")
    if q.ndim == 1:
        q = q.reshape(1, -1)
    elif q.ndim != 2:
        raise ArgumentError(f"queries must have shape (D,) or (Q, D) with D={dim}; got shape {q.shape}")
    if q.shape[1] != dim:
        raise ArgumentError(f"query dimension mismatch: expected D={dim} (the data's), got {q.shape[1]} "
                         f"(queries shape {q.shape})")
    q = np.ascontiguousarray(q, dtype=np.float32)
    if q.shape[0]:
        if not np.isfinite(q).all():
            bad = int(np.nonzero(~np.isfinite(q).all(axis=1))[0][0])
            raise ArgumentError(f"queries must be finite; query {bad} has NaN or infinity")
        if metric.nonneg and (q < 0).any():
            bad = int(np.nonzero((q < 0).any(axis=1))[0][0])
            raise ArgumentError(f"metric {metric.name!r} compares histograms and needs non-negative values; "
                             f"query {bad} has a negative value")
    return q


def _check_k(k: Any) -> int:
    if isinstance(k, bool) or not isinstance(k, numbers.Integral):
        raise ArgumentTypeError(f"k must be an integer >= 1; got {k!r} ({type(k).__name__})")
    if k < 1:
        raise ArgumentError(f"k must be >= 1; got k={int(k)}")
    return int(k)


def _build_mask(exclude: Any, n: int) -> Optional[np.ndarray]:
    if exclude is None:
        return None
    ex = np.asarray(exclude)
    if ex.dtype == np.bool_ and ex.ndim == 1 and ex.shape[0] == n:  # a precomputed mask: used as is
        return np.ascontiguousarray(ex).view(np.uint8) if ex.any() else None
    if ex.size == 0:
        return None
    if not (np.issubdtype(ex.dtype, np.integer)):
        raise ArgumentTypeError(f"exclude must be row ids (integers); got dtype {ex.dtype}")
    ex = ex.ravel()
    lo, hi = int(ex.min()), int(ex.max())
    if lo < 0 or hi >= n:
        bad = lo if lo < 0 else hi
        raise ArgumentError(f"exclude ids must be in [0, {n - 1}] (the data has N={n} rows); got {bad}")
    mask = np.zeros(n, dtype=np.uint8)
    mask[ex] = 1
    return mask


# ---------------------------------------------------------------------------
# queries a surrogate cannot rank (shared with the HNSW graph)
# ---------------------------------------------------------------------------

def degenerate_queries(metric: Metric, queries: np.ndarray, embedded: np.ndarray,
                       space: str) -> Tuple[np.ndarray, np.ndarray]:
    """The queries an inner-product surrogate cannot rank, split by how to rank them.

    Parameters
    ----------
    metric : Metric
    queries : ndarray, shape (Q, D)
        The raw queries.
    embedded : ndarray, shape (Q, D)
        The queries mapped into ``space``, the space of the rows scanned (an
        exact scan's prepared rows, the HNSW graph's rows).
    space : str
        A :data:`fastimg.metrics.SPACES` entry.  In ``"raw"`` space nothing is
        degenerate (an l2 surrogate ranks a zero query by the row norms).

    Returns
    -------
    ties : ndarray of intp
        Queries whose embedded vector is zero and that score every row alike under
        the metric too (an all-zero query of a ``Metric.zero_query_ties`` metric):
        their answer is the lowest available ids.
    scans : ndarray of intp
        The other queries with a zero embedded vector (a constant pearson query,
        whose OpenCV variance is float64 rounding noise rather than zero; a zero
        chisqr_alt query in the graph's Hellinger space): rank them by
        :func:`exact_scan`.
    """
    if space == "raw" or not queries.shape[0]:
        return _NO_QUERIES, _NO_QUERIES
    degenerate = ~embedded.any(axis=1)
    if not degenerate.any():
        return _NO_QUERIES, _NO_QUERIES
    tie = degenerate & ~queries.any(axis=1) if metric.zero_query_ties else np.zeros_like(degenerate)
    return np.flatnonzero(tie), np.flatnonzero(degenerate & ~tie)


def rank_degenerate(metric: Metric, queries: np.ndarray, ties: np.ndarray, scans: np.ndarray, data: Any, k: int,
                    skip: Optional[np.ndarray] = None) -> np.ndarray:
    """Candidate ids of the :func:`degenerate_queries`, in the order ``ties``, then ``scans``.

    Parameters
    ----------
    metric : Metric
    queries : ndarray, shape (Q, D)
        The raw queries.
    ties, scans : ndarray of int
        From :func:`degenerate_queries`.
    data : ndarray or np.memmap, shape (N, D)
        The raw rows (only read for ``scans``).
    k : int
        Wanted ids per query; ``k' = min(k, available rows)`` are returned.
    skip : ndarray of bool, shape (N,), optional
        Rows never returned (excluded, deleted, absent).

    Returns
    -------
    ndarray of int64, shape (len(ties) + len(scans), k')
        The lowest available ids for ``ties``; :func:`exact_scan`'s ranking for
        ``scans``.
    """
    n = data.shape[0] if skip is None else skip.shape[0]
    first = np.arange(min(k, n), dtype=np.int64) if skip is None else np.flatnonzero(~skip)[:k].astype(np.int64)
    out = np.empty((ties.size + scans.size, first.size), dtype=np.int64)
    out[:ties.size] = first
    for j, i in enumerate(scans):
        out[ties.size + j] = exact_scan(metric, queries[i], data[:n], first.size, skip=skip)
    return out


# ---------------------------------------------------------------------------
# the searcher
# ---------------------------------------------------------------------------

def resolve_precision(metric: "str | Metric", precision: Any, n: int, d: int) -> str:
    """The precision a scan of ``n`` rows of dimension ``d`` reads for ``precision``
    (:func:`fastimg.precision.check_precision`; ``ArgumentError`` if unsupported):
    ``"float32"`` for the metrics without an inner-product form (with ``"auto"`` or
    ``"float32"``), the precision itself when given, and for ``"auto"`` ``"int8"``
    from ``ExactSearcher.AUTO_INT8_MIN_ELEMENTS`` values (``n * d``) where the int8
    kernels run vectorised (``fastimg._core.LOWP_BEST`` is not "scalar"), else
    ``"float32"``.  The index resolves its ``auto`` precision with it too."""
    m = get_metric(metric)
    precision = check_precision(precision, m, d)
    if not m.ip_form:
        return "float32"
    if precision == "auto":
        from fastimg import _core

        fast = _core.LOWP_BEST != "scalar"
        return "int8" if fast and n * d >= ExactSearcher.AUTO_INT8_MIN_ELEMENTS and d <= INT8_MAX_DIM else "float32"
    return precision


class ExactSearcher:
    """Exact top-K search over a fixed float32 matrix for one metric.

    Parameters
    ----------
    data : ndarray of float32, shape (N, D)
        Database rows, C-contiguous; an ``np.memmap`` (also read-only) is used in
        place, never copied.
    metric : str, default "pearson"
        One of :func:`fastimg.metrics.metric_names`.
    precision : {"float32", "float16", "int8", "auto"}, default "float32"
        What the candidate scan of an inner-product metric reads: the float32
        prepared rows, or float16 / int8 copies of them (2x / 4x fewer bytes, see
        :mod:`fastimg.precision`).  Results are the same whatever the precision: a
        reduced scan's candidates are re-scored exactly and widened until every
        other row is certified worse.  ``"auto"`` picks ``"int8"`` for an
        inner-product metric on at least ``AUTO_INT8_MIN_ELEMENTS`` values (N x D,
        about 4 M: from there int8 was faster for 1 and for 100 queries, at D = 72
        and 256, bench/search.md) when the int8 kernels run vectorised here
        (``fastimg._core.LOWP_BEST`` is not "scalar"), ``"float32"`` otherwise.
        Metrics without an inner-product form scan their float32 rows: ``"auto"``
        is ``"float32"`` for them, and a reduced precision raises
        :class:`fastimg.ArgumentError` (as does ``"int8"`` beyond D = 32768).
    prepared : ndarray of float32, shape (N, D), optional
        For inner-product metrics: the output of
        ``fastimg.metrics.prepare_rows(metric, data)`` saved earlier (e.g. a memmap
        of the index's cache).  Computed here when omitted.  With a reduced
        precision it is only read to build the reduced rows (not kept).
    bias : ndarray of float32, shape (N,), optional
        The matching bias (pearson and l2 have one; must be given with ``prepared``
        or ``reduced``).
    reduced : ReducedRows, optional
        For a reduced precision: ``fastimg.precision.reduce_rows(metric, data,
        precision)[0]`` saved earlier (its ``codes``, ``scale`` and ``err`` arrays,
        e.g. memmaps of an index's cache), with its ``bias``.  Built here when omitted.
    threads : int, optional
        Threads per search; default ``FASTIMG_NUM_THREADS`` or all cores.
    check : bool, default True
        Verify once that ``data`` is finite (and non-negative for histogram
        metrics).  Pass False only for data validated before (costs one read pass).
    strategy : {"auto", "fused"}, default "auto"
        Candidate selection: both take the fused score + heap kernels (the BLAS
        GEMM path was removed, the fused kernels being faster: bench/search.md).
    chunk_rows : int, optional
        Rows per work unit of the fused kernel (tuning and testing knob).

    Attributes
    ----------
    data : ndarray (N, D)
    metric : Metric
    precision : str
        The precision in use ("float32", "float16" or "int8").
    prepared : ndarray of float32 (N, D) or None
        The derived inner-product matrix of the float32 path (64-byte aligned when
        computed here); persist it and pass it back to skip preparation.
    reduced : ReducedRows or None
        The reduced rows of a reduced precision; persist them likewise.
    bias : ndarray of float32 (N,) or None
    threads : int

    Notes
    -----
    Thread-safety: :meth:`search` does not modify the searcher and may be called
    from several Python threads at once (the GIL is released while scanning).

    Candidates of the inner-product metrics are certified (module docstring): at
    least ``k + max(8, k // 8)`` of them are re-scored in float64, more when ties
    crowd the k-th result, so the answer is the exact ranking of every row.  The
    direct metrics rank candidates on the direct kernel's float32 sum and
    re-score ``k + max(8, k // 8)`` of them, so near-ties at the k boundary
    resolve as the exact metric says.
    OpenCV's epsilon special cases are reproduced exactly for constant pearson
    rows/queries and zero bhattacharyya/cosine rows/queries; the *query-dependent*
    ones (pearson ``var_q * var_x <= DBL_EPSILON`` with both variances non-zero,
    bhattacharyya ``sum_q * sum_x <= FLT_EPSILON`` with both sums non-zero: rows of
    values around 1e-8 and below) are applied to the returned scores but not to
    the candidate ranking.
    """

    #: ``precision="auto"`` picks int8 from this many values (N x D) on
    AUTO_INT8_MIN_ELEMENTS = 1 << 22

    def __init__(self, data: np.ndarray, metric: "str | Metric" = "pearson", *,
                 precision: str = "float32", prepared: Optional[np.ndarray] = None,
                 bias: Optional[np.ndarray] = None, reduced: Optional[ReducedRows] = None,
                 threads: Optional[int] = None, check: bool = True, strategy: str = "auto",
                 chunk_rows: Optional[int] = None) -> None:
        self.metric: Metric = get_metric(metric)
        self.data: np.ndarray = _check_matrix(data, "data")
        self.threads: int = resolve_threads(threads)
        if strategy not in _STRATEGIES:
            raise ArgumentError(f"strategy must be one of {_STRATEGIES}; got {strategy!r}")
        self.strategy = strategy
        if chunk_rows is not None and (isinstance(chunk_rows, bool) or not isinstance(chunk_rows, numbers.Integral)
                                       or chunk_rows < 1):
            raise ArgumentError(f"chunk_rows must be a positive integer or None; got {chunk_rows!r}")
        self.chunk_rows = None if chunk_rows is None else int(chunk_rows)
        n, d = self.data.shape
        self.precision: str = resolve_precision(self.metric, precision, n, d)
        if reduced is not None and self.precision not in REDUCED:
            raise ArgumentError(f"reduced rows were given but the precision is {self.precision!r}; pass "
                             f"precision={getattr(reduced, 'precision', 'int8')!r} with them")
        if check:
            check_values(self.data, "data", self.metric)

        self.prepared: Optional[np.ndarray] = None
        self.bias: Optional[np.ndarray] = None
        self.reduced: Optional[ReducedRows] = None
        self._scan: Optional[CandidateScan] = None
        if not self.metric.ip_form:
            if prepared is not None or bias is not None:
                raise ArgumentError(f"metric {self.metric.name!r} has no inner-product form; prepared/bias must be None")
            return
        if prepared is not None:
            prepared = _check_matrix(prepared, "prepared")
            if prepared.shape != (n, d):
                raise ArgumentError(f"prepared must have the shape of data {(n, d)}; got {prepared.shape}")
        given = prepared is not None or reduced is not None
        if bias is not None and not given:
            raise ArgumentError("bias was given without prepared (or reduced); pass both or neither")
        if given:
            self.bias = self._check_bias(bias, n)
        if self.precision == "float32":
            if prepared is None:
                self.prepared, self.bias = prepare_rows(self.metric, self.data)
            else:
                self.prepared = prepared
            self._scan = Float32Scan(self.metric, self.prepared, self.bias)
            return
        if reduced is not None:
            if not isinstance(reduced, ReducedRows):
                raise ArgumentTypeError(f"reduced must be a fastimg.precision.ReducedRows; got {type(reduced).__name__}")
            if reduced.precision != self.precision:
                raise ArgumentError(f"reduced rows are {reduced.precision!r} but precision={self.precision!r}")
            reduced.check(n, d)
            self.reduced = reduced
        elif prepared is not None:
            self.reduced = reduce_prepared(self.metric, prepared, self.precision)
        else:
            self.reduced, self.bias = reduce_rows(self.metric, self.data, self.precision)
        self._scan = ReducedScan(self.metric, self.reduced, self.bias, d)

    def _check_bias(self, bias: Any, n: int) -> Optional[np.ndarray]:
        if not self.metric.bias:
            if bias is not None:
                raise ArgumentError(f"metric {self.metric.name!r} has no bias; got a bias array")
            return None
        if bias is None:
            raise ArgumentError(f"metric {self.metric.name!r} needs the bias returned by prepare_rows "
                             f"together with prepared (or reduced); got bias=None")
        if not isinstance(bias, np.ndarray) or bias.dtype != np.float32 or bias.shape != (n,) \
                or not bias.flags.c_contiguous:
            raise ArgumentError(f"bias must be a C-contiguous float32 array of shape ({n},); got "
                             f"{getattr(bias, 'dtype', type(bias).__name__)} {getattr(bias, 'shape', '')}")
        return bias

    # -- properties ---------------------------------------------------------
    @property
    def n(self) -> int:
        """Number of rows N."""
        return int(self.data.shape[0])

    @property
    def dim(self) -> int:
        """Vector dimension D."""
        return int(self.data.shape[1])

    @property
    def nbytes(self) -> int:
        """Bytes of the prepared data the searcher holds (prepared rows or reduced
        rows, and the bias; 0 for the metrics that scan ``data`` itself)."""
        total = 0 if self.bias is None else int(self.bias.nbytes)
        if self.prepared is not None:
            total += int(self.prepared.nbytes)
        if self.reduced is not None:
            total += self.reduced.nbytes
        return total

    def __repr__(self) -> str:
        return (f"ExactSearcher(n={self.n}, dim={self.dim}, metric={self.metric.name!r}, "
                f"precision={self.precision!r}, threads={self.threads})")

    # -- search -------------------------------------------------------------
    def search(self, queries: npt.ArrayLike, k: int = 10, *,
               exclude: Optional[npt.ArrayLike] = None,
               stats: Optional[dict] = None) -> Tuple[np.ndarray, np.ndarray]:
        """The ``k`` best rows for each query.

        Parameters
        ----------
        queries : array_like, shape (D,) or (Q, D)
            Query vectors (coerced to float32).
        k : int, default 10
            Results per query, >= 1; if fewer rows are available (``k > N`` or rows
            excluded) all available rows are returned.
        exclude : array_like of int, or boolean ndarray of shape (N,), optional
            Row ids never returned (deleted rows, the query itself ...), or a
            mask of the rows never returned (True = excluded; used without a copy).
        stats : dict, optional
            Filled with debug statistics of this call: ``precision``, ``queries``,
            ``rescored`` (rows re-scored exactly, summed over the queries),
            ``rescored_max`` (the most for one query), ``scans`` (candidate scans
            of the reduced rows: 1 unless some query needed a wider one),
            ``widened`` (queries scanned more than once).

        Returns
        -------
        ids : ndarray of int64, shape (Q, k')
            Row ids, best first; ties broken by the lower id.  ``k' = min(k, rows
            available)``; a 1-D query gives ``Q = 1``.
        scores : ndarray of float32, shape (Q, k')
            The metric's value (``cv2.compareHist(query, row, method)`` for
            histogram metrics): descending for similarities, ascending for
            distances.
        """
        k = _check_k(k)
        q = check_queries(queries, self.dim, self.metric)
        mask = _build_mask(exclude, self.n)
        if stats is not None and not isinstance(stats, dict):
            raise ArgumentTypeError(f"stats must be a dict (filled in place) or None; got {type(stats).__name__}")
        n_avail = self.n - (int(np.count_nonzero(mask)) if mask is not None else 0)
        nq = q.shape[0]
        k_out = min(k, n_avail)
        info = {"precision": self.precision, "queries": nq, "rescored": 0, "rescored_max": 0, "scans": 0,
                "widened": 0}
        if nq == 0 or k_out == 0:
            if stats is not None:
                stats.update(info)
            return np.zeros((nq, k_out), dtype=np.int64), np.zeros((nq, k_out), dtype=np.float32)
        kk = min(n_avail, k_out + max(8, k_out // 8))

        if self._scan is not None:
            out = self._search_ip(q, k_out, kk, mask, n_avail, info)
        else:
            cand = np.empty((nq, kk), dtype=np.int64)
            for s in range(0, nq, _QUERY_BATCH):
                cand[s:s + _QUERY_BATCH] = self._candidates(q[s:s + _QUERY_BATCH], kk, mask)
            out = rescore(self.metric, q, self.data, cand, k_out)
            info.update(rescored=nq * kk, rescored_max=kk, scans=1)
        if stats is not None:
            stats.update(info)
        return out

    def _kernel_threads(self, nq: int) -> int:
        work = self.n * self.dim * max(1, nq)
        return int(max(1, min(self.threads, work // _WORK_PER_THREAD)))

    def _chunk_rows(self, nq: int) -> int:
        if self.chunk_rows is not None:
            return self.chunk_rows
        # keep a chunk of rows in L2 while a batch of queries passes over it
        return int(max(16, min(4096, (256 << 10) // (4 * self.dim)))) if nq > 1 else 4096

    def _candidates(self, q: np.ndarray, kk: int, mask: Optional[np.ndarray]) -> np.ndarray:
        """Candidate ids (Q, kk) of a metric without an inner-product form, from
        the fused direct kernel (float32 values of the metric's own formula)."""
        from fastimg import _core

        m = self.metric
        nq = q.shape[0]
        kind = getattr(_core, m.kernel)
        d = self.dim
        aux = np.zeros((nq, d), dtype=np.float32)
        active = np.zeros((nq, d), dtype=np.int32)
        n_active = np.zeros(nq, dtype=np.int64)
        if kind == _core.KIND_CHISQR:
            keep = np.abs(q) > _DBL_EPS
            np.divide(1.0, q, out=aux, where=keep)
        elif kind == _core.KIND_KL_DIV:
            keep = np.abs(q) > _DBL_EPS
            aux[keep] = q[keep]
            for i in range(nq):
                idx = np.flatnonzero(keep[i])
                active[i, :len(idx)] = idx
                n_active[i] = len(idx)
        ids, _ = _core.fused_topk(self.data, q, kk, kind=kind, mask=mask, aux=aux, active=active,
                                  n_active=n_active, n_threads=self._kernel_threads(nq),
                                  chunk_rows=self._chunk_rows(nq))
        return ids

    # -- inner-product metrics: certified candidate scans ---------------------
    def _search_ip(self, q: np.ndarray, k_out: int, kk: int, mask: Optional[np.ndarray], n_avail: int,
                   info: dict) -> Tuple[np.ndarray, np.ndarray]:
        """Scan the prepared rows (any precision) for ``width`` candidates per
        query, re-score them exactly (:func:`rescore`), and keep the queries whose
        excluded rows are certified worse than the ``k_out``-th result; scan the
        others again with ``_GROWTH`` times more candidates (all rows at worst).

        Certificate (:class:`fastimg.precision.CandidateScan`): every excluded row
        has a float32 surrogate at most ``scan.excluded_bound``; the ``k_out``-th
        result's exact value, moved one float32 ulp towards worse (its float64
        value lies within) and mapped onto the surrogate
        (:func:`fastimg.metrics.surrogate_of_scores`), minus ``scan.slack``, must
        be above it.  Then no excluded row can beat or tie the ``k_out``-th result.
        Only the candidates whose own bound reaches that threshold are re-scored
        (at least the ``kk`` best).  The float32 scan's first width is ``kk``,
        today's candidate count: unless ties crowd the top, its answer is the one
        it always was."""
        m = self.metric
        scan = self._scan
        assert scan is not None
        nq = q.shape[0]
        out_ids = np.empty((nq, k_out), dtype=np.int64)
        out_scores = np.empty((nq, k_out), dtype=np.float32)
        qp = prepare_queries(m, q)
        # queries the surrogate cannot rank: ranked by rank_degenerate (as the HNSW graph)
        ties, scans = degenerate_queries(m, q, qp, m.ip_space)
        todo = np.arange(nq)
        rescored = np.zeros(nq, dtype=np.int64)
        if ties.size or scans.size:
            deg = np.concatenate([ties, scans])
            skip = None if mask is None else mask != 0
            cand = rank_degenerate(m, q, ties, scans, self.data, kk, skip)
            out_ids[deg], out_scores[deg] = rescore(m, q[deg], self.data, cand, k_out)
            todo = np.setdiff1d(todo, deg)
            rescored[deg] = kk
        sq = scan.queries(qp[todo] if todo.size < nq else qp)
        width = min(n_avail, kk * _FIRST[scan.precision] + _FIRST_EXTRA[scan.precision])
        worse = np.float32(-np.inf if m.higher_is_better else np.inf)
        while todo.size:
            info["scans"] += 1
            if info["scans"] == 2:
                info["widened"] = int(todo.size)
            threads = self._kernel_threads(min(todo.size, _QUERY_BATCH))
            chunk = self._scan_chunk(min(todo.size, _QUERY_BATCH))
            if todo.size <= _QUERY_BATCH:
                ids, vals = scan.topk(sq, width, mask, threads, chunk)
            else:
                ids = np.empty((todo.size, width), dtype=np.int64)
                vals = np.empty((todo.size, width), dtype=np.float32)
                for s in range(0, todo.size, _QUERY_BATCH):
                    part = sq.take(np.arange(s, min(todo.size, s + _QUERY_BATCH)))
                    ids[s:s + _QUERY_BATCH], vals[s:s + _QUERY_BATCH] = scan.topk(part, width, mask, threads, chunk)
            qt = q[todo]
            # re-score the kk best candidates (the float32 path: all of them) ...
            pre = min(width, kk)
            r_ids, r_scores = rescore(m, qt, self.data, ids[:, :pre], k_out)
            n_resc = np.full(todo.size, pre, dtype=np.int64)
            threshold = self._threshold(qt, r_scores[:, k_out - 1], sq, worse)
            # ... then the candidates whose bound reaches the k_out-th result's (a
            # prefix: values come best first); the threshold only rises with them
            offset = scan.bound_offset(sq)
            need = (vals.astype(np.float64) + offset[:, None] >= threshold[:, None]).sum(axis=1)
            sel = np.flatnonzero(need > pre)
            if sel.size:
                c = int(need[sel].max())
                r_ids[sel], r_scores[sel] = rescore(m, qt[sel], self.data, ids[sel, :c], k_out)
                n_resc[sel] = c
                threshold[sel] = self._threshold(qt[sel], r_scores[sel, k_out - 1], sq.take(sel), worse)
            rescored[todo] += n_resc
            # the rows the scan left out: below the last kept value
            ok = (vals[:, -1] + offset < threshold) | (width >= n_avail)
            done = todo[ok]
            out_ids[done], out_scores[done] = r_ids[ok], r_scores[ok]
            if not ok.all():
                todo, sq = todo[~ok], sq.take(np.flatnonzero(~ok))
            else:
                todo = todo[:0]
            width = min(n_avail, width * _GROWTH)
        info["rescored"] = int(rescored.sum())
        info["rescored_max"] = int(rescored.max())
        return out_ids, out_scores

    def _threshold(self, q: np.ndarray, kth: np.ndarray, sq: Any, worse: np.float32) -> np.ndarray:
        """(Q,) the surrogate below which a row cannot beat or tie the result of
        float32 exact value ``kth``: that value moved one ulp towards worse (its
        float64 value lies within), mapped onto the surrogate, minus the slack."""
        assert self._scan is not None
        kth = np.nextafter(kth, worse)
        return surrogate_of_scores(self.metric, q, kth[:, None])[:, 0] - self._scan.slack(sq)

    def _scan_chunk(self, nq: int) -> int:
        if self.reduced is None:
            return self._chunk_rows(nq)
        if self.chunk_rows is not None:
            return self.chunk_rows
        # keep a chunk of rows in L2 while a batch of queries passes over it
        row_bytes = self.reduced.codes.shape[1] * self.reduced.codes.itemsize
        return int(max(48, min(4096, (256 << 10) // max(row_bytes, 1)))) if nq > 1 else 4096


def exact_scan(metric: "str | Metric", query: np.ndarray, data: Any, k: int, *,
               skip: Optional[np.ndarray] = None) -> np.ndarray:
    """Ids of the ``k`` best rows of ``data`` for one query by the metric's exact
    float64 value over every row (NumPy, in blocks), ties by lower id.

    For the rare queries a surrogate cannot rank (a constant pearson query, whose
    OpenCV variance is float64 rounding noise rather than zero).  ``skip``: a
    boolean mask (N,) of rows never returned.  No validation (callers validate).
    """
    m = get_metric(metric)
    n = data.shape[0]
    scores = np.empty(n, dtype=np.float64)
    for start in range(0, n, _CHECK_ROWS):
        block = np.asarray(data[start:start + _CHECK_ROWS])
        scores[start:start + block.shape[0]] = exact_scores_many(m, query[None, :], block[None])[0]
    if m.higher_is_better:
        scores = -scores
    if skip is not None:
        scores[skip] = np.inf
    return np.argsort(scores, kind="stable")[:k]  # stable: ties keep the lower id first


def rescore(metric: "str | Metric", queries: np.ndarray, data: Any, cand: np.ndarray,
            k: int, threads: Optional[int] = 1) -> Tuple[np.ndarray, np.ndarray]:
    """The ``k`` best of each query's candidates by the metric's exact value.

    The one re-scoring step of fastimg's searches (:class:`ExactSearcher` and
    :meth:`fastimg.ann.HnswGraph.search`): candidates proposed on float32 values
    (a kernel's surrogate, a graph's distance) are scored with
    :func:`fastimg.metrics.exact_scores_many` and ordered best first, ties broken
    by the lower id.  No validation (callers validate once).

    Parameters
    ----------
    metric : str or Metric
    queries : ndarray, shape (Q, D)
        Raw query rows.
    data : ndarray or np.memmap, shape (N, D)
        Raw rows; row ``i`` is id ``i``.  Only the candidates' rows are read.
    cand : ndarray of int, shape (Q, C)
        Distinct ids >= 0 per query.
    k : int
        Results per query, in [1, C].
    threads : int, optional
        Threads of the compiled path (cosine, pearson, l2, bhattacharyya on
        float32 C-contiguous arrays: ``_core.rescore_rows``, the same values
        without gathering the rows); None: :func:`resolve_threads`'s default.

    Returns
    -------
    ids : ndarray of int64, shape (Q, k)
    scores : ndarray of float32, shape (Q, k)
        Descending for similarities, ascending for distances.
    """
    m = get_metric(metric)
    nq, nc = cand.shape
    # ascending ids per query: a stable sort by score then breaks ties by the lower id
    code = _RESCORE_CODES.get(m.name)
    if code is not None and isinstance(data, np.ndarray) and data.dtype == np.float32 and data.ndim == 2 \
            and data.flags.c_contiguous and queries.dtype == np.float32 and queries.flags.c_contiguous:
        # the compiled path: the same values and order in one call, without gathering the rows
        from fastimg import _core

        return _core.rescore_topk(data, queries, np.ascontiguousarray(cand, dtype=np.int64), k,
                                  getattr(_core, code), m.higher_is_better, resolve_threads(threads) if nq > 32 else 1)
    cand = np.sort(cand.astype(np.int64, copy=False), axis=1)
    out_ids = np.empty((nq, k), dtype=np.int64)
    out_scores = np.empty((nq, k), dtype=np.float32)
    step = max(1, _RESCORE_ELEMS // max(1, nc * queries.shape[1]))  # bounds the gathered rows
    for s in range(0, nq, step):
        c = cand[s:s + step]
        flat = c.ravel()
        # np.take is the fastest gather for arrays (memmaps too); other row containers are indexed
        rows = np.take(data, flat, axis=0) if isinstance(data, np.ndarray) else np.asarray(data[flat])
        rows = rows.reshape(c.shape[0], nc, -1)
        exact = exact_scores_many(m, queries[s:s + step], rows)
        order = np.argsort(-exact if m.higher_is_better else exact, axis=1, kind="stable")[:, :k]
        row = np.arange(c.shape[0])[:, None]
        out_ids[s:s + step] = c[row, order]
        out_scores[s:s + step] = exact[row, order]
    return out_ids, out_scores


def topk(data: np.ndarray, queries: npt.ArrayLike, k: int = 10, metric: "str | Metric" = "pearson", *,
         exclude: Optional[npt.ArrayLike] = None,
         threads: Optional[int] = None) -> Tuple[np.ndarray, np.ndarray]:
    """Exact top-``k`` rows of ``data`` for each query (one-shot).

    Parameters
    ----------
    data : ndarray of float32, shape (N, D)
        C-contiguous rows (``np.memmap`` accepted, never copied).
    queries : array_like, shape (D,) or (Q, D)
    k : int, default 10
        Results per query (>= 1); at most the number of available rows.
    metric : str, default "pearson"
        See :func:`fastimg.metrics.metric_names`.
    exclude : array_like of int, optional
        Row ids never returned.
    threads : int, optional
        Default ``FASTIMG_NUM_THREADS`` or all cores.

    Returns
    -------
    ids : ndarray of int64, shape (k',) for one query of shape (D,), else (Q, k')
    scores : ndarray of float32, same shape
        Best first (see :meth:`ExactSearcher.search`, which always answers ``(Q, k')``).
        ``k' = min(k, rows left after exclude)``.

    Examples
    --------
    >>> import numpy as np, fastimg
    >>> data = np.array([[1, 2, 3], [3, 2, 1], [1, 2, 4]], dtype=np.float32)
    >>> ids, scores = fastimg.topk(data, [1, 2, 3], k=2)
    >>> ids.tolist()
    [0, 2]
    >>> fastimg.topk(data, [[1, 2, 3], [3, 2, 1]], k=1)[0].tolist()
    [[0], [1]]
    """
    metric_obj = get_metric(metric)
    _check_k(k)
    # validate the cheap arguments before preparing the whole matrix
    searcher_data = _check_matrix(data, "data")
    check_queries(queries, searcher_data.shape[1], metric_obj)
    _build_mask(exclude, searcher_data.shape[0])
    ids, scores = ExactSearcher(searcher_data, metric_obj, threads=threads).search(queries, k, exclude=exclude)
    if np.ndim(queries) == 1:  # one query in, one row out (numpy's convention)
        return ids[0], scores[0]
    return ids, scores
