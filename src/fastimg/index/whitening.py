"""The index's PCA-whitening: fit, clear, load-and-verify, the whitened matrix.

Post-processing of issue 9 (L2 -> PCA-whitening -> L2): a
:class:`fastimg.projection.PCAWhitening` fitted on the live rows is saved
atomically as ``whitening.npz`` in the index directory and recorded in the
store's ``meta`` under ``whitening`` (``{"dim", "power", "n_fit", "rows",
"generation", "fit_id"}``, ``fit_id`` = BLAKE2b of the file).  A handle loads
the file once per fit and checks it against the record: a missing, unreadable or
different file is an :class:`~fastimg.errors.IndexCorruptError` naming it (a
writer between replacing the file and recording it is told apart by the caller,
which retries: :class:`WhiteningMismatch`).  The raw vectors are never modified;
the whitened matrix is the cache ``whitened-<fit_id>`` (:mod:`fastimg.index.caches`),
extended for new rows (transformed with the same fit) and rebuilt after a
compaction.  Whitened vectors are signed, so the histogram metrics are refused.
"""
from __future__ import annotations

import contextlib
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from fastimg.errors import ArgumentError, DescriptorError, IndexCorruptError
from fastimg.index.caches import Caches, Rows, derive_rows
from fastimg.index.store import Store, file_hash
from fastimg.index.view import View
from fastimg.metrics import METRICS, Metric, get_metric
from fastimg.projection import PCAWhitening

__all__ = ["WHITENING_FILE", "Fit", "Whitening", "WhiteningMismatch"]

#: File of the fitted PCA-whitening inside the index directory (see :meth:`fastimg.Index.fit_whitening`).
WHITENING_FILE = "whitening.npz"


def _signed_metrics() -> str:
    """The metrics that take signed vectors (those a whitened index can use), for messages."""
    names = [f"{name!r}" for name, m in METRICS.items() if not m.nonneg]
    return ", ".join(names[:-1]) + " or " + names[-1]


class WhiteningMismatch(IndexCorruptError):
    """``whitening.npz`` is not the recorded fit (a writer may be re-fitting it)."""


@dataclass(frozen=True)
class Fit:
    """The whitening in force: its record and the loaded model."""

    meta: dict  # as stored in meta.sqlite under "whitening"
    model: PCAWhitening

    @property
    def fit_id(self) -> str:
        return str(self.meta["fit_id"])

    @property
    def dim(self) -> int:
        return int(self.meta["dim"])


class Whitening:
    """Fit / clear / load the whitening of one index, and its whitened matrix."""

    def __init__(self, store: Store, caches: Caches):
        self._store = store
        self._caches = caches
        self._fit: Optional[Fit] = None
        self._data: Optional[tuple[tuple, np.ndarray]] = None  # ((generation, rows, fit_id), matrix)
        self._rows: Optional[tuple[tuple, Rows]] = None  # ((generation, fit_id), whitened rows in memory)
        self._lock = threading.Lock()  # builds the whitened matrix once

    @property
    def path(self) -> Path:
        """Where the fit is stored (:data:`WHITENING_FILE` in the index)."""
        return self._store.path / WHITENING_FILE

    def forget(self) -> None:
        """Drop what is held in memory (the files stay)."""
        self._fit = None
        self._data = None
        self._rows = None

    # ------------------------------------------------------------------ reading
    def current(self, view: View) -> Optional[Fit]:
        """The whitening in force at ``view`` (loaded once per fit), or None.

        Raises
        ------
        WhiteningMismatch
            The file's checksum is not the recorded one.
        IndexCorruptError
            The file is missing or unusable.
        """
        meta = view.get("whitening")
        if meta is None:
            return None
        cur = self._fit
        if cur is not None and cur.meta == meta:
            return cur
        path, index_db = self.path, self._store.path / "meta.sqlite"
        try:
            digest = file_hash(path)
        except FileNotFoundError:
            raise IndexCorruptError(
                f"{path}: whitening file missing, but {index_db} records a fit "
                f"(fit_id {meta.get('fit_id')}); call Index.fit_whitening() again or clear_whitening()"
            ) from None
        except OSError as exc:
            raise IndexCorruptError(f"{path}: whitening file unreadable ({exc})") from None
        if digest != meta.get("fit_id"):
            raise WhiteningMismatch(
                f"{path}: whitening file does not match the fit recorded in {index_db} "
                f"(checksum {digest}, expected {meta.get('fit_id')}); retry if a writer is re-fitting it, "
                "else call Index.fit_whitening() again or clear_whitening()"
            )
        try:
            model = PCAWhitening.load(path)
        except DescriptorError as exc:
            raise IndexCorruptError(f"{path}: unusable whitening file: {exc}") from None
        dim = self._store.dim
        if model.input_dim != dim or model.output_dim != int(meta.get("dim", -1)):
            raise IndexCorruptError(
                f"{path}: whitening maps {model.input_dim} -> {model.output_dim} dimensions; expected "
                f"{dim} -> {meta.get('dim')} (index dimension -> recorded output dimension)"
            )
        self._fit = Fit(dict(meta), model)
        return self._fit

    def data(self, view: View, fit: Fit) -> np.ndarray:
        """``transform(vectors[:committed])`` (float32, C-contiguous): memmapped from the
        cache ``whitened-<fit_id>`` when a writer cached every row, else held in
        memory (the cached rows copied once, later rows transformed as they are
        added).  Never writes (see :meth:`publish`)."""
        key = (view.state.generation, view.state.committed, fit.fit_id)
        got = self._data
        if got is not None and got[0] == key:
            return got[1]
        with self._lock:
            got = self._data
            if got is not None and got[0] == key:
                return got[1]
            n = view.state.committed
            if n == 0:
                out = np.zeros((0, fit.dim), np.float32)
            else:
                found = self._caches.prefix([(f"whitened-{fit.fit_id}", (fit.dim,))], view.state)
                if found is not None and found[0] == n:
                    out, self._rows = found[1][0], None
                else:
                    rows = self._rows
                    if rows is None or rows[0] != (view.state.generation, fit.fit_id) or rows[1].n > n:
                        rows = ((view.state.generation, fit.fit_id), Rows((fit.dim,)))
                        if found is not None:
                            rows[1].append(np.asarray(found[1][0]))
                    if rows[1].n < n:
                        derive_rows(view.vectors, rows[1].n, n, lambda block: (fit.model.transform(block),),
                                    [rows[1]])
                    self._rows = rows
                    out = rows[1].view()[:n]
            self._data = (key, out)
            return out

    def publish(self, view: View, fit: Fit) -> None:
        """Writer: cache the whitened rows of ``view`` (only the rows not cached yet
        are transformed)."""
        if view.state.committed:
            self._caches.whitened(view.state, view.vectors, fit.fit_id, fit.dim, fit.model.transform)

    def check_metric(self, m: Metric) -> None:
        """Refuse a metric that needs non-negative vectors (whitened vectors are signed)."""
        if m.nonneg:
            raise ArgumentError(
                f"{self._store.path}: metric {m.name!r} needs non-negative vectors, but a whitening is fitted "
                f"and whitened vectors are signed: use {_signed_metrics()} (or clear_whitening())"
            )

    def info(self, view: View) -> Optional[dict]:
        """The record plus ``stale_rows`` (rows added since the fit), or None."""
        meta = view.get("whitening")
        if meta is None:
            return None
        return dict(meta, stale_rows=max(0, view.state.committed - int(meta.get("rows", 0))))

    # ------------------------------------------------------------------ writing
    def fit(self, view: View, live: np.ndarray, metric: str, dim: Optional[int], power: float,
            sample: Optional[int]) -> dict:
        """Fit on the ``live`` rows of ``view`` (or an evenly spaced ``sample`` of them),
        save the file atomically, record it, drop the caches of other fits."""
        m = get_metric(metric)
        if m.nonneg:
            raise ArgumentError(
                f"{self._store.path}: the index's metric {m.name!r} needs non-negative vectors, but whitened "
                f"vectors are signed; whitening needs an index created with metric {_signed_metrics()}"
            )
        if sample is not None and (isinstance(sample, bool) or not isinstance(sample, (int, np.integer))
                                   or int(sample) < 2):
            raise DescriptorError(f"whitening sample must be an integer >= 2 or None; got {sample!r}")
        model = PCAWhitening(dim=dim, power=power)  # validates dim and power
        if live.size < 2:
            raise DescriptorError(f"{self._store.path}: whitening needs at least 2 live rows; the index has "
                                  f"{live.size}")
        if sample is not None and live.size > int(sample):
            live = live[np.linspace(0, live.size - 1, int(sample)).round().astype(np.int64)]
        model.fit(np.asarray(view.vectors[live], dtype=np.float64))
        final = self.path
        tmp = final.with_name(f".{WHITENING_FILE}.{os.getpid()}.{threading.get_ident()}.tmp.npz")
        try:
            model.save(tmp)
            with open(tmp, "rb") as f:
                os.fsync(f.fileno())
            os.replace(tmp, final)
        except BaseException:
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise
        with contextlib.suppress(OSError):
            fd = os.open(self._store.path, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        meta = {"dim": int(model.output_dim), "power": float(model.power), "n_fit": int(model.n_fit_),
                "rows": int(view.state.committed), "generation": int(view.state.generation),
                "fit_id": file_hash(final)}
        self._store.set_meta("whitening", meta)
        self._fit = Fit(meta, model)
        self._drop_caches(keep=meta["fit_id"])
        return dict(meta)

    def clear(self) -> None:
        """Remove the record (first: readers stop needing the file), the file and its caches."""
        self._store.set_meta("whitening", None)
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        self._fit = None
        self._drop_caches(keep=None)

    def _drop_caches(self, keep: Optional[str]) -> None:
        self._data = None
        self._rows = None
        self._caches.clear("whitened-", keep=None if keep is None else f"whitened-{keep}")

    def renumber(self, mapping: np.ndarray, generation: int) -> None:
        """After a compaction (``mapping[old] = new`` or -1): the fit stays valid; its
        record counts the rows it covers in the new numbering."""
        self._data = None
        self._rows = None
        meta = self._store.get_meta("whitening")
        if meta is not None:
            fit_rows = min(int(meta.get("rows", 0)), mapping.size)
            self._store.set_meta("whitening", dict(meta, rows=int((mapping[:fit_rows] >= 0).sum()),
                                                   generation=generation))
