"""Metric definitions: one place for every comparison fastimg can rank by.

Each metric is described by a :class:`Metric` record, which also says how every
other module treats it: the compiled kernel that scans it, its inner-product
form, how a degenerate query is ranked, the spaces re-ranking averages and
weighs in, and how the HNSW graph searches it.  The histogram metrics are
exactly OpenCV's :func:`cv2.compareHist` definitions, with the *query as the first
histogram* (this matters for the asymmetric ``chisqr`` and ``kl_div``): the score
of a database row ``x`` for a query ``q`` is ``cv2.compareHist(q, x, method)``.

=============  ======================  =========  ========  =======  ====
name           OpenCV method           better     ip form   nonneg   bias
=============  ======================  =========  ========  =======  ====
pearson        HISTCMP_CORREL          higher     yes       no       yes
bhattacharyya  HISTCMP_BHATTACHARYYA   lower      yes       yes      no
chisqr         HISTCMP_CHISQR          lower      no        yes      no
chisqr_alt     HISTCMP_CHISQR_ALT      lower      no        yes      no
intersect      HISTCMP_INTERSECT       higher     no        yes      no
kl_div         HISTCMP_KL_DIV          lower      no        yes      no
cosine         (none)                  higher     yes       no       no
l2             (none)                  lower      yes       no       yes
l1             (none)                  lower      no        no       no
=============  ======================  =========  ========  =======  ====

"ip form" metrics reduce to an inner product after a per-row preparation
(:func:`prepare_rows` / :func:`prepare_query`): the *surrogate*
``prepare_query(q) @ prepared_x + bias_x`` is a strictly increasing function of
the metric's goodness, so ranking by it ranks by the metric.  The prepared
matrix is derived data: callers may persist it and pass it back.

Vector spaces (:data:`SPACES`, :func:`embed`) are the row mappings the modules
share: the preparation of the ip-form metrics, re-ranking's averages and
similarity weights, and the rows the HNSW graph holds are all one of them.

:func:`exact_scores` is the float64 reference used to report final scores;
:func:`exact_scores_many` is the same definition for a batch of queries, each
with its own rows (the re-scoring of a search batch).

Special cases (as in OpenCV, ``eps`` = ``DBL_EPSILON`` unless stated):

* pearson: if ``var_q * var_x <= eps`` (e.g. a constant query or row) the score is 1.
* bhattacharyya: if ``sum(q) * sum(x) <= FLT_EPSILON`` the sums are not used to
  normalise (so a zero row scores 1, the largest distance).
* chisqr: bins with ``|q_i| <= eps`` are skipped; chisqr_alt: bins with
  ``|q_i + x_i| <= eps`` are skipped, and the sum is doubled.  As in OpenCV's
  128-bit SIMD build, the last ``D mod 4`` bins use float32 differences/sums.
* kl_div: ``sum q_i log(q_i / x_i)`` over bins with ``|q_i| > eps``, a row bin
  ``|x_i| <= eps`` counts as ``1e-10``.
* cosine (not an OpenCV method): ``q.x / (|q| |x|)``, 0 when either norm is 0.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Tuple

import numpy as np
import numpy.typing as npt

from fastimg.errors import ArgumentError, ArgumentTypeError

__all__ = [
    "Metric",
    "METRICS",
    "SPACES",
    "metric_names",
    "get_metric",
    "embed",
    "prepare_rows",
    "prepare_query",
    "prepare_queries",
    "surrogate_of_scores",
    "exact_scores",
    "exact_scores_many",
    "aligned_empty",
]

_DBL_EPS = float(np.finfo(np.float64).eps)
_FLT_EPS = float(np.finfo(np.float32).eps)
_KL_FLOOR = 1e-10
_ROW_CHUNK = 65536  # rows prepared per step, bounds temporary float64 memory
_SCORE_ELEMS = 1 << 17  # values (rows x D) scored per step: float64 temporaries of ~1 MB stay in cache

# cv2.HISTCMP_* values (stable since OpenCV 2.4); kept literal so that importing
# this module does not import cv2.
_CORREL, _CHISQR, _INTERSECT, _BHATTACHARYYA, _CHISQR_ALT, _KL_DIV = 0, 1, 2, 3, 4, 5

#: Row mappings (see :func:`embed`): ``raw`` (as given), ``unit`` (``x / |x|``),
#: ``centred_unit`` (``(x - mean) / |x - mean|``), ``l1`` (``x / sum(x)``) and
#: ``sqrt_l1`` (``sqrt(x / sum(x))``).  Rows without a direction map to zeros.
SPACES = ("raw", "unit", "centred_unit", "l1", "sqrt_l1")

#: hnswlib spaces: "ip" (distance ``1 - a.b``), "l2" (squared Euclidean)
_GRAPH_SPACES = ("ip", "l2")
#: how re-ranking computes dissimilarities among a query's candidates
_PAIRWISE = ("gram", "sqeuclidean", "l1", "intersect", "exact")


@dataclass(frozen=True)
class Metric:
    """Description of one metric, and of how every part of fastimg treats it.

    Attributes
    ----------
    name : str
        Public name (``"pearson"``, ``"bhattacharyya"``, ...).
    higher_is_better : bool
        True for similarities (pearson, intersect, cosine), False for distances.
    cv2_method : int or None
        The ``cv2.HISTCMP_*`` constant the metric reproduces, or None.
    ip_form : bool
        True if the metric has an inner-product form after per-row preparation.
    nonneg : bool
        True if the metric requires non-negative data (histogram metrics).
    doc : str
        One-line description.
    bias : bool
        :func:`prepare_rows` returns a per-row additive term (pearson: 1 for
        constant rows; l2: ``-|x|^2``).
    kernel : str
        The ``fastimg._core`` constant of the kernel that scans the metric
        (``"KIND_IP"`` for the ip-form metrics, which scan the prepared rows).
    ip_space : str or None
        The :data:`SPACES` entry of the prepared rows (None without an ip form).
    zero_query_ties : bool
        An all-zero query scores every row alike (so its answer is the lowest
        available ids).  Used when a surrogate cannot rank a query (see
        :func:`fastimg.search.degenerate_queries`).
    mean_space : str
        Where re-ranking averages vectors (:func:`fastimg.rerank.expand`).
    sim_space : str
        Unit-vector space whose dot products are the similarity re-ranking uses
        for weights (:func:`fastimg.rerank.similarity`).
    pairwise : str
        How re-ranking measures dissimilarities among candidates, on a
        squared-Euclidean-like scale: ``"gram"`` (``1 - dot`` in ``sim_space``),
        ``"sqeuclidean"``, ``"l1"``, ``"intersect"`` (``sum(a) - sum(min(a, b))``)
        or ``"exact"`` (the metric's own value).
    graph_space : str
        hnswlib space of the HNSW graph: ``"ip"`` or ``"l2"``.
    graph_rows : str
        Rows put in the graph: ``"raw"`` or the name of the ip-form metric whose
        :func:`prepare_rows` (without the bias) is applied.
    graph_order : str
        ``"exact"`` if the graph's distance is a monotone function of the metric,
        ``"surrogate"`` if it ranks by a related metric (re-scoring fixes the order).
    """

    name: str
    higher_is_better: bool
    cv2_method: Optional[int]
    ip_form: bool
    nonneg: bool
    doc: str = ""
    bias: bool = False
    kernel: str = "KIND_IP"
    ip_space: Optional[str] = None
    zero_query_ties: bool = True
    mean_space: str = "raw"
    sim_space: str = "unit"
    pairwise: str = "exact"
    graph_space: str = "ip"
    graph_rows: str = "raw"
    graph_order: str = "exact"

    def __post_init__(self) -> None:
        # the record's invariants (checked when METRICS is built)
        ok = (self.ip_form == (self.kernel == "KIND_IP") == (self.ip_space is not None)
              and (self.ip_form or not self.bias)
              and self.ip_space in SPACES + (None,) and {self.mean_space, self.sim_space} <= set(SPACES)
              and self.pairwise in _PAIRWISE and self.graph_space in _GRAPH_SPACES
              and self.graph_order in ("exact", "surrogate"))
        if not ok:
            raise ArgumentError(f"inconsistent Metric record: {self!r}")


_HIST = dict(nonneg=True, mean_space="l1", sim_space="sqrt_l1", graph_rows="bhattacharyya")

METRICS: dict[str, Metric] = {
    m.name: m
    for m in (
        Metric("pearson", True, _CORREL, True, False, "Pearson correlation (cv2 HISTCMP_CORREL)",
               bias=True, ip_space="centred_unit", mean_space="centred_unit", sim_space="centred_unit",
               pairwise="gram", graph_rows="pearson"),
        Metric("bhattacharyya", False, _BHATTACHARYYA, True, True,
               "Bhattacharyya/Hellinger distance (cv2 HISTCMP_BHATTACHARYYA)",
               ip_space="sqrt_l1", mean_space="l1", sim_space="sqrt_l1", pairwise="gram",
               graph_rows="bhattacharyya"),
        Metric("chisqr", False, _CHISQR, False, doc="Chi-square, query as H1 (cv2 HISTCMP_CHISQR)",
               kernel="KIND_CHISQR", graph_order="surrogate", **_HIST),
        Metric("chisqr_alt", False, _CHISQR_ALT, False, doc="Alternative (symmetric) chi-square "
               "(cv2 HISTCMP_CHISQR_ALT)", kernel="KIND_CHISQR_ALT", zero_query_ties=False,
               graph_order="surrogate", **_HIST),
        Metric("intersect", True, _INTERSECT, False, doc="Histogram intersection (cv2 HISTCMP_INTERSECT)",
               kernel="KIND_INTERSECT", pairwise="intersect", graph_order="surrogate", **_HIST),
        Metric("kl_div", False, _KL_DIV, False, doc="Kullback-Leibler divergence of the query from the row "
               "(cv2 HISTCMP_KL_DIV)", kernel="KIND_KL_DIV", graph_order="surrogate", **_HIST),
        Metric("cosine", True, None, True, False, "Cosine similarity",
               ip_space="unit", mean_space="unit", pairwise="gram", graph_rows="cosine"),
        Metric("l2", False, None, True, False, "Euclidean distance",
               bias=True, ip_space="raw", zero_query_ties=False, pairwise="sqeuclidean", graph_space="l2"),
        Metric("l1", False, None, False, False, "Manhattan (L1) distance",
               kernel="KIND_L1", zero_query_ties=False, pairwise="l1", graph_space="l2", graph_order="surrogate"),
    )
}


def metric_names() -> list[str]:
    """Names of all metrics, in definition order (pearson first: the default)."""
    return list(METRICS)


def get_metric(name: "str | Metric") -> Metric:
    """Look up a metric by name.

    Parameters
    ----------
    name : str or Metric
        Metric name (case-insensitive), or a :class:`Metric` (returned as is).

    Returns
    -------
    Metric

    Raises
    ------
    ArgumentError
        If ``name`` is not a known metric (a ``ValueError`` too); the message
        lists the valid names.
    """
    if isinstance(name, Metric):
        return name
    if not isinstance(name, str):
        raise ArgumentTypeError(f"metric must be a str, one of {metric_names()}; got {type(name).__name__}")
    m = METRICS.get(name.strip().lower())
    if m is None:
        raise ArgumentError(f"unknown metric {name!r}; expected one of {metric_names()}")
    return m


def aligned_empty(shape: Tuple[int, ...], dtype: npt.DTypeLike = np.float32, align: int = 64) -> np.ndarray:
    """A C-contiguous uninitialised array whose data pointer is ``align``-byte aligned.

    Parameters
    ----------
    shape : tuple of int
    dtype : dtype, default float32
    align : int, default 64 (one cache line)
    """
    dtype = np.dtype(dtype)
    nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    buf = np.empty(nbytes + align, dtype=np.uint8)
    offset = (-buf.ctypes.data) % align
    return buf[offset:offset + nbytes].view(dtype).reshape(shape)


# ---------------------------------------------------------------------------
# preparation to inner-product form
# ---------------------------------------------------------------------------

def embed(space: str, x: npt.ArrayLike) -> np.ndarray:
    """Map vectors into one of the shared :data:`SPACES`, in float64.

    The one definition of these mappings: :func:`prepare_rows` (the ip-form
    metrics' ``Metric.ip_space``), re-ranking's averages and weights
    (``Metric.mean_space`` / ``Metric.sim_space``) and the HNSW graph's rows use it.

    Parameters
    ----------
    space : str
        ``"raw"``, ``"unit"``, ``"centred_unit"``, ``"l1"`` or ``"sqrt_l1"``.
    x : array_like, shape (n, D) or (D,)

    Returns
    -------
    ndarray of float64, same shape (a new array)
        raw: ``x``; unit: ``x / |x|``; centred_unit: ``(x - mean(x)) / |x - mean(x)|``;
        l1: ``x / sum(x)``; sqrt_l1: ``sqrt(max(x / sum(x), 0))``.  Rows without a
        direction map to zeros: zero rows (unit), constant rows, exactly equal
        values (centred_unit), rows with ``sum(x) <= 0`` (l1, sqrt_l1).
    """
    if space not in SPACES:
        raise ArgumentError(f"unknown space {space!r}; expected one of {list(SPACES)}")
    a = np.array(x, dtype=np.float64)  # a copy: the mappings work in place
    one = a.ndim == 1
    out, _ = _embed_block(space, np.atleast_2d(a))
    return out[0] if one else out


def _embed_block(space: str, x: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """``embed`` of a float64 (n, D) block, which it may modify; also returns the
    boolean (n,) mask of the rows mapped to zeros (no direction)."""
    n, d = x.shape
    if space == "raw":
        return x, np.zeros(n, dtype=bool)
    if space == "centred_unit":
        s1 = x.sum(axis=1)
        s11 = np.einsum("ij,ij->i", x, x)
        var = s11 - s1 * s1 / d  # OpenCV's form: sum (x - mean)^2
        centred = x - (s1 / d)[:, None]
        norm = np.sqrt(np.einsum("ij,ij->i", centred, centred))
        # constant rows (exactly equal values) have no direction: OpenCV scores them 1
        flat = (x.max(axis=1) == x.min(axis=1)) | ~(var > 0) | ~(norm > 0)
        out = np.divide(centred, np.where(flat, 1.0, norm)[:, None], out=centred)
    elif space == "unit":
        norm = np.sqrt(np.einsum("ij,ij->i", x, x))
        if n == 1:  # one query (a search per call): the same divisions, fewer NumPy calls
            if norm[0] > 0:
                return np.divide(x, norm[0], out=x), np.zeros(1, dtype=bool)
            x[:] = 0.0
            return x, np.ones(1, dtype=bool)
        flat = ~(norm > 0)
        out = x / np.where(flat, 1.0, norm)[:, None]
    else:  # l1, sqrt_l1
        s = x.sum(axis=1)
        flat = ~(s > 0)
        out = np.divide(x, np.where(flat, 1.0, s)[:, None], out=x)
        if space == "sqrt_l1":
            out = np.sqrt(np.maximum(out, 0.0, out=out), out=out)
    if flat.any():
        out[flat] = 0.0
    return out, flat


def _prepare_block(metric: Metric, x: np.ndarray) -> Tuple[np.ndarray, Optional[np.ndarray]]:
    """Prepare a (n, D) block in float64; returns (prepared float64, bias float64 or None)."""
    out, flat = _embed_block(metric.ip_space, np.array(x, dtype=np.float64))
    if not metric.bias:
        return out, None
    if metric.ip_space == "raw":
        # -|q - x|^2 = 2 q.x - |x|^2 - |q|^2: rows unchanged, bias -|x|^2, query doubled
        return out, -np.einsum("ij,ij->i", out, out)
    # rows without a direction (pearson: constant rows) score exactly 1 against any
    # query (OpenCV's special case)
    return out, np.where(flat, 1.0, 0.0)


def prepare_rows(metric: "str | Metric", data: npt.ArrayLike) -> Tuple[np.ndarray, Optional[np.ndarray]]:
    """Prepare database rows so that the metric becomes an inner product.

    Parameters
    ----------
    metric : str or Metric
        An ``ip_form`` metric: pearson, bhattacharyya, cosine or l2.
    data : array_like, shape (N, D)
        Database rows (any real dtype; read in chunks, never modified).

    Returns
    -------
    prepared : ndarray of float32, shape (N, D)
        C-contiguous, 64-byte aligned.  Pearson: centred, unit-norm rows (zero for
        a constant row); bhattacharyya: ``sqrt(x / sum(x))`` (zero for a zero row);
        cosine: unit-norm rows; l2: the rows themselves.
    bias : ndarray of float32, shape (N,), or None
        Per-row additive term (pearson: 1 for constant rows else 0; l2: ``-|x|^2``).

    Notes
    -----
    ``prepare_query(metric, q) @ prepared[i] + bias[i]`` ranks rows exactly like the
    metric (higher surrogate = better), up to float32 rounding.
    """
    m = get_metric(metric)
    if not m.ip_form:
        raise ArgumentError(f"metric {m.name!r} has no inner-product form; ip-form metrics are "
                         f"{[n for n, v in METRICS.items() if v.ip_form]}")
    data = np.asarray(data)
    if data.ndim != 2:
        raise ArgumentError(f"data must be 2-D (N, D); got shape {data.shape}")
    n, d = data.shape
    prepared = aligned_empty((n, d), np.float32)
    bias = np.zeros(n, dtype=np.float32) if m.bias else None
    for start in range(0, n, _ROW_CHUNK):
        stop = min(n, start + _ROW_CHUNK)
        p, b = _prepare_block(m, data[start:stop])
        prepared[start:stop] = p
        if bias is not None and b is not None:
            bias[start:stop] = b
    return prepared, bias


def prepare_query(metric: "str | Metric", q: npt.ArrayLike) -> np.ndarray:
    """Prepare one query vector for the inner-product surrogate.

    Parameters
    ----------
    metric : str or Metric
        An ``ip_form`` metric.
    q : array_like, shape (D,)

    Returns
    -------
    ndarray of float32, shape (D,)
        Pearson/bhattacharyya/cosine: prepared like a row; l2: ``2 q``.
        A constant pearson query or a zero bhattacharyya/cosine query gives zeros.
    """
    return prepare_queries(metric, np.asarray(q).reshape(1, -1))[0]


def prepare_queries(metric: "str | Metric", queries: npt.ArrayLike) -> np.ndarray:
    """:func:`prepare_query` of every row of ``queries`` (Q, D) at once: float32
    (Q, D), C-contiguous, each row bit-identical to ``prepare_query`` of that row."""
    m = get_metric(metric)
    q = np.asarray(queries, dtype=np.float64)
    if q.ndim != 2:
        raise ArgumentError(f"queries must be 2-D (Q, D); got shape {q.shape}")
    if not m.ip_form:
        raise ArgumentError(f"metric {m.name!r} has no inner-product form")
    p, _ = _prepare_block(m, q)
    if m.bias and m.ip_space == "raw":
        p *= 2.0  # l2: the surrogate is 2 q.x - |x|^2 (see _prepare_block)
    return np.ascontiguousarray(p, dtype=np.float32)


def surrogate_of_scores(metric: "str | Metric", queries: npt.ArrayLike, scores: npt.ArrayLike) -> np.ndarray:
    """The inner-product surrogate that rows with these metric values have.

    The inverse direction of the preparation: for an ip-form metric the surrogate
    ``prepare_query(q) @ prepare_rows(x) + bias`` is a strictly increasing function
    of the metric's goodness; this maps the metric's value back onto it (pearson,
    cosine: the value itself; bhattacharyya: ``1 - value**2``, the Bhattacharyya
    coefficient; l2: ``|q|^2 - value**2``).  Exact in exact arithmetic (up to
    float rounding otherwise; OpenCV's query-dependent epsilon cases excepted, see
    :class:`fastimg.search.ExactSearcher`).

    Parameters
    ----------
    metric : str or Metric
        An ``ip_form`` metric.
    queries : array_like, shape (Q, D)
        Raw queries (used by l2 only).
    scores : array_like, shape (Q, C)
        Metric values (e.g. :func:`exact_scores_many`) of C rows per query.

    Returns
    -------
    ndarray of float64, shape (Q, C)
    """
    m = get_metric(metric)
    if not m.ip_form:
        raise ArgumentError(f"metric {m.name!r} has no inner-product form")
    v = np.asarray(scores, dtype=np.float64)
    if m.name == "bhattacharyya":
        return 1.0 - v * v
    if m.name == "l2":
        q = np.asarray(queries, dtype=np.float64)
        return np.einsum("ij,ij->i", q, q)[:, None] - v * v
    return v.copy()  # pearson, cosine: the surrogate is the value


# ---------------------------------------------------------------------------
# float64 reference (matches cv2.compareHist)
# ---------------------------------------------------------------------------

def exact_scores(metric: "str | Metric", query: npt.ArrayLike, rows: npt.ArrayLike) -> np.ndarray:
    """The metric's exact value for one query against rows, in float64.

    Parameters
    ----------
    metric : str or Metric
    query : array_like, shape (D,)
        The first histogram of ``cv2.compareHist``.
    rows : array_like, shape (M, D)
        Rows to score (e.g. the returned candidates).  float32 inputs are used as
        float32 values, exactly as OpenCV reads them.

    Returns
    -------
    ndarray of float64, shape (M,)
        ``cv2.compareHist(query, rows[i], method)`` for the histogram metrics (up to
        float64 summation order); cosine similarity, Euclidean or L1 distance otherwise.

    See Also
    --------
    exact_scores_many : the same for a batch of queries, each with its own rows
        (one definition serves both: this is ``exact_scores_many`` with Q = 1).
    """
    m = get_metric(metric)
    q = np.asarray(query, dtype=np.float64).ravel()
    x = np.asarray(rows)
    if x.ndim == 1:
        x = x.reshape(1, -1)
    if x.ndim != 2 or x.shape[1] != q.shape[0]:
        raise ArgumentError(f"rows must have shape (M, {q.shape[0]}); got {x.shape}")
    return _exact_many(m, q[None, :], x[None])[0]


def exact_scores_many(metric: "str | Metric", queries: npt.ArrayLike, rows: npt.ArrayLike) -> np.ndarray:
    """The metric's exact values for many queries, each against its own rows, in float64.

    ``exact_scores_many(metric, Q, R)[i] == exact_scores(metric, Q[i], R[i])`` (the
    same definition, vectorised over the queries: re-scoring the candidates of a
    batch costs a few NumPy calls instead of a few per query).

    Parameters
    ----------
    metric : str or Metric
    queries : array_like, shape (Q, D)
        Query ``i`` is the first histogram of ``cv2.compareHist``.
    rows : array_like, shape (Q, C, D)
        ``rows[i]`` are the C rows to score against ``queries[i]`` (e.g. its
        candidates).  float32 inputs are used as float32 values.

    Returns
    -------
    ndarray of float64, shape (Q, C)
        ``cv2.compareHist(queries[i], rows[i, j], method)`` for the histogram
        metrics (up to float64 summation order); cosine similarity, Euclidean or
        L1 distance otherwise.

    Raises
    ------
    ValueError
        ``queries`` not 2-D, or ``rows`` not of shape (Q, C, D) for the queries' Q and D.
    """
    m = get_metric(metric)
    q = np.asarray(queries, dtype=np.float64)
    x = np.asarray(rows)
    if q.ndim != 2:
        raise ArgumentError(f"queries must have shape (Q, D); got {q.shape}")
    if x.ndim != 3 or x.shape[0] != q.shape[0] or x.shape[2] != q.shape[1]:
        raise ArgumentError(f"rows must have shape (Q, C, D) = ({q.shape[0]}, C, {q.shape[1]}) for queries of "
                         f"shape {q.shape}; got {x.shape}")
    return _exact_many(m, q, x)


def _exact_many(m: Metric, q: np.ndarray, x: np.ndarray) -> np.ndarray:
    """(Q, C) float64 scores of q (Q, D) float64 against x (Q, C, D), in blocks of
    about ``_SCORE_ELEMS`` values (float64 temporaries stay in cache).  Blocks are
    C-contiguous copies: NumPy sums a contiguous row pairwise, a strided one (e.g.
    a broadcast) sequentially, and a row's value must not depend on the layout."""
    nq, nc, d = x.shape
    out = np.empty((nq, nc), dtype=np.float64)
    if not out.size:
        return out
    rows = max(1, _SCORE_ELEMS // max(d, 1))  # rows per block
    if nc >= rows:  # few queries with many rows each: split the rows
        for i in range(nq):
            for start in range(0, nc, rows):
                stop = min(nc, start + rows)
                block = np.ascontiguousarray(x[i:i + 1, start:stop], dtype=np.float64)
                out[i:i + 1, start:stop] = _exact_block(m, q[i:i + 1], block)
        return out
    step = max(1, rows // nc)
    for start in range(0, nq, step):
        stop = min(nq, start + step)
        out[start:stop] = _exact_block(m, q[start:stop], np.ascontiguousarray(x[start:stop], dtype=np.float64))
    return out


def _dot(x: np.ndarray, q: np.ndarray) -> np.ndarray:
    """(Q, C): x[i, j] . q[i] for x (Q, C, D), q (Q, D).

    A product then NumPy's pairwise sum along D: the value of a (query, row) pair
    depends on those two vectors only (a BLAS matmul's summation order depends on
    the shape and alignment of the whole block), so a row scores the same
    whichever other rows are re-scored with it, to the last bit."""
    return (x * q[:, None, :]).sum(axis=2)


def _sumsq(x: np.ndarray) -> np.ndarray:
    """Sum of squares along the last axis (deterministic per vector, as :func:`_dot`)."""
    return (x * x).sum(axis=-1)


def _exact_block(m: Metric, q: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Scores (Q, C) of q (Q, D) against x (Q, C, D), both float64."""
    name = m.name
    d = q.shape[1]
    qb = q[:, None, :]
    if name == "pearson":
        s1 = q.sum(axis=1)[:, None]
        s11 = _sumsq(q)[:, None]
        s2 = x.sum(axis=2)
        s22 = _sumsq(x)
        s12 = _dot(x, q)
        scale = 1.0 / d
        num = s12 - s1 * s2 * scale
        denom2 = (s11 - s1 * s1 * scale) * (s22 - s2 * s2 * scale)
        with np.errstate(invalid="ignore", divide="ignore"):
            res = num / np.sqrt(np.abs(denom2))
        return np.where(np.abs(denom2) > _DBL_EPS, res, 1.0)
    if name == "bhattacharyya":
        prod = x * qb  # sqrt(q_i x_i) as OpenCV (not sqrt(q_i) sqrt(x_i): identical rows must give 0)
        bc = np.sqrt(prod, out=prod).sum(axis=2)
        s = q.sum(axis=1)[:, None] * x.sum(axis=2)
        with np.errstate(divide="ignore"):
            inv = np.where(np.abs(s) > _FLT_EPS, 1.0 / np.sqrt(np.abs(s)), 1.0)
        return np.sqrt(np.maximum(1.0 - bc * inv, 0.0))
    if name in ("chisqr", "chisqr_alt"):
        # OpenCV runs a 4-lane SIMD loop in float64 and a scalar tail (the last
        # D mod 4 bins) whose difference / sum are float32 operations; mirror it.
        a = qb - x
        b = qb + x if name == "chisqr_alt" else np.broadcast_to(qb, x.shape).copy()
        tail = d - d % 4 if d >= 4 else 0
        if tail < d:
            q32 = qb[:, :, tail:].astype(np.float32)
            x32 = x[:, :, tail:].astype(np.float32)
            a[:, :, tail:] = q32 - x32
            if name == "chisqr_alt":
                b[:, :, tail:] = q32 + x32
        keep = np.abs(b) > _DBL_EPS
        with np.errstate(invalid="ignore", divide="ignore"):
            t = np.where(keep, a * a / np.where(keep, b, 1.0), 0.0)
        return (2.0 if name == "chisqr_alt" else 1.0) * t.sum(axis=2)
    if name == "intersect":
        return np.minimum(x, qb).sum(axis=2)
    if name == "kl_div":
        keep = np.abs(q) > _DBL_EPS  # query bins that count (per query)
        p = np.where(keep, q, 1.0)[:, None, :]
        r = np.where(np.abs(x) <= _DBL_EPS, _KL_FLOOR, x)
        return np.where(keep[:, None, :], p * np.log(p / r), 0.0).sum(axis=2)
    if name == "cosine":
        den = np.sqrt(_sumsq(q))[:, None] * np.sqrt(_sumsq(x))
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(den > 0, _dot(x, q) / np.where(den > 0, den, 1.0), 0.0)
    if name == "l2":
        diff = x - qb
        return np.sqrt(_sumsq(diff))
    if name == "l1":
        return np.abs(x - qb).sum(axis=2)
    raise AssertionError(name)  # pragma: no cover - METRICS is closed
