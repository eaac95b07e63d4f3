"""The index at scale: open time and resident memory while searching.

What is measured (same index, same run, baselines side by side):

* **open**: ``Index.open(path)`` of an index of N vectors (reads the manifest and
  two SQLite rows; the float32 matrix is memory-mapped, nothing is read eagerly),
  ``Index.open + len()``, versus loading the same matrix eagerly with
  ``np.load`` (``.npy``) and ``np.fromfile`` (what a non-mapped store must do).
* **resident memory** (fresh subprocess per case, ``/proc/self/status``): anonymous
  (``RssAnon``, private copies) and file-backed (``RssFile``, page cache mapped
  into the process, shared and reclaimable) growth after opening and after 20
  exact queries, for fastimg (prepared-matrix cache on disk, as its writer left
  it, and without it: the reader prepares the rows in memory) versus the matrix
  loaded with ``np.fromfile`` and searched with numpy.
* **threads** (``--threads``): 688 searches by one thread, by 4 threads sharing
  one read-only handle, and by 4 threads with a handle each.
* **read-only handles** (``--read-only``): the first and the next search per
  metric on a read-only handle (the default metric mapped from the writer's
  cache, the others prepared in memory), and the directory's size before/after.
* **search**: one exact top-10 query on the open index (context; the kernels are
  benchmarked in the search module's benchmarks).
* **per-call cost** (N = 1,000 rows, whatever the scale): ``Index.search`` by
  vector against the :class:`fastimg.search.ExactSearcher` it wraps (the same
  rows, its prepared matrix memory-mapped from the index's cache), and against an
  ``ExactSearcher`` over in-memory arrays; ``search_batch`` of one query (no
  paths).  The difference is what the index adds per call (state check, query
  parsing, "self", paths, ``Hit`` objects).

Sizes follow ``FASTIMG_BENCH_SCALE`` (bench/conftest.py): N = 2,000 / 100,000 /
1,000,000 histogram-like vectors of dimension 72 (the ``hsv72`` descriptor),
metric Bhattacharyya (the index default).  Run by hand (and write the table)::

    flock /tmp/fastimg-bench.lock env FASTIMG_BENCH_SCALE=full \\
        .venv/bin/python bench/bench_index.py > bench/index.md

or as pytest-benchmark (``make bench``).  Results: ``bench/index.md``.  On a
shared machine, time the per-call group in CPU time of the calling thread
(``--benchmark-timer time.thread_time``: N = 1,000 scans on one thread) and read
the ratios; ``python bench/bench_index.py --per-call`` prints that table alone
(interleaved runs, best block of each), e.g. for a checkout of an older fastimg.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional

import numpy as np
import pytest
from conftest import pick, scale

N = pick(2_000, 100_000, 1_000_000)
D = 72
METRIC = "bhattacharyya"
QUERIES = 20
_STEP = 100_000


def build(path: Path, n: int = N, d: int = D) -> tuple[Path, Path]:
    """Create an index of ``n`` clustered, L1-normalised non-negative vectors at
    ``path`` (via ``add_vectors`` in chunks), and the same matrix as a ``.npy``
    file beside it for the baselines."""
    from fastimg.index import Index

    rng = np.random.default_rng(0)
    centres = rng.gamma(0.5, 1.0, (64, d))
    npy = path.with_suffix(".npy")
    out = np.lib.format.open_memmap(npy, mode="w+", dtype=np.float32, shape=(n, d))
    with Index.create(path, descriptor="custom", dim=d, metric=METRIC) as index:
        for start in range(0, n, _STEP):
            m = min(_STEP, n - start)
            x = centres[rng.integers(0, 64, m)] * rng.gamma(2.0, 0.5, (m, d))
            x = (x / x.sum(axis=1, keepdims=True)).astype(np.float32)
            index.add_vectors(x, [f"img{start + i:07d}.jpg" for i in range(m)])
            out[start:start + m] = x
    out.flush()
    del out
    return path, npy


def _queries(d: int = D) -> np.ndarray:
    rng = np.random.default_rng(1)
    q = rng.gamma(0.5, 1.0, (QUERIES, d))
    return (q / q.sum(axis=1, keepdims=True)).astype(np.float32)


# --------------------------------------------------------------------------- memory probe
_PROBE = r"""
import json, sys, time
import numpy as np

def mem():
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(("RssAnon:", "RssFile:", "RssShmem:")):
                k, v = line.split(":")
                out[k] = int(v.split()[0]) * 1024
    return out

def mapped(*names):
    # resident size of the mappings of files whose path contains one of names
    cur, tot = None, 0
    with open("/proc/self/smaps") as f:
        for line in f:
            parts = line.split()
            if len(parts) >= 6 and "-" in parts[0]:
                cur = parts[-1] if any(n in parts[-1] for n in names) else None
            elif cur and line.startswith("Rss:"):
                tot += int(parts[1]) * 1024
    return tot

case, path, npy, metric, queries = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5]
Q = np.load(queries)
import fastimg.index, fastimg.search, fastimg.metrics, fastimg._core  # import cost is not the index's
m0 = mem()
t0 = time.perf_counter()
if case == "fastimg":
    ix = fastimg.index.Index.open(path)
    n = len(ix)
else:
    X = np.fromfile(path + "/vectors.0.f32", dtype="<f4").reshape(-1, Q.shape[1])
    n = len(X)
t_open = time.perf_counter() - t0
m1 = mem()
t0 = time.perf_counter()
if case == "fastimg":
    for q in Q:
        ix.search(q, k=10, metric=metric, mode="exact")
else:
    # numpy baseline: Bhattacharyya via the square-root rows (cv2's formula)
    S = np.sqrt(X / X.sum(axis=1, keepdims=True))
    for q in Q:
        bc = S @ np.sqrt(q / q.sum())
        d = np.sqrt(np.maximum(1.0 - bc, 0.0))
        top = np.argpartition(d, 10)[:10]
t_search = time.perf_counter() - t0
m2 = mem()
files = {"vectors": mapped("vectors."), "cache": mapped("/cache/")}
print(json.dumps({"n": n, "open_s": t_open, "search_s": t_search, "before": m0, "opened": m1, "searched": m2,
                  "files": files}))
"""


def probe(case: str, path: Path, npy: Path, metric: str = METRIC) -> dict:
    """Run one memory probe in a fresh interpreter; returns its JSON report."""
    with tempfile.TemporaryDirectory() as tmp:
        qfile = Path(tmp) / "q.npy"
        np.save(qfile, _queries())
        script = Path(tmp) / "probe.py"
        script.write_text(_PROBE)
        res = subprocess.run([sys.executable, str(script), case, str(path), str(npy), metric, str(qfile)],
                             capture_output=True, text=True, timeout=1800)
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout.strip().splitlines()[-1])


def _clear_cache(path: Path) -> None:
    cache = path / "cache"
    if cache.is_dir():
        for f in cache.iterdir():
            f.unlink()


# --------------------------------------------------------------------------- pytest-benchmark
@pytest.fixture(scope="module")
def big(tmp_path_factory) -> tuple[Path, Path]:
    return build(tmp_path_factory.mktemp("bench-index") / "big.fastimg")


@pytest.mark.benchmark(group=f"index-open-N{N}")
def test_open(benchmark, big):
    from fastimg.index import Index

    def run():
        Index.open(big[0]).close()

    benchmark(run)


@pytest.mark.benchmark(group=f"index-open-N{N}")
def test_open_and_len(benchmark, big):
    from fastimg.index import Index

    def run():
        with Index.open(big[0]) as ix:
            return len(ix)

    assert benchmark(run) == N


@pytest.mark.benchmark(group=f"index-open-N{N}")
def test_baseline_np_load(benchmark, big):
    assert benchmark(np.load, big[1]).shape == (N, D)


@pytest.mark.benchmark(group=f"index-open-N{N}")
def test_baseline_np_fromfile(benchmark, big):
    assert benchmark(np.fromfile, big[0] / "vectors.0.f32", dtype="<f4").size == N * D


@pytest.mark.benchmark(group=f"index-search-N{N}")
def test_search_exact_open_index(benchmark, big):
    from fastimg.index import Index

    q = _queries()[0]
    with Index.open(big[0]) as ix:
        ix.search(q, k=10)  # builds / maps the prepared cache
        hits = benchmark(ix.search, q, 10, mode="exact")
    assert len(hits) == 10


def test_resident_memory(big):
    """Records the probes (no timing assertion); checks the structural claim that
    searching the index makes no anonymous copy of the matrix."""
    matrix = N * D * 4
    warm = probe("fastimg", *big)    # prepared cache on disk (written by the writer on close): mapped
    _clear_cache(big[0])
    first = probe("fastimg", *big)   # no cache: the reader prepares the rows in memory (it never writes)
    base = probe("numpy", *big)
    anon = warm["searched"]["RssAnon"] - warm["before"]["RssAnon"]
    base_anon = base["searched"]["RssAnon"] - base["before"]["RssAnon"]
    print(json.dumps({"matrix_bytes": matrix, "fastimg_first": first, "fastimg": warm, "numpy": base}))
    if scale() != "tiny":  # at toy sizes allocator noise dominates
        assert anon < 0.25 * matrix, (anon, matrix)
        assert base_anon > matrix


# --------------------------------------------------------------------------- per-call cost
PER_CALL_N = 1_000


def per_call_setup(path: Path) -> tuple:
    """``(index, wrapped searcher, in-memory searcher, query)`` over the same
    ``PER_CALL_N`` rows; the index's prepared cache is written first."""
    from fastimg.index import Index
    from fastimg.search import ExactSearcher

    build(path, n=PER_CALL_N)
    q = _queries()[0]
    ix = Index.open(path)
    ix.search(q, k=10, mode="exact")  # maps the prepared cache (written by build()'s writer on close)
    # cache/<metric>-prepared.g<G>.n<N>.c<CRC-32>.npy
    (cache,) = (path / "cache").glob(f"{METRIC}-prepared.g0.n{PER_CALL_N}.c*.npy")
    prepared = np.load(cache, mmap_mode="r")
    wrapped = ExactSearcher(ix.vectors, METRIC, prepared=prepared)
    in_memory = ExactSearcher(np.array(ix.vectors), METRIC)
    return ix, wrapped, in_memory, q


def per_call_table(blocks: int = 1500, per: int = 5) -> list[tuple[str, float, float]]:
    """``[(what, best CPU time per call, best wall time per call)]``: the calls run in
    turns, ``per`` at a time, ``blocks`` turns; the best block of each counts (the
    machine is shared: the best block is the one least disturbed)."""
    with tempfile.TemporaryDirectory(dir=os.environ.get("FASTIMG_BENCH_TMP")) as tmp:
        ix, wrapped, in_memory, q = per_call_setup(Path(tmp) / "small.fastimg")
        q2 = q[None, :]
        calls = {
            "`ExactSearcher.search` (in-memory arrays)": lambda: in_memory.search(q, 10),
            "`ExactSearcher.search` (the one `Index.search` wraps: prepared cache memory-mapped)":
                lambda: wrapped.search(q, 10),
            "`Index.search(vector, k=10, mode=\"exact\")`": lambda: ix.search(q, k=10, mode="exact"),
            "`Index.search_batch(1 x D, k=10, mode=\"exact\")`": lambda: ix.search_batch(q2, k=10, mode="exact"),
        }
        cpu = {k: float("inf") for k in calls}
        wall = dict(cpu)
        for _ in range(blocks):
            for name, fn in calls.items():
                w0, c0 = time.perf_counter(), time.thread_time()
                for _ in range(per):
                    fn()
                c1, w1 = time.thread_time(), time.perf_counter()
                cpu[name] = min(cpu[name], (c1 - c0) / per)
                wall[name] = min(wall[name], (w1 - w0) / per)
        ix.close()
    return [(name, cpu[name], wall[name]) for name in calls]


@pytest.fixture(scope="module")
def small(tmp_path_factory) -> tuple:
    ix, wrapped, in_memory, q = per_call_setup(tmp_path_factory.mktemp("bench-index") / "small.fastimg")
    yield ix, wrapped, in_memory, q
    ix.close()


@pytest.mark.benchmark(group=f"index-per-call-N{PER_CALL_N}")
def test_per_call_index_search(benchmark, small):
    ix, wrapped, _, q = small
    hits = benchmark(ix.search, q, 10, mode="exact")
    ids, scores = wrapped.search(q, 10)
    assert [h.id for h in hits] == ids[0].tolist()  # the query is not an indexed row: nothing left out
    np.testing.assert_allclose([h.score for h in hits], scores[0])


@pytest.mark.benchmark(group=f"index-per-call-N{PER_CALL_N}")
def test_per_call_index_search_batch_one(benchmark, small):
    ix, wrapped, _, q = small
    ids, _ = benchmark(ix.search_batch, q[None, :], 10, mode="exact")
    assert ids.tolist() == wrapped.search(q, 10)[0].tolist()


@pytest.mark.benchmark(group=f"index-per-call-N{PER_CALL_N}")
def test_per_call_exact_searcher_wrapped(benchmark, small):
    _, wrapped, _, q = small
    assert benchmark(wrapped.search, q, 10)[0].shape == (1, 10)


@pytest.mark.benchmark(group=f"index-per-call-N{PER_CALL_N}")
def test_per_call_exact_searcher_in_memory(benchmark, small):
    _, wrapped, in_memory, q = small
    assert benchmark(in_memory.search, q, 10)[0].tolist() == wrapped.search(q, 10)[0].tolist()


# --------------------------------------------------------------------------- incremental add
COREL_FILES = pick(20, 200, 1000)


def corel_copy(dest: Path, n: int = COREL_FILES) -> Optional[Path]:
    """Copy the first ``n`` Corel-1k images (every class in turn) into ``dest``;
    None if the shared data is absent."""
    import shutil

    from conftest import SHARED_DATA

    src = SHARED_DATA / "corel1k"
    if not src.is_dir():
        return None
    classes = sorted(p for p in src.iterdir() if p.is_dir())
    per = [sorted(c.glob("*.jpg")) for c in classes]
    files = [f for group in zip(*per) for f in group][:n]
    for f in files:
        (dest / f.parent.name).mkdir(parents=True, exist_ok=True)
        shutil.copy2(f, dest / f.parent.name / f.name)
    return dest


def incremental(root: Path) -> dict:
    """Times of a first ``add`` of ``root``, a re-add with nothing changed, and a
    re-add after 1% of the files were touched (same bytes, new mtime) and 1%
    renamed: the report counts are returned with the times."""
    from fastimg.index import Index

    out = {}
    with Index.create(root / ".fastimg") as ix:
        t0 = time.perf_counter()
        r = ix.add(root)
        out["first"] = (time.perf_counter() - t0, r)
        t0 = time.perf_counter()
        r = ix.add(root)
        out["unchanged"] = (time.perf_counter() - t0, r)
        files = sorted(root.rglob("*.jpg"))
        k = max(1, len(files) // 100)
        for f in files[0:2 * k:2]:
            st = f.stat()
            os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
        for f in files[1:2 * k:2]:
            f.rename(f.with_name("renamed_" + f.name))
        t0 = time.perf_counter()
        r = ix.add(root)
        out["touched+renamed"] = (time.perf_counter() - t0, r)
    return out


def test_incremental_add_counts(tmp_path):
    root = corel_copy(tmp_path / "photos")
    if root is None:
        pytest.skip("../shared/data/corel1k not found")
    res = incremental(root)
    n = sum(1 for _ in root.rglob("*.jpg"))
    assert res["first"][1].added == n
    assert res["unchanged"][1].unchanged == n and res["unchanged"][1].added == 0
    r = res["touched+renamed"][1]
    assert r.added == 0 and r.updated == 0 and r.moved > 0 and r.moved + r.unchanged == n


# --------------------------------------------------------------------------- report
def _best(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times), float(np.median(times))


def print_per_call() -> None:
    """The per-call table (markdown), with the load average while it ran."""
    load0 = os.getloadavg()[0]
    rows = per_call_table()
    load1 = os.getloadavg()[0]
    base = rows[1][1]
    print(f"N = {PER_CALL_N:,} rows, D = {D}, metric {METRIC}, k = 10; CPU time of the calling thread (the "
          f"scan runs on it at this size), best of 1,500 interleaved blocks of 5 calls; load average "
          f"{load0:.1f} -> {load1:.1f} on {os.cpu_count()} cores (shared machine).\n")
    print("| call | CPU time | more than the wrapped searcher | ratio | wall time |\n|---|---:|---:|---:|---:|")
    for name, cpu, wall in rows:
        print(f"| {name} | {cpu * 1e6:.1f} us | {(cpu - base) * 1e6:+.1f} us | {cpu / base:.2f}x "
              f"| {wall * 1e6:.1f} us |")


# --------------------------------------------------------------------------- threads
def _spread(n: int, d: int = D, seed: int = 3) -> np.ndarray:
    rng = np.random.default_rng(seed)
    q = rng.gamma(0.5, 1.0, (n, d))
    return (q / q.sum(axis=1, keepdims=True)).astype(np.float32)


def threads_table(n: int, searches: int = 688, workers: int = 4, repeat: int = 3,
                  kernel_threads: Optional[int] = None) -> list[tuple[str, float]]:
    """``[(case, best wall time of all the searches)]``: ``searches`` exact top-10
    searches by vector on an index of ``n`` rows, done by one thread on one
    handle, by ``workers`` threads sharing one read-only handle, and by
    ``workers`` threads with a handle each (cases interleaved, best of
    ``repeat``); ``kernel_threads``: the handles' ``threads`` (OpenMP threads per
    search; None: the default)."""
    import threading

    from fastimg.index import Index

    with tempfile.TemporaryDirectory(dir=os.environ.get("FASTIMG_BENCH_TMP")) as tmp:
        path, _ = build(Path(tmp) / "t.fastimg", n=n)
        Q = _spread(searches)
        parts = np.array_split(np.arange(searches), workers)

        def run_threads(handles: list) -> None:
            def go(t: int) -> None:
                for i in parts[t]:
                    handles[t].search(Q[i], k=10, mode="exact")

            ths = [threading.Thread(target=go, args=(t,)) for t in range(workers)]
            for th in ths:
                th.start()
            for th in ths:
                th.join()

        shared = Index.open(path, threads=kernel_threads)
        own = [Index.open(path, threads=kernel_threads) for _ in range(workers)]
        for h in [shared, *own]:
            h.search(Q[0], k=10, mode="exact")  # maps the cache, sets up the scan
        cases = {
            "1 thread, 1 handle": lambda: [shared.search(q, k=10, mode="exact") for q in Q],
            f"{workers} threads sharing 1 handle": lambda: run_threads([shared] * workers),
            f"{workers} threads, 1 handle each": lambda: run_threads(own),
        }
        best = {name: float("inf") for name in cases}
        for _ in range(repeat):
            for name, fn in cases.items():
                t0 = time.perf_counter()
                fn()
                best[name] = min(best[name], time.perf_counter() - t0)
        for h in [shared, *own]:
            h.close()
    return list(best.items())


def print_threads(sizes: tuple[int, ...] = (1_000, 100_000), searches: int = 688) -> None:
    load0 = os.getloadavg()[0]
    tables = {(n, kt): threads_table(n, searches, kernel_threads=kt) for n in sizes for kt in (None, 1)}
    load1 = os.getloadavg()[0]
    print(f"{searches} exact top-10 searches by vector (D = {D}, {METRIC}), wall time, best of 3 interleaved runs; "
          f"{os.cpu_count()} cores, load average {load0:.1f} -> {load1:.1f} (shared machine: read the ratios).  "
          "`threads`: the handles' OpenMP threads per search (default: all cores, fewer for small scans).\n")
    print("| rows | `threads` | case | time | searches/s | vs 1 thread |\n|---:|---|---|---:|---:|---:|")
    for (n, kt), rows in tables.items():
        one = rows[0][1]
        for name, t in rows:
            print(f"| {n:,} | {'default' if kt is None else kt} | {name} | {t * 1e3:.0f} ms | {searches / t:,.0f} "
                  f"| {one / t:.2f}x |")


# --------------------------------------------------------------------------- read-only handles
def readonly_table(n: int, metrics: tuple[str, ...] = (METRIC, "cosine", "l2", "pearson")) -> dict:
    """A read-only handle on an index of ``n`` rows (closed by its writer, which
    cached the default metric): the first and the next search per metric, and the
    index directory's size before and after."""
    from fastimg.index import Index

    def size(p: Path) -> int:
        return sum(f.stat().st_size for f in p.rglob("*") if f.is_file())

    with tempfile.TemporaryDirectory(dir=os.environ.get("FASTIMG_BENCH_TMP")) as tmp:
        path, _ = build(Path(tmp) / "ro.fastimg", n=n)
        before = size(path)
        q = _queries()[0]
        out: dict = {"rows": n, "before": before, "metrics": []}
        with Index.open(path) as ix:
            for m in metrics:
                t0 = time.perf_counter()
                ix.search(q, k=10, metric=m, mode="exact")
                first = time.perf_counter() - t0
                nxt = _best(lambda: ix.search(q, k=10, metric=m, mode="exact"), 5)[0]
                out["metrics"].append((m, first, nxt))
        out["after"] = size(path)
    return out


def print_readonly(n: int = 350_000) -> None:
    load0 = os.getloadavg()[0]
    r = readonly_table(n)
    load1 = os.getloadavg()[0]
    mib = 1 << 20
    print(f"N = {n:,} rows, D = {D}: `Index.open` (read-only) of an index its writer closed (the default metric "
          f"{METRIC}'s prepared rows cached by the writer), one exact top-10 search per metric; load average "
          f"{load0:.1f} -> {load1:.1f} on {os.cpu_count()} cores.\n")
    print("| metric | first search | next searches (best of 5) | prepared rows |\n|---|---:|---:|---|")
    for m, first, nxt in r["metrics"]:
        how = "mapped from the writer's cache" if m == METRIC else "prepared in memory by the handle"
        print(f"| {m} | {first * 1e3:.0f} ms | {nxt * 1e3:.1f} ms | {how} |")
    print(f"\nIndex directory: {r['before'] / mib:.1f} MiB before, {r['after'] / mib:.1f} MiB after.")


def main() -> None:
    from fastimg.index import Index

    if "--per-call" in sys.argv[1:]:
        print_per_call()
        return
    if "--threads" in sys.argv[1:]:
        print_threads()
        return
    if "--read-only" in sys.argv[1:]:
        print_readonly()
        return
    mib = 1 << 20
    with tempfile.TemporaryDirectory(dir=os.environ.get("FASTIMG_BENCH_TMP")) as tmp:
        t0 = time.perf_counter()
        path, npy = build(Path(tmp) / "big.fastimg")
        t_build = time.perf_counter() - t0
        matrix = N * D * 4

        def open_close():
            Index.open(path).close()

        def open_len():
            with Index.open(path) as ix:
                len(ix)

        rows = [
            ("fastimg `Index.open`", _best(open_close, 30)),
            ("fastimg `Index.open` + `len()`", _best(open_len, 30)),
            ("`np.load` (.npy, eager)", _best(lambda: np.load(npy), 5)),
            ("`np.fromfile` (eager)", _best(lambda: np.fromfile(path / "vectors.0.f32", dtype="<f4"), 5)),
        ]
        q = _queries()[0]
        with Index.open(path) as ix:
            t0 = time.perf_counter()
            ix.search(q, k=10)
            t_first = time.perf_counter() - t0
            search = _best(lambda: ix.search(q, k=10, mode="exact"), 20)
        warm = probe("fastimg", path, npy)
        _clear_cache(path)
        first = probe("fastimg", path, npy)
        base = probe("numpy", path, npy)
        base_open = rows[0][1][0]

        print(f"# Index benchmark (bench/bench_index.py, scale `{scale()}`)\n")
        print(f"N = {N:,} vectors, D = {D} (float32, {matrix / mib:.0f} MiB), metric {METRIC}, "
              f"{os.cpu_count()} cores, shared machine; page cache warm (the files were just written).  "
              f"Building the index with `add_vectors` in chunks of {_STEP:,}: {t_build:.1f} s.\n")
        print("## Open time\n")
        print("| what | best | median | vs `Index.open` |\n|---|---:|---:|---:|")
        for name, (b, med) in rows:
            print(f"| {name} | {b * 1e3:.2f} ms | {med * 1e3:.2f} ms | {b / base_open:.0f}x |")
        print(f"\nFirst exact search after open (maps the prepared cache its writer left): {t_first * 1e3:.0f} ms; "
              f"then {search[0] * 1e3:.1f} ms per query (best of 20, k = 10).\n")
        print("## Per-call cost: `Index.search` against the searcher it wraps\n")
        print_per_call()
        print()
        print("## Resident memory while searching (fresh process, 20 exact queries, k = 10)\n")
        print("Growth after `import`; anonymous = private copies, file = mapped pages of the index files "
              "(page cache, shared and reclaimable).\n")
        print("| case | open | anon after open | anon after search | file after search "
              "| of which `vectors` | of which `cache/` |\n|---|---:|---:|---:|---:|---:|---:|")
        for name, r in (("fastimg, prepared cache on disk", warm), ("fastimg, no cache (prepared in memory)", first),
                        ("numpy: `np.fromfile` + matmul", base)):
            b = r["before"]
            print(f"| {name} | {r['open_s'] * 1e3:.1f} ms "
                  f"| {(r['opened']['RssAnon'] - b['RssAnon']) / mib:.1f} MiB "
                  f"| {(r['searched']['RssAnon'] - b['RssAnon']) / mib:.1f} MiB "
                  f"| {(r['searched']['RssFile'] - b['RssFile']) / mib:.1f} MiB "
                  f"| {r['files']['vectors'] / mib:.1f} MiB | {r['files']['cache'] / mib:.1f} MiB |")
        with tempfile.TemporaryDirectory(dir=os.environ.get("FASTIMG_BENCH_TMP")) as tmp2:
            root = corel_copy(Path(tmp2) / "photos")
            inc = incremental(root) if root is not None else None
        if inc is not None:
            print("\n## Incremental add (Corel-1k copy, hsv72, default workers)\n")
            print("| run | time | added | unchanged | updated | moved | removed |\n|---|---:|---:|---:|---:|---:|---:|")
            for name, (t, r) in inc.items():
                print(f"| {name} | {t:.2f} s | {r.added} | {r.unchanged} | {r.updated} | {r.moved} | {r.removed} |")
            print(f"\n{COREL_FILES} images.  A re-add compares size and mtime with one query over the live rows; "
                  "touched files (new mtime, same bytes) are hashed and recognised, renamed files are matched "
                  "by content hash to the rows that vanished: nothing is decoded again.")
        print(f"\nMatrix size: {matrix / mib:.0f} MiB; the prepared (square-root) matrix in `cache/` is the "
              "same size.  An exact scan reads every row of the prepared matrix (mapped, never copied) and "
              f"only the re-scored candidate rows of `vectors` ({QUERIES} queries x about 18 rows).  The "
              "resident size of the `vectors` mapping is larger than those rows: on a warm page cache the "
              "Linux kernel maps whole cached folios around each faulting page (fault-around / large "
              "folios; `madvise(MADV_RANDOM)` does not change it here).  Those are shared, clean page-cache "
              "pages, reclaimable at any time: the private (anonymous) memory is what a copy would cost.")


if __name__ == "__main__":
    main()
