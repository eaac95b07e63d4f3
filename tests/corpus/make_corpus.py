"""Generate fastimg's bad-input corpus (issue 15): hostile and unusual image files.

Usage::

    python tests/corpus/make_corpus.py DIR            # writes the corpus into DIR, lists it
    python tests/corpus/make_corpus.py --seeds DIR    # only its regular files (the fuzzer's seeds)

The test suite calls :func:`build` once per session into a temporary directory
(tests/test_bad_inputs.py): nothing is committed but this script, because part
of the corpus cannot live in git (a FIFO, symbolic links to devices and loops,
file names that are not UTF-8) and every file is cheap to make (well under a
second, about 1 MB).  ``make fuzz`` uses the regular files as the fuzzer's seeds.

Every entry says what :func:`fastimg.image.load_image` must do with it:

* ``expect="ok"``: decode; ``truth`` is the expected BGR array (the pixels the
  file was made from, transformed by its EXIF orientation), ``tol`` the largest
  absolute and mean differences allowed (0 for lossless formats);
* ``expect="error"``: raise :class:`fastimg.errors.ImageError` with one of ``reasons``;
* ``expect="any"``: damaged data that a decoder may or may not recover (bit
  flips): decode to an array or raise ``ImageError``, nothing else.

Deterministic: the same bytes on every run (fixed seeds, no time stamps).
"""
from __future__ import annotations

import io
import json
import os
import stat
import struct
import sys
import zlib
from pathlib import Path
from typing import Any, Dict, List, Optional, Union

import numpy as np

Name = Union[str, bytes]

#: the non-UTF-8 file name of the corpus (Latin-1 "été", as old cameras and Windows tools write it)
LATIN1_NAME = b"latin1_\xe9t\xe9.jpg"


# ---------------------------------------------------------------------------
# pictures
# ---------------------------------------------------------------------------
def picture(h: int, w: int, seed: int = 0) -> np.ndarray:
    """A smooth, asymmetric BGR picture with some noise (JPEG-friendly)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    img = np.dstack([xx * 255 // max(w - 1, 1), yy * 255 // max(h - 1, 1), (xx + yy) * 3 % 256])
    img = img + rng.integers(0, 6, size=img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def quadrants(h: int = 32, w: int = 48) -> np.ndarray:
    """Four flat colours (block-aligned edges: JPEG keeps them nearly exact); every
    flip and rotation of it is a different picture."""
    img = np.empty((h, w, 3), np.uint8)
    img[: h // 2, : w // 3] = (20, 20, 230)     # red
    img[: h // 2, w // 3:] = (30, 200, 30)       # green
    img[h // 2:, : 2 * w // 3] = (220, 40, 30)   # blue
    img[h // 2:, 2 * w // 3:] = (240, 240, 240)  # white
    return img


def orient(img: np.ndarray, orientation: int) -> np.ndarray:
    """The picture a viewer shows for stored pixels ``img`` and an EXIF orientation 1-8."""
    t = {
        1: lambda a: a,
        2: lambda a: a[:, ::-1],                      # mirror left-right
        3: lambda a: a[::-1, ::-1],                   # rotate 180
        4: lambda a: a[::-1],                         # mirror top-bottom
        5: lambda a: a.transpose(1, 0, 2),            # transpose
        6: lambda a: np.rot90(a, -1),                 # rotate 90 clockwise
        7: lambda a: a[::-1, ::-1].transpose(1, 0, 2),  # transverse
        8: lambda a: np.rot90(a, 1),                  # rotate 90 counter-clockwise
    }[orientation]
    return np.ascontiguousarray(t(img))


# ---------------------------------------------------------------------------
# encoders (OpenCV for the common formats, by hand for the rest)
# ---------------------------------------------------------------------------
def encode(ext: str, img: np.ndarray, params: Optional[list] = None) -> bytes:
    import cv2

    ok, buf = cv2.imencode(ext, img, params or [])
    if not ok:  # pragma: no cover - depends on the OpenCV build
        raise RuntimeError(f"OpenCV cannot encode {ext}")
    return buf.tobytes()


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png(width: int, height: int, bit_depth: int, colour_type: int, rows: List[bytes],
        chunks: tuple = ()) -> bytes:
    """A PNG from raw scanlines (filter type 0 is prepended) and extra chunks before IDAT."""
    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, colour_type, 0, 0, 0)
    raw = b"".join(b"\x00" + r for r in rows)
    return (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + b"".join(png_chunk(k, d) for k, d in chunks)
            + png_chunk(b"IDAT", zlib.compress(raw, 9)) + png_chunk(b"IEND", b""))


def with_exif_orientation(jpeg: bytes, orientation: int) -> bytes:
    """Insert an APP1/Exif segment holding only the Orientation tag after SOI."""
    ifd = struct.pack("<H", 1) + struct.pack("<HHIHH", 0x0112, 3, 1, orientation, 0) + struct.pack("<I", 0)
    payload = b"Exif\x00\x00" + b"II*\x00" + struct.pack("<I", 8) + ifd
    return jpeg[:2] + b"\xff\xe1" + struct.pack(">H", len(payload) + 2) + payload + jpeg[2:]


def tiff_header_only(width: int, height: int) -> bytes:
    """A little-endian TIFF whose only IFD declares ``width x height`` RGB pixels and one tiny strip."""
    tags = [(256, 4, 1, width), (257, 4, 1, height), (258, 3, 1, 8), (259, 3, 1, 1), (262, 3, 1, 2),
            (273, 4, 1, 8 + 2 + 12 * 10 + 4), (277, 3, 1, 3), (278, 4, 1, height), (279, 4, 1, 16), (284, 3, 1, 1)]
    ifd = struct.pack("<H", len(tags))
    for tag, typ, count, value in tags:
        ifd += struct.pack("<HHI", tag, typ, count) + (struct.pack("<HH", value, 0) if typ == 3
                                                       else struct.pack("<I", value))
    return b"II*\x00" + struct.pack("<I", 8) + ifd + struct.pack("<I", 0) + b"\x00" * 16


def jpeg_with_size(jpeg: bytes, width: int, height: int) -> bytes:
    """The JPEG with its frame header (SOF0) declaring another size."""
    i = jpeg.index(b"\xff\xc0")
    return jpeg[:i + 5] + struct.pack(">HH", height, width) + jpeg[i + 9:]


def gif_with_size(gif: bytes, width: int, height: int) -> bytes:
    """The GIF with its logical screen and first image descriptor declaring another size."""
    out = bytearray(gif)
    out[6:10] = struct.pack("<HH", width, height)
    i = out.index(b",", 13)  # image separator (after the global colour table)
    out[i + 5:i + 9] = struct.pack("<HH", width, height)
    return bytes(out)


def bmp_with_size(bmp: bytes, width: int, height: int) -> bytes:
    return bmp[:18] + struct.pack("<ii", width, height) + bmp[26:]


def webp_vp8x(width: int, height: int) -> bytes:
    """A WebP container with only a VP8X header (canvas ``width x height``)."""
    vp8x = b"VP8X" + struct.pack("<I", 10) + b"\x00\x00\x00\x00" + (width - 1).to_bytes(3, "little") \
        + (height - 1).to_bytes(3, "little")
    return b"RIFF" + struct.pack("<I", 4 + len(vp8x)) + b"WEBP" + vp8x


def bitflip(data: bytes, start: int, seed: int, fraction: float = 0.02) -> bytes:
    """Flip one random bit in ``fraction`` of the bytes after ``start`` (the header survives)."""
    rng = np.random.default_rng(seed)
    out = bytearray(data)
    n = max(1, int((len(data) - start) * fraction))
    for pos in rng.integers(start, len(data), size=n):
        out[pos] ^= 1 << int(rng.integers(0, 8))
    return bytes(out)


def _pillow():
    try:
        from PIL import Image  # noqa: F401  (a dependency of scikit-image, in the test extra)
    except ImportError:  # pragma: no cover
        return None
    from PIL import Image

    return Image


# ---------------------------------------------------------------------------
# the corpus
# ---------------------------------------------------------------------------
def build(root: Union[str, Path]) -> List[Dict[str, Any]]:
    """Write the corpus into ``root`` (created if needed) and return its entries.

    Each entry: ``name`` (str, or bytes for a name that is not UTF-8), ``kind``
    (``file``, ``dir``, ``fifo``, ``symlink``), ``expect`` (``ok`` / ``error`` /
    ``any``), ``reasons`` (ImageError reasons accepted), ``truth`` (expected BGR
    array for ``ok``) and ``tol`` ``(max, mean)`` absolute difference allowed.
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    entries: List[Dict[str, Any]] = []

    def add(name: Name, data: Optional[bytes], expect: str, reasons=(), truth=None, tol=(0, 0.0),
            kind: str = "file", target: Optional[str] = None) -> None:
        path = os.path.join(os.fsencode(root), os.fsencode(name))
        if kind == "file":
            with open(path, "wb") as fh:
                fh.write(data)
        elif kind == "dir":
            os.mkdir(path)
        elif kind == "fifo":
            os.mkfifo(path)
        elif kind == "symlink":
            os.symlink(os.fsencode(target), path)
        entries.append({"name": name, "kind": kind, "expect": expect, "reasons": list(reasons),
                        "truth": truth, "tol": tol})

    pic = picture(30, 40, seed=1)
    jpg = encode(".jpg", pic, [1, 95])  # IMWRITE_JPEG_QUALITY
    png8 = encode(".png", pic)
    gif = encode(".gif", pic)
    tif = encode(".tif", pic)
    bmp = encode(".bmp", pic)
    webp = encode(".webp", pic, [64, 101])  # IMWRITE_WEBP_QUALITY > 100: lossless
    webp_lossy = encode(".webp", pic, [64, 90])
    ppm = encode(".ppm", pic)
    formats = {"jpg": jpg, "png": png8, "gif": gif, "tif": tif, "bmp": bmp, "webp": webp}  # damaged below
    lossy = (12, 3.0)  # JPEG / lossy WebP of a smooth picture

    # -- valid files, decoded to known pixels -----------------------------------
    add("ok.jpg", jpg, "ok", truth=pic, tol=lossy)
    add("ok_progressive.jpg", encode(".jpg", pic, [1, 95, 2, 1]), "ok", truth=pic, tol=lossy)  # PROGRESSIVE
    add("ok.png", png8, "ok", truth=pic)
    add("ok.tif", tif, "ok", truth=pic)
    add("ok.bmp", bmp, "ok", truth=pic)
    add("ok.webp", webp, "ok", truth=pic)
    add("ok_lossy.webp", webp_lossy, "ok", truth=pic, tol=lossy)
    add("ok.ppm", ppm, "ok", truth=pic)
    avif = encode(".avif", pic)
    add("ok.avif", avif, "ok", truth=pic, tol=lossy)
    grey = pic[:, :, 1].copy()
    add("grey.png", encode(".png", grey), "ok", truth=np.dstack([grey] * 3))
    add("grey.jpg", encode(".jpg", grey, [1, 95]), "ok", truth=np.dstack([grey] * 3), tol=lossy)
    deep = (pic.astype(np.uint16) * 257 + np.arange(40, dtype=np.uint16)[None, :, None]).astype(np.uint16)
    add("rgb16.png", encode(".png", deep), "ok", truth=(deep >> 8).astype(np.uint8))
    add("rgb16.tif", encode(".tif", deep), "ok", truth=(deep >> 8).astype(np.uint8), tol=(1, 0.5))  # rounds
    add("grey16.png", encode(".png", deep[:, :, 0].copy()), "ok",
        truth=np.dstack([(deep[:, :, 0] >> 8).astype(np.uint8)] * 3))
    # palette PNG: 4 colours, 2 bits per pixel
    palette = [(200, 30, 40), (10, 220, 90), (0, 0, 0), (250, 250, 10)]  # RGB
    idx = (np.arange(12 * 10).reshape(10, 12) // 7) % 4
    rows = [bytes(np.packbits(np.unpackbits(r.astype(np.uint8)[:, None], axis=1)[:, 6:].reshape(-1)))
            for r in idx]
    pal_png = png(12, 10, 2, 3, rows, chunks=((b"PLTE", bytes(v for c in palette for v in c)),))
    add("palette.png", pal_png, "ok", truth=np.array([[palette[k][::-1] for k in r] for r in idx], np.uint8))
    # palette with transparency (tRNS): entry 0 opaque, 1 transparent, 2 half, 3 opaque
    trns = (255, 0, 128, 255)
    pal_trns = png(12, 10, 2, 3, rows, chunks=((b"PLTE", bytes(v for c in palette for v in c)),
                                               (b"tRNS", bytes(trns))))
    comp = [tuple((c * trns[k] + 255 * (255 - trns[k]) + 127) // 255 for c in palette[k][::-1]) for k in range(4)]
    add("palette_trns.png", pal_trns, "ok", truth=np.array([[comp[k] for k in r] for r in idx], np.uint8))
    # RGBA and grey + alpha: composited over white
    alpha = np.linspace(0, 255, 40).astype(np.uint8)[None, :].repeat(30, axis=0)
    rgba = np.dstack([pic, alpha])
    a16 = alpha.astype(np.uint16)  # over white: (c a + 255 (255 - a)) / 255, rounded
    over = ((pic * a16[..., None] + 255 * (255 - a16[..., None]) + 127) // 255).astype(np.uint8)
    add("alpha.png", encode(".png", rgba), "ok", truth=over)
    la_rows = [bytes(np.dstack([grey[i], alpha[i]]).reshape(-1)) for i in range(30)]
    g_over = ((grey * a16 + 255 * (255 - a16) + 127) // 255).astype(np.uint8)
    add("grey_alpha.png", png(40, 30, 8, 4, la_rows), "ok", truth=np.dstack([g_over] * 3))
    one = np.array([[[10, 200, 30]]], np.uint8)
    add("1x1.png", encode(".png", one), "ok", truth=one)
    add("1x1.jpg", encode(".jpg", one, [1, 100]), "ok", truth=one, tol=(6, 6.0))
    add("1x1.bmp", encode(".bmp", one), "ok", truth=one)
    tall = picture(20000, 1, seed=2)
    add("1x20000.png", encode(".png", tall), "ok", truth=tall)
    wide = np.ascontiguousarray(tall.transpose(1, 0, 2))
    add("20000x1.png", encode(".png", wide), "ok", truth=wide)
    q = quadrants()
    qjpg = encode(".jpg", q, [1, 98])
    for o in range(1, 9):
        # (JPEG rings at the colour edges; a wrong orientation is off by 40+ on average)
        add(f"exif_orientation_{o}.jpg", with_exif_orientation(qjpg, o), "ok", truth=orient(q, o), tol=(255, 6.0))
    add("trailing_garbage.jpg", jpg + b"\x00garbage after the end-of-image marker" * 4, "ok", truth=pic, tol=lossy)
    # damaged but decodable: bytes between the scan and EOI (libjpeg warns "Corrupt JPEG data")
    add("extraneous_bytes.jpg", jpg[:-2] + b"\x00\x00\x00" + jpg[-2:], "ok", truth=pic, tol=lossy)
    off = struct.unpack("<I", bmp[10:14])[0]  # OpenCV writes bottom-up rows (positive height) ...
    stride = (len(bmp) - off) // 30
    rows_bu = [bmp[off + i * stride: off + (i + 1) * stride] for i in range(30)]
    top_down = bmp[:22] + struct.pack("<i", -30) + bmp[26:off] + b"".join(reversed(rows_bu))
    add("top_down.bmp", top_down, "ok", truth=pic)  # ... a negative height means top-down rows
    Image = _pillow()
    if Image is not None:
        # GIF through Pillow: an exact palette (OpenCV's encoder quantises colours)
        for name, img in (("ok.gif", quadrants(16, 24)), ("1x1.gif", one)):
            buf = io.BytesIO()
            Image.fromarray(img[:, :, ::-1]).quantize(colors=4, method=Image.Quantize.MAXCOVERAGE).save(buf, "GIF")
            add(name, buf.getvalue(), "ok", truth=img)
        cmyk = Image.new("CMYK", (32, 16))
        cmyk.paste((0, 255, 255, 0), (0, 0, 16, 16))    # red
        cmyk.paste((255, 0, 255, 128), (16, 0, 32, 16))  # dark green
        buf = io.BytesIO()
        cmyk.save(buf, "JPEG", quality=98)
        rgb = np.asarray(cmyk.convert("RGB"))[:, :, ::-1]  # Pillow's (naive) CMYK -> RGB: the colours meant
        add("cmyk.jpg", buf.getvalue(), "ok", truth=np.ascontiguousarray(rgb), tol=(8, 2.0))
        buf = io.BytesIO()
        Image.fromarray(pic[:, :, ::-1]).save(buf, "JPEG2000")  # lossless by default
        jp2 = buf.getvalue()
        add("ok.jp2", jp2, "ok", truth=pic)
        i = jp2.index(b"ihdr")
        add("bomb.jp2", jp2[:i + 4] + struct.pack(">II", 60000, 60000) + jp2[i + 12:], "error", ["too large"])
        frames = [Image.fromarray(np.full((10, 14, 3), c, np.uint8)) for c in ((250, 0, 0), (0, 0, 250))]
        buf = io.BytesIO()
        frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
        add("animated.gif", buf.getvalue(), "ok", truth=np.full((10, 14, 3), (0, 0, 250), np.uint8), tol=(8, 8.0))

    # -- empty, truncated, damaged ------------------------------------------------
    for ext in ("jpg", "png", "gif", "tif", "bmp", "webp"):
        add(f"empty.{ext}", b"", "error", ["empty file"])
    for ext, data in formats.items():
        add(f"truncated.{ext}", data[: len(data) * 6 // 10], "error", ["truncated"])
    add("truncated_header.jpg", jpg[:40], "error", ["truncated"])
    add("signature_only.png", png8[:8], "error", ["truncated"])
    add("truncated.ppm", ppm[: len(ppm) // 2], "error", ["truncated"])
    header_len = {"jpg": 700, "png": 40, "gif": 800, "tif": 16, "bmp": 60, "webp": 30}
    for n, (ext, data) in enumerate(formats.items()):
        add(f"bitflip.{ext}", bitflip(data, min(header_len[ext], len(data) // 2), seed=n), "any",
            ["corrupt", "truncated", "too large", "not an image"])
    broken_dir = bytearray(tif)
    broken_dir[4:8] = struct.pack("<I", len(tif) + 1000)  # first IFD beyond the end of the file
    add("junk.tif", bytes(broken_dir), "error", ["corrupt", "truncated"])
    bad_crc = bytearray(png8)
    bad_crc[45] ^= 0xFF  # inside IDAT: the chunk's CRC no longer matches
    add("bad_crc.png", bytes(bad_crc), "error", ["corrupt"])
    zeros_body = bytearray(png8)
    zeros_body[41:-20] = b"\x00" * (len(png8) - 61)
    add("zeroed_idat.png", bytes(zeros_body), "error", ["corrupt"])

    # -- decompression bombs: huge sizes in the header ---------------------------------
    add("bomb.jpg", jpeg_with_size(jpg, 60000, 60000), "error", ["too large"])
    ihdr = struct.pack(">IIBBBBB", 100_000, 100_000, 8, 2, 0, 0, 0)
    add("bomb.png", b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr)
        + png_chunk(b"IDAT", zlib.compress(b"\x00" * 4096)) + png_chunk(b"IEND", b""), "error", ["too large"])
    add("bomb.gif", gif_with_size(gif, 65535, 65535), "error", ["too large"])
    add("bomb.bmp", bmp_with_size(bmp, 50000, 50000), "error", ["too large"])
    add("bomb.webp", webp_vp8x(16384, 16384), "error", ["too large"])
    add("bomb.tif", tiff_header_only(100_000, 100_000), "error", ["too large"])
    i = avif.index(b"ispe")
    add("bomb.avif", avif[:i + 8] + struct.pack(">II", 50000, 50000) + avif[i + 16:], "error", ["too large"])
    add("bomb.ppm", b"P6\n100000 100000\n255\n" + b"\x00" * 64, "error", ["too large"])

    # -- not images ------------------------------------------------------------
    add("text.jpg", b"just some text, not a picture\n" * 20, "error", ["not an image"])
    add("html.png", b"<!doctype html><html><body>404 Not Found</body></html>\n", "error", ["not an image"])
    add("zeros.jpg", b"\x00" * 4096, "error", ["not an image"])
    add("random.gif", np.random.default_rng(5).integers(0, 256, 2048, dtype=np.uint8).tobytes(),
        "error", ["not an image"])
    add("radiance.hdr.jpg", b"#?RADIANCE\nFORMAT=32-bit_rle_rgbe\n\n-Y 50000 +X 50000\n" + b"\x00" * 64,
        "error", ["unsupported format", "not an image"])

    # -- the file system ---------------------------------------------------------
    add("dir.jpg", None, "error", ["unreadable"], kind="dir")
    add("fifo.jpg", None, "error", ["unreadable"], kind="fifo")
    add("null.jpg", None, "error", ["unreadable"], kind="symlink", target="/dev/null")
    add("zero.jpg", None, "error", ["unreadable"], kind="symlink", target="/dev/zero")
    add("dangling.jpg", None, "error", ["not found"], kind="symlink", target="no_such_file.jpg")
    add("loop_a.jpg", None, "error", ["unreadable"], kind="symlink", target="loop_b.jpg")
    add("loop_b.jpg", None, "error", ["unreadable"], kind="symlink", target="loop_a.jpg")
    add("link_to_ok.jpg", None, "ok", truth=pic, tol=lossy, kind="symlink", target="ok.jpg")
    add(LATIN1_NAME, jpg, "ok", truth=pic, tol=lossy)
    add("no_read_permission.jpg", jpg, "error" if os.geteuid() != 0 else "ok", ["unreadable"],
        truth=pic, tol=lossy)
    os.chmod(os.path.join(os.fsencode(root), b"no_read_permission.jpg"), 0)
    return entries


def regular_files(root: Union[str, Path], entries: List[Dict[str, Any]]) -> List[bytes]:
    """Paths (bytes) of the corpus entries that are regular files: the fuzzer's seeds."""
    out = []
    for e in entries:
        p = os.path.join(os.fsencode(root), os.fsencode(e["name"]))
        if e["kind"] == "file" and stat.S_ISREG(os.lstat(p).st_mode) and os.access(p, os.R_OK):
            out.append(p)
    return out


def main(argv: List[str]) -> int:
    if len(argv) == 2 and argv[0] == "--seeds":  # regular files only, for the fuzzer
        import shutil
        import tempfile

        os.makedirs(argv[1], exist_ok=True)
        with tempfile.TemporaryDirectory() as tmp:
            entries = build(tmp)
            for p in regular_files(tmp, entries):
                shutil.copyfile(p, os.path.join(os.fsencode(argv[1]), os.path.basename(p)))
            os.chmod(os.path.join(os.fsencode(tmp), b"no_read_permission.jpg"), 0o600)
        print(f"seeds in {argv[1]}", file=sys.stderr)
        return 0
    if len(argv) != 1:
        print(__doc__.split("\n\n")[1].strip(), file=sys.stderr)
        return 2
    entries = build(argv[0])
    for e in entries:
        name = e["name"] if isinstance(e["name"], str) else repr(e["name"])
        print(json.dumps({"name": name, "kind": e["kind"], "expect": e["expect"], "reasons": e["reasons"]}))
    print(f"{len(entries)} entries in {argv[0]}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
