"""Photo folders for the index tests: Corel-1k images when ../shared has them, else
generated JPEGs (so the tests run, rather than skip, without the shared data).

A generated "class" has its own hue; each image is a few blocks of that hue and
its neighbours, with noise, so images of one class look alike to ``hsv72`` and
unlike the other classes.
"""
from __future__ import annotations

import shutil
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

COREL = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "corel1k"


def generated_photo(path: Path, class_index: int, seed: int, size: tuple[int, int] = (96, 128)) -> Path:
    """Write one generated JPEG (BGR, ``size`` = (height, width)) and return its path."""
    import cv2

    rng = np.random.default_rng(1000 * class_index + seed)
    h, w = size
    hsv = np.empty((h, w, 3), np.uint8)
    base = (class_index * 37) % 180
    for y0 in range(0, h, h // 4):
        for x0 in range(0, w, w // 4):
            hsv[y0:y0 + h // 4, x0:x0 + w // 4] = [(base + rng.integers(-12, 13)) % 180, rng.integers(60, 256),
                                                   rng.integers(60, 256)]
    bgr = cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR).astype(np.int16) + rng.integers(-10, 11, (h, w, 3))
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), np.clip(bgr, 0, 255).astype(np.uint8), [cv2.IMWRITE_JPEG_QUALITY, 92])
    return path


def photo_tree(dest: Path, classes: Sequence[str] = ("beaches", "horses", "flowers"), per_class: int = 3,
               corel: Optional[Path] = COREL) -> list[Path]:
    """``per_class`` images in ``dest/<class>/`` for each class: the first Corel-1k
    files of that class when available, else generated ones; returns the paths."""
    out = []
    for ci, c in enumerate(classes):
        (dest / c).mkdir(parents=True, exist_ok=True)
        src = sorted((corel / c).glob("*.jpg"))[:per_class] if corel is not None and (corel / c).is_dir() else []
        if len(src) == per_class:
            for f in src:
                shutil.copy2(f, dest / c / f.name)
                out.append(dest / c / f.name)
        else:
            out.extend(generated_photo(dest / c / f"{c}{j}.jpg", ci, j) for j in range(per_class))
    return out


def textured_scene(seed: int, h: int = 256, w: int = 384, *, shapes: int = 40, max_side: int = 60,
                   max_radius: int = 30) -> np.ndarray:
    """A hand-built BGR picture with corners to match (for ORB): ``shapes`` random
    rectangles (sides 8 to ``max_side``), circles (radii 5 to ``max_radius``) and lines
    over a noisy gradient, all positions and colours drawn from ``seed``."""
    import cv2

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    base = (60 + 80 * xx / w + 40 * yy / h)[..., None] + rng.normal(0, 6, (h, w, 3))
    img = np.clip(base, 0, 255).astype(np.uint8)
    for _ in range(shapes):
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        x0, y0 = int(rng.integers(0, w)), int(rng.integers(0, h))
        kind = rng.integers(0, 3)
        if kind == 0:
            cv2.rectangle(img, (x0, y0), (x0 + int(rng.integers(8, max_side)), y0 + int(rng.integers(8, max_side))),
                          colour, -1)
        elif kind == 1:
            cv2.circle(img, (x0, y0), int(rng.integers(5, max_radius)), colour, -1)
        else:
            cv2.line(img, (x0, y0), (int(rng.integers(0, w)), int(rng.integers(0, h))), colour, 3)
    return img
