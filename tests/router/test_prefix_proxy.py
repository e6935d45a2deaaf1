"""cache_aware and measured perf in proxy mode, on both server paths (the fast_path fixture
of test_proxy.py): the prompt comes from the body the core parsed for the cost, the speed
from each proxied request's cost and duration."""

from __future__ import annotations

import asyncio

import orjson
from aiohttp import web
from aiohttp.test_utils import TestServer

from router.prefix import BLOCK_CHARS
from router.speed import Speeds
from tests.router.helpers import ready_count, router_client, until
from tests.router.test_prefix_routing import STICKY, chat
from tests.router.test_proxy import AUTH, Upstream, fast_path, proxy_settings, ups

__all__ = ["fast_path", "ups"]  # fixtures: every test here runs on both paths


async def test_proxy_sends_a_conversation_to_one_worker(ups: list[Upstream]) -> None:
    s = proxy_settings(ups, policy="cache_aware", cache_aware=STICKY)
    async with router_client(s) as (client, ctx):
        await until(lambda: ready_count(ctx) == 2)
        who: dict[int, set[str]] = {}
        for turn in range(1, 5):
            for conv in range(4):
                resp = await client.post(
                    "/v1/chat/completions",
                    data=orjson.dumps({"model": "demo-model", "messages": chat(conv, turn)}),
                    headers={**AUTH, "Content-Type": "application/json"},
                )
                assert resp.status == 200
                who.setdefault(conv, set()).add((await resp.json())["who"])
        assert all(len(w) == 1 for w in who.values()), who
        # TGI's inputs on the endpoint's own path too
        body = {"inputs": "i" * BLOCK_CHARS * 2, "parameters": {"max_new_tokens": 4}}
        seen = set()
        for _ in range(4):
            resp = await client.post(
                "/demo/generate",
                data=orjson.dumps(body),
                headers={**AUTH, "Content-Type": "application/json"},
            )
            seen.add((await resp.json())["who"])
        assert len(seen) == 1


async def test_proxy_without_a_json_prompt_is_balanced(ups: list[Upstream]) -> None:
    s = proxy_settings(ups, policy="cache_aware")
    async with router_client(s) as (client, ctx):
        await until(lambda: ready_count(ctx) == 2)
        resp = await client.post("/demo/raw", data=b"not json", headers=AUTH)
        assert resp.status == 200


class Timed:
    """A worker that takes `delay_s` per request."""

    def __init__(self, name: str, delay_s: float) -> None:
        self.name, self.delay_s, self.served = name, delay_s, 0
        self.server: TestServer | None = None

    @property
    def url(self) -> str:
        assert self.server is not None
        return str(self.server.make_url("")).rstrip("/")

    async def start(self) -> None:
        app = web.Application()

        async def readyz(request: web.Request) -> web.Response:
            return web.json_response({"ready": True})

        async def work(request: web.Request) -> web.Response:
            await request.read()
            await asyncio.sleep(self.delay_s)
            self.served += 1
            return web.json_response({"who": self.name})

        app.router.add_get("/readyz", readyz)
        app.router.add_post("/work", work)
        self.server = TestServer(app, host="127.0.0.1")
        await self.server.start_server()


async def test_measured_perf_sends_less_to_a_slow_worker() -> None:
    fast, slow = Timed("fast", 0.005), Timed("slow", 0.1)
    for w in (fast, slow):
        await w.start()
    try:
        s = proxy_settings([fast, slow], perf_mode="measured")  # type: ignore[list-item]
        async with router_client(s) as (client, ctx):
            ctx.fleet.speeds = Speeds(window_s=0.05)  # short windows: a quick test
            await until(lambda: ready_count(ctx) == 2)
            for _ in range(40):
                resp = await client.post("/demo/work", data=b"{}", headers={**AUTH, "X-Cost": "10"})
                assert resp.status == 200
            perf = {w.url: w.perf for w in ctx.snapshot.endpoint("demo")}
            assert perf[fast.url] > 3 * perf[slow.url], perf  # configured: 100 each
            before = slow.served
            for _ in range(10):
                await client.post("/demo/work", data=b"{}", headers={**AUTH, "X-Cost": "10"})
            assert slow.served == before  # least_work now divides by the measured figures
            for local in ctx.snapshot.endpoint("demo"):
                stored = await ctx.store.get_worker(local.id)
                assert stored is not None and stored.perf == local.perf  # every replica's
    finally:
        for w in (fast, slow):
            assert w.server is not None
            await w.server.close()
