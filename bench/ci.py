"""Benchmark guard for CI: fastimg against its baselines in the same run, ratios only.

``make bench-ci`` (run by ``.ci/run`` after ``make test``) times, in interleaved
rounds (every competitor once per round, best of the rounds):

* exact search, N = 200,000 random L1-normalised histograms, D = 256 (the data
  of bench/bench_search.py), pearson and bhattacharyya, Q = 1 and Q = 32, k = 10,
  everything on ONE thread (BLAS limited by threadpoolctl): ``ExactSearcher.search``
  in each precision (float32, float16, int8) against numpy (``P @ q`` +
  argpartition on the float32 prepared rows) and faiss ``IndexFlatIP`` (the same
  rows; at Q = 1 with faiss's own defaults, which on one thread is its sequential
  SIMD scan; at Q = 32 its BLAS path, forced).  One thread because a multi-threaded kernel on
  a shared, oversubscribed machine waits for its slowest thread (measured here:
  a 10x spread between rounds with 2 threads at load average 9, none with 1);
* hsv72 extraction on synthetic 384 x 256 JPEGs: ``describe_many`` (all cores)
  against a decode + numpy loop and a decode + OpenCV ``calcHist`` loop
  (bench/bench_descriptors.py);
* one ANN point, N = 50,000 clustered vectors, D = 128, pearson, ef = 64, k = 10:
  ``HnswGraph.search`` (with its exact re-scoring) against raw hnswlib on the same
  prepared rows, and its recall@10 against the exact search.

It writes every time and ratio to ``bench/results/ci.json`` (git-ignored), prints
a ratio table, and exits 1 if a ratio falls below its floor (or if the precisions
disagree on an answer), never because of an absolute time: a slow shared machine
slows both sides of a ratio.

How the floors were chosen (``FLOORS``): about half of the ratio measured on the
development machine (2 cores shared with other jobs, a pessimistic setting), so
that a busy CI neighbour does not fail the build, but a lost kernel (a dispatch
falling back to scalar code, a precision path that stops being faster, a
regression to numpy speed) does.  The two "is it still faster at all" checks the
issue names keep their natural floor: float32 Q = 1 must beat numpy's matvec
(floor 1.0, measured 2.3 on one thread), and int8 must beat float32 (floor 1.2,
measured 2.4-2.7) - except for batches on a CPU without VNNI (``FLOORS_AVX2``: there
the int8 panels run at float32's rate, 0.90 measured, floor 0.6).  At Q = 1 on one thread, fastimg's float32 scan is as fast as
faiss's sequential SIMD scan or faster (ratio 0.99, 1.16 and 1.71 in three runs of
2026-12-03 at load average 1.7-1.9; with 2 threads faiss split in 2 shards is faster,
as bench/README.md's headline says): that floor (0.3) only catches a collapse.  Until
2026-12-03 this guard set faiss's ``distance_compute_blas_threshold`` to 20 at Q = 1
(faiss < 1.15's default); in faiss 1.15 (default 128,000) that forces its BLAS path,
5x slower than its own scan, and the ratio published here (4.4) compared fastimg
with that.  Three floors are lower than half (0.3-0.4): the ratios whose
value moved most between runs here (hsv72 against OpenCV: 1.0, then 0.62 at load
2 — its fastimg side uses every core, the loop one; the Q = 32 panels against
faiss and in float16: 1.2, then 0.85-0.92); they only catch a collapse.

Run: ``make bench-ci`` or ``.venv/bin/python bench/ci.py [--rounds R] [--quick]``
(``--quick``: N = 20,000, for a smoke test of the script; its ratios are not checked).
About 1 minute of CPU time; 3 minutes of wall time on the development machine
with a load average of 11 on its 2 cores.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import conftest  # noqa: E402,F401  (sets OPENBLAS_CORETYPE before numpy loads)
import numpy as np  # noqa: E402

OUT = HERE / "results" / "ci.json"
K = 10
PRECISIONS = ("float32", "float16", "int8")

#: ratio name -> (floor, measured on the development machine, what it guards).
#: "measured": bench-ci runs on the development machine (2 cores shared with other
#: jobs, load average 9-11: pessimistic), search on one thread.
FLOORS = {
    "search Q=1 numpy / fastimg float32": (1.0, "2.3", "the compiled scan beats numpy's matvec"),
    "search Q=1 faiss / fastimg float32": (0.3, "0.99-1.71", "faiss IndexFlatIP, its defaults (sequential SIMD scan)"),
    "search Q=1 fastimg float32 / int8": (1.2, "2.4", "int8 rows are ~4x fewer bytes"),
    "search Q=1 fastimg float32 / float16": (1.1, "1.9", "float16 rows are ~2x fewer bytes"),
    "search Q=32 numpy / fastimg float32": (1.2, "2.5", "query panels against numpy's GEMM"),
    "search Q=32 faiss / fastimg float32": (0.4, "0.85-1.2", "query panels against faiss's BLAS path"),
    "search Q=32 fastimg float32 / int8": (1.2, "2.7", "int8 VNNI / AVX2 panels"),
    "search Q=32 fastimg float32 / float16": (0.4, "0.92-1.2", "float16 panels stay about float32 speed"),
    "hsv72 numpy loop / fastimg": (5.0, "15", "integer bin decisions, fused kernel"),
    "hsv72 OpenCV calcHist loop / fastimg": (0.3, "0.62-1.0", "reduced JPEG decoding, threads"),
    "ann raw hnswlib / fastimg": (0.3, "0.6", "the wrapper and exact re-scoring cost little"),
    "ann recall@10": (0.85, "1.0", "graph quality at ef = 64"),
}
#: The floors that differ where the int8 kernels run their AVX2 code (``_core.LOWP_BEST ==
#: "avx2"``: no AVX-512 VNNI nor AVX-VNNI).  Without an 8-bit dot product, the int8 query
#: panels multiply u8 -> s16 widened rows with ``vpmaddwd`` and add: 16 multiply-adds per two
#: instructions, float32's FMA rate, so batches gain nothing from int8 there (0.90 measured on
#: an AVX2-only AMD EPYC, 2026-12-03; one query, memory-bound, still 2.7x).  The floor only
#: catches a collapse (the scalar fallback is 6x slower than the AVX2 code).
FLOORS_AVX2 = {
    "search Q=32 fastimg float32 / int8": (0.6, "0.90 (AVX2)", "int8 AVX2 panels: float32's FMA rate"),
}


def _interleave(fns: dict, rounds: int) -> dict:
    from bench_search import interleave

    return {name: best for name, (best, _) in interleave(fns, rounds).items()}


def bench_search(n: int, d: int, rounds: int) -> tuple:
    """Times per competitor and case, the ratios, and the agreement check (one thread)."""
    from bench_search import histograms, numpy_topk
    from threadpoolctl import threadpool_limits

    import faiss
    from fastimg.metrics import prepare_queries
    from fastimg.search import ExactSearcher

    x, queries = histograms(n, d, 32, seed=d)
    threads = 1
    blas_default = faiss.cvar.distance_compute_blas_threshold  # faiss's own choice, read before any change
    faiss.omp_set_num_threads(threads)
    limits = threadpool_limits(1)
    times: dict = {}
    ratios: dict = {}
    for metric in ("pearson", "bhattacharyya"):
        s = {p: ExactSearcher(x, metric, precision=p, threads=threads) for p in PRECISIONS}
        index = faiss.IndexFlatIP(d)
        index.add(np.asarray(s["float32"].prepared))
        for q in (1, 32):
            qs = queries[:q]
            qp = prepare_queries(metric, qs)
            ref = s["float32"].search(qs, K)
            for p in ("float16", "int8"):
                got = s[p].search(qs, K)
                if not (np.array_equal(got[0], ref[0]) and np.array_equal(got[1], ref[1])):
                    raise SystemExit(f"bench-ci: precision {p} disagrees with float32 ({metric}, Q={q})")
            faiss.cvar.distance_compute_blas_threshold = 0 if q > 1 else blas_default
            fns = {f"fastimg {p}": (lambda sp=s[p]: sp.search(qs, K)) for p in PRECISIONS}
            fns["numpy"] = lambda: numpy_topk(s["float32"].prepared, s["float32"].bias, qp, K)
            fns["faiss"] = lambda: index.search(qp, K)
            t = _interleave(fns, rounds)
            times[f"search {metric} Q={q}"] = {name: round(v * 1e3, 3) for name, v in t.items()}
            f32 = t["fastimg float32"]
            for name, value in ((f"Q={q} numpy / fastimg float32", t["numpy"] / f32),
                                (f"Q={q} faiss / fastimg float32", t["faiss"] / f32),
                                (f"Q={q} fastimg float32 / int8", f32 / t["fastimg int8"]),
                                (f"Q={q} fastimg float32 / float16", f32 / t["fastimg float16"])):
                ratios.setdefault(f"search {name}", {})[metric] = value
        del s, index
    faiss.cvar.distance_compute_blas_threshold = blas_default
    limits.restore_original_limits()
    # one figure per ratio: the worse metric
    return times, {name: min(v.values()) for name, v in ratios.items()}, ratios


def bench_hsv72(count: int, rounds: int) -> tuple:
    from bench_descriptors import _fastimg, _loop, _warm, numpy_hsv72, opencv_hsv, synthetic_jpegs

    with tempfile.TemporaryDirectory() as tmp:
        paths = synthetic_jpegs(Path(tmp), count, (256, 384))
        _warm()
        t = _interleave({"fastimg": lambda: _fastimg(paths), "numpy loop": lambda: _loop(numpy_hsv72, paths),
                         "OpenCV calcHist loop": lambda: _loop(opencv_hsv, paths)}, rounds)
    times = {name: round(v * 1e3, 3) for name, v in t.items()}
    return {"hsv72": times}, {"hsv72 numpy loop / fastimg": t["numpy loop"] / t["fastimg"],
                              "hsv72 OpenCV calcHist loop / fastimg": t["OpenCV calcHist loop"] / t["fastimg"]}


def bench_ann(n: int, rounds: int, threads: int) -> tuple:
    import hnswlib

    from bench_ann import _clustered, _recall
    from fastimg.ann import HnswGraph
    from fastimg.metrics import prepare_queries, prepare_rows
    from fastimg.search import ExactSearcher

    d, nq, ef, metric = 128, 500, 64, "pearson"
    x, q = _clustered(n, d, nq, clusters=max(20, n // 250))
    truth, _ = ExactSearcher(x, metric, threads=threads).search(q, K)
    graph = HnswGraph.build(x, metric, M=16, ef_construction=200, threads=threads)
    graph.threads = 1
    prepared, _ = prepare_rows(metric, x)
    raw = hnswlib.Index(space="ip", dim=d)
    raw.init_index(max_elements=n, M=16, ef_construction=200, random_seed=100)
    raw.add_items(prepared, np.arange(n), num_threads=threads)
    raw.set_ef(ef)
    qp = prepare_queries(metric, q)
    ids, _ = graph.search(q, K, data=x, ef=ef)
    t = _interleave({"fastimg ann": lambda: graph.search(q, K, data=x, ef=ef),
                     "raw hnswlib": lambda: raw.knn_query(qp, k=K, num_threads=1)}, rounds)
    recall = _recall(ids, truth)
    return ({"ann": {**{name: round(v * 1e3, 3) for name, v in t.items()}, "recall@10": round(recall, 4)}},
            {"ann raw hnswlib / fastimg": t["raw hnswlib"] / t["fastimg ann"], "ann recall@10": recall})


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=5, help="interleaved rounds per case (default 5)")
    ap.add_argument("--quick", action="store_true", help="small sizes, ratios reported but not checked")
    ap.add_argument("--out", type=Path, default=OUT, help=f"JSON results (default {OUT.relative_to(HERE.parent)})")
    args = ap.parse_args(argv)
    from fastimg import _core
    from fastimg._threads import resolve_threads

    threads = resolve_threads(None)
    t0 = time.perf_counter()
    load0 = os.getloadavg()
    n_search, n_ann, n_img = (20_000, 5_000, 12) if args.quick else (200_000, 50_000, 48)
    sections = {}
    times, ratios, per_metric = bench_search(n_search, 256, args.rounds)
    sections["search"] = round(time.perf_counter() - t0, 1)
    for name, run in (("hsv72", lambda: bench_hsv72(n_img, args.rounds)),
                      ("ann", lambda: bench_ann(n_ann, args.rounds, threads))):
        t1 = time.perf_counter()
        part = run()
        sections[name] = round(time.perf_counter() - t1, 1)
        times.update(part[0])
        ratios.update(part[1])
    floors = {**FLOORS, **(FLOORS_AVX2 if _core.LOWP_BEST == "avx2" else {})}
    rows, failed = [], []
    for name, value in ratios.items():
        floor, measured, why = floors[name]
        ok = value >= floor or args.quick
        rows.append((name, value, floor, measured, "ok" if value >= floor else ("low" if args.quick else "FAIL")))
        if not ok:
            failed.append(name)
    result = {
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "seconds": round(time.perf_counter() - t0, 1),
        "seconds_per_section": sections, "search_threads": 1,
        "quick": args.quick, "threads": threads, "load_average_start": load0, "load_average_end": os.getloadavg(),
        "machine": platform.machine(), "lowp_target": _core.LOWP_BEST, "lowp_targets": _core.lowp_target_info(),
        "sizes": {"search": [n_search, 256], "ann": [n_ann, 128], "hsv72_images": n_img},
        "times_ms_best": times, "ratios": ratios, "search_ratios_per_metric": per_metric,
        "floors": {name: f for name, (f, _, _) in floors.items()}, "failed": failed,
        "OPENBLAS_CORETYPE": os.environ.get("OPENBLAS_CORETYPE", ""),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2, default=str))
    width = max(len(r[0]) for r in rows)
    print(f"\nbench-ci: search on 1 thread, ANN build and hsv72 on {threads}, int8/float16 kernels "
          f"{_core.LOWP_BEST}, load average {load0[0]:.2f} -> "
          f"{result['load_average_end'][0]:.2f}, {result['seconds']} s; ratios > 1: fastimg (or the first "
          f"named) faster")
    print(f"{'ratio'.ljust(width)}  {'value':>7}  {'floor':>6}  {'dev machine':>11}  status")
    for name, value, floor, measured, status in rows:
        print(f"{name.ljust(width)}  {value:7.2f}  {floor:6.2f}  {measured:>11}  {status}")
    print(f"results: {args.out}")
    if failed:
        print(f"bench-ci FAILED: {', '.join(failed)} below the floor", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
