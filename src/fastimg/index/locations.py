"""Where fastimg keeps its files by default (the CLI's index location)."""
from __future__ import annotations

import os
import sys
from pathlib import Path

__all__ = ["data_dir", "default_index_path"]


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
