"""Numba per-pixel kernels behind the classic descriptors (private).

Imported lazily by :mod:`fastimg.registry` (importing numba costs ~0.3 s).
Every kernel is ``@njit(cache=True, nogil=True)``: it releases the GIL, so
:func:`fastimg.registry.describe_many` runs them on several threads at once.
Kernels take ``uint8`` images of shape ``(H, W, 3)`` in BGR order (any strides:
region views are accepted) and return raw counts; normalisation, validation and
naming live in :mod:`fastimg.registry`.  No kernel validates its input.
"""
from __future__ import annotations

import threading

import numpy as np
from numba import njit

__all__ = [
    "hsv72_bin",
    "hsv72_hist",
    "hsv72_index",
    "hsv72_lut",
    "hsv72_hist_lut",
    "hsv72_index_lut",
    "rgb_hist",
    "rgb_index",
    "autocorrelogram",
    "ring_offsets",
    "lbp_codes",
    "lbp_hist",
    "uniform_lbp_table",
    "edge_histogram",
]

# Hue edges of hsv72 in degrees: bin k (k = 1..7) is (E[k-1], E[k]]; bin 0 is
# h <= 20 or h > 315 (red wraps around).
_HUE_EDGES = (20, 40, 75, 155, 190, 270, 295, 315)


@njit(cache=True, nogil=True, inline="always")
def hsv72_bin(b_, g_, r_):
    """hsv72 bin (0..71) of one 8-bit BGR pixel, decided with exact integer arithmetic.

    With ``d = max - min`` the hue is ``h = H / d`` degrees where ``H`` is an
    integer (``60 * (g - b)`` etc.), saturation ``s = d / max`` and value
    ``v = max / 255``; each threshold test ``h <= e``, ``s <= 0.2``, ... is
    rewritten as a comparison of integers (``H <= e * d``, ``5 * d <= max``,
    ...), so no rounding can move a pixel across a bin edge.
    """
    r = np.int32(r_)
    g = np.int32(g_)
    b = np.int32(b_)
    mx = max(r, max(g, b))
    mn = min(r, min(g, b))
    d = mx - mn
    hb = 0
    if d > 0:
        if mx == r:
            hh = 60 * (g - b)
            if hh < 0:
                hh += 360 * d
        elif mx == g:
            hh = 120 * d + 60 * (b - r)
        else:
            hh = 240 * d + 60 * (r - g)
        if hh <= 20 * d or hh > 315 * d:
            hb = 0
        elif hh <= 40 * d:
            hb = 1
        elif hh <= 75 * d:
            hb = 2
        elif hh <= 155 * d:
            hb = 3
        elif hh <= 190 * d:
            hb = 4
        elif hh <= 270 * d:
            hb = 5
        elif hh <= 295 * d:
            hb = 6
        else:
            hb = 7
    # s = d / mx  (s = 0 when mx == 0, then d == 0 too)
    if 5 * d <= mx:
        sb = 0
    elif 10 * d <= 7 * mx:
        sb = 1
    else:
        sb = 2
    # v = mx / 255:  v <= 0.2  <=>  mx <= 51 ;  v <= 0.7  <=>  10 mx <= 1785
    if mx <= 51:
        vb = 0
    elif 10 * mx <= 1785:
        vb = 1
    else:
        vb = 2
    return hb * 9 + sb * 3 + vb


@njit(cache=True, nogil=True)
def hsv72_hist(img):  # pragma: no cover - compiled
    """Counts of the 72 hsv72 bins over ``img`` (uint8 (H, W, 3) BGR) -> int64 (72,)."""
    out = np.zeros(72, dtype=np.int64)
    h, w = img.shape[0], img.shape[1]
    for i in range(h):
        for j in range(w):
            out[hsv72_bin(img[i, j, 0], img[i, j, 1], img[i, j, 2])] += 1
    return out


@njit(cache=True, nogil=True)
def hsv72_index(img):  # pragma: no cover - compiled
    """Per-pixel hsv72 bin -> uint8 (H, W)."""
    h, w = img.shape[0], img.shape[1]
    out = np.empty((h, w), dtype=np.uint8)
    for i in range(h):
        for j in range(w):
            out[i, j] = hsv72_bin(img[i, j, 0], img[i, j, 1], img[i, j, 2])
    return out


@njit(cache=True, nogil=True)
def _fill_hsv72_lut(lut):  # pragma: no cover - compiled
    for b in range(256):
        for g in range(256):
            for r in range(256):
                lut[(b << 16) | (g << 8) | r] = hsv72_bin(b, g, r)


_LUT = None
_LUT_LOCK = threading.Lock()


def hsv72_lut() -> np.ndarray:
    """The hsv72 bin of every 24-bit colour: uint8 (2**24,) indexed by ``(b << 16) | (g << 8) | r``.

    Built once per process (about 0.2 s, 16 MiB) from :func:`hsv72_bin`; a table
    lookup is about twice as fast per pixel as the branchy exact computation.
    """
    global _LUT
    if _LUT is None:
        with _LUT_LOCK:
            if _LUT is None:
                lut = np.empty(1 << 24, dtype=np.uint8)
                _fill_hsv72_lut(lut)
                lut.flags.writeable = False
                _LUT = lut
    return _LUT


@njit(cache=True, nogil=True)
def hsv72_hist_lut(img, lut):  # pragma: no cover - compiled
    """Same as :func:`hsv72_hist` through the table of :func:`hsv72_lut`."""
    out = np.zeros(72, dtype=np.int64)
    h, w = img.shape[0], img.shape[1]
    for i in range(h):
        for j in range(w):
            out[lut[(np.int32(img[i, j, 0]) << 16) | (np.int32(img[i, j, 1]) << 8) | np.int32(img[i, j, 2])]] += 1
    return out


@njit(cache=True, nogil=True)
def hsv72_index_lut(img, lut):  # pragma: no cover - compiled
    """Same as :func:`hsv72_index` through the table of :func:`hsv72_lut`."""
    h, w = img.shape[0], img.shape[1]
    out = np.empty((h, w), dtype=np.uint8)
    for i in range(h):
        for j in range(w):
            out[i, j] = lut[(np.int32(img[i, j, 0]) << 16) | (np.int32(img[i, j, 1]) << 8) | np.int32(img[i, j, 2])]
    return out


@njit(cache=True, nogil=True)
def rgb_hist(img, levels):  # pragma: no cover - compiled
    """Uniform RGB histogram: channel value ``c`` falls in level ``c * levels // 256``.

    Bin index ``(r_level * levels + g_level) * levels + b_level`` -> int64 (levels**3,).
    """
    out = np.zeros(levels * levels * levels, dtype=np.int64)
    h, w = img.shape[0], img.shape[1]
    for i in range(h):
        for j in range(w):
            bq = (np.int32(img[i, j, 0]) * levels) >> 8
            gq = (np.int32(img[i, j, 1]) * levels) >> 8
            rq = (np.int32(img[i, j, 2]) * levels) >> 8
            out[(rq * levels + gq) * levels + bq] += 1
    return out


@njit(cache=True, nogil=True)
def rgb_index(img, levels):  # pragma: no cover - compiled
    """Per-pixel uniform RGB bin (see :func:`rgb_hist`) -> int32 (H, W)."""
    h, w = img.shape[0], img.shape[1]
    out = np.empty((h, w), dtype=np.int32)
    for i in range(h):
        for j in range(w):
            bq = (np.int32(img[i, j, 0]) * levels) >> 8
            gq = (np.int32(img[i, j, 1]) * levels) >> 8
            rq = (np.int32(img[i, j, 2]) * levels) >> 8
            out[i, j] = (rq * levels + gq) * levels + bq
    return out


def ring_offsets(distances) -> tuple:
    """Half of each chessboard ring: offsets ``(di, dj)`` with ``max(|di|, |dj|) == k``
    and ``(di, dj)`` lexicographically positive, ``4 k`` per distance ``k``.

    Returns ``(di int32 (M,), dj int32 (M,), which int32 (M,))`` where
    ``which`` is the position of the offset's distance in ``distances``.
    """
    di, dj, which = [], [], []
    for n, k in enumerate(distances):
        for a in range(0, k + 1):
            for b in range(-k, k + 1):
                if max(abs(a), abs(b)) != k or (a == 0 and b <= 0):
                    continue
                di.append(a)
                dj.append(b)
                which.append(n)
    return (np.asarray(di, np.int32), np.asarray(dj, np.int32), np.asarray(which, np.int32))


@njit(cache=True, nogil=True)
def autocorrelogram(idx, ncolors, distances, di, dj, which):  # pragma: no cover - compiled
    """Auto colour correlogram of a quantised image.

    Parameters
    ----------
    idx : int (H, W)
        Colour index of each pixel, in ``[0, ncolors)``.
    distances : int64 (K,)
        Chessboard (L-infinity) distances.
    di, dj, which : int32 (M,)
        Half-ring offsets from :func:`ring_offsets`.

    Returns
    -------
    float64 (ncolors, K)
        ``out[c, k]`` = probability that a pixel at chessboard distance
        ``distances[k]`` from a pixel of colour ``c`` (both inside the image) also
        has colour ``c``; 0 when colour ``c`` is absent.

    Notes
    -----
    Same-colour pairs are counted once per half-ring offset (a pair ``(p, p + o)``
    counts for both ends), scanning the image row by row for each offset; the
    number of in-image ring pixels around ``(i, j)`` is
    ``rows(i, d) cols(j, d) - rows(i, d - 1) cols(j, d - 1)`` with ``rows(i, d)``
    the number of rows of ``[i - d, i + d]`` inside the image.
    """
    h, w = idx.shape[0], idx.shape[1]
    nk = distances.shape[0]
    same = np.zeros((nk, ncolors), dtype=np.int64)
    total = np.zeros((nk, ncolors), dtype=np.int64)
    ro = np.empty(h, np.int64)
    ri = np.empty(h, np.int64)
    co = np.empty(w, np.int64)
    ci = np.empty(w, np.int64)
    for kk in range(nk):
        d = distances[kk]
        for i in range(h):
            ro[i] = min(i + d, h - 1) - max(i - d, 0) + 1
            ri[i] = min(i + d - 1, h - 1) - max(i - d + 1, 0) + 1
        for j in range(w):
            co[j] = min(j + d, w - 1) - max(j - d, 0) + 1
            ci[j] = min(j + d - 1, w - 1) - max(j - d + 1, 0) + 1
        for i in range(h):
            a = ro[i]
            b = ri[i]
            for j in range(w):
                total[kk, idx[i, j]] += a * co[j] - b * ci[j]
    for t in range(di.shape[0]):
        a = di[t]
        b = dj[t]
        kk = which[t]
        j0 = max(0, -b)
        j1 = min(w, w - b)
        for i in range(h - a):
            for j in range(j0, j1):
                c = idx[i, j]
                if idx[i + a, j + b] == c:
                    same[kk, c] += 2
    out = np.zeros((ncolors, nk), dtype=np.float64)
    for c in range(ncolors):
        for kk in range(nk):
            if total[kk, c] > 0:
                out[c, kk] = same[kk, c] / total[kk, c]
    return out


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


@njit(cache=True, nogil=True)
def lbp_codes(grey):  # pragma: no cover - compiled
    """8-neighbour LBP codes of the interior pixels of ``grey`` (uint8 (H, W)).

    Bit ``p`` (p = 0..7, neighbours counter-clockwise from the right:
    (0,+1), (-1,+1), (-1,0), (-1,-1), (0,-1), (+1,-1), (+1,0), (+1,+1)) is 1 when
    the neighbour is ``>=`` the centre.  Returns uint8 (H - 2, W - 2).
    """
    h, w = grey.shape[0], grey.shape[1]
    out = np.zeros((max(h - 2, 0), max(w - 2, 0)), dtype=np.uint8)
    for i in range(1, h - 1):
        for j in range(1, w - 1):
            c = grey[i, j]
            code = 0
            if grey[i, j + 1] >= c:
                code |= 1
            if grey[i - 1, j + 1] >= c:
                code |= 2
            if grey[i - 1, j] >= c:
                code |= 4
            if grey[i - 1, j - 1] >= c:
                code |= 8
            if grey[i, j - 1] >= c:
                code |= 16
            if grey[i + 1, j - 1] >= c:
                code |= 32
            if grey[i + 1, j] >= c:
                code |= 64
            if grey[i + 1, j + 1] >= c:
                code |= 128
            out[i - 1, j - 1] = code
    return out


@njit(cache=True, nogil=True)
def lbp_hist(grey, table, nbins):  # pragma: no cover - compiled
    """Histogram of ``table[lbp_code]`` over the interior pixels -> int64 (nbins,)."""
    codes = lbp_codes(grey)
    out = np.zeros(nbins, dtype=np.int64)
    for i in range(codes.shape[0]):
        for j in range(codes.shape[1]):
            out[table[codes[i, j]]] += 1
    return out


@njit(cache=True, nogil=True)
def edge_histogram(grey, block, threshold):  # pragma: no cover - compiled
    """MPEG-7-style local edge histogram (80 bins) of ``grey`` (uint8 (H, W)).

    The image is cut into 4 x 4 sub-images (rows ``[s H // 4, (s + 1) H // 4)``,
    likewise columns).  Each sub-image is tiled, from its top-left corner, with
    ``block x block`` blocks (``block`` even; partial blocks ignored).  A block's
    four quadrant means ``a0 a1 / a2 a3`` give five filter responses (vertical
    ``|a0 - a1 + a2 - a3|``, horizontal ``|a0 + a1 - a2 - a3|``, 45 degrees
    ``sqrt2 |a0 - a3|``, 135 degrees ``sqrt2 |a1 - a2|``, non-directional
    ``2 |a0 - a1 - a2 + a3|``); if the largest exceeds ``threshold`` the block
    counts as an edge of that type (first maximum wins).

    Returns
    -------
    float64 (80,)
        ``out[(si * 4 + sj) * 5 + type]`` = fraction of the sub-image's blocks
        whose edge type is ``type`` (0 vertical, 1 horizontal, 2 45°, 3 135°,
        4 non-directional).
    """
    h, w = grey.shape[0], grey.shape[1]
    out = np.zeros(80, dtype=np.float64)
    half = block // 2
    area = float(half * half)
    sqrt2 = np.sqrt(2.0)
    for si in range(4):
        r_start = si * h // 4
        r_stop = (si + 1) * h // 4
        for sj in range(4):
            c_start = sj * w // 4
            c_stop = (sj + 1) * w // 4
            nblocks = 0
            base = (si * 4 + sj) * 5
            r = r_start
            while r + block <= r_stop:
                c = c_start
                while c + block <= c_stop:
                    s0 = 0.0
                    s1 = 0.0
                    s2 = 0.0
                    s3 = 0.0
                    for y in range(half):
                        for x in range(half):
                            s0 += grey[r + y, c + x]
                            s1 += grey[r + y, c + half + x]
                            s2 += grey[r + half + y, c + x]
                            s3 += grey[r + half + y, c + half + x]
                    a0 = s0 / area
                    a1 = s1 / area
                    a2 = s2 / area
                    a3 = s3 / area
                    best = threshold
                    kind = -1
                    v = abs(a0 - a1 + a2 - a3)
                    if v > best:
                        best = v
                        kind = 0
                    v = abs(a0 + a1 - a2 - a3)
                    if v > best:
                        best = v
                        kind = 1
                    v = sqrt2 * abs(a0 - a3)
                    if v > best:
                        best = v
                        kind = 2
                    v = sqrt2 * abs(a1 - a2)
                    if v > best:
                        best = v
                        kind = 3
                    v = 2.0 * abs(a0 - a1 - a2 + a3)
                    if v > best:
                        best = v
                        kind = 4
                    if kind >= 0:
                        out[base + kind] += 1.0
                    nblocks += 1
                    c += block
                r += block
            if nblocks > 0:
                for t in range(5):
                    out[base + t] /= nblocks
    return out
