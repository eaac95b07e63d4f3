"""Pooling of CNN convolution maps into global descriptors (pure NumPy).

Every function takes one activation tensor ``x`` of shape ``(C, H, W)`` (channels
first, as produced by the CNN runtime) and returns a float32 vector.  None of them
normalises its output; the caller (:mod:`fastimg.features.deep`) applies L2 → optional
PCA-whitening → L2.

The poolings:

* :func:`mac` - maximum activation of each channel (Tolias et al., ICLR 2016).
* :func:`spoc` - sum pooling of each channel (Babenko & Lempitsky, ICCV 2015).
* :func:`gem` - generalised mean, ``(mean x**p)**(1/p)`` (Radenović et al., TPAMI 2018).
* :func:`rmac` - regional MAC over the square regions of :func:`rmac_regions`
  at several scales, each region L2-normalised, then summed (Tolias et al.).
* :func:`crow` - cross-dimensional weighting: spatial weights from the summed,
  normalised, power-normalised map; channel weights from channel sparsity,
  IDF-like (Kalantidis et al., ECCVW 2016).
* :func:`pwa` - part-based weighted aggregation: the maps of a few selected
  channels serve as spatial weights ("part detectors") (Xu et al., AAAI 2018).

These functions do no validation beyond the shape; :func:`check_map` is the
boundary check used by the public API.
"""
from __future__ import annotations

import math
from typing import Callable, Optional, Sequence

import numpy as np

from fastimg.errors import DescriptorError

__all__ = [
    "POOLINGS",
    "check_map",
    "mac",
    "spoc",
    "gem",
    "rmac",
    "rmac_regions",
    "crow",
    "crow_spatial_weights",
    "crow_channel_weights",
    "pwa",
    "select_pwa_channels",
]

_EPS = 1e-12


def check_map(x: np.ndarray) -> np.ndarray:
    """Validate one activation tensor and return it as float32 ``(C, H, W)``.

    Parameters
    ----------
    x : array_like, shape (C, H, W)
        Convolution activations (finite).

    Returns
    -------
    numpy.ndarray of float32, shape (C, H, W)

    Raises
    ------
    DescriptorError
        If ``x`` is not 3-D, has an empty axis, or holds NaN/inf.
    """
    arr = np.asarray(x)
    if arr.ndim != 3:
        raise DescriptorError(
            f"convolution map must have shape (C, H, W); got an array of shape {arr.shape}"
        )
    if 0 in arr.shape:
        raise DescriptorError(f"convolution map has an empty axis: shape {arr.shape}")
    if not np.issubdtype(arr.dtype, np.number):
        raise DescriptorError(f"convolution map must be numeric; got dtype {arr.dtype}")
    arr = arr.astype(np.float32, copy=False)
    if not np.isfinite(arr).all():
        raise DescriptorError("convolution map contains NaN or infinite values")
    return arr


def mac(x: np.ndarray) -> np.ndarray:
    """Maximum activation of convolutions: ``x.max(axis=(1, 2))``.

    Parameters
    ----------
    x : numpy.ndarray, shape (C, H, W)

    Returns
    -------
    numpy.ndarray of float32, shape (C,)
    """
    return x.max(axis=(1, 2)).astype(np.float32, copy=False)


def spoc(x: np.ndarray) -> np.ndarray:
    """Sum-pooled convolutional features: ``x.sum(axis=(1, 2))``.

    The optional centring prior of the SPoC paper is not applied (it assumes the
    object is in the image centre).

    Parameters
    ----------
    x : numpy.ndarray, shape (C, H, W)

    Returns
    -------
    numpy.ndarray of float32, shape (C,)
    """
    return x.sum(axis=(1, 2), dtype=np.float64).astype(np.float32)


def gem(x: np.ndarray, p: float = 3.0, eps: float = 1e-6) -> np.ndarray:
    """Generalised-mean pooling: ``mean(max(x, eps) ** p, axis=(1, 2)) ** (1 / p)``.

    ``p = 1`` is average pooling (SPoC up to a constant) and ``p → ∞`` tends to MAC.

    Parameters
    ----------
    x : numpy.ndarray, shape (C, H, W)
    p : float, default 3.0
        The power; must be > 0.
    eps : float, default 1e-6
        Activations are clamped to at least ``eps`` (ReLU maps hold zeros).

    Returns
    -------
    numpy.ndarray of float32, shape (C,)
    """
    if not (p > 0 and math.isfinite(p)):
        raise DescriptorError(f"GeM power p must be a finite number > 0; got p={p!r}")
    xc = np.maximum(x.astype(np.float64), eps)
    # factor out each channel's maximum so that large p neither overflows nor underflows
    top = xc.max(axis=(1, 2))
    rel = xc / top[:, None, None]
    return (top * np.mean(rel**p, axis=(1, 2)) ** (1.0 / p)).astype(np.float32)


def rmac_regions(h: int, w: int, levels: int = 3, overlap: float = 0.4) -> list[tuple[int, int, int, int]]:
    """Square regions of R-MAC (Tolias, Sicre & Jégou, ICLR 2016).

    At level ``l = 1..levels`` the regions are squares of side
    ``floor(2 * min(h, w) / (l + 1))``, laid out uniformly with ``l`` regions
    along the short side and ``l + m`` along the long side, where ``m`` (0 for a
    square map) is chosen so that consecutive regions at level 1 overlap as
    close as possible to ``overlap``.  This follows the reference
    implementation of Radenović et al. (cnnimageretrieval, ``rmac``).

    Parameters
    ----------
    h, w : int
        Height and width of the map.
    levels : int, default 3
        Number of scales.
    overlap : float, default 0.4
        Target overlap between neighbouring regions.

    Returns
    -------
    list of (y0, x0, size_y, size_x)
        Regions of at least one cell; for tiny maps that yield none, the whole
        map ``[(0, 0, h, w)]``.
    """
    if levels < 1:
        raise DescriptorError(f"R-MAC levels must be >= 1; got levels={levels}")
    side = min(h, w)
    steps = np.arange(2, 8, dtype=np.float64)  # candidate region counts along the long side
    b = (max(h, w) - side) / (steps - 1)
    idx = int(np.argmin(np.abs((side**2 - side * b) / side**2 - overlap)))
    wd = hd = 0
    if h < w:
        wd = idx + 1
    elif h > w:
        hd = idx + 1

    regions: list[tuple[int, int, int, int]] = []
    for level in range(1, levels + 1):
        wl = int(math.floor(2 * side / (level + 1)))
        if wl == 0:
            continue
        wl2 = int(math.floor(wl / 2 - 1))
        bw = 0.0 if level + wd == 1 else (w - wl) / (level + wd - 1)
        bh = 0.0 if level + hd == 1 else (h - wl) / (level + hd - 1)
        xs = [int(math.floor(wl2 + i * bw) - wl2) for i in range(level + wd)]
        ys = [int(math.floor(wl2 + i * bh) - wl2) for i in range(level + hd)]
        for y0 in ys:
            for x0 in xs:
                regions.append((y0, x0, wl, wl))
    if not regions:
        regions.append((0, 0, h, w))
    return regions


def rmac(x: np.ndarray, levels: int = 3, overlap: float = 0.4) -> np.ndarray:
    """Regional maximum activation of convolutions.

    ``sum over regions r of l2_normalize(mac(x[:, r]))`` with the regions of
    :func:`rmac_regions`.  The per-region PCA-whitening of the paper is
    replaced by the global whitening of the post-processing.

    Parameters
    ----------
    x : numpy.ndarray, shape (C, H, W)
    levels : int, default 3
    overlap : float, default 0.4

    Returns
    -------
    numpy.ndarray of float32, shape (C,)
    """
    _, h, w = x.shape
    out = np.zeros(x.shape[0], dtype=np.float64)
    for y0, x0, sy, sx in rmac_regions(h, w, levels, overlap):
        v = x[:, y0 : y0 + sy, x0 : x0 + sx].max(axis=(1, 2)).astype(np.float64)
        out += v / max(float(np.sqrt(v @ v)), _EPS)
    return out.astype(np.float32)


def crow_spatial_weights(x: np.ndarray, a: float = 2.0, b: float = 2.0) -> np.ndarray:
    """CroW spatial weights ``(S / ||S||_a) ** (1 / b)`` with ``S = x.sum(axis=0)``.

    Parameters
    ----------
    x : numpy.ndarray, shape (C, H, W)
        Non-negative (post-ReLU) activations.
    a : float, default 2.0
        Norm used to normalise the summed map.
    b : float, default 2.0
        Power-normalisation root.

    Returns
    -------
    numpy.ndarray of float64, shape (H, W)
        All zeros when the map is all zero.
    """
    s = np.maximum(x.astype(np.float64).sum(axis=0), 0.0)
    z = np.sum(s**a) ** (1.0 / a)
    if z <= 0:
        return np.zeros_like(s)
    s = s / z
    return s if b == 1 else s ** (1.0 / b)


def crow_channel_weights(x: np.ndarray) -> np.ndarray:
    """CroW channel weights from sparsity: ``log(sum_j Q_j / Q_k)``.

    ``Q_k`` is the fraction of non-zero positions of channel ``k``; channels
    that are all zero get weight 0 (their pooled value is 0 anyway).  Rare
    (sparse) channels get large weights, like an inverse document frequency.

    Parameters
    ----------
    x : numpy.ndarray, shape (C, H, W)

    Returns
    -------
    numpy.ndarray of float64, shape (C,)
    """
    c, h, w = x.shape
    q = np.count_nonzero(x.reshape(c, -1), axis=1) / float(h * w)
    total = q.sum()
    out = np.zeros(c, dtype=np.float64)
    nz = q > 0
    out[nz] = np.log(total / q[nz])
    return out


def crow(x: np.ndarray, a: float = 2.0, b: float = 2.0) -> np.ndarray:
    """Cross-dimensional weighted sum pooling (Kalantidis, Mellina & Osindero, 2016).

    ``crow_channel_weights(x) * (x * crow_spatial_weights(x, a, b)).sum(axis=(1, 2))``

    Parameters
    ----------
    x : numpy.ndarray, shape (C, H, W)
        Non-negative (post-ReLU) activations.
    a, b : float, default 2.0
        See :func:`crow_spatial_weights`.

    Returns
    -------
    numpy.ndarray of float32, shape (C,)
    """
    s = crow_spatial_weights(x, a, b)
    pooled = np.einsum("chw,hw->c", x.astype(np.float64), s)
    return (pooled * crow_channel_weights(x)).astype(np.float32)


def pwa(
    x: np.ndarray,
    channels: Optional[Sequence[int]] = None,
    n_parts: int = 25,
    a: float = 2.0,
    b: float = 2.0,
    aggregate: str = "sum",
) -> np.ndarray:
    """Part-based weighted aggregation (after Xu et al., AAAI 2018).

    The map ``x[k]`` of each selected channel ``k`` acts as a part detector:
    its spatial weights ``(x[k] / ||x[k]||_a) ** (1 / b)`` weight a sum pooling of
    all channels, giving one ``(C,)`` vector per part, each L2-normalised.

    Parameters
    ----------
    x : numpy.ndarray, shape (C, H, W)
        Non-negative (post-ReLU) activations.
    channels : sequence of int, optional
        The part-detector channels (e.g. from :func:`select_pwa_channels` on
        a sample of the collection, as in the paper).  When omitted, the
        ``n_parts`` channels of this image with the largest sum are used; that
        choice differs between images, so it requires ``aggregate="sum"``.
    n_parts : int, default 25
        Number of parts when ``channels`` is omitted.
    a, b : float, default 2.0
        Normalisation and power of the part weights (as in CroW).
    aggregate : {"sum", "concat"}, default "sum"
        ``"sum"`` adds the per-part vectors (output ``(C,)``); ``"concat"``
        concatenates them in the order of ``channels`` (output
        ``(len(channels) * C,)``, the paper's layout).

    Returns
    -------
    numpy.ndarray of float32, shape (C,) or (len(channels) * C,)
    """
    c = x.shape[0]
    if aggregate not in ("sum", "concat"):
        raise DescriptorError(f"PWA aggregate must be 'sum' or 'concat'; got {aggregate!r}")
    x64 = x.astype(np.float64)
    if channels is None:
        if aggregate != "sum":
            raise DescriptorError("PWA with aggregate='concat' needs explicit channels (a fixed part order)")
        if n_parts < 1:
            raise DescriptorError(f"PWA n_parts must be >= 1; got {n_parts}")
        sums = x64.sum(axis=(1, 2))
        # stable: ties resolved by lower channel index
        chans = np.argsort(-sums, kind="stable")[: min(n_parts, c)]
    else:
        chans = np.asarray(channels, dtype=np.int64).reshape(-1)
        if chans.size == 0 or chans.min() < 0 or chans.max() >= c:
            raise DescriptorError(
                f"PWA channels must be a non-empty list of indices in [0, {c}); got {list(chans)[:8]}..."
            )
    flat = x64.reshape(c, -1)
    parts = []
    for k in chans:
        wgt = crow_spatial_weights(x64[k:k + 1], a, b).reshape(-1)  # one part's weights
        if wgt.any():
            v = flat @ wgt
            n = float(np.sqrt(v @ v))
            parts.append(v / n if n > 0 else v)
        else:
            parts.append(np.zeros(c))
    stacked = np.stack(parts)
    out = stacked.sum(axis=0) if aggregate == "sum" else stacked.reshape(-1)
    return out.astype(np.float32)


def select_pwa_channels(maps: Sequence[np.ndarray] | np.ndarray, n_parts: int = 25) -> list[int]:
    """Pick PWA part detectors: the channels whose sum-pooled response varies most.

    Parameters
    ----------
    maps : sequence of (C, H, W) arrays, or array (N, C, H, W)
        A sample of the collection's convolution maps (N >= 2).
    n_parts : int, default 25

    Returns
    -------
    list of int
        ``n_parts`` channel indices, by decreasing variance (ties: lower index).
    """
    pooled = np.stack([np.asarray(m, dtype=np.float64).sum(axis=(1, 2)) for m in maps])
    if pooled.shape[0] < 2:
        raise DescriptorError("select_pwa_channels needs at least 2 maps")
    var = pooled.var(axis=0)
    order = np.argsort(-var, kind="stable")
    return [int(i) for i in order[: min(n_parts, pooled.shape[1])]]


POOLINGS: dict[str, Callable[..., np.ndarray]] = {
    "mac": mac,
    "spoc": spoc,
    "gem": gem,
    "rmac": rmac,
    "crow": crow,
    "pwa": pwa,
}
