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
2. candidates are selected by a compiled kernel on float32 values, the one
   ``Metric.kernel`` names:

   * inner-product metrics (pearson, bhattacharyya, cosine, l2) scan the prepared
     rows (:func:`fastimg.metrics.prepare_rows`) with a fused dot product + bounded
     heap pass (OpenMP over row chunks, per-thread heaps merged at the end).  One
     query streams each row once; 2-5 queries share each row read in 2-row x
     4-query tiles; batches of 6 or more go through register-blocked query panels
     (tiles of 12 rows x 8 queries or 6 rows x 16 queries held in vector
     registers, a heap-root compare per tile) - see ``fastimg._core.fused_topk``.
     A query whose prepared vector is zero cannot be ranked by the surrogate
     (:func:`degenerate_queries`, shared with the HNSW graph): it is answered by
     :func:`rank_degenerate`;
   * the other metrics (chisqr, chisqr_alt, intersect, kl_div, l1) use a fused
     direct kernel on the raw rows;

3. a few extra candidates are kept, re-scored in float64 with
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
from fastimg.metrics import METRICS, Metric, exact_scores_many, get_metric, metric_names, prepare_queries, prepare_rows

__all__ = ["ExactSearcher", "topk", "rescore", "exact_scan", "check_queries", "check_values", "degenerate_queries",
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
_NO_QUERIES = np.empty(0, dtype=np.intp)


# ---------------------------------------------------------------------------
# validation
# ---------------------------------------------------------------------------

def _check_matrix(arr: Any, name: str, hint: str = "") -> np.ndarray:
    """A float32 (N, D) C-contiguous ndarray, never copied."""
    if not isinstance(arr, np.ndarray):
        raise TypeError(f"{name} must be a numpy.ndarray (or np.memmap) of float32 with shape (N, D); "
                        f"got {type(arr).__name__}{hint}")
    if arr.ndim != 2:
        raise ValueError(f"{name} must be 2-D with shape (N, D); got {arr.ndim}-D array of shape {arr.shape}")
    if arr.dtype != np.float32:
        raise TypeError(f"{name} must have dtype float32; got {arr.dtype} (convert once with "
                        f"{name}.astype(np.float32): fastimg never copies the database matrix)")
    if not arr.flags.c_contiguous:
        raise ValueError(f"{name} must be C-contiguous; got a non-contiguous array of shape {arr.shape} "
                         f"(use np.ascontiguousarray({name}) once: fastimg never copies the database matrix)")
    if arr.shape[0] < 1 or arr.shape[1] < 1:
        raise ValueError(f"{name} must have at least one row and one column; got shape {arr.shape}")
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
            raise ValueError(f"{name} must be finite; got NaN or infinity in row {start + int(bad[0])}"
                             f" ({len(bad)} such rows in rows {start}..{start + len(block) - 1}): drop or fix "
                             f"failed rows first")
        if metric.nonneg and lo < 0:
            bad = np.nonzero((block < 0).any(axis=1))[0]
            raise ValueError(f"metric {metric.name!r} compares histograms and needs non-negative values; "
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
        raise TypeError(f"queries must be an array of shape (D,) or (Q, D); got {type(queries).__name__}") from exc
    if q.dtype == object or not (np.issubdtype(q.dtype, np.floating) or np.issubdtype(q.dtype, np.integer)
                                 or q.dtype == np.bool_):
        raise TypeError(f"queries must hold real numbers (float32 preferred); got dtype {q.dtype}")
    if q.ndim == 1:
        q = q.reshape(1, -1)
    elif q.ndim != 2:
        raise ValueError(f"queries must have shape (D,) or (Q, D) with D={dim}; got shape {q.shape}")
    if q.shape[1] != dim:
        raise ValueError(f"query dimension mismatch: expected D={dim} (the data's), got {q.shape[1]} "
                         f"(queries shape {q.shape})")
    q = np.ascontiguousarray(q, dtype=np.float32)
    if q.shape[0]:
        if not np.isfinite(q).all():
            bad = int(np.nonzero(~np.isfinite(q).all(axis=1))[0][0])
            raise ValueError(f"queries must be finite; query {bad} has NaN or infinity")
        if metric.nonneg and (q < 0).any():
            bad = int(np.nonzero((q < 0).any(axis=1))[0][0])
            raise ValueError(f"metric {metric.name!r} compares histograms and needs non-negative values; "
                             f"query {bad} has a negative value")
    return q


def _check_k(k: Any) -> int:
    if isinstance(k, bool) or not isinstance(k, numbers.Integral):
        raise TypeError(f"k must be an integer >= 1; got {k!r} ({type(k).__name__})")
    if k < 1:
        raise ValueError(f"k must be >= 1; got k={int(k)}")
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
        raise TypeError(f"exclude must be row ids (integers); got dtype {ex.dtype}")
    ex = ex.ravel()
    lo, hi = int(ex.min()), int(ex.max())
    if lo < 0 or hi >= n:
        bad = lo if lo < 0 else hi
        raise ValueError(f"exclude ids must be in [0, {n - 1}] (the data has N={n} rows); got {bad}")
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

class ExactSearcher:
    """Exact top-K search over a fixed float32 matrix for one metric.

    Parameters
    ----------
    data : ndarray of float32, shape (N, D)
        Database rows, C-contiguous; an ``np.memmap`` (also read-only) is used in
        place, never copied.
    metric : str, default "pearson"
        One of :func:`fastimg.metrics.metric_names`.
    prepared : ndarray of float32, shape (N, D), optional
        For inner-product metrics: the output of
        ``fastimg.metrics.prepare_rows(metric, data)`` saved earlier (e.g. a memmap
        of the index's cache).  Computed here when omitted.
    bias : ndarray of float32, shape (N,), optional
        The matching bias (pearson and l2 have one; must be given with ``prepared``).
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
    prepared : ndarray of float32 (N, D) or None
        The derived inner-product matrix (64-byte aligned when computed here);
        persist it and pass it back to skip preparation.
    bias : ndarray of float32 (N,) or None
    threads : int

    Notes
    -----
    Thread-safety: :meth:`search` does not modify the searcher and may be called
    from several Python threads at once (the GIL is released while scanning).

    Candidates are ranked on float32 values (the inner-product surrogate or the
    direct kernel's float32 sum); ``k + max(8, k // 8)`` of them are re-scored in
    float64, so near-ties at the k boundary resolve as the exact metric says.
    OpenCV's epsilon special cases are reproduced exactly for constant pearson
    rows/queries and zero bhattacharyya/cosine rows/queries; the *query-dependent*
    ones (pearson ``var_q * var_x <= DBL_EPSILON`` with both variances non-zero,
    bhattacharyya ``sum_q * sum_x <= FLT_EPSILON`` with both sums non-zero: rows of
    values around 1e-8 and below) are applied to the returned scores but not to
    the candidate ranking.
    """

    def __init__(self, data: np.ndarray, metric: "str | Metric" = "pearson", *,
                 prepared: Optional[np.ndarray] = None, bias: Optional[np.ndarray] = None,
                 threads: Optional[int] = None, check: bool = True, strategy: str = "auto",
                 chunk_rows: Optional[int] = None) -> None:
        self.metric: Metric = get_metric(metric)
        self.data: np.ndarray = _check_matrix(data, "data")
        self.threads: int = resolve_threads(threads)
        if strategy not in _STRATEGIES:
            raise ValueError(f"strategy must be one of {_STRATEGIES}; got {strategy!r}")
        self.strategy = strategy
        if chunk_rows is not None and (isinstance(chunk_rows, bool) or not isinstance(chunk_rows, numbers.Integral)
                                       or chunk_rows < 1):
            raise ValueError(f"chunk_rows must be a positive integer or None; got {chunk_rows!r}")
        self.chunk_rows = None if chunk_rows is None else int(chunk_rows)
        n, d = self.data.shape
        if check:
            check_values(self.data, "data", self.metric)

        self.prepared: Optional[np.ndarray] = None
        self.bias: Optional[np.ndarray] = None
        if self.metric.ip_form:
            if prepared is None:
                if bias is not None:
                    raise ValueError("bias was given without prepared; pass both or neither")
                self.prepared, self.bias = prepare_rows(self.metric, self.data)
            else:
                self.prepared = _check_matrix(prepared, "prepared")
                if self.prepared.shape != (n, d):
                    raise ValueError(f"prepared must have the shape of data {(n, d)}; got {self.prepared.shape}")
                if self.metric.bias:
                    if bias is None:
                        raise ValueError(f"metric {self.metric.name!r} needs the bias returned by prepare_rows "
                                         f"together with prepared; got bias=None")
                    if not isinstance(bias, np.ndarray) or bias.dtype != np.float32 or bias.shape != (n,) \
                            or not bias.flags.c_contiguous:
                        raise ValueError(f"bias must be a C-contiguous float32 array of shape ({n},); got "
                                         f"{getattr(bias, 'dtype', type(bias).__name__)} "
                                         f"{getattr(bias, 'shape', '')}")
                    self.bias = bias
                elif bias is not None:
                    raise ValueError(f"metric {self.metric.name!r} has no bias; got a bias array")
        elif prepared is not None or bias is not None:
            raise ValueError(f"metric {self.metric.name!r} has no inner-product form; prepared/bias must be None")

    # -- properties ---------------------------------------------------------
    @property
    def n(self) -> int:
        """Number of rows N."""
        return int(self.data.shape[0])

    @property
    def dim(self) -> int:
        """Vector dimension D."""
        return int(self.data.shape[1])

    def __repr__(self) -> str:
        return f"ExactSearcher(n={self.n}, dim={self.dim}, metric={self.metric.name!r}, threads={self.threads})"

    # -- search -------------------------------------------------------------
    def search(self, queries: npt.ArrayLike, k: int = 10, *,
               exclude: Optional[npt.ArrayLike] = None) -> Tuple[np.ndarray, np.ndarray]:
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
        n_avail = self.n - (int(np.count_nonzero(mask)) if mask is not None else 0)
        nq = q.shape[0]
        k_out = min(k, n_avail)
        if nq == 0 or k_out == 0:
            return np.zeros((nq, k_out), dtype=np.int64), np.zeros((nq, k_out), dtype=np.float32)
        kk = min(n_avail, k_out + max(8, k_out // 8))

        cand = np.empty((nq, kk), dtype=np.int64)
        for s in range(0, nq, _QUERY_BATCH):
            cand[s:s + _QUERY_BATCH] = self._candidates(q[s:s + _QUERY_BATCH], kk, mask)
        return rescore(self.metric, q, self.data, cand, k_out)

    def _kernel_threads(self, nq: int) -> int:
        work = self.n * self.dim * max(1, nq)
        return int(max(1, min(self.threads, work // _WORK_PER_THREAD)))

    def _chunk_rows(self, nq: int) -> int:
        if self.chunk_rows is not None:
            return self.chunk_rows
        # keep a chunk of rows in L2 while a batch of queries passes over it
        return int(max(16, min(4096, (256 << 10) // (4 * self.dim)))) if nq > 1 else 4096

    def _candidates(self, q: np.ndarray, kk: int, mask: Optional[np.ndarray]) -> np.ndarray:
        """Candidate ids (Q, kk) from the compiled kernel (surrogate order)."""
        from fastimg import _core

        m = self.metric
        nq = q.shape[0]
        kind = getattr(_core, m.kernel)
        if m.ip_form:
            qp = prepare_queries(m, q)
            ids, _ = _core.fused_topk(self.prepared, qp, kk, kind=kind, bias=self.bias, mask=mask,
                                      n_threads=self._kernel_threads(nq), chunk_rows=self._chunk_rows(nq))
            ties, scans = degenerate_queries(m, q, qp, m.ip_space)
            if ties.size or scans.size:
                skip = None if mask is None else mask != 0
                ids[np.concatenate([ties, scans])] = rank_degenerate(m, q, ties, scans, self.data, kk, skip)
            return ids
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
            k: int) -> Tuple[np.ndarray, np.ndarray]:
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

    Returns
    -------
    ids : ndarray of int64, shape (Q, k)
    scores : ndarray of float32, shape (Q, k)
        Descending for similarities, ascending for distances.
    """
    m = get_metric(metric)
    nq, nc = cand.shape
    # ascending ids per query: a stable sort by score then breaks ties by the lower id
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
    ids : ndarray of int64, shape (Q, k')
    scores : ndarray of float32, shape (Q, k')
        Best first (see :meth:`ExactSearcher.search`).

    Examples
    --------
    >>> import numpy as np, fastimg
    >>> data = np.array([[1, 2, 3], [3, 2, 1], [1, 2, 4]], dtype=np.float32)
    >>> ids, scores = fastimg.topk(data, [1, 2, 3], k=2)
    >>> ids.tolist()
    [[0, 2]]
    """
    metric_obj = get_metric(metric)
    _check_k(k)
    # validate the cheap arguments before preparing the whole matrix
    searcher_data = _check_matrix(data, "data")
    check_queries(queries, searcher_data.shape[1], metric_obj)
    _build_mask(exclude, searcher_data.shape[0])
    return ExactSearcher(searcher_data, metric_obj, threads=threads).search(queries, k, exclude=exclude)
