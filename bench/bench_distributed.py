"""fastimg.distributed: extraction throughput on a Dask cluster, and the latency of
sharded search against one index.  Results: bench/distributed.md.

Run (one command per table; the machine's load average is printed with each)::

    .venv/bin/python bench/bench_distributed.py extract            # Corel-1k, 1 and 2 worker processes
    .venv/bin/python bench/bench_distributed.py build --n 1000000 --dir /tmp/fi1m   # the roots, once
    .venv/bin/python bench/bench_distributed.py search --n 1000000 --dir /tmp/fi1m  # 1 index vs 4 and 8 shards
    .venv/bin/python bench/bench_distributed.py search --n 100000 --ann --dir /tmp/fi100k  # with HNSW graphs

(``search`` without ``--dir`` builds the roots in a temporary folder first.)
``make test`` runs both on toy sizes (``test_tiny``) so the script cannot rot.

**extract** describes the same files (``hsv72``) five ways, in interleaved
rounds (every variant once per round; the best round is reported):

* ``describe_many`` in this process, 1 thread and 2 threads (no index written);
* ``Index.add`` of one index in this process (2 threads);
* ``build_shards`` on a ``LocalCluster`` of 1 and of 2 worker processes (1 thread
  each), the workers writing their shards (the chosen design);
* the alternative design's extraction half: the same batches described on the 2
  workers and their vectors sent back to the client (nothing written).

**search** builds one ``descriptor="custom"`` index and 4- and 8-shard roots
holding the same N random vectors (D = 128, cosine), then times single-vector
queries (k = 10) in interleaved rounds: the one index; the shards in this
process (threads); the shards on a ``LocalCluster`` of 2 worker processes of 1
thread, and of 2 threads; ``search_batch`` of all the round's queries in one call
on the first cluster (time per query); and the floor: Dask actor calls that do
nothing, to one host and to both hosts at once.  For the sharded runs it also
records the slowest shard's own time (``ShardedIndex.last_shard_seconds``) and
the slowest host's (a host searches its shards with its threads: with one
thread, one after the other; ``last_host_seconds``): latency minus the slowest
host is the fan-out and merge overhead.
"""
from __future__ import annotations

import argparse
import logging
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from conftest import SHARED_DATA  # noqa: E402

COREL = SHARED_DATA / "corel1k"


def _load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def _cluster(n_workers: int, threads: int = 1):
    from distributed import Client, LocalCluster

    cluster = LocalCluster(n_workers=n_workers, threads_per_worker=threads, processes=True, dashboard_address=":0",
                           silence_logs=logging.ERROR)
    return Client(cluster), cluster


def _images(limit: int, tmp: Path) -> list[str]:
    if COREL.is_dir():
        files = sorted(str(p) for p in COREL.rglob("*.jpg"))
        if files:
            return files[:limit]
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from _photos import generated_photo

    return [str(generated_photo(tmp / "gen" / f"{i:04d}.jpg", i % 10, i, size=(256, 384))) for i in range(limit)]


def _describe_batch(paths: list[str]) -> np.ndarray:
    from fastimg import describe_many

    mat, _ = describe_many(paths, "hsv72", workers=1)
    return mat


# --------------------------------------------------------------------------- #
# extraction
# --------------------------------------------------------------------------- #

def run_extract(n_images: int, rounds: int, batch: int, shards: int, out=print) -> dict:
    from fastimg import Index, describe_many
    from fastimg.distributed import build_shards

    tmp = Path(tempfile.mkdtemp(prefix="fastimg-bench-dist-"))
    files = _images(n_images, tmp)
    c1, k1 = _cluster(1)
    c2, k2 = _cluster(2)
    try:
        def fresh(name: str) -> Path:
            p = tmp / name
            shutil.rmtree(p, ignore_errors=True)
            return p

        def gather_back() -> None:
            futs = c2.map(_describe_batch, [files[i:i + batch] for i in range(0, len(files), batch)], pure=False)
            mats = c2.gather(futs)
            assert sum(len(m) for m in mats) == len(files)

        def index_add() -> None:
            with Index.create(fresh("one")) as idx:
                idx.add(files, workers=2, recursive=False)

        variants = {
            "describe_many, in-process, 1 thread": lambda: describe_many(files, "hsv72", workers=1),
            "describe_many, in-process, 2 threads": lambda: describe_many(files, "hsv72", workers=2),
            "Index.add, in-process, 2 threads": index_add,
            "build_shards, 1 worker process": lambda: build_shards(files, fresh("s1"), shards=shards, client=c1,
                                                                   batch_size=batch),
            "build_shards, 2 worker processes": lambda: build_shards(files, fresh("s2"), shards=shards, client=c2,
                                                                     batch_size=batch),
            "describe on 2 workers, vectors sent back (no index)": gather_back,
        }
        for fn in variants.values():  # warm-up: kernels compiled/loaded in every process
            fn()
        times: dict[str, list[float]] = {k: [] for k in variants}
        loads = [_load()]
        for _ in range(rounds):
            for name, fn in variants.items():
                t0 = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - t0)
            loads.append(_load())
    finally:
        c1.close(), k1.close(), c2.close(), k2.close()
        shutil.rmtree(tmp, ignore_errors=True)
    best = {k: min(v) for k, v in times.items()}
    rate = {k: len(files) / v for k, v in best.items()}
    base = rate["describe_many, in-process, 1 thread"]
    out(f"\n{len(files)} images ({'Corel-1k' if COREL.is_dir() else 'generated'}), hsv72, {shards} shards, "
        f"{batch} files per task, best of {rounds} interleaved rounds; load average (1, 5, 15 min) before and "
        f"after each round: {' | '.join(loads)}\n")
    out("| variant | seconds (best) | median | images/s | vs in-process 1 thread |")
    out("|---|---:|---:|---:|---:|")
    for name in variants:
        out(f"| {name} | {best[name]:.2f} | {statistics.median(times[name]):.2f} | {rate[name]:.0f} | "
            f"{rate[name] / base:.2f}x |")
    one, two = rate["build_shards, 1 worker process"], rate["build_shards, 2 worker processes"]
    out(f"\nscaling efficiency, 2 worker processes vs 1: {two / (2 * one):.0%}; 1 worker process vs "
        f"in-process describe_many (1 thread): {one / base:.0%}; writing on the workers vs sending the vectors "
        f"back (2 workers): {two / rate['describe on 2 workers, vectors sent back (no index)']:.0%} of the "
        "throughput")
    return rate


# --------------------------------------------------------------------------- #
# search
# --------------------------------------------------------------------------- #

def _roots_ok(tmp: Path, n: int, d: int, shard_counts: list[int], ann: bool) -> bool:
    """True when ``tmp`` holds the roots of these sizes (built by an earlier ``build``)."""
    import json

    try:
        one = json.loads((tmp / "one" / "manifest.json").read_text())
        if one["dim"] != d:
            return False
        for s in shard_counts:
            man = json.loads((tmp / f"s{s}" / "fastimg-shards.json").read_text())
            if man["count"] != n or len(man["shards"]) != s or man["dim"] != d:
                return False
        return (tmp / "built").is_file() and (tmp / "built").read_text().split() == [str(n), str(int(ann))]
    except (OSError, ValueError, KeyError):
        return False


def _build_vectors(tmp: Path, n: int, d: int, shard_counts: list[int], ann: bool) -> None:
    from fastimg import Index
    from fastimg.distributed import add_vectors

    for p in [tmp / "one", tmp / "built"] + [tmp / f"s{s}" for s in shard_counts]:
        if p.is_dir():
            shutil.rmtree(p)
        elif p.exists():
            p.unlink()
    tmp.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    chunk = 100_000
    with Index.create(tmp / "one", descriptor="custom", dim=d, metric="cosine") as one:
        roots = {s: tmp / f"s{s}" for s in shard_counts}
        for start in range(0, n, chunk):
            x = rng.standard_normal((min(chunk, n - start), d), dtype=np.float32)
            names = [f"v{i}" for i in range(start, start + len(x))]
            one.add_vectors(x, names)
            for s, root in roots.items():
                add_vectors(root, x, names, shards=s, metric="cosine")
        if ann:
            one.build_ann()
    if ann:
        for root in roots.values():
            add_vectors(root, np.zeros((0, d), np.float32), [], ann=True)
    (tmp / "built").write_text(f"{n} {int(ann)}\n")


class _Ping:
    """Dask actor calls that do nothing (``ShardHost.pid``) on the hosts of a sharded
    index, all at once like a search's fan-out: the floor Dask puts under a call."""

    def __init__(self, sharded, hosts: int):
        self.sharded = sharded
        self.hosts = sharded._hosts[:hosts]

    def search(self, *_, **__):
        if len(self.hosts) == 1:
            return self.hosts[0].wait(self.hosts[0].call("pid"))
        return self.sharded._wait_all({i: h.call("pid") for i, h in enumerate(self.hosts)})


class _Batch:
    """``search_batch`` of all the round's queries in one call; timed per query."""

    def __init__(self, sharded):
        self.sharded = sharded


def run_search(n: int, d: int, rounds: int, queries: int, shard_counts: list[int], ann: bool, out=print,
               root: Path | None = None, threads_per_worker: bool = True) -> dict:
    from fastimg import Index
    from fastimg.distributed import ShardedIndex

    tmp = root if root is not None else Path(tempfile.mkdtemp(prefix="fastimg-bench-dist-"))
    mode = "ann" if ann else "exact"
    clusters = []
    try:
        t0 = time.perf_counter()
        built = "reused"
        if not _roots_ok(tmp, n, d, shard_counts, ann):
            _build_vectors(tmp, n, d, shard_counts, ann)
            built = f"built in {time.perf_counter() - t0:.0f} s"
        rng = np.random.default_rng(1)
        qs = rng.standard_normal((queries, d), dtype=np.float32)
        clusters.append(_cluster(2))
        if threads_per_worker:
            clusters.append(_cluster(2, threads=2))
        handles: dict = {"one index, in-process": Index.open(tmp / "one", threads=2)}
        for s in shard_counts:
            handles[f"{s} shards, in-process (threads)"] = ShardedIndex.open(tmp / f"s{s}", threads=2)
            handles[f"{s} shards, 2 worker processes"] = ShardedIndex.open(tmp / f"s{s}", client=clusters[0][0])
            if threads_per_worker:
                handles[f"{s} shards, 2 worker processes x 2 threads"] = ShardedIndex.open(
                    tmp / f"s{s}", client=clusters[1][0])
            handles[f"{s} shards, 2 worker processes, search_batch of {queries} (per query)"] = _Batch(
                handles[f"{s} shards, 2 worker processes"])
        try:
            ref = handles["one index, in-process"]
            for name, h in handles.items():  # warm-up (page cache, prepared matrices) and a check
                if isinstance(h, _Batch):
                    continue
                for q in qs[:3]:
                    got = [x.path for x in h.search(q, 10, mode=mode)]
                    want = [x.path for x in ref.search(q, 10, mode=mode)]
                    if mode == "exact":
                        assert got == want, name
            first = handles[f"{shard_counts[0]} shards, 2 worker processes"]
            handles["Dask actor call doing nothing, 1 host (round-trip floor)"] = _Ping(first, 1)
            handles["Dask actor calls doing nothing, 2 hosts at once (fan-out floor)"] = _Ping(first, 2)
            lat: dict[str, list[float]] = {k: [] for k in handles}
            slow: dict[str, list[float]] = {k: [] for k in handles}
            host: dict[str, list[float]] = {k: [] for k in handles}
            loads = [_load()]
            for _ in range(rounds):
                for name, h in handles.items():
                    if isinstance(h, _Batch):
                        t = time.perf_counter()
                        h.sharded.search_batch(qs, 10, mode=mode)
                        lat[name].append((time.perf_counter() - t) / len(qs))
                        continue
                    for q in qs:
                        t = time.perf_counter()
                        h.search(q, 10, mode=mode)
                        dt = time.perf_counter() - t
                        lat[name].append(dt)
                        if isinstance(h, ShardedIndex):
                            slow[name].append(max(h.last_shard_seconds.values()))
                            host[name].append(h.last_host_seconds)
                loads.append(_load())
        finally:
            for h in handles.values():
                if isinstance(h, (Index, ShardedIndex)):
                    h.close()
    finally:
        for c, k in clusters:
            c.close(), k.close()
        if root is None:
            shutil.rmtree(tmp, ignore_errors=True)
    base = statistics.median(lat["one index, in-process"])
    out(f"\nN = {n:,}, D = {d}, cosine, k = 10, mode = {mode}, {queries} queries x {rounds} interleaved rounds "
        f"(medians of the per-query times; roots {built}); load average before and after each round: "
        f"{' | '.join(loads)}\n")
    out("| setup | latency ms (median) | p90 | slowest shard ms | slowest host ms | over the slowest shard ms | "
        "over the slowest host ms | vs one index |")
    out("|---|---:|---:|---:|---:|---:|---:|---:|")
    res = {}
    for name in handles:
        v = sorted(lat[name])
        med, p90 = statistics.median(v) * 1e3, v[int(0.9 * (len(v) - 1))] * 1e3

        def col(xs: list[float], minus: bool = False, v=v) -> str:
            if not xs:
                return "-"
            if minus:  # per query: latency - that query's slowest shard / host
                return f"{statistics.median([a - b for a, b in zip(lat[name], xs)]) * 1e3:.2f}"
            return f"{statistics.median(xs) * 1e3:.2f}"

        out(f"| {name} | {med:.2f} | {p90:.2f} | {col(slow[name])} | {col(host[name])} | "
            f"{col(slow[name], True)} | {col(host[name], True)} | {base * 1e3 / med:.2f}x |")
        res[name] = med
    return res


# --------------------------------------------------------------------------- #
# make test: toy sizes
# --------------------------------------------------------------------------- #

def test_tiny() -> None:
    run_extract(24, rounds=1, batch=6, shards=2, out=lambda *a: None)
    run_search(3000, 16, rounds=1, queries=3, shard_counts=[2], ann=False, out=lambda *a: None,
               threads_per_worker=False)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="part", required=True)
    e = sub.add_parser("extract")
    e.add_argument("--images", type=int, default=1000)
    e.add_argument("--rounds", type=int, default=3)
    e.add_argument("--batch", type=int, default=50, help="files per build task")
    e.add_argument("--shards", type=int, default=4)
    s = sub.add_parser("search")
    s.add_argument("--n", type=int, default=1_000_000)
    s.add_argument("--d", type=int, default=128)
    s.add_argument("--rounds", type=int, default=3)
    s.add_argument("--queries", type=int, default=30)
    s.add_argument("--shards", type=int, nargs="+", default=[4, 8])
    s.add_argument("--ann", action="store_true", help="HNSW graphs on every index and shard; mode='ann'")
    s.add_argument("--dir", type=Path, help="keep the roots here (reused when they match --n/--d/--shards/--ann)")
    s.add_argument("--no-threads-per-worker", dest="tpw", action="store_false",
                   help="leave out the cluster of 2 worker processes x 2 threads")
    b = sub.add_parser("build", help="only build the roots of `search --dir` (a heavy job: run it apart)")
    b.add_argument("--n", type=int, default=1_000_000)
    b.add_argument("--d", type=int, default=128)
    b.add_argument("--shards", type=int, nargs="+", default=[4, 8])
    b.add_argument("--ann", action="store_true")
    b.add_argument("--dir", type=Path, required=True)
    a = ap.parse_args()
    print(f"fastimg.distributed benchmark, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, "
          f"{os.cpu_count()} cores, load average {_load()}")
    if a.part == "extract":
        run_extract(a.images, a.rounds, a.batch, a.shards)
    elif a.part == "build":
        t0 = time.perf_counter()
        _build_vectors(a.dir, a.n, a.d, a.shards, a.ann)
        print(f"built {a.dir} in {time.perf_counter() - t0:.0f} s")
    else:
        run_search(a.n, a.d, a.rounds, a.queries, a.shards, a.ann, root=a.dir, threads_per_worker=a.tpw)


if __name__ == "__main__":
    main()
