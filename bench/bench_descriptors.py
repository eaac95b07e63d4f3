"""Descriptor extraction throughput, side by side (issue 4).

Groups (compare rows within a group; each row's ``extra_info`` holds ``images``):

* ``corel-hsv72``: N Corel-1k images (384 x 256 JPEG), decode + 72-bin histogram:
  - ``original``: the original design's per-pixel Python loop (on a few images;
    per-image time, extrapolate by N),
  - ``numpy``: decode + a vectorised numpy hsv72 (float64 HSV formula),
  - ``opencv``: decode + ``cvtColor`` + ``calcHist`` 8x12x3 (the plain OpenCV baseline),
  - ``fastimg-1``: ``describe_many(..., "hsv72", workers=1)``,
  - ``fastimg-all``: ``describe_many(..., "hsv72")`` on all cores.
* ``12mp-hsv72``: synthetic 12-megapixel JPEGs (4000 x 3000), one core:
  ``opencv`` full decode + calcHist vs ``fastimg-1`` (reduced JPEG decoding).
* ``corel-descriptors``: every classic descriptor, all cores.

Sizes follow ``FASTIMG_BENCH_SCALE`` (see bench/conftest.py).  Run the full size with
``flock /tmp/fastimg-bench.lock make bench`` or::

    FASTIMG_BENCH_SCALE=full flock /tmp/fastimg-bench.lock .venv/bin/python -m pytest bench/bench_descriptors.py
"""
from __future__ import annotations

import csv

import numpy as np
import pytest

from conftest import SHARED_DATA, pick

COREL = SHARED_DATA / "corel1k"

N_COREL = pick(tiny=6, small=200, full=1000)
N_ORIGINAL = pick(tiny=1, small=2, full=3)
N_12MP = pick(tiny=1, small=3, full=8)
SIDE_12MP = pick(tiny=(600, 800), small=(3000, 4000), full=(3000, 4000))
ROUNDS = pick(tiny=1, small=3, full=5)


@pytest.fixture(scope="module")
def corel_paths():
    if not (COREL / "labels.csv").exists():
        pytest.skip(f"Corel-1k not found at {COREL}")
    rows = list(csv.DictReader(open(COREL / "labels.csv", newline="")))
    return [str(COREL / r["path"]) for r in rows][:: max(1, 1000 // N_COREL)][:N_COREL]


def synthetic_jpegs(folder, count: int, size: tuple, seed: int = 0) -> list:
    """``count`` photo-like JPEGs of ``size`` (h, w) in ``folder`` (smooth colour
    fields plus sensor-like noise, quality 90); their paths.  Also bench/ci.py's images."""
    import cv2

    h, w = size
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(count):
        small = rng.integers(0, 256, size=(max(2, h // 50), max(2, w // 50), 3), dtype=np.uint8)
        img = cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC)
        img = cv2.add(img, rng.integers(0, 12, size=img.shape, dtype=np.uint8))  # sensor-like noise
        p = folder / f"photo{i}.jpg"
        ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, 90])
        assert ok
        p.write_bytes(buf.tobytes())
        paths.append(str(p))
    return paths


@pytest.fixture(scope="module")
def jpeg_12mp(tmp_path_factory):
    return synthetic_jpegs(tmp_path_factory.mktemp("12mp"), N_12MP, SIDE_12MP)


# ---------------------------------------------------------------------------
# baselines
# ---------------------------------------------------------------------------
def original_hsv72(path: str) -> np.ndarray:
    """The original design: per-pixel Python loop (red-bin bug fixed so the output is comparable)."""
    import cv2

    img = cv2.imread(path)
    hist = [0] * 72
    for row in img.tolist():
        for b, g, r in row:
            r, g, b = r / 255.0, g / 255.0, b / 255.0
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
            s = 0 if mx == 0 else df / mx
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
            hist[hb * 9 + sb * 3 + vb] += 1
    a = np.asarray(hist, dtype=np.float32)
    return a / a.sum()


def numpy_hsv72(path: str) -> np.ndarray:
    """Decode with OpenCV, then a vectorised float64 numpy version of the definition."""
    import cv2

    img = cv2.imread(path).astype(np.float64) / 255.0
    b, g, r = img[..., 0], img[..., 1], img[..., 2]
    mx = img.max(axis=2)
    mn = img.min(axis=2)
    df = mx - mn
    safe = np.where(df > 0, df, 1.0)
    h = np.where(mx == r, (60 * ((g - b) / safe) + 360) % 360,
                 np.where(mx == g, 60 * ((b - r) / safe) + 120, 60 * ((r - g) / safe) + 240))
    h = np.where(df > 0, h, 0.0)
    s = np.where(mx > 0, df / np.where(mx > 0, mx, 1.0), 0.0)
    hb = np.searchsorted([20, 40, 75, 155, 190, 270, 295, 315], h, side="left")
    hb[hb == 8] = 0
    sb = (s > 0.2).astype(np.int64) + (s >= 0.7)
    vb = (mx > 0.2).astype(np.int64) + (mx >= 0.7)
    hist = np.bincount((hb * 9 + sb * 3 + vb).ravel(), minlength=72).astype(np.float32)
    return hist / hist.sum()


def opencv_hsv(path: str) -> np.ndarray:
    import cv2

    hsv = cv2.cvtColor(cv2.imread(path), cv2.COLOR_BGR2HSV)
    hist = cv2.calcHist([hsv], [0, 1, 2], None, [8, 12, 3], [0, 180, 0, 256, 0, 256]).ravel()
    return hist / hist.sum()


def _loop(fn, paths):
    return [fn(p) for p in paths]


def _fastimg(paths, name="hsv72", workers=None):
    from fastimg.features.registry import describe_many

    mat, errors = describe_many(paths, name, workers=workers)
    assert not errors, errors
    return mat


def _warm(name="hsv72"):
    import fastimg

    fastimg.describe(np.zeros((16, 16, 3), np.uint8), name)  # numba compile + lookup tables


# ---------------------------------------------------------------------------
# corel-hsv72
# ---------------------------------------------------------------------------
@pytest.mark.benchmark(group="corel-hsv72")
def test_corel_original_loop(benchmark, corel_paths):
    paths = corel_paths[:N_ORIGINAL]
    benchmark.extra_info["images"] = len(paths)
    out = benchmark.pedantic(_loop, args=(original_hsv72, paths), rounds=1, iterations=1)
    # the same bins, float rounding included (Corel images are below the working size: same
    # pixels); rtol 1e-6 is float32 normalisation, one pixel moved would be >= 1e-5
    np.testing.assert_allclose(np.asarray(out), _fastimg(paths, workers=1), rtol=1e-6, atol=0)


@pytest.mark.benchmark(group="corel-hsv72")
def test_corel_numpy(benchmark, corel_paths):
    benchmark.extra_info["images"] = len(corel_paths)
    out = benchmark.pedantic(_loop, args=(numpy_hsv72, corel_paths), rounds=ROUNDS, iterations=1)
    # the same bins as fastimg's, float rounding included (issue 15); see test_corel_original_loop
    np.testing.assert_allclose(np.asarray(out), _fastimg(corel_paths), rtol=1e-6, atol=0)


@pytest.mark.benchmark(group="corel-hsv72")
def test_corel_opencv_calchist(benchmark, corel_paths):
    benchmark.extra_info["images"] = len(corel_paths)
    benchmark.pedantic(_loop, args=(opencv_hsv, corel_paths), rounds=ROUNDS, iterations=1)


@pytest.mark.benchmark(group="corel-hsv72")
def test_corel_fastimg_1_thread(benchmark, corel_paths):
    _warm()
    benchmark.extra_info["images"] = len(corel_paths)
    benchmark.pedantic(_fastimg, args=(corel_paths, "hsv72", 1), rounds=ROUNDS, iterations=1)


@pytest.mark.benchmark(group="corel-hsv72")
def test_corel_fastimg_all_cores(benchmark, corel_paths):
    _warm()
    from fastimg.features.registry import _default_workers

    benchmark.extra_info["images"] = len(corel_paths)
    benchmark.extra_info["workers"] = _default_workers()
    benchmark.pedantic(_fastimg, args=(corel_paths, "hsv72", None), rounds=ROUNDS, iterations=1)


# ---------------------------------------------------------------------------
# 12 MP JPEGs, one core
# ---------------------------------------------------------------------------
@pytest.mark.benchmark(group="12mp-hsv72")
def test_12mp_opencv_full_decode(benchmark, jpeg_12mp):
    benchmark.extra_info["images"] = len(jpeg_12mp)
    benchmark.pedantic(_loop, args=(opencv_hsv, jpeg_12mp), rounds=ROUNDS, iterations=1)


@pytest.mark.benchmark(group="12mp-hsv72")
def test_12mp_fastimg_1_thread(benchmark, jpeg_12mp):
    _warm()
    benchmark.extra_info["images"] = len(jpeg_12mp)
    benchmark.pedantic(_fastimg, args=(jpeg_12mp, "hsv72", 1), rounds=ROUNDS, iterations=1)


# ---------------------------------------------------------------------------
# every classic descriptor on Corel, all cores
# ---------------------------------------------------------------------------
@pytest.mark.benchmark(group="corel-descriptors")
@pytest.mark.parametrize("name", ["hsv72", "rgb512", "hsv", "spatial-hsv", "correlogram", "lbp", "ehd", "classic"])
def test_corel_descriptor(benchmark, corel_paths, name):
    _warm(name)
    benchmark.extra_info["images"] = len(corel_paths)
    benchmark.pedantic(_fastimg, args=(corel_paths, name, None), rounds=max(1, ROUNDS // 2), iterations=1)
