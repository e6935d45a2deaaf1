"""Helpers for tests that run on both stores (the `store` fixture is in conftest.py)."""

from __future__ import annotations

import time

from router.state.base import HealthUpdate, Store


async def ready(
    store: Store, endpoint: str, url: str, perf: float = 100.0, max_load: float | None = None
) -> str:
    """Register a static worker and mark it ready; its id."""
    now = time.time()
    w = await store.upsert_worker(endpoint, url, perf, max_load, "static", now)
    assert w.status == "loading"
    assert await store.record_health(w.id, HealthUpdate("loading", "ready", 1, 0, now, None))
    return w.id


async def report(store: Store, wid: str, cost: float, requests: int, seen: int) -> None:
    """Have a ready worker report its in-flight cost, requests and max reqnum seen."""
    u = HealthUpdate("ready", "ready", 2, 0, time.time(), (cost, requests, seen))
    assert await store.record_health(wid, u)
