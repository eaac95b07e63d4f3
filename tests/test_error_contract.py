"""The error contract (issue 21, item 1), walked over every public entry point.

README: every error fastimg raises derives from ``fastimg.FastimgError`` and from the
matching built-in, and names the argument or file.  Each case below calls a public
function or method with one bad argument and checks: the exception is a
``FastimgError`` of the documented class, also the built-in a Python user would catch,
its message names what was wrong, and it was raised by fastimg's own code (the last
frame is in the fastimg package: not a traceback from deep inside NumPy or OpenCV).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import fastimg
from fastimg import (
    AnnSearchError,
    ArgumentError,
    ArgumentTypeError,
    DescriptorError,
    FastimgError,
    ImageNotFoundError,
    IndexClosedError,
    IndexExistsError,
    IndexNotFoundError,
    NotInIndexError,
)

PKG = str(Path(fastimg.__file__).parent)
D = 72


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    root = tmp_path_factory.mktemp("contract")
    rng = np.random.default_rng(0)
    data = rng.random((40, D), dtype=np.float32)
    with fastimg.Index.create(root / "ix", descriptor="hsv72") as ix:
        ix.add_vectors(data, [f"v{i}" for i in range(len(data))])
    closed = fastimg.Index.open(root / "ix")
    closed.close()
    return {"root": root, "data": data, "ix": fastimg.Index.open(root / "ix"), "closed": closed,
            "w": fastimg.Index.open(root / "ix", mode="a")}


def cases(env):
    data, ix, root = env["data"], env["ix"], env["root"]
    q = data[0]
    yield "topk data list", ArgumentTypeError, TypeError, "data", lambda: fastimg.topk(data.tolist(), q)
    yield "topk data float64", ArgumentTypeError, TypeError, "float32", lambda: fastimg.topk(data.astype(float), q)
    yield "topk dim", ArgumentError, ValueError, "dimension", lambda: fastimg.topk(data, q[:5])
    yield "topk k=0", ArgumentError, ValueError, "k", lambda: fastimg.topk(data, q, k=0)
    yield "topk k=2.5", ArgumentTypeError, TypeError, "k", lambda: fastimg.topk(data, q, k=2.5)
    yield "topk metric", ArgumentError, ValueError, "euclid", lambda: fastimg.topk(data, q, metric="euclid")
    yield "topk metric type", ArgumentTypeError, TypeError, "metric", lambda: fastimg.topk(data, q, metric=3)
    yield "topk exclude", ArgumentError, ValueError, "exclude", lambda: fastimg.topk(data, q, exclude=[99])
    yield "topk threads", ArgumentError, ValueError, "threads", lambda: fastimg.topk(data, q, threads=0)
    yield "topk NaN", ArgumentError, ValueError, "finite", lambda: fastimg.topk(data, np.full(D, np.nan))
    yield "searcher chunk", ArgumentError, ValueError, "chunk_rows", \
        lambda: fastimg.ExactSearcher(data, "pearson", chunk_rows=0)
    yield "describe missing", ImageNotFoundError, FileNotFoundError, "nope.jpg", lambda: fastimg.describe(root / "nope.jpg")
    yield "describe name", DescriptorError, ValueError, "nope", \
        lambda: fastimg.describe(np.zeros((8, 8, 3), np.uint8), "nope")
    yield "describe_many workers", ArgumentError, ValueError, "workers", \
        lambda: fastimg.describe_many([], "hsv72", workers=0)
    yield "load_image max_side", ArgumentError, ValueError, "max_side", \
        lambda: fastimg.load_image(np.zeros((8, 8, 3), np.uint8), max_side=0)
    yield "create existing", IndexExistsError, FileExistsError, "already", \
        lambda: fastimg.Index.create(root / "ix", descriptor="hsv72")
    yield "open missing", IndexNotFoundError, FileNotFoundError, "no fastimg index", \
        lambda: fastimg.Index.open(root / "missing")
    yield "open mode", ArgumentError, ValueError, "mode", lambda: fastimg.Index.open(root / "ix", mode="w")
    yield "search dim", ArgumentError, ValueError, "dimension", lambda: ix.search(np.zeros(5, np.float32))
    yield "search metric", ArgumentError, ValueError, "euclid", lambda: ix.search(q, metric="euclid")
    yield "search k", ArgumentError, ValueError, "k", lambda: ix.search(q, k=0)
    yield "search rerank", ArgumentError, ValueError, "bogus", lambda: ix.search(q, rerank="bogus")
    yield "search ann", ArgumentError, ValueError, "graph", lambda: ix.search(q, mode="ann")
    yield "search mode", ArgumentError, ValueError, "mode", lambda: ix.search(q, mode="fast")
    yield "search threshold", ArgumentError, ValueError, "threshold", lambda: ix.search(q, threshold="high")
    yield "search int", ArgumentError, ValueError, "similar", lambda: ix.search(3)
    yield "search closed", IndexClosedError, ValueError, "closed", lambda: env["closed"].search(q)
    yield "similar missing", NotInIndexError, KeyError, "not in the index", lambda: ix.similar("nope")
    yield "entry slice", ArgumentTypeError, TypeError, "sequence", lambda: ix[0:2]
    yield "batch k", ArgumentError, ValueError, "k", lambda: ix.search_batch(data[:2], k=-1)
    yield "add_vectors shape", ArgumentError, ValueError, "shape", \
        lambda: env["w"].add_vectors(np.zeros((2, 63)), ["a", "b"])
    yield "add_vectors names", ArgumentError, ValueError, "names", \
        lambda: env["w"].add_vectors(np.zeros((2, D)), ["a"])
    yield "remove type", ArgumentError, ValueError, "remove", lambda: env["w"].remove([2.5])
    yield "remove missing", NotInIndexError, KeyError, "not in the index", lambda: env["w"].remove(["nope"])
    yield "add batch_size", ArgumentError, ValueError, "batch_size", lambda: env["w"].add([], batch_size=0)
    yield "build_ann M", AnnSearchError, ValueError, "M", lambda: env["w"].build_ann(M=0)
    yield "hnsw build", AnnSearchError, ValueError, "", lambda: fastimg.HnswGraph.build(data[:, :0], "cosine")
    yield "load_dataset", FastimgError, ValueError, "missing", lambda: fastimg.load_dataset(root / "missing")
    # whitening and learned projections post-process a descriptor: DescriptorError
    yield "whitening dim", DescriptorError, ValueError, "dim", lambda: fastimg.PCAWhitening(dim=0).fit(data)
    yield "learn labels", DescriptorError, ValueError, "labels", \
        lambda: fastimg.learn_projection(data, np.zeros(3))


def _ids(env=None):
    return [c[0] for c in cases({"data": np.zeros((2, D), np.float32), "ix": None, "root": Path("."),
                                 "closed": None, "w": None})]


@pytest.mark.parametrize("name", _ids())
def test_error_contract(env, name):
    (case,) = [c for c in cases(env) if c[0] == name]
    _, cls, builtin, words, call = case
    with pytest.raises(FastimgError) as info:
        call()
    exc = info.value
    assert isinstance(exc, cls), f"{name}: {type(exc).__mro__}"
    assert isinstance(exc, builtin), f"{name}: {type(exc).__name__} is not a {builtin.__name__}"
    assert words.lower() in str(exc).lower(), f"{name}: {exc}"
    assert str(info.traceback[-1].path).startswith(PKG), f"{name}: raised in {info.traceback[-1].path}"
