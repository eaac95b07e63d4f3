"""What a handle keeps between calls, and that it never serves a stale state.

A handle reads the committed state once and re-reads it only after a commit
(``fastimg.index.view``); hit paths are remembered per state.  These tests count
the SQLite statements a search issues (the handle's own connection, traced) and
check, against a NumPy brute force and the file system, that every change
committed by another handle is seen at the next call: new rows, deletions, a
moved file's new path, a compaction that renumbers the ids mid-search.
"""
from __future__ import annotations

import os

import numpy as np
import pytest

from _photos import photo_tree
from fastimg.index import Index

D = 8


def _data(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((n, D)).astype(np.float32)


def _brute_l2(X: np.ndarray, live: np.ndarray, q: np.ndarray, k: int) -> list[int]:
    d = np.sqrt(((X[live].astype(np.float64) - q) ** 2).sum(axis=1))
    return live[np.lexsort((live, d))[:k]].tolist()


class _Statements:
    """Counts the SQL statements run on one handle's connection."""

    def __init__(self, index: Index):
        self.sql: list[str] = []
        index._store._conn.set_trace_callback(self.sql.append)

    def during(self, fn, *args, **kwargs):
        self.sql.clear()
        out = fn(*args, **kwargs)
        return out, list(self.sql)


@pytest.fixture
def pair(tmp_path):
    """A writer with 200 rows (metric l2) and a reader on the same index."""
    X = _data(200)
    writer = Index.create(tmp_path / "ix", descriptor="custom", dim=D, metric="l2")
    writer.add_vectors(X, [f"r{i}" for i in range(200)])
    reader = Index.open(tmp_path / "ix")
    yield writer, reader, X
    reader.close()
    writer.close()


def test_a_vector_search_costs_one_lookup_while_nothing_changes(pair):
    writer, reader, X = pair
    trace = _Statements(reader)
    q = X[3] + 0.01
    hits, sql = trace.during(reader.search, q, k=5)
    assert [h.id for h in hits] == _brute_l2(X, np.arange(200), q, 5)
    again, sql = trace.during(reader.search, q, k=5)
    assert again == hits
    assert len(sql) == 1, sql  # is the state unchanged? (the hits' paths are remembered)
    other = X[150] + 0.02
    hits, sql = trace.during(reader.search, other, k=5, exclude_self=False)
    assert [h.id for h in hits] == _brute_l2(X, np.arange(200), other, 5)
    assert [h.path for h in hits] == [f"r{h.id}" for h in hits]
    assert len(sql) == 2, sql  # + one statement for the paths not seen yet
    # the writer commits: the reader's next call reads the new state, once
    new = np.full((1, D), 0.5, np.float32)
    (nid,) = writer.add_vectors(new, ["new"])
    writer.remove([int(hits[0].id)])
    live = np.setdiff1d(np.arange(201), [hits[0].id])
    X2 = np.vstack([X, new])
    for q2 in (new[0] + 0.001, other):
        got = reader.search(q2, k=5, exclude_self=False)
        assert [h.id for h in got] == _brute_l2(X2, live, q2, 5)
    assert reader.search(new[0], k=1, exclude_self=False)[0].path == "new"
    _, sql = trace.during(reader.search, other, k=5)
    assert len(sql) == 1, sql


def test_a_compaction_between_the_scan_and_the_paths_means_searching_again(pair, monkeypatch):
    """The ids a search found are renumbered by a compaction committed before their
    paths are read: the search is done again, and the hits are those of the new ids.
    (Paths remembered from an earlier call of the same state are that state's: a
    search that needs none read answers for the state it started from.)"""
    writer, reader, X = pair
    q = X[40] + 0.01
    reader.search(X[199], k=2)  # the reader's state: generation 0, other hits remembered
    run = reader._search.run
    compacted, runs = [], []

    def run_then_compact(*args, **kwargs):
        out = run(*args, **kwargs)
        runs.append(args[0].state.generation)  # the state each search ran on
        if not compacted:  # another handle compacts after this scan, before the paths
            writer.remove(list(range(0, 30)))
            compacted.append(writer.compact())
        return out

    monkeypatch.setattr(reader._search, "run", run_then_compact)
    hits = reader.search(q, k=5)
    mapping = compacted[0]
    assert runs == [0, 1]  # searched again on the compacted state
    kept = np.flatnonzero(mapping >= 0)  # old ids, in the new order
    expect = _brute_l2(X[kept], np.arange(kept.size), q, 5)
    assert [h.id for h in hits] == expect and expect[0] == 10  # X[40] is row 10 now
    assert [h.path for h in hits] == [f"r{kept[i]}" for i in expect]


def test_hit_paths_follow_a_move_committed_by_another_handle(tmp_path):
    root = tmp_path / "photos"
    files = photo_tree(root, per_class=2)
    with Index.create(root / ".fastimg") as writer:
        writer.add(root)
        with Index.open(root / ".fastimg") as reader:
            target = files[3]
            (tid,) = [i for i, p in zip(reader.live_ids(), reader.paths(reader.live_ids())) if p == str(target)]
            q = np.asarray(reader.vectors[tid])
            assert reader.search(q, k=1, exclude_self=False)[0].path == str(target)  # remembered
            moved = root / "elsewhere" / "renamed.jpg"
            moved.parent.mkdir()
            os.rename(target, moved)
            report = writer.add(root)
            assert report.moved == 1
            hit = reader.search(q, k=1, exclude_self=False)[0]
            assert (hit.id, hit.path) == (tid, str(moved)) and os.path.exists(hit.path)


def test_search_batch_by_vectors_reads_no_row(pair):
    writer, reader, X = pair
    trace = _Statements(reader)
    reader.search_batch(X[:3], k=4)
    (ids, _), sql = trace.during(reader.search_batch, X[5:9] + 0.01, k=4, exclude_self=False)
    assert len(sql) == 1, sql
    for r in range(4):
        assert ids[r].tolist() == _brute_l2(X, np.arange(200), X[5 + r] + 0.01, 4)
