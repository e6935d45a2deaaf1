"""Cold starts: requests to an endpoint with no ready worker are held (or told to poll),
one worker is started however many wait, and the held ones go out in order."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import orjson
import pytest

from router.context import RouterContext
from router.control.plane import CONTROL
from tests.control.helpers import ADMIN, control_router, control_settings
from tests.router.helpers import until

COLD = """
[[endpoints]]
name = "cold"
default_cost = 10
[endpoints.health]
interval_s = 0.1
healthy_after = 1
[endpoints.local]
backend = "synthetic"
perf = 400
tokens_per_s = 200
ttft_ms = 10
[endpoints.autoscaling]
min_workers = 0
max_workers = 1
inactivity_timeout_s = 60
max_queue_time_s = 30
max_held_requests = {held}
"""
GEN = {"inputs": "hello", "parameters": {"max_new_tokens": 4}}


def cold_settings(tmp: Path, held: int = 100, extra: str = "") -> Any:
    return control_settings(tmp, extra=COLD.format(held=held) + extra)


def counter(text: str, name: str, endpoint: str) -> float:
    for line in text.splitlines():
        if line.startswith(f"{name}{{") and f'endpoint="{endpoint}"' in line:
            return float(line.rsplit(" ", 1)[1])
    return 0.0


async def started(client: Any) -> int:
    return len(await client.app[CONTROL].providers["local"].observe())


def held(ctx: RouterContext, endpoint: str = "cold") -> int:
    return ctx.holds.held(endpoint)


async def test_a_proxied_request_is_held_through_a_cold_start(tmp_path: Path) -> None:
    async with control_router(cold_settings(tmp_path)) as (client, ctx):
        await asyncio.sleep(0.5)  # a few lifecycle passes: an idle endpoint starts nothing
        assert await started(client) == 0
        plain = asyncio.create_task(client.post("/cold/generate", headers=ADMIN, json=GEN))
        stream = asyncio.create_task(client.post("/cold/generate_stream", headers=ADMIN, json=GEN))
        await until(lambda: held(ctx) == 2, timeout_s=5)
        resp = await plain
        assert resp.status == 200, await resp.text()
        assert resp.headers["X-Cold-Start"] == "1"
        assert "generated_text" in await resp.json()
        resp = await stream
        assert resp.status == 200 and resp.headers["X-Cold-Start"] == "1"
        events = (await resp.read()).decode()
        assert events.count("data:") == 4, events  # streamed in full once forwarded
        assert held(ctx) == 0 and await started(client) == 1
        text = await (await client.get("/metrics")).text()
        assert counter(text, "router_cold_starts_total", "cold") == 1
        # warm now: no hold, no header
        resp = await client.post("/cold/generate", headers=ADMIN, json=GEN)
        assert resp.status == 200 and "X-Cold-Start" not in resp.headers


async def test_a_thousand_route_calls_start_one_worker(tmp_path: Path) -> None:
    # up to 8 workers may run, and the calls' cost (300 in all) needs one: each poll
    # is demand, but the start is one decision for the endpoint, not one per call
    settings = cold_settings(tmp_path)
    from dataclasses import replace

    ep = next(e for e in settings.endpoints if e.name == "cold")
    ep = replace(ep, autoscaling=replace(ep.autoscaling, max_workers=8))
    settings = replace(settings, endpoints=(ep,))
    async with control_router(settings) as (client, ctx):
        body = orjson.dumps({"endpoint": "cold", "api_key": "admin-key", "cost": 0.3})

        async def route() -> dict[str, Any]:
            resp = await client.post("/route", data=body)
            assert resp.status == 200
            return dict(await resp.json())

        first = await asyncio.gather(*(route() for _ in range(1000)))
        polls = [t for t in first if "url" not in t]
        assert polls and all(t["status"]["ready"] == 0 for t in polls)
        # the Vast SDK polls while `url` is absent: the worker comes up, tickets follow
        ticket: dict[str, Any] = {}
        for _ in range(200):
            ticket = await route()
            if "url" in ticket:
                break
            await ctx.fleet.until_ready("cold", 0.1)
        assert "url" in ticket
        assert await started(client) == 1  # one, not a thousand
        text = await (await client.get("/metrics")).text()
        assert counter(text, "router_cold_starts_total", "cold") == 1


async def test_bounds_of_holding(tmp_path: Path) -> None:
    stuck = """
[[runtimes]]
format = "never"
backend = "openai"
command = ["{python}", "-c", "import time; time.sleep(60)"]
ready_timeout_s = 60
"""
    settings = cold_settings(tmp_path, held=2, extra=stuck)
    from dataclasses import replace

    ep = next(e for e in settings.endpoints if e.name == "cold")
    runtime = settings.control.runtime("never")
    auto = replace(ep.autoscaling, max_queue_time_s=1.0)
    ep = replace(ep, local=runtime, autoscaling=auto)
    settings = replace(settings, endpoints=(ep,))
    async with control_router(settings) as (client, ctx):
        waiting = [
            asyncio.create_task(client.post("/cold/generate", headers=ADMIN, json=GEN))
            for _ in range(2)
        ]
        await until(lambda: held(ctx) == 2, timeout_s=5)
        resp = await client.post("/cold/generate", headers=ADMIN, json=GEN)
        doc = await resp.json()
        assert (
            resp.status == 503
            and doc["reason"] == "too_many_held"
            and "Retry-After" in resp.headers
        )
        for task in waiting:
            resp = await task
            doc = await resp.json()
            assert resp.status == 503 and doc["reason"] == "cold_start_timeout", doc
            assert doc["status"]["ready"] == 0 and resp.headers["Retry-After"]
        # a held client that hangs up leaves the queue
        task = asyncio.create_task(client.post("/cold/generate", headers=ADMIN, json=GEN))
        await until(lambda: held(ctx) == 1, timeout_s=5)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await until(lambda: held(ctx) == 0, timeout_s=5)


async def test_the_vast_sdk_polls_through_a_cold_start(tmp_path: Path) -> None:
    """Vast's own client against a scaled-to-zero endpoint: its /route polls (200 without
    `url`, Retry-After) start one worker, and it is served once that worker is ready."""
    import ssl

    serverless = pytest.importorskip("vastai.serverless.client")
    async with control_router(cold_settings(tmp_path)) as (client, _):
        base = str(client.make_url("")).rstrip("/")
        c = serverless.CoroutineServerless(
            api_key="admin-key", autoscaler_url=base, max_poll_interval=0.5
        )
        c._ssl_context = ssl.create_default_context()  # no download of Vast's root cert
        async with c:
            endpoint = serverless.Endpoint(c, name="cold", id=1, api_key="admin-key")
            payload = {"inputs": "What is deep learning?", "parameters": {"max_new_tokens": 8}}
            result = await asyncio.wait_for(
                endpoint.request("/generate", payload, cost=16, timeout=60), 60
            )
        assert result["ok"] is True and result["status"] == 200, result
        assert len(result["response"]["generated_text"].split()) == 8
        assert await started(client) == 1
        text = await (await client.get("/metrics")).text()
        assert counter(text, "router_cold_starts_total", "cold") == 1
