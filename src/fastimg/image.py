"""Image loading: one function, :func:`load_image`, returning BGR ``uint8`` arrays.

Every image fastimg describes goes through :func:`load_image`, so every
descriptor sees pixels prepared the same way:

* **Sources**: a path (``str`` / :class:`os.PathLike`, any Unicode name: the file
  is read by Python and decoded from memory), raw ``bytes`` (or any buffer), or
  a NumPy array already in OpenCV's BGR convention.
* **Decoding** is OpenCV's (:func:`cv2.imdecode`), which honours the EXIF
  orientation of JPEGs, converts grey images to 3 channels and 16-bit images to
  8 bits.  Formats OpenCV cannot decode are passed to Pillow when it is
  installed; otherwise they fail with reason ``"unsupported format"``.
* **Transparency**: PNG images with an alpha channel are composited over
  white (transparent pixels often carry arbitrary colours); for other formats
  OpenCV drops the alpha channel.  Arrays with 4 channels are treated as BGRA
  and composited over white as well.
* **Working size**: with ``max_side`` the image is shrunk (aspect kept,
  :data:`cv2.INTER_AREA`) so that its longer side is at most ``max_side``.
  JPEGs are then decoded directly at 1/2, 1/4 or 1/8 scale (OpenCV's
  ``IMREAD_REDUCED_COLOR_*`` modes, i.e. libjpeg's DCT scaling): the smallest
  scale whose longer side is still at least 7/8 of ``max_side`` (so a
  4000 x 3000 photo with ``max_side=512`` is decoded at 500 x 375, 4x faster
  than a full decode, and not resized further).  Descriptors are normalised
  histograms, so the working size barely changes them.
* **Limits**: the pixel count declared in the file header (JPEG, PNG, GIF, BMP,
  WebP) is checked *before* decoding against ``max_pixels``, which protects
  against decompression bombs; other formats are checked after decoding.

Every failure raises :class:`fastimg.errors.ImageError` whose ``reason`` is one
of ``"not found"``, ``"unreadable"``, ``"empty file"``, ``"not an image"``,
``"truncated"``, ``"corrupt"``, ``"too large"``, ``"unsupported format"``,
``"invalid array"`` or ``"invalid source"``, and whose ``source`` is the path (or ``"<bytes>"`` /
``"<array>"``).
"""
from __future__ import annotations

import logging
import os
import struct
from typing import Optional, Tuple, Union

import numpy as np

from fastimg.errors import ImageError

__all__ = ["load_image", "shrink_to", "image_size", "sniff_format", "DEFAULT_MAX_PIXELS", "ImageSource"]

logger = logging.getLogger(__name__)

#: Default limit on the number of pixels of an image (width * height): 100 MP.
DEFAULT_MAX_PIXELS = 100_000_000

ImageSource = Union[str, "os.PathLike[str]", bytes, bytearray, memoryview, np.ndarray]

#: A JPEG is decoded at 1/k scale when its longer side then still has at least
#: this fraction of ``max_side`` pixels (the result is never larger than ``max_side``).
_REDUCE_MIN_FRACTION = 0.875

_JPEG_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}


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


def image_size(data: bytes) -> Optional[Tuple[int, int]]:
    """``(width, height)`` declared in an image header, without decoding.

    Parameters
    ----------
    data : bytes
        The encoded image (JPEG, PNG, GIF, BMP and WebP are understood).

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
    except (struct.error, ValueError):
        return None
    return None


def _read(src: Union[str, "os.PathLike[str]"]) -> bytes:
    path = os.fspath(src)
    try:
        with open(path, "rb") as fh:
            return fh.read()
    except FileNotFoundError:
        raise ImageError(path, "not found") from None
    except IsADirectoryError:
        raise ImageError(path, "unreadable", "is a directory") from None
    except PermissionError:
        raise ImageError(path, "unreadable", "permission denied") from None
    except OSError as exc:
        raise ImageError(path, "unreadable", exc.strerror or str(exc)) from None


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


def _pillow_decode(data: bytes, source: str) -> Optional[np.ndarray]:
    try:
        from PIL import Image, ImageOps  # type: ignore[import-not-found]
    except ImportError:
        return None
    import io

    try:
        with Image.open(io.BytesIO(data)) as im:
            im = ImageOps.exif_transpose(im)
            if im.mode in ("RGBA", "LA", "P"):
                im = im.convert("RGBA")
                arr = np.asarray(im)[:, :, [2, 1, 0, 3]]
            else:
                arr = np.asarray(im.convert("RGB"))[:, :, ::-1]
    except Exception as exc:  # Pillow raises many types
        raise ImageError(source, "corrupt", f"Pillow: {exc}") from None
    return _to_bgr8(np.ascontiguousarray(arr), source)


def _decode(data: bytes, source: str, max_pixels: Optional[int], max_side: Optional[int]) -> np.ndarray:
    import cv2

    if len(data) == 0:
        raise ImageError(source, "empty file")
    fmt = sniff_format(data)
    size = image_size(data) if fmt is not None else None
    if size is not None:
        _check_pixels(source, size[0], size[1], max_pixels)

    buf = np.frombuffer(data, dtype=np.uint8)
    flags = cv2.IMREAD_COLOR
    composite = False
    if fmt == "jpeg":
        # A JPEG whose last end-of-image marker precedes its last scan is cut short
        # (libjpeg would silently fill the missing part with grey).
        if data.rfind(b"\xff\xd9") < data.rfind(b"\xff\xda"):
            raise ImageError(source, "truncated", "JPEG data ends before the end-of-image marker")
        if max_side is not None and size is not None:
            long_side = max(size)
            for k, flag in ((8, cv2.IMREAD_REDUCED_COLOR_8), (4, cv2.IMREAD_REDUCED_COLOR_4),
                            (2, cv2.IMREAD_REDUCED_COLOR_2)):
                if long_side // k >= _REDUCE_MIN_FRACTION * max_side:
                    flags = flag
                    break
    elif fmt == "png":
        if len(data) >= 26 and data[25] in (4, 6):  # grey+alpha or RGBA
            flags = cv2.IMREAD_UNCHANGED
            composite = True
    elif fmt is None:
        pass

    try:
        img = cv2.imdecode(buf, flags)
    except cv2.error as exc:
        msg = str(exc).strip().splitlines()[-1] if str(exc).strip() else "OpenCV error"
        raise ImageError(source, "corrupt", f"OpenCV: {msg}") from None
    if img is None:
        if fmt is None:
            raise ImageError(source, "not an image", "unrecognised file signature and OpenCV cannot decode it")
        if fmt == "png" and data.rfind(b"IEND") < 0:
            raise ImageError(source, "truncated", "PNG data ends before the IEND chunk")
        logger.debug("%s: OpenCV cannot decode this %s data; trying Pillow", source, fmt)
        img = _pillow_decode(data, source)
        if img is None:
            if fmt in ("heif", "jp2", "ico"):
                raise ImageError(source, "unsupported format",
                                 f"{fmt} cannot be decoded by this OpenCV build and Pillow is not installed")
            raise ImageError(source, "corrupt", f"{fmt} data could not be decoded")
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
        raise ValueError(f"max_side must be a positive int or None; got {max_side!r}")
    if max_pixels is not None and (not isinstance(max_pixels, (int, np.integer)) or max_pixels < 1):
        raise ValueError(f"max_pixels must be a positive int or None; got {max_pixels!r}")
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
        return _decode(_read(source), source, max_pixels, max_side)
    raise ImageError(f"<{type(src).__name__}>", "invalid source",
                     f"expected a path, bytes or a numpy array; got {type(src).__name__}")
