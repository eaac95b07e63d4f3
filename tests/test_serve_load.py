"""The load test of ``fastimg serve`` at a small size (bench/serve_load.py; the full-size
figures are in bench/serve.md): concurrent upload searches and searches by id on
loopback while a writer adds images, for a few seconds; no request may fail, and
every image the writer added is in the index afterwards."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("fastapi", reason="the serve extra (pip install 'fastimg[serve]') is not installed")

import fastimg  # noqa: E402

SCRIPT = Path(__file__).resolve().parents[1] / "bench" / "serve_load.py"


def test_concurrent_searches_while_a_writer_adds(tmp_path):
    out = tmp_path / "load.json"
    res = subprocess.run([sys.executable, str(SCRIPT), "--images", "120", "--seconds", "3", "--clients", "4",
                          "--write-rate", "4", "--workdir", str(tmp_path), "--json", str(out)],
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout + res.stderr
    doc = json.loads(out.read_text())
    assert doc["errors"] == []
    kinds = doc["kinds"]
    assert kinds["upload search"]["requests"] > 0 and kinds["search by id"]["requests"] > 0
    added = kinds["add (writer)"]["requests"]
    assert added > 0
    assert doc["final_count"] == 120 + added
    with fastimg.Index.open(tmp_path / "load-120.fastimg") as ix:
        assert len(ix) == 120 + added
        uploaded = [e for e in ix if e.metadata and e.metadata.get("uploaded_as") == "new.jpg"]
        assert len(uploaded) == added
    assert "| upload search |" in res.stdout
