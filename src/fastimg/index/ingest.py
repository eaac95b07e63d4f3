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

**Any name**: paths are ``str`` with surrogate escapes for bytes that are not
UTF-8 (``os.fsdecode``), stored as bytes; names with newlines, 255-byte
components and deep paths are indexed like any other.  Entries named like
images that are not regular files (FIFOs, devices, sockets, broken or looping
symbolic links) are reported with the reason (``AddReport.skipped`` /
``details``), never opened for reading.  A file that vanishes, turns into a
directory or a FIFO, or changes between the walk and the read is skipped and
reported (``"changed while indexing"`` when its size or mtime moved during the
read): the next run indexes what is there then.

**Descriptor versions** (:meth:`Ingest.redescribe`, run first by ``Index.add``):
when the index's rows were made by an older version of its descriptor, every
live file is described again into a new vector file, switched to in one commit
together with the new descriptor spec (readers see either the old rows and spec
or the new ones).  Rows that cannot be re-described (file gone, unreadable,
changed since it was indexed) keep their old vector, flagged ``stale``, and are
described again when their file is next indexed; rows added with
``add_vectors`` are flagged too.

**Crash safety**: rows are committed in batches of ``batch_size``
(:data:`ADD_BATCH`): vectors appended and fsynced, then one SQLite transaction;
a process killed during ``add`` loses at most the batch in flight, and running
``add`` again resumes.  Unreadable files are skipped and reported
(:class:`AddReport`), never fatal.
"""
from __future__ import annotations

import errno
import fnmatch
import json
import logging
import os
import stat as _stat
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping, Optional, Sequence, Union

import numpy as np

from fastimg.errors import ArgumentError, ArgumentTypeError, DescriptorError, IndexCorruptError, NotInIndexError
from fastimg.image import broken_link_detail, special_file_detail
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
        e.g. ``"not an image"``, ``"truncated"``, ``"unreadable"`` or ``"not found"``;
        ``"changed while indexing"``).
    details : dict of str to str
        For skipped files, what exactly was wrong when known (``ImageError.detail``,
        e.g. ``"a FIFO, not a regular file"``, ``"broken symbolic link to 'x.jpg'"``).
    ids : list of int
        Ids of the rows added or updated.
    redescribed : int
        Rows described again because the index's descriptor version changed
        (see :meth:`Ingest.redescribe`); 0 otherwise.
    not_redescribed : dict of str to str
        Files of that re-description that kept their old vector (flagged stale;
        described again when indexed again), with the reason.
    """

    added: int = 0
    unchanged: int = 0
    updated: int = 0
    moved: int = 0
    removed: int = 0
    reused: int = 0
    skipped: dict = field(default_factory=dict)
    ids: list = field(default_factory=list)
    details: dict = field(default_factory=dict)
    redescribed: int = 0
    not_redescribed: dict = field(default_factory=dict)

    def skip(self, path: str, reason: str, detail: Optional[str] = None) -> None:
        """Record a skipped file."""
        self.skipped[path] = reason
        if detail:
            self.details[path] = detail
        else:
            self.details.pop(path, None)

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
    descriptor : IndexDescriptor
        The index's descriptor (:class:`fastimg.index.descriptor.IndexDescriptor`).
    view : callable
        Returns the current :class:`~fastimg.index.view.View`.
    """

    def __init__(self, store: Store, descriptor: Callable[[], Any], view: Callable[[], View]):
        self._store = store
        self._descriptor = descriptor
        self._view = view

    # ------------------------------------------------------------------ files
    def add(self, items: Sequence[PathLike], *, recursive: bool, workers: Optional[int], progress: Progress,
            exclude: Sequence[str], batch_size: int, report: Optional[AddReport] = None) -> AddReport:
        """Index files and folders incrementally (see the module docstring)."""
        report = AddReport() if report is None else report
        files, roots = self.scan(items, recursive, exclude, report)
        self._add_files(files, roots, report, workers, progress, batch_size)
        return report

    def scan(self, items: Sequence[PathLike], recursive: bool, exclude: Sequence[str],
             report: AddReport) -> tuple[list[tuple[str, os.stat_result]], list[str]]:
        """``([(absolute path, stat)], [folders walked])``; what cannot be read goes to
        ``report.skipped``: unreadable folders, and entries named like images that are
        not regular files (with the reason)."""
        files: list[tuple[str, os.stat_result]] = []
        roots: list[str] = []
        seen: set[str] = set()
        index_dir = os.path.abspath(self._store.path)

        base = [""]  # the folder being walked: patterns also match paths relative to it

        def excluded(p: str) -> bool:
            names = [os.path.basename(p), p]
            if base[0]:
                names.append(os.path.relpath(p, base[0]))
            return any(fnmatch.fnmatch(name, pat) for name in names for pat in exclude)

        def take(p: str, st: os.stat_result) -> None:
            if p in seen or excluded(p):
                return
            seen.add(p)
            files.append((p, st))

        def other(p: str) -> None:
            """An image-named entry that is not a regular file (or cannot be stat'ed)."""
            if excluded(p):
                return
            why = _not_a_file(p)
            if why is not None:
                report.skip(p, *why)

        def walk(d: str) -> None:
            try:
                it = sorted(os.scandir(d), key=lambda e: e.name)
            except OSError as exc:
                report.skip(d, f"unreadable folder ({exc.strerror})", exc.strerror)
                return
            for e in it:
                if e.name.startswith("."):
                    continue
                try:
                    if e.is_dir(follow_symlinks=False):
                        if recursive and not excluded(e.path) and os.path.abspath(e.path) != index_dir:
                            walk(e.path)
                        continue
                except OSError as exc:
                    report.skip(e.path, "unreadable", exc.strerror)
                    continue
                if os.path.splitext(e.name)[1].lower() not in IMAGE_EXTENSIONS:
                    continue
                try:
                    regular = e.is_file()  # follows a symbolic link
                    st = e.stat() if regular else None
                except OSError:
                    regular, st = False, None
                if regular and st is not None:
                    take(e.path, st)
                else:
                    other(e.path)

        for it in items:
            p = os.path.abspath(os.fspath(it))
            if os.path.isdir(p):
                roots.append(p)
                base[0] = p
                walk(p)
                base[0] = ""
                continue
            try:
                st = os.stat(p)
            except OSError:
                st = None
            if st is not None and _stat.S_ISREG(st.st_mode):
                take(p, st)
            else:
                why = _not_a_file(p)
                report.skip(p, *(why or ("not found", None)))
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
            fresh = row is not None and not row.stale  # a stale row is described again
            if fresh and row.size == st.st_size and row.mtime_ns == st.st_mtime_ns:
                report.unchanged += 1
                continue
            try:
                digest = file_hash(ab)
            except OSError as exc:  # vanished, or no longer a regular file, since the walk
                report.skip(ab, *_os_reason(exc))
                continue
            if fresh and row.hash == digest:  # touched, same content
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
            if row.hash and not row.stale:
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
            same = [r for r in same if not r.stale and (it.old is None or r.id != it.old.id)]
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
                tick = None if cb is None else (lambda d, _t, base=done: cb(base + d, total))
                vecs = self._batch_vectors(batch, workers, report, tick)
                ok = []
                for i, it in enumerate(batch):
                    if not np.isfinite(vecs[i]).all():
                        if it.abs not in report.skipped:
                            report.skip(it.abs, "descriptor produced non-finite values")
                    elif not _same_file(it.abs, it.size, it.mtime_ns):
                        report.skip(it.abs, "changed while indexing",
                                    "the file changed, vanished or was replaced between the walk and the read; "
                                    "the next run indexes it")
                    else:
                        ok.append(i)
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

    def _batch_vectors(self, batch: list[_Item], workers: Optional[int], report: AddReport,
                       tick: Optional[Callable[[int, int], Any]] = None) -> np.ndarray:
        """The batch's vectors (NaN rows for files that failed): copied from an
        identical indexed row, else described (``tick(done, n)`` as images are described,
        so progress moves within a batch, not only at its commit)."""
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
            offset = len(batch) - len(fresh)
            mat, errors = _describe(paths, desc, workers, dim,
                                    None if tick is None else (lambda d, t: tick(offset + d, offset + t)))
            vecs[fresh] = mat
            for j, err in errors.items():
                report.skip(batch[fresh[j]].abs, getattr(err, "reason", str(err)), getattr(err, "detail", None))
        return vecs

    # ------------------------------------------------------------------ descriptor versions
    def redescribe(self, *, workers: Optional[int], progress: Progress, batch_size: int,
                   report: AddReport) -> bool:
        """Writer: if the rows were made by an older version of the index's
        descriptor, describe every live file again into a new vector file and switch
        to it with the new spec in one commit (see the module docstring).  Returns
        whether it did (the caller then rebuilds what derives from the vectors)."""
        store, idesc = self._store, self._descriptor
        view = self._view()
        old = idesc.outdated(view)
        if old is None:
            return False
        desc = idesc.latest(view)
        rows = store.all_rows()
        n = view.state.committed
        if len(rows) != n:  # pragma: no cover - checked at open
            raise IndexCorruptError(f"{store.path}: {len(rows)} rows for {n} committed")
        stale: set[int] = {r.id for r in rows if not r.deleted and not r.is_file}  # add_vectors rows
        total = sum(1 for r in rows if r.is_file and not r.deleted)
        log.info("%s: re-describing %d files: descriptor %r version %d -> %d", store.path, total, desc.name,
                 old[0], old[1])
        cb, bar = progress_callback(progress, "re-describing")
        done = [0]

        def blocks() -> Iterable[np.ndarray]:
            if cb is not None:
                cb(0, total)
            for a in range(0, n, batch_size):
                b = min(n, a + batch_size)
                block = np.array(view.vectors[a:b], dtype=np.float32)
                items = []
                for r in rows[a:b]:
                    if not r.is_file or r.deleted:
                        continue
                    ab = store.absolute_path(r.path)
                    why = _unchanged(ab, r)
                    if isinstance(why, os.stat_result):
                        items.append((r, ab, why))
                        continue
                    stale.add(r.id)
                    report.not_redescribed[ab] = why
                if items:
                    mat, errors = _describe([ab for _, ab, _ in items], desc, workers, store.dim)
                    for j, (r, ab, st) in enumerate(items):
                        err = errors.get(j)
                        if err is None and not np.isfinite(mat[j]).all():
                            err = "descriptor produced non-finite values"
                        if err is None and not _same_file(ab, st.st_size, st.st_mtime_ns):
                            err = "changed while indexing"
                        if err is not None:
                            stale.add(r.id)
                            report.not_redescribed[ab] = getattr(err, "reason", str(err))
                            continue
                        block[r.id - a] = mat[j]
                        report.redescribed += 1
                done[0] += sum(1 for r in rows[a:b] if r.is_file and not r.deleted)
                if cb is not None:
                    cb(done[0], total)
                yield block

        try:
            store.replace_vectors(blocks(), stale=lambda: stale, meta={"descriptor": desc.spec()})
        finally:
            if bar is not None:
                bar.close()
        if report.not_redescribed:
            log.warning("%s: %d of %d files could not be described again with %r version %d; they keep their "
                        "version-%d vectors until they are indexed again", store.path, len(report.not_redescribed),
                        total, desc.name, old[1], old[0])
        return True

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
            raise ArgumentError(f"vectors must have shape (n, {dim}); got {np.shape(vectors)}")
        if arr.dtype.kind not in "fiu":
            raise ArgumentError(f"vectors must be numeric; got dtype {arr.dtype}")
        arr = np.ascontiguousarray(arr, dtype=np.float32)
        names = [names] if isinstance(names, (str, bytes)) else list(names)  # type: ignore[list-item]
        if len(names) != arr.shape[0]:
            raise ArgumentError(f"got {arr.shape[0]} vectors but {len(names)} names")
        for nm in names:
            if not isinstance(nm, str) or not nm:
                raise ArgumentError(f"names must be non-empty strings; got {nm!r}")
        if len(set(names)) != len(names):
            dup = sorted({n for n in names if names.count(n) > 1})[:5]
            raise ArgumentError(f"names must be unique; repeated: {dup}")
        bad = np.flatnonzero(~np.isfinite(arr).all(axis=1))
        if bad.size:
            raise ArgumentError(f"vectors must be finite; row {int(bad[0])} ({names[bad[0]]!r}) is not")
        if metadata is not None:
            metadata = list(metadata)
            if len(metadata) != len(names):
                raise ArgumentError(f"got {len(names)} names but {len(metadata)} metadata entries")
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
                raise ArgumentError(f"remove() takes ids, paths or names; got {item!r}")
            if isinstance(item, (int, np.integer)):
                i = int(item)
                if 0 <= i < view.state.committed and i not in dead:
                    ids.add(i)
                else:
                    missing.append(str(i))
                continue
            if not isinstance(item, (str, bytes, os.PathLike)):
                raise ArgumentTypeError(f"remove() takes ids, paths or names; got {item!r} ({type(item).__name__})")
            row = self.live_row(item)
            if row is not None:
                ids.add(row.id)
                continue
            ab = os.path.abspath(os.fsdecode(item))
            if os.path.isdir(ab):
                if live_rows is None:
                    live_rows = self._store.live_files()
                under = [r.id for r in live_rows
                         if self._store.absolute_path(r.path).startswith(ab.rstrip(os.sep) + os.sep)]
                if under:
                    ids.update(under)
                    continue
            missing.append(os.fsdecode(item))
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
        raise ArgumentError(f"{what} is not JSON-able: {exc}") from None


def _describe(paths: list[str], desc: Any, workers: Optional[int], dim: int,
              progress: Optional[Callable[[int, int], Any]] = None) -> tuple[np.ndarray, dict]:
    """``describe_many`` of files: ``(float32 (n, dim) matrix with NaN rows for failures,
    {position: ImageError})``; ``progress(done, n)`` as images are described."""
    from fastimg.features.registry import describe_many

    mat, errors = describe_many(paths, desc, workers=workers, progress=progress or False)
    mat = np.asarray(mat, dtype=np.float32)
    if mat.shape != (len(paths), dim):
        raise DescriptorError(
            f"descriptor {desc.name!r} returned shape {mat.shape}; the index expects ({len(paths)}, {dim})"
        )
    return mat, dict(errors)


def _unchanged(path: str, row: Row) -> Union[os.stat_result, str]:
    """The file's stat when it still holds what ``row`` was made from (same size and
    mtime, or same size and content hash), else why not."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return "not found"
    except OSError as exc:
        return _os_reason(exc)[0]
    if not _stat.S_ISREG(st.st_mode):
        return "unreadable"
    if st.st_size != row.size:
        return "changed since it was indexed"
    if st.st_mtime_ns != row.mtime_ns:  # touched, or copied without its times: compare the content
        try:
            if file_hash(path) != row.hash:
                return "changed since it was indexed"
        except OSError as exc:
            return _os_reason(exc)[0]
    return st


def _same_file(path: str, size: Optional[int], mtime_ns: Optional[int]) -> bool:
    """Is ``path`` still a regular file of this size and mtime?"""
    try:
        st = os.stat(path)
    except OSError:
        return False
    return _stat.S_ISREG(st.st_mode) and st.st_size == size and st.st_mtime_ns == mtime_ns


def _os_reason(exc: OSError) -> tuple[str, Optional[str]]:
    """``(reason, detail)`` of an OSError met reading a file."""
    if isinstance(exc, FileNotFoundError):
        return "not found", None
    if isinstance(exc, IsADirectoryError):
        return "unreadable", "is a directory"
    if exc.errno == errno.EINVAL:
        return "unreadable", "not a regular file"
    if exc.errno == errno.ELOOP:
        return "unreadable", "too many levels of symbolic links (a loop?)"
    return "unreadable", exc.strerror or str(exc)


def _not_a_file(path: str) -> Optional[tuple[str, Optional[str]]]:
    """``(reason, detail)`` for an entry that is not a regular file, None for a
    directory (a symbolic link to one is not followed) or a regular file."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return "not found", broken_link_detail(path)
    except OSError as exc:
        return _os_reason(exc)
    if _stat.S_ISDIR(st.st_mode) or _stat.S_ISREG(st.st_mode):
        return None
    return "unreadable", special_file_detail(st.st_mode)
