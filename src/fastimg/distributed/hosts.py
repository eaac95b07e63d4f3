"""The hosts of a sharded index's shards: :class:`ShardHost` holds some shards
open read-only and searches them, as a Dask actor on one worker
(:class:`RemoteHost`) or in this process (:class:`LocalHost`); and
:func:`connect`, the Dask client of ``--scheduler``."""
from __future__ import annotations

import os
import pickle
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Optional, Sequence

import numpy as np

from fastimg.distributed.layout import DaskMissingError, shard_name
from fastimg.errors import FastimgError

__all__ = ["ShardHost", "RemoteHost", "LocalHost", "is_lost", "worker_threads", "connect"]


def worker_threads(workers: Optional[int]) -> Optional[int]:
    """``workers`` if given, else the threads of the Dask worker running this (None
    outside a worker: all cores)."""
    if workers is not None:
        return workers
    try:  # on a Dask worker: its threads
        from distributed import get_worker

        return int(get_worker().state.nthreads)
    except (ImportError, ValueError, AttributeError):
        return None


class ShardHost:
    """Holds some shards of a sharded index open read-only and searches them.

    One per Dask worker (created as an actor: its methods run on that worker,
    the shards stay open between calls), or one in this process.  Every method
    takes the shard numbers it works on and returns a dict shard -> answer.
    """

    def __init__(self, root: str, n_shards: int, threads: Optional[int] = None):
        self.root = root
        self.n = int(n_shards)
        self.threads = threads if threads is not None else worker_threads(None)
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
                    "whitening": i["whitening"] is not None, "projection": i.get("projection") is not None,
                    "precision": i["precision"], "scan_precision": i["scan_precision"],
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


def is_lost(exc: BaseException) -> bool:
    """An error of the cluster (a worker gone, a connection closed), not of the search."""
    if isinstance(exc, FastimgError):
        return False
    import asyncio
    import concurrent.futures

    return isinstance(exc, (RuntimeError, OSError, TimeoutError, asyncio.CancelledError,
                            concurrent.futures.CancelledError, EOFError))


class RemoteHost:
    """A host as a Dask actor on one worker."""

    #: Seconds to wait for a host to start (a worker the scheduler still lists may be dead).
    START_TIMEOUT = 60.0

    def __init__(self, client: Any, worker: str, root: str, n: int):
        self.worker = worker
        fut = client.submit(ShardHost, root, n, actor=True, workers=[worker], allow_other_workers=False,
                             pure=False)
        self.future = fut
        try:
            self.actor = fut.result(timeout=self.START_TIMEOUT)
        except BaseException:
            fut.cancel()
            raise

    def call(self, method: str, *args: Any, inline: bool = False) -> Any:
        """Start ``method(*args)`` on the host; :meth:`wait` for the answer.  ``inline``:
        run it on the worker's event loop thread instead of Dask's actor thread
        (``separate_thread=False``), two thread hand-overs less per call (~0.3-0.6 ms
        measured, bench/distributed.md); only for calls short enough not to hold up
        the worker's communication (see ``ShardedIndex.INLINE_BYTES``)."""
        blob = pickle.dumps((method, args), protocol=pickle.HIGHEST_PROTOCOL)
        if inline:
            return self.actor.packed(blob, separate_thread=False)
        return self.actor.packed(blob)

    @staticmethod
    def wait(pending: Any) -> Any:
        return pickle.loads(pending.result())


class LocalHost:
    """The in-process host."""

    def __init__(self, root: str, n: int, threads: Optional[int]):
        self.worker = "local"
        self.actor = ShardHost(root, n, threads)

    def call(self, method: str, *args: Any, inline: bool = False) -> Any:
        return getattr(self.actor, method)(*args)

    @staticmethod
    def wait(pending: Any) -> Any:
        return pending



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
