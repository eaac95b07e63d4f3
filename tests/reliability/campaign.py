"""The index's reliability campaign (issue 15): kills, concurrent readers, a full disk.

Run by ``tests/test_reliability.py`` at a small size in ``make test`` and at full
size by ``make reliability`` (``python tests/reliability/campaign.py --help``);
the figures of the last full run are in docs/reliability.md.

* **Kills** (:func:`kill_campaign`): a writer process runs one of ``add`` (of
  image files, in batches of 3), ``remove``, ``compact``, ``build_ann``,
  ``fit_whitening`` on an ``hsv72`` index (metric cosine, so that whitening
  applies) and is sent SIGKILL at a random moment while it runs (uniform over
  the operation's measured duration).  After every kill: ``fastimg check``
  (a separate process) must find no problem, and an oracle checks the index:
  the live files are between the state before the operation and the state after
  it (an ``add`` may have committed some of its batches, a ``remove`` all or
  nothing, the others change no live row), every live row equals ``describe`` of
  its file, and exact searches (and graph searches, when the graph serves) give
  the top-k of a NumPy brute force (cosine, after the stored whitening when one
  is fitted).  A committed row that disappears is a *lost row*.
* **Stress** (:func:`stress`): ``readers`` processes search a ``custom`` index
  (dim 16, l2) while a writer process appends and removes rows and compacts it
  (at least once), for ``seconds``.  A reader reads the committed state
  (version and live names) with its own ``sqlite3`` connection before and after
  each search, and checks **every** result against a brute force over the
  vectors the names stand for (``vec(j)`` of name ``v<j>``: never read back from
  the index): exactly the top-k of that state when no commit happened in
  between, else a top-k of some state in between (see :func:`_reader`).
* **Full disk** (:func:`full_disk`): an index on a 2 MB tmpfs (``mount -t tmpfs``,
  root only); rows are added until the disk is full, then a compaction is
  attempted: each must fail with :class:`fastimg.errors.IndexWriteError`
  (``ENOSPC``, a clear message) and leave the index opening with its last
  committed state.
"""
from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np

HERE = Path(__file__).resolve()
BIN = Path(sys.executable).with_name("fastimg")
OPS = ("add", "remove", "compact", "build_ann", "fit_whitening")
DIM = 16  # stress index


# --------------------------------------------------------------------------- images
def make_pool(directory: Path, n: int, seed: int = 0) -> list[Path]:
    """``n`` small PNGs of random colour blocks (deterministic)."""
    import cv2

    directory.mkdir(parents=True, exist_ok=True)
    out = []
    for i in range(n):
        rng = np.random.default_rng(seed * 100_000 + i)
        img = np.empty((32, 32, 3), np.uint8)
        for by in range(2):
            for bx in range(2):
                img[by * 16:(by + 1) * 16, bx * 16:(bx + 1) * 16] = rng.integers(0, 256, 3)
        img = np.clip(img.astype(np.int16) + rng.integers(-12, 13, img.shape), 0, 255).astype(np.uint8)
        p = directory / f"img{i:04d}.png"
        cv2.imwrite(str(p), img)
        out.append(p)
    return out


# --------------------------------------------------------------------------- child processes
def _child(argv: list[str]) -> None:
    """``campaign.py child OP INDEX [ARGS...]``: one writer operation, announced on stdout."""
    op, path = argv[0], argv[1]
    from fastimg.index import Index

    ix = Index.open(path, mode="a")
    # warm up (imports, the descriptor kernels' compilation): the kill is meant for the operation
    if op == "add":
        from fastimg.features.registry import describe_many

        describe_many([np.zeros((8, 8, 3), np.uint8)] * 2, ix.descriptor, workers=1)
    elif op == "build_ann":
        import hnswlib  # noqa: F401
    print("begin", flush=True)
    t0 = time.perf_counter()
    if op == "add":
        ix.add(argv[2], batch_size=3, workers=1)
    elif op == "remove":
        ix.remove(json.loads(argv[2]))
    elif op == "compact":
        ix.compact()
    elif op == "build_ann":
        ix.build_ann(M=8, ef_construction=40, threads=1)
    elif op == "fit_whitening":
        ix.fit_whitening(dim=12)
    else:  # pragma: no cover
        raise SystemExit(f"unknown op {op}")
    ix.close()
    print(f"end {time.perf_counter() - t0:.4f}", flush=True)


@functools.lru_cache(maxsize=None)
def _vec(j: int) -> np.ndarray:
    """The vector of name ``v<j>`` (a function of ``j`` alone: the readers' oracle)."""
    v = np.random.default_rng(10_000 + j).random(DIM).astype(np.float32)
    v.flags.writeable = False
    return v


def _writer(argv: list[str]) -> None:
    """``campaign.py writer INDEX SECONDS``: append 5 rows, remove one, now and then
    (at least once, at mid-time) compact, until the time is up."""
    path, seconds = argv[0], float(argv[1])
    from fastimg.index import Index

    ix = Index.open(path, mode="a")
    j = ix.info()["rows"]
    t_end = time.monotonic() + seconds
    compacted, batches = 0, 0
    mid = time.monotonic() + seconds / 2
    while time.monotonic() < t_end:
        ix.add_vectors(np.stack([_vec(j + t) for t in range(5)]), [f"v{j + t}" for t in range(5)])
        j += 5
        batches += 1
        ix.remove([f"v{j - 3}"])
        if (time.monotonic() > mid and compacted == 0) or batches % 40 == 0:
            ix.compact()
            compacted += 1
        time.sleep(0.01)
    ix.close()
    print(json.dumps({"batches": batches, "compactions": compacted, "rows_added": batches * 5}), flush=True)


def _state(con: sqlite3.Connection) -> tuple[int, list[str]]:
    """(version, live names) in one read transaction of the reader's own connection."""
    con.execute("BEGIN")
    try:
        version = int(con.execute("SELECT value FROM meta WHERE key = 'version'").fetchone()[0])
        names = [os.fsdecode(r[0]) for r in con.execute("SELECT path FROM images WHERE deleted = 0")]
    finally:
        con.execute("COMMIT")
    return version, names


def _reader(argv: list[str]) -> None:
    """``campaign.py reader INDEX SECONDS SEED``: search, and check every result.

    The live names are read (own ``sqlite3`` connection) before and after each
    search.  No commit in between: the hits must be exactly the brute-force top 5
    of that state.  Commits in between (the writer only appends names of growing
    numbers and removes names; compaction renumbers ids, not names): the hits must
    be the top 5 of *some* state in between -- every hit could be live then (live
    before or after, or added in between) with its exact distance, and no name live
    all along is closer than the 5th hit."""
    path, seconds, seed = argv[0], float(argv[1]), int(argv[2])
    from fastimg.errors import FastimgError
    from fastimg.index import Index

    rng = np.random.default_rng(seed)
    con = sqlite3.connect(f"file:{Path(path, 'meta.sqlite')}?mode=ro", uri=True, isolation_level=None)
    ix = Index.open(path)
    exact = bounded = wrong = by_name = 0
    first_error = None

    def dist(names: Any, q: np.ndarray) -> np.ndarray:
        X = np.stack([_vec(int(n[1:])) for n in names]).astype(np.float64)
        return np.sqrt(((X - q.astype(np.float64)) ** 2).sum(axis=1))

    t_end = time.monotonic() + seconds
    while time.monotonic() < t_end:
        v0, before = _state(con)
        if not before:
            continue
        error = None
        if rng.random() < 0.2:  # a query by an indexed name: its stored vector, itself left out
            name = before[int(rng.integers(len(before)))]
            q = _vec(int(name[1:]))
            try:
                hits = ix.search(name, k=5)
            except FastimgError as exc:  # acceptable only if it was removed meanwhile
                hits, error = None, f"{name}: {exc}"
            by_name += 1
        else:
            name = None
            q = rng.random(DIM).astype(np.float32)
            hits = ix.search(q, k=5, mode="exact", exclude_self=False)
        v1, after = _state(con)
        ok = True
        if hits is None:
            ok = bool(v0 != v1 and name not in set(after))
        elif v0 == v1:
            allowed = [n for n in before if n != name]
            d = dist(allowed, q)
            order = np.argsort(d, kind="stable")[:5]
            ok = bool(sorted(h.path for h in hits) == sorted(allowed[i] for i in order)
                      and np.allclose(sorted(h.score for h in hits), d[order], rtol=1e-5, atol=1e-6))
            exact += ok
        else:
            b, a = set(before), set(after)
            top = max(int(n[1:]) for n in before)
            possible = (b | a | {f"v{j}" for j in range(top + 1, max(int(n[1:]) for n in after) + 1)}) - {name}
            always = (b & a) - {name}
            got = [h.path for h in hits]
            scores = np.array([h.score for h in hits], np.float64)
            ok = bool(len(got) == len(set(got)) == 5 and set(got) <= possible and
                      np.allclose(scores, dist(got, q), rtol=1e-5, atol=1e-6) and np.all(np.diff(scores) >= -1e-6))
            if ok:
                rest = sorted(always - set(got))
                ok = not rest or bool(float(dist(rest, q).min()) >= scores[-1] - 1e-5)
            bounded += ok
        if not ok:
            wrong += 1
            if first_error is None:
                first_error = {"versions": [v0, v1], "error": error,
                               "got": None if hits is None else [(h.path, h.score) for h in hits]}
    ix.close()
    print(json.dumps({"checked": exact + bounded, "exact": exact, "bounded": bounded, "wrong": wrong,
                      "by_name": by_name, "first_error": first_error}), flush=True)


def _spawn(*args: Any, stdout: Any = subprocess.PIPE) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(HERE), *map(str, args)], stdout=stdout, stderr=subprocess.PIPE,
                            text=True)


# --------------------------------------------------------------------------- oracle
class Oracle:
    """The expected content of the kill campaign's index."""

    def __init__(self, vectors: dict[str, np.ndarray]):
        self.vectors = vectors  # path -> describe(file, "hsv72")
        self.live: set[str] = set()

    def verify(self, index: Path, low: set[str], high: set[str], rng: np.random.Generator) -> dict:
        """Check the index against the bounds ``low`` <= live <= ``high``; returns
        ``{"lost", "extra", "bad_rows", "searches", "ann_searches", "errors"}``."""
        from fastimg.index import Index
        from fastimg.projection import PCAWhitening

        out = {"lost": 0, "extra": 0, "bad_rows": 0, "searches": 0, "ann_searches": 0, "errors": []}
        with Index.open(index) as ix:
            ids = ix.live_ids()
            paths = ix.paths(ids)
            live = set(paths)
            lost, extra = low - live, live - high
            out["lost"], out["extra"] = len(lost), len(extra)
            if lost or extra:
                out["errors"].append(f"lost {sorted(lost)[:3]}, unexpected {sorted(extra)[:3]}")
            V = np.asarray(ix.vectors)
            for i, p in zip(ids, paths):
                if p in self.vectors and not np.allclose(V[i], self.vectors[p], rtol=1e-6, atol=1e-7):
                    out["bad_rows"] += 1
            if out["bad_rows"]:
                out["errors"].append(f"{out['bad_rows']} rows differ from their file's descriptor")
            if not paths:
                self.live = live
                return out
            X = np.stack([self.vectors[p] for p in paths]).astype(np.float64)
            info = ix.info()
            white = None
            if info["whitening"] is not None:
                model = PCAWhitening.load(ix.whitening_path)
                white = model.transform
            space = white(X) if white is not None else X
            space = space / np.linalg.norm(space, axis=1, keepdims=True)
            k = min(5, len(paths))
            Q = X[rng.choice(len(paths), size=min(3, len(paths)), replace=False)] + rng.random((min(3, len(paths)),
                                                                                                 X.shape[1])) * 0.01
            qs = white(Q) if white is not None else Q
            qs = qs / np.linalg.norm(qs, axis=1, keepdims=True)
            truth = qs @ space.T
            modes = [("exact", None)] + ([("ann", 4 * len(V) + 50)] if info["ann"].get("built") else [])
            for mode, ef in modes:
                try:
                    got, scores = ix.search_batch(Q.astype(np.float32), k=k, mode=mode, ef=ef, exclude_self=False)
                except ValueError as exc:  # mode="ann" unavailable (graph not for this space)
                    if mode == "ann":
                        continue
                    raise
                for r in range(len(Q)):
                    exp = np.sort(truth[r])[::-1][:k]
                    pos = {int(i): j for j, i in enumerate(ids)}
                    mine = [truth[r, pos[int(i)]] for i in got[r]]
                    if not (np.allclose(scores[r], mine, atol=2e-5) and np.allclose(scores[r], exp, atol=2e-5)):
                        out["errors"].append(f"{mode} search {r}: scores {scores[r].tolist()} expected "
                                             f"{exp.tolist()}")
                out["searches" if mode == "exact" else "ann_searches"] += len(Q)
        self.live = live
        return out


def run_check(index: Path) -> tuple[int, dict]:
    """``fastimg check -i INDEX --json`` in its own process: (exit status, report)."""
    res = subprocess.run([str(BIN), "check", "-i", str(index), "--json"], capture_output=True, text=True,
                         timeout=600)
    try:
        doc = json.loads(res.stdout)
    except ValueError:
        doc = {"stderr": res.stderr}
    return res.returncode, doc


# --------------------------------------------------------------------------- kills
def kill_campaign(work: Path, kills: int, seed: int = 0, log: Callable[[str], None] = print) -> dict:
    """``kills`` SIGKILLs landing inside writer operations (see the module docstring)."""
    from fastimg.features.registry import describe
    from fastimg.index import Index

    rnd = random.Random(seed)
    rng = np.random.default_rng(seed)
    photos, pool_dir, index = work / "photos", work / "pool", work / "photos.fastimg"
    photos.mkdir(parents=True)
    per_add = 9
    pool = make_pool(pool_dir, per_add * (2 * kills + 8) // 2 + 30, seed)
    vectors = {}
    oracle = Oracle(vectors)
    with Index.create(index, metric="cosine") as ix:
        pass
    est: dict[str, Optional[float]] = {op: None for op in OPS}  # measured by a first run left to finish
    stats: dict[str, Any] = {"kills": 0, "kills_by_op": {op: 0 for op in OPS}, "runs": 0, "completed": 0,
                             "checks": 0, "check_failures": 0, "lost_rows": 0, "extra_rows": 0, "bad_rows": 0,
                             "searches_checked": 0, "ann_searches_checked": 0, "crashes": 0, "errors": [],
                             "notes": {}}
    next_file = 0
    attempts = 0
    while stats["kills"] < kills and attempts < 6 * kills + 20:
        attempts += 1
        # the next operation: the one killed least so far; an add left to finish while there are few rows
        fewest = min(stats["kills_by_op"].values())
        op = rnd.choice([o for o in OPS if stats["kills_by_op"][o] == fewest])
        setup = len(oracle.live) < 12
        if setup:
            op = "add"
        before = set(oracle.live)
        if op == "compact" and len(before) > 8:  # give it work: remove a few rows first (committed here)
            with Index.open(index, mode="a") as ix:
                gone = rnd.sample(sorted(before), 2)
                ix.remove(gone)
            before -= set(gone)
            oracle.live = set(before)
        low, high = set(before), set(before)
        extra: list[str] = []
        if op == "add":
            for p in pool[next_file:next_file + per_add]:
                dest = photos / p.name
                shutil.copy2(p, dest)
                vectors[str(dest)] = np.asarray(describe(str(dest), "hsv72"), np.float32)
            next_file += per_add
            folder = {str(p) for p in photos.iterdir()}
            high = folder  # every file of the folder (removed ones come back: remove does not exclude)
            extra = [str(photos)]
        elif op == "remove":
            victims = rnd.sample(sorted(before), min(4, max(1, len(before) // 8)))
            low = before - set(victims)
            extra = [json.dumps(victims)]
        proc = _spawn("child", op, index, *extra)
        t_begin = None
        try:
            line = proc.stdout.readline()
            if line.strip() != "begin":
                proc.wait(timeout=120)
                stats["crashes"] += 1
                stats["errors"].append(f"{op}: writer did not start ({line!r} {proc.stderr.read()[-500:]})")
                continue
            t_begin = time.perf_counter()
            if est[op] is not None and not setup:
                time.sleep(rnd.uniform(0, est[op]))
                os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=300)
            rest = proc.stdout.read()
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            proc.stdout.close()
            err = proc.stderr.read()
            proc.stderr.close()
        stats["runs"] += 1
        if rest.startswith("end"):  # finished before the kill: a completed operation
            stats["completed"] += 1
            took = float(rest.split()[1])  # the last completed run's duration: kills land inside the next
            est[op] = max(0.01, took * 1.1)
            if op == "add":
                low = high
            elif op == "remove":
                high = low
        elif proc.returncode == -signal.SIGKILL:
            stats["kills"] += 1
            stats["kills_by_op"][op] += 1
        else:
            stats["crashes"] += 1
            stats["errors"].append(f"{op}: writer exited {proc.returncode}: {err[-800:]}")
        code, report = run_check(index)
        stats["checks"] += 1
        for f in report.get("findings", []):
            key = f["what"].split(":")[0][:60]
            stats["notes"][key] = stats["notes"].get(key, 0) + 1
        if code != 0:
            stats["check_failures"] += 1
            stats["errors"].append(f"check after {op}: exit {code}: {[f for f in report.get('findings', []) if f.get('problem')] or report}")
        res = oracle.verify(index, low, high, rng)
        stats["lost_rows"] += res["lost"]
        stats["extra_rows"] += res["extra"]
        stats["bad_rows"] += res["bad_rows"]
        stats["searches_checked"] += res["searches"]
        stats["ann_searches_checked"] += res["ann_searches"]
        stats["errors"].extend(f"after {op}: {e}" for e in res["errors"])
        log(f"  {stats['runs']:3d} {op:14s} {'killed' if not rest.startswith('end') else 'done':6s} "
            f"(est {est[op] or 0:.2f}s); check {code}; live {len(oracle.live)}")
    stats["rows_at_end"] = len(oracle.live)
    return stats


# --------------------------------------------------------------------------- stress
def stress(work: Path, seconds: float, readers: int = 4, seed: int = 0) -> dict:
    """``readers`` reader processes and one writer (with compactions) for ``seconds``."""
    from fastimg.index import Index

    index = work / "stress.fastimg"
    with Index.create(index, descriptor="custom", dim=DIM, metric="l2") as ix:
        ix.add_vectors(np.stack([_vec(j) for j in range(200)]), [f"v{j}" for j in range(200)])
    procs = [_spawn("reader", index, seconds, seed + r) for r in range(readers)]
    writer = _spawn("writer", index, seconds)
    out: dict[str, Any] = {"readers": readers, "seconds": seconds, "checked": 0, "exact": 0, "bounded": 0,
                           "wrong": 0, "by_name": 0, "crashes": 0, "errors": []}
    for p in procs + [writer]:
        so, se = p.communicate(timeout=seconds + 600)
        if p.returncode != 0:
            out["crashes"] += 1
            out["errors"].append(f"{'writer' if p is writer else 'reader'} exited {p.returncode}: {se[-800:]}")
            continue
        doc = json.loads(so.strip().splitlines()[-1])
        if p is writer:
            out["writer"] = doc
        else:
            for key in ("checked", "exact", "bounded", "wrong", "by_name"):
                out[key] += doc[key]
            if doc["first_error"]:
                out["errors"].append(doc["first_error"])
    code, report = run_check(index)
    out["check_exit"] = code
    if code != 0:
        out["errors"].append(report)
    return out


# --------------------------------------------------------------------------- full disk
def full_disk(work: Path, size: str = "2m") -> dict:
    """Fill a small tmpfs during add_vectors, add (files) and compact (root only)."""
    import errno

    from fastimg.errors import IndexWriteError
    from fastimg.index import Index

    mnt = work / "tmpfs"
    mnt.mkdir(parents=True)
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mnt)], capture_output=True,
                         text=True)
    if res.returncode != 0:
        return {"skipped": f"cannot mount a tmpfs ({res.stderr.strip() or res.returncode}): needs root"}
    out: dict[str, Any] = {"size": size, "errors": []}
    try:
        # 1. vectors fill the disk: add_vectors until ENOSPC
        idx = mnt / "ix"
        dim = 512
        committed = 0
        with Index.create(idx, descriptor="custom", dim=dim, metric="l2") as ix:
            rng = np.random.default_rng(0)
            while True:
                batch = rng.random((64, dim)).astype(np.float32)
                try:
                    ix.add_vectors(batch, [f"r{committed + i}" for i in range(64)])
                except IndexWriteError as exc:
                    out["add_error"] = str(exc)
                    out["add_errno"] = errno.errorcode.get(exc.errno, exc.errno)
                    break
                committed += 64
                if committed > 100_000:  # pragma: no cover - the disk never filled
                    out["errors"].append("the disk never filled")
                    break
            ix.remove([f"r{i}" for i in range(0, committed, 2)])  # small: fits
            try:
                ix.compact()
                out["errors"].append("compact succeeded on a full disk")
            except IndexWriteError as exc:
                out["compact_error"] = str(exc)
                out["compact_errno"] = errno.errorcode.get(exc.errno, exc.errno)
        out["rows_committed"] = committed
        with Index.open(idx) as ro:  # the last committed state
            info = ro.info()
            if (info["rows"], info["count"]) != (committed, committed // 2):
                out["errors"].append(f"after the failures: {info['rows']} rows, {info['count']} live; expected "
                                     f"{committed}, {committed // 2}")
            V = np.asarray(ro.vectors)
            exp = np.random.default_rng(0).random((committed, dim)).astype(np.float32) if committed else V
            if not np.array_equal(V, exp[:committed]):
                out["errors"].append("committed rows differ after the failures")
            q = exp[1]
            hits = ro.search(q, k=3, exclude_self=False)
            live = ro.live_ids()
            d = np.sqrt(((V[live].astype(np.float64) - q) ** 2).sum(axis=1))
            if [h.id for h in hits] != live[np.argsort(d, kind="stable")[:3]].tolist():
                out["errors"].append("search after the failures differs from the brute force")
            del V, exp  # no mapping of the tmpfs left (it is unmounted below)
        leftovers = [p.name for p in idx.iterdir() if p.name.startswith("vectors.") and p.name != "vectors.0.f32"]
        if leftovers:
            out["errors"].append(f"partial files left: {leftovers}")
        code, report = run_check(idx)
        out["check_exit"] = code
        if code != 0:
            out["errors"].append(report)
        # 2. files added on a full disk: Index.add fails cleanly too
        shutil.rmtree(idx)
        photos = work / "photos_fd"
        files = make_pool(photos, 40, seed=5)
        idx2 = mnt / "ix2"
        filler = mnt / "filler"
        with Index.create(idx2) as ix:
            ix.add(files[:10])
            free = os.statvfs(mnt)
            with open(filler, "wb") as f:  # leave less room than 30 more rows need
                f.write(b"\0" * max(0, free.f_bavail * free.f_frsize - 2048))
            try:
                ix.add(photos, batch_size=5)
                out["errors"].append("add of files succeeded on a full disk")
            except IndexWriteError as exc:
                out["add_files_error"] = str(exc)
            n = len(ix)
            fd = os.open(filler, os.O_WRONLY | os.O_APPEND)  # no free block at all: the database's own write fails
            with contextlib.suppress(OSError):
                while True:
                    os.write(fd, b"\0" * 4096)
            os.close(fd)
            try:
                ix.set_metadata(str(files[0]), {"note": "x" * 100_000})
                out["errors"].append("a metadata write succeeded on a full disk")
            except IndexWriteError as exc:
                out["sqlite_error"] = str(exc)
                out["sqlite_errno"] = errno.errorcode.get(exc.errno, exc.errno)
        filler.unlink()
        with Index.open(idx2) as ro:
            if len(ro) != n or len(ro) < 10:
                out["errors"].append(f"after add on a full disk: {len(ro)} rows")
            if ro.metadata(ro.live_ids()[0])["metadata"] is not None:
                out["errors"].append("the failed metadata write was committed")
        out["add_files_committed"] = n
        code, report = run_check(idx2)
        out["check_exit_add"] = code
        if code != 0:
            out["errors"].append(report)
    finally:
        import gc

        gc.collect()
        if subprocess.run(["umount", str(mnt)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(mnt)], capture_output=True)  # busy: detach it anyway
    return out


# --------------------------------------------------------------------------- main
def main(argv: Optional[list[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in ("child", "writer", "reader"):
        {"child": _child, "writer": _writer, "reader": _reader}[argv[0]](argv[1:])
        return 0
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--kills", type=int, default=60)
    ap.add_argument("--stress-seconds", type=float, default=60.0)
    ap.add_argument("--readers", type=int, default=4)
    ap.add_argument("--no-full-disk", action="store_true")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", metavar="FILE", help="also write the results here")
    args = ap.parse_args(argv)
    results: dict[str, Any] = {"load_before": os.getloadavg()}

    def part(name: str, run: Callable[[], dict]) -> None:
        t0 = time.perf_counter()
        try:
            results[name] = run()
        except Exception as exc:  # recorded, the other parts still run
            import traceback

            results[name] = {"errors": [f"{type(exc).__name__}: {exc}", traceback.format_exc()[-2000:]],
                             "crashes": 1}
        results[name]["seconds"] = round(time.perf_counter() - t0, 1)
        results["load_after"] = os.getloadavg()
        if args.json:  # after each part: what ran is kept whatever happens next
            Path(args.json).parent.mkdir(parents=True, exist_ok=True)
            Path(args.json).write_text(json.dumps(results, indent=1, default=str))

    with tempfile.TemporaryDirectory(prefix="fastimg-reliability-") as tmp:
        print(f"kill campaign: {args.kills} kills", flush=True)
        part("kills", lambda: kill_campaign(Path(tmp) / "kills", args.kills, args.seed))
        print(f"stress: {args.readers} readers + 1 writer, {args.stress_seconds:g} s", flush=True)
        part("stress", lambda: stress(Path(tmp) / "stress", args.stress_seconds, args.readers, args.seed))
        if not args.no_full_disk:
            print("full disk", flush=True)
            part("full_disk", lambda: full_disk(Path(tmp) / "disk"))
    print(json.dumps(results, indent=1, default=str))
    k, s = results["kills"], results["stress"]
    bad = (k.get("lost_rows", 0) + k.get("extra_rows", 0) + k.get("bad_rows", 0) + k.get("crashes", 0)
           + k.get("check_failures", 0) + len(k["errors"]) + s.get("wrong", 0) + s.get("crashes", 0)
           + len(s["errors"]) + len(results.get("full_disk", {}).get("errors", [])))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
