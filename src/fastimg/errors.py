"""Exceptions raised by fastimg.

Every error fastimg raises on bad input derives from :class:`FastimgError`, and
also from the matching built-in (``ValueError``, ``FileNotFoundError`` ...) so
callers may catch either.  Messages name the file (or argument) and say what
was expected and what was found.
"""
from __future__ import annotations

import os
from typing import Optional, Union

__all__ = [
    "FastimgError",
    "ImageError",
    "DescriptorError",
    "IndexError_",
    "IndexNotFoundError",
    "IndexFormatError",
    "IndexCorruptError",
    "IndexLockedError",
    "IndexReadOnlyError",
    "NotInIndexError",
    "AnnSearchError",
    "ArgumentError",
    "IndexChangedError",
]


class FastimgError(Exception):
    """Base class of every error raised by fastimg."""


class ImageError(FastimgError, ValueError):
    """An image could not be read or decoded.

    Attributes
    ----------
    source : str
        The file path (or ``"<bytes>"`` / ``"<array>"``) that failed.
    reason : str
        Short reason, e.g. ``"not found"``, ``"not an image"``, ``"truncated"``,
        ``"too large"``, ``"unsupported format"``.
    """

    def __init__(self, source: Union[str, os.PathLike, None], reason: str, detail: Optional[str] = None):
        self.source = os.fspath(source) if source is not None else "<unknown>"
        self.reason = reason
        self.detail = detail
        msg = f"{self.source}: {reason}"
        if detail:
            msg += f" ({detail})"
        super().__init__(msg)


class DescriptorError(FastimgError, ValueError):
    """Unknown descriptor name or invalid descriptor parameters."""


class IndexError_(FastimgError):
    """Base class of index errors (named with a trailing underscore so it does
    not shadow the built-in ``IndexError``)."""


class IndexNotFoundError(IndexError_, FileNotFoundError):
    """No fastimg index at the given path."""


class IndexFormatError(IndexError_, ValueError):
    """The index was written by an incompatible fastimg version, or its
    manifest is invalid."""


class IndexCorruptError(IndexError_, ValueError):
    """Files of the index disagree with each other (truncated vectors, missing
    metadata database ...)."""


class IndexLockedError(IndexError_, RuntimeError):
    """Another process holds the index's writer lock."""


class IndexReadOnlyError(IndexError_, PermissionError):
    """A write was attempted on an index opened with ``mode="r"``."""


class NotInIndexError(IndexError_, KeyError):
    """An id, path or name that the index does not hold (nothing was changed)."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0]) if self.args else ""


class AnnSearchError(FastimgError, ValueError):
    """Bad argument to the HNSW graph (shape, dimension, ``k``, ids, parameters),
    or a graph that cannot answer (too many deletions for ``ef``)."""


class ArgumentError(FastimgError, ValueError):
    """A bad argument to a fastimg call (its name, what was expected and what was
    given are in the message)."""


class IndexChangedError(IndexError_, RuntimeError):
    """A writer compacted the index (renumbering its ids) while a long read, such
    as iterating over the entries, was going on: start it again."""
