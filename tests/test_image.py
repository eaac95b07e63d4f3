"""fastimg.image.load_image: sources, conversions, reduced decoding, and every error reason.

Oracles: OpenCV's own decoder (cv2.imdecode / cv2.imread, with orientation handling
switched off and the rotation applied with numpy), hand-computed alpha compositing,
and known image dimensions.
"""
from __future__ import annotations

import struct
import zlib

import cv2
import numpy as np
import pytest

from fastimg.errors import FastimgError, ImageError
from fastimg.image import image_size, load_image, shrink_to, sniff_format


def _photo(h=48, w=64, seed=0) -> np.ndarray:
    """A smooth, asymmetric BGR test picture (JPEG-friendly)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    img = np.dstack([xx * 255 // max(w - 1, 1), yy * 255 // max(h - 1, 1), (xx + yy) * 2 % 256])
    img = img + rng.integers(0, 8, size=img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def _jpeg(img: np.ndarray, quality: int = 95) -> bytes:
    ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, quality])
    assert ok
    return buf.tobytes()


def _png(img: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".png", img)
    assert ok
    return buf.tobytes()


def _with_exif_orientation(jpeg: bytes, orientation: int) -> bytes:
    """Insert an APP1/Exif segment holding only the Orientation tag after SOI."""
    ifd = struct.pack("<H", 1) + struct.pack("<HHIHH", 0x0112, 3, 1, orientation, 0) + struct.pack("<I", 0)
    tiff = b"II*\x00" + struct.pack("<I", 8) + ifd
    payload = b"Exif\x00\x00" + tiff
    app1 = b"\xff\xe1" + struct.pack(">H", len(payload) + 2) + payload
    return jpeg[:2] + app1 + jpeg[2:]


# ---------------------------------------------------------------------------
# sources
# ---------------------------------------------------------------------------
def test_path_matches_cv2_imread(corel_dir):
    path = sorted((corel_dir / "horses").glob("*.jpg"))[0]
    ref = cv2.imread(str(path), cv2.IMREAD_COLOR)
    img = load_image(path)
    assert img.dtype == np.uint8 and img.ndim == 3 and img.shape[2] == 3
    assert img.flags.c_contiguous
    np.testing.assert_array_equal(img, ref)
    np.testing.assert_array_equal(load_image(str(path)), ref)


def test_bytes_and_non_ascii_path(tmp_path):
    data = _jpeg(_photo())
    ref = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    p = tmp_path / "фото été 写真.jpg"
    p.write_bytes(data)
    np.testing.assert_array_equal(load_image(p), ref)
    np.testing.assert_array_equal(load_image(data), ref)
    np.testing.assert_array_equal(load_image(bytearray(data)), ref)
    np.testing.assert_array_equal(load_image(memoryview(data)), ref)


def test_bgr_array_passes_through_unchanged():
    img = _photo()
    out = load_image(img)
    assert out is img


def test_grey_and_single_channel_arrays_become_three_equal_channels():
    grey = _photo()[:, :, 0].copy()
    for src in (grey, grey[:, :, None]):
        out = load_image(src)
        assert out.shape == grey.shape + (3,)
        for c in range(3):
            np.testing.assert_array_equal(out[:, :, c], grey)


def test_uint16_array_keeps_high_byte():
    a = np.array([[[0, 255, 256], [65535, 4660, 513]]], dtype=np.uint16)  # (1, 2, 3)
    out = load_image(a)
    np.testing.assert_array_equal(out, [[[0, 0, 1], [255, 0x12, 2]]])


def test_bgra_array_composited_over_white():
    px = np.array([[[10, 20, 30, 0], [10, 20, 30, 255], [0, 100, 200, 128]]], dtype=np.uint8)
    out = load_image(px)
    # hand-computed: c * a / 255 + 255 * (1 - a / 255), rounded
    expected = [[[255, 255, 255], [10, 20, 30],
                 [round((0 * 128 + 255 * 127) / 255), round((100 * 128 + 255 * 127) / 255),
                  round((200 * 128 + 255 * 127) / 255)]]]
    np.testing.assert_array_equal(out, expected)


def test_png_with_alpha_is_composited_over_white(tmp_path):
    bgra = np.zeros((4, 5, 4), np.uint8)
    bgra[..., 0] = 200  # blue
    bgra[:, :2, 3] = 0  # transparent on the left
    bgra[:, 2:, 3] = 255
    p = tmp_path / "alpha.png"
    p.write_bytes(_png(bgra))
    out = load_image(p)
    np.testing.assert_array_equal(out[:, :2], 255)
    np.testing.assert_array_equal(out[:, 2:], np.broadcast_to([200, 0, 0], (4, 3, 3)))


def test_grey_and_16bit_png_files(tmp_path):
    grey = (np.arange(30, dtype=np.uint8) * 8).reshape(5, 6)
    (tmp_path / "g.png").write_bytes(_png(grey))
    out = load_image(tmp_path / "g.png")
    assert out.shape == (5, 6, 3)
    for c in range(3):
        np.testing.assert_array_equal(out[:, :, c], grey)
    # 16-bit: multiples of 256 map to exactly value // 256 (OpenCV scales by 1/256)
    deep = (np.arange(18, dtype=np.uint16) * 14 * 256).reshape(2, 3, 3)
    (tmp_path / "d.png").write_bytes(_png(deep))
    np.testing.assert_array_equal(load_image(tmp_path / "d.png"), (deep // 256).astype(np.uint8))


@pytest.mark.parametrize("orientation,rot", [(1, 0), (3, 2), (6, -1), (8, 1)])
def test_exif_orientation_is_applied(orientation, rot):
    data = _with_exif_orientation(_jpeg(_photo(24, 40)), orientation)
    raw = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)
    expected = np.rot90(raw, k=rot)  # 6 = rotate 90 clockwise, 8 = counter-clockwise, 3 = 180
    out = load_image(data)
    assert out.shape == expected.shape
    np.testing.assert_array_equal(out, expected)


def test_exif_orientation_is_applied_with_reduced_decoding():
    big = cv2.resize(_photo(24, 40), (1600, 960), interpolation=cv2.INTER_LINEAR)
    data = _with_exif_orientation(_jpeg(big), 6)
    raw = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_REDUCED_COLOR_8 | cv2.IMREAD_IGNORE_ORIENTATION)
    out = load_image(data, max_side=200)  # 1600 / 8 = 200: decoded at 1/8, then rotated
    assert out.shape == (200, 120, 3)
    np.testing.assert_array_equal(out, np.rot90(raw, k=-1))


def test_gif_is_decoded():
    img = np.zeros((6, 8, 3), np.uint8)
    img[:, 4:] = (0, 0, 255)
    ok, buf = cv2.imencode(".gif", img)
    if not ok:  # pragma: no cover - depends on the OpenCV build
        pytest.skip("this OpenCV build cannot encode GIF test data")
    out = load_image(buf.tobytes())
    assert out.shape == (6, 8, 3)
    assert out[:, :4].max() < 30 and out[:, 4:, 2].min() > 200  # black left, red right


# ---------------------------------------------------------------------------
# working size
# ---------------------------------------------------------------------------
def test_max_side_keeps_small_images_identical():
    img = _photo(40, 60)
    assert load_image(img, max_side=60) is img
    data = _jpeg(img)
    np.testing.assert_array_equal(load_image(data, max_side=100), load_image(data))


def test_max_side_shrinks_arrays_with_inter_area():
    img = _photo(300, 200)
    out = load_image(img, max_side=150)
    assert out.shape == (150, 100, 3)
    np.testing.assert_array_equal(out, cv2.resize(img, (100, 150), interpolation=cv2.INTER_AREA))


@pytest.mark.parametrize("h,w,side,size", [
    (300, 200, 150, (100, 150)),   # exact ratio
    (999, 10, 100, (1, 100)),      # 10 * 100 / 999 = 1.001 -> 1 column
    (10, 1001, 7, (7, 1)),         # a side that would round to 0 is kept at 1 pixel
    (333, 500, 256, (256, 170)),   # 333 * 256 / 500 = 170.496 -> 170 rows
])
def test_shrink_to_sizes_and_pixels(h, w, side, size):
    img = _photo(h, w)
    out = shrink_to(img, side)
    assert (out.shape[1], out.shape[0]) == size and max(out.shape[:2]) == side
    np.testing.assert_array_equal(out, cv2.resize(img, size, interpolation=cv2.INTER_AREA))


def test_shrink_to_returns_small_images_unchanged():
    img = _photo(40, 60)
    assert shrink_to(img, 60) is img and shrink_to(img, 1000) is img and shrink_to(img, None) is img


def test_reduced_jpeg_decode_close_to_full_decode_then_resize():
    big = cv2.resize(_photo(60, 90, seed=3), (1800, 1200), interpolation=cv2.INTER_CUBIC)
    data = _jpeg(big, 90)
    full = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    out = load_image(data, max_side=400)  # 1800 // 4 = 450 >= 400: decoded at 1/4, then resized
    assert out.shape == (267, 400, 3)
    ref = cv2.resize(full, (400, 267), interpolation=cv2.INTER_AREA)
    diff = np.abs(out.astype(int) - ref.astype(int))
    assert diff.mean() < 2.0
    assert np.percentile(diff, 99) <= 8
    # 1800 / 4 = 450 is at least 7/8 of 460: decoded at 1/4 and not enlarged
    assert load_image(data, max_side=460).shape == (300, 450, 3)
    # 1800 / 4 = 450 is below 7/8 of 520 = 455: decoded at 1/2 (900 x 600), then resized to 520
    assert load_image(data, max_side=520).shape == (347, 520, 3)


def test_max_side_validation():
    with pytest.raises(ValueError, match="max_side"):
        load_image(_photo(), max_side=0)
    with pytest.raises(ValueError, match="max_pixels"):
        load_image(_photo(), max_pixels=-5)


# ---------------------------------------------------------------------------
# header parsing
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("ext,fmt", [(".jpg", "jpeg"), (".png", "png"), (".bmp", "bmp"), (".gif", "gif"),
                                     (".webp", "webp"), (".tiff", "tiff"), (".ppm", "pnm")])
def test_sniff_and_header_size(ext, fmt):
    img = _photo(23, 37)
    ok, buf = cv2.imencode(ext, img)
    if not ok:  # pragma: no cover - depends on the OpenCV build
        pytest.skip(f"OpenCV cannot encode {ext}")
    data = buf.tobytes()
    assert sniff_format(data) == fmt
    assert image_size(data) == (37, 23)


def test_sniff_unknown():
    assert sniff_format(b"hello world, not an image") is None
    assert image_size(b"hello") is None


# ---------------------------------------------------------------------------
# errors
# ---------------------------------------------------------------------------
def _err(src, **kw) -> ImageError:
    with pytest.raises(ImageError) as info:
        load_image(src, **kw)
    assert isinstance(info.value, FastimgError) and isinstance(info.value, ValueError)
    return info.value


def test_missing_file(tmp_path):
    p = tmp_path / "nope.jpg"
    e = _err(p)
    assert e.reason == "not found" and e.source == str(p) and str(p) in str(e)


def test_directory_and_empty_file(tmp_path):
    assert _err(tmp_path).reason == "unreadable"
    (tmp_path / "empty.jpg").write_bytes(b"")
    assert _err(tmp_path / "empty.jpg").reason == "empty file"


def test_not_an_image(tmp_path):
    p = tmp_path / "notes.jpg"
    p.write_text("just some text, not a picture\n" * 20)
    e = _err(p)
    assert e.reason == "not an image" and str(p) in str(e)


def test_truncated_jpeg_and_png(tmp_path):
    data = _jpeg(_photo(64, 64))
    p = tmp_path / "cut.jpg"
    p.write_bytes(data[: len(data) // 2])
    e = _err(p)
    assert e.reason == "truncated" and str(p) in str(e)
    png = _png(_photo(64, 64))
    assert _err(png[: len(png) // 2]).reason == "truncated"


def test_corrupt_png_body():
    png = bytearray(_png(_photo(32, 32)))
    png[60:200] = b"\x00" * 140  # destroy the compressed data, keep IEND
    assert _err(bytes(png)).reason == "corrupt"


def test_too_large_is_checked_from_header_before_decoding():
    # A PNG header declaring 100000 x 100000 pixels with no pixel data: refused
    # from the header alone (a decoder would try to allocate 30 GB).
    ihdr = struct.pack(">IIBBBBB", 100_000, 100_000, 8, 2, 0, 0, 0)
    chunk = struct.pack(">I", 13) + b"IHDR" + ihdr + struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))
    bomb = b"\x89PNG\r\n\x1a\n" + chunk
    e = _err(bomb)
    assert e.reason == "too large" and "100000x100000" in str(e)
    # the limit is configurable
    data = _jpeg(_photo(20, 30))
    assert _err(data, max_pixels=599).reason == "too large"
    assert load_image(data, max_pixels=600).shape == (20, 30, 3)
    assert load_image(data, max_pixels=None).shape == (20, 30, 3)


def test_unsupported_format_without_pillow():
    heic = b"\x00\x00\x00\x18ftypheic" + b"\x00" * 64
    e = _err(heic)
    try:
        import PIL  # noqa: F401
    except ImportError:
        assert e.reason == "unsupported format" and "Pillow" in str(e)
    else:  # pragma: no cover - Pillow installed: it fails to decode the junk instead
        assert e.reason in ("corrupt", "unsupported format")


@pytest.mark.parametrize("bad,what", [(np.zeros((4, 4, 3), np.float32), "dtype"),
                                      (np.zeros((4, 4, 5), np.uint8), "shape"),
                                      (np.zeros((0, 4, 3), np.uint8), "empty"),
                                      (np.zeros((2, 2, 2, 2), np.uint8), "shape")])
def test_invalid_arrays(bad, what):
    e = _err(bad)
    assert e.reason == "invalid array" and e.source == "<array>" and what in str(e)


def test_invalid_source_type():
    e = _err(12345)
    assert e.reason == "invalid source" and "int" in str(e)
