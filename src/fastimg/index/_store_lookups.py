"""Read-only lookups of rows, paths and ids (a part of :class:`~fastimg.index.store.Store`)."""
from __future__ import annotations

import json
import os
from typing import Iterable, Optional, Sequence, Union

import numpy as np

from fastimg.errors import NotInIndexError
from fastimg.index._format import Row, _paths_sql, _row, decode_path


class StoreLookups:
    """Read-only lookups of rows, paths and ids (a part of :class:`~fastimg.index.store.Store`).

    A mixin: it uses the connection, locks and state helpers of :class:`~fastimg.index.store.Store`."""

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
        generation and the root: with ``generation`` given, None when it is no
        longer that one (a compaction renumbered the ids since the caller read them).
        """
        ids = [int(i) for i in ids]
        found: dict[int, str] = {}
        current = None
        recorded = None
        isabs = os.path.isabs
        # one statement reads one snapshot: a transaction only for more
        with self._read() if len(ids) > 900 else self._mutex:
            conn = self._db()
            for start in range(0, max(len(ids), 1), 900):
                chunk = ids[start:start + 900]
                for i, path, is_file in conn.execute(_paths_sql(len(chunk)), chunk):
                    if i == -1:
                        current = int(path)
                    elif i == -2:
                        recorded = json.loads(path)
                    else:
                        found[i] = (decode_path(path), is_file)  # type: ignore[assignment]
        if generation is not None and current != generation:
            return None
        if recorded is None:  # format 1: in the manifest
            recorded = self.manifest["root"]
        root = self._resolve_root(recorded)
        prefix = root if root.endswith(os.sep) else root + os.sep
        try:
            out = []
            for i in ids:
                p, is_file = found[i]  # type: ignore[misc]
                out.append(prefix + p if is_file and not isabs(p) else p)  # as absolute_path()
            return out
        except KeyError as exc:
            raise NotInIndexError(f"{self.path}: no image with id {exc.args[0]}") from None

    def _fetch_ids(self, ids: Sequence[int]) -> dict[int, Row]:
        found: dict[int, Row] = {}
        conn = self._db()
        cols = self._cols()
        for start in range(0, len(ids), 900):
            chunk = ids[start:start + 900]
            q = f"SELECT {cols} FROM images WHERE id IN ({','.join('?' * len(chunk))})"
            for t in conn.execute(q, chunk):
                found[int(t[0])] = _row(t)
        return found

    def find_live(self, path: str) -> Optional[Row]:
        """The live row stored under ``path`` (stored form), or None."""
        with self._read():
            t = self._db().execute(
                f"SELECT {self._cols()} FROM images WHERE path = ? AND deleted = 0", (self._key(path),)
            ).fetchone()
        return None if t is None else _row(t)

    def find_entry(self, item: Union[str, bytes, os.PathLike]) -> Optional[Row]:
        """The live row of an ``add_vectors`` name or of a file path (as stored, or
        given as a path to put in :meth:`stored_path` form), or None.  A path is a
        ``str`` (surrogate escapes for bytes that are not UTF-8), a path object or
        ``bytes`` (``os.fsdecode``)."""
        s = os.fsdecode(item)
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
            cols = self._cols()
            for start in range(0, len(paths), 900):
                chunk = [self._key(p) for p in paths[start:start + 900]]
                q = f"SELECT {cols} FROM images WHERE deleted = 0 AND path IN ({','.join('?' * len(chunk))})"
                for t in conn.execute(q, chunk):
                    r = _row(t)
                    out[r.path] = r
        return out

    def find_hash(self, digest: str) -> list[Row]:
        """Rows (live first, then lower id first) whose content hash is ``digest``."""
        with self._read():
            ts = self._db().execute(
                f"SELECT {self._cols()} FROM images WHERE hash = ? ORDER BY deleted, id", (digest,)
            ).fetchall()
        return [_row(t) for t in ts]

    def live_ids_matching(self, prefixes: Sequence[str], globs: Sequence[str]) -> tuple[int, np.ndarray]:
        """``(generation, sorted int64 ids)`` of the live rows whose stored path (or
        name) is one of ``prefixes`` or lies under one (``prefix + os.sep ...``),
        or matches one of ``globs`` (SQLite ``GLOB``), read in one transaction.
        An empty prefix matches every row.  Prefixes and globs are compared in
        the stored form (format 2: the path's bytes, so a name that is not UTF-8
        is matched byte for byte; ``?`` in a glob stands for one UTF-8 character,
        or one byte that is not part of one)."""
        terms: list[str] = []
        spans: list[tuple[str, ...]] = []
        for p in prefixes:
            if not p:
                terms.append("1")
                continue
            p = p.rstrip(os.sep) or os.sep
            under = p if p.endswith(os.sep) else p + os.sep  # "a/b" -> "a/b/" <= path < "a/b0"
            terms.append("path = ? OR (path >= ? AND path < ?)")
            spans.append((p, under, under[:-1] + chr(ord(under[-1]) + 1)))
        for g in globs:
            terms.append("CAST(path AS TEXT) GLOB CAST(? AS TEXT)")  # GLOB matches no BLOB as it is
            spans.append((g,))
        if not terms:
            return self.state().generation, np.zeros(0, np.int64)
        where = " OR ".join(f"({t})" for t in terms)
        with self._read() as conn:
            # bound as stored (format 2: bytes, which compare byte-wise; format 1: text)
            args = [self._key(a) for span in spans for a in span]
            generation = int(conn.execute("SELECT value FROM meta WHERE key = 'generation'").fetchone()[0])
            ids = [t[0] for t in conn.execute(f"SELECT id FROM images WHERE deleted = 0 AND ({where}) ORDER BY id",
                                              args)]
        return generation, np.asarray(ids, dtype=np.int64)

    def live_files(self) -> list[Row]:
        """All live rows added from files."""
        with self._read():
            ts = self._db().execute(
                f"SELECT {self._cols()} FROM images WHERE deleted = 0 AND is_file = 1").fetchall()
        return [_row(t) for t in ts]

    def all_rows(self) -> list[Row]:
        """Every committed row (deleted ones included), by id."""
        with self._read():
            ts = self._db().execute(f"SELECT {self._cols()} FROM images ORDER BY id").fetchall()
        return [_row(t) for t in ts]

    def deleted_ids(self) -> np.ndarray:
        """Sorted int64 ids of the rows marked deleted."""
        with self._read():
            ids = [t[0] for t in self._db().execute("SELECT id FROM images WHERE deleted = 1 ORDER BY id")]
        return np.asarray(ids, dtype=np.int64)
