"""The on-disk format of a fastimg index (this module is its only owner).

An index is **one directory**::

    myindex/
      manifest.json        what the index is (static: written at creation)
      meta.sqlite          per-image metadata + the committed state (SQLite, WAL)
      vectors.<G>.f32      the vectors: raw little-endian float32, shape (rows, dim)
      lock                 writer lock file (``fcntl.flock``), holds the writer's pid
      cache/               derived data, always rebuildable from the vectors: named,
                           written and read by :mod:`fastimg.index.caches`
        <metric>-prepared.g<G>.n<N>.npy   prepared matrix of an inner-product metric
        <metric>-bias.g<G>.n<N>.npy       its per-row bias (when the metric has one)
        whitened-<fit>.g<G>.n<N>.npy      the whitened matrix (see whitening.npz)
      ann/                 the HNSW graph (fastimg.ann's files); its state in ``meta``
                           (kept by :mod:`fastimg.index.graph`)
      whitening.npz        optional PCA-whitening fitted by ``Index.fit_whitening`` (its
                           record, with the file's checksum, in ``meta`` key ``whitening``;
                           kept by :mod:`fastimg.index.whitening`)

``manifest.json``
    ``{"format": "fastimg-index", "format_version": 1, "descriptor": <spec>,
    "dim": D, "dtype": "<f4", "metric": <default metric>, "root": <dir>,
    "created": <ISO time>, "fastimg_version": <str>}``.  ``descriptor`` is the
    descriptor's ``spec()`` (name, parameters, version) or
    ``{"name": "custom", "dim": D, ...}``.  ``root`` is the directory image paths are
    stored relative to, itself relative to the index directory when possible
    (default ``".."``: the folder that contains the index), so a photo tree moved
    together with its index keeps working.  The manifest is static: it is written
    atomically (temp file + rename) at creation, compaction and migration only.

``meta.sqlite``
    ``meta(key, value)`` holds the **mutable state**: ``format_version``, ``dim``,
    ``committed`` (the number of rows of the vector file that are valid),
    ``generation`` (the vector file in use, bumped by compaction), ``version``
    (bumped by every write transaction, so readers notice changes with one query),
    ``has_negative`` (JSON bool: may a committed row hold a negative value? lets
    histogram metrics skip a validation pass over the matrix), the ANN graph's
    state (``ann``: JSON) and the whitening's (``whitening``: JSON).  The committed count lives here, not
    in the manifest, so that it advances in **the same transaction** as the rows'
    metadata: the two can never disagree.
    ``images(id, path, is_file, size, mtime_ns, hash, added, deleted, metadata)``:
    ``id`` is the row of the vector file (``0 <= id < committed``); ``path`` is
    relative to ``root`` when the file lies under it, else absolute (``is_file=1``),
    or the caller's name for vectors added with ``add_vectors`` (``is_file=0``);
    ``size``/``mtime_ns`` detect modified files and ``hash`` (BLAKE2b-128 of the
    file's bytes) detects renamed/moved ones; ``deleted=1`` rows stay in the vector
    file (and are excluded from search) until :meth:`Store.compact`; ``metadata``
    is the caller's JSON.  At most one live row per path (a partial unique index).

``vectors.<G>.f32``
    ``committed * dim * 4`` bytes of valid data, possibly followed by the remains
    of an interrupted append, which readers ignore and the next writer truncates.
    It has no header, so ``np.memmap`` maps it directly and opening an index of a
    million vectors reads nothing but the manifest and two SQLite rows.

Protocol
--------
* **Append** (crash safety): write the new rows after row ``committed``, ``fsync``
  the file, *then* commit the SQLite transaction that inserts their metadata and
  advances ``committed``.  A process killed at any point leaves either the old or
  the new committed state, never a mix; at most the uncommitted batch is lost.
* **One writer**: a writer holds an exclusive ``flock`` on ``lock`` (whose content
  is its pid) for as long as it is open; a second writer gets
  :class:`~fastimg.errors.IndexLockedError` naming that pid.  Readers take no lock:
  SQLite's WAL mode gives them a consistent snapshot, and as the vector file only
  grows (beyond what any reader has mapped) while the generation is unchanged, what
  they mapped stays valid.
* **Compaction** writes ``vectors.<G+1>.f32`` with the live rows only, ``fsync``s
  it, then in one transaction renumbers ``images.id`` to ``0..live-1`` (in the old
  order), sets ``generation = G+1`` and ``committed = live``, and finally unlinks the
  old file (readers that mapped it keep their mapping).  **Ids are remapped** by
  compaction; :meth:`Store.compact` returns the old-to-new mapping.
* **Versions**: ``format_version`` newer than :data:`FORMAT_VERSION` is refused
  (upgrade fastimg); an older one is refused in read mode and migrated in write
  mode by the functions registered in :data:`MIGRATIONS` (``MIGRATIONS[v]``
  upgrades an index from version ``v`` to ``v + 1``, inside one SQLite transaction).

Every inconsistency raises a :mod:`fastimg.errors` exception naming the file.
"""
from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import logging
import os
import re
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Optional, Sequence, Union

import numpy as np

from fastimg._version import __version__
from fastimg.index._files import (
    acquire_lock,
    connect,
    init_database,
    migrate,
    prepare_directory,
    read_manifest,
    release_lock,
    write_json_atomic,
    write_rows,
)
from fastimg.errors import (
    IndexCorruptError,
    IndexFormatError,
    IndexNotFoundError,
    IndexReadOnlyError,
    NotInIndexError,
)

__all__ = [
    "FORMAT_VERSION",
    "MIGRATIONS",
    "MANIFEST",
    "DATABASE",
    "LOCKFILE",
    "State",
    "Snapshot",
    "Row",
    "NewRow",
    "Store",
    "file_hash",
]

log = logging.getLogger("fastimg.index.store")

FORMAT_NAME = "fastimg-index"
#: Version of the on-disk format written by this fastimg.
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
DATABASE = "meta.sqlite"
LOCKFILE = "lock"
CACHE_DIR = "cache"
ANN_DIR = "ann"
DTYPE = "<f4"
_ROW_CHUNK = 65536  # rows copied per step by compact()

#: ``MIGRATIONS[v](store_dir, connection, manifest)`` upgrades a version-``v`` index
#: to version ``v + 1``: it may alter the SQLite schema (inside the caller's
#: transaction) and must return the updated manifest dict.
MIGRATIONS: dict[int, Callable[[Path, sqlite3.Connection, dict], dict]] = {}

_SCHEMA = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE images (
    id INTEGER PRIMARY KEY,
    path TEXT NOT NULL,
    is_file INTEGER NOT NULL,
    size INTEGER,
    mtime_ns INTEGER,
    hash TEXT,
    added REAL NOT NULL,
    deleted INTEGER NOT NULL DEFAULT 0,
    metadata TEXT
);
CREATE UNIQUE INDEX images_live_path ON images(path) WHERE deleted = 0;
CREATE INDEX images_hash ON images(hash) WHERE hash IS NOT NULL;
CREATE INDEX images_deleted ON images(id) WHERE deleted = 1;
"""
_COLUMNS = "id, path, is_file, size, mtime_ns, hash, added, deleted, metadata"
_RESERVED = frozenset({"format_version", "dim", "committed", "generation", "version"})


@dataclass(frozen=True)
class State:
    """The committed state of an index, as read from ``meta.sqlite``.

    Attributes
    ----------
    committed : int
        Number of valid rows in the vector file (ids ``0 .. committed-1``).
    generation : int
        Which vector file is current (bumped by compaction).
    version : int
        Bumped by every write transaction.
    """

    committed: int
    generation: int
    version: int


@dataclass(frozen=True)
class Snapshot:
    """What a handle needs to know about one committed state, read in one transaction
    (:meth:`Store.read_snapshot`).

    Attributes
    ----------
    state : State
    meta : dict
        The JSON values of the non-reserved ``meta`` keys (``ann``, ``whitening``,
        ``has_negative`` ...), decoded.
    deleted : numpy.ndarray
        Sorted int64 ids of the rows marked deleted.
    """

    state: State
    meta: dict
    deleted: np.ndarray


@dataclass(frozen=True)
class Row:
    """One row of the ``images`` table."""

    id: int
    path: str
    is_file: bool
    size: Optional[int]
    mtime_ns: Optional[int]
    hash: Optional[str]
    added: float
    deleted: bool
    metadata: Optional[dict]


@dataclass(frozen=True)
class NewRow:
    """Metadata of a row being appended (its id is assigned by :meth:`Store.commit_rows`)."""

    path: str
    is_file: bool = True
    size: Optional[int] = None
    mtime_ns: Optional[int] = None
    hash: Optional[str] = None
    metadata: Optional[dict] = None


def file_hash(path: Union[str, os.PathLike], chunk: int = 1 << 20) -> str:
    """BLAKE2b-128 hex digest of a file's bytes (the content hash stored per image)."""
    h = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as f:
        while True:
            block = f.read(chunk)
            if not block:
                break
            h.update(block)
    return h.hexdigest()


@functools.lru_cache(maxsize=64)
def _paths_sql(n: int) -> str:
    """Paths of ``n`` ids, and the generation (as id -1), in one statement."""
    return (f"SELECT id, path, is_file FROM images WHERE id IN ({','.join('?' * n)})"
            " UNION ALL SELECT -1, value, 0 FROM meta WHERE key = 'generation'")


def _row(t: Sequence[Any]) -> Row:
    meta = json.loads(t[8]) if t[8] is not None else None
    return Row(int(t[0]), t[1], bool(t[2]), t[3], t[4], t[5], float(t[6]), bool(t[7]), meta)


class Store:
    """Low-level access to one index directory (see the module docstring).

    Not meant to be used directly: :class:`fastimg.Index` wraps it.  A ``Store``
    holds one SQLite connection and, when writable, the writer lock.  Methods are
    serialised by an internal lock so one instance may be shared by threads.

    Parameters
    ----------
    path : path-like
        The index directory.
    writable : bool
        Take the writer lock and allow changes.
    """

    # ------------------------------------------------------------------ open
    def __init__(self, path: Union[str, os.PathLike], writable: bool = False, *, _migrate: bool = True):
        self.path = Path(path)
        self.writable = writable
        self._lock_fd: Optional[int] = None
        self._conn: Optional[sqlite3.Connection] = None
        self._mutex = threading.RLock()
        self._pending = 0  # rows appended to the vector file but not committed yet
        self._pending_negative = False  # does any pending row hold a negative value?
        self._root_str: Optional[str] = None  # root, resolved once
        manifest_path = self.path / MANIFEST
        if not self.path.is_dir():
            what = "not a directory" if self.path.exists() else "directory not found"
            raise IndexNotFoundError(f"{self.path}: no fastimg index here ({what})")
        if not manifest_path.is_file():
            raise IndexNotFoundError(f"{self.path}: no fastimg index here ({MANIFEST} not found)")
        self.manifest = read_manifest(manifest_path, format_name=FORMAT_NAME, max_version=FORMAT_VERSION,
                                      dtype=DTYPE, fastimg_version=__version__)
        try:
            if writable:
                self._lock_fd = acquire_lock(self.path, self.path / LOCKFILE)
            self._conn = connect(self.path / DATABASE, writable)
            version = int(self.manifest["format_version"])
            if version < FORMAT_VERSION:
                if not writable:
                    raise IndexFormatError(
                        f"{manifest_path}: index format version {version} is older than this fastimg's "
                        f"({FORMAT_VERSION}); open it with mode='a' once to migrate it"
                    )
                if not _migrate:
                    raise IndexFormatError(f"{manifest_path}: format version {version} needs a migration")
                with self._mutex:
                    self.manifest = migrate(self._conn, self.path, self.manifest, version, FORMAT_VERSION,
                                            MIGRATIONS)
                write_json_atomic(manifest_path, self.manifest)
            self._check_consistency()
            if writable:
                self._discard_uncommitted_tail()
        except BaseException:
            self.close()
            raise

    @classmethod
    def create(
        cls,
        path: Union[str, os.PathLike],
        *,
        descriptor: dict,
        dim: int,
        metric: str,
        root: Union[str, os.PathLike, None] = None,
    ) -> "Store":
        """Create an empty index directory and return it opened for writing.

        Parameters
        ----------
        path : path-like
            Directory to create (it may exist if it is empty or only holds the
            remains of an interrupted ``create``).
        descriptor : dict
            The descriptor spec stored in the manifest.
        dim : int
            Vector dimension.
        metric : str
            Default metric name.
        root : path-like, optional
            Directory image paths are stored relative to (default: the parent of
            ``path``).
        """
        path = Path(path)
        prepare_directory(path, manifest=MANIFEST, lockfile=LOCKFILE, ours=re.compile(
            r"^(meta\.sqlite(-wal|-shm|-journal)?|vectors\.\d+\.f32|lock|cache|ann|\..*\.tmp)$"))
        dim = int(dim)
        if dim < 1:
            raise ValueError(f"dim must be >= 1; got {dim}")
        root_abs = Path(os.path.abspath(root)) if root is not None else Path(os.path.abspath(path)).parent
        try:
            root_str = os.path.relpath(root_abs, os.path.abspath(path))
        except ValueError:  # pragma: no cover - different drives on Windows
            root_str = str(root_abs)
        init_database(path / DATABASE, schema=_SCHEMA, user_version=FORMAT_VERSION, meta=[
            ("format_version", str(FORMAT_VERSION)), ("dim", str(dim)), ("committed", "0"), ("generation", "0"),
            ("version", "0"), ("has_negative", "false")])
        with open(path / "vectors.0.f32", "wb") as f:
            os.fsync(f.fileno())
        manifest = {
            "format": FORMAT_NAME,
            "format_version": FORMAT_VERSION,
            "descriptor": descriptor,
            "dim": dim,
            "dtype": DTYPE,
            "metric": metric,
            "root": root_str,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "fastimg_version": __version__,
        }
        write_json_atomic(path / MANIFEST, manifest)  # the index exists from here on
        return cls(path, writable=True)

    def _check_consistency(self) -> None:
        db = self.path / DATABASE
        with self._read():
            state = self._state()
            dim = int(self._meta("dim"))
            top = self._conn.execute("SELECT max(id) FROM images").fetchone()[0]
        if dim != self.manifest["dim"]:
            raise IndexCorruptError(
                f"{self.path / MANIFEST}: manifest says dim={self.manifest['dim']} but {db} says dim={dim}"
            )
        expect = -1 if top is None else int(top)
        if expect != state.committed - 1:
            raise IndexCorruptError(
                f"{db}: metadata has rows up to id {expect} but the committed count is {state.committed}"
            )
        self._check_vector_file(state)

    def _check_vector_file(self, state: State) -> Path:
        vpath = self.vectors_path(state.generation)
        try:
            size = vpath.stat().st_size
        except FileNotFoundError:
            raise IndexCorruptError(
                f"{vpath}: vector file is missing ({state.committed} committed rows expected)"
            ) from None
        need = state.committed * self.row_bytes
        if size < need:
            raise IndexCorruptError(
                f"{vpath}: vector file is truncated: {size} bytes holds {size // self.row_bytes} rows of dim "
                f"{self.dim}, but {state.committed} rows are committed ({need} bytes)"
            )
        return vpath

    def _discard_uncommitted_tail(self) -> None:
        state = self.state()
        vpath = self.vectors_path(state.generation)
        need = state.committed * self.row_bytes
        if vpath.stat().st_size > need:
            log.info("%s: discarding %d bytes of uncommitted rows", vpath, vpath.stat().st_size - need)
            os.truncate(vpath, need)
        # remains of an interrupted compaction / cache writes
        for p in self.path.iterdir():
            m = re.match(r"^vectors\.(\d+)\.f32$", p.name)
            if (m and int(m.group(1)) != state.generation) or re.match(r"^\..*\.tmp$", p.name):
                with contextlib.suppress(OSError):
                    p.unlink()

    def close(self) -> None:
        """Close the database and release the writer lock (idempotent)."""
        with self._mutex:
            if self._conn is not None:
                with contextlib.suppress(sqlite3.Error):
                    self._conn.close()
                self._conn = None
            if self._lock_fd is not None:
                release_lock(self._lock_fd)
                self._lock_fd = None

    @property
    def closed(self) -> bool:
        return self._conn is None

    # ----------------------------------------------------------------- state
    @property
    def dim(self) -> int:
        return int(self.manifest["dim"])

    @property
    def row_bytes(self) -> int:
        return self.dim * 4

    @property
    def root(self) -> Path:
        """Absolute directory that relative image paths are resolved against."""
        return Path(self._root())

    def _root(self) -> str:
        # the manifest is static once open (a migration rewrites it before any use)
        root = self._root_str
        if root is None:
            root = os.path.normpath(os.path.join(os.path.abspath(self.path), self.manifest["root"]))
            self._root_str = root
        return root

    def stored_path(self, path: Union[str, os.PathLike]) -> str:
        """How a file path is stored in ``images.path``: relative to :attr:`root` when
        the file lies under it, else absolute."""
        ab = os.path.abspath(os.fspath(path))
        root = self._root()
        try:
            if os.path.commonpath([ab, root]) == root:
                return os.path.relpath(ab, root)
        except ValueError:  # pragma: no cover - different drives
            pass
        return ab

    def absolute_path(self, stored: str, is_file: bool = True) -> str:
        """The absolute path of a stored file path (a name added with vectors is returned as is)."""
        if is_file and not os.path.isabs(stored):
            return os.path.join(self._root(), stored)
        return stored

    def vectors_path(self, generation: int) -> Path:
        return self.path / f"vectors.{generation}.f32"

    def _db(self) -> sqlite3.Connection:
        if self._conn is None:
            raise ValueError(f"{self.path}: the index is closed")
        return self._conn

    def _meta(self, key: str) -> Optional[str]:
        row = self._db().execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else row[0]

    def _state(self) -> State:
        rows = dict(
            self._db().execute(
                "SELECT key, value FROM meta WHERE key IN ('committed', 'generation', 'version')"
            ).fetchall()
        )
        return State(int(rows["committed"]), int(rows["generation"]), int(rows["version"]))

    @contextlib.contextmanager
    def _read(self) -> Iterator[sqlite3.Connection]:
        """A read transaction: everything read inside sees one committed snapshot
        (nested in another read or a write: that one)."""
        with self._mutex:
            conn = self._db()
            if conn.in_transaction:
                yield conn
                return
            try:
                conn.execute("BEGIN")
            except sqlite3.DatabaseError as exc:
                raise IndexCorruptError(f"{self.path / DATABASE}: {exc}") from None
            try:
                yield conn
            finally:
                conn.execute("COMMIT")

    @contextlib.contextmanager
    def snapshot(self) -> Iterator[None]:
        """A read transaction pinned at once: everything read inside sees the state
        committed when it began (nested: the enclosing one)."""
        with self._read():
            self.version()  # the first read starts the snapshot
            yield

    def state(self) -> State:
        """The current committed state (one query; a single statement reads one
        committed snapshot, so no explicit transaction is needed)."""
        with self._mutex:
            try:
                return self._state()
            except sqlite3.DatabaseError as exc:
                raise IndexCorruptError(f"{self.path / DATABASE}: {exc}") from None

    def version(self) -> int:
        """The ``version`` counter alone (one primary-key lookup): every write
        transaction bumps it, so an unchanged version means an unchanged state."""
        with self._mutex:
            try:
                return int(self._db().execute("SELECT value FROM meta WHERE key = 'version'").fetchone()[0])
            except sqlite3.DatabaseError as exc:
                raise IndexCorruptError(f"{self.path / DATABASE}: {exc}") from None

    def read_snapshot(self) -> Snapshot:
        """The committed state with its meta values and deleted ids, read in one
        transaction (two queries)."""
        with self._read() as conn:
            rows = dict(conn.execute("SELECT key, value FROM meta").fetchall())
            deleted = self.deleted_ids()
        state = State(int(rows["committed"]), int(rows["generation"]), int(rows["version"]))
        return Snapshot(state, {k: json.loads(v) for k, v in rows.items() if k not in _RESERVED}, deleted)

    @contextlib.contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        self._require_writable()
        with self._mutex:
            conn = self._db()
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
                conn.execute("UPDATE meta SET value = CAST(value AS INTEGER) + 1 WHERE key = 'version'")
                conn.execute("COMMIT")
            except BaseException:
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
                raise

    def _require_writable(self) -> None:
        if not self.writable:
            raise IndexReadOnlyError(f"{self.path}: the index is open read-only (open it with mode='a' to change it)")
        if self._conn is None:
            raise ValueError(f"{self.path}: the index is closed")

    # --------------------------------------------------------------- vectors
    def map_vectors(self, state: State) -> np.ndarray:
        """Read-only ``(state.committed, dim)`` float32 memmap of the committed rows."""
        if state.committed == 0:
            arr = np.zeros((0, self.dim), dtype=np.float32)
            arr.flags.writeable = False
            return arr
        vpath = self._check_vector_file(state)
        return np.memmap(vpath, dtype=DTYPE, mode="r", shape=(state.committed, self.dim))

    def append_vectors(self, vectors: np.ndarray) -> int:
        """Write rows after the committed ones (and any pending ones) and fsync.

        The rows become visible only when :meth:`commit_rows` commits them.

        Returns
        -------
        int
            The id the first of these rows will get.
        """
        self._require_writable()
        vectors = np.ascontiguousarray(vectors, dtype=DTYPE)
        if vectors.ndim != 2 or vectors.shape[1] != self.dim:
            raise ValueError(f"vectors must have shape (n, {self.dim}); got {vectors.shape}")
        with self._mutex:
            state = self.state()
            first = state.committed + self._pending
            with open(self.vectors_path(state.generation), "r+b") as f:
                f.seek(first * self.row_bytes)
                f.write(vectors.tobytes())
                f.flush()
                os.fsync(f.fileno())
            self._pending += len(vectors)
            self._pending_negative |= bool((vectors < 0).any())
            return first

    def commit_rows(self, rows: Sequence[NewRow], *, delete: Iterable[int] = ()) -> range:
        """Commit the metadata of the pending appended rows (in order) and advance
        the committed count, marking ``delete`` ids deleted in the same transaction.

        Returns
        -------
        range
            The ids given to ``rows``.
        """
        self._require_writable()
        with self._mutex:
            if len(rows) != self._pending:
                raise ValueError(f"commit_rows: {len(rows)} rows given but {self._pending} vectors are pending")
            now = time.time()
            with self._write() as conn:
                state = self._state()
                ids = range(state.committed, state.committed + len(rows))
                delete = [int(i) for i in delete]
                if delete:
                    conn.executemany("UPDATE images SET deleted = 1 WHERE id = ?", [(i,) for i in delete])
                conn.executemany(
                    f"INSERT INTO images({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, 0, ?)",
                    [
                        (i, r.path, int(r.is_file), r.size, r.mtime_ns, r.hash, now,
                         None if r.metadata is None else json.dumps(r.metadata))
                        for i, r in zip(ids, rows)
                    ],
                )
                conn.execute("UPDATE meta SET value = ? WHERE key = 'committed'", (str(ids.stop),))
                if self._pending_negative:
                    conn.execute("INSERT OR REPLACE INTO meta(key, value) VALUES ('has_negative', 'true')")
            self._pending = 0
            self._pending_negative = False
            return ids

    def rollback_pending(self) -> None:
        """Forget appended-but-uncommitted rows (they are overwritten by the next append)."""
        self._pending = 0
        self._pending_negative = False

    def has_negative(self) -> Optional[bool]:
        """Whether any committed row may hold a negative value (None: unknown).

        Maintained by :meth:`commit_rows` (JSON ``has_negative`` in ``meta``), so
        histogram metrics need not scan the matrix to validate it."""
        return self.get_meta("has_negative")

    # -------------------------------------------------------------- metadata
    def rows(self, ids: Iterable[int]) -> list[Row]:
        """Rows for ``ids`` in the given order (KeyError for an unknown id)."""
        ids = [int(i) for i in ids]
        with self._read():
            found = self._fetch_ids(ids)
        out = []
        for i in ids:
            if i not in found:
                raise NotInIndexError(f"{self.path}: no image with id {i}")
            out.append(found[i])
        return out

    def paths(self, ids: Iterable[int], *, generation: Optional[int] = None) -> Optional[list[str]]:
        """Absolute file paths (or the names of vectors) of ``ids``, in order
        (NotInIndexError for an unknown id).

        One statement for up to 900 ids, which also reads the vector file's
        generation: with ``generation`` given, None when it is no longer that one
        (a compaction renumbered the ids since the caller read them).
        """
        ids = [int(i) for i in ids]
        found: dict[int, str] = {}
        current = None
        root = self._root()
        prefix, isabs = (root if root.endswith(os.sep) else root + os.sep), os.path.isabs
        # one statement reads one snapshot: a transaction only for more
        with self._read() if len(ids) > 900 else self._mutex:
            conn = self._db()
            for start in range(0, max(len(ids), 1), 900):
                chunk = ids[start:start + 900]
                for i, path, is_file in conn.execute(_paths_sql(len(chunk)), chunk):
                    if i < 0:
                        current = int(path)
                    else:  # as absolute_path()
                        found[i] = prefix + path if is_file and not isabs(path) else path
        if generation is not None and current != generation:
            return None
        try:
            return [found[i] for i in ids]
        except KeyError as exc:
            raise NotInIndexError(f"{self.path}: no image with id {exc.args[0]}") from None

    def _fetch_ids(self, ids: Sequence[int]) -> dict[int, Row]:
        found: dict[int, Row] = {}
        conn = self._db()
        for start in range(0, len(ids), 900):
            chunk = ids[start:start + 900]
            q = f"SELECT {_COLUMNS} FROM images WHERE id IN ({','.join('?' * len(chunk))})"
            for t in conn.execute(q, chunk):
                found[int(t[0])] = _row(t)
        return found

    def find_live(self, path: str) -> Optional[Row]:
        """The live row stored under ``path`` (stored form), or None."""
        with self._read():
            t = self._db().execute(
                f"SELECT {_COLUMNS} FROM images WHERE path = ? AND deleted = 0", (path,)
            ).fetchone()
        return None if t is None else _row(t)

    def find_entry(self, item: Union[str, os.PathLike]) -> Optional[Row]:
        """The live row of an ``add_vectors`` name or of a file path (as stored, or
        given as a path to put in :meth:`stored_path` form), or None."""
        s = os.fspath(item)
        row = self.find_live(s)  # a name, or a path stored as given
        if row is None or row.is_file:
            row = self.find_live(self.stored_path(s)) or row
        return row

    def find_live_many(self, paths: Sequence[str]) -> dict[str, Row]:
        """Live rows stored under any of ``paths`` (stored form), keyed by path."""
        out: dict[str, Row] = {}
        paths = list(paths)
        with self._read():
            conn = self._db()
            for start in range(0, len(paths), 900):
                chunk = paths[start:start + 900]
                q = f"SELECT {_COLUMNS} FROM images WHERE deleted = 0 AND path IN ({','.join('?' * len(chunk))})"
                for t in conn.execute(q, chunk):
                    out[t[1]] = _row(t)
        return out

    def find_hash(self, digest: str) -> list[Row]:
        """Rows (live first, then lower id first) whose content hash is ``digest``."""
        with self._read():
            ts = self._db().execute(
                f"SELECT {_COLUMNS} FROM images WHERE hash = ? ORDER BY deleted, id", (digest,)
            ).fetchall()
        return [_row(t) for t in ts]

    def live_ids_matching(self, prefixes: Sequence[str], globs: Sequence[str]) -> tuple[int, np.ndarray]:
        """``(generation, sorted int64 ids)`` of the live rows whose stored path (or
        name) is one of ``prefixes`` or lies under one (``prefix + os.sep ...``),
        or matches one of ``globs`` (SQLite ``GLOB``), read in one transaction.
        An empty prefix matches every row."""
        terms: list[str] = []
        args: list[str] = []
        for p in prefixes:
            if not p:
                terms.append("1")
                continue
            p = p.rstrip(os.sep) or os.sep
            under = p if p.endswith(os.sep) else p + os.sep  # "a/b" -> "a/b/" <= path < "a/b0"
            terms.append("path = ? OR (path >= ? AND path < ?)")
            args += [p, under, under[:-1] + chr(ord(under[-1]) + 1)]
        for g in globs:
            terms.append("path GLOB ?")
            args.append(g)
        if not terms:
            return self.state().generation, np.zeros(0, np.int64)
        where = " OR ".join(f"({t})" for t in terms)
        with self._read() as conn:
            generation = int(conn.execute("SELECT value FROM meta WHERE key = 'generation'").fetchone()[0])
            ids = [t[0] for t in conn.execute(f"SELECT id FROM images WHERE deleted = 0 AND ({where}) ORDER BY id",
                                              args)]
        return generation, np.asarray(ids, dtype=np.int64)

    def live_files(self) -> list[Row]:
        """All live rows added from files."""
        with self._read():
            ts = self._db().execute(f"SELECT {_COLUMNS} FROM images WHERE deleted = 0 AND is_file = 1").fetchall()
        return [_row(t) for t in ts]

    def deleted_ids(self) -> np.ndarray:
        """Sorted int64 ids of the rows marked deleted."""
        with self._read():
            ids = [t[0] for t in self._db().execute("SELECT id FROM images WHERE deleted = 1 ORDER BY id")]
        return np.asarray(ids, dtype=np.int64)

    def mark_deleted(self, ids: Iterable[int]) -> int:
        """Mark ids deleted; returns how many live rows changed."""
        ids = [int(i) for i in ids]
        with self._write() as conn:
            before = conn.total_changes
            conn.executemany("UPDATE images SET deleted = 1 WHERE id = ? AND deleted = 0", [(i,) for i in ids])
            return conn.total_changes - before

    def update_files(self, updates: Sequence[tuple[int, str, int, int]]) -> None:
        """Set ``(path, size, mtime_ns)`` of live rows: ``[(id, path, size, mtime_ns), ...]``
        (a moved/renamed or touched file), in one transaction."""
        if not updates:
            return
        with self._write() as conn:
            conn.executemany(
                "UPDATE images SET path = ?, size = ?, mtime_ns = ? WHERE id = ?",
                [(p, s, m, i) for i, p, s, m in updates],
            )

    def set_row_metadata(self, id: int, metadata: Optional[dict]) -> None:
        """Replace the caller's JSON metadata of one live row."""
        text = None if metadata is None else json.dumps(metadata)
        with self._write() as conn:
            if conn.execute("UPDATE images SET metadata = ? WHERE id = ? AND deleted = 0",
                            (text, int(id))).rowcount != 1:
                raise NotInIndexError(f"{self.path}: no live image with id {id}")

    def get_meta(self, key: str) -> Any:
        """A JSON value stored in ``meta`` under ``key`` (None if absent)."""
        with self._read():
            value = self._meta(key)
        return None if value is None else json.loads(value)

    def set_meta(self, key: str, value: Any) -> None:
        """Store a JSON value in ``meta`` (``None`` removes the key)."""
        if key in _RESERVED:
            raise ValueError(f"meta key {key!r} is reserved")
        with self._write() as conn:
            if value is None:
                conn.execute("DELETE FROM meta WHERE key = ?", (key,))
            else:
                conn.execute("INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)", (key, json.dumps(value)))

    # ------------------------------------------------------------ compaction
    def compact(self, progress: Optional[Callable[[int, int], None]] = None) -> np.ndarray:
        """Rewrite the vector file without deleted rows and renumber the ids.

        Returns
        -------
        numpy.ndarray
            int64 array ``mapping`` of length = the old committed count, with
            ``mapping[old_id] = new_id``, or -1 for a removed row.
        """
        self._require_writable()
        with self._mutex:
            state = self.state()
            deleted = self.deleted_ids()
            keep = np.ones(state.committed, dtype=bool)
            keep[deleted] = False
            mapping = np.full(state.committed, -1, dtype=np.int64)
            live = int(keep.sum())
            mapping[keep] = np.arange(live, dtype=np.int64)
            if live == state.committed:
                return mapping
            new_gen = state.generation + 1
            write_rows(self.vectors_path(new_gen), self.map_vectors(state), keep, DTYPE, _ROW_CHUNK, progress)
            with self._write() as conn:
                conn.execute("DELETE FROM images WHERE deleted = 1")
                conn.execute("CREATE TEMP TABLE _renum(old INTEGER PRIMARY KEY, new INTEGER NOT NULL)")
                conn.execute("INSERT INTO _renum SELECT id, row_number() OVER (ORDER BY id) - 1 FROM images")
                # two passes through negative ids so the primary key never collides
                conn.execute("UPDATE images SET id = -1 - (SELECT new FROM _renum WHERE old = images.id)")
                conn.execute("UPDATE images SET id = -1 - id")
                conn.execute("DROP TABLE _renum")
                conn.execute("UPDATE meta SET value = ? WHERE key = 'committed'", (str(live),))
                conn.execute("UPDATE meta SET value = ? WHERE key = 'generation'", (str(new_gen),))
            with contextlib.suppress(OSError):
                self.vectors_path(state.generation).unlink()
            return mapping

    # ------------------------------------------------------------ directories
    @property
    def ann_dir(self) -> Path:
        """The HNSW graph's directory (its files belong to :mod:`fastimg.ann`)."""
        return self.path / ANN_DIR
