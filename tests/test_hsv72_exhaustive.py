"""hsv72 equals the original design's float formula on all 2**24 RGB colours (issue 15).

Oracle: a vectorised float64 NumPy transcription of the original per-pixel code
(channels divided by 255.0, the standard RGB->HSV formula with ``% 360``,
``s <= 0.2 -> 0, s >= 0.7 -> 2, else 1`` and the same for ``v``, hue in 8 uneven
bins), with the red-bin fix (the original tested ``h <= 20 and h > 315``, never
true; reds -- ``h <= 20`` or ``h > 315`` -- are bin 0).  It shares no code with
fastimg, which decides bins with integers and settles the colours on a bin edge
with the float formula.
"""
from __future__ import annotations

import numpy as np
import pytest

from fastimg.features.registry import describe

pytestmark = pytest.mark.slow


def _oracle_bins(bgr: np.ndarray) -> np.ndarray:
    """The original's per-pixel hsv72 bin of every pixel, float64, vectorised."""
    f = bgr.astype(np.float64) / 255.0
    b, g, r = f[..., 0], f[..., 1], f[..., 2]
    mx = np.maximum(np.maximum(r, g), b)  # max(r, g, b)
    mn = np.minimum(np.minimum(r, g), b)
    df = mx - mn
    with np.errstate(divide="ignore", invalid="ignore"):
        h = np.where(mx == mn, 0.0,
                     np.where(mx == r, (60 * ((g - b) / df) + 360) % 360,
                              np.where(mx == g, (60 * ((b - r) / df) + 120) % 360,
                                       (60 * ((r - g) / df) + 240) % 360)))
        s = np.where(mx == 0, 0.0, df / mx)
    v = mx
    hb = np.select([(h <= 20) | (h > 315), h <= 40, h <= 75, h <= 155, h <= 190, h <= 270, h <= 295],
                   [0, 1, 2, 3, 4, 5, 6], 7)
    sb = np.where(s <= 0.2, 0, np.where(s >= 0.7, 2, 1))
    vb = np.where(v <= 0.2, 0, np.where(v >= 0.7, 2, 1))
    return hb * 9 + sb * 3 + vb


@pytest.fixture(scope="module")
def all_colours() -> np.ndarray:
    """A 4096 x 4096 BGR image holding each of the 2**24 colours once (row-major: r, g, b)."""
    c = np.arange(1 << 24, dtype=np.uint32)
    img = np.empty((4096, 4096, 3), dtype=np.uint8)
    flat = img.reshape(-1, 3)
    flat[:, 0] = c & 255
    flat[:, 1] = (c >> 8) & 255
    flat[:, 2] = c >> 16
    return img


@pytest.fixture(scope="module")
def oracle(all_colours) -> np.ndarray:
    """Oracle bin of every colour, (4096, 4096) uint8 (computed in slices of 256 rows)."""
    out = np.empty(all_colours.shape[:2], dtype=np.uint8)
    for i in range(0, 4096, 256):
        out[i:i + 256] = _oracle_bins(all_colours[i:i + 256])
    return out


def _first_difference(got: np.ndarray, want: np.ndarray, img: np.ndarray) -> str:
    bad = np.argwhere(got != want)
    i, j = bad[0]
    b, g, r = (int(x) for x in img[i, j])
    return f"{len(bad)} colours differ, e.g. RGB ({r}, {g}, {b}): got bin {got[i, j]}, original {want[i, j]}"


def test_oracle_sanity(oracle):
    """The oracle is the float formula: s = 0.7 exactly falls in the top bin (the rule
    fastimg had wrong), v = 51/255 = 0.2 in the bottom one, reds in bin 0."""
    def bin_of(r, g, b):
        return int(oracle.reshape(-1)[(r << 16) | (g << 8) | b])

    assert bin_of(100, 40, 30) == 0 * 9 + 2 * 3 + 1   # hue 6, s = 70/100 = 0.7 -> s bin 2, v = 0.39
    assert bin_of(51, 51, 51) == 0                     # grey, v = 0.2 -> v bin 0
    assert bin_of(255, 0, 0) == 8 and bin_of(255, 0, 200) == 7 * 9 + 8  # hue 0 (red), hue 312.9 (bin 7)
    # hue 315 (r=4, g=0, b=3; exactly 315.0 in floats too) is bin 7; 322.5 is red again (bin 0)
    assert bin_of(4, 0, 3) == 7 * 9 + 2 * 3 and bin_of(8, 0, 5) == 0 * 9 + 2 * 3
    counts = np.bincount(oracle.reshape(-1), minlength=72)
    assert counts.sum() == 1 << 24 and (counts > 0).all()


def test_kernel_bins_equal_original_on_every_colour(all_colours, oracle):
    from fastimg.features import _kernels

    got = _kernels.hsv72_index(all_colours)
    if not np.array_equal(got, oracle):
        pytest.fail("Numba kernel: " + _first_difference(got, oracle, all_colours))


def test_numpy_twin_bins_equal_original_on_every_colour(all_colours, oracle):
    from fastimg.features import classic

    got = np.empty_like(oracle)
    for i in range(0, 4096, 512):
        got[i:i + 512] = classic.hsv72_index_np(all_colours[i:i + 512])
    if not np.array_equal(got, oracle):
        pytest.fail("NumPy twin: " + _first_difference(got, oracle, all_colours))


def test_describe_counts_equal_original(all_colours, oracle):
    """describe() (NumPy single-image path) and the kernel's histogram give exactly the
    oracle's counts over the image of all colours."""
    from fastimg.features import _kernels

    want = np.bincount(oracle.reshape(-1), minlength=72)
    np.testing.assert_array_equal(_kernels.hsv72_hist(all_colours), want)
    v = describe(all_colours, "hsv72", max_side=None)
    # describe normalises by the pixel count (2**24: exact in float32 for counts < 2**24)
    np.testing.assert_array_equal(np.asarray(v, np.float64) * (1 << 24), want)
