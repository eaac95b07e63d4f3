"""Streaming-read ceilings for the exact-search benchmarks (bench_search.py, search_precision.py).

One query (Q = 1) is memory-bound, so its limit is the time it takes to stream
the bytes the scan reads.  This module gives several streaming reductions over a
buffer; a benchmark times all of them in the same interleaved rounds as fastimg
and takes the **fastest** as the ceiling (:func:`best`), so the ceiling is the
best streaming read we have, not one kernel's.  The kernels, each over
``threads`` threads (2 on the benchmark machine):

* ``core.read_sum``  - ``fastimg._core.read_sum``: fastimg's own row-chunk pattern
  (OpenMP over 4,096-row chunks, four 8-lane accumulators; the old ceiling);
* ``numba f32 sum``  - ``@njit(parallel=True, fastmath=True)``: ``prange`` over one
  contiguous block per thread, a float32 sum that LLVM vectorises for the host CPU
  (4 interleaved zmm / ymm accumulators: see :func:`vectorisation`);
* ``numba f32 sum x8`` - the same over 8 blocks per thread (shorter streams);
* ``numba u64 or``   - the buffer as uint64 words OR-ed together (integer, no
  floating-point latency chain).

Any buffer (float32 rows, float16 codes, uint8 codes) is read through a float32
or uint64 view of its bytes: a streaming read does not care what the bytes mean.

Checks that the kernels really stream at full width (:func:`vectorisation`,
:func:`copy_bandwidth`): the numba kernel's assembly (packed adds, no gathers),
its single-thread rate on an L2-resident block (a scalar loop cannot exceed
~4 bytes per cycle), and the bandwidth of a plain copy (``np.copyto``) and a
STREAM triad for comparison.

An exploratory run (2026-12-03, N = 10^6, D = 72 and 256, float32/float16/int8
rows, `/work/tools/bench`) also timed hand-written C loops (AVX2 with 8 and
AVX-512 with 4 accumulators, no prefetch / NTA or T0 prefetch 1 KB or 4 KB ahead,
OpenMP): they were within +-10 % of these kernels and not consistently faster,
so they are not kept (no compiler needed at benchmark time).
"""
from __future__ import annotations

import re
import time

import numpy as np

_NB: dict = {}


def _numba():
    """The numba kernels, compiled on first use."""
    if not _NB:
        from numba import njit, prange

        @njit(parallel=True, fastmath=True, nogil=True, cache=False)
        def f32_sum(a, nblocks):
            n = a.size
            out = np.zeros(nblocks, np.float32)
            step = (n + nblocks - 1) // nblocks
            for b in prange(nblocks):
                # a slice and a 0-based index: LLVM sees unit-stride, non-negative
                # indexing and vectorises (a[i] over range(lo, hi) became gathers)
                v = a[b * step:min(n, (b + 1) * step)]
                s = np.float32(0)
                for i in range(v.size):
                    s += v[i]
                out[b] = s
            return out.sum()

        @njit(parallel=True, nogil=True, cache=False)
        def u64_or(a, nblocks):
            n = a.size
            out = np.zeros(nblocks, np.uint64)
            step = (n + nblocks - 1) // nblocks
            for b in prange(nblocks):
                v = a[b * step:min(n, (b + 1) * step)]
                s = np.uint64(0)
                for i in range(v.size):
                    s |= v[i]
                out[b] = s
            r = np.uint64(0)
            for b in range(nblocks):
                r |= out[b]
            return r

        @njit(fastmath=True, nogil=True, cache=False)
        def f32_sum_serial(a):
            s = np.float32(0)
            for i in range(a.size):
                s += a[i]
            return s

        @njit(parallel=True, fastmath=True, nogil=True, cache=False)
        def triad(a, b, c, scalar):
            for i in prange(a.size):
                a[i] = b[i] + scalar * c[i]

        _NB.update(f32_sum=f32_sum, u64_or=u64_or, f32_sum_serial=f32_sum_serial, triad=triad)
    return _NB


def _flat_bytes(arr: np.ndarray) -> np.ndarray:
    """The buffer's bytes as a 1-D uint8 array (no copy)."""
    if not arr.flags.c_contiguous:
        raise ValueError(f"read_ceiling: the buffer must be C-contiguous (a copy would not read the same bytes); "
                         f"got strides {arr.strides} for shape {arr.shape}")
    return arr.reshape(-1).view(np.uint8)


def kernels(arr: np.ndarray, threads: int, repeat: int = 1) -> dict:
    """``{name: fn}``: each ``fn()`` streams every byte of ``arr`` ``repeat`` times
    (whole 8-byte words; a tail of fewer than 8 bytes is left out)."""
    import numba

    from fastimg import _core

    nb = _numba()
    numba.set_num_threads(threads)
    raw = _flat_bytes(arr)
    raw = raw[:raw.size - raw.size % 64]
    f32 = raw.view(np.float32)
    u64 = raw.view(np.uint64)
    rows = f32.reshape(-1, 16)  # read_sum wants 2-D rows; 64-byte rows, same bytes in order
    f32_sum, u64_or = nb["f32_sum"], nb["u64_or"]
    return {
        "core.read_sum": lambda: [_core.read_sum(rows, threads) for _ in range(repeat)],
        "numba f32 sum": lambda: [f32_sum(f32, threads) for _ in range(repeat)],
        "numba f32 sum x8": lambda: [f32_sum(f32, 8 * threads) for _ in range(repeat)],
        "numba u64 or": lambda: [u64_or(u64, threads) for _ in range(repeat)],
    }


def best(times: dict, prefix: str = "") -> "tuple[str, float]":
    """The fastest entry of ``times`` (``{name: seconds}``) whose name starts with
    ``prefix``: the read ceiling."""
    cand = {k: v for k, v in times.items() if k.startswith(prefix)}
    name = min(cand, key=cand.get)
    return name[len(prefix):], cand[name]


def vectorisation(threads: int = 1) -> dict:
    """Evidence that the numba float32 kernel streams at full vector width.

    ``asm``: counts of packed float adds on zmm / ymm registers and of gathers in
    the compiled parallel kernel; ``in_cache_GBps``: single-thread rate of the
    serial loop (same body) over a 256 KiB block that stays in L2, best of 200
    passes; ``bytes_per_cycle`` at the clock /proc/cpuinfo reports (a scalar
    float add chain delivers at most 4 bytes per cycle: one add per cycle).
    """
    nb = _numba()
    f32_sum, serial = nb["f32_sum"], nb["f32_sum_serial"]
    block = np.ones(64 * 1024, np.float32)
    f32_sum(block, 1)
    serial(block)
    asm = "\n".join(f32_sum.inspect_asm().values())
    counts = {"vaddps zmm": len(re.findall(r"vaddps\s+[^\n]*%zmm", asm)),
              "vaddps ymm": len(re.findall(r"vaddps\s+[^\n]*%ymm", asm)),
              "addps xmm": len(re.findall(r"\bv?addps\s+[^\n]*%xmm", asm)),
              "gathers": len(re.findall(r"gather", asm))}
    best_t = min(_timed(lambda: serial(block)) for _ in range(200))
    gbps = block.nbytes / best_t / 1e9
    ghz = clock_ghz()
    return {"asm": counts, "in_cache_GBps": round(gbps, 1),
            "bytes_per_cycle": round(gbps / ghz, 1) if ghz == ghz else None, "clock_GHz": ghz}


def copy_bandwidth(nbytes: int = 256 << 20, threads: int = 2, rounds: int = 5) -> dict:
    """Memory bandwidth of a plain copy and a STREAM triad, for comparison with
    the read ceiling: ``np.copyto`` (one thread, NumPy's memcpy; reads + writes
    ``2 * nbytes``) and ``a = b + s * c`` with numba over ``threads`` threads
    (``3 * nbytes`` moved), best of ``rounds``, GB/s counting every byte moved
    (write-allocate traffic not counted)."""
    import numba

    nb = _numba()
    numba.set_num_threads(threads)
    n = nbytes // 4
    b = np.ones(n, np.float32)
    c = np.ones(n, np.float32)
    a = np.empty(n, np.float32)
    nb["triad"](a, b, c, np.float32(3))
    np.copyto(a, b)
    t_copy = min(_timed(lambda: np.copyto(a, b)) for _ in range(rounds))
    t_triad = min(_timed(lambda: nb["triad"](a, b, c, np.float32(3))) for _ in range(rounds))
    return {"copyto_GBps": round(2 * nbytes / t_copy / 1e9, 1), "triad_GBps": round(3 * nbytes / t_triad / 1e9, 1),
            "bytes": nbytes, "threads_triad": threads}


def clock_ghz() -> float:
    """The clock /proc/cpuinfo reports (the nominal one in a VM; turbo may be higher)."""
    try:
        with open("/proc/cpuinfo") as fh:
            return float(next(line for line in fh if line.startswith("cpu MHz")).split(":")[1]) / 1e3
    except (OSError, StopIteration, ValueError):
        return float("nan")


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0
