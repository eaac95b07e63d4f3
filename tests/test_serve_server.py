"""``fastimg serve`` as a user runs it: a real uvicorn on a free loopback port."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

pytest.importorskip("fastapi", reason="the serve extra (pip install 'fastimg[serve]') is not installed")

import httpx  # noqa: E402

import fastimg  # noqa: E402
from _serve import BIN, make_collection, running_server  # noqa: E402


@pytest.fixture(scope="module")
def collection(tmp_path_factory):
    return make_collection(tmp_path_factory.mktemp("serve_server"))


def _children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as fh:
            return [int(p) for p in fh.read().split()]
    except OSError:
        return []


def test_fastimg_serve_answers_on_loopback_and_stops_cleanly(collection):
    ixpath, indexed, queries = collection
    with running_server(ixpath) as (base, proc):
        decoders = _children(proc.pid)
        assert decoders, "no decoder process"
        page = httpx.get(base + "/")
        assert page.status_code == 200 and "fastimg" in page.text
        with open(queries[0], "rb") as fh:
            resp = httpx.post(base + "/api/search", files={"image": (queries[0].name, fh.read())}, data={"k": "5"})
        assert resp.status_code == 200, resp.text
        with fastimg.Index.open(ixpath) as ix:
            want = ix.search(str(queries[0]), k=5, exclude_self=False)
        assert [r["id"] for r in resp.json()["results"]] == [h.id for h in want]
        bad = httpx.post(base + "/api/search", files={"image": ("x.txt", b"not an image")})
        assert bad.status_code == 415 and bad.json()["error"]["code"] == "not_an_image"
        # bound to 127.0.0.1 only (the default): the listening socket's address
        port = int(base.rsplit(":", 1)[1])
        with open("/proc/net/tcp") as fh:
            listening = [line.split()[1] for line in fh.readlines()[1:] if line.split()[3] == "0A"]
        assert f"0100007F:{port:04X}" in listening and f"00000000:{port:04X}" not in listening
    assert proc.returncode == 0
    for pid in decoders:  # the decoder processes went with the server
        assert not os.path.exists(f"/proc/{pid}") or open(f"/proc/{pid}/stat").read().split()[2] == "Z"


def test_fastimg_serve_with_two_workers(collection):
    ixpath, indexed, queries = collection
    with running_server(ixpath, "--workers", "2", "--decode-workers", "1") as (base, proc):
        # two server processes (uvicorn's workers), each with its own handle and one decoder process
        workers = _children(proc.pid)
        workers = [w for w in workers if _children(w)]  # (uvicorn may also keep a helper process)
        assert len(workers) == 2 and all(len(_children(w)) == 1 for w in workers)
        ids = {httpx.get(base + "/api/similar/1", params={"k": 3}).json()["results"][0]["id"] for _ in range(6)}
        assert len(ids) == 1
        with fastimg.Index.open(ixpath) as ix:
            want = [h.id for h in ix.search(str(queries[1]), k=4, exclude_self=False)]
        with open(queries[1], "rb") as fh:
            body = fh.read()
        for _ in range(4):  # whichever process answers
            resp = httpx.post(base + "/api/search", files={"image": (queries[1].name, body)}, data={"k": "4"})
            assert [r["id"] for r in resp.json()["results"]] == want


def test_fastimg_serve_decode_workers(collection):
    with running_server(collection[0], "--decode-workers", "3") as (base, proc):
        assert len(_children(proc.pid)) == 3
        assert httpx.get(base + "/api/images/0/thumbnail").headers["content-type"] == "image/jpeg"


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN), *args], capture_output=True, text=True, timeout=120,
                          env={k: v for k, v in os.environ.items() if k != "FASTIMG_INDEX"})


def test_fastimg_serve_errors(collection, tmp_path):
    res = run("serve", "-i", str(tmp_path / "missing.fastimg"), "--port", "0")
    assert res.returncode == 1 and "Traceback" not in res.stderr
    assert res.stderr.strip().splitlines()[-1].startswith("fastimg: error: ") and "missing.fastimg" in res.stderr
    token = tmp_path / "token"
    token.write_text("abc\n")
    res = run("serve", "-i", str(collection[0]), "--token-file", str(token), "--workers", "2")
    assert res.returncode == 2 and "--workers 1" in res.stderr
    empty = tmp_path / "empty"
    empty.write_text("\n")
    res = run("serve", "-i", str(collection[0]), "--token-file", str(empty))
    assert res.returncode == 1 and "expected one token" in res.stderr
    res = run("serve", "-i", str(collection[0]), "--decode-workers", "0")
    assert res.returncode == 2 and "--decode-workers" in res.stderr
    res = run("serve", "--help")
    assert res.returncode == 0 and "127.0.0.1" in res.stdout and "--token-file" in res.stdout


def test_fastimg_serve_on_a_port_in_use_says_so(collection):
    import socket

    with socket.socket() as taken:  # another server on the port
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        res = run("serve", "-i", str(collection[0]), "--port", str(port))
    assert res.returncode == 1 and "Traceback" not in res.stderr and "INFO" not in res.stderr
    assert res.stderr.strip() == (f"fastimg: error: 127.0.0.1:{port} is already in use (another server?): "
                                  "choose another --port, or --port 0 for any free one")

