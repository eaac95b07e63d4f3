"""A handle's view of the committed state, refreshed only when a write commits.

Every call of :class:`fastimg.Index` starts from :meth:`Views.current`: one
SQLite lookup reads the store's ``version``, which every write transaction
bumps (this handle's or another process's).  While it is unchanged, the
previous :class:`View` is returned as is: the committed count and generation,
the memory-mapped vectors, the deleted ids and the ``meta`` values (graph,
whitening, ``has_negative``) are read again only after a commit, and the paths
of the rows already returned as hits are remembered (:meth:`Views.paths`).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np

from fastimg.errors import IndexCorruptError
from fastimg.index.store import State, Store

__all__ = ["View", "Views", "Allowed", "PATHS_REMEMBERED", "FILTERS_REMEMBERED"]

#: Paths of hits remembered per state (forgotten all at once beyond this).
PATHS_REMEMBERED = 65_536
#: ``where`` filters remembered per state (forgotten all at once beyond this).
FILTERS_REMEMBERED = 64


class Allowed:
    """The live rows a ``where`` filter keeps at one state: sorted int64 ``ids``,
    and the mask of the rows it leaves out (made on first use).

    Thread-safe: :meth:`mask` may be computed twice, never seen half-made."""

    def __init__(self, ids: np.ndarray, committed: int):
        self.ids = ids
        self._committed = committed
        self._mask: Optional[np.ndarray] = None

    @property
    def size(self) -> int:
        return int(self.ids.size)

    def mask(self) -> np.ndarray:
        """Boolean ``(committed,)``: True for every row the filter leaves out (deleted rows included)."""
        m = self._mask
        if m is None:
            m = np.ones(self._committed, dtype=bool)
            m[self.ids] = False
            self._mask = m
        return m


@dataclass(frozen=True)
class View:
    """One committed state.

    Attributes
    ----------
    state : State
    vectors : numpy.ndarray
        Read-only ``(state.committed, dim)`` float32 memmap.
    deleted : numpy.ndarray
        Sorted int64 ids of the deleted rows.
    live : int
        Number of live rows.
    meta : dict
        The store's ``meta`` values at this state (see :class:`fastimg.index.store.Snapshot`).
    array : numpy.ndarray
        :attr:`vectors` as a plain ndarray on the same memory.
    paths : dict
        ``id -> path`` of the rows returned as hits at this state (see :meth:`Views.paths`).
    memo : dict
        Values derived from this state on demand (the deleted rows' mask, ``where``
        filters): computed once, never changed (a state never changes).
    """

    state: State
    vectors: np.ndarray
    deleted: np.ndarray
    live: int
    meta: dict
    array: np.ndarray  # vectors as a plain ndarray on the same memory (cheaper to index than a memmap)
    paths: dict = field(default_factory=dict)  # id -> path of rows returned as hits (Views.paths)
    memo: dict = field(default_factory=dict)  # derived on demand: deleted mask, filters

    def get(self, key: str) -> Any:
        """A ``meta`` value (None if absent)."""
        return self.meta.get(key)

    def deleted_mask(self) -> Optional[np.ndarray]:
        """Boolean ``(committed,)`` mask of the deleted rows (None when there are none)."""
        if not self.deleted.size:
            return None
        m = self.memo.get("deleted")
        if m is None:
            m = np.zeros(self.state.committed, dtype=bool)
            m[self.deleted] = True
            self.memo["deleted"] = m
        return m

    def is_live(self, i: int) -> bool:
        """Is ``i`` a live row of this state?"""
        if not 0 <= i < self.state.committed:
            return False
        j = int(np.searchsorted(self.deleted, i))
        return not (j < self.deleted.size and int(self.deleted[j]) == i)

    def remember_filter(self, key: Any, allowed: Allowed) -> Allowed:
        """Keep a filter's rows for this state (bounded: see :data:`FILTERS_REMEMBERED`)."""
        filters = self.memo.setdefault("where", {})
        if len(filters) >= FILTERS_REMEMBERED:
            filters.clear()
        filters[key] = allowed
        return allowed

    def filter(self, key: Any) -> Optional[Allowed]:
        """A filter remembered by :meth:`remember_filter`, or None."""
        return self.memo.get("where", {}).get(key)

    def live_ids(self) -> np.ndarray:
        """Sorted int64 ids of the live rows."""
        keep = np.ones(self.state.committed, dtype=bool)
        keep[self.deleted] = False
        return np.flatnonzero(keep).astype(np.int64)


class Views:
    """The current :class:`View` of one store.

    Thread-safe without a lock: a :class:`View` is immutable once made (its
    memo only gains values computed from it) and the current one is replaced by
    one assignment; two threads may both read a new state, and either result is
    right."""

    def __init__(self, store: Store):
        self._store = store
        self._cur: Optional[View] = None

    def current(self) -> View:
        """The committed state, refreshed when a write committed since it was read
        (inside a :meth:`Store.snapshot`: the state of that snapshot)."""
        for attempt in range(3):
            cur = self._cur
            if cur is not None and cur.state.version == self._store.version():
                return cur
            snap = self._store.read_snapshot()
            st = snap.state
            try:
                if cur is not None and (cur.state.generation, cur.state.committed) == (st.generation, st.committed):
                    vectors = cur.vectors
                else:
                    vectors = self._store.map_vectors(st)
            except IndexCorruptError:
                if attempt == 2:
                    raise
                continue  # a compaction replaced the file between two reads
            self._cur = View(st, vectors, snap.deleted, st.committed - int(snap.deleted.size), snap.meta,
                             np.asarray(vectors))
            return self._cur
        raise AssertionError("unreachable")  # pragma: no cover

    def clear(self) -> None:
        """Forget the view (the next call reads everything again)."""
        self._cur = None

    def paths(self, view: View, ids: list[int]) -> Optional[list[str]]:
        """The paths of ``ids`` (rows of ``view``): remembered for ``view``, read for
        the others (one statement).  None when the ids were renumbered since
        ``view`` was read (a compaction: search again)."""
        known = view.paths
        out = [known.get(i) for i in ids]
        missing = [i for i, p in zip(ids, out) if p is None]
        if missing:
            got = self._store.paths(missing, generation=view.state.generation)
            if got is None:
                return None
            if len(known) + len(missing) > PATHS_REMEMBERED:
                known.clear()
            known.update(zip(missing, got))
            fill = dict(zip(missing, got))
            out = [fill[i] if p is None else p for i, p in zip(ids, out)]
        return out  # type: ignore[return-value]
