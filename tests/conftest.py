"""Shared fixtures: the image collections the tests run on, and the bad-input corpus.

``corel_dir`` is Corel-1k from ../shared/data/corel1k when it is there.  Where
it is not -- or when the environment sets ``FASTIMG_TEST_NO_SHARED=1``, which
hides it on purpose (``FASTIMG_TEST_NO_SHARED=1 make test``) -- it is a
generated Corel-like collection with the same layout (written once per session
into a temporary directory, deterministic): the 10 class folders of Corel-1k,
``db_NNN.jpg`` (90 per class, ``NNN`` from ``90 * class``) and ``query_NNN.jpg``
(10 per class), 384 x 256 JPEGs (every fifth one 256 x 384), and a
``labels.csv`` with Corel's columns.  Each class has its own colour
distribution (hue, saturation, value) and its own texture (orientation and
period of a stripe pattern), varied per image, so that retrieval on it works
as on photos without being trivial.  Every test that takes ``corel_dir`` passes
on both (checked with ``FASTIMG_TEST_NO_SHARED=1``): none asserts a figure that
only Corel's photos give.

``ukbench_dir`` (UKBench-56) has no generated stand-in: its tests skip without
../shared.  ``corpus`` is the bad-input corpus of tests/corpus/make_corpus.py.
"""
from __future__ import annotations

import csv
import functools
import importlib.util
import os
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
COREL = SHARED_DATA / "corel1k"
UKBENCH = SHARED_DATA / "ukbench56"

#: ``FASTIMG_TEST_NO_SHARED=1``: behave as on a machine without ../shared
NO_SHARED = os.environ.get("FASTIMG_TEST_NO_SHARED", "") not in ("", "0")

COREL_CLASSES = ("beaches", "bus", "dinosaurs", "elephants", "flowers", "foods", "horses", "monuments",
                 "mountains_and_snow", "people_and_villages_in_Africa")

_spec = importlib.util.spec_from_file_location("make_corpus", REPO / "tests" / "corpus" / "make_corpus.py")
make_corpus = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(make_corpus)  # type: ignore[union-attr]


# ---------------------------------------------------------------------------
# a Corel-like collection
# ---------------------------------------------------------------------------
#: per class: hue (degrees), saturation, value (0-1) of the background, the
#: subject's hue offset, stripe orientation (degrees) and period (pixels)
_STYLE = (
    (200, 0.45, 0.85, 30, 0, 24),     # beaches: light blue
    (10, 0.85, 0.70, 180, 90, 10),    # bus: saturated red
    (100, 0.35, 0.55, 60, 45, 14),    # dinosaurs: dull green
    (35, 0.30, 0.45, 20, 135, 8),     # elephants: grey-brown, fine texture
    (320, 0.75, 0.80, 200, 30, 6),    # flowers: magenta
    (25, 0.80, 0.90, 300, 60, 12),    # foods: orange
    (80, 0.60, 0.50, 230, 120, 18),   # horses: olive
    (45, 0.20, 0.75, 180, 90, 30),    # monuments: pale sand
    (215, 0.15, 0.95, 20, 150, 16),   # mountains_and_snow: near white, bluish
    (15, 0.55, 0.35, 140, 75, 9),     # people_and_villages_in_Africa: dark earth
)


@functools.lru_cache(maxsize=4)
def _grid(h: int, w: int):
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    return yy, xx


def corel_like_image(c: int, seed: int, h: int = 256, w: int = 384) -> np.ndarray:
    """One BGR picture of class ``c``: a striped background in the class' colours with
    a subject (an ellipse of another hue), positions, phases and tints varying by ``seed``."""
    import cv2

    hue, sat, val, dhue, angle, period = _STYLE[c]
    rng = np.random.default_rng(seed)
    yy, xx = _grid(h, w)
    a = np.deg2rad(angle + rng.normal(0, 8))
    k = np.float32(2 * np.pi / (period * rng.uniform(0.8, 1.25)))
    stripes = np.sin(xx * (k * np.float32(np.cos(a))) + yy * (k * np.float32(np.sin(a))) + np.float32(rng.uniform(0, 6.3)))
    noise = cv2.resize(rng.normal(0, 1, (h // 8 + 1, w // 8 + 1)).astype(np.float32), (w, h),
                       interpolation=cv2.INTER_CUBIC)
    cy, cx = rng.uniform(0.3, 0.7) * h, rng.uniform(0.3, 0.7) * w
    ry, rx = rng.uniform(0.15, 0.3) * h, rng.uniform(0.15, 0.3) * w
    subject = ((yy - np.float32(cy)) * np.float32(1 / ry)) ** 2 + ((xx - np.float32(cx)) * np.float32(1 / rx)) ** 2 <= 1
    hsv = np.empty((h, w, 3), np.uint8)  # OpenCV's 8-bit HSV: hue in degrees / 2
    hh = (np.float32(hue + rng.normal(0, 6)) + 8 * noise) % 360
    hh[subject] = (hue + dhue + rng.normal(0, 10)) % 360
    hsv[:, :, 0] = np.minimum(hh * np.float32(0.5), 179)
    ss = np.float32(255 * (sat + rng.normal(0, 0.05))) + np.float32(255 * 0.08) * stripes
    ss[subject] = 255 * min(max(1.1 - sat, 0.2), 1)
    hsv[:, :, 1] = np.clip(ss, 0, 255)
    vv = np.float32(255 * (val + rng.normal(0, 0.05))) + np.float32(255 * 0.12) * stripes + np.float32(255 * 0.05) * noise
    hsv[:, :, 2] = np.clip(vv, 0, 255)
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR)


def make_corel_like(root: Path) -> Path:
    """Write the Corel-like collection into ``root`` (see the module docstring); returns ``root``."""
    import cv2

    rows = []
    for c, name in enumerate(COREL_CLASSES):
        (root / name).mkdir(parents=True, exist_ok=True)
        files = [("db", n) for n in range(90 * c, 90 * c + 90)] + [("query", n) for n in range(10 * c, 10 * c + 10)]
        for split, n in files:
            seed = 1000 * c + n + (0 if split == "db" else 500)
            portrait = (n + (0 if split == "db" else 1)) % 5 == 4
            img = corel_like_image(c, seed, *((384, 256) if portrait else (256, 384)))
            rel = f"{name}/{split}_{n:03d}.jpg"
            ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, 75])
            assert ok
            (root / rel).write_bytes(buf.tobytes())
            rows.append({"path": rel, "class_id": c, "class_name": name, "split": split,
                         "source_path": f"generated/{seed}", "sha1": ""})
    with open(root / "labels.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return root


def _real_corel() -> bool:
    return not NO_SHARED and (COREL / "labels.csv").exists()


@pytest.fixture(scope="session")
def corel_dir(tmp_path_factory) -> Path:
    """Corel-1k, or the generated Corel-like collection without ../shared (see above)."""
    if _real_corel():
        return COREL
    return make_corel_like(tmp_path_factory.mktemp("corel_like"))


@pytest.fixture(scope="session")
def ukbench_dir() -> Path:
    if NO_SHARED or not (UKBENCH / "groups.csv").exists():
        pytest.skip(f"UKBench-56 test data not found at {UKBENCH} (expected beside the repo in ../shared)")
    return UKBENCH


# ---------------------------------------------------------------------------
# the bad-input corpus
# ---------------------------------------------------------------------------
@pytest.fixture(scope="session")
def corpus(tmp_path_factory):
    """``(root, entries)``: tests/corpus/make_corpus.py's files, built once per session."""
    root = tmp_path_factory.mktemp("corpus")
    return root, make_corpus.build(root)


@pytest.fixture(scope="session", autouse=True)
def _model_cache_dir(tmp_path_factory: pytest.TempPathFactory):
    """Built backbone graphs (fastimg.features.backbone_cache) go to a temporary directory, never
    to the user's cache; subprocesses started by the tests inherit it."""
    import os

    old = os.environ.get("FASTIMG_CACHE_DIR")
    os.environ["FASTIMG_CACHE_DIR"] = str(tmp_path_factory.mktemp("fastimg-cache"))
    yield
    if old is None:
        os.environ.pop("FASTIMG_CACHE_DIR", None)
    else:
        os.environ["FASTIMG_CACHE_DIR"] = old
