"""Image loading: one function, :func:`load_image`, returning BGR ``uint8`` arrays.

Every image fastimg describes goes through :func:`load_image`, so every
descriptor sees pixels prepared the same way:

* **Sources**: a path (``str`` / :class:`os.PathLike`, any name the OS can hold:
  a name that is not UTF-8 arrives as a ``str`` with surrogate escapes, as
  :func:`os.fsdecode` makes it; the file is read by Python and decoded from
  memory), raw ``bytes`` (or any buffer), or a NumPy array already in OpenCV's
  BGR convention.  Only regular files are read: a directory, FIFO, device
  (``/dev/zero`` ...) or socket is refused before any read, so none can block
  or flood the caller.
* **Decoding** is OpenCV's (:func:`cv2.imdecode`), which honours the EXIF
  orientation of JPEGs, converts grey images to 3 channels and 16-bit images to
  8 bits.  Only files whose signature names a known format are handed to a
  decoder (JPEG, PNG, GIF, BMP, WebP, TIFF, PNM, JPEG 2000, HEIF/AVIF, ICO);
  anything else is ``"not an image"`` (OpenCV's other readers -- Radiance HDR,
  PFM, Sun raster -- never see untrusted data).  JPEG 2000, HEIF and ICO data
  OpenCV cannot decode is passed to Pillow when it is installed, otherwise it
  fails with reason ``"unsupported format"``.
* **Transparency**: PNG images with an alpha channel (or a ``tRNS``
  transparency chunk) are composited over white (transparent pixels often
  carry arbitrary colours); for other formats OpenCV drops the alpha channel.
  Arrays with 4 channels are treated as BGRA and composited over white as well.
* **Working size**: with ``max_side`` the image is shrunk (aspect kept,
  :data:`cv2.INTER_AREA`) so that its longer side is at most ``max_side``.
  JPEGs are then decoded directly at 1/2, 1/4 or 1/8 scale (OpenCV's
  ``IMREAD_REDUCED_COLOR_*`` modes, i.e. libjpeg's DCT scaling): the smallest
  scale whose longer side is still at least 7/8 of ``max_side`` (so a
  4000 x 3000 photo with ``max_side=512`` is decoded at 500 x 375, 4x faster
  than a full decode, and not resized further).  Descriptors are normalised
  histograms, so the working size barely changes them.
* **Limits**: the pixel count declared in the file header (every format above
  but ICO, whose Pillow decoder is checked before it decodes) is checked
  *before* decoding against ``max_pixels``, which protects against
  decompression bombs; so is the file size (at most 16 bytes per allowed pixel).
* **Messages**: OpenCV's own logger (which prints codec errors such as
  ``TIFF_Error ...`` on stderr from the decoding thread) is silenced while the
  ``fastimg`` logger does not show debug messages: the :class:`ImageError`
  says what is wrong, in one line.  With debug logging on (the CLI's
  ``--debug``), OpenCV keeps the level it had (``OPENCV_LOG_LEVEL``).  libjpeg's
  warnings on damaged-but-decodable JPEGs ("Corrupt JPEG data: ...") are
  printed by libjpeg itself on file descriptor 2, out of reach of any logger
  (see docs/reliability.md).

Every failure raises :class:`fastimg.errors.ImageError` whose ``reason`` is one
of ``"not found"``, ``"unreadable"``, ``"empty file"``, ``"not an image"``,
``"truncated"``, ``"corrupt"``, ``"too large"``, ``"unsupported format"``,
``"invalid array"`` or ``"invalid source"``, and whose ``source`` is the path (or ``"<bytes>"`` /
``"<array>"``).
"""
from __future__ import annotations

import errno
import logging
import os
import stat
import struct
import zlib
from typing import Dict, Optional, Tuple, Union

import numpy as np

from fastimg.errors import ArgumentError, ImageError, ImageNotFoundError

__all__ = ["load_image", "shrink_to", "image_size", "sniff_format", "DEFAULT_MAX_PIXELS", "ImageSource"]

logger = logging.getLogger(__name__)

#: Default limit on the number of pixels of an image (width * height): 100 MP.
DEFAULT_MAX_PIXELS = 100_000_000

ImageSource = Union[str, "os.PathLike[str]", bytes, bytearray, memoryview, np.ndarray]

#: A JPEG is decoded at 1/k scale when its longer side then still has at least
#: this fraction of ``max_side`` pixels (the result is never larger than ``max_side``).
_REDUCE_MIN_FRACTION = 0.875

_JPEG_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}

#: formats whose every valid file OpenCV decodes: a failure means damaged data (no Pillow)
_OPENCV_FORMATS = frozenset({"jpeg", "png", "gif", "bmp", "webp", "tiff", "pnm"})

#: a file may hold at most this many bytes per allowed pixel (16: 16-bit RGBA, uncompressed)
_BYTES_PER_PIXEL = 16

#: the formats handed to a decoder, for messages
_KNOWN = "JPEG, PNG, GIF, BMP, WebP, TIFF, PNM, JPEG 2000, HEIF/AVIF or ICO"


def sniff_format(data: bytes) -> Optional[str]:
    """Name of the image format announced by the first bytes of ``data``.

    Parameters
    ----------
    data : bytes
        The start of a file (16 bytes are enough).

    Returns
    -------
    str or None
        ``"jpeg"``, ``"png"``, ``"gif"``, ``"bmp"``, ``"webp"``, ``"tiff"``,
        ``"pnm"``, ``"jp2"``, ``"heif"`` (HEIC/AVIF), ``"ico"`` or ``None`` when
        the signature is not recognised.
    """
    head = bytes(data[:16])
    if head[:3] == b"\xff\xd8\xff":
        return "jpeg"
    if head[:8] == b"\x89PNG\r\n\x1a\n":
        return "png"
    if head[:6] in (b"GIF87a", b"GIF89a"):
        return "gif"
    if head[:2] == b"BM":
        return "bmp"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "webp"
    if head[:4] in (b"II*\x00", b"MM\x00*"):
        return "tiff"
    if head[:1] == b"P" and head[1:2] in (b"1", b"2", b"3", b"4", b"5", b"6"):
        return "pnm"
    if head[:12] == b"\x00\x00\x00\x0cjP  \r\n\x87\n" or head[:4] == b"\xff\x4f\xff\x51":
        return "jp2"
    if head[4:8] == b"ftyp":
        return "heif"
    if head[:4] == b"\x00\x00\x01\x00":
        return "ico"
    return None


def _jpeg_size(data: memoryview) -> Optional[Tuple[int, int]]:
    n = len(data)
    i = 2
    while i + 4 <= n:
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker in (0x01,) or 0xD0 <= marker <= 0xD8:
            i += 2
            continue
        if i + 4 > n:
            return None
        length = (data[i + 2] << 8) | data[i + 3]
        if marker in _JPEG_SOF:
            if i + 9 > n:
                return None
            h = (data[i + 5] << 8) | data[i + 6]
            w = (data[i + 7] << 8) | data[i + 8]
            return w, h
        if marker == 0xDA or length < 2:  # start of scan before any frame header
            return None
        i += 2 + length
    return None


def _tiff_ifd0(data: memoryview) -> Optional[Tuple[str, Dict[int, Tuple[int, int, int]]]]:
    """Byte order and first directory of a classic TIFF: tag -> (type, count, value field offset)."""
    order = "<" if bytes(data[:2]) == b"II" else ">"
    if len(data) < 8:
        return None
    (off,) = struct.unpack(order + "I", data[4:8])
    if off < 8 or off + 2 > len(data):
        return None
    (n,) = struct.unpack(order + "H", data[off:off + 2])
    tags: Dict[int, Tuple[int, int, int]] = {}
    for k in range(min(n, 4096)):
        e = off + 2 + 12 * k
        if e + 12 > len(data):
            break
        tag, typ, count = struct.unpack(order + "HHI", data[e:e + 8])
        tags[tag] = (typ, count, e + 8)
    return order, tags


def _tiff_values(data: memoryview, order: str, entry: Tuple[int, int, int], limit: int = 1 << 16) -> list:
    """The (SHORT or LONG) values of a TIFF directory entry (inline or at their offset)."""
    typ, count, field = entry
    code, size = {3: ("H", 2), 4: ("I", 4), 16: ("Q", 8)}.get(typ, (None, 0))
    if code is None or count < 1:
        return []
    count = min(count, limit)
    if count * size <= 4:
        at = field
    else:
        (at,) = struct.unpack(order + "I", data[field:field + 4])
    if at + count * size > len(data):
        return []
    return list(struct.unpack(order + code * count, data[at:at + count * size]))


def _tiff_size(data: memoryview) -> Optional[Tuple[int, int]]:
    ifd = _tiff_ifd0(data)
    if ifd is None:
        return None
    order, tags = ifd
    if 256 not in tags or 257 not in tags:
        return None
    w = _tiff_values(data, order, tags[256], 1)
    h = _tiff_values(data, order, tags[257], 1)
    return (w[0], h[0]) if w and h else None


def _tiff_truncated(data: memoryview) -> bool:
    """True if the first directory's strips or tiles end beyond the data."""
    ifd = _tiff_ifd0(data)
    if ifd is None:
        return True
    order, tags = ifd
    for offsets, counts in ((273, 279), (324, 325)):
        if offsets in tags and counts in tags:
            o = _tiff_values(data, order, tags[offsets])
            c = _tiff_values(data, order, tags[counts])
            if not o or not c or max(a + b for a, b in zip(o, c)) > len(data):
                return True
    return False


def _pnm_header(data: memoryview) -> Optional[Tuple[int, int, int, int]]:
    """``(width, height, maxval, header length)`` of a PNM file (maxval 1 for P1/P4)."""
    head = bytes(data[:1024])
    fields = []
    i = 2
    want = 2 if head[1:2] in (b"1", b"4") else 3
    while len(fields) < want:
        while i < len(head) and head[i:i + 1] in b" \t\r\n":
            i += 1
        if head[i:i + 1] == b"#":
            while i < len(head) and head[i:i + 1] not in b"\r\n":
                i += 1
            continue
        j = i
        while j < len(head) and head[j:j + 1].isdigit():
            j += 1
        if j == i or j >= len(head):
            return None
        fields.append(int(head[i:j]))
        i = j
    return fields[0], fields[1], fields[2] if want == 3 else 1, i + 1


def _box_size(data: memoryview, box: bytes, fmt: str) -> Optional[Tuple[int, int]]:
    """Largest size declared by ``ispe`` (HEIF) / ``ihdr`` (JPEG 2000) boxes in the first 1 MiB."""
    head = bytes(data[:1 << 20])
    best = None
    i = head.find(box)
    while i >= 0:
        if fmt == "heif" and i + 16 <= len(head):  # ispe: version/flags, width, height
            w, h = struct.unpack(">II", head[i + 8:i + 16])
        elif fmt == "jp2" and i + 12 <= len(head):  # ihdr: height, width
            h, w = struct.unpack(">II", head[i + 4:i + 12])
        else:
            break
        if best is None or w * h > best[0] * best[1]:
            best = (w, h)
        i = head.find(box, i + 4)
    return best


def image_size(data: bytes) -> Optional[Tuple[int, int]]:
    """``(width, height)`` declared in an image header, without decoding.

    Parameters
    ----------
    data : bytes
        The encoded image (JPEG, PNG, GIF, BMP, WebP, TIFF, PNM, JPEG 2000 and
        HEIF/AVIF are understood; for HEIF the largest ``ispe`` size).

    Returns
    -------
    tuple of int or None
        ``(width, height)``, or ``None`` if the format is not understood or the
        header is damaged.
    """
    fmt = sniff_format(data)
    mv = memoryview(data)
    try:
        if fmt == "jpeg":
            return _jpeg_size(mv)
        if fmt == "png" and len(mv) >= 24:
            w, h = struct.unpack(">II", mv[16:24])
            return int(w), int(h)
        if fmt == "gif" and len(mv) >= 10:
            w, h = struct.unpack("<HH", mv[6:10])
            return int(w), int(h)
        if fmt == "bmp" and len(mv) >= 26:
            w, h = struct.unpack("<ii", mv[18:26])
            return abs(int(w)), abs(int(h))
        if fmt == "webp" and len(mv) >= 30:
            chunk = bytes(mv[12:16])
            if chunk == b"VP8X":
                w = 1 + int.from_bytes(bytes(mv[24:27]), "little")
                h = 1 + int.from_bytes(bytes(mv[27:30]), "little")
                return w, h
            if chunk == b"VP8L":
                bits = int.from_bytes(bytes(mv[21:25]), "little")
                return 1 + (bits & 0x3FFF), 1 + ((bits >> 14) & 0x3FFF)
            if chunk == b"VP8 ":
                w, h = struct.unpack("<HH", mv[26:30])
                return int(w) & 0x3FFF, int(h) & 0x3FFF
        if fmt == "tiff":
            return _tiff_size(mv)
        if fmt == "pnm":
            head = _pnm_header(mv)
            return None if head is None else (head[0], head[1])
        if fmt == "jp2":
            if bytes(mv[:2]) == b"\xff\x4f" and len(mv) >= 24:  # raw codestream: SIZ marker
                xs, ys, xo, yo = struct.unpack(">IIII", mv[8:24])
                return xs - xo, ys - yo
            return _box_size(mv, b"ihdr", "jp2")
        if fmt == "heif":
            return _box_size(mv, b"ispe", "heif")
    except (struct.error, ValueError):
        return None
    return None


def _png_damage(data: bytes) -> Optional[Tuple[str, str]]:
    """``(reason, detail)`` for a PNG cut short or with a critical chunk failing its CRC.

    Checked before decoding because libpng reports these on stderr by itself
    ("libpng error: ..."), out of reach of any logger; the walk over the chunks
    and their CRCs costs about a millisecond per 10 MB.
    """
    mv = memoryview(data)
    i, n = 8, len(data)
    while True:
        if i + 12 > n:
            return "truncated", "PNG data ends before the IEND chunk"
        length, kind = struct.unpack(">I4s", mv[i:i + 8])
        end = i + 12 + length
        if end > n:
            return "truncated", f"PNG data ends inside a {kind.decode('latin-1')!r} chunk"
        critical = kind[:1].isupper()
        if critical and zlib.crc32(mv[i + 4:i + 8 + length]) != struct.unpack(">I", mv[end - 4:end])[0]:
            return "corrupt", f"PNG {kind.decode('latin-1')!r} chunk at byte {i} fails its CRC check"
        if kind == b"IEND":
            return None
        i = end


def _truncation(fmt: Optional[str], data: bytes) -> Optional[str]:
    """Why ``data`` of format ``fmt`` is cut short, or ``None`` if it does not look so."""
    mv = memoryview(data)
    try:
        if fmt == "jpeg":
            eoi = data.rfind(b"\xff\xd9")
            if eoi < 0 or eoi < data.rfind(b"\xff\xda"):
                return "JPEG data ends before the end-of-image marker"
        elif fmt == "png":
            if data.rfind(b"IEND") < 0:
                return "PNG data ends before the IEND chunk"
        elif fmt == "gif":
            if not data.rstrip(b"\x00").endswith(b";"):
                return "GIF data ends before the trailer"
        elif fmt == "bmp" and len(data) >= 34:
            off, _, w, h, _, bits, comp = struct.unpack("<IIiiHHI", mv[10:34])
            if comp == 0 and bits in (1, 4, 8, 16, 24, 32) and off + ((abs(w) * bits + 31) // 32) * 4 * abs(h) > len(data):
                return f"BMP pixel data ends before row {abs(h)}"
            if off >= len(data):
                return "BMP data ends before the pixels"
        elif fmt == "bmp":
            return "BMP data ends inside the header"
        elif fmt == "webp":
            if len(data) < 12 or struct.unpack("<I", mv[4:8])[0] + 8 > len(data):
                return "WebP data ends before the size its RIFF header declares"
        elif fmt == "tiff":
            if _tiff_truncated(mv):
                return "TIFF strips, tiles or directory lie beyond the end of the data"
        elif fmt == "pnm":
            head = _pnm_header(mv)
            if head is None:
                return "PNM data ends inside the header"
            w, h, maxval, n = head
            kind = bytes(mv[1:2])
            per = {b"4": 0, b"5": 1, b"6": 3}.get(kind)
            if per is not None:
                need = ((w + 7) // 8) * h if per == 0 else w * h * per * (2 if maxval > 255 else 1)
                if n + need > len(data):
                    return "PNM pixel data ends early"
    except (struct.error, ValueError):
        return f"{fmt} header cut short"
    return None


_FILE_KINDS = ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
               (stat.S_ISSOCK, "a socket"))


def special_file_detail(mode: int) -> str:
    """The detail of an ``"unreadable"`` entry that is neither a regular file nor a
    directory (``st_mode``), e.g. ``"a FIFO, not a regular file"`` (also used by
    the index's folder walk)."""
    kind = next((k for test, k in _FILE_KINDS if test(mode)), "not a regular file")
    return f"{kind}, not a regular file"


def broken_link_detail(path: str) -> Optional[str]:
    """For a ``path`` that was not found: ``"broken symbolic link to '...'"`` when it
    is a symbolic link, else None (also used by the index's folder walk)."""
    if not os.path.islink(path):
        return None
    try:
        target = os.fsdecode(os.readlink(path))
    except OSError:
        target = "?"
    return f"broken symbolic link to {target!r}"


def _read(path: str, max_bytes: Optional[int]) -> bytes:
    """The bytes of the regular file ``path`` (at most ``max_bytes``)."""
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags)  # O_NONBLOCK: opening a FIFO does not wait for a writer
    except FileNotFoundError:
        raise ImageNotFoundError(path, "not found", broken_link_detail(path)) from None
    except IsADirectoryError:
        raise ImageError(path, "unreadable", "is a directory") from None
    except PermissionError:
        raise ImageError(path, "unreadable", "permission denied") from None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise ImageError(path, "unreadable", "too many levels of symbolic links (a loop?)") from None
        raise ImageError(path, "unreadable", exc.strerror or str(exc)) from None
    try:
        st = os.fstat(fd)
        if stat.S_ISDIR(st.st_mode):
            raise ImageError(path, "unreadable", "is a directory")
        if not stat.S_ISREG(st.st_mode):
            raise ImageError(path, "unreadable", special_file_detail(st.st_mode))
        if max_bytes is not None and st.st_size > max_bytes:
            raise ImageError(path, "too large", f"file of {st.st_size:,} bytes; at most {max_bytes:,} "
                             f"({_BYTES_PER_PIXEL} per pixel of max_pixels) are read")
        chunks = []
        size = 0
        while True:
            block = os.read(fd, max(1 << 20, st.st_size + 1 - size))
            if not block:
                break
            chunks.append(block)
            size += len(block)
            if max_bytes is not None and size > max_bytes:
                raise ImageError(path, "too large", f"file grew beyond {max_bytes:,} bytes while being read")
        return b"".join(chunks)
    except OSError as exc:
        raise ImageError(path, "unreadable", exc.strerror or str(exc)) from None
    finally:
        os.close(fd)


def _check_pixels(source: str, w: int, h: int, max_pixels: Optional[int]) -> None:
    if w <= 0 or h <= 0:
        raise ImageError(source, "corrupt", f"header declares a {w}x{h} image")
    if max_pixels is not None and w * h > max_pixels:
        raise ImageError(
            source, "too large",
            f"{w}x{h} = {w * h:,} pixels exceeds max_pixels={max_pixels:,}; pass a larger max_pixels to allow it",
        )


def _to_bgr8(img: np.ndarray, source: str, composite: bool = True) -> np.ndarray:
    """Convert a decoded/user array (grey, BGR, BGRA; uint8/uint16) to BGR uint8."""
    if img.dtype == np.uint16:
        img = (img >> 8).astype(np.uint8)
    elif img.dtype == np.bool_:
        img = img.astype(np.uint8) * 255
    elif img.dtype != np.uint8:
        raise ImageError(source, "invalid array", f"dtype {img.dtype}; expected uint8 (or uint16)")
    if img.ndim == 2:
        img = np.repeat(img[:, :, None], 3, axis=2)
    elif img.ndim == 3 and img.shape[2] == 1:
        img = np.repeat(img, 3, axis=2)
    elif img.ndim == 3 and img.shape[2] == 2:  # grey + alpha
        grey = img[:, :, :1]
        alpha = img[:, :, 1:2]
        img = np.concatenate([grey, grey, grey, alpha], axis=2)
    if img.ndim != 3 or img.shape[2] not in (3, 4):
        raise ImageError(source, "invalid array", f"shape {img.shape}; expected (H, W), (H, W, 3) or (H, W, 4)")
    if img.shape[2] == 4:
        if composite:
            a = img[:, :, 3:4].astype(np.uint16)
            # over white: out = (c * a + 255 * (255 - a)) / 255, rounded
            out = (img[:, :, :3].astype(np.uint16) * a + 255 * (255 - a) + 127) // 255
            img = out.astype(np.uint8)
        else:
            img = img[:, :, :3]
    if img.shape[0] == 0 or img.shape[1] == 0:
        raise ImageError(source, "invalid array", f"empty image of shape {img.shape}")
    return np.ascontiguousarray(img)


def shrink_to(img: np.ndarray, max_side: Optional[int]) -> np.ndarray:
    """Shrink an image so that its longer side is at most ``max_side`` pixels.

    The aspect ratio is kept (each side rounded, at least 1 pixel) and the pixels
    are averaged (``cv2.INTER_AREA``).  An image already small enough, or
    ``max_side=None``, is returned as is (not copied).  The descriptors' working
    size (``Descriptor.max_side``) and ``load_image(..., max_side=)`` use it.
    """
    if max_side is None:
        return img
    h, w = img.shape[:2]
    long_side = max(h, w)
    if long_side <= max_side:
        return img
    import cv2

    f = max_side / long_side
    nw = max(1, int(round(w * f)))
    nh = max(1, int(round(h * f)))
    return cv2.resize(img, (nw, nh), interpolation=cv2.INTER_AREA)


def _pillow_decode(data: bytes, source: str, fmt: str, max_pixels: Optional[int]) -> Optional[np.ndarray]:
    """Decode with Pillow (if installed); ``None`` when Pillow is not installed."""
    try:
        from PIL import Image, ImageOps  # type: ignore[import-not-found]
    except ImportError:
        return None
    import io

    try:
        with Image.open(io.BytesIO(data)) as im:
            _check_pixels(source, im.size[0], im.size[1], max_pixels)
            im = ImageOps.exif_transpose(im)
            if im.mode in ("RGBA", "LA", "P", "PA"):
                im = im.convert("RGBA")
                arr = np.asarray(im)[:, :, [2, 1, 0, 3]]
            else:
                arr = np.asarray(im.convert("RGB"))[:, :, ::-1]
    except ImageError:
        raise
    except Image.UnidentifiedImageError:
        raise ImageError(source, "corrupt", f"{fmt} data that neither OpenCV nor Pillow can decode") from None
    except MemoryError:
        raise ImageError(source, "too large", "out of memory while decoding") from None
    except Exception as exc:  # noqa: BLE001 - Pillow raises many types
        raise ImageError(source, "corrupt", f"Pillow: {type(exc).__name__}: {exc}") from None
    return _to_bgr8(np.ascontiguousarray(arr), source)


#: the OpenCV log level fastimg found (restored while the fastimg logger shows debug messages)
_opencv_level: Dict[str, Optional[int]] = {"found": None, "set": None}


def _opencv():
    """``cv2``, with OpenCV's own logger silenced unless the ``fastimg`` logger shows debug messages.

    OpenCV prints codec errors (``[ERROR:0@0.01] global grfmt_tiff.cpp ... TIFF_Error``)
    on stderr from the thread that decodes, before fastimg's own error; the
    :class:`ImageError` says the same in one line.  The level is process-wide
    (OpenCV has one logger); it is set only when it must change.
    """
    import cv2

    log = cv2.utils.logging
    if _opencv_level["found"] is None:
        _opencv_level["found"] = log.getLogLevel()
    want = _opencv_level["found"] if logging.getLogger("fastimg").isEnabledFor(logging.DEBUG) else log.LOG_LEVEL_SILENT
    if want != _opencv_level["set"]:
        log.setLogLevel(want)
        _opencv_level["set"] = want
    return cv2


def _decode(data: bytes, source: str, max_pixels: Optional[int], max_side: Optional[int]) -> np.ndarray:
    if len(data) == 0:
        raise ImageError(source, "empty file")
    fmt = sniff_format(data)
    if fmt is None:
        raise ImageError(source, "not an image", f"unrecognised file signature; fastimg reads {_KNOWN} files")
    size = image_size(data)
    if size is not None:
        _check_pixels(source, size[0], size[1], max_pixels)
    cv2 = _opencv()

    buf = np.frombuffer(data, dtype=np.uint8)
    flags = cv2.IMREAD_COLOR
    composite = False
    if fmt == "jpeg":
        # A JPEG whose last end-of-image marker precedes its last scan is cut short
        # (libjpeg would fill the missing part with grey).
        cut = _truncation(fmt, data)
        if cut is not None:
            raise ImageError(source, "truncated", cut)
        if max_side is not None and size is not None:
            long_side = max(size)
            for k, flag in ((8, cv2.IMREAD_REDUCED_COLOR_8), (4, cv2.IMREAD_REDUCED_COLOR_4),
                            (2, cv2.IMREAD_REDUCED_COLOR_2)):
                if long_side // k >= _REDUCE_MIN_FRACTION * max_side:
                    flags = flag
                    break
    elif fmt == "png":
        damage = _png_damage(data)
        if damage is not None:
            raise ImageError(source, *damage)
        idat = data.find(b"IDAT")
        if (len(data) >= 26 and data[25] in (4, 6)) or b"tRNS" in data[:idat if idat > 0 else 4096]:
            flags = cv2.IMREAD_UNCHANGED  # grey+alpha, RGBA, or a transparent colour / palette entries
            composite = True

    try:
        img = cv2.imdecode(buf, flags)
    except cv2.error as exc:
        msg = str(exc).strip().splitlines()[-1] if str(exc).strip() else "OpenCV error"
        raise ImageError(source, "corrupt", f"OpenCV: {msg}") from None
    except MemoryError:
        raise ImageError(source, "too large", "out of memory while decoding") from None
    if img is None:
        cut = _truncation(fmt, data)
        if cut is not None:
            raise ImageError(source, "truncated", cut)
        if fmt in _OPENCV_FORMATS:
            logger.debug("%s: OpenCV cannot decode this %s data", source, fmt)
            raise ImageError(source, "corrupt", f"{fmt} data could not be decoded")
        logger.debug("%s: OpenCV cannot decode this %s data; trying Pillow", source, fmt)
        img = _pillow_decode(data, source, fmt, max_pixels)
        if img is None:
            raise ImageError(source, "unsupported format",
                             f"{fmt} data that this OpenCV build cannot decode, and Pillow is not installed")
    else:
        img = _to_bgr8(img, source, composite=composite)
    if size is None:
        _check_pixels(source, img.shape[1], img.shape[0], max_pixels)
    return shrink_to(img, max_side)


def load_image(
    src: ImageSource,
    *,
    max_pixels: Optional[int] = DEFAULT_MAX_PIXELS,
    max_side: Optional[int] = None,
) -> np.ndarray:
    """Load an image as a BGR ``uint8`` array.

    Parameters
    ----------
    src : str, os.PathLike, bytes or numpy.ndarray
        A file path, the encoded bytes of an image, or an array: ``uint8`` or
        ``uint16`` of shape ``(H, W)`` (grey), ``(H, W, 3)`` (BGR) or
        ``(H, W, 4)`` (BGRA, composited over white).
    max_pixels : int or None, optional
        Refuse images with more than this many pixels (width * height), read
        from the header before decoding when the format allows it.  ``None``
        disables the check.  Default :data:`DEFAULT_MAX_PIXELS` (100 MP).
    max_side : int or None, optional
        If given, shrink the image so that its longer side is at most
        ``max_side`` (JPEGs are decoded at reduced scale when possible, see
        the module docstring: the result may then be up to 1/8 smaller).

    Returns
    -------
    numpy.ndarray
        ``uint8`` array of shape ``(H, W, 3)``, C-contiguous, BGR channel order.
        An input array that needs no conversion is returned as is (not copied).

    Raises
    ------
    fastimg.errors.ImageError
        If the file is missing or unreadable, is not an image, is truncated or
        corrupt, exceeds ``max_pixels``, or its format is unsupported.
    """
    if max_side is not None and (not isinstance(max_side, (int, np.integer)) or max_side < 1):
        raise ArgumentError(f"max_side must be a positive int or None; got {max_side!r}")
    if max_pixels is not None and (not isinstance(max_pixels, (int, np.integer)) or max_pixels < 1):
        raise ArgumentError(f"max_pixels must be a positive int or None; got {max_pixels!r}")
    if isinstance(src, np.ndarray):
        img = _to_bgr8(src, "<array>")
        _check_pixels("<array>", img.shape[1], img.shape[0], max_pixels)
        return shrink_to(img, max_side)
    if isinstance(src, (bytes, bytearray, memoryview)):
        return _decode(bytes(src), "<bytes>", max_pixels, max_side)
    if isinstance(src, (str, os.PathLike)):
        source = os.fspath(src)
        if not isinstance(source, str):
            source = os.fsdecode(source)
        max_bytes = None if max_pixels is None else _BYTES_PER_PIXEL * int(max_pixels) + (1 << 20)
        return _decode(_read(source, max_bytes), source, max_pixels, max_side)
    raise ImageError(f"<{type(src).__name__}>", "invalid source",
                     f"expected a path, bytes or a numpy array; got {type(src).__name__}")
