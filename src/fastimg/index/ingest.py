"""Bringing files and vectors into an index: scan, hash, detect moves, commit in batches.

**Incremental add** (:meth:`Ingest.add`): folders are walked (sorted, hidden
entries skipped, files whose extension is in :data:`IMAGE_EXTENSIONS`).  A file
whose size and mtime are unchanged is skipped; a touched file (new mtime, same
content hash) only has its row updated; a modified one is re-extracted (its old
row is marked deleted in the same transaction that commits the new one); a new
path whose content hash matches a file that vanished from the re-indexed
folders is a *move*: its row is kept (same id and vector) and only the path
changes; a new path whose content matches any other indexed row reuses that
row's vector instead of decoding the image again; files that vanished from the
re-indexed folders are marked deleted.  Paths are stored relative to the index
root when the file lies under it (:meth:`fastimg.index.store.Store.stored_path`).

**Crash safety**: rows are committed in batches of ``batch_size``
(:data:`ADD_BATCH`): vectors appended and fsynced, then one SQLite transaction;
a process killed during ``add`` loses at most the batch in flight, and running
``add`` again resumes.  Unreadable files are skipped and reported
(:class:`AddReport`), never fatal.
"""
from __future__ import annotations

import fnmatch
import json
import logging
import os
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping, Optional, Sequence, Union

import numpy as np

from fastimg.errors import DescriptorError, NotInIndexError
from fastimg.index._progress import Progress, progress_callback
from fastimg.index.store import NewRow, Row, Store, file_hash
from fastimg.index.view import View

__all__ = ["IMAGE_EXTENSIONS", "ADD_BATCH", "AddReport", "Ingest"]

log = logging.getLogger("fastimg.index")

PathLike = Union[str, "os.PathLike[str]"]

#: File name extensions (lower case) that :meth:`fastimg.Index.add` picks up in folders.
IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".jpe", ".png", ".bmp", ".dib", ".tif", ".tiff", ".webp", ".gif",
     ".ppm", ".pgm", ".pbm", ".pnm", ".jp2", ".j2k", ".avif", ".heic", ".heif", ".exr", ".hdr", ".sr", ".ras"}
)
#: Rows committed per transaction by :meth:`fastimg.Index.add` (at most this many are lost by a crash).
ADD_BATCH = 256


@dataclass
class AddReport:
    """What :meth:`Index.add` did.

    Attributes
    ----------
    added : int
        New rows (new files, including those whose vector was reused from an
        identical indexed file).
    unchanged : int
        Files already indexed and not modified (same size and mtime, or same content).
    updated : int
        Modified files re-extracted (the old row is marked deleted).
    moved : int
        Renamed/moved files recognised by content hash (same row, new path).
    removed : int
        Indexed files that vanished from the re-indexed folders (marked deleted).
    reused : int
        Of ``added`` + ``updated``, rows whose vector was copied from an identical file.
    skipped : dict of str to str
        Every file that was not indexed, with the reason (``ImageError.reason``,
        e.g. ``"not an image"``, ``"truncated"``, or ``"not found"``).
    ids : list of int
        Ids of the rows added or updated.
    """

    added: int = 0
    unchanged: int = 0
    updated: int = 0
    moved: int = 0
    removed: int = 0
    reused: int = 0
    skipped: dict = field(default_factory=dict)
    ids: list = field(default_factory=list)

    @property
    def n_skipped(self) -> int:
        """Number of skipped files."""
        return len(self.skipped)


@dataclass
class _Item:
    abs: str
    stored: str
    size: int
    mtime_ns: int
    hash: Optional[str] = None
    old: Optional[Row] = None  # live row of this path (modified file)
    source: Optional[int] = None  # id of a row with identical content to copy


class Ingest:
    """Adds and resolves the rows of one index (the writer's side of the store).

    Parameters
    ----------
    store : Store
    descriptor : callable
        Returns the index's descriptor (created on first use).
    view : callable
        Returns the current :class:`~fastimg.index.view.View`.
    """

    def __init__(self, store: Store, descriptor: Callable[[], Any], view: Callable[[], View]):
        self._store = store
        self._descriptor = descriptor
        self._view = view

    # ------------------------------------------------------------------ files
    def add(self, items: Sequence[PathLike], *, recursive: bool, workers: Optional[int], progress: Progress,
            exclude: Sequence[str], batch_size: int) -> AddReport:
        """Index files and folders incrementally (see the module docstring)."""
        report = AddReport()
        files, roots = self.scan(items, recursive, exclude, report)
        self._add_files(files, roots, report, workers, progress, batch_size)
        return report

    def scan(self, items: Sequence[PathLike], recursive: bool, exclude: Sequence[str],
             report: AddReport) -> tuple[list[tuple[str, os.stat_result]], list[str]]:
        """``([(absolute path, stat)], [folders walked])``; what cannot be read goes to ``report.skipped``."""
        files: list[tuple[str, os.stat_result]] = []
        roots: list[str] = []
        seen: set[str] = set()
        index_dir = os.path.abspath(self._store.path)

        def excluded(p: str) -> bool:
            name = os.path.basename(p)
            return any(fnmatch.fnmatch(name, pat) or fnmatch.fnmatch(p, pat) for pat in exclude)

        def take(p: str, st: Optional[os.stat_result] = None) -> None:
            if p in seen or excluded(p):
                return
            seen.add(p)
            try:
                files.append((p, st if st is not None else os.stat(p)))
            except OSError as exc:
                report.skipped[p] = "unreadable" if not isinstance(exc, FileNotFoundError) else "not found"

        def walk(d: str) -> None:
            try:
                it = sorted(os.scandir(d), key=lambda e: e.name)
            except OSError as exc:
                report.skipped[d] = f"unreadable folder ({exc.strerror})"
                return
            for e in it:
                if e.name.startswith("."):
                    continue
                try:
                    if e.is_dir(follow_symlinks=False):
                        if recursive and not excluded(e.path) and os.path.abspath(e.path) != index_dir:
                            walk(e.path)
                    elif e.is_file() and os.path.splitext(e.name)[1].lower() in IMAGE_EXTENSIONS:
                        take(e.path, e.stat())
                except OSError:
                    report.skipped[e.path] = "unreadable"

        for it in items:
            p = os.path.abspath(os.fspath(it))
            if os.path.isdir(p):
                roots.append(p)
                walk(p)
            elif os.path.isfile(p):
                take(p)
            else:
                report.skipped[p] = "not found"
        return files, roots

    def _plan(self, files: list[tuple[str, os.stat_result]], roots: list[str],
              report: AddReport) -> tuple[list[_Item], dict[int, Row]]:
        """Sort the scanned files into unchanged / touched / moved (updated in the
        store now) and to extract; returns the items to extract and the rows whose
        files vanished from ``roots``."""
        store = self._store
        live = {r.path: r for r in store.live_files()}
        todo: list[_Item] = []
        touched: list[tuple[int, str, int, int]] = []
        seen_stored: set[str] = set()
        for ab, st in files:
            stored = store.stored_path(ab)
            seen_stored.add(stored)
            row = live.get(stored)
            if row is not None and row.size == st.st_size and row.mtime_ns == st.st_mtime_ns:
                report.unchanged += 1
                continue
            try:
                digest = file_hash(ab)
            except OSError as exc:
                report.skipped[ab] = "not found" if isinstance(exc, FileNotFoundError) else "unreadable"
                continue
            if row is not None and row.hash == digest:  # touched, same content
                touched.append((row.id, stored, st.st_size, st.st_mtime_ns))
                report.unchanged += 1
                continue
            todo.append(_Item(ab, stored, st.st_size, st.st_mtime_ns, digest, old=row))

        # files that vanished from the folders being re-indexed
        vanished: dict[int, Row] = {}
        for stored, row in live.items():
            if stored in seen_stored:
                continue
            ab = store.absolute_path(stored)
            if any(ab == r or ab.startswith(r.rstrip(os.sep) + os.sep) for r in roots) and not os.path.exists(ab):
                vanished[row.id] = row
        by_hash: dict[str, list[Row]] = {}
        for row in vanished.values():
            if row.hash:
                by_hash.setdefault(row.hash, []).append(row)

        moves: list[tuple[int, str, int, int]] = []
        extract: list[_Item] = []
        for it in todo:
            if it.old is None and it.hash in by_hash and by_hash[it.hash]:
                row = by_hash[it.hash].pop(0)
                del vanished[row.id]
                moves.append((row.id, it.stored, it.size, it.mtime_ns))
                report.moved += 1
                continue
            same = store.find_hash(it.hash) if it.hash else []
            same = [r for r in same if it.old is None or r.id != it.old.id]
            if same:
                it.source = same[0].id
            extract.append(it)
        if touched or moves:
            store.update_files(touched + moves)
        return extract, vanished

    def _add_files(self, files: list[tuple[str, os.stat_result]], roots: list[str], report: AddReport,
                   workers: Optional[int], progress: Progress, batch_size: int) -> None:
        store = self._store
        extract, vanished = self._plan(files, roots, report)
        total = len(extract)
        cb, bar = progress_callback(progress, "indexing")
        done = 0
        try:
            if cb is not None:
                cb(0, total)
            for start in range(0, total, batch_size):
                batch = extract[start:start + batch_size]
                vecs = self._batch_vectors(batch, workers, report)
                ok = [i for i in range(len(batch)) if np.isfinite(vecs[i]).all()]
                for i in range(len(batch)):
                    if i not in ok and batch[i].abs not in report.skipped:
                        report.skipped[batch[i].abs] = "descriptor produced non-finite values"
                if ok:
                    store.append_vectors(vecs[ok])
                    try:
                        ids = store.commit_rows(
                            [NewRow(batch[i].stored, True, batch[i].size, batch[i].mtime_ns, batch[i].hash)
                             for i in ok],
                            delete=[batch[i].old.id for i in ok if batch[i].old is not None],
                        )
                    except BaseException:
                        store.rollback_pending()
                        raise
                    report.ids.extend(ids)
                    for i in ok:
                        if batch[i].old is not None:
                            report.updated += 1
                        else:
                            report.added += 1
                        if batch[i].source is not None:
                            report.reused += 1
                done += len(batch)
                if cb is not None:
                    cb(done, total)
        finally:
            if bar is not None:
                bar.close()
        if vanished:
            report.removed += store.mark_deleted(list(vanished))
        log.info("%s: added %d, updated %d, moved %d, removed %d, unchanged %d, skipped %d", store.path,
                 report.added, report.updated, report.moved, report.removed, report.unchanged, len(report.skipped))

    def _batch_vectors(self, batch: list[_Item], workers: Optional[int], report: AddReport) -> np.ndarray:
        """The batch's vectors (NaN rows for files that failed): copied from an
        identical indexed row, else described."""
        dim = self._store.dim
        vecs = np.full((len(batch), dim), np.nan, dtype=np.float32)
        reuse = [i for i, it in enumerate(batch) if it.source is not None]
        if reuse:
            src = np.array([batch[i].source for i in reuse], dtype=np.int64)
            vecs[reuse] = self._view().vectors[src]
        fresh = [i for i, it in enumerate(batch) if it.source is None]
        if fresh:
            from fastimg.features.registry import describe_many

            desc = self._descriptor()
            paths = [batch[i].abs for i in fresh]
            mat, errors = describe_many(paths, desc, workers=workers, progress=False)
            mat = np.asarray(mat, dtype=np.float32)
            if mat.shape != (len(paths), dim):
                raise DescriptorError(
                    f"descriptor {desc.name!r} returned shape {mat.shape}; the index expects ({len(paths)}, {dim})"
                )
            vecs[fresh] = mat
            for j, err in dict(errors).items():
                report.skipped[batch[fresh[j]].abs] = getattr(err, "reason", str(err))
        return vecs

    # ------------------------------------------------------------------ vectors
    def add_vectors(self, vectors: Any, names: Sequence[str],
                    metadata: Optional[Sequence[Optional[Mapping[str, Any]]]]) -> np.ndarray:
        """Validate and commit vectors computed elsewhere (one transaction); a live
        name is replaced (its old row marked deleted).  Returns the new ids."""
        dim = self._store.dim
        arr = np.asarray(vectors)
        if arr.ndim == 1:
            arr = arr.reshape(1, -1)
        if arr.ndim != 2 or arr.shape[1] != dim:
            raise ValueError(f"vectors must have shape (n, {dim}); got {np.shape(vectors)}")
        if arr.dtype.kind not in "fiu":
            raise ValueError(f"vectors must be numeric; got dtype {arr.dtype}")
        arr = np.ascontiguousarray(arr, dtype=np.float32)
        names = [names] if isinstance(names, (str, bytes)) else list(names)  # type: ignore[list-item]
        if len(names) != arr.shape[0]:
            raise ValueError(f"got {arr.shape[0]} vectors but {len(names)} names")
        for nm in names:
            if not isinstance(nm, str) or not nm:
                raise ValueError(f"names must be non-empty strings; got {nm!r}")
        if len(set(names)) != len(names):
            dup = sorted({n for n in names if names.count(n) > 1})[:5]
            raise ValueError(f"names must be unique; repeated: {dup}")
        bad = np.flatnonzero(~np.isfinite(arr).all(axis=1))
        if bad.size:
            raise ValueError(f"vectors must be finite; row {int(bad[0])} ({names[bad[0]]!r}) is not")
        if metadata is not None:
            metadata = list(metadata)
            if len(metadata) != len(names):
                raise ValueError(f"got {len(names)} names but {len(metadata)} metadata entries")
            for i, m in enumerate(metadata):
                if m is not None:
                    check_json(dict(m), f"metadata[{i}] ({names[i]!r})")
        if arr.shape[0] == 0:
            return np.zeros(0, dtype=np.int64)
        store = self._store
        found = store.find_live_many(names)
        old = [found.get(nm) for nm in names]
        store.append_vectors(arr)
        try:
            ids = store.commit_rows(
                [NewRow(nm, False, metadata=None if metadata is None or metadata[i] is None
                        else dict(metadata[i])) for i, nm in enumerate(names)],
                delete=[r.id for r in old if r is not None],
            )
        except BaseException:
            store.rollback_pending()
            raise
        return np.arange(ids.start, ids.stop, dtype=np.int64)

    # ------------------------------------------------------------------ resolving
    def live_row(self, item: PathLike) -> Optional[Row]:
        """The live row of a name, or of a file path (as given or in stored form)."""
        return self._store.find_entry(item)

    def ids_of(self, items: Iterable[Union[PathLike, int]], view: View) -> list[int]:
        """Sorted live ids of ids, names, file paths and folders (every image under
        it); NotInIndexError naming what is not in the index."""
        dead = set(view.deleted.tolist())
        ids: set[int] = set()
        missing: list[str] = []
        live_rows: Optional[list[Row]] = None
        for item in items:
            if isinstance(item, (bool, np.bool_)):
                raise ValueError(f"remove() takes ids, paths or names; got {item!r}")
            if isinstance(item, (int, np.integer)):
                i = int(item)
                if 0 <= i < view.state.committed and i not in dead:
                    ids.add(i)
                else:
                    missing.append(str(i))
                continue
            row = self.live_row(item)
            if row is not None:
                ids.add(row.id)
                continue
            ab = os.path.abspath(os.fspath(item))
            if os.path.isdir(ab):
                if live_rows is None:
                    live_rows = self._store.live_files()
                under = [r.id for r in live_rows
                         if self._store.absolute_path(r.path).startswith(ab.rstrip(os.sep) + os.sep)]
                if under:
                    ids.update(under)
                    continue
            missing.append(os.fspath(item))
        if missing:
            raise NotInIndexError(
                f"{self._store.path}: not in the index: {', '.join(missing[:5])}"
                + (" ..." if len(missing) > 5 else "") + " (nothing was removed)"
            )
        return sorted(ids)


def check_json(value: Any, what: str) -> None:
    """ValueError naming ``what`` if ``value`` is not JSON-able."""
    try:
        json.dumps(value)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{what} is not JSON-able: {exc}") from None
