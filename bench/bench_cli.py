"""Start-up and end-to-end latency of the ``fastimg`` command line.

* ``fastimg --help``: wall time of the whole process (target < 0.3 s; the test
  suite checks separately that it imports neither numba, cv2 nor hnswlib);
* ``fastimg query IMAGE``: wall time of the whole process against an index of N
  synthetic vectors (target: well under a second at N = 100,000), for the
  automatic mode and for ``--exact``, with a new image (decoded and described)
  and with an indexed one (its stored vector is used).

* ``fastimg query NEW_IMAGE`` side by side: the current code, whose
  ``describe`` takes the NumPy single-image path (no Numba start-up), against
  the same process forced onto the Numba kernel for the one image (the code
  before that path existed); rounds alternate, ``extra_info`` holds the ratio
  of the medians (``test_query_new_image_single_path_vs_kernel``).

Sizes follow ``FASTIMG_BENCH_SCALE`` (bench/conftest.py): N = 1,000 / 20,000 /
100,000. Run by hand with::

    flock /tmp/fastimg-bench.lock env FASTIMG_BENCH_SCALE=full \\
        .venv/bin/python -m pytest bench/bench_cli.py -p no:cacheprovider
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import SHARED_DATA, pick, scale

BIN = Path(sys.executable).with_name("fastimg")
N = pick(1_000, 20_000, 100_000)
ROUNDS = pick(1, 5, 15)


def _run(*args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "FASTIMG_INDEX"}
    res = subprocess.run([str(BIN), *args], capture_output=True, text=True, env=env, timeout=300)
    assert res.returncode == 0, res.stderr
    return res


def _query_image() -> Path:
    corel = SHARED_DATA / "corel1k" / "beaches"
    if corel.is_dir():
        return sorted(corel.glob("*.jpg"))[0]
    import importlib.util

    spec = importlib.util.find_spec("skimage")
    assert spec is not None and spec.origin, "needs ../shared/data/corel1k or scikit-image's sample images"
    return Path(spec.origin).parent / "data" / "astronaut.png"


@pytest.fixture(scope="module")
def synthetic_index(tmp_path_factory) -> Path:
    """An index of N random (non-negative, L1-normalised) vectors of the default descriptor."""
    from fastimg.image import load_image
    from fastimg.index import Index

    path = tmp_path_factory.mktemp("bench-cli") / "synthetic.fastimg"
    rng = np.random.default_rng(0)
    with Index.create(path) as index:
        dim = index.dim
        step = 50_000
        for start in range(0, N, step):
            n = min(step, N - start)
            v = rng.gamma(0.3, size=(n, dim)).astype(np.float32)
            v /= v.sum(axis=1, keepdims=True)
            index.add_vectors(v, [f"/synthetic/{i:07d}.jpg" for i in range(start, start + n)])
        # the query image under its own path, as an indexed item: querying by it uses the
        # stored vector (no decoding, no descriptor start-up)
        q = str(_query_image())
        index.add_vectors(index.descriptor.compute(load_image(q))[None, :], [q])
        assert len(index) == N + 1
    return path


def test_help_startup(benchmark):
    benchmark.group = "cli start-up"
    benchmark.extra_info["scale"] = scale()
    res = benchmark.pedantic(_run, args=("--help",), rounds=ROUNDS, iterations=1, warmup_rounds=1)
    assert res.stdout.startswith("usage: fastimg")


@pytest.mark.parametrize("mode,query", [("auto", "new"), ("exact", "new"), ("auto", "indexed")])
def test_query_end_to_end(benchmark, synthetic_index, tmp_path, mode, query):
    """``new``: an image not in the index (decoded and described: the descriptor's
    start-up is included); ``indexed``: an indexed path (its stored vector is used)."""
    benchmark.group = f"cli query end to end, N={N}"
    benchmark.extra_info.update({"scale": scale(), "n": N, "mode": mode, "query": query})
    img = _query_image()
    if query == "new":  # same pixels under another path: not found in the index
        img = Path(shutil.copy(img, tmp_path / ("new" + img.suffix)))
    args = ["query", str(img), "--index", str(synthetic_index), "-k", "10", "--json"]
    if mode == "exact":
        args.append("--exact")
    res = benchmark.pedantic(_run, args=tuple(args), rounds=ROUNDS, iterations=1, warmup_rounds=1)
    import json

    doc = json.loads(res.stdout)
    assert [r["rank"] for r in doc["results"]] == list(range(1, 11))
    benchmark.extra_info["took_ms_in_process"] = doc["took_ms"]


# The console script's own code, run with ``python -c``; the baseline first forces every
# Descriptor.compute onto the Numba kernel path (single=False), as before the single-image path.
_CLI = "import sys; from fastimg.cli import main; sys.argv[0] = 'fastimg'; sys.exit(main())"
_CLI_KERNEL = ("import fastimg.features.base as b; _c = b.Descriptor.compute; "
               "b.Descriptor.compute = lambda self, bgr, single=False: _c(self, bgr); " + _CLI)


def _run_py(code: str, *args: str) -> tuple[float, subprocess.CompletedProcess]:
    import time

    env = {k: v for k, v in os.environ.items() if k != "FASTIMG_INDEX"}
    t0 = time.perf_counter()
    res = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, env=env, timeout=300)
    wall = time.perf_counter() - t0
    assert res.returncode == 0, res.stderr
    return wall, res


@pytest.fixture(scope="module")
def corel_index(tmp_path_factory) -> Path:
    """A real index: 300 Corel-1k images (3 classes x 100; the query image's class is not among them)."""
    from fastimg.index import Index

    corel = SHARED_DATA / "corel1k"
    if not (corel / "bus").is_dir():
        pytest.skip("needs ../shared/data/corel1k")
    path = tmp_path_factory.mktemp("bench-cli-corel") / "corel300.fastimg"
    with Index.create(path) as index:
        index.add([corel / c for c in ("bus", "dinosaurs", "horses")], workers=1)
        assert len(index) == 300
    return path


@pytest.mark.parametrize("which", ["synthetic", "corel300"])
def test_query_new_image_single_path_vs_kernel(benchmark, request, tmp_path, which):
    """End-to-end ``fastimg query NEW_IMAGE`` (auto mode), current code vs the Numba-kernel
    baseline, interleaved round by round; both print the same results.  ``synthetic``: N
    vectors (see the module docstring); ``corel300``: 300 real Corel images."""
    import json
    import statistics

    index = request.getfixturevalue("synthetic_index" if which == "synthetic" else "corel_index")
    n = N + 1 if which == "synthetic" else 300
    benchmark.group = f"cli query new image, single-image path vs kernel, {which}"
    img = _query_image()
    img = Path(shutil.copy(img, tmp_path / ("new" + img.suffix)))
    args = ("query", str(img), "--index", str(index), "-k", "10", "--json")
    rounds = max(3, ROUNDS)
    walls: dict[str, list[float]] = {"kernel": [], "single": []}
    out = {}
    for r in range(rounds + 1):  # round 0 warms the OS cache and numba's on-disk cache
        for name, code in (("kernel", _CLI_KERNEL), ("single", _CLI)):
            wall, res = _run_py(code, *args)
            doc = json.loads(res.stdout)
            out[name] = [(h["id"], h["score"]) for h in doc["results"]]
            if r:
                walls[name].append(wall)
    assert out["kernel"] == out["single"]
    med = {k: statistics.median(v) for k, v in walls.items()}
    benchmark.extra_info.update({
        "scale": scale(), "n": n, "rounds": rounds,
        "kernel_median_s": round(med["kernel"], 3), "single_median_s": round(med["single"], 3),
        "kernel_min_s": round(min(walls["kernel"]), 3), "single_min_s": round(min(walls["single"]), 3),
        "speedup_median": round(med["kernel"] / med["single"], 2),
    })
    print(f"\nquery new image, {which} N={n}: kernel median {med['kernel']:.3f} s (min {min(walls['kernel']):.3f}), "
          f"single-image path median {med['single']:.3f} s (min {min(walls['single']):.3f}), "
          f"ratio {med['kernel'] / med['single']:.2f}x")
    benchmark.pedantic(_run_py, args=(_CLI, *args), rounds=1, iterations=1)
