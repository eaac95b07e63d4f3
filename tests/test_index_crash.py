"""Crash safety and concurrent readers, with real processes killed by SIGKILL.

Oracles: the vectors a writer appends are a deterministic function of their
name (``_vec``), and image rows must equal the descriptor of their file re-read
from disk; search results are checked against numpy / cv2 brute force over
exactly the rows the index reports as committed and live."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from _photos import photo_tree
from fastimg.index import Index

D = 16
pytestmark = pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs POSIX signals")


def _vec(j: int) -> np.ndarray:
    return np.random.default_rng(j).random(D).astype(np.float32)


_WRITER = r"""
import sys, numpy as np
from fastimg.index import Index
path, batch = sys.argv[1], int(sys.argv[2])
def vec(j):
    return np.random.default_rng(j).random(%d).astype(np.float32)
try:
    ix = Index.open(path, mode="a")
except Exception:
    ix = Index.create(path, descriptor="custom", dim=%d, metric="l2")
j = ix.info()["rows"]
if j >= 50 and (j // 50) * 50 - 7 not in set(ix.deleted_ids().tolist()):
    ix.remove([(j // 50) * 50 - 7])   # the removal a kill interrupted
print("start", j, flush=True)
while True:
    ix.add_vectors(np.stack([vec(j + t) for t in range(batch)]), [f"r{j + t}" for t in range(batch)])
    j += batch
    if j // 50 > (j - batch) // 50:
        ix.remove([(j // 50) * 50 - 7])   # some deletions too: one per multiple of 50 passed
    print(j, flush=True)
""" % (D, D)


def _spawn(tmp_path: Path, code: str, *args: str) -> subprocess.Popen:
    script = tmp_path / "child.py"
    script.write_text(code)
    return subprocess.Popen([sys.executable, str(script), *map(str, args)], stdout=subprocess.PIPE, text=True)


def _verify_vectors_index(path: Path) -> int:
    """Open after a crash; check every committed row and a search; return the row count."""
    with Index.open(path) as ix:
        info = ix.info()
        n = info["rows"]
        names = ix.paths(range(n))
        assert names == [f"r{j}" for j in range(n)]  # committed in order, no gap, no duplicate
        V = np.asarray(ix.vectors)
        assert V.shape == (n, D)
        np.testing.assert_array_equal(V, np.stack([_vec(j) for j in range(n)]) if n else V)
        live = ix.live_ids()
        deleted = ix.deleted_ids()
        # the writer removes row m*50-7 right after committing the batch that reaches row
        # m*50 (or, after a kill, on resuming), before its next batch: so it is done
        # whenever a later batch (at most 5 rows) is committed, and nothing else is removed
        assert set(deleted.tolist()) <= {m - 7 for m in range(50, n + 1, 50)}
        assert {m - 7 for m in range(50, n - 5 + 1, 50)} <= set(deleted.tolist())
        if live.size:
            q = np.full(D, 0.5, np.float32)
            hits = ix.search(q, k=5)
            d = np.sqrt(((V[live].astype(np.float64) - 0.5) ** 2).sum(axis=1))
            order = np.lexsort((live, d))[:5]
            assert [h.id for h in hits] == live[order].tolist()
            np.testing.assert_allclose([h.score for h in hits], d[order], rtol=1e-5)
        return n


def test_sigkill_during_add_vectors_loses_at_most_the_batch_in_flight(tmp_path):
    path = tmp_path / "ix"
    rng = np.random.default_rng(0)
    last_reported = 0
    for round_ in range(4):
        proc = _spawn(tmp_path, _WRITER, path, 5)
        try:
            start = int(proc.stdout.readline().split()[1])
            assert start >= last_reported  # nothing the writer reported committed was lost
            seen = start
            for _ in range(int(rng.integers(1, 6))):  # let it commit a few batches
                seen = int(proc.stdout.readline())
            time.sleep(float(rng.uniform(0, 0.05)))  # then kill at an arbitrary moment
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
            rest = proc.stdout.read().split()
            last_reported = int(rest[-1]) if rest else seen
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        n = _verify_vectors_index(path)
        assert last_reported <= n <= last_reported + 5, (round_, last_reported, n)
    # the writer lock died with the process: a new writer opens, truncates, resumes
    with Index.open(path, mode="a") as ix:
        n = ix.info()["rows"]
        assert (path / "vectors.0.f32").stat().st_size == n * D * 4
        ix.add_vectors(_vec(n), [f"r{n}"])
    assert _verify_vectors_index(path) == n + 1


def test_readers_see_a_consistent_committed_state_while_a_writer_appends(tmp_path):
    path = tmp_path / "ix"
    with Index.create(path, descriptor="custom", dim=D, metric="l2") as ix:
        ix.add_vectors(np.stack([_vec(j) for j in range(5)]), [f"r{j}" for j in range(5)])
    proc = _spawn(tmp_path, _WRITER, path, 3)
    try:
        proc.stdout.readline()
        checked = set()
        with Index.open(path) as ro:
            deadline = time.monotonic() + 30
            while len(checked) < 5 and time.monotonic() < deadline:
                q = _vec(10_000 + len(checked))
                ids, scores = ro.search_batch(q[None, :], k=4, exclude_self=False)
                n = ro.info()["rows"]
                V = np.asarray(ro.vectors)
                valid = ids[0][ids[0] >= 0]
                # every hit is a committed row holding exactly the vector its name says
                for i, name in zip(valid, ro.paths(valid)):
                    assert i < n
                    np.testing.assert_array_equal(V[i], _vec(int(name[1:])))
                np.testing.assert_allclose(scores[0][: valid.size],
                                           np.sqrt(((V[valid].astype(np.float64) - q) ** 2).sum(axis=1)), rtol=1e-5)
                checked.add(n)
                time.sleep(0.01)
        assert len(checked) >= 2  # the reader did see the index grow
    finally:
        proc.kill()
        proc.wait()
    _verify_vectors_index(path)


_IMAGE_WRITER = r"""
import sys
from fastimg.index import Index
root, path = sys.argv[1], sys.argv[2]
try:
    ix = Index.open(path, mode="a")
except Exception:
    ix = Index.create(path)
print("ready", flush=True)
ix.add(root, batch_size=2, workers=1)
print("done", flush=True)
"""


def test_sigkill_during_add_of_images_then_resume(tmp_path):
    import cv2

    from fastimg.features.registry import describe

    root = tmp_path / "photos"  # Corel-1k files, or generated ones without ../shared
    files = photo_tree(root, classes=("beaches", "bus", "dinosaurs", "elephants"), per_class=8)
    assert len(files) == 32
    path = root / ".fastimg"
    proc = _spawn(tmp_path, _IMAGE_WRITER, root, path)
    try:
        assert proc.stdout.readline().strip() == "ready"
        deadline = time.monotonic() + 60
        n = 0
        while time.monotonic() < deadline:  # kill once some batches are committed
            with Index.open(path) as ro:
                n = len(ro)
            if n >= 4:
                break
            time.sleep(0.005)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert n >= 4

    def check() -> int:
        with Index.open(path) as ix:
            live = ix.live_ids()
            paths = ix.paths(live)
            assert len(set(paths)) == len(paths)  # each file at most once
            X = np.stack([describe(p, "hsv72") for p in paths])  # re-read from disk
            np.testing.assert_allclose(np.asarray(ix.vectors)[live], X, rtol=1e-6)
            hits = ix.search(paths[0], k=3)
            exp = sorted((cv2.compareHist(X[0], X[j], cv2.HISTCMP_BHATTACHARYYA), live[j])
                         for j in range(1, len(live)))[:3]
            assert [h.id for h in hits] == [i for _, i in exp]
            return len(live)

    n_after_crash = check()
    assert n_after_crash >= n and n_after_crash < len(files)
    with Index.open(path, mode="a") as ix:  # resume
        rep = ix.add(root)
        assert rep.unchanged == n_after_crash and rep.added == len(files) - n_after_crash
        assert rep.skipped == {}
    assert check() == len(files)
