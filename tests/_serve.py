"""Helpers of the ``fastimg serve`` tests: a small served collection, a real server
(``fastimg serve`` in a child process on a free loopback port)."""
from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator, Optional

from _photos import photo_tree

CLASSES = ("beaches", "bus", "dinosaurs", "flowers")
PER_CLASS = 10   # the first 8 of each class indexed, the last 2 kept as queries
INDEXED = 8
BIN = Path(sys.executable).with_name("fastimg")


def make_collection(root: Path, descriptor: str = "hsv72") -> tuple[Path, list[Path], list[Path]]:
    """``(index path, indexed files, query files)``: 4 classes, 8 indexed images each
    (Corel-1k copies when ../shared has them, else generated JPEGs) plus an exact
    copy of the first one (``dup.jpg``), and 2 held-out queries per class."""
    import fastimg

    no_shared = os.environ.get("FASTIMG_TEST_NO_SHARED") == "1"  # tests/conftest.py's switch
    files = photo_tree(root / "photos", CLASSES, PER_CLASS, **({"corel": None} if no_shared else {}))
    indexed = [f for i, f in enumerate(files) if i % PER_CLASS < INDEXED]
    queries = [f for i, f in enumerate(files) if i % PER_CLASS >= INDEXED]
    qdir = root / "queries"
    qdir.mkdir()
    queries = [Path(shutil.move(str(q), qdir / f"{q.parent.name}-{q.name}")) for q in queries]
    dup = root / "photos" / "dup.jpg"
    shutil.copy2(indexed[0], dup)
    indexed.append(dup)
    path = root / "photos.fastimg"
    with fastimg.Index.create(path, descriptor) as ix:
        report = ix.add([str(f) for f in indexed], workers=1)
        assert not report.skipped
    return path, indexed, queries


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def running_server(index: Path, *args: str, timeout: float = 120.0,
                   log: Optional[Path] = None) -> Iterator[tuple[str, subprocess.Popen]]:
    """``fastimg serve -i INDEX --port P ARGS`` until the block ends (SIGINT, then
    SIGKILL after 30 s); yields ``(base url, process)`` once ``/healthz`` answers."""
    import httpx

    port = free_port()
    log = log or index.parent / f"serve-{port}.log"
    env = {k: v for k, v in os.environ.items() if k != "FASTIMG_INDEX"}
    with open(log, "wb") as out:
        proc = subprocess.Popen([str(BIN), "serve", "-i", str(index), "--port", str(port), *args],
                                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                raise AssertionError(f"fastimg serve exited with {proc.returncode}:\n{log.read_text()}")
            try:
                if httpx.get(base + "/healthz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise AssertionError(f"fastimg serve did not answer in {timeout:g} s:\n{log.read_text()}")
            time.sleep(0.2)
        yield base, proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
