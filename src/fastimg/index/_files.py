"""File-level steps of :mod:`fastimg.index.store`: durable writes, the manifest's
validation, preparing a directory for a new index, the writer lock file.

The format itself (which files, what they hold) is described and versioned in
:mod:`fastimg.index.store`; these functions take its constants as arguments.
"""
from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import re
import sqlite3
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Optional
from urllib.parse import quote

import numpy as np

from fastimg._fsio import fsync_dir
from fastimg.errors import IndexCorruptError, IndexExistsError, IndexFormatError, IndexLockedError, IndexReadOnlyError

__all__ = ["fsync_dir", "write_json_atomic", "load_manifest", "read_manifest", "prepare_directory", "init_database", "connect",
           "migrate", "write_rows", "acquire_lock", "release_lock"]

log = logging.getLogger("fastimg.index.store")


def write_json_atomic(path: Path, data: dict) -> None:
    """Write ``data`` as JSON to a temporary file, fsync it, rename it to ``path``."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=2, sort_keys=True)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


def load_manifest(manifest_path: Path, *, format_name: str, max_version: int, fastimg_version: str,
                  what: str = "fastimg index", version_name: str = "index format") -> dict:
    """A JSON manifest whose ``format`` is ``format_name`` and whose ``format_version``
    this fastimg reads (IndexFormatError naming the file otherwise); the fields
    beyond these two are the caller's to check."""
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise IndexFormatError(f"{manifest_path}: unreadable manifest ({exc})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != format_name:
        raise IndexFormatError(f"{manifest_path}: not a {what} manifest (no \"format\": \"{format_name}\")")
    version = manifest.get("format_version")
    if not isinstance(version, int) or version < 1:
        raise IndexFormatError(f"{manifest_path}: invalid format_version {version!r}")
    if version > max_version:
        raise IndexFormatError(
            f"{manifest_path}: {version_name} version {version} was written by a newer fastimg; "
            f"this fastimg ({fastimg_version}) reads format versions up to {max_version}: upgrade fastimg"
        )
    return manifest


def read_manifest(manifest_path: Path, *, format_name: str, max_version: int, dtype: str,
                  fastimg_version: str) -> dict:
    """The manifest of an index, validated (IndexFormatError naming the file and the field)."""
    manifest = load_manifest(manifest_path, format_name=format_name, max_version=max_version,
                             fastimg_version=fastimg_version)
    version = manifest["format_version"]
    fields = [("dim", int), ("descriptor", dict), ("metric", str), ("dtype", str)]
    if version == 1:  # format 1 recorded the root here (format 2: in the database)
        fields.append(("root", str))
    for key, typ in fields:
        if not isinstance(manifest.get(key), typ):
            raise IndexFormatError(f"{manifest_path}: field {key!r} missing or not a {typ.__name__}")
    if manifest["dim"] < 1:
        raise IndexFormatError(f"{manifest_path}: invalid dim {manifest['dim']}")
    if manifest["dtype"] != dtype:
        raise IndexFormatError(f"{manifest_path}: unsupported dtype {manifest['dtype']!r} (expected {dtype!r})")
    return manifest


def prepare_directory(path: Path, *, manifest: str, ours: "re.Pattern[str]", lockfile: str) -> None:
    """Make ``path`` an empty directory for a new index: refuse an index or foreign
    files there (FileExistsError), remove the remains of an interrupted create
    (names matching ``ours``; the lock file is kept)."""
    if (path / manifest).exists():
        raise IndexExistsError(f"{path}: an index already exists here; open it with Index.open(path, mode='a')")
    if path.exists():
        if not path.is_dir():
            raise IndexExistsError(f"{path}: exists and is not a directory")
        foreign = [p.name for p in path.iterdir() if not ours.match(p.name)]
        if foreign:
            raise IndexExistsError(
                f"{path}: directory is not empty ({', '.join(sorted(foreign)[:3])} ...); "
                "choose a new or empty directory for the index"
            )
        for p in path.iterdir():
            if p.is_dir():
                for q in p.iterdir():
                    q.unlink()
                p.rmdir()
            elif p.name != lockfile:
                p.unlink()
    path.mkdir(parents=True, exist_ok=True)


def init_database(db: Path, *, schema: str, meta: Iterable[tuple[str, str]], user_version: int) -> None:
    """Create the SQLite database (WAL mode) with ``schema`` and the ``meta`` rows, in one transaction."""
    conn = sqlite3.connect(db, isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.executescript(schema)
        conn.execute("BEGIN")
        conn.executemany("INSERT INTO meta(key, value) VALUES (?, ?)", list(meta))
        conn.execute(f"PRAGMA user_version={int(user_version)}")
        conn.execute("COMMIT")
    finally:
        conn.close()


def connect(db: Path, writable: bool) -> sqlite3.Connection:
    """Open the database of an existing index (never creating a missing one) and
    check it has the ``meta`` entries and the ``images`` table (IndexCorruptError).

    A reader opens it with ``mode=ro``.  SQLite then shares the write-ahead log's
    index (``meta.sqlite-shm``, created beside it when absent).  In a directory
    nobody can write to (a read-only mount, an immutable copy), where that file
    cannot be created, the database is opened ``immutable`` instead: nothing
    can change it there, and SQLite then reads it without any shared file.
    """
    if not db.is_file():
        raise IndexCorruptError(f"{db}: metadata database is missing (the index cannot be used without it)")
    base = f"file:{quote(db.absolute().as_posix())}"
    if writable:
        return _connect(db, base + "?mode=rw", writable)
    try:
        return _connect(db, base + "?mode=ro", writable)
    except IndexCorruptError:
        if os.access(db.parent, os.W_OK):
            raise
    wal = db.with_name(db.name + "-wal")
    if wal.exists() and wal.stat().st_size > 0:
        raise IndexReadOnlyError(
            f"{db}: cannot be read from this read-only directory: its write-ahead log {wal.name} holds "
            "changes that SQLite must merge first (open the index once where it is writable, e.g. "
            "Index.open(path, mode='a'), then make it read-only again)"
        )
    return _connect(db, base + "?mode=ro&immutable=1", writable)


def _connect(db: Path, uri: str, writable: bool) -> sqlite3.Connection:
    conn = None
    try:
        conn = sqlite3.connect(uri, uri=True, isolation_level=None, check_same_thread=False, timeout=30.0)
        if writable:
            conn.execute("PRAGMA synchronous=FULL")
        rows = dict(conn.execute("SELECT key, value FROM meta").fetchall())
        cols = [r[1] for r in conn.execute("PRAGMA table_info(images)")]
        for key in ("dim", "committed", "generation", "version"):
            if key not in rows:
                raise IndexCorruptError(f"{db}: metadata database lacks the {key!r} entry")
        if "id" not in cols or "path" not in cols:
            raise IndexCorruptError(f"{db}: metadata database lacks the images table")
    except sqlite3.DatabaseError as exc:
        if conn is not None:
            conn.close()
        raise IndexCorruptError(f"{db}: unreadable metadata database ({exc})") from None
    except BaseException:
        if conn is not None:
            conn.close()
        raise
    return conn


def migrate(conn: sqlite3.Connection, path: Path, manifest: dict, version: int, target: int,
            migrations: Mapping[int, Callable[[Path, sqlite3.Connection, dict], dict]]) -> dict:
    """Upgrade the index at ``path`` from format ``version`` to ``target`` with
    ``migrations[v]`` (v -> v + 1) in one transaction; returns the new manifest
    (the caller writes it)."""
    manifest = dict(manifest)
    conn.execute("BEGIN IMMEDIATE")
    try:
        while version < target:
            step = migrations.get(version)
            if step is None:
                raise IndexFormatError(f"{path / 'manifest.json'}: no migration from format version {version} to "
                                       f"{version + 1}")
            log.info("%s: migrating index format %d -> %d", path, version, version + 1)
            manifest = step(path, conn, manifest)
            version += 1
            manifest["format_version"] = version
        conn.execute("INSERT OR REPLACE INTO meta(key, value) VALUES ('format_version', ?)", (str(version),))
        conn.execute("UPDATE meta SET value = CAST(value AS INTEGER) + 1 WHERE key = 'version'")  # readers refresh
        conn.execute(f"PRAGMA user_version={version}")
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    return manifest


def write_rows(dest: Path, rows: Any, keep: np.ndarray, dtype: str, chunk: int,
               progress: Optional[Callable[[int, int], Any]] = None) -> None:
    """Write the rows of ``rows`` where ``keep`` is True to a new file ``dest``, in
    chunks, and fsync it (``progress(rows read, rows)`` after each chunk)."""
    n = rows.shape[0]
    with open(dest, "wb") as f:
        for start in range(0, n, chunk):
            block = np.asarray(rows[start:start + chunk])[keep[start:start + chunk]]
            f.write(np.ascontiguousarray(block, dtype=dtype).tobytes())
            if progress is not None:
                progress(min(start + chunk, n), n)
        f.flush()
        os.fsync(f.fileno())
    fsync_dir(dest.parent)


def acquire_lock(index_path: Path, lock_path: Path) -> int:
    """Take the exclusive ``flock`` of the lock file and write our pid in it; returns its fd.

    Raises
    ------
    IndexLockedError
        Another writer holds it (its pid is named).
    IndexReadOnlyError
        The lock file cannot be opened for writing.
    """
    try:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise IndexReadOnlyError(f"{lock_path}: cannot open the writer lock file ({exc.strerror})") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):  # pragma: no cover
            os.close(fd)
            raise
        try:
            holder = os.pread(fd, 64, 0).decode("ascii", "replace").strip() or "unknown"
        finally:
            os.close(fd)
        raise IndexLockedError(
            f"{index_path}: another writer holds the index lock {lock_path} (pid {holder}); "
            "wait for it to finish (searching is not blocked: read-only opens and `fastimg query` work meanwhile)"
        ) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, str(os.getpid()).encode("ascii"), 0)
    return fd


def release_lock(fd: int) -> None:
    """Empty the lock file, release the lock, close the fd."""
    try:
        os.ftruncate(fd, 0)
        fcntl.flock(fd, fcntl.LOCK_UN)
    except OSError:
        pass
    os.close(fd)
