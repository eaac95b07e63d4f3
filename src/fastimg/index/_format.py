"""The rows and states a :class:`~fastimg.index.store.Store` reads and writes, and how
paths are stored (part of the on-disk format described in :mod:`fastimg.index.store`)."""
from __future__ import annotations

import functools
import errno as _errno
import hashlib
import json
import os
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence, Union

import numpy as np

from fastimg.errors import IndexWriteError

FORMAT_NAME = "fastimg-index"
#: Version of the on-disk format written by this fastimg.
FORMAT_VERSION = 2
#: Format versions a reader opens as they are (older ones need a writer to migrate them).
READ_VERSIONS = frozenset({1, 2})
MANIFEST = "manifest.json"
DATABASE = "meta.sqlite"
LOCKFILE = "lock"
CACHE_DIR = "cache"
ANN_DIR = "ann"
DTYPE = "<f4"
_ROW_CHUNK = 65536  # rows copied per step by compact()

_TABLE = """
CREATE TABLE {name} (
    id INTEGER PRIMARY KEY,
    path BLOB NOT NULL,
    is_file INTEGER NOT NULL,
    size INTEGER,
    mtime_ns INTEGER,
    hash TEXT,
    added REAL NOT NULL,
    deleted INTEGER NOT NULL DEFAULT 0,
    stale INTEGER NOT NULL DEFAULT 0,
    metadata TEXT
);
"""
_INDEXES = """
CREATE UNIQUE INDEX images_live_path ON images(path) WHERE deleted = 0;
CREATE INDEX images_hash ON images(hash) WHERE hash IS NOT NULL;
CREATE INDEX images_deleted ON images(id) WHERE deleted = 1;
"""
_SCHEMA = "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);\n" + _TABLE.format(name="images") + _INDEXES
_COLUMNS = "id, path, is_file, size, mtime_ns, hash, added, deleted, metadata, stale"
_COLUMNS_V1 = "id, path, is_file, size, mtime_ns, hash, added, deleted, metadata, 0"
_RESERVED = frozenset({"format_version", "dim", "committed", "generation", "version"})


def encode_path(path: str) -> bytes:
    """The stored form of a path or name: the UTF-8 bytes of the ``str`` with its
    surrogate escapes turned back into the bytes they stand for (``os.fsencode``
    on a UTF-8 system)."""
    return path.encode("utf-8", "surrogateescape")


def decode_path(value: Union[bytes, str]) -> str:
    """The ``str`` of a stored path (``os.fsdecode`` convention); format 1 stored text."""
    if isinstance(value, str):
        return value
    return bytes(value).decode("utf-8", "surrogateescape")


@dataclass(frozen=True)
class State:
    """The committed state of an index, as read from ``meta.sqlite``.

    Attributes
    ----------
    committed : int
        Number of valid rows in the vector file (ids ``0 .. committed-1``).
    generation : int
        Which vector file is current (bumped by compaction and re-description).
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
        ``has_negative``, ``root``, ``descriptor`` ...), decoded.
    deleted : numpy.ndarray
        Sorted int64 ids of the rows marked deleted.
    """

    state: State
    meta: dict
    deleted: np.ndarray


@dataclass(frozen=True)
class Row:
    """One row of the ``images`` table (``path`` decoded to a ``str``, stored form)."""

    id: int
    path: str
    is_file: bool
    size: Optional[int]
    mtime_ns: Optional[int]
    hash: Optional[str]
    added: float
    deleted: bool
    metadata: Optional[dict]
    stale: bool = False


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
    """BLAKE2b-128 hex digest of a file's bytes (the content hash stored per image).

    Only a regular file is read (opened without waiting for a FIFO's writer): a
    directory, FIFO, device or socket raises :class:`IsADirectoryError` /
    :class:`OSError` (``EINVAL``) instead of hanging or reading forever."""
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0) | getattr(os, "O_CLOEXEC", 0)
    fd = os.open(path, flags)
    try:
        import stat as _stat

        mode = os.fstat(fd).st_mode
        if _stat.S_ISDIR(mode):
            raise IsADirectoryError(_errno.EISDIR, "is a directory", os.fspath(path))
        if not _stat.S_ISREG(mode):
            raise OSError(_errno.EINVAL, "not a regular file", os.fspath(path))
        h = hashlib.blake2b(digest_size=16)
        while True:
            block = os.read(fd, chunk)
            if not block:
                break
            h.update(block)
        return h.hexdigest()
    finally:
        os.close(fd)


@functools.lru_cache(maxsize=64)
def _paths_sql(n: int) -> str:
    """Paths of ``n`` ids, the generation (as id -1) and the root (as id -2), in one statement."""
    return (f"SELECT id, path, is_file FROM images WHERE id IN ({','.join('?' * n)})"
            " UNION ALL SELECT -1, value, 0 FROM meta WHERE key = 'generation'"
            " UNION ALL SELECT -2, value, 0 FROM meta WHERE key = 'root'")


def _row(t: Sequence[Any]) -> Row:
    meta = json.loads(t[8]) if t[8] is not None else None
    return Row(int(t[0]), decode_path(t[1]), bool(t[2]), t[3], t[4], t[5], float(t[6]), bool(t[7]), meta,
               bool(t[9]))


def _write_error(what: Path, exc: BaseException, doing: str, keeps: str) -> IndexWriteError:
    """An :class:`IndexWriteError` for a failed write (the OS error's number kept)."""
    if isinstance(exc, sqlite3.Error):
        code = getattr(exc, "sqlite_errorcode", None)
        full = code == 13 or "full" in str(exc)  # SQLITE_FULL
        num = _errno.ENOSPC if full else _errno.EIO
        why = "no space left on device" if full else str(exc)
    else:
        num = getattr(exc, "errno", None) or _errno.EIO
        why = getattr(exc, "strerror", None) or str(exc)
        if num == _errno.ENOSPC:
            why = "no space left on device"
    err = IndexWriteError(f"{what}: could not {doing} ({why}); nothing of it was committed: the index keeps "
                          f"{keeps}")
    err.errno, err.strerror, err.filename = num, why, os.fspath(what)
    return err
