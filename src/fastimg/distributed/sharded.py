"""Searching a sharded index as one index: :class:`ShardedIndex` (the fan-out to
the shards' hosts, retries after a lost worker, the k-way merge) and its
results :class:`ShardedHits` and :class:`BatchResult`.  See the package docstring."""
from __future__ import annotations

import logging
import os
import pickle
import threading
from pathlib import Path
from typing import Any, Iterable, Optional, Sequence, Union

import numpy as np

from fastimg.distributed.hosts import LocalHost, RemoteHost, connect, is_lost
from fastimg.distributed.layout import (
    ShardUnavailableError,
    file_key,
    image_folder,
    current_spec,
    read_manifest,
    same_descriptor,
    shard_of,
)
from fastimg.errors import ArgumentError, IndexClosedError, IndexFormatError, NotInIndexError

__all__ = ["ShardedIndex", "ShardedHits", "BatchResult"]

log = logging.getLogger("fastimg.distributed")

PathLike = Union[str, "os.PathLike[str]"]


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

    #: A search whose scan reads at most this many bytes on a host (its shards' rows x
    #: the queries' bytes: an upper bound, the exact scan) runs on the worker's event
    #: loop thread rather than Dask's actor thread: two thread hand-overs less per call.
    #: 256 MiB is ~20-50 ms of scanning on one core (bench/README.md), short enough not
    #: to hold up the worker's heartbeats and messages; larger calls (big batches) keep
    #: Dask's actor thread.
    INLINE_BYTES = 1 << 28

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
        self._rows: dict[int, int] = {}  # shard -> stored rows (live and deleted), read at open
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
                self._hosts.append(LocalHost(str(root), self.n, threads))
                self._assign(list(range(self.n)), [0] * self.n)
            else:
                workers = sorted(client.scheduler_info()["workers"])
                if not workers:
                    raise ShardUnavailableError(f"{root}: the Dask cluster has no workers", self.names)
                use = workers[:self.n]
                for w in use:
                    self._hosts.append(RemoteHost(client, w, str(root), self.n))
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
        man = read_manifest(root)
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
                if isinstance(h, LocalHost):
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
        ``scheduler`` (address or ``"in-process"``), ``updated``, ``precision`` and
        ``scan_precision`` (as :meth:`fastimg.Index.info`: the shards' common value, or
        ``"mixed"``; a sharded index has no whitening or projection: opening one refuses
        them) and ``shards`` (name ->
        ``count``, ``rows``, ``deleted``, ``size_bytes``, ``ann_built``, ``precision``,
        ``host``)."""
        per, _ = self._fanout("info", ())
        shards = {}
        for s in range(self.n):
            i = per[s]
            shards[self.names[s]] = {"count": i["count"], "rows": i["rows"], "deleted": i["deleted"],
                                     "size_bytes": i["size_bytes"], "ann_built": bool(i["ann"]["built"]),
                                     "precision": i.get("precision"), "host": self._hosts[self._where[s]].worker}
        metrics = {per[s]["ann"]["metric"] for s in range(self.n)}

        def common(key: str) -> Any:
            values = {per[s].get(key) for s in range(self.n)}
            return values.pop() if len(values) == 1 else "mixed"

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
            "precision": common("precision"), "scan_precision": common("scan_precision"),
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
        self._rows = {s: int(per[s]["rows"]) for s in range(self.n)}
        for s in range(self.n):
            i = per[s]
            if i["dim"] != self.dim or not same_descriptor(i["descriptor"], self._man["descriptor"]):
                raise IndexFormatError(f"{self.root / self.names[s]}: descriptor {i['descriptor']} / dim {i['dim']} "
                                       f"differ from the manifest's ({self._man['descriptor']}, {self.dim})")
            if i["whitening"] or i["projection"]:
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
                    self._hosts.append(RemoteHost(client, w, str(self.root), self.n))
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
                allow_partial: bool = False, bytes_per_row: int = 0) -> tuple[dict, tuple]:
        """Call ``method(shards of the host, *args)`` on every host holding one of
        ``shards`` (default: all); returns ``(shard -> answer, missing shard names)``.
        A host whose worker died is replaced and the call retried.  ``bytes_per_row``
        (a search's bytes read per stored row): a host whose rows times this is at most
        :attr:`INLINE_BYTES` runs the call inline (``RemoteHost.call``)."""
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
                    work = sum(self._rows.get(s, 0) for s in ss) * bytes_per_row
                    inline = 0 < bytes_per_row and work <= self.INLINE_BYTES
                    try:
                        pending[h] = self._hosts[h].call(method, ss, *args, inline=inline)
                    except Exception as exc:  # noqa: BLE001 - sorted as below
                        if self._client is None or not is_lost(exc):
                            raise
                        lost[h] = f"{self._hosts[h].worker}: {type(exc).__name__}: {exc}"
                for h, res in self._wait_all(pending).items():
                    if not isinstance(res, BaseException):
                        out.update(res)
                    elif self._client is None or not is_lost(res):
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
                    if self._client is None or not is_lost(exc) or attempt == self._retries:
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

            now = current_spec(spec)
            if now.get("version") != spec.get("version"):
                raise IndexFormatError(
                    f"{self.root}: the shards hold {spec.get('name')!r} vectors of descriptor version "
                    f"{spec.get('version')} and this fastimg describes images with version {now.get('version')} "
                    "(not comparable): run the build again (`fastimg index DIR --shards N`, build_shards), which "
                    "re-describes the indexed files first; until then only indexed images, names and vectors "
                    "can be queries")
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
            key = s if custom else file_key(s, image_folder(self.root))
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
                                      allow_partial=allow_partial, bytes_per_row=q.nbytes)
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

