"""The read side of an index: what every handle can do (:class:`IndexReader`).

:class:`IndexReader` composes the parts of one handle (:mod:`fastimg.index`
lists them) and answers: properties, :meth:`~IndexReader.info`, lookups
(``in``, iteration, :meth:`~IndexReader.id_of`, :meth:`~IndexReader.entry`,
:meth:`~IndexReader.vectors_of`, :meth:`~IndexReader.paths`), and searches
(:meth:`~IndexReader.search`, :meth:`~IndexReader.similar`,
:meth:`~IndexReader.search_batch`, :meth:`~IndexReader.duplicates`).
:class:`fastimg.Index` adds the writer's calls.

Every call starts from the committed state (:class:`~fastimg.index.view.Views`:
one lookup while nothing changed).  Reads take no handle-wide lock: the state,
the scans and the graph are immutable snapshots replaced by one assignment
(built under a lock of their own only when the state changed), so one handle
serves any number of threads; the compiled scan runs without the GIL.  Writes
(:class:`fastimg.Index`) are serialised by the handle's lock.  Nothing on the
read side writes a file.
"""
from __future__ import annotations

import contextlib
import copy
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional, TypeVar, Union

import numpy as np

from fastimg.errors import ArgumentError
from fastimg.index._entries import Entry, EntryLookups, PathLike
from fastimg.index.caches import CACHE_DIR, Caches
from fastimg.index.descriptor import IndexDescriptor
from fastimg.index.graph import Graph
from fastimg.index.query import (
    Queries,
    Stale,
    Where,
    check_search_args,
    check_threshold,
    where_patterns,
)
from fastimg.index.searching import Search, index_precision, representation_bytes, scan_precision
from fastimg.index.store import Store
from fastimg.index.view import Allowed, View, Views
from fastimg.index.whitening import Fit, Whitening, WhiteningMismatch
from fastimg.metrics import get_metric

__all__ = ["IndexReader", "Hit", "Entry", "BatchResult"]

_R = TypeVar("_R", bound="IndexReader")
_T = TypeVar("_T")



@dataclass(frozen=True)
class Hit:
    """One search result.

    Attributes
    ----------
    id : int
        Row id in the index (stable until :meth:`Index.compact`).
    path : str
        Absolute path of the image file, or the name given to :meth:`Index.add_vectors`.
    score : float
        The metric's exact value for this row (``cv2.compareHist(query, row)`` for
        the histogram metrics).
    rank : int
        1 for the best hit.
    """

    id: int
    path: str
    score: float
    rank: int




def _make_hits(ids: list, paths: list, scores: list) -> list[Hit]:
    """``[Hit(id, path, score, rank)]`` with ranks from 1, equal to calling ``Hit`` (a
    frozen dataclass, whose ``__init__`` sets each field through ``object.__setattr__``)
    in a third of the time: the fields go straight into each instance's ``__dict__``."""
    new = object.__new__
    out = []
    for r, (i, p, s) in enumerate(zip(ids, paths, scores), 1):
        h = new(Hit)
        d = h.__dict__
        d["id"], d["path"], d["score"], d["rank"] = i, p, s, r
        out.append(h)
    return out


class BatchResult(tuple[np.ndarray, np.ndarray]):
    """What :meth:`Index.search_batch` returns: the pair ``(ids, scores)``, plus counts.

    It unpacks as ``ids, scores = index.search_batch(...)``.  Row ``r`` holds the
    results of query ``r``, best first: ``counts[r]`` of them, then padding
    (id -1, score NaN) up to ``k`` columns when fewer rows qualify (a small
    index, ``threshold=``, ``where=``).  :meth:`row` gives one query's results
    without the padding.

    Attributes
    ----------
    ids : numpy.ndarray of int64, shape (Q, k)
    scores : numpy.ndarray of float32, shape (Q, k)
    counts : numpy.ndarray of int64, shape (Q,)
        Results per query (``(ids >= 0).sum(axis=1)``).
    """

    def __new__(cls, ids: np.ndarray, scores: np.ndarray) -> "BatchResult":
        return super().__new__(cls, (ids, scores))

    def __getnewargs__(self) -> tuple[np.ndarray, np.ndarray]:  # type: ignore[override]
        return self[0], self[1]

    @property
    def ids(self) -> np.ndarray:
        return self[0]

    @property
    def scores(self) -> np.ndarray:
        return self[1]

    @property
    def counts(self) -> np.ndarray:
        return (self[0] >= 0).sum(axis=1).astype(np.int64)

    def row(self, r: int) -> tuple[np.ndarray, np.ndarray]:
        """``(ids, scores)`` of query ``r`` without padding."""
        c = int((self[0][r] >= 0).sum())
        return self[0][r, :c], self[1][r, :c]

    def __repr__(self) -> str:
        return f"BatchResult(ids={self[0]!r}, scores={self[1]!r})"




class IndexReader(EntryLookups):
    """The calls every handle of an index answers (the base of :class:`fastimg.Index`;
    open one with :meth:`fastimg.Index.open`)."""

    def __init__(self, store: Store, *, threads: Optional[int] = None, descriptor: Any = None):
        # private: use Index.create / Index.open
        self._store = store
        self._mutex = threading.RLock()  # serialises the writer's calls and close(); reads take no lock
        self._descriptor = IndexDescriptor(store, descriptor)
        self._views = Views(store)
        self._caches = Caches(store.path / CACHE_DIR, writable=store.writable)
        self._whitening = Whitening(store, self._caches)
        self._graph = Graph(store, threads)
        self._search = Search(store, self._caches, self._whitening, self._graph, threads)
        self._queries = Queries(store, self._descriptor, self._descriptor.custom)
        self._threads = threads

    def close(self) -> None:
        """Release the files.  Idempotent."""
        with self._mutex:
            self._search.clear()
            self._graph.discard()
            self._views.clear()
            self._whitening.forget()
            self._store.close()

    def __enter__(self: _R) -> _R:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __del__(self) -> None:  # pragma: no cover - best effort
        with contextlib.suppress(Exception):
            self._store.close()

    def __repr__(self) -> str:
        state = "closed" if self._store.closed else ("a" if self._store.writable else "r")
        return f"Index({str(self._store.path)!r}, mode={state!r})"

    # ------------------------------------------------------------------ properties
    @property
    def path(self) -> Path:
        """The index directory."""
        return self._store.path

    @property
    def root(self) -> Path:
        """Directory that relative image paths are resolved against."""
        return self._store.root

    @property
    def dim(self) -> int:
        """Vector dimension."""
        return self._store.dim

    @property
    def metric(self) -> str:
        """Default metric of :meth:`search`."""
        return str(self._store.manifest["metric"])

    @property
    def precision(self) -> str:
        """What exact searches of the inner-product metrics read (:meth:`Index.set_precision`)."""
        return index_precision(self._views.current())

    @property
    def mode(self) -> str:
        """``"a"`` (read and write) or ``"r"`` (read-only)."""
        return "a" if self._store.writable else "r"

    @property
    def threads(self) -> Optional[int]:
        """Threads of the exact search and of the HNSW graph's queries (None: the default)."""
        return self._threads

    @threads.setter
    def threads(self, value: Optional[int]) -> None:
        # for the scans and graph loads to come (running searches keep theirs)
        self._threads = self._graph.threads = self._search.threads = value

    @property
    def descriptor(self) -> Any:
        """The descriptor object (``fastimg.features.registry`` Descriptor), created on first use."""
        return self._descriptor()

    @property
    def descriptor_spec(self) -> dict:
        """The spec of the descriptor that made the rows (``{"name", "dim",
        "version", "params", ...}``, as recorded in the index: a re-description
        changes it; ``name`` is ``"custom"`` for vectors computed by the caller),
        without creating the descriptor."""
        return copy.deepcopy(self._descriptor.spec(self._view()))

    @property
    def vectors(self) -> np.ndarray:
        """Read-only ``(rows, dim)`` float32 memmap of the committed rows; row ``i``
        is id ``i``.  **Includes the rows marked deleted** (until :meth:`compact`):
        ``len(index)`` counts the live rows, :meth:`live_ids` lists them (and
        ``id in index`` tells one), :meth:`vectors_of` reads live rows only."""
        return self._view().vectors

    def __len__(self) -> int:
        """Number of live (searchable) entries: ``len(live_ids())``, and what iterating yields."""
        return self._view().live

    def live_ids(self) -> np.ndarray:
        """Sorted int64 ids of the live rows."""
        return self._view().live_ids()

    def deleted_ids(self) -> np.ndarray:
        """Sorted int64 ids of the rows marked deleted (until :meth:`compact`)."""
        return self._view().deleted.copy()

    # ------------------------------------------------------------------ state
    def _view(self) -> View:
        return self._views.current()

    def _current(self, retry: bool = True) -> tuple[View, Optional[Fit]]:
        """The committed state and the whitening in force.  A whitening file that is
        not the recorded fit may be a writer between replacing it and recording it:
        with ``retry`` (not inside a pinned snapshot), read again for a moment."""
        for attempt in range(5):
            v = self._views.current()
            try:
                return v, self._whitening.current(v)
            except WhiteningMismatch:
                if not retry or attempt == 4:
                    raise
            time.sleep(0.05)
        raise AssertionError("unreachable")  # pragma: no cover

    def _consistent(self, fn: Callable[[View, Optional[Fit]], Optional[_T]]) -> _T:
        """``fn(view, fit)`` on the current state; again on a newer state when it
        returns None or raises :class:`Stale` (a writer committed or compacted in
        between), then inside one pinned SQLite snapshot (it cannot change there)."""
        for _ in range(3):
            v, fit = self._current()
            try:
                out = fn(v, fit)
            except Stale:
                out = None
            if out is not None:
                return out
        self._current()  # the whitening loaded before the snapshot (its file is not in it)
        with self._store.snapshot():
            v, fit = self._current(retry=False)
            out = fn(v, fit)
        assert out is not None  # one snapshot: one generation
        return out

    def info(self) -> dict:
        """A JSON-able summary of the index.

        Keys: ``path``, ``root``, ``mode``, ``format_version``, ``descriptor``
        (spec dict), ``dim``, ``metric``, ``count`` (live images), ``rows``
        (committed rows, deleted included), ``deleted``, ``generation``,
        ``created``, ``size_bytes`` (all files), ``vectors_bytes``, ``caches``
        (file names), ``precision`` (:attr:`precision`), ``scan_precision`` (what an
        exact search of the default metric reads now: ``auto`` resolved),
        ``representation_bytes`` (the bytes of the vectors and of what an exact scan
        of the default metric reads in each precision:
        :func:`fastimg.index.searching.representation_bytes`), ``ann``
        (:meth:`ann_info`), ``whitening`` (None, or the dict
        returned by :meth:`fit_whitening` plus ``stale_rows``: rows added since the
        fit, searched with that fit), ``projection`` (likewise for a projection
        learned by :meth:`fit_projection`; at most one of the two is set).  ``size_bytes`` walks the index directory:
        :attr:`descriptor_spec`, :meth:`ann_info` and ``len()`` are the cheap parts.
        """
        v = self._views.current()
        man = self._store.manifest
        size = 0
        for p in self.path.rglob("*"):
            with contextlib.suppress(OSError):
                if p.is_file():
                    size += p.stat().st_size
        return {
            "path": str(self.path),
            "root": str(self.root),
            "mode": self.mode,
            "format_version": self._store.format_version,
            "descriptor": copy.deepcopy(self._descriptor.spec(v)),  # in force (a re-description changes it)
            "dim": self.dim,
            "metric": self.metric,
            "count": v.live,
            "rows": v.state.committed,
            "deleted": int(v.deleted.size),
            "generation": v.state.generation,
            "created": man.get("created"),
            "size_bytes": size,
            "vectors_bytes": v.state.committed * self.dim * 4,
            "caches": [p.name for p in self._caches.files()],
            "precision": index_precision(v),
            "scan_precision": scan_precision(v, get_metric(self.metric), self.dim),
            "representation_bytes": representation_bytes(self.metric, v.state.committed, self.dim),
            "ann": self._ann_info(v),
            "whitening": self._whitening.info(v, learned=False),
            "projection": self._whitening.info(v, learned=True),
        }

    def ann_info(self) -> dict:
        """The HNSW graph's status (``info()["ann"]``, without walking the directory).

        Keys: ``built``, ``crossover`` (live rows from which ``mode="auto"`` may use
        a graph), ``auto_mode`` (what ``mode="auto"`` uses now for the index's
        metric); when built: ``metric`` (the one it serves), ``M``,
        ``ef_construction``, ``ef``, ``rows`` it answers for, ``saved_rows`` its
        file covers, ``unsaved`` (a writer holds changes not saved yet: see
        :meth:`flush`), ``pending_rows`` (scanned exactly), ``error`` (why it is
        unusable, or None).
        """
        return self._ann_info(self._views.current())

    def _ann_info(self, v: View) -> dict:
        wmeta = v.get("whitening")
        return self._graph.info(v, self.metric, None if wmeta is None else wmeta.get("fit_id"))


    @property
    def whitening_path(self) -> Optional[Path]:
        """The file of the index's linear map - the PCA-whitening, or the learned
        projection - in force (None when none is fitted)."""
        return self._whitening.path

    # ------------------------------------------------------------------ search
    def search(
        self,
        query: Any,
        k: int = 10,
        *,
        metric: Optional[str] = None,
        exclude_self: bool = True,
        mode: str = "auto",
        ef: Optional[int] = None,
        candidates: Optional[int] = None,
        rerank: Optional[str] = None,
        threshold: Optional[float] = None,
        where: Where = None,
    ) -> list[Hit]:
        """The ``k`` indexed images most similar to ``query``, best first.

        Parameters
        ----------
        query : path-like, bytes, numpy.ndarray
            An image file path, encoded image bytes, a BGR ``uint8`` image array,
            or a vector (1-D float array of the index dimension).  A path that is
            in the index and unchanged uses its stored vector (no decoding); so
            does an ``add_vectors`` name.  To search by an indexed entry (by id),
            use :meth:`similar`; an int query is an error.
        k : int, default 10
            Number of hits (fewer if fewer live images qualify).
        metric : str, optional
            Ranking metric (default: the index's).
        exclude_self : bool, default True
            Leave out the query itself: the row of the query's path (or name)
            when it is in the index; for a vector, bytes or array query, the
            lowest-id row whose stored vector is bit-identical to the query vector
            (so ``search(index.vectors[i])`` leaves out the first copy of row
            ``i``'s vector, which may be another row: :meth:`similar` leaves out
            exactly the entry).
        mode : {"auto", "exact", "ann"}
            ``exact`` scans every row; ``ann`` uses the HNSW graph (error if none
            is built for ``metric``); ``auto`` uses the graph when it is built for
            ``metric`` and the index has at least ``ann_info()["crossover"]``
            live images (and the metric is not in
            ``fastimg.ann.AUTO_EXACT_METRICS``: chisqr, whose graph recall stays low),
            else the exact scan.
        ef, candidates : int, optional
            Graph search parameters (see :meth:`fastimg.ann.HnswGraph.search`).
        rerank : str, optional
            Re-ranking spec for :func:`fastimg.rerank.apply` (e.g. ``"qe"``,
            ``"k-reciprocal:k1=20"``).
        threshold : float, optional
            Keep only hits within it, in the metric's direction: a minimum score
            for similarities (pearson, cosine, intersect), a maximum for distances
            (applied to the returned scores, after re-ranking).
        where : str, path-like or list of them, optional
            Search only the entries whose stored path (relative to :attr:`root`
            for files under it, else absolute; the name of an ``add_vectors``
            entry) is under one of these folders, or matches one of these glob
            patterns.  A string containing ``*``, ``?`` or ``[`` is a pattern
            (SQLite ``GLOB``: case-sensitive, ``*`` also matches ``/``), e.g.
            ``"2019/*.jpg"``; anything else a folder (or file) relative to
            :attr:`root`, e.g. ``"trips/2019"`` (also ``trips/2019/x/y.jpg``, not
            ``trips/2019-old/z.jpg``); an absolute path is first made relative to
            :attr:`root` (the root itself keeps every entry).  ``bytes`` are
            taken as the OS's path bytes; names are compared byte for byte (a
            ``?`` matches one UTF-8 character, or one byte that is not part of
            one).  A filtered search is exact (``mode="ann"`` is an error).

        Returns
        -------
        list of Hit

        Raises
        ------
        ArgumentError
            A bad argument (``k``, ``mode``, ``threshold``, ``where``, a vector of
            the wrong shape, an int query ...).

        Notes
        -----
        With a whitening fitted (:meth:`fit_whitening`), or a projection learned
        from labels (:meth:`fit_projection`), the query and the rows are compared
        after that linear map (and L2 normalisation), with ``metric``; scores are
        the metric's values on the mapped vectors, and re-ranking works on them
        too.
        """
        args = self._search_args(k, metric, mode, threshold, where)
        return self._consistent(lambda v, fit: self._hits(v, fit, query, False, exclude_self, ef, candidates,
                                                           rerank, *args))

    def similar(
        self,
        entry: Union[int, PathLike],
        k: int = 10,
        *,
        metric: Optional[str] = None,
        mode: str = "auto",
        ef: Optional[int] = None,
        candidates: Optional[int] = None,
        rerank: Optional[str] = None,
        threshold: Optional[float] = None,
        where: Where = None,
    ) -> list[Hit]:
        """The ``k`` entries most similar to an indexed entry, best first.

        The entry's stored vector is the query, and exactly that entry is left
        out: an identical copy of it (another id with the same vector) ranks first.

        Parameters
        ----------
        entry : int, path-like, str or bytes
            A live id, an indexed file path (as given or relative to the current
            directory; ``bytes``: the OS's path bytes) or an ``add_vectors`` name.
        k, metric, mode, ef, candidates, rerank, threshold, where
            As in :meth:`search`.

        Returns
        -------
        list of Hit

        Raises
        ------
        NotInIndexError
            ``entry`` is not a live entry.
        """
        args = self._search_args(k, metric, mode, threshold, where)
        return self._consistent(lambda v, fit: self._hits(v, fit, entry, True, True, ef, candidates, rerank,
                                                           *args))

    def _search_args(self, k: Any, metric: Optional[str], mode: str, threshold: Any,
                     where: Where) -> tuple[int, Any, str, Optional[float], Any]:
        k, m = check_search_args(k, metric or self.metric, mode)
        t = check_threshold(threshold)
        w = where_patterns(where, self._store)
        if w is not None and mode == "ann":
            raise ArgumentError("where= searches exactly: use mode='auto' or 'exact' with it (got mode='ann')")
        return k, m, mode, t, w

    def _allowed(self, v: View, where: Any) -> Optional[Allowed]:
        """The live rows of ``v`` a ``where`` filter keeps (remembered per state)."""
        if where is None:
            return None
        got = v.filter(where)
        if got is None:
            generation, ids = self._store.live_ids_matching(*where)
            if generation != v.state.generation:
                raise Stale(f"{self.path}: the index was compacted; read it again")
            ids = ids[ids < v.state.committed]
            if v.deleted.size:
                ids = ids[~np.isin(ids, v.deleted, assume_unique=True)]
            got = v.remember_filter(where, Allowed(ids, v.state.committed))
        return got

    def _hits(self, v: View, fit: Optional[Fit], query: Any, by_entry: bool, exclude_self: bool,
              ef: Optional[int], candidates: Optional[int], rerank: Optional[str], k: int, m: Any, mode: str,
              threshold: Optional[float], where: Any) -> Optional[list[Hit]]:
        """The hits of :meth:`search` / :meth:`similar` at state ``v``, or None when
        the ids were renumbered before their paths were read."""
        vec, self_ids, ident = self._queries.entry(query, v) if by_entry else self._queries.vector(query, v)
        allowed = self._allowed(v, where)
        q = self._queries.check_sign(vec.reshape(1, -1), m)
        ids, scores = self._search.run(v, fit, q, k, m, mode, ef, candidates, [self_ids if exclude_self else None],
                                       [ident and exclude_self], rerank, allowed=allowed, threshold=threshold)
        keep = ids[0] >= 0
        ids0, scores0 = ids[0][keep].tolist(), scores[0][keep].tolist()
        paths = self._views.paths(v, ids0)
        if paths is None:
            return None
        return _make_hits(ids0, paths, scores0)

    def search_batch(
        self,
        queries: Any,
        k: int = 10,
        *,
        metric: Optional[str] = None,
        exclude_self: bool = True,
        mode: str = "auto",
        ef: Optional[int] = None,
        candidates: Optional[int] = None,
        rerank: Optional[str] = None,
        threshold: Optional[float] = None,
        where: Where = None,
    ) -> BatchResult:
        """Search many queries at once (one pass over the data in exact mode).

        Parameters
        ----------
        queries : (Q, dim) array or sequence of queries
            A 2-D float array of query vectors, or a sequence of anything
            :meth:`search` accepts.
        k, metric, exclude_self, mode, ef, candidates, rerank, threshold, where
            As in :meth:`search`.

        Returns
        -------
        BatchResult
            The pair ``(ids, scores)`` (int64 and float32 arrays of shape (Q, k),
            best first), padded with -1 / NaN at the end of a row where fewer than
            ``k`` rows qualify; ``.counts[r]`` is the number of results of query
            ``r`` and ``.row(r)`` gives them without padding.  Paths: :meth:`paths`.
        """
        args = self._search_args(k, metric, mode, threshold, where)
        return self._consistent(lambda v, fit: self._batch(v, fit, queries, exclude_self, ef, candidates, rerank,
                                                           *args))

    def _batch(self, v: View, fit: Optional[Fit], queries: Any, exclude_self: bool, ef: Optional[int],
               candidates: Optional[int], rerank: Optional[str], k: int, m: Any, mode: str,
               threshold: Optional[float], where: Any) -> BatchResult:
        q, selfs, ident = self._queries.batch(queries, v, exclude_self)
        if q.shape[0] == 0:
            return BatchResult(np.zeros((0, k), np.int64), np.zeros((0, k), np.float32))
        allowed = self._allowed(v, where)
        q = self._queries.check_sign(q, m)
        ids, scores = self._search.run(v, fit, q, k, m, mode, ef, candidates, selfs, ident, rerank, allowed=allowed,
                                       threshold=threshold)
        return BatchResult(ids, scores)

    def duplicates(self, threshold: Optional[float] = None, *, metric: Optional[str] = None, k: int = 16,
                   batch: int = 256, mode: str = "exact", ef: Optional[int] = None, progress: Any = None,
                   verify: Optional[str] = None, candidates: Optional[int] = None,
                   min_inliers: Optional[int] = None, hash_bits: Optional[int] = None,
                   workers: Optional[int] = None, same_photo: bool = True,
                   min_agreement: Optional[float] = None) -> list:
        """Groups of near-duplicate entries: :func:`fastimg.dedup.find_duplicates` on
        this index (see there for the parameters and the defaults; ``None`` here
        means find_duplicates' default).  Without ``threshold``, candidate pairs are
        verified geometrically on the image files (``verify="orb"``); ``same_photo=False``
        also groups two photos of one scene (a burst).

        Returns
        -------
        list of fastimg.dedup.DuplicateGroup
            Largest group first.
        """
        from fastimg.dedup import find_duplicates

        return find_duplicates(self, threshold=threshold, metric=metric, k=k, batch=batch, mode=mode, ef=ef,
                               progress=progress, verify=verify, workers=workers, same_photo=same_photo,
                               min_agreement=min_agreement,
                               **{name: v for name, v in (("candidates", candidates), ("min_inliers", min_inliers),
                                                       ("hash_bits", hash_bits)) if v is not None})
