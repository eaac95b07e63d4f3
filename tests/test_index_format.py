"""An index written by an older fastimg opens and answers the same (on-disk format guard).

``tests/data/format_v1/`` was written by fastimg at commit 0f45feb (format
version 1) with ``tests/data/make_format_v1.py``; it is committed and never
regenerated, so any change to how the files are read (manifest, ``meta.sqlite``,
the header-less ``vectors.<G>.f32``, ``whitening.npz``, the HNSW graph files,
the cache names) shows up here.

Oracles: the vectors are regenerated from the script's seeds (never read back
through fastimg), the SQLite file is read with ``sqlite3``, the whitening is
re-fitted with ``np.linalg.svd`` on the rows the script fitted it on, and the
expected results are a NumPy (cosine) or ``cv2.compareHist`` (Bhattacharyya)
brute force.
"""
from __future__ import annotations

import importlib.util
import json
import shutil
import sqlite3
from pathlib import Path

import numpy as np
import pytest

from fastimg.index import Index

DATA = Path(__file__).resolve().parent / "data"
FIXTURE = DATA / "format_v1"

_spec = importlib.util.spec_from_file_location("make_format_v1", DATA / "make_format_v1.py")
make = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(make)


@pytest.fixture
def fixture_copy(tmp_path) -> Path:
    """A private copy (searches write caches; the committed files stay untouched)."""
    dest = tmp_path / "format_v1"
    shutil.copytree(FIXTURE, dest)
    return dest


# --------------------------------------------------------------------------- custom index
def _custom_expected():
    """(matrix of the 165 committed rows, their names, deleted ids, rows the whitening was fitted on)."""
    x = make.custom_vectors()
    first = [j for j in range(120) if j not in make.REMOVED_BEFORE_COMPACT]  # order kept by compact()
    order = np.array(first + list(range(120, 170)))
    deleted = np.array(sorted(make.REMOVED_AFTER_COMPACT), dtype=np.int64)
    fit_rows = np.setdiff1d(np.arange(len(first) + 40), deleted)  # live when fit_whitening ran
    return x[order], [f"c{j:03d}" for j in order], deleted, fit_rows


def _whiten_oracle(train: np.ndarray, dim: int):
    t = train.astype(np.float64)
    mean = t.mean(axis=0)
    _, _, vt = np.linalg.svd(t - mean, full_matrices=False)
    axes = vt[:dim]

    def apply(y):
        z = (np.asarray(y, np.float64) - mean) @ axes.T
        return z / np.linalg.norm(z, axis=-1, keepdims=True)

    return apply


def _assert_cosine_topk(ids, scores, wq, wx, live, k):
    """ids/scores (Q, k): exactly the brute-force cosine top-k over ``live`` (ties by lower id)."""
    for r in range(len(wq)):
        s = wx[live] @ wq[r]
        order = np.lexsort((live, -s))[:k]
        assert ids[r].tolist() == live[order].tolist()
        np.testing.assert_allclose(scores[r], s[order], atol=2e-5)


def test_custom_index_with_whitening_and_graph_opens_and_searches(fixture_copy):
    X, names, deleted, fit_rows = _custom_expected()
    live = np.setdiff1d(np.arange(len(X)), deleted)
    white = _whiten_oracle(X[fit_rows], make.WHITEN_DIM)
    rng = np.random.default_rng(11)
    Q = (X[rng.choice(live, 6, replace=False)] + 0.3 * rng.standard_normal((6, make.DIM))).astype(np.float32)
    with Index.open(fixture_copy / "custom") as ix:
        info = ix.info()
        assert (info["format_version"], info["generation"], info["rows"], info["count"], info["deleted"]) == \
            (1, 1, 165, 162, 3)
        assert (info["metric"], info["dim"], info["descriptor"]["name"]) == ("cosine", make.DIM, "custom")
        w = info["whitening"]
        assert (w["dim"], w["n_fit"], w["rows"], w["generation"], w["stale_rows"]) == \
            (make.WHITEN_DIM, fit_rows.size, 155, 1, 10)
        a = info["ann"]
        assert (a["built"], a["metric"], a["M"], a["ef_construction"], a["rows"], a["pending_rows"], a["error"]) == \
            (True, "cosine", 8, 64, 165, 0, None)
        np.testing.assert_array_equal(np.asarray(ix.vectors), X)
        np.testing.assert_array_equal(ix.deleted_ids(), deleted)
        np.testing.assert_array_equal(ix.live_ids(), live)
        assert ix.paths(live) == [names[i] for i in live]

        wx, wq = white(X), white(Q)
        for mode, ef in (("exact", None), ("ann", 1000)):  # ef >= rows: the graph's candidates are exact
            ids, scores = ix.search_batch(Q, k=8, mode=mode, ef=ef)
            _assert_cosine_topk(ids, scores, wq, wx, live, 8)
        # by name: the stored vector, the row itself left out
        hits = ix.search(names[20], k=5)
        _assert_cosine_topk(np.array([[h.id for h in hits]]), np.array([[h.score for h in hits]]),
                            wx[20][None], wx, np.setdiff1d(live, [20]), 5)
        assert [h.path for h in hits] == [names[h.id] for h in hits]


def test_custom_index_written_before_accepts_a_writer(fixture_copy):
    """A writer continues the old index: it migrates it to format 2 (the manifest
    loses only its root, which moves into the database with the descriptor spec;
    names become BLOBs), the graph takes the new rows, results stay those of the
    brute force."""
    X, names, deleted, fit_rows = _custom_expected()
    manifest = json.loads((fixture_copy / "custom" / "manifest.json").read_text())
    new = (make.custom_vectors()[:4] + 0.5).astype(np.float32)
    with Index.open(fixture_copy / "custom", mode="a") as ix:
        assert ix.info()["format_version"] == 2
        ids = ix.add_vectors(new, [f"new{i}" for i in range(4)])
        assert ids.tolist() == [165, 166, 167, 168]
        ix.remove(["c010"])
    after = json.loads((fixture_copy / "custom" / "manifest.json").read_text())
    root = manifest.pop("root")
    assert after == dict(manifest, format_version=2)
    con = sqlite3.connect(fixture_copy / "custom" / "meta.sqlite")
    try:
        meta = dict(con.execute("SELECT key, value FROM meta"))
        stored = con.execute("SELECT path FROM images ORDER BY id").fetchall()
    finally:
        con.close()
    assert (meta["format_version"], json.loads(meta["root"]), json.loads(meta["descriptor"])) == \
        ("2", root, manifest["descriptor"])
    assert [p for (p,) in stored] == [n.encode() for n in names] + [f"new{i}".encode() for i in range(4)]
    X2 = np.vstack([X, new])
    live = np.setdiff1d(np.arange(len(X2)), np.append(deleted, names.index("c010")))
    white = _whiten_oracle(X[fit_rows], make.WHITEN_DIM)  # rows added later use the stored fit
    with Index.open(fixture_copy / "custom") as ix:
        assert ix.info()["ann"]["rows"] == 169
        ids, scores = ix.search_batch(new, k=6, mode="ann", ef=1000, exclude_self=False)
        _assert_cosine_topk(ids, scores, white(new), white(X2), live, 6)


# --------------------------------------------------------------------------- hsv72 index
def test_hsv72_index_opens_and_searches(fixture_copy):
    """A reader of the old index (format 1, hsv72 version 1) answers from the stored
    rows, a query by an indexed path included (its file's mtime changed with the git
    checkout: an index of an older descriptor version uses the stored vector)."""
    import cv2

    from fastimg.features.registry import describe

    images = fixture_copy / "images"
    files = [images / f"img{i}.png" for i in range(make.N_IMAGES)]
    con = sqlite3.connect(fixture_copy / "hsv72" / "meta.sqlite")
    try:
        stored = con.execute("SELECT id, path, is_file, deleted, metadata FROM images ORDER BY id").fetchall()
    finally:
        con.close()
    assert [(r[1], r[2], r[3]) for r in stored] == [(f.name, 1, int(f.name == make.REMOVED_IMAGE)) for f in files]
    raw = np.fromfile(fixture_copy / "hsv72" / "vectors.0.f32", dtype="<f4").reshape(-1, 72)
    dead = files.index(images / make.REMOVED_IMAGE)
    live = np.setdiff1d(np.arange(len(files)), [dead])
    with Index.open(fixture_copy / "hsv72") as ix:
        assert (ix.metric, ix.dim, len(ix), ix.info()["rows"]) == ("bhattacharyya", 72, 7, 8)
        assert ix.root == images
        assert ix.paths(range(8)) == [str(f) for f in files]
        assert ix.metadata(1)["metadata"] == json.loads(stored[1][4]) == {"label": "fixture"}
        np.testing.assert_array_equal(np.asarray(ix.vectors), raw)
        for f, row in zip(files, raw):  # the stored rows are the files' hsv72 (version 1: the
            # fixture's; version 2 moved only the pixels that lie exactly on a bin edge)
            now = describe(str(f), "hsv72")
            assert abs(float(row.sum()) - 1.0) < 1e-5 and 0.0 <= float(np.abs(row - now).sum()) < 0.02

        def brute(q, allowed, k):
            d = np.array([cv2.compareHist(q, raw[j], cv2.HISTCMP_BHATTACHARYYA) for j in allowed])
            order = np.lexsort((allowed, d))[:k]
            return allowed[order].tolist(), d[order]

        q = raw[0].copy()  # bit-identical to row 0: that row is "self"
        hits = ix.search(q, k=4)
        exp_ids, exp_d = brute(q, np.setdiff1d(live, [0]), 4)
        assert [h.id for h in hits] == exp_ids
        np.testing.assert_allclose([h.score for h in hits], exp_d, atol=1e-5)
        hits = ix.search(files[2], k=3)  # by path: the file's own row is left out
        assert [h.id for h in hits] == brute(raw[2], np.setdiff1d(live, [2]), 3)[0]
        assert [h.path for h in hits] == [str(files[i]) for i in brute(raw[2], np.setdiff1d(live, [2]), 3)[0]]
        # the lookups and filters of a reader work on format 1's text paths (str, Path, bytes)
        for i in live.tolist():
            for form in (str(files[i]), files[i], bytes(files[i]), files[i].name):
                assert form in ix and ix.id_of(form) == i and ix.entry(form).path == str(files[i])
        assert str(files[dead]) not in ix and b"/nowhere/img0.png" not in ix
        np.testing.assert_array_equal(ix.vectors_of([bytes(files[3]), 4]), raw[[3, 4]])
        assert [h.id for h in ix.similar(bytes(files[2]), k=3)] == brute(raw[2], np.setdiff1d(live, [2]), 3)[0]
        odd = np.array([j for j in live if j % 2])
        hits = ix.search(q, k=3, where=["img[13579].png"])  # a glob on the stored (relative) paths
        assert [h.id for h in hits] == brute(q, odd, 3)[0]
        hits = ix.search(q, k=10, where=str(images), exclude_self=False)  # the root folder: every live row
        assert sorted(h.id for h in hits) == live.tolist()
        assert ix.search(q, k=3, where=str(images / "sub")) == []
    with Index.open(fixture_copy / "hsv72") as again:
        assert again.info()["format_version"] == 1  # readers never migrate


def test_hsv72_version_1_index_is_redescribed_by_the_first_add(fixture_copy):
    """Issue 15: the first writer's add migrates the index to format 2 and describes
    every live file again with hsv72 version 2, switching rows and spec in one
    commit; a reader opened before the switch follows it.  Oracle: today's
    ``describe`` of each file, ``cv2.compareHist`` for the searches."""
    import cv2

    from fastimg.errors import IndexFormatError
    from fastimg.features.registry import describe

    images = fixture_copy / "images"
    files = [images / f"img{i}.png" for i in range(make.N_IMAGES)]
    path = fixture_copy / "hsv72"
    old_raw = np.fromfile(path / "vectors.0.f32", dtype="<f4").reshape(-1, 72)
    reader = Index.open(path)
    try:
        # before: nothing can be described for it (not comparable), stored rows answer
        with pytest.raises(IndexFormatError, match=r"version 1 and this fastimg describes images with version 2"):
            reader.search(files[3].read_bytes(), k=2)
        assert [h.id for h in reader.search(files[3], k=2)]  # by indexed path: the stored row
        with Index.open(path, mode="a") as ix:
            report = ix.add(images)
            assert report.redescribed == 7 and report.not_redescribed == {}
            assert (report.added, report.unchanged) == (1, 7)  # img5.png was removed: indexed again
            info = ix.info()
            assert info["format_version"] == 2 and info["descriptor"]["version"] == 2
            assert info["generation"] == 1 and not (path / "vectors.0.f32").exists()
        now = np.stack([describe(str(f), "hsv72") for f in files])
        with Index.open(path) as ro:
            V = np.asarray(ro.vectors)
            assert V.shape == (9, 72)
            live = ro.live_ids()
            assert live.tolist() == [0, 1, 2, 3, 4, 6, 7, 8]
            assert ro.paths(live) == [str(f) for f in files if f.name != make.REMOVED_IMAGE] + [str(files[5])]
            np.testing.assert_allclose(V[live], now[[0, 1, 2, 3, 4, 6, 7, 5]], rtol=1e-6, atol=1e-7)
            np.testing.assert_array_equal(V[5], old_raw[5])  # the deleted row is copied as it was
            assert any(not np.allclose(V[i], old_raw[i], atol=0) for i in range(8) if i != 5)
            assert ro.metadata(1)["metadata"] == {"label": "fixture"}  # the rows' metadata is kept
        # the reader opened before the switch follows it: new spec, new rows
        q = files[3].read_bytes()
        hits = reader.search(q, k=3)
        d = {int(i): cv2.compareHist(now[3], V[i], cv2.HISTCMP_BHATTACHARYYA) for i in live}
        exp = sorted((dist, i) for i, dist in d.items() if i != 3)[:3]
        assert [h.id for h in hits] == [i for _, i in exp]
        np.testing.assert_allclose([h.score for h in hits], [dist for dist, _ in exp], atol=1e-5)
    finally:
        reader.close()
    con = sqlite3.connect(path / "meta.sqlite")
    try:
        spec = json.loads(dict(con.execute("SELECT key, value FROM meta"))["descriptor"])
        stale = con.execute("SELECT count(*) FROM images WHERE stale = 1").fetchone()[0]
    finally:
        con.close()
    assert spec["version"] == 2 and stale == 0


def test_rows_that_cannot_be_redescribed_stay_stale_until_indexed_again(fixture_copy):
    from fastimg.features.registry import describe

    images = fixture_copy / "images"
    path = fixture_copy / "hsv72"
    old_raw = np.fromfile(path / "vectors.0.f32", dtype="<f4").reshape(-1, 72)
    away = fixture_copy / "away.png"
    (images / "img2.png").rename(away)  # gone while the index is re-described
    with Index.open(path, mode="a") as ix:
        report = ix.add(images / "img0.png")
        assert report.redescribed == 6 and report.not_redescribed == {str(images / "img2.png"): "not found"}
        np.testing.assert_array_equal(ix.vectors[2], old_raw[2])  # kept, flagged stale
        assert ix.check().stale_rows == 1
    away.rename(images / "img2.png")
    with Index.open(path, mode="a") as ix:  # back: described again although size and mtime are the same
        report = ix.add(images)
        assert report.redescribed == 0 and report.updated == 1
        (i,) = report.ids[:1]
        assert ix.paths([i]) == [str(images / "img2.png")] and ix.metadata(2)["deleted"] is True
        np.testing.assert_allclose(ix.vectors[i], describe(str(images / "img2.png"), "hsv72"), rtol=1e-6)
        assert ix.check().stale_rows == 0
