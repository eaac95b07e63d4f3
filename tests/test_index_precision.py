"""The index's precision (Index.create(precision=), Index.set_precision, info, CLI).

Oracles: per-row scores of every live row by cv2.compareHist / scipy
(test_search.oracle_scores) for the ranking, and the float32 index of the same
vectors for bit-identical answers (ids and scores); the vector file's bytes for
"never touched"; representation sizes computed by hand.
"""
from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest

import fastimg
from fastimg import cli
from fastimg.index import Index

from test_search import assert_topk_equivalent, oracle_scores

pytest.importorskip("fastimg._core", reason="compiled core not built (run `make install`)")

D = 24
K = 12


def vectors(n: int = 1500, seed: int = 0) -> np.ndarray:
    """Non-negative rows (every metric applies) with exact duplicates, near-ties and
    constant rows: the cases where a candidate scan's bound matters."""
    rng = np.random.default_rng(seed)
    x = rng.random((n, D), dtype=np.float32)
    x[100:150] = x[0:50]  # exact duplicates
    x[150:200] = x[50:100] + np.float32(1e-7)  # near-ties
    x[200:210] = np.float32(0.25)  # constant rows
    return x


def make(path, x, precision, metric="pearson", flush_at=None):
    """An index of ``x``; the caches cover the first ``flush_at`` rows (the rest is
    a tail prepared in memory)."""
    index = Index.create(path, descriptor="custom", dim=D, metric=metric, precision=precision)
    cut = len(x) if flush_at is None else flush_at
    index.add_vectors(x[:cut], [f"v{i}" for i in range(cut)])
    index.flush()
    if cut < len(x):
        index.add_vectors(x[cut:], [f"v{i}" for i in range(cut, len(x))])
    return index


def file_digest(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("metric", ["pearson", "cosine", "l2", "bhattacharyya"])
@pytest.mark.parametrize("precision", ["float16", "int8"])
def test_reduced_index_answers_like_the_float32_index_and_the_oracle(tmp_path, metric, precision):
    x = vectors()
    q = np.concatenate([x[[0, 55, 203]], np.random.default_rng(1).random((5, D), dtype=np.float32)])
    with make(tmp_path / "f32", x, "float32", metric, flush_at=1000) as ref, \
            make(tmp_path / "red", x, precision, metric, flush_at=1000) as red:
        gone = [3, 50, 120, 1400]  # deleted rows, in the cached head and in the tail
        ref.remove(gone)
        red.remove(gone)
        assert red.precision == precision and red.info()["scan_precision"] == precision
        ids, scores = red.search_batch(q, K, mode="exact", exclude_self=False)
        rids, rscores = ref.search_batch(q, K, mode="exact", exclude_self=False)
        np.testing.assert_array_equal(ids, rids)
        np.testing.assert_array_equal(scores, rscores)
        hib = fastimg.metrics.get_metric(metric).higher_is_better
        for r in range(len(q)):
            assert_topk_equivalent(ids[r], scores[r], oracle_scores(metric, q[r], x), hib, K, excluded=gone)
            assert not set(ids[r].tolist()) & set(gone)


def test_precision_is_stored_and_caches_follow_it(tmp_path):
    x = vectors()
    path = tmp_path / "ix"
    with make(path, x, "int8") as index:
        vec = next(path.glob("vectors.*.f32"))
        before = file_digest(vec)
        names = [p.name for p in (path / "cache").glob("*.npy")]
        assert sorted(n.split(".")[0] for n in names) == ["pearson-int8-bias", "pearson-int8-codes",
                                                         "pearson-int8-err", "pearson-int8-scale"]
        codes = np.load(next((path / "cache").glob("pearson-int8-codes.*")))
        assert codes.dtype == np.uint8 and codes.shape == (len(x), 24)
        hits = index.search_batch(x[:4], K, mode="exact", exclude_self=False)
        index.set_precision("float16")
        assert index.precision == "float16"
        names = sorted(p.name.split(".")[0] for p in (path / "cache").glob("*.npy"))
        assert names == ["pearson-float16-bias", "pearson-float16-codes", "pearson-float16-err",
                         "pearson-float16-scale"]
        np.testing.assert_array_equal(index.search_batch(x[:4], K, mode="exact", exclude_self=False)[0], hits[0])
        index.set_precision("float32")
        names = sorted(p.name.split(".")[0] for p in (path / "cache").glob("*.npy"))
        assert names == ["pearson-bias", "pearson-prepared"]
        index.set_precision("int8")
    assert file_digest(vec) == before  # the float32 vectors are never touched
    with Index.open(path) as reader:
        assert reader.precision == "int8"
        with pytest.raises(fastimg.IndexReadOnlyError):
            reader.set_precision("float32")
        ids, scores = reader.search_batch(x[:4], K, mode="exact", exclude_self=False)
        np.testing.assert_array_equal(ids, hits[0])
        np.testing.assert_array_equal(scores, hits[1])


def test_reader_follows_a_writers_precision_change(tmp_path):
    x = vectors(600)
    with make(tmp_path / "ix", x, "float32") as writer, Index.open(tmp_path / "ix") as reader:
        first = reader.search_batch(x[:3], K, mode="exact", exclude_self=False)
        writer.set_precision("int8")
        assert reader.precision == "int8" and reader.info()["scan_precision"] == "int8"
        again = reader.search_batch(x[:3], K, mode="exact", exclude_self=False)
        np.testing.assert_array_equal(again[0], first[0])
        np.testing.assert_array_equal(again[1], first[1])


def test_other_metrics_on_a_reduced_index_read_the_float32_rows(tmp_path):
    x = vectors(800)
    with make(tmp_path / "ix", x, "int8") as index:
        for metric in ("chisqr", "l1", "intersect"):
            ids, scores = index.search_batch(x[:3], K, metric=metric, mode="exact", exclude_self=False)
            hib = fastimg.metrics.get_metric(metric).higher_is_better
            for r in range(3):
                assert_topk_equivalent(ids[r], scores[r], oracle_scores(metric, x[r], x), hib, K)


def test_auto_precision_is_resolved_on_the_rows(tmp_path, monkeypatch):
    from fastimg.search import ExactSearcher

    x = vectors(800)
    with make(tmp_path / "ix", x, "auto") as index:
        info = index.info()
        assert info["precision"] == "auto" and info["scan_precision"] == "float32"  # 800 x 24 values: small
        ref = index.search_batch(x[:3], K, mode="exact", exclude_self=False)
        monkeypatch.setattr(ExactSearcher, "AUTO_INT8_MIN_ELEMENTS", 700 * D)
        index.add_vectors(x[:1] * 2, ["more"])
        expect = "float32" if fastimg._core.LOWP_BEST == "scalar" else "int8"
        assert index.info()["scan_precision"] == expect
        index.flush()
        assert any(f"pearson-{expect}" in n or (expect == "float32" and "pearson-prepared" in n)
                   for n in index.info()["caches"])
        got = index.search_batch(x[:3], K, mode="exact", exclude_self=False)
        np.testing.assert_array_equal(got[0], ref[0])


def test_unsupported_precisions_are_argument_errors(tmp_path):
    with pytest.raises(fastimg.ArgumentError, match="precision='int8' needs an inner-product metric.*'chisqr'"):
        Index.create(tmp_path / "a", descriptor="custom", dim=D, metric="chisqr", precision="int8")
    assert not (tmp_path / "a").exists()  # nothing created
    with pytest.raises(fastimg.ArgumentError, match=r"precision must be one of \['float32', 'float16', 'int8', "
                                                    r"'auto'\]; got 'int4'"):
        Index.create(tmp_path / "b", descriptor="custom", dim=D, precision="int4")
    with Index.create(tmp_path / "c", descriptor="custom", dim=D, metric="l1") as index:
        with pytest.raises(fastimg.ArgumentError, match="precision='float16' needs an inner-product metric"):
            index.set_precision("float16")
        index.set_precision("auto")  # auto: float32 for a metric without an inner-product form
        assert index.precision == "auto" and index.info()["scan_precision"] == "float32"
    with Index.create(tmp_path / "d", descriptor="custom", dim=40000, metric="cosine") as index:
        with pytest.raises(fastimg.ArgumentError, match="precision='int8' supports D <= 32768"):
            index.set_precision("int8")
        assert index.precision == "float32"


def test_info_reports_each_representations_bytes(tmp_path):
    x = vectors(300)
    with make(tmp_path / "ix", x, "float16", "l2") as index:
        rep = index.info()["representation_bytes"]
        # by hand: D = 24; float32 rows + bias; float16 codes + scale + err + bias; int8 codes (24 columns)
        assert rep == {"vectors": 300 * 96, "float32": 300 * (96 + 4), "float16": 300 * (48 + 12),
                       "int8": 300 * (24 + 12)}
    with make(tmp_path / "ix2", x, "float32", "chisqr") as index:
        assert index.info()["representation_bytes"] == {"vectors": 300 * 96}


def test_cli_index_precision_info_and_query(corel_dir, tmp_path, capsys):
    photos = sorted(corel_dir.rglob("*.jpg"))[:40]
    folder = tmp_path / "p"
    folder.mkdir()
    for p in photos:
        (folder / p.name).write_bytes(p.read_bytes())
    ref, red = tmp_path / "ref", tmp_path / "red"
    assert cli.main(["index", str(folder), "--index", str(ref), "-q"]) == 0
    assert cli.main(["index", str(folder), "--index", str(red), "--precision", "int8", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["precision"] == "int8"
    assert cli.main(["info", "--index", str(red), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["precision"] == "int8" and info["scan_precision"] == "int8"
    assert info["representation_bytes"]["int8"] < 0.3 * info["representation_bytes"]["float32"]
    assert cli.main(["info", "--index", str(red)]) == 0
    text = capsys.readouterr().out
    assert "precision: int8" in text and "representation_bytes.float16:" in text

    def query(idx):
        assert cli.main(["query", str(folder / photos[0].name), "--index", str(idx), "-k", "15", "--exact",
                         "--json"]) == 0
        return [(h["id"], h["score"]) for h in json.loads(capsys.readouterr().out)["results"]]

    assert query(red) == query(ref)
    # an existing index changes its precision when asked (and keeps it otherwise)
    assert cli.main(["index", str(folder), "--index", str(red), "--precision", "float16", "-q"]) == 0
    assert cli.main(["index", str(folder), "--index", str(red), "-q"]) == 0
    with Index.open(red) as index:
        assert index.precision == "float16"
    assert query(red) == query(ref)
    # unsupported: an error naming the argument, no index left behind
    assert cli.main(["index", str(folder), "--index", str(tmp_path / "bad"), "--metric", "chisqr",
                     "--precision", "int8"]) != 0
    assert "precision='int8' needs an inner-product metric" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()


def test_compaction_keeps_the_precision(tmp_path):
    x = vectors(700)
    path = tmp_path / "ix"
    with make(path, x, "int8", "cosine") as index:
        index.remove(list(range(0, 700, 3)))
        mapping = index.compact()
        assert index.precision == "int8"
        keep = np.flatnonzero(mapping >= 0)
        ids, scores = index.search_batch(x[:4], K, mode="exact", exclude_self=False)
        for r in range(4):
            assert_topk_equivalent(ids[r], scores[r], oracle_scores("cosine", x[r], x[keep]), True, K)
        index.flush()
        assert {n.split(".")[0] for n in index.info()["caches"]} == {"cosine-int8-codes", "cosine-int8-scale",
                                                                   "cosine-int8-err"}
