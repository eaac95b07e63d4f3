"""Durability helpers shared by the index store, its whitening / projection files and
the HNSW graph files (one low-level module, imported by both sides without a cycle)."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Union

__all__ = ["fsync_file", "fsync_dir"]


def fsync_file(path: Union[str, Path]) -> None:
    """Flush a written file's data to disk (errors propagate: the write is not durable)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: Union[str, Path]) -> None:
    """Make a rename or a new file in ``path`` durable (where directories can be fsynced;
    best effort: a platform or file system without directory fsync is not an error)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)
