"""PCA-whitening of an index (``Index.fit_whitening`` / ``clear_whitening``, ``fastimg index --whiten``).

Oracle, written here in NumPy independently of ``fastimg.projection.PCAWhitening``:
centre with the mean of the live rows the fit saw, project on the top-``dim``
right singular vectors of the centred matrix (``np.linalg.svd``), L2-normalise,
then a brute-force top-k of the metric in float64.  The singular vectors are only
defined up to sign (and up to rotation inside a degenerate eigenspace), so the
comparison is made on what is invariant: the ids returned and their scores (the
cosine, or the Euclidean distance, between whitened unit vectors), never on raw
whitened coordinates.
"""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from _photos import photo_tree
from fastimg.errors import DescriptorError, IndexCorruptError, IndexReadOnlyError
from fastimg.index import Index

D = 32
N = 300
ATOL = 2e-5


# --------------------------------------------------------------------------- oracle
def clustered(n: int, d: int = D, *, seed: int, clusters: int = 6, spread: float = 3.0) -> np.ndarray:
    """Rows around a few random centres, with per-dimension scales (an anisotropic cloud)."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(clusters, d)) * spread
    scales = np.linspace(0.3, 2.0, d)
    x = centres[rng.integers(0, clusters, n)] + rng.normal(size=(n, d)) * scales
    return x.astype(np.float32)


class Oracle:
    """PCA-whitening (power 0) fitted with an SVD of the centred training rows."""

    def __init__(self, train: np.ndarray, dim: int | None):
        x = np.asarray(train, dtype=np.float64)
        self.mean = x.mean(axis=0)
        _, _, vt = np.linalg.svd(x - self.mean, full_matrices=False)
        out = min(x.shape[1], x.shape[0] - 1) if dim is None else min(dim, x.shape[1], x.shape[0] - 1)
        self.axes = vt[:out]

    def __call__(self, y: np.ndarray) -> np.ndarray:
        z = (np.asarray(y, dtype=np.float64) - self.mean) @ self.axes.T
        return z / np.linalg.norm(z, axis=-1, keepdims=True)


def scores_of(metric: str, q: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """(Q, N) float64 metric values between whitened queries and whitened rows."""
    if metric == "cosine":
        return q @ rows.T  # both sides are unit vectors
    assert metric == "l2"
    return np.sqrt(np.maximum(((q[:, None, :] - rows[None, :, :]) ** 2).sum(-1), 0.0))


def assert_matches(metric: str, ids: np.ndarray, scores: np.ndarray, full: np.ndarray, allowed: np.ndarray,
                   k: int) -> None:
    """``ids``/``scores`` (Q, k) are a correct top-k of ``full`` (Q, N) over the ``allowed`` mask.

    Each returned id is allowed, its score is the oracle's value for that id, and
    the scores are the oracle's k best values in order (so ties may come in any
    order, but no better row is missed).
    """
    higher = metric == "cosine"
    for r in range(full.shape[0]):
        cand = np.flatnonzero(allowed[r])
        vals = full[r, cand]
        best = np.sort(vals)[::-1][:k] if higher else np.sort(vals)[:k]
        got = ids[r][ids[r] >= 0]
        assert got.size == min(k, cand.size)
        assert allowed[r, got].all(), got
        np.testing.assert_allclose(scores[r][:got.size], full[r, got], atol=ATOL)
        np.testing.assert_allclose(scores[r][:got.size], best, atol=ATOL)


def live_mask(index: Index, nq: int) -> np.ndarray:
    mask = np.zeros((nq, index.vectors.shape[0]), dtype=bool)
    mask[:, index.live_ids()] = True
    return mask


def make_index(path: Path, x: np.ndarray, metric: str = "cosine") -> Index:
    index = Index.create(path, descriptor="custom", dim=x.shape[1], metric=metric)
    index.add_vectors(x, [f"v{i}" for i in range(len(x))])
    return index


def whitened_caches(index: Index) -> list[str]:
    return [c for c in index.info()["caches"] if c.startswith("whitened-")]


# --------------------------------------------------------------------------- fit + search
@pytest.mark.parametrize("metric", ["cosine", "l2"])
@pytest.mark.parametrize("dim", [8, None])
def test_search_after_fit_equals_numpy_oracle(tmp_path, metric, dim):
    x = clustered(N, seed=1)
    queries = clustered(7, seed=2)
    with make_index(tmp_path / "ix", x, metric=metric) as index:
        removed = np.arange(0, N, 15)  # deleted rows are neither fitted on nor returned
        index.remove([int(i) for i in removed])
        fit = index.fit_whitening(dim=dim)
        live = index.live_ids()
        oracle = Oracle(x[live], dim)
        assert fit["dim"] == oracle.axes.shape[0] == (8 if dim == 8 else D)
        assert (fit["n_fit"], fit["rows"], fit["generation"], fit["power"]) == (live.size, N, 0, 0.0)
        # its own file, named after its checksum (BLAKE2b-128 of the bytes), recorded in the index
        assert index.whitening_path == tmp_path / "ix" / fit["file"] == tmp_path / "ix" / f"whitening.{fit['fit_id'][:16]}.npz"
        assert hashlib.blake2b(index.whitening_path.read_bytes(), digest_size=16).hexdigest() == fit["fit_id"]
        assert [p.name for p in (tmp_path / "ix").glob("*.npz")] == [index.whitening_path.name]
        np.testing.assert_array_equal(index.vectors, x)  # the raw vectors are untouched

        wx = oracle(x)
        ids, scores = index.search_batch(queries, k=10)
        assert_matches(metric, ids, scores, scores_of(metric, oracle(queries), wx), live_mask(index, 7), 10)

        # a query by indexed name uses the stored vector and leaves itself out
        q_id = int(live[3])
        hits = index.search(f"v{q_id}", k=5)
        allowed = live_mask(index, 1)
        allowed[0, q_id] = False
        assert_matches(metric, np.array([[h.id for h in hits]]), np.array([[h.score for h in hits]]),
                       scores_of(metric, wx[q_id][None, :], wx), allowed, 5)
        assert [h.path for h in hits] == [f"v{h.id}" for h in hits]


def test_whitening_changes_the_ranking(tmp_path):
    """Guard against an oracle that would also match raw search: here they differ."""
    x = clustered(N, seed=3)
    queries = clustered(10, seed=4)
    with make_index(tmp_path / "ix", x) as index:
        raw_ids, _ = index.search_batch(queries, k=10)
        index.fit_whitening(dim=4)
        w_ids, _ = index.search_batch(queries, k=10)
    assert not np.array_equal(raw_ids, w_ids)


def test_persists_across_close_and_open(tmp_path):
    x = clustered(N, seed=5)
    queries = clustered(5, seed=6)
    with make_index(tmp_path / "ix", x) as index:
        fit = index.fit_whitening(dim=6)
    with Index.open(tmp_path / "ix", mode="r") as reader:
        info = reader.info()["whitening"]
        assert info == dict(fit, stale_rows=0)
        ids, scores = reader.search_batch(queries, k=8)
        oracle = Oracle(x, 6)
        assert_matches("cosine", ids, scores, scores_of("cosine", oracle(queries), oracle(x)),
                       live_mask(reader, 5), 8)
        assert whitened_caches(reader)  # the whitened matrix was cached beside the vectors (by the writer)


def test_rows_added_after_fit_are_searched_with_the_stored_fit(tmp_path):
    x = clustered(N, seed=7)
    extra = clustered(60, seed=8, spread=5.0)
    queries = np.vstack([clustered(4, seed=9), extra[:3] + 0.01])
    with make_index(tmp_path / "ix", x) as index:
        index.fit_whitening(dim=8)
        with Index.open(tmp_path / "ix", mode="r") as reader:
            reader.search_batch(queries, k=3)  # maps the whitened matrix of the first N rows (cached by the fit)
            index.add_vectors(extra, [f"e{i}" for i in range(len(extra))])
            assert reader.info()["whitening"]["stale_rows"] == len(extra)
            oracle = Oracle(x, 8)  # not re-fitted on the new rows
            allx = np.vstack([x, extra])
            full = scores_of("cosine", oracle(queries), oracle(allx))
            for handle in (index, reader):
                ids, scores = handle.search_batch(queries, k=10)
                assert_matches("cosine", ids, scores, full, live_mask(handle, len(queries)), 10)
                assert (ids[4:] >= N).any()  # the new rows are found


def test_refit_moves_results_to_the_new_oracle(tmp_path):
    x = clustered(N, seed=10)
    extra = clustered(200, seed=11, spread=6.0)
    queries = clustered(8, seed=12)
    with make_index(tmp_path / "ix", x) as index:
        first = index.fit_whitening(dim=8)
        index.add_vectors(extra, [f"e{i}" for i in range(len(extra))])
        old_ids, _ = index.search_batch(queries, k=10)
        second = index.fit_whitening(dim=5)
        assert second["fit_id"] != first["fit_id"]
        assert (second["dim"], second["n_fit"], second["rows"]) == (5, N + len(extra), N + len(extra))
        assert index.info()["whitening"]["stale_rows"] == 0
        assert all(first["fit_id"] not in c for c in whitened_caches(index))  # old fit's caches removed
        ids, scores = index.search_batch(queries, k=10)
        allx = np.vstack([x, extra])
        new = Oracle(allx, 5)
        assert_matches("cosine", ids, scores, scores_of("cosine", new(queries), new(allx)),
                       live_mask(index, 8), 10)
        assert not np.array_equal(ids, old_ids)
    with Index.open(tmp_path / "ix") as reader:  # a new handle reads the new fit
        ids2, scores2 = reader.search_batch(queries, k=10)
    np.testing.assert_array_equal(ids2, ids)
    np.testing.assert_allclose(scores2, scores, atol=1e-6)


def test_clear_whitening_restores_raw_search(tmp_path):
    x = clustered(N, seed=13)
    queries = clustered(6, seed=14)
    with make_index(tmp_path / "ix", x) as index:
        index.fit_whitening(dim=4)
        index.search_batch(queries, k=5)
        index.clear_whitening()
        assert index.info()["whitening"] is None
        assert index.whitening_path is None
        assert not [p for p in (tmp_path / "ix").iterdir() if p.suffix == ".npz"]
        assert whitened_caches(index) == []
        ids, scores = index.search_batch(queries, k=10)
        xn = x / np.linalg.norm(x.astype(np.float64), axis=1, keepdims=True)
        qn = queries / np.linalg.norm(queries.astype(np.float64), axis=1, keepdims=True)
        assert_matches("cosine", ids, scores, qn @ xn.T, live_mask(index, 6), 10)
        index.clear_whitening()  # idempotent


def test_read_only_handle_cannot_fit_or_clear(tmp_path):
    make_index(tmp_path / "ix", clustered(20, seed=15)).close()
    with Index.open(tmp_path / "ix", mode="r") as reader:
        with pytest.raises(IndexReadOnlyError, match="read-only"):
            reader.fit_whitening()
        with pytest.raises(IndexReadOnlyError, match="read-only"):
            reader.clear_whitening()
        assert reader.info()["whitening"] is None


@pytest.mark.parametrize("damage", ["missing", "garbage", "other-fit"])
def test_missing_or_corrupt_whitening_file_is_a_clear_error(tmp_path, damage):
    x = clustered(50, seed=16)
    with make_index(tmp_path / "ix", x) as index:
        index.fit_whitening(dim=4)
        path = index.whitening_path
    if damage == "missing":
        path.unlink()
    elif damage == "garbage":
        path.write_bytes(b"not a whitening file")
    else:  # a valid whitening file, but not the fit recorded in the index
        from fastimg.projection import PCAWhitening

        PCAWhitening(dim=3).fit(clustered(50, seed=17)).save(path)
    with Index.open(tmp_path / "ix", mode="r") as reader:
        with pytest.raises(IndexCorruptError) as exc:
            reader.search_batch(x[:2], k=3)
        assert str(path) in str(exc.value)
        assert "fit_whitening" in str(exc.value)
    with Index.open(tmp_path / "ix", mode="a") as writer:  # the documented ways out work
        writer.clear_whitening()
        assert writer.search_batch(x[:2], k=3)[0].shape == (2, 3)


def test_compact_keeps_the_fit_and_rebuilds_its_cache(tmp_path):
    x = clustered(N, seed=18)
    queries = clustered(5, seed=19)
    with make_index(tmp_path / "ix", x) as index:
        fit = index.fit_whitening(dim=8)
        index.search_batch(queries, k=3)
        gone = list(range(0, N, 7))
        index.remove(gone)
        mapping = index.compact()
        info = index.info()["whitening"]
        assert info["fit_id"] == fit["fit_id"] and info["generation"] == 1
        assert info["rows"] == N - len(gone) and info["stale_rows"] == 0
        kept = np.flatnonzero(mapping >= 0)
        oracle = Oracle(x, 8)  # fitted before the removals
        ids, scores = index.search_batch(queries, k=10)
        assert_matches("cosine", ids, scores, scores_of("cosine", oracle(queries), oracle(x[kept])),
                       live_mask(index, 5), 10)
        assert all(".g1." in c for c in whitened_caches(index))


def test_exclude_self_and_rerank_in_the_whitened_space(tmp_path):
    x = clustered(N, seed=20)
    with make_index(tmp_path / "ix", x) as index:
        index.fit_whitening(dim=8)
        oracle = Oracle(x, 8)
        wx = oracle(x)
        # a vector query identical to a stored row leaves that row out
        ids, scores = index.search_batch(x[[11]], k=5)
        allowed = live_mask(index, 1)
        allowed[0, 11] = False
        assert_matches("cosine", ids, scores, scores_of("cosine", wx[[11]], wx), allowed, 5)
        ids_in, _ = index.search_batch(x[[11]], k=1, exclude_self=False)
        assert ids_in[0, 0] == 11

        # average query expansion (top 5) on whitened vectors, searched again without the query
        hits = index.search("v11", k=10, rerank="qe:n=5,gap=0")
        top = np.argsort(-np.where(allowed[0], wx @ wx[11], -np.inf), kind="stable")[:5]
        expanded = wx[11] + wx[top].sum(axis=0)
        expanded /= np.linalg.norm(expanded)
        assert_matches("cosine", np.array([[h.id for h in hits]]), np.array([[h.score for h in hits]]),
                       (expanded @ wx.T)[None, :], allowed, 10)


def test_hnsw_graph_follows_the_whitening(tmp_path):
    x = clustered(N, seed=21)
    queries = clustered(6, seed=22)
    with make_index(tmp_path / "ix", x) as index:
        index.build_ann()
        index.fit_whitening(dim=8)
        with pytest.raises(ValueError, match="rebuild"):
            index.search_batch(queries, k=5, mode="ann")
        assert index.info()["ann"]["auto_mode"] == "exact"
        oracle = Oracle(x, 8)
        full = scores_of("cosine", oracle(queries), oracle(x))
        ids, scores = index.search_batch(queries, k=10, mode="auto")
        assert_matches("cosine", ids, scores, full, live_mask(index, 6), 10)

        meta = index.build_ann()  # now built on the whitened vectors
        assert meta["whitening"] == index.info()["whitening"]["fit_id"]
        ids, scores = index.search_batch(queries, k=10, mode="ann")
        # re-scored exactly in the whitened space; the graph finds (nearly) the exact top-10
        for r in range(6):
            np.testing.assert_allclose(scores[r], full[r, ids[r]], atol=ATOL)
        exact_ids, _ = index.search_batch(queries, k=10, mode="exact")
        recall = np.mean([len(set(ids[r]) & set(exact_ids[r])) / 10 for r in range(6)])
        assert recall >= 0.9

        # rows added later enter the graph transformed with the same fit
        extra = clustered(20, seed=23, spread=5.0)
        index.add_vectors(extra, [f"e{i}" for i in range(20)])
        assert index.info()["ann"]["rows"] == N + 20
        got = index.search_batch(extra[[0]] + 1e-3, k=1, mode="ann")[0][0, 0]
        assert got == N  # the new row's own neighbourhood, found through the graph

        index.clear_whitening()
        with pytest.raises(ValueError, match="rebuild"):
            index.search_batch(queries, k=5, mode="ann")


def test_bad_arguments_and_histogram_metrics(tmp_path):
    with make_index(tmp_path / "one", clustered(1, seed=24)) as index:
        with pytest.raises(DescriptorError, match="at least 2 live rows"):
            index.fit_whitening()
    x = np.abs(clustered(40, seed=25))
    with make_index(tmp_path / "hist", x, metric="bhattacharyya") as index:
        with pytest.raises(ValueError, match="'bhattacharyya' needs non-negative"):
            index.fit_whitening()
        assert index.info()["whitening"] is None
    with make_index(tmp_path / "cos", x) as index:
        for bad in ({"dim": 0}, {"power": 2.0}, {"sample": 1}):
            with pytest.raises(DescriptorError):
                index.fit_whitening(**bad)
        index.fit_whitening(dim=4)
        with pytest.raises(ValueError, match="'chisqr' needs non-negative vectors.*whitened vectors are signed"):
            index.search_batch(x[:1], k=3, metric="chisqr")


def test_fit_on_an_evenly_spaced_sample(tmp_path):
    x = clustered(N, seed=26)
    queries = clustered(4, seed=27)
    with make_index(tmp_path / "ix", x) as index:
        fit = index.fit_whitening(dim=6, sample=100)
        assert fit["n_fit"] == 100
        rows = np.linspace(0, N - 1, 100).round().astype(int)
        oracle = Oracle(x[rows], 6)
        ids, scores = index.search_batch(queries, k=10)
        assert_matches("cosine", ids, scores, scores_of("cosine", oracle(queries), oracle(x)),
                       live_mask(index, 4), 10)


# --------------------------------------------------------------------------- CLI
def test_cli_index_whiten_info_and_query(tmp_path):
    """``fastimg index FILES --metric cosine --whiten 4``, then ``info --json`` and ``query --json``."""
    # Corel-1k files, or generated ones without ../shared
    files = photo_tree(tmp_path / "photos", classes=("beaches", "dinosaurs", "horses"), per_class=4)
    assert len(files) == 12, files
    idx = tmp_path / "ix"
    exe = Path(sys.executable).with_name("fastimg")
    env = {k: v for k, v in os.environ.items() if k != "FASTIMG_INDEX"}

    def run(*args):
        res = subprocess.run([str(exe), *map(str, args)], capture_output=True, text=True, env=env, timeout=300,
                             stdin=subprocess.DEVNULL)
        assert res.returncode == 0, res.stderr
        return json.loads(res.stdout)

    summary = run("index", *files, "--index", idx, "--metric", "cosine", "-q", "--json", "--whiten", "4")
    assert summary["whitening"]["dim"] == 4 and summary["whitening"]["n_fit"] == len(files)
    info = run("info", "--index", idx, "--json")
    assert info["whitening"] == dict(summary["whitening"], stale_rows=0)

    res = run("query", files[0], "--index", idx, "-k", "3", "--json")
    with Index.open(idx) as index:
        raw = np.asarray(index.vectors, dtype=np.float64)
        names = index.paths(range(len(raw)))
    oracle = Oracle(raw, 4)
    w = oracle(raw)
    me = names.index(os.path.abspath(files[0]))
    allowed = np.ones((1, len(raw)), dtype=bool)
    allowed[0, me] = False
    got = np.array([[names.index(h["path"]) for h in res["results"]]])
    assert_matches("cosine", got, np.array([[h["score"] for h in res["results"]]]),
                   (w[me] @ w.T)[None, :], allowed, 3)

    # a histogram-metric index refuses --whiten before describing anything
    bad = subprocess.run([str(exe), "index", *files[:2], "--index", tmp_path / "hist", "--whiten"],
                         capture_output=True, text=True, env=env, timeout=300, stdin=subprocess.DEVNULL)
    assert bad.returncode == 1 and "--whiten" in bad.stderr and "bhattacharyya" in bad.stderr
    assert not (tmp_path / "hist").exists()
