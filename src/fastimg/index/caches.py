"""The derived arrays of an index (``cache/``): always rebuildable from the vectors.

A cache file is a float32 ``.npy`` named ``<name>.g<G>.n<N>.npy``: the array
derived from the first ``N`` committed rows of vector file generation ``G``.
Rows are never rewritten within a generation, so any cache of the same
generation serves as a *prefix*: its first ``min(N, committed)`` rows are right
for every later (or earlier) state of that generation (:meth:`Caches.prefix`).

**Only writers write caches** (:meth:`Caches.derive`, called by
:meth:`fastimg.Index.flush`, ``close``, ``add`` ...: see
:mod:`fastimg.index._index`); a handle opened read-only never writes into the
index directory.  A search maps the largest cached prefix and derives the rows
after it in memory (:class:`Rows`, kept per handle and extended as rows are
added).  A writer extends a cache from its largest prefix (only the new rows are
derived), writes it under a temporary name and renames it into place (readers
never see a partial file), and removes the older versions once every output is
published.  An unreadable or misshapen file is ignored (logged), never an
error; an unwritable directory only costs the cache.

The names in use:

* ``<metric>-prepared`` and ``<metric>-bias``: the inner-product form of an
  inner-product metric (:func:`fastimg.metrics.prepare_rows`), read by
  :class:`fastimg.search.ExactSearcher` (:meth:`Caches.prepared`); writers keep
  them for the index's default metric;
* ``whitened-<fit_id>``: the vectors transformed by the fitted PCA-whitening
  (:meth:`Caches.whitened`), and ``whitened-<fit_id>-<metric>-prepared`` /
  ``-bias``: its prepared form.
"""
from __future__ import annotations

import contextlib
import logging
import os
import re
import threading
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import numpy as np

from fastimg.index.store import State
from fastimg.metrics import get_metric, prepare_rows

__all__ = ["Caches", "CACHE_DIR", "CACHE_SAVE_ROWS", "Rows", "prepared_outputs", "prepare_fn", "derive_rows"]

log = logging.getLogger("fastimg.index.caches")

#: Directory of the caches inside the index directory.
CACHE_DIR = "cache"
#: A writer extends the caches once this many rows (or 5 % of the rows, whichever
#: is more) are not cached; otherwise on ``Index.flush`` / ``Index.close``.
CACHE_SAVE_ROWS = 20_000
_CHUNK = 65536  # rows derived per step (bounds the temporaries)

Derive = Callable[[np.ndarray], Sequence[np.ndarray]]
Output = tuple[str, tuple[int, ...]]  # (cache name, shape of one row)


def prepared_outputs(metric: str, dim: int, prefix: str = "") -> list[Output]:
    """The cache names of ``metric``'s prepared rows (and bias, for the metrics that have one)."""
    outputs: list[Output] = [(f"{prefix}{metric}-prepared", (int(dim),))]
    if get_metric(metric).bias:
        outputs.append((f"{prefix}{metric}-bias", ()))
    return outputs


class Rows:
    """A float32 array that grows by appending rows (capacity grows by half).

    ``view()`` is the rows appended so far; appending never changes rows already
    appended, so an array returned by ``view()`` stays valid (and unchanged)
    while rows are appended after it.  Not thread-safe for appending (callers
    append under their own lock).
    """

    def __init__(self, row_shape: tuple[int, ...]):
        self._buf = np.empty((0, *row_shape), np.float32)
        self.n = 0

    def reserve(self, rows: int) -> None:
        """Make room for ``rows`` rows in all (growing by half at least)."""
        if rows > self._buf.shape[0]:
            grown = np.empty((max(rows, self._buf.shape[0] * 3 // 2, 1024), *self._buf.shape[1:]), np.float32)
            grown[:self.n] = self._buf[:self.n]
            self._buf = grown

    def append(self, block: np.ndarray) -> None:
        m = block.shape[0]
        self.reserve(self.n + m)
        self._buf[self.n:self.n + m] = block
        self.n += m

    def view(self) -> np.ndarray:
        return self._buf[:self.n]


class Caches:
    """The cache files of one index directory.

    Parameters
    ----------
    directory : path-like
        The ``cache/`` directory (created on the first write).
    writable : bool, default True
        May this handle write caches?  A read-only handle only reads them.
    """

    def __init__(self, directory: "str | os.PathLike[str]", writable: bool = True):
        self.dir = Path(directory)
        self.writable = writable

    # ------------------------------------------------------------------ files
    def _file(self, name: str, state: State) -> Path:
        if not re.fullmatch(r"[A-Za-z0-9_.-]+", name):
            raise ValueError(f"invalid cache name {name!r}")
        return self.dir / f"{name}.g{state.generation}.n{state.committed}.npy"

    def files(self) -> list[Path]:
        """Every cache file, sorted."""
        return sorted(self.dir.glob("*.npy")) if self.dir.is_dir() else []

    def clear(self, prefix: str = "", keep: Optional[str] = None) -> None:
        """Remove the cache files whose name starts with ``prefix`` (default: all),
        except those starting with ``keep`` (writer)."""
        if not self.writable or not self.dir.is_dir():
            return
        for q in self.dir.iterdir():
            if q.name.startswith(prefix) and (keep is None or not q.name.startswith(keep)):
                with contextlib.suppress(OSError):
                    q.unlink()

    def load(self, name: str, state: State, shape: tuple[int, ...]) -> Optional[np.ndarray]:
        """Memmap the cache ``name`` valid for ``state`` (None if absent or unusable)."""
        p = self._file(name, state)
        if not p.is_file():
            return None
        try:
            arr = np.load(p, mmap_mode="r")
        except (OSError, ValueError) as exc:
            log.warning("%s: ignoring unreadable cache (%s)", p, exc)
            return None
        if arr.shape != tuple(shape) or arr.dtype != np.float32:
            log.warning("%s: ignoring cache of shape %s %s (expected %s float32)", p, arr.shape, arr.dtype, shape)
            return None
        return arr

    def _largest(self, name: str, generation: int) -> Optional[int]:
        """Rows of the largest cache file ``name`` of ``generation`` (None: no file)."""
        if not self.dir.is_dir():
            return None
        best = None
        pat = re.compile(rf"^{re.escape(name)}\.g{generation}\.n(\d+)\.npy$")
        with contextlib.suppress(OSError):
            for p in self.dir.iterdir():
                m = pat.match(p.name)
                if m and int(m.group(1)) > 0 and (best is None or int(m.group(1)) > best):
                    best = int(m.group(1))
        return best

    def prefix(self, outputs: Sequence[Output], state: State) -> Optional[tuple[int, list[np.ndarray]]]:
        """The largest cached prefix of ``outputs`` (``(name, row_shape)``, all of
        one row count) usable at ``state``: ``(rows, memmaps)`` with ``rows <=
        state.committed`` rows each (a cache of more rows is cut), or None."""
        if state.committed == 0:
            return None
        best = self._largest(outputs[0][0], state.generation)
        if best is None:
            return None
        at = State(best, state.generation, 0)
        got = [self.load(name, at, (best, *rs)) for name, rs in outputs]
        if any(g is None for g in got):
            return None
        rows = min(best, state.committed)
        return rows, [g[:rows] for g in got]  # type: ignore[index]

    def best_prefix(self, name: str, state: State, row_shape: tuple[int, ...]) -> Optional[tuple[int, np.ndarray]]:
        """``prefix`` of one cache: ``(rows, memmap)`` or None."""
        got = self.prefix([(name, row_shape)], state)
        return None if got is None else (got[0], got[1][0])

    def new(self, name: str, state: State, shape: tuple[int, ...]) -> Optional[tuple[Path, np.ndarray]]:
        """A writable float32 ``.npy`` memmap under a temporary name, to be filled
        and passed to :meth:`publish`.  None if the directory is not writable
        (caches are optional; the failure is logged)."""
        if not self.writable:
            return None
        p = self._file(name, state)
        tmp = p.with_name(f".{p.name}.{os.getpid()}.{threading.get_ident()}.tmp")
        try:
            self.dir.mkdir(exist_ok=True)
            out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=tuple(shape))
        except OSError as exc:
            log.warning("%s: could not write cache (%s)", p, exc)
            self.discard(tmp)
            return None
        return tmp, out

    def publish(self, name: str, state: State, made: tuple[Path, np.ndarray], *, prune: bool = True) -> Optional[Path]:
        """Flush a cache made by :meth:`new` and give it its final name
        (atomically); older versions of ``name`` are removed (``prune``)."""
        tmp, out = made
        p = self._file(name, state)
        try:
            if isinstance(out, np.memmap):
                out.flush()
            del out
            os.replace(tmp, p)
        except OSError as exc:
            log.warning("%s: could not write cache (%s)", p, exc)
            self.discard(tmp)
            return None
        if prune:
            self.prune(name, state)
        return p

    def prune(self, name: str, state: State) -> None:
        """Remove the versions of ``name`` other than ``state``'s."""
        p = self._file(name, state)
        for q in self.dir.glob(f"{name}.g*.n*.npy"):
            if q != p:
                with contextlib.suppress(OSError):
                    q.unlink()

    @staticmethod
    def discard(tmp: Path) -> None:
        """Remove a temporary file made by :meth:`new` (never published)."""
        with contextlib.suppress(OSError):
            tmp.unlink()

    # ------------------------------------------------------------------ derived arrays (writers)
    def derive(self, state: State, src: Any, outputs: Sequence[Output], fn: Derive) -> Optional[list[np.ndarray]]:
        """Writer: memmaps of the caches ``outputs`` (``(name, row_shape)``) derived
        from the rows of ``src`` (``state.committed`` >= 1 of them) by ``fn(block)
        -> arrays`` (one per output, in order).

        Loaded when present; else written in chunks of rows, starting from the
        largest cached prefix of the same generation (of every output).  The first
        output is published last (it is what :meth:`prefix` looks for), and older
        versions are removed only once all are published.  None if the directory
        is not writable.
        """
        n = state.committed
        shapes = [(n, *rs) for _, rs in outputs]
        got = [self.load(name, state, shp) for (name, _), shp in zip(outputs, shapes)]
        if all(g is not None for g in got):
            return got  # type: ignore[return-value]
        if not self.writable:
            return None
        found = self.prefix(outputs, state)
        prev_n, prev = (0, []) if found is None else found
        made = [self.new(name, state, shp) for (name, _), shp in zip(outputs, shapes)]
        if any(m is None for m in made):
            for m in made:
                if m is not None:
                    self.discard(m[0])
            return None
        try:
            for (_, out), p in zip(made, prev):  # type: ignore[misc]
                out[:prev_n] = p
            for a in range(prev_n, n, _CHUNK):
                b = min(n, a + _CHUNK)
                for (_, out), part in zip(made, fn(np.asarray(src[a:b], dtype=np.float32))):  # type: ignore[misc]
                    out[a:b] = part
        except BaseException:
            for tmp, _ in made:  # type: ignore[misc]
                self.discard(tmp)
            raise
        del prev, found
        for (name, _), m in reversed(list(zip(outputs, made))):
            self.publish(name, state, m, prune=False)  # type: ignore[arg-type]
        del made
        for name, _ in outputs:
            self.prune(name, state)
        got = [self.load(name, state, shp) for (name, _), shp in zip(outputs, shapes)]
        return got if all(g is not None for g in got) else None  # type: ignore[return-value]

    def prepared(self, metric: str, state: State, src: Any,
                 prefix: str = "") -> tuple[Optional[np.ndarray], Optional[np.ndarray]]:
        """Writer: the prepared matrix (and bias, or None) of ``metric`` (an
        inner-product metric) over the rows of ``src``, published as the caches
        ``<prefix><metric>-prepared`` / ``-bias``.  ``(None, None)`` when they
        cannot be written."""
        outputs = prepared_outputs(metric, int(src.shape[1]), prefix)
        got = self.derive(state, src, outputs, prepare_fn(metric, len(outputs)))
        if got is None:
            return None, None
        return got[0], (got[1] if len(got) > 1 else None)

    def whitened(self, state: State, vectors: Any, fit_id: str, dim: int,
                 transform: Callable[[np.ndarray], np.ndarray]) -> Optional[np.ndarray]:
        """Writer: ``transform(vectors[:committed])`` published as the cache
        ``whitened-<fit_id>`` (None when it cannot be written)."""
        if state.committed == 0:
            return None
        got = self.derive(state, vectors, [(f"whitened-{fit_id}", (dim,))], lambda block: (transform(block),))
        return None if got is None else got[0]

    def uncached(self, outputs: Sequence[Output], state: State) -> int:
        """Committed rows of ``state`` that the caches ``outputs`` do not cover."""
        found = self.prefix(outputs, state)
        return state.committed - (0 if found is None else found[0])


def prepare_fn(metric: str, outputs: int) -> Derive:
    """``block -> [prepared rows(, bias)]`` of ``metric`` (``outputs``: 1, or 2 with the bias)."""
    def fn(block: np.ndarray) -> list[np.ndarray]:
        prepared, bias = prepare_rows(metric, block)
        return [prepared] if outputs == 1 or bias is None else [prepared, bias]

    return fn


def derive_rows(src: Any, start: int, stop: int, fn: Derive, outs: Sequence[Rows]) -> None:
    """Append ``fn(src[a:b])`` to ``outs`` for the rows ``[start, stop)``, in chunks."""
    for out in outs:
        out.reserve(out.n + stop - start)
    for a in range(start, stop, _CHUNK):
        b = min(stop, a + _CHUNK)
        for out, part in zip(outs, fn(np.asarray(src[a:b], dtype=np.float32))):
            out.append(np.asarray(part, dtype=np.float32))
