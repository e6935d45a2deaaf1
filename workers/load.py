"""The worker's own load: cost and requests in flight, and the admission rule.

How it fits the request path: docs/architecture.md, "The reference worker".
"""

from __future__ import annotations

import asyncio
import math
import time


def admission_delay(
    inflight_cost: float,
    inflight_requests: int,
    cost: float,
    perf: float,
    max_queue_time_s: float,
    max_load: float | None,
) -> int | None:
    """Return None to admit, else the Retry-After seconds (>= 1) for a 429.

    Refuse work that would wait longer than `max_queue_time_s` behind what is in flight,
    or push the in-flight cost over `max_load`. An idle worker takes any request, so a
    single request bigger than the limits is still served somewhere.
    """
    if inflight_requests <= 0:
        return None
    excess_s = (inflight_cost + cost) / perf - max_queue_time_s
    if max_load is not None:
        excess_s = max(excess_s, (inflight_cost + cost - max_load) / perf)
    if excess_s <= 0:
        return None
    return max(1, math.ceil(excess_s))


class Load:
    """In-flight cost and request count; `idle` is set while nothing is in flight.

    Also the running totals a router measures the worker's speed from (its
    `perf_mode = "measured"`): the cost of every request finished, and the seconds with
    at least one request in flight.
    """

    def __init__(self) -> None:
        self.cost = 0.0
        self.requests = 0
        self.idle = asyncio.Event()
        self.idle.set()
        self.completed_cost = 0.0
        self._busy_s = 0.0
        self._busy_since = 0.0

    def add(self, cost: float) -> None:
        if self.requests <= 0:
            self._busy_since = time.monotonic()
        self.cost += cost
        self.requests += 1
        self.idle.clear()

    def release(self, cost: float) -> None:
        self.requests -= 1
        self.cost -= cost
        self.completed_cost += cost
        if self.requests <= 0:
            self.requests = 0
            self.cost = 0.0  # no float drift left behind when idle
            self._busy_s += time.monotonic() - self._busy_since
            self.idle.set()

    def busy_s(self) -> float:
        """Seconds so far with at least one request in flight."""
        if self.requests > 0:
            return self._busy_s + time.monotonic() - self._busy_since
        return self._busy_s
