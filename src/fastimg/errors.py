"""Exceptions raised by fastimg.

Every error fastimg raises on bad input derives from :class:`FastimgError`, and
also from the matching built-in (``ValueError``, ``FileNotFoundError`` ...) so
callers may catch either.  Messages name the file (or argument) and say what
was expected and what was found.

A message is one line: control characters (newline, tab, escape ...) and the
surrogate escapes Python gives to bytes of a file name that are not UTF-8
(``os.fsdecode``, PEP 383) are shown escaped by :func:`escape_text`, so a file
named ``"a\\nb.jpg"`` or ``b"\\xe9.jpg"`` cannot break an error line in two or make
printing it fail.
"""
from __future__ import annotations

import os
import re
from typing import Optional, Union

__all__ = [
    "escape_text",
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
    "IndexWriteError",
    "ArgumentError",
    "IndexChangedError",
    "IndexExistsError",
    "IndexClosedError",
    "ArgumentTypeError",
    "DatasetError",
    "DatasetNotFoundError",
    "ImageNotFoundError",
]

# C0 controls, DEL, C1 controls, the Unicode line/paragraph separators, and the
# lone surrogates U+DC80..U+DCFF that stand for undecodable bytes (and any other
# lone surrogate: not printable either)
_UNSHOWABLE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff]")
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape_char(m: "re.Match[str]") -> str:
    c = m.group()
    o = ord(c)
    if c in _NAMED:
        return _NAMED[c]
    if 0xDC80 <= o <= 0xDCFF:  # the byte os.fsdecode could not decode
        return f"\\x{o - 0xDC00:02x}"
    return f"\\x{o:02x}" if o <= 0xFF else f"\\u{o:04x}"


def escape_text(text: str) -> str:
    """``text`` with what cannot be shown on one line escaped.

    Control characters become ``\\n``, ``\\r``, ``\\t`` or ``\\xNN``; an
    undecodable byte of a file name (a surrogate escape, U+DC80..U+DCFF, from
    ``os.fsdecode``) becomes ``\\xNN`` with the byte's value (so
    ``b"latin1_\\xe9t\\xe9.jpg"`` shows as ``latin1_\\xe9t\\xe9.jpg``, which bash's
    ``$'...'`` quoting turns back into the name); U+2028/U+2029 and other lone
    surrogates become ``\\uNNNN``.  Everything else, backslashes included, is
    left as is.  Text without such characters is returned unchanged.
    """
    if _UNSHOWABLE.search(text) is None:
        return text
    return _UNSHOWABLE.sub(_escape_char, text)


class FastimgError(Exception):
    """Base class of every error raised by fastimg.

    ``str(error)`` is one line: control characters and undecodable bytes of
    file names in the message are escaped (:func:`escape_text`)."""

    def __str__(self) -> str:
        return escape_text(super().__str__())


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
        return escape_text(str(self.args[0])) if self.args else ""


class AnnSearchError(FastimgError, ValueError):
    """Bad argument to the HNSW graph (shape, dimension, ``k``, ids, parameters),
    or a graph that cannot answer (too many deletions for ``ef``)."""


class IndexWriteError(IndexError_, OSError):
    """A write to the index's files failed (a full disk, a quota, an I/O error):
    nothing of the interrupted change was committed and the index keeps its last
    committed state.  ``errno`` is the operating system's (e.g. ``ENOSPC``)."""

    def __str__(self) -> str:  # the message, not OSError's "[Errno N] ..." form
        return escape_text(str(self.args[0])) if self.args else ""


class ArgumentError(FastimgError, ValueError):
    """A bad argument to a fastimg call (its name, what was expected and what was
    given are in the message)."""


class IndexChangedError(IndexError_, RuntimeError):
    """A writer compacted the index (renumbering its ids) while a long read, such
    as iterating over the entries, was going on: start it again."""


class IndexExistsError(IndexError_, FileExistsError):
    """:meth:`Index.create` found an index (or a file, or a non-empty folder of
    other files) at the path: open it instead, or choose another path."""


class IndexClosedError(IndexError_, ValueError):
    """A call on an :class:`Index` handle after :meth:`Index.close` (like
    Python's ``ValueError: I/O operation on closed file``)."""


class ArgumentTypeError(ArgumentError, TypeError):
    """An argument of the wrong type (e.g. a list where a float32 array is
    required); also an :class:`ArgumentError`, so one ``except`` catches every bad
    argument."""


class DatasetError(FastimgError, ValueError):
    """An evaluation data set that cannot be read as its layout says (no class
    folders, a malformed ``groups.csv``, an image it lists missing ...)."""


class DatasetNotFoundError(DatasetError, FileNotFoundError):
    """The data set's directory does not exist."""


class ImageNotFoundError(ImageError, FileNotFoundError):
    """The image file does not exist (``reason`` is ``"not found"``)."""
