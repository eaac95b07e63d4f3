"""bench/index_speed.py at a tiny size (``make test`` runs bench/ with FASTIMG_BENCH_SCALE=tiny):
the script runs end to end, every row is timed, and the marked section is written."""
from __future__ import annotations

import math

import index_speed
from conftest import pick


def test_index_speed_runs(tmp_path):
    n = pick(1_500, 20_000, 200_000)
    res = index_speed.measure(n, 16, 1, 1, queries=5, batch=8, exact_queries=3, exact_batch=4, small=300,
                              root=tmp_path / "idx", log=lambda s: None)
    assert len(res["rows"]) == 8
    for what, _, ft, _, et in res["rows"]:
        assert math.isfinite(ft) and math.isfinite(et) and et > 0, what
    # the ANN answers were compared with the exact ones (clustered data, ef 50: a small graph is near exact)
    assert res["recall_ann"] >= 0.9
    text = index_speed.table(res, "tiny")
    md = tmp_path / "index.md"
    md.write_text("# x\n")
    index_speed.write("t", text, md)
    index_speed.write("t", text, md)  # replaced, not appended twice
    doc = md.read_text()
    assert doc.count("<!-- index_speed:t begin -->") == 1 and "| one ANN query per call |" in doc
