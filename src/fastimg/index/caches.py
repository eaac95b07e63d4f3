"""The derived arrays of an index (``cache/``): always rebuildable from the vectors.

A cache file is a float32 ``.npy`` named ``<name>.g<G>.n<N>.c<CRC>.npy``: the
array derived from the first ``N`` committed rows of vector file generation
``G``, ``<CRC>`` being the CRC-32 (8 hex digits) of its data (the array's bytes
after the ``.npy`` header).  Rows are never rewritten within a generation, so
the cache of an earlier count of the same generation is a *prefix* of the
current one: when rows are added, only the new rows are derived
(:meth:`Caches.derive`).  A file is written under a temporary name (its space
allocated first: a full disk is an ``OSError``, never a ``SIGBUS`` on a mapped
page) and renamed into place with its checksum in the name, so readers never
see a partial file and the name and the checksum cannot disagree; publishing a
name removes its older versions.  Loading checks the shape and dtype (a cheap
header read); the checksum is verified by :meth:`Caches.verify`
(``fastimg check``), not at every load (that would read the whole file).  An
unreadable or misshapen file is ignored (logged), never an error; an unwritable
directory only costs the cache (the caller derives in memory).  Files named
without a checksum (``<name>.g<G>.n<N>.npy``, written by fastimg 0.1) are read
the same way; ``fastimg check`` reports them as unverifiable.

The names in use:

* ``<metric>-prepared`` and ``<metric>-bias``: the inner-product form of an
  inner-product metric (:func:`fastimg.metrics.prepare_rows`), read by
  :class:`fastimg.search.ExactSearcher` (:meth:`Caches.prepared`);
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
import zlib
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import numpy as np

from fastimg.index.store import State
from fastimg.metrics import prepare_rows

__all__ = ["Caches", "CACHE_DIR", "parse_name", "data_crc"]

log = logging.getLogger("fastimg.index.caches")

#: Directory of the caches inside the index directory.
CACHE_DIR = "cache"
_CHUNK = 65536  # rows derived per step (bounds the temporaries)
_CRC_BYTES = 16 << 20  # bytes checksummed per step
_NAME = re.compile(r"^(?P<name>[A-Za-z0-9_.-]+?)\.g(?P<g>\d+)\.n(?P<n>\d+)(?:\.c(?P<crc>[0-9a-f]{8}))?\.npy$")


def parse_name(filename: str) -> Optional[tuple[str, int, int, Optional[int]]]:
    """``(name, generation, rows, crc or None)`` of a cache file name, or None."""
    m = _NAME.match(filename)
    if m is None:
        return None
    crc = m.group("crc")
    return m.group("name"), int(m.group("g")), int(m.group("n")), None if crc is None else int(crc, 16)


def data_crc(arr: np.ndarray) -> int:
    """CRC-32 of an array's data (C order), read in chunks."""
    flat = arr.reshape(-1)
    step = max(1, _CRC_BYTES // max(1, flat.itemsize))
    crc = 0
    for a in range(0, flat.shape[0], step):
        crc = zlib.crc32(np.ascontiguousarray(flat[a:a + step]), crc)
    return crc

Derive = Callable[[np.ndarray], Sequence[np.ndarray]]


class Caches:
    """The cache files of one index directory.

    Parameters
    ----------
    directory : path-like
        The ``cache/`` directory (created on the first write).
    """

    def __init__(self, directory: "str | os.PathLike[str]"):
        self.dir = Path(directory)

    # ------------------------------------------------------------------ files
    @staticmethod
    def _base(name: str, state: State) -> str:
        if not re.fullmatch(r"[A-Za-z0-9_.-]+", name):
            raise ValueError(f"invalid cache name {name!r}")
        return f"{name}.g{state.generation}.n{state.committed}"

    def _find(self, name: str, state: State) -> Optional[Path]:
        """The file of cache ``name`` for ``state`` (with its checksum in the name, or a
        file of fastimg 0.1 without one), or None."""
        base = self._base(name, state)
        if not self.dir.is_dir():
            return None
        found = None
        for p in self.dir.glob(f"{base}.*npy"):
            parsed = parse_name(p.name)
            if parsed is not None and parsed[:3] == (name, state.generation, state.committed):
                if parsed[3] is not None:
                    return p
                found = p
        return found

    def files(self) -> list[Path]:
        """Every cache file, sorted."""
        return sorted(self.dir.glob("*.npy")) if self.dir.is_dir() else []

    def clear(self, prefix: str = "", keep: Optional[str] = None) -> None:
        """Remove the cache files whose name starts with ``prefix`` (default: all),
        except those starting with ``keep``."""
        if not self.dir.is_dir():
            return
        for q in self.dir.iterdir():
            if q.name.startswith(prefix) and (keep is None or not q.name.startswith(keep)):
                with contextlib.suppress(OSError):
                    q.unlink()

    def load(self, name: str, state: State, shape: tuple[int, ...]) -> Optional[np.ndarray]:
        """Memmap the cache ``name`` valid for ``state`` (None if absent or unusable)."""
        p = self._find(name, state)
        if p is None:
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

    def verify(self, path: Path) -> Optional[str]:
        """What is wrong with one cache file (None: its data matches the checksum in
        its name).  A file without a checksum in its name is reported as such."""
        parsed = parse_name(path.name)
        if parsed is None:
            return "not a cache file name (<name>.g<G>.n<N>.c<CRC>.npy)"
        try:
            arr = np.load(path, mmap_mode="r")
        except (OSError, ValueError) as exc:
            return f"unreadable ({exc})"
        if arr.dtype != np.float32 or arr.ndim < 1 or arr.shape[0] != parsed[2]:
            return f"holds {arr.shape} {arr.dtype}, expected {parsed[2]} float32 rows"
        if parsed[3] is None:
            return "no checksum in its name (written by fastimg 0.1): cannot be verified"
        crc = data_crc(arr)
        if crc != parsed[3]:
            return f"checksum mismatch: data CRC-32 {crc:08x}, name says {parsed[3]:08x}"
        return None

    def best_prefix(self, name: str, state: State, row_shape: tuple[int, ...]) -> Optional[tuple[int, np.ndarray]]:
        """The largest valid cache ``name`` of ``state``'s generation with at most
        ``state.committed`` rows, as ``(rows, memmap)``."""
        if not self.dir.is_dir():
            return None
        best = None
        for p in self.dir.iterdir():
            parsed = parse_name(p.name)
            if (parsed is not None and parsed[0] == name and parsed[1] == state.generation
                    and 0 < parsed[2] <= state.committed and (best is None or parsed[2] > best)):
                best = parsed[2]
        if best is None:
            return None
        arr = self.load(name, State(best, state.generation, 0), (best, *row_shape))
        return None if arr is None else (best, arr)

    def new(self, name: str, state: State, shape: tuple[int, ...]) -> Optional[tuple[Path, np.ndarray]]:
        """A writable float32 ``.npy`` memmap under a temporary name, to be filled
        and passed to :meth:`publish`.  None if the directory is not writable or the
        disk is full (caches are optional; the failure is logged)."""
        base = self._base(name, state)
        tmp = self.dir / f".{base}.{os.getpid()}.{threading.get_ident()}.tmp"
        try:
            self.dir.mkdir(exist_ok=True)
            out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=tuple(shape))
            _allocate(tmp)
        except OSError as exc:
            log.warning("%s: could not write cache (%s)", self.dir / base, exc)
            self.discard(tmp)
            return None
        return tmp, out

    def publish(self, name: str, state: State, made: tuple[Path, np.ndarray]) -> Optional[Path]:
        """Flush a cache made by :meth:`new` and give it its final name, checksum
        included (atomically); older versions of ``name`` are removed."""
        tmp, out = made
        base = self._base(name, state)
        try:
            if isinstance(out, np.memmap):
                out.flush()
            crc = data_crc(out)
            del out
            p = self.dir / f"{base}.c{crc:08x}.npy"
            os.replace(tmp, p)
        except OSError as exc:
            log.warning("%s: could not write cache (%s)", self.dir / base, exc)
            self.discard(tmp)
            return None
        for q in self.dir.glob(f"{name}.g*.n*.npy"):
            parsed = parse_name(q.name)
            if q != p and parsed is not None and parsed[0] == name:
                with contextlib.suppress(OSError):
                    q.unlink()
        return p

    @staticmethod
    def discard(tmp: Path) -> None:
        """Remove a temporary file made by :meth:`new` (never published)."""
        with contextlib.suppress(OSError):
            tmp.unlink()

    # ------------------------------------------------------------------ derived arrays
    def derive(self, state: State, src: Any, outputs: Sequence[tuple[str, tuple[int, ...]]],
               fn: Derive) -> Optional[list[np.ndarray]]:
        """Memmaps of the caches ``outputs`` (``(name, row_shape)``) derived from the
        rows of ``src`` (``state.committed`` >= 1 of them) by ``fn(block) -> arrays``
        (one per output, in order).

        Loaded when present; else written in chunks of rows, starting from the
        largest cached prefix of the same generation (of every output).  The first
        output is published last: it is only trusted with the others present.
        None if the directory is not writable.
        """
        n = state.committed
        shapes = [(n, *rs) for _, rs in outputs]
        got = [self.load(name, state, shp) for (name, _), shp in zip(outputs, shapes)]
        if all(g is not None for g in got):
            return got
        prev_n, prev = 0, []
        found = self.best_prefix(outputs[0][0], state, outputs[0][1])
        if found is not None:
            rest = [self.load(name, State(found[0], state.generation, 0), (found[0], *rs))
                    for name, rs in outputs[1:]]
            if all(r is not None for r in rest):
                prev_n, prev = found[0], [found[1], *rest]
        made = [self.new(name, state, shp) for (name, _), shp in zip(outputs, shapes)]
        if any(m is None for m in made):
            for m in made:
                if m is not None:
                    self.discard(m[0])
            return None
        try:
            for (_, out), p in zip(made, prev):
                out[:prev_n] = p
            for a in range(prev_n, n, _CHUNK):
                b = min(n, a + _CHUNK)
                for (_, out), part in zip(made, fn(np.asarray(src[a:b], dtype=np.float32))):
                    out[a:b] = part
        except BaseException:
            for tmp, _ in made:
                self.discard(tmp)
            raise
        del prev, found
        for (name, _), m in reversed(list(zip(outputs, made))):
            self.publish(name, state, m)
        del made
        got = [self.load(name, state, shp) for (name, _), shp in zip(outputs, shapes)]
        return got if all(g is not None for g in got) else None

    def prepared(self, metric: str, state: State, src: Any,
                 prefix: str = "") -> tuple[Optional[np.ndarray], Optional[np.ndarray]]:
        """The prepared matrix (and bias, or None) of ``metric`` (an inner-product
        metric) over the rows of ``src``: caches ``<prefix><metric>-prepared`` /
        ``-bias``.  ``(None, None)`` when they cannot be written (the searcher then
        prepares in memory)."""
        _, probe_bias = prepare_rows(metric, np.asarray(src[:1], dtype=np.float32))
        outputs = [(f"{prefix}{metric}-prepared", (int(src.shape[1]),))]
        if probe_bias is not None:
            outputs.append((f"{prefix}{metric}-bias", ()))
        got = self.derive(state, src, outputs, lambda block: prepare_rows(metric, block)[:len(outputs)])
        if got is None:
            return None, None
        return got[0], (got[1] if len(got) > 1 else None)

    def whitened(self, state: State, vectors: Any, fit_id: str, dim: int,
                 transform: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
        """``transform(vectors[:committed])`` (float32, ``(committed, dim)``): the cache
        ``whitened-<fit_id>``, or computed in memory when it cannot be written."""
        n = state.committed
        if n == 0:
            return np.zeros((0, dim), np.float32)
        got = self.derive(state, vectors, [(f"whitened-{fit_id}", (dim,))], lambda block: (transform(block),))
        if got is not None:
            return got[0]
        out = np.empty((n, dim), np.float32)
        for a in range(0, n, _CHUNK):
            out[a:a + _CHUNK] = transform(np.asarray(vectors[a:a + _CHUNK]))
        return out


def _allocate(path: Path) -> None:
    """Give a new file its blocks now (``posix_fallocate``), so that filling its
    memory map cannot fault on a full disk (a ``SIGBUS`` that would kill the
    process); an ``OSError`` (ENOSPC) instead."""
    fallocate = getattr(os, "posix_fallocate", None)
    if fallocate is None:  # pragma: no cover - macOS, Windows
        return
    fd = os.open(path, os.O_RDWR)
    try:
        size = os.fstat(fd).st_size
        if size:
            try:
                fallocate(fd, 0, size)
            except OSError as exc:
                import errno

                if exc.errno in (errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):  # pragma: no cover
                    return  # a file system without it: nothing better to do
                raise
    finally:
        os.close(fd)
