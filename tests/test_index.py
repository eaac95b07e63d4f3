"""fastimg.Index: behaviour against independent oracles (numpy brute force over
the vectors we put in, cv2.compareHist, the files re-read and described, the
SQLite file read directly)."""
from __future__ import annotations

import os
import re
import shutil
import sqlite3
import zlib
from pathlib import Path

import numpy as np
import pytest

from _photos import photo_tree
from fastimg.errors import ArgumentError, DescriptorError, IndexLockedError, IndexNotFoundError, IndexReadOnlyError, NotInIndexError
from fastimg.index import Index, data_dir, default_index_path

D = 12


# --------------------------------------------------------------------------- oracles
def _oracle_scores(metric: str, q: np.ndarray, X: np.ndarray) -> np.ndarray:
    q = q.astype(np.float64)
    X = X.astype(np.float64)
    if metric == "cosine":
        return X @ q / (np.linalg.norm(X, axis=1) * np.linalg.norm(q))
    if metric == "l2":
        return np.sqrt(((X - q) ** 2).sum(axis=1))
    if metric == "pearson":
        return np.array([np.corrcoef(q, x)[0, 1] for x in X])
    if metric in ("bhattacharyya", "chisqr", "intersect"):
        import cv2

        method = {"bhattacharyya": cv2.HISTCMP_BHATTACHARYYA, "chisqr": cv2.HISTCMP_CHISQR,
                  "intersect": cv2.HISTCMP_INTERSECT}[metric]
        return np.array([cv2.compareHist(q.astype(np.float32), x.astype(np.float32), method) for x in X])
    raise AssertionError(metric)


_HIGHER = {"cosine": True, "pearson": True, "intersect": True, "l2": False, "bhattacharyya": False, "chisqr": False}


def _brute(metric: str, q: np.ndarray, X: np.ndarray, ids: np.ndarray, k: int):
    """Top-k (ids, scores) among rows ``ids`` of X: numpy sort, ties by lower id."""
    s = _oracle_scores(metric, q, X[ids])
    key = -s if _HIGHER[metric] else s
    order = np.lexsort((ids, key))[:k]
    return ids[order], s[order]


def _check(hits, metric, q, X, live, k, *, drop=()):
    live = np.setdiff1d(live, np.asarray(list(drop), dtype=np.int64))
    exp_ids, exp_scores = _brute(metric, q, X, live, k)
    assert [h.id for h in hits] == exp_ids.tolist()
    np.testing.assert_allclose([h.score for h in hits], exp_scores, rtol=1e-5, atol=1e-5)
    assert [h.rank for h in hits] == list(range(1, len(hits) + 1))


@pytest.fixture
def data():
    rng = np.random.default_rng(42)
    return rng.random((300, D)).astype(np.float32)


@pytest.fixture
def custom(tmp_path, data):
    ix = Index.create(tmp_path / "ix", descriptor="custom", dim=D)
    ix.add_vectors(data, [f"item{i}" for i in range(len(data))])
    yield ix
    ix.close()


# --------------------------------------------------------------------------- custom vectors
@pytest.mark.parametrize("metric", ["cosine", "l2", "pearson", "bhattacharyya", "chisqr", "intersect"])
def test_search_matches_numpy_brute_force(custom, data, metric):
    rng = np.random.default_rng(1)
    live = np.arange(len(data))
    for q in rng.random((4, D)).astype(np.float32):
        _check(custom.search(q, k=7, metric=metric), metric, q, data, live, 7)


def test_default_metric_of_custom_is_cosine(custom, data):
    assert custom.metric == "cosine" and custom.info()["metric"] == "cosine"
    q = data[3] + 0.01
    _check(custom.search(q, k=5), "cosine", q, data, np.arange(len(data)), 5)


def test_exclude_self_for_vector_and_name_queries(custom, data):
    live = np.arange(len(data))
    # a vector identical to a stored row: that row is dropped, unless exclude_self=False
    _check(custom.search(data[10], k=5), "cosine", data[10], data, live, 5, drop={10})
    hits = custom.search(data[10], k=5, exclude_self=False)
    assert hits[0].id == 10 and hits[0].score == pytest.approx(1.0, abs=1e-6)
    # by name: the stored vector is the query, the named row is dropped
    _check(custom.search("item10", k=5), "cosine", data[10], data, live, 5, drop={10})
    assert custom.search("item10", k=5)[0].path != "item10"


def test_exclude_self_drops_only_one_identical_row(tmp_path):
    with Index.create(tmp_path / "ix", descriptor="custom", dim=3) as ix:
        ix.add_vectors(np.array([[1, 0, 0], [1, 0, 0], [0, 1, 0]], np.float32), ["a", "b", "c"])
        hits = ix.search(np.array([1, 0, 0], np.float32), k=3)
        assert [h.id for h in hits] == [1, 2]  # the lowest-id duplicate is "self"


def test_k_larger_than_the_index_returns_every_live_row(custom, data):
    custom.remove(list(range(5, 300)))
    hits = custom.search(data[0] + 1, k=50)
    assert sorted(h.id for h in hits) == [0, 1, 2, 3, 4]
    with pytest.raises(ValueError, match="k must be a positive integer"):
        custom.search(data[0], k=0)


def test_removed_rows_are_never_returned(custom, data):
    removed = list(range(0, 300, 3))
    assert custom.remove(removed) == len(removed)
    assert len(custom) == 200
    live = np.setdiff1d(np.arange(300), removed)
    rng = np.random.default_rng(2)
    for metric in ("cosine", "l2", "chisqr"):
        for q in rng.random((3, D)).astype(np.float32):
            _check(custom.search(q, k=10, metric=metric), metric, q, data, live, 10)
    np.testing.assert_array_equal(custom.live_ids(), live)
    np.testing.assert_array_equal(custom.deleted_ids(), removed)
    # by name too, and unknown items are an error that removes nothing
    assert custom.remove("item1") == 1
    with pytest.raises(NotInIndexError, match=r"not in the index: item0, nope"):
        custom.remove(["item2", "item0", "nope"])
    assert len(custom) == 199


def test_search_batch_equals_single_searches(custom, data):
    rng = np.random.default_rng(3)
    Q = rng.random((6, D)).astype(np.float32)
    custom.remove([0, 1, 2])
    ids, scores = custom.search_batch(Q, k=4, metric="l2")
    assert ids.shape == (6, 4) and ids.dtype == np.int64 and scores.dtype == np.float32
    for r in range(6):
        exp_ids, exp_scores = _brute("l2", Q[r], data, np.arange(3, 300), 4)
        assert ids[r].tolist() == exp_ids.tolist()
        np.testing.assert_allclose(scores[r], exp_scores, rtol=1e-5)
        hits = custom.search(Q[r], k=4, metric="l2")
        assert ids[r].tolist() == [h.id for h in hits]
        np.testing.assert_allclose(scores[r], [h.score for h in hits], rtol=1e-6)
    # padding when fewer rows than k remain
    custom.remove(list(range(3, 298)))
    ids, scores = custom.search_batch(Q[:2], k=4, exclude_self=False)
    assert (ids[:, 2:] == -1).all() and np.isnan(scores[:, 2:]).all()
    assert sorted(ids[0, :2].tolist()) == [298, 299]
    # a sequence of mixed queries (names and vectors)
    ids, _ = custom.search_batch(["item298", data[299]], k=1)
    assert ids.tolist() == [[299], [298]]


def test_add_vectors_validation(custom):
    with pytest.raises(ValueError, match=r"shape \(n, 12\)"):
        custom.add_vectors(np.zeros((2, 5)), ["a", "b"])
    with pytest.raises(ValueError, match="row 1 .*'b'.* not"):
        custom.add_vectors(np.array([[0] * D, [np.nan] * D], np.float32), ["a", "b"])
    with pytest.raises(ValueError, match="2 vectors but 1 names"):
        custom.add_vectors(np.zeros((2, D)), ["a"])
    with pytest.raises(ValueError, match="unique"):
        custom.add_vectors(np.zeros((2, D)), ["a", "a"])
    with pytest.raises(ValueError, match="JSON"):
        custom.add_vectors(np.zeros((1, D)), ["a"], metadata=[{"x": object()}])
    assert len(custom) == 300  # nothing was added by the failures


def test_add_vectors_replaces_a_live_name_and_keeps_metadata(custom, data):
    new = np.full(D, 0.5, np.float32)
    (nid,) = custom.add_vectors(new, ["item7"], metadata=[{"label": "cat"}])
    assert nid == 300 and len(custom) == 300
    assert custom.metadata(7)["deleted"] is True
    md = custom.metadata(300)
    assert md["path"] == "item7" and md["metadata"] == {"label": "cat"} and md["deleted"] is False
    np.testing.assert_array_equal(custom.vectors[300], new)
    assert custom.search("item7", k=1, exclude_self=False)[0].id == 300


def test_vectors_property_is_the_committed_matrix(custom, data):
    v = custom.vectors
    assert v.shape == (300, D) and not v.flags.writeable
    np.testing.assert_array_equal(np.asarray(v), data)
    assert custom.paths([0, 299]) == ["item0", "item299"]
    with pytest.raises(NotInIndexError):
        custom.paths([300])


def test_read_only_and_single_writer(tmp_path, custom, data):
    path = custom.path
    with pytest.raises(IndexLockedError, match=f"pid {os.getpid()}"):
        Index.open(path, mode="a")
    with Index.open(path) as ro:
        with pytest.raises(IndexReadOnlyError):
            ro.add_vectors(data[:1], ["x"])
        with pytest.raises(IndexReadOnlyError):
            ro.remove([0])
        with pytest.raises(IndexReadOnlyError):
            ro.compact()
        assert len(ro) == 300
        # the reader sees what the writer commits, at its next call
        custom.add_vectors(np.ones((1, D), np.float32), ["ones"])
        custom.remove([0])
        assert len(ro) == 300
        hits = ro.search(np.ones(D, np.float32), k=1, exclude_self=False)
        assert hits[0].path == "ones"
        assert 0 not in [h.id for h in ro.search(data[0], k=300, exclude_self=False)]
    with pytest.raises(ValueError, match="mode must be"):
        Index.open(path, mode="w")


def test_two_indexes_in_one_process_are_independent(tmp_path, data):
    a = Index.create(tmp_path / "a", descriptor="custom", dim=D, metric="l2")
    b = Index.create(tmp_path / "b", descriptor="custom", dim=D, metric="pearson")
    try:
        a.add_vectors(data[:100], [f"a{i}" for i in range(100)])
        b.add_vectors(data[100:], [f"b{i}" for i in range(200)])
        q = data[5] + 0.1
        _check(a.search(q, k=5), "l2", q, data[:100], np.arange(100), 5)
        _check(b.search(q, k=5), "pearson", q, data[100:], np.arange(200), 5)
        assert len(a) == 100 and len(b) == 200
    finally:
        a.close()
        b.close()


def test_compact_remaps_ids_and_keeps_results(custom, data):
    custom.remove([1, 2, 50])
    q = data[100] + 0.05
    before = [(h.path, h.score) for h in custom.search(q, k=8, metric="l2")]
    mapping = custom.compact()
    assert mapping.shape == (300,) and mapping[1] == -1 and mapping[50] == -1
    assert mapping[0] == 0 and mapping[3] == 1 and mapping[299] == 296
    assert len(custom) == 297 and custom.vectors.shape == (297, D)
    live = np.setdiff1d(np.arange(300), [1, 2, 50])
    np.testing.assert_array_equal(np.asarray(custom.vectors), data[live])
    after = [(h.path, h.score) for h in custom.search(q, k=8, metric="l2")]
    assert [p for p, _ in after] == [p for p, _ in before]
    np.testing.assert_allclose([s for _, s in after], [s for _, s in before], rtol=1e-6)
    assert custom.paths([1]) == ["item3"]
    assert custom.info()["generation"] == 1 and custom.info()["deleted"] == 0
    # a reader opened afterwards sees the compacted index
    with Index.open(custom.path) as ro:
        _check(ro.search(q, k=8, metric="l2"), "l2", q, data[live], np.arange(297), 8)


def test_reader_follows_a_compaction(custom, data):
    with Index.open(custom.path) as ro:
        q = data[20] + 0.01
        ro.search(q, k=3)
        custom.remove([20, 21])
        custom.compact()
        live = np.setdiff1d(np.arange(300), [20, 21])
        hits = ro.search(q, k=3, metric="l2")
        exp_ids, _ = _brute("l2", q, data[live], np.arange(298), 3)
        assert [h.id for h in hits] == exp_ids.tolist()
        assert [h.path for h in hits] == [f"item{live[i]}" for i in exp_ids]


def _files(path):
    """{relative path: (size, mtime_ns)} of every file under ``path``."""
    return {str(p.relative_to(path)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in sorted(path.rglob("*")) if p.is_file()}


def _caches(names):
    """Cache file names without their checksum part (``<name>.g<G>.n<N>.c<CRC-32>.npy``
    -> ``<name>.g<G>.n<N>.npy``), each checked to carry one."""
    assert all(re.search(r"\.c[0-9a-f]{8}\.npy$", n) for n in names), names
    return sorted(re.sub(r"\.c[0-9a-f]{8}\.npy$", ".npy", n) for n in names)


def test_writer_caches_the_default_metric_and_searches_never_write(tmp_path, data, monkeypatch):
    import fastimg.index._index as index_mod

    ix = Index.create(tmp_path / "ix", descriptor="custom", dim=D, metric="pearson")
    ix.add_vectors(data, [f"item{i}" for i in range(len(data))])
    q = data[7] + 0.01
    # 300 rows, fewer than CACHE_SAVE_ROWS: not cached yet; a search prepares them in memory
    _check(ix.search(q, k=5), "pearson", q, data, np.arange(300), 5)
    assert ix.info()["caches"] == []
    ix.flush()
    assert _caches(ix.info()["caches"]) == ["pearson-bias.g0.n300.npy", "pearson-prepared.g0.n300.npy"]
    (cached_file,) = (ix.path / "cache").glob("pearson-prepared.g0.n300.*.npy")
    cached = np.load(cached_file)
    x = data.astype(np.float64)
    # pearson's prepared rows: centred and unit-norm (dot product = correlation)
    np.testing.assert_allclose(cached @ cached.T, np.corrcoef(x), atol=1e-5)
    np.testing.assert_allclose(cached.sum(axis=1), 0, atol=1e-5)
    # new rows: the cached 300 are mapped, the 2 new ones prepared in memory, results merged
    more = data[:2] * 0.5 + 0.2
    ix.add_vectors(more, ["n1", "n2"])
    X = np.vstack([data, more])
    for qq in (q, more[1] + 0.001):
        _check(ix.search(qq, k=5, exclude_self=False), "pearson", qq, X, np.arange(302), 5)
    assert _caches(ix.info()["caches"]) == ["pearson-bias.g0.n300.npy", "pearson-prepared.g0.n300.npy"]
    # a reader (every metric) writes nothing, and reads the cache the writer extends on add
    with Index.open(ix.path) as ro:
        before = _files(ix.path)
        for metric in ("pearson", "cosine", "l2", "bhattacharyya", "chisqr", "intersect"):
            _check(ro.search(q, k=5, metric=metric), metric, q, X, np.arange(302), 5)
        assert _files(ix.path) == before
        monkeypatch.setattr(index_mod, "CACHE_SAVE_ROWS", 3)
        ix.add_vectors(data[10:30] + 0.3, [f"m{i}" for i in range(20)])  # 22 not cached >= max(3, 5 %): extended
        X = np.vstack([X, data[10:30] + 0.3])
        assert _caches(ix.info()["caches"]) == ["pearson-bias.g0.n322.npy", "pearson-prepared.g0.n322.npy"]
        _check(ro.search(q, k=5), "pearson", q, X, np.arange(322), 5)
    ix.add_vectors(data[20:21] + 0.4, ["last"])
    X = np.vstack([X, data[20:21] + 0.4])
    ix.close()  # close caches every row
    assert _caches([p.name for p in (tmp_path / "ix" / "cache").iterdir()]) == [
        "pearson-bias.g0.n323.npy", "pearson-prepared.g0.n323.npy"]
    # the name's checksum is the data's CRC-32 (zlib over the array's bytes)
    (cached_file,) = (tmp_path / "ix" / "cache").glob("pearson-prepared.g0.n323.*.npy")
    assert cached_file.name == f"pearson-prepared.g0.n323.c{zlib.crc32(np.load(cached_file).tobytes()):08x}.npy"
    # a corrupt cache is ignored (searches prepare in memory), results stay right
    cached_file.write_bytes(b"junk")
    with Index.open(tmp_path / "ix") as ro:
        _check(ro.search(q, k=5), "pearson", q, X, np.arange(323), 5)


def test_info_reports_the_state(custom):
    custom.remove([3])
    info = custom.info()
    for key, value in {"count": 299, "rows": 300, "deleted": 1, "dim": D, "metric": "cosine", "mode": "a",
                       "format_version": 2, "vectors_bytes": 300 * D * 4}.items():
        assert info[key] == value, key
    assert info["descriptor"] == {"name": "custom", "dim": D, "version": 1, "params": {}}
    on_disk = sum(f.stat().st_size for f in custom.path.rglob("*") if f.is_file())
    assert info["size_bytes"] == on_disk and info["vectors_bytes"] == (custom.path / "vectors.0.f32").stat().st_size
    assert info["ann"] == {"built": False, "crossover": info["ann"]["crossover"], "auto_mode": "exact"}
    assert info["whitening"] is None and info["generation"] == 0 and info["root"] == str(custom.path.parent)


def test_create_arguments_are_validated(tmp_path):
    with pytest.raises(DescriptorError, match="needs the vector dimension"):
        Index.create(tmp_path / "a", descriptor="custom")
    with pytest.raises(DescriptorError, match="does not match descriptor 'hsv72'"):
        Index.create(tmp_path / "b", descriptor="hsv72", dim=5)
    with pytest.raises(DescriptorError):
        Index.create(tmp_path / "c", descriptor="no-such-descriptor")
    with pytest.raises(ValueError, match="pearson"):
        Index.create(tmp_path / "d", descriptor="custom", dim=3, metric="nope")
    assert not (tmp_path / "a").exists() and not (tmp_path / "d").exists()
    with pytest.raises(IndexNotFoundError):
        Index.open(tmp_path / "a")


def test_custom_index_cannot_describe_images(tmp_path, custom):
    with pytest.raises(DescriptorError, match="add_vectors"):
        custom.add(tmp_path)
    with pytest.raises(DescriptorError, match="query it by vector"):
        custom.search(str(tmp_path / "unknown.jpg"))
    with pytest.raises(ArgumentError, match=r"expected D=12 \(the data's\), got 5"):  # as ExactSearcher says
        custom.search(np.zeros(5, np.float32))


# --------------------------------------------------------------------------- ANN
def _clustered(n: int, d: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((20, d)) * 3
    return (centres[rng.integers(0, 20, n)] + rng.standard_normal((n, d))).astype(np.float32)


def test_ann_mode_scores_are_exact_and_follows_changes(tmp_path):
    pytest.importorskip("hnswlib")
    X = _clustered(1500, 16)
    rng = np.random.default_rng(5)
    with Index.create(tmp_path / "ix", descriptor="custom", dim=16) as ix:
        ix.add_vectors(X, [f"x{i}" for i in range(len(X))])
        with pytest.raises(ValueError, match="no HNSW graph"):
            ix.search(X[0], k=5, mode="ann")
        meta = ix.build_ann(M=8, ef_construction=100)
        assert meta["rows"] == 1500 and meta["metric"] == "cosine"
        info = ix.info()["ann"]
        assert info["built"] and info["M"] == 8 and info["pending_rows"] == 0
        Q = X[rng.choice(len(X), 20, replace=False)] + 0.05 * rng.standard_normal((20, 16)).astype(np.float32)
        recall = []
        for q in Q:
            hits = ix.search(q, k=10, mode="ann", ef=64)
            exact = ix.search(q, k=10, mode="exact")
            np.testing.assert_allclose([h.score for h in hits],
                                       _oracle_scores("cosine", q, X[[h.id for h in hits]]), atol=1e-5)
            recall.append(len({h.id for h in hits} & {h.id for h in exact}) / 10)
        assert np.mean(recall) >= 0.9
        # removals never come back; new rows are found (graph updated by the writer)
        gone = [h.id for h in ix.search(Q[0], k=5, mode="exact")]
        ix.remove(gone)
        assert not set(gone) & {h.id for h in ix.search(Q[0], k=10, mode="ann")}
        new = Q[0].copy()
        (nid,) = ix.add_vectors(new, ["new"])
        assert ix.search(new, k=1, mode="ann", exclude_self=False)[0].id == nid
        assert ix.info()["ann"]["rows"] == 1501
        with pytest.raises(ValueError, match="serves metric 'cosine', not 'l2'"):
            ix.search(new, k=1, mode="ann", metric="l2")
    # a reader whose graph lags behind the vectors scans the new rows exactly
    with Index.open(tmp_path / "ix") as ro:
        assert ro.search(new, k=1, mode="ann", exclude_self=False)[0].path == "new"


def test_ann_graph_survives_compaction(tmp_path):
    pytest.importorskip("hnswlib")
    X = _clustered(400, 8, seed=3)
    with Index.create(tmp_path / "ix", descriptor="custom", dim=8, metric="l2") as ix:
        ix.add_vectors(X, [f"x{i}" for i in range(400)])
        ix.build_ann(M=8, ef_construction=64)
        ix.remove(list(range(100)))
        ix.compact()
        info = ix.info()["ann"]
        assert info["built"] and info["rows"] == 300 and info["M"] == 8
        q = X[200] + 0.01
        hits = ix.search(q, k=5, mode="ann", ef=100)
        _check(hits, "l2", q, X[100:], np.arange(300), 5)


# --------------------------------------------------------------------------- images
def _describe(path) -> np.ndarray:
    from fastimg.features.registry import describe

    return describe(str(path), "hsv72")


def _stored(index_path: Path) -> dict:
    """``{path: (id, deleted, is_file)}`` read with sqlite3 (paths are stored as the file name's bytes)."""
    con = sqlite3.connect(index_path / "meta.sqlite")
    try:
        return {os.fsdecode(row[0]): row[1:] for row in con.execute("SELECT path, id, deleted, is_file FROM images")}
    finally:
        con.close()


@pytest.fixture
def photos(tmp_path):
    files = photo_tree(tmp_path / "photos")  # Corel-1k files, or generated ones without ../shared
    (tmp_path / "photos" / "beaches" / "broken.jpg").write_bytes(b"definitely not a jpeg")
    (tmp_path / "photos" / "notes.txt").write_text("not an image extension: ignored")
    return tmp_path / "photos", files


def test_add_folder_then_search_by_path_bytes_and_array(photos):
    root, files = photos
    import cv2

    with Index.create(root / ".fastimg") as ix:
        assert ix.metric == "bhattacharyya"
        report = ix.add(root)
        assert (report.added, report.unchanged, report.updated) == (9, 0, 0)
        assert report.skipped == {str(root / "beaches" / "broken.jpg"): "not an image"}
        # stored relative to the root (the folder holding the index), as the SQLite file shows
        assert set(_stored(root / ".fastimg")) == {os.path.relpath(f, root) for f in files}
        # every stored vector is the descriptor of the file (re-read independently)
        by_path = {p: i for i, p in zip(ix.live_ids(), ix.paths(ix.live_ids()))}
        X = np.stack([_describe(f) for f in files])
        for f, x in zip(files, X):
            np.testing.assert_allclose(ix.vectors[by_path[str(f)]], x, rtol=1e-6)
        ids = np.array([by_path[str(f)] for f in files])
        q = files[4]
        hits = ix.search(q, k=4)
        # oracle: cv2.compareHist over the files' descriptors, the query's own row left out
        exp = sorted(((cv2.compareHist(X[4], X[j], cv2.HISTCMP_BHATTACHARYYA), ids[j]) for j in range(9) if j != 4))
        assert [h.id for h in hits] == [i for _, i in exp[:4]]
        np.testing.assert_allclose([h.score for h in hits], [s for s, _ in exp[:4]], atol=1e-5)
        path_of = {i: str(f) for f, i in zip(files, ids)}
        assert [h.path for h in hits] == [path_of[h.id] for h in hits]  # absolute paths of the files
        # by bytes and by decoded array: the identical stored row is "self"
        for query in (q.read_bytes(), cv2.imread(str(q))):
            assert [h.id for h in ix.search(query, k=4)] == [h.id for h in hits]
        self_hit = ix.search(q, k=1, exclude_self=False)[0]
        assert self_hit.id == by_path[str(q)] and self_hit.score == pytest.approx(0, abs=1e-6)


def test_incremental_add(photos):
    root, files = photos
    with Index.create(root / ".fastimg") as ix:
        ix.add(root)
        first = {p: i for i, p in zip(ix.live_ids(), ix.paths(ix.live_ids()))}
        again = ix.add(root)
        assert (again.added, again.unchanged, again.updated, again.moved, again.removed) == (0, 9, 0, 0, 0)
        assert len(ix) == 9 and ix.info()["rows"] == 9

        moved_to = root / "flowers" / "renamed.jpg"
        os.rename(files[0], moved_to)                        # moved: same content, new path
        files[1].unlink()                                    # vanished
        shutil.copy2(files[2], root / "horses" / "dup.jpg")  # copy of an indexed file: vector reused
        shutil.copy2(files[5], files[3])                     # modified in place (new content)
        st = os.stat(files[3])
        os.utime(files[3], ns=(st.st_atime_ns, st.st_mtime_ns + 5_000_000_000))
        os.utime(files[6], ns=(st.st_atime_ns, st.st_mtime_ns + 9_000_000_000))  # touched only
        rep = ix.add(root)
        assert (rep.added, rep.updated, rep.moved, rep.removed, rep.unchanged) == (1, 1, 1, 1, 6)
        assert rep.reused == 2  # dup.jpg and the modified file now equal to files[5]
        now = {p: i for i, p in zip(ix.live_ids(), ix.paths(ix.live_ids()))}
        assert now[str(moved_to)] == first[str(files[0])]      # same row, new path
        assert str(files[1]) not in now and str(files[0]) not in now
        assert now[str(files[3])] != first[str(files[3])]      # re-extracted as a new row
        assert ix.metadata(first[str(files[3])])["deleted"] is True
        np.testing.assert_allclose(ix.vectors[now[str(files[3])]], _describe(files[3]), rtol=1e-6)
        np.testing.assert_array_equal(ix.vectors[now[str(root / "horses" / "dup.jpg")]], ix.vectors[now[str(files[2])]])
        assert now[str(files[6])] == first[str(files[6])]
        assert len(ix) == 9
        # every live row's vector equals its file's descriptor
        for p, i in now.items():
            np.testing.assert_allclose(ix.vectors[i], _describe(p), rtol=1e-6)
        final = ix.add(root)
        assert (final.added, final.updated, final.moved, final.removed, final.unchanged) == (0, 0, 0, 0, 9)


def test_add_options_and_paths_outside_the_root(tmp_path, photos):
    root, files = photos
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    shutil.copy2(files[0], outside / "o.jpg")
    calls = []
    with Index.create(root / ".fastimg") as ix:
        rep = ix.add([root], recursive=False)
        assert rep.added == 0 and len(ix) == 0
        rep = ix.add(root, exclude=["horses"], progress=lambda done, total: calls.append((done, total)))
        assert rep.added == 6 and all("horses" not in ix.paths([i])[0] for i in ix.live_ids())
        assert calls[-1] == (7, 7) and calls[0] == (0, 7)  # 6 images + the broken one
        # progress moves within the one batch of 7 (not only 0 and 7), never backwards
        assert len({d for d, _ in calls}) > 2
        assert [d for d, _ in calls] == sorted(d for d, _ in calls) and {t for _, t in calls} == {7}
        rep = ix.add([outside / "o.jpg", tmp_path / "missing.jpg"], batch_size=1)
        assert rep.added == 1 and rep.skipped[str(tmp_path / "missing.jpg")] == "not found"
        stored = _stored(root / ".fastimg")
        assert str(outside / "o.jpg") in stored                      # absolute: not under the root
        assert os.path.join("beaches", files[0].name) in stored      # relative under the root
        # a path query for an indexed file outside the root excludes itself
        hits = ix.search(outside / "o.jpg", k=10)
        assert str(outside / "o.jpg") not in [h.path for h in hits]
        assert ix.search(outside / "o.jpg", k=1)[0].path == str(files[0])  # same image elsewhere
    with Index.open(root / ".fastimg") as ro, pytest.raises(IndexReadOnlyError):
        ro.add(root)


def test_the_tree_moves_with_its_index_when_the_root_is_relative(tmp_path, photos):
    root, files = photos
    with Index.create(root / ".fastimg", root=root) as ix:  # root=: recorded relative to the index
        ix.add(root)
        before = [os.path.relpath(h.path, root) for h in ix.search(files[2], k=5)]
    new_root = tmp_path / "moved_photos"
    os.rename(root, new_root)
    with Index.open(new_root / ".fastimg") as ix:
        assert ix.root == new_root
        hits = ix.search(new_root / os.path.relpath(files[2], root), k=5)
        assert [os.path.relpath(h.path, new_root) for h in hits] == before
        assert all(os.path.exists(h.path) for h in hits)


@pytest.mark.parametrize("relative", [True, False])
def test_search_by_path_resolves_against_the_snapshot_root(tmp_path, photos, relative):
    """A reader's search by path stats the file under the root of the snapshot it searches
    (no query of its own): the same absolute paths as the database's root, also after a
    writer relocated the files while the reader was open."""
    root, files = photos
    idx = tmp_path / "ix.fastimg"
    with Index.create(idx, **({"root": root} if relative else {})) as ix:
        ix.add(root)
    with Index.open(idx) as ro:
        store = ro._store
        view = ro._views.current()
        for p in ro.paths(ro.live_ids()):
            rel = store.stored_path(p)
            assert store.absolute_path_in(rel, view.get("root")) == store.absolute_path(rel) == p
        assert store.absolute_path_in("/abs/elsewhere.jpg", view.get("root")) == "/abs/elsewhere.jpg"
        moved = tmp_path / "moved"
        os.rename(root, moved)
        with Index.open(idx, mode="a") as w:
            assert w.relocate(root, moved) == len(files)
        q = moved / os.path.relpath(files[2], root)
        hits = ro.search(q, k=3)  # the reader's view follows the writer's commit
        view = ro._views.current()
        assert store.absolute_path_in(os.path.relpath(files[2], root) if relative else store.stored_path(q),
                                      view.get("root")) == str(q)
        assert ro.id_of(q) not in [h.id for h in hits] and all(os.path.exists(h.path) for h in hits)


def test_a_copied_index_keeps_pointing_at_the_files_by_default(tmp_path, photos):
    """Issue 21 item 8: the default root is recorded as an absolute path, so `cp -a`
    of the index elsewhere keeps every path valid."""
    root, files = photos
    with Index.create(root / ".fastimg") as ix:
        ix.add(root)
        before = [(h.id, h.path) for h in ix.search(files[2], k=5)]
    moved = tmp_path / "moved" / "photos.fastimg"
    moved.parent.mkdir()
    shutil.copytree(root / ".fastimg", moved)
    with Index.open(moved) as ix:
        assert ix.root == root
        hits = ix.search(files[2], k=5)
        assert [(h.id, h.path) for h in hits] == before
        assert all(os.path.exists(h.path) for h in hits)


def test_remove_by_path_and_folder(photos):
    root, files = photos
    with Index.create(root / ".fastimg") as ix:
        ix.add(root)
        assert ix.remove(files[0]) == 1
        assert ix.remove(root / "horses") == 3
        assert len(ix) == 5
        left = set(ix.paths(ix.live_ids()))
        assert str(files[0]) not in left and not any("horses" in p for p in left)
        with pytest.raises(NotInIndexError, match="not in the index"):
            ix.remove(files[0])


# --------------------------------------------------------------------------- locations
def test_default_index_path(monkeypatch, tmp_path):
    monkeypatch.delenv("FASTIMG_INDEX", raising=False)
    monkeypatch.delenv("FASTIMG_DATADIR", raising=False)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    assert default_index_path() == tmp_path / "xdg" / "fastimg" / "index"
    monkeypatch.setenv("FASTIMG_DATADIR", str(tmp_path / "data"))
    assert data_dir() == tmp_path / "data"
    assert default_index_path() == tmp_path / "data" / "index"
    monkeypatch.setenv("FASTIMG_INDEX", str(tmp_path / "mine"))
    assert default_index_path() == tmp_path / "mine"


def test_histogram_metric_on_negative_vectors_is_a_clear_error(tmp_path):
    with Index.create(tmp_path / "ix", descriptor="custom", dim=3) as ix:
        ix.add_vectors(np.array([[0.2, 0.3, 0.5], [0.1, 0.1, 0.8]], np.float32), ["a", "b"])
        assert ix._store.has_negative() is False  # tracked at commit: no validation pass needed
        q = np.array([0.3, 0.3, 0.4], np.float32)
        _check(ix.search(q, k=2, metric="bhattacharyya"), "bhattacharyya", q,
               np.array([[0.2, 0.3, 0.5], [0.1, 0.1, 0.8]]), np.arange(2), 2)
        ix.add_vectors(np.array([-1.0, 0.5, 0.5], np.float32), ["neg"])
        assert ix._store.has_negative() is True
        with pytest.raises(ValueError, match="negative"):
            ix.search(q, k=2, metric="bhattacharyya")
        assert len(ix.search(q, k=3, metric="cosine")) == 3


def _unit(x):
    x = np.asarray(x, dtype=np.float64)
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _rerank_oracle(spec, q, data, allowed, k):
    """Re-ranking written out in NumPy for the cosine metric (rerank.py's documented
    definitions), over the rows ``allowed``: the initial ranking is a brute force."""
    cos = _unit(data[allowed]) @ _unit(q)
    first = allowed[np.lexsort((allowed, -cos))]
    if spec == "qe:n=5,gap=0":  # the query and its top 5, averaged as unit vectors, searched again
        expanded = _unit(q) + _unit(data[first[:5]]).sum(axis=0)
        s = _unit(data[allowed]) @ _unit(expanded)
        order = np.lexsort((allowed, -s))[:k]
        return allowed[order], s[order]
    if spec == "dba:n=5,gap=0,depth=20":  # each of the top 20 averaged with its 5 nearest among the
        head = first[:20]                    # query and the other 19 (node 0 = the query, first on ties)
        u = _unit(np.vstack([q, data[head]]))
        g = u @ u.T
        out = np.empty(20)
        for i in range(1, 21):
            nb = [j for j in np.argsort(1 - g[i], kind="stable") if j != i][:5]
            w = np.clip(g[i, nb], 0, 1) ** 3  # sim^alpha, alpha = 3
            aug = (u[i] + w @ u[nb]) / (1 + w.sum())
            out[i - 1] = _unit(aug) @ _unit(q)
        order = np.lexsort((head, -out))[:k]
        return head[order], out[order]
    assert spec == "k-reciprocal:k1=5,k2=2,lambda=1,depth=20"
    # lambda = 1 keeps the original distance (1 - cos) divided by its maximum over the
    # query's row of the local graph (the query itself and its top 20): score 1 - that
    head = first[:20]
    d = 1 - _unit(data[head]) @ _unit(q)
    s = 1 - d / max(d.max(), 0.0)
    order = np.lexsort((head, -s))[:k]
    return head[order], s[order]


@pytest.mark.parametrize("spec", ["qe:n=5,gap=0", "dba:n=5,gap=0,depth=20", "k-reciprocal:k1=5,k2=2,lambda=1,depth=20"])
def test_rerank_is_wired_with_the_index_vectors_and_exclusions(custom, data, spec):
    custom.remove([7, 8])
    allowed = np.setdiff1d(np.arange(300), [7, 8, 11])
    q = data[11]  # an indexed vector: row 11 is "self" and stays excluded in every search
    exp_ids, exp_scores = _rerank_oracle(spec, q, data, allowed, 10)
    hits = custom.search(q, k=10, rerank=spec)
    assert [h.id for h in hits] == exp_ids.tolist()
    np.testing.assert_allclose([h.score for h in hits], exp_scores, rtol=1e-4, atol=1e-5)
    plain = [h.id for h in custom.search(q, k=10)]
    assert plain != exp_ids.tolist() or spec.startswith("k-reciprocal")  # re-ranking changed the order


def test_k_reciprocal_reorders_only_the_candidates_and_excludes_self(custom, data):
    custom.remove([7, 8])
    allowed = np.setdiff1d(np.arange(300), [7, 8, 11])
    cos = _unit(data[allowed]) @ _unit(data[11])
    top20 = set(allowed[np.lexsort((allowed, -cos))[:20]].tolist())
    hits = custom.search(data[11], k=10, rerank="k-reciprocal:k1=5,k2=2,depth=20")
    assert len(hits) == 10 and {h.id for h in hits} <= top20
    scores = [h.score for h in hits]
    assert scores == sorted(scores, reverse=True)  # 1 - d*: best first


@pytest.mark.parametrize("spec, searches, depth", [
    ("qe:n=5,gap=0", 2, 5), ("dba:depth=20", 1, 20), ("k-reciprocal:k1=5,k2=2,depth=20", 1, 20),
    # depth beyond the 300 rows: the first search returns them all (297 live, self excluded)
    ("dba:depth=400", 1, 297), ("k-reciprocal:k1=5,k2=2,depth=400", 1, 297)])
def test_rerank_fetches_its_candidates_in_the_first_search(custom, data, spec, searches, depth, monkeypatch):
    """The initial search returns the depth re-ranking needs (QE: its n = 5 neighbours):
    no second scan for more candidates (QE's one extra search is the expanded query's own)."""
    from fastimg.search import ExactSearcher

    custom.remove([7, 8])
    calls = []
    real = ExactSearcher.search

    def counting(self, queries, k, **kw):
        ids, scores = real(self, queries, k, **kw)
        calls.append(int((ids[0] != 11).sum()))  # candidates other than the query itself
        return ids, scores

    monkeypatch.setattr(ExactSearcher, "search", counting)
    hits = custom.search(data[11], k=10, rerank=spec)
    assert len(hits) == 10 and len(calls) == searches
    assert calls[0] >= depth


def test_corrupt_ann_graph_falls_back_to_exact_and_says_why(tmp_path):
    pytest.importorskip("hnswlib")
    X = _clustered(300, 8, seed=4)
    with Index.create(tmp_path / "ix", descriptor="custom", dim=8, metric="l2") as ix:
        ix.add_vectors(X, [f"x{i}" for i in range(300)])
        ix.build_ann(M=8, ef_construction=32)
    from fastimg.ann import graph_file

    (build,) = (tmp_path / "ix" / "ann").iterdir()
    graph = graph_file(build)
    raw = bytearray(graph.read_bytes())
    raw[100:110] = b"\xff" * 10
    graph.write_bytes(bytes(raw))
    q = X[3] + 0.01
    with Index.open(tmp_path / "ix") as ro:
        _check(ro.search(q, k=5), "l2", q, X, np.arange(300), 5)  # auto: exact, still right
        with pytest.raises(ValueError, match=r"mode='ann' unavailable: .*hnsw\.[0-9a-f]+\.bin"):
            ro.search(q, k=5, mode="ann")
        assert graph.name in ro.info()["ann"]["error"]


def test_auto_mode_uses_the_graph_above_the_crossover(tmp_path, monkeypatch):
    pytest.importorskip("hnswlib")
    from fastimg import ann

    X = _clustered(400, 8, seed=6)
    calls = []
    real = ann.HnswGraph._search  # the graph search behind search() and search_checked()
    monkeypatch.setattr(ann.HnswGraph, "_search", lambda self, *a, **kw: calls.append(1) or real(self, *a, **kw))
    with Index.create(tmp_path / "ix", descriptor="custom", dim=8) as ix:
        ix.add_vectors(X, [f"x{i}" for i in range(400)])
        ix.build_ann(M=8, ef_construction=64)
        monkeypatch.setattr(ann, "ANN_CROSSOVER", 1000)
        assert ix.info()["ann"]["auto_mode"] == "exact"
        ix.search(X[0], k=3)
        assert calls == []
        monkeypatch.setattr(ann, "ANN_CROSSOVER", 100)
        assert ix.info()["ann"]["auto_mode"] == "ann"
        assert ix.info()["ann"]["crossover"] == 100
        auto = ix.search(X[0], k=3)
        assert calls == [1]
        assert auto == ix.search(X[0], k=3, mode="ann")
        ix.search(X[0], k=3, metric="l2")  # the graph serves cosine: auto falls back to exact
        assert calls == [1, 1]


def test_auto_mode_scans_exactly_for_chisqr_even_with_a_graph(tmp_path, monkeypatch):
    pytest.importorskip("hnswlib")
    from fastimg import ann

    rng = np.random.default_rng(7)
    H = rng.dirichlet(np.ones(12), size=300).astype(np.float32)
    calls = []
    real = ann.HnswGraph._search  # the graph search behind search() and search_checked()
    monkeypatch.setattr(ann.HnswGraph, "_search", lambda self, *a, **kw: calls.append(1) or real(self, *a, **kw))
    monkeypatch.setattr(ann, "ANN_CROSSOVER", 100)
    with Index.create(tmp_path / "ix", descriptor="custom", dim=12, metric="chisqr") as ix:
        ix.add_vectors(H, [f"h{i}" for i in range(300)])
        ix.build_ann(M=8, ef_construction=64)
        assert ix.info()["ann"]["auto_mode"] == "exact"
        hits = ix.search(H[0], k=5)
        assert calls == []
        # oracle: cv2.compareHist(query, row, HISTCMP_CHISQR) by brute force, query row left out
        import cv2

        d = np.array([cv2.compareHist(H[0], H[j], cv2.HISTCMP_CHISQR) for j in range(300)])
        order = [j for j in np.lexsort((np.arange(300), d)) if j != 0][:5]
        assert [h.id for h in hits] == order
        ix.search(H[0], k=5, mode="ann")  # asked for explicitly, the graph still answers
        assert calls == [1]


def test_set_metadata_by_id_path_or_name(custom, photos):
    custom.set_metadata(3, {"label": "cat"})
    custom.set_metadata("item4", {"tags": ["a", "b"]})
    assert custom.metadata(3)["metadata"] == {"label": "cat"}
    assert custom.metadata(4)["metadata"] == {"tags": ["a", "b"]}
    custom.set_metadata(3, None)
    assert custom.metadata(3)["metadata"] is None
    custom.remove([5])
    with pytest.raises(NotInIndexError):
        custom.set_metadata(5, {"x": 1})
    with pytest.raises(NotInIndexError, match="nope"):
        custom.set_metadata("nope", {"x": 1})
    with pytest.raises(ValueError, match="JSON"):
        custom.set_metadata(3, {"x": {1, 2}})
    root, files = photos
    with Index.create(root / ".fastimg") as ix:
        ix.add(files[:2])
        ix.set_metadata(files[1], {"label": "beach"})
        con = sqlite3.connect(root / ".fastimg" / "meta.sqlite")  # stored as JSON text
        try:
            text = con.execute("SELECT metadata FROM images WHERE path = ?",
                               (os.fsencode(os.path.relpath(files[1], root)),)).fetchone()[0]
        finally:
            con.close()
        assert text == '{"label": "beach"}'


def test_large_images_are_described_the_same_way_when_indexed_and_queried(tmp_path):
    import cv2

    root = tmp_path / "photos"
    root.mkdir()
    src = photo_tree(tmp_path / "src", classes=("beaches",), per_class=3)
    for i, f in enumerate(src):  # larger than the descriptor's working size: reduced decoding kicks in
        img = cv2.resize(cv2.imread(str(f)), (1600, 1064), interpolation=cv2.INTER_CUBIC)
        cv2.imwrite(str(root / f"big{i}.jpg"), img, [cv2.IMWRITE_JPEG_QUALITY, 92])
    outside = tmp_path / "query.jpg"
    shutil.copy2(root / "big1.jpg", outside)
    with Index.create(root / ".fastimg") as ix:
        assert ix.add(root).added == 3
        big1 = ix.search(root / "big1.jpg", k=1, exclude_self=False)[0]
        assert big1.path == str(root / "big1.jpg") and big1.score == pytest.approx(0, abs=1e-6)
        # a copy that is not indexed, its bytes: described exactly as add() did
        for query in (outside, outside.read_bytes()):
            hit = ix.search(query, k=1, exclude_self=False)[0]
            assert hit.id == big1.id and hit.score == pytest.approx(0, abs=1e-6)
        assert big1.id not in [h.id for h in ix.search(outside.read_bytes(), k=2)]


# --------------------------------------------------------------------------- state machine
def test_random_operation_sequences_match_a_dict_oracle(tmp_path):
    """add_vectors / remove / compact / reopen in random order; after every step the
    index equals a plain dict name -> vector (pyroaring-style oracle)."""
    pytest.importorskip("hypothesis")
    from hypothesis import settings, strategies as st
    from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

    counter = iter(range(10**9))

    class Machine(RuleBasedStateMachine):
        @initialize()
        def setup(self):
            self.path = tmp_path / f"ix{next(counter)}"
            self.ix = Index.create(self.path, descriptor="custom", dim=4, metric="l2")
            self.oracle: dict = {}

        @rule(n=st.integers(1, 5), seed=st.integers(0, 2**16), replace=st.booleans())
        def add(self, n, seed, replace):
            rng = np.random.default_rng(seed)
            names = [f"n{seed}_{i}" for i in range(n)]
            if replace and self.oracle:
                names[0] = sorted(self.oracle)[seed % len(self.oracle)]
            vecs = rng.integers(0, 4, (n, 4)).astype(np.float32)  # small ints: ties happen
            self.ix.add_vectors(vecs, names)
            self.oracle.update(zip(names, vecs))

        @rule(data=st.data())
        def remove(self, data):
            if not self.oracle:
                return
            name = data.draw(st.sampled_from(sorted(self.oracle)))
            assert self.ix.remove(name) == 1
            del self.oracle[name]

        @rule()
        def compact(self):
            self.ix.compact()
            assert self.ix.info()["deleted"] == 0

        @rule()
        def reopen(self):
            self.ix.close()
            self.ix = Index.open(self.path, mode="a")

        @invariant()
        def same_as_oracle(self):
            if not hasattr(self, "ix"):
                return
            live = self.ix.live_ids()
            names = self.ix.paths(live)
            assert sorted(names) == sorted(self.oracle)
            V = np.asarray(self.ix.vectors)
            for i, nm in zip(live, names):
                np.testing.assert_array_equal(V[i], self.oracle[nm])
            if self.oracle:
                q = np.array([1.5, 0.5, 2.5, 1.0], np.float32)
                hits = self.ix.search(q, k=3)
                d = np.sqrt(((V[live].astype(np.float64) - q) ** 2).sum(axis=1))
                order = np.lexsort((live, d))[:3]
                assert [h.id for h in hits] == live[order].tolist()

        def teardown(self):
            if hasattr(self, "ix"):
                self.ix.close()

    Machine.TestCase.settings = settings(max_examples=10, stateful_step_count=12, deadline=None)
    Machine.TestCase().runTest()
