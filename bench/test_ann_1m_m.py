"""bench/ann_1m_m.py at a tiny size (``make test`` runs bench/ with FASTIMG_BENCH_SCALE=tiny):
create / truth / build / measure / render run end to end, the exact answers equal a numpy
brute force, and the marked section is written once."""
from __future__ import annotations

import json
import math

import numpy as np

import ann_1m_m
from conftest import pick


def test_ann_1m_m_runs(tmp_path, monkeypatch):
    n, dim = pick(1_500, 20_000, 100_000), 16
    d = tmp_path / "ann"
    base = ["--dir", str(d), "--dim", str(dim), "--threads", "1"]
    ann_1m_m.main(["create", "--data", "clustered", "--n", str(n), "--M", "8", "--ef-construction", "40", *base])
    src = d / f"clustered-n{n}-d{dim}-M8-efc40.fastimg"
    ann_1m_m.main(["truth", "--source", str(src), "--queries", "40", "--check", "10", *base])
    ann_1m_m.main(["build", "--source", str(src), "--M", "12", "--ef-construction", "40", *base])
    assert (d / ann_1m_m._name(12, 40) / ".graph.json").exists()
    assert (src / ".graph.json").exists()

    # the stored exact answers against a numpy brute force of the cosine
    truth = np.load(ann_1m_m.truth_file(d, src, 40))["ids"]
    from fastimg import Index

    with Index.open(src) as ix:
        x = np.asarray(ix.vectors, np.float64)
    q = ann_1m_m.clustered(40, dim, seed=ann_1m_m.QUERY_SEED).astype(np.float64)
    s = (q / np.linalg.norm(q, axis=1, keepdims=True)) @ (x / np.linalg.norm(x, axis=1, keepdims=True)).T
    assert ann_1m_m.recall(truth, np.argsort(-s, axis=1)[:, :10]) >= 0.99  # ties aside

    md = tmp_path / "index.md"
    md.write_text("# x\n")
    monkeypatch.setattr(ann_1m_m, "MD", md)
    ann_1m_m.main(["measure", "--source", str(src), "--no-source", "--queries", "40", "--timed", "10",
                   "--exact-queries", "2", "--rounds", "1", "--ef", "10", "100", "--write", *base])
    (saved,) = d.glob("results-*.json")
    run = json.loads(saved.read_text())
    assert [(r["M"], r["ef_construction"]) for r in run["results"]] == [(8, 40), (12, 40)]
    for res in run["results"]:
        assert [row["ef"] for row in res["rows"]] == [10, 100]
        for row in res["rows"]:
            assert all(math.isfinite(row[k]) and row[k] > 0 for k in ("index_s", "raw_s", "exact_s"))
        assert res["rows"][-1]["recall"] >= 0.9  # ef 100 on a tiny graph: near exact
    ann_1m_m.main(["render", str(saved), "--write"])  # replaced, not appended twice
    doc = md.read_text()
    assert doc.count(ann_1m_m.BEGIN) == 1 and "| clustered | 12 | 40 |" in doc and "At recall@10 = 0.95" in doc


def test_at_recall_interpolates():
    rows = [{"ef": 10, "recall": 0.90, "index_s": 1e-4, "exact_s": 1e-2},
            {"ef": 30, "recall": 1.00, "index_s": 4e-4, "exact_s": 1e-2}]
    ef, t, ratio = ann_1m_m.at_recall(rows, 0.95)
    assert abs(ef - 20) < 1e-9 and abs(t - 2e-4) < 1e-12 and abs(ratio - 50) < 1e-6  # halfway: geometric mean of the times
    assert ann_1m_m.at_recall(rows, 0.85)[0] == 10
    assert ann_1m_m.at_recall(rows[:1], 0.95) is None
