"""The embeddable index: create, open, add, search, remove, compact.

:class:`Index` is what applications and the CLI use.  The files it keeps (one
directory) are described in :mod:`fastimg.store`; this module holds the
behaviour:

* **Incremental add** (:meth:`Index.add`): a file whose size and mtime are
  unchanged is skipped; a modified one is re-extracted (its old row is marked
  deleted in the same transaction that commits the new one); a new path whose
  content hash matches a file that vanished from the re-indexed folders is a
  *move*: its row is kept (same id and vector) and only the path changes; a new
  path whose content matches any other indexed row reuses that row's vector
  instead of decoding the image again; files that vanished from the re-indexed
  folders are marked deleted.  Paths are stored relative to the index root
  (default: the folder containing the index directory) when the file lies under
  it, so the tree can be moved together with its index.
* **Crash safety**: rows are committed in batches (vectors appended and fsynced,
  then one SQLite transaction); a process killed during ``add`` loses at most the
  batch in flight, and re-running ``add`` resumes.
* **Concurrency**: one writer (``mode="a"``) at a time per index, enforced by a
  lock file (a second writer gets :class:`~fastimg.errors.IndexLockedError`);
  any number of readers (``mode="r"``), each seeing the last committed state
  (checked cheaply at every call).  One ``Index`` object may be shared by
  threads: its calls are serialised by an internal lock (for parallel searches
  in one process, open one read-only handle per thread).  There is no global
  state, so several indexes (or several handles on one index) can be open in
  one process.
* **Search** (:meth:`Index.search`): the query is a path, encoded bytes, a BGR
  array, or a vector of the index dimension.  The exact mode scans the
  memory-mapped matrix with :class:`fastimg.search.ExactSearcher`; the ``ann``
  mode asks the HNSW graph (:mod:`fastimg.ann`, built by :meth:`Index.build_ann`)
  and re-scores exactly; ``auto`` uses the graph when one is built for the
  metric and the index holds at least :data:`fastimg.ann.ANN_CROSSOVER` live
  rows.  Rows added after the graph was last updated are scanned exactly and
  merged, so results never miss new rows.  Deleted rows are never returned.
  A writer updates the graph in memory and saves it lazily (:meth:`Index.flush`).
* **Whitening** (:meth:`Index.fit_whitening`): an optional PCA-whitening fitted
  on the collection and stored in the index; while it is fitted, every search
  compares whitened vectors (the raw vectors are kept unchanged; the whitened
  matrix is a rebuildable cache).
* **Ids**: an image's id is its row in the vector file.  Ids are stable across
  ``add`` and ``remove``; :meth:`Index.compact` renumbers them (it returns the
  old-to-new mapping).

Index location for the CLI: :func:`default_index_path`.
"""
from __future__ import annotations

import contextlib
import fnmatch
import logging
import os
import shutil
import sys
import threading
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Optional, Sequence, Union

import numpy as np

from fastimg.errors import (
    AnnSearchError,
    DescriptorError,
    FastimgError,
    ImageError,
    IndexCorruptError,
    IndexFormatError,
    IndexReadOnlyError,
    NotInIndexError,
)
from fastimg.store import NewRow, Row, State, Store, file_hash

__all__ = ["Index", "Hit", "AddReport", "default_index_path", "data_dir", "IMAGE_EXTENSIONS"]

log = logging.getLogger("fastimg.index")

PathLike = Union[str, "os.PathLike[str]"]
Progress = Union[bool, Callable[[int, int], Any], None]

#: File name extensions (lower case) that :meth:`Index.add` picks up in folders.
IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".jpe", ".png", ".bmp", ".dib", ".tif", ".tiff", ".webp", ".gif",
     ".ppm", ".pgm", ".pbm", ".pnm", ".jp2", ".j2k", ".avif", ".heic", ".heif", ".exr", ".hdr", ".sr", ".ras"}
)
#: Rows committed per transaction by :meth:`Index.add` (at most this many are lost by a crash).
ADD_BATCH = 256
#: File of the fitted PCA-whitening inside the index directory (see :meth:`Index.fit_whitening`).
WHITENING_FILE = "whitening.npz"
#: Metric of ``descriptor="custom"`` indexes when none is given.
CUSTOM_DEFAULT_METRIC = "cosine"
_MODES = ("auto", "exact", "ann")
#: A writer saves the HNSW graph once this many rows (or 5 % of the graph's rows,
#: whichever is more) were inserted since the last save; otherwise on
#: :meth:`Index.close` / :meth:`Index.flush` (see :meth:`Index.flush`).
ANN_SAVE_ROWS = 20_000


# --------------------------------------------------------------------------- locations
def data_dir() -> Path:
    """Directory where fastimg keeps its default files.

    ``FASTIMG_DATADIR`` if set, else ``$XDG_DATA_HOME/fastimg`` (default
    ``~/.local/share/fastimg``) on Linux and other Unixes,
    ``~/Library/Application Support/fastimg`` on macOS and
    ``%LOCALAPPDATA%\\fastimg`` on Windows.  Not created by this function.
    """
    env = os.environ.get("FASTIMG_DATADIR")
    if env:
        return Path(env).expanduser()
    if sys.platform == "win32":  # pragma: no cover
        base = os.environ.get("LOCALAPPDATA") or os.path.expanduser("~\\AppData\\Local")
        return Path(base) / "fastimg"
    if sys.platform == "darwin":  # pragma: no cover
        return Path.home() / "Library" / "Application Support" / "fastimg"
    xdg = os.environ.get("XDG_DATA_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".local" / "share") / "fastimg"


def default_index_path() -> Path:
    """The index the CLI uses when none is given.

    ``FASTIMG_INDEX`` if set, else ``data_dir() / "index"`` (see :func:`data_dir`,
    which honours ``FASTIMG_DATADIR``).
    """
    env = os.environ.get("FASTIMG_INDEX")
    if env:
        return Path(env).expanduser()
    return data_dir() / "index"


# --------------------------------------------------------------------------- results
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


@dataclass
class AddReport:
    """What :meth:`Index.add` did.

    Attributes
    ----------
    added : int
        New rows (new files, including those whose vector was reused from an
        identical indexed file).
    unchanged : int
        Files already indexed and not modified (same size and mtime, or same content).
    updated : int
        Modified files re-extracted (the old row is marked deleted).
    moved : int
        Renamed/moved files recognised by content hash (same row, new path).
    removed : int
        Indexed files that vanished from the re-indexed folders (marked deleted).
    reused : int
        Of ``added`` + ``updated``, rows whose vector was copied from an identical file.
    skipped : dict of str to str
        Every file that was not indexed, with the reason (``ImageError.reason``,
        e.g. ``"not an image"``, ``"truncated"``, or ``"not found"``).
    ids : list of int
        Ids of the rows added or updated.
    """

    added: int = 0
    unchanged: int = 0
    updated: int = 0
    moved: int = 0
    removed: int = 0
    reused: int = 0
    skipped: dict = field(default_factory=dict)
    ids: list = field(default_factory=list)

    @property
    def n_skipped(self) -> int:
        """Number of skipped files."""
        return len(self.skipped)


@dataclass(frozen=True)
class _View:
    state: State
    vectors: np.ndarray
    deleted: np.ndarray  # sorted int64
    live: int


@dataclass(frozen=True)
class _Whitening:
    meta: dict  # as stored in meta.sqlite under "whitening"
    model: Any  # fastimg.projection.PCAWhitening

    @property
    def fit_id(self) -> str:
        return str(self.meta["fit_id"])


@dataclass
class _Item:
    abs: str
    stored: str
    size: int
    mtime_ns: int
    hash: Optional[str] = None
    old: Optional[Row] = None  # live row of this path (modified file)
    source: Optional[int] = None  # id of a row with identical content to copy


class _CustomDescriptor:
    """Stand-in descriptor of ``descriptor="custom"`` indexes (vectors come from the caller)."""

    name = "custom"
    version = 1

    def __init__(self, dim: int):
        self.dim = int(dim)
        self.default_metric = CUSTOM_DEFAULT_METRIC
        self.params: dict = {}

    def spec(self) -> dict:
        return {"name": "custom", "dim": self.dim, "version": self.version, "params": {}}


def _progress_callback(progress: Progress, desc: str) -> tuple[Optional[Callable[[int, int], Any]], Any]:
    if progress is None or progress is False:
        return None, None
    if callable(progress):
        return progress, None
    from tqdm import tqdm

    bar = tqdm(total=0, desc=desc, unit="img", leave=False)

    def cb(done: int, total: int) -> None:
        if bar.total != total:
            bar.total = total
        bar.update(done - bar.n)

    return cb, bar


# --------------------------------------------------------------------------- the index
class Index:
    """A searchable collection of image descriptors stored in one directory.

    Create with :meth:`create`, open with :meth:`open`; use as a context manager
    (or call :meth:`close`).  See the module docstring for the behaviour and
    :mod:`fastimg.store` for the files.

    Examples
    --------
    >>> with Index.create("photos/.fastimg") as index:          # doctest: +SKIP
    ...     report = index.add("photos")
    ...     hits = index.search("photos/cat.jpg", k=5)
    """

    def __init__(self, store: Store, *, threads: Optional[int] = None):
        # private: use Index.create / Index.open
        self._store = store
        self.threads = threads
        self._mutex = threading.RLock()
        self._view_cache: Optional[_View] = None
        self._searchers: dict[str, tuple[tuple[int, int], Any]] = {}
        self._descriptor: Any = None
        self._graph: Any = None
        self._graph_key: Optional[tuple] = None
        self._ann_error: Optional[str] = None
        self._whitening_model: Optional[_Whitening] = None
        self._whitened: Optional[tuple[tuple, np.ndarray]] = None

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
        from fastimg.metrics import get_metric

        if not isinstance(descriptor, str):
            raise DescriptorError(f"descriptor must be a name (str); got {type(descriptor).__name__}")
        if descriptor == "custom":
            if dim is None:
                raise DescriptorError("descriptor='custom' needs the vector dimension: Index.create(path, "
                                      "descriptor='custom', dim=D)")
            if isinstance(dim, bool) or not isinstance(dim, (int, np.integer)) or int(dim) < 1:
                raise DescriptorError(f"dim must be a positive integer; got {dim!r}")
            if descriptor_params:
                raise DescriptorError(f"descriptor='custom' takes no parameters; got {sorted(descriptor_params)}")
            desc: Any = _CustomDescriptor(int(dim))
        else:
            from fastimg.features.registry import get_descriptor

            desc = get_descriptor(descriptor, **descriptor_params)
            if dim is not None and int(dim) != int(desc.dim):
                raise DescriptorError(
                    f"dim={dim} does not match descriptor {descriptor!r} (dimension {desc.dim}); "
                    "dim is only needed for descriptor='custom'"
                )
        metric_name = get_metric(metric if metric is not None else desc.default_metric).name
        store = Store.create(path, descriptor=desc.spec(), dim=int(desc.dim), metric=metric_name, root=root)
        index = cls(store, threads=threads)
        index._descriptor = desc
        return index

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
            raise ValueError(f"mode must be 'r' or 'a'; got {mode!r}")
        return cls(Store(path, writable=(mode == "a")), threads=threads)

    def close(self) -> None:
        """Save the HNSW graph if it changed (see :meth:`flush`), then release the
        files (and the writer lock).  Idempotent."""
        with self._mutex:
            if self._graph is not None and self._graph.changed and self._store.writable \
                    and not self._store.closed:
                try:
                    self._save_graph(self._view())
                except Exception as exc:  # a cache: a stale graph is caught up on the next open
                    log.warning("%s: could not save the HNSW graph (%s); it is caught up when the index is "
                                "next changed", self.path, exc)
            self._searchers.clear()
            self._graph = None
            self._view_cache = None
            self._whitening_model = None
            self._whitened = None
            self._store.close()

    def flush(self) -> None:
        """Write the HNSW graph's pending changes now (writer only).

        A writer keeps the graph up to date in memory on every :meth:`add`,
        :meth:`add_vectors` and :meth:`remove`, but saves it (``ann/``, about
        1.2 KB per row at D=256) only when :data:`ANN_SAVE_ROWS` rows (or 5 % of
        the graph) were inserted since the last save, on :meth:`close` and on
        this call.  Not saving is safe: the saved graph records the rows it
        covers, a reader scans later rows exactly and never returns deleted
        rows, and the next writer catches the graph up.
        """
        self._require_writable()
        with self._mutex:
            if self._graph is not None and self._graph.changed:
                self._save_graph(self._view())

    def __enter__(self) -> "Index":
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
        return "a" if self._store.writable else "r"

    @property
    def _custom(self) -> bool:
        """True for a ``descriptor="custom"`` index (the caller supplies the vectors)."""
        return self._store.manifest["descriptor"].get("name") == "custom"

    @property
    def descriptor(self) -> Any:
        """The descriptor object (``fastimg.features.registry`` Descriptor), created on first use."""
        if self._descriptor is None:
            spec = self._store.manifest["descriptor"]
            if self._custom:
                self._descriptor = _CustomDescriptor(self.dim)
            else:
                from fastimg.features.registry import descriptor_from_spec

                try:
                    self._descriptor = descriptor_from_spec(spec)
                except DescriptorError as exc:
                    raise IndexFormatError(f"{self.path / 'manifest.json'}: {exc}") from None
                if int(self._descriptor.dim) != self.dim:
                    raise IndexCorruptError(
                        f"{self.path / 'manifest.json'}: descriptor {spec.get('name')!r} now has dimension "
                        f"{self._descriptor.dim} but the index stores {self.dim}"
                    )
        return self._descriptor

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
        v = self._view()
        keep = np.ones(v.state.committed, dtype=bool)
        keep[v.deleted] = False
        return np.flatnonzero(keep).astype(np.int64)

    def deleted_ids(self) -> np.ndarray:
        """Sorted int64 ids of the rows marked deleted (until :meth:`compact`)."""
        return self._view().deleted.copy()

    # ------------------------------------------------------------------ state
    def _view(self) -> _View:
        """The committed state, refreshed when another handle changed it."""
        with self._mutex:
            for attempt in range(3):
                with self._store.snapshot() as st:
                    cur = self._view_cache
                    if cur is not None and cur.state == st:
                        return cur
                    deleted = self._store.deleted_ids()
                    try:
                        if cur is not None and (cur.state.generation, cur.state.committed) == (
                            st.generation, st.committed
                        ):
                            vectors = cur.vectors
                        else:
                            vectors = self._store.map_vectors(st)
                    except IndexCorruptError:
                        if attempt == 2:
                            raise
                        continue  # a compaction replaced the file between two reads
                self._view_cache = _View(st, vectors, deleted, st.committed - int(deleted.size))
                return self._view_cache
        raise AssertionError("unreachable")  # pragma: no cover

    def _require_writable(self) -> None:
        if not self._store.writable:
            raise IndexReadOnlyError(f"{self.path}: the index is open read-only (open it with mode='a' to change it)")

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
        v = self._view()
        man = self._store.manifest
        size = 0
        for p in self.path.rglob("*"):
            with contextlib.suppress(OSError):
                if p.is_file():
                    size += p.stat().st_size
        ann_meta = self._store.get_meta("ann")
        wmeta = self._store.get_meta("whitening")
        whitening = None
        if wmeta is not None:
            whitening = dict(wmeta)
            whitening["stale_rows"] = max(0, v.state.committed - int(wmeta.get("rows", 0)))
        crossover = self._ann_crossover()
        ann: dict[str, Any] = {"built": ann_meta is not None, "crossover": crossover}
        if ann_meta is not None:
            from fastimg.ann import saved_meta

            ann.update({k: ann_meta.get(k) for k in ("metric", "M", "ef_construction", "ef")})
            saved = saved_meta(self._store.ann_dir)
            saved_rows = 0 if saved is None else int((saved.get("extra") or {}).get("rows", ann_meta.get("rows", 0)))
            held = self._graph is not None and self._graph_key == self._ann_key(ann_meta)
            rows = self._graph.max_id + 1 if held else saved_rows
            ann["rows"] = rows                      # rows the graph answers for (this handle)
            ann["saved_rows"] = saved_rows          # rows the graph file on disk covers
            # changes held in memory by this writer, saved on close/flush
            ann["unsaved"] = bool(held and self._store.writable and self._graph.changed)
            ann["pending_rows"] = max(0, v.state.committed - rows)  # scanned exactly
            ann["error"] = self._ann_error
        ann["auto_mode"] = (
            "ann" if ann_meta is not None and ann_meta.get("metric") == self.metric and v.live >= crossover
            and self._ann_error is None and ann_meta.get("whitening") == (wmeta or {}).get("fit_id")
            and not self._auto_exact(self.metric)
            else "exact"
        )
        return {
            "path": str(self.path),
            "root": str(self.root),
            "mode": self.mode,
            "format_version": man["format_version"],
            "descriptor": dict(man["descriptor"]),
            "dim": self.dim,
            "metric": self.metric,
            "count": v.live,
            "rows": v.state.committed,
            "deleted": int(v.deleted.size),
            "generation": v.state.generation,
            "created": man.get("created"),
            "size_bytes": size,
            "vectors_bytes": v.state.committed * self.dim * 4,
            "caches": [p.name for p in self._store.cache_files()],
            "ann": ann,
            "whitening": whitening,
        }

    # ------------------------------------------------------------------ paths
    def _stored_path(self, path: PathLike) -> str:
        """How a file path is stored: relative to the root when under it, else absolute."""
        ab = os.path.abspath(os.fspath(path))
        root = str(self.root)
        try:
            if os.path.commonpath([ab, root]) == root:
                return os.path.relpath(ab, root)
        except ValueError:  # pragma: no cover - different drives
            pass
        return ab

    def _resolve(self, row_path: str, is_file: bool) -> str:
        if is_file and not os.path.isabs(row_path):
            return os.path.join(str(self.root), row_path)
        return row_path

    def paths(self, ids: Iterable[int]) -> list[str]:
        """Absolute file paths (or ``add_vectors`` names) of ``ids``, in order.

        Raises
        ------
        KeyError
            An id that is not in the index.
        """
        return [self._resolve(r.path, r.is_file) for r in self._store.rows(ids)]

    def metadata(self, id: int) -> dict:
        """Everything stored about one row: ``path``, ``size``, ``mtime_ns``,
        ``hash``, ``added`` (UNIX time), ``deleted``, ``metadata`` (the caller's)."""
        (r,) = self._store.rows([id])
        return {"id": r.id, "path": self._resolve(r.path, r.is_file), "is_file": r.is_file, "size": r.size,
                "mtime_ns": r.mtime_ns, "hash": r.hash, "added": r.added, "deleted": r.deleted,
                "metadata": r.metadata}

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
        import json

        value = None if metadata is None else dict(metadata)
        try:
            json.dumps(value)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"metadata is not JSON-able: {exc}") from None
        if isinstance(item, (int, np.integer)) and not isinstance(item, (bool, np.bool_)):
            id_ = int(item)
        else:
            s = os.fspath(item)
            row = self._store.find_live(s) or self._store.find_live(self._stored_path(s))
            if row is None:
                raise NotInIndexError(f"{self.path}: not in the index: {s}")
            id_ = row.id
        self._store.set_row_metadata(id_, value)

    # ------------------------------------------------------------------ adding
    def _scan(self, items: Sequence[PathLike], recursive: bool, exclude: Sequence[str],
              report: AddReport) -> tuple[list[tuple[str, os.stat_result]], list[str]]:
        files: list[tuple[str, os.stat_result]] = []
        roots: list[str] = []
        seen: set[str] = set()

        def excluded(p: str) -> bool:
            name = os.path.basename(p)
            return any(fnmatch.fnmatch(name, pat) or fnmatch.fnmatch(p, pat) for pat in exclude)

        def take(p: str, st: Optional[os.stat_result] = None) -> None:
            if p in seen or excluded(p):
                return
            seen.add(p)
            try:
                files.append((p, st if st is not None else os.stat(p)))
            except OSError as exc:
                report.skipped[p] = "unreadable" if not isinstance(exc, FileNotFoundError) else "not found"

        def walk(d: str) -> None:
            try:
                it = sorted(os.scandir(d), key=lambda e: e.name)
            except OSError as exc:
                report.skipped[d] = f"unreadable folder ({exc.strerror})"
                return
            for e in it:
                if e.name.startswith("."):
                    continue
                try:
                    if e.is_dir(follow_symlinks=False):
                        if recursive and not excluded(e.path) and os.path.abspath(e.path) != str(
                            os.path.abspath(self.path)
                        ):
                            walk(e.path)
                    elif e.is_file() and os.path.splitext(e.name)[1].lower() in IMAGE_EXTENSIONS:
                        take(e.path, e.stat())
                except OSError:
                    report.skipped[e.path] = "unreadable"

        for it in items:
            p = os.path.abspath(os.fspath(it))
            if os.path.isdir(p):
                roots.append(p)
                walk(p)
            elif os.path.isfile(p):
                take(p)
            else:
                report.skipped[p] = "not found"
        return files, roots

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
        """Index image files and folders, incrementally.

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
        if self._custom:
            raise DescriptorError(
                f"{self.path}: this index stores custom vectors (descriptor='custom'); it cannot describe "
                "images: add vectors with Index.add_vectors"
            )
        if isinstance(paths_or_dirs, (str, os.PathLike)):
            paths_or_dirs = [paths_or_dirs]
        items = list(paths_or_dirs)
        patterns = [exclude] if isinstance(exclude, str) else list(exclude or ())
        if int(batch_size) < 1:
            raise ValueError(f"batch_size must be >= 1; got {batch_size}")
        report = AddReport()
        with self._mutex:
            files, roots = self._scan(items, recursive, patterns, report)
            self._add_files(files, roots, report, workers, progress, int(batch_size))
            self._sync_ann()
        return report

    def _add_files(self, files: list[tuple[str, os.stat_result]], roots: list[str], report: AddReport,
                   workers: Optional[int], progress: Progress, batch_size: int) -> None:
        store = self._store
        live = {r.path: r for r in store.live_files()}
        todo: list[_Item] = []
        touched: list[tuple[int, str, int, int]] = []
        seen_stored: set[str] = set()
        for ab, st in files:
            stored = self._stored_path(ab)
            seen_stored.add(stored)
            row = live.get(stored)
            if row is not None and row.size == st.st_size and row.mtime_ns == st.st_mtime_ns:
                report.unchanged += 1
                continue
            try:
                digest = file_hash(ab)
            except OSError as exc:
                report.skipped[ab] = "not found" if isinstance(exc, FileNotFoundError) else "unreadable"
                continue
            if row is not None and row.hash == digest:  # touched, same content
                touched.append((row.id, stored, st.st_size, st.st_mtime_ns))
                report.unchanged += 1
                continue
            todo.append(_Item(ab, stored, st.st_size, st.st_mtime_ns, digest, old=row))

        # files that vanished from the folders being re-indexed
        vanished: dict[int, Row] = {}
        for stored, row in live.items():
            if stored in seen_stored:
                continue
            ab = self._resolve(stored, True)
            if any(ab == r or ab.startswith(r.rstrip(os.sep) + os.sep) for r in roots) and not os.path.exists(ab):
                vanished[row.id] = row
        by_hash: dict[str, list[Row]] = {}
        for row in vanished.values():
            if row.hash:
                by_hash.setdefault(row.hash, []).append(row)

        moves: list[tuple[int, str, int, int]] = []
        extract: list[_Item] = []
        for it in todo:
            if it.old is None and it.hash in by_hash and by_hash[it.hash]:
                row = by_hash[it.hash].pop(0)
                del vanished[row.id]
                moves.append((row.id, it.stored, it.size, it.mtime_ns))
                report.moved += 1
                continue
            same = store.find_hash(it.hash) if it.hash else []
            same = [r for r in same if it.old is None or r.id != it.old.id]
            if same:
                it.source = same[0].id
            extract.append(it)
        if touched or moves:
            store.update_files(touched + moves)

        total = len(extract)
        cb, bar = _progress_callback(progress, "indexing")
        done = 0
        try:
            if cb is not None:
                cb(0, total)
            for start in range(0, total, batch_size):
                batch = extract[start:start + batch_size]
                vecs = np.full((len(batch), self.dim), np.nan, dtype=np.float32)
                reuse = [i for i, it in enumerate(batch) if it.source is not None]
                if reuse:
                    vv = self._view().vectors
                    src = np.array([batch[i].source for i in reuse], dtype=np.int64)
                    vecs[reuse] = vv[src]
                fresh = [i for i, it in enumerate(batch) if it.source is None]
                if fresh:
                    mat, errors = self._describe_many([batch[i].abs for i in fresh], workers)
                    vecs[fresh] = mat
                    for j, err in errors.items():
                        report.skipped[batch[fresh[j]].abs] = getattr(err, "reason", str(err))
                ok = [i for i in range(len(batch)) if np.isfinite(vecs[i]).all()]
                for i in range(len(batch)):
                    if i not in ok and batch[i].abs not in report.skipped:
                        report.skipped[batch[i].abs] = "descriptor produced non-finite values"
                if ok:
                    store.append_vectors(vecs[ok])
                    try:
                        ids = store.commit_rows(
                            [NewRow(batch[i].stored, True, batch[i].size, batch[i].mtime_ns, batch[i].hash)
                             for i in ok],
                            delete=[batch[i].old.id for i in ok if batch[i].old is not None],
                        )
                    except BaseException:
                        store.rollback_pending()
                        raise
                    report.ids.extend(ids)
                    for i in ok:
                        if batch[i].old is not None:
                            report.updated += 1
                        else:
                            report.added += 1
                        if batch[i].source is not None:
                            report.reused += 1
                done += len(batch)
                if cb is not None:
                    cb(done, total)
        finally:
            if bar is not None:
                bar.close()
        if vanished:
            report.removed += store.mark_deleted(list(vanished))
        log.info("%s: added %d, updated %d, moved %d, removed %d, unchanged %d, skipped %d", self.path,
                 report.added, report.updated, report.moved, report.removed, report.unchanged, len(report.skipped))

    def _describe_many(self, paths: list[str], workers: Optional[int]) -> tuple[np.ndarray, dict]:
        from fastimg.features.registry import describe_many

        desc = self.descriptor
        mat, errors = describe_many(paths, desc, workers=workers, progress=False)
        mat = np.asarray(mat, dtype=np.float32)
        if mat.shape != (len(paths), self.dim):
            raise DescriptorError(
                f"descriptor {desc.name!r} returned shape {mat.shape}; the index expects ({len(paths)}, {self.dim})"
            )
        return mat, dict(errors)

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
        arr = np.asarray(vectors)
        if arr.ndim == 1:
            arr = arr.reshape(1, -1)
        if arr.ndim != 2 or arr.shape[1] != self.dim:
            raise ValueError(f"vectors must have shape (n, {self.dim}); got {np.shape(vectors)}")
        if arr.dtype.kind not in "fiu":
            raise ValueError(f"vectors must be numeric; got dtype {arr.dtype}")
        arr = np.ascontiguousarray(arr, dtype=np.float32)
        if isinstance(names, (str, bytes)):
            names = [names]  # type: ignore[list-item]
        names = list(names)
        if len(names) != arr.shape[0]:
            raise ValueError(f"got {arr.shape[0]} vectors but {len(names)} names")
        for nm in names:
            if not isinstance(nm, str) or not nm:
                raise ValueError(f"names must be non-empty strings; got {nm!r}")
        if len(set(names)) != len(names):
            dup = sorted({n for n in names if names.count(n) > 1})[:5]
            raise ValueError(f"names must be unique; repeated: {dup}")
        bad = np.flatnonzero(~np.isfinite(arr).all(axis=1))
        if bad.size:
            raise ValueError(f"vectors must be finite; row {int(bad[0])} ({names[bad[0]]!r}) is not")
        if metadata is not None:
            metadata = list(metadata)
            if len(metadata) != len(names):
                raise ValueError(f"got {len(names)} names but {len(metadata)} metadata entries")
            import json

            for i, m in enumerate(metadata):
                if m is not None:
                    try:
                        json.dumps(dict(m))
                    except (TypeError, ValueError) as exc:
                        raise ValueError(f"metadata[{i}] ({names[i]!r}) is not JSON-able: {exc}") from None
        if arr.shape[0] == 0:
            return np.zeros(0, dtype=np.int64)
        with self._mutex:
            found = self._store.find_live_many(names)
            old = [found.get(nm) for nm in names]
            self._store.append_vectors(arr)
            try:
                ids = self._store.commit_rows(
                    [NewRow(nm, False, metadata=None if metadata is None or metadata[i] is None
                            else dict(metadata[i])) for i, nm in enumerate(names)],
                    delete=[r.id for r in old if r is not None],
                )
            except BaseException:
                self._store.rollback_pending()
                raise
            self._sync_ann()
        return np.arange(ids.start, ids.stop, dtype=np.int64)

    # ------------------------------------------------------------------ removing
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
            v = self._view()
            dead = set(v.deleted.tolist())
            ids: set[int] = set()
            missing: list[str] = []
            live_rows: Optional[list[Row]] = None
            for item in paths_or_ids:
                if isinstance(item, (bool, np.bool_)):
                    raise ValueError(f"remove() takes ids, paths or names; got {item!r}")
                if isinstance(item, (int, np.integer)):
                    i = int(item)
                    if 0 <= i < v.state.committed and i not in dead:
                        ids.add(i)
                    else:
                        missing.append(str(i))
                    continue
                s = os.fspath(item)
                row = self._store.find_live(s)  # a name
                if row is None:
                    row = self._store.find_live(self._stored_path(s))
                if row is not None:
                    ids.add(row.id)
                    continue
                ab = os.path.abspath(s)
                if os.path.isdir(ab):
                    if live_rows is None:
                        live_rows = self._store.live_files()
                    under = [r.id for r in live_rows
                             if self._resolve(r.path, True).startswith(ab.rstrip(os.sep) + os.sep)]
                    if under:
                        ids.update(under)
                        continue
                missing.append(s)
            if missing:
                raise NotInIndexError(
                    f"{self.path}: not in the index: {', '.join(missing[:5])}" + (" ..." if len(missing) > 5 else "")
                    + " (nothing was removed)"
                )
            n = self._store.mark_deleted(sorted(ids))
            self._sync_ann()
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
            cb, bar = _progress_callback(progress, "compacting")
            try:
                before = self._store.state()
                mapping = self._store.compact(progress=cb)
            finally:
                if bar is not None:
                    bar.close()
            self._searchers.clear()
            self._whitened = None
            after = self._store.state()
            if after.generation != before.generation:
                wmeta = self._store.get_meta("whitening")
                if wmeta is not None:
                    fit_rows = min(int(wmeta.get("rows", 0)), mapping.size)
                    wmeta = dict(wmeta, rows=int((mapping[:fit_rows] >= 0).sum()), generation=after.generation)
                    self._store.set_meta("whitening", wmeta)
                ann = self._store.get_meta("ann")
                self._graph, self._graph_key = None, None  # old ids: never saved
                if ann is not None:
                    self._store.set_meta("ann", None)
                    shutil.rmtree(self._store.ann_dir, ignore_errors=True)
                    if len(self):
                        self.build_ann(M=ann["M"], ef_construction=ann["ef_construction"], metric=ann["metric"],
                                       ef=ann.get("ef"))
            return mapping

    # ------------------------------------------------------------------ whitening
    @property
    def whitening_path(self) -> Path:
        """Where the fitted PCA-whitening is stored (:data:`WHITENING_FILE` in the index)."""
        return self.path / WHITENING_FILE

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
        from fastimg.projection import PCAWhitening
        from fastimg.metrics import get_metric

        m = get_metric(self.metric)
        if m.nonneg:
            raise ValueError(
                f"{self.path}: the index's metric {m.name!r} needs non-negative vectors, but whitened vectors "
                "are signed; whitening needs an index created with metric 'cosine', 'pearson', 'l2' or 'l1'"
            )
        if sample is not None and (isinstance(sample, bool) or not isinstance(sample, (int, np.integer))
                                   or int(sample) < 2):
            raise DescriptorError(f"whitening sample must be an integer >= 2 or None; got {sample!r}")
        model = PCAWhitening(dim=dim, power=power)  # validates dim and power
        with self._mutex:
            v = self._view()
            live = self.live_ids()
            if live.size < 2:
                raise DescriptorError(f"{self.path}: whitening needs at least 2 live rows; the index has {live.size}")
            if sample is not None and live.size > int(sample):
                live = live[np.linspace(0, live.size - 1, int(sample)).round().astype(np.int64)]
            model.fit(np.asarray(v.vectors[live], dtype=np.float64))
            final = self.whitening_path
            tmp = final.with_name(f".{WHITENING_FILE}.{os.getpid()}.{threading.get_ident()}.tmp.npz")
            try:
                model.save(tmp)
                with open(tmp, "rb") as f:
                    os.fsync(f.fileno())
                os.replace(tmp, final)
            except BaseException:
                with contextlib.suppress(OSError):
                    tmp.unlink()
                raise
            with contextlib.suppress(OSError):
                fd = os.open(self.path, os.O_RDONLY)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
            meta = {"dim": int(model.output_dim), "power": float(model.power), "n_fit": int(model.n_fit_),
                    "rows": int(v.state.committed), "generation": int(v.state.generation),
                    "fit_id": file_hash(final)}
            self._store.set_meta("whitening", meta)
            self._whitening_model = _Whitening(meta, model)
            self._drop_whitened_caches(keep=meta["fit_id"])
            return dict(meta)

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
            self._store.set_meta("whitening", None)  # first: readers stop needing the file
            with contextlib.suppress(FileNotFoundError):
                self.whitening_path.unlink()
            self._whitening_model = None
            self._drop_whitened_caches(keep=None)

    def _drop_whitened_caches(self, keep: Optional[str]) -> None:
        self._searchers.clear()
        self._whitened = None
        d = self._store.cache_dir
        if d.is_dir():
            for q in d.glob("whitened-*.npy"):
                if keep is None or not q.name.startswith(f"whitened-{keep}"):
                    with contextlib.suppress(OSError):
                        q.unlink()

    def _whitening(self, retry: bool = False) -> Optional[_Whitening]:
        """The whitening in force (loaded once per fit), or None.

        ``retry``: outside a snapshot, wait briefly when the file and its record
        disagree (a writer between replacing one and recording the other).

        Raises
        ------
        IndexCorruptError
            ``whitening.npz`` is missing, unreadable, or is not the recorded fit.
        """
        for attempt in range(5):
            meta = self._store.get_meta("whitening")
            if meta is None:
                return None
            cur = self._whitening_model
            if cur is not None and cur.meta == meta:
                return cur
            path = self.whitening_path
            try:
                digest = file_hash(path)
            except FileNotFoundError:
                raise IndexCorruptError(
                    f"{path}: whitening file missing, but {self.path / 'meta.sqlite'} records a fit "
                    f"(fit_id {meta.get('fit_id')}); call Index.fit_whitening() again or clear_whitening()"
                ) from None
            except OSError as exc:
                raise IndexCorruptError(f"{path}: whitening file unreadable ({exc})") from None
            if digest != meta.get("fit_id"):
                if retry and attempt < 4:
                    import time

                    time.sleep(0.05)  # a writer may be replacing the file and its record
                    continue
                raise IndexCorruptError(
                    f"{path}: whitening file does not match the fit recorded in {self.path / 'meta.sqlite'} "
                    f"(checksum {digest}, expected {meta.get('fit_id')}); retry if a writer is re-fitting it, "
                    "else call Index.fit_whitening() again or clear_whitening()"
                )
            from fastimg.projection import PCAWhitening

            try:
                model = PCAWhitening.load(path)
            except DescriptorError as exc:
                raise IndexCorruptError(f"{path}: unusable whitening file: {exc}") from None
            if model.input_dim != self.dim or model.output_dim != int(meta.get("dim", -1)):
                raise IndexCorruptError(
                    f"{path}: whitening maps {model.input_dim} -> {model.output_dim} dimensions; expected "
                    f"{self.dim} -> {meta.get('dim')} (index dimension -> recorded output dimension)"
                )
            self._whitening_model = _Whitening(dict(meta), model)
            return self._whitening_model
        raise AssertionError("unreachable")  # pragma: no cover

    def _whitened_data(self, view: _View, wh: _Whitening) -> np.ndarray:
        """``transform(vectors[:committed])``: memmapped from the cache, or written to it
        in chunks (rows of a previous cache of the same generation and fit are reused)."""
        st, n, d = view.state, view.state.committed, int(wh.meta["dim"])
        key = (st.generation, n, wh.fit_id)
        if self._whitened is not None and self._whitened[0] == key:
            return self._whitened[1]
        name = f"whitened-{wh.fit_id}"
        out = self._store.load_cache(name, st, (n, d)) if n else np.zeros((0, d), np.float32)
        if out is None:
            prev_n, prev = 0, None
            found = self._store.best_cache_prefix(name, st, (d,))
            if found is not None:
                prev_n, prev = found
            made = self._store.new_cache(name, st, (n, d))
            target = made[1] if made is not None else np.empty((n, d), np.float32)  # unwritable cache dir
            try:
                if prev_n:
                    target[:prev_n] = prev
                for a in range(prev_n, n, 65536):
                    b = min(n, a + 65536)
                    target[a:b] = wh.model.transform(np.asarray(view.vectors[a:b]))
            except BaseException:
                if made is not None:
                    self._store.discard_cache(made[0])
                raise
            del prev
            out = target
            if made is not None:
                del target, out
                self._store.publish_cache(name, st, made)
                del made
                out = self._store.load_cache(name, st, (n, d))
                if out is None:  # pragma: no cover - the file vanished: recompute in memory
                    out = wh.model.transform(np.asarray(view.vectors)).astype(np.float32)
        self._whitened = (key, out)
        return out

    # ------------------------------------------------------------------ ANN
    @staticmethod
    def _auto_exact(metric: str) -> bool:
        """Does ``mode="auto"`` scan exactly for ``metric`` even with a graph?"""
        from fastimg.ann import AUTO_EXACT_METRICS

        return metric in AUTO_EXACT_METRICS

    def _ann_crossover(self) -> int:
        from fastimg.ann import ANN_CROSSOVER  # read at call time: tests patch it

        return int(ANN_CROSSOVER)

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
        progress : bool, default False
            Progress bar over the insertion.
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
        from fastimg.ann import HnswGraph
        from fastimg.metrics import get_metric

        metric_name = get_metric(metric or self.metric).name
        with self._mutex:
            v = self._view()
            n = v.state.committed
            wh = self._whitening()
            data = v.vectors if wh is None else self._whitened_data(v, wh)
            if wh is not None:
                self._check_whitened_metric(get_metric(metric_name))
            graph = HnswGraph.build(data, metric_name, np.arange(n, dtype=np.int64), M=M,
                                    ef_construction=ef_construction, ef=ef, threads=threads,
                                    progress=bool(progress))
            if v.deleted.size:
                graph.mark_deleted(v.deleted)
            fit = None if wh is None else wh.fit_id
            tmp = self._store.ann_dir.with_name(".ann.tmp")
            shutil.rmtree(tmp, ignore_errors=True)
            graph.save(tmp, extra={"rows": n, "generation": v.state.generation, "whitening": fit})
            self._store.set_meta("ann", None)
            shutil.rmtree(self._store.ann_dir, ignore_errors=True)
            os.replace(tmp, self._store.ann_dir)
            meta = {"metric": metric_name, "M": int(M), "ef_construction": int(ef_construction),
                    "ef": int(graph.ef), "rows": n, "generation": v.state.generation, "whitening": fit, "saves": 0,
                    "build": uuid.uuid4().hex}
            self._store.set_meta("ann", meta)
            self._graph, self._graph_key, self._ann_error = graph, self._ann_key(meta), None
            return {k: meta[k] for k in ("metric", "M", "ef_construction", "ef", "rows", "generation", "whitening")}

    @staticmethod
    def _ann_key(meta: dict) -> tuple:
        """Identity of the saved graph: changes when a writer rebuilds it (a new
        ``build`` id, even at the same generation and size) or saves it again."""
        return (meta.get("build"), meta.get("generation"), int(meta.get("rows", 0)), int(meta.get("saves", 0)))

    def _load_graph(self, view: _View) -> tuple[Any, Optional[dict]]:
        """The graph and its meta, or (None, meta/None) if absent or unusable.

        The graph returned holds rows ``[0, graph.max_id + 1)`` and has every
        deleted id below that marked deleted (in memory): a graph saved before
        later changes (a crash, or a writer that has not saved yet) is still
        never wrong, the rows it lacks are scanned exactly.
        """
        meta = self._store.get_meta("ann")
        if meta is None or meta.get("generation") != view.state.generation:
            return None, None
        key = self._ann_key(meta)
        if self._graph is None or self._graph_key != key:
            from fastimg.ann import HnswGraph

            try:
                graph = HnswGraph.load(self._store.ann_dir, threads=self.threads)
                saved = graph.extra  # what the file covers (absent: saved by fastimg <= 0.x, trust meta)
                rows = int(saved.get("rows", meta["rows"]))
                if saved.get("generation", meta["generation"]) != view.state.generation:
                    raise IndexCorruptError(f"{self._store.ann_dir}: the graph was saved for generation "
                                            f"{saved.get('generation')} of the vectors, the index is at generation "
                                            f"{view.state.generation}; rebuild it (Index.build_ann)")
                if graph.max_id != rows - 1:
                    raise IndexCorruptError(f"{self._store.ann_dir}: the graph holds ids up to {graph.max_id} "
                                            f"but records {rows} rows; rebuild it (Index.build_ann)")
                if rows > view.state.committed:
                    if not self._store.writable:
                        # saved by a writer after this reader's snapshot: not an error,
                        # this search scans exactly and the next snapshot uses the graph
                        raise AnnSearchError(f"{self._store.ann_dir}: the graph covers {rows} rows, newer than "
                                             f"this snapshot's {view.state.committed}")
                    raise IndexCorruptError(f"{self._store.ann_dir}: the graph covers {rows} rows but the index "
                                            f"has {view.state.committed}; rebuild it (Index.build_ann)")
            except AnnSearchError:
                raise
            except (FastimgError, OSError) as exc:
                self._graph, self._ann_error = None, str(exc)
                log.warning("%s: HNSW graph unusable, searching exactly (%s)", self.path, exc)
                return None, meta
            self._graph, self._graph_key, self._ann_error = graph, key, None
        self._mark_deleted_in_graph(view)
        return self._graph, meta

    def _mark_deleted_in_graph(self, view: _View) -> None:
        """Mark (in memory) the deleted ids below the graph's rows that it does not know yet."""
        rows = self._graph.max_id + 1  # the graph holds the ids [0, rows)
        dead = view.deleted[:int(np.searchsorted(view.deleted, rows))]
        if dead.size != rows - len(self._graph):  # len = live rows: some deletion is not marked yet
            self._graph.mark_deleted(dead)  # ids already marked are ignored

    def _save_graph(self, view: _View) -> None:
        """Writer: save the in-memory graph and record what it covers."""
        meta = self._store.get_meta("ann")
        if self._graph is None or meta is None:
            return
        rows = self._graph.max_id + 1
        self._graph.save(self._store.ann_dir, extra={"rows": rows, "generation": view.state.generation,
                                                     "whitening": meta.get("whitening")})
        meta = dict(meta, rows=rows, saves=int(meta.get("saves", 0)) + 1)
        self._store.set_meta("ann", meta)
        self._graph_key = self._ann_key(meta)

    def _sync_ann(self) -> None:
        """Writer: bring the in-memory graph up to date with new and deleted rows;
        save it when enough rows were inserted since the last save (see :meth:`flush`)."""
        meta = self._store.get_meta("ann")
        if meta is None:
            return
        v = self._view()
        graph, meta = self._load_graph(v)
        if graph is None or meta is None:
            return
        wmeta = self._store.get_meta("whitening")
        if meta.get("whitening") != (None if wmeta is None else wmeta.get("fit_id")):
            return  # built in another space (whitening fitted or cleared since): unused until rebuilt
        rows = graph.max_id + 1
        if rows < v.state.committed:
            wh = self._whitening() if wmeta is not None else None
            data = v.vectors if wh is None else self._whitened_data(v, wh)
            try:
                graph.add(data[rows:], np.arange(rows, v.state.committed, dtype=np.int64))
            except BaseException:
                # a partly inserted graph: drop it, the saved one is still right
                # (and is caught up by the next change)
                self._graph, self._graph_key = None, None
                raise
            self._mark_deleted_in_graph(v)
        held = graph.max_id + 1
        if held - int(graph.extra.get("rows", 0)) >= max(ANN_SAVE_ROWS, held // 20):  # rows inserted since saved
            self._save_graph(v)

    # ------------------------------------------------------------------ search
    def _query_vector(self, query: Any) -> tuple[np.ndarray, Optional[set], bool]:
        """(vector, ids that are the query itself or None, match-identical-row flag)."""
        if isinstance(query, (str, os.PathLike)):
            s = os.fspath(query)
            row = self._store.find_live(s)
            if row is None or row.is_file:
                row = self._store.find_live(self._stored_path(s)) or row
            if row is not None:
                use_stored = not row.is_file
                if row.is_file:
                    try:
                        st = os.stat(self._resolve(row.path, True))
                        use_stored = st.st_size == row.size and st.st_mtime_ns == row.mtime_ns
                    except OSError:
                        use_stored = True  # the indexed file is gone: its stored vector is the query
                if use_stored:
                    return np.array(self._view().vectors[row.id], dtype=np.float32), {row.id}, False
                return self._describe(s), {row.id}, False
            if self._custom:
                raise DescriptorError(
                    f"{s}: not in this index, and a descriptor='custom' index cannot describe images: "
                    "query it by vector or by an indexed name"
                )
            return self._describe(s), None, False
        if isinstance(query, (bytes, bytearray, memoryview)):
            return self._describe(bytes(query)), None, True
        arr = np.asarray(query)
        if arr.ndim == 1 and arr.dtype.kind in "fiu" and arr.shape[0] == self.dim and arr.dtype != np.uint8:
            vec = arr.astype(np.float32)
            if not np.isfinite(vec).all():
                raise ValueError("query vector must be finite")
            return vec, None, True
        if arr.ndim == 1:
            raise ValueError(
                f"a query vector must be 1-D of length {self.dim} (the index dimension); got shape {arr.shape}"
            )
        return self._describe(arr), None, True

    def _describe(self, src: Any) -> np.ndarray:
        if self._custom:
            raise DescriptorError(
                "a descriptor='custom' index cannot describe images: query it by vector or by an indexed name"
            )
        from fastimg.features.registry import describe

        # the same path as describe_many in add(): same decoding, same working size
        vec = np.asarray(describe(src, self.descriptor), dtype=np.float32).reshape(-1)
        if vec.shape[0] != self.dim or not np.isfinite(vec).all():
            src_name = os.fspath(src) if isinstance(src, (str, os.PathLike)) else "<query>"
            raise ImageError(src_name, "descriptor failed", f"got {vec.shape[0]} values, non-finite or wrong size")
        return vec

    def _searcher(self, metric: str, view: _View, wh: Optional[_Whitening] = None, data: Any = None) -> Any:
        key = (view.state.generation, view.state.committed, None if wh is None else wh.fit_id)
        got = self._searchers.get(metric)
        if got is not None and got[0] == key:
            return got[1]
        from fastimg.metrics import get_metric
        from fastimg.search import ExactSearcher

        m = get_metric(metric)
        if wh is None:
            data, prefix = view.vectors, ""
        else:  # the whitened matrix (signed: the histogram metrics were refused before)
            prefix = f"whitened-{wh.fit_id}-"
        prepared = bias = None
        if m.ip_form and view.state.committed > 0:
            prepared, bias = self._prepared(m.name, view, data, prefix)
        # rows were checked finite when added; histogram metrics also need them
        # non-negative, which the store tracks: the searcher verifies (one read
        # pass over the matrix, and a clear error) only when negatives may exist
        check = bool(m.nonneg) and (wh is not None or self._store.has_negative() is not False)
        searcher = ExactSearcher(data, m.name, prepared=prepared, bias=bias, threads=self.threads, check=check)
        self._searchers[metric] = (key, searcher)
        return searcher

    def _prepared(self, metric: str, view: _View, data: Any = None,
                  prefix: str = "") -> tuple[Optional[np.ndarray], Optional[np.ndarray]]:
        """Memmapped prepared matrix (and bias) for ``metric`` of ``data`` (default:
        the vectors; ``prefix`` names the caches of another matrix, e.g. the
        whitened one), from the cache or written to it in chunks (no in-memory
        copy of the matrix)."""
        from fastimg.metrics import prepare_rows

        src = view.vectors if data is None else data
        st, n, d = view.state, view.state.committed, int(src.shape[1])
        _, probe_bias = prepare_rows(metric, np.asarray(src[:1], dtype=np.float32))
        has_bias = probe_bias is not None
        pname, bname = f"{prefix}{metric}-prepared", f"{prefix}{metric}-bias"
        prepared = self._store.load_cache(pname, st, (n, d))
        bias = self._store.load_cache(bname, st, (n,)) if has_bias else None
        if prepared is not None and (bias is not None or not has_bias):
            return prepared, bias

        prev_n, prev_p, prev_b = 0, None, None
        found = self._store.best_cache_prefix(pname, st, (d,))
        if found is not None:
            prev_n, prev_p = found
            if has_bias:
                prev_b = self._store.load_cache(bname, State(prev_n, st.generation, 0), (prev_n,))
                if prev_b is None:
                    prev_n, prev_p = 0, None
        outs = {pname: self._store.new_cache(pname, st, (n, d))}
        if has_bias:
            outs[bname] = self._store.new_cache(bname, st, (n,))
        if any(o is None for o in outs.values()):  # not writable: let the searcher prepare in memory
            for o in outs.values():
                if o is not None:
                    self._store.discard_cache(o[0])
            return None, None
        out_p = outs[pname][1]
        out_b = outs[bname][1] if has_bias else None
        try:
            if prev_n:
                out_p[:prev_n] = prev_p
                if out_b is not None:
                    out_b[:prev_n] = prev_b
            for a in range(prev_n, n, 65536):
                b = min(n, a + 65536)
                p, bb = prepare_rows(metric, np.asarray(src[a:b], dtype=np.float32))
                out_p[a:b] = p
                if out_b is not None:
                    out_b[a:b] = bb
        except BaseException:
            for tmp, _ in outs.values():
                self._store.discard_cache(tmp)
            raise
        del out_p, out_b, prev_p, prev_b
        if has_bias:  # bias first: a prepared matrix is only trusted with its bias present
            self._store.publish_cache(bname, st, outs[bname])
        self._store.publish_cache(pname, st, outs[pname])
        prepared = self._store.load_cache(pname, st, (n, d))
        bias = self._store.load_cache(bname, st, (n,)) if has_bias else None
        if prepared is None or (has_bias and bias is None):
            return None, None
        return prepared, bias

    def _check_search_args(self, k: Any, metric: Optional[str], mode: str) -> tuple[int, str]:
        from fastimg.metrics import get_metric

        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or int(k) < 1:
            raise ValueError(f"k must be a positive integer; got {k!r}")
        if mode not in _MODES:
            raise ValueError(f"mode must be one of {_MODES}; got {mode!r}")
        return int(k), get_metric(metric or self.metric).name

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
        k, metric_name = self._check_search_args(k, metric, mode)
        with self._mutex:
            self._whitening(retry=True)  # load outside the snapshot (may wait for a writer's refit)
        with self._mutex, self._store.snapshot():
            vec, self_ids, match_identical = self._query_vector(query)
            ids, scores = self._search_vectors(
                vec.reshape(1, -1), k, metric_name, mode, ef, candidates,
                [self_ids if exclude_self else None], [match_identical and exclude_self], rerank,
            )
            keep = ids[0] >= 0
            ids0, scores0 = ids[0][keep], scores[0][keep]
            paths = self.paths(ids0.tolist()) if ids0.size else []
        return [Hit(int(i), p, float(s), r + 1) for r, (i, p, s) in enumerate(zip(ids0, paths, scores0))]

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
        k, metric_name = self._check_search_args(k, metric, mode)
        with self._mutex:
            self._whitening(retry=True)
        with self._mutex, self._store.snapshot():
            arr = queries if isinstance(queries, np.ndarray) else None
            if arr is not None and arr.ndim == 2 and arr.dtype.kind == "f":
                if arr.shape[1] != self.dim:
                    raise ValueError(f"query vectors must have shape (Q, {self.dim}); got {arr.shape}")
                q = np.ascontiguousarray(arr, dtype=np.float32)
                if not np.isfinite(q).all():
                    raise ValueError("query vectors must be finite")
                selfs: list[Optional[set]] = [None] * len(q)
                ident = [exclude_self] * len(q)
            else:
                if isinstance(queries, (str, bytes, os.PathLike)) or (
                    isinstance(queries, np.ndarray) and queries.ndim != 2
                ):
                    raise ValueError("search_batch takes a (Q, dim) array or a sequence of queries; "
                                     "use search() for one query")
                vs, selfs, ident = [], [], []
                for qu in queries:
                    v, s, m = self._query_vector(qu)
                    vs.append(v)
                    selfs.append(s if exclude_self else None)
                    ident.append(m and exclude_self)
                q = np.stack(vs) if vs else np.zeros((0, self.dim), np.float32)
            if q.shape[0] == 0:
                return np.zeros((0, k), np.int64), np.zeros((0, k), np.float32)
            return self._search_vectors(q, k, metric_name, mode, ef, candidates, selfs, ident, rerank)

    def _check_whitened_metric(self, m: Any) -> None:
        if m.nonneg:
            raise ValueError(
                f"{self.path}: metric {m.name!r} needs non-negative vectors, but a whitening is fitted and "
                "whitened vectors are signed: use 'cosine', 'pearson', 'l2' or 'l1' (or clear_whitening())"
            )

    def _search_vectors(self, q: np.ndarray, k: int, metric: str, mode: str, ef: Optional[int],
                        candidates: Optional[int], selfs: Sequence[Optional[set]], ident: Sequence[bool],
                        rerank: Optional[str], *, in_space: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """``q``: raw query vectors, or (``in_space``) vectors already in the search
        space (whitened when a whitening is fitted: re-ranking's expanded queries)."""
        from fastimg.metrics import get_metric

        k_out = k
        if rerank:
            # fetch what re-ranking will use now, rather than searching twice
            from fastimg.rerank import candidates_needed

            k = candidates_needed(rerank, k)
        v = self._view()
        m = get_metric(metric)
        wh = self._whitening()
        if wh is not None:
            self._check_whitened_metric(m)
            data = self._whitened_data(v, wh)
            qs = q if in_space else np.ascontiguousarray(wh.model.transform(q), dtype=np.float32)
        else:
            data, qs = v.vectors, q
        nq = q.shape[0]
        out_ids = np.full((nq, k), -1, dtype=np.int64)
        out_scores = np.full((nq, k), np.nan, dtype=np.float32)
        if v.live == 0:
            if mode == "ann":
                raise ValueError(f"{self.path}: mode='ann' but the index is empty")
            return out_ids[:, :k_out], out_scores[:, :k_out]
        extra = max([len(s) for s in selfs if s] + [0]) + (1 if any(ident) else 0)
        want = min(k + extra, v.live)
        graph, meta = (None, None)
        fit = None if wh is None else wh.fit_id
        use_graph = mode == "ann"
        if mode == "auto" and v.live >= self._ann_crossover() and not self._auto_exact(m.name):
            # decide from the stored meta before paying for a graph load (CRC + hnswlib)
            pre = self._store.get_meta("ann")
            use_graph = pre is not None and pre.get("metric") == m.name and pre.get("whitening") == fit
        if use_graph:
            try:
                graph, meta = self._load_graph(v)
            except AnnSearchError as exc:  # a graph newer than this snapshot: scan exactly this time
                log.info("%s: %s; searching exactly", self.path, exc)
                graph, meta, use_graph = None, None, False
        if use_graph:
            same_space = meta is not None and meta.get("whitening") == fit
            usable = graph is not None and meta is not None and meta.get("metric") == m.name and same_space
            if mode == "ann" and not usable:
                why = (self._ann_error if meta is not None and graph is None else
                       ("the graph was built before the whitening was fitted, re-fitted or cleared: rebuild it "
                        "(Index.build_ann / fastimg index --ann)") if meta is not None and not same_space
                       else f"the graph serves metric {meta.get('metric')!r}, not {m.name!r}" if meta is not None
                       else "no HNSW graph is built (Index.build_ann)")
                raise ValueError(f"{self.path}: mode='ann' unavailable: {why}")
            if not usable:
                graph = None
        if graph is not None:
            try:
                ids, scores = self._ann_candidates(graph, meta, v, data, qs, want, m, ef, candidates)
            except AnnSearchError as exc:
                # e.g. a graph file saved by a writer after this reader's snapshot, or
                # too many deletions for ef: the exact scan still answers correctly
                log.warning("%s: HNSW search failed, searching exactly (%s)", self.path, exc)
                graph = None
        if graph is None:
            searcher = self._searcher(m.name, v, wh, data)
            excl = v.deleted if v.deleted.size else None
            ids, scores = searcher.search(qs, want, exclude=excl)
            ids, scores = np.asarray(ids, dtype=np.int64), np.asarray(scores, dtype=np.float32)
        dropped: list[set] = [set(s) if s else set() for s in selfs]
        for r in range(nq):
            row_ids, row_scores = ids[r], scores[r]
            keep = row_ids >= 0
            if selfs[r]:
                keep &= ~np.isin(row_ids, np.fromiter(selfs[r], np.int64))
            if ident[r]:
                cand = np.flatnonzero(keep)
                same = [j for j in cand if np.array_equal(np.asarray(v.vectors[row_ids[j]]), q[r])]
                if same:
                    j = min(same, key=lambda j: row_ids[j])
                    keep[j] = False
                    dropped[r].add(int(row_ids[j]))
            row_ids, row_scores = row_ids[keep][:k], row_scores[keep][:k]
            out_ids[r, :row_ids.size] = row_ids
            out_scores[r, :row_ids.size] = row_scores
        if rerank:
            return self._rerank(rerank, qs, out_ids, out_scores, k_out, m.name, mode, ef, candidates, dropped, data)
        return out_ids, out_scores

    def _ann_candidates(self, graph: Any, meta: dict, v: _View, data: Any, q: np.ndarray, want: int, m: Any,
                        ef: Optional[int], candidates: Optional[int]) -> tuple[np.ndarray, np.ndarray]:
        rows = min(graph.max_id + 1, v.state.committed)  # the graph holds rows [0, rows), deletions marked
        deleted = v.deleted
        g_live = rows - int(np.searchsorted(deleted, rows))
        parts_i, parts_s = [], []
        if g_live > 0:
            kk = min(want, g_live)
            gi, gs = graph.search(q, kk, data=data, ef=ef, candidates=None if candidates is None
                                  else max(candidates, kk))
            parts_i.append(np.asarray(gi, np.int64))
            parts_s.append(np.asarray(gs, np.float32))
        if rows < v.state.committed:  # rows added after the graph was saved: scan them exactly
            from fastimg.search import ExactSearcher

            tail = data[rows:]
            tdel = deleted[deleted >= rows] - rows
            t_live = tail.shape[0] - tdel.size
            if t_live > 0:
                ti, ts = ExactSearcher(tail, m.name, threads=self.threads).search(
                    q, min(want, t_live), exclude=tdel if tdel.size else None)
                ti = np.asarray(ti, np.int64)
                parts_i.append(np.where(ti >= 0, ti + rows, -1))
                parts_s.append(np.asarray(ts, np.float32))
        ids = np.concatenate(parts_i, axis=1)
        scores = np.concatenate(parts_s, axis=1)
        sign = -1.0 if m.higher_is_better else 1.0
        key = np.where(ids >= 0, sign * scores.astype(np.float64), np.inf)
        order = np.stack([np.lexsort((ids[r], key[r])) for r in range(ids.shape[0])])
        ids = np.take_along_axis(ids, order, axis=1)[:, :want]
        scores = np.take_along_axis(scores, order, axis=1)[:, :want]
        return ids, scores

    def _rerank(self, spec: str, q: np.ndarray, ids: np.ndarray, scores: np.ndarray, k: int, metric: str,
                mode: str, ef: Optional[int], candidates: Optional[int],
                selfs: Sequence[set], data: Any) -> tuple[np.ndarray, np.ndarray]:
        # q and data are in the search space (whitened when a whitening is fitted)
        from fastimg import rerank as _rr

        def get_vectors(sel: Any) -> np.ndarray:
            return np.asarray(data[np.asarray(sel, dtype=np.int64)], dtype=np.float32)

        out_i = np.full((len(q), k), -1, dtype=np.int64)
        out_s = np.full((len(q), k), np.nan, dtype=np.float32)
        for r in range(len(q)):
            own = selfs[r]

            def search(vectors: Any, kk: int, own: set = own) -> tuple[np.ndarray, np.ndarray]:
                # the same search, with the same exclusion of the query itself
                vv = np.atleast_2d(np.asarray(vectors, dtype=np.float32))
                n = len(vv)
                return self._search_vectors(vv, int(kk), metric, mode, ef, candidates, [own] * n, [False] * n,
                                            None, in_space=True)

            keep = ids[r] >= 0
            # fewer results than the first search asked for: they are all there is
            ri, rs = _rr.apply(spec, q[r], ids[r][keep], scores[r][keep], get_vectors=get_vectors, search=search,
                               k=k, metric=metric, complete=bool(keep.sum() < ids.shape[1]))
            ri, rs = np.asarray(ri, np.int64)[:k], np.asarray(rs, np.float32)[:k]
            out_i[r, :ri.size] = ri
            out_s[r, :rs.size] = rs
        return out_i, out_s
