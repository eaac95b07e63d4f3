"""The fuzz harness of load_image (tests/fuzz/fuzz_load_image.py) in replay mode (issue 15).

``make fuzz`` runs it under atheris for a million executions; here it replays,
in a child process (a native crash fails the test instead of the run): every
regular file of the bad-input corpus, every past finding kept in
tests/fuzz/findings/, and a few thousand deterministic mutations of the corpus.
The property checked for each input: an array of the documented kind, or
ImageError -- anything else (another exception, a crash) is a finding.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import make_corpus

HARNESS = Path(__file__).resolve().parent / "fuzz" / "fuzz_load_image.py"
FINDINGS = HARNESS.parent / "findings"


def _harness(*args, code: str = "", timeout: float = 600) -> subprocess.CompletedProcess:
    if code:  # run the harness after some set-up code, in the same child process
        cmd = [sys.executable, "-c", code + f"\nimport runpy, sys\nsys.argv = [{str(HARNESS)!r}, *sys.argv[1:]]\n"
               f"runpy.run_path({str(HARNESS)!r}, run_name='__main__')", *map(os.fsdecode, args)]
    else:
        cmd = [sys.executable, str(HARNESS), *map(os.fsdecode, args)]
    return subprocess.run(cmd, capture_output=True, text=True, errors="replace", timeout=timeout)


@pytest.fixture(scope="module")
def seeds(corpus):
    root, entries = corpus
    return make_corpus.regular_files(root, entries)


def test_replay_corpus_and_findings(seeds):
    extra = sorted(FINDINGS.iterdir()) if FINDINGS.is_dir() else []
    res = _harness("--replay", *seeds, *extra)
    assert res.returncode == 0, res.stderr[-3000:]
    assert res.stdout.strip() == f"{len(seeds) + len(extra)} inputs, no finding"


def test_replay_mutations(seeds):
    res = _harness("--mutate", "3000", "--seed", "15", *seeds)
    assert res.returncode == 0, res.stderr[-3000:]
    assert res.stdout.strip() == "3000 inputs, no finding"


def test_harness_reports_a_finding(seeds):
    """The harness can fail: a load_image that lets a non-ImageError escape on PNG data
    (or returns a wrong array for GIF data) is caught, with the input named."""
    plant = ("import numpy as np\n"
             "import fastimg.image as m\n"
             "real = m.load_image\n"
             "def load_image(data, **kw):\n"
             "    if data[:4] == b'\\x89PNG':\n"
             "        raise ValueError('planted')\n"
             "    if data[:3] == b'GIF':\n"
             "        return np.zeros((2, 2), np.uint8)\n"
             "    return real(data, **kw)\n"
             "m.load_image = load_image\n")
    png = [s for s in seeds if s.endswith(b".png")][:1]
    gif = [s for s in seeds if s.endswith(b".gif")][:1]
    for files, what in ((png, "ValueError: planted"), (gif, "load_image returned uint8 (2, 2)")):
        res = _harness("--replay", *files, code=plant)
        assert res.returncode != 0
        assert "finding on input 1" in res.stderr and what in res.stderr


def test_atheris_run_if_installed(seeds, tmp_path):
    """With the fuzz extra installed: a short coverage-guided run from the corpus seeds."""
    pytest.importorskip("atheris", reason="the fuzz extra (atheris) is not installed; `make fuzz` installs it")
    seed_dir = tmp_path / "seeds"
    seed_dir.mkdir()
    (tmp_path / "corpus_out").mkdir()
    for s in seeds:
        (seed_dir / os.path.basename(os.fsdecode(s))).write_bytes(Path(os.fsdecode(s)).read_bytes())
    res = _harness("-runs=3000", "-max_len=65536", "-rss_limit_mb=2048", "-timeout=30",
                   f"-artifact_prefix={tmp_path}/", str(tmp_path / "corpus_out"), str(seed_dir))
    assert res.returncode == 0, res.stderr[-3000:]
    assert "Done 3000 runs" in res.stderr
