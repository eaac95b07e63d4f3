"""Write the on-disk format fixture ``tests/data/format_v1/`` (used by test_index_format.py).

The committed fixture was written by fastimg at commit 0f45feb (format version 1,
before the index was split into ``fastimg.index.*``).  It must NOT be regenerated
by a later fastimg: its point is that an index written by an older fastimg still
opens and answers the same.  Run it only to create a fixture for a *new* format
version (into a new directory), with the fastimg that writes that format::

    .venv/bin/python tests/data/make_format_v1.py tests/data/format_vN

Contents (everything deterministic from the seeds below; the test regenerates the
vectors from the same seeds and never reads them back through fastimg):

* ``images/``: 8 generated 32x32 PNGs (colour blocks, ``image_array(i)``);
* ``hsv72/``: an ``hsv72`` index of them (root ``../images``, stored relative),
  ``img5.png`` removed (a deleted row), metadata on ``img1.png``, and the
  bhattacharyya prepared cache written by one search;
* ``custom/``: ``descriptor="custom"``, dim 16, metric cosine: rows 0..119 of
  ``custom_vectors()`` added, :data:`REMOVED_BEFORE_COMPACT` removed, compacted
  (generation 1), rows 120..159 added, :data:`REMOVED_AFTER_COMPACT` (new ids)
  removed, PCA-whitening fitted (dim 8) on the live rows, HNSW graph built
  (M=8, ef_construction=64), rows 160..169 added (caught up by the writer and
  saved on close).
"""
from __future__ import annotations

import shutil
import sys
from pathlib import Path

import numpy as np

DIM = 16
N_IMAGES = 8
REMOVED_IMAGE = "img5.png"
#: ids (of the first 120 rows) removed before the compaction
REMOVED_BEFORE_COMPACT = [3, 7, 40, 41, 99]
#: ids (after the compaction) removed before the whitening fit
REMOVED_AFTER_COMPACT = [0, 50, 130]
WHITEN_DIM = 8


def image_array(i: int) -> np.ndarray:
    """Image ``i``: a 32x32 BGR uint8 image of 4 random colour blocks plus noise."""
    rng = np.random.default_rng(100 + i)
    img = np.empty((32, 32, 3), np.uint8)
    for by in range(2):
        for bx in range(2):
            img[by * 16:(by + 1) * 16, bx * 16:(bx + 1) * 16] = rng.integers(0, 256, 3)
    noise = rng.integers(-20, 21, img.shape)
    return np.clip(img.astype(np.int64) + noise, 0, 255).astype(np.uint8)


def custom_vectors() -> np.ndarray:
    """The 170 rows of the custom index, in the order they were added (float32)."""
    rng = np.random.default_rng(7)
    centres = rng.standard_normal((6, DIM)) * 3
    x = centres[rng.integers(0, 6, 170)] + rng.standard_normal((170, DIM)) * np.linspace(0.3, 2.0, DIM)
    return x.astype(np.float32)


def main(out: Path) -> None:
    import cv2

    from fastimg.index import Index

    if out.exists():
        shutil.rmtree(out)
    images = out / "images"
    images.mkdir(parents=True)
    for i in range(N_IMAGES):
        assert cv2.imwrite(str(images / f"img{i}.png"), image_array(i))

    with Index.create(out / "hsv72", descriptor="hsv72", root=images) as ix:
        report = ix.add(images)
        assert report.added == N_IMAGES, report
        ix.remove(images / REMOVED_IMAGE)
        ix.set_metadata(images / "img1.png", {"label": "fixture"})
        ix.search(images / "img0.png", k=3)  # writes the prepared cache

    x = custom_vectors()
    with Index.create(out / "custom", descriptor="custom", dim=DIM) as ix:
        ix.add_vectors(x[:120], [f"c{j:03d}" for j in range(120)])
        ix.remove(REMOVED_BEFORE_COMPACT)
        ix.compact()
        ix.add_vectors(x[120:160], [f"c{j:03d}" for j in range(120, 160)])
        ix.remove(REMOVED_AFTER_COMPACT)
        ix.fit_whitening(dim=WHITEN_DIM)
        ix.build_ann(M=8, ef_construction=64)
        ix.add_vectors(x[160:170], [f"c{j:03d}" for j in range(160, 170)])
    for p in out.rglob("*"):
        assert not p.name.endswith(("-wal", "-shm")), p


if __name__ == "__main__":
    main(Path(sys.argv[1]))
