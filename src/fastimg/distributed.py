"""Index shards on a Dask cluster: build them in parallel, search them as one index.

Needs the ``dask`` extra (``pip install fastimg[dask]``); ``import fastimg``
does not import Dask, this module imports it only when a ``client`` is given.
The scaling plan and the measured figures are in ``docs/scaling.md`` and
``bench/distributed.md``.

**Layout.** A sharded index is a directory ``root`` holding ``N`` ordinary
fastimg indexes ``root/shard-000`` ... ``root/shard-{N-1}`` (each a
:class:`fastimg.Index`, crash-safe and openable on its own) and the manifest
:data:`MANIFEST` (JSON, replaced atomically): format name and version, the
shard names, the descriptor spec, dimension and metric shared by every shard,
the partition rule and the counts of the last build.  Image paths are stored by
each shard relative to the folder containing ``root`` (as :class:`fastimg.Index`
does with its own folder), so the tree can be moved together with its index.

**Partition** (:func:`shard_of`): an image belongs to shard
``blake2b-64(key) mod N``, where ``key`` is its path relative to the folder
containing ``root`` (``/``-separated) when it lies under it, else its absolute
path (for :func:`add_vectors`: its name).  The path, not the content: a re-run
then only *stats* every file, as :meth:`fastimg.Index.add` does (the owner of a
file is known without reading it), and a shard sees each file at the same
place every time, so ``Index.add``'s size/mtime check skips unchanged files.  A
content hash would keep a moved file in its shard (where ``Index.add``
recognises a move), but every re-run would then have to read every byte of the
collection to learn where each file belongs (or keep a second, global table of
path -> shard).  Moves are rare; the price here is that a file moved to a path
of another shard is described again there (a move that stays in its shard
reuses the stored vector, see below).

**Build** (:func:`build_shards`): the client scans the folders (the rules of
``Index.add``), splits each shard's files into tasks of ``batch_size`` files,
and runs them on the cluster with at most one task per shard in flight (one
writer per shard: its lock).  A task opens its shard for writing on the worker
(the shards must be on a file system every worker sees) and calls
``Index.add(files)``, which skips unchanged files, re-describes modified ones,
copies the vector of a file whose content is already in the shard, and commits
the batch.  Then one last task per shard marks deleted the files that vanished
from the re-indexed folders (and rows that another shard now owns), and builds
or updates the HNSW graph when asked.  Vectors never travel: each worker writes
the shard it describes for (measured against sending them back to one writer in
``bench/distributed.md``).  A worker that dies loses its task's uncommitted
batch only; Dask re-runs the task on another worker (``Index.add`` is
idempotent: committed files are skipped), and if the build fails all the same,
running it again completes it.

**Search** (:class:`ShardedIndex`): the shards are opened read-only by *hosts*,
one per Dask worker (a Dask actor that keeps its shards open, memory-mapped,
between queries), or by one in-process host when no client is given (the
shards searched by threads).  A query is turned into a vector once (a path by
the host of its shard, which holds its stored vector; bytes and arrays on the
client), sent once to each host, each shard returns its top-``k`` (plus the one
row that may be the query itself), and the client merges: by score in the
metric's direction, then by lower global id.  A host whose worker dies is
replaced (its shards reopened on another worker) and the call retried; a shard
that cannot be searched raises :class:`ShardUnavailableError` naming it, unless
``allow_partial=True``, where the answer says which shards are missing.

**Global ids**: ``global_id = local_id * N + shard`` (``N`` shards; the local id
is the row id in the shard, see :class:`fastimg.Index`): ``shard = gid % N``,
``local = gid // N``.  Stable like the shard's ids (until that shard is
compacted).  Ties in score are broken by the lower global id (a single index
breaks them by its own ids, so tied hits may be ordered differently).
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import pickle
import threading
import time
import types
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Optional, Sequence, Union

import numpy as np

from fastimg.errors import (
    ArgumentError,
    DescriptorError,
    FastimgError,
    IndexClosedError,
    IndexFormatError,
    IndexNotFoundError,
    NotInIndexError,
)

__all__ = [
    "MANIFEST", "FORMAT_VERSION", "ShardedIndex", "ShardedHits", "BatchResult", "ShardReport",
    "ShardUnavailableError", "ShardBuildError", "DaskMissingError", "build_shards", "add_vectors", "shard_of", "is_sharded",
    "shard_name", "connect",
]

log = logging.getLogger("fastimg.distributed")

PathLike = Union[str, "os.PathLike[str]"]

#: The manifest of a sharded index, in its root directory.
MANIFEST = "fastimg-shards.json"
FORMAT_NAME = "fastimg-shards"
#: Version of the sharded layout (the shards have their own format version).
FORMAT_VERSION = 1
PARTITION = "blake2b-64(path relative to the root's parent, or absolute; or the name) mod shards"
#: Files per build task (one ``Index.add`` call, one commit).
BUILD_BATCH = 256


class ShardUnavailableError(FastimgError, RuntimeError):
    """A shard could not be searched (its worker died and reopening it failed, or
    its files are gone).  ``shards`` names them; ``causes`` maps each to its error."""

    def __init__(self, message: str, shards: Sequence[str] = (), causes: Optional[Mapping[str, str]] = None):
        super().__init__(message)
        self.shards = tuple(shards)
        self.causes = dict(causes or {})


class DaskMissingError(FastimgError, ImportError):
    """A cluster was asked for but Dask (the ``dask`` extra) is not installed."""


class ShardBuildError(FastimgError, RuntimeError):
    """A build task failed (after Dask's own retries).  Committed batches are kept:
    running :func:`build_shards` again completes the shards."""


# --------------------------------------------------------------------------- #
# layout
# --------------------------------------------------------------------------- #

def shard_name(i: int) -> str:
    """The directory name of shard ``i`` (``shard-007``)."""
    return f"shard-{int(i):03d}"


def shard_of(key: str, shards: int) -> int:
    """The shard of ``key`` (see the module docstring): ``blake2b-64(key) mod shards``."""
    digest = hashlib.blake2b(key.encode("utf-8", "surrogateescape"), digest_size=8).digest()
    return int.from_bytes(digest, "little") % int(shards)


def is_sharded(path: PathLike) -> bool:
    """True if ``path`` is the root of a sharded index (holds :data:`MANIFEST`)."""
    return os.path.isfile(os.path.join(os.fspath(path), MANIFEST))


def _image_root(root: Path) -> str:
    """The folder image paths are stored relative to: the one containing ``root``."""
    return os.path.dirname(os.path.abspath(root))


def _file_key(path: str, image_root: str) -> str:
    ab = os.path.abspath(path)
    try:
        if os.path.commonpath([ab, image_root]) == image_root:
            return os.path.relpath(ab, image_root).replace(os.sep, "/")
    except ValueError:  # pragma: no cover - different drives
        pass
    return ab


def _read_manifest(root: Path) -> dict:
    path = root / MANIFEST
    if not path.is_file():
        if (root / "manifest.json").is_file():
            raise IndexFormatError(f"{root}: a single fastimg index, not a sharded one (no {MANIFEST})")
        raise IndexNotFoundError(f"{root}: no sharded fastimg index here (no {MANIFEST}; build one with "
                                 "fastimg.distributed.build_shards or `fastimg index DIR --shards N`)")
    try:
        man = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise IndexFormatError(f"{path}: unreadable manifest ({exc})") from None
    if not isinstance(man, dict) or man.get("format") != FORMAT_NAME:
        raise IndexFormatError(f"{path}: not a {FORMAT_NAME} manifest")
    version = man.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise IndexFormatError(f"{path}: format_version {version!r}; this fastimg reads up to {FORMAT_VERSION} "
                               "(upgrade fastimg)")
    shards = man.get("shards")
    if not isinstance(shards, list) or not shards or not all(isinstance(s, dict) and "name" in s for s in shards):
        raise IndexFormatError(f"{path}: 'shards' must be a non-empty list of {{'name': ...}}")
    for key in ("descriptor", "metric", "dim"):
        if key not in man:
            raise IndexFormatError(f"{path}: missing {key!r}")
    return man


def _write_manifest(root: Path, man: dict) -> None:
    from fastimg.index._files import write_json_atomic  # the index's durable JSON write

    write_json_atomic(root / MANIFEST, man)


def _new_manifest(n: int, spec: dict, metric: str, dim: int) -> dict:
    return {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "partition": PARTITION,
        "shards": [{"name": shard_name(i), "count": 0} for i in range(n)],
        "descriptor": spec,
        "dim": int(dim),
        "metric": metric,
        "count": 0,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "updated": None,
    }


def _open_or_create(root: Path, shards: Optional[int], descriptor: Optional[str], metric: Optional[str],
                    dim: Optional[int] = None, descriptor_params: Optional[dict] = None) -> dict:
    """The manifest of ``root``, creating the root and its empty shards first when new.

    An existing root keeps its shard count, descriptor and metric: asking for
    others is an error (re-sharding means building a new root)."""
    from fastimg.index import Index

    if shards is not None and (isinstance(shards, bool) or not isinstance(shards, (int, np.integer))
                               or int(shards) < 1):
        raise ArgumentError(f"shards must be a positive integer; got {shards!r}")
    if (root / MANIFEST).is_file():
        man = _read_manifest(root)
        have = len(man["shards"])
        if shards is not None and int(shards) != have:
            raise ArgumentError(f"{root}: the sharded index has {have} shards, not {shards} (re-sharding is not "
                             "supported: build a new root)")
        name = man["descriptor"].get("name")
        if descriptor is not None and descriptor != name:
            raise ArgumentError(f"{root}: the shards use descriptor {name!r}, not {descriptor!r}")
        if metric is not None:
            from fastimg.metrics import get_metric

            if get_metric(metric).name != man["metric"]:
                raise ArgumentError(f"{root}: the shards' default metric is {man['metric']!r}, not {metric!r}")
        for s in man["shards"]:  # a crash between writing the manifest and creating every shard
            if not (root / s["name"] / "manifest.json").is_file():
                Index.create(root / s["name"], man["descriptor"]["name"], man["metric"],
                             dim=man["dim"] if man["descriptor"]["name"] == "custom" else None,
                             root=_image_root(root), **man["descriptor"].get("params", {})).close()
        return man
    if shards is None:
        raise ArgumentError(f"{root}: a new sharded index needs the number of shards (shards=N)")
    if root.exists() and any(root.iterdir()):
        if (root / "manifest.json").is_file():
            raise FileExistsError(f"{root}: holds a single (unsharded) fastimg index; choose another root")
        raise FileExistsError(f"{root}: not empty and not a sharded fastimg index")
    root.mkdir(parents=True, exist_ok=True)
    first = None
    for i in range(int(shards)):
        idx = Index.create(root / shard_name(i), descriptor or "hsv72", metric, dim=dim, root=_image_root(root),
                           **(descriptor_params or {}))
        if first is None:
            first = idx.info()
        idx.close()
    assert first is not None
    man = _new_manifest(int(shards), first["descriptor"], first["metric"], first["dim"])
    _write_manifest(root, man)  # the sharded index exists from here on
    return man


# --------------------------------------------------------------------------- #
# build
# --------------------------------------------------------------------------- #

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


def _task_threads(workers: Optional[int]) -> Optional[int]:
    if workers is not None:
        return workers
    try:  # on a Dask worker: its threads
        from distributed import get_worker

        return int(get_worker().state.nthreads)
    except (ImportError, ValueError, AttributeError):
        return None


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
                if not os.path.exists(p) or shard_of(_file_key(p, image_root), shards) != shard:
                    gone.append(i)
            if gone:
                removed = idx.remove(gone)
        graph = None
        if ann:
            info = idx.info()["ann"]
            params = dict(ann) if isinstance(ann, Mapping) else {}
            if not info.get("built") or (params.get("metric") not in (None, info.get("metric"))):
                if len(idx):
                    graph = idx.build_ann(threads=_task_threads(workers), **params)
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
    man = _open_or_create(root, shards, descriptor, metric, descriptor_params=descriptor_params)
    if man["descriptor"].get("name") == "custom":
        raise ArgumentError(f"{root}: the shards store custom vectors; add them with fastimg.distributed.add_vectors")
    n = len(man["shards"])
    names = [s["name"] for s in man["shards"]]
    image_root = _image_root(root)

    report = ShardReport()
    files, roots = _scan(items, root, recursive, patterns, report.skipped)
    per_shard: list[list[str]] = [[] for _ in range(n)]
    for p in files:
        per_shard[shard_of(_file_key(p, image_root), n)].append(p)
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
    _write_manifest(root, man)
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
    man = _open_or_create(root, shards, "custom" if new else None, metric, dim=int(arr.shape[1]))
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
    _write_manifest(root, man)
    return gids


# --------------------------------------------------------------------------- #
# the hosts: shards held open
# --------------------------------------------------------------------------- #

class _ShardHost:
    """Holds some shards of a sharded index open read-only and searches them.

    One per Dask worker (created as an actor: its methods run on that worker,
    the shards stay open between calls), or one in this process.  Every method
    takes the shard numbers it works on and returns a dict shard -> answer.
    """

    def __init__(self, root: str, n_shards: int, threads: Optional[int] = None):
        self.root = root
        self.n = int(n_shards)
        self.threads = threads if threads is not None else _task_threads(None)
        self.indexes: dict[int, Any] = {}
        self.parallel = 1
        self._pool: Optional[ThreadPoolExecutor] = None
        self._pool_size = 0

    # -- shards
    def open(self, shards: Sequence[int]) -> dict:
        from fastimg._threads import resolve_threads
        from fastimg.index import Index

        out = {}
        for s in shards:
            if s not in self.indexes:
                self.indexes[s] = Index.open(os.path.join(self.root, shard_name(s)), mode="r")
            out[s] = len(self.indexes[s])
        # the host's threads shared by its shards: min(shards, threads) searched at once
        total = resolve_threads(self.threads)
        self.parallel = min(total, len(self.indexes))
        per = max(1, total // max(1, len(self.indexes)))
        for idx in self.indexes.values():
            if idx.threads != per:
                idx.threads = per
        return out

    def close(self) -> None:
        for idx in self.indexes.values():
            idx.close()
        self.indexes.clear()
        if self._pool is not None:
            self._pool.shutdown(wait=False)
            self._pool = None

    def pid(self) -> int:
        return os.getpid()

    def packed(self, blob: bytes) -> bytes:
        """``pickle(method(*args))`` of ``blob = pickle((method, args))``: one bytes
        frame each way instead of Dask serialising every argument and every small
        array of the answer (measured: ~2.5 ms less per call, bench/distributed.md)."""
        method, args = pickle.loads(blob)
        return pickle.dumps(getattr(self, method)(*args), protocol=pickle.HIGHEST_PROTOCOL)

    def _each(self, shards: Sequence[int], fn: Callable[[int, Any], Any]) -> dict:
        # one thread: in the calling thread (a hand-over costs more than it saves)
        if len(shards) <= 1 or self.parallel <= 1:
            return {s: fn(s, self.indexes[s]) for s in shards}
        if self._pool is None or self._pool_size != self.parallel:
            if self._pool is not None:
                self._pool.shutdown(wait=False)
            self._pool = ThreadPoolExecutor(max_workers=self.parallel, thread_name_prefix="fastimg-shard")
            self._pool_size = self.parallel
        futs = {s: self._pool.submit(fn, s, self.indexes[s]) for s in shards}
        return {s: f.result() for s, f in futs.items()}

    # -- calls
    def lens(self, shards: Sequence[int]) -> dict:
        return self._each(shards, lambda s, idx: len(idx))

    def info(self, shards: Sequence[int]) -> dict:
        def one(s: int, idx: Any) -> dict:
            i = idx.info()
            return {"count": i["count"], "rows": i["rows"], "deleted": i["deleted"], "size_bytes": i["size_bytes"],
                    "descriptor": i["descriptor"], "metric": i["metric"], "dim": i["dim"],
                    "whitening": i["whitening"] is not None or i.get("projection") is not None,
                    "ann": {k: i["ann"].get(k) for k in ("built", "metric", "rows", "M", "ef", "auto_mode")}}
        return self._each(shards, one)

    def paths(self, shard: int, local_ids: Sequence[int]) -> list:
        return self.indexes[shard].paths([int(i) for i in local_ids])

    def vectors(self, shard: int, local_ids: Sequence[int]) -> np.ndarray:
        return np.array(self.indexes[shard].vectors[np.asarray(local_ids, dtype=np.int64)], dtype=np.float32)

    def resolve(self, shard: int, query: str) -> tuple[Optional[np.ndarray], Optional[int]]:
        """``(vector, global id of the query's own row or None)`` of a path or name
        query, read by this shard exactly as ``Index.search`` reads it: the stored
        vector of an indexed, unchanged file (or of a name), else the file described
        (``(None, None)`` when this worker cannot read it)."""
        idx = self.indexes[shard]
        # fastimg.Index has no public call for this yet (Index.search does it inside):
        # see "What the index lacks" in docs/scaling.md
        from fastimg.errors import ImageError

        try:
            vec, own, _ = idx._queries.vector(query, idx._view())  # noqa: SLF001
        except ImageError:
            # this worker cannot read the file: the client describes it (ImageError does
            # not survive pickling, so it is not sent back)
            return None, None
        gid = None if not own else min(own) * self.n + shard
        return np.asarray(vec, dtype=np.float32), gid

    def search(self, shards: Sequence[int], q: np.ndarray, k: int, metric: str, mode: str, ef: Optional[int],
               candidates: Optional[int], want_ident: bool, want_paths: bool) -> dict:
        """Each shard's top ``k`` of the query vectors ``q``: ``(global ids, scores,
        identical-to-the-query flags or None, paths or None, seconds spent on the shard,
        seconds spent by this call on all its shards)``."""
        n = self.n

        def one(s: int, idx: Any) -> tuple:
            t0 = time.perf_counter()
            ids, scores = idx.search_batch(q, k, metric=metric, exclude_self=False, mode=mode, ef=ef,
                                           candidates=candidates)
            ids = np.asarray(ids, dtype=np.int64)
            valid = ids >= 0
            ident = None
            if want_ident:
                rows = idx.vectors[np.where(valid, ids, 0).reshape(-1)].reshape(ids.shape + (q.shape[1],))
                ident = (rows == q[:, None, :]).all(axis=2) & valid
            paths = None
            if want_paths:
                flat = ids[valid]
                paths = dict(zip((flat * n + s).tolist(), idx.paths(flat.tolist()))) if flat.size else {}
            gids = np.where(valid, ids * n + s, -1)
            return gids, np.asarray(scores, dtype=np.float32), ident, paths, time.perf_counter() - t0

        t0 = time.perf_counter()
        res = self._each(shards, one)
        wall = time.perf_counter() - t0
        return {s: r + (wall,) for s, r in res.items()}


def _is_lost(exc: BaseException) -> bool:
    """An error of the cluster (a worker gone, a connection closed), not of the search."""
    if isinstance(exc, FastimgError):
        return False
    import asyncio
    import concurrent.futures

    return isinstance(exc, (RuntimeError, OSError, TimeoutError, asyncio.CancelledError,
                            concurrent.futures.CancelledError, EOFError))


class _Remote:
    """A host as a Dask actor on one worker."""

    #: Seconds to wait for a host to start (a worker the scheduler still lists may be dead).
    START_TIMEOUT = 60.0

    def __init__(self, client: Any, worker: str, root: str, n: int):
        self.worker = worker
        fut = client.submit(_ShardHost, root, n, actor=True, workers=[worker], allow_other_workers=False,
                             pure=False)
        self.future = fut
        try:
            self.actor = fut.result(timeout=self.START_TIMEOUT)
        except BaseException:
            fut.cancel()
            raise

    def call(self, method: str, *args: Any) -> Any:
        return self.actor.packed(pickle.dumps((method, args), protocol=pickle.HIGHEST_PROTOCOL))

    @staticmethod
    def wait(pending: Any) -> Any:
        return pickle.loads(pending.result())


class _Local:
    """The in-process host."""

    def __init__(self, root: str, n: int, threads: Optional[int]):
        self.worker = "local"
        self.actor = _ShardHost(root, n, threads)

    def call(self, method: str, *args: Any) -> Any:
        return getattr(self.actor, method)(*args)

    @staticmethod
    def wait(pending: Any) -> Any:
        return pending


# --------------------------------------------------------------------------- #
# the sharded index
# --------------------------------------------------------------------------- #

class ShardedHits(list):
    """The hits of :meth:`ShardedIndex.search` (a list of :class:`fastimg.Hit`, best
    first); ``missing`` names the shards left out (only with ``allow_partial=True``)."""

    missing: tuple = ()

    @property
    def complete(self) -> bool:
        """True when every shard answered."""
        return not self.missing


class BatchResult(tuple):
    """``(ids, scores)`` of :meth:`ShardedIndex.search_batch` (unpacks like the tuple
    of :meth:`fastimg.Index.search_batch`); ``missing`` names the shards left out
    (only with ``allow_partial=True``)."""

    missing: tuple = ()

    @property
    def complete(self) -> bool:
        """True when every shard answered."""
        return not self.missing


class ShardedIndex:
    """The shards of a sharded index searched as one index (read-only).

    Open with :meth:`open`; use as a context manager (or call :meth:`close`).
    See the module docstring for how queries are answered and for global ids.
    """

    def __init__(self, root: Path, man: dict, client: Any, threads: Optional[int], retries: int,
                 own_client: bool):
        # private: use ShardedIndex.open
        from fastimg.metrics import get_metric

        self.root = root
        self._man = man
        self._client = client
        self._own_client = own_client
        self._threads = threads
        self._retries = int(retries)
        self._mutex = threading.RLock()
        self.n = len(man["shards"])
        self.names = [s["name"] for s in man["shards"]]
        self._metric = get_metric(man["metric"]).name
        self._desc: Any = None
        self._hosts: list[Any] = []
        self._where: dict[int, int] = {}  # shard -> host index
        self._unavailable: dict[int, str] = {}  # shard -> cause
        self._dead: set[str] = set()  # addresses of workers whose host was lost
        self._closed = False
        #: Diagnostics of the last search call: shard name -> seconds spent on that
        #: shard (the scan, plus reading the hits' paths), and the longest time a host
        #: spent on its shards (they share its threads); the rest of a call's latency
        #: is the fan-out and the merge (bench/distributed.md).
        self.last_shard_seconds: dict[str, float] = {}
        self.last_host_seconds = 0.0
        try:
            if client is None:
                self._hosts.append(_Local(str(root), self.n, threads))
                self._assign(list(range(self.n)), [0] * self.n)
            else:
                workers = sorted(client.scheduler_info()["workers"])
                if not workers:
                    raise ShardUnavailableError(f"{root}: the Dask cluster has no workers", self.names)
                use = workers[:self.n]
                for w in use:
                    self._hosts.append(_Remote(client, w, str(root), self.n))
                for i, s in enumerate(range(self.n)):
                    self._assign([s], [i % len(use)])
            self._check_shards()
        except BaseException:
            self.close()
            raise

    # ------------------------------------------------------------------ lifecycle
    @classmethod
    def open(cls, root: PathLike, client: Any = None, *, threads: Optional[int] = None,
             retries: int = 2) -> "ShardedIndex":
        """Open the sharded index at ``root`` for searching.

        Parameters
        ----------
        root : path-like
            A directory written by :func:`build_shards` or :func:`add_vectors`.
        client : distributed.Client, str or None
            Host the shards on this cluster's workers (one host actor per worker,
            the shards spread over them; the workers must see ``root``).  A
            string is a scheduler address, or ``"local"`` for a new local
            cluster (see :func:`connect`), closed with this index.  None: the
            shards are searched in this process, by threads.
        threads : int, optional
            In-process only: threads for all shards together (default: all cores).
        retries : int, default 2
            How many times a call is retried after a worker died (its shards are
            reopened on another worker first).

        Raises
        ------
        IndexNotFoundError, IndexFormatError
            No sharded index at ``root``, or an unreadable manifest or shard.
        ShardUnavailableError
            A shard cannot be opened.
        """
        root = Path(os.path.abspath(os.fspath(root)))
        man = _read_manifest(root)
        own = False
        if isinstance(client, str):
            client, own = connect(client), True
        try:
            return cls(root, man, client, threads, retries, own)
        except BaseException:
            if own:
                client.close()
            raise

    def close(self) -> None:
        """Close the shards (and the client, if this index created it).  Idempotent."""
        if self._closed:
            return
        self._closed = True
        for h in self._hosts:
            if h is None:
                continue
            try:
                if isinstance(h, _Local):
                    h.actor.close()
                else:
                    h.wait(h.call("close"))
            except Exception:  # noqa: BLE001 - a host whose worker died has nothing to close
                pass
        self._hosts = []
        if self._own_client and self._client is not None:
            self._client.close()

    def __enter__(self) -> "ShardedIndex":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"ShardedIndex({str(self.root)!r}, shards={self.n})"

    # ------------------------------------------------------------------ properties
    @property
    def metric(self) -> str:
        """Default metric of :meth:`search`."""
        return self._metric

    @property
    def dim(self) -> int:
        """Vector dimension."""
        return int(self._man["dim"])

    @property
    def path(self) -> Path:
        """The root directory."""
        return self.root

    def shard_of_id(self, gid: int) -> tuple[str, int]:
        """``(shard name, local id)`` of a global id."""
        g = int(gid)
        if g < 0:
            raise NotInIndexError(f"not an id: {gid}")
        return self.names[g % self.n], g // self.n

    def __len__(self) -> int:
        """Number of live images in all shards."""
        lens, _ = self._fanout("lens", ())
        return int(sum(lens.values()))

    def info(self) -> dict:
        """A JSON-able summary: ``path``, ``format_version``, ``descriptor``, ``dim``,
        ``metric``, ``count``, ``rows``, ``deleted``, ``size_bytes``, ``ann``
        (``built``: every shard has a graph, ``metric``), ``partition``,
        ``scheduler`` (address or ``"in-process"``), ``updated`` and ``shards``
        (name -> ``count``, ``rows``, ``deleted``, ``size_bytes``, ``ann_built``,
        ``host``)."""
        per, _ = self._fanout("info", ())
        shards = {}
        for s in range(self.n):
            i = per[s]
            shards[self.names[s]] = {"count": i["count"], "rows": i["rows"], "deleted": i["deleted"],
                                     "size_bytes": i["size_bytes"], "ann_built": bool(i["ann"]["built"]),
                                     "host": self._hosts[self._where[s]].worker}
        metrics = {per[s]["ann"]["metric"] for s in range(self.n)}
        return {
            "path": str(self.root), "format_version": self._man["format_version"],
            "descriptor": dict(self._man["descriptor"]), "dim": self.dim, "metric": self.metric,
            "count": sum(p["count"] for p in per.values()), "rows": sum(p["rows"] for p in per.values()),
            "deleted": sum(p["deleted"] for p in per.values()),
            "size_bytes": sum(p["size_bytes"] for p in per.values()),
            "ann": {"built": all(p["ann"]["built"] for p in per.values()),
                    "metric": metrics.pop() if len(metrics) == 1 else None},
            "partition": self._man.get("partition"), "updated": self._man.get("updated"),
            "scheduler": "in-process" if self._client is None else self._client.scheduler.address,
            "shards": shards,
        }

    def paths(self, ids: Iterable[int]) -> list[str]:
        """Paths (or names) of global ids, in order (KeyError for an unknown id)."""
        ids = [int(i) for i in ids]
        by: dict[int, list[int]] = {}
        for g in ids:
            if g < 0:
                raise NotInIndexError(f"not an id: {g}")
            by.setdefault(g % self.n, []).append(g // self.n)
        found: dict[int, str] = {}
        for s, local in by.items():
            got = self._call_shard(s, "paths", local)
            found.update({lid * self.n + s: p for lid, p in zip(local, got)})
        return [found[g] for g in ids]

    def vectors_of(self, ids: Iterable[int]) -> np.ndarray:
        """The stored vectors of global ids, ``(n, dim)`` float32."""
        ids = np.asarray(list(ids), dtype=np.int64)
        out = np.empty((ids.size, self.dim), dtype=np.float32)
        for s in np.unique(ids % self.n).tolist():
            sel = np.flatnonzero(ids % self.n == s)
            out[sel] = self._call_shard(s, "vectors", (ids[sel] // self.n).tolist())
        return out

    # ------------------------------------------------------------------ hosts
    def _check_shards(self) -> None:
        per, _ = self._fanout("info", ())
        for s in range(self.n):
            i = per[s]
            if i["dim"] != self.dim or i["descriptor"] != self._man["descriptor"]:
                raise IndexFormatError(f"{self.root / self.names[s]}: descriptor {i['descriptor']} / dim {i['dim']} "
                                       f"differ from the manifest's ({self._man['descriptor']}, {self.dim})")
            if i["whitening"]:
                raise IndexFormatError(
                    f"{self.root / self.names[s]}: a PCA-whitening or a learned projection is fitted on this "
                    "shard; each shard would search in its own space and the scores of the shards could not be "
                    "merged")

    def _assign(self, shards: list[int], hosts: list[int]) -> None:
        """Open ``shards`` on ``hosts`` (paired in order)."""
        by: dict[int, list[int]] = {}
        for s, h in zip(shards, hosts):
            by.setdefault(h, []).append(s)
        for h, ss in by.items():
            host = self._hosts[h]
            host.wait(host.call("open", ss))
            for s in ss:
                self._where[s] = h
                self._unavailable.pop(s, None)

    def _replace(self, lost_hosts: set[int], causes: dict[int, str]) -> None:
        """The hosts in ``lost_hosts`` died: reopen their shards on live workers."""
        orphans = sorted(s for s, h in self._where.items() if h in lost_hosts)
        for h in lost_hosts:
            self._dead.add(self._hosts[h].worker)  # the scheduler may list it for a while yet
            self._hosts[h] = None
        for s in orphans:
            self._where.pop(s, None)
        client = self._client
        try:
            workers = sorted(client.scheduler_info()["workers"])
        except Exception as exc:  # noqa: BLE001
            for s in orphans:
                self._unavailable[s] = f"the scheduler cannot be reached ({exc})"
            return
        live = {h.worker: i for i, h in enumerate(self._hosts) if h is not None}
        for w in workers:  # a restarted worker (new address) gets a host
            if w not in live and w not in self._dead:
                try:
                    self._hosts.append(_Remote(client, w, str(self.root), self.n))
                    live[w] = len(self._hosts) - 1
                except Exception as exc:  # noqa: BLE001
                    log.warning("%s: cannot start a shard host on %s (%s)", self.root, w, exc)
        if not live:
            for s in orphans:
                self._unavailable[s] = "no live worker to host it"
            return
        load = {h: 0 for h in live.values()}
        for s, h in self._where.items():
            if h in load:
                load[h] += 1
        for s in orphans:
            h = min(load, key=lambda i: (load[i], i))
            try:
                self._assign([s], [h])
                load[h] += 1
            except Exception as exc:  # noqa: BLE001 - the shard's files, or the new worker
                self._unavailable[s] = f"{type(exc).__name__}: {exc}"
        log.warning("%s: shards %s reopened after a worker was lost (%s)", self.root,
                    [self.names[s] for s in orphans], "; ".join(causes.values()))

    def _fanout(self, method: str, args: tuple, shards: Optional[Sequence[int]] = None,
                allow_partial: bool = False) -> tuple[dict, tuple]:
        """Call ``method(shards of the host, *args)`` on every host holding one of
        ``shards`` (default: all); returns ``(shard -> answer, missing shard names)``.
        A host whose worker died is replaced and the call retried."""
        if self._closed:
            raise IndexClosedError(f"{self.root}: the sharded index is closed")
        want = list(range(self.n)) if shards is None else list(shards)
        out: dict = {}
        with self._mutex:
            for attempt in range(self._retries + 1):
                todo = [s for s in want if s not in out and s not in self._unavailable]
                by: dict[int, list[int]] = {}
                for s in todo:
                    by.setdefault(self._where[s], []).append(s)
                pending: dict[int, Any] = {}
                lost: dict[int, str] = {}
                for h, ss in by.items():
                    try:
                        pending[h] = self._hosts[h].call(method, ss, *args)
                    except Exception as exc:  # noqa: BLE001 - sorted as below
                        if self._client is None or not _is_lost(exc):
                            raise
                        lost[h] = f"{self._hosts[h].worker}: {type(exc).__name__}: {exc}"
                for h, res in self._wait_all(pending).items():
                    if not isinstance(res, BaseException):
                        out.update(res)
                    elif self._client is None or not _is_lost(res):
                        raise res
                    else:  # a lost worker: retried below
                        lost[h] = f"{self._hosts[h].worker}: {type(res).__name__}: {res}"
                if not lost:
                    break
                if attempt == self._retries:
                    for h, cause in lost.items():
                        for s in by[h]:
                            self._unavailable.setdefault(s, cause)
                    break
                self._replace(set(lost), lost)
            missing = sorted(s for s in want if s not in out)
        if missing and not allow_partial:
            names = [self.names[s] for s in missing]
            causes = {self.names[s]: self._unavailable.get(s, "no answer") for s in missing}
            raise ShardUnavailableError(
                f"{self.root}: shard{'s' if len(names) > 1 else ''} {', '.join(names)} could not be searched ("
                + "; ".join(f"{n}: {c}" for n, c in causes.items())
                + "); pass allow_partial=True to search the others", names, causes)
        return out, tuple(self.names[s] for s in missing)

    def _wait_all(self, pending: dict) -> dict:
        """The answers (or exceptions) of calls in flight, host -> answer: on a
        cluster, awaited together in one hand-over to the client's event loop."""
        if self._client is None:
            return pending  # in-process: the calls ran already
        import asyncio

        keys = list(pending)

        async def gather() -> list:
            return await asyncio.gather(*(pending[h] for h in keys), return_exceptions=True)

        return {h: r if isinstance(r, BaseException) else pickle.loads(r)
                for h, r in zip(keys, self._client.sync(gather))}

    def _call_shard(self, s: int, method: str, *args: Any) -> Any:
        """One call about one shard (retried like :meth:`_fanout`)."""
        for attempt in range(self._retries + 1):
            with self._mutex:
                if s in self._unavailable:
                    raise ShardUnavailableError(f"{self.root / self.names[s]}: shard unavailable "
                                                f"({self._unavailable[s]})", [self.names[s]])
                h = self._where[s]
                host = self._hosts[h]
                try:
                    return host.wait(host.call(method, s, *args))
                except Exception as exc:  # noqa: BLE001
                    if self._client is None or not _is_lost(exc) or attempt == self._retries:
                        raise
                    self._replace({h}, {h: f"{host.worker}: {exc}"})
        raise AssertionError("unreachable")  # pragma: no cover

    # ------------------------------------------------------------------ queries
    def _descriptor(self) -> Any:
        if self._desc is None:
            spec = self._man["descriptor"]
            if spec.get("name") == "custom":
                from fastimg.errors import DescriptorError

                raise DescriptorError(f"{self.root}: the shards store custom vectors and cannot describe images: "
                                      "query by vector or by an indexed name")
            from fastimg.features.registry import descriptor_from_spec

            self._desc = descriptor_from_spec(spec)
        return self._desc

    def _describe(self, src: Any) -> np.ndarray:
        from fastimg.errors import ImageError
        from fastimg.features.registry import describe

        vec = np.asarray(describe(src, self._descriptor()), dtype=np.float32).reshape(-1)
        if vec.shape[0] != self.dim or not np.isfinite(vec).all():
            name = os.fspath(src) if isinstance(src, (str, os.PathLike)) else "<query>"
            raise ImageError(name, "descriptor failed", f"got {vec.shape[0]} values, non-finite or wrong size")
        return vec

    def _query(self, query: Any, allow_partial: bool = False) -> tuple[np.ndarray, set, bool]:
        """``(vector, global ids that are the query itself, match-identical flag)``,
        as :meth:`fastimg.Index.search` reads a query."""
        if isinstance(query, (str, os.PathLike)):
            s = os.fspath(query)
            custom = self._man["descriptor"].get("name") == "custom"
            key = s if custom else _file_key(s, _image_root(self.root))
            owner = shard_of(key, self.n)
            try:
                vec, gid = self._call_shard(owner, "resolve", s)
            except ShardUnavailableError:
                if not allow_partial or custom:
                    raise
                vec, gid = None, None  # its shard is left out: so is its own row
            if vec is None:  # the worker could not read the file: describe it here
                vec = self._describe(s)
            return vec, ({gid} if gid is not None else set()), False
        if isinstance(query, (bytes, bytearray, memoryview)):
            return self._describe(bytes(query)), set(), True
        arr = np.asarray(query)
        if arr.ndim == 1 and arr.dtype.kind in "fiu" and arr.dtype != np.uint8:
            if arr.shape[0] != self.dim:
                raise ArgumentError(f"a query vector must be 1-D of length {self.dim} (the index dimension); "
                                 f"got shape {arr.shape}")
            vec = arr.astype(np.float32)
            if not np.isfinite(vec).all():
                raise ArgumentError("query vector must be finite")
            return vec, set(), True
        return self._describe(arr), set(), True

    def search(self, query: Any, k: int = 10, *, metric: Optional[str] = None, exclude_self: bool = True,
               mode: str = "auto", ef: Optional[int] = None, candidates: Optional[int] = None,
               rerank: Optional[str] = None, allow_partial: bool = False) -> ShardedHits:
        """The ``k`` images of all shards most similar to ``query``, best first.

        The arguments are those of :meth:`fastimg.Index.search` (each shard runs
        it, in ``mode``), plus ``allow_partial``: when a shard cannot be searched,
        return the others' hits with :attr:`ShardedHits.missing` naming it,
        instead of raising :class:`ShardUnavailableError`.  Hits carry global ids
        (``local id * shards + shard``).
        """
        from fastimg.index import Hit
        from fastimg.index.query import check_search_args

        k, m = check_search_args(k, metric or self.metric, mode)
        vec, selfs, ident = self._query(query, allow_partial)
        ids, scores, paths, missing = self._run(vec.reshape(1, -1), k, m, mode, ef, candidates,
                                                [selfs if exclude_self else set()], [ident and exclude_self],
                                                rerank, allow_partial, want_paths=True)
        keep = ids[0] >= 0
        gids, sc = ids[0][keep].tolist(), scores[0][keep].tolist()
        need = [g for g in gids if g not in paths]
        if need:
            paths.update(zip(need, self.paths(need)))
        hits = ShardedHits(Hit(g, paths[g], s, r) for r, (g, s) in enumerate(zip(gids, sc), 1))
        hits.missing = missing
        return hits

    def search_batch(self, queries: Any, k: int = 10, *, metric: Optional[str] = None, exclude_self: bool = True,
                     mode: str = "auto", ef: Optional[int] = None, candidates: Optional[int] = None,
                     rerank: Optional[str] = None, allow_partial: bool = False) -> BatchResult:
        """Search many queries at once; as :meth:`fastimg.Index.search_batch` (a
        ``(Q, dim)`` array or a sequence of queries), with global ids (paths:
        :meth:`paths`) and ``allow_partial`` as in :meth:`search`."""
        from fastimg.index.query import check_search_args

        k, m = check_search_args(k, metric or self.metric, mode)
        if isinstance(queries, np.ndarray) and queries.ndim == 2 and queries.dtype.kind == "f":
            if queries.shape[1] != self.dim:
                raise ArgumentError(f"query vectors must have shape (Q, {self.dim}); got {queries.shape}")
            q = np.ascontiguousarray(queries, dtype=np.float32)
            if not np.isfinite(q).all():
                raise ArgumentError("query vectors must be finite")
            selfs: list[set] = [set() for _ in range(len(q))]
            ident = [exclude_self] * len(q)
        else:
            if isinstance(queries, (str, bytes, os.PathLike)) or (isinstance(queries, np.ndarray)
                                                                 and queries.ndim != 2):
                raise ArgumentError("search_batch takes a (Q, dim) array or a sequence of queries; "
                                 "use search() for one query")
            vs, selfs, ident = [], [], []
            for qu in queries:
                v, s, i = self._query(qu, allow_partial)
                vs.append(v)
                selfs.append(s if exclude_self else set())
                ident.append(i and exclude_self)
            q = np.stack(vs) if vs else np.zeros((0, self.dim), np.float32)
        if q.shape[0] == 0:
            return BatchResult((np.zeros((0, k), np.int64), np.zeros((0, k), np.float32)))
        ids, scores, _, missing = self._run(q, k, m, mode, ef, candidates, selfs, ident, rerank, allow_partial,
                                            want_paths=False)
        res = BatchResult((ids, scores))
        res.missing = missing
        return res

    def _run(self, q: np.ndarray, k: int, m: Any, mode: str, ef: Optional[int], candidates: Optional[int],
             selfs: list, ident: list, rerank: Optional[str], allow_partial: bool, *,
             want_paths: bool) -> tuple[np.ndarray, np.ndarray, dict, tuple]:
        k_out = k
        if rerank:
            from fastimg.rerank import candidates_needed

            k = candidates_needed(rerank, k)
        ids, scores, paths, missing, dropped = self._topk(q, k, m, mode, ef, candidates, selfs, ident,
                                                          allow_partial, want_paths)
        if not rerank:
            return ids, scores, paths, missing
        from fastimg import rerank as _rr

        out_i = np.full((len(q), k_out), -1, dtype=np.int64)
        out_s = np.full((len(q), k_out), np.nan, dtype=np.float32)
        for r in range(len(q)):
            own = set(dropped[r])  # the query's own rows stay out of the later searches

            def search(vectors: Any, kk: int, own: set = own) -> tuple[np.ndarray, np.ndarray]:
                vv = np.atleast_2d(np.asarray(vectors, dtype=np.float32))
                i2, s2, _, _, _ = self._topk(vv, int(kk), m, mode, ef, candidates, [own] * len(vv),
                                             [False] * len(vv), allow_partial, False)
                return i2, s2

            keep = ids[r] >= 0
            ri, rs = _rr.apply(rerank, q[r], ids[r][keep], scores[r][keep], get_vectors=self.vectors_of,
                               search=search, k=k_out, metric=m.name, complete=bool(keep.sum() < ids.shape[1]))
            ri, rs = np.asarray(ri, np.int64)[:k_out], np.asarray(rs, np.float32)[:k_out]
            out_i[r, :ri.size] = ri
            out_s[r, :rs.size] = rs
        return out_i, out_s, paths, missing

    def _topk(self, q: np.ndarray, k: int, m: Any, mode: str, ef: Optional[int], candidates: Optional[int],
              selfs: list, ident: list, allow_partial: bool, want_paths: bool
              ) -> tuple[np.ndarray, np.ndarray, dict, tuple, list]:
        """Every shard's top ``k + extra``, merged; the queries' own rows dropped
        (returned last, per query)."""
        extra = max([len(s) for s in selfs] + [0]) + (1 if any(ident) else 0)
        kk = k + extra
        parts, missing = self._fanout("search", (q, kk, m.name, mode, ef, candidates, any(ident), want_paths),
                                      allow_partial=allow_partial)
        self.last_shard_seconds = {self.names[s]: float(parts[s][4]) for s in parts}
        self.last_host_seconds = max([float(parts[s][5]) for s in parts] + [0.0])
        nq = q.shape[0]
        if not parts:
            return (np.full((nq, k), -1, np.int64), np.full((nq, k), np.nan, np.float32), {}, missing,
                    [set() for _ in range(nq)])
        order = sorted(parts)
        gids = np.concatenate([parts[s][0] for s in order], axis=1)
        scores = np.concatenate([parts[s][1] for s in order], axis=1)
        same = np.concatenate([parts[s][2] for s in order], axis=1) if any(ident) else None
        paths: dict = {}
        if want_paths:
            for s in order:
                paths.update(parts[s][3])
        # k-way merge: by score in the metric's direction, then by lower global id; padding last
        key = np.where(gids >= 0, -scores if m.higher_is_better else scores, np.inf)
        key = np.where(np.isnan(key), np.inf, key)
        pos = np.lexsort((gids, key), axis=-1)
        gids = np.take_along_axis(gids, pos, axis=1)
        scores = np.take_along_axis(scores, pos, axis=1)
        if same is not None:
            same = np.take_along_axis(same, pos, axis=1)
        out_i = np.full((nq, k), -1, dtype=np.int64)
        out_s = np.full((nq, k), np.nan, dtype=np.float32)
        dropped: list[set] = []
        for r in range(nq):
            keep = gids[r] >= 0
            if selfs[r]:
                keep &= ~np.isin(gids[r], np.fromiter(selfs[r], np.int64))
            gone = set(selfs[r])
            if ident[r] and same is not None:
                cand = gids[r][keep & same[r]]
                if cand.size:  # the lowest-id row identical to the query is the query itself
                    j = int(cand.min())
                    keep &= gids[r] != j
                    gone.add(j)
            dropped.append(gone)
            ri, rs = gids[r][keep][:k], scores[r][keep][:k]
            out_i[r, :ri.size] = ri
            out_s[r, :rs.size] = rs
        return out_i, out_s, paths, missing, dropped


# --------------------------------------------------------------------------- #
# clusters
# --------------------------------------------------------------------------- #

def connect(scheduler: str, **local_options: Any) -> Any:
    """A Dask client: ``"local"`` starts a local cluster of worker processes (one
    per core, one thread each, unless ``local_options`` say otherwise; closed with
    the client), anything else is a scheduler address (``tcp://host:8786``)."""
    try:
        from distributed import Client
    except ImportError:  # pragma: no cover - the extra is missing
        raise DaskMissingError("a Dask cluster needs the dask extra: pip install 'fastimg[dask]'") from None
    if scheduler == "local":
        from fastimg._threads import resolve_threads

        opts = {"n_workers": resolve_threads(None), "threads_per_worker": 1, "processes": True,
                "dashboard_address": ":0"}
        opts.update(local_options)
        return Client(**opts)
    return Client(scheduler)
