"""Numba per-pixel kernels behind the classic descriptors (private).

Imported lazily by :mod:`fastimg.features.registry` (importing numba costs ~0.3 s).
Every kernel is ``@njit(cache=True, nogil=True)``: it releases the GIL, so
:func:`fastimg.features.registry.describe_many` runs them on several threads at once.
Kernels take ``uint8`` images of shape ``(H, W, 3)`` in BGR order (any strides:
region views are accepted) and return raw counts; normalisation, validation and
naming live in :mod:`fastimg.features.registry`.  No kernel validates its input.
"""
from __future__ import annotations

import numpy as np
from numba import njit

__all__ = [
    "HSV72_TIE",
    "hsv72_bin",
    "hsv72_bin_float",
    "hsv72_bin_or_tie",
    "hsv72_hist",
    "hsv72_index",
    "rgb_hist",
    "rgb_index",
    "autocorrelogram",
    "ring_offsets",
    "lbp_codes",
    "lbp_hist",
    "edge_histogram",
    "cedd",
    "cedd_colour24",
]

#: ``R / 255.0`` for the 256 channel values, as the original computes them
_UNIT = np.arange(256) / 255.0

#: added by :func:`hsv72_bin_or_tie` to the bin of a colour that lies on a bin edge
HSV72_TIE = 128


@njit(cache=True, nogil=True)
def hsv72_bin_float(b_, g_, r_):
    """hsv72 bin (0..71) of one 8-bit BGR pixel by the original design's float formula.

    The original per-pixel code, in float64, with the red-bin fix::

        r, g, b = R / 255.0, G / 255.0, B / 255.0
        mx, mn = max(r, g, b), min(r, g, b); df = mx - mn
        h = 0                                   if mx == mn
            (60 * ((g - b) / df) + 360) % 360   elif mx == r
            (60 * ((b - r) / df) + 120) % 360   elif mx == g
            (60 * ((r - g) / df) + 240) % 360   else
        s = 0 if mx == 0 else df / mx;  v = mx
        hue bin: h <= 20 or h > 315 -> 0, h <= 40 -> 1, <= 75 -> 2, <= 155 -> 3,
                 <= 190 -> 4, <= 270 -> 5, <= 295 -> 6, else 7
        s bin (v bin alike): s <= 0.2 -> 0, s >= 0.7 -> 2, else 1
        bin = hue bin * 9 + s bin * 3 + v bin

    (the original tested ``h <= 20 and h > 315`` for red: never true, reds fell
    into bin 7).  Compiled without ``fastmath``: each operation is the IEEE
    double operation of the original, so the rounding is the same, with two
    rewrites that change no result: the quotients ``R / 255.0`` come from a
    table of the 256 values, and ``% 360`` is a subtraction of 360 when the
    red formula reaches 360 (it lies in [300, 420], where ``z - 360`` is exact)
    and nothing for green and blue (in [60, 300]).  tests/test_hsv72_exhaustive.py
    checks the result against a transcription of the original on all 2**24
    colours.  :func:`hsv72_bin` calls it only for colours on a bin edge.
    """
    r = _UNIT[r_]
    g = _UNIT[g_]
    b = _UNIT[b_]
    mx = max(r, max(g, b))
    mn = min(r, min(g, b))
    df = mx - mn
    if mx == mn:
        h = 0.0
    elif mx == r:
        h = 60 * ((g - b) / df) + 360
        if h >= 360:
            h -= 360
    elif mx == g:
        h = 60 * ((b - r) / df) + 120
    else:
        h = 60 * ((r - g) / df) + 240
    s = 0.0 if mx == 0 else df / mx
    v = mx
    if h <= 20 or h > 315:
        hb = 0
    elif h <= 40:
        hb = 1
    elif h <= 75:
        hb = 2
    elif h <= 155:
        hb = 3
    elif h <= 190:
        hb = 4
    elif h <= 270:
        hb = 5
    elif h <= 295:
        hb = 6
    else:
        hb = 7
    sb = 0 if s <= 0.2 else (2 if s >= 0.7 else 1)
    vb = 0 if v <= 0.2 else (2 if v >= 0.7 else 1)
    return hb * 9 + sb * 3 + vb


@njit(cache=True, nogil=True, inline="always")
def hsv72_bin_or_tie(b_, g_, r_):
    """hsv72 bin of one 8-bit BGR pixel decided with exact integer arithmetic,
    plus :data:`HSV72_TIE` (128) when the colour lies on a bin edge.

    With ``d = max - min`` the hue is ``h = H / d`` degrees where ``H`` is an
    integer (``60 (g - b)`` (+ ``360 d`` when negative) if red is the maximum,
    ``120 d + 60 (b - r)`` if green, ``240 d + 60 (r - g)`` if blue),
    saturation ``s = d / max`` and value ``v = max / 255``; each threshold test
    ``h <= e``, ``s <= 0.2``, ... is a comparison of integers (``H <= e d``,
    ``5 d <= max``, ...).  Off the edges this is the float formula's decision
    (:func:`hsv72_bin_float`): an exact value off an edge is at least 1/255
    degree (hue) or 1/1275 (saturation) from it, the float computation errs by
    about 1e-13.  On an edge (``H == e d``, ``5 d == max``, ``10 d == 7 max``,
    with ``d > 0``; 1-2% of a photo's pixels) the float rounding puts colours
    on either side, hence the flag.  The value edges need none: ``51 / 255.0``
    is the double ``0.2`` (bin 0 both ways) and ``v >= 0.7`` is ``max >= 179``.

    Each hue sector holds only some edges: red with ``g >= b`` (0-60 degrees:
    20, 40), red with ``g < b`` (300-360: 315, above which red again), green
    (60-180: 75, 155) and blue (180-300: 190, 270, 295), so three comparisons
    per pixel decide the hue bin.  Written without data-dependent branches so
    that the compiler vectorises it.

    (A lookup table over all 2**24 colours gives the same bins but was not
    faster on real photos: its 16 MiB do not stay in cache from one image to
    the next.)
    """
    r = np.int32(r_)
    g = np.int32(g_)
    b = np.int32(b_)
    mx = max(r, max(g, b))
    mn = min(r, min(g, b))
    d = mx - mn
    red = mx == r
    green = (mx == g) & (mx != r)
    blue = (mx != r) & (mx != g)
    red_neg = red & (g < b)
    hh = (60 * (g - b) + (360 * d if g < b else 0)) if red else (
        (120 * d + 60 * (b - r)) if green else (240 * d + 60 * (r - g)))
    # the sector's edges e1 < e2 < e3 (unused ones never compared) and its first bin
    e1 = np.int32(315) if red_neg else (np.int32(20) if red else (np.int32(75) if green else np.int32(190)))
    e2 = np.int32(40) if red else (np.int32(155) if green else np.int32(270))
    use2 = np.int32(not red_neg)
    use3 = np.int32(blue)
    x1 = e1 * d
    x2 = e2 * d
    x3 = 295 * d
    gt1 = np.int32(hh > x1)
    first = np.int32(0) if red else (np.int32(2) if green else np.int32(4))
    hb = first + gt1 + np.int32(hh > x2) * use2 + np.int32(hh > x3) * use3
    hb = 7 * (1 - gt1) if red_neg else hb  # (300, 315]: bin 7; above 315: red again
    sb = np.int32(5 * d > mx) + np.int32(10 * d > 7 * mx)  # s > 0.2, s > 0.7
    vb = np.int32(mx > 51) + np.int32(mx > 178)  # v > 0.2 (51/255), v >= 0.7 (178.5/255)
    tie = (np.int32(hh == x1) | (np.int32(hh == x2) & use2) | (np.int32(hh == x3) & use3)
           | np.int32(5 * d == mx) | np.int32(10 * d == 7 * mx)) & np.int32(d > 0)
    return hb * 9 + sb * 3 + vb + HSV72_TIE * tie


@njit(cache=True, nogil=True)
def hsv72_bin(b_, g_, r_):
    """hsv72 bin (0..71) of one 8-bit BGR pixel, equal to the original's float
    formula (:func:`hsv72_bin_float`) on every colour: integer arithmetic
    (:func:`hsv72_bin_or_tie`), the float formula for colours on a bin edge."""
    k = hsv72_bin_or_tie(b_, g_, r_)
    if k >= HSV72_TIE:
        return hsv72_bin_float(b_, g_, r_)
    return k


@njit(cache=True, nogil=True)
def _hsv72_bins_planes(b8, g8, r8, out):  # pragma: no cover - compiled
    """Integer pass (vectorised): bins, edge colours flagged with :data:`HSV72_TIE`."""
    for p in range(out.shape[0]):
        out[p] = np.uint8(hsv72_bin_or_tie(b8[p], g8[p], r8[p]))


@njit(cache=True, nogil=True)
def hsv72_hist(img):  # pragma: no cover - compiled
    """Counts of the 72 hsv72 bins over ``img`` (uint8 (H, W, 3) BGR, **C-contiguous**) -> int64 (72,).

    The channels are first split into planes so that the integer bin decision
    runs as a straight (vectorisable) loop (about 30% faster than per-pixel
    access); the count then settles the flagged edge colours with the float
    formula, with 4 interleaved counters (breaks store->load chains).
    """
    n = img.shape[0] * img.shape[1]
    flat = img.reshape(n * 3)
    b8 = np.empty(n, dtype=np.uint8)
    g8 = np.empty(n, dtype=np.uint8)
    r8 = np.empty(n, dtype=np.uint8)
    for p in range(n):
        b8[p] = flat[3 * p]
        g8[p] = flat[3 * p + 1]
        r8[p] = flat[3 * p + 2]
    idx = np.empty(n, dtype=np.uint8)
    _hsv72_bins_planes(b8, g8, r8, idx)
    tot = np.zeros((4, 72), dtype=np.int64)
    p = 0
    while p + 4 <= n:
        for u in range(4):
            k = idx[p + u]
            if k >= HSV72_TIE:
                k = hsv72_bin_float(b8[p + u], g8[p + u], r8[p + u])
            tot[u, k] += 1
        p += 4
    while p < n:
        k = idx[p]
        if k >= HSV72_TIE:
            k = hsv72_bin_float(b8[p], g8[p], r8[p])
        tot[0, k] += 1
        p += 1
    out = np.zeros(72, dtype=np.int64)
    for u in range(4):
        for c in range(72):
            out[c] += tot[u, c]
    return out


@njit(cache=True, nogil=True)
def hsv72_index(img):  # pragma: no cover - compiled
    """Per-pixel hsv72 bin -> uint8 (H, W) (any strides)."""
    h, w = img.shape[0], img.shape[1]
    out = np.empty((h, w), dtype=np.uint8)
    for i in range(h):
        for j in range(w):
            out[i, j] = hsv72_bin(img[i, j, 0], img[i, j, 1], img[i, j, 2])
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
    # branch-free counting into two interleaved counter sets (even / odd columns):
    # no mispredicted branches, no store->load chain on runs of one colour
    pairs = np.zeros((nk, 2, ncolors), dtype=np.int64)
    for t in range(di.shape[0]):
        a = di[t]
        b = dj[t]
        kk = which[t]
        j0 = max(0, -b)
        j1 = min(w, w - b)
        for i in range(h - a):
            j = j0
            while j + 2 <= j1:
                c0 = idx[i, j]
                c1 = idx[i, j + 1]
                pairs[kk, 0, c0] += np.int64(idx[i + a, j + b] == c0)
                pairs[kk, 1, c1] += np.int64(idx[i + a, j + 1 + b] == c1)
                j += 2
            if j < j1:
                c0 = idx[i, j]
                pairs[kk, 0, c0] += np.int64(idx[i + a, j + b] == c0)
    for kk in range(nk):
        for c in range(ncolors):
            same[kk, c] = 2 * (pairs[kk, 0, c] + pairs[kk, 1, c])
    out = np.zeros((ncolors, nk), dtype=np.float64)
    for c in range(ncolors):
        for kk in range(nk):
            if total[kk, c] > 0:
                out[c, kk] = same[kk, c] / total[kk, c]
    return out


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
    """Histogram of ``table[lbp_code]`` over the interior pixels -> int64 (nbins,).

    ``table`` maps the 256 codes to bins: :func:`fastimg.features.classic.uniform_lbp_table`.
    """
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


# ---------------------------------------------------------------------------
# CEDD-style colour and edge directivity descriptor
# ---------------------------------------------------------------------------
@njit(cache=True, nogil=True, inline="always")
def _trap(x, a, b, c, d):
    """Trapezoid membership: 0 below a, rising on [a, b], 1 on [b, c], falling on [c, d]."""
    if x < a or x > d:
        return 0.0
    if x < b:
        return (x - a) / (b - a)
    if x <= c:
        return 1.0
    if d == c:
        return 1.0
    return (d - x) / (d - c)


# hue fuzzy sets (degrees): red, orange, yellow, green, cyan, blue, magenta, red again
_CEDD_HUE = np.array([[0, 0, 5, 10], [5, 10, 35, 50], [35, 50, 70, 85], [70, 85, 150, 165],
                      [150, 165, 195, 205], [195, 205, 265, 280], [265, 280, 315, 330],
                      [315, 330, 360, 360]], dtype=np.float64)


@njit(cache=True, nogil=True)
def cedd_colour24(h, s, v, hue_sets, out):  # pragma: no cover - compiled
    """Fuzzy 24-colour membership of one HSV colour (h degrees, s and v in 0-255) into ``out`` (24,).

    10-colour stage: saturation sets low/high = trapezoids (0,0,10,75)/(10,75,255,255),
    value sets dark/mid/bright = (0,0,10,75)/(10,75,180,220)/(180,220,255,255);
    low saturation gives black/grey/white by value, high saturation gives black
    when dark, else the hue's colour (weights are products of memberships).
    24-colour stage: each of the 7 hue colours splits into vivid / light / dark
    with sets low/high = (0,0,68,188)/(68,188,255,255) on saturation and value:
    dark = low value, light = high value and low saturation, vivid = both high.
    Bins: 0 black, 1 grey, 2 white, 3 + 3 c + {0 vivid, 1 light, 2 dark}.
    The memberships form partitions of unity, so ``out`` sums to 1.
    """
    for i in range(24):
        out[i] = 0.0
    s_lo = _trap(s, 0.0, 0.0, 10.0, 75.0)
    s_hi = _trap(s, 10.0, 75.0, 255.0, 255.0)
    v_dk = _trap(v, 0.0, 0.0, 10.0, 75.0)
    v_md = _trap(v, 10.0, 75.0, 180.0, 220.0)
    v_br = _trap(v, 180.0, 220.0, 255.0, 255.0)
    out[0] += s_lo * v_dk + s_hi * v_dk
    out[1] += s_lo * v_md
    out[2] += s_lo * v_br
    chrom = s_hi * (v_md + v_br)
    if chrom > 0.0:
        s2_lo = _trap(s, 0.0, 0.0, 68.0, 188.0)
        s2_hi = _trap(s, 68.0, 188.0, 255.0, 255.0)
        v2_lo = _trap(v, 0.0, 0.0, 68.0, 188.0)
        v2_hi = _trap(v, 68.0, 188.0, 255.0, 255.0)
        for k in range(8):
            m = _trap(h, hue_sets[k, 0], hue_sets[k, 1], hue_sets[k, 2], hue_sets[k, 3])
            if m > 0.0:
                c = k if k < 7 else 0
                w = chrom * m
                out[3 + 3 * c] += w * v2_hi * s2_hi
                out[3 + 3 * c + 1] += w * v2_hi * s2_lo
                out[3 + 3 * c + 2] += w * v2_lo


@njit(cache=True, nogil=True)
def cedd(img, hue_sets, t0, t1, t2, t3):  # pragma: no cover - compiled
    """CEDD-style histogram (6 texture classes x 24 fuzzy colours = 144 bins) of a BGR image.

    The image is tiled with ``step_y x step_x`` blocks (about 40 x 40 blocks:
    ``step = floor(side / 40)`` made even, at least 2; blocks start at 0 and
    while ``y < H - step_y``, as in LIRE).  Per block: grey quadrant means
    ``a0 a1 / a2 a3`` (grey = 0.114 B + 0.587 G + 0.299 R) give the five
    MPEG-7 filter magnitudes (non-directional, horizontal, vertical, 45°, 135°);
    if the largest is below ``t0`` the block is "no edge" (class 0), otherwise
    it belongs to every class whose magnitude divided by the largest exceeds
    ``t1`` (non-directional, class 1), ``t2`` (horizontal 2, vertical 3) or
    ``t3`` (45° 4, 135° 5).  The block's mean colour (HSV, see
    :func:`cedd_colour24`) is added to the 24 bins of each of its classes.
    Returns raw float64 (144,) sums.
    """
    h, w = img.shape[0], img.shape[1]
    out = np.zeros(144, dtype=np.float64)
    col = np.zeros(24, dtype=np.float64)
    sx = w // 40
    sy = h // 40
    if sx % 2 == 1:
        sx -= 1
    if sy % 2 == 1:
        sy -= 1
    sx = max(sx, 2)
    sy = max(sy, 2)
    hx = sx // 2
    hy = sy // 2
    quarter = float(hx * hy)
    npix = float(sx * sy)
    sqrt2 = np.sqrt(2.0)
    classes = np.empty(6, dtype=np.int64)
    y = 0
    while y < h - sy:
        x = 0
        while x < w - sx:
            q = np.zeros(4)
            mb = 0.0
            mg = 0.0
            mr = 0.0
            for yy in range(sy):
                for xx in range(sx):
                    b = float(img[y + yy, x + xx, 0])
                    g = float(img[y + yy, x + xx, 1])
                    r = float(img[y + yy, x + xx, 2])
                    mb += b
                    mg += g
                    mr += r
                    quad = (2 if yy >= hy else 0) + (1 if xx >= hx else 0)
                    q[quad] += 0.114 * b + 0.587 * g + 0.299 * r
            a0 = q[0] / quarter
            a1 = q[1] / quarter
            a2 = q[2] / quarter
            a3 = q[3] / quarter
            m_nd = abs(2 * a0 - 2 * a1 - 2 * a2 + 2 * a3)
            m_h = abs(a0 + a1 - a2 - a3)
            m_v = abs(a0 - a1 + a2 - a3)
            m_45 = sqrt2 * abs(a0 - a3)
            m_135 = sqrt2 * abs(a1 - a2)
            mx = max(max(max(m_nd, m_h), max(m_v, m_45)), m_135)
            n = 0
            if mx < t0:
                classes[0] = 0
                n = 1
            else:
                if m_nd / mx > t1:
                    classes[n] = 1
                    n += 1
                if m_h / mx > t2:
                    classes[n] = 2
                    n += 1
                if m_v / mx > t2:
                    classes[n] = 3
                    n += 1
                if m_45 / mx > t3:
                    classes[n] = 4
                    n += 1
                if m_135 / mx > t3:
                    classes[n] = 5
                    n += 1
            # mean colour -> HSV (h in degrees, s and v in 0-255)
            r = mr / npix
            g = mg / npix
            b = mb / npix
            cmax = max(r, max(g, b))
            cmin = min(r, min(g, b))
            dlt = cmax - cmin
            if dlt <= 0.0:
                hue = 0.0
            elif cmax == r:
                hue = 60.0 * (g - b) / dlt
                if hue < 0.0:
                    hue += 360.0
            elif cmax == g:
                hue = 120.0 + 60.0 * (b - r) / dlt
            else:
                hue = 240.0 + 60.0 * (r - g) / dlt
            sat = 0.0 if cmax <= 0.0 else 255.0 * dlt / cmax
            cedd_colour24(hue, sat, cmax, hue_sets, col)
            for t in range(n):
                base = 24 * classes[t]
                for i in range(24):
                    out[base + i] += col[i]
            x += sx
        y += sy
    return out
