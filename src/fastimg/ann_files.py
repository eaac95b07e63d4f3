"""The files of a saved HNSW graph (:meth:`fastimg.ann.HnswGraph.save` / ``load``).

A save is a directory holding hnswlib's graph file, ``hnsw.<token>.bin`` (a new
name per save; ``hnsw.bin`` in fastimg 0.1's format 1), and fastimg's metadata,
:data:`META_FILE`, which names it and records what hnswlib does not save
(metric, parameters, deleted ids, the caller's ``extra``) with the graph file's
size and CRC-32.  This module holds those names and the file-level steps: finding
the graph file a save names, reading the metadata cheaply, the checksum, fsyncs
and the check that hnswlib's (unreported) write was complete.
"""
from __future__ import annotations

import contextlib
import json
import os
import re
import zlib
from pathlib import Path
from typing import Any, Dict, Optional, Union

from fastimg._fsio import fsync_dir, fsync_file

__all__ = ["FORMAT_VERSION", "READ_FORMAT_VERSIONS", "GRAPH_FILE", "META_FILE", "graph_file", "saved_meta"]

#: Version of the files written by :meth:`HnswGraph.save` (2: the graph file has
#: its own name per save, ``hnsw.<token>.bin``, named by the metadata).
FORMAT_VERSION = 2
#: Versions :meth:`HnswGraph.load` reads (1: fastimg 0.1, graph file :data:`GRAPH_FILE`).
READ_FORMAT_VERSIONS = (1, 2)
#: hnswlib's graph file of a version-1 save (later saves: see :func:`graph_file`).
GRAPH_FILE = "hnsw.bin"
#: fastimg's metadata file (parameters hnswlib does not save, checksum).
META_FILE = "hnsw.json"

_CRC_CHUNK = 16 << 20


def _crc32(path: Path) -> int:
    crc = 0
    with open(path, "rb") as fh:
        while True:
            block = fh.read(_CRC_CHUNK)
            if not block:
                return crc
            crc = zlib.crc32(block, crc)


_GRAPH_NAME = re.compile(r"^hnsw(\.[0-9a-f]+)?\.bin$")


def graph_file(directory: Union[str, os.PathLike]) -> Optional[Path]:
    """The graph file the metadata saved in ``directory`` names (None: no readable
    metadata)."""
    meta = saved_meta(directory)
    if meta is None:
        return None
    name = meta.get("graph_file", GRAPH_FILE)
    return Path(directory) / name if isinstance(name, str) and _GRAPH_NAME.match(name) else None


_fsync = fsync_file  # the names ann.py imports
_fsync_dir = fsync_dir


def _check_complete(path: Path, size: int, count: int, M: int, dim: int) -> None:
    """hnswlib writes with a C++ stream and does not report a failed write: a file
    shorter than its header and level-0 rows need (96 bytes + count x (8 M + 16 +
    4 dim), plus 4 bytes per row of link-list sizes) is a write that failed.
    A full file system with a file that could be cut short is reported too."""
    need = 96 + count * ((2 * M) * 4 + 4 + dim * 4 + 8 + 4)
    full = False
    with contextlib.suppress(OSError, AttributeError):
        st = os.statvfs(path)
        full = min(st.f_bavail, st.f_bfree) == 0
    if size < need or full:
        import errno

        raise OSError(errno.ENOSPC, f"the graph file was cut short ({size} bytes written, at least {need} "
                      "needed): no space left on device", str(path))


def saved_meta(directory: Union[str, os.PathLike]) -> Optional[Dict[str, Any]]:
    """fastimg's metadata of the graph saved in ``directory`` (the :data:`META_FILE`
    dict, ``extra`` included), or None if there is none or it is unreadable.
    Cheap: the graph itself is not read (use :meth:`HnswGraph.load` for that)."""
    try:
        meta = json.loads((Path(directory) / META_FILE).read_text())
    except (OSError, ValueError):
        return None
    return meta if isinstance(meta, dict) else None
