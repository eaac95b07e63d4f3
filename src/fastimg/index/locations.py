"""Where fastimg keeps its files by default (the CLI's index location), and whether
the files an index points to are still where it says (:func:`missing_files`)."""
from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any, Iterable, Optional

import numpy as np

__all__ = ["data_dir", "default_index_path", "missing_files", "MISSING_SAMPLE"]

#: Indexed files :func:`missing_files` stats when no ids are given.
MISSING_SAMPLE = 32


def data_dir() -> Path:
    """Directory where fastimg keeps its default files.

    ``FASTIMG_DATADIR`` if set, else ``$XDG_DATA_HOME/fastimg`` (default
    ``~/.local/share/fastimg``) on Linux and other Unixes,
    ``~/Library/Application Support/fastimg`` on macOS and
    ``%LOCALAPPDATA%\\fastimg`` on Windows.  Not created by this function.
    """
    env = os.environ.get("FASTIMG_DATADIR")
    if env:
        return Path(env).expanduser()
    if sys.platform == "win32":  # pragma: no cover
        base = os.environ.get("LOCALAPPDATA") or os.path.expanduser("~\\AppData\\Local")
        return Path(base) / "fastimg"
    if sys.platform == "darwin":  # pragma: no cover
        return Path.home() / "Library" / "Application Support" / "fastimg"
    xdg = os.environ.get("XDG_DATA_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".local" / "share") / "fastimg"


def default_index_path() -> Path:
    """The index the CLI uses when none is given.

    ``FASTIMG_INDEX`` if set, else ``data_dir() / "index"`` (see :func:`data_dir`,
    which honours ``FASTIMG_DATADIR``).
    """
    env = os.environ.get("FASTIMG_INDEX")
    if env:
        return Path(env).expanduser()
    return data_dir() / "index"


def missing_files(store: Any, view: Any, ids: Optional[Iterable[int]] = None,
                  sample: int = MISSING_SAMPLE) -> dict:
    """Which indexed files no longer exist: ``{"checked", "missing", "examples"}``
    (at most 5 example paths).

    ``ids``: the rows to look at (e.g. the hits of a search); default: up to
    ``sample`` live rows evenly spaced over the index.  Names added with vectors
    are not files and are skipped.  One ``stat`` per file: cheap enough for every
    command that shows paths.
    """
    if ids is None:
        live = view.live_ids()
        if live.size > sample:
            live = live[(np.linspace(0, live.size - 1, sample)).round().astype(np.int64)]
        ids = live.tolist()
    ids = [int(i) for i in ids if 0 <= int(i) < view.state.committed]
    rows = store.rows(ids) if ids else []
    checked, gone = 0, []
    for r in rows:
        if not r.is_file:
            continue
        checked += 1
        p = store.absolute_path(r.path)
        if not os.path.exists(p):
            gone.append(p)
    return {"checked": checked, "missing": len(gone), "examples": gone[:5]}
