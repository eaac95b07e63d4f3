"""A projection learned from labels, stored in an index (``Index.fit_projection`` /
``clear_projection``, ``fastimg learn``).

Oracle: scikit-learn's ``LinearDiscriminantAnalysis(solver="eigen",
shrinkage=0.5)`` fitted on the labelled live rows (its ``transform`` is the
centred projection on the discriminant axes with the same scales as fastimg's
LDA), L2-normalised, then a brute-force top-k of the metric in float64 (helpers
of ``test_whitening``).  The axes are only defined up to sign, so the comparison
is made on what is invariant: the ids returned and their scores.
"""
from __future__ import annotations

import csv
import json
import logging
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from sklearn.discriminant_analysis import LinearDiscriminantAnalysis

from _photos import photo_tree
from fastimg.errors import ArgumentError, FastimgError, IndexReadOnlyError
from fastimg.index import Index
from fastimg.projection import LinearProjection, PCAWhitening, load_projection
from test_whitening import assert_matches, live_mask, scores_of

D = 24
N = 320
C = 5


def labelled(n: int = N, d: int = D, classes: int = C, *, seed: int, noise: float = 3.0
             ) -> tuple[np.ndarray, np.ndarray]:
    """Classes separated along a few directions, hidden under large label-free variance (``noise``)."""
    rng = np.random.default_rng(seed)
    centres = np.zeros((classes, d))
    centres[:, :4] = rng.normal(size=(classes, 4)) * 1.5
    y = rng.permutation(np.arange(n) % classes)
    x = centres[y] + rng.normal(size=(n, d)) * np.r_[np.full(4, 0.5), np.full(d - 4, noise)]
    return x.astype(np.float32), y


class Oracle:
    """scikit-learn's LDA (eigen solver, shrinkage 0.5) centred on the training
    mean (its eigen ``transform`` is ``x @ scalings_``), then L2 normalisation."""

    def __init__(self, x: np.ndarray, y: np.ndarray, dim: int | None = None):
        x = np.asarray(x, dtype=np.float64)
        self.lda = LinearDiscriminantAnalysis(solver="eigen", shrinkage=0.5).fit(x, y)
        self.dim = dim or np.unique(y).size - 1
        self.centre = self.lda.transform(x.mean(axis=0, keepdims=True))

    def __call__(self, v: np.ndarray) -> np.ndarray:
        z = (self.lda.transform(np.atleast_2d(np.asarray(v, dtype=np.float64))) - self.centre)[:, :self.dim]
        return z / np.linalg.norm(z, axis=-1, keepdims=True)


def make_index(path: Path, x: np.ndarray, metric: str = "cosine") -> Index:
    index = Index.create(path, descriptor="custom", dim=x.shape[1], metric=metric)
    index.add_vectors(x, [f"v{i}" for i in range(len(x))])
    return index


def fit_files(path: Path) -> list[str]:
    return sorted(p.name for p in path.iterdir() if p.name.lstrip(".").startswith(("whitening", "projection")))


# --------------------------------------------------------------------------- fit + search
@pytest.mark.parametrize("metric", ["cosine", "l2"])
@pytest.mark.parametrize("dim", [None, 2])
def test_search_after_fit_equals_sklearn_oracle(tmp_path, metric, dim):
    x, y = labelled(seed=1)
    queries, _ = labelled(9, seed=2)
    with make_index(tmp_path / "ix", x, metric=metric) as index:
        index.remove(list(range(0, N, 16)))  # deleted rows are neither fitted on nor returned
        train = [i for i in range(0, N, 2) if i % 16]  # half the live rows are labelled
        fit = index.fit_projection({f"v{i}": f"class{y[i]}" for i in train}, dim=dim)
        assert (fit["method"], fit["dim"], fit["n_fit"]) == ("lda", dim or C - 1, len(train))
        assert fit["labels"] == {"given": len(train), "matched": len(train), "not_in_index": 0, "classes": C}
        assert index.info()["projection"] == dict({k: v for k, v in fit.items() if k != "not_in_index_examples"},
                                                  stale_rows=0)
        assert index.info()["whitening"] is None
        np.testing.assert_array_equal(index.vectors, x)  # the raw vectors are untouched

        oracle = Oracle(x[train], y[train], dim)
        ids, scores = index.search_batch(queries, k=10)
        assert_matches(metric, ids, scores, scores_of(metric, oracle(queries), oracle(x)), live_mask(index, 9), 10)
        hits = index.similar("v3", k=5)  # by entry: the stored row, projected, itself left out
        allowed = live_mask(index, 1)
        allowed[0, 3] = False
        assert_matches(metric, np.array([[h.id for h in hits]]), np.array([[h.score for h in hits]]),
                       scores_of(metric, oracle(x[[3]]), oracle(x)), allowed, 5)


def test_projection_brings_classes_together(tmp_path):
    """What the labels say is what the search finds: held-out queries retrieve their class."""
    x, y = labelled(seed=3)
    test = np.arange(1, N, 2)
    with make_index(tmp_path / "ix", x) as index:
        def precision() -> float:
            ids, _ = index.search_batch(x[test], k=10)
            return float(np.mean(y[ids] == y[test][:, None]))  # the query itself counts as relevant

        raw = precision()
        index.fit_projection({i: int(y[i]) for i in range(0, N, 2)})  # ids as items
        learned = precision()
    assert learned > raw + 0.25, (raw, learned)


def test_persists_rows_added_later_and_compaction(tmp_path):
    x, y = labelled(seed=4)
    extra, _ = labelled(30, seed=5)
    queries, _ = labelled(5, seed=6)
    with make_index(tmp_path / "ix", x) as index:
        index.fit_projection({f"v{i}": int(y[i]) for i in range(N)})
    oracle = Oracle(x, y)
    with Index.open(tmp_path / "ix", mode="a") as index:
        index.add_vectors(extra, [f"e{i}" for i in range(30)])
        assert index.info()["projection"]["stale_rows"] == 30
        allx = np.vstack([x, extra])
        ids, scores = index.search_batch(queries, k=10)
        assert_matches("cosine", ids, scores, scores_of("cosine", oracle(queries), oracle(allx)),
                       live_mask(index, 5), 10)
        index.remove(list(range(0, N + 30, 3)))
        index.compact()
        kept = np.array([i for i in range(N + 30) if i % 3])
        assert index.info()["projection"]["method"] == "lda"
        ids, scores = index.search_batch(queries, k=10)
        assert_matches("cosine", ids, scores, scores_of("cosine", oracle(queries), oracle(allx[kept])),
                       live_mask(index, 5), 10)
    with Index.open(tmp_path / "ix", mode="r") as reader:
        with pytest.raises(IndexReadOnlyError, match="read-only"):
            reader.fit_projection({"v1": 0, "v2": 1})
        with pytest.raises(IndexReadOnlyError, match="read-only"):
            reader.clear_projection()
        assert reader.search_batch(queries, k=10)[0].tolist() == ids.tolist()


def test_one_linear_map_whitening_and_projection_replace_each_other(tmp_path):
    x, y = labelled(seed=7)
    queries, _ = labelled(4, seed=8)
    labels = {f"v{i}": int(y[i]) for i in range(N)}
    with make_index(tmp_path / "ix", x) as index:
        index.fit_whitening(dim=6)
        fit = index.fit_projection(labels)
        info = index.info()
        assert info["whitening"] is None and info["projection"]["fit_id"] == fit["fit_id"]
        assert fit_files(tmp_path / "ix") == [fit["file"]]  # the whitening's file is gone
        assert not [c for c in info["caches"] if c.startswith("whitened-") and fit["fit_id"] not in c]
        assert isinstance(load_projection(index.whitening_path), LinearProjection)
        index.clear_whitening()  # a no-op: no whitening is fitted
        assert index.info()["projection"] is not None

        w = index.fit_whitening(dim=6)
        assert index.info()["projection"] is None and fit_files(tmp_path / "ix") == [w["file"]]
        assert isinstance(load_projection(index.whitening_path), PCAWhitening)
        index.clear_projection()  # a no-op: no projection is fitted
        assert index.info()["whitening"] is not None

        index.fit_projection(labels)
        index.clear_projection()
        assert index.info()["projection"] is None and fit_files(tmp_path / "ix") == []
        assert index.whitening_path is None
        ids, scores = index.search_batch(queries, k=10)  # raw cosine again
        xn = x / np.linalg.norm(x.astype(np.float64), axis=1, keepdims=True)
        qn = queries / np.linalg.norm(queries.astype(np.float64), axis=1, keepdims=True)
        assert_matches("cosine", ids, scores, qn @ xn.T, live_mask(index, 4), 10)


def test_refit_and_hnsw_graph(tmp_path):
    x, y = labelled(seed=9)
    queries, _ = labelled(6, seed=10)
    with make_index(tmp_path / "ix", x) as index:
        index.build_ann()
        index.fit_projection({f"v{i}": int(y[i]) for i in range(0, N, 2)})
        with pytest.raises(ValueError, match="rebuild"):  # a fit invalidates the graph
            index.search_batch(queries, k=5, mode="ann")
        assert index.info()["ann"]["auto_mode"] == "exact"
        # a re-fit (other labels) moves the results to the new oracle
        fit = index.fit_projection({f"v{i}": int(y[i]) for i in range(1, N, 2)}, dim=3)
        oracle = Oracle(x[1::2], y[1::2], 3)
        full = scores_of("cosine", oracle(queries), oracle(x))
        ids, scores = index.search_batch(queries, k=10, mode="auto")
        assert_matches("cosine", ids, scores, full, live_mask(index, 6), 10)

        meta = index.build_ann()  # now built in the learned space
        assert meta["whitening"] == fit["fit_id"]
        ids, scores = index.search_batch(queries, k=10, mode="ann")
        for r in range(6):  # scored exactly in the learned space
            np.testing.assert_allclose(scores[r], full[r, ids[r]], atol=2e-5)
        exact_ids, _ = index.search_batch(queries, k=10, mode="exact")
        assert np.mean([len(set(ids[r]) & set(exact_ids[r])) / 10 for r in range(6)]) >= 0.9
        index.fit_projection({f"v{i}": int(y[i]) for i in range(N)})
        with pytest.raises(ValueError, match="rebuild"):
            index.search_batch(queries, k=5, mode="ann")


def test_nca_is_stored_and_applied_like_lda(tmp_path):
    """NCA itself is checked against scikit-learn in test_learn; here: the index stores the fitted
    map and searches with it (oracle: the same fit made directly, then a numpy brute force)."""
    from fastimg.learn import learn_projection

    x, y = labelled(160, seed=17)
    queries, _ = labelled(4, seed=18)
    with make_index(tmp_path / "ix", x, metric="l2") as index:
        fit = index.fit_projection({f"v{i}": int(y[i]) for i in range(160)}, method="nca", dim=3, max_iter=5)
        assert (fit["method"], fit["dim"], fit["params"]["max_iter"]) == ("nca", 3, 5)
        p = learn_projection(x, y, method="nca", dim=3, max_iter=5)
        z, zq = p.transform(x).astype(np.float64), p.transform(queries).astype(np.float64)
        ids, scores = index.search_batch(queries, k=8)
        assert_matches("l2", ids, scores, scores_of("l2", zq, z), live_mask(index, 4), 8)


# --------------------------------------------------------------------------- labels
def test_labels_from_csv_folders_and_mapping_give_the_same_fit(tmp_path, monkeypatch):
    classes = ("beaches", "dinosaurs", "horses")
    files = photo_tree(tmp_path / "photos", classes=classes, per_class=4)
    with Index.create(tmp_path / "ix", descriptor="hsv72", metric="cosine") as index:
        assert index.add([tmp_path / "photos"]).n_skipped == 0
        x = np.asarray(index.vectors, dtype=np.float64)
        y = np.array([classes.index(Path(p).parent.name) for p in index.paths(range(len(x)))])

        table = tmp_path / "labels" / "groups.csv"
        table.parent.mkdir()
        with open(table, "w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(["path", "label"])
            w.writerow(["# a comment row"])
            for f in files:  # relative to the CSV's directory
                w.writerow([os.path.relpath(f, table.parent), f.parent.name])
        by_csv = index.fit_projection(table)
        m_csv = load_projection(index.whitening_path)
        by_dir = index.fit_projection(tmp_path / "photos")
        m_dir = load_projection(index.whitening_path)
        monkeypatch.chdir(tmp_path)  # mapping keys relative to the current directory
        by_map = index.fit_projection({os.path.relpath(f, tmp_path): f.parent.name for f in files})
        m_map = load_projection(index.whitening_path)
    for fit in (by_csv, by_dir, by_map):
        assert fit["labels"] == {"given": 12, "matched": 12, "not_in_index": 0, "classes": 3}
    np.testing.assert_allclose(m_csv.matrix_, m_dir.matrix_)
    np.testing.assert_allclose(m_csv.matrix_, m_map.matrix_)
    lda = LinearDiscriminantAnalysis(solver="eigen", shrinkage=0.5).fit(x, y)
    z, zr = m_csv.transform(x, normalize=False).astype(np.float64), lda.transform(x)
    dm = ((z[:, None] - z[None]) ** 2).sum(-1)
    np.testing.assert_allclose(dm, ((zr[:, None] - zr[None]) ** 2).sum(-1), rtol=1e-5, atol=1e-6)


def test_labels_not_in_the_index_are_counted_and_skipped(tmp_path, caplog):
    x, y = labelled(seed=11)
    labels = {f"v{i}": int(y[i]) for i in range(N)}
    labels.update({f"ghost{i}": 0 for i in range(7)})
    labels["unlabelled"] = None
    with make_index(tmp_path / "ix", x) as index:
        index.remove(["v0", "v1"])  # deleted rows are not in the index either
        with caplog.at_level(logging.WARNING, logger="fastimg.index"):
            fit = index.fit_projection(labels)
        assert fit["labels"] == {"given": N + 7, "matched": N - 2, "not_in_index": 9, "classes": C}
        assert fit["not_in_index_examples"][:2] == ["v0", "v1"] and len(fit["not_in_index_examples"]) == 5
        assert "9 labelled items are not in the index" in caplog.text
        oracle = Oracle(x[2:], y[2:])
        queries, _ = labelled(3, seed=16)
        ids, scores = index.search_batch(queries, k=5)
        assert_matches("cosine", ids, scores, scores_of("cosine", oracle(queries), oracle(x)), live_mask(index, 3), 5)


def test_clear_errors(tmp_path):
    x, y = labelled(seed=12)
    with make_index(tmp_path / "ix", x) as index:
        before = index.search_batch(x[:2], k=4)
        cases = [
            ({"ghost": 1, "other": 2}, "none of the 2 labelled items is in the index"),
            ({"v1": "a", "v2": "a", "ghost": "b"}, r"all have the label 'a' \(1 labelled items are not in"),
            ({"v1": "a", "v2": "b"}, "at least one class with 2 or more examples"),
            ({"v1": "a", 1: "b"}, r"1 \(the same image as 'v1'\) is labelled both 'a' and 'b'"),
            (42, "labels must be a mapping"),
            (tmp_path / "nowhere.csv", "no such file or directory"),
        ]
        for labels, match in cases:
            with pytest.raises(ArgumentError, match=match):
                index.fit_projection(labels)
        good = {f"v{i}": int(y[i]) for i in range(N)}
        with pytest.raises(ArgumentError, match=f"dim={D + 1} is larger than the vectors' dimension D"):
            index.fit_projection(good, dim=D + 1)
        with pytest.raises(ArgumentError, match="unknown projection method 'pca'"):
            index.fit_projection(good, method="pca")
        with pytest.raises(ArgumentError, match="unknown"):
            index.fit_projection(good, shrinkage=0.5, power=2)
        bad = tmp_path / "bad.csv"
        bad.write_text("path,label\nv1,a\nonly-one-column\n")
        with pytest.raises(ArgumentError, match=r"bad.csv:3: expected 'path,label'"):
            index.fit_projection(bad)
        # nothing changed
        assert index.info()["projection"] is None and fit_files(tmp_path / "ix") == []
        assert index.search_batch(x[:2], k=4)[0].tolist() == before[0].tolist()
    with make_index(tmp_path / "hist", np.abs(x), metric="bhattacharyya") as index:
        with pytest.raises(ArgumentError, match="'bhattacharyya' needs non-negative vectors, but projected"):
            index.fit_projection({f"v{i}": int(y[i]) for i in range(N)})
    with make_index(tmp_path / "ix2", np.abs(x)) as index:
        index.fit_projection({f"v{i}": int(y[i]) for i in range(N)})
        with pytest.raises(ArgumentError, match="'chisqr' needs non-negative.*learned projection.*clear_projection"):
            index.search_batch(np.abs(x[:1]), k=3, metric="chisqr")
    assert issubclass(ArgumentError, FastimgError) and issubclass(ArgumentError, ValueError)


def test_a_record_from_before_versioned_files_still_loads(tmp_path):
    """Indexes whose whitening was saved as ``whitening.npz`` with a record without
    ``file``/``method`` search as before, and a new fit removes the old file."""
    x, y = labelled(seed=13)
    with make_index(tmp_path / "ix", x) as index:
        w = index.fit_whitening(dim=5)
        expect = index.search_batch(x[:3], k=6)
        os.replace(tmp_path / "ix" / w["file"], tmp_path / "ix" / "whitening.npz")
        index._store.set_meta("whitening", {k: v for k, v in w.items() if k not in ("file", "method")})
    with Index.open(tmp_path / "ix", mode="a") as index:
        got = index.search_batch(x[:3], k=6)
        assert got[0].tolist() == expect[0].tolist()
        np.testing.assert_allclose(got[1], expect[1])
        assert index.info()["whitening"]["power"] == 0.0 and index.info()["projection"] is None
        fit = index.fit_projection({f"v{i}": int(y[i]) for i in range(N)})
        assert fit_files(tmp_path / "ix") == [fit["file"]]


# --------------------------------------------------------------------------- SIGKILL
_KILLED_FIT = r"""
import os, signal, sys, numpy as np
import fastimg.index.whitening as w
from fastimg.index import Index
from fastimg.index.store import Store
path, where, labels = sys.argv[1], sys.argv[2], sys.argv[3]
if where == "before-record":      # the new file renamed into place, its record not committed
    real = Store.set_meta
    def set_meta(self, key, value):
        if key == "whitening" and value is not None:
            os.kill(os.getpid(), signal.SIGKILL)
        return real(self, key, value)
    Store.set_meta = set_meta
else:                             # the record committed, the old file not removed yet
    w.Whitening._remove_files = lambda self, keep: os.kill(os.getpid(), signal.SIGKILL)
ix = Index.open(path, mode="a")
ix.fit_projection(labels)
"""


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs POSIX signals")
@pytest.mark.parametrize("where", ["before-record", "after-record"])
@pytest.mark.parametrize("previous", ["whitening", "projection"])
def test_sigkill_during_a_refit_leaves_one_consistent_fit(tmp_path, where, previous):
    x, y = labelled(seed=14)
    queries, _ = labelled(5, seed=15)
    table = tmp_path / "labels.csv"
    table.write_text("".join(f"v{i},c{y[i]}\n" for i in range(1, N, 2)))
    with make_index(tmp_path / "ix", x) as index:
        if previous == "whitening":
            old = index.fit_whitening(dim=6)
        else:
            old = index.fit_projection({f"v{i}": int(y[i]) for i in range(0, N, 2)})
        old_result = index.search_batch(queries, k=10)
    script = tmp_path / "child.py"
    script.write_text(_KILLED_FIT)
    proc = subprocess.run([sys.executable, str(script), str(tmp_path / "ix"), where, str(table)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert len(fit_files(tmp_path / "ix")) == 2  # the old and the new file, one of them unrecorded

    new_oracle = Oracle(x[1::2], y[1::2])
    with Index.open(tmp_path / "ix", mode="r") as reader:  # a reader never fails, sees one fit
        info = reader.info()
        ids, scores = reader.search_batch(queries, k=10)
        if where == "before-record":  # the previous fit, as before the kill
            key = "whitening" if previous == "whitening" else "projection"
            assert info[key]["fit_id"] == old["fit_id"]
            assert ids.tolist() == old_result[0].tolist()
            np.testing.assert_allclose(scores, old_result[1])
        else:  # the new fit
            assert info["projection"]["labels"]["matched"] == N // 2 and info["whitening"] is None
            assert_matches("cosine", ids, scores, scores_of("cosine", new_oracle(queries), new_oracle(x)),
                           live_mask(reader, 5), 10)
    with Index.open(tmp_path / "ix", mode="a") as writer:  # the next fit tidies the files up
        fit = writer.fit_projection(table)
        assert fit_files(tmp_path / "ix") == [fit["file"]]
        ids, scores = writer.search_batch(queries, k=10)
        assert_matches("cosine", ids, scores, scores_of("cosine", new_oracle(queries), new_oracle(x)),
                       live_mask(writer, 5), 10)


# --------------------------------------------------------------------------- CLI
def test_cli_learn_info_query_and_clear(tmp_path):
    """``fastimg index``, ``learn --labels DIR`` / ``--labels CSV``, ``info``, ``query``, ``learn --clear``."""
    classes = ("beaches", "dinosaurs", "horses")
    files = photo_tree(tmp_path / "photos", classes=classes, per_class=4)
    idx = tmp_path / "ix"
    exe = Path(sys.executable).with_name("fastimg")
    env = {k: v for k, v in os.environ.items() if k != "FASTIMG_INDEX"}

    def run(*args, ok=True):
        res = subprocess.run([str(exe), *map(str, args)], capture_output=True, text=True, env=env, timeout=300,
                             stdin=subprocess.DEVNULL)
        if ok:
            assert res.returncode == 0, res.stderr
        return res

    run("index", tmp_path / "photos", "--index", idx, "--metric", "cosine", "-q", "--ann")
    table = tmp_path / "groups.csv"
    table.write_text("file,group\n" + "".join(f"photos/{f.parent.name}/{f.name},{f.parent.name}\n" for f in files)
                     + "photos/missing.jpg,beaches\n")
    out = run("learn", "-i", idx, "--labels", table, "--dim", "2").stdout
    assert "lda" in out and "12 labelled images" in out and "1 labelled item not in the index" in out, out
    assert "HNSW graph rebuilt" in out, out
    info = json.loads(run("info", "--index", idx, "--json").stdout)
    assert info["projection"]["method"] == "lda" and info["projection"]["dim"] == 2
    assert info["ann"]["built"] and info["ann"]["error"] is None and info["ann"]["auto_mode"] is not None
    text = run("info", "--index", idx).stdout
    assert "projection.method: lda" in text and "projection.labels.not_in_index: 1" in text, text

    res = json.loads(run("query", files[0], "--index", idx, "-k", "3", "--json", "--ann").stdout)
    with Index.open(idx) as index:
        raw = np.asarray(index.vectors, dtype=np.float64)
        names = index.paths(range(len(raw)))
    y = np.array([classes.index(Path(p).parent.name) for p in names])
    oracle = Oracle(raw, y, 2)
    z = oracle(raw)
    me = names.index(os.path.abspath(files[0]))
    allowed = np.ones((1, len(raw)), dtype=bool)
    allowed[0, me] = False
    got = np.array([[names.index(h["path"]) for h in res["results"]]])
    assert_matches("cosine", got, np.array([[h["score"] for h in res["results"]]]), (z[me] @ z.T)[None, :],
                   allowed, 3)

    doc = json.loads(run("learn", "-i", idx, "--labels", tmp_path / "photos", "--json").stdout)
    assert doc["projection"]["labels"]["matched"] == 12 and doc["projection"]["dim"] == 2  # 3 classes - 1

    run("learn", "-i", idx, "--clear")
    assert json.loads(run("info", "--index", idx, "--json").stdout)["projection"] is None

    bad = run("learn", "-i", idx, "--labels", tmp_path / "photos", "--dim", "9999", ok=False)
    assert bad.returncode == 1 and bad.stderr.count("\n") == 1 and "dim=9999" in bad.stderr, bad.stderr
    usage = run("learn", "-i", idx, ok=False)
    assert usage.returncode == 2 and "--labels" in usage.stderr
