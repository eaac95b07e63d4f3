"""The exact scan of an index: a cached prefix plus rows derived in memory, merged.

An inner-product metric (:attr:`fastimg.metrics.Metric.ip_form`) scans prepared
rows, in the index's precision: the float32 prepared rows, or their float16 /
int8 copies (:mod:`fastimg.precision`; the answer is the same, certified and
re-scored from the float32 vectors, which are never touched).  A handle never writes them (:mod:`fastimg.index.caches`): a search maps
the largest prefix a writer cached (the *head*, rows ``[0, h)``) and prepares the
rows after it in memory (the *tail*, rows ``[h, n)``, kept per handle and
extended when rows are added).  Each part is scanned by its own
:class:`fastimg.search.ExactSearcher` and the candidates are merged by the
metric's exact value (:func:`merge_candidates`, also the merge of the HNSW
graph's results with the exact scan of the rows it lacks).  The other metrics
scan the raw rows in one part.

:class:`Scans` keeps what one handle derived, per metric and space (the raw
vectors, or one whitening fit), for one vector-file generation.  It is safe to
use from many threads: a scan is an immutable snapshot (searchers over fixed
arrays), built under a lock only when the state changed, and published by one
assignment; a tail grows by appending rows after those any published scan uses.

Memory: a part holds its searcher's arrays (:attr:`Scan.nbytes`): memory maps
of the cached prefix (pages the OS shares and may evict) and the tail derived in
memory.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any, Optional, Sequence

import numpy as np

from fastimg.errors import ArgumentError
from fastimg.index.caches import Caches, Rows, cache_dtype, derive_rows, scan_fn, scan_outputs
from fastimg.index.store import State
from fastimg.metrics import Metric
from fastimg.precision import ReducedRows
from fastimg.search import ExactSearcher, rescore

__all__ = ["Scan", "Scans", "merge_candidates"]

_CHECK_ROWS = 65536  # rows checked per step


def merge_candidates(metric: Metric, q: np.ndarray, data: Any, parts: Sequence[np.ndarray],
                     k: int) -> tuple[np.ndarray, np.ndarray]:
    """The best ``k`` of the union of candidate lists, by the metric's exact value.

    ``parts``: ``(Q, c_i)`` int arrays of distinct row ids of ``data`` (-1 = none,
    ids disjoint between parts).  Returns ``(ids (Q, k) int64, scores (Q, k)
    float32)`` best first, ties by the lower id (as :func:`fastimg.search.rescore`
    orders), padded with -1 / NaN.
    """
    nq = q.shape[0]
    ids = np.concatenate([np.asarray(p, np.int64) for p in parts], axis=1) if parts else np.zeros((nq, 0), np.int64)
    out_i = np.full((nq, k), -1, dtype=np.int64)
    out_s = np.full((nq, k), np.nan, dtype=np.float32)
    valid = ids >= 0
    counts = valid.sum(axis=1)
    if nq == 0 or counts.max() == 0:
        return out_i, out_s
    if counts.min() == counts.max():  # the common case: one call
        c = int(counts[0])
        kk = min(k, c)
        out_i[:, :kk], out_s[:, :kk] = rescore(metric, q, data, ids[valid].reshape(nq, c), kk)
        return out_i, out_s
    for r in range(nq):
        cand = ids[r][valid[r]]
        if cand.size:
            kk = min(k, cand.size)
            ri, rs = rescore(metric, q[r:r + 1], data, cand[None, :], kk)
            out_i[r, :kk], out_s[r, :kk] = ri[0], rs[0]
    return out_i, out_s


@dataclass(frozen=True)
class Scan:
    """An exact scan of rows ``[0, rows)`` of ``data`` for one metric, in parts
    ``(first row, searcher over the rows from there)``."""

    metric: Metric
    data: Any
    rows: int
    parts: tuple[tuple[int, ExactSearcher], ...]

    @property
    def precision(self) -> str:
        """What the scan reads ("float32", "float16" or "int8")."""
        return self.parts[0][1].precision if self.parts else "float32"

    @property
    def nbytes(self) -> int:
        """Bytes of the derived arrays the parts read (:attr:`ExactSearcher.nbytes`)."""
        return sum(s.nbytes for _, s in self.parts)

    def search(self, q: np.ndarray, k: int, mask: Optional[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """``(ids (Q, <= k), scores)`` of the best ``k`` rows not in ``mask``
        (boolean, ``rows`` long, True = left out), -1 / NaN padded."""
        nq = q.shape[0]
        if not self.parts:
            return np.zeros((nq, 0), np.int64), np.zeros((nq, 0), np.float32)
        if len(self.parts) == 1:
            (start, s), = self.parts
            ids, scores = s.search(q, k, exclude=mask)
            return np.asarray(ids, np.int64), np.asarray(scores, np.float32)
        found = []
        for start, s in self.parts:
            part = None if mask is None else mask[start:start + s.n]
            ids, _ = s.search(q, k, exclude=part)
            found.append(np.asarray(ids, np.int64) + start)
        return merge_candidates(self.metric, q, self.data, found, k)


@dataclass
class _Derived:
    """What one handle derived for one metric in one space and generation."""

    generation: int
    head: int = 0  # rows covered by the cached prefix
    head_arrays: list = field(default_factory=list)  # its memmaps (scan_outputs: prepared, bias, or reduced)
    head_searcher: Optional[ExactSearcher] = None
    tail: list = field(default_factory=list)  # Rows of the scan_outputs for rows [head, head + tail.n)
    checked: int = 0  # rows checked finite/non-negative (histogram metrics)
    last: Optional[Scan] = None


class Scans:
    """The exact scans of one handle (see the module docstring).

    Parameters
    ----------
    caches : Caches
        Where writers keep the prepared rows.
    threads : int, optional
        Threads of every searcher.
    """

    def __init__(self, caches: Caches, threads: Optional[int] = None):
        self._caches = caches
        self.threads = threads
        self._derived: dict[tuple, _Derived] = {}
        self._lock = threading.Lock()

    def clear(self) -> None:
        """Forget everything derived (the matrices changed)."""
        with self._lock:
            self._derived = {}

    def get(self, m: Metric, state: State, data: Any, space: Optional[str], check: bool,
            precision: str = "float32") -> Scan:
        """The scan of rows ``[0, state.committed)`` of ``data`` (the raw vectors, or
        the whitened matrix of fit ``space``) for ``m``, reading ``precision`` (a
        resolved one, :func:`fastimg.search.resolve_precision`; float32 for the
        metrics without an inner-product form).  ``check``: verify rows are
        non-negative (a histogram metric on rows that may hold negatives)."""
        key = (m.name, space, precision if m.ip_form else "float32")
        d = self._derived.get(key)
        if d is not None and d.generation == state.generation and d.last is not None \
                and d.last.rows == state.committed:
            return d.last
        with self._lock:
            d = self._derived.get(key)
            if d is None or d.generation != state.generation:
                d = _Derived(state.generation)
                self._derived = {**self._derived, key: d}
            scan = self._build(d, m, state, data, space, check, key[2])
            if d.last is None or scan.rows >= d.last.rows:
                d.last = scan
            return scan

    @staticmethod
    def _check(d: _Derived, m: Metric, data: Any, n: int, check: bool) -> None:
        """Histogram metrics: the rows not checked yet must be non-negative (rows are
        checked finite when they are added)."""
        for a in range(d.checked, n, _CHECK_ROWS) if check else ():
            block = np.asarray(data[a:min(n, a + _CHECK_ROWS)])
            if block.size and block.min() < 0:
                row = a + int(np.flatnonzero((block < 0).any(axis=1))[0])
                raise ArgumentError(f"metric {m.name!r} compares histograms and needs non-negative values, but "
                                    f"row {row} of the index's vectors has a negative value: use a metric for "
                                    "signed vectors (cosine, pearson, l2, l1)")
        d.checked = max(d.checked, n)

    def _searcher(self, m: Metric, rows: Any, precision: str, arrays: Sequence[np.ndarray]) -> ExactSearcher:
        """A searcher over ``rows`` reading ``arrays`` (:func:`scan_outputs`' order)."""
        if precision == "float32":
            return ExactSearcher(rows, m, prepared=arrays[0], bias=arrays[1] if len(arrays) > 1 else None,
                                 threads=self.threads, check=False)
        reduced = ReducedRows(precision, arrays[0], arrays[1], arrays[2])
        return ExactSearcher(rows, m, precision=precision, reduced=reduced,
                             bias=arrays[3] if len(arrays) > 3 else None, threads=self.threads, check=False)

    def _build(self, d: _Derived, m: Metric, state: State, data: Any, space: Optional[str], check: bool,
               precision: str) -> Scan:
        n = state.committed
        if n == 0:
            return Scan(m, data, 0, ())
        self._check(d, m, data, n, check)
        if not m.ip_form:  # the raw rows themselves
            return Scan(m, data, n, ((0, ExactSearcher(data[:n], m, threads=self.threads, check=False)),))
        outputs = scan_outputs(m.name, int(data.shape[1]), precision, "" if space is None else f"whitened-{space}-")
        found = self._caches.prefix(outputs, state)
        if found is not None and found[0] > d.head:  # a writer cached more rows: map them
            h, arrays = found
            d.head, d.head_arrays = h, arrays
            d.head_searcher = self._searcher(m, data[:h], precision, arrays)
            d.tail = []
        parts: list[tuple[int, ExactSearcher]] = []
        h = min(d.head, n)
        if h > 0:
            s = d.head_searcher
            assert s is not None
            if s.n != h:  # an older state than the head covers
                s = self._searcher(m, data[:h], precision, [a[:h] for a in d.head_arrays])
            parts.append((0, s))
        if n > h:
            if not d.tail:
                d.tail = [Rows(shape, cache_dtype(name)) for name, shape in outputs]
            have = h + d.tail[0].n
            if have < n:
                derive_rows(data, have, n, scan_fn(m.name, precision, len(outputs)), d.tail)
            parts.append((h, self._searcher(m, data[h:n], precision, [r.view()[:n - h] for r in d.tail])))
        return Scan(m, data, n, tuple(parts))
