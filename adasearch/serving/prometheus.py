"""The server's Prometheus metrics, in a registry of their own (one per app, so several apps in one process,
as in the tests, never collide), and an ASGI middleware that counts every response by status."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

# Seconds: from a fraction of a millisecond (a batch-1 forward of the demo) to the time-outs of a client.
LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.015, 0.02, 0.03, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class ServingMetrics:
    def __init__(self):
        self.registry = r = CollectorRegistry()
        self.requests = Counter(
            "adasearch_requests", "HTTP responses, by path and status", ["path", "status"], registry=r
        )
        self.latency = Histogram(
            "adasearch_request_seconds",
            "Inference requests: from arrival (body read) to the answer, admitted requests only",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.queue_time = Histogram(
            "adasearch_queue_seconds",
            "Admitted requests' wait before their batch ran",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.batch_size = Histogram("adasearch_batch_size", "Samples per forward", buckets=BATCH_BUCKETS, registry=r)
        self.served = Counter("adasearch_config_served", "Requests answered, by config", ["config"], registry=r)
        self.deadline_misses = Counter(
            "adasearch_deadline_misses", "Requests answered after their deadline (budget_ms or --slo-ms)", registry=r
        )
        self.shed = Counter(
            "adasearch_shed",
            "Requests refused with 503, by reason: admission, late, queue_full, draining, warming_up",
            ["reason"],
            registry=r,
        )

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


class CountResponses:
    """ASGI middleware: adasearch_requests{path, status} for every HTTP response. Paths with a model name in
    them are counted under the route's pattern, so a client cannot grow the label set."""

    def __init__(self, app, metrics: ServingMetrics, known_paths: frozenset):
        self.app, self.metrics, self.known_paths = app, metrics, known_paths

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path = scope.get("path", "")
        if path in self.known_paths:
            label = path
        else:
            label = "/v2/models/{name}..." if path.startswith("/v2/models/") else "other"

        async def counting_send(message):
            if message["type"] == "http.response.start":
                self.metrics.requests.labels(label, str(message["status"])).inc()
            await send(message)

        await self.app(scope, receive, counting_send)
