"""Read-only handles never write, and indexes on read-only directories work.

A handle opened with ``mode="r"`` searches with every metric (the default
metric's prepared rows mapped from the writer's cache, the others prepared in
memory), by vector, path, entry and filter, iterates and reads entries, and
leaves every file of the index directory as it was (listing, sizes, mtimes;
SQLite's own shared-memory files of its write-ahead log excepted).  On a
directory nobody can write to — a read-only bind mount (in a private mount
namespace), else an immutable (``chattr +i``) copy — the same searches give the
NumPy brute-force answers.

The split of rows between the writer's cache and memory is checked against a
brute force too: a cached prefix plus rows added after it, deletions in both,
and a state older than the cache.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from fastimg.index import Index
from fastimg.metrics import metric_names

D = 8
N = 600
SQLITE_SHARED = {"meta.sqlite-shm", "meta.sqlite-wal"}  # SQLite's WAL coordination files (any SQLite reader)


def _listing(path: Path) -> dict:
    return {str(p.relative_to(path)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in sorted(path.rglob("*")) if p.is_file() and p.name not in SQLITE_SHARED}


def _oracle_scores(metric: str, q: np.ndarray, X: np.ndarray) -> np.ndarray:
    """Independent of fastimg: NumPy for the vector metrics, cv2.compareHist for the histogram ones."""
    q64, X64 = q.astype(np.float64), X.astype(np.float64)
    if metric == "cosine":
        return X64 @ q64 / (np.linalg.norm(X64, axis=1) * np.linalg.norm(q64))
    if metric == "l2":
        return np.sqrt(((X64 - q64) ** 2).sum(axis=1))
    if metric == "l1":
        return np.abs(X64 - q64).sum(axis=1)
    import cv2

    method = {"pearson": cv2.HISTCMP_CORREL, "bhattacharyya": cv2.HISTCMP_BHATTACHARYYA,
              "chisqr": cv2.HISTCMP_CHISQR, "chisqr_alt": cv2.HISTCMP_CHISQR_ALT,
              "intersect": cv2.HISTCMP_INTERSECT, "kl_div": cv2.HISTCMP_KL_DIV}[metric]
    return np.array([cv2.compareHist(q.astype(np.float32), x.astype(np.float32), method) for x in X])


def brute(metric, q, X, allowed, k):
    from fastimg.metrics import get_metric

    allowed = np.asarray(sorted(allowed), np.int64)
    s = _oracle_scores(metric, q, X[allowed])
    order = np.lexsort((allowed, -s if get_metric(metric).higher_is_better else s))[:k]
    return allowed[order].tolist(), s[order]


def _data(seed=0):
    rng = np.random.default_rng(seed)
    X = rng.random((N, D)).astype(np.float32) + 0.01
    return X / X.sum(axis=1, keepdims=True)  # histograms: every metric applies


def _build(path: Path, X: np.ndarray) -> set:
    """An index of X (cosine by default) with a graph and deletions; returns the live ids."""
    with Index.create(path, descriptor="custom", dim=D) as ix:
        ix.add_vectors(X, [f"{'a' if i % 2 else 'b'}/{i}" for i in range(N)])
        ix.remove([5, 6, 300])
        ix.build_ann(M=8, ef_construction=50)
    return set(range(N)) - {5, 6, 300}


# what a reader does in the read-only environment; prints JSON results
READER = textwrap.dedent("""
    import json, sys
    import numpy as np
    from fastimg.index import Index
    from fastimg.metrics import metric_names
    path, queries = sys.argv[1], np.array(json.loads(sys.argv[2]), np.float32)
    out = {}
    with Index.open(path) as ix:
        for m in metric_names():
            out[m] = [[h.id for h in ix.search(q, k=6, metric=m)] for q in queries]
        out["ann"] = [h.id for h in ix.search(queries[0], k=6, mode="ann", ef=200)]
        out["similar"] = [h.id for h in ix.similar(7, k=6)]
        out["by_name"] = [h.id for h in ix.search("a/9", k=6)]
        out["where"] = [h.id for h in ix.search(queries[0], k=6, where="a", metric="l2")]
        out["batch"] = ix.search_batch(queries, k=6, metric="pearson")[0].tolist()
        out["count"] = [len(ix), len(list(ix))]
    print(json.dumps(out))
""")


def _check_reader_output(out: dict, X: np.ndarray, live: set, queries: np.ndarray) -> None:
    for m in metric_names():
        for q, got in zip(queries, out[m]):
            assert got == brute(m, q, X, live, 6)[0], m
    assert out["ann"] == brute("cosine", queries[0], X, live, 6)[0]  # a graph of 600 rows at ef=200: exact
    assert out["similar"] == brute("cosine", X[7], X, live - {7}, 6)[0]
    assert out["by_name"] == brute("cosine", X[9], X, live - {9}, 6)[0]
    assert out["where"] == brute("l2", queries[0], X, {i for i in live if i % 2}, 6)[0]
    assert out["batch"] == [brute("pearson", q, X, live, 6)[0] for q in queries]
    assert out["count"] == [len(live)] * 2


def test_a_read_only_handle_writes_nothing(tmp_path):
    X = _data()
    live = _build(tmp_path / "ix", X)
    queries = X[[3, 100, 450]] * 1.1 + 0.001
    before = _listing(tmp_path / "ix")
    # the writer cached its default metric (cache/<name>.g<G>.n<N>.c<CRC-32>.npy)
    assert [f for f in before if re.fullmatch(r"cache/cosine-prepared\.g0\.n600\.c[0-9a-f]{8}\.npy", f)]
    res = subprocess.run([sys.executable, "-c", READER, str(tmp_path / "ix"), json.dumps(queries.tolist())],
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    _check_reader_output(json.loads(res.stdout), X, live, queries)
    with Index.open(tmp_path / "ix") as ix:  # and in this process: info, entries, vectors
        ix.info()
        ix.entry("a/9")
        ix.vectors_of([1, 2])
        ix.duplicates(0.999)
    assert _listing(tmp_path / "ix") == before


def _run_reader_on(path: Path, X, live, queries, prefix: list) -> bool:
    res = subprocess.run([*prefix, sys.executable, "-c", READER, str(path), json.dumps(queries.tolist())],
                         capture_output=True, text=True, timeout=300)
    if res.returncode != 0:
        return False
    _check_reader_output(json.loads(res.stdout), X, live, queries)
    return True


def test_an_index_on_a_read_only_directory(tmp_path):
    X = _data(1)
    src = tmp_path / "ix"
    live = _build(src, X)
    queries = X[[10, 200]] * 0.9 + 0.002
    before = _listing(src)
    # 1. a read-only bind mount, in a private mount namespace (needs CAP_SYS_ADMIN)
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    unshare = shutil.which("unshare")
    if unshare is not None:
        script = (f"mount --bind '{src}' '{mnt}' && mount -o remount,bind,ro '{mnt}' || exit 98; "
                  f"touch '{mnt}/probe' 2>/dev/null && exit 99; exec \"$@\"")
        prefix = [unshare, "-m", "sh", "-c", script, "sh"]
        probe = subprocess.run([*prefix, "true"], capture_output=True, timeout=60)
        if probe.returncode == 0:
            print("read-only bind mount")
            assert _run_reader_on(mnt, X, live, queries, prefix)
            assert _listing(src) == before and not (src / "meta.sqlite-shm").exists()
            return
    # 2. an immutable copy (ext4/xfs, CAP_LINUX_IMMUTABLE)
    copy = tmp_path / "copy"
    shutil.copytree(src, copy)
    chattr = shutil.which("chattr")
    if chattr is not None and subprocess.run([chattr, "-R", "+i", str(copy)], capture_output=True).returncode == 0:
        try:
            print("immutable copy")
            assert not os.access(copy, os.W_OK)
            assert _run_reader_on(copy, X, live, queries, [])
            assert _listing(copy) == _listing(src)
        finally:
            subprocess.run([chattr, "-R", "-i", str(copy)], capture_output=True)
        return
    pytest.skip("neither a read-only bind mount nor chattr +i is possible here (no privileges); "
                "test_a_read_only_handle_writes_nothing checks that no file changes")


# --------------------------------------------------------------------------- cached prefix + rows in memory
@pytest.mark.parametrize("metric", ["pearson", "cosine", "l2", "bhattacharyya"])
def test_cached_prefix_and_rows_in_memory_are_merged(tmp_path, metric):
    X = _data(2)
    with Index.create(tmp_path / "ix", descriptor="custom", dim=D, metric=metric) as ix:
        ix.add_vectors(X[:400], [f"r{i}" for i in range(400)])
        ix.flush()  # rows [0, 400) cached
        with Index.open(tmp_path / "ix") as ro:
            old = ro._views.current()  # a state of 400 rows
            ix.add_vectors(X[400:], [f"r{i}" for i in range(400, N)])  # 200 rows not cached (< CACHE_SAVE_ROWS)
            ix.remove([3, 399, 400, 599])
            live = set(range(N)) - {3, 399, 400, 599}
            for q in (X[0] * 1.2, X[500] + 0.001, X[399]):
                got = ro.search(q, k=12, metric=metric, exclude_self=False)
                assert [h.id for h in got] == brute(metric, q, X, live, 12)[0]
            ix.flush()  # now rows [0, 600) are cached: the reader maps them
            assert any(".n600." in c for c in ix.info()["caches"])
            q = X[123] + 0.002
            assert [h.id for h in ro.search(q, k=12, metric=metric)] == brute(metric, q, X, live, 12)[0]
            # a thread still holding the 400-row state gets the first 400 rows of the larger cache
            from fastimg.metrics import get_metric

            ids, _ = ro._search.run(old, None, q[None, :], 12, get_metric(metric), "exact", None, None, [None],
                                    [False], None)
            assert ids[0].tolist() == brute(metric, q, X, set(range(400)), 12)[0]
