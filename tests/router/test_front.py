"""The fast path's own HTTP handling (router/front.py, router/upstream.py), on raw sockets.

Proxy behaviour (headers, retries, timeouts, streams) is tested on both paths in
test_proxy.py; these tests cover what only the fast path does: pipelining and the hand-off
to aiohttp, kept-alive worker connections, chunked and 100-continue request bodies, and
its read timeouts.
"""

from __future__ import annotations

import asyncio
import itertools
import re
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from router.config import Settings, StaticWorker
from router.proxy.server import _offset_after
from tests.router.helpers import DEV_KEY, ready_count, router_client, until
from tests.router.test_proxy import Upstream, proxy_settings

AUTH = f"Authorization: Bearer {DEV_KEY}\r\n".encode()


@pytest.fixture
async def up() -> AsyncIterator[Upstream]:
    u = Upstream("a")
    await u.start()
    yield u
    await u.stop()


def fast(s: Settings, **server: Any) -> Settings:
    return replace(s, server=replace(s.server, fast_proxy=True, **server))


async def read_answer(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
    """One HTTP/1.1 answer: status, headers (lower-case names), body (length or chunked)."""
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ")[1])
    headers = {k.lower(): v for k, _, v in (ln.partition(": ") for ln in lines[1:] if ln)}
    if "content-length" in headers:
        body = await reader.readexactly(int(headers["content-length"]))
    elif headers.get("transfer-encoding") == "chunked":
        body = b""
        while size := int((await reader.readuntil(b"\r\n")).strip(), 16):
            body += await reader.readexactly(size)
            await reader.readexactly(2)
        await reader.readexactly(2)
    else:
        body = b""
    return status, headers, body


async def shut(writer: asyncio.StreamWriter) -> None:
    writer.close()
    try:
        await writer.wait_closed()
    except ConnectionError:
        pass


def post(path: str, body: bytes, extra: bytes = b"") -> bytes:
    return (
        (
            f"POST {path} HTTP/1.1\r\nHost: r\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n"
        ).encode()
        + AUTH
        + extra
        + b"\r\n"
        + body
    )


async def test_pipelined_requests_are_answered_in_order_across_the_hand_off(up: Upstream) -> None:
    async with router_client(fast(proxy_settings([up]))) as (client, ctx):
        await until(lambda: ready_count(ctx) == 1)
        assert client.port is not None
        reader, writer = await asyncio.open_connection("127.0.0.1", client.port)
        # two proxied requests, one for aiohttp (/livez), then a proxied one again: all in
        # one write, so the fast path must find where /livez begins to hand it over
        writer.write(
            post("/demo/one", b'{"n": 1}')
            + post("/demo/two", b'{"n": 2}')
            + b"GET /livez HTTP/1.1\r\nHost: r\r\n\r\n"
            + post("/demo/three", b"{}")
        )
        answers = [await read_answer(reader) for _ in range(4)]
        await shut(writer)
        assert [a[0] for a in answers] == [200, 200, 200, 200]
        assert [orjson.loads(a[2]).get("path") for a in answers] == ["/one", "/two", None, "/three"]
        assert orjson.loads(answers[2][2]) == {"status": "ok"}
        assert [s["body"] for s in up.seen] == [b'{"n": 1}', b'{"n": 2}', b"{}"]


def test_offset_after_finds_request_starts() -> None:
    a = post("/demo/a", b"x" * 10)
    b = b"GET /livez HTTP/1.1\r\nHost: r\r\n\r\n"
    raw = a + a + b
    assert _offset_after(raw, 0) == 0
    assert _offset_after(raw, 1) == len(a)
    assert _offset_after(raw, 2) == 2 * len(a)


async def test_worker_connections_are_kept_alive_and_reused(up: Upstream) -> None:
    peers: set[int] = set()

    async def track(request: web.Request) -> web.Response:
        assert request.transport is not None
        peers.add(request.transport.get_extra_info("peername")[1])
        return web.json_response({"ok": True})

    app = web.Application()
    app.router.add_get("/readyz", up.readyz)
    app.router.add_post("/track", track)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    try:
        s = proxy_settings([up])
        s = replace(
            s,
            endpoints=(
                replace(
                    s.endpoints[0],
                    workers=(
                        replace(
                            s.endpoints[0].workers[0], url=str(server.make_url("")).rstrip("/")
                        ),
                    ),
                ),
                *s.endpoints[1:],
            ),
        )
        async with router_client(fast(s)) as (client, ctx):
            await until(lambda: ready_count(ctx) == 1)
            for _ in range(20):
                resp = await client.post(
                    "/demo/track", headers={"Authorization": f"Bearer {DEV_KEY}"}
                )
                assert resp.status == 200
        assert len(peers) == 1  # one connection served all 20, one after the other
    finally:
        await server.close()


async def test_a_kept_alive_connection_closed_by_the_worker_is_retried_there() -> None:
    """The worker drops a reused connection without answering (its keep-alive timer
    fired as the request went out): sent again on a new connection to the same worker,
    not counted as the worker failing."""
    seen: list[tuple[int, bytes]] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await answer(reader, writer)
        finally:
            writer.close()

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        n = 0
        while True:
            try:
                head = await reader.readuntil(b"\r\n\r\n")
            except (asyncio.IncompleteReadError, ConnectionError):
                break
            m = re.search(rb"Content-Length: (\d+)", head, re.I)
            if m:
                await reader.readexactly(int(m.group(1)))
            n += 1
            path = head.split(b" ")[1]
            seen.append((id(writer), path))
            if path == b"/work" and n > 1:
                return  # a reused connection: closed, no answer
            body = b'{"ready": true}' if path == b"/readyz" else b'{"ok": true}'
            writer.write(
                b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
            )

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        s = proxy_settings([])
        s = replace(
            s,
            endpoints=(
                replace(
                    s.endpoints[0], workers=(StaticWorker(f"http://127.0.0.1:{port}", perf=100.0),)
                ),
                *s.endpoints[1:],
            ),
        )
        async with router_client(fast(s)) as (client, ctx):
            await until(lambda: ready_count(ctx) == 1)
            auth = {"Authorization": f"Bearer {DEV_KEY}"}
            for _ in range(3):
                resp = await client.post("/demo/work", headers=auth)
                assert resp.status == 200, await resp.text()
            metrics = await (await client.get("/metrics")).text()
            assert "router_retries_total{" not in metrics
            assert ready_count(ctx) == 1
        work = [w for w, p in seen if p == b"/work"]
        # Health polls share the connections, so the first request may find one to reuse
        # too: at least the second and third were dropped once and sent again.
        assert len(work) - 3 >= 2, seen
    finally:
        server.close()
        await server.wait_closed()


async def test_chunked_body_after_100_continue(up: Upstream) -> None:
    async with router_client(fast(proxy_settings([up]))) as (client, ctx):
        await until(lambda: ready_count(ctx) == 1)
        assert client.port is not None
        reader, writer = await asyncio.open_connection("127.0.0.1", client.port)
        writer.write(
            b"POST /demo/echo HTTP/1.1\r\nHost: r\r\nTransfer-Encoding: chunked\r\n"
            b"Expect: 100-continue\r\nContent-Type: application/json\r\n" + AUTH + b"\r\n"
        )
        interim = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"
        writer.write(b'5\r\n{"a":\r\n3\r\n 1}\r\n0\r\n\r\n')
        status, _, body = await read_answer(reader)
        await shut(writer)
        assert status == 200 and orjson.loads(body)["path"] == "/echo"
        seen = up.seen[-1]
        assert seen["body"] == b'{"a": 1}'
        assert seen["headers"]["Content-Length"] == "8"
        assert "Transfer-Encoding" not in seen["headers"]
        assert "Expect" not in seen["headers"]


async def test_slow_body_gets_408_and_a_silent_connection_is_closed(up: Upstream) -> None:
    s = fast(proxy_settings([up]), request_read_timeout_s=0.3)
    async with router_client(s) as (client, ctx):
        await until(lambda: ready_count(ctx) == 1)
        assert client.port is not None
        reader, writer = await asyncio.open_connection("127.0.0.1", client.port)
        writer.write(
            b"POST /demo/echo HTTP/1.1\r\nHost: r\r\nContent-Length: 100\r\n"
            + AUTH
            + b'\r\n{"partial'
        )
        status, headers, body = await read_answer(reader)
        assert status == 408 and orjson.loads(body)["error"]["code"] == "request_timeout"
        assert headers["connection"] == "close"
        assert await asyncio.wait_for(reader.read(), 2) == b""
        await shut(writer)
        # a head that never ends (slowloris) is cut off as well
        reader, writer = await asyncio.open_connection("127.0.0.1", client.port)
        writer.write(b"POST /demo/echo HTTP/1.1\r\nHost: r\r\nX-Slow: ")
        for _ in range(10):
            if reader.at_eof():
                break
            writer.write(b"a")
            await asyncio.sleep(0.1)
        assert await asyncio.wait_for(reader.read(), 2) == b""
        await shut(writer)
        assert up.seen == []


@pytest.mark.parametrize(
    "request_bytes",
    [
        b"HEAD /demo/x HTTP/1.1\r\nHost: r\r\n" + AUTH + b"\r\n",
        b"GET /demo/x HTTP/1.0\r\nHost: r\r\n" + AUTH + b"\r\n",
        b"GET /demo/%78 HTTP/1.1\r\nHost: r\r\n" + AUTH + b"\r\n",
    ],
)
async def test_unusual_requests_are_served_by_aiohttp(up: Upstream, request_bytes: bytes) -> None:
    async with router_client(fast(proxy_settings([up]))) as (client, ctx):
        await until(lambda: ready_count(ctx) == 1)
        assert client.port is not None
        reader, writer = await asyncio.open_connection("127.0.0.1", client.port)
        writer.write(request_bytes)
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        await shut(writer)
        assert head.split(b" ")[1] == b"200", head
        # aiohttp's own server answered (the fast path never sets this header)
        assert b"Server: Python/" in head
        assert up.seen[-1]["path"] == "/x"


@pytest.mark.parametrize(
    "headers",
    [
        b"".join(b"X-H%d: v\r\n" % i for i in range(300)),
        b"X-Big: " + b"v" * 100_000 + b"\r\n",
        b"X-Bad\x00Name: v\r\n",
    ],
)
async def test_bad_heads_on_proxy_paths_get_aiohttps_4xx(up: Upstream, headers: bytes) -> None:
    async with router_client(fast(proxy_settings([up]))) as (client, ctx):
        await until(lambda: ready_count(ctx) == 1)
        assert client.port is not None
        reader, writer = await asyncio.open_connection("127.0.0.1", client.port)
        writer.write(b"GET /demo/x HTTP/1.1\r\nHost: r\r\n" + AUTH + headers + b"\r\n")
        head = await asyncio.wait_for(reader.readuntil(b"\r\n"), 5)
        await shut(writer)
        assert 400 <= int(head.split(b" ")[1]) < 500, head
        assert up.seen == []


async def test_oversized_declared_body_is_413_without_reading_it(up: Upstream) -> None:
    s = fast(proxy_settings([up], max_body_bytes=1000))
    async with router_client(s) as (client, ctx):
        await until(lambda: ready_count(ctx) == 1)
        assert client.port is not None
        reader, writer = await asyncio.open_connection("127.0.0.1", client.port)
        writer.write(
            b"POST /demo/x HTTP/1.1\r\nHost: r\r\nContent-Length: 5000000\r\n" + AUTH + b"\r\n"
        )  # the body never comes: no need to wait for it
        status, headers, body = await read_answer(reader)
        await shut(writer)
        assert status == 413 and orjson.loads(body)["error"]["code"] == "body_too_large"
        assert headers["connection"] == "close"


async def test_a_slow_reader_holds_the_worker_back_not_the_routers_memory() -> None:
    """Flow control: while the client does not read, the router stops reading the worker,
    so a 64 MiB answer is not buffered in the router; the worker connection then goes
    back to the pool reading again, and serves the next request."""
    sent = [0]
    chunk = b"x" * 65536

    async def big(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
        await resp.prepare(request)
        for _ in range(1024):
            await resp.write(chunk)  # waits while the router is not reading
            sent[0] += len(chunk)
        await resp.write_eof()
        return resp

    async def ready(request: web.Request) -> web.Response:
        return web.json_response({"ready": True})

    app = web.Application()
    app.router.add_get("/readyz", ready)
    app.router.add_post("/big", big)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    try:
        s = proxy_settings([])
        s = replace(
            s,
            endpoints=(
                replace(
                    s.endpoints[0],
                    workers=(StaticWorker(str(server.make_url("")).rstrip("/"), perf=100.0),),
                ),
                *s.endpoints[1:],
            ),
        )
        async with router_client(fast(s)) as (client, ctx):
            await until(lambda: ready_count(ctx) == 1)
            assert client.port is not None
            reader, writer = await asyncio.open_connection("127.0.0.1", client.port, limit=2**16)
            for _ in range(2):
                sent[0] = 0
                writer.write(post("/demo/big", b"{}"))
                await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
                await asyncio.sleep(0.5)  # the client reads nothing for a while
                assert sent[0] < 32 * 2**20, sent[0]  # socket buffers, not the whole body
                total = 0
                while size := int((await reader.readuntil(b"\r\n")).strip(), 16):
                    total += len(await reader.readexactly(size))
                    await reader.readexactly(2)
                await reader.readexactly(2)
                assert total == 64 * 2**20
            await shut(writer)
    finally:
        await server.close()


async def test_a_connection_pooled_while_paused_reads_again(up: Upstream) -> None:
    from router.upstream import Pool

    assert up.server is not None
    pool = Pool()
    key = ("127.0.0.1", up.server.port or 0, False)
    request = b"GET /readyz HTTP/1.1\r\nHost: x\r\n\r\n"
    conn = await pool.connect(key, 2)
    for _ in range(2):
        conn.send(request)
        await asyncio.wait_for(conn.finished(), 5)
        assert conn.status == 200
        conn.pause_reading()  # the client was slow as the last bytes came in
        pool.put(conn)
        taken = pool.take(key)
        assert taken is conn and not conn.paused
    pool.close()


async def test_a_client_still_sending_a_refused_body_gets_the_413(up: Upstream) -> None:
    """The 413 goes out before the body is read; closing at once would reset the
    connection under a client still sending it, and lose the answer."""
    s = fast(proxy_settings([up], max_body_bytes=1000))
    async with router_client(s) as (client, ctx):
        await until(lambda: ready_count(ctx) == 1)
        assert client.port is not None
        for _ in range(3):
            reader, writer = await asyncio.open_connection("127.0.0.1", client.port)
            writer.write(post("/demo/x", b"x" * (4 << 20)))  # all of it, before reading
            await asyncio.wait_for(writer.drain(), 10)
            status, _, body = await read_answer(reader)
            assert status == 413 and orjson.loads(body)["error"]["code"] == "body_too_large"
            await shut(writer)
        assert up.seen == []


def test_worker_addresses_keep_prefixes_ports_and_ipv6_brackets() -> None:
    from router.upstream import worker_address as _worker_address

    assert _worker_address("http://127.0.0.1:3001") == (
        ("127.0.0.1", 3001, False),
        b"",
        b"127.0.0.1:3001",
    )
    assert _worker_address("http://10.0.0.5:8000/w/7/") == (
        ("10.0.0.5", 8000, False),
        b"/w/7",
        b"10.0.0.5:8000",
    )
    assert _worker_address("https://gpu.example") == (
        ("gpu.example", 443, True),
        b"",
        b"gpu.example:443",
    )
    assert _worker_address("http://[::1]:3000") == (("::1", 3000, False), b"", b"[::1]:3000")


async def test_no_content_answers_carry_no_length(up: Upstream) -> None:
    async with router_client(fast(proxy_settings([up]))) as (client, ctx):
        await until(lambda: ready_count(ctx) == 1)
        assert client.port is not None
        reader, writer = await asyncio.open_connection("127.0.0.1", client.port)
        writer.write(post("/demo/x?status=204", b"{}") + post("/demo/y", b"{}"))
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        assert head.startswith(b"HTTP/1.1 204") and b"content-length" not in head.lower()
        status, _, body = await read_answer(reader)  # the next answer is still in step
        await shut(writer)
        assert status == 200 and orjson.loads(body)["path"] == "/y"


async def test_random_pipelines_in_random_pieces_answer_every_request_in_order(
    up: Upstream,
) -> None:
    """The hand-off's byte accounting, shaken: proxied, /route and aiohttp-only requests
    in random order, written in random pieces; every answer comes back, in order."""
    import random

    rng = random.Random(20261124)
    route = json_post("/route", b'{"endpoint": "demo", "api_key": "%s"}' % DEV_KEY.encode())
    # each kind: (the request bytes for position i, what its answer must contain)
    kinds = {
        "proxy": lambda i: (post(f"/demo/n{i}", b'{"i": %d}' % i), b'"/n%d"' % i),
        "route": lambda i: (route, b'"signature"'),
        "livez": lambda i: (b"GET /livez HTTP/1.1\r\nHost: r\r\n\r\n", b'"ok"'),
        "models": lambda i: (
            b"GET /v1/models HTTP/1.1\r\nHost: r\r\n" + AUTH + b"\r\n",
            b'"demo-model"',
        ),
        "chunked": lambda i: (
            b"POST /demo/c%d HTTP/1.1\r\nHost: r\r\nTransfer-Encoding: "
            b"chunked\r\nContent-Type: application/json\r\n"
            % i
            + AUTH
            + b"\r\n2\r\n{}\r\n0\r\n\r\n",
            b'"/c%d"' % i,
        ),
    }
    async with router_client(fast(proxy_settings([up]))) as (client, ctx):
        await until(lambda: ready_count(ctx) == 1)
        assert client.port is not None
        for _ in range(60):
            plan = [kinds[rng.choice(list(kinds))](i) for i in range(rng.randint(1, 8))]
            data = b"".join(request for request, _ in plan)
            cuts = sorted(rng.sample(range(1, len(data)), min(len(data) - 1, rng.randint(0, 6))))
            reader, writer = await asyncio.open_connection("127.0.0.1", client.port)
            for a, b in itertools.pairwise([0, *cuts, len(data)]):
                writer.write(data[a:b])
                await writer.drain()
                if rng.random() < 0.5:
                    await asyncio.sleep(0.002)
            for i, (_, expect) in enumerate(plan):
                status, _, body = await read_answer(reader)
                assert status == 200 and expect in body, (plan, i, body)
            await shut(writer)


def json_post(path: str, body: bytes) -> bytes:
    return (
        f"POST {path} HTTP/1.1\r\nHost: r\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body


async def test_idle_worker_connections_are_closed_after_the_keepalive(up: Upstream) -> None:
    """Some model servers never close an idle connection; the pool does, so a large
    fleet does not hold file descriptors without end."""
    from router.upstream import Pool

    assert up.server is not None
    pool = Pool(keepalive_s=0.3)
    key = ("127.0.0.1", up.server.port or 0, False)
    conns = []
    for _ in range(3):  # three connections, all idle at once
        conn = await pool.connect(key, 2)
        conn.send(b"GET /readyz HTTP/1.1\r\nHost: x\r\n\r\n")
        await asyncio.wait_for(conn.finished(), 5)
        conns.append(conn)
    for conn in conns:
        pool.put(conn)
    await asyncio.sleep(0.1)
    kept = pool.take(key)  # used again within the keep-alive: kept
    assert kept is conns[-1] and not kept.closed
    await asyncio.sleep(0.6)
    assert conns[0].closed and conns[1].closed and pool.take(key) is None
    pool.put(kept)  # back in: it has its own keep-alive from now
    assert pool.take(key) is kept
    pool.put(kept)
    pool.close()  # idle ones close with the pool
    assert kept.closed


async def test_a_reused_connections_shorter_deadline_still_fires(up: Upstream) -> None:
    """One timer per worker connection, moved on lazily: a later request with an earlier
    deadline than the timer set for the one before must still time out on time."""
    from router.upstream import Pool

    assert up.server is not None
    pool = Pool()
    loop = asyncio.get_running_loop()
    key = ("127.0.0.1", up.server.port or 0, False)
    conn = await pool.connect(key, 2)
    conn.send(b"GET /readyz HTTP/1.1\r\nHost: x\r\n\r\n")
    conn.watch(loop.time() + 30, None)
    await asyncio.wait_for(conn.finished(), 5)
    conn.unwatch()
    pool.put(conn)
    assert pool.take(key) is conn
    conn.send(b"POST /sleep HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n")  # answers in 5 s
    started = loop.time()
    conn.watch(started + 0.3, None)
    assert conn.head is not None
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(conn.head, 5)
    assert 0.25 <= loop.time() - started < 1.5
    assert conn.closed
    pool.close()


async def test_the_idle_watch_moves_with_each_read() -> None:
    """`watch(deadline, idle_s)`: a stream that keeps sending outlives idle_s; one that
    stops is failed idle_s after its last byte."""
    from router.upstream import Pool

    async def drip(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        for i in range(8):  # 0.8 s in all, never 0.3 s apart
            await resp.write(b"data: %d\n\n" % i)
            await asyncio.sleep(0.1)
        if request.query.get("stall"):
            await asyncio.sleep(30)
        await resp.write_eof()
        return resp

    app = web.Application()
    app.router.add_get("/drip", drip)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    pool = Pool()
    loop = asyncio.get_running_loop()
    key = ("127.0.0.1", server.port or 0, False)
    try:
        for stall in (False, True):
            conn = await pool.connect(key, 2)
            conn.send(b"GET /drip%s HTTP/1.1\r\nHost: x\r\n\r\n" % (b"?stall=1" if stall else b""))
            started = loop.time()
            conn.watch(started + 30, 0.3)
            if stall:
                with pytest.raises(TimeoutError):
                    await asyncio.wait_for(conn.finished(), 5)
                assert 0.95 <= loop.time() - started < 2.5  # 0.7 s of drips, then 0.3 s
            else:
                await asyncio.wait_for(conn.finished(), 5)
                assert conn.complete and loop.time() - started >= 0.7
            conn.unwatch()
            conn.close()
    finally:
        pool.close()
        await server.close()


async def test_a_busy_kept_alive_client_outlives_the_read_timeout_and_an_idle_one_not(
    up: Upstream,
) -> None:
    """The client connection's timer is moved on per request, not made anew: requests
    0.15 s apart keep it open past the 0.4 s timeout; then, idle, it closes."""
    s = fast(proxy_settings([up]), request_read_timeout_s=0.4)
    async with router_client(s) as (client, ctx):
        await until(lambda: ready_count(ctx) == 1)
        assert client.port is not None
        reader, writer = await asyncio.open_connection("127.0.0.1", client.port)
        loop = asyncio.get_running_loop()
        started = loop.time()
        for _ in range(8):  # 1.2 s in all
            writer.write(
                b"POST /demo/echo HTTP/1.1\r\nHost: r\r\nContent-Length: 2\r\n" + AUTH + b"\r\n{}"
            )
            status, _, _ = await read_answer(reader)
            assert status == 200
            await asyncio.sleep(0.15)
        assert loop.time() - started > 1.0
        idle_from = loop.time()
        assert await asyncio.wait_for(reader.read(), 3) == b""
        assert 0.2 <= loop.time() - idle_from < 1.5
        await shut(writer)
