"""Reduced-precision prepared rows (float16, int8) and the certified candidate scans.

One query over N x D float32 rows is memory-bound; reading int8 or float16
copies of the prepared inner-product rows (:func:`fastimg.metrics.prepare_rows`)
reads about 4x or 2x fewer bytes.  fastimg keeps its answers exact: a scan only
*proposes* candidates, with a bound on how far each row's kernel value can be
from its float32 surrogate, and :class:`fastimg.search.ExactSearcher` re-scores
candidates exactly and widens the candidate set until every excluded row is
certified worse ("Certification" below).  The float32 scan is certified the
same way (its bound is the float32 kernel's rounding).

Row formats (:class:`ReducedRows`, built by :func:`reduce_rows`, row by row, so
``reduce_rows(data[a:b])`` equals ``reduce_rows(data)[a:b]``: a cache can be
built in chunks):

=========  ==============================  =========================================
precision  codes                           row ``r`` stands for
=========  ==============================  =========================================
int8       uint8 (N, L), L = D rounded up  ``scale[r] * (codes[r, :D] - z)``; z = 128
           to a multiple of 4 (padding z)  (signed rows: codes 1..255), z = 0 for the
                                           non-negative rows of bhattacharyya (0..255)
float16    float16 (N, D)                  ``scale[r] * codes[r]``, ``scale[r]`` a
                                           power of two (no overflow, ever)
=========  ==============================  =========================================

``err[r]`` (float32, rounded up) bounds ``||x_r - x^_r||`` where ``x_r`` is the
float32 prepared row and ``x^_r`` what the codes stand for.  Per-row scales keep
the bound tightest on fastimg's descriptors (hsv72, cedd, CNN GeM: per-dimension
scales for the histogram metric bhattacharyya shrank the re-scored sets by 5 % at
most, bfloat16 bounds are 8x looser than float16: bench/search.md).

Certification (query ``q``, prepared ``q~``, float32 row ``x``, bias ``b``; the
surrogate ``s = q~ . x + b`` ranks rows like the metric):

* int8 queries are quantised too, ``q^ = qscale * q8``, with ``eq = ||q~ - q^||``;
  then ``|q~ . x - q^ . x^| <= ||q~|| err + eq ||x^||`` (Cauchy-Schwarz, twice);
* a reduced kernel computes ``V = q^ . x^ + b + ||q~|| err`` in float32 (integer
  sums are exact; four correctly rounded steps, and for float16 a float32 sum);
  ``s <= V + bound_offset`` for every row (:meth:`CandidateScan.bound_offset`:
  the rounding ``rho`` and ``eq * max ||x^||``); the float32 kernel's value is
  ``s`` up to its own rounding, its ``bound_offset``;
* a scan keeps the ``m`` rows of highest ``V``; every row left out has
  ``s <= V_m + bound_offset``.  The search re-scores candidates exactly, maps the
  k-th result's exact value (moved one float32 ulp towards worse) onto the
  surrogate (:func:`fastimg.metrics.surrogate_of_scores`) and subtracts a slack
  for the float32 rounding of the prepared rows (:meth:`CandidateScan.slack`):
  a row whose bound is below that threshold cannot beat or tie the k-th result.
  Candidates above it are re-scored; if the rows left out are not all below it,
  ``m`` grows (4x) and the query is scanned again; at worst every row is
  re-scored.

The guarantee is the float32 path's: the surrogate of a row agrees with its exact
float64 value up to the slack.  OpenCV's query-dependent epsilon cases (rows of
values around 1e-8, see :class:`fastimg.search.ExactSearcher`) and rows whose
float64 value loses most of its digits to cancellation (pearson rows whose
standard deviation is below ~1e-4 of their mean) are outside it.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, Optional, Tuple

import numpy as np
import numpy.typing as npt

from fastimg.errors import ArgumentError, ArgumentTypeError
from fastimg.metrics import Metric, aligned_empty, get_metric, prepare_rows

__all__ = ["PRECISIONS", "REDUCED", "ReducedRows", "reduce_rows", "reduce_prepared", "zero_point", "INT8_MAX_DIM",
           "check_precision", "ScanQueries", "CandidateScan", "Float32Scan", "ReducedScan"]

#: every precision :class:`fastimg.search.ExactSearcher` accepts (plus ``"auto"``)
PRECISIONS = ("float32", "float16", "int8")
#: the reduced ones (a :class:`ReducedRows` format each)
REDUCED = ("float16", "int8")
#: the largest D of int8 rows (the kernels' int32 sums cannot overflow below it)
INT8_MAX_DIM = 32768

_NONNEG_SPACES = ("l1", "sqrt_l1")  # embeddings that are >= 0 by construction
_ROW_CHUNK = 65536
_QUANT_ROWS = 4096  # rows quantised per step (float64 temporaries of a few MB)
_U = 2.0 ** -24  # unit roundoff of float32


def check_precision(precision: Any, metric: "str | Metric", dim: int, name: str = "precision") -> str:
    """``precision`` checked for a metric's rows of dimension ``dim``: one of
    :data:`PRECISIONS` or ``"auto"``; a reduced one needs an inner-product metric
    (pearson, bhattacharyya, cosine, l2: the others compare raw rows, which have
    no reduced form), and ``"int8"`` a dimension of at most :data:`INT8_MAX_DIM`.

    Raises :class:`fastimg.ArgumentError` naming the argument (``name``), what is
    accepted and what was given."""
    if not isinstance(precision, str) or (precision != "auto" and precision not in PRECISIONS):
        raise ArgumentError(f"{name} must be one of {list(PRECISIONS) + ['auto']}; got {precision!r}")
    m = get_metric(metric)
    if precision in REDUCED and not m.ip_form:
        raise ArgumentError(f"{name}={precision!r} needs an inner-product metric (pearson, bhattacharyya, "
                            f"cosine, l2); metric "
                            f"{m.name!r} compares the float32 rows themselves (use {name}='float32' or 'auto')")
    if precision == "int8" and dim > INT8_MAX_DIM:
        raise ArgumentError(f"{name}='int8' supports D <= {INT8_MAX_DIM}; got D={dim} (use 'float16')")
    return precision


def zero_point(metric: "str | Metric") -> int:
    """The int8 zero point of a metric's prepared rows: 0 where they are
    non-negative by construction (bhattacharyya's ``sqrt_l1``: codes 0..255),
    else 128 (codes 1..255, symmetric)."""
    m = get_metric(metric)
    return 0 if m.ip_space in _NONNEG_SPACES else 128


def _up32(x: np.ndarray) -> np.ndarray:
    """float32 values >= the float64 ``x`` (>= 0), at most a few ulps above."""
    x = np.asarray(x, dtype=np.float64) * (1.0 + 2.0 ** -40)
    f = x.astype(np.float32)
    low = f.astype(np.float64) < x
    if np.any(low):
        f[low] = np.nextafter(f[low], np.float32(np.inf))
    return f


@dataclass(frozen=True, eq=False)
class ReducedRows:
    """Reduced-precision copy of a metric's prepared rows (a rebuildable cache).

    Attributes
    ----------
    precision : {"float16", "int8"}
    codes : ndarray, shape (N, L)
        int8: uint8 with ``L = ceil(D / 4) * 4``; float16: float16 with ``L = D``.
    scale : ndarray of float32, shape (N,)
        Per-row scales (powers of two for float16).
    err : ndarray of float32, shape (N,)
        Upper bounds of ``||prepared_row - scale * (codes - z)||``.

    The three arrays are what an index persists (:meth:`arrays`); pass them back
    through ``ExactSearcher(..., precision=..., reduced=ReducedRows(...))``.  They
    are trusted as :func:`reduce_rows` built them (the shapes and dtypes are
    checked, the bounds cannot be without the float32 rows).  Instances compare
    (and hash) by identity: arrays, possibly memmaps of gigabytes, have no cheap
    equality.
    """

    precision: str
    codes: np.ndarray
    scale: np.ndarray
    err: np.ndarray

    def __len__(self) -> int:
        return int(self.codes.shape[0])

    @property
    def nbytes(self) -> int:
        """Bytes of the three arrays."""
        return int(self.codes.nbytes + self.scale.nbytes + self.err.nbytes)

    def arrays(self) -> Dict[str, np.ndarray]:
        """``{"codes": ..., "scale": ..., "err": ...}`` (the arrays to persist)."""
        return {"codes": self.codes, "scale": self.scale, "err": self.err}

    def __getitem__(self, rows: slice) -> "ReducedRows":
        """The reduced rows of a slice of rows (views)."""
        if not isinstance(rows, slice):
            raise ArgumentTypeError(f"ReducedRows can be sliced by rows only; got {type(rows).__name__}")
        return ReducedRows(self.precision, self.codes[rows], self.scale[rows], self.err[rows])

    @staticmethod
    def empty(precision: str, n: int, d: int) -> "ReducedRows":
        """Uninitialised arrays for ``n`` rows of dimension ``d`` (64-byte aligned
        codes), to fill chunk by chunk from :func:`reduce_rows`."""
        precision = _check_reduced(precision)
        width = _code_width(precision, d)
        dtype = np.uint8 if precision == "int8" else np.float16
        return ReducedRows(precision, aligned_empty((n, width), dtype), np.empty(n, np.float32),
                           np.empty(n, np.float32))

    def check(self, n: int, d: int, name: str = "reduced") -> None:
        """Raise ``ValueError`` unless the arrays fit N = ``n`` rows of dimension
        ``d`` (dtypes, shapes, C-contiguity), naming the array, what was expected and
        what was found."""
        _check_reduced(self.precision)
        width = _code_width(self.precision, d)
        want = np.uint8 if self.precision == "int8" else np.float16
        c = self.codes
        if not isinstance(c, np.ndarray) or c.dtype != want or c.shape != (n, width) or not c.flags.c_contiguous:
            raise ArgumentError(f"{name}.codes must be a C-contiguous {np.dtype(want).name} array of shape "
                             f"({n}, {width}) for {self.precision} rows of N={n}, D={d}; got "
                             f"{getattr(c, 'dtype', type(c).__name__)} {getattr(c, 'shape', '')}")
        for field in ("scale", "err"):
            a = getattr(self, field)
            if not isinstance(a, np.ndarray) or a.dtype != np.float32 or a.shape != (n,) or not a.flags.c_contiguous:
                raise ArgumentError(f"{name}.{field} must be a C-contiguous float32 array of shape ({n},); got "
                                 f"{getattr(a, 'dtype', type(a).__name__)} {getattr(a, 'shape', '')}")


def _check_reduced(precision: Any) -> str:
    if precision not in REDUCED:
        raise ArgumentError(f"reduced precision must be one of {list(REDUCED)}; got {precision!r}")
    return str(precision)


def _code_width(precision: str, d: int) -> int:
    return (d + 3) // 4 * 4 if precision == "int8" else d


def reduce_prepared(metric: "str | Metric", prepared: np.ndarray, precision: str,
                    out: Optional[ReducedRows] = None) -> ReducedRows:
    """Reduced rows of float32 prepared rows (``prepare_rows(metric, data)[0]``).

    Parameters
    ----------
    metric : str or Metric
        The metric the rows were prepared for (its space decides the int8 zero point).
    prepared : ndarray of float32, shape (N, D)
    precision : {"float16", "int8"}
    out : ReducedRows, optional
        Written in place (e.g. :meth:`ReducedRows.empty`, or memmaps) and returned.

    Returns
    -------
    ReducedRows
    """
    m = get_metric(metric)
    p = np.asarray(prepared)
    if p.ndim != 2 or p.dtype != np.float32:
        raise ArgumentError(f"prepared must be float32 (N, D); got {p.dtype} {p.shape}")
    out = _output(precision, p.shape, out)
    _quantize(p, out, zero_point(m))
    return out


def _output(precision: Any, shape: Tuple[int, ...], out: Optional[ReducedRows]) -> ReducedRows:
    """``out`` checked for (N, D) rows of ``precision``, or new arrays."""
    precision = _check_reduced(precision)
    n, d = shape
    if precision == "int8" and d > INT8_MAX_DIM:
        raise ArgumentError(f"precision 'int8' supports D <= {INT8_MAX_DIM}; got D={d} (use 'float16')")
    if out is None:
        return ReducedRows.empty(precision, n, d)
    out.check(n, d, "out")
    if out.precision != precision:
        raise ArgumentError(f"out holds {out.precision!r} rows; expected {precision!r}")
    return out


def reduce_rows(metric: "str | Metric", data: npt.ArrayLike, precision: str,
                out: Optional[ReducedRows] = None) -> Tuple[ReducedRows, Optional[np.ndarray]]:
    """Prepare raw rows for an inner-product metric and reduce them.

    Parameters
    ----------
    metric : str or Metric
        pearson, bhattacharyya, cosine or l2.
    data : array_like, shape (N, D)
        Raw rows (read in chunks).
    precision : {"float16", "int8"}
    out : ReducedRows, optional
        Written in place and returned.

    Returns
    -------
    reduced : ReducedRows
    bias : ndarray of float32, shape (N,), or None
        The float32 bias of :func:`fastimg.metrics.prepare_rows` (the reduced scan
        adds it exactly as the float32 path does).

    Row by row: ``reduce_rows(m, data[a:b], p)`` equals the rows ``a:b`` of
    ``reduce_rows(m, data, p)``.
    """
    m = get_metric(metric)
    data = np.asarray(data) if not isinstance(data, np.ndarray) else data
    if data.ndim != 2:
        raise ArgumentError(f"data must be 2-D (N, D); got shape {data.shape}")
    n = data.shape[0]
    out = _output(precision, data.shape, out)
    bias = np.zeros(n, dtype=np.float32) if m.bias else None
    for start in range(0, n, _ROW_CHUNK):
        stop = min(n, start + _ROW_CHUNK)
        p, b = prepare_rows(m, data[start:stop])
        _quantize(p, out[start:stop], zero_point(m))
        if bias is not None and b is not None:
            bias[start:stop] = b
    return out, bias


def _quantize(p32: np.ndarray, out: ReducedRows, z: int) -> None:
    """Codes, scales and error bounds of float32 prepared rows, written into ``out``.

    The codes may be computed in float32 (any rounding of ``x / scale`` is a valid
    code); the error bound is computed in float64 from the codes actually stored."""
    n, d = p32.shape
    precision, out_codes = out.precision, out.codes
    for a in range(0, n, _QUANT_ROWS):
        x = p32[a:a + _QUANT_ROWS]
        amax = np.abs(x).max(axis=1).astype(np.float64) if d else np.zeros(len(x))
        if precision == "int8":
            qmax = 255.0 if z == 0 else 127.0
            s = (amax / qmax).astype(np.float32)
            s[~(s > 0)] = 1.0  # zero rows (and underflow): any scale, codes z
            c = x / s[:, None]
            np.rint(c, out=c)
            np.clip(c, 0.0 if z == 0 else -127.0, qmax, out=c)
            codes = out_codes[a:a + len(x)]
            codes[:, :d] = c + z
            codes[:, d:] = z
            xh = c.astype(np.float64)
            xh *= s.astype(np.float64)[:, None]  # exact: a float32 times a small integer
        else:
            _, e = np.frexp(amax)  # amax = f * 2**e, 0.5 <= f < 1: rows / 2**e in (-1, 1)
            e = np.clip(np.where(amax > 0, e, 0), -100, 127)
            s64 = np.ldexp(1.0, e)
            s = s64.astype(np.float32)  # exact
            h = (x / s[:, None]).astype(np.float16)  # any rounding: err is measured on h
            out_codes[a:a + len(x)] = h
            xh = h.astype(np.float64)
            xh *= s64[:, None]  # exact
        np.subtract(x, xh, out=xh)
        out.err[a:a + len(x)] = _up32(np.sqrt(np.einsum("ij,ij->i", xh, xh)))
        out.scale[a:a + len(x)] = s


# ---------------------------------------------------------------------------
# certified candidate scans
# ---------------------------------------------------------------------------

@dataclass
class ScanQueries:
    """Prepared queries in the form a scan's kernel takes, with their bounds.

    Attributes
    ----------
    codes : ndarray
        int8: int8 (Q, L) quantised queries (zero padded); float16 and float32:
        the float32 prepared queries (Q, D).
    qscale : ndarray of float32 (Q,)
        int8 query scales (ones otherwise).
    qoff : ndarray of int32 (Q,)
        ``z * codes.sum(axis=1)`` (int8; zeros otherwise).
    alpha : ndarray of float32 (Q,)
        ``||q~||`` rounded up (the factor of ``err`` in a reduced kernel's value).
    eq : ndarray of float64 (Q,)
        Query quantisation error ``||q~ - qscale * codes||`` (rounded up; 0 unless int8).
    """

    codes: np.ndarray
    qscale: np.ndarray
    qoff: np.ndarray
    alpha: np.ndarray
    eq: np.ndarray

    def take(self, at: np.ndarray) -> "ScanQueries":
        """The queries ``at``."""
        return ScanQueries(self.codes[at], self.qscale[at], self.qoff[at], self.alpha[at], self.eq[at])


class CandidateScan:
    """A candidate scan over one metric's prepared rows in one precision, with the
    bounds that certify it (base of :class:`Float32Scan` and :class:`ReducedScan`).

    A scan returns, per query, the ``m`` rows with the best kernel values ``V``
    (:meth:`topk`); :meth:`excluded_bound` bounds the float32 surrogate ``s`` of
    every row left out; :meth:`slack` is how far ``s`` may be from the surrogate
    of the row's exact float64 value (:func:`fastimg.metrics.surrogate_of_scores`).
    The constants ``bmax`` (largest ``|bias|``) and ``xmax`` (a bound on the
    float32 rows' norms: 1 for the unit spaces, ``sqrt(max |bias|)`` for l2,
    whose bias is ``-|x|^2``) are computed once.
    """

    precision = ""

    def __init__(self, metric: Metric, bias: Optional[np.ndarray], dim: int) -> None:
        self.metric = metric
        self.bias = bias
        self.dim = dim
        self.bmax = float(np.abs(bias).max()) if bias is not None and bias.size else 0.0
        if metric.ip_space == "raw":
            self.xmax = float(np.sqrt(self.bmax * (1.0 + 4 * _U))) * (1.0 + 4 * _U)
        else:  # unit, centred_unit, sqrt_l1: unit (or zero) rows, rounded to float32
            self.xmax = 1.0 + (dim + 4) * _U

    def _alpha(self, qp: np.ndarray) -> np.ndarray:
        """``||q~||`` rounded up to float32 (the 2**-20 margin exceeds the float64
        sum's error and the float32 rounding of the result)."""
        q64 = qp.astype(np.float64)
        return (np.sqrt(np.einsum("ij,ij->i", q64, q64)) * (1.0 + 2.0 ** -20)).astype(np.float32)

    def queries(self, qp: np.ndarray) -> ScanQueries:
        """:class:`ScanQueries` of float32 prepared queries (Q, D)."""
        nq = qp.shape[0]
        return ScanQueries(np.ascontiguousarray(qp, dtype=np.float32), np.ones(nq, np.float32),
                           np.zeros(nq, np.int32), self._alpha(qp), np.zeros(nq))

    def topk(self, sq: ScanQueries, m: int, mask: Optional[np.ndarray], threads: int,
             chunk_rows: int) -> Tuple[np.ndarray, np.ndarray]:  # pragma: no cover - abstract
        raise NotImplementedError

    def bound_offset(self, sq: ScanQueries) -> np.ndarray:  # pragma: no cover - abstract
        """(Q,) float64: a row whose kernel value is ``V`` has a float32 surrogate
        ``s <= V + bound_offset``."""
        raise NotImplementedError

    def excluded_bound(self, sq: ScanQueries, v_last: np.ndarray) -> np.ndarray:
        """(Q,) float64 upper bounds of the float32 surrogate ``s`` of every row a
        scan left out, from the value ``v_last`` of the last row it kept."""
        return v_last.astype(np.float64) + self.bound_offset(sq)

    def slack(self, sq: ScanQueries) -> np.ndarray:
        """(Q,) how far the float32 surrogate ``s`` of a row can be from the
        surrogate of its exact float64 value: the float32 rounding of the prepared
        rows, queries and bias (a few units of 2**-24), with a 16x margin for the
        float64 arithmetic of both; l2 adds the float64 rounding of ``|q|^2``."""
        a = sq.alpha.astype(np.float64)
        return 2.0 ** -20 * (a * self.xmax + self.bmax) + 2.0 ** -44 * a * a


class Float32Scan(CandidateScan):
    """The float32 prepared rows scanned by ``fastimg._core.fused_topk``; its
    values are float32 sums, at most ``dim + 4`` terms deep."""

    precision = "float32"

    def __init__(self, metric: Metric, prepared: np.ndarray, bias: Optional[np.ndarray]) -> None:
        super().__init__(metric, bias, prepared.shape[1])
        self.prepared = prepared

    def topk(self, sq: ScanQueries, m: int, mask: Optional[np.ndarray], threads: int,
             chunk_rows: int) -> Tuple[np.ndarray, np.ndarray]:
        """(ids, values) of the ``m`` best rows per query by ``fused_topk``."""
        from fastimg import _core

        return _core.fused_topk(self.prepared, sq.codes, m, kind=_core.KIND_IP, bias=self.bias, mask=mask,
                                n_threads=threads, chunk_rows=chunk_rows)

    def bound_offset(self, sq: ScanQueries) -> np.ndarray:
        """(Q,) the float32 kernel's rounding: a sum ``dim + 4`` deep, then the bias."""
        a = sq.alpha.astype(np.float64)
        return (self.dim + 4) * _U * (a * self.xmax + self.bmax)


class ReducedScan(CandidateScan):
    """The :class:`ReducedRows` of one metric scanned by ``fastimg._core.i8_topk``
    / ``f16_topk``.  Adds the constants ``emax`` (largest ``err``) and ``nhat`` (a
    bound on the reduced rows' norms, ``xmax + emax``)."""

    def __init__(self, metric: Metric, rows: ReducedRows, bias: Optional[np.ndarray], dim: int) -> None:
        super().__init__(metric, bias, dim)
        self.rows = rows
        self.precision = rows.precision
        self.zero = zero_point(metric) if rows.precision == "int8" else 0
        self.emax = float(rows.err.max()) if len(rows) else 0.0
        self.nhat = (self.xmax + self.emax) * (1.0 + 4 * _U)
        self._codes_kernel = rows.codes if rows.precision == "int8" else rows.codes.view(np.uint16)

    def queries(self, qp: np.ndarray) -> ScanQueries:
        """:class:`ScanQueries` of float32 prepared queries (Q, D); int8 quantises
        them (per-query scale ``max |q~| / 127``)."""
        if self.precision == "float16":
            return super().queries(qp)
        nq, d = qp.shape
        q64 = qp.astype(np.float64)
        amax = np.abs(q64).max(axis=1) if d else np.zeros(nq)
        qscale = (amax / 127.0).astype(np.float32)
        qscale[~(qscale > 0)] = 1.0
        s64 = qscale.astype(np.float64)[:, None]
        c = np.clip(np.rint(q64 / s64), -127.0, 127.0)
        codes = np.zeros((nq, _code_width("int8", d)), dtype=np.int8)
        codes[:, :d] = c.astype(np.int8)
        eq = _up32(np.sqrt(np.einsum("ij,ij->i", q64 - c * s64, q64 - c * s64))).astype(np.float64)
        qoff = (self.zero * c.sum(axis=1)).astype(np.int32)
        return ScanQueries(codes, qscale, qoff, self._alpha(qp), eq)

    def topk(self, sq: ScanQueries, m: int, mask: Optional[np.ndarray], threads: int,
             chunk_rows: int) -> Tuple[np.ndarray, np.ndarray]:
        """(ids, values) of the ``m`` best rows per query by the kernel's value
        ``V = q^ . x^ + bias + ||q~|| err``, best first."""
        from fastimg import _core

        r = self.rows
        if r.precision == "int8":
            return _core.i8_topk(self._codes_kernel, sq.codes, m, sq.qscale, sq.qoff, sq.alpha, r.scale, r.err,
                                 self.bias, mask, n_threads=threads, chunk_rows=chunk_rows)
        return _core.f16_topk(self._codes_kernel, sq.codes, m, sq.alpha, r.scale, r.err, self.bias, mask,
                              n_threads=threads, chunk_rows=chunk_rows)

    def bound_offset(self, sq: ScanQueries) -> np.ndarray:
        """(Q,) ``rho + eq * nhat``: the rounding ``rho`` of the kernel's float32
        value (4 correctly rounded steps, and the float16 dot product's float32
        sum, at most ``dim + 8`` terms deep) and the query quantisation error; the
        row's own error ``||q~|| err`` is inside ``V`` already."""
        alpha = sq.alpha.astype(np.float64)
        rho = 2.0 ** -21 * ((alpha + sq.eq) * self.nhat + self.bmax + alpha * self.emax)
        if self.precision == "float16":
            rho += (self.dim + 8) * 2 * _U * alpha * self.nhat
        return rho + sq.eq * self.nhat
