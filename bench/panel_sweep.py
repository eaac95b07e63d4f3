"""The batch-size sweep behind ``_core.PANEL_MIN_QUERIES`` / ``PANEL_NARROW_MAX`` (bench/search.md).

    /work/tools/bench .venv/bin/python bench/panel_sweep.py      # or: flock /tmp/fastimg-bench.lock ...

For D = 72 and 256 it builds N = 1,000,000 random L1-normalised histograms
(bench/bench_search.py's data), prepares them for pearson (``ExactSearcher``), and
times the float32 candidate kernel alone (``_core.fused_topk``, no re-scoring,
kk = 18 candidates as a search of k = 10 asks for) on batches of Q = 2, 4, 6, 8, 16
queries, once per tile shape in the same interleaved rounds:

* ``2x4 tiles``  - ``panels=0``: the older tiles (2 rows x 4 queries);
* ``12x8 panels`` - ``panels=8``: query panels of 8, tiles of 12 rows x 8 queries;
* ``6x16 panels`` - ``panels=16``: query panels of 16, tiles of 6 rows x 16 queries;
* ``auto``       - ``panels=-1``: what ``ExactSearcher`` uses (the choice the sweep justifies).

2 threads, the chunk size ``ExactSearcher`` passes for a batch, best of 5 rounds, ms
per query.  Prints a Markdown table and writes bench/results/panel_sweep.json (date,
load average before and after, CPU flags used, all times).  About a minute.

Options: ``--n``, ``--dims``, ``--qs``, ``--rounds``, ``--threads``.
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

K = 10
SHAPES = {"2x4 tiles": 0, "12x8 panels": 8, "6x16 panels": 16, "auto": -1}


def run(n: int, dims, qs, rounds: int, threads: int) -> dict:
    from bench_search import histograms, interleave
    from fastimg import _core
    from fastimg.metrics import prepare_queries
    from fastimg.search import ExactSearcher

    kk = K + max(8, K // 8)
    out: dict = {}
    for d in dims:
        x, queries = histograms(n, d, max(qs), seed=d)
        s = ExactSearcher(x, "pearson", threads=threads)
        qp_all = prepare_queries("pearson", queries)
        fns = {}
        for q in qs:
            qp = np.ascontiguousarray(qp_all[:q])
            cr = s._chunk_rows(q)  # what ExactSearcher passes for this batch
            ref = None
            for name, pw in SHAPES.items():
                fn = (lambda qp=qp, cr=cr, pw=pw:
                      _core.fused_topk(s.prepared, qp, kk, bias=s.bias, n_threads=threads, chunk_rows=cr, panels=pw))
                ids, vals = fn()
                if ref is None:
                    ref = (ids, vals)
                else:  # every tile shape finds the same candidates (values may differ in the last bit)
                    np.testing.assert_array_equal(np.sort(ids[:, :K], axis=1), np.sort(ref[0][:, :K], axis=1))
                fns[(q, name)] = fn
        best = interleave(fns, rounds)
        out[d] = {f"Q={q} {name}": best[(q, name)][0] / q * 1e3 for (q, name) in fns}
        print(f"[D={d}] ms per query: " + ", ".join(f"{k} {v:.2f}" for k, v in out[d].items()), flush=True)
        del s, x
    return out


def table(res: dict, qs) -> str:
    lines = ["| D | Q | " + " | ".join(SHAPES) + " | best fixed shape |", "|---|---:|" + "---:|" * (len(SHAPES) + 1)]
    for d, r in res.items():
        for q in qs:
            t = {name: r[f"Q={q} {name}"] for name in SHAPES}
            fixed = {k: v for k, v in t.items() if k != "auto"}
            best = min(fixed, key=fixed.get)
            lines.append(f"| {d} | {q} | " + " | ".join(f"{t[name]:.2f}" for name in SHAPES) + f" | {best} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--dims", type=int, nargs="+", default=[72, 256])
    ap.add_argument("--qs", type=int, nargs="+", default=[2, 4, 6, 8, 16])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=HERE / "results" / "panel_sweep.json")
    args = ap.parse_args(argv)
    from fastimg import _core

    load0 = os.getloadavg()
    t0 = time.perf_counter()
    res = run(args.n, args.dims, args.qs, args.rounds, args.threads)
    meta = {"date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "command": " ".join(sys.argv),
            "load_average_start": load0, "load_average_end": os.getloadavg(),
            "seconds": round(time.perf_counter() - t0, 1), "panels_fast": _core.PANELS_FAST,
            "PANEL_MIN_QUERIES": _core.PANEL_MIN_QUERIES, "PANEL_NARROW_MAX": _core.PANEL_NARROW_MAX,
            "n": args.n, "threads": args.threads, "rounds": args.rounds}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"meta": meta, "ms_per_query": {str(d): r for d, r in res.items()}}, indent=2))
    print(f"\n{meta['date']}: N = {args.n}, {args.threads} threads, pearson, kernel alone (kk = {K + max(8, K // 8)}), "
          f"best of {args.rounds} interleaved rounds, ms per query; PANELS_FAST = {_core.PANELS_FAST}, "
          f"PANEL_MIN_QUERIES = {_core.PANEL_MIN_QUERIES}, PANEL_NARROW_MAX = {_core.PANEL_NARROW_MAX}; "
          f"load average {load0[0]:.2f} -> {meta['load_average_end'][0]:.2f}, {meta['seconds']} s\n")
    print(table(res, args.qs))
    print(f"\nraw: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
