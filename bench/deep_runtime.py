"""cnn-crow on Corel-1k: images/s and mAP with onnxruntime (fastimg) against cv2.dnn (before).

fastimg ran its CNN with OpenCV's ``cv2.dnn`` classic engine until OpenCV 5.1
removed it; it now runs the same ONNX model with onnxruntime.  This script
times both on the same images in the same run, with the same thread count:

* ``cv2.dnn (classic engine)``: the former pipeline, written out here as the
  baseline (``readNetFromONNX(..., ENGINE_CLASSIC)``, ``blobFromImages``,
  ``forward("Relu_48:0")``, batches of 8 images of one size, CroW + L2);
  skipped, with a message, on an OpenCV without the classic engine (5.1+);
* ``fastimg describe_many``: ``fastimg.describe_many(paths, "cnn-crow")``.

Both include decoding (``fastimg.load_image``), resizing and pooling; both use
2 threads (``cv2.setNumThreads`` / ``FASTIMG_NUM_THREADS``).  mAP: every image
queries the other 999, cosine, :func:`fastimg.eval.evaluate_scores`.

    .venv/bin/python bench/deep_runtime.py [--rounds 2] [--limit N]

To time the baseline, run it in an environment whose OpenCV still has the
classic engine (5.0 or 4.x), e.g. the lock with ``opencv-python-headless==5.0.0.93``.
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

THREADS = 2
os.environ["FASTIMG_NUM_THREADS"] = str(THREADS)

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from conftest import SHARED_DATA  # noqa: E402


def corel(limit: int | None) -> tuple[list[Path], np.ndarray]:
    root = SHARED_DATA / "corel1k"
    classes = sorted(p.name for p in root.iterdir() if p.is_dir())
    paths, labels = [], []
    for ci, c in enumerate(classes):
        files = sorted((root / c).glob("*.jpg"))
        if limit:
            files = files[: max(2, limit // len(classes))]
        paths += files
        labels += [ci] * len(files)
    return paths, np.array(labels)


def cv2_dnn_crow(paths: list[Path]) -> np.ndarray:
    """The former fastimg pipeline on cv2.dnn's classic engine (the baseline)."""
    import cv2

    from fastimg.features.deep import DEFAULT_LAYER, DEFAULT_MEAN, CnnFeatureExtractor, default_model_path, pool
    from fastimg.image import load_image
    from fastimg.projection import l2_normalize

    cv2.setNumThreads(THREADS)
    net = cv2.dnn.readNetFromONNX(str(default_model_path()), cv2.dnn.ENGINE_CLASSIC)
    names = set(net.getLayerNames())
    layer = next(n for n in (DEFAULT_LAYER, "onnx_node!" + DEFAULT_LAYER[:-2], DEFAULT_LAYER[:-2]) if n in names)
    sizing = CnnFeatureExtractor()  # only its target_size/preprocess (same resizing as before)
    images = [sizing.preprocess(load_image(p, max_side=384)) for p in paths]
    groups: dict = {}
    for i, im in enumerate(images):
        groups.setdefault(im.shape[:2], []).append(i)
    out = np.zeros((len(images), 1024), np.float32)
    for idx in groups.values():
        for s in range(0, len(idx), 8):
            part = idx[s:s + 8]
            blob = cv2.dnn.blobFromImages([images[i] for i in part], 1.0, None, DEFAULT_MEAN, False, False)
            net.setInput(np.ascontiguousarray(blob.transpose(0, 2, 3, 1)))
            maps = net.forward(layer)
            for j, i in enumerate(part):
                out[i] = pool(maps[j], "crow")
    return l2_normalize(out)


def fastimg_crow(paths: list[Path]) -> np.ndarray:
    import fastimg

    m, errors = fastimg.describe_many(paths, "cnn-crow", workers=THREADS)
    assert not errors, errors
    return m


def mean_ap(vectors: np.ndarray, labels: np.ndarray) -> float:
    from fastimg.eval import evaluate_scores

    scores = vectors.astype(np.float64) @ vectors.astype(np.float64).T
    return float(evaluate_scores(scores, labels, higher_is_better=True, exclude_self=True)["map"])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=2, help="timed rounds per pipeline, interleaved")
    ap.add_argument("--limit", type=int, default=None, help="use about N Corel images (default: all 1000)")
    args = ap.parse_args()
    import cv2
    import onnxruntime

    paths, labels = corel(args.limit)
    runs = {"fastimg describe_many (onnxruntime)": fastimg_crow}
    if hasattr(cv2.dnn, "ENGINE_CLASSIC"):
        runs = {"cv2.dnn classic engine (before)": cv2_dnn_crow, **runs}
    else:
        print(f"baseline skipped: OpenCV {cv2.__version__} has no cv2.dnn.ENGINE_CLASSIC")
    for fn in runs.values():  # warm-up: model load, first allocations
        fn(paths[:16])
    best: dict = {name: float("inf") for name in runs}
    vectors: dict = {}
    for _ in range(args.rounds):
        for name, fn in runs.items():
            t = time.perf_counter()
            vectors[name] = fn(paths)
            best[name] = min(best[name], time.perf_counter() - t)
    print(f"Corel-1k, {len(paths)} images, {THREADS} threads, best of {args.rounds} interleaved rounds; "
          f"OpenCV {cv2.__version__}, onnxruntime {onnxruntime.__version__}, "
          f"{platform.python_version()}, {platform.machine()}")
    print("| pipeline | images/s | mAP |")
    print("|---|---:|---:|")
    for name in runs:
        print(f"| {name} | {len(paths) / best[name]:.1f} | {mean_ap(vectors[name], labels):.4f} |")
    if len(runs) == 2:
        a, b = (vectors[n] for n in runs)
        print(f"speed-up {best[list(runs)[0]] / best[list(runs)[1]]:.2f}x; "
              f"max |cos(a_i, b_i) - 1| = {np.abs((a * b).sum(1) - 1).max():.2e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
