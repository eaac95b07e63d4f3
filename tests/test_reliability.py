"""Crash windows, ``fastimg check`` and the reliability campaign at a small size (issue 15).

* Crash windows, deterministically: a writer process dies (``os._exit``: no
  cleanup, as SIGKILL) exactly between two steps of a whitening fit, a graph
  save, a graph build, a compaction and its graph rebuild; the index must open
  and answer as before the interrupted step (or after it), ``check`` must find
  no problem, and the next writer must go on.
* ``check``: damage made by hand (a flipped cache bit, a corrupt graph file, a
  deleted whitening file, a truncated vector file, a non-finite value, a wrong
  ``has_negative``, a damaged database) is found, ``--repair`` fixes what it can
  without touching committed rows, the CLI's exit status and JSON say so.
* The campaign of tests/reliability/campaign.py with a few kills, a few seconds
  of readers + writer, and the full disk (a tmpfs: root only).

Oracles: NumPy brute force over vectors the test made (never read back through
fastimg), ``describe`` of files, the files' bytes.
"""
from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from fastimg.index import Index

HERE = Path(__file__).resolve().parent
BIN = Path(sys.executable).with_name("fastimg")
_spec = importlib.util.spec_from_file_location("campaign", HERE / "reliability" / "campaign.py")
campaign = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(campaign)  # type: ignore[union-attr]

D = 12


def _x(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((5, D)) * 3
    return (centres[rng.integers(0, 5, n)] + rng.standard_normal((n, D))).astype(np.float32)


def _index(path: Path, n: int = 120, *, graph: bool = False, whiten: bool = False) -> np.ndarray:
    X = _x(n)
    with Index.create(path, descriptor="custom", dim=D, metric="cosine") as ix:
        ix.add_vectors(X, [f"r{i}" for i in range(n)])
        if whiten:
            ix.fit_whitening(dim=6)
        if graph:
            ix.build_ann(M=8, ef_construction=40)
    return X


def _die_in(tmp_path: Path, index: Path, patch: str, action: str) -> subprocess.CompletedProcess:
    """Run ``action`` on a writer of ``index`` in a child process where ``patch``
    (code) makes it die at the chosen step (``die()``: ``os._exit(137)``)."""
    code = f"""
import os, sys
import numpy as np
from fastimg.index import Index
def die():
    sys.stdout.write("died\\n"); sys.stdout.flush(); os._exit(137)
{patch}
ix = Index.open({str(index)!r}, mode="a")
{action}
print("finished")
"""
    script = tmp_path / "child.py"
    script.write_text(code)
    return subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300)


def _cosine_topk(Q: np.ndarray, X: np.ndarray, live: np.ndarray, k: int, white=None) -> list[list[int]]:
    A = white(X) if white is not None else X.astype(np.float64)
    B = white(Q) if white is not None else Q.astype(np.float64)
    A = A / np.linalg.norm(A, axis=1, keepdims=True)
    B = B / np.linalg.norm(B, axis=1, keepdims=True)
    s = B @ A[live].T
    return [live[np.lexsort((live, -s[r]))[:k]].tolist() for r in range(len(Q))]


def _check(index: Path, *extra: str) -> tuple[int, dict]:
    res = subprocess.run([str(BIN), "check", "-i", str(index), "--json", *extra], capture_output=True, text=True,
                         timeout=300)
    return res.returncode, json.loads(res.stdout)


def _notes(doc: dict) -> list[str]:
    return [f["what"] for f in doc["findings"] if not f["problem"]]


# --------------------------------------------------------------------------- crash windows
def test_killed_between_writing_a_whitening_and_recording_it(tmp_path):
    from fastimg.projection import PCAWhitening

    idx = tmp_path / "ix"
    X = _index(idx, whiten=True)
    Q = _x(4, seed=9)
    with Index.open(idx) as ro:
        before_file = ro.whitening_path
        before = ro.search_batch(Q, k=5)[0]
    res = _die_in(tmp_path, idx, """
from fastimg.index.store import Store
real = Store.set_meta
def set_meta(self, key, value):
    if key == "whitening":
        die()
    return real(self, key, value)
Store.set_meta = set_meta
""", "ix.fit_whitening(dim=4)")
    assert res.stdout.strip() == "died", res.stderr
    with Index.open(idx) as ro:  # the old fit, whole; the new file is an orphan
        assert ro.whitening_path == before_file and ro.info()["whitening"]["dim"] == 6
        ids = ro.search_batch(Q, k=5)[0]
        white = PCAWhitening.load(before_file).transform
        assert ids.tolist() == before.tolist() == _cosine_topk(Q, X, np.arange(len(X)), 5, white)
    code, doc = _check(idx)
    assert code == 0 and doc["ok"]
    assert any("no record names" in n for n in _notes(doc))
    with Index.open(idx, mode="a") as ix:  # the next fit goes on and removes the orphan
        fit = ix.fit_whitening(dim=4)
        assert sorted(p.name for p in idx.glob("whitening*")) == [fit["file"]] == [f"whitening.{fit['fit_id'][:16]}.npz"]


def test_killed_between_recording_a_whitening_and_removing_the_old_file(tmp_path):
    idx = tmp_path / "ix"
    _index(idx, whiten=True)
    res = _die_in(tmp_path, idx, """
from fastimg.index.whitening import Whitening
Whitening._remove_files = lambda self, keep: die()
""", "ix.fit_whitening(dim=4)")
    assert res.stdout.strip() == "died", res.stderr
    with Index.open(idx) as ro:  # the new fit is in force
        assert ro.info()["whitening"]["dim"] == 4
        assert ro.search_batch(_x(2, seed=3), k=3)[0].shape == (2, 3)
    code, doc = _check(idx, "--repair")
    assert code == 0 and [f["repaired"] for f in doc["findings"] if "no record names" in f["what"]] == [True]
    assert len(list(idx.glob("whitening*"))) == 1


def test_killed_between_the_two_renames_of_a_graph_save(tmp_path):
    idx = tmp_path / "ix"
    X = _index(idx, graph=True)
    new = _x(30, seed=5) + 2
    np.save(tmp_path / "new.npy", new)
    res = _die_in(tmp_path, idx, """
import fastimg.ann as ann
real = os.replace
calls = []
def replace(a, b):
    calls.append(b)
    if str(b).endswith("hnsw.json"):   # the graph file is in place, its metadata not yet
        die()
    return real(a, b)
ann.os.replace = replace
""", f"ix.add_vectors(np.load({str(tmp_path / 'new.npy')!r}), [f'n{{i}}' for i in range(30)]); ix.flush()")
    assert res.stdout.strip() == "died", res.stderr
    X2 = np.vstack([X, new])
    with Index.open(idx) as ro:  # the previous save loads; the 30 rows after it are scanned exactly
        info = ro.info()["ann"]
        assert (info["saved_rows"], info["pending_rows"], info["error"]) == (120, 30, None)
        ids = ro.search_batch(new[:5], k=4, mode="ann", ef=500, exclude_self=False)[0]
        assert ids.tolist() == _cosine_topk(new[:5], X2, np.arange(150), 4)
    code, doc = _check(idx)
    assert code == 0 and any("does not name" in n for n in _notes(doc))
    with Index.open(idx, mode="a") as ix:  # the next writer catches the graph up and saves it
        ix.add_vectors(_x(1, seed=6), ["last"])
    code, doc = _check(idx)
    assert code == 0 and not _notes(doc)


def test_killed_between_a_graph_build_and_its_record(tmp_path):
    idx = tmp_path / "ix"
    _index(idx, graph=True)
    with Index.open(idx) as ro:
        build = ro.info()["ann"]
    res = _die_in(tmp_path, idx, """
from fastimg.index.store import Store
real = Store.set_meta
def set_meta(self, key, value):
    if key == "ann" and value and value.get("M") == 12:
        die()
    return real(self, key, value)
Store.set_meta = set_meta
""", "ix.build_ann(M=12, ef_construction=30)")
    assert res.stdout.strip() == "died", res.stderr
    with Index.open(idx) as ro:
        assert ro.info()["ann"]["M"] == build["M"] == 8 and ro.info()["ann"]["error"] is None
        ro.search(_x(1, seed=2)[0], k=3, mode="ann")
    code, doc = _check(idx, "--repair")
    assert code == 0 and [f["repaired"] for f in doc["findings"] if "no record names" in f["what"]] == [True]
    assert len(list((idx / "ann").iterdir())) == 1


def test_killed_between_a_compaction_and_the_graph_rebuild(tmp_path):
    idx = tmp_path / "ix"
    X = _index(idx, graph=True)
    with Index.open(idx, mode="a") as ix:
        ix.remove([f"r{i}" for i in range(0, 120, 3)])
    res = _die_in(tmp_path, idx, "Index.build_ann = lambda self, *a, **k: die()", "ix.compact()")
    assert res.stdout.strip() == "died", res.stderr
    keep = np.array([i for i in range(120) if i % 3])
    Q = _x(4, seed=11)
    with Index.open(idx) as ro:  # compacted; the graph is for the old generation: exact search, right
        assert ro.info()["generation"] == 1 and len(ro) == 80
        ids = ro.search_batch(Q, k=5, exclude_self=False)[0]
        assert ids.tolist() == _cosine_topk(Q, X[keep], np.arange(80), 5)
        with pytest.raises(ValueError, match="generation 0"):
            ro.search(Q[0], k=5, mode="ann")
    code, doc = _check(idx)
    assert code == 0 and any("built for generation 0" in n for n in _notes(doc))
    with Index.open(idx, mode="a") as ix:  # the next change rebuilds it with its parameters
        ix.add_vectors(_x(1, seed=12), ["new"])
        info = ix.info()["ann"]
        assert (info["rows"], info["M"], info["error"], info["pending_rows"]) == (81, 8, None, 0)
        ids = ix.search_batch(Q, k=5, mode="ann", ef=500, exclude_self=False)[0]
        assert ids.tolist() == _cosine_topk(Q, np.vstack([X[keep], _x(1, seed=12)]), np.arange(81), 5)


# --------------------------------------------------------------------------- check
def test_check_finds_and_repairs_damaged_caches_graph_and_whitening(tmp_path):
    idx = tmp_path / "ix"
    X = _index(idx, graph=True, whiten=True)
    Q = _x(3, seed=4)
    with Index.open(idx, mode="a") as ix:
        before = ix.search_batch(Q, k=5)[0]  # writes the whitened cache
        ix.flush()
        wpath = ix.whitening_path
    code, doc = _check(idx)
    assert code == 0 and doc["ok"] and doc["rows"] == 120 and doc["caches"] >= 1 and doc["findings"] == []
    # damage: a bit of a cache, the graph file, the whitening file
    (cache,) = [p for p in (idx / "cache").iterdir() if re.match(r"whitened-[0-9a-f]+\.g", p.name)]
    raw = bytearray(cache.read_bytes())
    raw[-5] ^= 0x01
    cache.write_bytes(bytes(raw))
    from fastimg.ann import graph_file

    (build,) = (idx / "ann").iterdir()
    g = graph_file(build)
    g.write_bytes(g.read_bytes()[:-64])
    wpath.unlink()
    code, doc = _check(idx)
    assert code == 1 and not doc["ok"]
    problems = {Path(f["file"]).name: f["what"] for f in doc["findings"] if f["problem"]}
    assert "checksum mismatch" in problems[cache.name]
    assert "unusable" in problems[build.name] and "does not match" in problems[build.name]
    assert "whitening file missing" in problems[wpath.name]
    # the text form: one line per finding, then the summary
    text = subprocess.run([str(BIN), "check", "-i", str(idx)], capture_output=True, text=True)
    assert text.returncode == 1
    lines = text.stdout.splitlines()
    assert sum(ln.startswith("problem: ") for ln in lines) == 3 and lines[-1].startswith("3 problems: ")
    code, doc = _check(idx, "--repair")
    assert code == 0 and doc["ok"] and all(f["repaired"] for f in doc["findings"] if f["problem"])
    code, doc = _check(idx)
    assert code == 0 and doc["findings"] == []
    with Index.open(idx) as ro:  # committed rows untouched; a whitening of the same rows and parameters
        np.testing.assert_array_equal(np.asarray(ro.vectors), X)
        assert ro.info()["whitening"]["dim"] == 6
        assert ro.search_batch(Q, k=5)[0].tolist() == before.tolist()
        assert ro.search_batch(Q, k=5, mode="ann", ef=500)[0].tolist() == before.tolist()


def test_check_reports_what_it_cannot_repair(tmp_path):
    idx = tmp_path / "ix"
    _index(idx, n=40)
    v = idx / "vectors.0.f32"
    raw = bytearray(v.read_bytes())
    raw[4 * (D * 7 + 3):4 * (D * 7 + 4)] = np.float32(np.nan).tobytes()  # row 7
    v.write_bytes(bytes(raw))
    code, doc = _check(idx, "--repair")
    assert code == 1 and [f["what"] for f in doc["findings"] if f["problem"]] == \
        ["non-finite values in committed rows (ids [7])"]
    assert v.read_bytes() == bytes(raw)  # committed rows are never touched
    v.write_bytes(bytes(raw[:4 * D * 30]))  # truncated below the committed rows
    code, doc = _check(idx)
    assert code == 1 and "cannot be opened" in doc["findings"][0]["what"] and "truncated" in doc["findings"][0]["what"]
    res = subprocess.run([str(BIN), "check", "-i", str(tmp_path / "none")], capture_output=True, text=True)
    assert res.returncode == 1 and res.stderr.startswith("fastimg: error: ") and "no fastimg index" in res.stderr


def test_check_repairs_a_wrong_has_negative_and_finds_a_damaged_database(tmp_path):
    import sqlite3

    idx = tmp_path / "ix"
    _index(idx, n=40)
    con = sqlite3.connect(idx / "meta.sqlite")
    con.execute("UPDATE meta SET value = 'false' WHERE key = 'has_negative'")
    con.commit()
    con.close()
    code, doc = _check(idx)
    assert code == 1 and "has_negative is false" in doc["findings"][0]["what"]
    code, doc = _check(idx, "--repair")
    assert code == 0 and doc["findings"][0]["repaired"]
    # a damaged page of the database: integrity_check (or the open) says so
    with Index.open(idx, mode="a") as ix:
        ix.add_vectors(_x(2000, seed=3), [f"m{i}" for i in range(2000)])
    db = idx / "meta.sqlite"
    raw = bytearray(db.read_bytes())
    page = 4096
    assert len(raw) > 8 * page
    raw[4 * page:5 * page] = b"\xa5" * page  # a b-tree page overwritten
    db.write_bytes(bytes(raw))
    code, doc = _check(idx)
    assert code == 1 and any("meta.sqlite" in f["file"] or "meta.sqlite" in f["what"]
                             for f in doc["findings"] if f["problem"])


# --------------------------------------------------------------------------- relocate
def test_relocate_after_the_photos_moved(tmp_path):
    from fastimg.features.registry import describe

    photos = tmp_path / "photos"
    files = campaign.make_pool(photos / "sub", 6) + campaign.make_pool(photos, 2, seed=1)
    other = tmp_path / "other"
    extra = campaign.make_pool(other, 1, seed=2)
    idx = tmp_path / "idx" / "photos.fastimg"  # the default root: the index's parent, absolute
    idx.parent.mkdir()
    with Index.create(idx) as ix:
        ix.add([photos, extra[0]])
        before = {Path(p).relative_to(tmp_path).as_posix(): i for i, p in zip(ix.live_ids(), ix.paths(ix.live_ids()))}
    moved = tmp_path / "moved" / "pics"
    moved.parent.mkdir()
    os.rename(photos, moved)
    res = subprocess.run([str(BIN), "info", "-i", str(idx)], capture_output=True, text=True)
    assert res.returncode == 0
    (warning,) = res.stderr.splitlines()
    assert warning.startswith("fastimg: warning: 8 of 9 sampled indexed files do not exist (e.g. ") and \
        "fastimg relocate OLD NEW" in warning
    res = subprocess.run([str(BIN), "query", "-i", str(idx), "-k", "3", str(moved / "sub" / "img0000.png")],
                         capture_output=True, text=True)
    assert res.returncode == 0 and "result files do not exist" in res.stderr
    res = subprocess.run([str(BIN), "relocate", "-i", str(idx), str(photos), str(moved)], capture_output=True,
                         text=True)
    assert res.returncode == 0 and res.stderr == "" and res.stdout.startswith("relocated 8 files from ")
    with Index.open(idx) as ro:
        after = {p: i for i, p in zip(ro.live_ids(), ro.paths(ro.live_ids()))}
        assert all(os.path.exists(p) for p in after)
        # same rows, new paths (the one outside the moved folder unchanged)
        assert {Path(p).relative_to(tmp_path).as_posix().replace("moved/pics", "photos"): i
                for p, i in after.items()} == before
        q = moved / "sub" / "img0003.png"
        hits = ro.search(q, k=2)
        assert before["photos/sub/img0003.png"] not in [h.id for h in hits]  # found as itself: excluded
        np.testing.assert_allclose(ro.vectors[after[str(q)]], describe(str(q), "hsv72"), rtol=1e-6)
        assert ro.missing_files()["missing"] == 0
    res = subprocess.run([str(BIN), "query", "-i", str(idx), "-k", "3", str(q)], capture_output=True, text=True)
    assert res.returncode == 0 and res.stderr == ""
    # the next incremental run finds them unchanged
    with Index.open(idx, mode="a") as ix:
        rep = ix.add(moved)
        assert (rep.unchanged, rep.added, rep.moved, rep.removed) == (8, 0, 0, 0)


def test_relocate_refuses_collisions_and_keeps_relative_roots_relative(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    campaign.make_pool(a, 3)
    campaign.make_pool(b, 3)
    idx = tmp_path / "ix"
    with Index.create(idx, root=a) as ix:
        ix.add([a, b])
        with pytest.raises(ValueError, match="nothing was changed"):
            ix.relocate(a, b)  # a/img0000.png -> b/img0000.png, which is indexed already
        assert sorted(ix.paths(ix.live_ids())) == sorted([str(a / f"img000{i}.png") for i in range(3)] +
                                                          [str(b / f"img000{i}.png") for i in range(3)])
        assert ix.relocate(a, tmp_path / "c") == 3  # the root lies under a: it moves, stays relative
        assert ix.root == tmp_path / "c"
    import sqlite3

    con = sqlite3.connect(idx / "meta.sqlite")
    root = json.loads(dict(con.execute("SELECT key, value FROM meta"))["root"])
    con.close()
    assert root == "../c"


# --------------------------------------------------------------------------- the campaign, small
def test_kill_campaign_small(tmp_path):
    stats = campaign.kill_campaign(tmp_path, kills=5, seed=3, log=lambda line: None)
    assert stats["kills"] == 5 and all(n == 1 for n in stats["kills_by_op"].values()), stats
    assert (stats["lost_rows"], stats["extra_rows"], stats["bad_rows"], stats["crashes"], stats["check_failures"]) \
        == (0, 0, 0, 0, 0), stats["errors"]
    assert stats["errors"] == [] and stats["searches_checked"] >= 3 * stats["checks"]


def test_stress_readers_writer_and_compaction_small(tmp_path):
    out = campaign.stress(tmp_path, seconds=4, readers=4, seed=1)
    assert (out["wrong"], out["crashes"], out["errors"], out["check_exit"]) == (0, 0, [], 0), out
    assert out["checked"] >= 20 and out["writer"]["compactions"] >= 1


def test_full_disk_leaves_the_last_committed_state(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root (make reliability runs it as root)")
    out = campaign.full_disk(tmp_path)
    if "skipped" in out:
        pytest.skip(out["skipped"])
    assert out["errors"] == [], out
    assert out["add_errno"] == out["compact_errno"] == out["sqlite_errno"] == "ENOSPC"
    assert "the index keeps its" in out["add_error"] and "the index keeps its" in out["compact_error"]
    assert out["check_exit"] == out["check_exit_add"] == 0


def test_cli_relative_to_moves_with_the_collection(tmp_path):
    photos = tmp_path / "photos"
    campaign.make_pool(photos, 4)
    idx = photos / ".fastimg"
    res = subprocess.run([str(BIN), "index", "-i", str(idx), str(photos), "--relative-to", str(photos), "-q"],
                         capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    moved = tmp_path / "elsewhere" / "pics"
    moved.parent.mkdir()
    os.rename(photos, moved)  # the folder and its index together
    res = subprocess.run([str(BIN), "query", "-i", str(moved / ".fastimg"), "-k", "3", "--json",
                          str(moved / "img0001.png")], capture_output=True, text=True)
    assert res.returncode == 0 and res.stderr == "", res.stderr
    assert {Path(r["path"]).parent for r in json.loads(res.stdout)["results"]} == {moved}
    # --relative-to applies when the index is created: another root is refused, the same is fine
    res = subprocess.run([str(BIN), "index", "-i", str(moved / ".fastimg"), str(moved), "--relative-to",
                          str(tmp_path)], capture_output=True, text=True)
    assert res.returncode == 1 and "resolves paths against" in res.stderr and "relocate" in res.stderr
    res = subprocess.run([str(BIN), "index", "-i", str(moved / ".fastimg"), str(moved), "--relative-to",
                          str(moved), "--json"], capture_output=True, text=True)
    assert res.returncode == 0 and json.loads(res.stdout)["unchanged"] == 4
