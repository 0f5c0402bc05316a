"""Prometheus metrics of one app, in a private registry (tests build many apps per process).

Exposed at ``GET /metrics``: requests by route, method, status and the model version
that answered; request latency; batch sizes and model time per stage; reloads by
result; the seconds the last model took to load and warm up; rejected uploads by
reason; queue depth and in-flight requests; the served model as an info metric.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    disable_created_metrics,
    generate_latest,
)

if TYPE_CHECKING:
    from pillsnap.serve.model import ServedModel

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
BATCH_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 64)
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


class Metrics:
    def __init__(self) -> None:
        disable_created_metrics()  # no *_created twin of every series (process-wide switch)
        self.registry = r = CollectorRegistry()
        self.requests = Counter(
            "pillsnap_http_requests",
            "HTTP requests by route template, method, status and the model version that answered",
            ["route", "method", "status", "model_version"],
            registry=r,
        )
        self.latency = Histogram(
            "pillsnap_http_request_duration_seconds",
            "Request latency",
            ["route"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.batch_size = Histogram(
            "pillsnap_batch_size",
            "Requests per model call",
            ["stage"],
            buckets=BATCH_BUCKETS,
            registry=r,
        )
        self.batch_seconds = Histogram(
            "pillsnap_batch_seconds",
            "Model time per batch",
            ["stage"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.reloads = Counter(
            "pillsnap_reloads", "Model reloads by result", ["result"], registry=r
        )
        self.load_seconds = Gauge(
            "pillsnap_model_load_seconds",
            "Seconds the served model took to verify, load and warm up",
            registry=r,
        )
        self.rejected = Counter(
            "pillsnap_rejected_uploads", "Uploads refused, by reason", ["reason"], registry=r
        )
        self.in_flight = Gauge("pillsnap_in_flight_requests", "Requests being handled", registry=r)
        self.queue_depth = Gauge(
            "pillsnap_queue_depth", "Requests waiting for a model call", ["stage"], registry=r
        )
        self.model = Info("pillsnap_model", "The served model", registry=r)

    def observe_batch(self, stage: str, size: int, seconds: float) -> None:
        self.batch_size.labels(stage).observe(size)
        self.batch_seconds.labels(stage).observe(seconds)

    def reloaded(self, result: str) -> None:
        """ok, failed (verify / load / warm-up), refused (path, roots), conflict (409)."""
        self.reloads.labels(result).inc()

    def model_changed(self, model: ServedModel) -> None:
        self.model.info(
            {
                "version": model.version,
                "source": model.source,
                "engine": model.engine,
                "precision": ",".join(f"{k}={v}" for k, v in model.precision.items()),
                "degraded": str(model.degraded).lower(),
            }
        )
        self.load_seconds.set(model.load_seconds)

    def render(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


class MetricsMiddleware:
    """Pure ASGI: counts every response (404s as route ``unmatched``: bounded labels)."""

    def __init__(self, app: Any, metrics: Metrics, routes: frozenset[str] = frozenset()):
        self.app, self.metrics, self.routes = app, metrics, routes

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status, start = 500, time.perf_counter()

        async def send_status(message: dict[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        self.metrics.in_flight.inc()
        try:
            await self.app(scope, receive, send_status)
        finally:
            self.metrics.in_flight.dec()
            route = getattr(scope.get("route"), "path", None)
            if route is None:  # answered before routing (413) or no route (404)
                route = scope["path"] if scope["path"] in self.routes else "unmatched"
            version = scope.get("state", {}).get("model_version", "")
            method = scope["method"] if scope["method"] in _METHODS else "other"
            self.metrics.requests.labels(route, method, str(status), version).inc()
            self.metrics.latency.labels(route).observe(time.perf_counter() - start)
