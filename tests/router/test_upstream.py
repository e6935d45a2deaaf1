"""Health polls over the worker connection pool (`Pool.get`) against a real aiohttp
server: reuse, reconnects, timeouts, limits, and the Host of IPv6 workers."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from router.upstream import MAX_HEALTH_BODY, Pool, UpstreamError
from tests.conftest import free_port

MAX_BODY = MAX_HEALTH_BODY


@pytest.fixture
async def server() -> AsyncIterator[tuple[TestServer, list[Any]]]:
    peers: list[Any] = []

    async def readyz(request: web.Request) -> web.Response:
        peers.append(request.transport.get_extra_info("peername") if request.transport else None)
        return web.json_response({"ready": True, "n": len(peers)})

    async def close(request: web.Request) -> web.Response:
        return web.json_response({"bye": True}, headers={"Connection": "close"})

    async def hang(request: web.Request) -> web.Response:
        await asyncio.sleep(float(request.query.get("s", "5")))
        return web.json_response({"late": True})

    async def big(request: web.Request) -> web.Response:
        return web.Response(body=b"x" * (MAX_BODY + 1))

    async def chunked(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(status=503)
        await resp.prepare(request)
        await resp.write(b'{"ready": ')
        await resp.write(b'false, "draining": true}')
        return resp

    app = web.Application()
    for path, h in {
        "/readyz": readyz,
        "/close": close,
        "/hang": hang,
        "/big": big,
        "/chunked": chunked,
    }.items():
        app.router.add_get(path, h)
    s = TestServer(app, host="127.0.0.1")
    await s.start_server()
    yield s, peers
    await s.close()


def base(s: TestServer) -> str:
    return str(s.make_url("")).rstrip("/")


async def test_polls_reuse_one_connection(server: tuple[TestServer, list[Any]]) -> None:
    s, peers = server
    p = Pool()
    try:
        for i in range(5):
            status, body = await p.get(base(s), b"/readyz", 2)
            assert status == 200 and f'"n": {i + 1}' in body.decode()
        assert len(set(peers)) == 1  # one kept-alive connection for five polls
    finally:
        p.close()


async def test_a_closed_connection_is_replaced(server: tuple[TestServer, list[Any]]) -> None:
    s, _ = server
    p = Pool()
    try:
        assert (await p.get(base(s), b"/close", 2))[0] == 200
        assert (await p.get(base(s), b"/readyz", 2))[0] == 200
        assert (await p.get(base(s), b"/readyz", 2))[0] == 200
        # the chunked answer is read whole, status and all
        assert await p.get(base(s), b"/chunked", 2) == (
            503,
            b'{"ready": false, "draining": true}',
        )
    finally:
        p.close()


async def test_timeouts_never_leak_a_late_answer_into_the_next_poll(
    server: tuple[TestServer, list[Any]],
) -> None:
    s, _ = server
    p = Pool()
    try:
        with pytest.raises(TimeoutError):
            await p.get(base(s), b"/hang?s=0.5", 0.2)
        await asyncio.sleep(0.5)  # the late answer arrives on the dropped connection
        status, body = await p.get(base(s), b"/readyz", 2)
        assert status == 200 and b'"ready": true' in body
    finally:
        p.close()


async def test_refused_and_oversized(server: tuple[TestServer, list[Any]]) -> None:
    s, _ = server
    p = Pool()
    try:
        with pytest.raises(UpstreamError) as info:
            await p.get(f"http://127.0.0.1:{free_port()}", b"/readyz", 2)
        assert info.value.refused
        with pytest.raises(UpstreamError, match="too large"):
            await p.get(base(s), b"/big", 2)
        assert (await p.get(base(s), b"/readyz", 2))[0] == 200
    finally:
        p.close()


async def test_an_ipv6_worker_gets_its_brackets_in_host() -> None:
    hosts: list[str] = []

    async def readyz(request: web.Request) -> web.Response:
        hosts.append(request.headers.get("Host", ""))
        return web.json_response({"ready": True})

    app = web.Application()
    app.router.add_get("/readyz", readyz)
    s = TestServer(app, host="::1")
    try:
        await s.start_server()
    except OSError:
        pytest.skip("no IPv6 loopback here")
    p = Pool()
    try:
        status, _ = await p.get(f"http://[::1]:{s.port}", b"/readyz", 2)
        assert status == 200
        assert hosts == [f"[::1]:{s.port}"]
    finally:
        p.close()
        await s.close()
