"""Prometheus collectors of the router (DESIGN §9), one registry per app.

Labels never carry unbounded values: no worker URLs on request counters, no keys, no ids.
"""

from __future__ import annotations

from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST

__all__ = ["CONTENT_TYPE_LATEST", "Metrics"]

# `*_created` series double the output and nobody graphs them.
disable_created_metrics()  # type: ignore[no-untyped-call]

_LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
                    2.5, 5.0, 10.0, 30.0, 60.0, 120.0)


class Metrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter("router_requests_total", "Requests answered by the router.",
                                ["endpoint", "mode", "code"], registry=r)
        self.duration = Histogram("router_request_duration_seconds",
                                  "Time from request to last byte.", ["endpoint", "mode"],
                                  buckets=_LATENCY_BUCKETS, registry=r)
        self.upstream_ttfb = Histogram("router_upstream_ttfb_seconds",
                                       "Proxy mode: time to the worker's first byte.",
                                       ["endpoint"], buckets=_LATENCY_BUCKETS, registry=r)
        self.inflight_cost = Gauge("router_inflight_cost",
                                   "Estimated cost in flight (reported plus outstanding tickets).",
                                   ["endpoint"], registry=r)
        self.inflight_requests = Gauge("router_inflight_requests",
                                       "Estimated requests in flight.", ["endpoint"], registry=r)
        self.workers = Gauge("router_workers", "Workers by health status.",
                             ["endpoint", "status"], registry=r)
        self.tickets = Counter("router_tickets_total", "Ticket-mode /route outcomes.",
                               ["endpoint", "outcome"], registry=r)
        self.retries = Counter("router_retries_total", "Proxy retries on another worker.",
                               ["endpoint", "reason"], registry=r)
        self.health_checks = Counter("router_health_checks_total", "Health polls made.",
                                     ["endpoint", "result"], registry=r)
        self.limited = Counter("router_limited_total",
                               "Requests refused by a per-key limit (429).",
                               ["endpoint", "limit"], registry=r)
        self.store_errors = Counter("router_store_errors_total",
                                    "Store operations that failed (store unreachable).",
                                    registry=r)

        self._children: dict[tuple[object, ...], Any] = {}

    def child(self, metric: Counter | Histogram | Gauge, *labels: str) -> Any:
        """The labelled child of `metric`, cached: `labels()` costs a lock and a lookup."""
        key = (id(metric), *labels)
        c = self._children.get(key)
        if c is None:
            c = self._children[key] = metric.labels(*labels)
        return c

    def render(self) -> bytes:
        return generate_latest(self.registry)
