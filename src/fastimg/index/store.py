"""The on-disk format of a fastimg index (this module and its parts own it: the names and
records in :mod:`fastimg.index._format`, the Store mixins in ``_store_*.py``).

An index is **one directory**::

    myindex/
      manifest.json        what the index is (static: written at creation and migration)
      meta.sqlite          per-image metadata + the committed state (SQLite, WAL)
      vectors.<G>.f32      the vectors: raw little-endian float32, shape (rows, dim)
      lock                 writer lock file (``fcntl.flock``), holds the writer's pid
      cache/               derived data, always rebuildable from the vectors: named,
                           written and read by :mod:`fastimg.index.caches`
        <metric>-prepared.g<G>.n<N>.c<CRC>.npy  prepared matrix of an inner-product metric
        <metric>-bias.g<G>.n<N>.c<CRC>.npy      its per-row bias (when the metric has one)
        whitened-<fit>.g<G>.n<N>.c<CRC>.npy     the matrix mapped by the fitted whitening/projection
      ann/<build>/         the HNSW graph of one build (fastimg.ann's files: hnsw.json naming
                           its hnsw.<n>.bin); which build is in force: ``meta`` key ``ann``
                           (kept by :mod:`fastimg.index.graph`)
      whitening.<id>.npz   optional linear map: a PCA-whitening (``Index.fit_whitening``) or
      projection.<id>.npz  a learned projection (``Index.fit_projection``); its record, with
                           the file's name and checksum, in ``meta`` key ``whitening``; kept by
                           :mod:`fastimg.index.whitening` (older indexes: ``whitening.npz``)

``manifest.json``
    ``{"format": "fastimg-index", "format_version": 2, "descriptor": <spec>, "dim": D,
    "dtype": "<f4", "metric": <default metric>, "created": <ISO time>,
    "fastimg_version": <str>}``.  ``descriptor`` is the descriptor's ``spec()`` (name,
    parameters, version) or ``{"name": "custom", "dim": D, ...}`` the index was
    created with; the spec in force is ``meta`` key ``descriptor`` (it changes when a
    writer re-describes the images for a new descriptor version).  Written
    atomically (temp file + rename) at creation and migration only.

``meta.sqlite``
    ``meta(key, value)`` holds the **mutable state**: ``format_version``, ``dim``,
    ``committed`` (the number of rows of the vector file that are valid),
    ``generation`` (the vector file in use, bumped by compaction and
    re-description), ``version`` (bumped by every write transaction, so readers
    notice changes with one query), and JSON values: ``has_negative`` (may a
    committed row hold a negative value? lets histogram metrics skip a validation
    pass over the matrix), ``root`` (the directory relative file paths are resolved
    against: an absolute path, or a path relative to the index directory),
    ``descriptor`` (the spec the committed rows were described with), the ANN
    graph's state (``ann``) and the whitening's (``whitening``).  The committed
    count lives here, not in the manifest, so that it advances in **the same
    transaction** as the rows' metadata: the two can never disagree.
    ``images(id, path, is_file, size, mtime_ns, hash, added, deleted, stale,
    metadata)``: ``id`` is the row of the vector file (``0 <= id < committed``);
    ``path`` is a BLOB: the bytes of the file path (the UTF-8 encoding of the
    Python ``str`` with surrogate escapes, i.e. ``os.fsencode`` on a UTF-8 system,
    so any name the OS can hold is stored), relative to ``root`` when the file
    lies under it, else absolute (``is_file=1``), or the caller's name for
    vectors added with ``add_vectors`` (``is_file=0``); ``size``/``mtime_ns``
    detect modified files and ``hash`` (BLAKE2b-128 of the file's bytes) detects
    renamed/moved ones; ``deleted=1`` rows stay in the vector file (and are
    excluded from search) until :meth:`Store.compact`; ``stale=1`` marks a row
    whose vector was made by an older descriptor version than ``meta.descriptor``
    (its file could not be read when the index was re-described; it is described
    again when its file is indexed again); ``metadata`` is the caller's JSON.  At
    most one live row per path (a partial unique index).

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
  A failed write (a full disk: :class:`~fastimg.errors.IndexWriteError`) leaves
  the last committed state too.
* **One writer**: a writer holds an exclusive ``flock`` on ``lock`` (whose content
  is its pid) for as long as it is open; a second writer gets
  :class:`~fastimg.errors.IndexLockedError` naming that pid.  Readers take no lock:
  SQLite's WAL mode gives them a consistent snapshot, and as the vector file only
  grows (beyond what any reader has mapped) while the generation is unchanged, what
  they mapped stays valid.
* **New generation** (compaction, re-description): write ``vectors.<G+1>.f32``,
  ``fsync`` it, then in one transaction set ``generation = G+1`` and ``committed``
  and change the rows' metadata (compaction renumbers ``images.id`` to
  ``0..live-1`` in the old order; re-description records the new descriptor spec),
  and finally unlink the old file (readers that mapped it keep their mapping).
  **Ids are remapped** by compaction; :meth:`Store.compact` returns the old-to-new
  mapping.
* **Relocation** (:meth:`Store.relocate`): the stored paths under a prefix (and
  the root, when it lies under it) are rewritten in one transaction.
* **Versions**: ``format_version`` newer than :data:`FORMAT_VERSION` is refused
  (upgrade fastimg).  An older one is migrated by the first writer with the
  functions registered in :data:`MIGRATIONS` (``MIGRATIONS[v]`` upgrades an index
  from version ``v`` to ``v + 1``, inside one SQLite transaction; the manifest is
  rewritten after it commits); readers open the versions in
  :data:`READ_VERSIONS` as they are (and follow a migration made meanwhile by a
  writer), older ones are refused in read mode.  Version 1 (fastimg 0.1) stored
  paths as TEXT (UTF-8 only: names that are not UTF-8 could not be indexed) and
  the root in the manifest; version 2 stores paths as bytes, the root and the
  descriptor spec in ``meta``, and the ``stale`` column.

Every inconsistency raises a :mod:`fastimg.errors` exception naming the file.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shutil
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Optional, Sequence, Union

import numpy as np

from fastimg._version import __version__
from fastimg.errors import (
    ArgumentError,
    IndexClosedError,
    IndexCorruptError,
    IndexFormatError,
    IndexNotFoundError,
    IndexReadOnlyError,
    IndexWriteError,
    NotInIndexError,
)
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
from fastimg.index._format import (  # noqa: F401 - the format's names, re-exported
    ANN_DIR, CACHE_DIR, DATABASE, DTYPE, FORMAT_NAME, FORMAT_VERSION, LOCKFILE, MANIFEST, READ_VERSIONS,
    NewRow, Row, Snapshot, State, _COLUMNS, _COLUMNS_V1, _INDEXES, _RESERVED, _ROW_CHUNK,
    _SCHEMA, _TABLE, _paths_sql, _row, _write_error, decode_path, encode_path, file_hash,
)
from fastimg.index._store_generations import StoreGenerations
from fastimg.index._store_lookups import StoreLookups
from fastimg.index._store_paths import StorePaths

__all__ = [
    "FORMAT_VERSION",
    "READ_VERSIONS",
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
    "encode_path",
    "decode_path",
]

log = logging.getLogger("fastimg.index.store")



#: ``MIGRATIONS[v](store_dir, connection, manifest)`` upgrades a version-``v`` index
#: to version ``v + 1``: it may alter the SQLite schema (inside the caller's
#: transaction) and must return the updated manifest dict.  A step must be
#: idempotent: a writer killed after the transaction committed but before the
#: manifest was rewritten runs it again.
MIGRATIONS: dict[int, Callable[[Path, sqlite3.Connection, dict], dict]] = {}





def _migrate_v1_to_v2(path: Path, conn: sqlite3.Connection, manifest: dict) -> dict:
    """Format 1 -> 2: paths become BLOBs (the UTF-8 bytes format 1 could hold), the
    ``stale`` column is added, the root and the descriptor spec move into ``meta``."""
    cols = [r[1] for r in conn.execute("PRAGMA table_info(images)")]
    if "stale" not in cols:
        conn.execute(_TABLE.format(name="images_v2"))
        conn.execute("INSERT INTO images_v2(id, path, is_file, size, mtime_ns, hash, added, deleted, stale, metadata) "
                     "SELECT id, CAST(path AS BLOB), is_file, size, mtime_ns, hash, added, deleted, 0, metadata "
                     "FROM images")
        conn.execute("DROP TABLE images")
        conn.execute("ALTER TABLE images_v2 RENAME TO images")
        for stmt in _INDEXES.strip().split(";"):
            if stmt.strip():
                conn.execute(stmt)
    if "root" in manifest:
        conn.execute("INSERT OR IGNORE INTO meta(key, value) VALUES ('root', ?)", (json.dumps(manifest["root"]),))
    conn.execute("INSERT OR IGNORE INTO meta(key, value) VALUES ('descriptor', ?)",
                 (json.dumps(manifest["descriptor"]),))
    out = dict(manifest)
    out.pop("root", None)
    return out


MIGRATIONS[1] = _migrate_v1_to_v2






class Store(StorePaths, StoreLookups, StoreGenerations):
    """Low-level access to one index directory (see the module docstring).

    Not meant to be used directly: :class:`fastimg.Index` wraps it.  A ``Store``
    holds one SQLite connection and, when writable, the writer lock.  Methods are
    serialised by an internal lock so one instance may be shared by threads.

    Parameters
    ----------
    path : path-like
        The index directory.
    writable : bool
        Take the writer lock and allow changes (and migrate an older format).
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
        self._format = FORMAT_VERSION  # format of the database (a reader may open an older one)
        self._root_str: Optional[str] = None  # a writer's root, resolved once (it alone changes it)
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
                if writable:
                    if not _migrate:
                        raise IndexFormatError(f"{manifest_path}: format version {version} needs a migration")
                    with self._mutex:
                        self.manifest = migrate(self._conn, self.path, self.manifest, version, FORMAT_VERSION,
                                                MIGRATIONS)
                    write_json_atomic(manifest_path, self.manifest)
                elif version not in READ_VERSIONS:
                    raise IndexFormatError(
                        f"{manifest_path}: index format version {version} is older than this fastimg's "
                        f"({FORMAT_VERSION}); open it with mode='a' once to migrate it"
                    )
            self._format = self._db_format()
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
            The descriptor spec (manifest and ``meta``).
        dim : int
            Vector dimension.
        metric : str
            Default metric name.
        root : path-like, optional
            Directory image paths are stored relative to, recorded **relative to
            the index directory** (a collection moved together with its index
            keeps working).  Default: the directory that contains ``path``,
            recorded as an **absolute** path (the index can be moved or copied
            anywhere on the machine).
        """
        path = Path(path)
        prepare_directory(path, manifest=MANIFEST, lockfile=LOCKFILE, ours=re.compile(
            r"^(meta\.sqlite(-wal|-shm|-journal)?|vectors\.\d+\.f32|lock|cache|ann|\..*\.tmp)$"))
        dim = int(dim)
        if dim < 1:
            raise ArgumentError(f"dim must be >= 1; got {dim}")
        if root is None:
            root_str = os.path.dirname(os.path.abspath(path))
        else:
            try:
                root_str = os.path.relpath(os.path.abspath(root), os.path.abspath(path))
            except ValueError:  # pragma: no cover - different drives on Windows
                root_str = os.path.abspath(root)
        init_database(path / DATABASE, schema=_SCHEMA, user_version=FORMAT_VERSION, meta=[
            ("format_version", str(FORMAT_VERSION)), ("dim", str(dim)), ("committed", "0"), ("generation", "0"),
            ("version", "0"), ("has_negative", "false"), ("root", json.dumps(root_str)),
            ("descriptor", json.dumps(descriptor))])
        with open(path / "vectors.0.f32", "wb") as f:
            os.fsync(f.fileno())
        manifest = {
            "format": FORMAT_NAME,
            "format_version": FORMAT_VERSION,
            "descriptor": descriptor,
            "dim": dim,
            "dtype": DTYPE,
            "metric": metric,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "fastimg_version": __version__,
        }
        write_json_atomic(path / MANIFEST, manifest)  # the index exists from here on
        return cls(path, writable=True)

    def _db_format(self) -> int:
        value = self._meta("format_version")
        try:
            return int(value) if value is not None else int(self.manifest["format_version"])
        except ValueError:
            raise IndexCorruptError(f"{self.path / DATABASE}: invalid format_version {value!r}") from None

    def _layout(self) -> int:
        """The database's format version (inside a read: a reader of a format-1 index
        notices a migration made meanwhile by a writer)."""
        if self._format < FORMAT_VERSION:
            self._format = self._db_format()
        return self._format

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

    def leftovers(self) -> list[Path]:
        """Files an interrupted write left behind: the uncommitted tail's file (when
        it has one), vector files of other generations, temporary files."""
        state = self.state()
        out = []
        vpath = self.vectors_path(state.generation)
        with contextlib.suppress(OSError):
            if vpath.stat().st_size > state.committed * self.row_bytes:
                out.append(vpath)
        dirs = [self.path, self.path / CACHE_DIR, self.path / ANN_DIR]
        if dirs[2].is_dir():
            dirs += [p for p in dirs[2].iterdir() if p.is_dir() and not p.name.startswith(".")]  # graph builds
        for d in dirs:
            if not d.is_dir():
                continue
            for p in d.iterdir():
                m = re.match(r"^vectors\.(\d+)\.f32$", p.name) if d == self.path else None
                if (m and int(m.group(1)) != state.generation) or re.match(r"^\..*\.tmp(\.npz)?$", p.name):
                    out.append(p)
        return out

    def _discard_uncommitted_tail(self) -> None:
        state = self.state()
        vpath = self.vectors_path(state.generation)
        need = state.committed * self.row_bytes
        for p in self.leftovers():
            if p == vpath:
                log.info("%s: discarding %d bytes of uncommitted rows", vpath, vpath.stat().st_size - need)
                os.truncate(vpath, need)
            else:  # remains of an interrupted compaction / re-description / cache or graph write
                with contextlib.suppress(OSError):
                    if p.is_dir() and not p.is_symlink():
                        shutil.rmtree(p)
                    else:
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
    def format_version(self) -> int:
        """The format version of the database (a reader may have opened an older one)."""
        with self._read():
            return self._layout()


    def vectors_path(self, generation: int) -> Path:
        return self.path / f"vectors.{generation}.f32"

    def _db(self) -> sqlite3.Connection:
        if self._conn is None:
            raise IndexClosedError(f"{self.path}: the index is closed")
        return self._conn

    def _key(self, path: str) -> Union[bytes, str]:
        """A path or name as bound in SQL (call inside a read)."""
        if self._layout() >= 2:
            return encode_path(path)
        try:
            path.encode("utf-8")
        except UnicodeEncodeError:  # format 1 could not hold it: a BLOB matches no TEXT row
            return encode_path(path)
        return path

    def _cols(self) -> str:
        return _COLUMNS if self._layout() >= 2 else _COLUMNS_V1

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
            except sqlite3.DatabaseError as exc:  # a damaged database: the error names the file
                raise IndexCorruptError(f"{self.path / DATABASE}: {exc}") from None
            finally:
                try:
                    conn.execute("COMMIT")  # a read: nothing to lose
                except sqlite3.Error:
                    with contextlib.suppress(sqlite3.Error):
                        conn.execute("ROLLBACK")

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
        meta = {k: json.loads(v) for k, v in rows.items() if k not in _RESERVED}
        if int(rows.get("format_version", 1)) < 2:  # format 1 kept these in the manifest
            meta.setdefault("root", self.manifest.get("root"))
            meta.setdefault("descriptor", self.manifest.get("descriptor"))
        return Snapshot(state, meta, deleted)

    @contextlib.contextmanager
    def _write(self, doing: str = "commit a change") -> Iterator[sqlite3.Connection]:
        self._require_writable()
        with self._mutex:
            conn = self._db()
            try:
                conn.execute("BEGIN IMMEDIATE")
            except sqlite3.OperationalError as exc:
                raise _write_error(self.path / DATABASE, exc, doing, "its last committed state") from None
            try:
                yield conn
                conn.execute("UPDATE meta SET value = CAST(value AS INTEGER) + 1 WHERE key = 'version'")
                conn.execute("COMMIT")
            except BaseException as exc:
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
                if isinstance(exc, sqlite3.OperationalError):
                    raise _write_error(self.path / DATABASE, exc, doing, "its last committed state") from None
                raise

    def _require_writable(self) -> None:
        if not self.writable:
            raise IndexReadOnlyError(f"{self.path}: the index is open read-only (open it with mode='a' to change it)")
        if self._conn is None:
            raise IndexClosedError(f"{self.path}: the index is closed")

    # --------------------------------------------------------------- vectors
    def map_vectors(self, state: State) -> np.ndarray:
        """Read-only ``(state.committed, dim)`` float32 memmap of the committed rows."""
        if state.committed == 0:
            arr = np.zeros((0, self.dim), dtype=np.float32)
            arr.flags.writeable = False
            return arr
        vpath = self._check_vector_file(state)
        try:
            return np.memmap(vpath, dtype=DTYPE, mode="r", shape=(state.committed, self.dim))
        except (FileNotFoundError, ValueError) as exc:  # a compaction unlinked it since the check: read again
            raise IndexCorruptError(f"{vpath}: vector file vanished or shrank while being opened ({exc})") from None

    def append_vectors(self, vectors: np.ndarray) -> int:
        """Write rows after the committed ones (and any pending ones) and fsync.

        The rows become visible only when :meth:`commit_rows` commits them.

        Returns
        -------
        int
            The id the first of these rows will get.

        Raises
        ------
        IndexWriteError
            The write failed (a full disk): the rows are not appended (the file is
            cut back to what was there before), the committed state is unchanged.
        """
        self._require_writable()
        vectors = np.ascontiguousarray(vectors, dtype=DTYPE)
        if vectors.ndim != 2 or vectors.shape[1] != self.dim:
            raise ArgumentError(f"vectors must have shape (n, {self.dim}); got {vectors.shape}")
        with self._mutex:
            state = self.state()
            first = state.committed + self._pending
            vpath = self.vectors_path(state.generation)
            try:
                with open(vpath, "r+b") as f:
                    f.seek(first * self.row_bytes)
                    f.write(vectors.tobytes())
                    f.flush()
                    os.fsync(f.fileno())
            except OSError as exc:
                with contextlib.suppress(OSError):  # give the space back
                    os.truncate(vpath, first * self.row_bytes)
                raise _write_error(vpath, exc, f"append {len(vectors)} rows",
                                   f"its {state.committed} committed rows") from None
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
                raise ArgumentError(f"commit_rows: {len(rows)} rows given but {self._pending} vectors are pending")
            now = time.time()
            with self._write(f"commit {len(rows)} rows") as conn:
                state = self._state()
                ids = range(state.committed, state.committed + len(rows))
                delete = [int(i) for i in delete]
                if delete:
                    conn.executemany("UPDATE images SET deleted = 1 WHERE id = ?", [(i,) for i in delete])
                conn.executemany(
                    "INSERT INTO images(id, path, is_file, size, mtime_ns, hash, added, deleted, metadata) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, 0, ?)",
                    [
                        (i, self._key(r.path), int(r.is_file), r.size, r.mtime_ns, r.hash, now,
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
        """Forget appended-but-uncommitted rows (cut from the file: a failed commit
        on a full disk gives the space back)."""
        if self._pending and self._conn is not None:
            with contextlib.suppress(OSError, sqlite3.Error, IndexCorruptError):
                state = self.state()
                os.truncate(self.vectors_path(state.generation), state.committed * self.row_bytes)
        self._pending = 0
        self._pending_negative = False

    def has_negative(self) -> Optional[bool]:
        """Whether any committed row may hold a negative value (None: unknown).

        Maintained by :meth:`commit_rows` (JSON ``has_negative`` in ``meta``), so
        histogram metrics need not scan the matrix to validate it."""
        return self.get_meta("has_negative")

    # -------------------------------------------------------------- metadata

    def mark_deleted(self, ids: Iterable[int]) -> int:
        """Mark ids deleted; returns how many live rows changed."""
        ids = [int(i) for i in ids]
        with self._write(f"remove {len(ids)} rows") as conn:
            before = conn.total_changes
            conn.executemany("UPDATE images SET deleted = 1 WHERE id = ? AND deleted = 0", [(i,) for i in ids])
            return conn.total_changes - before

    def update_files(self, updates: Sequence[tuple[int, str, int, int]]) -> None:
        """Set ``(path, size, mtime_ns)`` of live rows: ``[(id, path, size, mtime_ns), ...]``
        (a moved/renamed or touched file), in one transaction."""
        if not updates:
            return
        with self._write(f"update {len(updates)} rows") as conn:
            conn.executemany(
                "UPDATE images SET path = ?, size = ?, mtime_ns = ? WHERE id = ?",
                [(self._key(p), s, m, i) for i, p, s, m in updates],
            )

    def set_row_metadata(self, id: int, metadata: Optional[dict]) -> None:
        """Replace the caller's JSON metadata of one live row."""
        text = None if metadata is None else json.dumps(metadata)
        with self._write("set metadata") as conn:
            if conn.execute("UPDATE images SET metadata = ? WHERE id = ? AND deleted = 0",
                            (text, int(id))).rowcount != 1:
                raise NotInIndexError(f"{self.path}: no live image with id {id}")

    def stale_count(self) -> int:
        """Live rows whose vector is of an older descriptor version (``stale``)."""
        with self._read() as conn:
            if self._layout() < 2:
                return 0
            return int(conn.execute("SELECT count(*) FROM images WHERE deleted = 0 AND stale = 1").fetchone()[0])

    def get_meta(self, key: str) -> Any:
        """A JSON value stored in ``meta`` under ``key`` (None if absent)."""
        with self._read():
            value = self._meta(key)
        return None if value is None else json.loads(value)

    def set_meta(self, key: str, value: Any) -> None:
        """Store a JSON value in ``meta`` (``None`` removes the key)."""
        if key in _RESERVED:
            raise ArgumentError(f"meta key {key!r} is reserved")
        with self._write(f"record {key}") as conn:
            if value is None:
                conn.execute("DELETE FROM meta WHERE key = ?", (key,))
            else:
                conn.execute("INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)", (key, json.dumps(value)))

    # ------------------------------------------------------------ relocation

    # ------------------------------------------------------------ generations

    # ------------------------------------------------------------ checking
    def integrity(self) -> list[str]:
        """SQLite's ``PRAGMA integrity_check`` messages (``[]``: the database is sound)."""
        with self._read() as conn:
            try:
                out = [str(r[0]) for r in conn.execute("PRAGMA integrity_check")]
            except sqlite3.DatabaseError as exc:
                return [str(exc)]
        return [] if out == ["ok"] else out

    def row_count(self) -> int:
        """Rows of the ``images`` table (the committed ones)."""
        with self._read() as conn:
            return int(conn.execute("SELECT count(*) FROM images").fetchone()[0])

    # ------------------------------------------------------------ directories
    @property
    def ann_dir(self) -> Path:
        """The HNSW graph's directory (its builds belong to :mod:`fastimg.index.graph`)."""
        return self.path / ANN_DIR
