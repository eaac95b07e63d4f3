"""Recall@10 vs queries/s for fastimg's ann mode, raw hnswlib, faiss HNSWFlat and
fastimg's exact mode, on the same vectors, in one run.

Usage (wrap in the shared benchmark lock)::

    flock /tmp/fastimg-bench.lock .venv/bin/python bench/ann_curve.py            # scale from FASTIMG_BENCH_SCALE
    flock /tmp/fastimg-bench.lock .venv/bin/python bench/ann_curve.py --n 1000000 --kinds clustered
    flock /tmp/fastimg-bench.lock .venv/bin/python bench/ann_curve.py --crossover

Data: ``clustered`` = D=256 Gaussian clusters searched with pearson (the graph
holds centred unit rows: raw hnswlib and faiss get exactly those prepared rows);
``hist`` = D=72 Dirichlet-clustered histograms searched with bhattacharyya
(square-root rows).  Queries are fresh draws from the same clusters.

Measured per method: build time (``--build-threads``, default 2), size on disk,
and for ef in {10, 20, 50, 100, 200}: recall@10 against fastimg's exact search
and queries/s of a batch of queries answered on ONE thread (hnswlib
``num_threads=1``, faiss ``omp_set_num_threads(1)``, fastimg ``threads=1``).
fastimg's ann mode and raw hnswlib are timed alternately, best of ``ROUNDS``
rounds each (faiss: best of 2, after them).
fastimg's ann figure includes preparing the queries, the graph search with
``max(ef, candidates)`` and the exact float64 re-scoring of the candidates.

Outputs: ``bench/ann_curve.md`` (tables), ``bench/ann_curve.png`` (curves),
``bench/results/ann_curve.json`` (raw numbers).  ``--crossover`` instead times
one query at a time (the interactive case) for exact vs ann over growing N and
writes ``bench/ann_crossover.md``.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from conftest import pick  # noqa: E402

HERE = Path(__file__).resolve().parent
EFS = (10, 20, 50, 100, 200)
K = 10
ROUNDS = 5  # timing rounds per ef (fastimg ann and raw hnswlib alternate; best of each)


# ---------------------------------------------------------------------------
# data
# ---------------------------------------------------------------------------

def clustered(n: int, d: int, nq: int, seed: int = 0, clusters: int = 1000):
    """Gaussian clusters; generated in chunks (float32) to bound memory."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(scale=1.0, size=(clusters, d)).astype(np.float32)
    spread = rng.uniform(0.3, 0.6, size=clusters).astype(np.float32)

    def draw(m):
        out = np.empty((m, d), np.float32)
        for s in range(0, m, 100_000):
            e = min(m, s + 100_000)
            lab = rng.integers(0, clusters, e - s)
            out[s:e] = centres[lab] + rng.standard_normal((e - s, d), dtype=np.float32) * spread[lab, None]
        return out

    return draw(n), draw(nq)


def histograms(n: int, d: int, nq: int, seed: int = 0, clusters: int = 1000):
    """Dirichlet-clustered, L1-normalised histograms (like hsv72 colour histograms)."""
    rng = np.random.default_rng(seed)
    centres = rng.dirichlet(np.full(d, 0.3), size=clusters)

    def draw(m):
        out = np.empty((m, d), np.float32)
        for s in range(0, m, 100_000):
            e = min(m, s + 100_000)
            lab = rng.integers(0, clusters, e - s)
            g = rng.gamma(centres[lab] * 60 + 0.02)
            out[s:e] = g / g.sum(1, keepdims=True)
        return out

    return draw(n), draw(nq)


KINDS = {"clustered": (256, "pearson", clustered), "hist": (72, "bhattacharyya", histograms)}


def dir_size(path: Path) -> int:
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file())


def recall(found: np.ndarray, truth: np.ndarray) -> float:
    hits = sum(len(set(f.tolist()) & set(t.tolist())) for f, t in zip(found, truth))
    return hits / truth.size


def timed(fn, repeat: int = 1):
    best, out = float("inf"), None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


# ---------------------------------------------------------------------------
# one configuration
# ---------------------------------------------------------------------------

def run_config(kind: str, n: int, nq: int, build_threads: int, M: int, efc: int, tmp: Path) -> dict:
    import hnswlib

    from fastimg.ann import HnswGraph
    from fastimg.metrics import prepare_rows
    from fastimg.search import ExactSearcher

    d, metric, gen = KINDS[kind]
    print(f"[{kind}] generating N={n:,} D={d}", flush=True)
    x, q = gen(n, d, nq)
    res: dict = {"kind": kind, "n": n, "d": d, "metric": metric, "queries": nq, "M": M,
                 "ef_construction": efc, "build_threads": build_threads, "methods": {}}

    # exact mode: truth and speed (one thread, whole batch; and all threads)
    searcher = ExactSearcher(x, metric, threads=build_threads)
    t_truth, (truth, _) = timed(lambda: searcher.search(q, K))
    searcher1 = ExactSearcher(x, metric, threads=1, prepared=searcher.prepared, bias=searcher.bias)
    nq_exact = min(nq, 200)
    t_exact, _ = timed(lambda: searcher1.search(q[:nq_exact], K))
    # and one query per call on all threads: the interactive case (Index.search of one image)
    n_single = 10
    t_single, _ = timed(lambda: [searcher.search(q[i], K) for i in range(n_single)])
    res["methods"]["fastimg exact"] = {"qps_1thread": nq_exact / t_exact,
                                       f"qps_{build_threads}threads": nq / t_truth,
                                       "qps_single": n_single / t_single, "recall": 1.0}
    print(f"  exact: {nq_exact / t_exact:,.0f} q/s on 1 thread (batched), "
          f"{n_single / t_single:,.1f} q/s one query per call on {build_threads} threads", flush=True)

    # fastimg ann
    print("  building fastimg graph", flush=True)
    t_build, graph = timed(lambda: HnswGraph.build(x, metric, M=M, ef_construction=efc, threads=build_threads))
    graph.save(tmp / "fastimg")
    graph.threads = 1

    # the same prepared vectors for the raw libraries
    prepared, _ = prepare_rows(metric, x)
    qp, _ = prepare_rows(metric, q)

    # raw hnswlib
    print("  building raw hnswlib", flush=True)

    def build_raw():
        p = hnswlib.Index(space="ip", dim=d)
        p.init_index(max_elements=n, M=M, ef_construction=efc, random_seed=100)
        p.add_items(prepared, np.arange(n), num_threads=build_threads)
        return p

    t_raw_build, raw = timed(build_raw)
    raw.save_index(str(tmp / "raw.bin"))

    # fastimg's ann mode and raw hnswlib timed alternately (ROUNDS rounds, best of each),
    # so a burst of load on the shared machine hits both alike
    curve, raw_curve = [], []
    for ef in EFS:
        raw.set_ef(ef)
        graph.search(q[:50], K, data=x, ef=ef)  # warm
        raw.knn_query(qp[:50], k=K, num_threads=1)
        t_f = t_r = float("inf")
        for _ in range(ROUNDS):
            t, (ids, _) = timed(lambda: graph.search(q, K, data=x, ef=ef))
            t_f = min(t_f, t)
            t, (raw_ids, _) = timed(lambda: raw.knn_query(qp, k=K, num_threads=1))
            t_r = min(t_r, t)
        curve.append({"ef": ef, "recall": recall(ids, truth), "qps": nq / t_f})
        raw_curve.append({"ef": ef, "recall": recall(raw_ids.astype(np.int64), truth), "qps": nq / t_r})
    res["methods"]["fastimg ann"] = {"build_s": t_build, "disk_bytes": dir_size(tmp / "fastimg"), "curve": curve}
    print(f"  fastimg ann: build {t_build:.1f}s  {curve}", flush=True)
    res["methods"]["raw hnswlib"] = {"build_s": t_raw_build, "disk_bytes": (tmp / "raw.bin").stat().st_size,
                                     "curve": raw_curve}
    print(f"  raw hnswlib: build {t_raw_build:.1f}s  {raw_curve}", flush=True)
    del raw, graph

    # faiss IndexHNSWFlat
    try:
        import faiss
    except ImportError:  # optional competitor: skipped visibly
        print("  faiss not installed: skipped", flush=True)
    else:
        print("  building faiss HNSWFlat", flush=True)
        faiss.omp_set_num_threads(build_threads)

        def build_faiss():
            f = faiss.IndexHNSWFlat(d, M, faiss.METRIC_INNER_PRODUCT)
            f.hnsw.efConstruction = efc
            f.add(prepared)
            return f

        t_f_build, fidx = timed(build_faiss)
        faiss.write_index(fidx, str(tmp / "faiss.index"))
        faiss.omp_set_num_threads(1)
        curve = []
        for ef in EFS:
            fidx.hnsw.efSearch = ef
            fidx.search(qp[:50], K)
            t, (_, ids) = timed(lambda: fidx.search(qp, K), repeat=2)
            curve.append({"ef": ef, "recall": recall(ids.astype(np.int64), truth), "qps": nq / t})
        res["methods"]["faiss HNSWFlat"] = {"build_s": t_f_build, "disk_bytes": (tmp / "faiss.index").stat().st_size,
                                            "curve": curve}
        print(f"  faiss: build {t_f_build:.1f}s  {curve}", flush=True)
        del fidx
    return res


# ---------------------------------------------------------------------------
# crossover: one query at a time, exact vs ann at the default ef
# ---------------------------------------------------------------------------

def run_crossover(sizes, kind: str, threads: int, nq: int = 100) -> list:
    from fastimg.ann import HnswGraph
    from fastimg.search import ExactSearcher

    d, metric, gen = KINDS[kind]
    x_all, q = gen(max(sizes), d, nq, seed=3)
    rows = []
    for n in sizes:
        x = x_all[:n]
        ex = ExactSearcher(x, metric, threads=threads)
        g = HnswGraph.build(x, metric, threads=threads)
        for i in range(5):  # warm
            ex.search(q[i], K)
            g.search(q[i], K, data=x)
        t_ex, _ = timed(lambda: [ex.search(q[i], K) for i in range(nq)])
        t_ann, _ = timed(lambda: [g.search(q[i], K, data=x) for i in range(nq)])
        rows.append({"n": n, "d": d, "exact_ms": 1e3 * t_ex / nq, "ann_ms": 1e3 * t_ann / nq})
        print(f"  [{kind}] N={n:>9,}  exact {rows[-1]['exact_ms']:.3f} ms  ann {rows[-1]['ann_ms']:.3f} ms",
              flush=True)
    return rows


# ---------------------------------------------------------------------------
# output
# ---------------------------------------------------------------------------

def table(res: dict) -> str:
    m = res["methods"]
    lines = [f"### {res['kind']}: N = {res['n']:,}, D = {res['d']}, metric = {res['metric']}, "
             f"{res['queries']} queries, M = {res['M']}, ef_construction = {res['ef_construction']}",
             "",
             "| method | build (s, {} threads) | size on disk (MB) |".format(res["build_threads"]),
             "|---|---:|---:|"]
    for name, v in m.items():
        if "build_s" in v:
            lines.append(f"| {name} | {v['build_s']:.1f} | {v['disk_bytes'] / 1e6:.1f} |")
    ex = m["fastimg exact"]
    single = ex.get("qps_single")
    lines += ["", f"Exact mode: {ex['qps_1thread']:,.0f} queries/s on 1 thread "
              f"({ex['qps_%dthreads' % res['build_threads']]:,.0f} on {res['build_threads']}, batched)"
              + (f"; {single:,.1f} queries/s one query per call on {res['build_threads']} threads "
                 "(the interactive case)" if single else "") + ".", "",
              "| ef | " + " | ".join(f"{n} recall@10 | {n} q/s" for n in m if n != "fastimg exact")
              + " | ann / raw q/s | ann / exact q/s (batched, 1 thread) |",
              "|---:|" + "---:|---:|" * (len(m) - 1) + "---:|---:|"]
    for i, ef in enumerate(EFS):
        cells = []
        for name, v in m.items():
            if name == "fastimg exact":
                continue
            c = v["curve"][i]
            cells.append(f"{c['recall']:.3f} | {c['qps']:,.0f}")
        ann, raw = m["fastimg ann"]["curve"][i]["qps"], m["raw hnswlib"]["curve"][i]["qps"]
        # (no "ann / exact, one query per call" column: the ann q/s here are batched on one
        # thread, not one query per call; bench/index.md compares the two per call)
        lines.append(f"| {ef} | " + " | ".join(cells) + f" | {ann / raw:.2f} | {ann / ex['qps_1thread']:,.0f}x |")
    b_ann, b_raw = m["fastimg ann"]["build_s"], m["raw hnswlib"]["build_s"]
    lines += ["", f"Build time fastimg / raw hnswlib: {b_ann / b_raw:.2f}.", ""]
    return "\n".join(lines)


def plot(results: list, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(results), figsize=(6.5 * len(results), 4.8), squeeze=False)
    for ax, res in zip(axes[0], results):
        for name, v in res["methods"].items():
            if name == "fastimg exact":
                ax.axhline(v["qps_1thread"], color="grey", ls="--", label=f"{name} (recall 1)")
                continue
            rec = [c["recall"] for c in v["curve"]]
            qps = [c["qps"] for c in v["curve"]]
            ax.plot(rec, qps, marker="o", label=name)
            if name == "fastimg ann":
                for c in v["curve"]:
                    ax.annotate(f"ef={c['ef']}", (c["recall"], c["qps"]), fontsize=7,
                                textcoords="offset points", xytext=(3, 3))
        ax.set_yscale("log")
        ax.set_xlabel("recall@10 (vs fastimg exact)")
        ax.set_ylabel("queries / s (1 thread)")
        ax.set_title(f"{res['kind']}: N={res['n']:,} D={res['d']} {res['metric']}")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=None, help="database rows (default by FASTIMG_BENCH_SCALE)")
    ap.add_argument("--queries", type=int, default=None)
    ap.add_argument("--kinds", default="clustered,hist")
    ap.add_argument("--build-threads", type=int, default=2)
    ap.add_argument("--M", type=int, default=16)
    ap.add_argument("--ef-construction", type=int, default=200)
    ap.add_argument("--crossover", action="store_true", help="time exact vs ann one query at a time")
    ap.add_argument("--out", default=str(HERE), help="directory for the .md/.png outputs")
    args = ap.parse_args(argv)
    out = Path(args.out)
    kinds = [k for k in args.kinds.split(",") if k]

    if args.crossover:
        sizes = pick([1000, 3000], [2000, 10_000, 30_000], [5000, 10_000, 20_000, 50_000, 100_000, 200_000])
        lines = ["| kind | N | exact ms/query | ann ms/query | exact / ann |", "|---|---:|---:|---:|---:|"]
        for kind in kinds:
            for r in run_crossover(sizes, kind, args.build_threads):
                lines.append(f"| {kind} (D={r['d']}) | {r['n']:,} | {r['exact_ms']:.3f} | {r['ann_ms']:.3f} | "
                             f"{r['exact_ms'] / r['ann_ms']:.2f} |")
        text = "\n".join(lines) + "\n"
        (out / "ann_crossover.md").write_text(text)
        print(text)
        return

    n = args.n or pick(5000, 50_000, 200_000)
    nq = args.queries or pick(100, 500, 1000)
    results = []
    with tempfile.TemporaryDirectory(prefix="fastimg-ann-bench-") as tmpd:
        for kind in kinds:
            tmp = Path(tmpd) / kind
            tmp.mkdir()
            results.append(run_config(kind, n, nq, args.build_threads, args.M, args.ef_construction, tmp))
            shutil.rmtree(tmp, ignore_errors=True)
    text = "\n".join(table(r) for r in results)
    (out / "ann_curve.md").write_text(text)
    plot(results, out / "ann_curve.png")
    raw_dir = HERE / "results" if out.resolve() == HERE.resolve() else out
    raw_dir.mkdir(parents=True, exist_ok=True)
    (raw_dir / "ann_curve.json").write_text(json.dumps(results, indent=1))
    print(text)


if __name__ == "__main__":
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    main()
