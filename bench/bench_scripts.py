"""The benchmark scripts run as scripts (bench/ci.py, bench/search_precision.py),
once on toy sizes, so they cannot rot: ``make test`` collects this file."""
from __future__ import annotations

import json


def test_ci_script_quick(tmp_path):
    import ci

    out = tmp_path / "ci.json"
    assert ci.main(["--quick", "--rounds", "1", "--out", str(out)]) == 0  # --quick: ratios reported, not checked
    res = json.loads(out.read_text())
    assert set(res["ratios"]) == set(ci.FLOORS)
    assert res["quick"] and all(v > 0 for v in res["ratios"].values())


def test_search_precision_script_tiny(tmp_path, capsys):
    import search_precision

    out = tmp_path / "sp.json"
    assert search_precision.main(["--n", "3000", "--dims", "72", "--metrics", "pearson", "--rounds", "1",
                                  "--out", str(out)]) == 0
    res = json.loads(out.read_text())["results"]["D=72 pearson"]
    assert res["nbytes"]["int8"] < 0.3 * res["nbytes"]["float32"]
    assert "| 72 | pearson |" in capsys.readouterr().out
