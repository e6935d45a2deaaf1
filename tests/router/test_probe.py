"""The health prober against a real aiohttp server: reuse, reconnects, timeouts, limits."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from yarl import URL

from router.probe import MAX_BODY, ProbeError, Prober
from tests.conftest import free_port


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


def url(s: TestServer, path: str) -> URL:
    return URL(str(s.make_url(path)))


async def test_polls_reuse_one_connection(server: tuple[TestServer, list[Any]]) -> None:
    s, peers = server
    p = Prober()
    try:
        for i in range(5):
            status, body = await p.get("w", url(s, "/readyz"), 2)
            assert status == 200 and f'"n": {i + 1}' in body.decode()
        assert len(set(peers)) == 1  # one kept-alive connection for five polls
    finally:
        p.close()


async def test_a_closed_connection_is_replaced(server: tuple[TestServer, list[Any]]) -> None:
    s, _ = server
    p = Prober()
    try:
        assert (await p.get("w", url(s, "/close"), 2))[0] == 200
        assert (await p.get("w", url(s, "/readyz"), 2))[0] == 200
        assert (await p.get("w", url(s, "/readyz"), 2))[0] == 200
        # the chunked answer is read whole, status and all
        assert await p.get("w", url(s, "/chunked"), 2) == (
            503,
            b'{"ready": false, "draining": true}',
        )
    finally:
        p.close()


async def test_timeouts_never_leak_a_late_answer_into_the_next_poll(
    server: tuple[TestServer, list[Any]],
) -> None:
    s, _ = server
    p = Prober()
    try:
        with pytest.raises(ProbeError, match="Timeout"):
            await p.get("w", url(s, "/hang?s=0.5"), 0.2)
        await asyncio.sleep(0.5)  # the late answer arrives on the dropped connection
        status, body = await p.get("w", url(s, "/readyz"), 2)
        assert status == 200 and b'"ready": true' in body
    finally:
        p.close()


async def test_refused_and_oversized(server: tuple[TestServer, list[Any]]) -> None:
    s, _ = server
    p = Prober()
    try:
        with pytest.raises(ProbeError) as info:
            await p.get("x", URL(f"http://127.0.0.1:{free_port()}/readyz"), 2)
        assert info.value.refused
        with pytest.raises(ProbeError, match="too large"):
            await p.get("w", url(s, "/big"), 2)
        assert (await p.get("w", url(s, "/readyz"), 2))[0] == 200
        assert not Prober.usable(URL("https://example.com/readyz"))
    finally:
        p.close()
