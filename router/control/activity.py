"""Inferences and demand per endpoint: counted in memory on the data plane, flushed to the
store, so the control-plane leader sees every replica's traffic without a store write
per request.

Every ticket issued (ticket mode and proxy mode alike) counts one inference and its cost
as demand for that second; a request that found no worker to take it (a cold start, a
full fleet) counts its cost as demand too, and asks for an early flush (`urgent`), so
the leader learns at once that an endpoint at zero is wanted. `flush()` adds the
counts to the store about once a second (`Store.add_activity`, `Store.add_demand`).
"""

from __future__ import annotations

import asyncio
import logging
import time

from router.state.base import Store, StoreUnavailable

log = logging.getLogger(__name__)


class Activity:
    def __init__(self) -> None:
        self._counts: dict[str, int] = {}
        self._last: dict[str, float] = {}
        self._demand: dict[str, dict[int, float]] = {}
        self.urgent = asyncio.Event()  # set when a request found no worker: flush now

    def note(self, endpoint: str, now: float | None = None, cost: float = 0.0) -> None:
        """One inference routed to `endpoint` at `now`, weighing `cost`."""
        now = time.time() if now is None else now
        self._counts[endpoint] = self._counts.get(endpoint, 0) + 1
        self._last[endpoint] = now
        self._add_demand(endpoint, now, cost)

    def wanted(self, endpoint: str, cost: float, now: float | None = None) -> None:
        """A request for `endpoint` that no worker could take: demand the leader must see."""
        now = time.time() if now is None else now
        self._last[endpoint] = now
        self._counts.setdefault(endpoint, 0)
        self._add_demand(endpoint, now, max(cost, 1e-3))  # even a free request is wanted
        self.urgent.set()

    def _add_demand(self, endpoint: str, now: float, cost: float) -> None:
        seconds = self._demand.get(endpoint)
        if seconds is None:
            seconds = self._demand[endpoint] = {}
        t = int(now)
        seconds[t] = seconds.get(t, 0.0) + cost

    def pending(self) -> dict[str, tuple[int, float]]:
        return {e: (n, self._last[e]) for e, n in self._counts.items()}

    async def flush(self, store: Store) -> None:
        """Add what was counted since the last flush to the store (run_once of its loop)."""
        self.urgent.clear()
        if not self._counts and not self._demand:
            return
        batch, demand = self.pending(), self._demand
        self._counts, self._last, self._demand = {}, {}, {}
        try:
            await store.add_activity(batch)
            await store.add_demand(demand)
        except StoreUnavailable:
            for e, (n, t) in batch.items():  # keep them for the next flush
                self._counts[e] = self._counts.get(e, 0) + n
                self._last[e] = max(self._last.get(e, 0.0), t)
            for e, seconds in demand.items():
                for t, c in seconds.items():
                    self._add_demand(e, float(t), c)
            raise

    async def run_forever(self, store: Store, interval_s: float) -> None:
        """Flush every `interval_s`, or at once when `urgent` is set."""
        task = asyncio.current_task()
        while True:
            try:
                async with asyncio.timeout(interval_s):
                    await self.urgent.wait()
            except TimeoutError:
                pass
            try:
                await self.flush(store)
            except StoreUnavailable as exc:
                log.debug("activity flush: store unavailable: %s", exc)
            except Exception:
                log.exception("activity flush failed")
            if task is not None and task.cancelling():
                raise asyncio.CancelledError
