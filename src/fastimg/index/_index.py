""":class:`Index`: the facade applications and the CLI use.

:class:`Index` is :class:`~fastimg.index._reader.IndexReader` (properties,
info, paths, search) plus the writer's calls, each delegated to one part:

=========================  =================================================
``add`` / ``add_vectors``  :class:`~fastimg.index.ingest.Ingest`
``remove``                 :meth:`Ingest.ids_of <fastimg.index.ingest.Ingest.ids_of>` + the store
``fit/clear_whitening``    :class:`~fastimg.index.whitening.Whitening`
``build_ann`` / ``flush``  :class:`~fastimg.index.graph.Graph`
``compact``                the store, then the whitening record, the caches and the graph
=========================  =================================================

After each change a writer brings its HNSW graph up to date in memory
(:meth:`Graph.sync <fastimg.index.graph.Graph.sync>`) and keeps the caches a
search maps (:mod:`fastimg.index.caches`): the prepared rows of the index's
default metric (and the whitened matrix) are written once
:data:`~fastimg.index.caches.CACHE_SAVE_ROWS` rows (or 5 % of the rows) are not
cached, and on :meth:`Index.flush` / :meth:`Index.close`; searches never write
(rows not cached yet are prepared in memory).  Calls that change the index raise
:class:`~fastimg.errors.IndexReadOnlyError` on a handle opened with
``mode="r"``; they are serialised by the handle's lock (one writing thread at a
time; other threads keep searching meanwhile).
"""
from __future__ import annotations

import logging
import os
from typing import Any, Iterable, Mapping, Optional, Sequence, Union

import numpy as np

from fastimg.errors import ArgumentError, DescriptorError, IndexReadOnlyError, NotInIndexError
from fastimg.index._progress import Progress, progress_callback
from fastimg.index._reader import IndexReader
from fastimg.index.caches import CACHE_SAVE_ROWS, prepared_outputs
from fastimg.index.descriptor import descriptor_for
from fastimg.index.ingest import ADD_BATCH, AddReport, Ingest, check_json
from fastimg.index.store import Store
from fastimg.metrics import get_metric

__all__ = ["Index"]

log = logging.getLogger("fastimg.index")

PathLike = Union[str, "os.PathLike[str]"]


class Index(IndexReader):
    """A searchable collection of image descriptors stored in one directory.

    Create with :meth:`create`, open with :meth:`open`; use as a context manager
    (or call :meth:`close`).  See :mod:`fastimg.index` for the behaviour and
    :mod:`fastimg.index.store` for the files.

    Examples
    --------
    >>> with Index.create("photos/.fastimg") as index:          # doctest: +SKIP
    ...     report = index.add("photos")
    ...     hits = index.search("photos/cat.jpg", k=5)
    """

    def __init__(self, store: Store, *, threads: Optional[int] = None, descriptor: Any = None):
        # private: use Index.create / Index.open
        super().__init__(store, threads=threads, descriptor=descriptor)
        self._ingest = Ingest(store, self._descriptor, self._views.current)

    # ------------------------------------------------------------------ lifecycle
    @classmethod
    def create(
        cls,
        path: PathLike,
        descriptor: str = "hsv72",
        metric: Optional[str] = None,
        dim: Optional[int] = None,
        *,
        root: Optional[PathLike] = None,
        threads: Optional[int] = None,
        **descriptor_params: Any,
    ) -> "Index":
        """Create an empty index and return it open for writing (``mode="a"``).

        Parameters
        ----------
        path : path-like
            Directory to create (must not hold an index already).
        descriptor : str, default "hsv72"
            Descriptor name (see :func:`fastimg.descriptors`), or ``"custom"`` for
            vectors computed by the caller and added with :meth:`add_vectors`.
        metric : str, optional
            Default metric of :meth:`search` (default: the descriptor's
            ``default_metric``; ``"cosine"`` for ``"custom"``).
        dim : int, optional
            Vector dimension; required for ``descriptor="custom"``, otherwise it
            must equal the descriptor's dimension if given.
        root : path-like, optional
            Directory that image paths are stored relative to (default: the
            parent of ``path``).
        threads : int, optional
            Threads for exact search (default: the search module's default).
        **descriptor_params
            Parameters of the descriptor (e.g. bins).

        Raises
        ------
        DescriptorError
            Unknown descriptor or bad parameters, or ``dim`` inconsistent with it.
        ValueError
            Unknown metric.
        FileExistsError
            ``path`` already holds an index, or is a non-empty directory.
        """
        desc = descriptor_for(descriptor, dim, descriptor_params)
        metric_name = get_metric(metric if metric is not None else desc.default_metric).name
        store = Store.create(path, descriptor=desc.spec(), dim=int(desc.dim), metric=metric_name, root=root)
        return cls(store, threads=threads, descriptor=desc)

    @classmethod
    def open(cls, path: PathLike, mode: str = "r", *, threads: Optional[int] = None) -> "Index":
        """Open an existing index.

        Parameters
        ----------
        path : path-like
            The index directory.
        mode : {"r", "a"}
            ``"r"``: read-only (any number of readers); ``"a"``: read and write
            (takes the writer lock).
        threads : int, optional
            Threads for exact search.

        Raises
        ------
        IndexNotFoundError
            No index at ``path``.
        IndexFormatError
            Incompatible format version or invalid manifest.
        IndexCorruptError
            The files disagree (truncated vectors, missing database ...).
        IndexLockedError
            ``mode="a"`` while another writer has the index open.
        """
        if mode not in ("r", "a"):
            raise ArgumentError(f"mode must be 'r' or 'a'; got {mode!r}")
        return cls(Store(path, writable=(mode == "a")), threads=threads)

    def close(self) -> None:
        """Save the HNSW graph if it changed (see :meth:`flush`), then release the
        files (and the writer lock).  Idempotent."""
        with self._mutex:
            if self._store.writable and not self._store.closed:
                try:
                    self._graph.save_if_changed(self._views.current())
                except Exception as exc:  # a cache: a stale graph is caught up on the next open
                    log.warning("%s: could not save the HNSW graph (%s); it is caught up when the index is "
                                "next changed", self.path, exc)
                try:
                    self._save_caches(force=True)
                except Exception as exc:  # a cache: searches prepare the rows in memory meanwhile
                    log.warning("%s: could not write the search caches (%s)", self.path, exc)
            super().close()

    def flush(self) -> None:
        """Write the HNSW graph's pending changes and the search caches now (writer only).

        A writer keeps the graph up to date in memory on every :meth:`add`,
        :meth:`add_vectors` and :meth:`remove`, but saves it (``ann/``, about
        1.2 KB per row at D=256) only when :data:`ANN_SAVE_ROWS` rows (or 5 % of
        the graph) were inserted since the last save, on :meth:`close` and on
        this call.  Likewise the prepared rows of the default metric (``cache/``,
        the size of the vectors) are extended once
        :data:`~fastimg.index.caches.CACHE_SAVE_ROWS` rows (or 5 %) are not
        cached, and on :meth:`close` and this call.  Not saving is safe: the saved
        graph records the rows it covers, a reader scans later rows exactly and
        never returns deleted rows, and the next writer catches the graph up;
        searches prepare the rows not cached in memory.
        """
        self._require_writable()
        with self._mutex:
            self._graph.save_if_changed(self._views.current())
            self._save_caches(force=True)

    def _save_caches(self, force: bool) -> None:
        """Writer: extend the caches a search maps (the whitened matrix, if a
        whitening is fitted, and the default metric's prepared rows in the search
        space) when enough rows are not cached (``force``: any row)."""
        v, fit = self._current()
        n = v.state.committed
        if n == 0:
            return

        def due(outputs: list) -> bool:
            tail = self._caches.uncached(outputs, v.state)
            return tail > 0 and (force or tail >= max(CACHE_SAVE_ROWS, n // 20))

        m = get_metric(self.metric)
        if fit is not None:
            if due([(f"whitened-{fit.fit_id}", (fit.dim,))]):
                self._whitening.publish(v, fit)
            data, prefix = self._whitening.data(v, fit), f"whitened-{fit.fit_id}-"
        else:
            data, prefix = v.vectors, ""
        if m.ip_form and not (fit is not None and m.nonneg) and due(prepared_outputs(m.name, data.shape[1], prefix)):
            self._caches.prepared(m.name, v.state, data, prefix)

    def _require_writable(self) -> None:
        if not self._store.writable:
            raise IndexReadOnlyError(f"{self.path}: the index is open read-only (open it with mode='a' to change it)")

    def _sync_graph(self) -> None:
        """Writer: bring the in-memory HNSW graph up to date with the last change."""
        v = self._views.current()
        if v.get("ann") is None:
            return
        wmeta = v.get("whitening")

        def data() -> Any:
            fit = self._whitening.current(v)
            return v.vectors if fit is None else self._whitening.data(v, fit)

        self._graph.sync(v, None if wmeta is None else wmeta.get("fit_id"), data)

    def set_metadata(self, item: Union[int, PathLike], metadata: Optional[Mapping[str, Any]]) -> None:
        """Attach JSON-able metadata (labels ...) to one live image, by id, path or name.

        Raises
        ------
        KeyError
            ``item`` is not a live image of the index.
        ValueError
            ``metadata`` is not JSON-able.
        """
        self._require_writable()
        value = None if metadata is None else dict(metadata)
        check_json(value, "metadata")
        if isinstance(item, (int, np.integer)) and not isinstance(item, (bool, np.bool_)):
            id_ = int(item)
        else:
            row = self._ingest.live_row(item)
            if row is None:
                raise NotInIndexError(f"{self.path}: not in the index: {os.fspath(item)}")
            id_ = row.id
        self._store.set_row_metadata(id_, value)

    # ------------------------------------------------------------------ adding and removing
    def add(
        self,
        paths_or_dirs: Union[PathLike, Iterable[PathLike]],
        *,
        recursive: bool = True,
        workers: Optional[int] = None,
        progress: Progress = False,
        exclude: Optional[Union[str, Sequence[str]]] = None,
        batch_size: int = ADD_BATCH,
    ) -> AddReport:
        """Index image files and folders, incrementally (see :mod:`fastimg.index.ingest`).

        Parameters
        ----------
        paths_or_dirs : path-like or iterable of path-like
            Image files and/or folders (folders are scanned for files whose
            extension is in :data:`IMAGE_EXTENSIONS`; hidden entries are skipped).
        recursive : bool, default True
            Scan sub-folders.
        workers : int, optional
            Decoding/description workers (passed to ``describe_many``).
        progress : bool or callable, default False
            ``True`` shows a tqdm bar on stderr; a callable is called as
            ``progress(done, total)`` after every committed batch.
        exclude : str or sequence of str, optional
            Glob patterns (matched against the file name and the full path) of
            files and folders to leave out.
        batch_size : int, default :data:`ADD_BATCH`
            Rows per commit (a crash loses at most one batch).

        Returns
        -------
        AddReport

        Raises
        ------
        IndexReadOnlyError
            The index is open with ``mode="r"``.
        DescriptorError
            The index has ``descriptor="custom"`` (use :meth:`add_vectors`).
        """
        self._require_writable()
        if self._descriptor.custom:
            raise DescriptorError(
                f"{self.path}: this index stores custom vectors (descriptor='custom'); it cannot describe "
                "images: add vectors with Index.add_vectors"
            )
        items = [paths_or_dirs] if isinstance(paths_or_dirs, (str, os.PathLike)) else list(paths_or_dirs)
        patterns = [exclude] if isinstance(exclude, str) else list(exclude or ())
        if int(batch_size) < 1:
            raise ValueError(f"batch_size must be >= 1; got {batch_size}")
        with self._mutex:
            report = self._ingest.add(items, recursive=recursive, workers=workers, progress=progress,
                                      exclude=patterns, batch_size=int(batch_size))
            self._sync_graph()
            self._save_caches(force=False)
        return report

    def add_vectors(
        self,
        vectors: Any,
        names: Sequence[str],
        *,
        metadata: Optional[Sequence[Optional[Mapping[str, Any]]]] = None,
    ) -> np.ndarray:
        """Add vectors computed elsewhere (one transaction: all or nothing).

        Meant for ``descriptor="custom"`` indexes (the caller's embeddings), and
        allowed on any index for vectors produced by its descriptor.  A name that
        is already live is replaced (its old row is marked deleted).

        Parameters
        ----------
        vectors : array_like, shape (n, dim) or (dim,)
            Finite float vectors.
        names : sequence of str
            One unique name per vector (returned as :attr:`Hit.path`).
        metadata : sequence of dict or None, optional
            JSON-able per-vector metadata (see :meth:`metadata`).

        Returns
        -------
        numpy.ndarray
            int64 ids of the new rows.
        """
        self._require_writable()
        with self._mutex:
            ids = self._ingest.add_vectors(vectors, names, metadata)
            if ids.size:
                self._sync_graph()
                self._save_caches(force=False)
        return ids

    def remove(self, paths_or_ids: Union[PathLike, int, Iterable[Union[PathLike, int]]]) -> int:
        """Mark images deleted (excluded from search; space reclaimed by :meth:`compact`).

        Parameters
        ----------
        paths_or_ids : path, name, id, or an iterable of them
            Ids (ints), file paths (a folder removes every image under it) or
            ``add_vectors`` names.

        Returns
        -------
        int
            Number of images removed.

        Raises
        ------
        ValueError
            An item that is not in the index (nothing is removed then).
        """
        self._require_writable()
        if isinstance(paths_or_ids, (str, os.PathLike, int, np.integer)):
            paths_or_ids = [paths_or_ids]
        with self._mutex:
            n = self._store.mark_deleted(self._ingest.ids_of(paths_or_ids, self._views.current()))
            self._sync_graph()
            return n

    def compact(self, progress: Progress = False) -> np.ndarray:
        """Rewrite the vector file without the deleted rows.

        **Ids are renumbered** to ``0 .. len(index) - 1`` in their previous order.
        Derived caches are dropped; an HNSW graph, if one was built, is rebuilt with
        the same parameters.  A fitted whitening stays valid (its record is
        renumbered and its cache of whitened vectors is rebuilt on demand).

        Returns
        -------
        numpy.ndarray
            int64 ``mapping`` with ``mapping[old_id] = new_id`` (-1 for removed rows).
        """
        self._require_writable()
        with self._mutex:
            cb, bar = progress_callback(progress, "compacting")
            try:
                before = self._store.state()
                mapping = self._store.compact(progress=cb)
            finally:
                if bar is not None:
                    bar.close()
            after = self._store.state()
            if after.generation != before.generation:
                self._caches.clear()
                self._search.clear()
                self._whitening.renumber(mapping, after.generation)
                ann = self._graph.drop()  # old ids: never saved
                if ann is not None and len(self):
                    self.build_ann(M=ann["M"], ef_construction=ann["ef_construction"], metric=ann["metric"],
                                   ef=ann.get("ef"))
                self._save_caches(force=True)
            return mapping

    def fit_whitening(self, dim: Optional[int] = None, power: float = 0.0, *,
                      sample: Optional[int] = None) -> dict:
        """Fit a PCA-whitening on the indexed vectors; every later search runs in its space.

        Post-processing of issue 9: L2 -> PCA-whitening -> L2.  A
        :class:`fastimg.projection.PCAWhitening` is fitted on the live committed rows of
        :attr:`vectors` and saved atomically as ``whitening.npz`` in the index;
        its parameters are recorded in ``meta.sqlite`` (key ``whitening``).  The
        raw vectors stay the source of truth and are never modified.  From then
        on, :meth:`search` and :meth:`search_batch` transform the query with the
        stored fit and compare it with ``transform(vectors)`` (a derived matrix kept
        as a rebuildable cache file) using the metric asked for: whitened vectors
        are L2-normalised and signed, so ``cosine`` (the default of ``cnn-*`` and
        ``custom`` indexes), ``pearson``, ``l2`` and ``l1`` apply; the histogram
        metrics (non-negative data) are refused.  Scores are that metric's values
        on the whitened vectors.  Rows added later are transformed with the same
        fit (not re-fitted: ``info()["whitening"]["stale_rows"]`` counts them);
        calling this method again re-fits.  An HNSW graph serves the space it was
        built in: after fitting (or re-fitting, or :meth:`clear_whitening`),
        ``mode="auto"`` searches exactly and ``mode="ann"`` raises until
        :meth:`build_ann` is called again, which then builds it on the whitened
        vectors.

        Parameters
        ----------
        dim : int, optional
            Output dimension (default and cap: ``min(index dim, live rows - 1)``).
        power : float, default 0.0
            Eigenvalue exponent: 0 = centring + PCA projection (best measured on
            Corel-1k), 0.5 = classical full whitening (see :class:`fastimg.projection.PCAWhitening`).
        sample : int, optional
            Fit on at most this many live rows, evenly spaced (default: all;
            fitting holds ``rows x dim`` float64 values in memory).

        Returns
        -------
        dict
            ``{"dim": output dimension, "power", "n_fit": rows fitted on, "rows":
            committed rows at fit time, "generation", "fit_id": checksum of
            whitening.npz}``.

        Raises
        ------
        IndexReadOnlyError
            The index is open with ``mode="r"``.
        DescriptorError
            Bad ``dim``/``power``/``sample``, or fewer than 2 live rows.
        ValueError
            The index's default metric needs non-negative vectors (histogram metrics).
        """
        self._require_writable()
        with self._mutex:
            v = self._views.current()
            meta = self._whitening.fit(v, v.live_ids(), self.metric, dim, power, sample)
            self._search.clear()
            self._save_caches(force=True)
            return meta

    def clear_whitening(self) -> None:
        """Forget the whitening: searches compare the raw vectors again.

        Removes ``whitening.npz``, its record and its caches (a no-op when no
        whitening is fitted).  An HNSW graph built on the whitened vectors must be
        rebuilt (:meth:`build_ann`) to serve ``mode="ann"`` again.

        Raises
        ------
        IndexReadOnlyError
            The index is open with ``mode="r"``.
        """
        self._require_writable()
        with self._mutex:
            self._whitening.clear()
            self._search.clear()

    # ------------------------------------------------------------------ ANN
    def build_ann(
        self,
        M: int = 16,
        ef_construction: int = 200,
        threads: Optional[int] = None,
        progress: Progress = False,
        *,
        metric: Optional[str] = None,
        ef: Optional[int] = None,
    ) -> dict:
        """Build (or rebuild) the HNSW graph over the committed rows and save it.

        The graph is a cache beside the vectors (``ann/``), saved by this call; a
        writer keeps it up to date in memory on later :meth:`add` /
        :meth:`add_vectors` / :meth:`remove` calls and saves it lazily (see
        :meth:`flush`).  When a whitening
        is fitted (:meth:`fit_whitening`) the graph is built on the whitened
        vectors and serves searches only while that fit is in force.

        Parameters
        ----------
        M, ef_construction : int
            hnswlib's graph parameters.
        threads : int, optional
            Build threads (default: all cores).
        progress : bool or callable, default False
            ``True`` shows a progress bar over the insertion; a callable is called
            as ``progress(rows inserted, rows)`` as the insertion goes.
        metric : str, optional
            The metric the graph serves (default: the index's metric).
        ef : int, optional
            Default query-time ``ef`` stored with the graph.

        Returns
        -------
        dict
            The graph's parameters (as in ``info()["ann"]``).
        """
        self._require_writable()
        m = get_metric(metric or self.metric)
        with self._mutex:
            v, fit = self._current()  # this writer's state: nothing changes it meanwhile
            if fit is not None:
                self._whitening.check_metric(m)
            data = v.vectors if fit is None else self._whitening.data(v, fit)
            return self._graph.build(v, data, m.name, None if fit is None else fit.fit_id, M=M,
                                     ef_construction=ef_construction, ef=ef, threads=threads, progress=progress)
