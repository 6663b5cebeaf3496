"""Prometheus metrics of one app, in its own ``CollectorRegistry`` (several apps can share a process).

``GET /metrics`` exposes them: requests and errors by route and status, latency, images per batched forward
pass, time waited in the batch queue, and the source forward passes actually run (the runtime counts them:
one per batch and image size, and one more when some of its tasks fall back to PyTorch).
"""

from __future__ import annotations

import time

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class Metrics:
    """The counters and histograms of one server (see the module docstring)."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("snowhub_requests", "HTTP requests answered.", ["route", "method", "status"],
                                registry=r)
        self.errors = Counter("snowhub_request_errors", "HTTP requests answered with a 4xx or 5xx status.",
                              ["route", "status"], registry=r)
        self.latency = Histogram("snowhub_request_seconds", "Time to answer a request (s).", ["route"],
                                 buckets=_LATENCY_BUCKETS, registry=r)
        self.batch_images = Histogram("snowhub_batch_images", "Images per batched forward pass.",
                                      buckets=_BATCH_BUCKETS, registry=r)
        self.batch_requests = Histogram("snowhub_batch_requests", "Requests answered by one batched forward pass.",
                                        buckets=_BATCH_BUCKETS, registry=r)
        self.queue_wait = Histogram("snowhub_queue_wait_seconds", "Time a request waited for its batch (s).",
                                    buckets=_LATENCY_BUCKETS, registry=r)
        self.images = Counter("snowhub_images", "Images answered (per image size pass).", registry=r)
        self.source_passes = Counter("snowhub_source_passes", "Forward passes of the source model.", registry=r)
        self.tasks_ready = Gauge("snowhub_tasks_ready", "Tasks served now.", registry=r)
        self.tasks_unavailable = Gauge("snowhub_tasks_unavailable", "Tasks not served (files failed their check).",
                                       registry=r)

    def observe(self, route: str, method: str, status: int, seconds: float) -> None:
        self.requests.labels(route, method, str(status)).inc()
        self.latency.labels(route).observe(seconds)
        if status >= 400:
            self.errors.labels(route, str(status)).inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)


class MetricsMiddleware:
    """ASGI middleware: each HTTP request's route template, status and latency into :class:`Metrics`."""

    def __init__(self, app, metrics: Metrics):
        self.app, self.metrics = app, metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start, status = time.perf_counter(), [500]

        async def sending(message):
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            route = getattr(scope.get("route"), "path", "unmatched")
            self.metrics.observe(route, scope["method"], status[0], time.perf_counter() - start)
