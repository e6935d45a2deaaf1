"""Proxy mode in process: forwarding, headers, streaming, retries, timeouts, disconnects."""

from __future__ import annotations

import asyncio
import base64
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field, replace
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from router.config import Settings, StaticWorker
from router.context import RouterContext
from router.signing import canonical, verify_keys_from_jwks
from tests.router.helpers import DEV_KEY, OTHER_KEY, ready_count, router_client, settings, until

AUTH = {"Authorization": f"Bearer {DEV_KEY}"}


@dataclass
class Upstream:
    """A fake worker with the paths the proxy tests need."""

    name: str = "up"
    seen: list[dict[str, Any]] = field(default_factory=list)
    gate: asyncio.Event = field(default_factory=asyncio.Event)
    cancelled: asyncio.Event = field(default_factory=asyncio.Event)
    fail_status: int | None = None
    server: TestServer | None = None

    @property
    def url(self) -> str:
        assert self.server is not None
        return str(self.server.make_url("")).rstrip("/")

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/readyz", self.readyz)
        app.router.add_post("/stream", self.stream)
        app.router.add_post("/hold", self.hold)
        app.router.add_post("/die", self.die)
        app.router.add_post("/png", self.png)
        app.router.add_post("/sleep", self.sleep)
        app.router.add_get("/login", self.login)
        app.router.add_post("/short", self.short)
        app.router.add_route("*", "/{tail:.*}", self.echo)
        self.server = TestServer(app, host="127.0.0.1")
        await self.server.start_server()

    async def stop(self) -> None:
        if self.server is not None:
            await self.server.close()

    async def readyz(self, request: web.Request) -> web.Response:
        return web.json_response({"ready": True})

    async def echo(self, request: web.Request) -> web.Response:
        if self.fail_status:
            return web.json_response({"error": "busy"}, status=self.fail_status)
        body = await request.read()
        self.seen.append(
            {
                "method": request.method,
                "path": request.path,
                "query": request.query_string,
                "headers": dict(request.headers),
                "body": body,
            }
        )
        status = int(request.query.get("status", "200"))
        return web.json_response(
            {"who": self.name, "path": request.path},
            status=status,
            headers={"X-Upstream": self.name},
        )

    async def stream(self, request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        await resp.write(b"data: first\n\n")
        await asyncio.wait_for(self.gate.wait(), 10)  # only once the client saw `first`
        for i in range(3):
            await resp.write(f"data: {i}\n\n".encode())
        await resp.write(b"data: [DONE]\n\n")
        return resp

    async def hold(self, request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        await resp.write(b"data: first\n\n")
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            self.cancelled.set()
            raise
        return resp

    async def die(self, request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        await resp.write(b"data: first\n\n")
        assert request.transport is not None
        request.transport.abort()  # like a killed process: no clean end of stream
        return resp

    async def png(self, request: web.Request) -> web.Response:
        return web.Response(body=PNG, content_type="image/png")

    async def short(self, request: web.Request) -> web.StreamResponse:
        """Promise 1000 bytes, send 10, drop the connection."""
        resp = web.StreamResponse(headers={"Content-Type": "application/json"})
        resp.content_length = 1000
        await resp.prepare(request)
        await resp.write(b'{"partial')
        assert request.transport is not None
        request.transport.close()
        return resp

    async def login(self, request: web.Request) -> web.Response:
        resp = web.json_response({"ok": True})
        resp.set_cookie("session", "client-one-secret")
        return resp

    async def sleep(self, request: web.Request) -> web.Response:
        await asyncio.sleep(5)
        return web.json_response({})


PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 40


@pytest.fixture
async def ups() -> AsyncIterator[list[Upstream]]:
    us = [Upstream("a"), Upstream("b")]
    for u in us:
        await u.start()
    yield us
    for u in us:
        await u.stop()


_FAST = [True]


@pytest.fixture(autouse=True, params=[True, False], ids=["fast", "aiohttp"])
def fast_path(request: pytest.FixtureRequest) -> bool:
    """Every proxy test runs on both paths: router/proxy/server.py and router/proxy/web.py."""
    _FAST[0] = request.param
    return bool(request.param)


def proxy_settings(ups: list[Upstream], perfs: tuple[float, ...] = (), **ep: Any) -> Settings:
    s = settings([u.url for u in ups])
    s = replace(s, server=replace(s.server, fast_proxy=_FAST[0]))
    workers = tuple(
        StaticWorker(u.url, perf=(perfs[i] if perfs else 100.0)) for i, u in enumerate(ups)
    )
    demo = replace(s.endpoints[0], workers=workers, models=("demo-model",), **ep)
    return replace(s, endpoints=(demo, *s.endpoints[1:]))


async def test_forwards_method_path_query_body_and_headers(ups: list[Upstream]) -> None:
    async with router_client(proxy_settings(ups[:1])) as (client, ctx):
        await until(lambda: ready_count(ctx) == 1)
        resp = await client.post(
            "/demo/some/path?x=1&y=2",
            data=b'{"inputs": "hi", "max_new_tokens": 7}',
            headers={
                **AUTH,
                "Content-Type": "application/json",
                "X-Custom": "kept",
                "Connection": "keep-alive, X-Hop",
                "X-Hop": "dropped",
                "Keep-Alive": "timeout=5",
                "TE": "trailers",
                "X-Forwarded-For": "10.1.1.1",
                "X-Request-Id": "req-42",
                "X-Route-Ticket": "forged",
            },
        )
        assert resp.status == 200
        assert await resp.json() == {"who": "a", "path": "/some/path"}
        assert resp.headers["X-Upstream"] == "a" and resp.headers["X-Request-Id"] == "req-42"
        assert resp.content_type == "application/json"
        seen = ups[0].seen[-1]
        h = {k.lower(): v for k, v in seen["headers"].items()}
        assert seen["method"] == "POST" and seen["query"] == "x=1&y=2"
        assert seen["body"] == b'{"inputs": "hi", "max_new_tokens": 7}'
        assert h["x-custom"] == "kept" and h["x-request-id"] == "req-42"
        assert "authorization" not in h  # the router key stays with the router
        assert "keep-alive" not in h and "te" not in h and "x-hop" not in h
        assert h["x-forwarded-for"] == "10.1.1.1, 127.0.0.1"
        assert h["x-forwarded-proto"] == "http" and h["x-forwarded-host"]
        ticket = orjson.loads(base64.urlsafe_b64decode(h["x-route-ticket"] + "=="))
        jwks = verify_keys_from_jwks(await (await client.get("/.well-known/jwks.json")).json())
        assert jwks[ticket["key_id"]].verify(
            canonical(ticket), base64.b64decode(ticket["signature"])
        )
        assert ticket["url"] == ups[0].url and ticket["cost"] == 7 + 2 / 4
        # status codes pass through, and a GET works too
        resp = await client.get("/demo/x?status=404", headers=AUTH)
        assert resp.status == 404 and ups[0].seen[-1]["method"] == "GET"


async def test_proxy_tickets_are_ed25519_when_route_tickets_are_rsa(ups: list[Upstream]) -> None:
    """An RSA signature per proxied request buys nothing over Ed25519: the ring's Ed25519
    key signs proxy tickets, the RSA one /route's, and the JWKS publishes both."""
    from router.signing import KeyRing

    ring = KeyRing.ephemeral("rsa")
    async with router_client(proxy_settings(ups[:1]), ring) as (client, ctx):
        await until(lambda: ready_count(ctx) == 1)
        resp = await client.post("/demo/echo", headers=AUTH, json={"inputs": "hi"})
        assert resp.status == 200
        header = {k.lower(): v for k, v in ups[0].seen[-1]["headers"].items()}["x-route-ticket"]
        ticket = orjson.loads(base64.urlsafe_b64decode(header + "=="))
        jwks = verify_keys_from_jwks(await (await client.get("/.well-known/jwks.json")).json())
        key = jwks[ticket["key_id"]]
        assert key.algorithm == "ed25519" and ticket["key_id"] == ring.proxy_kid != ring.kid
        assert key.verify(canonical(ticket), base64.b64decode(ticket["signature"]))
        resp = await client.post("/route", json={"endpoint": "demo", "api_key": DEV_KEY})
        routed = await resp.json()
        assert routed["key_id"] == ring.kid and jwks[ring.kid].algorithm == "rsa"


async def test_errors_before_forwarding(ups: list[Upstream]) -> None:
    s = proxy_settings(ups[:1], max_body_bytes=100)
    async with router_client(s) as (client, ctx):
        await until(lambda: ready_count(ctx) == 1)
        assert (await client.post("/demo/echo")).status == 401
        # a key that may not use the endpoint learns no more than of one that does not exist
        other = {"Authorization": f"Bearer {OTHER_KEY}"}
        forbidden = await client.post("/demo/echo", headers=other)
        missing = await client.post("/nope/echo", headers=AUTH)
        assert forbidden.status == missing.status == 404
        assert (await missing.json())["error"]["code"] == "not_found"
        assert (await forbidden.json())["error"] == {
            **(await missing.json())["error"],
            "message": "no endpoint or route named 'demo'",
        }
        resp = await client.post("/demo/echo", data=b"x" * 101, headers=AUTH)
        assert resp.status == 413 and (await resp.json())["error"]["code"] == "body_too_large"
        resp = await client.post("/demo/echo", headers={**AUTH, "X-Cost": "lots"})
        assert resp.status == 400
        assert ups[0].seen == []


async def test_stream_chunks_are_not_buffered(ups: list[Upstream]) -> None:
    async with router_client(proxy_settings(ups[:1])) as (client, ctx):
        await until(lambda: ready_count(ctx) == 1)
        resp = await client.post("/demo/stream", headers=AUTH)
        assert resp.content_type == "text/event-stream"
        # the upstream holds the rest until the test sets the gate: `first` must arrive alone
        first = await asyncio.wait_for(resp.content.readuntil(b"\n\n"), 5)
        assert first == b"data: first\n\n"
        ups[0].gate.set()
        rest = await asyncio.wait_for(resp.content.read(), 5)
        assert rest == b"data: 0\n\ndata: 1\n\ndata: 2\n\ndata: [DONE]\n\n"


async def test_truncated_small_answer_is_a_502_not_a_short_body(ups: list[Upstream]) -> None:
    async with router_client(proxy_settings(ups[:1])) as (client, ctx):
        await until(lambda: ready_count(ctx) == 1)
        resp = await client.post("/demo/short", headers=AUTH)
        assert resp.status == 502
        assert (await resp.json())["error"]["code"] == "upstream_failed"
        await until(lambda: _pending(ctx) == 0.0)


async def test_cookies_pass_through_and_never_reach_another_client(ups: list[Upstream]) -> None:
    # A host name, not an IP: aiohttp's default cookie jar ignores cookies from IPs.
    s = proxy_settings(ups[:1])
    named = StaticWorker(ups[0].url.replace("127.0.0.1", "localhost"), perf=100.0)
    s = replace(s, endpoints=(replace(s.endpoints[0], workers=(named,)), *s.endpoints[1:]))
    async with router_client(s) as (client, ctx):
        await until(lambda: ready_count(ctx) == 1)
        resp = await client.get("/demo/login", headers=AUTH)
        assert "client-one-secret" in resp.headers["Set-Cookie"]
        client.session.cookie_jar.clear()  # the next request comes from someone else
        assert (await client.post("/demo/echo", headers=AUTH)).status == 200
        # the router's upstream session must not keep cookies between clients
        assert "Cookie" not in ups[0].seen[-1]["headers"]
        resp = await client.post("/demo/echo", headers={**AUTH, "Cookie": "mine=1"})
        assert ups[0].seen[-1]["headers"]["Cookie"] == "mine=1"


async def test_binary_body_passes_through(ups: list[Upstream]) -> None:
    async with router_client(proxy_settings(ups[:1])) as (client, ctx):
        await until(lambda: ready_count(ctx) == 1)
        resp = await client.post("/demo/png", headers=AUTH)
        assert resp.content_type == "image/png"
        assert resp.headers["Content-Length"] == str(len(PNG))
        assert await resp.read() == PNG


async def test_client_disconnect_cancels_upstream_and_releases_load(ups: list[Upstream]) -> None:
    async with router_client(proxy_settings(ups[:1])) as (client, ctx):
        await until(lambda: ready_count(ctx) == 1)
        resp = await client.post("/demo/hold", headers={**AUTH, "X-Cost": "500"})
        assert await resp.content.readuntil(b"\n\n") == b"data: first\n\n"
        w = await ctx.store.get_worker(ctx.snapshot.endpoint("demo")[0].id)
        assert w is not None and w.pending_cost == 500
        resp.close()  # the client hangs up mid-stream
        await asyncio.wait_for(ups[0].cancelled.wait(), 5)
        await until(lambda: _pending(ctx) == 0.0)


def _pending(ctx: RouterContext) -> float:
    return ctx.snapshot.endpoint("demo")[0].pending_cost


async def test_retry_on_503_goes_to_another_worker(ups: list[Upstream]) -> None:
    ups[0].fail_status = 503  # the faster worker, so it is tried first
    async with router_client(proxy_settings(ups, perfs=(1000.0, 100.0))) as (client, ctx):
        await until(lambda: ready_count(ctx) == 2)
        resp = await client.post("/demo/echo", headers=AUTH)
        assert resp.status == 200 and (await resp.json())["who"] == "b"
        metrics = await (await client.get("/metrics")).text()
        assert 'router_retries_total{endpoint="demo",reason="status_503"} 1.0' in metrics
        assert all(w.pending_cost == 0 for w in ctx.snapshot.endpoint("demo"))
    async with router_client(proxy_settings(ups, perfs=(1000.0, 100.0), retries=0)) as (
        client,
        ctx,
    ):
        await until(lambda: ready_count(ctx) == 2)
        resp = await client.post("/demo/echo", headers=AUTH)
        assert resp.status == 503 and await resp.json() == {"error": "busy"}


async def test_dead_worker_is_retried_and_marked_unhealthy(ups: list[Upstream]) -> None:
    s = proxy_settings(ups, perfs=(1000.0, 100.0))
    slow_health = replace(s.endpoints[0].health, interval_s=30.0)
    s = replace(s, endpoints=(replace(s.endpoints[0], health=slow_health), s.endpoints[1]))
    async with router_client(s) as (client, ctx):
        await until(lambda: ready_count(ctx) == 2)
        dead = ups[0].url
        await ups[0].stop()  # gone before the health poller can notice
        resp = await client.post("/demo/echo", headers=AUTH)
        assert resp.status == 200 and (await resp.json())["who"] == "b"
        statuses = {w.url: w.status for w in ctx.snapshot.endpoint("demo")}
        assert statuses[dead] == "unhealthy"  # the refused connection counted


async def test_worker_dying_mid_stream_ends_with_error_event(ups: list[Upstream]) -> None:
    async with router_client(proxy_settings(ups[:1])) as (client, ctx):
        await until(lambda: ready_count(ctx) == 1)
        resp = await client.post("/demo/die", headers=AUTH)
        body = await asyncio.wait_for(resp.content.read(), 5)
        assert body.startswith(b"data: first\n\n")
        assert b"event: error" in body and b"upstream_failed" in body


async def test_slow_worker_gets_504_before_first_byte(ups: list[Upstream]) -> None:
    async with router_client(proxy_settings(ups[:1], timeout_ttfb_s=0.3)) as (client, ctx):
        await until(lambda: ready_count(ctx) == 1)
        started = time.monotonic()
        resp = await client.post("/demo/sleep", headers=AUTH)
        assert resp.status == 504 and (await resp.json())["error"]["code"] == "upstream_timeout"
        assert time.monotonic() - started < 2


async def test_no_ready_worker_is_503_with_breakdown(ups: list[Upstream]) -> None:
    s = proxy_settings(ups[:1])
    s = replace(s, endpoints=(replace(s.endpoints[0], workers=()), s.endpoints[1]))
    async with router_client(s) as (client, _):
        resp = await client.post("/demo/echo", headers=AUTH)
        doc = await resp.json()
        assert resp.status == 503 and resp.headers["Retry-After"] == "1"
        assert doc["error"]["code"] == "no_worker" and doc["status"]["ready"] == 0


async def test_openai_paths_pick_the_endpoint_by_model(ups: list[Upstream]) -> None:
    async with router_client(proxy_settings(ups[:1])) as (client, ctx):
        await until(lambda: ready_count(ctx) == 1)
        for model in ("demo", "demo-model"):
            resp = await client.post(
                "/v1/chat/completions",
                headers=AUTH,
                json={
                    "model": model,
                    "messages": [{"role": "user", "content": "hi"}],
                    "max_tokens": 5,
                },
            )
            assert resp.status == 200 and (await resp.json())["path"] == "/v1/chat/completions"
        resp = await client.post("/v1/completions", headers=AUTH, json={"model": "llama"})
        assert resp.status == 404 and (await resp.json())["error"]["code"] == "model_not_found"
        resp = await client.post("/v1/embeddings", headers=AUTH, data=b"{")
        assert resp.status == 400
        models = await (await client.get("/v1/models", headers=AUTH)).json()
        assert [m["id"] for m in models["data"]] == ["demo", "demo-model"]
        assert (await client.get("/v1/models")).status == 401


async def test_served_model_name_is_written_into_openai_bodies(ups: list[Upstream]) -> None:
    """vLLM answers only to its --served-model-name: the router writes it in for the client."""
    served = "meta-llama/Llama-3.1-8B-Instruct"
    async with router_client(proxy_settings(ups[:1], served_model_name=served)) as (client, ctx):
        await until(lambda: ready_count(ctx) == 1)
        chat = {"messages": [{"role": "user", "content": "hï"}], "max_tokens": 5}
        for path, model in [
            ("/v1/chat/completions", "demo-model"),  # the endpoint picked by `model`
            ("/v1/completions", "demo"),
            ("/demo/v1/chat/completions", "anything"),  # a base URL of /demo/v1
            ("/v1/embeddings", served),  # already the served name: forwarded as sent
        ]:
            resp = await client.post(path, headers=AUTH, json={"model": model, **chat})
            assert resp.status == 200, (path, await resp.text())
            seen = orjson.loads(ups[0].seen[-1]["body"])
            assert seen == {"model": served, **chat}, path
        # other paths, and OpenAI bodies with no model, are forwarded as they came
        for path, body in [
            ("/demo/generate", b'{"model": "demo", "inputs": "hi"}'),
            ("/demo/v1/completions", b'{"prompt": "hi"}'),
        ]:
            resp = await client.post(
                path, headers={**AUTH, "Content-Type": "application/json"}, data=body
            )
            assert resp.status == 200 and ups[0].seen[-1]["body"] == body
        models = await (await client.get("/v1/models", headers=AUTH)).json()
        assert [m["id"] for m in models["data"]] == ["demo", "demo-model", served]


# text-generation 0.7 still calls pydantic's deprecated .dict(); not ours to fix.
@pytest.mark.filterwarnings("ignore:The `dict` method is deprecated")
async def test_tgi_client_through_the_proxy_raises_by_error_type(ups: list[Upstream]) -> None:
    """Router errors on TGI's paths carry TGI's error_type, as the worker's do, so Hugging
    Face's client raises by meaning (a refused key is ValidationError, no worker
    OverloadedError), not by a status it reads its own way."""
    tg = pytest.importorskip("text_generation")
    tg_errors = pytest.importorskip("text_generation.errors")
    async with router_client(proxy_settings(ups[:1], max_body_bytes=1000)) as (client, ctx):
        await until(lambda: ready_count(ctx) == 1)
        base = str(client.make_url("/demo"))
        refused = {"Authorization": "Bearer not-a-key"}
        with pytest.raises(tg_errors.ValidationError) as info:
            await tg.AsyncClient(base, headers=refused, timeout=10).generate("Hi")
        assert info.value.args[0]["code"] == "invalid_api_key"
        with pytest.raises(tg_errors.ValidationError):
            await anext(tg.AsyncClient(base, timeout=10).generate_stream("Hi"))
        with pytest.raises(tg_errors.ValidationError):
            sync = tg.AsyncClient(f"{base}/generate", headers=refused, timeout=10)
            await sync.generate("Hi")
        # a key that may not use the endpoint: the same 404 as none, NotFoundError
        other = {"Authorization": f"Bearer {OTHER_KEY}"}
        with pytest.raises(tg_errors.NotFoundError):
            await tg.AsyncClient(base, headers=other, timeout=10).generate("Hi")
        # too large for the endpoint: ValidationError on both paths (read by either server)
        resp = await client.post("/demo/generate", headers=AUTH, data=b"x" * 1001)
        assert resp.status == 413 and (await resp.json())["error_type"] == "validation"
        # paths that are not TGI's keep the plain error body
        resp = await client.post("/demo/v1/completions", headers=refused, json={})
        assert resp.status == 401 and "error_type" not in await resp.json()
        resp = await client.post("/route", headers=refused, json={"endpoint": "demo"})
        assert resp.status == 401 and "error_type" not in await resp.json()
    async with router_client(proxy_settings([])) as (client, _):
        with pytest.raises(tg_errors.OverloadedError) as info:
            await tg.AsyncClient(str(client.make_url("/demo")), headers=AUTH).generate("Hi")
        assert info.value.args[0]["code"] == "no_worker"


async def test_real_worker_behind_the_proxy_accepts_the_ticket(tmp_path: Any) -> None:
    """The reference worker verifies X-Route-Ticket on proxied traffic."""
    from workers.app import build_app as build_worker
    from workers.settings import WorkerSettings

    async with router_client(settings([])) as (client, ctx):
        pem = tmp_path / "router.pem"
        pem.write_text(ctx.keyring.public_pem())
        port = aiohttp.test_utils.unused_port()
        url = f"http://127.0.0.1:{port}"
        worker = TestServer(
            build_worker(
                WorkerSettings(
                    backend="synthetic", public_url=url, endpoint="demo", pubkey_file=pem
                )
            ),
            host="127.0.0.1",
            port=port,
        )
        await worker.start_server()
        try:
            admin = {"Authorization": "Bearer admin-key"}
            assert (
                await client.post(
                    "/api/v1/workers", headers=admin, json={"endpoint": "demo", "url": url}
                )
            ).status == 201
            await until(lambda: ready_count(ctx) == 1)
            resp = await client.post(
                "/demo/generate",
                headers=AUTH,
                json={"inputs": "hello", "parameters": {"max_new_tokens": 4}},
            )
            assert resp.status == 200, await resp.text()
            assert len((await resp.json())["generated_text"].split()) == 4
        finally:
            await worker.close()
