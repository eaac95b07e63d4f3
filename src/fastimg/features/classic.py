"""The built-in classic descriptors, registered with :mod:`fastimg.features.registry`
when this module is imported (the registry imports it on its first use).

Numba kernels (:mod:`fastimg.features._kernels`) and OpenCV are imported on first use,
so importing the registry stays cheap.  Every ``compute`` here is thread-safe
and spends its time in GIL-free code (Numba ``nogil`` kernels, OpenCV).
"""
from __future__ import annotations

import math
import re
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

from fastimg.errors import DescriptorError
from fastimg.features.base import Descriptor
from fastimg.features.registry import get_descriptor, register
from fastimg.image import shrink_to

_KERNELS = None


def _k():
    """The compiled kernels module (imported lazily: numba is slow to import)."""
    global _KERNELS
    if _KERNELS is None:
        from fastimg.features import _kernels

        _KERNELS = _kernels
    return _KERNELS


# ---------------------------------------------------------------------------
# single-image twins of the kernels (NumPy only: no Numba start-up)
# ---------------------------------------------------------------------------
# Describing ONE image (``describe``, a query) with a Numba kernel costs about a
# second of start-up (importing numba, loading its cached machine code) for a
# few milliseconds of work.  These twins make the same decisions as the
# kernels in :mod:`fastimg.features._kernels`, vectorised with NumPy, and count with
# ``np.bincount``: the counts, hence the vectors, are identical bit for bit
# (tests/test_descriptors.py checks them against the kernels).  They are slower
# per image than the kernels once started, so ``describe_many`` keeps the kernels.

#: hue edges of hsv72 (degrees); above the last one, red again (see :func:`fastimg.features._kernels.hsv72_bin`)
_HSV72_HUE_EDGES = (20, 40, 75, 155, 190, 270, 295, 315)


def _hsv72_float_bins_np(b8: np.ndarray, g8: np.ndarray, r8: np.ndarray) -> np.ndarray:
    """hsv72 bins of 1-D uint8 channel arrays by the original's float64 formula
    (:func:`fastimg.features._kernels.hsv72_bin_float`), vectorised."""
    r, g, b = r8 / 255.0, g8 / 255.0, b8 / 255.0
    mx = np.maximum(r, np.maximum(g, b))
    mn = np.minimum(r, np.minimum(g, b))
    df = mx - mn
    safe = np.where(df > 0, df, 1.0)
    h = np.where(mx == r, (60 * ((g - b) / safe) + 360) % 360,
                 np.where(mx == g, (60 * ((b - r) / safe) + 120) % 360, (60 * ((r - g) / safe) + 240) % 360))
    h = np.where(mx == mn, 0.0, h)
    s = np.where(mx == 0, 0.0, df / np.where(mx == 0, 1.0, mx))
    hb = np.searchsorted(np.asarray(_HSV72_HUE_EDGES, np.float64), h, side="left") % 8  # (e_k-1, e_k] -> k; > 315 -> 0
    sb = (s > 0.2).astype(np.int32) + (s >= 0.7)
    vb = (mx > 0.2).astype(np.int32) + (mx >= 0.7)
    return (hb * 9 + sb * 3 + vb).astype(np.uint8)


def hsv72_index_np(bgr: np.ndarray) -> np.ndarray:
    """Per-pixel hsv72 bin (uint8 (H, W)) by NumPy, equal to :func:`fastimg.features._kernels.hsv72_bin`.

    The same decisions: exact integer tests off the bin edges (with ``d = max - min``
    and the integer hue numerator ``H``, ``h > e`` is ``H > e d``, ``s > 0.2`` is
    ``5 d > max``, ``s > 0.7`` is ``10 d > 7 max``, ``v > 0.2`` is ``max > 51``,
    ``v >= 0.7`` is ``max > 178``; red is the maximum first, then green), and the
    original's float64 formula for the colours on an edge (``H == e d``,
    ``5 d == max``, ``10 d == 7 max``, ``d > 0``), where its rounding decides.
    """
    b8, g8, r8 = bgr[..., 0], bgr[..., 1], bgr[..., 2]
    b = b8.astype(np.int32)
    g = g8.astype(np.int32)
    r = r8.astype(np.int32)
    mx = np.maximum(r, np.maximum(g, b))
    d = mx - np.minimum(r, np.minimum(g, b))
    hh = np.where(mx == r, 60 * (g - b) + np.where(g < b, 360 * d, 0),
                  np.where(mx == g, 120 * d + 60 * (b - r), 240 * d + 60 * (r - g)))
    hb = np.zeros(hh.shape, dtype=np.uint8)
    tie = 5 * d == mx
    tie |= 10 * d == 7 * mx
    x = np.empty_like(hh)  # H - e d, in place (this is most of the time)
    for e in _HSV72_HUE_EDGES[:-1]:
        np.multiply(d, e, out=x)
        np.subtract(hh, x, out=x)
        hb += x > 0
        tie |= x == 0
    np.multiply(d, 315, out=x)
    np.subtract(hh, x, out=x)
    hb *= x <= 0  # h > 315: red again (d = 0 gives hh = 0: bin 0)
    tie |= x == 0
    tie &= d > 0
    out = hb * np.uint8(9)
    out += (5 * d > mx).view(np.uint8) * np.uint8(3)
    out += (10 * d > 7 * mx).view(np.uint8) * np.uint8(3)
    out += (mx > 51).view(np.uint8)
    out += (mx > 178).view(np.uint8)
    if tie.any():
        out[tie] = _hsv72_float_bins_np(b8[tie], g8[tie], r8[tie])
    return out


def hsv72_hist_np(bgr: np.ndarray) -> np.ndarray:
    """Counts of the 72 hsv72 bins -> int64 (72,), equal to :func:`fastimg.features._kernels.hsv72_hist` (any strides)."""
    return np.bincount(hsv72_index_np(bgr).reshape(-1), minlength=72).astype(np.int64, copy=False)


def rgb_hist_np(bgr: np.ndarray, levels: int) -> np.ndarray:
    """Uniform RGB counts -> int64 (levels**3,), equal to :func:`fastimg.features._kernels.rgb_hist`."""
    q = (bgr.astype(np.int32) * levels) >> 8
    idx = (q[..., 2] * levels + q[..., 1]) * levels + q[..., 0]
    return np.bincount(idx.reshape(-1), minlength=levels ** 3).astype(np.int64, copy=False)


def lbp_hist_np(grey: np.ndarray, table: np.ndarray, nbins: int) -> np.ndarray:
    """``table[LBP code]`` counts over the interior pixels of ``grey`` -> int64 (nbins,),
    equal to :func:`fastimg.features._kernels.lbp_hist` (same neighbour order and ``>=`` test)."""
    h, w = grey.shape
    if h < 3 or w < 3:
        return np.zeros(nbins, dtype=np.int64)
    c = grey[1:-1, 1:-1]
    code = np.zeros(c.shape, dtype=np.uint8)
    # bit p: neighbour (di, dj), counter-clockwise from the right, as in _kernels.lbp_codes
    for p, (di, dj) in enumerate(((0, 1), (-1, 1), (-1, 0), (-1, -1), (0, -1), (1, -1), (1, 0), (1, 1))):
        code |= (grey[1 + di:h - 1 + di, 1 + dj:w - 1 + dj] >= c).astype(np.uint8) * np.uint8(1 << p)
    return np.bincount(table[code].reshape(-1), minlength=nbins).astype(np.int64, copy=False)


def _normalise(counts: np.ndarray) -> np.ndarray:
    v = np.asarray(counts, dtype=np.float64)
    s = v.sum()
    return v / s if s > 0 else v


def _int_param(name: str, key: str, value: Any, lo: int, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not lo <= value <= hi:
        raise DescriptorError(f"descriptor {name!r}: {key} must be an int in [{lo}, {hi}]; got {value!r}")
    return int(value)


def _int_list(name: str, key: str, value: Any, length: Optional[int], lo: int, hi: int) -> List[int]:
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool) and length is not None:
        value = [value] * length
    if not isinstance(value, (list, tuple)) or (length is not None and len(value) != length) or not value:
        want = f"{length} ints" if length is not None else "a non-empty list of ints"
        raise DescriptorError(f"descriptor {name!r}: {key} must be {want}; got {value!r}")
    return [_int_param(name, key, v, lo, hi) for v in value]


# ---------------------------------------------------------------------------
# hsv72
# ---------------------------------------------------------------------------
def make_hsv72() -> Descriptor:
    """The original design's 72-bin HSV histogram (8 hue x 3 saturation x 3 value).

    Hue (degrees, from the standard RGB->HSV formula on 0-1 scaled channels:
    ``h = 60 (g - b) / (max - min)`` when red is the maximum, etc., 0 for greys)
    falls in 8 uneven bins with edges 20, 40, 75, 155, 190, 270, 295, 315: bin 0
    (red) is ``h <= 20 or h > 315``, bin ``k`` is ``(edge[k-1], edge[k]]``.
    Saturation ``s = (max - min) / max`` and value ``v = max`` (0-1) each fall in
    3 bins: ``<= 0.2``, ``>= 0.7``, between.  Bin index ``h * 9 + s * 3 + v``;
    the histogram is normalised to sum 1.

    Bug fix: the original code tested ``h <= 20 and h > 315`` for the red bin,
    which is never true, so reds fell into bin 7; here reds are bin 0.

    Every colour lands in the bin of the original's float64 formula (computed
    from ``channel / 255.0``), rounding included: many thresholds fall exactly
    on reachable values (``s = 0.7``, ``v = 51/255 = 0.2``, ``h = 20`` ...),
    where the float rounding decides (``s = 70/100`` is ``>= 0.7`` in floats,
    ``s = 7/35`` is ``> 0.2``).  Bins are decided with integer comparisons off
    those edges and with the float formula on them
    (:func:`fastimg.features._kernels.hsv72_bin`; all 2**24 colours are checked
    against the original's formula in tests/test_hsv72_exhaustive.py).

    Version 2: version 1 put ``s == 0.7`` (and 0.2 / hue-edge colours the float
    rounds upwards) in the lower bin (exact rational thresholds): 18,524 of the
    2**24 colours moved.
    """

    def compute(bgr: np.ndarray) -> np.ndarray:
        return _normalise(_k().hsv72_hist(np.ascontiguousarray(bgr)))

    def compute_single(bgr: np.ndarray) -> np.ndarray:
        return _normalise(hsv72_hist_np(bgr))

    return Descriptor("hsv72", 72, compute, default_metric=_METRIC["hsv72"], version=2,
                      doc="original 72-bin HSV histogram (8 uneven hue x 3 sat x 3 value), red-bin bug fixed",
                      compute_single=compute_single)


# ---------------------------------------------------------------------------
# rgbN
# ---------------------------------------------------------------------------
def make_rgb(name: str, **params: Any) -> Descriptor:
    """Uniform RGB histogram ``rgbN``: ``N = L**3`` bins, ``L`` levels per channel (rgb512: L = 8).

    Channel value ``c`` (0-255) falls in level ``c * L // 256``; bin index
    ``(r * L + g) * L + b``; normalised to sum 1.  ``rgb`` alone means ``rgb512``.
    """
    if params:
        raise DescriptorError(f"descriptor {name!r} takes no parameters (the name sets the bins); got {sorted(params)}")
    m = re.fullmatch(r"rgb(\d*)", name)
    if m is None:
        raise DescriptorError(f"unknown descriptor {name!r}: expected rgbN with N = L**3, e.g. rgb64, rgb512")
    n = int(m.group(1) or 512)
    levels = round(n ** (1 / 3))
    if levels ** 3 != n or not 2 <= levels <= 64:
        raise DescriptorError(f"descriptor {name!r}: N must be a cube L**3 with 2 <= L <= 64 (8, 27, 64, 512, 4096 ...); got {n}")

    def compute(bgr: np.ndarray) -> np.ndarray:
        return _normalise(_k().rgb_hist(bgr, levels))

    def compute_single(bgr: np.ndarray) -> np.ndarray:
        return _normalise(rgb_hist_np(bgr, levels))

    return Descriptor(f"rgb{n}", n, compute, default_metric=_METRIC["rgb"], version=1,
                      doc=f"uniform RGB histogram, {levels} levels per channel", compute_single=compute_single)


make_rgb.examples = ["rgb64", "rgb512"]  # type: ignore[attr-defined]


# ---------------------------------------------------------------------------
# hsv (cv2.calcHist)
# ---------------------------------------------------------------------------
def make_hsv(bins: Sequence[int] = (8, 12, 3)) -> Descriptor:
    """HSV histogram with ``bins = (h, s, v)`` uniform bins, computed by :func:`cv2.calcHist`.

    On OpenCV's 8-bit HSV (``H`` in 0-179, ``S`` and ``V`` in 0-255) with ranges
    ``[0, 180) x [0, 256) x [0, 256)``; bin index ``(h * S + s) * V + v``;
    normalised to sum 1.
    """
    b = _int_list("hsv", "bins", list(bins), 3, 1, 256)
    dim = b[0] * b[1] * b[2]

    def compute(bgr: np.ndarray) -> np.ndarray:
        import cv2

        hsv = cv2.cvtColor(bgr, cv2.COLOR_BGR2HSV)
        hist = cv2.calcHist([hsv], [0, 1, 2], None, b, [0, 180, 0, 256, 0, 256])
        return _normalise(hist.reshape(-1))

    return Descriptor("hsv", dim, compute, default_metric=_METRIC["hsv"], version=1, params={"bins": b},
                      doc="HSV histogram via cv2.calcHist, bins=(h, s, v)")


# ---------------------------------------------------------------------------
# spatial-<base>
# ---------------------------------------------------------------------------
def regions(h: int, w: int, grid: Sequence[int], center: bool) -> List[tuple]:
    """Regions ``(r0, r1, c0, c1)`` used by ``spatial-*``: the grid cells in
    row-major order (cell ``(i, j)`` spans rows ``[i H // gr, (i + 1) H // gr)``),
    then, if ``center``, the centre rectangle ``[H // 4, 3 H // 4) x [W // 4, 3 W // 4)``."""
    gr, gc = grid
    out = [(i * h // gr, (i + 1) * h // gr, j * w // gc, (j + 1) * w // gc) for i in range(gr) for j in range(gc)]
    if center:
        out.append((h // 4, 3 * h // 4, w // 4, 3 * w // 4))
    return out


def make_spatial(name: str, grid: Any = (2, 2), center: bool = True, **base_params: Any) -> Descriptor:
    """``spatial-<base>``: the base descriptor on each cell of a grid (default 2 x 2) plus a centre region.

    The region vectors (see :func:`regions`) are concatenated and divided by the
    number of regions, so a concatenation of histograms still sums to 1.  An
    empty region (image smaller than the grid) contributes zeros.
    """
    base_name = name[len("spatial-"):]
    if not base_name:
        raise DescriptorError("descriptor 'spatial-': name the base descriptor, e.g. 'spatial-hsv'")
    g = _int_list(name, "grid", list(grid) if isinstance(grid, (list, tuple)) else grid, 2, 1, 16)
    if not isinstance(center, bool):
        raise DescriptorError(f"descriptor {name!r}: center must be True or False; got {center!r}")
    base = get_descriptor(base_name, **base_params)
    nreg = g[0] * g[1] + (1 if center else 0)
    dim = base.dim * nreg

    def run(bgr: np.ndarray, single: bool) -> np.ndarray:
        h, w = bgr.shape[:2]
        out = np.zeros(dim, dtype=np.float64)
        for n, (r0, r1, c0, c1) in enumerate(regions(h, w, g, center)):
            if r1 > r0 and c1 > c0:
                out[n * base.dim:(n + 1) * base.dim] = base.raw(bgr[r0:r1, c0:c1], single=single)
        return out / nreg

    params: Dict[str, Any] = {"grid": g, "center": center, **base.params}
    return Descriptor(f"spatial-{base.name}", dim, lambda bgr: run(bgr, False), default_metric=base.default_metric,
                      version=base.version, params=params,
                      doc=f"{base.name} over a {g[0]}x{g[1]} grid{' plus centre' if center else ''}",
                      compute_single=lambda bgr: run(bgr, True))


make_spatial.examples = ["spatial-hsv72", "spatial-hsv"]  # type: ignore[attr-defined]


# ---------------------------------------------------------------------------
# correlogram
# ---------------------------------------------------------------------------
def make_correlogram(colors: str = "hsv72", distances: Sequence[int] = (1, 3, 5, 7),
                     side: Optional[int] = None) -> Descriptor:
    """Auto colour correlogram: for each quantised colour ``c`` and distance ``k``, the
    probability that a pixel at chessboard distance ``k`` from a pixel of colour ``c``
    has colour ``c`` too (Huang et al., 1997; LIRE's ``AutoColorCorrelogram``).

    ``colors`` is the quantisation: ``"hsv72"`` (the hsv72 bins) or ``"rgbN"``
    (uniform RGB, N = L**3).  All pixels on each full ring are counted (exact,
    no sampling).  Vector layout ``[c * K + k]``, values in [0, 1].  ``side``:
    if given, the image is first shrunk (``cv2.INTER_AREA``) to at most ``side``
    pixels on its longer side (the cost grows with the pixel count times the
    sum of the distances).
    """
    if not isinstance(colors, str):
        raise DescriptorError(f"descriptor 'correlogram': colors must be 'hsv72' or 'rgbN'; got {colors!r}")
    if colors == "hsv72":
        ncolors, levels = 72, 0
    else:
        m = re.fullmatch(r"rgb(\d+)", colors)
        levels = round(int(m.group(1)) ** (1 / 3)) if m else 0
        if m is None or levels ** 3 != int(m.group(1)) or not 2 <= levels <= 16:
            raise DescriptorError(f"descriptor 'correlogram': colors must be 'hsv72' or 'rgbN' (N = L**3, L <= 16); got {colors!r}")
        ncolors = levels ** 3
    dist = _int_list("correlogram", "distances", list(distances) if isinstance(distances, (list, tuple)) else distances,
                     None, 1, 64)
    if len(set(dist)) != len(dist):
        raise DescriptorError(f"descriptor 'correlogram': distances must be distinct; got {dist}")
    dist_arr = np.asarray(dist, dtype=np.int64)
    if side is not None:
        side = _int_param("correlogram", "side", side, 16, 1 << 16)
    offsets = None

    def compute(bgr: np.ndarray) -> np.ndarray:
        nonlocal offsets
        k = _k()
        if offsets is None:
            offsets = k.ring_offsets(dist)
        if side is not None:
            bgr = shrink_to(bgr, side)
        idx = k.hsv72_index(bgr) if levels == 0 else k.rgb_index(bgr, levels)
        return k.autocorrelogram(idx, ncolors, dist_arr, *offsets).reshape(-1)

    # version 2 with hsv72 colours: the hsv72 bins of version 2 (the original's float rounding)
    return Descriptor("correlogram", ncolors * len(dist), compute, default_metric=_METRIC["correlogram"],
                      version=2 if levels == 0 else 1, params={"colors": colors, "distances": dist, "side": side},
                      doc="auto colour correlogram (quantised colours x distances)")


# ---------------------------------------------------------------------------
# lbp
# ---------------------------------------------------------------------------
def uniform_lbp_table(rotation_invariant: bool) -> np.ndarray:
    """Map the 256 8-neighbour LBP codes to uniform-pattern bins.

    A code is *uniform* when its circular bit string has at most two 0/1
    transitions.  ``rotation_invariant=False`` (the "u2" mapping): the 58
    uniform codes get bins 0..57 in increasing code order, every other code bin
    58 (59 bins).  ``True`` (the "riu2" mapping): a uniform code maps to its
    number of 1 bits (0..8), others to 9 (10 bins).

    Returns
    -------
    numpy.ndarray
        int32 (256,)
    """
    table = np.empty(256, dtype=np.int32)
    nxt = 0
    for code in range(256):
        bits = [(code >> p) & 1 for p in range(8)]
        transitions = sum(bits[p] != bits[(p + 1) % 8] for p in range(8))
        if rotation_invariant:
            table[code] = sum(bits) if transitions <= 2 else 9
        elif transitions <= 2:
            table[code] = nxt
            nxt += 1
        else:
            table[code] = -1
    if not rotation_invariant:
        table[table < 0] = nxt  # 58
    return table



def make_lbp(mapping: str = "u2") -> Descriptor:
    """Histogram of 8-neighbour local binary patterns of the grey image (texture).

    ``mapping="u2"``: 58 uniform patterns + 1 bin for the rest (59 bins);
    ``"riu2"``: rotation-invariant uniform patterns (10 bins).  Grey levels from
    :func:`cv2.cvtColor` (``COLOR_BGR2GRAY``); border pixels are not centres.
    Normalised to sum 1 (zeros for images smaller than 3 x 3).
    """
    if mapping not in ("u2", "riu2"):
        raise DescriptorError(f"descriptor 'lbp': mapping must be 'u2' or 'riu2'; got {mapping!r}")
    riu = mapping == "riu2"
    nbins = 10 if riu else 59
    table = uniform_lbp_table(riu)

    def compute(bgr: np.ndarray) -> np.ndarray:
        import cv2

        grey = cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY)
        return _normalise(_k().lbp_hist(grey, table, nbins))

    def compute_single(bgr: np.ndarray) -> np.ndarray:
        import cv2

        return _normalise(lbp_hist_np(cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY), table, nbins))

    return Descriptor("lbp", nbins, compute, default_metric=_METRIC["lbp"], version=1, params={"mapping": mapping},
                      doc="uniform local binary pattern histogram (texture)", compute_single=compute_single)


# ---------------------------------------------------------------------------
# ehd
# ---------------------------------------------------------------------------
def ehd_block_size(h: int, w: int, blocks: int) -> int:
    """MPEG-7 block size: ``floor(sqrt(H W / blocks) / 2) * 2``, at least 2."""
    return max(2, int(math.sqrt(h * w / blocks) / 2) * 2)


def make_ehd(threshold: float = 11.0, blocks: int = 1100) -> Descriptor:
    """MPEG-7-style edge histogram: 4 x 4 sub-images x 5 edge types (80 bins).

    Blocks of about ``H W / blocks`` pixels (see :func:`ehd_block_size`) are
    classified by the strongest of five 2 x 2 filters if it exceeds
    ``threshold`` (grey levels); each bin is the fraction of the sub-image's
    blocks of that edge type (see :func:`fastimg.features._kernels.edge_histogram`).
    """
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not threshold >= 0:
        raise DescriptorError(f"descriptor 'ehd': threshold must be a number >= 0; got {threshold!r}")
    nb = _int_param("ehd", "blocks", blocks, 16, 1_000_000)

    def compute(bgr: np.ndarray) -> np.ndarray:
        import cv2

        grey = cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY)
        h, w = grey.shape
        return _k().edge_histogram(grey, ehd_block_size(h, w, nb), float(threshold))

    return Descriptor("ehd", 80, compute, default_metric=_METRIC["ehd"], version=1,
                      params={"threshold": float(threshold), "blocks": nb},
                      doc="MPEG-7-style edge histogram (4x4 regions x 5 edge types)")


# ---------------------------------------------------------------------------
# cedd
# ---------------------------------------------------------------------------
def make_cedd(t0: float = 14.0, t1: float = 0.68, t2: float = 0.98, t3: float = 0.98) -> Descriptor:
    """CEDD-style colour and edge directivity descriptor: 6 texture classes x 24 fuzzy colours (144 bins).

    Follows the structure of CEDD (Chatzichristofis & Boutalis, ICVS 2008; LIRE's
    ``CEDD``): about 40 x 40 blocks, each classified by the MPEG-7 edge filters
    on its grey quadrants (thresholds ``t0`` = 14 grey levels for "no edge",
    then ``t1`` / ``t2`` / ``t3`` on the filter magnitudes relative to the
    largest) and described by the fuzzy 10-then-24-colour membership of its mean
    HSV colour (see :func:`fastimg.features._kernels.cedd` and
    :func:`fastimg.features._kernels.cedd_colour24`).  Differences from LIRE: the fuzzy
    rules are a documented reading of the paper (membership products, which sum
    to 1 per block) and the final 3-bit quantisation is omitted (the histogram
    is normalised to sum 1), so vectors are not bit-compatible with LIRE's.
    """
    vals = {"t0": t0, "t1": t1, "t2": t2, "t3": t3}
    for key, val in vals.items():
        if isinstance(val, bool) or not isinstance(val, (int, float)) or not (val >= 0 and math.isfinite(val)):
            raise DescriptorError(f"descriptor 'cedd': {key} must be a finite number >= 0; got {val!r}")
    th = tuple(float(vals[k]) for k in ("t0", "t1", "t2", "t3"))

    def compute(bgr: np.ndarray) -> np.ndarray:
        k = _k()
        return _normalise(k.cedd(bgr, k._CEDD_HUE, *th))

    return Descriptor("cedd", 144, compute, default_metric=_METRIC["cedd"], version=1,
                      params={"t0": th[0], "t1": th[1], "t2": th[2], "t3": th[3]},
                      doc="CEDD-style colour and edge directivity (6 textures x 24 fuzzy colours)")


# ---------------------------------------------------------------------------
# combo / classic
# ---------------------------------------------------------------------------
def make_combo(parts: Any = None, metric: Optional[str] = None, _name: str = "combo", _version: int = 1) -> Descriptor:
    """Weighted concatenation of descriptors.

    ``parts`` is a list of ``{"name": str, "params": dict, "weight": float}``
    (``params`` and ``weight`` optional; a bare name string is allowed).  Each
    part's vector is scaled to sum 1 (if its sum is positive), then multiplied
    by ``weight / sum(weights)``: with histogram parts the result sums to 1.
    ``metric`` overrides the default metric (``"l1"``: the best on every
    combination measured on Corel-1k, equivalent to histogram intersection
    for vectors that sum to 1).  The version is ``_version`` plus the parts'
    version bumps (``sum(part.version - 1)``), so a combination changes version
    whenever one of its parts does.
    """
    if not isinstance(parts, (list, tuple)) or not parts:
        raise DescriptorError(f"descriptor {_name!r}: parts must be a non-empty list of "
                              f"{{'name': ..., 'params': {{...}}, 'weight': w}}; got {parts!r}")
    descs: List[Descriptor] = []
    weights: List[float] = []
    canon = []
    for p in parts:
        if isinstance(p, str):
            p = {"name": p}
        if not isinstance(p, dict) or not isinstance(p.get("name"), str) or set(p) - {"name", "params", "weight"}:
            raise DescriptorError(f"descriptor {_name!r}: bad part {p!r}; expected {{'name', 'params', 'weight'}}")
        w = p.get("weight", 1.0)
        if isinstance(w, bool) or not isinstance(w, (int, float)) or not (w >= 0 and math.isfinite(w)):
            raise DescriptorError(f"descriptor {_name!r}: weight of part {p['name']!r} must be a finite number >= 0; got {w!r}")
        d = get_descriptor(p["name"], **dict(p.get("params") or {}))
        descs.append(d)
        weights.append(float(w))
        canon.append({"name": d.name, "params": dict(d.params), "weight": float(w)})
    total = sum(weights)
    if total <= 0:
        raise DescriptorError(f"descriptor {_name!r}: the part weights sum to 0")
    scale = [w / total for w in weights]
    offsets = np.cumsum([0] + [d.dim for d in descs])
    dim = int(offsets[-1])

    def run(bgr: np.ndarray, single: bool) -> np.ndarray:
        out = np.empty(dim, dtype=np.float64)
        for d, s, a, b in zip(descs, scale, offsets[:-1], offsets[1:]):
            out[a:b] = _normalise(d.raw(bgr, single=single)) * s
        return out

    if metric is None:
        metric = _METRIC["combo"]
    params = {} if _name != "combo" else {"parts": canon, "metric": metric}
    version = _version + sum(d.version - 1 for d in descs)
    return Descriptor(_name, dim, lambda bgr: run(bgr, False), default_metric=metric, version=version,
                      params=params, doc="weighted concatenation of descriptors",
                      compute_single=lambda bgr: run(bgr, True))


#: The best classic combination measured on Corel-1k (bench/quality_classic.py --search):
#: mAP 0.641, P@10 0.841 with the L1 metric.  The correlogram part uses distances
#: 1-4 on a 256-pixel image: as good in the combination as the default (1, 3, 5, 7)
#: at full size (0.642) and about 3.5x cheaper.
CLASSIC_PARTS = [
    {"name": "spatial-hsv72", "weight": 1.0},
    {"name": "correlogram", "params": {"colors": "hsv72", "distances": [1, 2, 3, 4], "side": 256}, "weight": 1.0},
    {"name": "lbp", "params": {"mapping": "u2"}, "weight": 1.5},
]

#: The same without the (slow) correlogram: mAP 0.626, P@10 0.824 (L1), several times faster.
CLASSIC_FAST_PARTS = [
    {"name": "spatial-hsv72", "weight": 1.0},
    {"name": "lbp", "params": {"mapping": "u2"}, "weight": 1.5},
]


def make_classic() -> Descriptor:
    """Best classic combination on Corel-1k: spatial-hsv72 + correlogram + 1.5 x lbp (mAP 0.64, L1)."""
    # version 2: the correlogram part became 256-pixel, distances 1-4 (version 1: full size, 1, 3, 5, 7);
    # the parts' bumps add to it (hsv72 version 2, in spatial-hsv72 and the correlogram: 4)
    return make_combo(CLASSIC_PARTS, metric=_METRIC["classic"], _name="classic", _version=2)


def make_classic_fast() -> Descriptor:
    """spatial-hsv72 + 1.5 x lbp (mAP 0.63 on Corel-1k, L1): the classic combination without the correlogram."""
    return make_combo(CLASSIC_FAST_PARTS, metric=_METRIC["classic"], _name="classic-fast")


# default metric of each descriptor, chosen from Corel-1k mAP (bench/descriptors.md)
_METRIC = {
    "hsv72": "bhattacharyya",
    "rgb": "bhattacharyya",
    "hsv": "bhattacharyya",
    "correlogram": "l1",
    "lbp": "chisqr_alt",
    "ehd": "l1",
    "cedd": "bhattacharyya",
    "combo": "l1",
    "classic": "l1",
}


# the built-ins, registered on import (the registry imports this module on its first use)
register("hsv72", make_hsv72)
register("rgb*", make_rgb)
register("hsv", make_hsv)
register("spatial-*", make_spatial)
register("correlogram", make_correlogram)
register("lbp", make_lbp)
register("ehd", make_ehd)
register("cedd", make_cedd)
register("combo", make_combo)
register("classic", make_classic)
register("classic-fast", make_classic_fast)
