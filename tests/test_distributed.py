"""fastimg.distributed on a real Dask cluster (LocalCluster, two worker processes).

The oracle of every search is one ordinary :class:`fastimg.Index` over the same
files: the sharded answer must hold the same scores and the same paths (tied
scores may come in another order: the shards break ties by global id).
Workers are killed with SIGKILL, during a build and during a search.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from fastimg import Index
from fastimg.distributed import (
    MANIFEST,
    BatchResult,
    ShardBuildError,
    ShardedIndex,
    ShardUnavailableError,
    add_vectors,
    build_shards,
    shard_name,
    shard_of,
)
from fastimg.errors import FastimgError, IndexFormatError, IndexNotFoundError
from fastimg.metrics import metric_names

from _photos import generated_photo

distributed = pytest.importorskip("distributed")  # the dask extra is part of the test environment (Makefile EXTRAS)

SHARDS = 3


@pytest.fixture(scope="module")
def client():
    from distributed import Client, LocalCluster

    cluster = LocalCluster(n_workers=2, processes=True, threads_per_worker=1, dashboard_address=":0",
                           silence_logs=logging.ERROR)
    c = Client(cluster)
    yield c
    c.close()
    cluster.close()


def _photos(dest: Path, classes: int, per_class: int, size=(40, 56)) -> Path:
    for c in range(classes):
        for i in range(per_class):
            generated_photo(dest / f"class{c}" / f"{i:03d}.jpg", c, i, size=size)
    return dest


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    return _photos(tmp_path_factory.mktemp("dist") / "photos", 5, 14)


@pytest.fixture(scope="module")
def single(photos) -> Index:
    with Index.create(photos.parent / "one.fastimg") as idx:
        idx.add(photos)
    idx = Index.open(photos.parent / "one.fastimg")
    yield idx
    idx.close()


@pytest.fixture(scope="module")
def cluster_root(client, photos) -> Path:
    root = photos.parent / "sharded"
    report = build_shards([photos], root, shards=SHARDS, client=client, batch_size=8)
    assert report.added == 70 and report.count == 70 and not report.skipped
    return root


def assert_same_hits(got, want_fn, k: int, higher: bool) -> None:
    """``got`` (sharded hits) holds the scores of ``want_fn(k)`` (the single index's
    hits) and the same paths; within a group of tied scores the order may differ,
    and the group cut at ``k`` may be any of the rows with that score."""
    want = want_fn(k)
    assert [h.score for h in got] == [h.score for h in want]
    groups: dict[float, set] = {}
    for h in want:
        groups.setdefault(h.score, set()).add(h.path)
    got_groups: dict[float, set] = {}
    for h in got:
        got_groups.setdefault(h.score, set()).add(h.path)
    last = want[-1].score if want else None
    for score, paths in got_groups.items():
        if score != last or len(want) < k:
            assert paths == groups[score], score
        else:  # the boundary group: any rows of that score
            wide = want_fn(k + 50)
            assert paths <= {h.path for h in wide if h.score == score}


def _queries(photos: Path) -> list:
    files = sorted(photos.rglob("*.jpg"))
    return files[::5]


def test_the_module_imports_dask_only_for_a_cluster():
    code = ("import sys, fastimg.distributed, fastimg.cli.sharded; "
            "print([m for m in ('dask', 'distributed') if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# --------------------------------------------------------------------------- #
# the same answers as one index
# --------------------------------------------------------------------------- #

def test_shards_built_on_the_cluster_answer_like_one_index_for_every_metric(client, cluster_root, single, photos):
    from fastimg.metrics import get_metric

    rng = np.random.default_rng(0)
    with ShardedIndex.open(cluster_root, client=client) as sh:
        assert len(sh) == len(single) == 70
        hosts = {v["host"] for v in sh.info()["shards"].values()}
        assert len(hosts) == 2  # the shards are spread over both workers
        queries = [*_queries(photos)]
        vec = np.abs(single.vectors[5] + rng.normal(0, 0.002, single.dim)).astype(np.float32)
        for m in metric_names():
            higher = get_metric(m).higher_is_better
            for q in queries:
                got = sh.search(q, 7, metric=m)
                assert got.complete
                assert_same_hits(got, lambda k, q=q: single.search(q, k, metric=m), 7, higher)
            got = sh.search(vec, 7, metric=m)
            assert_same_hits(got, lambda k: single.search(vec, k, metric=m), 7, higher)
        # a file that is not indexed (described by the host of its shard), bytes (described on the
        # client), and the query itself left out
        outside = generated_photo(photos.parent / "outside.jpg", 2, 99, size=(40, 56))
        assert_same_hits(sh.search(outside, 6), lambda k: single.search(outside, k), 6, False)
        data = queries[0].read_bytes()
        got = sh.search(data, 5)
        assert_same_hits(got, lambda k: single.search(data, k), 5, False)
        assert str(queries[0]) not in {h.path for h in sh.search(queries[0], 5)}
        assert str(queries[0]) == sh.search(queries[0], 1, exclude_self=False)[0].path


def test_global_ids_name_the_shard_and_its_row(client, cluster_root):
    with ShardedIndex.open(cluster_root, client=client) as sh:
        hits = sh.search(np.full(72, 1 / 72, np.float32), 20, metric="l1")
        assert sh.paths([h.id for h in hits]) == [h.path for h in hits]
        for h in hits:
            name, local = sh.shard_of_id(h.id)
            assert name == shard_name(h.id % SHARDS) and local == h.id // SHARDS
            with Index.open(cluster_root / name) as shard:
                assert shard.paths([local]) == [h.path]
            # the partition rule: the path relative to the folder holding the root
            key = os.path.relpath(h.path, cluster_root.parent).replace(os.sep, "/")
            assert shard_of(key, SHARDS) == h.id % SHARDS
        # an error of the search itself comes back from the worker as it is, naming the shard
        with pytest.raises(ValueError, match=r"shard-00\d: mode='ann' unavailable"):
            sh.search(hits[0].path, 3, mode="ann")
        man = json.loads((cluster_root / MANIFEST).read_text())
        assert [s["name"] for s in man["shards"]] == [shard_name(i) for i in range(SHARDS)]
        assert sum(s["count"] for s in man["shards"]) == man["count"] == 70
        assert man["descriptor"]["name"] == "hsv72" and man["metric"] == "bhattacharyya"


def test_search_batch_matches_search_and_the_single_index(client, cluster_root, single, photos):
    queries = _queries(photos)
    with ShardedIndex.open(cluster_root, client=client) as sh:
        res = sh.search_batch(queries, 6, metric="chisqr_alt")
        assert isinstance(res, BatchResult) and res.complete
        ids, scores = res
        want_ids, want_scores = single.search_batch(queries, 6, metric="chisqr_alt")
        np.testing.assert_array_equal(scores, want_scores)
        for r, q in enumerate(queries):
            one = sh.search(q, 6, metric="chisqr_alt")
            assert ids[r].tolist() == [h.id for h in one]
        # vectors: the query's identical row (its own) is left out, as in Index.search_batch
        vecs = np.ascontiguousarray(single.vectors[:9])
        ids, scores = sh.search_batch(vecs, 4)
        want_ids, want_scores = single.search_batch(vecs, 4)
        np.testing.assert_array_equal(scores, want_scores)
        assert [set(sh.paths(r)) for r in ids] == [set(single.paths(r)) for r in want_ids]


def test_searches_too_big_to_run_inline_run_on_the_actor_thread_with_the_same_answers(client, cluster_root,
                                                                                        single, photos):
    # small searches run on the workers' event loops (INLINE_BYTES); force the other path
    queries = _queries(photos)
    with ShardedIndex.open(cluster_root, client=client) as sh:
        sh.INLINE_BYTES = 0
        ids, scores = sh.search_batch(queries, 6, metric="bhattacharyya")
        want_ids, want_scores = single.search_batch(queries, 6, metric="bhattacharyya")
        np.testing.assert_array_equal(scores, want_scores)
        assert [set(sh.paths(r)) for r in ids] == [set(single.paths(r)) for r in want_ids]
        for q in queries[:3]:
            assert_same_hits(sh.search(q, 5, metric="cosine"), lambda k, q=q: single.search(q, k, metric="cosine"),
                             5, True)


def test_in_process_shards_equal_the_cluster_shards(client, cluster_root, photos, single):
    root = photos.parent / "inproc"
    report = build_shards(photos, root, shards=SHARDS)  # no client: in this process
    assert report.added == 70
    for i in range(SHARDS):
        with Index.open(root / shard_name(i)) as a, Index.open(cluster_root / shard_name(i)) as b:
            pa, pb = a.paths(a.live_ids()), b.paths(b.live_ids())
            assert sorted(pa) == sorted(pb) and len(pa) > 0
            va = dict(zip(pa, a.vectors[a.live_ids()]))
            vb = dict(zip(pb, b.vectors[b.live_ids()]))
            assert all(np.array_equal(va[p], vb[p]) for p in pa)
    with ShardedIndex.open(root) as sh:
        for q in _queries(photos)[:4]:
            assert_same_hits(sh.search(q, 5, metric="cosine"), lambda k, q=q: single.search(q, k, metric="cosine"),
                             5, True)
        # re-ranking runs on the client over the shards: the same as on one index
        q = _queries(photos)[2]
        got = sh.search(q, 5, metric="cosine", rerank="qe:n=3")
        assert_same_hits(got, lambda k: single.search(q, k, metric="cosine", rerank="qe:n=3"), 5, True)


def test_the_merge_keeps_the_metric_direction_and_breaks_ties_by_global_id(tmp_path):
    # 12 rows in 4 shards: three distinct vectors, each repeated four times (exact ties)
    base = np.array([[1, 0, 0], [0.8, 0.6, 0], [0, 0, 1]], np.float32)
    vecs = np.repeat(base, 4, axis=0)
    gids = add_vectors(tmp_path / "sh", vecs, [f"r{i}" for i in range(12)], shards=4, metric="l2")
    q = np.array([1, 0.1, 0], np.float32)
    with ShardedIndex.open(tmp_path / "sh") as sh:
        for metric, order in (("l2", [0, 1, 2]), ("cosine", [0, 1, 2]), ("l1", [0, 1, 2])):
            hits = sh.search(q, 12, metric=metric)
            groups = [int(h.path[1:]) // 4 for h in hits]
            assert groups == sorted(groups, key=order.index)  # best vector first, in the metric's direction
            for g in range(3):
                ids = [h.id for h in hits if int(h.path[1:]) // 4 == g]
                assert ids == sorted(ids) == sorted(gids[4 * g:4 * g + 4].tolist())  # ties: lower global id first
            scores = [h.score for h in hits]
            assert scores == (sorted(scores, reverse=True) if metric == "cosine" else sorted(scores))
        # exclude_self on a vector query: only the lowest-id identical row is left out
        hits = sh.search(base[2], 12, metric="l2")
        same = sorted(gids[8:12].tolist())
        assert [h.id for h in hits][:3] == same[1:]


# --------------------------------------------------------------------------- #
# incremental re-runs
# --------------------------------------------------------------------------- #

def test_re_running_adds_updates_and_removes_like_index_add(client, tmp_path):
    import cv2

    tree = _photos(tmp_path / "photos", 3, 8)
    root = tmp_path / "sh"
    build_shards(tree, root, shards=SHARDS, client=client, batch_size=5)
    again = build_shards(tree, root, client=client, batch_size=5)  # shards from the manifest
    assert (again.added, again.unchanged, again.removed) == (0, 24, 0)

    (tree / "class0" / "000.jpg").unlink()                                       # deleted
    img = cv2.imread(str(tree / "class1" / "001.jpg"))
    cv2.imwrite(str(tree / "class1" / "001.jpg"), 255 - img)                     # modified
    os.utime(tree / "class1" / "001.jpg", ns=(1, 1))
    generated_photo(tree / "class2" / "new.jpg", 4, 1, size=(40, 56))            # new
    (tree / "class2" / "sub").mkdir()
    shutil.move(tree / "class2" / "003.jpg", tree / "class2" / "sub" / "003.jpg")  # moved
    rep = build_shards([tree], root, client=client, batch_size=5)
    # the moved file is added at its new path (its vector reused when it stays in its shard) and its
    # old path removed; the modified file is re-described
    assert rep.updated == 1 and rep.added == 2 and rep.removed == 2 and rep.count == 24
    with Index.create(tmp_path / "one") as one:
        one.add(tree)
        with ShardedIndex.open(root, client=client) as sh:
            assert len(sh) == len(one) == 24
            live = []
            for i in range(SHARDS):
                with Index.open(root / shard_name(i)) as s:
                    live += s.paths(s.live_ids())
            assert sorted(live) == sorted(one.paths(one.live_ids()))
            for q in [tree / "class1" / "001.jpg", tree / "class2" / "sub" / "003.jpg", tree / "class2" / "new.jpg"]:
                assert_same_hits(sh.search(q, 6), lambda k, q=q: one.search(q, k), 6, False)


def test_existing_root_keeps_its_shards_descriptor_and_metric(tmp_path):
    tree = _photos(tmp_path / "p", 1, 3)
    build_shards(tree, tmp_path / "sh", shards=2)
    with pytest.raises(ValueError, match="has 2 shards, not 3"):
        build_shards(tree, tmp_path / "sh", shards=3)
    with pytest.raises(ValueError, match="descriptor 'hsv72', not 'rgb8'"):
        build_shards(tree, tmp_path / "sh", descriptor="rgb8")
    with pytest.raises(ValueError, match="needs the number of shards"):
        build_shards(tree, tmp_path / "new")
    with Index.create(tmp_path / "plain"):
        pass
    with pytest.raises(FileExistsError, match="single"):
        build_shards(tree, tmp_path / "plain", shards=2)
    with pytest.raises(IndexFormatError, match="single fastimg index"):
        ShardedIndex.open(tmp_path / "plain")
    with pytest.raises(IndexNotFoundError, match="no sharded fastimg index"):
        ShardedIndex.open(tmp_path / "nothing")


def test_a_bad_or_newer_manifest_is_refused_by_name(tmp_path):
    rng = np.random.default_rng(2)
    root = tmp_path / "sh"
    add_vectors(root, rng.normal(size=(10, 4)), [f"v{i}" for i in range(10)], shards=2)
    good = json.loads((root / MANIFEST).read_text())
    for bad, message in [(dict(good, format_version=good["format_version"] + 1),
                          r"fastimg-shards\.json: sharded index format version 2 was written by a newer fastimg.*"
                          r"up to 1: upgrade fastimg"),
                         (dict(good, format="something-else"), r"fastimg-shards\.json: not a sharded fastimg index"),
                         ({k: v for k, v in good.items() if k != "metric"}, r"fastimg-shards\.json: missing 'metric'"),
                         (dict(good, shards=[]), r"'shards' must be a non-empty list")]:
        (root / MANIFEST).write_text(json.dumps(bad))
        with pytest.raises(IndexFormatError, match=message):
            ShardedIndex.open(root)
    (root / MANIFEST).write_text("{not json")
    with pytest.raises(IndexFormatError, match=r"fastimg-shards\.json: unreadable manifest"):
        ShardedIndex.open(root)


def test_a_shard_with_a_whitening_is_refused(tmp_path):
    rng = np.random.default_rng(1)
    add_vectors(tmp_path / "sh", rng.normal(size=(40, 8)), [f"v{i}" for i in range(40)], shards=2)
    with Index.open(tmp_path / "sh" / shard_name(1), mode="a") as s:
        s.fit_whitening()
    with pytest.raises(IndexFormatError, match="shard-001: a PCA-whitening"):
        ShardedIndex.open(tmp_path / "sh")


def test_a_shard_with_a_learned_projection_is_refused(tmp_path):
    rng = np.random.default_rng(2)
    add_vectors(tmp_path / "sh", rng.normal(size=(40, 8)), [f"v{i}" for i in range(40)], shards=2, metric="cosine")
    with Index.open(tmp_path / "sh" / shard_name(0), mode="a") as s:
        names = [e.path for e in s]
        s.fit_projection({n: i % 2 for i, n in enumerate(names)}, method="lda")
    with pytest.raises(IndexFormatError, match="shard-000: a PCA-whitening or a learned projection"):
        ShardedIndex.open(tmp_path / "sh")


# --------------------------------------------------------------------------- #
# workers dying
# --------------------------------------------------------------------------- #

def _worker_pids(client) -> dict:
    return client.run(os.getpid)


def test_a_worker_killed_during_a_build_loses_only_its_batch(client, tmp_path):
    tree = _photos(tmp_path / "photos", 4, 30, size=(300, 400))  # tasks of a few tenths of a second
    root = tmp_path / "sh"
    killed = []

    def progress(done, total):
        if done and not killed:
            busy = [w for w, keys in client.processing().items() if keys]
            if busy:
                pid = _worker_pids(client)[busy[0]]
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)

    try:
        report = build_shards(tree, root, shards=4, client=client, batch_size=6, progress=progress)
        done_first = True
    except ShardBuildError as exc:  # Dask gave up on a task: the committed batches are kept
        assert "shard-" in str(exc)
        done_first = False
    assert killed
    client.wait_for_workers(2, timeout=60)
    assert killed[0] not in _worker_pids(client).values()
    if not done_first:
        report = build_shards(tree, root, client=client, batch_size=6)
    assert report.count == 120
    # every file exactly once, with the vector one index gives it
    with Index.create(tmp_path / "one") as one:
        one.add(tree)
        want = dict(zip(one.paths(one.live_ids()), one.vectors[one.live_ids()]))
    seen = []
    for i in range(4):
        with Index.open(root / shard_name(i)) as s:
            ids = s.live_ids()
            for p, v in zip(s.paths(ids), s.vectors[ids]):
                seen.append(p)
                assert np.array_equal(v, want[p])
    assert sorted(seen) == sorted(want)
    again = build_shards(tree, root, client=client)
    assert (again.added, again.updated, again.unchanged) == (0, 0, 120)


def test_a_failing_shard_stops_alone_and_a_re_run_completes_it(client, tmp_path):
    tree = _photos(tmp_path / "photos", 3, 6)
    root = tmp_path / "sh"
    build_shards(tree, root, shards=3, client=client, batch_size=4)
    generated_photo(tree / "class0" / "extra.jpg", 5, 5, size=(40, 56))
    for i in range(6):
        generated_photo(tree / "more" / f"{i}.jpg", 6, i, size=(40, 56))
    with Index.open(root / "shard-002", mode="a"):  # another writer holds shard-002
        with pytest.raises(ShardBuildError, match="shard-002") as err:
            build_shards(tree, root, client=client, batch_size=4)
        assert "run the build again" in str(err.value)
    new = [str(tree / "class0" / "extra.jpg")] + [str(tree / "more" / f"{i}.jpg") for i in range(6)]
    owner = {p: shard_of(os.path.relpath(p, tmp_path).replace(os.sep, "/"), 3) for p in new}
    assert set(owner.values()) == {0, 1, 2}  # (the file names are chosen so that every shard gets some)
    for i in (0, 1):  # the other shards finished their files
        with Index.open(root / shard_name(i)) as s:
            assert {p for p in new if owner[p] == i} <= set(s.paths(s.live_ids()))
    with Index.open(root / "shard-002") as s:
        assert not {p for p in new if owner[p] == 2} & set(s.paths(s.live_ids()))
    rep = build_shards(tree, root, client=client, batch_size=4)
    assert rep.count == 25 and rep.added == sum(owner[p] == 2 for p in new)
    with Index.create(tmp_path / "one") as one:
        one.add(tree)
        with ShardedIndex.open(root, client=client) as sh:
            assert len(sh) == len(one) == 25
            q = tree / "more" / "3.jpg"
            assert_same_hits(sh.search(q, 5), lambda k: one.search(q, k), 5, False)


def test_a_search_whose_worker_died_is_retried_on_another_worker(client, cluster_root, single, photos):
    q = _queries(photos)[1]
    with ShardedIndex.open(cluster_root, client=client) as sh:
        before = sh.search(q, 8)
        hosts = {name: v["host"] for name, v in sh.info()["shards"].items()}
        victim = hosts["shard-000"]
        os.kill(_worker_pids(client)[victim], signal.SIGKILL)
        after = sh.search(q, 8)  # the shards of the dead worker reopened elsewhere
        assert after.complete
        assert [(h.id, h.path, h.score) for h in after] == [(h.id, h.path, h.score) for h in before]
        moved = {name: v["host"] for name, v in sh.info()["shards"].items()}
        assert all(moved[n] != victim for n in moved)
        assert_same_hits(after, lambda k: single.search(q, k), 8, False)
    client.wait_for_workers(2, timeout=60)


def test_a_shard_that_cannot_be_reopened_fails_by_name_or_is_left_out_on_request(client, cluster_root, single,
                                                                               photos):
    q = _queries(photos)[3]
    with ShardedIndex.open(cluster_root, client=client, retries=1) as sh:
        victim = sh.info()["shards"]["shard-001"]["host"]
        hidden = cluster_root / "shard-001.hidden"
        os.rename(cluster_root / "shard-001", hidden)
        try:
            os.kill(_worker_pids(client)[victim], signal.SIGKILL)
            with pytest.raises(ShardUnavailableError, match="shard-001") as err:
                sh.search(q, 5)
            assert err.value.shards == ("shard-001",) and isinstance(err.value, FastimgError)
            partial = sh.search(q, 5, allow_partial=True)
            assert partial.missing == ("shard-001",) and not partial.complete
            # the others' hits: the single index's, without shard-001's files
            with Index.open(hidden) as lost:
                gone = set(lost.paths(lost.live_ids()))
            want = [h for h in single.search(q, 70) if h.path not in gone][:5]
            assert [(h.path, h.score) for h in partial] == [(h.path, h.score) for h in want]
            res = sh.search_batch([q], 5, allow_partial=True)
            assert res.missing == ("shard-001",)
        finally:
            os.rename(hidden, cluster_root / "shard-001")
    client.wait_for_workers(2, timeout=60)
    with ShardedIndex.open(cluster_root, client=client) as sh:  # a new handle has every shard again
        assert sh.search(q, 5).complete and len(sh) == 70


# --------------------------------------------------------------------------- #
# ANN per shard
# --------------------------------------------------------------------------- #

def test_sharded_ann_recall_against_sharded_exact(client, tmp_path):
    rng = np.random.default_rng(7)
    centers = rng.normal(size=(40, 24))
    data = (centers[rng.integers(0, 40, 6000)] + rng.normal(0, 0.35, (6000, 24))).astype(np.float32)
    root = tmp_path / "vec"
    gids = add_vectors(root, data, [f"v{i}" for i in range(len(data))], shards=4, metric="cosine",
                       ann={"M": 12, "ef_construction": 100})
    assert np.unique(gids).size == len(data)
    queries = (data[rng.choice(len(data), 150, replace=False)] + rng.normal(0, 0.2, (150, 24))).astype(np.float32)
    with ShardedIndex.open(root, client=client) as sh:
        assert sh.info()["ann"]["built"]
        exact, _ = sh.search_batch(queries, 10, mode="exact")
        approx, _ = sh.search_batch(queries, 10, mode="ann", ef=64)
        # the exact sharded answer is the numpy brute force over all vectors
        norm = data / np.linalg.norm(data, axis=1, keepdims=True)
        qn = queries / np.linalg.norm(queries, axis=1, keepdims=True)
        brute = np.argsort(-(qn @ norm.T), axis=1, kind="stable")[:, :10]
        name_of = {int(g): f"v{i}" for i, g in enumerate(gids)}
        assert [[name_of[g] for g in row] for row in exact[:20].tolist()] == \
            [[f"v{i}" for i in row] for row in brute[:20].tolist()]
    recall = np.mean([len(set(a) & set(e)) / 10 for a, e in zip(approx.tolist(), exact.tolist())])
    assert recall >= 0.95, recall


def test_image_shards_built_with_graphs_on_the_workers(client, photos, single):
    root = photos.parent / "ann-sharded"
    build_shards(photos, root, shards=2, client=client, batch_size=16, ann=True, metric="bhattacharyya")
    q = _queries(photos)[0]
    with ShardedIndex.open(root, client=client) as sh:
        info = sh.info()
        assert info["ann"]["built"] and all(s["ann_built"] for s in info["shards"].values())
        # precision and linear maps: what each shard, opened as a plain Index, says
        shard_infos = []
        for name in info["shards"]:
            with Index.open(root / name) as one:
                shard_infos.append(one.info())
        for name, one in zip(info["shards"], shard_infos):
            assert info["shards"][name]["precision"] == one["precision"]
        assert info["precision"] == shard_infos[0]["precision"] == shard_infos[1]["precision"]
        assert info["scan_precision"] == shard_infos[0]["scan_precision"]
        got = sh.search(q, 5, mode="ann")
        assert_same_hits(got, lambda k: single.search(q, k, mode="exact"), 5, False)  # tiny graphs are exact


# --------------------------------------------------------------------------- #
# command line
# --------------------------------------------------------------------------- #

def _cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "fastimg", *map(str, args)], capture_output=True, text=True,
                          timeout=300, cwd=cwd)


def test_cli_index_query_info_on_a_sharded_root(client, photos, single, tmp_path):
    root = tmp_path / "cli-shards"
    res = _cli("index", photos, "--shards", 3, "--index", root, "--scheduler", client.scheduler.address, "--json")
    assert res.returncode == 0, res.stderr
    doc = json.loads(res.stdout)
    assert doc["shards"] == 3 and doc["count"] == 70 and doc["added"] == 70 and doc["created"]
    q = _queries(photos)[2]
    res = _cli("query", q, "-k", 5, "--index", root, "--json", "--scheduler", client.scheduler.address)
    assert res.returncode == 0, res.stderr
    got = json.loads(res.stdout)["results"]
    want = single.search(q, 5)
    assert [(r["path"], r["score"]) for r in got] == [(h.path, pytest.approx(h.score, abs=0, rel=1e-6))
                                                      for h in want]
    res = _cli("query", q, "-k", 5, "--index", root, "--json", "--scheduler", "local")  # a new local cluster
    assert res.returncode == 0, res.stderr
    assert [r["path"] for r in json.loads(res.stdout)["results"]] == [h.path for h in want]
    res = _cli("info", "--index", root, "--json")
    info = json.loads(res.stdout)
    assert res.returncode == 0 and info["count"] == 70 and sorted(info["shards"]) == [shard_name(i) for i in range(3)]
    res = _cli("index", photos, "--index", root)  # an update: the shards from the manifest
    assert res.returncode == 0 and "0 added, 70 unchanged" in res.stdout
    res = _cli("remove", q, "--index", root)
    assert res.returncode == 1 and "is a sharded index" in res.stderr
    res = _cli("index", photos, "--index", root, "--shards", 4)
    assert res.returncode == 1 and "has 3 shards, not 4" in res.stderr


def test_shards_of_an_older_descriptor_version_are_described_again_by_the_next_build(tmp_path):
    """A new fastimg computes a descriptor differently (its version goes up, as int8
    efficientnet did for CPUs without VNNI): the collection still opens and answers by
    vector and by indexed image, refuses new images by name (not comparable), and the next
    build re-describes every shard and records the new version in the manifest; then image
    queries work again.  Oracle: cv2.compareHist over today's descriptions of the files."""
    import sqlite3

    import cv2

    from fastimg.features.registry import describe

    tree = _photos(tmp_path / "p", 2, 4)
    root = tmp_path / "sh"
    build_shards(tree, root, shards=2)
    # pretend the shards and the manifest were written with hsv72 version 1
    man = json.loads((root / MANIFEST).read_text())
    now_version = man["descriptor"]["version"]
    (root / MANIFEST).write_text(json.dumps(dict(man, descriptor=dict(man["descriptor"], version=now_version - 1))))
    for s in range(2):
        con = sqlite3.connect(root / shard_name(s) / "meta.sqlite")
        with con:
            spec = json.loads(dict(con.execute("SELECT key, value FROM meta"))["descriptor"])
            con.execute("UPDATE meta SET value = ? WHERE key = 'descriptor'",
                        (json.dumps(dict(spec, version=now_version - 1)),))
        con.close()
    files = sorted(tree.rglob("*.jpg"))
    with ShardedIndex.open(root) as sh:
        assert len(sh.search(files[0], k=3)) == 3  # an indexed image: its stored vector
        with pytest.raises(IndexFormatError, match=rf"descriptor version {now_version - 1} and this fastimg "
                                                   rf"describes images with version {now_version}.*run the build"):
            sh.search(files[0].read_bytes(), k=3)
    build_shards(tree, root)  # re-describes the shards
    assert json.loads((root / MANIFEST).read_text())["descriptor"]["version"] == now_version
    vecs = {str(f): describe(str(f), "hsv72") for f in files}
    with ShardedIndex.open(root) as sh:
        q = files[5].read_bytes()
        hits = sh.search(q, k=3)
        d = sorted((cv2.compareHist(vecs[str(files[5])], v, cv2.HISTCMP_BHATTACHARYYA), p) for p, v in vecs.items()
                   if p != str(files[5]))  # the image itself (bit-identical row) is left out
        assert [h.path for h in hits] == [p for _, p in d[:3]]
        np.testing.assert_allclose([h.score for h in hits], [x for x, _ in d[:3]], atol=1e-5)
