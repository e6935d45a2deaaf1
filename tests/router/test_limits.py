"""Per-key limits through the router's HTTP surface: 429 with Retry-After, slots freed."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

import orjson
import pytest

from router.config import ApiKeySettings, Settings, StoreSettings
from router.signing import KeyRing
from tests.router.helpers import FakeWorker, ready_count, router_client, settings, until
from tests.router.test_proxy import Upstream, proxy_settings

LIMITED = "limited-key"


def with_limited_key(s: Settings, **limits: Any) -> Settings:
    key = ApiKeySettings(
        hashlib.sha256(LIMITED.encode()).hexdigest(), "limited", endpoints=("demo",), **limits
    )
    return replace(s, api_keys=(*s.api_keys, key))


async def route(client: Any, key: str = LIMITED) -> Any:
    return await client.post("/route", data=orjson.dumps({"endpoint": "demo", "api_key": key}))


@pytest.fixture
async def ups() -> AsyncIterator[list[Upstream]]:
    us = [Upstream("a")]
    for u in us:
        await u.start()
    yield us
    for u in us:
        await u.stop()


async def test_route_over_the_rate_is_429_with_retry_after(workers: list[FakeWorker]) -> None:
    s = with_limited_key(settings([w.url for w in workers]), rate_per_s=0.5, burst=2)
    async with router_client(s) as (client, ctx):
        await until(lambda: ready_count(ctx) == 2)
        assert [(await route(client)).status for _ in range(2)] == [200, 200]
        resp = await route(client)
        assert resp.status == 429
        doc = await resp.json()
        assert doc["error"]["code"] == "rate_limited"
        assert 1 <= int(resp.headers["Retry-After"]) <= 2 and 0 < doc["retry_after_s"] <= 2
        assert LIMITED not in await resp.text()
        # other keys are not limited by this one
        assert all([(await route(client, "dev-key")).status == 200 for _ in range(5)])
        metrics = await (await client.get("/metrics")).text()
        assert 'router_limited_total{endpoint="demo",limit="rate"} 1.0' in metrics


async def test_proxy_slots_bound_streams_and_free_on_hang_up(ups: list[Upstream]) -> None:
    s = with_limited_key(proxy_settings(ups), max_concurrent=1)
    auth = {"Authorization": f"Bearer {LIMITED}"}
    async with router_client(s) as (client, ctx):
        await until(lambda: ready_count(ctx) == 1)
        held = await client.post("/demo/hold", headers=auth)
        assert await held.content.readuntil(b"\n\n") == b"data: first\n\n"
        second = await client.post("/demo/echo", headers=auth)
        assert second.status == 429 and second.headers["Retry-After"] == "1"
        assert (await second.json())["error"]["code"] == "too_many_in_flight"
        held.close()  # the client hangs up mid-stream: the slot comes back
        await asyncio.wait_for(ups[0].cancelled.wait(), 5)

        async def echo_ok() -> bool:
            return (await client.post("/demo/echo", headers=auth)).status == 200

        for _ in range(100):
            if await echo_ok():
                break
            await asyncio.sleep(0.02)
        else:
            raise AssertionError("slot not released after the client hung up")
        # finished requests free their slot too: one after another always fits
        assert all([await echo_ok() for _ in range(3)])
        # the OpenAI path counts against the same slots
        held = await client.post("/demo/hold", headers=auth)
        await held.content.readuntil(b"\n\n")
        resp = await client.post(
            "/v1/completions",
            headers=auth,
            data=orjson.dumps({"model": "demo-model", "prompt": "x"}),
        )
        assert resp.status == 429
        held.close()


@pytest.mark.redis
async def test_limits_hold_across_replicas_sharing_redis(
    redis_url: str, workers: list[FakeWorker]
) -> None:
    store = StoreSettings(backend="redis", redis_url=redis_url, snapshot_interval_s=0.05)
    s = with_limited_key(settings([w.url for w in workers], store=store), rate_per_s=0.2, burst=1)
    ring = KeyRing.ephemeral("ed25519")
    async with router_client(s, ring) as (a, ctx_a), router_client(s, ring) as (b, ctx_b):
        await until(lambda: ready_count(ctx_a) == 2 and ready_count(ctx_b) == 2)
        assert (await route(a)).status == 200
        resp = await route(b)  # the other replica knows the allowance is spent
        assert resp.status == 429 and int(resp.headers["Retry-After"]) >= 4
