"""Poolings of convolution maps against direct NumPy / loop implementations and hand-computed values."""
from __future__ import annotations

import math

import numpy as np
import pytest

from fastimg.features import pooling as P
from fastimg.errors import DescriptorError


def relu_map(rng: np.random.Generator, c: int, h: int, w: int, sparsity: float = 0.5) -> np.ndarray:
    """Random non-negative map with exact zeros, like post-ReLU activations."""
    x = rng.standard_normal((c, h, w)).astype(np.float32) + (1 - 2 * sparsity)
    return np.maximum(x, 0).astype(np.float32)


@pytest.fixture(params=[(5, 7, 7), (6, 8, 12), (4, 12, 8), (3, 1, 1), (8, 3, 5)])
def fmap(request) -> np.ndarray:
    rng = np.random.default_rng(sum(request.param))
    return relu_map(rng, *request.param)


# --- oracles: loops over channels and positions, written independently of fastimg ---
def loop_max(x):
    return np.array([max(float(v) for v in ch.ravel()) for ch in x])


def loop_sum(x):
    return np.array([math.fsum(float(v) for v in ch.ravel()) for ch in x])


def loop_gem(x, p, eps=1e-6):
    out = []
    for ch in x:
        vals = [max(float(v), eps) ** p for v in ch.ravel()]
        out.append((math.fsum(vals) / len(vals)) ** (1.0 / p))
    return np.array(out)


def loop_crow(x, a=2.0, b=2.0):
    """Transcription of Kalantidis et al.'s reference code (crow.py) with loops."""
    c, h, w = x.shape
    s = np.zeros((h, w))
    for k in range(c):
        s += x[k]
    z = sum(float(v) ** a for v in s.ravel()) ** (1.0 / a)
    sw = (s / z) ** (1.0 / b) if z > 0 else np.zeros((h, w))
    nonzeros = np.array([np.count_nonzero(x[k]) / float(h * w) for k in range(c)])
    nzsum = nonzeros.sum()
    cw = np.array([math.log(nzsum / d) if d > 0 else 0.0 for d in nonzeros])
    pooled = np.array([sum(float(x[k, i, j]) * sw[i, j] for i in range(h) for j in range(w)) for k in range(c)])
    return pooled * cw


def loop_pwa(x, chans, a=2.0, b=2.0):
    parts = []
    for k in chans:
        m = x[k].astype(np.float64)
        z = (m**a).sum() ** (1.0 / a)
        wgt = (m / z) ** (1.0 / b)
        v = np.array([(x[c].astype(np.float64) * wgt).sum() for c in range(x.shape[0])])
        parts.append(v / np.linalg.norm(v))
    return parts


# --- MAC / SPoC / GeM ---
def test_mac_spoc_match_loops(fmap):
    np.testing.assert_allclose(P.mac(fmap), loop_max(fmap), rtol=0, atol=0)
    np.testing.assert_allclose(P.spoc(fmap), loop_sum(fmap), rtol=1e-6)
    assert P.mac(fmap).dtype == np.float32 and P.spoc(fmap).shape == (fmap.shape[0],)


def test_hand_computed_small_map():
    x = np.array([[[1, 2], [3, 4]], [[0, 0], [0, 5]]], dtype=np.float32)
    np.testing.assert_array_equal(P.mac(x), [4, 5])
    np.testing.assert_array_equal(P.spoc(x), [10, 5])
    # GeM p=3: ((1 + 8 + 27 + 64) / 4) ** (1/3) = 25 ** (1/3); ((3 * 1e-18 + 125) / 4) ** (1/3)
    np.testing.assert_allclose(P.gem(x, p=3), [25 ** (1 / 3), (125 / 4) ** (1 / 3)], rtol=1e-6)


@pytest.mark.parametrize("p", [1.0, 2.0, 3.0, 4.5])
def test_gem_matches_loop(fmap, p):
    np.testing.assert_allclose(P.gem(fmap, p=p), loop_gem(fmap, p), rtol=1e-5)


def test_gem_limits(fmap):
    # p = 1 is the mean (of the clamped map); a large p tends to the max
    np.testing.assert_allclose(P.gem(fmap, p=1.0), np.maximum(fmap, 1e-6).mean(axis=(1, 2)), rtol=1e-5)
    np.testing.assert_allclose(P.gem(fmap, p=200.0), np.maximum(fmap.max(axis=(1, 2)), 1e-6), rtol=0.03)


@pytest.mark.parametrize("p", [0, -1, float("inf"), float("nan")])
def test_gem_rejects_bad_power(p):
    with pytest.raises(DescriptorError, match="GeM power"):
        P.gem(np.ones((2, 3, 3), np.float32), p=p)


# --- R-MAC regions (hand-computed, Tolias et al. / Radenović's reference grid) ---
def test_rmac_regions_square_7x7():
    regions = P.rmac_regions(7, 7, levels=3)
    expected = (
        [(0, 0, 7, 7)]  # level 1: the whole map
        + [(y, x, 4, 4) for y in (0, 3) for x in (0, 3)]  # level 2: 2x2 squares of side floor(14/3)=4
        + [(y, x, 3, 3) for y in (0, 2, 4) for x in (0, 2, 4)]  # level 3: 3x3 squares of side floor(14/4)=3
    )
    assert regions == expected


def test_rmac_regions_landscape_8x12():
    # b=(12-8)/(steps-1); overlap 1-b/8 closest to 0.4 for steps=2 -> one extra region along the width
    regions = P.rmac_regions(8, 12, levels=3)
    expected = (
        [(0, x, 8, 8) for x in (0, 4)]
        + [(y, x, 5, 5) for y in (0, 3) for x in (0, 3, 7)]
        + [(y, x, 4, 4) for y in (0, 2, 4) for x in (0, 2, 5, 8)]
    )
    assert regions == expected
    assert len(regions) == 20  # "about 20 regions" in the paper


def test_rmac_regions_portrait_is_transpose():
    land = P.rmac_regions(8, 12, levels=3)
    port = P.rmac_regions(12, 8, levels=3)
    assert sorted(port) == sorted((x, y, sx, sy) for y, x, sy, sx in land)


@pytest.mark.parametrize("h,w", [(1, 1), (2, 2), (3, 9), (7, 7), (8, 12), (20, 13), (1, 6)])
def test_rmac_regions_inside_map(h, w):
    regions = P.rmac_regions(h, w, levels=3)
    assert regions
    for y0, x0, sy, sx in regions:
        assert sy >= 1 and sx >= 1 and y0 >= 0 and x0 >= 0 and y0 + sy <= h and x0 + sx <= w


def test_rmac_levels_validated():
    with pytest.raises(DescriptorError, match="levels"):
        P.rmac_regions(7, 7, levels=0)


def test_rmac_matches_loop_over_hand_regions():
    rng = np.random.default_rng(3)
    x = relu_map(rng, 6, 8, 12)
    regions = (
        [(0, xx, 8, 8) for xx in (0, 4)]
        + [(y, xx, 5, 5) for y in (0, 3) for xx in (0, 3, 7)]
        + [(y, xx, 4, 4) for y in (0, 2, 4) for xx in (0, 2, 5, 8)]
    )
    expected = np.zeros(6)
    for y0, x0, sy, sx in regions:
        v = np.array([x[c, y0 : y0 + sy, x0 : x0 + sx].max() for c in range(6)], dtype=np.float64)
        expected += v / np.linalg.norm(v)
    np.testing.assert_allclose(P.rmac(x, levels=3), expected, rtol=1e-6)


def test_rmac_one_level_on_square_map_is_normalised_mac():
    rng = np.random.default_rng(4)
    x = relu_map(rng, 5, 6, 6)
    m = x.max(axis=(1, 2)).astype(np.float64)
    np.testing.assert_allclose(P.rmac(x, levels=1), m / np.linalg.norm(m), rtol=1e-6)


# --- CroW ---
def test_crow_matches_reference_loops(fmap):
    np.testing.assert_allclose(P.crow(fmap), loop_crow(fmap), rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("a,b", [(1.0, 1.0), (2.0, 1.0), (3.0, 2.0)])
def test_crow_parameters(a, b):
    x = relu_map(np.random.default_rng(5), 4, 5, 6)
    np.testing.assert_allclose(P.crow(x, a=a, b=b), loop_crow(x, a=a, b=b), rtol=1e-5, atol=1e-7)


def test_crow_hand_computed():
    # channel 0 = [[2, 0]], channel 1 = [[1, 1]]  (C=2, H=1, W=2)
    x = np.array([[[2.0, 0.0]], [[1.0, 1.0]]], dtype=np.float32)
    # S = [3, 1]; ||S||_2 = sqrt(10); spatial weights sqrt(S / sqrt(10))
    sw = np.sqrt(np.array([3.0, 1.0]) / math.sqrt(10))
    np.testing.assert_allclose(P.crow_spatial_weights(x), sw[None, :], rtol=1e-12)
    # Q = [1/2, 1]; channel weights log(1.5 / Q)
    np.testing.assert_allclose(P.crow_channel_weights(x), [math.log(3.0), math.log(1.5)], rtol=1e-12)
    expected = np.array([2 * sw[0] * math.log(3.0), (sw[0] + sw[1]) * math.log(1.5)])
    np.testing.assert_allclose(P.crow(x), expected, rtol=1e-6)


def test_crow_all_zero_map_is_zero():
    out = P.crow(np.zeros((4, 3, 3), np.float32))
    assert out.shape == (4,) and not out.any() and np.isfinite(out).all()


# --- PWA ---
def test_pwa_selected_channels_match_loops():
    x = relu_map(np.random.default_rng(6), 6, 5, 7, sparsity=0.3)
    chans = [4, 1, 2]
    parts = loop_pwa(x, chans)
    np.testing.assert_allclose(P.pwa(x, channels=chans, aggregate="concat"), np.concatenate(parts), rtol=1e-5)
    np.testing.assert_allclose(P.pwa(x, channels=chans), np.sum(parts, axis=0), rtol=1e-5)


def test_pwa_default_channels_are_the_strongest():
    x = relu_map(np.random.default_rng(7), 8, 4, 4, sparsity=0.3)
    x[5] *= 10.0
    x[2] *= 5.0  # channels 5 then 2 have the largest sums
    np.testing.assert_allclose(P.pwa(x, n_parts=2), np.sum(loop_pwa(x, [5, 2]), axis=0), rtol=1e-5)


def test_pwa_errors():
    x = relu_map(np.random.default_rng(8), 4, 3, 3)
    with pytest.raises(DescriptorError, match=r"indices in \[0, 4\)"):
        P.pwa(x, channels=[0, 4])
    with pytest.raises(DescriptorError, match="explicit channels"):
        P.pwa(x, aggregate="concat")
    with pytest.raises(DescriptorError, match="aggregate"):
        P.pwa(x, channels=[0], aggregate="mean")


def test_select_pwa_channels_by_variance():
    rng = np.random.default_rng(9)
    maps = rng.random((10, 6, 3, 3)).astype(np.float32)
    maps[:, 3] *= rng.random((10, 1, 1)) * 20  # channel 3 varies most across images, then 0
    maps[:, 0] *= rng.random((10, 1, 1)) * 8
    sums = maps.sum(axis=(2, 3))
    expected = list(np.argsort(-sums.var(axis=0))[:2])
    assert P.select_pwa_channels(maps, n_parts=2) == expected
    assert expected[0] == 3
    with pytest.raises(DescriptorError, match="at least 2"):
        P.select_pwa_channels(maps[:1])


# --- validation and normalisation ---
@pytest.mark.parametrize(
    "bad,match",
    [
        (np.zeros((3, 3)), r"shape \(C, H, W\)"),
        (np.zeros((0, 3, 3)), "empty axis"),
        (np.full((2, 2, 2), np.nan), "NaN"),
        (np.array([[["a"]]]), "numeric"),
    ],
)
def test_check_map_errors(bad, match):
    with pytest.raises(DescriptorError, match=match):
        P.check_map(bad)


def test_l2_normalize():
    from fastimg.projection import l2_normalize

    v = np.array([[3.0, 4.0], [0.0, 0.0]], dtype=np.float32)
    np.testing.assert_allclose(l2_normalize(v), [[0.6, 0.8], [0.0, 0.0]])
