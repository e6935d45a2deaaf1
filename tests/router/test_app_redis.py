"""The router on a real redis-server: outages, recovery, and two replicas sharing state."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import orjson
import pytest

from router.config import StoreSettings
from router.signing import KeyRing
from tests.conftest import RedisServer
from tests.router.helpers import DEV_KEY, FakeWorker, ready_count, router_client, settings, until

pytestmark = pytest.mark.redis


def store(url: str) -> StoreSettings:
    return StoreSettings(backend="redis", redis_url=url, snapshot_interval_s=0.05, timeout_s=0.5)


async def route(client: Any) -> tuple[int, Any]:
    resp = await client.post("/route", data=orjson.dumps({"endpoint": "demo", "api_key": DEV_KEY}))
    return resp.status, await resp.json()


async def test_redis_down_answers_503_then_recovers_with_increasing_reqnums(
    redis_server: RedisServer, redis_url: str, workers: list[FakeWorker]
) -> None:
    async with router_client(settings([w.url for w in workers], store=store(redis_url))) as (
        client,
        ctx,
    ):
        await until(lambda: ready_count(ctx) == 2)
        last: dict[str, int] = {}
        for _ in range(10):
            status, t = await route(client)
            assert status == 200
            last[t["url"]] = t["reqnum"]
        assert len(last) == 2

        redis_server.kill()
        started = time.monotonic()
        status, doc = await route(client)
        assert status == 503 and doc["error"]["code"] == "store_unavailable"
        assert time.monotonic() - started < 1.0
        assert (await client.get("/readyz")).status == 503
        assert (await client.get("/livez")).status == 200

        redis_server.start()  # empty: workers and counters are gone
        # the router re-adds its configured workers and health marks them ready again
        seen: dict[str, int] = {}
        deadline = time.monotonic() + 10
        while len(seen) < 2 and time.monotonic() < deadline:
            status, t = await route(client)
            if status == 200 and "url" in t:
                seen[t["url"]] = t["reqnum"]
            await asyncio.sleep(0.02)
        assert set(seen) == set(last)
        for url, reqnum in seen.items():
            assert reqnum > last[url]
        assert (await client.get("/readyz")).status == 200
        metrics = await (await client.get("/metrics")).text()
        assert "router_store_errors_total" in metrics
        line = next(ln for ln in metrics.splitlines() if ln.startswith("router_store_errors_total"))
        assert float(line.split()[-1]) >= 1


async def test_two_replicas_share_reqnums_and_poll_each_worker_once(
    redis_url: str, workers: list[FakeWorker]
) -> None:
    s = settings([w.url for w in workers], store=store(redis_url))
    ring = KeyRing.ephemeral("ed25519")  # both replicas sign with the same key
    async with router_client(s, ring) as (a, ctx_a), router_client(s, ring) as (b, ctx_b):
        await until(lambda: ready_count(ctx_a) == 2 and ready_count(ctx_b) == 2)
        results = await asyncio.gather(*(route(c) for c in [a, b] * 50))
        by_url: dict[str, list[int]] = {}
        for status, t in results:
            assert status == 200
            by_url.setdefault(t["url"], []).append(t["reqnum"])
        for nums in by_url.values():
            assert len(nums) == len(set(nums))  # distinct across replicas
        # one health poller per worker: over ~1 s both replicas together poll each worker
        # about once per interval (0.05 s), not twice
        before = [w.polls for w in workers]
        await asyncio.sleep(1.0)
        rates = [(w.polls - p) / 1.0 for w, p in zip(workers, before, strict=True)]
        assert all(10 <= r <= 26 for r in rates), rates
