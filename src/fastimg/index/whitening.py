"""The index's linear map: a PCA-whitening or a learned projection - fit, clear, load-and-verify, mapped matrix.

An index has at most **one** linear map, applied to every search (queries and
rows alike; the raw vectors are never modified):

* a PCA-whitening (post-processing of issue 9: L2 -> PCA-whitening -> L2),
  :class:`fastimg.projection.PCAWhitening` fitted on the live rows
  (:meth:`fastimg.Index.fit_whitening`), method ``"pca-whitening"``;
* a projection learned from labels (issue 20, metric learning),
  :class:`fastimg.projection.LinearProjection` from
  :func:`fastimg.learn_projection` on the labelled live rows
  (:meth:`fastimg.Index.fit_projection`), method ``"lda"`` or ``"nca"``.

Fitting one replaces the other.  The fit is saved as a file whose name carries
its checksum (``whitening.<id>.npz`` / ``projection.<id>.npz``, written to a
temporary name, fsynced and renamed) and recorded in the store's ``meta`` under
``whitening`` (``{"method", "file", "dim", "n_fit", "rows", "generation",
"fit_id", ...}``, ``fit_id`` = BLAKE2b of the file; a whitening adds ``power``,
a learned projection ``params`` and ``labels``) in one SQLite transaction: a
kill at any moment leaves either the previous record with its file or the new
record with its file (files no record names are removed by the next fit or
clear).  Records written before versioned names (no ``file``) name
:data:`WHITENING_FILE`.  A handle loads the file once per fit and checks it
against the record: a missing, unreadable or different file is an
:class:`~fastimg.errors.IndexCorruptError` naming it (a writer that replaced the
fit in between is told apart by the caller, which retries:
:class:`WhiteningMismatch`).  The mapped matrix is the cache
``whitened-<fit_id>`` (:mod:`fastimg.index.caches`), extended for new rows
(transformed with the same fit) and rebuilt after a compaction.  Mapped vectors
are signed, so the histogram metrics are refused.
"""
from __future__ import annotations

import contextlib
import os
import re
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Hashable, Optional, Sequence, Union

import numpy as np

from fastimg._fsio import fsync_dir
from fastimg.errors import ArgumentError, DescriptorError, IndexCorruptError
from fastimg.index.caches import Caches, Rows, derive_rows
from fastimg.index.store import Store, file_hash
from fastimg.index.view import View
from fastimg.metrics import METRICS, Metric, get_metric
from fastimg.projection import LinearProjection, PCAWhitening, load_projection

__all__ = ["WHITENING_FILE", "PCA", "Fit", "Whitening", "WhiteningMismatch"]

#: File of a PCA-whitening recorded before fits had versioned file names.
WHITENING_FILE = "whitening.npz"

#: ``method`` of a PCA-whitening record (learned projections: ``"lda"``, ``"nca"``).
PCA = "pca-whitening"

_PREFIXES = ("whitening", "projection")  # file names of fits: <prefix>.<id>.npz (and WHITENING_FILE)
_FILE = re.compile(r"^(whitening|projection)([.-][0-9a-f]+)?\.npz$")  # (whitening-<id>: a pre-release name)

Model = Union[PCAWhitening, LinearProjection]


def _signed_metrics() -> str:
    """The metrics that take signed vectors (those a mapped index can use), for messages."""
    names = [f"{name!r}" for name, m in METRICS.items() if not m.nonneg]
    return ", ".join(names[:-1]) + " or " + names[-1]


def method_of(meta: dict) -> str:
    """The method of a record (records from before learned projections are whitenings)."""
    return str(meta.get("method", PCA))


def _what(method: str) -> str:
    return "whitening" if method == PCA else f"learned projection ({method})"


def _remedy(method: str) -> str:
    return ("call Index.fit_whitening() again or clear_whitening()" if method == PCA else
            "call Index.fit_projection() again or clear_projection()")


class WhiteningMismatch(IndexCorruptError):
    """The fit's file is not the recorded one (a writer may be replacing the fit)."""


@dataclass(frozen=True)
class Fit:
    """The linear map in force: its record and the loaded model."""

    meta: dict  # as stored in meta.sqlite under "whitening"
    model: Model

    @property
    def fit_id(self) -> str:
        return str(self.meta["fit_id"])

    @property
    def dim(self) -> int:
        return int(self.meta["dim"])

    @property
    def method(self) -> str:
        return method_of(self.meta)


class Whitening:
    """Fit / clear / load the linear map of one index (a whitening or a learned
    projection), and its mapped matrix."""

    def __init__(self, store: Store, caches: Caches):
        self._store = store
        self._caches = caches
        self._fit: Optional[Fit] = None
        self._data: Optional[tuple[tuple, np.ndarray]] = None  # ((generation, rows, fit_id), matrix)
        self._rows: Optional[tuple[tuple, Rows]] = None  # ((generation, fit_id), mapped rows in memory)
        self._lock = threading.Lock()  # builds the mapped matrix once

    def file_of(self, meta: dict) -> Path:
        """The file a record names (records without ``file``: :data:`WHITENING_FILE`);
        a record naming anything but a fit file is corrupt."""
        name = str(meta.get("file") or WHITENING_FILE)
        if not _FILE.match(name):
            raise IndexCorruptError(f"{self._store.path / 'meta.sqlite'}: the whitening record names {name!r}, "
                                    "not a fit file")
        return self._store.path / name

    def files(self) -> list[Path]:
        """Every fit file in the index directory (the recorded one and orphans)."""
        return sorted(p for p in self._store.path.iterdir() if _FILE.match(p.name) and p.is_file())

    def orphans(self, view: View) -> list[Path]:
        """Fit files no record names (the remains of an interrupted fit)."""
        meta = view.get("whitening")
        keep = None if meta is None else self.file_of(meta)
        return [p for p in self.files() if p != keep]

    @property
    def path(self) -> Optional[Path]:
        """The file of the fit in force (None when none is fitted)."""
        meta = self._store.get_meta("whitening")
        return None if meta is None else self.file_of(meta)

    def forget(self) -> None:
        """Drop what is held in memory (the files stay)."""
        self._fit = None
        self._data = None
        self._rows = None

    # ------------------------------------------------------------------ reading
    def current(self, view: View) -> Optional[Fit]:
        """The linear map in force at ``view`` (loaded once per fit), or None.

        Raises
        ------
        WhiteningMismatch
            The file is not the recorded one, or is gone while the record changed
            (a writer replaced the fit).
        IndexCorruptError
            The file is missing or unusable.
        """
        meta = view.get("whitening")
        if meta is None:
            return None
        cur = self._fit
        if cur is not None and cur.meta == meta:
            return cur
        method = method_of(meta)
        what, remedy = _what(method), _remedy(method)
        path, index_db = self.file_of(meta), self._store.path / "meta.sqlite"
        try:
            digest = file_hash(path)
        except FileNotFoundError:
            if self._store.get_meta("whitening") != meta:
                raise WhiteningMismatch(f"{path}: the {what} was replaced while reading; retry") from None
            raise IndexCorruptError(
                f"{path}: {what} file missing, but {index_db} records a fit "
                f"(fit_id {meta.get('fit_id')}); {remedy}"
            ) from None
        except OSError as exc:
            raise IndexCorruptError(f"{path}: {what} file unreadable ({exc})") from None
        if digest != meta.get("fit_id"):
            raise WhiteningMismatch(
                f"{path}: {what} file does not match the fit recorded in {index_db} "
                f"(checksum {digest}, expected {meta.get('fit_id')}); retry if a writer is re-fitting it, "
                f"else {remedy}"
            )
        try:
            model = load_projection(path)
        except DescriptorError as exc:
            raise IndexCorruptError(f"{path}: unusable {what} file: {exc}") from None
        kind_ok = isinstance(model, PCAWhitening) == (method == PCA)
        dim = self._store.dim
        if not kind_ok or model.input_dim != dim or model.output_dim != int(meta.get("dim", -1)):
            raise IndexCorruptError(
                f"{path}: {type(model).__name__} maps {model.input_dim} -> {model.output_dim} dimensions; "
                f"expected a {what} mapping {dim} -> {meta.get('dim')} (index dimension -> recorded output "
                "dimension)"
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
        """Writer: cache the mapped rows of ``view`` (only the rows not cached yet
        are transformed)."""
        if view.state.committed:
            self._caches.whitened(view.state, view.vectors, fit.fit_id, fit.dim, fit.model.transform)

    def check_metric(self, m: Metric) -> None:
        """Refuse a metric that needs non-negative vectors (mapped vectors are signed)."""
        if m.nonneg:
            fit = self._fit
            method = PCA if fit is None else fit.method
            clear = "clear_whitening()" if method == PCA else "clear_projection()"
            what = "a whitening" if method == PCA else f"a learned projection ({method})"
            raise ArgumentError(
                f"{self._store.path}: metric {m.name!r} needs non-negative vectors, but {what} is fitted "
                f"and {'whitened' if method == PCA else 'projected'} vectors are signed: use "
                f"{_signed_metrics()} (or {clear})"
            )

    def info(self, view: View, learned: bool) -> Optional[dict]:
        """The record plus ``stale_rows`` (rows added since the fit), or None: of the
        whitening (``learned=False``) or of the learned projection (``learned=True``)."""
        meta = view.get("whitening")
        if meta is None or (method_of(meta) != PCA) != learned:
            return None
        return dict(meta, stale_rows=max(0, view.state.committed - int(meta.get("rows", 0))))

    # ------------------------------------------------------------------ writing
    def _check_signed(self, metric: str, method: str) -> None:
        m = get_metric(metric)
        if m.nonneg:
            adj, what = ("whitened", "whitening") if method == PCA else ("projected", "a learned projection")
            raise ArgumentError(
                f"{self._store.path}: the index's metric {m.name!r} needs non-negative vectors, but {adj} "
                f"vectors are signed; {what} needs an index created with metric {_signed_metrics()}"
            )

    def fit(self, view: View, live: np.ndarray, metric: str, dim: Optional[int], power: float,
            sample: Optional[int]) -> dict:
        """Fit a PCA-whitening on the ``live`` rows of ``view`` (or an evenly spaced
        ``sample`` of them) and install it (:meth:`_install`)."""
        self._check_signed(metric, PCA)
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
        return self._install(view, model, {"method": PCA, "dim": int(model.output_dim),
                                           "power": float(model.power), "n_fit": int(model.n_fit_)})

    def learn(self, view: View, ids: np.ndarray, labels: Sequence[Hashable], metric: str, method: str,
              dim: Optional[int], options: dict, report: dict) -> dict:
        """Learn a projection (:func:`fastimg.learn_projection`) on the rows ``ids``
        of ``view`` labelled ``labels`` and install it; ``report`` (how the labels
        were matched) is kept in the record under ``labels``."""
        from fastimg.learn import learn_projection

        self._check_signed(metric, method)
        model = learn_projection(np.asarray(view.vectors[ids], dtype=np.float64), list(labels), method=method,
                                 dim=dim, **options)
        return self._install(view, model, {"method": model.method, "dim": int(model.output_dim),
                                           "n_fit": int(model.n_fit_), "params": model.params,
                                           "labels": report})

    def _install(self, view: View, model: Model, meta: dict) -> dict:
        """Save ``model`` under a versioned name (temp file, fsync, rename), record it
        with ``meta`` in one transaction, then remove the files of other fits and
        their caches."""
        base = self._store.path
        prefix = "whitening" if meta["method"] == PCA else "projection"
        tmp = base / f".{prefix}.{os.getpid()}.{threading.get_ident()}.tmp.npz"
        try:
            model.save(tmp)
            with open(tmp, "rb") as f:
                os.fsync(f.fileno())
            fit_id = file_hash(tmp)
            final = base / f"{prefix}.{fit_id[:16]}.npz"
            os.replace(tmp, final)
        except BaseException:
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise
        fsync_dir(base)
        meta = {**meta, "file": final.name, "rows": int(view.state.committed),
                "generation": int(view.state.generation), "fit_id": fit_id}
        self._store.set_meta("whitening", meta)  # the commit point
        self._fit = Fit(meta, model)
        self._remove_files(keep=final.name)
        self._drop_caches(keep=fit_id)
        return dict(meta)

    def refit(self, view: View, metric: str) -> Optional[dict]:
        """After the vectors were re-described (or to repair a lost file): a
        PCA-whitening is fitted again with its recorded parameters on the live rows; a
        learned projection, which needs the labels, is cleared with a warning (fit it
        again: ``Index.fit_projection`` / ``fastimg learn``), as is a whitening the
        index no longer has enough rows for.  Returns the new record or None."""
        import logging

        meta = view.get("whitening")
        if meta is None:
            return None
        log = logging.getLogger("fastimg.index")
        if method_of(meta) != PCA:
            log.warning("%s: the learned projection (%s) was cleared: the vectors changed; fit it again with "
                        "Index.fit_projection / fastimg learn", self._store.path, method_of(meta))
            self.clear()
            return None
        live = view.live_ids()
        n_fit = int(meta.get("n_fit", live.size))
        try:
            return self.fit(view, live, metric, int(meta["dim"]), float(meta.get("power", 0.0)),
                            n_fit if n_fit < live.size else None)
        except DescriptorError as exc:
            log.warning("%s: whitening cleared: it cannot be fitted again (%s)", self._store.path, exc)
            self.clear()
            return None

    def clear(self, learned: Optional[bool] = None) -> bool:
        """Remove the record (first: readers stop needing the file), the file and
        its caches - of any fit (``learned=None``), else only of a whitening
        (False) or of a learned projection (True).  Returns whether one was removed."""
        meta = self._store.get_meta("whitening")
        if meta is not None and learned is not None and (method_of(meta) != PCA) != learned:
            return False
        if meta is not None:
            self._store.set_meta("whitening", None)
        self._fit = None
        self._remove_files(keep=None)
        self._drop_caches(keep=None)
        return meta is not None

    def _remove_files(self, keep: Optional[str]) -> None:
        """Writer: remove the fit files no record names (a replaced fit, a killed writer's)."""
        for p in self._store.path.iterdir():
            name = p.name.lstrip(".")
            if p.name != keep and name.endswith(".npz") and name.startswith(_PREFIXES) and p.is_file():
                with contextlib.suppress(OSError):
                    p.unlink()

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


def match_labels(find: Any, pairs: list, base: Optional[Path], where: Path) -> tuple[np.ndarray, list, dict, list]:
    """The index rows of labelled items: ``(ids, labels, report, examples of items not found)``.

    ``find(item)`` is the live id of an item (id, path or name) or None; a
    relative path not found as given is looked up again under ``base`` (a CSV
    file's directory).  Unlabelled items (None, NaN, "") are skipped.  Raises
    :class:`ArgumentError` when no item is in the index, when one image gets two
    different labels, or when the matched images hold fewer than 2 classes.
    """
    by_id: dict = {}
    missing: list = []
    given = 0
    for item, label in pairs:
        if label is None or label == "" or (isinstance(label, float) and label != label):
            continue
        given += 1
        i = find(item)
        if i is None and base is not None and isinstance(item, (str, os.PathLike)) \
                and not os.path.isabs(os.fspath(item)):
            i = find(os.path.join(base, os.fspath(item)))
        if i is None:
            missing.append(item)
            continue
        first = by_id.setdefault(i, (label, item))
        if first[0] != label:
            same = "" if first[1] == item else f" (the same image as {first[1]!r})"
            raise ArgumentError(f"{where}: labels: {item!r}{same} is labelled both {first[0]!r} and {label!r}")
    examples = [os.fspath(m) if isinstance(m, os.PathLike) else m for m in missing[:5]]
    if not by_id:
        raise ArgumentError(
            f"{where}: labels: none of the {given} labelled items is in the index (e.g. {examples}); "
            "name indexed files (as given, relative to the current directory"
            + (f" or to {base}" if base is not None else "") + "), add_vectors names or ids"
        )
    ids = np.fromiter(sorted(by_id), dtype=np.int64, count=len(by_id))
    labels = [by_id[int(i)][0] for i in ids]
    classes = len(set(labels))
    report = {"given": given, "matched": int(ids.size), "not_in_index": len(missing), "classes": classes}
    if classes < 2:
        raise ArgumentError(
            f"{where}: labels: the {ids.size} labelled images found in the index all have the label "
            f"{labels[0]!r}" + (f" ({len(missing)} labelled items are not in the index)" if missing else "")
            + "; learning a projection needs at least 2 classes"
        )
    return ids, labels, report, examples
