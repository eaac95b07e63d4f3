"""The HNSW graph's lifecycle inside an index: build, load + catch-up, lazy save.

The graph (:class:`fastimg.ann.HnswGraph`) is a cache beside the vectors; each
build has its own directory, ``ann/<build>/``; its state is the store's ``meta``
value ``ann``: ``{"metric", "M", "ef_construction", "ef", "rows", "generation",
"whitening", "saves", "build", "dir"}`` (``rows`` covered by the saved file, the
vector-file ``generation``, the fit id of the ``whitening`` it was built in or
None, a ``build`` id and a ``saves`` counter that together identify the saved
file, and ``dir``, the build's directory relative to the index; records of
fastimg 0.1 have no ``dir``: their graph is in ``ann/`` itself).

* **Crash safety**: a build is saved into its new directory, then recorded (one
  SQLite transaction), then the other builds are removed; a save within a build
  is one rename (:meth:`fastimg.ann.HnswGraph.save`).  A process killed at any
  moment leaves a record whose graph is whole.  After a compaction or a
  re-description the record keeps naming the old generation until the graph is
  rebuilt (searches scan exactly meanwhile; ``fastimg check --repair`` rebuilds it
  if the process died first).

* **Never wrong**: a loaded graph holds rows ``[0, rows)`` and gets every deleted
  id below that marked (in memory) at each use; rows added after it are scanned
  exactly and merged (:meth:`Graph.candidates`).  A graph saved for another
  generation, or whose file disagrees with its record, is not used (searches
  scan exactly and :meth:`Graph.error` says why).
* **Lazy save**: a writer inserts new rows and marks deletions in memory after
  every change (:meth:`Graph.sync`), and saves the graph once
  :data:`ANN_SAVE_ROWS` rows (or 5 % of the graph) were inserted since the last
  save, on ``Index.flush()`` and on ``Index.close()``.  A graph left stale (a
  killed writer) is caught up by the next writer.
* **One space**: the graph serves the metric and the linear map (whitening or
  learned projection, :mod:`fastimg.index.whitening`) it was built for; after
  the map is fitted, re-fitted or cleared it is unused until rebuilt.
"""
from __future__ import annotations

import contextlib
import logging
import re
import shutil
import threading
import uuid
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np

from fastimg.errors import AnnSearchError, ArgumentError, FastimgError, IndexCorruptError
from fastimg.index._progress import Progress, progress_callback
from fastimg.index.store import ANN_DIR, Store
from fastimg.index.view import View
from fastimg.metrics import Metric
from fastimg.index.scan import merge_candidates
from fastimg.search import ExactSearcher

__all__ = ["ANN_SAVE_ROWS", "Graph", "crossover", "auto_exact"]

log = logging.getLogger("fastimg.index.graph")

#: A writer saves the HNSW graph once this many rows (or 5 % of the graph's rows,
#: whichever is more) were inserted since the last save; otherwise on
#: ``Index.close`` / ``Index.flush``.
ANN_SAVE_ROWS = 20_000
_BUILD_CHUNK = 16_384  # rows inserted between two progress callbacks


def crossover() -> int:
    """Live rows from which ``mode="auto"`` uses a graph (read at call time: tests patch it)."""
    from fastimg import ann

    return int(ann.ANN_CROSSOVER)


def auto_exact(metric: str) -> bool:
    """Does ``mode="auto"`` scan exactly for ``metric`` even with a graph?"""
    from fastimg import ann

    return metric in ann.AUTO_EXACT_METRICS


def _key(meta: dict) -> tuple:
    """Identity of the saved graph: changes when a writer rebuilds it (a new
    ``build`` id, even at the same generation and size) or saves it again."""
    return (meta.get("build"), meta.get("generation"), int(meta.get("rows", 0)), int(meta.get("saves", 0)))


class Graph:
    """The graph of one index handle: the loaded :class:`~fastimg.ann.HnswGraph`,
    which saved file it came from, and why it is unusable if it is."""

    def __init__(self, store: Store, threads: Optional[int] = None):
        self._store = store
        self.threads = threads
        self.graph: Any = None
        self._key: Optional[tuple] = None
        self.error: Optional[str] = None
        # loading a graph and marking deletions in it: one thread at a time (searches
        # of a loaded graph run in parallel: HnswGraph has its own read/write lock)
        self._lock = threading.RLock()
        # (graph, deleted ids array, rows) whose deletions were last marked (each search checks it)
        self._marked: Optional[tuple] = None

    def discard(self) -> None:
        """Forget the graph held in memory (never saved)."""
        self.graph, self._key = None, None

    # ------------------------------------------------------------------ build
    def build(self, view: View, data: Any, metric: str, fit_id: Optional[str], *, M: int, ef_construction: int,
              ef: Optional[int], threads: Optional[int], progress: Progress) -> dict:
        """Build the graph over the rows of ``data`` (the vectors, or the whitened
        matrix of fit ``fit_id``), mark the deleted rows, save it and record it.

        ``progress``: True shows a bar; a callable gets ``(rows inserted, rows)``."""
        from fastimg.ann import HnswGraph

        n = view.state.committed
        ids = np.arange(n, dtype=np.int64)
        cb, bar = progress_callback(progress, "hnsw build", unit="rows")
        try:
            if cb is None:
                graph = HnswGraph.build(data, metric, ids, M=M, ef_construction=ef_construction, ef=ef,
                                        threads=threads)
            else:  # in chunks, reporting after each
                first = min(n, _BUILD_CHUNK)
                graph = HnswGraph.build(data[:first], metric, ids[:first], M=M, ef_construction=ef_construction,
                                        ef=ef, threads=threads)
                cb(first, n)
                for a in range(first, n, _BUILD_CHUNK):
                    b = min(n, a + _BUILD_CHUNK)
                    graph.add(data[a:b], ids[a:b])
                    cb(b, n)
        finally:
            if bar is not None:
                bar.close()
        if view.deleted.size:
            graph.mark_deleted(view.deleted)
        build = uuid.uuid4().hex
        rel = f"{ANN_DIR}/{build}"
        target = self._store.path / rel
        try:
            graph.save(target, extra={"rows": n, "generation": view.state.generation, "whitening": fit_id})
        except OSError as exc:
            shutil.rmtree(target, ignore_errors=True)
            from fastimg.index.store import _write_error

            raise _write_error(target, exc, "save the HNSW graph", "its previous graph, if any") from None
        except BaseException:
            shutil.rmtree(target, ignore_errors=True)
            raise
        meta = {"metric": metric, "M": int(M), "ef_construction": int(ef_construction), "ef": int(graph.ef),
                "rows": n, "generation": view.state.generation, "whitening": fit_id, "saves": 0,
                "build": build, "dir": rel}
        self._store.set_meta("ann", meta)  # the commit point: this build is in force
        self.graph, self._key, self.error = graph, _key(meta), None
        self._remove_builds(keep=target)
        return {k: meta[k] for k in ("metric", "M", "ef_construction", "ef", "rows", "generation", "whitening")}

    def forget(self) -> Optional[dict]:
        """Forget the graph held in memory (a new vector generation made it wrong) and
        return the record (to rebuild with the same parameters) or None; the saved
        graph stays in force until a build replaces it (its generation is then the
        old one: it is not used)."""
        self.discard()
        return self._store.get_meta("ann")

    def drop(self) -> Optional[dict]:
        """Remove the saved graph and its record; returns the old record or None."""
        meta = self._store.get_meta("ann")
        self.discard()
        if meta is not None:
            self._store.set_meta("ann", None)
        self._remove_builds(keep=None)
        return meta

    def directory(self, meta: dict) -> Path:
        """The directory of the build ``meta`` records."""
        rel = meta.get("dir") or ANN_DIR
        if not isinstance(rel, str) or not re.fullmatch(rf"{ANN_DIR}(/[0-9a-f]+)?", rel):
            raise IndexCorruptError(f"{self._store.path / 'meta.sqlite'}: the graph record names {rel!r}, not a "
                                    f"directory of {ANN_DIR}/")
        return self._store.path / rel

    def orphans(self, meta: Optional[dict]) -> list[Path]:
        """Entries of ``ann/`` that are not the recorded build (interrupted builds,
        replaced ones)."""
        root = self._store.ann_dir
        if not root.is_dir():
            return []
        keep = None if meta is None else self.directory(meta)
        if keep == root:  # fastimg 0.1's layout: the files are in ann/ itself
            return [p for p in root.iterdir() if p.is_dir()]
        return [p for p in root.iterdir() if p != keep]

    def _remove_builds(self, keep: Optional[Path]) -> None:
        for p in self.orphans(None if keep is None else {"dir": str(keep.relative_to(self._store.path))}):
            with contextlib.suppress(OSError):
                if p.is_dir() and not p.is_symlink():
                    shutil.rmtree(p)
                else:
                    p.unlink()

    # ------------------------------------------------------------------ load
    def load(self, view: View) -> tuple[Any, Optional[dict]]:
        """The graph and its meta, or (None, meta/None) if absent or unusable.

        The graph returned holds rows ``[0, graph.max_id + 1)`` and has every
        deleted id below that marked deleted (in memory).

        Raises
        ------
        AnnSearchError
            A reader whose snapshot is older than the saved graph (not an error:
            that search scans exactly).
        """
        meta = view.get("ann")
        if meta is None:
            return None, None
        with self._lock:
            if meta.get("generation") != view.state.generation:
                self.error = (f"the graph was built for generation {meta.get('generation')} of the vectors, the "
                              f"index is at generation {view.state.generation}: rebuild it (Index.build_ann; "
                              "fastimg check --repair)")
                return None, meta
            return self._load(view, meta)

    def _load(self, view: View, meta: dict) -> tuple[Any, Optional[dict]]:
        key = _key(meta)
        if self.graph is None or self._key != key:
            from fastimg.ann import HnswGraph

            ann_dir = self.directory(meta)
            try:
                graph = HnswGraph.load(ann_dir, threads=self.threads)
                saved = graph.extra  # what the file covers (absent: saved by fastimg <= 0.x, trust meta)
                rows = int(saved.get("rows", meta["rows"]))
                if saved.get("generation", meta["generation"]) != view.state.generation:
                    raise IndexCorruptError(f"{ann_dir}: the graph was saved for generation "
                                            f"{saved.get('generation')} of the vectors, the index is at generation "
                                            f"{view.state.generation}; rebuild it (Index.build_ann)")
                if graph.max_id != rows - 1:
                    raise IndexCorruptError(f"{ann_dir}: the graph holds ids up to {graph.max_id} "
                                            f"but records {rows} rows; rebuild it (Index.build_ann)")
                if rows > view.state.committed:
                    if not self._store.writable:
                        # saved by a writer after this reader's snapshot: not an error,
                        # this search scans exactly and the next snapshot uses the graph
                        raise AnnSearchError(f"{ann_dir}: the graph covers {rows} rows, newer than "
                                             f"this snapshot's {view.state.committed}")
                    raise IndexCorruptError(f"{ann_dir}: the graph covers {rows} rows but the index "
                                            f"has {view.state.committed}; rebuild it (Index.build_ann)")
            except AnnSearchError:
                raise
            except (FastimgError, OSError) as exc:
                self.graph, self.error = None, str(exc)
                log.warning("%s: HNSW graph unusable, searching exactly (%s)", self._store.path, exc)
                return None, meta
            self.graph, self._key, self.error = graph, key, None
        graph = self.graph
        self._mark_deleted(view, graph)
        return graph, meta

    def _mark_deleted(self, view: View, graph: Any) -> None:
        """Mark (in memory) the deleted ids below the graph's rows that it does not know yet."""
        rows = graph.max_id + 1  # the graph holds the ids [0, rows)
        done = self._marked
        if done is not None and done[0] is graph and done[1] is view.deleted and done[2] == rows:
            return  # this graph, at these rows, has this (immutable) array's deletions marked
        dead = view.deleted[:int(np.searchsorted(view.deleted, rows))]
        if dead.size != rows - len(graph):  # len = live rows: some deletion is not marked yet
            graph.mark_deleted(dead)  # ids already marked are ignored
        self._marked = (graph, view.deleted, rows)

    def held(self, meta: Optional[dict]) -> bool:
        """Is the graph in memory the one ``meta`` records (possibly with unsaved changes)?"""
        return self.graph is not None and meta is not None and self._key == _key(meta)

    # ------------------------------------------------------------------ writer
    def save(self, view: View) -> None:
        """Writer: save the in-memory graph and record what it covers."""
        meta = self._store.get_meta("ann")
        if self.graph is None or meta is None:
            return
        rows = self.graph.max_id + 1
        self.graph.save(self.directory(meta), extra={"rows": rows, "generation": view.state.generation,
                                                     "whitening": meta.get("whitening")})
        meta = dict(meta, rows=rows, saves=int(meta.get("saves", 0)) + 1)
        self._store.set_meta("ann", meta)
        self._key = _key(meta)

    def save_if_changed(self, view: View) -> None:
        """Writer: save the graph if it holds unsaved changes."""
        if self.graph is not None and self.graph.changed:
            self.save(view)

    def sync(self, view: View, fit_id: Optional[str], data: Callable[[], Any]) -> None:
        """Writer: bring the in-memory graph up to date with new and deleted rows
        (``data()``: the matrix of the search space, called only when rows are
        inserted); save it when enough rows were inserted since the last save."""
        if view.get("ann") is None:
            return
        graph, meta = self.load(view)
        if graph is None or meta is None:
            return
        if meta.get("whitening") != fit_id:
            return  # built in another space (whitening fitted or cleared since): unused until rebuilt
        rows = graph.max_id + 1
        if rows < view.state.committed:
            try:
                graph.add(data()[rows:], np.arange(rows, view.state.committed, dtype=np.int64))
            except BaseException:
                # a partly inserted graph: drop it, the saved one is still right
                # (and is caught up by the next change)
                self.discard()
                raise
            self._mark_deleted(view, graph)
        held = graph.max_id + 1
        if held - int(graph.extra.get("rows", 0)) >= max(ANN_SAVE_ROWS, held // 20):  # inserted since saved
            self.save(view)

    # ------------------------------------------------------------------ search
    def choose(self, view: View, m: Metric, mode: str, fit_id: Optional[str]) -> tuple[Any, Optional[dict]]:
        """The graph a search in ``mode`` uses for metric ``m`` in the space of
        ``fit_id``, or ``(None, None)`` to scan exactly.

        Raises
        ------
        ValueError
            ``mode="ann"`` and no usable graph (says why).
        """
        use = mode == "ann"
        if mode == "auto" and view.live >= crossover() and not auto_exact(m.name):
            # decide from the recorded meta before paying for a graph load (CRC + hnswlib)
            pre = view.get("ann")
            use = pre is not None and pre.get("metric") == m.name and pre.get("whitening") == fit_id
        if not use:
            return None, None
        try:
            graph, meta = self.load(view)
        except AnnSearchError as exc:  # a graph newer than this snapshot: scan exactly this time
            log.info("%s: %s; searching exactly", self._store.path, exc)
            return None, None
        same_space = meta is not None and meta.get("whitening") == fit_id
        usable = graph is not None and meta is not None and meta.get("metric") == m.name and same_space
        if mode == "ann" and not usable:
            why = (self.error if meta is not None and graph is None else
                   ("the graph was built before the whitening or learned projection was fitted, re-fitted or "
                    "cleared: rebuild it (Index.build_ann / fastimg index --ann)") if meta is not None and not same_space
                   else f"the graph serves metric {meta.get('metric')!r}, not {m.name!r}" if meta is not None
                   else "no HNSW graph is built (Index.build_ann)")
            raise ArgumentError(f"{self._store.path}: mode='ann' unavailable: {why}")
        return (graph, meta) if usable else (None, None)

    def candidates(self, graph: Any, view: View, data: Any, q: np.ndarray, want: int, m: Metric,
                   ef: Optional[int], candidates: Optional[int], *,
                   checked: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """Top ``want`` of the graph's rows merged with an exact scan of the rows
        added after it (:func:`fastimg.index.scan.merge_candidates`); ``(ids,
        scores)`` of shape (Q, <= want), -1/NaN padded.  ``checked``: ``q`` was
        validated by the caller (:meth:`fastimg.ann.HnswGraph.search_checked`)."""
        rows = min(graph.max_id + 1, view.state.committed)  # the graph holds rows [0, rows), deletions marked
        deleted = view.deleted
        g_live = rows - int(np.searchsorted(deleted, rows))
        parts_i: list[np.ndarray] = []
        parts_s: list[np.ndarray] = []
        if g_live > 0:
            kk = min(want, g_live)
            cands = None if candidates is None else max(candidates, kk)
            if checked:
                gi, gs = graph.search_checked(q, kk, data, ef=ef, candidates=cands)
            else:
                gi, gs = graph.search(q, kk, data=data, ef=ef, candidates=cands)
            parts_i.append(np.asarray(gi, np.int64))
            parts_s.append(np.asarray(gs, np.float32))
        if rows < view.state.committed:  # rows added after the graph was saved: scan them exactly
            tail = data[rows:]
            tdel = deleted[deleted >= rows] - rows
            t_live = tail.shape[0] - tdel.size
            if t_live > 0:
                ti, ts = ExactSearcher(tail, m.name, threads=self.threads).search(
                    q, min(want, t_live), exclude=tdel if tdel.size else None)
                ti = np.asarray(ti, np.int64)
                parts_i.append(np.where(ti >= 0, ti + rows, -1))
                parts_s.append(np.asarray(ts, np.float32))
        if len(parts_i) == 1:
            return parts_i[0], parts_s[0]
        return merge_candidates(m, q, data, parts_i, want)

    # ------------------------------------------------------------------ info
    def info(self, view: View, metric: str, fit_id: Optional[str]) -> dict:
        """``Index.info()["ann"]`` (see there)."""
        from fastimg.ann import saved_meta

        meta = view.get("ann")
        cross = crossover()
        out: dict[str, Any] = {"built": meta is not None, "crossover": cross}
        if meta is not None:
            out.update({k: meta.get(k) for k in ("metric", "M", "ef_construction", "ef")})
            try:
                saved = saved_meta(self.directory(meta))
            except IndexCorruptError:
                saved = None
            saved_rows = 0 if saved is None else int((saved.get("extra") or {}).get("rows", meta.get("rows", 0)))
            held = self.held(meta)
            rows = self.graph.max_id + 1 if held else saved_rows
            out["rows"] = rows                      # rows the graph answers for (this handle)
            out["saved_rows"] = saved_rows          # rows the graph file on disk covers
            # changes held in memory by this writer, saved on close/flush
            out["unsaved"] = bool(held and self._store.writable and self.graph.changed)
            out["pending_rows"] = max(0, view.state.committed - rows)  # scanned exactly
            out["error"] = self.error
        out["auto_mode"] = (
            "ann" if meta is not None and meta.get("metric") == metric and view.live >= cross
            and self.error is None and meta.get("whitening") == fit_id and not auto_exact(metric)
            else "exact"
        )
        return out
