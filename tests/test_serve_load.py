"""The load test of ``fastimg serve`` at a small size (bench/serve_load.py; the full-size
figures are in bench/serve.md): upload searches and searches by id on loopback while a
writer adds images, for a few seconds, in both of its modes (closed loop: clients that
wait for their answers; open loop: fixed request rates); no request may fail, and every
image the writer added is in the index afterwards."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("fastapi", reason="the serve extra (pip install 'fastimg[serve]') is not installed")

import fastimg  # noqa: E402

SCRIPT = Path(__file__).resolve().parents[1] / "bench" / "serve_load.py"
IMAGES = 120


def load(tmp_path: Path, *args: str) -> tuple[dict, str]:
    out = tmp_path / "load.json"
    res = subprocess.run([sys.executable, str(SCRIPT), "--images", str(IMAGES), "--workdir", str(tmp_path),
                          "--json", str(out), *args], capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout + res.stderr
    doc = json.loads(out.read_text())
    assert doc["errors"] == []
    return doc, res.stdout


def check_writes(tmp_path: Path, doc: dict) -> None:
    added = doc["kinds"]["add (writer)"]["requests"]
    assert added > 0
    assert doc["final_count"] == IMAGES + added
    with fastimg.Index.open(tmp_path / f"run-{IMAGES}.fastimg") as ix:  # the copy that was served
        assert len(ix) == IMAGES + added
        uploaded = [e for e in ix if e.metadata and e.metadata.get("uploaded_as") == "new.jpg"]
        assert len(uploaded) == added


def test_closed_loop_clients_while_a_writer_adds(tmp_path):
    doc, stdout = load(tmp_path, "--seconds", "3", "--clients", "4", "--write-rate", "4")
    kinds = doc["kinds"]
    assert kinds["upload search"]["requests"] > 0 and kinds["search by id"]["requests"] > 0
    check_writes(tmp_path, doc)
    assert "| upload search |" in stdout


def test_open_loop_sends_every_scheduled_request(tmp_path):
    """Open loop: the requests are those of the schedule, however fast the server
    answers (3 s at 20 + 5 + 2 per second), and each one's latency counted from its
    scheduled time is at least its time from the actual send."""
    doc, stdout = load(tmp_path, "--mode", "open", "--seconds", "3", "--by-id-rate", "20", "--upload-rate", "5",
                       "--write-rate", "2", "--connections", "8")
    kinds = doc["kinds"]
    assert [kinds[k]["requests"] for k in ("search by id", "upload search", "add (writer)")] == [60, 15, 6]
    for f in kinds.values():
        assert f["p99_ms"] >= f["service_p99_ms"] > 0
    check_writes(tmp_path, doc)
    assert "| search by id | 20 |" in stdout
