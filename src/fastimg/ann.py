"""Approximate search: an HNSW graph (hnswlib) behind the same search call.

The graph only *proposes* candidates.  Every candidate is re-scored with
:func:`fastimg.metrics.exact_scores_many` (through :func:`fastimg.search.rescore`,
the re-scoring step shared with the exact scan), so the scores reported are
exactly the metric's values (the ``cv2.compareHist`` numbers for the histogram
metrics) and the final order is exact among the candidates; the only
approximation is which rows become candidates (measured as recall@k against the
exact scan).

Metric mapping (the ``graph_space``, ``graph_rows`` and ``graph_order`` fields of
:class:`fastimg.metrics.Metric`; see :func:`metric_space`):

=============  ===========  ============================================  ============
metric         hnsw space   rows put in the graph                         graph order
=============  ===========  ============================================  ============
pearson        ip           centred unit rows (``prepare_rows``)          exact [1]_
cosine         ip           unit rows (``prepare_rows``)                  exact
bhattacharyya  ip           ``sqrt(x / sum(x))`` (``prepare_rows``)       exact [2]_
l2             l2           raw rows                                      exact
chisqr         ip           ``sqrt(x / sum(x))`` (Hellinger rows)         surrogate
chisqr_alt     ip           ``sqrt(x / sum(x))``                          surrogate
intersect      ip           ``sqrt(x / sum(x))``                          surrogate
kl_div         ip           ``sqrt(x / sum(x))``                          surrogate
l1             l2           raw rows                                      surrogate
=============  ===========  ============================================  ============

.. [1] A constant row scores exactly 1 against every query (OpenCV's special
   case: the bias of ``prepare_rows``) but is a zero vector in the graph; such
   rows are remembered and always offered as candidates.
.. [2] Bhattacharyya coefficient = inner product of the square-root rows;
   distance = ``sqrt(1 - coefficient)`` (OpenCV's normalisation).

A query whose graph vector is zero (a zero or constant query) cannot be ranked
by the graph; it is answered as the exact scan answers it
(:func:`fastimg.search.degenerate_queries` / :func:`~fastimg.search.rank_degenerate`):
the ``k`` lowest live ids when the metric ties every row, an exact scan of the
live rows otherwise.

"exact" graph order means the graph's distance is a monotone function of the
metric, so recall only depends on ``ef``.  "surrogate" means the graph ranks by
a related metric (Hellinger distance for the histogram metrics, Euclidean for
L1) and the re-scoring fixes the order; these metrics get more candidates by
default (:data:`CANDIDATE_FACTOR`).

Thread-safety: :meth:`HnswGraph.search` may be called from many threads at once
(hnswlib's ``knn_query`` releases the GIL and is safe with itself; the
per-call ``ef`` is passed without touching hnswlib's shared ``ef``).
:meth:`~HnswGraph.add`, :meth:`~HnswGraph.mark_deleted` and
:meth:`~HnswGraph.save` take an exclusive lock, so they wait for running searches
and searches wait for them (hnswlib's ``add_items`` is not safe with
``knn_query``).
"""
from __future__ import annotations

import contextlib
import json
import os
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Dict, Iterator, Optional, Sequence, Tuple, Union

import numpy as np
import numpy.typing as npt

from fastimg.ann_files import (_GRAPH_NAME, FORMAT_VERSION, GRAPH_FILE, META_FILE, READ_FORMAT_VERSIONS, _check_complete,
                               _crc32, _fsync, _fsync_dir, graph_file, saved_meta)
from fastimg.errors import AnnSearchError, IndexCorruptError, IndexFormatError, IndexNotFoundError
from fastimg.metrics import Metric, get_metric
from fastimg.search import check_queries, check_values, degenerate_queries, rank_degenerate, rescore, resolve_threads

__all__ = [
    "ANN_CROSSOVER",
    "DEFAULT_EF",
    "CANDIDATE_FACTOR",
    "FORMAT_VERSION",
    "GRAPH_FILE",
    "graph_file",
    "META_FILE",
    "AnnSearchError",
    "HnswGraph",
    "metric_space",
    "default_candidates",
    "saved_meta",
]

#: Number of live rows from which ``Index.search(mode="auto")`` uses the graph
#: (when one is built); below it the exact scan is kept.  Chosen from the
#: crossover measured one query at a time in bench/ann.md ("Crossover").
ANN_CROSSOVER = 50_000

#: Default size of the dynamic candidate list (hnswlib's ``ef``) at query time,
#: used when neither ``build(ef=...)`` nor ``search(ef=...)`` says otherwise
#: (recall against ``ef`` in bench/ann.md).
DEFAULT_EF = 100

#: Default ``candidates`` = ``max(k, CANDIDATE_FACTOR[order] * k)`` re-scored per
#: query, by ``Metric.graph_order``: "exact" when the graph's order is the
#: metric's (re-scoring then only replaces float32 graph distances by the float64
#: values, so ``k`` candidates suffice and the graph does exactly raw hnswlib's
#: work at the same ``ef``), "surrogate" when the graph ranks by a related metric
#: and re-scoring must fix the order (recall per factor in bench/ann.md).
CANDIDATE_FACTOR: Dict[str, int] = {"exact": 1, "surrogate": 8}

#: Metrics for which ``mode="auto"`` keeps the exact scan even when a graph is
#: built: the graph's candidates reach too low a recall for them (chisqr, being
#: asymmetric; bench/ann.md).  ``mode="ann"`` still uses the graph when asked.
AUTO_EXACT_METRICS = frozenset({"chisqr"})

_ADD_CHUNK = 65_536  # rows prepared and inserted per step (bounds the prepared copy)


# ---------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------

def metric_space(metric: str) -> Tuple[str, str]:
    """How a metric is searched in the graph.

    Parameters
    ----------
    metric : str
        A fastimg metric name (see :func:`fastimg.metrics.metric_names`).

    Returns
    -------
    space : str
        hnswlib space: ``"ip"`` (distance ``1 - a.b``) or ``"l2"`` (squared
        Euclidean).
    rows : str
        How rows (and queries) are prepared before entering the graph:
        ``"raw"`` (as given) or the name of the ip-form metric whose
        :func:`fastimg.metrics.prepare_rows` / ``prepare_query`` is applied
        (``"pearson"``, ``"cosine"``, ``"bhattacharyya"``).

    Raises
    ------
    AnnSearchError
        Unknown metric (the message lists the valid names).

    Examples
    --------
    >>> metric_space("pearson")
    ('ip', 'pearson')
    >>> metric_space("chisqr")
    ('ip', 'bhattacharyya')
    """
    m = _metric(metric)
    return m.graph_space, m.graph_rows


def _metric(metric: "str | Metric") -> Metric:
    """``get_metric`` (the one name check, same messages as everywhere) raising AnnSearchError."""
    try:
        return get_metric(metric)
    except (TypeError, ValueError) as exc:
        raise AnnSearchError(str(exc)) from None


def default_candidates(metric: "str | Metric", k: int) -> int:
    """Number of graph candidates re-scored per query when ``candidates=None``.

    ``max(k, CANDIDATE_FACTOR[order] * k)``, ``order`` being the metric's
    ``graph_order`` (``"exact"`` or ``"surrogate"``, see the module table).
    """
    return max(k, CANDIDATE_FACTOR[_metric(metric).graph_order] * k)


def _check_int(name: str, value: Any, lo: int, hi: Optional[int] = None) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise AnnSearchError(f"{name} must be an integer; got {value!r}")
    value = int(value)
    if value < lo or (hi is not None and value > hi):
        rng = f"[{lo}, {hi}]" if hi is not None else f">= {lo}"
        raise AnnSearchError(f"{name} must be {rng}; got {name}={value}")
    return value


def _check_vectors(name: str, x: npt.ArrayLike, dim: Optional[int], metric: Metric) -> np.ndarray:
    """float32 C-contiguous (n, D) view or copy of ``x``, finite (non-negative for
    the histogram metrics: :func:`fastimg.search.check_values`), dims checked."""
    arr = np.asarray(x)
    if arr.ndim != 2:
        raise AnnSearchError(f"{name} must be 2-D (n, D); got shape {arr.shape}")
    if arr.dtype.kind not in "fiu":
        raise AnnSearchError(f"{name} must hold real numbers; got dtype {arr.dtype}")
    if dim is not None and arr.shape[1] != dim:
        raise AnnSearchError(f"{name} must have D={dim} columns (the graph's dimension); got shape {arr.shape}")
    if arr.shape[1] < 1:
        raise AnnSearchError(f"{name} must have at least one column; got shape {arr.shape}")
    arr = np.ascontiguousarray(arr, dtype=np.float32)
    try:
        check_values(arr, name, metric)
    except ValueError as exc:
        raise AnnSearchError(str(exc)) from None
    return arr


def _check_ids(name: str, ids: npt.ArrayLike, n: int) -> np.ndarray:
    arr = np.asarray(ids)
    if arr.ndim != 1 or arr.shape[0] != n:
        raise AnnSearchError(f"{name} must be 1-D with one id per row ({n},); got shape {arr.shape}")
    if arr.size and arr.dtype.kind not in "iu":
        raise AnnSearchError(f"{name} must be integers; got dtype {arr.dtype}")
    arr = arr.astype(np.int64, copy=False)
    if arr.size and arr.min() < 0:
        raise AnnSearchError(f"{name} must be >= 0; got {int(arr.min())}")
    if np.unique(arr).size != arr.size:
        raise AnnSearchError(f"{name} contains duplicates")
    return arr


class _RWLock:
    """Many readers (searches) or one writer (add / delete / save)."""

    def __init__(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._readers = 0
        self._writer = False

    def acquire_read(self) -> None:
        with self._cond:
            while self._writer:
                self._cond.wait()
            self._readers += 1

    def release_read(self) -> None:
        with self._cond:
            self._readers -= 1
            if not self._readers:
                self._cond.notify_all()

    @contextmanager
    def write(self) -> Iterator[None]:
        with self._cond:
            while self._writer or self._readers:
                self._cond.wait()
            self._writer = True
        try:
            yield
        finally:
            with self._cond:
                self._writer = False
                self._cond.notify_all()


# ---------------------------------------------------------------------------
# the graph
# ---------------------------------------------------------------------------

class HnswGraph:
    """An HNSW graph over raw feature rows, with exact re-scoring at query time.

    Create with :meth:`build` or :meth:`load`, not directly.  Ids are the
    caller's integer ids (>= 0); :meth:`search` reads the raw row of id ``i`` as
    ``data[i]``, so ids must be row numbers of the matrix passed to it.

    ``len(graph)`` is the number of live (not deleted) rows.
    """

    def __init__(self, index: Any, *, metric: str, dim: int, M: int, ef_construction: int,
                 ef: int, threads: int, deleted: Sequence[int] = (),
                 constant_ids: Sequence[int] = ()) -> None:
        m = _metric(metric)
        self._index = index
        self._metric = m
        self.metric: str = m.name
        self.space = m.graph_space
        self.rows = m.graph_rows
        self.order = m.graph_order
        # the space of the graph's rows (and queries): "raw", or the ip space of the rows' metric
        self._rows_space = "raw" if self.rows == "raw" else get_metric(self.rows).ip_space
        self.dim = int(dim)
        self.M = int(M)
        self.ef_construction = int(ef_construction)
        self.ef = int(ef)
        self.threads = int(threads)
        self._deleted = set(int(i) for i in deleted)
        self._deleted_arr: Optional[np.ndarray] = None  # sorted copy of _deleted (cache)
        self._constant = np.unique(np.asarray(constant_ids, dtype=np.int64))
        self._labels: Optional[np.ndarray] = None  # sorted labels cache (incl. deleted)
        self._max_label = -1
        self._lock = _RWLock()
        #: The ``extra`` dict given to :meth:`save` (read back by :meth:`load`).
        self.extra: Dict[str, Any] = {}
        #: True when rows were added or deleted since the last :meth:`save` / :meth:`load`.
        self.changed = False
        # hnswlib searches with max(index.ef, k); search() passes k = max(ef, candidates)
        # so the per-call ef is honoured without mutating shared state.
        self._index.set_ef(1)
        self._index.set_num_threads(self.threads)

    # -- construction -------------------------------------------------------

    @classmethod
    def build(cls, vectors: npt.ArrayLike, metric: str, ids: Optional[npt.ArrayLike] = None, *,
              M: int = 16, ef_construction: int = 200, ef: Optional[int] = None,
              threads: Optional[int] = None, progress: bool = False) -> "HnswGraph":
        """Build a graph over raw feature rows.

        Parameters
        ----------
        vectors : array_like, shape (N, D)
            Raw feature rows (converted to float32; prepared per :func:`metric_space`
            in chunks, never modified).  Must be finite; non-negative for the
            histogram metrics.  ``N`` may be 0 (grow later with :meth:`add`).
        metric : str
            The fastimg metric results are ranked by.
        ids : array_like of int, shape (N,), optional
            Unique ids >= 0 (default ``arange(N)``).
        M : int, default 16
            Graph degree (hnswlib ``M``), in [2, 1024].
        ef_construction : int, default 200
            Build-time candidate list size.
        ef : int, optional
            Default query-time candidate list size (default :data:`DEFAULT_EF`);
            saved with the graph.
        threads : int, optional
            Threads for insertion and batched queries (default ``FASTIMG_NUM_THREADS``
            or all cores).
        progress : bool, default False
            Show a tqdm progress bar over the insertion.

        Returns
        -------
        HnswGraph

        Raises
        ------
        AnnSearchError
            Bad shapes, non-finite or negative data, duplicate ids, bad parameters.
        """
        m = _metric(metric)
        x = _check_vectors("vectors", vectors, None, m)
        n, d = x.shape
        ids_arr = np.arange(n, dtype=np.int64) if ids is None else _check_ids("ids", ids, n)
        M = _check_int("M", M, 2, 1024)
        ef_construction = _check_int("ef_construction", ef_construction, 1)
        ef = DEFAULT_EF if ef is None else _check_int("ef", ef, 1)
        nthreads = resolve_threads(threads)

        import hnswlib

        index = hnswlib.Index(space=m.graph_space, dim=d)
        index.init_index(max_elements=max(n, 16), M=M, ef_construction=ef_construction, random_seed=100)
        graph = cls(index, metric=m.name, dim=d, M=M, ef_construction=ef_construction, ef=ef,
                    threads=nthreads)
        graph._labels = np.empty(0, dtype=np.int64)
        if n:
            graph._insert(x, ids_arr, progress)
        return graph

    def add(self, vectors: npt.ArrayLike, ids: npt.ArrayLike, *, progress: bool = False) -> None:
        """Insert rows (incrementally; the graph is resized as needed).

        Parameters
        ----------
        vectors : array_like, shape (n, D)
            Raw feature rows.
        ids : array_like of int, shape (n,)
            Unique ids >= 0.  An id already in the graph (live or deleted) has its
            vector replaced and is live again (hnswlib's update semantics).
        progress : bool, default False

        Raises
        ------
        AnnSearchError
            Bad shapes, dimension mismatch, non-finite or negative data, bad ids.
        """
        x = _check_vectors("vectors", vectors, self.dim, self._metric)
        ids_arr = _check_ids("ids", ids, x.shape[0])
        if not x.shape[0]:
            return
        with self._lock.write():
            self._insert(x, ids_arr, progress)

    def _insert(self, x: np.ndarray, ids: np.ndarray, progress: bool) -> None:
        index = self._index
        self.changed = True
        need = index.element_count + ids.size  # upper bound (updates need no room)
        if need > index.get_max_elements():
            index.resize_index(max(need, int(index.get_max_elements() * 1.5)))
        bar = None
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=ids.size, desc="hnsw build", unit="rows")
        try:
            for start in range(0, ids.size, _ADD_CHUNK):
                stop = min(ids.size, start + _ADD_CHUNK)
                rows, constant = self._prepare(x[start:stop])
                index.add_items(rows, ids[start:stop], num_threads=self.threads)
                chunk_ids = ids[start:stop]
                # a replaced row may no longer be constant: drop the chunk's ids, add back its constants
                now_constant = chunk_ids[constant] if constant is not None else chunk_ids[:0]
                self._constant = np.union1d(np.setdiff1d(self._constant, chunk_ids), now_constant)
                if bar is not None:
                    bar.update(stop - start)
        finally:
            if bar is not None:
                bar.close()
        self._deleted.difference_update(ids.tolist())
        self._deleted_arr = None
        if self._labels is not None:
            self._labels = np.union1d(self._labels, ids)
        self._max_label = max(self._max_label, int(ids.max()))

    def _prepare(self, x: np.ndarray) -> Tuple[np.ndarray, Optional[np.ndarray]]:
        """Graph rows for raw rows; the second item flags the rows with a non-zero
        bias (pearson's constant rows: they score the maximum whatever the query,
        but are zero vectors in the graph)."""
        if self.rows == "raw":
            return x, None
        from fastimg.metrics import prepare_rows

        prepared, bias = prepare_rows(self.rows, x)
        return prepared, (None if bias is None else bias != 0)

    def mark_deleted(self, ids: npt.ArrayLike) -> int:
        """Hide ids from every later search (the graph keeps them as waypoints).

        Already-deleted ids are ignored; re-adding an id with :meth:`add`
        brings it back.

        Returns
        -------
        int
            How many ids were newly marked (0: the graph did not change).

        Raises
        ------
        AnnSearchError
            An id that was never added (nothing is deleted then).
        """
        arr = np.atleast_1d(np.asarray(ids))
        if arr.ndim != 1 or (arr.size and arr.dtype.kind not in "iu"):
            raise AnnSearchError(f"ids must be a 1-D array of integers; got {arr.dtype} {arr.shape}")
        arr = np.unique(arr.astype(np.int64))
        with self._lock.write():
            unknown = np.setdiff1d(arr, self._sorted_labels(), assume_unique=True)
            if unknown.size:
                raise AnnSearchError(f"cannot delete ids that are not in the graph: {unknown[:10].tolist()}"
                                     + (" ..." if unknown.size > 10 else ""))
            fresh = [i for i in arr.tolist() if i not in self._deleted]
            for i in fresh:
                self._index.mark_deleted(i)
                self._deleted.add(i)
            if fresh:
                self._deleted_arr = None
                self.changed = True
            return len(fresh)

    # -- persistence --------------------------------------------------------

    def save(self, directory: Union[str, os.PathLike], *, extra: Optional[Dict[str, Any]] = None) -> None:
        """Write the graph to ``directory`` (created if needed).

        Writes hnswlib's file under a new name, ``hnsw.<token>.bin``, and fastimg's
        metadata (:data:`META_FILE`: format version, metric, space, dim, M,
        ef_construction, ef, counts, deleted ids, the graph file's name, size and
        CRC-32, and the caller's ``extra``), which names it.  **One rename commits
        the save**: both are written to temporary files and fsynced, the graph
        file is renamed to its new name (which nothing names yet), then the
        metadata over :data:`META_FILE`; a process killed at any moment leaves the
        previous save whole (or this one).  Graph files the new metadata does not
        name are removed afterwards (a reader that read the previous metadata just
        before finds its graph file gone and gets an ``IndexCorruptError``: the
        index then searches exactly and loads the new save next time).

        Parameters
        ----------
        directory : path-like
        extra : dict, optional
            JSON-able facts the caller keeps with the graph (the index records
            which rows and which generation the saved graph covers); read back
            as :attr:`extra` after :meth:`load`.

        Raises
        ------
        OSError
            A write failed (e.g. ``ENOSPC``): the previous save is left in force.
            hnswlib does not report a failed write itself; a graph file shorter
            than its rows need while the disk has no free block is reported as
            ``ENOSPC``.
        """
        import uuid

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        name = f"hnsw.{uuid.uuid4().hex[:12]}.bin"
        tmp_graph = directory / f".{name}.tmp"
        tmp_meta = directory / f".{META_FILE}.{name}.tmp"
        try:
            with self._lock.write():
                self._index.save_index(str(tmp_graph))
                _fsync(tmp_graph)
                size = tmp_graph.stat().st_size
                _check_complete(tmp_graph, size, int(self._index.element_count), self.M, self.dim)
                meta = dict(self.params, extra=dict(extra or {}), deleted=sorted(self._deleted),
                            constant_ids=self._constant.tolist(), max_id=self._max_label,
                            count=int(self._index.element_count), graph_file=name,
                            file_size=size, crc32=_crc32(tmp_graph))
                with open(tmp_meta, "w") as fh:
                    fh.write(json.dumps(meta, indent=1))
                    fh.flush()
                    os.fsync(fh.fileno())
                os.replace(tmp_graph, directory / name)
                os.replace(tmp_meta, directory / META_FILE)  # the commit point
                _fsync_dir(directory)
                self.extra = dict(meta["extra"])
                self.changed = False
        except BaseException:
            for p in (tmp_graph, tmp_meta):
                with contextlib.suppress(OSError):
                    p.unlink()
            raise
        for p in directory.iterdir():
            if _GRAPH_NAME.match(p.name) and p.name != name:
                with contextlib.suppress(OSError):
                    p.unlink()

    @classmethod
    def load(cls, directory: Union[str, os.PathLike], *, threads: Optional[int] = None) -> "HnswGraph":
        """Read a graph written by :meth:`save`.

        Raises
        ------
        IndexNotFoundError
            No graph in ``directory``.
        IndexFormatError
            Written by an incompatible format version, or unreadable metadata.
        IndexCorruptError
            The graph file does not match its metadata (size, checksum, count,
            parameters): rebuild it (``Index.build_ann``).
        """
        directory = Path(directory)
        meta_path = directory / META_FILE
        if not meta_path.is_file():
            raise IndexNotFoundError(f"{directory}: no HNSW graph here (expected {META_FILE})")
        try:
            meta = json.loads(meta_path.read_text())
        except (OSError, ValueError) as exc:
            raise IndexFormatError(f"{meta_path}: unreadable graph metadata ({exc})") from None
        if not isinstance(meta, dict) or meta.get("format_version") not in READ_FORMAT_VERSIONS:
            found = meta.get("format_version") if isinstance(meta, dict) else None
            raise IndexFormatError(f"{meta_path}: graph format version {found!r}; this fastimg reads "
                                   f"versions {', '.join(map(str, READ_FORMAT_VERSIONS))} (rebuild the graph)")
        required = ("metric", "space", "dim", "M", "ef_construction", "ef", "count", "file_size", "crc32",
                    "deleted", "constant_ids")
        missing = [key for key in required if key not in meta]
        if missing:
            raise IndexFormatError(f"{meta_path}: graph metadata lacks {missing}")
        name = meta.get("graph_file", GRAPH_FILE)  # saves of fastimg 0.1: hnsw.bin
        if not isinstance(name, str) or not _GRAPH_NAME.match(name):
            raise IndexFormatError(f"{meta_path}: graph_file {name!r} is not a graph file name")
        graph_path = directory / name
        if not graph_path.is_file():
            raise IndexCorruptError(f"{graph_path}: the graph file {META_FILE} names is missing; rebuild the graph")
        try:
            space = _metric(meta["metric"]).graph_space
        except AnnSearchError as exc:
            raise IndexFormatError(f"{meta_path}: {exc}") from None
        if space != meta["space"]:
            raise IndexFormatError(f"{meta_path}: metric {meta['metric']!r} is searched in space {space!r}, "
                                   f"but the graph was built in {meta['space']!r} (rebuild the graph)")
        size = graph_path.stat().st_size
        if size != meta["file_size"] or _crc32(graph_path) != meta["crc32"]:
            raise IndexCorruptError(f"{graph_path}: the graph file does not match {META_FILE} "
                                    f"(size {size} vs {meta['file_size']} or checksum differs); rebuild the graph")
        import hnswlib

        index = hnswlib.Index(space=space, dim=int(meta["dim"]))
        try:
            index.load_index(str(graph_path))
        except (RuntimeError, ValueError, MemoryError) as exc:
            raise IndexCorruptError(f"{graph_path}: hnswlib could not load the graph ({exc}); rebuild it") from None
        if (index.element_count != meta["count"] or index.M != meta["M"]
                or index.ef_construction != meta["ef_construction"] or index.dim != meta["dim"]):
            raise IndexCorruptError(f"{graph_path}: graph has count={index.element_count}, M={index.M}, "
                                    f"ef_construction={index.ef_construction}, dim={index.dim}; "
                                    f"{META_FILE} says {meta['count']}, {meta['M']}, {meta['ef_construction']}, "
                                    f"{meta['dim']}")
        graph = cls(index, metric=meta["metric"], dim=meta["dim"], M=meta["M"],
                    ef_construction=meta["ef_construction"], ef=meta["ef"], threads=resolve_threads(threads),
                    deleted=meta["deleted"], constant_ids=meta["constant_ids"])
        graph.extra = dict(meta.get("extra") or {})
        graph._max_label = int(meta.get("max_id", -1))
        if "max_id" not in meta or (graph._max_label < 0 < index.element_count):
            labels = graph._sorted_labels()
            graph._max_label = int(labels[-1]) if labels.size else -1
        return graph

    # -- introspection ------------------------------------------------------

    @property
    def params(self) -> Dict[str, Any]:
        """Parameters and state: format_version, metric, space, rows, order, dim,
        M, ef_construction, ef, live, deleted_count, capacity, threads."""
        return {
            "format_version": FORMAT_VERSION,
            "metric": self.metric,
            "space": self.space,
            "rows": self.rows,
            "order": self.order,
            "dim": self.dim,
            "M": self.M,
            "ef_construction": self.ef_construction,
            "ef": self.ef,
            "live": len(self),
            "deleted_count": len(self._deleted),
            "capacity": int(self._index.get_max_elements()),
            "threads": self.threads,
        }

    def __len__(self) -> int:
        return int(self._index.element_count) - len(self._deleted)

    @property
    def max_id(self) -> int:
        """The largest id ever added (deleted or not); -1 for an empty graph."""
        return self._max_label

    def __repr__(self) -> str:
        return (f"HnswGraph(metric={self.metric!r}, space={self.space!r}, dim={self.dim}, live={len(self)}, "
                f"M={self.M}, ef_construction={self.ef_construction}, ef={self.ef})")

    def _sorted_labels(self) -> np.ndarray:
        if self._labels is None:
            self._labels = np.sort(np.asarray(self._index.get_ids_list(), dtype=np.int64))
        return self._labels

    def _deleted_sorted(self) -> np.ndarray:
        if self._deleted_arr is None:
            self._deleted_arr = np.sort(np.fromiter(self._deleted, np.int64, len(self._deleted)))
        return self._deleted_arr

    def _live_sorted(self) -> np.ndarray:
        labels = self._sorted_labels()
        if not self._deleted:
            return labels
        return np.setdiff1d(labels, self._deleted_sorted(), assume_unique=True)

    # -- search -------------------------------------------------------------

    def search(self, queries: npt.ArrayLike, k: int = 10, *, data: npt.ArrayLike,
               ef: Optional[int] = None, candidates: Optional[int] = None,
               exclude: Optional[npt.ArrayLike] = None) -> Tuple[np.ndarray, np.ndarray]:
        """Approximate top-``k`` with exact scores.

        Parameters
        ----------
        queries : array_like, shape (Q, D) or (D,)
            Raw query rows (a 1-D query is one row).
        k : int, default 10
            Results per query, in [1, live rows].
        data : array_like, shape (N, D)
            The raw matrix the graph was built from (e.g. the index's float32
            memmap): row ``i`` is id ``i``.  Only the candidates' rows are read.
        ef : int, optional
            Candidate list size for this call (default: the graph's ``ef``).
            The graph is searched with ``max(ef, candidates)``.
        candidates : int, optional
            Graph results re-scored per query (default :func:`default_candidates`),
            at least ``k``.
        exclude : array_like of int, optional
            Ids never returned (e.g. the query's own id).

        Returns
        -------
        ids : ndarray of int64, shape (Q, k)
            Best first; ties by lower id.  If fewer than ``k`` rows remain after
            ``exclude``, the row is padded with id -1.
        scores : ndarray of float32, shape (Q, k)
            The metric's exact values for ``ids`` (NaN for padding).

        Raises
        ------
        AnnSearchError
            Bad shapes or dimension, ``k`` outside [1, live rows], ids beyond
            ``data``, or a graph that cannot return enough results (raise ``ef``
            or rebuild the graph).
        """
        try:
            q = check_queries(queries, self.dim, self._metric)
        except (TypeError, ValueError) as exc:
            raise AnnSearchError(str(exc)) from None
        if not q.shape[0]:
            return np.empty((0, k), np.int64), np.empty((0, k), np.float32)
        live, k, ef, candidates = self._call_args(k, ef, candidates)
        if not (hasattr(data, "shape") and hasattr(data, "__getitem__")):
            data = np.asarray(data)
        if len(data.shape) != 2 or data.shape[1] != self.dim:
            raise AnnSearchError(f"data must be the raw (N, {self.dim}) matrix; got shape {tuple(data.shape)}")
        if self._max_label >= data.shape[0]:
            raise AnnSearchError(f"data has {data.shape[0]} rows but the graph holds id {self._max_label}; "
                                 "pass the full matrix the graph was built from")
        excl = None
        if exclude is not None:
            excl = np.unique(np.asarray(exclude).ravel())
            if excl.size and excl.dtype.kind not in "iu":
                raise AnnSearchError(f"exclude must hold integer ids; got dtype {excl.dtype}")
            excl = excl.astype(np.int64)
        self._lock.acquire_read()  # (not a context manager: a search per call pays for every step)
        try:
            return self._search(q, k, data, ef, candidates, excl, live)
        finally:
            self._lock.release_read()

    def search_checked(self, q: np.ndarray, k: int, data: Any, *, ef: Optional[int] = None,
                       candidates: Optional[int] = None) -> Tuple[np.ndarray, np.ndarray]:
        """:meth:`search` for a caller that validated its queries once (``fastimg.Index``):
        ``q`` a float32 C-contiguous (Q, dim) finite array, non-negative for a
        histogram metric, and ``data`` a 2-D array of the graph's dimension; no
        ``exclude``.  ``k``, ``ef``, ``candidates`` and the rows of ``data`` are
        checked as :meth:`search` checks them."""
        if not q.shape[0]:
            return np.empty((0, k), np.int64), np.empty((0, k), np.float32)
        live, k, ef, candidates = self._call_args(k, ef, candidates)
        if self._max_label >= data.shape[0]:
            raise AnnSearchError(f"data has {data.shape[0]} rows but the graph holds id {self._max_label}; "
                                 "pass the full matrix the graph was built from")
        self._lock.acquire_read()
        try:
            return self._search(q, k, data, ef, candidates, None, live)
        finally:
            self._lock.release_read()

    def _call_args(self, k: Any, ef: Optional[int], candidates: Optional[int]) -> Tuple[int, int, int, int]:
        """``(live rows, k, ef, candidates)`` checked for one search call."""
        live = len(self)
        if live == 0:
            raise AnnSearchError("the graph is empty (every row was deleted or none was added)")
        k = _check_int("k", k, 1, live)
        ef = self.ef if ef is None else _check_int("ef", ef, 1)
        candidates = default_candidates(self._metric, k) if candidates is None else _check_int(
            "candidates", candidates, k)
        return live, k, ef, candidates

    def _search(self, q: np.ndarray, k: int, data: Any, ef: int, candidates: int,
                excl: Optional[np.ndarray], live: int) -> Tuple[np.ndarray, np.ndarray]:
        m = self._metric
        nq = q.shape[0]
        deleted = self._deleted_sorted()
        if excl is not None and excl.size and deleted.size:
            excl = excl[~np.isin(excl, deleted)]  # deleted ids are never returned anyway
        n_excl = 0 if excl is None else excl.size
        want = min(candidates + n_excl, live)
        k_graph = min(max(ef, want), live)
        if self.rows == "raw":
            gq = q
        else:
            from fastimg.metrics import prepare_queries

            gq = prepare_queries(self.rows, q)  # the rows' preparation (bit-identical), without the bias
        labels = self._knn(gq, k_graph)[:, :want]
        if (not n_excl and labels.shape[1] >= candidates and not self._constant.size
                and (self._rows_space == "raw" or gq.any(axis=1).all())):
            # the common case in few NumPy calls: every query keeps its first `candidates`
            # graph results, none is degenerate (the checks below find nothing to do)
            return rescore(m, q, data, labels[:, :candidates], k, self.threads)

        # queries the graph cannot rank (zero graph vector): answered as the exact scan does
        ties, scans = degenerate_queries(m, q, gq, self._rows_space)
        degenerate = np.zeros(nq, dtype=bool)
        degenerate[ties] = degenerate[scans] = True
        constant = self._constant
        if constant.size and deleted.size:
            constant = constant[~np.isin(constant, deleted)]
        if constant.size and n_excl:
            constant = constant[~np.isin(constant, excl)]
        extra = constant[:k]  # all score exactly 1 (the maximum): the k lowest ids suffice

        # common case, vectorised: every query keeps `candidates` graph results
        if n_excl:
            keep = ~np.isin(labels, excl)
            full = keep.sum(axis=1) >= candidates
            rank = np.cumsum(keep, axis=1)
            keep &= rank <= candidates
        else:
            keep, full = None, np.full(nq, labels.shape[1] >= candidates)
        regular = full & ~degenerate & (extra.size == 0)
        if regular.all():  # the common case: no padding, no per-query work
            cand = labels[:, :candidates] if keep is None else labels[keep].reshape(nq, candidates)
            return rescore(m, q, data, cand, k, self.threads)
        out_ids = np.full((nq, k), -1, dtype=np.int64)
        out_scores = np.full((nq, k), np.nan, dtype=np.float32)
        rows_idx = np.flatnonzero(regular)
        if rows_idx.size:
            if keep is None:
                cand = labels[rows_idx, :candidates]
            else:
                cand = labels[rows_idx][keep[rows_idx]].reshape(rows_idx.size, candidates)
            out_ids[rows_idx], out_scores[rows_idx] = rescore(m, q[rows_idx], data, cand, k, self.threads)

        # the rest, one query at a time: too many exclusions, pearson constant rows,
        # degenerate queries
        by_query: Dict[int, np.ndarray] = {}
        if degenerate.any():
            live = self._live_sorted()
            if n_excl:
                live = live[~np.isin(live, excl, assume_unique=True)]
            skip = np.ones(self.max_id + 1, dtype=bool)
            skip[live] = False
            by_query = dict(zip(np.concatenate([ties, scans]).tolist(),
                                rank_degenerate(m, q, ties, scans, data, k, skip)))
        for i in np.flatnonzero(~regular):
            if degenerate[i]:
                cand = by_query[int(i)]
            else:
                cand = labels[i] if keep is None else labels[i][keep[i]]
                cand = cand[:candidates]
                if extra.size:
                    cand = np.union1d(cand, extra)
            if not cand.size:
                continue
            ids, scores = rescore(m, q[i:i + 1], data, cand[None, :], min(k, cand.size))
            out_ids[i, :ids.shape[1]] = ids[0]
            out_scores[i, :ids.shape[1]] = scores[0]
        return out_ids, out_scores

    def _knn(self, gq: np.ndarray, k_graph: int) -> np.ndarray:
        try:
            labels, _ = self._index.knn_query(gq, k=k_graph, num_threads=self.threads)
        except RuntimeError as exc:
            raise AnnSearchError(
                f"the HNSW graph could not return {k_graph} results ({exc}); too many rows are deleted for "
                f"this ef/M: search with a larger ef, or rebuild the graph (Index.compact + build_ann)") from None
        return labels.astype(np.int64, copy=False)
