"""Descriptors and the registry, each checked against an independent oracle.

* hsv72: a slow pure-Python per-pixel reference of the definition (the
  original's per-pixel code: standard RGB->HSV formula on ``channel / 255.0``,
  Python floats; all 2**24 colours in test_hsv72_exhaustive.py);
* rgbN / hsv / spatial: ``np.histogramdd``;
* correlogram: a pure-Python loop over every pixel and every ring offset;
* lbp: a vectorised numpy LBP with the uniform mapping built from bit strings;
* ehd: a pure-Python per-block reference and a hand-computed step edge;
* combo: manual concatenation; describe_many: describe() one by one.
"""
from __future__ import annotations

import json
import math

import cv2
import numpy as np
import pytest

import fastimg
from fastimg.features import registry
from fastimg.errors import DescriptorError, ImageError
from fastimg.features.registry import Descriptor, describe, describe_many, descriptor_from_spec, descriptors, get_descriptor


def _rand(h, w, seed, levels=None):
    rng = np.random.default_rng(seed)
    if levels is None:
        return rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)
    return rng.choice(np.asarray(levels, np.uint8), size=(h, w, 3))


# ---------------------------------------------------------------------------
# hsv72: slow pure-Python reference of the definition
# ---------------------------------------------------------------------------
def ref_hsv72_bin(R: int, G: int, B: int) -> int:
    r, g, b = R / 255.0, G / 255.0, B / 255.0
    mx, mn = max(r, g, b), min(r, g, b)
    df = mx - mn
    if mx == mn:
        h = 0.0
    elif mx == r:
        h = (60 * ((g - b) / df) + 360) % 360
    elif mx == g:
        h = (60 * ((b - r) / df) + 120) % 360
    else:
        h = (60 * ((r - g) / df) + 240) % 360
    s = 0.0 if mx == 0 else df / mx
    v = mx
    if h <= 20 or h > 315:  # the original wrote `and`: never true (reds went to bin 7)
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


def ref_hsv72(bgr: np.ndarray) -> np.ndarray:
    hist = np.zeros(72)
    for B, G, R in bgr.reshape(-1, 3).tolist():
        hist[ref_hsv72_bin(R, G, B)] += 1
    return hist / hist.sum()


BOUNDARY_LEVELS = [0, 1, 2, 3, 4, 5, 7, 8, 10, 50, 51, 52, 85, 170, 178, 179, 180, 191, 204, 254, 255]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_hsv72_matches_python_reference_on_random_images(seed):
    img = _rand(13, 17, seed)
    np.testing.assert_array_equal(get_descriptor("hsv72").compute(img), ref_hsv72(img).astype(np.float32))


def test_hsv72_per_pixel_bins_on_threshold_colours():
    """Every combination of levels where hue/saturation/value thresholds are hit exactly
    (V = 51/255 = 0.2, S = 0.2 / 0.7, hue = 20, 40, 75, 315 degrees ...)."""
    from fastimg.features import _kernels

    lv = BOUNDARY_LEVELS
    img = np.array([[b, g, r] for b in lv for g in lv for r in lv], dtype=np.uint8).reshape(len(lv) ** 2, len(lv), 3)
    got = _kernels.hsv72_index(img)
    want = np.array([ref_hsv72_bin(int(r), int(g), int(b)) for b, g, r in img.reshape(-1, 3)]).reshape(got.shape)
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(get_descriptor("hsv72").compute(img), ref_hsv72(img).astype(np.float32))


def test_hsv72_matches_reference_on_sampled_colours():
    from fastimg.features import _kernels

    rng = np.random.default_rng(123)
    img = rng.integers(0, 256, size=(50, 80, 3), dtype=np.uint8)  # 4000 random colours
    got = _kernels.hsv72_index(img)
    want = [[ref_hsv72_bin(int(r), int(g), int(b)) for b, g, r in row] for row in img]
    np.testing.assert_array_equal(got, want)


def test_hsv72_real_photo_pixels(corel_dir):
    img = cv2.imread(str(sorted((corel_dir / "flowers").glob("*.jpg"))[0]))
    crop = np.ascontiguousarray(img[100:130, 150:190])
    np.testing.assert_array_equal(get_descriptor("hsv72").compute(crop), ref_hsv72(crop).astype(np.float32))


@pytest.mark.parametrize("bgr,index", [
    ((0, 0, 255), 8),        # pure red: hue bin 0 (the original's bug put it in bin 7 -> 71), s=1, v=1
    ((0, 85, 255), 8),       # hue exactly 20 degrees: still red
    ((0, 86, 255), 17),      # just above 20 degrees: bin 1
    ((3, 0, 4), 7 * 9 + 2 * 3 + 0),   # hue exactly 315 (r=4, g=0, b=3): bin 7, s=1, v=4/255
    ((5, 0, 8), 0 * 9 + 2 * 3 + 0),   # hue 322.5: red again
    ((51, 51, 51), 0),       # grey, v = 0.2 exactly: value bin 0
    ((52, 52, 52), 1),       # v just above 0.2: value bin 1
    ((204, 204, 255), 2),     # s = 51/255 = 0.2 (0.19999999999999996 in floats): sat bin 0; hue 0, v = 1
    ((28, 28, 35), 3),        # s = 7/35 = 0.2 (0.2000000000000001 in floats): sat bin 1; v = 35/255 -> 0*9 + 1*3 + 0
    ((30, 40, 100), 7),       # s = 70/100 = 0.7 (0.7000000000000001): the original's top bin; hue 8.6, v = 0.39
    ((0, 0, 0), 0),
    ((255, 255, 255), 2),
])
def test_hsv72_hand_computed_bins(bgr, index):
    img = np.array([[bgr]], dtype=np.uint8)
    v = get_descriptor("hsv72").compute(img)
    assert v[index] == 1.0 and v.sum() == 1.0


# ---------------------------------------------------------------------------
# rgbN, hsv, spatial: np.histogramdd
# ---------------------------------------------------------------------------
def _edges(n, hi):
    return [hi * i / n for i in range(n + 1)]


@pytest.mark.parametrize("name,levels", [("rgb8", 2), ("rgb27", 3), ("rgb64", 4), ("rgb512", 8), ("rgb", 8)])
def test_rgb_matches_histogramdd(name, levels):
    img = _rand(21, 19, levels)
    rgb = img[:, :, ::-1].reshape(-1, 3).astype(np.float64)
    ref, _ = np.histogramdd(rgb, bins=[_edges(levels, 256)] * 3)
    ref = (ref / ref.sum()).reshape(-1)
    d = get_descriptor(name)
    assert d.dim == levels ** 3 and d.name == f"rgb{levels ** 3}"
    np.testing.assert_allclose(d.compute(img), ref, rtol=0, atol=1e-7)


@pytest.mark.parametrize("bins", [(8, 12, 3), (18, 3, 3), (4, 4, 4)])
def test_hsv_matches_histogramdd(bins):
    img = _rand(31, 23, 7)
    hsv = cv2.cvtColor(img, cv2.COLOR_BGR2HSV).reshape(-1, 3).astype(np.float64)
    ref, _ = np.histogramdd(hsv, bins=[_edges(bins[0], 180), _edges(bins[1], 256), _edges(bins[2], 256)])
    ref = (ref / ref.sum()).reshape(-1)
    d = get_descriptor("hsv", bins=list(bins))
    assert d.dim == int(np.prod(bins))
    np.testing.assert_allclose(d.compute(img), ref, rtol=0, atol=1e-7)


def test_spatial_rgb_matches_regions_by_hand():
    img = _rand(8, 12, 11)
    # 2x2 grid: rows [0,4) [4,8), cols [0,6) [6,12); centre rows [2,6), cols [3,9)
    regions = [(0, 4, 0, 6), (0, 4, 6, 12), (4, 8, 0, 6), (4, 8, 6, 12), (2, 6, 3, 9)]
    parts = []
    for r0, r1, c0, c1 in regions:
        px = img[r0:r1, c0:c1, ::-1].reshape(-1, 3).astype(float)
        h, _ = np.histogramdd(px, bins=[_edges(3, 256)] * 3)
        parts.append(h.reshape(-1) / h.sum())
    ref = np.concatenate(parts) / 5
    d = get_descriptor("spatial-rgb27")
    assert d.dim == 27 * 5 and d.params == {"grid": [2, 2], "center": True}
    np.testing.assert_allclose(d.compute(img), ref, rtol=0, atol=1e-7)
    # 3 x 1 grid without centre: three horizontal bands of rows [0,2) [2,5) [5,8)
    d2 = get_descriptor("spatial-rgb27", grid=[3, 1], center=False)
    bands = []
    for r0, r1 in [(0, 2), (2, 5), (5, 8)]:
        h, _ = np.histogramdd(img[r0:r1, :, ::-1].reshape(-1, 3).astype(float), bins=[_edges(3, 256)] * 3)
        bands.append(h.reshape(-1) / h.sum())
    np.testing.assert_allclose(d2.compute(img), np.concatenate(bands) / 3, rtol=0, atol=1e-7)


def test_spatial_tiny_image_has_empty_regions_as_zeros():
    img = np.array([[[0, 0, 255]]], dtype=np.uint8)  # 1x1: only the bottom-right cell is non-empty
    v = get_descriptor("spatial-hsv72").compute(img)
    assert v.shape == (360,)
    assert np.isfinite(v).all()
    nonzero = np.flatnonzero(v)
    assert list(nonzero) == [3 * 72 + 8]  # cell (1,1), pure red bin 8; centre [0,0)x[0,0) empty


# ---------------------------------------------------------------------------
# correlogram: pure-Python loop over all ring offsets
# ---------------------------------------------------------------------------
def ref_correlogram(idx: np.ndarray, ncolors: int, distances) -> np.ndarray:
    H, W = idx.shape
    out = np.zeros((ncolors, len(distances)))
    for k, d in enumerate(distances):
        same = np.zeros(ncolors)
        tot = np.zeros(ncolors)
        for i in range(H):
            for j in range(W):
                c = idx[i, j]
                for di in range(-d, d + 1):
                    for dj in range(-d, d + 1):
                        if max(abs(di), abs(dj)) != d:
                            continue
                        ni, nj = i + di, j + dj
                        if 0 <= ni < H and 0 <= nj < W:
                            tot[c] += 1
                            same[c] += idx[ni, nj] == c
        out[:, k] = np.where(tot > 0, same / np.maximum(tot, 1), 0)
    return out.reshape(-1)


@pytest.mark.parametrize("seed,shape", [(0, (9, 13)), (1, (16, 7))])
def test_correlogram_rgb8_matches_python_loop(seed, shape):
    img = _rand(*shape, seed, levels=[0, 100, 130, 255])
    idx = (img[:, :, 2] >= 128) * 4 + (img[:, :, 1] >= 128) * 2 + (img[:, :, 0] >= 128)
    d = get_descriptor("correlogram", colors="rgb8", distances=[1, 2, 3, 5])
    assert d.dim == 8 * 4
    np.testing.assert_allclose(d.compute(img), ref_correlogram(idx, 8, [1, 2, 3, 5]), rtol=1e-6, atol=1e-7)


def test_correlogram_hsv72_matches_python_loop():
    img = _rand(10, 11, 5, levels=[0, 60, 200, 255])
    idx = np.array([[ref_hsv72_bin(int(p[2]), int(p[1]), int(p[0])) for p in row] for row in img])
    d = get_descriptor("correlogram", distances=[1, 3])
    np.testing.assert_allclose(d.compute(img), ref_correlogram(idx, 72, [1, 3]), rtol=1e-6, atol=1e-7)


def test_correlogram_side_shrinks_first():
    img = _rand(40, 30, 3, levels=[0, 90, 200, 255])
    small = cv2.resize(img, (15, 20), interpolation=cv2.INTER_AREA)
    idx = (small[:, :, 2] >= 128) * 4 + (small[:, :, 1] >= 128) * 2 + (small[:, :, 0] >= 128)
    d = get_descriptor("correlogram", colors="rgb8", distances=[1, 2], side=20)
    np.testing.assert_allclose(d.compute(img), ref_correlogram(idx, 8, [1, 2]), rtol=1e-6, atol=1e-7)
    with pytest.raises(DescriptorError, match="side"):
        get_descriptor("correlogram", side=4)


def test_correlogram_hand_computed():
    # uniform image: a present colour always sees itself
    v = get_descriptor("correlogram", colors="rgb8", distances=[1, 2]).compute(np.full((6, 6, 3), 255, np.uint8))
    assert v.reshape(8, 2)[7].tolist() == [1.0, 1.0] and v.reshape(8, 2)[:7].sum() == 0
    # vertical stripes of width 1 (black / white) on a 3 x 4 image, distance 1:
    # every pixel's ring neighbours in the same column have its colour, the others not.
    img = np.zeros((3, 4, 3), np.uint8)
    img[:, 1::2] = 255
    v = get_descriptor("correlogram", colors="rgb8", distances=[1]).compute(img).reshape(8)
    # black pixels: columns 0 and 2.  Same-colour neighbours: vertical ones only.
    # col 0: rows 0,1,2 have 1,2,1 vertical neighbours; ring sizes 3,5,3 -> same 4 / total 11;
    # col 2: 1,2,1 same; ring sizes 5,8,5 -> 4 / 18.  Black: 8 / 29.
    assert v[0] == pytest.approx(8 / 29)
    # white: col 1 like col 2 (4/18), col 3 like col 0 (4/11) -> 8 / 29
    assert v[7] == pytest.approx(8 / 29)


# ---------------------------------------------------------------------------
# lbp: vectorised numpy oracle
# ---------------------------------------------------------------------------
def ref_lbp_hist(grey: np.ndarray, rotation_invariant: bool) -> np.ndarray:
    g = grey.astype(int)
    c = g[1:-1, 1:-1]
    H, W = g.shape
    offs = [(0, 1), (-1, 1), (-1, 0), (-1, -1), (0, -1), (1, -1), (1, 0), (1, 1)]
    code = np.zeros_like(c)
    for p, (di, dj) in enumerate(offs):
        code |= (g[1 + di:H - 1 + di, 1 + dj:W - 1 + dj] >= c).astype(int) << p

    def transitions(x):
        s = format(x, "08b")
        return sum(s[i] != s[(i + 1) % 8] for i in range(8))

    uniform = [x for x in range(256) if transitions(x) <= 2]
    if rotation_invariant:
        table = {x: (bin(x).count("1") if x in uniform else 9) for x in range(256)}
        nb = 10
    else:
        table = {x: (uniform.index(x) if x in uniform else 58) for x in range(256)}
        nb = 59
    h = np.bincount([table[x] for x in code.ravel()], minlength=nb).astype(float)
    return h / h.sum()


def test_uniform_lbp_table_has_58_uniform_codes():
    from fastimg.features.classic import uniform_lbp_table

    t = uniform_lbp_table(False)
    assert sorted(set(t.tolist())) == list(range(59))
    assert (t < 58).sum() == 58  # P (P - 1) + 2 uniform patterns for P = 8
    assert uniform_lbp_table(True)[0b00011100] == 3 and uniform_lbp_table(True)[0b01010101] == 9


@pytest.mark.parametrize("mapping", ["u2", "riu2"])
@pytest.mark.parametrize("seed", [0, 1])
def test_lbp_matches_numpy(mapping, seed):
    img = _rand(17, 23, seed, levels=[0, 50, 51, 52, 200])  # many ties: >= matters
    grey = cv2.cvtColor(img, cv2.COLOR_BGR2GRAY)
    d = get_descriptor("lbp", mapping=mapping)
    np.testing.assert_allclose(d.compute(img), ref_lbp_hist(grey, mapping == "riu2"), rtol=0, atol=1e-7)


def test_lbp_constant_image_hand_computed():
    img = np.full((5, 5, 3), 77, np.uint8)
    # all neighbours >= centre: code 255, uniform with 8 ones
    assert get_descriptor("lbp").compute(img)[57] == 1.0  # 255 is the last of the 58 uniform codes
    assert get_descriptor("lbp", mapping="riu2").compute(img)[8] == 1.0
    assert get_descriptor("lbp").compute(np.zeros((2, 2, 3), np.uint8)).sum() == 0  # no interior pixel


# ---------------------------------------------------------------------------
# ehd: pure-Python reference and a hand-computed edge
# ---------------------------------------------------------------------------
def ref_ehd(grey: np.ndarray, block: int, threshold: float) -> np.ndarray:
    H, W = grey.shape
    g = grey.astype(float)
    out = np.zeros(80)
    half = block // 2
    for si in range(4):
        for sj in range(4):
            r0, r1 = si * H // 4, (si + 1) * H // 4
            c0, c1 = sj * W // 4, (sj + 1) * W // 4
            counts = np.zeros(5)
            n = 0
            for r in range(r0, r1 - block + 1, block):
                for c in range(c0, c1 - block + 1, block):
                    a0 = g[r:r + half, c:c + half].mean()
                    a1 = g[r:r + half, c + half:c + block].mean()
                    a2 = g[r + half:r + block, c:c + half].mean()
                    a3 = g[r + half:r + block, c + half:c + block].mean()
                    resp = [abs(a0 - a1 + a2 - a3), abs(a0 + a1 - a2 - a3), math.sqrt(2) * abs(a0 - a3),
                            math.sqrt(2) * abs(a1 - a2), 2 * abs(a0 - a1 - a2 + a3)]
                    k = int(np.argmax(resp))
                    if resp[k] > threshold:
                        counts[k] += 1
                    n += 1
            if n:
                out[(si * 4 + sj) * 5:(si * 4 + sj) * 5 + 5] = counts / n
    return out


@pytest.mark.parametrize("seed,shape,blocks", [(0, (64, 48), 100), (1, (57, 83), 60)])
def test_ehd_matches_python_reference(seed, shape, blocks):
    rng = np.random.default_rng(seed)
    img = cv2.resize(rng.integers(0, 256, (shape[0] // 3, shape[1] // 3, 3), dtype=np.uint8), shape[::-1],
                     interpolation=cv2.INTER_NEAREST)
    grey = cv2.cvtColor(img, cv2.COLOR_BGR2GRAY)
    from fastimg.features.classic import ehd_block_size

    block = ehd_block_size(*shape, blocks)
    assert block == max(2, int(math.sqrt(shape[0] * shape[1] / blocks) / 2) * 2)
    v = get_descriptor("ehd", blocks=blocks).compute(img)
    np.testing.assert_allclose(v, ref_ehd(grey, block, 11.0), rtol=1e-6, atol=1e-7)
    assert v.max() > 0


def test_ehd_vertical_step_edge_hand_computed():
    img = np.zeros((40, 40, 3), np.uint8)
    img[:, 22:] = 255
    # block = floor(sqrt(1600 / 100) / 2) * 2 = 4; sub-images are 10 x 10 -> 2 x 2 blocks each.
    # Column 22 cuts the blocks at columns 20-23 (sub-image column 2): vertical response 510.
    v = get_descriptor("ehd", blocks=100).compute(img).reshape(4, 4, 5)
    expected = np.zeros((4, 4, 5))
    expected[:, 2, 0] = 0.5  # 2 of the 4 blocks of each sub-image in column 2 are vertical edges
    np.testing.assert_allclose(v, expected, atol=1e-7)


# ---------------------------------------------------------------------------
# combo
# ---------------------------------------------------------------------------
def test_combo_is_weighted_concatenation():
    img = _rand(20, 30, 4)
    parts = [{"name": "rgb64", "weight": 3.0}, {"name": "correlogram", "params": {"colors": "rgb8"}, "weight": 1.0}]
    d = get_descriptor("combo", parts=parts)
    a = get_descriptor("rgb64").compute(img).astype(np.float64)
    b = get_descriptor("correlogram", colors="rgb8").compute(img).astype(np.float64)
    ref = np.concatenate([a / a.sum() * 0.75, b / b.sum() * 0.25])
    assert d.dim == 64 + 32
    np.testing.assert_allclose(d.compute(img), ref, rtol=1e-6, atol=1e-7)
    assert d.compute(img).sum() == pytest.approx(1.0, abs=1e-5)


@pytest.mark.parametrize("name,parts", [
    ("classic", [("spatial-hsv72", {}, 1.0), ("correlogram", {"distances": [1, 2, 3, 4], "side": 256}, 1.0),
                 ("lbp", {}, 1.5)]),
    ("classic-fast", [("spatial-hsv72", {}, 1.0), ("lbp", {}, 1.5)]),
])
def test_classic_presets_are_weighted_concatenations(name, parts):
    img = _rand(40, 50, 9)
    total = sum(w for _, _, w in parts)
    ref = []
    for pname, params, w in parts:
        v = get_descriptor(pname, **params).compute(img).astype(np.float64)
        ref.append(v / v.sum() * w / total)
    d = get_descriptor(name)
    assert d.default_metric == "l1" and d.dim == sum(len(r) for r in ref)
    np.testing.assert_allclose(d.compute(img), np.concatenate(ref), rtol=1e-6, atol=1e-8)


# ---------------------------------------------------------------------------
# registry API
# ---------------------------------------------------------------------------
def test_descriptors_listing_is_consistent():
    rows = descriptors()
    names = {r["name"] for r in rows}
    assert {"hsv72", "rgb512", "hsv", "spatial-hsv", "correlogram", "lbp", "ehd", "cedd", "classic", "classic-fast", "combo"} <= names
    from fastimg.metrics import metric_names

    img = _rand(30, 40, 1)
    for r in rows:
        if r["dim"] is None:
            continue
        d = get_descriptor(r["name"], **r["params"])
        assert d.dim == r["dim"] and d.default_metric == r["default_metric"] and r["doc"]
        assert r["default_metric"] in metric_names()
        v = d.compute(img)
        assert v.shape == (d.dim,) and v.dtype == np.float32 and np.isfinite(v).all() and (v >= 0).all()


@pytest.mark.parametrize("name,params", [("hsv72", {}), ("hsv", {"bins": (4, 6, 2)}), ("spatial-hsv", {"grid": (3, 2)}),
                                         ("correlogram", {"colors": "rgb27", "distances": (1, 4)}),
                                         ("combo", {"parts": ["hsv72", {"name": "lbp", "weight": 0.5}]}),
                                         ("ehd", {"threshold": 5}), ("hsv72", {"max_side": None})])
def test_spec_round_trip(name, params):
    d = get_descriptor(name, **params)
    spec = json.loads(json.dumps(d.spec()))
    d2 = descriptor_from_spec(spec)
    assert d2 == d and d2.spec() == d.spec() and d2.max_side == d.max_side
    img = _rand(25, 35, 2)
    np.testing.assert_array_equal(d2.compute(img), d.compute(img))
    assert get_descriptor(spec) == d


def test_spec_mismatch_is_refused():
    spec = get_descriptor("hsv72").spec()
    with pytest.raises(DescriptorError, match="version"):
        descriptor_from_spec({**spec, "version": spec["version"] + 1})
    with pytest.raises(DescriptorError, match="dim"):
        descriptor_from_spec({**spec, "dim": 71})
    with pytest.raises(DescriptorError, match="name"):
        descriptor_from_spec({"params": {}})


@pytest.mark.parametrize("name,params,match", [
    ("nope", {}, "unknown descriptor 'nope'; known: .*hsv72"),
    ("rgb100", {}, "cube"),
    ("rgb", {"levels": 4}, "takes no parameters"),
    ("hsv", {"bins": [8, 12]}, "bins must be 3 ints"),
    ("hsv", {"bins": [8, 0, 3]}, r"\[1, 256\]"),
    ("hsv", {"colour": 3}, "invalid parameters"),
    ("lbp", {"mapping": "ri"}, "mapping"),
    ("correlogram", {"colors": "lab"}, "colors"),
    ("correlogram", {"distances": [1, 1]}, "distinct"),
    ("combo", {}, "parts"),
    ("combo", {"parts": [{"name": "hsv72", "weight": -1}]}, "weight"),
    ("spatial-", {}, "base"),
    ("spatial-hsv72", {"grid": [0, 2]}, "grid"),
    ("hsv72", {"max_side": 2}, "max_side"),
])
def test_bad_names_and_params(name, params, match):
    with pytest.raises(DescriptorError, match=match):
        get_descriptor(name, **params)


def test_unknown_name_lists_the_deep_families_before_they_are_loaded():
    import subprocess
    import sys

    code = ("from fastimg.features.registry import get_descriptor\n"
            "try:\n    get_descriptor('bogus')\nexcept Exception as e:\n    print(e)\n"
            "import sys; print('fastimg.features.deep' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120).stdout
    message, loaded = out.strip().splitlines()
    assert loaded == "False"  # the families are named without importing the deep extra
    named = message.split("known: ", 1)[1].split(", ")
    assert {"hsv72", "cnn-*", "efficientnet-*", "mobilenet-*"} <= set(named)


def test_names_are_case_insensitive_and_cached():
    assert get_descriptor("HSV72") is get_descriptor("hsv72")
    assert get_descriptor("hsv", bins=(8, 12, 3)) is get_descriptor("hsv", bins=[8, 12, 3])


@pytest.fixture
def scratch_registry():
    descriptors()  # the built-ins and plug-ins loaded first, so the restored tables keep them
    before_exact, before_prefix = dict(registry._EXACT), dict(registry._PREFIX)
    yield
    registry._EXACT.clear()
    registry._EXACT.update(before_exact)
    registry._PREFIX.clear()
    registry._PREFIX.update(before_prefix)
    registry._CACHE.clear()


def test_register_prefix_factory_receives_full_name_and_params(scratch_registry):
    calls = []

    def factory(name, **params):
        calls.append((name, params))
        return Descriptor(name, 3, lambda bgr: bgr.reshape(-1, 3).mean(axis=0), default_metric="l2",
                          params=params)

    registry.register("zz-*", factory)
    d = get_descriptor("zz-mean", scale=2)
    assert calls == [("zz-mean", {"scale": 2})]
    img = _rand(4, 5, 0)
    np.testing.assert_allclose(d.compute(img), img.reshape(-1, 3).mean(axis=0), rtol=1e-6)
    assert descriptor_from_spec(d.spec()).params == {"scale": 2}
    with pytest.raises(DescriptorError, match="already registered"):
        registry.register("zz-*", factory)
    registry.register("zz-exact", lambda: Descriptor("zz-exact", 1, lambda b: [1.0]))
    assert get_descriptor("zz-exact").compute(img).tolist() == [1.0]
    with pytest.raises(DescriptorError, match="returned"):
        registry.register("zz-bad", lambda: 42)
        get_descriptor("zz-bad")


def test_lazy_plugin_module_missing_gives_clear_error(monkeypatch):
    monkeypatch.setitem(registry._LAZY_PREFIXES, "zzq", "fastimg._no_such_plugin")
    with pytest.raises(DescriptorError, match="needs fastimg._no_such_plugin, which is not available"):
        get_descriptor("zzq-net")


def test_cnn_names_are_routed_to_fastimg_deep():
    import importlib.util
    import sys

    with pytest.raises(DescriptorError) as info:  # never an ImportError or a KeyError
        get_descriptor("cnn-surely-not-a-model-name")
    if importlib.util.find_spec("fastimg.features.deep") is None:  # pragma: no cover - plug-in not installed
        assert "needs fastimg.features.deep" in str(info.value)
    else:
        assert "fastimg.features.deep" in sys.modules  # loaded on demand by the cnn prefix
        assert "cnn" in str(info.value)


def test_compute_rejects_bad_arrays():
    d = get_descriptor("hsv72")
    for bad in (np.zeros((4, 4), np.uint8), np.zeros((4, 4, 3), np.float32), [[1, 2, 3]], np.zeros((0, 3, 3), np.uint8)):
        with pytest.raises(ImageError, match="invalid array|empty"):
            d.compute(bad)


# ---------------------------------------------------------------------------
# describe / describe_many
# ---------------------------------------------------------------------------
def _jpeg(img):
    ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, 92])
    assert ok
    return buf.tobytes()


def test_describe_sources_agree(tmp_path):
    img = cv2.GaussianBlur(_rand(60, 80, 3), (0, 0), 2)
    data = _jpeg(img)
    (tmp_path / "a.jpg").write_bytes(data)
    decoded = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    ref = get_descriptor("spatial-hsv").compute(decoded)
    for src in (tmp_path / "a.jpg", str(tmp_path / "a.jpg"), data, decoded):
        np.testing.assert_array_equal(describe(src, "spatial-hsv"), ref)
    assert fastimg.describe is describe


def test_describe_applies_working_size():
    big = cv2.resize(cv2.GaussianBlur(_rand(30, 40, 8), (0, 0), 1), (1200, 900), interpolation=cv2.INTER_LINEAR)
    small = cv2.resize(big, (512, 384), interpolation=cv2.INTER_AREA)
    np.testing.assert_array_equal(describe(big, "lbp"), get_descriptor("lbp", max_side=None).compute(small))
    np.testing.assert_array_equal(get_descriptor("lbp").compute(big), describe(big, "lbp"))
    full = get_descriptor("lbp", max_side=None).compute(big)
    assert not np.array_equal(full, describe(big, "lbp"))  # LBP depends on scale: the option matters


@pytest.fixture
def mixed_inputs(tmp_path):
    good = []
    for i in range(7):
        p = tmp_path / f"img{i}.jpg"
        p.write_bytes(_jpeg(cv2.GaussianBlur(_rand(40 + i, 50, i), (0, 0), 1.5)))
        good.append(p)
    (tmp_path / "text.jpg").write_text("not an image")
    cut = _jpeg(_rand(64, 64, 99))
    (tmp_path / "cut.jpg").write_bytes(cut[: len(cut) // 3])
    arr = _rand(20, 20, 42)
    items = [good[0], tmp_path / "missing.jpg", good[1], good[2], tmp_path / "text.jpg", good[3],
             good[4].read_bytes(), tmp_path / "cut.jpg", good[5], arr, good[6]]
    bad = {1: "not found", 4: "not an image", 7: "truncated"}
    return items, bad


@pytest.mark.parametrize("workers", [1, 2, 3])
def test_describe_many_matches_describe_and_collects_errors(mixed_inputs, workers):
    items, bad = mixed_inputs
    seen = []
    mat, errors = describe_many(items, "hsv72", workers=workers, progress=lambda d, t: seen.append((d, t)))
    assert mat.shape == (len(items), 72) and mat.dtype == np.float32
    assert {i: e.reason for i, e in errors.items()} == bad
    for i, src in enumerate(items):
        if i in bad:
            assert np.isnan(mat[i]).all()
            assert isinstance(errors[i], ImageError)
        else:
            np.testing.assert_array_equal(mat[i], describe(src, "hsv72"))
    assert str(items[1]) in str(errors[1])
    assert seen[-1] == (len(items), len(items)) and [d for d, _ in seen] == sorted(d for d, _ in seen)


def test_describe_many_progress_bar_and_params(mixed_inputs, capsys):
    items, bad = mixed_inputs
    mat, errors = describe_many(items, "hsv", workers=2, progress=True, bins=[4, 4, 4])
    assert mat.shape == (len(items), 64) and set(errors) == set(bad)
    assert "describe hsv" in capsys.readouterr().err


def test_describe_many_edge_cases():
    mat, errors = describe_many([], "hsv72")
    assert mat.shape == (0, 72) and errors == {}
    with pytest.raises(ValueError, match="workers"):
        describe_many([np.zeros((2, 2, 3), np.uint8)], workers=0)
    with pytest.raises(DescriptorError):
        describe_many([np.zeros((2, 2, 3), np.uint8)], "nope")


def test_describe_many_uses_compute_batch_and_isolates_failures(scratch_registry):
    batches = []

    def one(bgr):
        if bgr[0, 0, 0] == 13:
            raise RuntimeError("poisoned pixel")
        return bgr.reshape(-1, 3).mean(axis=0)

    def many(imgs):
        batches.append(len(imgs))
        return np.stack([one(im) for im in imgs])

    registry.register("zz-batch", lambda: Descriptor("zz-batch", 3, one, compute_batch=many, batch_size=4,
                                                     default_metric="l2"))
    imgs = [np.full((3, 3, 3), v, np.uint8) for v in (1, 2, 3, 4, 5, 13, 7)] + [np.zeros((2, 2), np.float32)]
    mat, errors = describe_many(imgs, "zz-batch", workers=2)
    # batch 1: images 0-3; batch 2: images 4-6 (7 fails to load), 13 poisons it: one by one after
    assert batches == [4, 3]
    np.testing.assert_allclose(mat[:5, 0], [1, 2, 3, 4, 5])
    assert mat[6, 0] == 7
    assert set(errors) == {5, 7}
    assert errors[5].reason == "failed" and "poisoned" in str(errors[5])
    assert errors[7].reason == "invalid array"


def test_describe_many_on_corel_matches_describe(corel_dir):
    paths = sorted(corel_dir.glob("*/*.jpg"))[::97][:8]
    mat, errors = describe_many(paths, "correlogram", workers=2)
    assert errors == {}
    for i in (0, len(paths) - 1):
        np.testing.assert_array_equal(mat[i], describe(paths[i], "correlogram"))


# ---------------------------------------------------------------------------
# cedd: pure-Python per-block reference (colorsys for HSV) and hand-computed cases
# ---------------------------------------------------------------------------
def _trap(x, a, b, c, d):
    if x < a or x > d:
        return 0.0
    if x < b:
        return (x - a) / (b - a)
    if x <= c or d == c:
        return 1.0
    return (d - x) / (d - c)


HUE_SETS = [(0, 0, 5, 10), (5, 10, 35, 50), (35, 50, 70, 85), (70, 85, 150, 165), (150, 165, 195, 205),
            (195, 205, 265, 280), (265, 280, 315, 330), (315, 330, 360, 360)]


def ref_colour24(h, s, v):
    out = [0.0] * 24
    s_lo, s_hi = _trap(s, 0, 0, 10, 75), _trap(s, 10, 75, 255, 255)
    v_dk, v_md, v_br = _trap(v, 0, 0, 10, 75), _trap(v, 10, 75, 180, 220), _trap(v, 180, 220, 255, 255)
    out[0] = v_dk * (s_lo + s_hi)
    out[1] = s_lo * v_md
    out[2] = s_lo * v_br
    for k, hs in enumerate(HUE_SETS):
        w = s_hi * (v_md + v_br) * _trap(h, *hs)
        c = k % 7
        out[3 + 3 * c] += w * _trap(v, 68, 188, 255, 255) * _trap(s, 68, 188, 255, 255)
        out[4 + 3 * c] += w * _trap(v, 68, 188, 255, 255) * _trap(s, 0, 0, 68, 188)
        out[5 + 3 * c] += w * _trap(v, 0, 0, 68, 188)
    return out


def ref_cedd(img, t0=14.0, t1=0.68, t2=0.98, t3=0.98):
    import colorsys

    H, W = img.shape[:2]
    sx, sy = max(2, W // 40 - (W // 40) % 2), max(2, H // 40 - (H // 40) % 2)
    f = img.astype(np.float64)
    grey = 0.114 * f[..., 0] + 0.587 * f[..., 1] + 0.299 * f[..., 2]
    out = np.zeros(144)
    for y in range(0, H - sy, sy):
        for x in range(0, W - sx, sx):
            g = grey[y:y + sy, x:x + sx]
            a0, a1 = g[:sy // 2, :sx // 2].mean(), g[:sy // 2, sx // 2:].mean()
            a2, a3 = g[sy // 2:, :sx // 2].mean(), g[sy // 2:, sx // 2:].mean()
            m = [abs(2 * (a0 - a1 - a2 + a3)), abs(a0 + a1 - a2 - a3), abs(a0 - a1 + a2 - a3),
                 math.sqrt(2) * abs(a0 - a3), math.sqrt(2) * abs(a1 - a2)]
            mx = max(m)
            if mx < t0:
                classes = [0]
            else:
                classes = [k + 1 for k, th in enumerate((t1, t2, t2, t3, t3)) if m[k] / mx > th]
            b, gr, r = f[y:y + sy, x:x + sx].reshape(-1, 3).mean(axis=0)
            hh, ss, vv = colorsys.rgb_to_hsv(r / 255, gr / 255, b / 255)
            col = ref_colour24(hh * 360, ss * 255, vv * 255)
            for c in classes:
                out[24 * c:24 * c + 24] += col
    return out / out.sum()


@pytest.mark.parametrize("seed,shape", [(0, (90, 130)), (1, (161, 83))])
def test_cedd_matches_python_reference(seed, shape):
    rng = np.random.default_rng(seed)
    img = cv2.resize(rng.integers(0, 256, (shape[0] // 7, shape[1] // 7, 3), dtype=np.uint8), shape[::-1],
                     interpolation=cv2.INTER_LINEAR)
    v = get_descriptor("cedd").compute(img)
    ref = ref_cedd(img)
    np.testing.assert_allclose(v, ref, rtol=1e-5, atol=1e-6)
    assert (ref.reshape(6, 24).sum(axis=1) > 0).sum() >= 3  # several texture classes exercised


def test_cedd_colour_memberships_sum_to_one():
    from fastimg.features import _kernels

    out = np.zeros(24)
    rng = np.random.default_rng(0)
    for h, s, v in rng.uniform([0, 0, 0], [360, 255, 255], size=(200, 3)):
        _kernels.cedd_colour24(h, s, v, _kernels._CEDD_HUE, out)
        assert out.sum() == pytest.approx(1.0)
        np.testing.assert_allclose(out, ref_colour24(h, s, v), atol=1e-12)


def test_cedd_hand_computed():
    d = get_descriptor("cedd")
    assert d.dim == 144
    red = d.compute(np.full((100, 100, 3), (0, 0, 255), np.uint8))
    assert red[3] == 1.0  # no edge (class 0), vivid red (bin 3)
    grey = d.compute(np.full((100, 100, 3), 128, np.uint8))
    assert grey[1] == 1.0  # no edge, grey
    # 80 x 80, black up to column 40, white from 41: 2 x 2 blocks, 39 x 39 of them;
    # block column x = 40 straddles the edge: vertical (class 3), mean grey 127.5 (bin 1)
    img = np.zeros((80, 80, 3), np.uint8)
    img[:, 41:] = 255
    v = d.compute(img)
    expected = np.zeros(144)
    expected[0] = 20 * 39 / 1521   # black blocks, x = 0..38
    expected[2] = 18 * 39 / 1521   # white blocks, x = 42..76
    expected[3 * 24 + 1] = 39 / 1521
    np.testing.assert_allclose(v, expected, atol=1e-7)


# ---------------------------------------------------------------------------
# single-image path (describe): NumPy twins of the Numba kernels, bit for bit
# ---------------------------------------------------------------------------
SINGLE_PATH = ["hsv72", "rgb8", "rgb64", "rgb512", "rgb4096", "spatial-hsv72", "spatial-rgb64", "lbp", "spatial-lbp",
               "classic-fast"]


def test_hsv72_single_path_bins_equal_kernel_on_every_colour():
    """All 2**24 BGR colours: the NumPy bin decision equals the Numba kernel's (itself
    checked against the pure-Python definition above), so the counts are equal for any image."""
    from fastimg.features import classic, _kernels

    lo = np.arange(1 << 16, dtype=np.uint32)
    for r in range(256):
        img = np.empty((256, 256, 3), dtype=np.uint8)
        img[..., 0] = (lo & 255).reshape(256, 256)       # b
        img[..., 1] = (lo >> 8).reshape(256, 256)        # g
        img[..., 2] = r
        got = classic.hsv72_index_np(img)
        want = _kernels.hsv72_index(img)
        if not np.array_equal(got, want):
            bad = np.argwhere(got != want)[0]
            pytest.fail(f"bgr {tuple(img[tuple(bad)])}: numpy bin {got[tuple(bad)]}, kernel {want[tuple(bad)]}")


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_hsv72_single_path_matches_python_reference(seed):
    img = _rand(13, 17, seed)
    np.testing.assert_array_equal(get_descriptor("hsv72").compute(img, single=True), ref_hsv72(img).astype(np.float32))


@pytest.mark.parametrize("name", SINGLE_PATH)
def test_single_path_equals_kernel_path_on_random_images(name):
    """Random sizes (1 x 1 up), boundary colour levels, and non-contiguous views."""
    d = get_descriptor(name)
    rng = np.random.default_rng(7)
    for n in range(12):
        h, w = (1, 1) if n == 0 else (int(rng.integers(1, 70)), int(rng.integers(1, 70)))
        img = _rand(h, w, n, BOUNDARY_LEVELS if n % 2 else None)
        a, b = d.compute(img), d.compute(img, single=True)
        assert a.dtype == b.dtype == np.float32
        np.testing.assert_array_equal(a, b, err_msg=f"{name} on {h}x{w}")
    big = _rand(90, 120, 3)
    view = big[5:80:2, 120:7:-3]  # strided, reversed columns
    np.testing.assert_array_equal(d.compute(view), d.compute(view, single=True))
    np.testing.assert_array_equal(d.compute(view), d.compute(np.ascontiguousarray(view)))


@pytest.mark.parametrize("name", SINGLE_PATH)
def test_describe_equals_describe_many_on_corel(corel_dir, name):
    """describe() (single-image path) and describe_many() (Numba kernels) agree bit for bit on real photos."""
    paths = sorted(corel_dir.glob("*/*.jpg"))[::50]  # 20 images, two per class
    mat, errors = describe_many(paths, name, workers=1)
    assert errors == {}
    for i, p in enumerate(paths):
        np.testing.assert_array_equal(describe(p, name), mat[i], err_msg=f"{name} on {p.name}")


def test_hsv_descriptor_single_path_falls_back_to_compute():
    d = get_descriptor("hsv", bins=[4, 4, 4])
    assert d._compute_single is None
    img = _rand(20, 30, 5)
    np.testing.assert_array_equal(d.compute(img, single=True), d.compute(img))


def test_describe_one_image_does_not_import_numba(tmp_path):
    """A query describes one image: hsv72, rgbN, spatial-hsv72, lbp, classic-fast must not start Numba
    (about a second of import and cache loading); describe_many still uses the kernels."""
    path = tmp_path / "q.png"
    cv2.imwrite(str(path), _rand(40, 60, 11))
    code = (
        "import sys, fastimg\n"
        f"p = {str(path)!r}\n"
        "for name in ('hsv72', 'rgb512', 'spatial-hsv72', 'lbp', 'classic-fast'):\n"
        "    v = fastimg.describe(p, name)\n"
        "    assert abs(float(v.sum()) - 1) < 1e-5, (name, v.sum())\n"
        "print('numba' in sys.modules)\n"
        "fastimg.describe_many([p, p], 'hsv72', workers=1)\n"
        "print('numba' in sys.modules)\n"
    )
    assert _python(code).split() == ["False", "True"]


# ---------------------------------------------------------------------------
# module structure: base / registry / classic
# ---------------------------------------------------------------------------
def _python(code: str) -> str:
    """Standard output of ``code`` run by a fresh interpreter (which must succeed)."""
    import subprocess
    import sys

    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    return res.stdout


@pytest.mark.parametrize("first", ["fastimg.features.classic", "fastimg.features.registry",
                                   "fastimg.features.base", "fastimg.features.deep"])
def test_builtins_registered_whatever_is_imported_first(first):
    """classic registers the built-ins itself; the registry imports it on first use (no cycle)."""
    names, heavy = _python(f"import importlib, sys; importlib.import_module({first!r})\n"
                           "from fastimg.features import registry\n"
                           "names = sorted(d['name'] for d in registry.descriptors())\n"
                           "print(' '.join(names))\n"
                           "print('numba' in sys.modules, 'cv2' in sys.modules)\n").splitlines()
    assert {"hsv72", "rgb64", "rgb512", "hsv", "spatial-hsv72", "correlogram", "lbp", "ehd", "cedd", "combo",
            "classic", "classic-fast"} <= set(names.split())
    assert heavy == "False False"  # listing the descriptors builds them without a kernel or OpenCV


def test_register_before_first_use_cannot_shadow_a_builtin():
    out = _python("from fastimg.features import registry\n"
                  "from fastimg.features.base import Descriptor\n"
                  "try:\n"
                  "    registry.register('hsv72', lambda: Descriptor('hsv72', 1, lambda b: [0.0]))\n"
                  "except registry.DescriptorError as exc:\n"
                  "    print(exc)\n"
                  "print(registry.get_descriptor('hsv72').dim)\n")
    assert out.splitlines() == ["descriptor 'hsv72' is already registered", "72"]


def test_check_bgr_accepts_only_uint8_bgr():
    from fastimg.features.base import check_bgr

    check_bgr(np.zeros((2, 3, 3), np.uint8))
    check_bgr(np.zeros((5, 5, 3), np.uint8)[::2, ::-1])  # views are fine
    for bad, what in [(np.zeros((2, 3), np.uint8), "shape (2, 3)"), (np.zeros((2, 3, 4), np.uint8), "(2, 3, 4)"),
                      (np.zeros((2, 3, 3), np.uint16), "uint16"), ([[0, 0, 0]], "list"),
                      (np.zeros((0, 3, 3), np.uint8), "empty image")]:
        with pytest.raises(ImageError, match="invalid array") as info:
            check_bgr(bad)
        assert what in str(info.value)


def test_raw_is_compute_before_shrinking_and_float32():
    img = _rand(30, 700, 12)  # longer than the working size (512)
    for name in ("hsv72", "lbp", "spatial-rgb64"):
        d = get_descriptor(name)
        raw = d.raw(img)
        assert raw.dtype == np.float64  # the compute function's own values, not converted
        np.testing.assert_array_equal(d.raw(img, single=True), raw)
        np.testing.assert_array_equal(get_descriptor(name, max_side=None).compute(img), raw.astype(np.float32))
        assert not np.array_equal(d.compute(img), raw.astype(np.float32))  # compute() shrinks first

