"""Prometheus metrics, one registry per app (so several apps in one process, as in tests, do not clash).

Every label takes a bounded set of values, whatever clients send: the method is one of HTTP's (anything else is
"OTHER"), the route is the matched route's template (or "unmatched"), the status a status code. An unauthenticated
client cannot grow the series.
"""

from __future__ import annotations

import time
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


class Metrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "hhvaem_http_requests",
            "HTTP requests by route and status.",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "hhvaem_http_request_seconds",
            "HTTP request latency by route.",
            ["method", "route"],
            buckets=(0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            registry=self.registry,
        )
        self.batch_requests = Histogram(
            "hhvaem_sampler_batch_requests",
            "Requests served by one sampler call (dynamic batching).",
            buckets=(1, 2, 4, 8, 16, 32, 64, 128),
            registry=self.registry,
        )
        self.batch_seconds = Histogram(
            "hhvaem_sampler_call_seconds",
            "Duration of one sampler call.",
            buckets=(0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            registry=self.registry,
        )
        self.rows = Counter("hhvaem_rows_scored", "Rows run through the sampler.", registry=self.registry)

    def on_request(self, method: str, route: str, status: int, seconds: float) -> None:
        method = method if method in METHODS else "OTHER"
        self.requests.labels(method, route, str(int(status))).inc()
        self.latency.labels(method, route).observe(seconds)

    def on_batch(self, requests: int, rows: int, seconds: float) -> None:
        self.batch_requests.observe(requests)
        self.batch_seconds.observe(seconds)
        self.rows.inc(rows)

    def render(self) -> bytes:
        return generate_latest(self.registry)


class RequestMetrics:
    """Pure ASGI middleware: counts and times every HTTP request by method, route and status (a pure ASGI one, not
    Starlette's BaseHTTPMiddleware, which runs the route in a task group and turns an exception raised while the
    body is read, such as the body limit's 413, into an exception group the framework answers with 400)."""

    def __init__(self, app: Any):
        self.app = app

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def tracking_send(message: dict) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        finally:
            state = getattr(scope["app"].state, "hhvaem", None) if "app" in scope else None
            if state is not None:
                route = getattr(scope.get("route"), "path", "unmatched")
                state.metrics.on_request(scope["method"], route, status, time.perf_counter() - started)
