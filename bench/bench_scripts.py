"""The benchmark scripts run as scripts (bench/ci.py, bench/search_precision.py),
once on toy sizes, so they cannot rot: ``make test`` collects this file."""
from __future__ import annotations

import json
import platform


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


def test_panel_sweep_script_tiny(tmp_path, capsys):
    import panel_sweep

    out = tmp_path / "ps.json"
    assert panel_sweep.main(["--n", "3000", "--dims", "72", "--qs", "2", "6", "--rounds", "1",
                             "--out", str(out)]) == 0
    res = json.loads(out.read_text())["ms_per_query"]["72"]
    assert set(res) == {f"Q={q} {name}" for q in (2, 6) for name in panel_sweep.SHAPES}
    assert "| 72 | 6 |" in capsys.readouterr().out


def test_read_ceiling_kernels_read_every_byte():
    """Each ceiling kernel's result against NumPy over the same bytes (a kernel that
    skipped part of the buffer would not be a ceiling)."""
    import numpy as np
    import read_ceiling

    rng = np.random.default_rng(0)
    x = rng.random((1000, 72), dtype=np.float32)  # 288,000 bytes: whole 64-byte blocks
    fns = read_ceiling.kernels(x, 2)
    assert set(fns) == {"core.read_sum", "numba f32 sum", "numba f32 sum x8", "numba u64 or"}
    want = float(x.sum(dtype=np.float64))
    for name in ("core.read_sum", "numba f32 sum", "numba f32 sum x8"):
        assert abs(float(fns[name]()[0]) - want) < 1e-4 * want, name
    assert int(fns["numba u64 or"]()[0]) == int(np.bitwise_or.reduce(x.reshape(-1).view(np.uint64)))
    codes = rng.integers(0, 256, (999, 70), dtype=np.uint8)  # odd size: the tail of < 64 bytes is left out
    n = codes.size - codes.size % 64
    assert int(read_ceiling.kernels(codes, 2)["numba u64 or"]()[0]) == \
        int(np.bitwise_or.reduce(codes.reshape(-1)[:n].view(np.uint64)))
    assert read_ceiling.best({"read a": 2.0, "read b": 1.0, "other": 0.5}, "read ") == ("b", 1.0)
    vec = read_ceiling.vectorisation()
    if platform.machine() in ("x86_64", "AMD64"):  # packed adds, no gathers: the loop is vectorised
        packed = vec["asm"]["vaddps zmm"] + vec["asm"]["vaddps ymm"] + vec["asm"]["addps xmm"]
        assert vec["asm"]["gathers"] == 0 and packed > 0, vec
