"""The Prometheus text of ``GET /metrics``, written by hand (a few counters and one
histogram need no library; the format is Prometheus' text exposition format 0.0.4).

Per process: with ``fastimg serve --workers N`` each worker process counts its
own requests (a scrape reaches one of them).
"""
from __future__ import annotations

import bisect
import threading
from typing import Iterable

__all__ = ["Metrics", "LATENCY_BUCKETS", "CONTENT_TYPE"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

#: Upper bounds (seconds) of the request latency histogram.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _num(x: float) -> str:
    if x == int(x) and abs(x) < 1e15:
        return str(int(x))
    return repr(float(x))


class Metrics:
    """Request counts and latencies, by route template (``/api/images/{id}``, not
    the raw path: bounded label values)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._requests: dict[tuple[str, str, str], int] = {}
        # route -> (bucket counts (non-cumulative, + the +Inf one), count, sum)
        self._latency: dict[str, tuple[list[int], int, float]] = {}

    def observe(self, method: str, route: str, status: int, seconds: float) -> None:
        with self._lock:
            key = (method, route, str(status))
            self._requests[key] = self._requests.get(key, 0) + 1
            buckets, count, total = self._latency.get(route) or ([0] * (len(LATENCY_BUCKETS) + 1), 0, 0.0)
            buckets[bisect.bisect_left(LATENCY_BUCKETS, seconds)] += 1
            self._latency[route] = (buckets, count + 1, total + seconds)

    def render(self, gauges: Iterable[tuple[str, str, str, float]]) -> str:
        """The exposition text; ``gauges``: ``(name, type, help, value)`` added at the end."""
        out = ["# HELP fastimg_http_requests_total HTTP requests answered, by method, route and status.",
               "# TYPE fastimg_http_requests_total counter"]
        with self._lock:
            requests = sorted(self._requests.items())
            latency = sorted((r, (list(b), c, s)) for r, (b, c, s) in self._latency.items())
        for (method, route, status), n in requests:
            out.append(f'fastimg_http_requests_total{{method="{_label(method)}",route="{_label(route)}",'
                       f'status="{status}"}} {n}')
        out += ["# HELP fastimg_http_request_duration_seconds Time to answer an HTTP request, by route.",
                "# TYPE fastimg_http_request_duration_seconds histogram"]
        for route, (buckets, count, total) in latency:
            r = _label(route)
            cum = 0
            for bound, n in zip(LATENCY_BUCKETS, buckets):
                cum += n
                out.append(f'fastimg_http_request_duration_seconds_bucket{{route="{r}",le="{_num(bound)}"}} {cum}')
            out.append(f'fastimg_http_request_duration_seconds_bucket{{route="{r}",le="+Inf"}} {count}')
            out.append(f'fastimg_http_request_duration_seconds_count{{route="{r}"}} {count}')
            out.append(f'fastimg_http_request_duration_seconds_sum{{route="{r}"}} {total!r}')
        for name, kind, help_, value in gauges:
            out += [f"# HELP {name} {help_}", f"# TYPE {name} {kind}", f"{name} {_num(value)}"]
        return "\n".join(out) + "\n"
