"""Measured perf: the EWMA of cost per busy second (router/speed.py), from proxied requests
and from a worker's /readyz totals, written for every replica through the store."""

from __future__ import annotations

import pytest

from router.config import StoreSettings
from router.speed import Speeds
from router.state.base import Store
from tests.router.helpers import FakeWorker, ready_count, router_client, settings, until
from tests.router.stores import ready
from tests.router.test_prefix_routing import backend

__all__ = ["backend"]


def test_one_request_at_a_time() -> None:
    s = Speeds(window_s=1.0, alpha=0.5)
    s.start("w", 0.0)
    assert s.finish("w", 100.0, 0.5) is None  # half a busy second: the window is open
    s.start("w", 10.0)  # idle time in between does not count
    assert s.finish("w", 100.0, 10.5) == 200.0  # 200 cost in 1 busy second
    s.start("w", 20.0)
    assert s.finish("w", 50.0, 21.0) == 0.5 * 50.0 + 0.5 * 200.0


def test_overlapping_requests_count_busy_time_once() -> None:
    s = Speeds(window_s=1.0)
    for _ in range(4):
        s.start("w", 0.0)
    got = [s.finish("w", 100.0, t) for t in (0.25, 0.5, 0.75, 1.0)]
    # four streams sharing one busy second: 400 per busy second, not 100
    assert got == [None, None, None, pytest.approx(400.0)]


def test_reports_turn_totals_into_samples() -> None:
    s = Speeds(window_s=1.0, alpha=0.5)
    assert s.report("w", 1000.0, 10.0) is None  # a baseline
    assert s.report("w", 1100.0, 10.5) is None
    assert s.report("w", 1300.0, 11.0) == 300.0  # 300 over one busy second
    assert s.report("w", 5.0, 1.0) is None  # restarted: totals went down, a new baseline
    assert s.report("w", 105.0, 2.0) == 0.5 * 100.0 + 0.5 * 300.0
    s.forget("w")
    assert s.perf("w") is None
    assert s.finish("unknown", 1.0, 1.0) is None


async def test_set_perf_only_for_a_known_worker(store: Store) -> None:
    wid = await ready(store, "demo", "http://127.0.0.1:1")
    assert await store.set_perf(wid, 321.5)
    w = await store.get_worker(wid)
    assert w is not None and w.perf == 321.5
    assert await store.remove_worker(wid)
    assert not await store.set_perf(wid, 1.0)
    assert await store.get_worker(wid) is None  # a late write never brings it back


async def test_ticket_mode_measures_from_readyz_and_ignores_stated_perf(
    backend: StoreSettings,
) -> None:
    fast, slow = FakeWorker(), FakeWorker()
    for w in (fast, slow):
        w.body = {"ready": True, "perf": 5.0, "completed_cost": 0.0, "busy_s": 0.0}
        await w.start()
    try:
        s = settings([fast.url, slow.url], store=backend, perf_mode="measured")
        async with router_client(s) as (_, ctx):
            await until(lambda: ready_count(ctx) == 2)
            await until(lambda: fast.polls >= 3 and slow.polls >= 3)
            perfs = {w.url: w.perf for w in ctx.snapshot.endpoint("demo")}
            assert perfs == {fast.url: 100.0, slow.url: 100.0}  # the stated 5.0 is ignored
            fast.body = {**fast.body, "completed_cost": 4000.0, "busy_s": 2.0}
            slow.body = {**slow.body, "completed_cost": 100.0, "busy_s": 2.0}

            def measured() -> bool:
                got = {w.url: w.perf for w in ctx.snapshot.endpoint("demo")}
                return got == {fast.url: 2000.0, slow.url: 50.0}

            await until(measured)
    finally:
        for w in (fast, slow):
            await w.stop()
