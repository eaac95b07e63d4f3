"""ANN at 1M through ``Index.search``: recall@10 against per-call time, per graph (issue 23).

Issue 23's last target: ``Index.search(mode="ann")`` at 1M reaches >= 100x the exact
mode per call at recall@10 >= 0.95.  This script answers whether any HNSW graph
setting gets there on bench/index_speed.py's data (1,000,000 x 256, 256 Gaussian
clusters, spread 0.35, ``descriptor="custom"`` cosine index; queries are fresh
points of the same clusters, not indexed), and gives the curve.

Three steps, each its own command (builds are long: run them under
``/work/tools/heavy``, one at a time; measure under ``/work/tools/bench``)::

    # exact answers of the queries, by Index.search(mode="exact") (checked on a
    # subset against a numpy brute force); written to DIR/truth-....npz
    python bench/ann_1m_m.py truth --source SRC --dir DIR

    # a copy of SRC (cp -a; SRC is never modified) with a graph of M / ef_construction
    python bench/ann_1m_m.py build --source SRC --dir DIR --M 32 --ef-construction 200

    # recall and per-call times of every graph in DIR (+ SRC's own graph), ef sweep
    python bench/ann_1m_m.py measure --source SRC --dir DIR --ef 20 50 100 200 400 --write

``SRC`` is bench/index_speed.py's 1M index (``--big`` builds it, M 16,
ef_construction 200): ``/tmp/fastimg-index-speed/custom-n1000000-d256.fastimg``.
``contrast`` builds (and ``measure --contrast`` measures) an index of different data
with a lower intrinsic dimension (see :func:`low_dim`), for comparison only.

Per-call times: one query per call, handle opened with ``threads=2``, the raw
engine is hnswlib's own ``Index`` loaded from the graph file the index saved
(``knn_query`` of the unit-normalised query, the same ``ef``), all cases
interleaved in rounds, best of ``--rounds`` per block of 10 calls
(bench/index_speed.py's ``Race``).
"""
from __future__ import annotations

import argparse
import gc
import importlib.metadata
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Optional

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from index_speed import Race, _loop, clustered, raw_graph, recall  # noqa: E402

MD = HERE / "index.md"
SOURCE = Path("/tmp/fastimg-index-speed/custom-n1000000-d256.fastimg")
DEFAULT_DIR = Path(os.environ.get("FASTIMG_BENCH_TMP", "/tmp")) / "ann1m"
QUERY_SEED = 10**9  # bench/index_speed.py's query seed (the points differ: a draw depends on its count)
BEGIN, END = "<!-- ann_1m_m begin -->", "<!-- ann_1m_m end -->"


def _name(m: int, efc: int) -> str:
    return f"custom-n1000000-d256-M{m}-efc{efc}.fastimg"


def _graph_file(path: Path) -> Path:
    return max((path / "ann").rglob("hnsw*.bin"), key=lambda p: p.stat().st_mtime)


def low_dim(n: int, dim: int, seed: int, intrinsic: int = 16, clusters: int = 256, spread: float = 0.35,
            noise: float = 0.02) -> np.ndarray:
    """Contrast data of intrinsic dimension about ``intrinsic``: ``clusters`` Gaussian
    clusters in an ``intrinsic``-dimensional space (same centre scale and spread as
    :func:`index_speed.clustered`), embedded in ``dim`` dimensions by a fixed random
    orthonormal basis, plus isotropic noise ``noise`` per coordinate (float32)."""
    rng = np.random.default_rng(1234)  # the same centres and basis for data and queries
    centres = rng.standard_normal((clusters, intrinsic)).astype(np.float32)
    basis = np.linalg.qr(rng.standard_normal((dim, intrinsic)))[0].T.astype(np.float32)  # (intrinsic, dim)
    rng = np.random.default_rng(seed)
    out = np.empty((n, dim), np.float32)
    for a in range(0, n, 65536):
        b = min(n, a + 65536)
        c = rng.integers(0, clusters, b - a)
        z = centres[c] + spread * rng.standard_normal((b - a, intrinsic)).astype(np.float32)
        out[a:b] = z @ basis + noise * rng.standard_normal((b - a, dim)).astype(np.float32)
    return out


DATA = {"clustered": clustered, "lowdim": low_dim}


def truth_file(folder: Path, index: Path, queries: int) -> Path:
    return folder / f"truth-{index.name}-q{queries}.npz"


def _log(s: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {s}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- truth
def cmd_truth(a: argparse.Namespace) -> None:
    """Exact top-k of ``--queries`` queries through ``Index.search_batch(mode="exact")``."""
    from fastimg import Index

    a.dir.mkdir(parents=True, exist_ok=True)
    out = truth_file(a.dir, a.source, a.queries)
    qs = DATA[a.data](a.queries, a.dim, seed=QUERY_SEED)
    with Index.open(a.source, threads=a.threads) as ix:
        t0 = time.perf_counter()
        ids = np.concatenate([ix.search_batch(qs[i:i + 100], a.k, mode="exact")[0] for i in range(0, len(qs), 100)])
        _log(f"exact answers of {len(qs)} queries in {time.perf_counter() - t0:.1f} s")
        one = np.array([[h.id for h in ix.search(q, a.k, mode="exact")] for q in qs[:5]])
        if not (one == ids[:5]).all():
            raise SystemExit("Index.search(mode='exact') and search_batch(mode='exact') disagree")
        # independent oracle on a subset: numpy brute force of the cosine similarity
        x = np.asarray(ix.vectors)
    sub = min(a.check, len(qs))
    qn = qs[:sub] / np.linalg.norm(qs[:sub], axis=1, keepdims=True)
    best = np.full((sub, a.k + 5), -np.inf, np.float32)
    bid = np.zeros((sub, a.k + 5), np.int64)
    for i in range(0, x.shape[0], 100_000):
        blk = np.asarray(x[i:i + 100_000], np.float32)
        s = (qn @ (blk / np.linalg.norm(blk, axis=1, keepdims=True)).T).astype(np.float32)
        allv = np.concatenate([best, s], axis=1)
        alli = np.concatenate([bid, np.broadcast_to(np.arange(i, i + blk.shape[0]), s.shape)], axis=1)
        top = np.argsort(-allv, axis=1, kind="stable")[:, :a.k + 5]
        best, bid = np.take_along_axis(allv, top, 1), np.take_along_axis(alli, top, 1)
    agree = recall(ids[:sub], bid[:, :a.k])
    # a disagreement is acceptable only at a near-tie with the k-th score
    gap = float(np.min(best[:, a.k - 1] - best[:, a.k]))
    _log(f"numpy brute force on {sub} queries: overlap with Index exact {agree:.4f} (min gap k/k+1 {gap:.2e})")
    if agree < 0.999:
        raise SystemExit(f"Index.search(mode='exact') disagrees with numpy ({agree:.4f})")
    np.savez(out, ids=ids, numpy_overlap=agree, numpy_checked=sub)
    _log(f"wrote {out}")


# --------------------------------------------------------------------------- build
def cmd_build(a: argparse.Namespace) -> None:
    """Copy the source index and build a graph of ``--M`` / ``--ef-construction`` in it."""
    from fastimg import Index

    src = a.source
    dst = a.dir / (_name(a.M, a.ef_construction) if not a.name else a.name)
    a.dir.mkdir(parents=True, exist_ok=True)
    if (dst / ".graph.json").exists():
        _log(f"{dst} already built: {(dst / '.graph.json').read_text()}")
        return
    if dst.exists():
        shutil.rmtree(dst)
    t0 = time.perf_counter()
    subprocess.run(["cp", "-a", str(src), str(dst)], check=True)
    _log(f"copied {src} -> {dst} in {time.perf_counter() - t0:.0f} s")
    load0 = os.getloadavg()
    last = [0.0]

    def progress(done: int, total: int) -> None:
        if time.perf_counter() - last[0] > 60:
            last[0] = time.perf_counter()
            _log(f"  {done:,} / {total:,}")

    with Index.open(dst, "a", threads=a.threads) as ix:
        t0 = time.perf_counter()
        info = ix.build_ann(M=a.M, ef_construction=a.ef_construction, ef=50, threads=a.threads, progress=progress)
        secs = time.perf_counter() - t0
    load1 = os.getloadavg()
    g = _graph_file(dst)
    rec = {"M": a.M, "ef_construction": a.ef_construction, "build_s": round(secs, 1), "threads": a.threads,
           "graph_bytes": g.stat().st_size, "load": [load0[0], load1[0], load1[1]], "info": info,
           "when": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())}
    (dst / ".graph.json").write_text(json.dumps(rec, default=str))
    _log(f"built M {a.M} ef_construction {a.ef_construction}: {secs:.0f} s, graph {g.stat().st_size / 2**20:.0f} MiB, "
         f"load {load0[0]:.2f} -> {load1[0]:.2f}")


def cmd_create(a: argparse.Namespace) -> None:
    """A new cosine index of ``--n`` rows of ``--data`` with a graph (the contrast data)."""
    from fastimg import Index

    dst = a.dir / f"{a.data}-n{a.n}-d{a.dim}-M{a.M}-efc{a.ef_construction}.fastimg"
    if (dst / ".graph.json").exists():
        _log(f"{dst} already built")
        return
    shutil.rmtree(dst, ignore_errors=True)
    a.dir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    with Index.create(dst, descriptor="custom", dim=a.dim, metric="cosine") as ix:
        for i in range(0, a.n, 100_000):
            j = min(a.n, i + 100_000)
            ix.add_vectors(DATA[a.data](j - i, a.dim, seed=i + 1), [f"v{r}" for r in range(i, j)])
        _log(f"added {a.n:,} rows in {time.perf_counter() - t0:.0f} s")
        load0 = os.getloadavg()
        t0 = time.perf_counter()
        info = ix.build_ann(M=a.M, ef_construction=a.ef_construction, ef=50, threads=a.threads)
        secs = time.perf_counter() - t0
    load1 = os.getloadavg()
    g = _graph_file(dst)
    rec = {"M": a.M, "ef_construction": a.ef_construction, "build_s": round(secs, 1), "threads": a.threads,
           "graph_bytes": g.stat().st_size, "load": [load0[0], load1[0], load1[1]], "info": info, "data": a.data,
           "when": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())}
    (dst / ".graph.json").write_text(json.dumps(rec, default=str))
    _log(f"built {dst.name}: graph {secs:.0f} s, load {load0[0]:.2f} -> {load1[0]:.2f}")


# --------------------------------------------------------------------------- measure
def _graphs(a: argparse.Namespace) -> list[tuple[Path, dict]]:
    """``(index, record)`` of the source and of every graph built under ``--dir``."""
    out = []
    if a.include_source and not a.contrast:
        from fastimg import Index

        with Index.open(a.source) as ix:
            ann = ix.info()["ann"]
        out.append((a.source, {"M": ann["M"], "ef_construction": ann["ef_construction"], "build_s": None,
                               "graph_bytes": _graph_file(a.source).stat().st_size, "data": "clustered",
                               "truth": str(truth_file(a.dir, a.source, a.queries)), "note": "bench/index_speed.py's"}))
    for rec_path in sorted(a.dir.glob("*.fastimg/.graph.json")):
        rec = json.loads(rec_path.read_text())
        rec.setdefault("data", "clustered")
        if (rec["data"] == "clustered") != (not a.contrast) and not a.all:
            continue
        src = a.source if rec["data"] == "clustered" else rec_path.parent
        rec["truth"] = str(truth_file(a.dir, src, a.queries))
        out.append((rec_path.parent, rec))
    out.sort(key=lambda t: (t[1]["data"] != "clustered", t[1]["M"], t[1]["ef_construction"]))
    return out


def measure_one(path: Path, rec: dict, a: argparse.Namespace) -> dict:
    """Recall and per-call times of one graph over the ``--ef`` sweep."""
    from fastimg import Index
    from fastimg.metrics import prepare_queries

    truth = np.load(rec["truth"])["ids"][:, :a.k]
    qs = DATA[rec["data"]](truth.shape[0], a.dim, seed=QUERY_SEED)
    unit = prepare_queries("cosine", qs)
    qt, ut = qs[:a.timed], unit[:a.timed]
    qe = qs[:a.exact_queries]
    t0 = time.perf_counter()
    ix = Index.open(path, threads=a.threads)
    ix.search(qs[0], a.k, mode="ann")  # loads the graph
    g = raw_graph(path, "ip", a.dim, a.ef[0], a.threads)
    loaded = time.perf_counter() - t0
    # recall: the per-call path itself, on every query with exact answers
    rows = []
    for ef in a.ef:
        ids = np.array([[h.id for h in ix.search(q, a.k, mode="ann", ef=ef)] for q in qs])
        g.set_ef(ef)
        raw_ids = g.knn_query(unit, k=a.k, num_threads=a.threads)[0].astype(np.int64)
        rows.append({"ef": ef, "recall": recall(ids, truth), "recall_raw": recall(raw_ids, truth)})
    ex = np.array([[h.id for h in ix.search(q, a.k, mode="exact")] for q in qe])
    if not (ex == truth[:len(qe)]).all():
        raise SystemExit(f"{path}: Index.search(mode='exact') differs from the stored exact answers")

    r = Race()
    for ef in a.ef:
        r.add(f"ix{ef}", None, a.timed, _loop(lambda q, ef=ef: ix.search(q, a.k, mode="ann", ef=ef), qt))

        def raw_block(part: np.ndarray, ef: int = ef) -> Any:
            def go() -> None:
                g.set_ef(ef)
                for q in part:
                    g.knn_query(q, k=a.k)
            return go
        r.add(f"raw{ef}", None, a.timed, [raw_block(ut[i:i + 10]) for i in range(0, a.timed, 10)])
    r.add("exact", None, len(qe), _loop(lambda q: ix.search(q, a.k, mode="exact"), qe, block=1))
    load0 = os.getloadavg()
    t1 = time.perf_counter()
    r.run(a.rounds)
    load1 = os.getloadavg()
    b = r.best
    for row in rows:
        row.update(index_s=b[f"ix{row['ef']}"], raw_s=b[f"raw{row['ef']}"], exact_s=b["exact"])
    res = {"path": str(path), **{k: v for k, v in rec.items() if k != "info"}, "rows": rows,
           "load": [load0[0], load1[0]], "race_s": time.perf_counter() - t1, "load_s": loaded}
    del g
    ix.close()
    gc.collect()
    return res


def at_recall(rows: list[dict], target: float, rkey: str = "recall",
              tkey: str = "index_s") -> Optional[tuple[float, float, float]]:
    """``(ef, time, exact time / time)`` where ``rows[rkey]`` reaches ``target``:
    linear in recall between the two ef of the sweep that bracket it (log of the
    time ``rows[tkey]``)."""
    for lo, hi in zip(rows, rows[1:]):
        if lo[rkey] < target <= hi[rkey]:
            f = (target - lo[rkey]) / (hi[rkey] - lo[rkey])
            t = float(np.exp(np.log(lo[tkey]) + f * (np.log(hi[tkey]) - np.log(lo[tkey]))))
            ef = lo["ef"] + f * (hi["ef"] - lo["ef"])
            ex = (lo["exact_s"] + hi["exact_s"]) / 2
            return ef, t, ex / t
    if rows and rows[0][rkey] >= target:
        return rows[0]["ef"], rows[0][tkey], rows[0]["exact_s"] / rows[0][tkey]
    return None


def table(results: list[dict], target: float) -> str:
    """The markdown table and the summary at ``target`` recall.  The ratio's exact time
    is the run's best exact per-call time (every index has the same N and D, and the
    scan does not depend on the data or the graph): each graph's own exact timing
    is shown, and the spread between them is noise of the shared machine."""
    ref = min(row["exact_s"] for res in results for row in res["rows"])
    lines = ["| data | M | ef_construction | build | graph file | ef | recall@10 `Index` | recall@10 raw "
             "| `Index.search` | raw `knn_query` | exact `Index.search` (same race) "
             f"| exact / ANN (exact = {ref * 1e3:.1f} ms) |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for res in results:
        build = "~6 min (reported)" if res["build_s"] is None else f"{res['build_s'] / 60:.1f} min"
        for row in res["rows"]:
            lines.append(f"| {res['data']} | {res['M']} | {res['ef_construction']} | {build} "
                         f"| {res['graph_bytes'] / 2**20:,.0f} MiB | {row['ef']} | {row['recall']:.3f} "
                         f"| {row['recall_raw']:.3f} | {row['index_s'] * 1e6:,.0f} us | {row['raw_s'] * 1e6:,.0f} us "
                         f"| {row['exact_s'] * 1e3:.1f} ms | **{ref / row['index_s']:.0f}x** |")
    lines += ["", f"At recall@10 = {target} (interpolated between the two ef that bracket it, linear in "
              f"recall, log of the time); >= 100x needs `Index.search` <= {ref * 1e4:.0f} us "
              f"(exact {ref * 1e3:.1f} ms, the run's best):", ""]
    for res in results:
        hit = at_recall(res["rows"], target)
        raw = at_recall(res["rows"], target, "recall_raw", "raw_s")
        own = res["rows"][0]["exact_s"]
        what = (f"not reached up to ef {res['rows'][-1]['ef']} (best recall {max(r['recall'] for r in res['rows']):.3f})"
                if hit is None else ("" if res["rows"][0]["recall"] < target else
                                     f"reached at the sweep's first point (recall {res['rows'][0]['recall']:.3f}): ")
                + f"ef ~{hit[0]:.0f}, `Index.search` ~{hit[1] * 1e6:,.0f} us, **{ref / hit[1]:.0f}x** "
                f"the exact mode ({own / hit[1]:.0f}x with this graph's own exact timing)")
        if raw is not None:
            what += f"; raw `knn_query` alone ~{raw[1] * 1e6:,.0f} us: {ref / raw[1]:.0f}x"
        lines.append(f"* {res['data']}, M {res['M']}, ef_construction {res['ef_construction']}: {what}")
    return "\n".join(lines)


def _head(run: dict) -> str:
    return (f"`{run['command']}` ({run['stamp']} UTC); {run['cpu']}, {run['cores']} cores, Python {run['python']}, "
            f"hnswlib {run['hnswlib']}; handle and engine at {run['threads']} threads, one query per call, best of "
            f"{run['rounds']} interleaved rounds per block of 10 calls ({run['timed']} queries; exact: "
            f"{run['exact_queries']} queries, 1 per block, in each graph's race); recall over {run['queries']} "
            "queries; load average per graph: "
            + ", ".join(f"{r['data']} M {r['M']}/{r['ef_construction']} {r['load'][0]:.1f} -> {r['load'][1]:.1f}"
                        for r in run["results"]) + ".")


def render(run: dict, write: bool) -> None:
    """Print a run's section (and write it into bench/index.md's ``ann_1m_m`` block)."""
    text = _head(run) + "\n\n" + table(run["results"], run["target"])
    print(text)
    if write:
        doc = MD.read_text()
        block = f"{BEGIN}\n{text}\n{END}"
        if BEGIN in doc:
            doc = doc[:doc.index(BEGIN)] + block + doc[doc.index(END) + len(END):]
        else:
            doc = doc.rstrip("\n") + "\n\n" + block + "\n"
        MD.write_text(doc)


def cmd_measure(a: argparse.Namespace) -> None:
    import platform

    results = []
    for path, rec in _graphs(a):
        _log(f"measuring {path.name}")
        res = measure_one(path, rec, a)
        _log(f"  loaded in {res['load_s']:.0f} s, race {res['race_s']:.0f} s, load {res['load'][0]:.2f} -> {res['load'][1]:.2f}")
        for row in res["rows"]:
            _log(f"  ef {row['ef']}: recall {row['recall']:.3f} (raw {row['recall_raw']:.3f}), "
                 f"Index {row['index_s'] * 1e6:.0f} us, raw {row['raw_s'] * 1e6:.0f} us, "
                 f"exact {row['exact_s'] * 1e3:.1f} ms")
        results.append(res)
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    cpu = next((ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name")), "?")
    run = {"command": " ".join(["python", "bench/ann_1m_m.py"] + sys.argv[1:]), "stamp": stamp, "cpu": cpu,
           "cores": os.cpu_count(), "python": platform.python_version(), "hnswlib": importlib.metadata.version("hnswlib"),
           **{k: getattr(a, k) for k in ("threads", "rounds", "timed", "exact_queries", "queries", "target")},
           "results": results}
    out = a.dir / f"results-{stamp}.json"
    out.write_text(json.dumps(run, indent=1, default=str))
    _log(f"wrote {out}")
    render(run, a.write)


def cmd_render(a: argparse.Namespace) -> None:
    render(json.loads(a.results.read_text()), a.write)


def cmd_distances(a: argparse.Namespace) -> None:
    """How concentrated the neighbours' distances are: the median over ``--queries``
    queries of (distance to the k-th exact neighbour) / (distance to the 1st), for
    the source's data and the contrast index (``--contrast-index``)."""
    from fastimg import Index

    for data, path in (("clustered", a.source), ("lowdim", a.contrast_index)):
        qs = DATA[data](1000, a.dim, seed=QUERY_SEED)[:a.queries]  # measure's queries (their first ones)
        with Index.open(path, threads=a.threads) as ix:
            _, sc = ix.search_batch(qs, 1000, mode="exact")
        d = np.sqrt(np.maximum(0.0, 2.0 - 2.0 * sc.astype(np.float64)))  # between unit vectors
        print(f"{data}: median distance to the k-th neighbour / to the 1st: "
              + ", ".join(f"k {k} {np.median(d[:, k - 1] / d[:, 0]):.3f}" for k in (10, 100, 1000)))


# --------------------------------------------------------------------------- main
def main(argv: Optional[list[str]] = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--source", type=Path, default=SOURCE, help="bench/index_speed.py's 1M index (read only)")
    common.add_argument("--dir", type=Path, default=DEFAULT_DIR, help="where the copies, graphs and answers live")
    common.add_argument("--threads", type=int, default=2)
    common.add_argument("--dim", type=int, default=256)
    common.add_argument("--k", type=int, default=10)
    p = sub.add_parser("truth", parents=[common], help="exact answers of the queries")
    p.add_argument("--queries", type=int, default=1000)
    p.add_argument("--check", type=int, default=100, help="queries checked against a numpy brute force")
    p.add_argument("--data", choices=sorted(DATA), default="clustered", help="the generator of --source's rows")
    p.set_defaults(fn=cmd_truth)
    p = sub.add_parser("build", parents=[common], help="copy the source index, build a graph in the copy")
    p.add_argument("--M", type=int, required=True)
    p.add_argument("--ef-construction", type=int, default=200)
    p.add_argument("--name", help="directory name under --dir (default from M / ef_construction)")
    p.set_defaults(fn=cmd_build)
    p = sub.add_parser("create", parents=[common], help="a new index of generated data with a graph (contrast)")
    p.add_argument("--data", choices=sorted(DATA), default="lowdim")
    p.add_argument("--n", type=int, default=1_000_000)
    p.add_argument("--M", type=int, default=16)
    p.add_argument("--ef-construction", type=int, default=200)
    p.set_defaults(fn=cmd_create)
    p = sub.add_parser("measure", parents=[common], help="recall and per-call time of every graph, ef sweep")
    p.add_argument("--ef", type=int, nargs="+", default=[20, 50, 100, 200, 400, 800])
    p.add_argument("--queries", type=int, default=1000, help="queries with exact answers (recall)")
    p.add_argument("--timed", type=int, default=200, help="queries timed per call")
    p.add_argument("--exact-queries", type=int, default=20, help="queries of the exact mode timed")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--target", type=float, default=0.95)
    p.add_argument("--no-source", dest="include_source", action="store_false", help="skip --source's own graph")
    p.add_argument("--contrast", action="store_true", help="only the contrast data's graphs")
    p.add_argument("--all", action="store_true", help="every graph, contrast included")
    p.add_argument("--write", action="store_true", help="write the table into bench/index.md's ann_1m_m section")
    p.set_defaults(fn=cmd_measure)
    p = sub.add_parser("distances", parents=[common], help="distance concentration of the two data sets")
    p.add_argument("--queries", type=int, default=50)
    p.add_argument("--contrast-index", type=Path, default=DEFAULT_DIR / "lowdim-n1000000-d256-M16-efc200.fastimg")
    p.set_defaults(fn=cmd_distances)
    p = sub.add_parser("render", help="print (and --write) the section of a saved run")
    p.add_argument("results", type=Path, help="a results-*.json that measure wrote in --dir")
    p.add_argument("--write", action="store_true", help="write it into bench/index.md's ann_1m_m section")
    p.set_defaults(fn=cmd_render)
    a = ap.parse_args(argv)
    a.fn(a)


if __name__ == "__main__":
    main()
