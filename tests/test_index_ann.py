"""The index's HNSW graph is saved lazily; a stale saved graph is never wrong.

A writer keeps the graph up to date in memory on every add/remove and saves it
on close()/flush() or after ``ANN_SAVE_ROWS`` inserted rows.  Whatever the
saved graph lags behind (a writer that has not saved yet, a process killed by
SIGKILL), searches must equal a numpy brute force over the live rows: rows the
graph lacks are scanned exactly and deleted rows never come back.

Oracle: numpy L2 distances over exactly the rows the index reports live, ties
by lower id.  The graphs are small and searched with ef >= N, so the graph's
candidates are the exact ones and results are compared id for id."""
from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from fastimg.index import graph as graph_mod
from fastimg.index import Index

pytest.importorskip("hnswlib")

D = 8
EF = 1000  # >= every graph's size here: the graph then returns the exact candidates


def _vec(j: int) -> np.ndarray:
    return np.random.default_rng(1000 + j).random(D).astype(np.float32)


def _vecs(lo: int, hi: int) -> np.ndarray:
    return np.stack([_vec(j) for j in range(lo, hi)])


def _brute(V: np.ndarray, live: np.ndarray, q: np.ndarray, k: int) -> list:
    d = np.sqrt(((V[live].astype(np.float64) - q.astype(np.float64)) ** 2).sum(axis=1))
    return live[np.lexsort((live, d))[:k]].tolist()


def _assert_searches_exact(ix: Index, k: int = 7) -> None:
    V = np.asarray(ix.vectors)
    live = ix.live_ids()
    rng = np.random.default_rng(len(V))
    for q in list(rng.random((6, D)).astype(np.float32)) + [V[int(live[-1])]]:
        got = [h.id for h in ix.search(q, k=k, mode="ann", ef=EF, exclude_self=False)]
        assert got == _brute(V, live, q, k)


def _build_dir(path: Path) -> Path:
    """The directory of the graph's build (ann/<build>/: the only one once recorded)."""
    (build,) = (path / "ann").iterdir()
    return build


def _saved(path: Path) -> dict:
    from fastimg.ann import saved_meta

    meta = saved_meta(_build_dir(path))
    assert meta is not None
    return meta


def _new_index(path: Path, n: int) -> None:
    with Index.create(path, descriptor="custom", dim=D, metric="l2") as ix:
        ix.add_vectors(_vecs(0, n), [f"r{j}" for j in range(n)])
        ix.build_ann(M=8, ef_construction=64)


def test_writer_saves_on_flush_and_close_not_on_every_change(tmp_path):
    path = tmp_path / "ix"
    _new_index(path, 300)
    from fastimg.ann import graph_file as named

    graph_file = named(_build_dir(path))
    with Index.open(path, "a") as ix:
        before = graph_file.stat().st_mtime_ns, _saved(path)["crc32"]
        ix.add_vectors(_vecs(300, 320), [f"r{j}" for j in range(300, 320)])
        ix.remove([5, 310])
        # the graph file is untouched; the writer's graph holds everything in memory
        assert (graph_file.stat().st_mtime_ns, _saved(path)["crc32"]) == before
        info = ix.info()["ann"]
        assert (info["rows"], info["saved_rows"], info["unsaved"], info["pending_rows"]) == (320, 300, True, 0)
        _assert_searches_exact(ix)
        # a reader meanwhile answers from the saved graph plus an exact scan of the rest
        with Index.open(path) as ro:
            info = ro.info()["ann"]
            assert (info["rows"], info["saved_rows"], info["unsaved"], info["pending_rows"]) == (300, 300, False, 20)
            _assert_searches_exact(ro)
        ix.flush()
        saved = _saved(path)
        assert saved["extra"]["rows"] == 320 and {5, 310} <= set(saved["deleted"])
        info = ix.info()["ann"]
        assert (info["rows"], info["saved_rows"], info["unsaved"], info["pending_rows"]) == (320, 320, False, 0)
        ix.add_vectors(_vecs(320, 330), [f"r{j}" for j in range(320, 330)])
        assert _saved(path)["extra"]["rows"] == 320
    assert _saved(path)["extra"]["rows"] == 330  # saved by close()
    with Index.open(path) as ro:
        info = ro.info()["ann"]
        assert (info["rows"], info["saved_rows"], info["pending_rows"]) == (330, 330, 0)
        _assert_searches_exact(ro)
        with pytest.raises(Exception, match="read-only"):
            ro.flush()


def test_writer_saves_after_enough_inserted_rows(tmp_path, monkeypatch):
    path = tmp_path / "ix"
    _new_index(path, 200)
    monkeypatch.setattr(graph_mod, "ANN_SAVE_ROWS", 25)
    with Index.open(path, "a") as ix:
        ix.add_vectors(_vecs(200, 220), [f"r{j}" for j in range(200, 220)])
        assert _saved(path)["extra"]["rows"] == 200  # 20 < 25 rows inserted since the save
        ix.add_vectors(_vecs(220, 230), [f"r{j}" for j in range(220, 230)])
        assert _saved(path)["extra"]["rows"] == 230  # 30 >= 25: saved during add
        assert ix.info()["ann"]["unsaved"] is False


_KILLED_WRITER = r"""
import os, signal, sys
import numpy as np
from fastimg.index import Index
path, lo, hi = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
vec = lambda j: np.random.default_rng(1000 + j).random(%d).astype(np.float32)
ix = Index.open(path, mode="a")
ix.add_vectors(np.stack([vec(j) for j in range(lo, hi)]), [f"r{j}" for j in range(lo, hi)])
ix.remove([3, 4, 150, lo + 1])          # rows of the saved graph and a new row
assert ix.info()["ann"]["unsaved"]
print("killing", flush=True)
os.kill(os.getpid(), signal.SIGKILL)    # no close(): the graph in memory is lost
""" % D


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs POSIX signals")
def test_graph_left_stale_by_a_killed_writer_is_never_wrong_and_is_caught_up(tmp_path):
    path = tmp_path / "ix"
    _new_index(path, 240)
    script = tmp_path / "writer.py"
    script.write_text(_KILLED_WRITER)
    proc = subprocess.run([sys.executable, str(script), str(path), "240", "290"], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert "killing" in proc.stdout
    saved = _saved(path)
    assert saved["extra"]["rows"] == 240 and not {3, 4, 150} & set(saved["deleted"])  # the stale graph
    with Index.open(path) as ro:
        assert ro.info()["rows"] == 290 and set(ro.deleted_ids().tolist()) == {3, 4, 150, 241}
        info = ro.info()["ann"]
        assert (info["rows"], info["saved_rows"], info["pending_rows"], info["error"]) == (240, 240, 50, None)
        _assert_searches_exact(ro)
        for j in (3, 4, 150):  # the deleted rows' own vectors: never returned, even as exact matches
            assert j not in [h.id for h in ro.search(_vec(j), k=5, mode="ann", ef=EF, exclude_self=False)]
    # the next writer catches the graph up (inserts the missing rows, marks the deletions)
    with Index.open(path, "a") as ix:
        ix.add_vectors(_vec(290)[None], ["r290"])
        info = ix.info()["ann"]
        assert (info["rows"], info["pending_rows"], info["unsaved"]) == (291, 0, True)
        _assert_searches_exact(ix)
    saved = _saved(path)
    assert saved["extra"]["rows"] == 291 and {3, 4, 150, 241} <= set(saved["deleted"])
    with Index.open(path) as ro:
        assert ro.info()["ann"]["pending_rows"] == 0
        _assert_searches_exact(ro)


def test_graph_saved_for_other_rows_than_it_holds_is_refused(tmp_path):
    """A graph file whose recorded coverage disagrees with its ids is not used."""
    import json

    path = tmp_path / "ix"
    _new_index(path, 120)
    meta_file = _build_dir(path) / "hnsw.json"
    meta = json.loads(meta_file.read_text())
    meta["extra"]["rows"] = 100
    meta_file.write_text(json.dumps(meta))
    with Index.open(path) as ro:
        V = np.asarray(ro.vectors)
        got = [h.id for h in ro.search(V[7], k=5, exclude_self=False)]  # auto: exact, still right
        assert got == _brute(V, ro.live_ids(), V[7], 5)
        with pytest.raises(ValueError, match="records 100 rows"):
            ro.search(V[7], k=5, mode="ann")


def test_reader_notices_a_rebuild_at_the_same_generation_and_size(tmp_path):
    """A reader holding a loaded graph must not keep using it after a writer
    rebuilt the graph (here for another metric) with the same rows."""
    _new_index(tmp_path / "ix", 60)
    with Index.open(tmp_path / "ix", mode="r") as reader:
        q = _vec(3)
        reader.search(q, k=5, mode="ann", ef=EF, metric="l2")  # loads the l2 graph
        with Index.open(tmp_path / "ix", mode="a") as writer:
            writer.build_ann(metric="cosine", M=8, ef_construction=64)
        V, live = np.asarray(reader.vectors), reader.live_ids()
        got = reader.search(q, k=5, mode="ann", ef=EF, metric="cosine", exclude_self=False)
        cos = (V[live] @ q) / (np.linalg.norm(V[live], axis=1) * np.linalg.norm(q))
        assert [h.id for h in got] == live[np.lexsort((live, -cos))[:5]].tolist()
        np.testing.assert_allclose([h.score for h in got], np.sort(cos)[::-1][:5], rtol=1e-5)


def test_reader_with_an_older_snapshot_than_the_saved_graph_scans_exactly(tmp_path):
    """A graph saved by a writer after a reader's snapshot is not corruption: that
    search scans exactly (mode='ann' included) and info() reports no error."""
    _new_index(tmp_path / "ix", 60)
    with Index.open(tmp_path / "ix", mode="r") as reader:
        old_view = reader._view()
        with Index.open(tmp_path / "ix", mode="a") as writer:
            writer.add_vectors(_vecs(60, 70), [f"v{j}" for j in range(60, 70)])
            writer.flush()
        with pytest.raises(Exception, match="newer than this snapshot"):
            reader._graph.load(old_view)
        assert reader.info()["ann"]["error"] is None
        _assert_searches_exact(reader)  # the reader's next snapshot sees all 70 rows and the graph


def test_build_ann_reports_progress_to_a_callback(tmp_path, monkeypatch, capsys):
    """A callable ``progress`` gets ``(rows inserted, rows)`` as the build goes (it was
    once passed on as ``bool(progress)``: a tqdm bar instead of the caller's callback)."""
    from fastimg.index import graph as graph_mod

    monkeypatch.setattr(graph_mod, "_BUILD_CHUNK", 64)  # several steps at this size
    n = 300
    with Index.create(tmp_path / "ix", descriptor="custom", dim=D, metric="l2") as ix:
        ix.add_vectors(_vecs(0, n), [f"r{j}" for j in range(n)])
        ix.remove([7, 250])
        calls = []
        ix.build_ann(M=8, ef_construction=64, progress=lambda done, total: calls.append((done, total)))
        assert len(calls) >= 3 and calls[-1] == (n, n)
        assert all(t == n for _, t in calls) and [d for d, _ in calls] == sorted({d for d, _ in calls})
        assert capsys.readouterr().err == ""  # the callback, not a bar
        assert ix.info()["ann"]["rows"] == n
        _assert_searches_exact(ix)  # the graph built step by step answers like the brute force
        ix.build_ann(M=8, ef_construction=64, progress=True)
        assert "hnsw build" in capsys.readouterr().err
