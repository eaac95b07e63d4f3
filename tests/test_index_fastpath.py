"""The vectorised / cached steps of Index.search and search_batch (issue 23) give the
answers of the straightforward per-query computation: against per-row reference
loops and a NumPy brute-force top-k."""
from __future__ import annotations

import numpy as np
import pytest

from fastimg import Index
from fastimg.index.searching import Search, _compact


class _View:
    def __init__(self, array):
        self.array = array


def _ref_drop_self(array, q, ids, scores, k, selfs, ident):
    """The per-row definition: drop the query's own ids, then the lowest-id remaining
    candidate bit-identical to the query, keep the first k."""
    out_i = np.full((ids.shape[0], k), -1, np.int64)
    out_s = np.full((ids.shape[0], k), np.nan, np.float32)
    dropped = []
    for r in range(ids.shape[0]):
        kept = [(int(i), s) for i, s in zip(ids[r], scores[r]) if i >= 0 and not (selfs[r] and i in selfs[r])]
        d = set(selfs[r] or ())
        if ident[r]:
            same = [i for i, _ in kept if np.array_equal(array[i], q[r])]
            if same:
                j = min(same)
                kept = [(i, s) for i, s in kept if i != j]
                d.add(j)
        kept = kept[:k]
        out_i[r, :len(kept)] = [i for i, _ in kept]
        out_s[r, :len(kept)] = [s for _, s in kept]
        dropped.append(d or None)  # None: nothing dropped
    return out_i, out_s, dropped


@pytest.mark.parametrize("step_elems", [None, 40])
@pytest.mark.parametrize("d", [5, 12])
@pytest.mark.parametrize("seed", range(4))
def test_drop_self_matches_per_row_definition(seed, d, step_elems, monkeypatch):
    if step_elems is not None:  # the identical-row search in steps of a few queries
        monkeypatch.setattr("fastimg.index.searching._IDENT_ELEMS", step_elems)
    rng = np.random.default_rng(seed)
    n, nq, c = 40, 25, 9
    array = rng.integers(0, 3, (n, d)).astype(np.float32)  # small integers: many bit-identical rows
    array[::2, :8] = 0  # rows alike in their first columns, not after
    array[1::4, 3] = 7  # ... and rows alike in the largest column (compared first), not in the others
    q = array[rng.integers(0, n, nq)].copy()
    q[::4] += 0.5  # some queries identical to no row
    ids = np.stack([rng.permutation(n)[:c] for _ in range(nq)]).astype(np.int64)
    ids[rng.random(ids.shape) < 0.15] = -1  # padding ...
    ids = np.sort(np.where(ids < 0, n + 1, ids), axis=1)
    ids[ids == n + 1] = -1  # ... at the end of the rows, as the searchers pad
    scores = rng.random(ids.shape).astype(np.float32)
    selfs = [None if r % 3 else set(rng.choice(n, rng.integers(1, 3), replace=False).tolist()) for r in range(nq)]
    selfs[1] = {int(ids[1, 0])}  # a self among the candidates
    ident = [bool(r % 2) for r in range(nq)]
    for k in (1, 4, c, c + 3):
        got = Search._drop_self(_View(array), q, ids, scores, k, selfs, ident)
        want = _ref_drop_self(array, q, ids, scores, k, selfs, ident)
        np.testing.assert_array_equal(got[0], want[0])
        np.testing.assert_array_equal(got[1], want[1])
        assert got[2] == want[2]
        for r in range(nq):  # one query at a time (Index.search's path)
            one = Search._drop_self(_View(array), q[r:r + 1], ids[r:r + 1], scores[r:r + 1], k, selfs[r:r + 1],
                                    ident[r:r + 1])
            np.testing.assert_array_equal(one[0][0], want[0][r])
            np.testing.assert_array_equal(one[1][0], want[1][r])
            assert one[2] == [want[2][r]]


def test_compact_keeps_order_and_pads():
    rng = np.random.default_rng(3)
    ids = rng.integers(0, 100, (30, 7)).astype(np.int64)
    scores = rng.random((30, 7)).astype(np.float32)
    keep = rng.random((30, 7)) < 0.6
    keep[0] = True
    keep[1] = False
    for width in (None, 3, 10):
        gi, gs = _compact(ids, scores, keep, width)
        w = 7 if width is None else width
        for r in range(30):
            ki, ks = ids[r][keep[r]][:w], scores[r][keep[r]][:w]
            assert gi[r, :ki.size].tolist() == ki.tolist()
            np.testing.assert_array_equal(gs[r, :ki.size], ks)
            assert (gi[r, ki.size:] == -1).all() and np.isnan(gs[r, ki.size:]).all()


def _cosine_topk(data, q, k, exclude=()):
    a = data / np.linalg.norm(data, axis=1, keepdims=True)
    s = a @ (q / np.linalg.norm(q))
    s[list(exclude)] = -np.inf
    return np.argsort(-s, kind="stable")[:k]


@pytest.fixture()
def dup_index(tmp_path):
    rng = np.random.default_rng(11)
    data = rng.standard_normal((600, 12)).astype(np.float32)
    data[300] = data[10]  # bit-identical rows: "self" is the lowest id only
    data[450] = data[10]
    names = [f"n{i}" for i in range(len(data))]
    with Index.create(tmp_path / "i.fastimg", descriptor="custom", dim=12, metric="cosine") as ix:
        ix.add_vectors(data, names)
        ix.remove(["n5"])
        ix.build_ann(M=16, ef_construction=200, ef=200)
    ix = Index.open(tmp_path / "i.fastimg")
    yield ix, data, names
    ix.close()


@pytest.mark.parametrize("mode", ["exact", "ann"])
def test_batch_by_vector_and_by_name_match_brute_force(dup_index, mode):
    ix, data, names = dup_index
    k = 8
    picks = [10, 300, 7, 599, 123]
    # by vector: the lowest-id bit-identical live row is left out
    ids, scores = ix.search_batch(data[picks], k, mode=mode)
    for r, p in enumerate(picks):
        first = min(i for i in range(len(data)) if i != 5 and np.array_equal(data[i], data[p]))
        want = _cosine_topk(data, data[p], k, exclude={5, first})
        assert ids[r].tolist() == want.tolist()
        single = ix.search(data[p], k, mode=mode)
        assert [h.id for h in single] == want.tolist()
        np.testing.assert_allclose([h.score for h in single], scores[r], rtol=1e-6)
    # by name, twice (the second time from the remembered lookups): exactly the entry is left out
    for _ in range(2):
        ids, _ = ix.search_batch([names[p] for p in picks], k, mode=mode)
        for r, p in enumerate(picks):
            assert ids[r].tolist() == _cosine_topk(data, data[p], k, exclude={5, p}).tolist()
        hits = ix.search(names[300], k, mode=mode)
        assert [h.id for h in hits] == _cosine_topk(data, data[300], k, exclude={5, 300}).tolist()
    # a removed name is no longer an entry once the state changed
    with Index.open(ix.path, "a") as w:
        w.remove(["n7"])
    with pytest.raises(Exception, match="n7"):
        ix.search("n7", k, mode=mode)


def test_batch_of_names_reads_them_in_one_statement(dup_index):
    ix, data, names = dup_index
    picks = [3, 44, 300, 599]
    sql: list[str] = []
    ix.search_batch(data[:1], 4, mode="exact")  # the state is read
    ix._store._conn.set_trace_callback(sql.append)
    try:
        ids, _ = ix.search_batch([names[p] for p in picks], 4, mode="exact")
        selects = [s for s in sql if "FROM images" in s]
        assert len(selects) == 1, sql  # every name of the batch in one statement
        sql.clear()
        ix.search(names[44], 4, mode="exact")  # remembered at this state: no lookup
        assert not [s for s in sql if "FROM images WHERE path" in s], sql
    finally:
        ix._store._conn.set_trace_callback(None)
    for r, p in enumerate(picks):
        assert ids[r].tolist() == _cosine_topk(data, data[p], 4, exclude={5, p}).tolist()


def test_relative_paths_are_looked_up_from_the_current_directory(tmp_path, monkeypatch):
    import cv2

    rng = np.random.default_rng(2)
    for sub in ("a", "b"):
        (tmp_path / sub).mkdir()
        img = rng.integers(0, 255, (40, 50, 3), dtype=np.uint8)
        cv2.imwrite(str(tmp_path / sub / "x.png"), img)
    with Index.create(tmp_path / "i.fastimg", root=tmp_path) as ix:
        ix.add([tmp_path / "a" / "x.png", tmp_path / "b" / "x.png"])
        ida, idb = ix.id_of(tmp_path / "a" / "x.png"), ix.id_of(tmp_path / "b" / "x.png")
        for sub, own, other in (("a", ida, idb), ("b", idb, ida), ("a", ida, idb)):
            monkeypatch.chdir(tmp_path / sub)
            assert [h.id for h in ix.search("x.png", 2, mode="exact")] == [other]  # its own row left out
            ids, _ = ix.search_batch(["x.png", str(tmp_path / sub / "x.png")], 2, mode="exact")
            assert ids[:, 0].tolist() == [other, other] and (ids[:, 1] == -1).all()


def test_graph_search_checked_equals_search(dup_index):
    ix, data, _ = dup_index
    ix.search(data[0], 3, mode="ann")  # loads the graph
    graph = ix._graph.graph
    q = np.ascontiguousarray(data[[1, 2, 300, 77]] + 0.01, dtype=np.float32)
    for k, cand in ((1, None), (8, None), (8, 20)):
        a = graph.search(q, k, data=ix.vectors, ef=30, candidates=cand)
        b = graph.search_checked(q, k, ix.vectors, ef=30, candidates=cand)
        np.testing.assert_array_equal(a[0], b[0])
        np.testing.assert_array_equal(a[1], b[1])
