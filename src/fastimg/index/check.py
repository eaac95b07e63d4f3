"""Checking an index against itself: ``Index.check`` and ``fastimg check``.

Every file is verified against the metadata and the checksums the index keeps:

* **manifest** and **database**: the manifest is valid (it is read at open),
  SQLite's ``PRAGMA integrity_check`` passes, the ``images`` table holds exactly
  the ids ``0 .. committed - 1``, the dimension agrees;
* **vectors**: the current ``vectors.<G>.f32`` holds at least the committed rows
  (more: the remains of an interrupted append, a note), every committed value is
  finite, and ``has_negative`` is not false while a row holds a negative value;
* **caches** (``cache/``): each file's data matches the CRC-32 in its name and
  its shape (:meth:`fastimg.index.caches.Caches.verify`); files of an old
  generation or state are notes;
* **graph**: the recorded build loads (hnswlib file size and CRC-32 against its
  metadata, counts, parameters), covers no more rows than are committed, and is
  for the current generation (a graph of an older generation is a note: a
  compaction or re-description was interrupted before the rebuild);
* **whitening**: the recorded file exists, matches its checksum (``fit_id``) and
  loads with the recorded dimensions;
* **leftovers**: temporary files, vector files of other generations, graph builds
  and whitening files no record names (notes: a writer killed mid-way);
* notes, not problems: rows of an older descriptor version (``stale``), an
  outdated descriptor spec or format version (a writer upgrades them), indexed
  files that no longer exist (a sample), a writer holding the lock meanwhile.

``repair=True`` (a writer) never touches committed rows nor their metadata: it
removes bad and leftover caches and files, rebuilds the graph with its recorded
parameters, fits the whitening again with its recorded parameters, and corrects
``has_negative``.  What cannot be repaired that way (a damaged database, missing
or truncated vectors, non-finite values) stays a problem.
"""
from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Union

import numpy as np

__all__ = ["Finding", "CheckReport", "check", "check_index"]

log = logging.getLogger("fastimg.index")

_CHUNK = 65536  # rows scanned per step


@dataclass
class Finding:
    """One thing :func:`check` found.

    Attributes
    ----------
    problem : bool
        True: something is wrong (a damaged or inconsistent file); False: a note
        (harmless: the remains of an interrupted write, an outdated version ...).
    file : str
        The file (or directory) concerned.
    what : str
        What was found.
    repair : str or None
        What ``repair=True`` does about it (None: nothing can be done without
        touching committed rows).
    repaired : bool
        Done by this call.
    """

    problem: bool
    file: str
    what: str
    repair: Optional[str] = None
    repaired: bool = False


@dataclass
class CheckReport:
    """The result of :func:`check` / ``Index.check``.

    Attributes
    ----------
    path : str
        The index directory.
    findings : list of Finding
        Problems and notes, in the order they were found.
    rows, live : int
        Committed and live rows (-1 when the index could not be opened).
    caches : int
        Cache files verified.
    stale_rows : int
        Live rows whose vector is of an older descriptor version.
    missing_files : dict
        ``{"checked", "missing", "examples"}`` of a sample of indexed files.
    """

    path: str
    findings: list = field(default_factory=list)
    rows: int = -1
    live: int = -1
    caches: int = 0
    stale_rows: int = 0
    missing_files: dict = field(default_factory=lambda: {"checked": 0, "missing": 0, "examples": []})

    @property
    def problems(self) -> list:
        """Problems not repaired by this call."""
        return [f for f in self.findings if f.problem and not f.repaired]

    @property
    def ok(self) -> bool:
        """No problem is left (notes do not count)."""
        return not self.problems

    def to_dict(self) -> dict:
        """JSON-able form (``fastimg check --json``)."""
        out = asdict(self)
        out["ok"] = self.ok
        return out

    def _add(self, problem: bool, file: Any, what: str, repair: Optional[str] = None) -> Finding:
        f = Finding(problem, os.fspath(file), what, repair)
        self.findings.append(f)
        return f


def check_index(path: Union[str, "os.PathLike[str]"], repair: bool = False, *, sample: int = 32) -> CheckReport:
    """Open the index at ``path`` (for writing when ``repair``) and :func:`check` it;
    an index that cannot be opened (invalid manifest, damaged database, truncated
    vectors) is reported as a problem instead of raising.

    Raises
    ------
    IndexNotFoundError
        No index at ``path``.
    IndexLockedError
        ``repair`` while another writer holds the index.
    """
    from fastimg.errors import IndexCorruptError, IndexFormatError
    from fastimg.index._index import Index

    report = CheckReport(str(path))
    try:
        ix = Index.open(path, mode="r")
    except (IndexCorruptError, IndexFormatError) as exc:
        report._add(True, path, f"cannot be opened: {exc}")
        return report
    if not repair:
        with ix:
            return check(ix, False, sample=sample, report=report)
    with ix:  # what a writer's open removes: listed first
        _writer_note(ix._store, report)
        left = ix._store.leftovers()
    try:
        ix = Index.open(path, mode="a")
    except (IndexCorruptError, IndexFormatError) as exc:  # pragma: no cover - opened read-only just before
        report._add(True, path, f"cannot be opened for writing: {exc}")
        return report
    with ix:
        for p in left:
            f = _leftover(report, p)
            f.repaired = not os.path.lexists(p) or _only_tail_left(ix._store, os.fspath(p))
        return check(ix, True, sample=sample, report=report)


def check(ix: Any, repair: bool = False, *, sample: int = 32, report: Optional[CheckReport] = None) -> CheckReport:
    """Check an open index (see the module docstring); with ``repair`` (a writer),
    repair what can be repaired without touching committed rows."""
    from fastimg.errors import FastimgError, IndexCorruptError

    if repair:
        ix._require_writable()
    report = CheckReport(str(ix.path)) if report is None else report
    try:
        return _check(ix, repair, sample, report)
    except IndexCorruptError as exc:  # a damaged database (or files) met on the way: reported, not raised
        report._add(True, getattr(exc, "filename", None) or ix.path, str(exc))
        return report


def _check(ix: Any, repair: bool, sample: int, report: CheckReport) -> CheckReport:
    from fastimg.errors import FastimgError

    store = ix._store
    with ix._mutex:
        _writer_note(store, report)
        for msg in store.integrity():
            report._add(True, store.path / "meta.sqlite", f"SQLite integrity_check: {msg}")
        v = ix._views.current()
        report.rows, report.live = v.state.committed, v.live
        n_rows = store.row_count()
        if n_rows != v.state.committed:
            report._add(True, store.path / "meta.sqlite",
                        f"the images table has {n_rows} rows but {v.state.committed} are committed")
        _check_vectors(ix, v, report, repair)
        for p in store.leftovers():
            _leftover(report, p)
        _check_caches(ix, v, report, repair)
        _check_whitening(ix, v, report, repair)
        _check_graph(ix, v, report, repair)
        # versions and rows of older descriptor versions
        if store.format_version < 2:
            report._add(False, store.path / "manifest.json",
                        f"format version {store.format_version}: the next writer migrates it",
                        "migrated (by opening the index for writing)")
        try:
            old = ix._descriptor.outdated(v)
        except FastimgError as exc:
            report._add(True, store.path / "manifest.json", str(exc))
            old = None
        if old is not None:
            report._add(False, store.path / "meta.sqlite",
                        f"descriptor version {old[0]} (this fastimg: {old[1]}): the next `fastimg index` / "
                        "Index.add describes the files again")
        report.stale_rows = store.stale_count()
        if report.stale_rows:
            report._add(False, store.path / "meta.sqlite",
                        f"{report.stale_rows} rows keep vectors of an older descriptor version (their files could "
                        "not be read when the index was re-described): described again when indexed again")
        missing = ix.missing_files(sample=sample, warn=False)
        report.missing_files = missing
        if missing["missing"]:
            report._add(False, store.root, f"{missing['missing']} of {missing['checked']} sampled indexed files do "
                        f"not exist (e.g. {missing['examples'][0]}); if the photos moved: fastimg relocate OLD NEW")
    return report


def _leftover(report: CheckReport, p: Any) -> Finding:
    return report._add(False, p, "left by an interrupted write (an uncommitted tail, a temporary file or an old "
                       "vector file)", "removed by the writer's open")


def _only_tail_left(store: Any, file: str) -> bool:
    state = store.state()
    if Path(file) == store.vectors_path(state.generation):
        return Path(file).stat().st_size == state.committed * store.row_bytes
    return False


def _writer_note(store: Any, report: CheckReport) -> None:
    """A note when another process holds the writer lock (its work in progress may
    show up as leftovers)."""
    if store.writable or any(f.file == os.fspath(store.path / "lock") for f in report.findings):
        return
    lock = store.path / "lock"
    try:
        fd = os.open(lock, os.O_RDONLY)
    except OSError:
        return
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            fcntl.flock(fd, fcntl.LOCK_UN)
        except OSError:
            holder = os.pread(fd, 64, 0).decode("ascii", "replace").strip() or "unknown"
            report._add(False, lock, f"a writer (pid {holder}) holds the index: what it is writing may show "
                        "as leftovers")
    finally:
        os.close(fd)


def _check_vectors(ix: Any, v: Any, report: CheckReport, repair: bool) -> None:
    store = ix._store
    vpath = store.vectors_path(v.state.generation)
    try:
        size = vpath.stat().st_size
    except FileNotFoundError:
        report._add(True, vpath, f"missing ({v.state.committed} committed rows expected)")
        return
    need = v.state.committed * store.row_bytes
    if size < need:
        report._add(True, vpath, f"truncated: {size} bytes, {need} needed for {v.state.committed} committed rows")
        return
    X = v.vectors
    bad: list[int] = []
    negative = False
    for a in range(0, X.shape[0], _CHUNK):
        block = np.asarray(X[a:a + _CHUNK])
        rows = np.flatnonzero(~np.isfinite(block).all(axis=1))
        if len(bad) < 10:
            bad.extend((rows[:10 - len(bad)] + a).tolist())
        negative = negative or bool((block < 0).any())
    if bad:
        report._add(True, vpath, f"non-finite values in committed rows (ids {bad[:10]})")
    if negative and store.has_negative() is False:
        f = report._add(True, store.path / "meta.sqlite",
                        "has_negative is false but a committed row holds a negative value",
                        "has_negative set to true")
        if repair:
            with store._write("repair has_negative") as conn:
                conn.execute("INSERT OR REPLACE INTO meta(key, value) VALUES ('has_negative', 'true')")
            f.repaired = True


def _check_caches(ix: Any, v: Any, report: CheckReport, repair: bool) -> None:
    from fastimg.index.caches import parse_name

    caches = ix._caches
    if not caches.dir.is_dir():
        return
    for p in sorted(caches.dir.iterdir()):
        if p.name.startswith("."):
            continue  # temporary files: leftovers (above)
        parsed = parse_name(p.name)
        report.caches += 1
        if parsed is not None and (parsed[1] != v.state.generation or parsed[2] > v.state.committed):
            f = report._add(False, p, "cache of another state (generation or rows): unused", "removed")
        else:
            why = caches.verify(p)
            if why is None:
                continue
            unverifiable = "cannot be verified" in why
            f = report._add(not unverifiable, p, why, "removed (rebuilt from the vectors when needed)")
        if repair:
            with contextlib.suppress(OSError):
                p.unlink()
            f.repaired = not p.exists()


def _check_whitening(ix: Any, v: Any, report: CheckReport, repair: bool) -> None:
    from fastimg.errors import IndexCorruptError

    w = ix._whitening
    meta = v.get("whitening")
    for p in w.orphans(v):
        f = report._add(False, p, "whitening file that no record names (an interrupted fit)", "removed")
        if repair:
            with contextlib.suppress(OSError):
                p.unlink()
            f.repaired = not p.exists()
    if meta is None:
        return
    try:
        w.forget()
        w.current(v)
    except IndexCorruptError as exc:
        f = report._add(True, w.file_of(meta) if isinstance(meta, dict) else ix.path, str(exc),
                        "fitted again with the recorded parameters")
        if repair:
            w.refit(v, ix.metric)
            ix._search.clear()
            f.repaired = True


def _check_graph(ix: Any, v: Any, report: CheckReport, repair: bool) -> None:
    from fastimg.errors import AnnSearchError, IndexCorruptError

    g = ix._graph
    meta = v.get("ann")
    rebuild: Optional[Finding] = None
    try:
        orphans = g.orphans(meta)
    except IndexCorruptError as exc:  # the record names no directory of ann/
        rebuild = report._add(True, ix._store.ann_dir, str(exc), "the graph rebuilt")
        orphans = []
    for p in orphans:
        f = report._add(False, p, "graph build that no record names (an interrupted or replaced build)", "removed")
        if repair:
            with contextlib.suppress(OSError):
                shutil.rmtree(p) if p.is_dir() else p.unlink()
            f.repaired = not p.exists()
    if meta is None:
        return
    if rebuild is None:  # graph files of the recorded build that its metadata does not name: an interrupted save
        from fastimg.ann import _GRAPH_NAME, graph_file

        d = g.directory(meta)
        named = graph_file(d)
        for p in sorted(d.iterdir()) if d.is_dir() else []:
            if _GRAPH_NAME.match(p.name) and p != named:
                f = report._add(False, p, "graph file that the graph's metadata does not name (an interrupted "
                                "save)", "removed")
                if repair:
                    with contextlib.suppress(OSError):
                        p.unlink()
                    f.repaired = not p.exists()
    if rebuild is not None:
        pass
    elif meta.get("generation") != v.state.generation:
        rebuild = report._add(False, ix._store.ann_dir,
                              f"the HNSW graph was built for generation {meta.get('generation')}, the index is at "
                              f"{v.state.generation} (a compaction or re-description was interrupted before the "
                              "rebuild): searches scan exactly until it is rebuilt", "the graph rebuilt")
    else:
        g.discard()
        try:
            graph, _ = g.load(v)
        except AnnSearchError as exc:  # pragma: no cover - a reader racing a writer that saved it meanwhile
            report._add(False, g.directory(meta), f"{exc} (a writer saved it meanwhile)")
            return
        if graph is None:
            rebuild = report._add(True, g.directory(meta), f"the HNSW graph is unusable: {g.error}",
                                  "the graph rebuilt")
    if rebuild is not None and repair:
        g.discard()
        live = v.live
        if live:
            ix.build_ann(M=int(meta.get("M", 16)), ef_construction=int(meta.get("ef_construction", 200)),
                         metric=meta.get("metric"), ef=meta.get("ef"))
        else:
            g.drop()
        rebuild.repaired = True
