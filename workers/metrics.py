"""The worker's Prometheus series, in a registry per app so tests can run many.

The series: docs/architecture.md, "Metrics".
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.registry import Collector

from workers.backends.base import Backend
from workers.load import Load
from workers.verify import ReplayMemory

__all__ = ["CONTENT_TYPE_LATEST", "WorkerMetrics"]

# `*_created` series double the output and nobody graphs them (as in router/metrics.py;
# the switch is process-wide, and the worker need not import the router's module).
disable_created_metrics()  # type: ignore[no-untyped-call]

_TTFB_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class _PrefixCacheCollector(Collector):
    """The backend's prefix-cache totals, read when /metrics is scraped."""

    def __init__(self, backend: Backend) -> None:
        self.backend = backend

    def collect(self) -> Iterator[Metric]:
        got = self.backend.prefix_cache_tokens()
        if got is None:
            return
        hit, miss = got
        yield CounterMetricFamily(
            "worker_prefix_cache_hit_tokens",
            "Prompt tokens found in the backend's prefix KV cache (not prefilled).",
            value=hit,
        )
        yield CounterMetricFamily(
            "worker_prefix_cache_miss_tokens",
            "Prompt tokens not in the backend's prefix KV cache (prefilled).",
            value=miss,
        )


class WorkerMetrics:
    def __init__(self, load: Load, replay: ReplayMemory, backend: Backend | None = None) -> None:
        self._load = load
        r = self.registry = CollectorRegistry()
        if backend is not None:
            r.register(_PrefixCacheCollector(backend))
        self.requests = Counter(
            "worker_requests_total",
            "Inference requests answered, by route template and "
            "status code (499: the client went away).",
            ["route", "code"],
            registry=r,
        )
        self.rejections = Counter(
            "worker_ticket_rejections_total", "Tickets refused, by reason.", ["reason"], registry=r
        )
        inflight_cost = Gauge("worker_inflight_cost", "Cost of the requests in flight.", registry=r)
        inflight_cost.set_function(lambda: load.cost)
        inflight_requests = Gauge("worker_inflight_requests", "Requests in flight.", registry=r)
        inflight_requests.set_function(lambda: load.requests)
        replay_segments = Gauge(
            "worker_replay_segments",
            "Segments of used reqnums held until their tickets expire "
            "(64 reqnums, ~200 bytes each; new tickets get 503 at --replay-max-segments).",
            registry=r,
        )
        replay_segments.set_function(lambda: replay.segments)
        self.ttfb = Histogram(
            "worker_backend_ttfb_seconds",
            "Time from handing a request to the backend until its response started.",
            buckets=_TTFB_BUCKETS,
            registry=r,
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)
