"""``/metrics`` in Prometheus text format: request latency, events, queue depth, job durations, versions.

Each app has its own registry (tests build many apps in one process). Queue depth and job durations are read from
Redis at scrape time (the workers record durations there, ``JobQueue.record_duration``); versions per project from
the model registry. ``?format=json`` keeps the plain event counters as JSON.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

from fastapi import FastAPI, Request
from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric, SummaryMetricFamily

from ml_backend.jobs.queue import JobQueue, QueueUnavailable
from ml_backend.learning.registry import Registry

log = logging.getLogger(__name__)


class _BackendCollector:
    """Collects at scrape time what lives elsewhere: event counters, Redis queue state, registry versions."""

    def __init__(self, counters: Counter[str], queue: Callable[[], JobQueue], registry: Registry):
        self.counters = counters
        self.queue = queue
        self.registry = registry

    def collect(self) -> Iterator[Metric]:
        events = CounterMetricFamily("ml_backend_events", "Requests and tasks handled, by kind", labels=["event"])
        for name, value in sorted(self.counters.items()):
            events.add_metric([name], value)
        yield events
        versions = GaugeMetricFamily("ml_backend_model_versions", "Model versions published", labels=["project"])
        for project_id in self.registry.project_ids():
            versions.add_metric([str(project_id)], len(self.registry.versions(project_id)))
        yield versions
        up = GaugeMetricFamily("ml_backend_redis_up", "1 if the job queue (Redis) answered this scrape")
        try:
            queue = self.queue()
            depth, durations = queue.depth(), queue.durations()
        except QueueUnavailable as exc:
            log.warning("metrics without queue figures: Redis unavailable: %s", exc)
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        jobs = GaugeMetricFamily("ml_backend_queue_jobs", "Jobs waiting in the queue, by state", labels=["state"])
        for state, n in depth.items():
            jobs.add_metric([state], n)
        yield jobs
        summary = SummaryMetricFamily(
            "ml_backend_job_duration_seconds", "Run time of finished jobs", labels=["kind", "outcome"]
        )
        for (kind, outcome), (count, total) in sorted(durations.items()):
            summary.add_metric([kind, outcome], count_value=count, sum_value=total)
        yield summary


def install_metrics(app: FastAPI, counters: Counter[str], queue: Callable[[], JobQueue], registry: Registry) -> None:
    """Time every request (by route template, so ids do not explode the label set) and register the collector."""
    prometheus = CollectorRegistry(auto_describe=False)
    latency = Histogram(
        "ml_backend_request_duration_seconds",
        "HTTP request latency by route",
        ["method", "route", "status"],
        registry=prometheus,
        buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 100),
    )
    prometheus.register(_BackendCollector(counters, queue, registry))  # type: ignore[arg-type]
    app.state.prometheus = prometheus

    @app.middleware("http")
    async def _timed(request: Request, call_next: Any) -> Any:
        started = time.perf_counter()
        response = await call_next(request)
        route = getattr(request.scope.get("route"), "path", "unmatched")
        latency.labels(request.method, route, str(response.status_code)).observe(time.perf_counter() - started)
        return response
