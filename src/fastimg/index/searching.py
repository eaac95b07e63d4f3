"""One search of an index: the space, the exact or graph candidates, "self", filters, re-ranking.

:meth:`Search.run` takes query vectors (raw, or already in the search space)
and a :class:`~fastimg.index.view.View`, and returns ``(ids, scores)`` padded
with -1 / NaN (padding only at the end of a row):

1. the **space**: the raw vectors, or with a whitening fitted the whitened
   matrix (:mod:`fastimg.index.whitening`) and the transformed queries;
2. the **candidates**: ``k`` plus room for the query's own rows, from the HNSW
   graph when :meth:`fastimg.index.graph.Graph.choose` picks it (the rows it
   lacks scanned exactly and merged), else from an exact scan
   (:mod:`fastimg.index.scan`: the prepared rows a writer cached, the others
   prepared in memory, in the index's precision: :func:`scan_precision`);
   deleted rows are excluded by the view's mask.  With a
   ``where`` filter (``allowed`` ids), the search is exact: a small set of rows
   is scored directly, a large one scanned with every other row masked;
3. **self**: the query's own rows are dropped (its indexed row, or the
   lowest-id candidate whose stored vector is bit-identical to the query);
4. **re-ranking** (:func:`fastimg.rerank.apply`), when asked for, with the
   index's vectors and the same search (same exclusions) as callbacks; the first
   search already fetches the candidates re-ranking needs;
5. the **threshold**: results beyond it (in the metric's direction) are dropped.

Nothing here writes a file, and nothing holds a lock while scanning: one
handle serves many threads.
"""
from __future__ import annotations

import logging
from typing import Any, Optional, Sequence

import numpy as np

from fastimg.errors import AnnSearchError, ArgumentError
from fastimg.index.caches import Caches
from fastimg.index.graph import Graph
from fastimg.index.scan import Scans
from fastimg.index.store import Store
from fastimg.index.view import Allowed, View
from fastimg.index.whitening import Fit, Whitening
from fastimg.metrics import Metric, get_metric
from fastimg.precision import PRECISIONS, REDUCED
from fastimg.search import rescore, resolve_precision

__all__ = ["Search", "DIRECT_ELEMS", "within", "PRECISION_KEY", "index_precision", "scan_precision",
           "representation_bytes"]

log = logging.getLogger("fastimg.index")

#: A ``where`` filter whose rows hold at most this many values (rows x dim), and
#: at most a quarter of the rows, is answered by scoring those rows directly
#: instead of scanning the whole matrix with the others masked.
DIRECT_ELEMS = 1 << 20
_IDENT_ELEMS = 1 << 20  # candidate values (queries x candidates x dim) compared per step with the queries


#: The ``meta`` key of the index's precision (a JSON string; absent: "float32").
PRECISION_KEY = "precision"


def index_precision(view: View) -> str:
    """The index's precision setting at ``view`` (``"float32"``, ``"float16"``,
    ``"int8"`` or ``"auto"``)."""
    return str(view.get(PRECISION_KEY) or "float32")


def scan_precision(view: View, m: Metric, dim: int) -> str:
    """What an exact scan of ``m`` reads at ``view``: the index's precision
    (``"auto"`` resolved on the committed rows by
    :func:`fastimg.search.resolve_precision`) for an inner-product metric, float32
    for the others (they compare the raw rows)."""
    if not m.ip_form:
        return "float32"
    return resolve_precision(m, index_precision(view), view.state.committed, dim)


def representation_bytes(metric: str, rows: int, dim: int) -> dict[str, int]:
    """Bytes each representation of ``rows`` vectors takes: ``vectors`` (the float32
    vectors themselves), and for an inner-product metric what its exact scan reads
    in each precision (prepared rows or reduced codes, with their per-row scale,
    error bound and bias)."""
    m = get_metric(metric)
    out = {"vectors": rows * dim * 4}
    if m.ip_form:
        bias = rows * 4 if m.bias else 0
        width = {"float32": dim * 4, "float16": dim * 2, "int8": (dim + 3) // 4 * 4}
        for p in PRECISIONS:
            out[p] = rows * width[p] + bias + (rows * 8 if p in REDUCED else 0)
    return out


def within(scores: np.ndarray, threshold: float, m: Metric) -> np.ndarray:
    """Which ``scores`` are within ``threshold`` in the metric's direction (NaN: no)."""
    with np.errstate(invalid="ignore"):
        return scores >= threshold if m.higher_is_better else scores <= threshold


def _compact(ids: np.ndarray, scores: np.ndarray, keep: np.ndarray,
             width: Optional[int] = None) -> tuple[np.ndarray, np.ndarray]:
    """Rows of ``(ids, scores)`` with only the ``keep`` entries, in order, padded at
    the end with -1 / NaN, ``width`` columns (default: as many as ``ids``)."""
    nq, nc = ids.shape
    width = nc if width is None else width
    out_i = np.full((nq, width), -1, dtype=ids.dtype)
    out_s = np.full((nq, width), np.nan, dtype=scores.dtype)
    w = min(width, nc)
    if nq == 0 or w == 0:
        return out_i, out_s
    if keep.all():
        out_i[:, :w], out_s[:, :w] = ids[:, :w], scores[:, :w]
        return out_i, out_s
    # the kept entries first, in their order (a stable sort of the "dropped" flags)
    order = np.argsort(~keep, axis=1, kind="stable")[:, :w]
    got = np.arange(w) < keep.sum(axis=1)[:, None]
    out_i[:, :w] = np.where(got, np.take_along_axis(ids, order, axis=1), -1)
    out_s[:, :w] = np.where(got, np.take_along_axis(scores, order, axis=1), np.nan)
    return out_i, out_s


def _identical(array: Any, q: np.ndarray, cand: np.ndarray, ok: np.ndarray) -> np.ndarray:
    """``(Q, C)`` bool: candidate ``cand[r, c]`` (where ``ok``) is bit-identical to ``q[r]``.

    One value per candidate first - each query's largest-magnitude column, the one
    least likely to be shared by chance (a histogram's empty bins are) - then whole
    rows only for the candidates that match it."""
    col = np.abs(q).argmax(axis=1)
    same = (array[np.where(ok, cand, 0), col[:, None]] == q[np.arange(len(q)), col][:, None]) & ok
    if same.any():
        ri, ci = np.nonzero(same)
        same[ri, ci] = (array[cand[ri, ci]] == q[ri]).all(axis=1)
    return same


class Search:
    """The search of one index handle (its exact scans: :class:`~fastimg.index.scan.Scans`)."""

    def __init__(self, store: Store, caches: Caches, whitening: Whitening, graph: Graph,
                 threads: Optional[int] = None):
        self._store = store
        self._whitening = whitening
        self._graph = graph
        self._scans = Scans(caches, threads)

    @property
    def threads(self) -> Optional[int]:
        return self._scans.threads

    @threads.setter
    def threads(self, value: Optional[int]) -> None:
        self._scans.threads = value
        self._scans.clear()

    def clear(self) -> None:
        """Drop the exact scans (their matrices changed)."""
        self._scans.clear()

    def run(self, view: View, fit: Optional[Fit], q: np.ndarray, k: int, m: Metric, mode: str, ef: Optional[int],
            candidates: Optional[int], selfs: Sequence[Optional[set]], ident: Sequence[bool],
            rerank: Optional[str], *, in_space: bool = False, allowed: Optional[Allowed] = None,
            threshold: Optional[float] = None) -> tuple[np.ndarray, np.ndarray]:
        """``(ids (Q, k) int64, scores (Q, k) float32)`` for query vectors ``q``.

        ``selfs[r]``: ids that are query ``r`` itself (left out); ``ident[r]``:
        also leave out the lowest-id row bit-identical to it.  ``q`` holds raw
        vectors, or (``in_space``) vectors already in the search space (whitened
        when a whitening is fitted: re-ranking's expanded queries).  ``allowed``:
        the live rows a ``where`` filter keeps (None: every live row);
        ``threshold``: drop results beyond it.
        """
        k_out = k
        if rerank:
            # fetch what re-ranking will use now, rather than searching twice
            from fastimg.rerank import candidates_needed

            k = candidates_needed(rerank, k)
        if fit is not None:
            self._whitening.check_metric(m)
            data = self._whitening.data(view, fit)
            qs = q if in_space else np.ascontiguousarray(fit.model.transform(q), dtype=np.float32)
        else:
            data, qs = view.array, q
        nq = q.shape[0]
        live = view.live if allowed is None else allowed.size
        if live == 0:
            if mode == "ann" and allowed is None:
                raise ArgumentError(f"{self._store.path}: mode='ann' but the index is empty")
            return np.full((nq, k_out), -1, dtype=np.int64), np.full((nq, k_out), np.nan, dtype=np.float32)
        extra = max([len(s) for s in selfs if s] + [0]) + (1 if any(ident) else 0)
        want = min(k + extra, live)
        ids = scores = None
        graph = None
        if allowed is None:
            graph, _ = self._graph.choose(view, m, mode, None if fit is None else fit.fit_id)
        if graph is not None:
            try:
                ids, scores = self._graph.candidates(graph, view, data, qs, want, m, ef, candidates,
                                                     checked=not in_space)
            except AnnSearchError as exc:
                # e.g. a graph file saved by a writer after this reader's snapshot, or
                # too many deletions for ef: the exact scan still answers correctly
                log.warning("%s: HNSW search failed, searching exactly (%s)", self._store.path, exc)
                ids = None
        if ids is None:
            if allowed is not None and allowed.size * data.shape[1] <= DIRECT_ELEMS \
                    and allowed.size * 4 <= view.state.committed:
                ids, scores = rescore(m, qs, data, np.broadcast_to(allowed.ids, (nq, allowed.size)), want)
            else:
                check = bool(m.nonneg) and (fit is not None or view.get("has_negative") is not False)
                scan = self._scans.get(m, view.state, data, None if fit is None else fit.fit_id, check,
                                       scan_precision(view, m, int(data.shape[1])))
                mask = view.deleted_mask() if allowed is None else allowed.mask()
                ids, scores = scan.search(qs, want, mask)
        assert ids is not None and scores is not None
        out_ids, out_scores, dropped = self._drop_self(view, q, ids, scores, k, selfs, ident)
        if rerank:
            out_ids, out_scores = self._rerank(rerank, view, fit, qs, out_ids, out_scores, k_out, m, mode, ef,
                                               candidates, dropped, data, allowed)
        if threshold is not None:
            out_ids, out_scores = _compact(out_ids, out_scores, within(out_scores, threshold, m))
        return out_ids, out_scores

    @staticmethod
    def _drop_self(view: View, q: np.ndarray, ids: np.ndarray, scores: np.ndarray, k: int,
                   selfs: Sequence[Optional[set]], ident: Sequence[bool]) -> tuple[np.ndarray, np.ndarray, list]:
        """The best ``k`` candidates without the queries' own rows, and those rows per query.

        Vectorised over the queries: ``selfs[r]`` ids are dropped from row ``r``;
        with ``ident[r]``, also the lowest id among the remaining candidates whose
        stored vector is bit-identical to ``q[r]``.  The dropped rows per query are
        returned as a list of sets (None where nothing was dropped)."""
        nq, nc = ids.shape
        dropped: list[Optional[set]] = [set(s) if s else None for s in selfs]
        if nq == 1:  # one query (Index.search): the fewest NumPy calls
            row_ids, row_scores = ids[0], scores[0]
            keep1 = row_ids >= 0
            for i in selfs[0] or ():
                keep1 &= row_ids != i
            if ident[0]:
                cand = row_ids[keep1]
                cand = cand[view.array[cand, 0] == q[0, 0]]  # the first column, then whole rows
                same = cand[(view.array[cand] == q[0]).all(axis=1)] if cand.size else cand
                if same.size:
                    j = int(same.min())
                    keep1 &= row_ids != j
                    dropped[0] = (dropped[0] or set()) | {j}
            row_ids, row_scores = row_ids[keep1][:k], row_scores[keep1][:k]
            out_i = np.full((1, k), -1, dtype=np.int64)
            out_s = np.full((1, k), np.nan, dtype=np.float32)
            out_i[0, :row_ids.size] = row_ids
            out_s[0, :row_ids.size] = row_scores
            return out_i, out_s, dropped
        keep = ids >= 0
        own = [r for r in range(nq) if selfs[r]]
        if own:
            width = max(len(selfs[r]) for r in own)
            mine = np.full((nq, width), -2, dtype=np.int64)  # -2: matches no id, not even padding
            for r in own:
                mine[r, :len(selfs[r])] = sorted(selfs[r])
            keep &= ~(ids[:, :, None] == mine[:, None, :]).any(axis=2)
        rows = np.flatnonzero(np.asarray(ident, dtype=bool)) if nq and nc else np.zeros(0, np.intp)
        step = max(1, _IDENT_ELEMS // max(1, nc * q.shape[1]))  # bounds the rows gathered at once
        for a in range(0, rows.size, step):
            r = rows[a:a + step]
            cand = ids[r]
            same = _identical(view.array, q[r], cand, keep[r])
            hit = same.any(axis=1)
            if hit.any():
                j = np.where(same, cand, np.iinfo(np.int64).max).min(axis=1)
                keep[r] &= ~(hit[:, None] & (cand == j[:, None]))
                for rr, jj in zip(r[hit].tolist(), j[hit].tolist()):
                    if dropped[rr] is None:
                        dropped[rr] = set()
                    dropped[rr].add(jj)
        out_ids, out_scores = _compact(ids, scores, keep, k)
        return out_ids, out_scores, dropped

    def _rerank(self, spec: str, view: View, fit: Optional[Fit], q: np.ndarray, ids: np.ndarray,
                scores: np.ndarray, k: int, m: Metric, mode: str, ef: Optional[int], candidates: Optional[int],
                selfs: Sequence[Optional[set]], data: Any, allowed: Optional[Allowed]) -> tuple[np.ndarray, np.ndarray]:
        # q and data are in the search space (whitened when a whitening is fitted)
        from fastimg import rerank as _rr

        def get_vectors(sel: Any) -> np.ndarray:
            return np.asarray(data[np.asarray(sel, dtype=np.int64)], dtype=np.float32)

        out_i = np.full((len(q), k), -1, dtype=np.int64)
        out_s = np.full((len(q), k), np.nan, dtype=np.float32)
        for r in range(len(q)):
            own = selfs[r]

            def search(vectors: Any, kk: int, own: Optional[set] = own) -> tuple[np.ndarray, np.ndarray]:
                # the same search, with the same exclusion of the query itself
                vv = np.atleast_2d(np.asarray(vectors, dtype=np.float32))
                n = len(vv)
                return self.run(view, fit, vv, int(kk), m, mode, ef, candidates, [own] * n, [False] * n, None,
                                in_space=True, allowed=allowed)

            keep = ids[r] >= 0
            # fewer results than the first search asked for: they are all there is
            ri, rs = _rr.apply(spec, q[r], ids[r][keep], scores[r][keep], get_vectors=get_vectors, search=search,
                               k=k, metric=m.name, complete=bool(keep.sum() < ids.shape[1]))
            ri, rs = np.asarray(ri, np.int64)[:k], np.asarray(rs, np.float32)[:k]
            out_i[r, :ri.size] = ri
            out_s[r, :rs.size] = rs
        return out_i, out_s
