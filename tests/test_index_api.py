"""The application-facing calls of fastimg.Index (issue 21): search by entry,
lookups, score thresholds and path filters, search_batch's result, duplicates.

Oracles: a NumPy brute force over the vectors the test put in (cv2.compareHist
for the histogram metrics), path filters written with str.startswith / fnmatch
over the names the test chose, the SQLite file and os.stat for stored facts.
"""
from __future__ import annotations

import fnmatch
import os
import pickle
import shutil
import sqlite3

import numpy as np
import pytest

from _photos import photo_tree
from fastimg import ArgumentError, ArgumentTypeError, FastimgError, IndexChangedError, NotInIndexError
from fastimg.dedup import find_duplicates
from fastimg.index import BatchResult, Entry, Index

D = 10
N = 400


def _scores(metric: str, q: np.ndarray, X: np.ndarray) -> np.ndarray:
    q = q.astype(np.float64)
    X = X.astype(np.float64)
    if metric == "cosine":
        return X @ q / (np.linalg.norm(X, axis=1) * np.linalg.norm(q))
    if metric == "l2":
        return np.sqrt(((X - q) ** 2).sum(axis=1))
    if metric == "l1":
        return np.abs(X - q).sum(axis=1)
    if metric == "pearson":
        return np.array([np.corrcoef(q, x)[0, 1] for x in X])
    import cv2

    method = {"bhattacharyya": cv2.HISTCMP_BHATTACHARYYA, "chisqr": cv2.HISTCMP_CHISQR,
              "intersect": cv2.HISTCMP_INTERSECT}[metric]
    return np.array([cv2.compareHist(q.astype(np.float32), x.astype(np.float32), method) for x in X])


HIGHER = {"cosine": True, "pearson": True, "intersect": True, "l2": False, "l1": False, "bhattacharyya": False,
          "chisqr": False}


def brute(metric: str, q: np.ndarray, X: np.ndarray, allowed, k: int, threshold=None):
    """(ids, scores) of the best k of rows ``allowed``, ties by lower id, within ``threshold``."""
    allowed = np.asarray(sorted(allowed), dtype=np.int64)
    if allowed.size == 0:
        return [], np.zeros(0)
    s = _scores(metric, q, X[allowed])
    order = np.lexsort((allowed, -s if HIGHER[metric] else s))
    ids, sc = allowed[order], s[order]
    if threshold is not None:
        ok = sc >= threshold if HIGHER[metric] else sc <= threshold
        ids, sc = ids[ok], sc[ok]
    return ids[:k].tolist(), sc[:k]


def assert_hits(hits, expected):
    ids, scores = expected
    assert [h.id for h in hits] == ids
    np.testing.assert_allclose([h.score for h in hits], scores, rtol=1e-5, atol=1e-5)
    assert [h.rank for h in hits] == list(range(1, len(ids) + 1))


NAMES = [f"{'trips' if i % 3 else 'home'}/{2018 + i % 4}/img{i:03d}.{'png' if i % 5 == 0 else 'jpg'}"
         for i in range(N)]


@pytest.fixture
def X():
    rng = np.random.default_rng(21)
    x = rng.random((N, D)).astype(np.float32)
    x[170] = x[22]  # two identical entries
    x[300] = x[301] = x[302] = x[150]
    return x


@pytest.fixture
def ix(tmp_path, X):
    index = Index.create(tmp_path / "ix", descriptor="custom", dim=D)
    index.add_vectors(X, NAMES)
    yield index
    index.close()


# --------------------------------------------------------------------------- search by entry
def test_similar_leaves_out_exactly_the_entry_and_identical_copies_rank_first(ix, X):
    for entry, copies in ((22, [170]), (170, [22]), (150, [300, 301, 302]), (301, [150, 300, 302])):
        hits = ix.similar(entry, k=6)
        assert [h.id for h in hits[:len(copies)]] == copies  # score 1, ties by lower id
        assert all(h.score == pytest.approx(1.0, abs=1e-6) for h in hits[:len(copies)])
        assert_hits(hits, brute("cosine", X[entry], X, set(range(N)) - {entry}, 6))
        # by name: the same query and the same exclusion
        assert ix.similar(NAMES[entry], k=6) == hits
    # search() by the stored vector keeps its documented rule: the lowest-id identical row is "self"
    assert [h.id for h in ix.search(X[170], k=2)] == [170, brute("cosine", X[22], X, set(range(N)) - {22, 170},
                                                                  1)[0][0]]


@pytest.mark.parametrize("metric", ["l2", "pearson", "bhattacharyya", "chisqr", "intersect", "l1"])
def test_similar_with_every_metric_matches_brute_force(ix, X, metric):
    for entry in (3, 22, 399):
        assert_hits(ix.similar(entry, k=5, metric=metric), brute(metric, X[entry], X, set(range(N)) - {entry}, 5))


def test_similar_on_deleted_unknown_and_bad_entries(ix, X):
    ix.remove([22])
    with pytest.raises(NotInIndexError, match="no live entry with id 22"):
        ix.similar(22)
    for bad in (N, -1, 10 ** 9):
        with pytest.raises(NotInIndexError):
            ix.similar(bad)
    with pytest.raises(NotInIndexError, match="not in the index: nope"):
        ix.similar("nope")
    with pytest.raises(ArgumentError, match="an entry is an id"):
        ix.similar(3.5)  # type: ignore[arg-type]
    # the copy of the deleted entry finds neither it nor itself
    assert_hits(ix.similar(170, k=4), brute("cosine", X[170], X, set(range(N)) - {22, 170}, 4))


def test_an_int_query_is_a_clear_error_pointing_to_similar(ix):
    for q in (22, np.int64(22), np.array(22)):
        with pytest.raises(ArgumentError, match=r"use Index\.similar\(22\)") as err:
            ix.search(q)
        assert isinstance(err.value, FastimgError) and isinstance(err.value, ValueError)
    with pytest.raises(ArgumentError, match="uint8"):
        ix.search(np.zeros(D, np.uint8))


def test_similar_by_indexed_file_path(tmp_path):
    root = tmp_path / "photos"
    files = photo_tree(root, per_class=2)
    shutil.copy2(files[0], root / "copy.jpg")  # an identical file: same vector
    with Index.create(root / ".fastimg") as ix:
        ix.add(root)
        vecs = np.asarray(ix.vectors)
        i0, ic = ix.id_of(files[0]), ix.id_of(root / "copy.jpg")
        hits = ix.similar(files[0], k=3)
        assert hits[0].id == ic and hits[0].path == str(root / "copy.jpg")
        assert_hits(hits, brute("bhattacharyya", vecs[i0], vecs, set(ix.live_ids().tolist()) - {i0}, 3))
        assert ix.similar(i0, k=3) == hits
        # relative to the current directory, as add() takes paths
        cwd = os.getcwd()
        try:
            os.chdir(root)
            assert ix.similar(os.path.relpath(files[0], root), k=3) == hits
            assert os.path.relpath(files[0], root) in ix
        finally:
            os.chdir(cwd)


# --------------------------------------------------------------------------- lookups
def test_lookups_agree_with_the_sqlite_file(ix, X, tmp_path):
    ix.set_metadata(NAMES[5], {"label": "cat"})
    ix.remove([7, 8])
    con = sqlite3.connect(tmp_path / "ix" / "meta.sqlite")
    rows = {r[0]: r for r in con.execute("SELECT id, path, is_file, size, mtime_ns, hash, added, deleted, metadata "
                                         "FROM images")}
    con.close()
    live = sorted(i for i, r in rows.items() if not r[7])
    assert len(ix) == len(live) == ix.live_ids().size == N - 2
    assert ix.vectors.shape[0] == N  # deleted rows included
    entries = list(ix)
    assert [e.id for e in entries] == live and all(isinstance(e, Entry) for e in entries)
    # format 2 stores paths as the bytes of the name (os.fsdecode gives the str back)
    assert [e.path for e in entries] == [os.fsdecode(rows[i][1]) for i in live]
    page = ix.live_ids()[5:9]
    assert ix.entries(page) == [ix.entry(int(i)) for i in page] and ix.entries([]) == []
    with pytest.raises(NotInIndexError):
        ix.entries([3, N])
    e = ix.entry(5)
    assert (e.id, e.path, e.is_file, e.size, e.hash, e.deleted, e.metadata) == (5, NAMES[5], False, None, None, False,
                                                                                   {"label": "cat"})
    assert e.added == rows[5][6]
    assert ix.entry(NAMES[5]) == e and ix.metadata(NAMES[5]) == ix.metadata(5) == {**e.__dict__}
    assert ix.entry(7).deleted  # an id may name a deleted row (until compact)
    assert ix[5] == ix[NAMES[5]] == e and ix[0] == ix.entry(0)  # index[key] is entry(key)
    with pytest.raises(NotInIndexError):
        ix[N]
    with pytest.raises(ArgumentTypeError, match="not a sequence"):
        ix[0:3]
    with pytest.raises(NotInIndexError):
        ix.entry(NAMES[7])  # a name names the live entry
    with pytest.raises(NotInIndexError):
        ix.entry(N)
    assert 5 in ix and NAMES[5] in ix and 7 not in ix and NAMES[7] not in ix and N not in ix and -1 not in ix
    assert "nope" not in ix and 3.0 not in ix and None not in ix and True not in ix
    assert ix.id_of(NAMES[9]) == 9
    with pytest.raises(NotInIndexError, match="not in the index"):
        ix.id_of(NAMES[8])
    got = ix.vectors_of([3, NAMES[9], 170])
    np.testing.assert_array_equal(got, X[[3, 9, 170]])
    assert got.dtype == np.float32 and got.flags.writeable
    assert ix.vectors_of([]).shape == (0, D)
    with pytest.raises(NotInIndexError, match="id 7"):
        ix.vectors_of([3, 7])


def test_file_entries_record_the_files(tmp_path):
    root = tmp_path / "photos"
    files = photo_tree(root, per_class=1)
    with Index.create(root / ".fastimg") as ix:
        ix.add(root)
        for f in files:
            e = ix.entry(f)
            st = os.stat(f)
            assert (e.path, e.is_file, e.size, e.mtime_ns) == (str(f), True, st.st_size, st.st_mtime_ns)
            assert e.id == ix.id_of(f) and f in ix and str(f) in ix
        assert sorted(e.path for e in ix) == sorted(map(str, files))


def test_iteration_notices_a_compaction(ix, monkeypatch):
    import fastimg.index._entries as entries_mod

    monkeypatch.setattr(entries_mod, "_ITER_CHUNK", 10)
    with Index.open(ix.path) as ro:
        it = iter(ro)
        first = [next(it) for _ in range(10)]
        assert [e.id for e in first] == list(range(10))
        ix.remove([0, 1])
        ix.compact()
        with pytest.raises(IndexChangedError, match="compacted while iterating"):
            next(it)
        assert [e.id for e in ro][:3] == [0, 1, 2] and len(list(ro)) == N - 2


# --------------------------------------------------------------------------- threshold and where
@pytest.mark.parametrize("metric,threshold", [("cosine", 0.9), ("l2", 0.8), ("pearson", 0.6), ("chisqr", 1.5),
                                              ("intersect", 4.0)])
def test_threshold_in_the_metric_direction(ix, X, metric, threshold):
    rng = np.random.default_rng(5)
    Q = rng.random((5, D)).astype(np.float32)
    res = ix.search_batch(Q, k=30, metric=metric, threshold=threshold)
    for r in range(5):
        exp = brute(metric, Q[r], X, range(N), 30, threshold)
        assert_hits(ix.search(Q[r], k=30, metric=metric, threshold=threshold), exp)
        ids, scores = res.row(r)
        assert ids.tolist() == exp[0] and res.counts[r] == len(exp[0])
        np.testing.assert_allclose(scores, exp[1], rtol=1e-5, atol=1e-5)
        assert (res.ids[r, res.counts[r]:] == -1).all() and np.isnan(res.scores[r, res.counts[r]:]).all()
    assert 0 < res.counts.sum() < 5 * 30  # the threshold did cut, somewhere


def _oracle_where(where):
    pats = [where] if isinstance(where, str) else where
    keep = set()
    for p in pats:
        for i, name in enumerate(NAMES):
            if any(c in p for c in "*?["):
                if fnmatch.fnmatchcase(name, p):
                    keep.add(i)
            elif p in ("", ".") or name == p.rstrip("/") or name.startswith(p.rstrip("/") + "/"):
                keep.add(i)
    return keep


@pytest.mark.parametrize("where", ["trips", "home/2019", "home/2019/", "trips/2021/img013.jpg", "*.png",
                                   "trips/20[12]?/*", ["home/2018", "*/img00?.*"], "nothing/here", "."])
def test_where_filters_by_stored_path(ix, X, where):
    ix.remove([1, 2, 4])
    allowed = _oracle_where(where) - {1, 2, 4}
    q = X[33] + 0.01
    for metric in ("cosine", "l2", "chisqr"):
        assert_hits(ix.search(q, k=8, metric=metric, where=where), brute(metric, q, X, allowed, 8))
    res = ix.search_batch(X[[10, 11]] + 0.02, k=5, where=where, metric="l2")
    for r in range(2):
        assert res.row(r)[0].tolist() == brute("l2", X[10 + r] + 0.02, X, allowed, 5)[0]
    assert_hits(ix.similar(33, k=5, where=where), brute("cosine", X[33], X, allowed - {33}, 5))


def test_where_with_a_large_and_a_small_selection(ix, X, monkeypatch):
    """Both strategies (rows scored directly; the whole matrix scanned with the
    others masked) give the brute-force answer."""
    import fastimg.index.searching as searching

    q = X[40] + 0.03
    small, large = "home/2019", ["trips", "home/2018"]
    for limit in (0, 1 << 30):  # 0: never direct, 2**30: direct whenever a quarter of the rows or fewer
        monkeypatch.setattr(searching, "DIRECT_ELEMS", limit)
        for where in (small, large):
            for metric in ("pearson", "bhattacharyya"):
                assert_hits(ix.search(q, k=7, metric=metric, where=where, threshold=None),
                            brute(metric, q, X, _oracle_where(where), 7))


def test_where_with_absolute_folders_on_a_file_index(tmp_path):
    root = tmp_path / "photos"
    files = photo_tree(root, classes=("beaches", "horses", "flowers"), per_class=3)
    with Index.create(root / ".fastimg") as ix:
        ix.add(root)
        vecs = np.asarray(ix.vectors)
        q = vecs[ix.id_of(files[0])] + 0.001
        horses = {ix.id_of(f) for f in files if f.parent.name == "horses"}
        for where in (root / "horses", str(root / "horses") + "/", "horses", "horses/*.jpg"):
            hits = ix.search(q, k=5, where=where)
            assert_hits(hits, brute("bhattacharyya", q, vecs, horses, 5))
            assert all(os.path.dirname(h.path) == str(root / "horses") for h in hits)
        assert ix.search(q, k=5, where=root / "hors") == []  # a folder, not a string prefix


def test_filter_argument_errors(ix, X):
    for bad, msg in ((float("nan"), "threshold must be a finite number"), ("0.5", "threshold must be"),
                     (True, "threshold must be")):
        with pytest.raises(ArgumentError, match=msg):
            ix.search(X[0], threshold=bad)
    for bad, msg in ((3, "where must be a path prefix or glob"), ([], "empty list"), ([None], "where must be")):
        with pytest.raises(ArgumentError, match=msg):
            ix.search(X[0], where=bad)
    with pytest.raises(ArgumentError, match="where= searches exactly"):
        ix.search(X[0], where="trips", mode="ann")


# --------------------------------------------------------------------------- search_batch's result
def test_search_batch_result_unpacks_counts_and_never_leaks_padding(tmp_path):
    with Index.create(tmp_path / "ix", descriptor="custom", dim=3) as ix:
        ix.add_vectors(np.array([[1, 0, 0], [0.9, 0.1, 0], [0, 1, 0]], np.float32), ["a", "b", "c"])
        res = ix.search_batch(np.array([[1, 0, 0], [0, 1, 0]], np.float32), k=5)
        assert isinstance(res, tuple) and isinstance(res, BatchResult) and len(res) == 2
        ids, scores = res
        assert ids.shape == (2, 5) and res.ids is ids and res.scores is scores
        # the query [1, 0, 0] is row 0's vector: left out (exclude_self); 2 rows remain for each
        assert res.counts.tolist() == [2, 2]
        assert res.row(0)[0].tolist() == [1, 2] and ids[0, 2:].tolist() == [-1, -1, -1]
        assert ix.paths(res.row(0)[0]) == ["b", "c"]
        with pytest.raises(NotInIndexError, match="-1 is the padding"):
            ix.paths(ids[0])
        back = pickle.loads(pickle.dumps(res))
        assert isinstance(back, BatchResult) and np.array_equal(back.ids, ids) and back.counts.tolist() == [2, 2]


# --------------------------------------------------------------------------- the rest of the API
def test_duplicates_delegates_to_find_duplicates(ix):
    groups = ix.duplicates(0.9999)
    assert groups == find_duplicates(ix, threshold=0.9999)
    assert [g.ids for g in groups] == [(150, 300, 301, 302), (22, 170)]


def test_descriptor_spec_and_ann_info_without_walking_the_directory(ix, monkeypatch):
    from pathlib import Path

    info = ix.info()
    spec = ix.descriptor_spec
    spec["params"]["x"] = 1  # a copy
    assert ix.descriptor_spec == info["descriptor"] == {"name": "custom", "dim": D, "version": 1, "params": {}}

    def no_walk(*a, **k):
        raise AssertionError("walked the index directory")

    monkeypatch.setattr(Path, "rglob", no_walk)
    assert ix.ann_info() == info["ann"]
    assert ix.descriptor_spec["name"] == "custom"


def test_filters_and_lookups_follow_the_writer(ix, X):
    """A filter is read once per committed state: rows a writer adds under the
    folder (or removes) are seen at the reader's next call; a lookup made with a
    view older than a compaction is refused (Stale) and the search reads the new state."""
    from fastimg.index.query import Stale

    with Index.open(ix.path) as ro:
        q = X[60] + 0.01
        allowed = _oracle_where("home/2018")
        assert_hits(ro.search(q, k=5, where="home/2018", metric="l2"), brute("l2", q, X, allowed, 5))
        extra = q[None, :] + 0.001  # nearer to q than any row
        (new_id,) = ix.add_vectors(extra, ["home/2018/new.jpg"])
        ix.remove([min(allowed)])
        X2 = np.vstack([X, extra])
        allowed2 = (allowed | {new_id}) - {min(allowed)}
        hits = ro.search(q, k=5, where="home/2018", metric="l2")
        assert hits[0].id == new_id and hits[0].path == "home/2018/new.jpg"
        assert_hits(hits, brute("l2", q, X2, allowed2, 5))
        old = ro._views.current()
        ix.remove([1, 2, 4])
        ix.compact()  # ids renumbered
        with pytest.raises(Stale):
            ro._queries.vector(NAMES[10], old)
        with pytest.raises(Stale):
            ro._allowed(old, (("trips",), ()))
        hits = ro.search(NAMES[10], k=3, metric="l2")  # by name: row 10 has another id now
        live_old = [i for i in range(N + 1) if i not in {1, 2, 4, min(allowed)}]
        new_of = {o: n for n, o in enumerate(live_old)}
        exp_ids, exp_scores = brute("l2", X2[10], X2, set(live_old) - {10}, 3)
        assert [h.id for h in hits] == [new_of[i] for i in exp_ids]
        np.testing.assert_allclose([h.score for h in hits], exp_scores, rtol=1e-5, atol=1e-5)
