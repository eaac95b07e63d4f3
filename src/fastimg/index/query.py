"""What a query is: a path, encoded bytes, a BGR array or a vector -> a vector and its "self".

A query becomes ``(vector, self ids, match identical)``:

* a path or name that is **in the index** uses its stored vector (a file whose
  size and mtime changed since it was indexed is described again, unless the
  index's rows are of an older descriptor version: nothing can be described for
  it until a writer re-describes them) and its row is the query's self;
* a path that is not in the index, encoded bytes or a BGR ``uint8`` array is
  described with the descriptor that made the rows of the state searched,
  exactly as ``Index.add`` does (``fastimg.features.registry.describe``);
* a 1-D numeric array of the index dimension is the vector itself.

For bytes, arrays and vectors, "self" is the lowest-id live row whose stored
vector is bit-identical to the query vector (``match identical``), found among
the search's candidates.  A ``descriptor="custom"`` index cannot describe
images: only vectors and indexed names are queries there.
"""
from __future__ import annotations

import os
from typing import Any, Callable, Optional

import numpy as np

from fastimg.errors import DescriptorError, ImageError
from fastimg.index.store import Store
from fastimg.index.view import View
from fastimg.metrics import Metric, get_metric

__all__ = ["MODES", "Queries", "check_search_args"]

#: The search modes of ``Index.search``.
MODES = ("auto", "exact", "ann")


def check_search_args(k: Any, metric: str, mode: str) -> tuple[int, Metric]:
    """Validated ``(k, Metric)`` of a search call (ValueError naming the argument)."""
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or int(k) < 1:
        raise ValueError(f"k must be a positive integer; got {k!r}")
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}; got {mode!r}")
    return int(k), get_metric(metric)


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
        if isinstance(query, (str, os.PathLike)):
            return self._path_query(os.fspath(query), view)
        if isinstance(query, (bytes, bytearray, memoryview)):
            return self.describe(bytes(query), view), None, True
        arr = np.asarray(query)
        if arr.ndim == 1 and arr.dtype.kind in "fiu" and arr.shape[0] == self.dim and arr.dtype != np.uint8:
            vec = arr.astype(np.float32)
            if not np.isfinite(vec).all():
                raise ValueError("query vector must be finite")
            return vec, None, True
        if arr.ndim == 1:
            raise ValueError(
                f"a query vector must be 1-D of length {self.dim} (the index dimension); got shape {arr.shape}"
            )
        return self.describe(arr, view), None, True

    def _path_query(self, s: str, view: View) -> tuple[np.ndarray, Optional[set], bool]:
        store = self._store
        row = store.find_live(s)  # a name, or a path stored as given
        if row is None or row.is_file:
            row = store.find_live(store.stored_path(s)) or row
        if row is not None:
            use_stored = not row.is_file
            if row.is_file:
                try:
                    st = os.stat(store.absolute_path(row.path))
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
            if arr.shape[1] != self.dim:
                raise ValueError(f"query vectors must have shape (Q, {self.dim}); got {arr.shape}")
            q = np.ascontiguousarray(arr, dtype=np.float32)
            if not np.isfinite(q).all():
                raise ValueError("query vectors must be finite")
            return q, [None] * len(q), [exclude_self] * len(q)
        if isinstance(queries, (str, bytes, os.PathLike)) or (isinstance(queries, np.ndarray) and queries.ndim != 2):
            raise ValueError("search_batch takes a (Q, dim) array or a sequence of queries; "
                             "use search() for one query")
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
