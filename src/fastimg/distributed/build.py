"""Building a sharded index: :func:`build_shards` (image files described on a
Dask cluster or in this process, each worker writing its shard) and
:func:`add_vectors` (vectors computed elsewhere).  See the package docstring."""
from __future__ import annotations

import logging
import os
import time
import types
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Optional, Sequence, Union

import numpy as np

from fastimg.distributed.hosts import worker_threads
from fastimg.distributed.layout import (
    BUILD_BATCH,
    MANIFEST,
    ShardBuildError,
    current_spec,
    file_key,
    image_folder,
    open_or_create,
    shard_name,
    shard_of,
    write_manifest,
)
from fastimg.errors import ArgumentError, FastimgError

__all__ = ["ShardReport", "build_shards", "add_vectors"]

log = logging.getLogger("fastimg.distributed")

PathLike = Union[str, "os.PathLike[str]"]


@dataclass
class ShardReport:
    """What :func:`build_shards` did (the sums of the shards' :class:`fastimg.AddReport`).

    ``added``, ``unchanged``, ``updated``, ``moved``, ``removed``, ``reused``
    and ``skipped`` (path -> reason) as in :class:`fastimg.AddReport`;
    ``per_shard``: shard name -> its counts and ``count`` (live images after);
    ``count``: live images in all shards; ``tasks``: build tasks run.
    """

    added: int = 0
    unchanged: int = 0
    updated: int = 0
    moved: int = 0
    removed: int = 0
    reused: int = 0
    skipped: dict = field(default_factory=dict)
    per_shard: dict = field(default_factory=dict)
    count: int = 0
    tasks: int = 0

    @property
    def n_skipped(self) -> int:
        """Number of skipped files."""
        return len(self.skipped)

    def _merge(self, name: str, d: Mapping[str, Any]) -> None:
        mine = self.per_shard.setdefault(name, {"added": 0, "unchanged": 0, "updated": 0, "moved": 0,
                                                "removed": 0, "reused": 0, "skipped": 0})
        for key in ("added", "unchanged", "updated", "moved", "removed", "reused"):
            setattr(self, key, getattr(self, key) + int(d.get(key, 0)))
            mine[key] += int(d.get(key, 0))
        self.skipped.update(d.get("skipped", {}))
        mine["skipped"] += len(d.get("skipped", {}))
        if "count" in d:
            mine["count"] = int(d["count"])


def _scan(paths: Sequence[PathLike], root: Path, recursive: bool, exclude: Sequence[str],
          skipped: dict) -> tuple[list[str], list[str]]:
    """``(image files, folders walked)`` with the rules of ``Index.add`` (its scanner,
    :meth:`fastimg.index.ingest.Ingest.scan`, which only needs the directory to leave out)."""
    from fastimg.index.ingest import AddReport, Ingest

    report = AddReport()
    ingest = Ingest(types.SimpleNamespace(path=root), None, None)  # type: ignore[arg-type]
    files, roots = ingest.scan(list(paths), recursive, list(exclude), report)
    skipped.update(report.skipped)
    return [p for p, _ in files], roots


def _report_dict(rep: Any) -> dict:
    return {"added": rep.added, "unchanged": rep.unchanged, "updated": rep.updated, "moved": rep.moved,
            "removed": rep.removed, "reused": rep.reused, "skipped": dict(rep.skipped)}


def _add_task(shard_path: str, files: list[str], batch_size: int, workers: Optional[int]) -> dict:
    """A build task (runs on a worker): ``Index.add(files)`` on one shard."""
    from fastimg.index import Index

    with Index.open(shard_path, mode="a") as idx:
        rep = idx.add(files, recursive=False, workers=workers, batch_size=batch_size)
        return _report_dict(rep)


def _finish_task(shard_path: str, shard: int, shards: int, image_root: str, roots: list[str],
                 ann: Any, workers: Optional[int]) -> dict:
    """The last build task of a shard: mark deleted the files that vanished from the
    re-indexed folders (as ``Index.add`` does) and the rows another shard owns now,
    then build the HNSW graph when asked and none is built."""
    from fastimg.index import Index

    with Index.open(shard_path, mode="a") as idx:
        removed = 0
        if roots:
            live = idx.live_ids()
            gone = []
            for i, p in zip(live.tolist(), idx.paths(live)):
                if not os.path.isabs(p) or not any(p == r or p.startswith(r.rstrip(os.sep) + os.sep) for r in roots):
                    continue  # a name, or a file outside the folders re-indexed now
                if not os.path.exists(p) or shard_of(file_key(p, image_root), shards) != shard:
                    gone.append(i)
            if gone:
                removed = idx.remove(gone)
        graph = None
        if ann:
            info = idx.info()["ann"]
            params = dict(ann) if isinstance(ann, Mapping) else {}
            if not info.get("built") or (params.get("metric") not in (None, info.get("metric"))):
                if len(idx):
                    graph = idx.build_ann(threads=worker_threads(workers), **params)
        return {"removed": removed, "count": len(idx), "ann": graph}


class _LocalExecutor:
    """Runs build tasks in this process, one after the other (the no-client case)."""

    def submit(self, fn: Callable, *args: Any, **kwargs: Any) -> Any:
        from concurrent.futures import Future

        fut: Future = Future()
        try:
            fut.set_result(fn(*args))
        except BaseException as exc:  # noqa: BLE001 - handed to the caller through the future
            fut.set_exception(exc)
        return fut


def build_shards(
    paths: Union[PathLike, Iterable[PathLike]],
    root: PathLike,
    *,
    shards: Optional[int] = None,
    descriptor: Optional[str] = None,
    metric: Optional[str] = None,
    client: Any = None,
    batch_size: int = BUILD_BATCH,
    progress: Any = False,
    recursive: bool = True,
    exclude: Optional[Union[str, Sequence[str]]] = None,
    workers: Optional[int] = None,
    ann: Union[bool, Mapping[str, Any]] = False,
    **descriptor_params: Any,
) -> ShardReport:
    """Build or update a sharded index of image files (see the module docstring).

    Parameters
    ----------
    paths : path-like or iterable of path-like
        Image files and folders, as for :meth:`fastimg.Index.add`.
    root : path-like
        The sharded index directory (created if new).
    shards : int
        Number of shards; required for a new root, checked against an existing
        one (re-sharding is not supported).  Use at least as many shards as
        the cluster has worker threads: at most one task per shard runs at a time.
    descriptor : str, optional
        Descriptor of a new root (default ``"hsv72"``); checked against an existing one.
    metric : str, optional
        Default metric of a new root (default: the descriptor's).
    client : distributed.Client, optional
        Run the tasks on this Dask cluster; the shards must be on a file system
        every worker sees.  None: in this process.
    batch_size : int, default :data:`BUILD_BATCH`
        Files per task (one ``Index.add`` call and one commit: what a dying
        worker can lose).  Each task also reads the shard's list of live rows,
        so for shards of millions of rows, larger batches cost less.
    progress : bool or callable
        ``True``: a tqdm bar; a callable gets ``progress(files done, files)``
        after each task.
    recursive, exclude
        As for :meth:`fastimg.Index.add`.
    workers : int, optional
        Threads describing images in each task (default: 1 per task on a
        cluster, where Dask runs tasks in parallel; all cores in-process).
    ann : bool or dict
        Build each shard's HNSW graph when it has none (a dict: arguments of
        :meth:`fastimg.Index.build_ann`).  Graphs already built are kept up to
        date by ``Index.add``.
    **descriptor_params
        Parameters of a new root's descriptor.

    Returns
    -------
    ShardReport

    Raises
    ------
    ShardBuildError
        A task failed (its shard and error named).  Committed batches are kept;
        running again completes the build.
    ValueError
        Bad arguments, or arguments that contradict the existing root.
    """
    root = Path(os.path.abspath(os.fspath(root)))
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or int(batch_size) < 1:
        raise ArgumentError(f"batch_size must be a positive integer; got {batch_size!r}")
    if descriptor == "custom":
        raise ArgumentError("build_shards describes images; for vectors computed elsewhere use "
                         "fastimg.distributed.add_vectors")
    items = [paths] if isinstance(paths, (str, os.PathLike)) else list(paths)
    patterns = [exclude] if isinstance(exclude, str) else list(exclude or ())
    man = open_or_create(root, shards, descriptor, metric, descriptor_params=descriptor_params)
    if man["descriptor"].get("name") == "custom":
        raise ArgumentError(f"{root}: the shards store custom vectors; add them with fastimg.distributed.add_vectors")
    n = len(man["shards"])
    names = [s["name"] for s in man["shards"]]
    image_root = image_folder(root)

    report = ShardReport()
    files, roots = _scan(items, root, recursive, patterns, report.skipped)
    per_shard: list[list[str]] = [[] for _ in range(n)]
    for p in files:
        per_shard[shard_of(file_key(p, image_root), n)].append(p)
    bs = int(batch_size)
    queues = {s: deque(per_shard[s][i:i + bs] for i in range(0, len(per_shard[s]), bs)) for s in range(n)}
    threads = workers if workers is not None else (1 if client is not None else None)

    from fastimg.index._progress import progress_callback

    cb, bar = progress_callback(progress, "indexing")
    total, done = len(files), 0
    executor: Any = client if client is not None else _LocalExecutor()
    running: dict[Any, tuple[int, str, int]] = {}  # future -> (shard, kind, files)
    errors: list[str] = []

    def submit(s: int) -> Any:
        path = str(root / names[s])
        if queues[s]:
            chunk = queues[s].popleft()
            fut = executor.submit(_add_task, path, chunk, bs, threads, **_pure(client))
            running[fut] = (s, "add", len(chunk))
        else:
            fut = executor.submit(_finish_task, path, s, n, image_root, roots, ann, threads, **_pure(client))
            running[fut] = (s, "finish", 0)
        return fut

    try:
        if cb is not None:
            cb(0, total)
        if client is None:
            for s in range(n):
                while True:
                    submit(s)
                    fut, (sh, kind, k) = running.popitem()
                    res = _result(fut, names[sh], kind)
                    report._merge(names[sh], res)
                    report.tasks += 1
                    done += k
                    if cb is not None and k:
                        cb(done, total)
                    if kind == "finish":
                        break
        else:
            from distributed import as_completed

            for s in range(n):
                submit(s)
            ac = as_completed(list(running))
            for fut in ac:
                sh, kind, k = running.pop(fut)
                try:
                    res = _result(fut, names[sh], kind)
                except ShardBuildError as exc:
                    errors.append(str(exc))
                    queues[sh].clear()  # this shard stops; the others finish their tasks
                    continue
                report._merge(names[sh], res)
                report.tasks += 1
                done += k
                if cb is not None and k:
                    cb(done, total)
                if kind != "finish":
                    ac.add(submit(sh))
    finally:
        if bar is not None:
            bar.close()
    if errors:
        raise ShardBuildError("; ".join(errors) + " (committed batches are kept: run the build again to "
                              "complete it)")
    counts = {name: int(report.per_shard.get(name, {}).get("count", 0)) for name in names}
    report.count = sum(counts.values())
    man = dict(man, shards=[{"name": name, "count": counts[name]} for name in names], count=report.count,
               updated=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
    # every shard's writer re-described rows of an older descriptor version (Index.add): the
    # manifest names the version the shards now hold
    man["descriptor"] = current_spec(man["descriptor"])
    write_manifest(root, man)
    log.info("%s: added %d, updated %d, moved %d, removed %d, unchanged %d, skipped %d (%d shards, %d tasks)",
             root, report.added, report.updated, report.moved, report.removed, report.unchanged,
             report.n_skipped, n, report.tasks)
    return report


def _pure(client: Any) -> dict:
    # build tasks change files: never let Dask reuse a result by key
    return {"pure": False} if client is not None else {}


def _result(fut: Any, name: str, kind: str) -> dict:
    try:
        return fut.result()
    except FastimgError as exc:
        raise ShardBuildError(f"{name}: {exc}") from exc
    except Exception as exc:  # KilledWorker, comm errors ...
        raise ShardBuildError(f"{name}: the {kind} task failed ({type(exc).__name__}: {exc})") from exc


def add_vectors(root: PathLike, vectors: Any, names: Sequence[str], *, shards: Optional[int] = None,
                metric: Optional[str] = None, ann: Union[bool, Mapping[str, Any]] = False) -> np.ndarray:
    """Add vectors computed elsewhere to a sharded index of ``descriptor="custom"``
    shards (created with ``shards`` when new), each to the shard of its name; in
    this process (one transaction per shard, see :meth:`fastimg.Index.add_vectors`).
    ``ann``: as for :func:`build_shards` (build each shard's HNSW graph when it has none).

    Returns
    -------
    numpy.ndarray
        int64 global ids of the new rows, in input order.
    """
    from fastimg.index import Index

    root = Path(os.path.abspath(os.fspath(root)))
    arr = np.asarray(vectors)
    if arr.ndim != 2:
        raise ArgumentError(f"vectors must have shape (n, dim); got {arr.shape}")
    names = list(names)
    if len(names) != arr.shape[0]:
        raise ArgumentError(f"got {arr.shape[0]} vectors but {len(names)} names")
    new = not (root / MANIFEST).is_file()
    man = open_or_create(root, shards, "custom" if new else None, metric, dim=int(arr.shape[1]))
    if man["descriptor"].get("name") != "custom":
        raise ArgumentError(f"{root}: the shards describe images ({man['descriptor'].get('name')!r}); "
                         "add image files with build_shards")
    n = len(man["shards"])
    owner = np.array([shard_of(str(nm), n) for nm in names], dtype=np.int64)
    gids = np.full(len(names), -1, dtype=np.int64)
    counts = {}
    for s in range(n):
        sel = np.flatnonzero(owner == s)
        with Index.open(root / shard_name(s), mode="a") as idx:
            if sel.size:
                local = idx.add_vectors(arr[sel], [names[i] for i in sel])
                gids[sel] = local * n + s
            if ann and len(idx) and not idx.info()["ann"]["built"]:
                idx.build_ann(**(dict(ann) if isinstance(ann, Mapping) else {}))
            counts[shard_name(s)] = len(idx)
    man = dict(man, shards=[{"name": shard_name(s), "count": counts[shard_name(s)]} for s in range(n)],
               count=sum(counts.values()), updated=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
    write_manifest(root, man)
    return gids

