"""Rewriting the vector file into a new generation: compaction and re-description (a part of :class:`~fastimg.index.store.Store`)."""
from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Any, Callable, Iterable, Optional

import numpy as np

from fastimg.errors import ArgumentError, IndexCorruptError
from fastimg.index._format import DTYPE, State, _RESERVED, _ROW_CHUNK, _write_error
from fastimg.index._files import write_rows


class StoreGenerations:
    """Rewriting the vector file into a new generation: compaction and re-description (a part of :class:`~fastimg.index.store.Store`).

    A mixin: it uses the connection, locks and state helpers of :class:`~fastimg.index.store.Store`."""

    def _new_generation(self, state: State, write: Callable[[Path], Any], doing: str) -> int:
        """Write ``vectors.<G+1>.f32`` with ``write(path)`` (fsynced by it); on a
        failure the partial file is removed and :class:`IndexWriteError` raised."""
        new_gen = state.generation + 1
        dest = self.vectors_path(new_gen)
        try:
            write(dest)
        except OSError as exc:
            with contextlib.suppress(OSError):
                dest.unlink()
            raise _write_error(dest, exc, doing, f"its {state.committed} committed rows") from None
        except BaseException:
            with contextlib.suppress(OSError):
                dest.unlink()
            raise
        return new_gen

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
            src = self.map_vectors(state)
            new_gen = self._new_generation(
                state, lambda dest: write_rows(dest, src, keep, DTYPE, _ROW_CHUNK, progress),
                f"write the compacted vectors ({live} rows)")
            try:
                with self._write("commit the compaction") as conn:
                    conn.execute("DELETE FROM images WHERE deleted = 1")
                    conn.execute("CREATE TEMP TABLE _renum(old INTEGER PRIMARY KEY, new INTEGER NOT NULL)")
                    conn.execute("INSERT INTO _renum SELECT id, row_number() OVER (ORDER BY id) - 1 FROM images")
                    # two passes through negative ids so the primary key never collides
                    conn.execute("UPDATE images SET id = -1 - (SELECT new FROM _renum WHERE old = images.id)")
                    conn.execute("UPDATE images SET id = -1 - id")
                    conn.execute("DROP TABLE _renum")
                    conn.execute("UPDATE meta SET value = ? WHERE key = 'committed'", (str(live),))
                    conn.execute("UPDATE meta SET value = ? WHERE key = 'generation'", (str(new_gen),))
            except BaseException:
                with contextlib.suppress(OSError):
                    self.vectors_path(new_gen).unlink()
                raise
            del src
            with contextlib.suppress(OSError):
                self.vectors_path(state.generation).unlink()
            return mapping

    def replace_vectors(self, blocks: Iterable[np.ndarray], *, stale: Callable[[], Iterable[int]],
                        meta: dict, progress: Optional[Callable[[int, int], None]] = None) -> int:
        """Write a new generation holding the same rows (ids unchanged) from
        ``blocks`` (float32 ``(n, dim)`` arrays, ``committed`` rows in all), then in one
        transaction switch to it, set the rows ``stale()`` returns (called once the
        blocks are consumed) stale and every other row not stale, and store the
        ``meta`` values (re-description: the new descriptor spec).  Returns the new
        generation."""
        self._require_writable()
        with self._mutex:
            state = self.state()
            negative = [False]

            def write(dest: Path) -> None:
                done = 0
                with open(dest, "wb") as f:
                    for block in blocks:
                        block = np.ascontiguousarray(block, dtype=DTYPE)
                        if block.ndim != 2 or block.shape[1] != self.dim:
                            raise ArgumentError(f"replace_vectors: block of shape {block.shape}, expected (n, {self.dim})")
                        negative[0] |= bool((block < 0).any())
                        f.write(block.tobytes())
                        done += block.shape[0]
                        if progress is not None:
                            progress(done, state.committed)
                    f.flush()
                    os.fsync(f.fileno())
                if done != state.committed:
                    raise ArgumentError(f"replace_vectors: {done} rows written, {state.committed} committed")
                from fastimg.index._files import fsync_dir

                fsync_dir(dest.parent)

            new_gen = self._new_generation(state, write, f"write the re-described vectors ({state.committed} rows)")
            try:
                stale_ids = sorted({int(i) for i in stale()})
                with self._write("commit the re-described vectors") as conn:
                    cur = self._state()
                    if (cur.committed, cur.generation) != (state.committed, state.generation):  # pragma: no cover
                        raise IndexCorruptError(f"{self.path}: the index changed while its vectors were rewritten")
                    conn.execute("UPDATE images SET stale = 0 WHERE stale = 1")
                    conn.executemany("UPDATE images SET stale = 1 WHERE id = ?", [(i,) for i in stale_ids])
                    conn.execute("UPDATE meta SET value = ? WHERE key = 'generation'", (str(new_gen),))
                    conn.execute("INSERT OR REPLACE INTO meta(key, value) VALUES ('has_negative', ?)",
                                 (json.dumps(negative[0]),))
                    for key, value in meta.items():
                        if key in _RESERVED:
                            raise ArgumentError(f"meta key {key!r} is reserved")
                        conn.execute("INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)", (key, json.dumps(value)))
            except BaseException:
                with contextlib.suppress(OSError):
                    self.vectors_path(new_gen).unlink()
                raise
            with contextlib.suppress(OSError):
                self.vectors_path(state.generation).unlink()
            return new_gen
