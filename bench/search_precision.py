"""Exact search in float32, float16 and int8: the figures of bench/search.md, one command.

    flock /tmp/fastimg-bench.lock .venv/bin/python bench/search_precision.py

(run it on an idle machine: about 10 minutes and 4 GB at the default N = 1,000,000).
For each D (256, 72) and metric (pearson, bhattacharyya) it builds the three
searchers on the same random L1-normalised histograms (bench/bench_search.py's
data), checks that they return the same ids and scores, then times in interleaved
rounds (each competitor once per round, best of the rounds), 2 threads, k = 10:

* Q = 1 (a different query each call, 8 calls per round, per-query time): the
  three precisions, numpy (``P @ q`` + argpartition), and the memory-read ceiling
  of each precision's rows: every streaming reduction of bench/read_ceiling.py
  over the same buffer (8 passes per round), the fastest one is the ceiling;
* Q = 100 (ms per query): the three precisions and the candidate kernels alone.

Then the physical limits: bytes per query / the read bandwidth of the fastest
streaming read of the same precision's rows (same rounds) for Q = 1,
multiply-adds / the peak multiply-add rate of the kernel's instruction at the
reported clock (``PEAK_MACS_PER_CYCLE``) for Q = 100.  Also records that the read
kernels are vectorised (read_ceiling.vectorisation) and the copy / STREAM-triad
bandwidth (read_ceiling.copy_bandwidth).  Prints Markdown tables and writes
bench/results/search_precision.json.

Options: ``--n`` (rows), ``--dims``, ``--metrics``, ``--rounds``, ``--threads``.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import conftest  # noqa: E402,F401  (OPENBLAS_CORETYPE before numpy loads)
import numpy as np  # noqa: E402

PRECISIONS = ("float32", "float16", "int8")
K = 10


def _kernel_fn(s, qp, threads, k=K):
    """The candidate kernel of a searcher alone (no re-scoring), with the first
    candidate count a search of ``k`` results uses."""
    from fastimg import search

    scan = s._scan
    sq = scan.queries(qp)
    chunk = s._scan_chunk(len(qp))
    kk = k + max(8, k // 8)
    width = kk * search._FIRST[s.precision] + search._FIRST_EXTRA[s.precision]
    return lambda: scan.topk(sq, width, None, threads, chunk)


def _bytes_read(s) -> int:
    """Bytes a Q = 1 scan reads: the scanned rows and the per-row arrays."""
    return s.nbytes


#: multiply-adds per cycle and core of each kernel's inner instruction at full
#: issue rate: float32 panels two 8-wide FMAs; int8 one zmm vpdpbusd (64 u8 x s8,
#: AVX-512 VNNI) or two ymm vpdpbusd (AVX-VNNI), AVX2 two vpmaddwd (16) plus their
#: widening and adds (counted as 16); float16 panels run the float32 arithmetic
PEAK_MACS_PER_CYCLE = {"float32": 16, "float16": 16,
                       "int8": {"avx512": 64, "avxvnni": 64, "avx2": 16, "scalar": 1}}


def _clock_ghz() -> float:
    from read_ceiling import clock_ghz

    return clock_ghz()


def _time(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def run(n: int, dims, metrics, rounds: int, threads: int) -> dict:
    import read_ceiling
    from bench_search import histograms, interleave, interleave_times, numpy_topk, paired_fraction
    from fastimg.metrics import prepare_queries
    from fastimg.search import ExactSearcher

    out: dict = {}
    for d in dims:
        x, queries = histograms(n, d, 108, seed=d)
        for metric in metrics:
            t_build = {}
            s = {}
            for p in PRECISIONS:
                t0 = time.perf_counter()
                s[p] = ExactSearcher(x, metric, precision=p, threads=threads)
                t_build[p] = round(time.perf_counter() - t0, 2)
            q1s, q100 = queries[:8], queries[8:108]
            for p in ("float16", "int8"):
                for qs in (q1s, q100):
                    got, ref = s[p].search(qs, K), s["float32"].search(qs, K)
                    assert np.array_equal(got[0], ref[0]) and np.array_equal(got[1], ref[1]), (d, metric, p)
            stats = {}
            for p in PRECISIONS:
                st1: dict = {}
                st100: dict = {}
                s[p].search(q1s, K, stats=st1)
                s[p].search(q100, K, stats=st100)
                stats[p] = {"Q1": st1, "Q100": st100}
            qp1 = prepare_queries(metric, q1s)
            qp100 = prepare_queries(metric, q100)
            # Q = 1: one query per call, 8 different queries per round
            fns = {f"fastimg {p}": (lambda sp=s[p]: [sp.search(q, K) for q in q1s]) for p in PRECISIONS}
            fns["numpy"] = lambda: [numpy_topk(s["float32"].prepared, s["float32"].bias, q[None], K) for q in qp1]
            rows = {"float32": s["float32"].prepared, "float16": s["float16"].reduced.codes,
                    "int8": s["int8"].reduced.codes}
            for p, arr in rows.items():
                for name, fn in read_ceiling.kernels(arr, threads, repeat=8).items():
                    fns[f"read {p} {name}"] = fn
            raw1 = interleave_times(fns, rounds)
            t1 = {k: min(v) / 8 for k, v in raw1.items()}
            ceiling = {p: read_ceiling.best(t1, f"read {p} ") for p in PRECISIONS}
            for p in PRECISIONS:  # the ceiling of each precision's rows: its fastest streaming read
                t1[f"read {p} rows"] = ceiling[p][1]
            # per round: time to stream the precision's rows / fastimg's time (median over rounds)
            paired = {p: paired_fraction(raw1, f"fastimg {p}", f"read {p} ")[0] for p in PRECISIONS}
            # Q = 100
            fns = {f"fastimg {p}": (lambda sp=s[p]: sp.search(q100, K)) for p in PRECISIONS}
            for p in PRECISIONS:
                fns[f"kernel {p}"] = _kernel_fn(s[p], qp100, threads)
            t100 = {k: v[0] / 100 for k, v in interleave(fns, rounds).items()}
            # bytes / s of the fastest streaming read of each precision's rows, same rounds
            bw = {p: rows[p].nbytes / t1[f"read {p} rows"] for p in PRECISIONS}
            from fastimg import _core

            peak = {p: PEAK_MACS_PER_CYCLE[p] for p in PRECISIONS}
            peak["int8"] = PEAK_MACS_PER_CYCLE["int8"][_core.LOWP_BEST]
            rate = {p: peak[p] * _clock_ghz() * 1e9 * threads for p in PRECISIONS}  # MAC / s
            nbytes = {p: s[p].nbytes for p in PRECISIONS}
            limits = {
                "read_bandwidth_GBps": {p: bw[p] / 1e9 for p in PRECISIONS},
                "read_ceiling_kernel": {p: ceiling[p][0] for p in PRECISIONS},
                "Q1_limit_ms": {p: _bytes_read(s[p]) / bw[p] * 1e3 for p in PRECISIONS},
                # the same limit, round by round: fraction of the limit fastimg reached (median of rounds)
                "Q1_achieved_paired": {p: paired[p] * _bytes_read(s[p]) / rows[p].nbytes for p in PRECISIONS},
                "clock_GHz": _clock_ghz(),
                "Q100_peak_GMACps": {p: rate[p] / 1e9 for p in PRECISIONS},
                "Q100_achieved_GMACps": {p: n * d / t100[f"kernel {p}"] / 1e9 for p in PRECISIONS},
                "Q100_limit_ms_per_query": {p: n * d / rate[p] * 1e3 for p in PRECISIONS},
            }
            out[f"D={d} {metric}"] = {
                "N": n, "D": d, "metric": metric, "threads": threads, "build_s": t_build, "nbytes": nbytes,
                "Q1_ms": {k: v * 1e3 for k, v in t1.items()},
                "Q100_ms_per_query": {k: v * 1e3 for k, v in t100.items()},
                "limits": limits, "stats": stats,
            }
            print(f"[D={d} {metric}] Q1 ms {({k: round(v * 1e3, 3) for k, v in t1.items()})}; read ceiling "
                  f"kernels {limits['read_ceiling_kernel']}", flush=True)
            print(f"[D={d} {metric}] Q100 ms/query {({k: round(v * 1e3, 3) for k, v in t100.items()})}", flush=True)
            del s
        del x
    return out


def tables(res: dict) -> str:
    lines = ["| D | metric | float32 | float16 | int8 | float16 speed-up | int8 speed-up | numpy | "
             "bytes int8 / float32 | read ceiling f32 / f16 / i8 |", "|" + "---|" * 10]
    for r in res.values():
        t = r["Q1_ms"]
        f32, f16, i8 = t["fastimg float32"], t["fastimg float16"], t["fastimg int8"]
        lines.append(f"| {r['D']} | {r['metric']} | {f32:.2f} | {f16:.2f} | {i8:.2f} | **{f32 / f16:.2f}x** | "
                     f"**{f32 / i8:.2f}x** | {t['numpy']:.2f} | {r['nbytes']['int8'] / r['nbytes']['float32']:.3f} | "
                     f"{t['read float32 rows']:.2f} / {t['read float16 rows']:.2f} / {t['read int8 rows']:.2f} |")
    lines += ["", "| D | metric | float32 | float16 | int8 | int8 speed-up | kernel f32 / f16 / i8 | "
              "kernel GMAC/s f32 / f16 / i8 | of the peak at the reported clock f32 / f16 / i8 |",
              "|" + "---|" * 9]
    for r in res.values():
        t = r["Q100_ms_per_query"]
        f32, f16, i8 = t["fastimg float32"], t["fastimg float16"], t["fastimg int8"]
        got = r["limits"]["Q100_achieved_GMACps"]
        peak = r["limits"]["Q100_peak_GMACps"]
        lines.append(f"| {r['D']} | {r['metric']} | {f32:.3f} | {f16:.3f} | {i8:.3f} | **{f32 / i8:.2f}x** | "
                     f"{t['kernel float32']:.3f} / {t['kernel float16']:.3f} / {t['kernel int8']:.3f} | "
                     f"{got['float32']:.0f} / {got['float16']:.0f} / {got['int8']:.0f} | "
                     + " / ".join(f"{got[p] / peak[p]:.0%}" for p in PRECISIONS) + " |")
    lines += ["", "| D | metric | read bandwidth GB/s f32 / f16 / i8 | Q = 1 limit f32 / f16 / i8 (ms) | "
              "fastimg at % of the limit f32 / f16 / i8 (per round, median) | (best of rounds) |", "|" + "---|" * 6]
    for r in res.values():
        lim = r["limits"]["Q1_limit_ms"]
        bw = r["limits"]["read_bandwidth_GBps"]
        t = r["Q1_ms"]
        ach = " / ".join(f"{lim[p] / t['fastimg ' + p]:.0%}" for p in PRECISIONS)
        paired = " / ".join(f"{r['limits']['Q1_achieved_paired'][p]:.0%}" for p in PRECISIONS)
        lines.append(f"| {r['D']} | {r['metric']} | " + " / ".join(f"{bw[p]:.1f}" for p in PRECISIONS) + " | "
                     f"{lim['float32']:.2f} / {lim['float16']:.2f} / {lim['int8']:.2f} | {paired} | {ach} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--dims", type=int, nargs="+", default=[256, 72])
    ap.add_argument("--metrics", nargs="+", default=["pearson", "bhattacharyya"])
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=HERE / "results" / "search_precision.json")
    args = ap.parse_args(argv)
    from fastimg import _core

    import read_ceiling

    load0 = os.getloadavg()
    t0 = time.perf_counter()
    res = run(args.n, args.dims, args.metrics, args.rounds, args.threads)
    checks = {"vectorisation": read_ceiling.vectorisation(),
              "copy_bandwidth": read_ceiling.copy_bandwidth(min(256 << 20, max(args.n * 64, 1 << 20)), args.threads)}
    meta = {"date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "load_average_start": load0,
            "load_average_end": os.getloadavg(), "seconds": round(time.perf_counter() - t0, 1),
            "lowp_target": _core.LOWP_BEST, "panels_fast": _core.PANELS_FAST, "read_checks": checks}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"meta": meta, "results": res}, indent=2, default=float))
    print(f"\n{meta['date']}: N = {args.n}, {args.threads} threads, best of {args.rounds} interleaved rounds, "
          f"clock {_clock_ghz():.2f} GHz (reported), "
          f"int8/float16 kernels {meta['lowp_target']}, load average {load0[0]:.2f} -> {meta['load_average_end'][0]:.2f}"
          f", {meta['seconds']} s\n")
    print(tables(res))
    vec, cb = checks["vectorisation"], checks["copy_bandwidth"]
    print(f"\nread kernels: numba f32 sum assembly {vec['asm']}, one thread on an L2-resident block "
          f"{vec['in_cache_GBps']} GB/s ({vec['bytes_per_cycle']} bytes per cycle at the reported clock; a scalar "
          f"add chain: <= 4); copy bandwidth: np.copyto {cb['copyto_GBps']} GB/s (1 thread, read + write), "
          f"STREAM triad {cb['triad_GBps']} GB/s ({cb['threads_triad']} threads, 3 arrays)")
    print(f"\nraw: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
