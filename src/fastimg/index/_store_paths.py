"""The root directory and how file paths are stored and resolved; ``relocate`` (a part of :class:`~fastimg.index.store.Store`)."""
from __future__ import annotations

import json
import os
import sqlite3
from pathlib import Path
from typing import Optional, Union

from fastimg.errors import ArgumentError, IndexCorruptError, IndexFormatError
from fastimg.index._format import DATABASE, encode_path


class StorePaths:
    """The root directory and how file paths are stored and resolved; ``relocate`` (a part of :class:`~fastimg.index.store.Store`).

    A mixin: it uses the connection, locks and state helpers of :class:`~fastimg.index.store.Store`."""

    @property
    def root(self) -> Path:
        """Absolute directory that relative image paths are resolved against."""
        return Path(self._root())

    def root_record(self) -> str:
        """The root as recorded: an absolute path, or a path relative to the index directory."""
        with self._read():
            if self._layout() < 2:
                return str(self.manifest["root"])
            value = self._meta("root")
        if value is None:
            raise IndexCorruptError(f"{self.path / DATABASE}: metadata database lacks the 'root' entry")
        return str(json.loads(value))

    def _resolve_root(self, recorded: str) -> str:
        return os.path.normpath(os.path.join(os.path.abspath(self.path), recorded))

    def _root(self) -> str:
        # a writer alone changes the root (relocate): it resolves it once; a reader
        # reads it at each call (one primary-key lookup)
        root = self._root_str
        if root is None:
            root = self._resolve_root(self.root_record())
            if self.writable:
                self._root_str = root
        return root

    def stored_path(self, path: Union[str, os.PathLike]) -> str:
        """How a file path is stored in ``images.path``: relative to :attr:`root` when
        the file lies under it, else absolute."""
        return self._stored(os.path.abspath(os.fspath(path)), self._root())

    @staticmethod
    def _stored(ab: str, root: str) -> str:
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

    def absolute_path_in(self, stored: str, recorded_root: Optional[str]) -> str:
        """:meth:`absolute_path` of a stored file path against a root as recorded in a
        snapshot (``View.get("root")``; None: read the database, as :meth:`absolute_path`),
        without a query of its own: a reader's search by path uses the root of the
        snapshot it searches."""
        if recorded_root is None:
            return self.absolute_path(stored)
        if os.path.isabs(stored):
            return stored
        return os.path.join(self._resolve_root(recorded_root), stored)

    def relocate(self, old: Union[str, os.PathLike], new: Union[str, os.PathLike]) -> int:
        """Files that were under directory ``old`` are now under ``new``: rewrite the
        stored paths (live and deleted rows) and the root when it lies under ``old``,
        in one transaction.

        Returns
        -------
        int
            Number of live images whose path changed (deleted rows are relocated too).

        Raises
        ------
        ArgumentError
            Two live rows would get the same path (nothing is changed then).
        """
        self._require_writable()
        old_s = os.path.normpath(os.path.abspath(os.fspath(old)))
        new_s = os.path.normpath(os.path.abspath(os.fspath(new)))

        def under(p: str) -> Optional[str]:  # the part of p below old, or None
            if p == old_s:
                return ""
            base = old_s if old_s.endswith(os.sep) else old_s + os.sep
            return p[len(base):] if p.startswith(base) else None

        with self._mutex:
            if old_s == new_s:
                return 0
            recorded = self.root_record()
            root = self._resolve_root(recorded)
            rest = under(root)
            new_root = root if rest is None else os.path.normpath(os.path.join(new_s, rest))
            if rest is not None and not os.path.isabs(recorded):
                try:
                    new_recorded = os.path.relpath(new_root, os.path.abspath(self.path))
                except ValueError:  # pragma: no cover - different drives on Windows
                    new_recorded = new_root
            else:
                new_recorded = new_root
            updates: list[tuple[bytes, int]] = []
            moved = 0
            for r in self.all_rows():
                if not r.is_file:
                    continue
                ab = r.path if os.path.isabs(r.path) else os.path.join(root, r.path)
                below = under(ab)
                if below is not None:
                    moved += 0 if r.deleted else 1
                    ab = os.path.join(new_s, below) if below else new_s
                # every row in its stored form for the new root (relative under it, else absolute)
                stored = self._stored(ab, new_root)
                if stored != r.path:
                    updates.append((encode_path(stored), r.id))
            try:
                with self._write("relocate") as conn:
                    if self._layout() < 2:  # pragma: no cover - a writer migrated at open
                        raise IndexFormatError(f"{self.path}: relocate needs format version 2")
                    conn.execute("UPDATE meta SET value = ? WHERE key = 'root'", (json.dumps(new_recorded),))
                    # through unique placeholders first: no row meets another's old path on the way
                    conn.executemany("UPDATE images SET path = ? WHERE id = ?",
                                     [(b"\0relocating\0" + str(i).encode(), i) for _, i in updates])
                    conn.executemany("UPDATE images SET path = ? WHERE id = ?", updates)
            except sqlite3.IntegrityError:
                raise ArgumentError(f"{self.path}: relocating {old_s} to {new_s} would give two live images the same "
                                 f"path (some are indexed under both already); nothing was changed") from None
            self._root_str = None
            return moved
