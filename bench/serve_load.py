"""Load test of ``fastimg serve`` on loopback: concurrent searches while a writer adds images.

Builds (once, kept in --workdir) an index of --images generated 384x256 JPEGs with the
``classic`` descriptor, starts ``fastimg serve --token-file`` on a free 127.0.0.1 port, then
for --seconds runs --clients client threads, each alternating an upload search (a 384x256
JPEG that is not in the index, k=10) and a search by id (``/api/similar/{id}``, k=10), while
one writer thread uploads new images (``POST /api/images``) at --write-rate per second.
Stops by itself; prints a Markdown table (p50/p99 latency and requests/s per kind) and,
with --json, writes the figures.  Exit status 1 when any request failed (a non-2xx answer
or a connection error): the test suite runs it at a small size (tests/test_serve_load.py).

    python bench/serve_load.py                          # full size: 10,000 images, 16 clients, 30 s
    python bench/serve_load.py --images 200 --seconds 3 --clients 4     # a quick look

Latency is measured by the clients (wall time of the HTTP call, client threads in this
process: on a 2-core machine they share the cores with the server).
"""
from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))


def jpeg(seed: int, h: int = 256, w: int = 384) -> bytes:
    """A generated photo-like JPEG: a colour gradient, a few blobs of another hue, noise."""
    import cv2

    rng = np.random.default_rng(seed)
    hue = rng.integers(0, 180)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    hsv = np.empty((h, w, 3), np.uint8)
    hsv[..., 0] = (hue + 20 * np.sin(xx / rng.uniform(20, 80)) + rng.integers(-8, 9)) % 180
    hsv[..., 1] = np.clip(120 + 80 * np.cos(yy / rng.uniform(15, 60)), 0, 255)
    hsv[..., 2] = np.clip(90 + 120 * (yy / h) + rng.normal(0, 12, (h, w)), 0, 255)
    for _ in range(rng.integers(1, 4)):
        cy, cx, r = rng.integers(0, h), rng.integers(0, w), rng.integers(15, 70)
        mask = (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
        hsv[mask] = [(hue + 90 + rng.integers(-20, 21)) % 180, rng.integers(80, 256), rng.integers(80, 256)]
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR), [cv2.IMWRITE_JPEG_QUALITY, 85])
    assert ok
    return buf.tobytes()


def build_index(workdir: Path, n: int) -> Path:
    """The index of ``n`` generated images in ``workdir`` (made once, reused)."""
    import fastimg

    path = workdir / f"load-{n}.fastimg"
    if path.exists():
        with fastimg.Index.open(path) as ix:
            if len(ix) >= n:
                return path
    photos = workdir / f"photos-{n}"
    photos.mkdir(parents=True, exist_ok=True)
    files = []
    for i in range(n):
        f = photos / f"{i // 1000:02d}" / f"img{i:06d}.jpg"
        if not f.exists():
            f.parent.mkdir(exist_ok=True)
            f.write_bytes(jpeg(i))
        files.append(str(f))
    t0 = time.perf_counter()
    with (fastimg.Index.open(path, "a") if path.exists() else fastimg.Index.create(path, "classic")) as ix:
        ix.add(files)
    print(f"indexed {n} images in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    return path


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q)) if values else float("nan")


def run(args: argparse.Namespace) -> dict:
    import httpx

    from _serve import running_server

    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="fastimg-load-"))
    workdir.mkdir(parents=True, exist_ok=True)
    index = build_index(workdir, args.images)
    token = workdir / "token"
    token.write_text("load-test-token\n")
    queries = [jpeg(10_000_000 + i) for i in range(32)]
    news = iter(range(20_000_000, 30_000_000))
    lat: dict[str, list[float]] = {"upload search": [], "search by id": [], "add (writer)": []}
    errors: list[str] = []
    lock = threading.Lock()
    stop = threading.Event()

    def record(kind: str, t0: float, resp: "httpx.Response | None", exc: "Exception | None") -> None:
        dt = time.perf_counter() - t0
        with lock:
            if exc is not None or resp is None or resp.status_code >= 300:
                errors.append(f"{kind}: {exc!r}" if exc is not None else f"{kind}: {resp.status_code} {resp.text[:200]}")
            else:
                lat[kind].append(dt)

    def client(seed: int, base: str) -> None:
        rnd = random.Random(seed)
        with httpx.Client(base_url=base, timeout=60) as c:
            i = seed
            while not stop.is_set():
                i += 1
                t0 = time.perf_counter()
                try:
                    if i % 2:
                        resp = c.post("/api/search", files={"image": ("q.jpg", queries[i % len(queries)], "image/jpeg")},
                                      data={"k": "10"})
                        record("upload search", t0, resp, None)
                    else:
                        resp = c.get(f"/api/similar/{rnd.randrange(args.images)}", params={"k": 10})
                        record("search by id", t0, resp, None)
                except httpx.HTTPError as exc:
                    record("upload search" if i % 2 else "search by id", t0, None, exc)

    def writer(base: str) -> None:
        headers = {"Authorization": "Bearer load-test-token"}
        with httpx.Client(base_url=base, timeout=60, headers=headers) as c:
            while not stop.is_set():
                t0 = time.perf_counter()
                try:
                    resp = c.post("/api/images", files={"image": ("new.jpg", jpeg(next(news)), "image/jpeg")})
                    record("add (writer)", t0, resp, None)
                except httpx.HTTPError as exc:
                    record("add (writer)", t0, None, exc)
                stop.wait(max(0.0, 1.0 / args.write_rate - (time.perf_counter() - t0)))

    load_before = os.getloadavg()
    with running_server(index, "--token-file", str(token), log=workdir / "serve.log") as (base, _):
        with httpx.Client(base_url=base) as c:  # one of each first (nothing to warm in the figures)
            c.get("/api/similar/0")
            c.post("/api/search", files={"image": ("q.jpg", queries[0], "image/jpeg")})
        threads = [threading.Thread(target=client, args=(s, base)) for s in range(args.clients)]
        threads.append(threading.Thread(target=writer, args=(base,)))
        t_start = time.perf_counter()
        for t in threads:
            t.start()
        time.sleep(args.seconds)
        stop.set()
        for t in threads:
            t.join()
        elapsed = time.perf_counter() - t_start
        with httpx.Client(base_url=base) as c:
            final_count = c.get("/api/info").json()["count"]
    out = {
        "images": args.images, "clients": args.clients, "seconds": round(elapsed, 2), "write_rate": args.write_rate,
        "cores": len(os.sched_getaffinity(0)), "load_before": [round(x, 2) for x in load_before],
        "load_after": [round(x, 2) for x in os.getloadavg()], "final_count": final_count, "errors": errors,
        "kinds": {k: {"requests": len(v), "per_second": round(len(v) / elapsed, 1),
                      "p50_ms": round(1000 * percentile(v, 50), 2), "p99_ms": round(1000 * percentile(v, 99), 2),
                      "mean_ms": round(1000 * statistics.fmean(v), 2) if v else None}
                  for k, v in lat.items()},
    }
    return out


def table(out: dict) -> str:
    rows = ["| request | requests | per second | p50 ms | p99 ms |", "| --- | ---: | ---: | ---: | ---: |"]
    for kind, f in out["kinds"].items():
        rows.append(f"| {kind} | {f['requests']} | {f['per_second']} | {f['p50_ms']} | {f['p99_ms']} |")
    rows.append(f"\n{out['images']:,} images, {out['clients']} clients + 1 writer, {out['seconds']} s, "
                f"{out['cores']} cores, load average before {out['load_before']} after {out['load_after']}; "
                f"errors: {len(out['errors'])}; images at the end: {out['final_count']:,}")
    return "\n".join(rows)


def main(argv: "list[str] | None" = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--images", type=int, default=10_000, help="indexed images (default 10,000)")
    p.add_argument("--seconds", type=float, default=30.0, help="duration of the load (default 30)")
    p.add_argument("--clients", type=int, default=16, help="concurrent search clients (default 16)")
    p.add_argument("--write-rate", type=float, default=2.0, help="images added per second by the writer (2)")
    p.add_argument("--workdir", default=None, help="where the images and the index are kept (default: a new temp dir)")
    p.add_argument("--json", default=None, help="write the figures to this file")
    args = p.parse_args(argv)
    out = run(args)
    print(table(out))
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2))
    for e in out["errors"][:20]:
        print("error:", e, file=sys.stderr)
    return 1 if out["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
