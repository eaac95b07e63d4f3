"""The read side of an index: what every handle can do (:class:`IndexReader`).

:class:`IndexReader` composes the parts of one handle (:mod:`fastimg.index`
lists them) and answers: properties, :meth:`~IndexReader.info`,
:meth:`~IndexReader.paths`, :meth:`~IndexReader.metadata`,
:meth:`~IndexReader.search` and :meth:`~IndexReader.search_batch`.
:class:`fastimg.Index` adds the writer's calls.  Every call takes the handle's
lock (one object may be shared by threads) and starts from the committed state
(:class:`~fastimg.index.view.Views`: one lookup while nothing changed).
"""
from __future__ import annotations

import contextlib
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Optional, TypeVar, Union

import numpy as np

from fastimg.index.caches import CACHE_DIR, Caches
from fastimg.index.descriptor import IndexDescriptor
from fastimg.index.graph import Graph
from fastimg.index.query import Queries, check_search_args
from fastimg.index.searching import Search
from fastimg.index.store import Store
from fastimg.index.view import View, Views
from fastimg.index.whitening import Fit, Whitening, WhiteningMismatch

__all__ = ["IndexReader", "Hit"]

PathLike = Union[str, "os.PathLike[str]"]
_R = TypeVar("_R", bound="IndexReader")


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


class IndexReader:
    """The calls every handle of an index answers (the base of :class:`fastimg.Index`;
    open one with :meth:`fastimg.Index.open`)."""

    def __init__(self, store: Store, *, threads: Optional[int] = None, descriptor: Any = None):
        # private: use Index.create / Index.open
        self._store = store
        self._mutex = threading.RLock()
        self._descriptor = IndexDescriptor(store, descriptor)
        self._views = Views(store)
        self._caches = Caches(store.path / CACHE_DIR)
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
    def mode(self) -> str:
        """``"a"`` (read and write) or ``"r"`` (read-only)."""
        return "a" if self._store.writable else "r"

    @property
    def threads(self) -> Optional[int]:
        """Threads of the exact search and of the HNSW graph's queries (None: the default)."""
        return self._threads

    @threads.setter
    def threads(self, value: Optional[int]) -> None:
        with self._mutex:  # for the searchers and graph loads to come
            self._threads = self._graph.threads = self._search.threads = value
            self._search.clear()

    @property
    def descriptor(self) -> Any:
        """The descriptor object (``fastimg.features.registry`` Descriptor), created on first use."""
        return self._descriptor()

    @property
    def vectors(self) -> np.ndarray:
        """Read-only ``(rows, dim)`` float32 memmap of the committed rows; row ``i``
        is id ``i``.  Includes rows marked deleted (see :meth:`live_ids`)."""
        return self._view().vectors

    def __len__(self) -> int:
        """Number of live (searchable) images."""
        return self._view().live

    def live_ids(self) -> np.ndarray:
        """Sorted int64 ids of the live rows."""
        return self._view().live_ids()

    def deleted_ids(self) -> np.ndarray:
        """Sorted int64 ids of the rows marked deleted (until :meth:`compact`)."""
        return self._view().deleted.copy()

    # ------------------------------------------------------------------ state
    def _view(self) -> View:
        with self._mutex:
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

    def info(self) -> dict:
        """A JSON-able summary of the index.

        Keys: ``path``, ``root``, ``mode``, ``format_version``, ``descriptor``
        (spec dict), ``dim``, ``metric``, ``count`` (live images), ``rows``
        (committed rows, deleted included), ``deleted``, ``generation``,
        ``created``, ``size_bytes`` (all files), ``vectors_bytes``, ``caches``
        (file names), ``ann`` (``built``, ``metric``, ``M``, ``ef_construction``,
        ``ef``, ``rows`` the graph answers for, ``saved_rows`` the graph file
        covers, ``unsaved``: a writer holds changes not saved yet (see
        :meth:`flush`), ``pending_rows`` scanned exactly, ``error``,
        ``crossover``, ``auto_mode``: what ``mode="auto"`` uses now), ``whitening``
        (None, or the dict returned by :meth:`fit_whitening` plus ``stale_rows``:
        rows added since the fit, searched with that fit).
        """
        with self._mutex:
            v = self._views.current()
            man = self._store.manifest
            size = 0
            for p in self.path.rglob("*"):
                with contextlib.suppress(OSError):
                    if p.is_file():
                        size += p.stat().st_size
            wmeta = v.get("whitening")
            return {
                "path": str(self.path),
                "root": str(self.root),
                "mode": self.mode,
                "format_version": self._store.format_version,
                "descriptor": self._descriptor.spec(v),  # the spec in force (a re-description changes it)
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
                "ann": self._graph.info(v, self.metric, None if wmeta is None else wmeta.get("fit_id")),
                "whitening": self._whitening.info(v),
            }

    # ------------------------------------------------------------------ rows
    def paths(self, ids: Iterable[int]) -> list[str]:
        """Absolute file paths (or ``add_vectors`` names) of ``ids``, in order.

        Raises
        ------
        KeyError
            An id that is not in the index.
        """
        return self._store.paths(ids)

    def metadata(self, id: int) -> dict:
        """Everything stored about one row: ``path``, ``size``, ``mtime_ns``,
        ``hash``, ``added`` (UNIX time), ``deleted``, ``metadata`` (the caller's)."""
        (r,) = self._store.rows([id])
        return {"id": r.id, "path": self._store.absolute_path(r.path, r.is_file), "is_file": r.is_file,
                "size": r.size, "mtime_ns": r.mtime_ns, "hash": r.hash, "added": r.added, "deleted": r.deleted,
                "metadata": r.metadata}

    def missing_files(self, ids: Optional[Iterable[int]] = None, *, sample: int = 32, warn: bool = True) -> dict:
        """Are the indexed files still where the index says?  Stats the files of
        ``ids`` (e.g. a search's hits), else of up to ``sample`` live rows spread over
        the index; returns ``{"checked", "missing", "examples"}``.  With ``warn``, a
        warning on the ``fastimg.index`` logger when some are missing (once per
        handle), naming the root paths are resolved against and ``relocate``."""
        from fastimg.index.locations import missing_files

        with self._mutex:
            out = missing_files(self._store, self._views.current(), ids, sample)
            if warn and out["missing"] and not getattr(self, "_warned_missing", False):
                self._warned_missing = True
                import logging

                logging.getLogger("fastimg.index").warning(
                    "%s: %d of %d indexed files checked do not exist (e.g. %s); relative paths are resolved against "
                    "%s: if the files moved, Index.relocate(old, new) / `fastimg relocate OLD NEW`", self.path,
                    out["missing"], out["checked"], out["examples"][0], self.root)
            return out

    @property
    def whitening_path(self) -> Optional[Path]:
        """The file of the fitted PCA-whitening (``whitening-<fit_id>.npz`` in the index;
        None when no whitening is fitted)."""
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
    ) -> list[Hit]:
        """The ``k`` indexed images most similar to ``query``, best first.

        Parameters
        ----------
        query : path-like, bytes, numpy.ndarray
            An image file path, encoded image bytes, a BGR ``uint8`` image array,
            or a vector (1-D float array of the index dimension).  A path that is
            in the index and unchanged uses its stored vector (no decoding); so
            does an ``add_vectors`` name.
        k : int, default 10
            Number of hits (fewer if the index holds fewer live images).
        metric : str, optional
            Ranking metric (default: the index's).
        exclude_self : bool, default True
            Leave out the query itself: the row of the query's path (or name)
            when it is in the index; for a vector, bytes or array query, the
            lowest-id row whose stored vector is bit-identical to the query vector.
        mode : {"auto", "exact", "ann"}
            ``exact`` scans every row; ``ann`` uses the HNSW graph (error if none
            is built for ``metric``); ``auto`` uses the graph when it is built for
            ``metric`` and the index has at least ``info()["ann"]["crossover"]``
            live images (and the metric is not in
            ``fastimg.ann.AUTO_EXACT_METRICS``: chisqr, whose graph recall stays low),
            else the exact scan.
        ef, candidates : int, optional
            Graph search parameters (see :meth:`fastimg.ann.HnswGraph.search`).
        rerank : str, optional
            Re-ranking spec for :func:`fastimg.rerank.apply` (e.g. ``"qe"``,
            ``"k-reciprocal:k1=20"``).

        Returns
        -------
        list of Hit

        Notes
        -----
        With a whitening fitted (:meth:`fit_whitening`), the query and the rows
        are compared after the stored PCA-whitening (and L2 normalisation), with
        ``metric``; scores are the metric's values on the whitened vectors, and
        re-ranking works on them too.
        """
        k, m = check_search_args(k, metric or self.metric, mode)
        args = (query, k, m, mode, ef, candidates, rerank, exclude_self)
        with self._mutex:
            # A vector query costs one lookup (is the state unchanged?) plus the
            # paths of hits not seen yet at this state, read with the generation.
            if not isinstance(query, (str, os.PathLike)):
                hits = self._hits(*args, retry=True)
                if hits is not None:
                    return hits
            # A compaction renumbered the ids meanwhile, or a path query (it reads
            # rows): all in one snapshot, the whitening loaded before it.
            self._current()
            with self._store.snapshot():
                hits = self._hits(*args, retry=False)
            assert hits is not None  # one snapshot: one generation
            return hits

    def _hits(self, query: Any, k: int, m: Any, mode: str, ef: Optional[int], candidates: Optional[int],
              rerank: Optional[str], exclude_self: bool, *, retry: bool) -> Optional[list[Hit]]:
        """The hits of :meth:`search`, or None when the ids were renumbered before
        their paths were read."""
        v, fit = self._current(retry=retry)
        vec, self_ids, ident = self._queries.vector(query, v)
        ids, scores = self._search.run(v, fit, vec.reshape(1, -1), k, m, mode, ef, candidates,
                                       [self_ids if exclude_self else None], [ident and exclude_self], rerank)
        keep = ids[0] >= 0
        ids0, scores0 = ids[0][keep].tolist(), scores[0][keep].tolist()
        paths = self._views.paths(v, ids0)
        if paths is None:
            return None
        return [Hit(i, p, s, r) for r, (i, p, s) in enumerate(zip(ids0, paths, scores0), 1)]

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
    ) -> tuple[np.ndarray, np.ndarray]:
        """Search many queries at once (one pass over the data in exact mode).

        Parameters
        ----------
        queries : (Q, dim) array or sequence of queries
            A 2-D float array of query vectors, or a sequence of anything
            :meth:`search` accepts.
        k, metric, exclude_self, mode, ef, candidates, rerank
            As in :meth:`search`.

        Returns
        -------
        ids : numpy.ndarray of int64, shape (Q, k)
            Best first; padded with -1 where fewer than ``k`` rows qualify.
        scores : numpy.ndarray of float32, shape (Q, k)
            The metric's values (NaN for padding).  Paths: :meth:`paths`.
        """
        k, m = check_search_args(k, metric or self.metric, mode)
        with self._mutex:
            if isinstance(queries, np.ndarray) and queries.ndim == 2:  # ids only: no row is read
                return self._batch(queries, k, m, mode, ef, candidates, rerank, exclude_self, retry=True)
            self._current()  # queries looked up by path or name: one snapshot, the whitening loaded before it
            with self._store.snapshot():
                return self._batch(queries, k, m, mode, ef, candidates, rerank, exclude_self, retry=False)

    def _batch(self, queries: Any, k: int, m: Any, mode: str, ef: Optional[int], candidates: Optional[int],
               rerank: Optional[str], exclude_self: bool, *, retry: bool) -> tuple[np.ndarray, np.ndarray]:
        v, fit = self._current(retry=retry)
        q, selfs, ident = self._queries.batch(queries, v, exclude_self)
        if q.shape[0] == 0:
            return np.zeros((0, k), np.int64), np.zeros((0, k), np.float32)
        return self._search.run(v, fit, q, k, m, mode, ef, candidates, selfs, ident, rerank)
