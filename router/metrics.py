"""Prometheus collectors of the router (docs/architecture.md, "Metrics"), one registry per app.

Labels never carry unbounded values: no worker URLs on request counters, no keys, no ids.
Beside the router's own series: `process_*` (CPU, memory, open files of this process) and
`router_build_info`, one series of 1 whose labels say what is running.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Iterator, Sequence
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    ProcessCollector,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.utils import floatToGoString

from router.version import git_commit, package_version

__all__ = ["CONTENT_TYPE_LATEST", "Metrics"]

# `*_created` series double the output and nobody graphs them.
disable_created_metrics()  # type: ignore[no-untyped-call]

_LATENCY_BUCKETS = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    120.0,
)


class _CounterChild:
    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0.0

    def inc(self, amount: float = 1.0) -> None:
        if amount < 0:
            raise ValueError("counters only go up")
        self.value += amount


class _HistogramChild:
    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * len(bounds)  # per bucket, not cumulative
        self.sum = 0.0

    def observe(self, amount: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, amount)] += 1
        self.sum += amount


class _Labelled:
    """A labelled counter or histogram without a lock per update.

    prometheus-client guards every increment with a lock, for threads. The router updates
    these from its event loop only (its signing threads touch no metric), and every proxied
    request updates three of them: the lock and the bucket walk were ~4% of a proxied
    request. Exposed through the registry as a custom collector, in the same format.
    """

    def __init__(
        self,
        kind: str,
        name: str,
        doc: str,
        labelnames: Sequence[str],
        registry: CollectorRegistry,
        buckets: Sequence[float] = (),
    ) -> None:
        self.kind, self.name, self.doc = kind, name, doc
        self.labelnames = tuple(labelnames)
        self.bounds = (*buckets, math.inf) if kind == "histogram" else ()
        self.le = [floatToGoString(b) for b in self.bounds]  # type: ignore[no-untyped-call]
        self._children: dict[tuple[str, ...], Any] = {}
        registry.register(self)

    def labels(self, *values: str) -> Any:
        if len(values) != len(self.labelnames):
            raise ValueError(f"{self.name} takes labels {self.labelnames}")
        c = self._children.get(values)
        if c is None:
            c = self._children[values] = (
                _HistogramChild(self.bounds) if self.kind == "histogram" else _CounterChild()
            )
        return c

    def describe(self) -> list[Metric]:
        return [self._family()]

    def _family(self) -> Metric:
        if self.kind == "histogram":
            return HistogramMetricFamily(self.name, self.doc, labels=self.labelnames)
        return CounterMetricFamily(self.name, self.doc, labels=self.labelnames)

    def collect(self) -> Iterator[Metric]:
        family = self._family()
        for values, c in list(self._children.items()):
            if isinstance(c, _HistogramChild):
                total, buckets = 0, []
                for le, n in zip(self.le, c.counts, strict=True):
                    total += n
                    buckets.append((le, total))
                family.add_metric(list(values), buckets, c.sum)  # type: ignore[attr-defined]
            else:
                family.add_metric(list(values), c.value)  # type: ignore[attr-defined]
        yield family


def _histogram(
    name: str,
    doc: str,
    labelnames: Sequence[str],
    *,
    buckets: Sequence[float],
    registry: CollectorRegistry,
) -> _Labelled:
    return _Labelled("histogram", name, doc, labelnames, registry, buckets)


def _counter(
    name: str, doc: str, labelnames: Sequence[str], *, registry: CollectorRegistry
) -> _Labelled:
    return _Labelled("counter", name, doc, labelnames, registry)


class Metrics:
    def __init__(self, *, algorithm: str = "unknown", store: str = "unknown") -> None:
        """`algorithm` (of the signing key) and `store` (backend) label `router_build_info`."""
        r = self.registry = CollectorRegistry(auto_describe=True)
        ProcessCollector(registry=r)
        build = Gauge(
            "router_build_info",
            "Always 1: the router's version, commit, signing algorithm and store backend.",
            ["version", "commit", "algorithm", "store"],
            registry=r,
        )
        build.labels(package_version(), git_commit(), algorithm, store).set(1)
        self.requests = _counter(
            "router_requests_total",
            "Requests answered by the router.",
            ["endpoint", "mode", "code"],
            registry=r,
        )
        self.duration = _histogram(
            "router_request_duration_seconds",
            "Time from request to last byte.",
            ["endpoint", "mode"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.upstream_ttfb = _histogram(
            "router_upstream_ttfb_seconds",
            "Proxy mode: time to the worker's first byte.",
            ["endpoint"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.inflight_cost = Gauge(
            "router_inflight_cost",
            "Estimated cost in flight (reported plus outstanding tickets).",
            ["endpoint"],
            registry=r,
        )
        self.inflight_requests = Gauge(
            "router_inflight_requests", "Estimated requests in flight.", ["endpoint"], registry=r
        )
        self.capacity = Gauge(
            "router_capacity",
            "Cost per second the endpoint's ready workers process together (their perf).",
            ["endpoint"],
            registry=r,
        )
        self.workers = Gauge(
            "router_workers", "Workers by health status.", ["endpoint", "status"], registry=r
        )
        self.tickets = _counter(
            "router_tickets_total",
            "Ticket-mode /route outcomes.",
            ["endpoint", "outcome"],
            registry=r,
        )
        self.prefix_decisions = _counter(
            "router_prefix_decisions_total",
            "cache_aware decisions for requests with a prompt: hit (sent to a worker "
            "holding its longest cached prefix), balanced (least_work overruled it: "
            "load gap), miss (no worker holds any of it).",
            ["endpoint", "outcome"],
            registry=r,
        )
        self.retries = _counter(
            "router_retries_total",
            "Proxy retries on another worker.",
            ["endpoint", "reason"],
            registry=r,
        )
        self.health_checks = _counter(
            "router_health_checks_total", "Health polls made.", ["endpoint", "result"], registry=r
        )
        self.limited = _counter(
            "router_limited_total",
            "Requests refused by a per-key limit (429).",
            ["endpoint", "limit"],
            registry=r,
        )
        self.store_errors = Counter(
            "router_store_errors_total",
            "Store operations that failed (store unreachable).",
            registry=r,
        )
        # control plane (router/control/)
        self.endpoint_state = Gauge(
            "router_endpoint_state",
            "1 for each endpoint's current lifecycle state.",
            ["endpoint", "state"],
            registry=r,
        )
        self.desired_workers = Gauge(
            "router_autoscaler_desired_workers",
            "Workers the autoscaler wants for the endpoint.",
            ["endpoint"],
            registry=r,
        )
        self.decisions = _counter(
            "router_autoscaler_decisions_total",
            "Autoscaler decisions that changed the fleet.",
            ["endpoint", "direction", "reason"],
            registry=r,
        )
        self.cold_starts = _counter(
            "router_cold_starts_total",
            "Requests that found no ready worker and set a worker starting.",
            ["endpoint"],
            registry=r,
        )
        self.held = Gauge(
            "router_held_requests",
            "Requests held while no worker can take them (cold start).",
            ["endpoint"],
            registry=r,
        )

        self._children: dict[tuple[object, ...], Any] = {}

    def child(self, metric: Any, *labels: str) -> Any:
        """The labelled child of `metric`, cached: `labels()` checks and looks up each time."""
        key = (id(metric), *labels)
        c = self._children.get(key)
        if c is None:
            c = self._children[key] = metric.labels(*labels)
        return c

    def render(self) -> bytes:
        return generate_latest(self.registry)
