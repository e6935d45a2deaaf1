"""router/client.py against the real router and the real worker app, both in process.

The worker registers itself (so the router starts with no worker at all, as in the wait
tests), loads the router's JWKS and checks every ticket; the sync client runs in a thread
so the servers keep running on this loop.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import orjson
import pytest
from aiohttp.test_utils import TestServer

from router.client import (
    AsyncRouterClient,
    NoWorkerReady,
    RouterClient,
    RouteRejected,
    Shape,
    Wait,
    WorkerError,
    route_outcome,
    worker_request,
)
from router.context import RouterContext
from router.signing import KeyRing
from tests.conftest import free_port
from tests.router.helpers import DEV_KEY, WORKER_TOKEN, ready_count, router_client, settings
from tests.workers.helpers import serve_app
from workers.app import build_app
from workers.settings import WorkerSettings

SHAPES: list[Shape] = ["auth_data", "merged", "header"]
PAYLOAD: dict[str, Any] = {"inputs": "What is deep learning?", "parameters": {"max_new_tokens": 4}}


@dataclass
class Stack:
    router_url: str
    ctx: RouterContext

    @asynccontextmanager
    async def worker(self) -> AsyncIterator[TestServer]:
        """A real worker that registers itself with the router and checks tickets."""
        port = free_port()
        ws = WorkerSettings(
            port=port,
            endpoint="demo",
            router_url=self.router_url,
            register_token=WORKER_TOKEN,
            ttft_ms=0.0,
            tokens_per_s=2000.0,
            clock_skew_s=0.0,
        )
        async with serve_app(build_app(ws), port) as server:
            yield server


@asynccontextmanager
async def router_stack(algorithm: str = "ed25519") -> AsyncIterator[Stack]:
    s = settings([], retry_after_s=0.05)  # no workers until one registers
    async with router_client(s, KeyRing.ephemeral(algorithm)) as (client, ctx):  # type: ignore[arg-type]
        yield Stack(str(client.make_url("")).rstrip("/"), ctx)


@pytest.fixture(params=["ed25519", "rsa"])
async def ready(request: pytest.FixtureRequest) -> AsyncIterator[Stack]:
    """A router with one ready worker (the client waits for it on the first route)."""
    async with router_stack(request.param) as stack, stack.worker():
        async with AsyncRouterClient(stack.router_url, DEV_KEY) as client:
            await client.route("demo", cost=1, timeout_s=20)  # ready, and JWKS loaded
        yield stack


@pytest.mark.parametrize("shape", SHAPES)
async def test_async_route_then_call(ready: Stack, shape: Shape) -> None:
    async with AsyncRouterClient(ready.router_url, DEV_KEY) as client:
        ticket = await client.route("demo", cost=16)
        answer = await client.call(ticket, "/generate", PAYLOAD, shape=shape)
        assert isinstance(answer["generated_text"], str) and answer["generated_text"]
        with pytest.raises(WorkerError) as info:  # a ticket serves one request
            await client.call(ticket, "/generate", PAYLOAD, shape=shape)
        assert info.value.status == 401 and info.value.code == "ticket_replayed"


@pytest.mark.parametrize("shape", SHAPES)
async def test_async_stream(ready: Stack, shape: Shape) -> None:
    async with AsyncRouterClient(ready.router_url, DEV_KEY) as client:
        ticket = await client.route("demo", cost=16.5)
        chunks = [c async for c in client.stream(ticket, "/generate_stream", PAYLOAD, shape=shape)]
    events = [ln[5:] for ln in b"".join(chunks).split(b"\n") if ln.startswith(b"data:")]
    assert len(events) == PAYLOAD["parameters"]["max_new_tokens"]
    assert orjson.loads(events[-1])["generated_text"]


@pytest.mark.parametrize("shape", SHAPES)
async def test_sync_route_call_and_stream(ready: Stack, shape: Shape) -> None:
    client = RouterClient(ready.router_url, DEV_KEY, timeout_s=10)

    def run() -> tuple[Any, list[bytes]]:
        answer = client.call(client.route("demo", cost=16), "/generate", PAYLOAD, shape=shape)
        ticket = client.route("demo", cost=16)
        return answer, list(client.stream(ticket, "/generate_stream", PAYLOAD, shape=shape))

    answer, chunks = await asyncio.to_thread(run)
    assert answer["generated_text"]
    assert b"".join(chunks).count(b"data:") == PAYLOAD["parameters"]["max_new_tokens"]


async def test_async_route_waits_for_a_worker_that_becomes_ready() -> None:
    async with router_stack() as stack:
        waits: list[dict[str, Any]] = []
        polled_twice = asyncio.Event()

        def on_wait(status: dict[str, Any]) -> None:
            waits.append(status)
            if len(waits) == 2:
                polled_twice.set()

        async with AsyncRouterClient(stack.router_url, DEV_KEY) as client:
            pending = asyncio.create_task(
                client.route("demo", cost=8, timeout_s=20, on_wait=on_wait), name="route"
            )
            await polled_twice.wait()
            assert ready_count(stack.ctx) == 0
            async with stack.worker():
                ticket = await pending
                answer = await client.call(ticket, "/generate", PAYLOAD)
    assert answer["generated_text"]
    assert {w["reason"] for w in waits} == {"no_ready_worker"}
    # The request_idx assigned on the first poll is sent back, and the ticket carries it.
    assert {w["request_idx"] for w in waits} == {ticket["request_idx"]}


async def test_sync_route_waits_for_a_worker_that_becomes_ready() -> None:
    async with router_stack("rsa") as stack:
        loop = asyncio.get_running_loop()
        waits: list[dict[str, Any]] = []
        polled_twice = asyncio.Event()

        def on_wait(status: dict[str, Any]) -> None:  # runs in the client's thread
            waits.append(status)
            if len(waits) == 2:
                loop.call_soon_threadsafe(polled_twice.set)

        client = RouterClient(stack.router_url, DEV_KEY)
        pending = asyncio.create_task(
            asyncio.to_thread(client.route, "demo", 8, timeout_s=20, on_wait=on_wait)
        )
        await polled_twice.wait()
        async with stack.worker():
            ticket = await pending
            answer = await asyncio.to_thread(
                client.call, ticket, "/generate", PAYLOAD, shape="header"
            )
    assert answer["generated_text"]
    assert {w["request_idx"] for w in waits} == {ticket["request_idx"]}


async def test_no_worker_within_the_timeout_raises_no_worker_ready() -> None:
    async with router_stack() as stack:
        async with AsyncRouterClient(stack.router_url, DEV_KEY) as client:
            with pytest.raises(NoWorkerReady) as info:
                await client.route("demo", timeout_s=0.2)
        assert info.value.status["status"]["ready"] == 0 and "'demo'" in str(info.value)
        sync = RouterClient(stack.router_url, DEV_KEY, timeout_s=0.2)
        with pytest.raises(NoWorkerReady):
            await asyncio.to_thread(sync.route, "demo")


async def test_router_errors_raise_route_rejected() -> None:
    async with router_stack() as stack:
        async with AsyncRouterClient(stack.router_url, "wrong-key") as client:
            with pytest.raises(RouteRejected) as info:
                await client.route("demo")
        assert (info.value.status, info.value.code) == (401, "invalid_api_key")
        sync = RouterClient(stack.router_url, DEV_KEY)
        with pytest.raises(RouteRejected) as info:
            await asyncio.to_thread(sync.route, "nope")
        assert (info.value.status, info.value.code) == (404, "unknown_endpoint")
    # and a router that is not there at all
    gone = RouterClient(f"http://127.0.0.1:{free_port()}", DEV_KEY)
    with pytest.raises(RouteRejected) as info:
        await asyncio.to_thread(gone.route, "demo")
    assert info.value.status == 0 and info.value.code == "unreachable"


def test_route_outcome_reads_retry_after_when_the_body_has_no_wait() -> None:
    wait = route_outcome(429, "3", orjson.dumps({"error": {"code": "rate_limited"}}))
    assert wait == Wait(3.0, None, {"error": {"code": "rate_limited"}})
    wait = route_outcome(200, "1", b'{"endpoint":"demo","request_idx":7,"retry_after_s":0.25}')
    assert isinstance(wait, Wait) and (wait.seconds, wait.request_idx) == (0.25, 7)
    with pytest.raises(RouteRejected):
        route_outcome(400, None, b'{"error":{"code":"bad_request","message":"no"}}')


def test_worker_request_shapes() -> None:
    ticket = {"url": "http://w:1/", "reqnum": 5, "signature": "s", "cost": 1}
    req = worker_request(ticket, "generate", {"inputs": "x"}, "auth_data")
    assert req.url == "http://w:1/generate"
    assert orjson.loads(req.body) == {"auth_data": ticket, "payload": {"inputs": "x"}}
    assert orjson.loads(worker_request(ticket, "/g", {"inputs": "x"}, "merged").body) == {
        **ticket,
        "inputs": "x",
    }
    with pytest.raises(ValueError, match="clash"):
        worker_request(ticket, "/g", {"cost": 2}, "merged")
    with pytest.raises(ValueError, match="JSON object"):
        worker_request(ticket, "/g", ["x"], "merged")
