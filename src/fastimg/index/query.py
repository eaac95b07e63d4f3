"""What a query is: a path, encoded bytes, a BGR array or a vector -> a vector and its "self".

A query becomes ``(vector, self ids, match identical)``:

* a path or name that is **in the index** uses its stored vector (a file whose
  size and mtime changed since it was indexed is described again, unless the
  index's rows are of an older descriptor version: nothing can be described for
  it until a writer re-describes them) and its row is the query's self;
* a path that is not in the index, encoded bytes or a BGR ``uint8`` array is
  described with the descriptor that made the rows of the state searched,
  exactly as ``Index.add`` does (``fastimg.features.registry.describe``);
* a 1-D numeric array of the index dimension is the vector itself (checked as
  :func:`fastimg.search.check_queries` checks queries).

For bytes, arrays and vectors, "self" is the lowest-id live row whose stored
vector is bit-identical to the query vector (``match identical``), found among
the search's candidates.  An *entry* (``Index.similar``: an id, an indexed path
or name) is its stored vector, and its self is exactly its row.  A
``descriptor="custom"`` index cannot describe images: only vectors and indexed
names are queries there.  An int is not a query (``Index.similar`` takes ids).

Lookups read the row and the vector file's generation in one transaction and
compare them with the caller's view: a view older than the row (a compaction
renumbered the ids, or the row was added after the view was read) raises
:class:`Stale`, and the caller reads the state again.  What a lookup found is
remembered for that view (a state never changes; a relative path is keyed with
the current directory), and a batch's paths and names are read in one statement
(:func:`lookup_many`).

``where`` filters (:func:`where_patterns`): a string with a glob character
(``*``, ``?``, ``[``) is a pattern matched against the stored path, anything
else a folder (or file) prefix of it; absolute paths are first put in their
stored form (relative to the index root when under it; the root itself, like
``""`` and ``"."``, keeps every row).  Paths and patterns may be ``str``
(surrogate escapes for bytes that are not UTF-8), path objects or ``bytes``;
they are compared with the stored bytes (:meth:`Store.live_ids_matching`).
Lookups (``Index.similar``, ``in``, ``id_of``, ``entry``, ``vectors_of``) take
a path as ``bytes`` too; ``search()`` does not (bytes are an encoded image there).
"""
from __future__ import annotations

import math
import numbers
import os
from typing import Any, Callable, Iterable, Optional, TypeGuard, Union

import numpy as np

from fastimg.errors import ArgumentError, DescriptorError, ImageError, IndexChangedError, NotInIndexError
from fastimg.index.store import Row, Store
from fastimg.index.view import View
from fastimg.metrics import Metric, get_metric
from fastimg.search import check_queries

__all__ = ["MODES", "Queries", "Stale", "Where", "check_search_args", "check_threshold", "where_patterns",
           "lookup", "lookup_many", "is_id"]

#: The search modes of ``Index.search``.
MODES = ("auto", "exact", "ann")
_ANY_SIGN = get_metric("l2")  # query checks without the histogram metrics' sign check

Where = Union[str, bytes, "os.PathLike[str]", Iterable[Union[str, bytes, "os.PathLike[str]"]], None]


class Stale(IndexChangedError):
    """A lookup found a newer state than the caller's view: read the state again
    (never escapes the index: the search is retried)."""


def check_search_args(k: Any, metric: str, mode: str) -> tuple[int, Metric]:
    """Validated ``(k, Metric)`` of a search call (ArgumentError naming the argument)."""
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or int(k) < 1:
        raise ArgumentError(f"k must be a positive integer; got {k!r}")
    if mode not in MODES:
        raise ArgumentError(f"mode must be one of {MODES}; got {mode!r}")
    return int(k), get_metric(metric)


def check_threshold(threshold: Any) -> Optional[float]:
    """``threshold=`` of a search: None or a finite number (ArgumentError)."""
    if threshold is None:
        return None
    if isinstance(threshold, bool) or not isinstance(threshold, numbers.Real) or not math.isfinite(threshold):
        raise ArgumentError(f"threshold must be a finite number (a minimum similarity or a maximum distance, in "
                            f"the metric's direction) or None; got {threshold!r}")
    return float(threshold)


def is_id(item: Any) -> "TypeGuard[Union[int, np.integer]]":
    """Is ``item`` an integer id (not a bool)?"""
    return isinstance(item, (int, np.integer)) and not isinstance(item, (bool, np.bool_))


def where_patterns(where: Where, store: Store) -> Optional[tuple[tuple[str, ...], tuple[str, ...]]]:
    """``(prefixes, globs)`` of a ``where=`` argument (None: no filter), in the
    stored form of paths (see the module docstring)."""
    if where is None:
        return None
    if isinstance(where, (str, bytes, os.PathLike)):
        items: list[Any] = [where]
    else:
        try:
            items = list(where)
        except TypeError:
            raise ArgumentError(f"where must be a path prefix or glob (str), or a list of them; got "
                                f"{type(where).__name__}") from None
    if not items:
        raise ArgumentError("where is an empty list: give at least one path prefix or glob (or None)")
    prefixes: list[str] = []
    globs: list[str] = []
    for item in items:
        s = os.fsdecode(item) if isinstance(item, (str, bytes, os.PathLike)) else None
        if not isinstance(s, str):
            raise ArgumentError(f"where must be a path prefix or glob (str), or a list of them; got {item!r}")
        if any(c in s for c in "*?["):
            globs.append(store.stored_path(s) if os.path.isabs(s) else s)
            continue
        p = store.stored_path(s) if os.path.isabs(s) else os.path.normpath(s) if s else s
        prefixes.append("" if p == os.curdir else p)  # "", "." or the root itself: every row
    return tuple(prefixes), tuple(globs)


#: Entry lookups (path or name -> row) remembered per state (forgotten all at once beyond this).
LOOKUPS_REMEMBERED = 65_536


def _lookup_key(s: str) -> tuple[str, str]:
    # a relative path names a file relative to the current directory at call time
    return (s, "") if os.path.isabs(s) else (s, os.getcwd())


def _remember(view: View, key: tuple[str, str], row: Optional[Row]) -> None:
    memo = view.memo.setdefault("lookup", {})
    if len(memo) >= LOOKUPS_REMEMBERED:
        memo.clear()
    memo[key] = row


def _check_fresh(store: Store, generation: int, rows: Iterable[Optional[Row]], view: View) -> None:
    if generation != view.state.generation or any(r is not None and r.id >= view.state.committed for r in rows):
        raise Stale(f"{store.path}: the index changed since state {view.state}; read it again")


def lookup(store: Store, item: Any, view: View) -> Optional[Row]:
    """:meth:`Store.find_entry` read in one transaction with the generation;
    :class:`Stale` when ``view`` is older than what was read.  Remembered for
    ``view`` (a state never changes: the next call at the same state reads nothing)."""
    s = os.fsdecode(item)
    key = _lookup_key(s)
    memo = view.memo.get("lookup")
    if memo is not None and key in memo:
        return memo[key]
    with store.snapshot():
        generation = store.state().generation
        row = store.find_entry(s)
    _check_fresh(store, generation, [row], view)
    _remember(view, key, row)
    return row


def lookup_many(store: Store, items: Iterable[Any], view: View) -> None:
    """:func:`lookup` of every path or name among ``items`` in one statement (the
    others are ignored); the rows are remembered for ``view``, where :func:`lookup`
    finds them."""
    memo = view.memo.get("lookup") or {}
    todo: dict[tuple[str, str], tuple[str, str]] = {}  # key -> (as given, stored form)
    for item in items:
        if isinstance(item, (str, os.PathLike)):  # bytes are an encoded image in a search
            s = os.fsdecode(item)
            key = _lookup_key(s)
            if key not in memo and key not in todo:
                todo[key] = (s, store.stored_path(s))
    if len(todo) < 2:
        return  # nothing to gain over lookup()
    with store.snapshot():
        generation = store.state().generation
        found = store.find_live_many(sorted({p for pair in todo.values() for p in pair}))
    rows = {}
    for key, (s, stored) in todo.items():
        row = found.get(s)  # a name, or a path stored as given (Store.find_entry's order)
        if row is None or row.is_file:
            row = found.get(stored) or row
        rows[key] = row
    _check_fresh(store, generation, rows.values(), view)
    for key, row in rows.items():
        _remember(view, key, row)


class Queries:
    """Turns queries into vectors for one index.

    Parameters
    ----------
    store : Store
    descriptor : callable
        Returns the index's descriptor (created on first use).
    custom : bool
        A ``descriptor="custom"`` index (vectors come from the caller).
    """

    def __init__(self, store: Store, descriptor: Callable[[], Any], custom: bool):
        self._store = store
        self._descriptor = descriptor
        self._custom = custom
        self.dim = store.dim

    def vector(self, query: Any, view: View) -> tuple[np.ndarray, Optional[set], bool]:
        """``(float32 vector, ids that are the query itself or None, match-identical flag)``."""
        if type(query) is np.ndarray and query.ndim == 1 and query.dtype.kind == "f":
            return self.check(query)[0], None, True  # a vector (the common case first)
        if isinstance(query, (str, os.PathLike)):
            return self._path_query(os.fspath(query), view)
        if isinstance(query, (bytes, bytearray, memoryview)):
            return self.describe(bytes(query), view), None, True
        if is_id(query) or (isinstance(query, np.ndarray) and query.ndim == 0 and query.dtype.kind in "iu"):
            raise ArgumentError(
                f"search() takes an image (path, bytes, BGR array) or a vector of length {self.dim}; got the "
                f"integer {int(query)}: to search by an indexed entry, use Index.similar({int(query)})"
            )
        arr = np.asarray(query)
        if arr.ndim == 1 and arr.dtype != np.uint8:
            return self.check(arr)[0], None, True
        if arr.ndim == 1:
            raise ArgumentError(
                f"a query vector must be a 1-D float array of length {self.dim} (the index dimension); got a "
                f"uint8 array of shape {arr.shape} (uint8 arrays are images: 2-D or 3-D)"
            )
        return self.describe(arr, view), None, True

    def check(self, q: Any, metric: Optional[Metric] = None) -> np.ndarray:
        """Query vectors as a ``(Q, dim)`` float32 array, validated as the searchers
        validate queries (:func:`fastimg.search.check_queries`; the sign too, for a
        histogram ``metric``)."""
        try:
            return check_queries(q, self.dim, metric or _ANY_SIGN)
        except (TypeError, ValueError) as exc:
            raise ArgumentError(str(exc)) from None

    def check_sign(self, q: np.ndarray, metric: Metric) -> np.ndarray:
        """Vectors from :meth:`vector` / :meth:`batch` (finite, of the index
        dimension), checked non-negative for a histogram ``metric``."""
        return self.check(q, metric) if metric.nonneg else q

    def entry(self, item: Any, view: View) -> tuple[np.ndarray, set, bool]:
        """The stored vector of an entry (a live id, an indexed path or name) and its id."""
        if is_id(item):
            i = int(item)
            if not view.is_live(i):
                raise NotInIndexError(f"{self._store.path}: no live entry with id {i}")
        elif isinstance(item, (str, bytes, os.PathLike)):  # bytes: a path here (search() takes image bytes)
            row = lookup(self._store, item, view)
            if row is None:
                raise NotInIndexError(f"{self._store.path}: not in the index: {os.fsdecode(item)}")
            i = row.id
        else:
            raise ArgumentError(f"an entry is an id (int) or an indexed path or name; got {type(item).__name__}")
        return np.array(view.vectors[i], dtype=np.float32), {i}, False

    def _path_query(self, s: str, view: View) -> tuple[np.ndarray, Optional[set], bool]:
        store = self._store
        row = lookup(store, s, view)
        if row is not None:
            use_stored = not row.is_file
            if row.is_file:
                try:
                    st = os.stat(store.absolute_path_in(row.path, view.get("root")))
                    use_stored = st.st_size == row.size and st.st_mtime_ns == row.mtime_ns
                except OSError:
                    use_stored = True  # the indexed file is gone: its stored vector is the query
                # rows of an older descriptor version (a writer re-describes them): the stored vector
                use_stored = use_stored or self._descriptor.outdated(view) is not None
            if use_stored:
                return np.array(view.vectors[row.id], dtype=np.float32), {row.id}, False
            return self.describe(s, view), {row.id}, False
        if self._custom:
            raise DescriptorError(
                f"{s}: not in this index, and a descriptor='custom' index cannot describe images: "
                "query it by vector or by an indexed name"
            )
        return self.describe(s, view), None, False

    def batch(self, queries: Any, view: View, exclude_self: bool) -> tuple[np.ndarray, list, list]:
        """``(Q x dim float32 matrix, self ids per query, match-identical flags)`` of
        a ``(Q, dim)`` float array or a sequence of queries."""
        arr = queries if isinstance(queries, np.ndarray) else None
        if arr is not None and arr.ndim == 2 and arr.dtype.kind == "f":
            q = self.check(arr)
            return q, [None] * len(q), [exclude_self] * len(q)
        if isinstance(queries, (str, bytes, os.PathLike)) or (isinstance(queries, np.ndarray) and queries.ndim != 2):
            raise ArgumentError("search_batch takes a (Q, dim) array or a sequence of queries; "
                                "use search() for one query")
        queries = list(queries)
        lookup_many(self._store, queries, view)  # the paths and names of the batch: one statement
        vs, selfs, ident = [], [], []
        for qu in queries:
            v, s, m = self.vector(qu, view)
            vs.append(v)
            selfs.append(s if exclude_self else None)
            ident.append(m and exclude_self)
        q = np.stack(vs) if vs else np.zeros((0, self.dim), np.float32)
        return q, selfs, ident

    def describe(self, src: Any, view: Optional[View] = None) -> np.ndarray:
        """The descriptor of an image path, encoded bytes or BGR array (as ``add`` describes
        files), with the descriptor that made the rows of ``view``."""
        if self._custom:
            raise DescriptorError(
                "a descriptor='custom' index cannot describe images: query it by vector or by an indexed name"
            )
        from fastimg.features.registry import describe

        vec = np.asarray(describe(src, self._descriptor(view)), dtype=np.float32).reshape(-1)
        if vec.shape[0] != self.dim or not np.isfinite(vec).all():
            src_name = os.fspath(src) if isinstance(src, (str, os.PathLike)) else "<query>"
            raise ImageError(src_name, "descriptor failed", f"got {vec.shape[0]} values, non-finite or wrong size")
        return vec
