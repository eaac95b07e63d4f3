"""Shared settings for the benchmarks in bench/.

``FASTIMG_BENCH_SCALE`` selects the problem sizes:

* ``tiny``  - what ``make test`` runs: every benchmark once, on toy sizes, so the
  benchmark code cannot rot (pytest-benchmark is run with ``--benchmark-disable``);
* ``small`` - the default when you run ``pytest bench`` by hand: a quick look;
* ``full``  - ``make bench``: the sizes quoted in bench/README.md.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"

_SCALES = ("tiny", "small", "full")


def _same_blas_kernel() -> None:
    """Give every bundled OpenBLAS the same kernel on x86-64 machines with AVX2.

    numpy's OpenBLAS and faiss's older bundled copy pick their kernels separately;
    on a CPU the older copy does not know, it falls back to its SSE3 "Prescott"
    kernel, which would handicap the faiss baseline.  Setting ``OPENBLAS_CORETYPE``
    before either library loads makes both use the Haswell (AVX2 + FMA) kernel.
    An explicit ``OPENBLAS_CORETYPE`` in the environment is left alone; the value in
    effect is recorded beside every BLAS figure (threadpoolctl).
    """
    if "OPENBLAS_CORETYPE" in os.environ or "numpy" in sys.modules:
        return
    try:
        with open("/proc/cpuinfo") as fh:
            flags = next((line for line in fh if line.startswith("flags")), "").split()
    except OSError:
        return
    if "avx2" in flags and "fma" in flags:
        os.environ["OPENBLAS_CORETYPE"] = "Haswell"


_same_blas_kernel()


def scale() -> str:
    """The benchmark scale chosen by ``FASTIMG_BENCH_SCALE`` (default ``small``)."""
    value = os.environ.get("FASTIMG_BENCH_SCALE", "small").strip().lower() or "small"
    if value not in _SCALES:
        raise ValueError(f"FASTIMG_BENCH_SCALE must be one of {_SCALES}; got {value!r}")
    return value


def pick(tiny, small, full):
    """Return the value for the current scale."""
    return {"tiny": tiny, "small": small, "full": full}[scale()]


sys.path.insert(0, str(Path(__file__).resolve().parent))
