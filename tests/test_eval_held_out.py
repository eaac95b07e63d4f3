"""Held-out evaluation of metric learning: ``evaluate(..., train_fraction=, splits=, seed=, learn=)``
and ``fastimg eval --train-fraction``.

Oracle, the same protocol written here in NumPy: the split's defining properties
are checked (disjoint parts covering the collection; by image, every class in
both parts with ``round(fraction * count)`` images in train; by class, no class
in both); the models are fitted on the train part by independent code
(scikit-learn's LDA, an SVD for the PCA-whitening); the test part alone is
ranked by a float64 brute force (cosine) and AP / P@10 / N-S are computed with
plain loops.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from _photos import photo_tree
from fastimg.eval import Dataset, evaluate, format_table
from fastimg.learn import split_labels
from test_index_projection import Oracle as LdaOracle
from test_index_projection import labelled
from test_whitening import Oracle as PcaOracle

D = 72  # the dimension of hsv72, the descriptor named for the cached features


def collection(n: int, classes: int, *, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Classes apart along a few directions, under larger label-free variance."""
    return labelled(n, D, classes, seed=seed, noise=1.0)


def dataset(tmp_path: Path, y: np.ndarray, layout: str) -> Dataset:
    names = [f"c{c}" for c in range(int(y.max()) + 1)]
    return Dataset(tmp_path, layout, [tmp_path / f"{i}.jpg" for i in range(y.size)], y.astype(np.int64),
                   np.arange(y.size, dtype=np.int64), layout != "ukbench", names)


def check_split(y: np.ndarray, train: np.ndarray, test: np.ndarray, by: str, fraction: float) -> None:
    assert np.intersect1d(train, test).size == 0 and np.union1d(train, test).size == y.size
    if by == "class":
        assert not set(y[train]) & set(y[test])
        assert len(set(y[train])) == round(fraction * len(set(y)))
    else:
        for c in set(y):
            count = int((y == c).sum())
            assert int((y[train] == c).sum()) == round(fraction * count) and (y[test] == c).any()


def oracle(x: np.ndarray, y: np.ndarray, by: str, fraction: float, seed: int, model: str,
           query_counts: bool) -> dict:
    train, test = split_labels(y, fraction, by=by, seed=seed)
    check_split(y, train, test, by, fraction)
    xt, yt = np.asarray(x[test], dtype=np.float64), y[test]
    if model == "none":
        z = xt / np.linalg.norm(xt, axis=1, keepdims=True)
    elif model == "whiten:dim=8":
        z = PcaOracle(x[train], 8)(xt)
    else:
        assert model == "lda"
        z = LdaOracle(x[train], y[train])(xt)
    s = z @ z.T
    aps, p10, ns = [], [], []
    for i in range(yt.size):
        order = np.argsort(-s[i], kind="stable")
        if not query_counts:
            order = order[order != i]
        rel = yt[order] == yt[i]
        n_rel = int(rel.sum())
        hits = 0
        ap = 0.0
        for rank, r in enumerate(rel, 1):
            if r:
                hits += 1
                ap += hits / rank
        aps.append(ap / n_rel)
        p10.append(rel[:10].mean())
        ns.append(rel[:4].sum())
    return {"map": float(np.mean(aps)), "p@10": float(np.mean(p10)), "ns": float(np.mean(ns)),
            "n_train": int(train.size), "n_test": int(test.size), "n_queries": int(test.size)}


@pytest.mark.parametrize("layout", ["folders", "ukbench"])
def test_held_out_rows_equal_the_numpy_oracle(tmp_path, layout):
    if layout == "folders":
        x, y = collection(240, 6, seed=1)
        measures, fraction = ["map", "p@10"], 0.5
    else:  # groups of 4, the query counted (N-S)
        x, y = collection(96, 24, seed=2)
        measures, fraction = ["ns", "map"], 0.5
    learn = ["none", "whiten:dim=8", "lda"]
    rows = evaluate(dataset(tmp_path, y, layout), descriptors=["hsv72"], metrics=["cosine"], measures=measures,
                    features={"hsv72": (x, {})}, train_fraction=fraction, splits=["image", "class"], seed=3,
                    learn=learn)
    assert [(r["split"], r["learn"]) for r in rows] == [(s, m) for s in ("image", "class") for m in learn]
    for r in rows:
        assert "error" not in r, r
        want = oracle(x, y, r["split"], fraction, 3, r["learn"], query_counts=layout == "ukbench")
        assert (r["metric"], r["rerank"]) == ("cosine", "none")
        for key in ("n_train", "n_test", "n_queries"):
            assert r[key] == want[key], (key, r)
        for m in measures:
            assert r[m] == pytest.approx(want[m], abs=1e-5), (m, r, want)
    by = {(r["split"], r["learn"]): r for r in rows}
    if layout == "folders":  # what the labels teach carries over to held-out images of the same classes
        assert by[("image", "lda")]["map"] > by[("image", "none")]["map"] + 0.1
    table = format_table(rows, measures)
    assert table.splitlines()[0].split()[:4] == ["descriptor", "split", "learn", "metric"]


def test_defaults_and_bad_arguments(tmp_path):
    x, y = collection(60, 3, seed=4)
    ds = dataset(tmp_path, y, "folders")
    feats = {"hsv72": (np.abs(x), {})}
    rows = evaluate(ds, descriptors=["hsv72"], features=feats, train_fraction=0.5, measures=["map"])
    # default models: the raw descriptor with its own metric, LDA with the cosine; default split: image
    assert [(r["split"], r["learn"], r["metric"]) for r in rows] == [
        ("image", "none", "bhattacharyya"), ("image", "lda", "cosine")]
    assert all("error" not in r for r in rows)
    rows = evaluate(ds, descriptors=["hsv72"], features=feats, train_fraction=0.5, measures=["map"],
                    learn=["lda:dim=500"], metrics=["cosine"])
    assert "dim=500 is larger" in rows[0]["error"]  # a model that cannot be fitted is an error row
    for kwargs, match in [({"learn": ["lda"]}, "needs train_fraction"),
                          ({"train_fraction": 1.0}, "strictly between 0 and 1"),
                          ({"train_fraction": 0.5, "splits": ["rows"]}, "'image' and 'class'"),
                          ({"train_fraction": 0.5, "learn": ["pca"]}, "unknown learn spec 'pca'"),
                          ({"train_fraction": 0.5, "learn": ["lda:shrinkage"]}, "malformed learn spec parameter")]:
        with pytest.raises(ValueError, match=match):
            evaluate(ds, descriptors=["hsv72"], features=feats, **kwargs)


def test_cli_eval_train_fraction(tmp_path):
    photo_tree(tmp_path / "photos", classes=("beaches", "dinosaurs", "horses", "flowers"), per_class=4)
    exe = Path(sys.executable).with_name("fastimg")

    def run(*args):
        return subprocess.run([str(exe), *map(str, args)], capture_output=True, text=True, timeout=300,
                              stdin=subprocess.DEVNULL, env=dict(os.environ))

    res = run("eval", tmp_path / "photos", "--descriptor", "hsv72", "--train-fraction", "0.5", "--split", "image",
              "--split", "class", "--learn", "none", "--learn", "lda", "--metric", "cosine", "--json")
    assert res.returncode == 0, res.stderr
    doc = json.loads(res.stdout)
    assert doc["held_out"] == {"train_fraction": 0.5, "splits": ["image", "class"], "seed": 0}
    got = [(r["split"], r["learn"], r["n_train"], r["n_test"]) for r in doc["results"]]
    assert got == [("image", "none", 8, 8), ("image", "lda", 8, 8), ("class", "none", 8, 8), ("class", "lda", 8, 8)]
    assert all(0.0 <= r["map"] <= 1.0 for r in doc["results"])
    text = run("eval", tmp_path / "photos", "--descriptor", "hsv72", "--train-fraction", "0.5", "--metric", "cosine")
    assert text.returncode == 0 and "held out" in text.stdout and " lda " in text.stdout, text.stderr
    usage = run("eval", tmp_path / "photos", "--learn", "lda")
    assert usage.returncode == 2 and "--train-fraction" in usage.stderr
    bad = run("eval", tmp_path / "photos", "--train-fraction", "1.5")
    assert bad.returncode == 2 and "strictly between 0 and 1" in bad.stderr
