"""The one parsing rule of proxy mode, on both server paths, against a raw worker.

Each test runs on the fast path (router/proxy/server.py) and on aiohttp's
(router/proxy/web.py) and looks at the bytes that reached the worker, so a rule that one
path applies and the other does not fails here. Requests are written on raw sockets: the
hostile ones are exactly what a client library would never send.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field, replace
from typing import Any

import httptools
import orjson
import pytest

from router.config import ApiKeySettings, EndpointSettings, HealthSettings, Settings, StaticWorker
from router.context import RouterContext
from router.jsonbody import MAX_JSON_DEPTH
from tests.router.helpers import ADMIN_KEY, DEV_KEY, OTHER_KEY, keys, ready_count, router_client
from tests.router.helpers import until as wait_until

UNICODE_KEY = "ключ-ü-🔑"


@dataclass
class Seen:
    method: bytes
    target: bytes
    headers: list[tuple[bytes, bytes]]
    body: bytes

    def header(self, name: bytes) -> list[bytes]:
        return [v for n, v in self.headers if n.lower() == name]


@dataclass
class RawWorker:
    """A worker that records every request's bytes and answers by path."""

    seen: list[Seen] = field(default_factory=list)
    polls: int = 0
    status_for: dict[bytes, int] = field(default_factory=dict)
    server: asyncio.Server | None = None

    @property
    def port(self) -> int:
        assert self.server is not None
        return int(self.server.sockets[0].getsockname()[1])

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()

    def proxied(self) -> list[Seen]:
        return [s for s in self.seen if not s.target.endswith(b"/readyz")]

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        done: list[Seen] = []
        cur: dict[str, Any] = {}

        class P:
            def on_message_begin(self) -> None:
                cur.clear()
                cur.update(target=b"", headers=[], body=b"")

            def on_url(self, url: bytes) -> None:
                cur["target"] += url

            def on_header(self, n: bytes, v: bytes) -> None:
                cur["headers"].append((n, v))

            def on_body(self, b: bytes) -> None:
                cur["body"] += b

            def on_message_complete(self) -> None:
                done.append(
                    Seen(parser.get_method(), cur["target"], list(cur["headers"]), cur["body"])
                )

        parser = httptools.HttpRequestParser(P())
        try:
            while data := await reader.read(65536):
                parser.feed_data(data)
                while done:
                    req = done.pop(0)
                    self.seen.append(req)
                    writer.write(self._answer(req))
                    await writer.drain()
        except (ConnectionError, httptools.HttpParserError):
            pass
        finally:
            writer.close()

    def _answer(self, req: Seen) -> bytes:
        path = req.target.partition(b"?")[0]
        extra = b""
        body = orjson.dumps({"path": path.decode("latin-1")})
        status = self.status_for.get(path, 200)
        if path.endswith(b"/readyz"):
            self.polls += 1
            body = b'{"ready": true}'
        elif path.endswith(b"/cookies"):
            extra = (
                b"Set-Cookie: a=1\r\nSet-Cookie: b=2\r\nX-Request-Id: from-the-worker\r\n"
                b"Connection: x-hop\r\nX-Hop: secret\r\nX-Kept: yes\r\n"
            )
        elif path.endswith(b"/big"):
            body = b"x" * 300_000
        return (
            b"HTTP/1.1 %d X\r\nContent-Type: application/json\r\n%sContent-Length: %d\r\n\r\n%s"
            % (status, extra, len(body), body)
        )


@pytest.fixture(params=[True, False], ids=["fast", "aiohttp"])
def fast(request: pytest.FixtureRequest) -> bool:
    return bool(request.param)


@pytest.fixture
async def worker() -> AsyncIterator[RawWorker]:
    w = RawWorker()
    await w.start()
    yield w
    await w.stop()


def rule_settings(worker: RawWorker, fast: bool, **ep: Any) -> Settings:
    unicode = ApiKeySettings(
        hashlib.sha256(UNICODE_KEY.encode()).hexdigest(), "unicode", endpoints=("demo",)
    )
    fields: dict[str, Any] = {
        "name": "demo",
        "default_cost": 10.0,
        "models": ("demo-model",),
        "health": HealthSettings(
            interval_s=0.05, timeout_s=0.5, unhealthy_after=2, healthy_after=1
        ),
        "workers": (StaticWorker(f"http://127.0.0.1:{worker.port}/base"),),
        "retries": 0,
    }
    demo = EndpointSettings(**{**fields, **ep})
    s = Settings(api_keys=(*keys(), unicode), endpoints=(demo, EndpointSettings(name="other")))
    return replace(s, server=replace(s.server, fast_proxy=fast))


@pytest.fixture
async def router(
    worker: RawWorker, fast: bool, request: pytest.FixtureRequest
) -> AsyncIterator[tuple[int, RouterContext]]:
    extra = getattr(request, "param", {})
    async with router_client(rule_settings(worker, fast, **extra)) as (client, ctx):
        await wait_until(lambda: ready_count(ctx) == 1)
        assert client.port is not None
        yield client.port, ctx


@dataclass
class Answer:
    status: int
    headers: list[tuple[bytes, bytes]]
    body: bytes

    def header(self, name: bytes) -> list[bytes]:
        return [v for n, v in self.headers if n.lower() == name]

    def json(self) -> Any:
        return orjson.loads(self.body)


async def exchange(
    port: int, data: bytes, *, answers: int = 1, timeout_s: float = 5
) -> list[Answer]:
    """Write `data`, read until `answers` answers came or the router closed the connection."""
    out: list[Answer] = []
    cur: dict[str, Any] = {}

    class P:
        def on_message_begin(self) -> None:
            cur.clear()
            cur.update(headers=[], body=b"")

        def on_header(self, n: bytes, v: bytes) -> None:
            cur["headers"].append((n, v))

        def on_body(self, b: bytes) -> None:
            cur["body"] += b

        def on_message_complete(self) -> None:
            out.append(Answer(parser.get_status_code(), cur["headers"], cur["body"]))

    parser = httptools.HttpResponseParser(P())
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        async with asyncio.timeout(timeout_s):
            while len(out) < answers:
                chunk = await reader.read(65536)
                if not chunk:
                    break
                parser.feed_data(chunk)
    finally:
        writer.close()
    return out


def request(
    method: str = "POST",
    target: str = "/demo/echo",
    *,
    body: bytes = b"{}",
    key: str | bytes | None = DEV_KEY,
    extra: bytes = b"",
    close: bool = True,
) -> bytes:
    head = f"{method} {target} HTTP/1.1\r\nHost: router\r\n".encode()
    if key is not None:
        k = key.encode() if isinstance(key, str) else key
        head += b"Authorization: Bearer " + k + b"\r\n"
    head += extra
    if body or method == "POST":
        head += b"Content-Type: application/json\r\nContent-Length: %d\r\n" % len(body)
    if close:
        head += b"Connection: close\r\n"
    return head + b"\r\n" + body


async def one(port: int, data: bytes) -> Answer:
    got = await exchange(port, data)
    assert len(got) == 1, got
    return got[0]


# Paths ------------------------------------------------------------------------------------

TRAVERSALS = [
    "/demo/../x",
    "/demo/a/../../x",
    "/demo/./x",
    "/demo/x/..",
    "/demo/%2e%2e/x",
    "/demo/%2E%2E/%2e%2e/x",
    "/demo/..%2Fx",
    "/demo/..%2fx",
    "/demo/a%2F..%2F..%2Fx",
    "/demo/%2e./x",
    "/demo/..%5cx",
    "/demo/..\\x",
    "//demo/x",
    "/demo/../api/v1/workers",
    "/v1/../demo/x",
]


@pytest.mark.parametrize("target", TRAVERSALS)
async def test_no_path_leaves_the_workers_base(
    router: tuple[int, RouterContext], worker: RawWorker, target: str
) -> None:
    port, _ = router
    for method in ("GET", "POST"):
        a = await one(port, request(method, target))
        assert a.status == 400, (target, a)
        assert a.json()["error"]["code"] == "bad_path"
    assert worker.proxied() == []


async def test_plain_paths_and_encodings_reach_the_worker_under_its_base(
    router: tuple[int, RouterContext], worker: RawWorker
) -> None:
    port, _ = router
    for target, upstream in [
        ("/demo/generate", b"/base/generate"),
        ("/demo/a%20b/c?x=1&y=%2e", b"/base/a%20b/c?x=1&y=%2e"),
        ("/demo/a.b/..c/d..", b"/base/a.b/..c/d.."),
        ("/demo", b"/base/"),
    ]:
        a = await one(port, request("POST", target))
        assert a.status == 200, (target, a)
        assert worker.proxied()[-1].target == upstream


# Headers ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "extra",
    [
        b"Authorization: Bearer " + DEV_KEY.encode() + b"\r\n",
        b"Authorization: Bearer " + OTHER_KEY.encode() + b"\r\n",
        b"X-Cost: 5\r\nX-Cost: 9\r\n",
        b"Host: evil\r\n",
    ],
    ids=["auth-same", "auth-other", "x-cost", "host"],
)
@pytest.mark.parametrize("target", ["/demo/echo", "/v1/chat/completions", "/route"])
async def test_a_duplicated_unique_header_is_a_400(
    router: tuple[int, RouterContext], worker: RawWorker, extra: bytes, target: str
) -> None:
    port, _ = router
    body = orjson.dumps({"model": "demo-model", "endpoint": "demo", "messages": []})
    a = await one(port, request("POST", target, body=body, extra=extra))
    assert a.status == 400, a
    assert worker.proxied() == []


async def test_a_duplicated_content_length_is_refused(
    router: tuple[int, RouterContext], worker: RawWorker
) -> None:
    port, _ = router
    raw = request("POST", "/demo/echo", body=b"{}").replace(
        b"Content-Length: 2\r\n", b"Content-Length: 2\r\nContent-Length: 2\r\n"
    )
    a = await one(port, raw)
    assert a.status == 400
    assert worker.proxied() == []


async def test_trailers_never_become_headers(
    router: tuple[int, RouterContext], worker: RawWorker
) -> None:
    port, _ = router
    body = b'{"max_new_tokens": 7}'
    raw = (
        b"POST /demo/echo HTTP/1.1\r\nHost: r\r\nAuthorization: Bearer "
        + DEV_KEY.encode()
        + b"\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n"
        b"Connection: close\r\n\r\n"
        + b"%x\r\n%s\r\n" % (len(body), body)
        + b"0\r\nAuthorization: Bearer "
        + OTHER_KEY.encode()
        + b"\r\nX-Cost: 999\r\nX-Evil: 1\r\n\r\n"
    )
    a = await one(port, raw)
    assert a.status == 200, a  # the head's key, not the trailer's (which may not use demo)
    seen = worker.proxied()[-1]
    assert seen.header(b"x-evil") == [] and seen.header(b"x-cost") == []
    ticket = ticket_of(seen)
    assert ticket["cost"] == 7  # from the body, not the trailer's X-Cost


def ticket_of(seen: Seen) -> dict[str, Any]:
    import base64

    (value,) = seen.header(b"x-route-ticket")
    return dict(orjson.loads(base64.urlsafe_b64decode(value + b"=" * (-len(value) % 4))))


async def test_a_non_ascii_key_works_as_utf8_everywhere(
    router: tuple[int, RouterContext], worker: RawWorker
) -> None:
    port, _ = router
    utf8 = UNICODE_KEY.encode()
    a = await one(port, request("POST", "/demo/echo", key=utf8))
    assert a.status == 200, a
    a = await one(
        port,
        request(
            "POST",
            "/route",
            key=None,
            body=orjson.dumps({"endpoint": "demo", "api_key": UNICODE_KEY, "cost": 1}),
        ),
    )
    assert a.status == 200 and "url" in a.json(), a
    a = await one(port, request("POST", "/route", key=utf8, body=b'{"endpoint": "demo"}'))
    assert a.status == 200 and "url" in a.json(), a
    # the same characters as latin-1 bytes are another key
    a = await one(port, request("POST", "/demo/echo", key=UNICODE_KEY.encode("utf-8")[:-4]))
    assert a.status == 401


@pytest.mark.parametrize(
    ("extra", "status"),
    [
        (b"".join(b"X-Pad-%d: %s\r\n" % (i, b"p" * 1000) for i in range(50)), 200),
        (b"X-Big: " + b"b" * 9000 + b"\r\n", 400),
        (b"X-Big: " + b"b" * 40_000 + b"\r\n", 400),
    ],
    ids=["50x1k", "9k", "40k"],
)
async def test_head_size_limits_are_the_same_on_both_paths(
    router: tuple[int, RouterContext], worker: RawWorker, extra: bytes, status: int
) -> None:
    port, _ = router
    a = await one(port, request("POST", "/demo/echo", extra=extra))
    assert a.status == status
    assert len(worker.proxied()) == (1 if status == 200 else 0)


# Bodies -----------------------------------------------------------------------------------


def nested(depth: int) -> bytes:
    return b"[" * depth + b"1" + b"]" * depth


@pytest.mark.parametrize(
    ("target", "body"),
    [
        ("/demo/generate", b'{"inputs": ' + nested(500) + b"}"),
        ("/v1/chat/completions", b'{"model": "demo-model", "messages": ' + nested(500) + b"}"),
        ("/v1/chat/completions", b'{"model": "demo-model", "messages": ' + nested(2000) + b"}"),
        ("/route", b'{"endpoint": "demo", "x": ' + nested(500) + b"}"),
        ("/api/v1/workers", b'{"endpoint": "demo", "x": ' + nested(500) + b"}"),
    ],
    ids=["proxy", "openai", "openai-2000", "route", "admin"],
)
async def test_deep_json_is_a_400_never_a_500(
    router: tuple[int, RouterContext], worker: RawWorker, target: str, body: bytes
) -> None:
    port, _ = router
    key = ADMIN_KEY if target.startswith("/api") else DEV_KEY
    a = await one(port, request("POST", target, body=body, key=key))
    assert a.status == 400, a
    assert a.json()["error"]["code"] == "json_too_deep"
    assert worker.proxied() == []


async def test_json_at_the_depth_limit_is_served(
    router: tuple[int, RouterContext], worker: RawWorker
) -> None:
    port, _ = router
    body = b'{"inputs": ' + nested(MAX_JSON_DEPTH - 2) + b"}"
    a = await one(port, request("POST", "/demo/generate", body=body))
    assert a.status == 200


async def test_cost_is_bounded_per_endpoint(
    router: tuple[int, RouterContext], worker: RawWorker
) -> None:
    port, ctx = router
    a = await one(port, request("POST", "/demo/echo", extra=b"X-Cost: 1e308\r\n"))
    assert a.status == 400 and a.json()["error"]["code"] == "bad_cost"
    big = orjson.dumps({"endpoint": "demo", "cost": 1e308})
    a = await one(port, request("POST", "/route", body=big))
    assert a.status == 400  # past what every verifier reads alike (2**53 - 1)
    big = orjson.dumps({"endpoint": "demo", "cost": 1e12})
    a = await one(port, request("POST", "/route", body=big))
    assert a.status == 400 and a.json()["error"]["code"] == "bad_cost"  # past max_cost
    ok = orjson.dumps({"endpoint": "demo", "cost": ctx.endpoints["demo"].max_cost})
    a = await one(port, request("POST", "/route", body=ok))
    assert a.status == 200 and "url" in a.json()
    assert worker.proxied() == []


# The worker's own routes ------------------------------------------------------------------


@pytest.mark.parametrize(
    "target",
    ["/demo/metrics", "/demo/livez", "/demo/readyz", "/demo/health", "/demo/admin/shutdown"],
)
async def test_the_workers_own_routes_are_not_exposed(
    router: tuple[int, RouterContext], worker: RawWorker, target: str
) -> None:
    port, _ = router
    for key in (DEV_KEY, ADMIN_KEY):
        a = await one(port, request("GET", target, key=key))
        assert a.status == 404, a
    assert worker.proxied() == []


@pytest.mark.parametrize("router", [{"expose_worker_routes": True}], indirect=True)
async def test_an_endpoint_may_expose_the_workers_routes(
    router: tuple[int, RouterContext], worker: RawWorker
) -> None:
    port, _ = router
    a = await one(port, request("GET", "/demo/metrics"))
    assert a.status == 200 and worker.proxied()[-1].target == b"/base/metrics"


# Answers ----------------------------------------------------------------------------------


async def test_answer_headers_repeated_kept_hop_by_hop_dropped_one_request_id(
    router: tuple[int, RouterContext], worker: RawWorker
) -> None:
    port, _ = router
    a = await one(port, request("GET", "/demo/cookies", extra=b"X-Request-Id: client.id-1\r\n"))
    assert a.status == 200
    assert a.header(b"set-cookie") == [b"a=1", b"b=2"]
    assert a.header(b"x-request-id") == [b"client.id-1"]
    assert a.header(b"x-hop") == [] and a.header(b"x-kept") == [b"yes"]
    seen = worker.proxied()[-1]
    assert seen.header(b"x-request-id") == [b"client.id-1"]
    assert seen.header(b"x-forwarded-proto") == [b"http"]
    assert seen.header(b"x-forwarded-host") == [b"router"]
    assert seen.header(b"authorization") == []


async def test_request_ids_have_one_format(
    router: tuple[int, RouterContext], worker: RawWorker
) -> None:
    port, _ = router
    a = await one(port, request("GET", "/demo/cookies"))
    (rid,) = a.header(b"x-request-id")
    assert len(rid) == 32 and all(c in b"0123456789abcdef" for c in rid), rid
    assert worker.proxied()[-1].header(b"x-request-id") == [rid]


async def test_a_300kb_answer_keeps_its_content_length(
    router: tuple[int, RouterContext], worker: RawWorker
) -> None:
    port, _ = router
    a = await one(port, request("GET", "/demo/big"))
    assert a.status == 200 and len(a.body) == 300_000
    assert a.header(b"content-length") == [b"300000"]
    assert a.header(b"transfer-encoding") == []


async def test_connection_close_is_honoured(
    router: tuple[int, RouterContext], worker: RawWorker, fast: bool
) -> None:
    port, _ = router
    first = request("POST", "/demo/echo", close=True)
    second = request("POST", "/demo/second", close=False)
    got = await exchange(port, first + second, answers=2)
    assert len(got) == 1, got  # one answer, then the connection ends
    if fast:
        assert got[0].status == 200 and got[0].header(b"connection") == [b"close"]
        assert [s.target for s in worker.proxied()] == [b"/base/echo"]
    else:
        # aiohttp's strict parser refuses the whole read: bytes after `Connection: close`
        assert got[0].status == 400
        assert worker.proxied() == []


# polled once (at start) and then not for a minute: only passive signals move it
QUIET = HealthSettings(interval_s=60, timeout_s=0.5, unhealthy_after=2, healthy_after=1)


@pytest.mark.parametrize("router", [{"health": QUIET}], indirect=True)
async def test_passive_health_counts_what_the_worker_did(
    router: tuple[int, RouterContext], worker: RawWorker
) -> None:
    """A client who can provoke a 500 or a 4xx cannot empty the fleet; a 502 or 503 ejects."""
    port, ctx = router
    worker.status_for.update({b"/base/boom": 500, b"/base/nope": 404, b"/base/down": 503})
    for _ in range(5):
        assert (await one(port, request("POST", "/demo/boom"))).status == 500
        assert (await one(port, request("POST", "/demo/nope"))).status == 404
    assert ctx.snapshot.status_counts("demo")["ready"] == 1
    for _ in range(2):
        await one(port, request("POST", "/demo/down"))
    assert ctx.snapshot.status_counts("demo")["ready"] == 0
