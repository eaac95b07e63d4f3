"""Load test of ``fastimg serve`` on loopback: searches while a writer adds images.

Builds (once, kept in --workdir) an index of --images generated 384x256 JPEGs with the
``classic`` descriptor, copies it for the run (every run starts from the same --images
entries), starts ``fastimg serve`` on a free 127.0.0.1 port (``--token-file`` when there
is a writer; --serve-arg adds options, e.g. ``--serve-arg=--decode-workers=3``), loads it
for --seconds, stops by itself and prints a Markdown table (p50/p99 latency and requests/s
per kind); --json writes the figures.  Two ways to load it:

``--mode closed`` (default): --clients client threads, each alternating an upload search
    (``POST /api/search`` of a 384x256 JPEG that is not in the index, k=10) and a search by
    id (``GET /api/similar/{id}``, k=10), each sending its next request when the previous
    one is answered, while one writer thread uploads new images (``POST /api/images``) at
    --write-rate per second.  The latency is the wall time of each HTTP call.  With N
    clients the server always has about N requests in hand: the latency then measures
    the queue (N / throughput), and the rates the server's throughput.

``--mode open``: requests are sent at fixed rates whatever the answers -- --by-id-rate
    searches by id, --upload-rate upload searches and --write-rate adds per second, each
    stream evenly spaced (the streams out of phase) -- by --connections sender threads
    (each with its own keep-alive connection).  The latency of a request is measured from
    the time it was *scheduled* to be sent, not from when a sender got to it (as wrk2
    does): a server that falls behind shows it as latency (requests waiting for a sender
    or for the server), instead of the client slowing down to its pace (coordinated
    omission).  After --seconds nothing new is scheduled and what is in flight finishes
    (at most --drain seconds; requests still unsent then are reported as failed).

Exit status 1 when any request failed (a non-2xx answer, a connection error, or an open-loop
request left unsent): the test suite runs both modes at a small size
(tests/test_serve_load.py).

    python bench/serve_load.py                          # closed loop: 10,000 images, 16 clients, 30 s
    python bench/serve_load.py --mode open              # open loop: 50 by id + 10 uploads + 2 adds per s
    python bench/serve_load.py --images 200 --seconds 3 --clients 4     # a quick look

The clients are threads of this process, on the same machine as the server: they share its
cores.  The figures include the CPU seconds the server (its process and decoder processes)
and this client process used, per second of the run.
"""
from __future__ import annotations

import argparse
import json
import os
import queue
import random
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))

TOKEN = "load-test-token"
KINDS = ("upload search", "search by id", "add (writer)")


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
    """The index of ``n`` generated images in ``workdir`` (made once, reused; never served
    itself: :func:`run` serves a copy)."""
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


def _cpu_seconds(pid: int) -> float:
    """CPU seconds (user + system) of process ``pid`` and its descendants so far (Linux)."""
    tick = os.sysconf("SC_CLK_TCK")
    parents: dict[int, int] = {}
    times: dict[int, float] = {}
    for p in os.listdir("/proc"):
        if p.isdigit():
            try:
                with open(f"/proc/{p}/stat") as fh:
                    fields = fh.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            parents[int(p)] = int(fields[1])
            times[int(p)] = (int(fields[11]) + int(fields[12])) / tick
    total, todo = 0.0, [pid]
    while todo:
        p = todo.pop()
        total += times.get(p, 0.0)
        todo += [c for c, pp in parents.items() if pp == p]
    return total


class Recorder:
    """Latencies and errors by kind (thread-safe)."""

    def __init__(self) -> None:
        self.lat: dict[str, list[float]] = {k: [] for k in KINDS}
        self.service: dict[str, list[float]] = {k: [] for k in KINDS}
        self.errors: list[str] = []
        self.lock = threading.Lock()

    def record(self, kind: str, latency: float, service: float, resp: Any, exc: Optional[Exception]) -> None:
        with self.lock:
            if exc is not None or resp is None or resp.status_code >= 300:
                self.errors.append(f"{kind}: {exc!r}" if exc is not None
                                   else f"{kind}: {resp.status_code} {resp.text[:200]}")
            else:
                self.lat[kind].append(latency)
                self.service[kind].append(service)


def _requester(images: int, queries: list[bytes], news: Any, news_lock: threading.Lock
               ) -> Callable[[Any, str, random.Random], Any]:
    """``send(client, kind, rnd)``: one request of that kind."""
    def send(c: Any, kind: str, rnd: random.Random) -> Any:
        if kind == "upload search":
            return c.post("/api/search", files={"image": ("q.jpg", queries[rnd.randrange(len(queries))], "image/jpeg")},
                          data={"k": "10"})
        if kind == "search by id":
            return c.get(f"/api/similar/{rnd.randrange(images)}", params={"k": 10})
        with news_lock:
            seed = next(news)
        return c.post("/api/images", files={"image": ("new.jpg", jpeg(seed), "image/jpeg")},
                      headers={"Authorization": f"Bearer {TOKEN}"})
    return send


def closed_loop(base: str, args: argparse.Namespace, rec: Recorder, send: Callable) -> float:
    """--clients threads alternating upload and by-id searches, a writer at --write-rate."""
    import httpx

    stop = threading.Event()

    def client(seed: int) -> None:
        rnd = random.Random(seed)
        with httpx.Client(base_url=base, timeout=60) as c:
            i = seed
            while not stop.is_set():
                i += 1
                kind = "upload search" if i % 2 else "search by id"
                t0 = time.perf_counter()
                try:
                    resp, exc = send(c, kind, rnd), None
                except httpx.HTTPError as e:
                    resp, exc = None, e
                dt = time.perf_counter() - t0
                rec.record(kind, dt, dt, resp, exc)

    def writer() -> None:
        rnd = random.Random(-1)
        with httpx.Client(base_url=base, timeout=60) as c:
            while not stop.is_set():
                t0 = time.perf_counter()
                try:
                    resp, exc = send(c, "add (writer)", rnd), None
                except httpx.HTTPError as e:
                    resp, exc = None, e
                dt = time.perf_counter() - t0
                rec.record("add (writer)", dt, dt, resp, exc)
                stop.wait(max(0.0, 1.0 / args.write_rate - (time.perf_counter() - t0)))

    threads = [threading.Thread(target=client, args=(s,)) for s in range(args.clients)]
    if args.write_rate > 0:
        threads.append(threading.Thread(target=writer))
    t_start = time.perf_counter()
    for t in threads:
        t.start()
    time.sleep(args.seconds)
    stop.set()
    for t in threads:
        t.join()
    return time.perf_counter() - t_start


def schedule(rates: dict[str, float], seconds: float) -> list[tuple[float, str]]:
    """``(offset in seconds, kind)`` of every request of the run, in time order: each
    kind evenly spaced at its rate, the kinds out of phase with each other."""
    events = []
    for n, (kind, rate) in enumerate((k, r) for k, r in rates.items() if r > 0):
        phase = (n + 0.5) / (len(rates) + 1) / rate
        events += [(phase + i / rate, kind) for i in range(int(seconds * rate))]
    return sorted(events)


def open_loop(base: str, args: argparse.Namespace, rec: Recorder, send: Callable) -> float:
    """Requests at fixed rates, latency from the scheduled send time (see the module docstring)."""
    import httpx

    rates = {"search by id": args.by_id_rate, "upload search": args.upload_rate, "add (writer)": args.write_rate}
    events = schedule(rates, args.seconds)
    todo: "queue.Queue[Optional[tuple[float, str]]]" = queue.Queue()
    abandon = threading.Event()

    def sender(seed: int) -> None:
        rnd = random.Random(seed)
        with httpx.Client(base_url=base, timeout=60) as c:
            while True:
                item = todo.get()
                if item is None or abandon.is_set():
                    return
                due, kind = item
                t0 = time.perf_counter()
                try:
                    resp, exc = send(c, kind, rnd), None
                except httpx.HTTPError as e:
                    resp, exc = None, e
                t1 = time.perf_counter()
                rec.record(kind, t1 - due, t1 - t0, resp, exc)

    threads = [threading.Thread(target=sender, args=(s,), daemon=True) for s in range(args.connections)]
    for t in threads:
        t.start()
    t_start = time.perf_counter() + 0.05
    for offset, kind in events:  # this thread is the scheduler
        due = t_start + offset
        delay = due - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        todo.put((due, kind))
    for _ in threads:
        todo.put(None)
    deadline = time.perf_counter() + args.drain
    for t in threads:
        t.join(max(0.0, deadline - time.perf_counter()))
    if any(t.is_alive() for t in threads):
        abandon.set()
        left = sum(1 for item in list(todo.queue) if item is not None)
        with rec.lock:
            rec.errors.append(f"{left} scheduled requests still unsent {args.drain:g} s after the last one was due "
                              "(the server could not keep up)")
    return time.perf_counter() - t_start


def run(args: argparse.Namespace) -> dict:
    import httpx

    from _serve import running_server

    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="fastimg-load-"))
    workdir.mkdir(parents=True, exist_ok=True)
    built = build_index(workdir, args.images)
    index = workdir / f"run-{args.images}.fastimg"  # every run starts from the same entries
    shutil.rmtree(index, ignore_errors=True)
    shutil.copytree(built, index)
    serve_args = list(args.serve_arg or [])
    if args.write_rate > 0:
        token = workdir / "token"
        token.write_text(TOKEN + "\n")
        serve_args += ["--token-file", str(token)]
    queries = [jpeg(10_000_000 + i) for i in range(32)]
    send = _requester(args.images, queries, iter(range(20_000_000, 30_000_000)), threading.Lock())
    rec = Recorder()
    load_before = os.getloadavg()
    with running_server(index, *serve_args, log=workdir / "serve.log") as (base, proc):
        with httpx.Client(base_url=base, timeout=60) as c:  # a few of each first (nothing to warm in the figures)
            for i in range(4):
                c.get(f"/api/similar/{i}")
                c.post("/api/search", files={"image": ("q.jpg", queries[i], "image/jpeg")})
        server_cpu0, client_cpu0 = _cpu_seconds(proc.pid), time.process_time()
        if args.mode == "open":
            elapsed = open_loop(base, args, rec, send)
        else:
            elapsed = closed_loop(base, args, rec, send)
        server_cpu, client_cpu = _cpu_seconds(proc.pid) - server_cpu0, time.process_time() - client_cpu0
        with httpx.Client(base_url=base) as c:
            final_count = c.get("/api/info").json()["count"]
    out: dict[str, Any] = {
        "mode": args.mode, "images": args.images, "seconds": round(elapsed, 2), "write_rate": args.write_rate,
        "serve_args": list(args.serve_arg or []), "cores": len(os.sched_getaffinity(0)),
        "load_before": [round(x, 2) for x in load_before], "load_after": [round(x, 2) for x in os.getloadavg()],
        "server_cpu_per_s": round(server_cpu / elapsed, 2), "client_cpu_per_s": round(client_cpu / elapsed, 2),
        "final_count": final_count, "errors": rec.errors,
        "kinds": {k: {"requests": len(v), "per_second": round(len(v) / elapsed, 1),
                      "p50_ms": round(1000 * percentile(v, 50), 2), "p99_ms": round(1000 * percentile(v, 99), 2),
                      "max_ms": round(1000 * max(v), 2) if v else None,
                      "mean_ms": round(1000 * statistics.fmean(v), 2) if v else None,
                      "service_p99_ms": round(1000 * percentile(rec.service[k], 99), 2)}
                  for k, v in rec.lat.items() if v or (k != "add (writer)" or args.write_rate > 0)},
    }
    if args.mode == "open":
        out["rates"] = {"search by id": args.by_id_rate, "upload search": args.upload_rate,
                        "add (writer)": args.write_rate}
        out["connections"] = args.connections
    else:
        out["clients"] = args.clients
    return out


def table(out: dict) -> str:
    open_ = out["mode"] == "open"
    head = "| request | offered /s | answered | per second | p50 ms | p99 ms | max ms | p99 from send ms |" if open_ \
        else "| request | requests | per second | p50 ms | p99 ms | max ms |"
    rows = [head, "| --- " + "| ---: " * (head.count("|") - 2) + "|"]
    for kind, f in out["kinds"].items():
        if open_:
            rows.append(f"| {kind} | {out['rates'][kind]:g} | {f['requests']} | {f['per_second']} | {f['p50_ms']} | "
                        f"{f['p99_ms']} | {f['max_ms']} | {f['service_p99_ms']} |")
        else:
            rows.append(f"| {kind} | {f['requests']} | {f['per_second']} | {f['p50_ms']} | {f['p99_ms']} | "
                        f"{f['max_ms']} |")
    who = (f"open loop, {out['connections']} connections" if open_ else
           f"{out['clients']} closed-loop clients" + (" + 1 writer" if out["write_rate"] > 0 else ""))
    extra = f" (fastimg serve {' '.join(out['serve_args'])})" if out["serve_args"] else ""
    rows.append(f"\n{out['images']:,} images, {who}{extra}, {out['seconds']} s, {out['cores']} cores; CPU used "
                f"per second: server {out['server_cpu_per_s']}, clients {out['client_cpu_per_s']}; load average "
                f"before {out['load_before']} after {out['load_after']}; errors: {len(out['errors'])}; images at "
                f"the end: {out['final_count']:,}")
    return "\n".join(rows)


def main(argv: "list[str] | None" = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--mode", choices=("closed", "open"), default="closed",
                   help="closed: --clients threads each waiting for its answer; open: fixed request rates, "
                        "latency from the scheduled send time (default closed)")
    p.add_argument("--images", type=int, default=10_000, help="indexed images (default 10,000)")
    p.add_argument("--seconds", type=float, default=30.0, help="duration of the load (default 30)")
    p.add_argument("--clients", type=int, default=16, help="closed loop: concurrent search clients (default 16)")
    p.add_argument("--by-id-rate", type=float, default=50.0, help="open loop: searches by id per second (50)")
    p.add_argument("--upload-rate", type=float, default=10.0, help="open loop: upload searches per second (10)")
    p.add_argument("--connections", type=int, default=32,
                   help="open loop: sender threads, one keep-alive connection each (default 32)")
    p.add_argument("--drain", type=float, default=30.0,
                   help="open loop: seconds allowed after the last scheduled request (default 30)")
    p.add_argument("--write-rate", type=float, default=2.0,
                   help="images added per second by the writer (default 2; 0: no writer, a read-only server)")
    p.add_argument("--serve-arg", action="append", metavar="ARG",
                   help="an extra argument of `fastimg serve` (repeatable), e.g. --serve-arg=--workers=2")
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
