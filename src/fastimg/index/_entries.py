"""Looking up indexed entries: by path or id, iteration, metadata, stored vectors and paths (the methods of :class:`~fastimg.Index` and its read-only handles)."""
from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from typing import Iterable, Iterator, Optional, Union
import numpy as np

from fastimg.errors import ArgumentError, ArgumentTypeError, IndexChangedError, NotInIndexError
from fastimg.index._format import Row
from fastimg.index.store import Store
from fastimg.index.query import is_id, lookup
from fastimg.index.view import View
from fastimg.index.whitening import Fit

PathLike = Union[str, bytes, "os.PathLike[str]"]


_ITER_CHUNK = 1024  # entries read per statement while iterating


@dataclass(frozen=True)
class Entry:
    """One indexed image (or ``add_vectors`` vector), as :meth:`Index.entry` returns it.

    Attributes
    ----------
    id : int
        Row id (row ``id`` of :attr:`Index.vectors`).
    path : str
        Absolute path of the image file, or the name given to :meth:`Index.add_vectors`.
    is_file : bool
        Added from a file (else: a vector added with a name).
    size, mtime_ns : int or None
        The file's size and modification time when it was indexed (None for vectors).
    hash : str or None
        BLAKE2b-128 of the file's bytes (None for vectors).
    added : float
        When the row was added (UNIX time).
    deleted : bool
        Marked deleted (only an id can name a deleted row, until :meth:`Index.compact`).
    metadata : dict or None
        The caller's JSON metadata (:meth:`Index.set_metadata`).
    """

    id: int
    path: str
    is_file: bool
    size: Optional[int]
    mtime_ns: Optional[int]
    hash: Optional[str]
    added: float
    deleted: bool
    metadata: Optional[dict]


def _entry(store: Store, r: Row) -> Entry:
    return Entry(r.id, store.absolute_path(r.path, r.is_file), r.is_file, r.size, r.mtime_ns, r.hash, r.added,
                 r.deleted, r.metadata)


class EntryLookups:
    """Looking up indexed entries: by path or id, iteration, metadata, stored vectors and paths (the methods of :class:`~fastimg.Index` and its read-only handles).

    A mixin of :class:`IndexReader`: it relies on that class's attributes."""

    # ------------------------------------------------------------------ lookups
    def __contains__(self, item: object) -> bool:
        """``id in index`` (a live id), ``path in index`` (an indexed file, as given
        or relative to the current directory), ``name in index`` (an
        ``add_vectors`` name).  A path is a ``str`` (surrogate escapes for bytes
        that are not UTF-8, as ``os.fsdecode`` and :meth:`paths` give), a path
        object or ``bytes``; so for every lookup (:meth:`id_of`, :meth:`entry`,
        :meth:`metadata`, :meth:`vectors_of`, :meth:`similar`)."""
        if is_id(item):
            return self._view().is_live(int(item))
        if isinstance(item, (str, bytes, os.PathLike)):
            return self._store.find_entry(item) is not None
        return False

    def id_of(self, item: PathLike) -> int:
        """The id of an indexed file path (as given or relative to the current
        directory) or ``add_vectors`` name.

        Raises
        ------
        NotInIndexError
            ``item`` is not a live entry.
        """
        if not isinstance(item, (str, bytes, os.PathLike)):
            raise ArgumentError(f"id_of() takes a path or a name; got {type(item).__name__} {item!r}")
        row = self._store.find_entry(item)
        if row is None:
            raise NotInIndexError(f"{self.path}: not in the index: {os.fsdecode(item)}")
        return row.id

    def entry(self, item: Union[int, PathLike]) -> Entry:
        """Everything stored about one entry, by id, file path or name.

        An id may name a row marked deleted (``Entry.deleted``; until
        :meth:`compact`); a path or name names the live entry.

        Raises
        ------
        NotInIndexError
            No such id, or no live entry under that path or name.
        """
        if is_id(item):
            (r,) = self._store.rows([int(item)])
        elif isinstance(item, (str, bytes, os.PathLike)):
            found = self._store.find_entry(item)
            if found is None:
                raise NotInIndexError(f"{self.path}: not in the index: {os.fsdecode(item)}")
            r = found
        else:
            raise ArgumentError(f"entry() takes an id (int), a path or a name; got {type(item).__name__}")
        return _entry(self._store, r)

    def __getitem__(self, item: Union[int, PathLike]) -> Entry:
        """``index[id]`` / ``index[path]``: :meth:`entry` (a mapping of ids and paths
        to entries, like ``in``; not a sequence: ids need not be contiguous, use
        ``index.entries(index.live_ids()[a:b])`` for a page)."""
        if isinstance(item, slice):
            raise ArgumentTypeError("an Index is not a sequence: index[id] or index[path] takes one key; "
                                    "for a page use index.entries(index.live_ids()[a:b])")
        return self.entry(item)

    def entries(self, ids: Iterable[int]) -> list[Entry]:
        """:meth:`entry` of many ids, in order, read in one go (e.g. a page of
        ``live_ids()[offset:offset + limit]``).

        Raises
        ------
        NotInIndexError
            An id that is not in the index.
        """
        ids = [int(i) for i in ids]
        return [_entry(self._store, r) for r in self._store.rows(ids)]

    def metadata(self, item: Union[int, PathLike]) -> dict:
        """Everything stored about one entry, by id, path or name, as a dict:
        ``id``, ``path``, ``is_file``, ``size``, ``mtime_ns``, ``hash``, ``added``
        (UNIX time), ``deleted``, ``metadata`` (the caller's).  See :meth:`entry`."""
        return asdict(self.entry(item))

    def __iter__(self) -> Iterator[Entry]:
        """The live entries, in id order, as of the start of the iteration (an
        entry deleted meanwhile is skipped).

        Raises
        ------
        IndexChangedError
            A writer compacted the index (renumbered the ids) meanwhile.
        """
        v = self._view()
        ids = v.live_ids()
        for start in range(0, ids.size, _ITER_CHUNK):
            chunk = ids[start:start + _ITER_CHUNK].tolist()
            with self._store.snapshot():
                generation = self._store.state().generation
                rows = self._store.rows(chunk)
            if generation != v.state.generation:
                raise IndexChangedError(f"{self.path}: the index was compacted while iterating over it (its ids "
                                        "were renumbered); iterate again")
            for r in rows:
                if not r.deleted:
                    yield _entry(self._store, r)

    def vectors_of(self, items: Iterable[Union[int, PathLike]]) -> np.ndarray:
        """The stored vectors of live entries (ids, file paths or names), in order:
        a float32 ``(len(items), dim)`` copy.

        Raises
        ------
        NotInIndexError
            An item that is not a live entry.
        """
        if isinstance(items, (str, bytes, os.PathLike)) or is_id(items):
            items = [items]  # type: ignore[list-item]
        items = list(items)

        def read(v: View, fit: Optional[Fit]) -> np.ndarray:
            ids = []
            for item in items:
                if is_id(item):
                    if not v.is_live(int(item)):
                        raise NotInIndexError(f"{self.path}: no live entry with id {item}")
                    ids.append(int(item))
                elif isinstance(item, (str, bytes, os.PathLike)):
                    row = lookup(self._store, item, v)
                    if row is None:
                        raise NotInIndexError(f"{self.path}: not in the index: {os.fsdecode(item)}")
                    ids.append(row.id)
                else:
                    raise ArgumentError(f"vectors_of() takes ids, paths or names; got {type(item).__name__}")
            return np.array(v.array[np.asarray(ids, dtype=np.int64)], dtype=np.float32).reshape(len(ids), self.dim)

        return self._consistent(read)

    def paths(self, ids: Iterable[int]) -> list[str]:
        """Absolute file paths (or ``add_vectors`` names) of ``ids``, in order.

        Raises
        ------
        NotInIndexError
            An id that is not in the index (for -1, the padding of
            :meth:`search_batch`: use its ``counts`` or :meth:`BatchResult.row`).
        """
        ids = [int(i) for i in ids]
        if any(i < 0 for i in ids):
            raise NotInIndexError(f"{self.path}: no image with id {min(ids)} (-1 is the padding of search_batch's "
                                  "rows: take the first counts[r] ids of row r, or BatchResult.row(r))")
        return self._store.paths(ids)  # type: ignore[return-value]

    def missing_files(self, ids: Optional[Iterable[int]] = None, *, sample: int = 32, warn: bool = True) -> dict:
        """Are the indexed files still where the index says?  Stats the files of
        ``ids`` (e.g. a search's hits), else of up to ``sample`` live rows spread over
        the index; returns ``{"checked", "missing", "examples"}``.  With ``warn``, a
        warning on the ``fastimg.index`` logger when some are missing (once per
        handle), naming the root paths are resolved against and ``relocate``."""
        from fastimg.index.locations import missing_files

        out = missing_files(self._store, self._view(), ids, sample)
        if warn and out["missing"] and not getattr(self, "_warned_missing", False):
            self._warned_missing = True  # (two threads at once may both warn: harmless)
            import logging

            logging.getLogger("fastimg.index").warning(
                "%s: %d of %d indexed files checked do not exist (e.g. %s); relative paths are resolved against "
                "%s: if the files moved, Index.relocate(old, new) / `fastimg relocate OLD NEW`", self.path,
                out["missing"], out["checked"], out["examples"][0], self.root)
        return out
