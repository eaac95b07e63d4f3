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
