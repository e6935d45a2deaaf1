"""cache_aware in ticket mode: /route with a prompt, its checks, and two replicas on one
Redis sending one conversation to one worker (proxy mode: test_prefix_proxy.py)."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
import pytest

from router.client import prefix_hashes
from router.config import CacheAwareSettings, StoreSettings
from router.prefix import BLOCK_CHARS
from router.signing import KeyRing
from tests.router.helpers import DEV_KEY, FakeWorker, ready_count, router_client, settings, until

STICKY = CacheAwareSettings(balance_abs_s=1e9)  # never out of balance: stickiness alone


def chat(conversation: int, turns: int) -> list[dict[str, str]]:
    """A conversation's messages after `turns` turns, each turn over a block long."""
    msgs = [{"role": "system", "content": f"conversation {conversation}. You are terse."}]
    for t in range(turns):
        msgs.append({"role": "user", "content": f"conv {conversation} turn {t}: " + "q" * 150})
        msgs.append({"role": "assistant", "content": "a" * 150})
    return msgs


async def route(client: Any, **body: Any) -> tuple[int, Any]:
    resp = await client.post(
        "/route", data=orjson.dumps({"endpoint": "demo", "api_key": DEV_KEY, "cost": 1, **body})
    )
    return resp.status, await resp.json()


def store_settings(backend: str, redis_url: str = "") -> StoreSettings:
    if backend == "memory":
        return StoreSettings()
    return StoreSettings(backend="redis", redis_url=redis_url, snapshot_interval_s=0.05)


@pytest.fixture(params=["memory", "redis"])
def backend(request: pytest.FixtureRequest) -> StoreSettings:
    if request.param == "memory":
        return StoreSettings()
    return store_settings("redis", request.getfixturevalue("redis_url"))


async def test_a_conversation_stays_on_its_worker(
    workers: list[FakeWorker], backend: StoreSettings
) -> None:
    s = settings([w.url for w in workers], store=backend, policy="cache_aware", cache_aware=STICKY)
    async with router_client(s) as (client, ctx):
        await until(lambda: ready_count(ctx) == 2)
        first: dict[int, str] = {}
        for turn in range(1, 6):
            for conv in range(4):
                status, t = await route(client, messages=chat(conv, turn))
                assert status == 200 and "url" in t
                assert first.setdefault(conv, t["url"]) == t["url"], (conv, turn)
        # the prompt never reaches the ticket: only the signed fields
        assert "messages" not in t and "prefix_hashes" not in t
        # a client's own hashes of the same prompt route alike
        for conv in range(4):
            hashes = prefix_hashes({"messages": chat(conv, 6)})
            status, t = await route(client, prefix_hashes=hashes)
            assert t["url"] == first[conv]
        text = await (await client.get("/metrics")).text()
        assert 'router_prefix_decisions_total{endpoint="demo",outcome="hit"}' in text


async def test_prompt_and_no_prompt(workers: list[FakeWorker]) -> None:
    s = settings([w.url for w in workers], policy="cache_aware", cache_aware=STICKY)
    async with router_client(s) as (client, ctx):
        await until(lambda: ready_count(ctx) == 2)
        prompt = "p" * BLOCK_CHARS * 3
        _, t = await route(client, prompt=prompt)
        for _ in range(5):
            assert (await route(client, prompt=prompt + "more"))[1]["url"] == t["url"]
        # no prompt: the load policy (least_work) sends it to the idle worker
        status, other = await route(client, cost=100)
        assert status == 200 and other["url"] != t["url"]


async def test_out_of_balance_least_work_wins(workers: list[FakeWorker]) -> None:
    ca = CacheAwareSettings(balance_abs_s=1.0, balance_rel=1.5)
    s = settings([w.url for w in workers], policy="cache_aware", cache_aware=ca)
    async with router_client(s) as (client, ctx):
        await until(lambda: ready_count(ctx) == 2)
        prompt = "p" * BLOCK_CHARS * 3
        urls = [(await route(client, prompt=prompt, cost=100))[1]["url"] for _ in range(6)]
        # unused tickets stay pending: the holder fills up and the other worker is used
        assert len(set(urls)) == 2
        text = await (await client.get("/metrics")).text()
        assert 'outcome="balanced"' in text


@pytest.mark.parametrize(
    "body",
    [
        {"prompt": 3},
        {"messages": "hi"},
        {"messages": [{"content": {"nested": "object"}}]},
        {"prefix_hashes": ["nothex"]},
        {"prefix_hashes": "0123456789abcdef"},
    ],
)
async def test_bad_prompt_fields_are_400(workers: list[FakeWorker], body: dict[str, Any]) -> None:
    s = settings([w.url for w in workers], policy="cache_aware")
    async with router_client(s) as (client, ctx):
        await until(lambda: ready_count(ctx) == 2)
        status, doc = await route(client, **body)
        assert status == 400 and doc["error"]["code"] == "bad_request"


async def test_deep_messages_are_400_not_500(workers: list[FakeWorker]) -> None:
    s = settings([w.url for w in workers], policy="cache_aware")
    async with router_client(s) as (client, ctx):
        await until(lambda: ready_count(ctx) == 2)
        deep: Any = "x"
        for _ in range(200):
            deep = [deep]
        status, doc = await route(client, messages=[{"content": deep}])
        assert status == 400 and doc["error"]["code"] == "json_too_deep"


async def test_other_policies_ignore_the_prompt(workers: list[FakeWorker]) -> None:
    async with router_client(settings([w.url for w in workers])) as (client, ctx):
        await until(lambda: ready_count(ctx) == 2)
        assert (await route(client, prompt=3))[0] == 200  # not read: no 400 either


@pytest.mark.redis
async def test_two_replicas_route_one_conversation_alike(
    redis_url: str, workers: list[FakeWorker]
) -> None:
    s = settings(
        [w.url for w in workers],
        store=store_settings("redis", redis_url),
        policy="cache_aware",
        cache_aware=STICKY,
    )
    ring = KeyRing.ephemeral("ed25519")  # replicas of one fleet share their keys
    async with router_client(s, ring) as (a, ctx_a), router_client(s, ring) as (b, ctx_b):
        await until(lambda: ready_count(ctx_a) == 2 and ready_count(ctx_b) == 2)
        first: dict[int, str] = {}
        for turn in range(1, 7):
            for conv in range(6):
                client = (a, b)[(turn + conv) % 2]  # turns alternate between replicas
                status, t = await route(client, messages=chat(conv, turn))
                assert status == 200
                assert first.setdefault(conv, t["url"]) == t["url"], (conv, turn)
            await asyncio.sleep(0)  # (records are batched: flushed on the next loop pass)
        assert len(set(first.values())) == 2  # and the conversations were spread
