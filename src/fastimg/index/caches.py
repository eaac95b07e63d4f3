"""The derived arrays of an index (``cache/``): always rebuildable from the vectors.

A cache file is a float32 ``.npy`` named ``<name>.g<G>.n<N>.c<CRC>.npy``: the
array derived from the first ``N`` committed rows of vector file generation
``G``, ``<CRC>`` being the CRC-32 (8 hex digits) of its data (the array's bytes
after the ``.npy`` header).  Rows are never rewritten within a generation, so
any cache of the same generation serves as a *prefix*: its first ``min(N,
committed)`` rows are right for every later (or earlier) state of that
generation (:meth:`Caches.prefix`).

**Only writers write caches** (:meth:`Caches.derive`, called by
:meth:`fastimg.Index.flush`, ``close``, ``add`` ...: see
:mod:`fastimg.index._index`); a handle opened read-only never writes into the
index directory.  A search maps the largest cached prefix and derives the rows
after it in memory (:class:`Rows`, kept per handle and extended as rows are
added).  A writer extends a cache from its largest prefix (only the new rows are
derived), writes it under a temporary name (its space allocated first: a full
disk is an ``OSError``, never a ``SIGBUS`` on a mapped page) and renames it into
place with its checksum in the name (readers never see a partial file, and the
name and the checksum cannot disagree), and removes the older versions once
every output is published.  Loading checks the shape and dtype (a cheap header
read); the checksum is verified by :meth:`Caches.verify` (``fastimg check``),
not at every load (that would read the whole file).  An unreadable or misshapen
file is ignored (logged), never an error; an unwritable directory only costs
the cache.  Files named without a checksum (``<name>.g<G>.n<N>.npy``, written by
fastimg 0.1) are read the same way; ``fastimg check`` reports them as
unverifiable.

The names in use:

* ``<metric>-prepared`` and ``<metric>-bias``: the inner-product form of an
  inner-product metric (:func:`fastimg.metrics.prepare_rows`), read by
  :class:`fastimg.search.ExactSearcher` (:meth:`Caches.prepared`); writers keep
  them for the index's default metric;
* ``<metric>-<precision>-codes`` / ``-scale`` / ``-err`` / ``-bias`` (precision
  ``float16`` or ``int8``): the reduced-precision copy of those rows
  (:class:`fastimg.precision.ReducedRows`, codes stored as float16 / uint8), what
  the exact scan reads instead of the float32 prepared rows when the index's
  precision is reduced (:meth:`fastimg.Index.set_precision`); writers keep the
  caches of the index's precision only (:func:`scan_outputs`);
* ``whitened-<fit_id>``: the vectors transformed by the fitted PCA-whitening
  (:meth:`Caches.whitened`), and ``whitened-<fit_id>-<metric>-prepared`` /
  ``-bias`` (or ``-<precision>-...``): its prepared form.

A cache's dtype follows from its name (:func:`cache_dtype`): float32, except the
reduced codes.
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

from fastimg.errors import ArgumentError
from fastimg.index.store import State
from fastimg.metrics import get_metric, prepare_rows

__all__ = ["Caches", "CACHE_DIR", "CACHE_SAVE_ROWS", "Rows", "prepared_outputs", "prepare_fn", "derive_rows",
           "parse_name", "data_crc", "reduced_outputs", "reduce_fn", "scan_outputs", "scan_fn", "cache_dtype"]

log = logging.getLogger("fastimg.index.caches")

#: Directory of the caches inside the index directory.
CACHE_DIR = "cache"
#: A writer extends the caches once this many rows (or 5 % of the rows, whichever
#: is more) are not cached; otherwise on ``Index.flush`` / ``Index.close``.
CACHE_SAVE_ROWS = 20_000
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
Output = tuple[str, tuple[int, ...]]  # (cache name, shape of one row)


def prepared_outputs(metric: str, dim: int, prefix: str = "") -> list[Output]:
    """The cache names of ``metric``'s prepared rows (and bias, for the metrics that have one)."""
    outputs: list[Output] = [(f"{prefix}{metric}-prepared", (int(dim),))]
    if get_metric(metric).bias:
        outputs.append((f"{prefix}{metric}-bias", ()))
    return outputs


def reduced_outputs(metric: str, dim: int, precision: str, prefix: str = "") -> list[Output]:
    """The cache names of ``metric``'s reduced rows in ``precision`` (codes, scale,
    err, and bias for the metrics that have one)."""
    width = (int(dim) + 3) // 4 * 4 if precision == "int8" else int(dim)
    base = f"{prefix}{metric}-{precision}"
    outputs: list[Output] = [(f"{base}-codes", (width,)), (f"{base}-scale", ()), (f"{base}-err", ())]
    if get_metric(metric).bias:
        outputs.append((f"{base}-bias", ()))
    return outputs


def scan_outputs(metric: str, dim: int, precision: str, prefix: str = "") -> list[Output]:
    """The caches an exact scan of ``metric`` reads in ``precision`` (a resolved
    one: ``"float32"``, ``"float16"`` or ``"int8"``)."""
    if precision == "float32":
        return prepared_outputs(metric, dim, prefix)
    return reduced_outputs(metric, dim, precision, prefix)


def cache_dtype(name: str) -> np.dtype:
    """The dtype of the cache ``name``: uint8 / float16 for reduced codes, else float32."""
    if name.endswith("-int8-codes"):
        return np.dtype(np.uint8)
    if name.endswith("-float16-codes"):
        return np.dtype(np.float16)
    return np.dtype(np.float32)


class Rows:
    """An array (float32 unless ``dtype`` says) that grows by appending rows
    (capacity grows by half).

    ``view()`` is the rows appended so far; appending never changes rows already
    appended, so an array returned by ``view()`` stays valid (and unchanged)
    while rows are appended after it.  Not thread-safe for appending (callers
    append under their own lock).
    """

    def __init__(self, row_shape: tuple[int, ...], dtype: Any = np.float32):
        self._buf = np.empty((0, *row_shape), dtype)
        self.n = 0

    def reserve(self, rows: int) -> None:
        """Make room for ``rows`` rows in all (growing by half at least)."""
        if rows > self._buf.shape[0]:
            grown = np.empty((max(rows, self._buf.shape[0] * 3 // 2, 1024), *self._buf.shape[1:]), self._buf.dtype)
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
    @staticmethod
    def _base(name: str, state: State) -> str:
        if not re.fullmatch(r"[A-Za-z0-9_.-]+", name):
            raise ArgumentError(f"invalid cache name {name!r}")
        return f"{name}.g{state.generation}.n{state.committed}"

    def _find(self, name: str, state: State) -> Optional[Path]:
        """The file of cache ``name`` for ``state`` (with its checksum in the name, or a
        file of fastimg 0.1 without one), or None."""
        base = self._base(name, state)
        if not self.dir.is_dir():
            return None
        found = None
        with contextlib.suppress(OSError):
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
        except those starting with ``keep`` (writer)."""
        if not self.writable or not self.dir.is_dir():
            return
        for q in self.dir.iterdir():
            if q.name.startswith(prefix) and (keep is None or not q.name.startswith(keep)):
                with contextlib.suppress(OSError):
                    q.unlink()

    def prune_scans(self, metric: str, dim: int, keep: str) -> None:
        """Writer: remove ``metric``'s scan caches (:func:`scan_outputs`, in every
        space) of the precisions other than ``keep``."""
        if not self.writable or not self.dir.is_dir():
            return
        from fastimg.precision import PRECISIONS

        drop = {name for p in PRECISIONS if p != keep for name, _ in scan_outputs(metric, dim, p)}
        for q in self.dir.glob("*.npy"):
            parsed = parse_name(q.name)
            name = parsed[0] if parsed is not None else ""
            if name in drop or any(name.endswith("-" + d) for d in drop):
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
        want = cache_dtype(name)
        if arr.shape != tuple(shape) or arr.dtype != want:
            log.warning("%s: ignoring cache of shape %s %s (expected %s %s)", p, arr.shape, arr.dtype, shape, want)
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

    def _largest(self, name: str, generation: int) -> Optional[int]:
        """Rows of the largest cache file ``name`` of ``generation`` (None: no file)."""
        if not self.dir.is_dir():
            return None
        best = None
        with contextlib.suppress(OSError):
            for p in self.dir.iterdir():
                parsed = parse_name(p.name)
                if (parsed is not None and parsed[0] == name and parsed[1] == generation and parsed[2] > 0
                        and (best is None or parsed[2] > best)):
                    best = parsed[2]
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
        """A writable ``.npy`` memmap (:func:`cache_dtype`) under a temporary name, to be
        filled and passed to :meth:`publish`.  None if the directory is not writable or
        the disk is full (caches are optional; the failure is logged)."""
        if not self.writable:
            return None
        base = self._base(name, state)
        tmp = self.dir / f".{base}.{os.getpid()}.{threading.get_ident()}.tmp"
        try:
            self.dir.mkdir(exist_ok=True)
            out = np.lib.format.open_memmap(tmp, mode="w+", dtype=cache_dtype(name), shape=tuple(shape))
            _allocate(tmp)
        except OSError as exc:
            log.warning("%s: could not write cache (%s)", self.dir / base, exc)
            self.discard(tmp)
            return None
        return tmp, out

    def publish(self, name: str, state: State, made: tuple[Path, np.ndarray], *, prune: bool = True) -> Optional[Path]:
        """Flush a cache made by :meth:`new` and give it its final name, checksum
        included (atomically); older versions of ``name`` are removed (``prune``)."""
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
        if prune:
            self.prune(name, p)
        return p

    def prune(self, name: str, keep: Optional[Path]) -> None:
        """Remove the files of cache ``name`` other than ``keep``."""
        for q in self.dir.glob(f"{name}.g*.n*.npy"):
            parsed = parse_name(q.name)
            if q != keep and parsed is not None and parsed[0] == name:
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
        published = {name: self.publish(name, state, m, prune=False)  # type: ignore[arg-type]
                     for (name, _), m in reversed(list(zip(outputs, made)))}
        del made
        for name, _ in outputs:
            if published[name] is not None:
                self.prune(name, published[name])
        got = [self.load(name, state, shp) for (name, _), shp in zip(outputs, shapes)]
        return got if all(g is not None for g in got) else None  # type: ignore[return-value]

    def prepared(self, metric: str, state: State, src: Any, prefix: str = "",
                 precision: str = "float32") -> Optional[list[np.ndarray]]:
        """Writer: the arrays an exact scan of ``metric`` (an inner-product metric)
        reads in ``precision`` over the rows of ``src`` (:func:`scan_outputs`: the
        prepared matrix and bias, or the reduced codes, scale, err and bias),
        published as caches.  None when they cannot be written."""
        outputs = scan_outputs(metric, int(src.shape[1]), precision, prefix)
        return self.derive(state, src, outputs, scan_fn(metric, precision, len(outputs)))

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


def reduce_fn(metric: str, precision: str, outputs: int) -> Derive:
    """``block -> [codes, scale, err(, bias)]`` of ``metric``'s rows in a reduced
    ``precision`` (``outputs``: 3, or 4 with the bias); row by row, so chunks of
    rows give the rows of the whole (:func:`fastimg.precision.reduce_rows`)."""
    from fastimg.precision import reduce_rows

    def fn(block: np.ndarray) -> list[np.ndarray]:
        red, bias = reduce_rows(metric, block, precision)
        arrays = [red.codes, red.scale, red.err]
        return arrays if outputs == 3 or bias is None else [*arrays, bias]

    return fn


def scan_fn(metric: str, precision: str, outputs: int) -> Derive:
    """The :data:`Derive` of :func:`scan_outputs`."""
    return prepare_fn(metric, outputs) if precision == "float32" else reduce_fn(metric, precision, outputs)


def derive_rows(src: Any, start: int, stop: int, fn: Derive, outs: Sequence[Rows]) -> None:
    """Append ``fn(src[a:b])`` to ``outs`` for the rows ``[start, stop)``, in chunks."""
    for out in outs:
        out.reserve(out.n + stop - start)
    for a in range(start, stop, _CHUNK):
        b = min(stop, a + _CHUNK)
        for out, part in zip(outs, fn(np.asarray(src[a:b], dtype=np.float32))):
            out.append(part)


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
