"""Thread counts: one rule for every part of fastimg that runs threads.

Exact search (OpenMP), HNSW (hnswlib), CNN inference (onnxruntime) and
description all take ``threads=None`` to mean :func:`resolve_threads`'s answer.
"""
from __future__ import annotations

import numbers
import os
from typing import Optional

from fastimg.errors import ArgumentError

__all__ = ["resolve_threads"]


def resolve_threads(threads: Optional[int] = None) -> int:
    """Number of threads to use.

    Parameters
    ----------
    threads : int or None
        Explicit count (>= 1).  None means the ``FASTIMG_NUM_THREADS`` environment
        variable if set, else every core available to this process.

    Returns
    -------
    int
    """
    if threads is None:
        env = os.environ.get("FASTIMG_NUM_THREADS", "").strip()
        if env:
            try:
                value = int(env)
            except ValueError:
                raise ArgumentError(f"FASTIMG_NUM_THREADS must be a positive integer; got {env!r}") from None
            if value < 1:
                raise ArgumentError(f"FASTIMG_NUM_THREADS must be a positive integer; got {env!r}")
            return value
        try:
            return max(1, len(os.sched_getaffinity(0)))
        except (AttributeError, OSError):  # pragma: no cover - non-Linux
            return max(1, os.cpu_count() or 1)
    if isinstance(threads, bool) or not isinstance(threads, numbers.Integral) or threads < 1:
        raise ArgumentError(f"threads must be a positive integer or None; got {threads!r}")
    return int(threads)
