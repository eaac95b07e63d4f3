""":class:`Index`: the facade applications and the CLI use.

:class:`Index` is :class:`~fastimg.index._reader.IndexReader` (properties,
info, paths, search) plus the writer's calls, each delegated to one part:

=========================  =================================================
``add`` / ``add_vectors``  :class:`~fastimg.index.ingest.Ingest`
``remove``                 :meth:`Ingest.ids_of <fastimg.index.ingest.Ingest.ids_of>` + the store
``fit/clear_whitening``    :class:`~fastimg.index.whitening.Whitening` (the index's linear map)
``fit/clear_projection``   the same, with a projection learned from labels
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
from fastimg.index._linear_maps import LinearMapMethods
from fastimg.index._progress import Progress, progress_callback
from fastimg.index._reader import IndexReader
from fastimg.index.caches import CACHE_SAVE_ROWS, scan_outputs
from fastimg.index.descriptor import descriptor_for
from fastimg.index.ingest import ADD_BATCH, AddReport, Ingest, check_json
from fastimg.index.searching import PRECISION_KEY, scan_precision
from fastimg.index.store import Store
from fastimg.metrics import get_metric
from fastimg.precision import check_precision

__all__ = ["Index"]

log = logging.getLogger("fastimg.index")

PathLike = Union[str, "os.PathLike[str]"]


class Index(IndexReader, LinearMapMethods):
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
        precision: str = "float32",
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
            Directory that image paths are stored relative to, recorded relative
            to the index directory: a collection moved together with its index
            keeps working.  Default: the directory that contains ``path``,
            recorded as an absolute path: the index can be copied or moved
            anywhere on the machine (see :meth:`relocate` when the files move).
        threads : int, optional
            Threads for exact search (default: the search module's default).
        precision : {"float32", "float16", "int8", "auto"}, default "float32"
            What exact searches of the inner-product metrics read (see
            :meth:`set_precision`); stored in the index.
        **descriptor_params
            Parameters of the descriptor (e.g. bins).

        Raises
        ------
        DescriptorError
            Unknown descriptor or bad parameters, or ``dim`` inconsistent with it.
        ValueError
            Unknown metric.
        ArgumentError
            ``precision`` unknown, or reduced for a metric without an inner-product form.
        FileExistsError
            ``path`` already holds an index, or is a non-empty directory.
        """
        desc = descriptor_for(descriptor, dim, descriptor_params)
        metric_name = get_metric(metric if metric is not None else desc.default_metric).name
        precision = check_precision(precision, metric_name, int(desc.dim))
        store = Store.create(path, descriptor=desc.spec(), dim=int(desc.dim), metric=metric_name, root=root)
        if precision != "float32":
            store.set_meta(PRECISION_KEY, precision)
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
        p = scan_precision(v, m, int(data.shape[1]))
        if m.ip_form and not (fit is not None and m.nonneg) and due(scan_outputs(m.name, data.shape[1], p, prefix)):
            self._caches.prepared(m.name, v.state, data, prefix, p)
            self._caches.prune_scans(m.name, int(data.shape[1]), p)

    def set_precision(self, precision: str) -> None:
        """Change what exact searches of the inner-product metrics read (writer only).

        ``"float32"``: the prepared float32 rows; ``"float16"`` / ``"int8"``: copies
        of them in 2x / 4x fewer bytes (:mod:`fastimg.precision`), the answer
        (ids and scores) unchanged: candidates are certified and re-scored from
        the float32 vectors, which are never touched; ``"auto"``: int8 from about
        4 M values (rows x dim) where the int8 kernels are vectorised
        (:func:`fastimg.search.resolve_precision`).  Stored in the index
        (``meta`` key ``precision``); the caches of the default metric are
        rebuilt in the new precision and the others removed (derived data).
        Metrics without an inner-product form always read the float32 vectors.

        Raises
        ------
        ArgumentError
            ``precision`` unknown, reduced while the index's metric has no
            inner-product form, or ``"int8"`` beyond D = 32768.
        IndexReadOnlyError
            The handle was opened with ``mode="r"``.
        """
        self._require_writable()
        precision = check_precision(precision, self.metric, self.dim)
        with self._mutex:
            self._store.set_meta(PRECISION_KEY, None if precision == "float32" else precision)
            self._search.clear()
            self._save_caches(force=True)

    def _require_writable(self) -> None:
        if not self._store.writable:
            raise IndexReadOnlyError(f"{self.path}: the index is open read-only (open it with mode='a' to change it)")

    def _sync_graph(self) -> None:
        """Writer: bring the in-memory HNSW graph up to date with the last change."""
        v = self._views.current()
        if v.get("ann") is None:
            return
        if self._rebuild_stale_graph(v):
            return
        wmeta = v.get("whitening")

        def data() -> Any:
            fit = self._whitening.current(v)
            return v.vectors if fit is None else self._whitening.data(v, fit)

        self._graph.sync(v, None if wmeta is None else wmeta.get("fit_id"), data)

    def _rebuild_stale_graph(self, v: Any) -> bool:
        """Writer: a graph recorded for an older vector generation (a process died
        between a compaction or re-description and the rebuild) is rebuilt with its
        parameters at the next change; returns whether it was."""
        ann = v.get("ann")
        if ann is None or ann.get("generation") == v.state.generation:
            return False
        log.info("%s: rebuilding the HNSW graph left for generation %s (the index is at %d)", self.path,
                 ann.get("generation"), v.state.generation)
        self._graph.discard()
        if len(self):
            self.build_ann(M=ann["M"], ef_construction=ann["ef_construction"], metric=ann["metric"],
                           ef=ann.get("ef"))
        else:
            self._graph.drop()
        return True

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
                raise NotInIndexError(f"{self.path}: not in the index: {os.fsdecode(item)}")
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
            ``progress(done, total)`` from the calling thread as images are
            described (every few images, non-decreasing, first ``(0, total)``,
            last ``(total, total)``); ``total`` counts the files to describe.
        exclude : str or sequence of str, optional
            Glob patterns (``fnmatch``: ``*`` also matches ``/``) of files and
            folders to leave out, matched against the name, the absolute path and
            the path relative to the folder being added: ``"edits/*"``,
            ``"*.gif"``, ``"*/thumbnails/*"``.
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
            raise ArgumentError(f"batch_size must be >= 1; got {batch_size}")
        with self._mutex:
            report = AddReport()
            if self._ingest.redescribe(workers=workers, progress=progress, batch_size=int(batch_size),
                                       report=report):
                self._after_new_generation(None)
            report = self._ingest.add(items, recursive=recursive, workers=workers, progress=progress,
                                      exclude=patterns, batch_size=int(batch_size), report=report)
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
            Ids (ints), file paths (``str``, path objects or ``bytes``; a folder
            removes every image under it) or ``add_vectors`` names.

        Returns
        -------
        int
            Number of images removed.

        Raises
        ------
        NotInIndexError
            An item that is not in the index (nothing is removed then).
        """
        self._require_writable()
        if isinstance(paths_or_ids, (str, bytes, os.PathLike, int, np.integer)):
            paths_or_ids = [paths_or_ids]
        with self._mutex:
            n = self._store.mark_deleted(self._ingest.ids_of(paths_or_ids, self._views.current()))
            self._sync_graph()
            return n

    def relocate(self, old: PathLike, new: PathLike) -> int:
        """The indexed files that were under folder ``old`` are now under ``new``:
        rewrite their stored paths (and the root, when it lies under ``old``) in
        one transaction.  Ids, vectors and metadata are unchanged; nothing on disk
        is moved.  Returns the number of live images whose path changed.

        Raises
        ------
        IndexReadOnlyError
            The index is open with ``mode="r"``.
        ArgumentError
            Two live images would get the same path (nothing is changed).
        """
        self._require_writable()
        with self._mutex:
            n = self._store.relocate(old, new)
            self._warned_missing = False
            return n

    def check(self, repair: bool = False, *, sample: int = 32) -> Any:
        """Verify every file of the index against its metadata and checksums
        (:mod:`fastimg.index.check`): manifest, SQLite integrity, vectors against the
        committed rows, caches, graph, whitening, leftovers of interrupted writes.

        Parameters
        ----------
        repair : bool, default False
            Also repair what can be without touching committed rows (writer only):
            remove bad or stale caches and leftovers, rebuild the graph and re-fit
            the whitening with their recorded parameters.
        sample : int, default 32
            Indexed files checked for existence.

        Returns
        -------
        fastimg.index.check.CheckReport
            ``.ok`` (no problem left), ``.findings`` (problems and notes).
        """
        from fastimg.index.check import check

        return check(self, repair, sample=sample)

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
                self._after_new_generation(mapping)
                self._save_caches(force=True)
            return mapping

    def _after_new_generation(self, mapping: Optional[np.ndarray]) -> None:
        """What derives from the vectors, after a new vector file: a compaction
        (``mapping``: old id -> new id) or a re-description (None: same ids, new
        vectors).  Caches are dropped; the whitening record is renumbered
        (compaction) or the whitening re-fitted with its parameters (re-description);
        the HNSW graph is rebuilt with its parameters (until then its record names
        the old generation: searches scan exactly, ``fastimg check --repair``
        rebuilds it if this process dies first)."""
        self._caches.clear()
        self._search.clear()
        v = self._views.current()
        if mapping is not None:
            self._whitening.renumber(mapping, v.state.generation)
        elif v.get("whitening") is not None:
            self._whitening.refit(v, self.metric)
            self._search.clear()
        ann = self._graph.forget()  # old ids or old vectors: never saved again
        if ann is not None:
            if len(self):
                self.build_ann(M=ann["M"], ef_construction=ann["ef_construction"], metric=ann["metric"],
                               ef=ann.get("ef"))
            else:
                self._graph.drop()


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
