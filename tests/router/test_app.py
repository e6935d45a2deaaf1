"""The router's HTTP surface in process: /route, keys, errors, admin API, metrics."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest
from aiohttp.test_utils import TestClient

from router.context import RouterContext
from router.signing import KeyRing, canonical, verify_keys_from_jwks
from router.state.base import reqnum_floor
from tests.router.helpers import (
    ADMIN_KEY,
    DEV_KEY,
    OTHER_KEY,
    WORKER_TOKEN,
    FakeWorker,
    ready_count,
    replace,
    router_client,
    settings,
    until,
)

Client = TestClient[Any, Any]


@pytest.fixture(params=[True, False], ids=["fast", "aiohttp"])
async def router(
    workers: list[FakeWorker],
    request: pytest.FixtureRequest,
) -> AsyncIterator[tuple[Client, RouterContext]]:
    """/route served by router/front.py's fast path, and by aiohttp (ticket.route)."""
    s = settings([w.url for w in workers])
    s = replace(s, server=replace(s.server, fast_proxy=request.param))
    async with router_client(s) as (client, ctx):
        await until(lambda: ready_count(ctx) == 2)
        yield client, ctx


async def post_route(
    client: Client, body: Any, headers: dict[str, str] | None = None, raw: bytes | None = None
) -> tuple[int, Any, Any]:
    data = raw if raw is not None else orjson.dumps(body)
    resp = await client.post("/route/", data=data, headers=headers or {})
    assert resp.content_type == "application/json"
    return resp.status, await resp.json(), resp.headers


async def test_route_returns_a_signed_ticket(
    router: tuple[Client, RouterContext], workers: list[FakeWorker]
) -> None:
    client, _ = router
    status, t, _ = await post_route(client, {"endpoint": "demo", "api_key": DEV_KEY, "cost": 256})
    assert status == 200
    assert set(t) == {
        "endpoint",
        "url",
        "cost",
        "reqnum",
        "request_idx",
        "expires_at",
        "key_id",
        "signature",
        "__request_id",
    }
    assert t["url"] in {w.url for w in workers}
    assert t["cost"] == 256.0 and t["endpoint"] == "demo" and t["request_idx"] > 0
    jwks = await (await client.get("/.well-known/jwks.json")).json()
    key = verify_keys_from_jwks(jwks)[t["key_id"]]
    assert key.verify(canonical(t), base64.b64decode(t["signature"]))
    assert not key.verify(canonical(dict(t, url="http://evil")), base64.b64decode(t["signature"]))


async def test_reqnums_increase_per_worker_and_load_spreads(
    router: tuple[Client, RouterContext],
) -> None:
    client, _ = router
    by_url: dict[str, list[int]] = {}
    for _ in range(20):
        _, t, _ = await post_route(client, {"endpoint": "demo", "api_key": DEV_KEY})
        by_url.setdefault(t["url"], []).append(t["reqnum"])
    assert len(by_url) == 2
    for nums in by_url.values():
        assert nums == sorted(set(nums))
        assert nums[-1] - nums[0] == len(nums) - 1
    assert all(abs(len(v) - 10) <= 1 for v in by_url.values())  # least_work alternates


@pytest.mark.parametrize("where", ["body", "bearer", "key"])
async def test_api_key_in_all_three_places(
    router: tuple[Client, RouterContext], where: str
) -> None:
    client, _ = router
    body: dict[str, Any] = {"endpoint": "demo"}
    headers = {}
    if where == "body":
        body["api_key"] = DEV_KEY
    else:
        headers["Authorization"] = f"{'Bearer' if where == 'bearer' else 'Key'} {DEV_KEY}"
    status, t, _ = await post_route(client, body, headers)
    assert status == 200 and "url" in t


@pytest.mark.parametrize(
    ("body", "raw", "status", "code"),
    [
        (None, b"{not json", 400, "bad_json"),
        (None, b"", 400, "bad_request"),
        ([1, 2], None, 400, "bad_request"),
        ({"api_key": DEV_KEY}, None, 400, "bad_request"),
        ({"endpoint": 5, "api_key": DEV_KEY}, None, 400, "bad_request"),
        ({"endpoint": "demo", "api_key": DEV_KEY, "cost": "big"}, None, 400, "bad_request"),
        ({"endpoint": "demo", "api_key": DEV_KEY, "cost": True}, None, 400, "bad_request"),
        ({"endpoint": "demo", "api_key": DEV_KEY, "cost": -1}, None, 400, "bad_request"),
        (None, b'{"endpoint":"demo","api_key":"dev-key","cost":1e999}', 400, "bad_json"),
        ({"endpoint": "demo", "api_key": DEV_KEY, "request_idx": -3}, None, 400, "bad_request"),
        ({"endpoint": "demo", "api_key": DEV_KEY, "request_idx": 1.5}, None, 400, "bad_request"),
        # past 2**53 - 1 a JavaScript verifier could not rebuild the signed number
        ({"endpoint": "demo", "api_key": DEV_KEY, "cost": 2**53}, None, 400, "bad_request"),
        ({"endpoint": "demo", "api_key": DEV_KEY, "request_idx": 2**53}, None, 400, "bad_request"),
        ({"endpoint": "demo", "api_key": DEV_KEY, "session_id": 7}, None, 400, "bad_request"),
        ({"endpoint": "demo", "api_key": 12}, None, 400, "bad_request"),
        ({"endpoint": "demo"}, None, 401, "missing_api_key"),
        ({"endpoint": "demo", "api_key": "wrong"}, None, 401, "invalid_api_key"),
        ({"endpoint": "demo", "api_key": OTHER_KEY}, None, 404, "unknown_endpoint"),
        ({"endpoint": "nope", "api_key": DEV_KEY}, None, 404, "unknown_endpoint"),
    ],
)
async def test_bad_input_gets_json_errors(
    router: tuple[Client, RouterContext], body: Any, raw: bytes | None, status: int, code: str
) -> None:
    client, _ = router
    got, doc, _ = await post_route(client, body, raw=raw)
    assert got == status
    assert doc["error"]["code"] == code and doc["error"]["message"]
    assert DEV_KEY not in orjson.dumps(doc).decode()


@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE", "HEAD"])
@pytest.mark.parametrize("path", ["/route", "/route/"])
async def test_route_other_methods_are_405_allow_post(
    router: tuple[Client, RouterContext], method: str, path: str
) -> None:
    client, _ = router
    resp = await client.request(method, path, headers={"Authorization": f"Bearer {DEV_KEY}"})
    assert resp.status == 405 and resp.headers["Allow"] == "POST"
    if method != "HEAD":
        assert resp.content_type == "application/json"
        assert (await resp.json())["error"]["code"] == "method_not_allowed"


async def test_oversized_body_is_413(router: tuple[Client, RouterContext]) -> None:
    client, _ = router
    status, doc, _ = await post_route(client, None, raw=b'{"endpoint": "' + b"x" * 70000 + b'"}')
    assert status == 413 and doc["error"]["code"] == "body_too_large"


async def test_no_ready_worker_answers_200_without_url(workers: list[FakeWorker]) -> None:
    workers[0].status = 503
    workers[1].status = 503
    async with router_client(settings([w.url for w in workers])) as (client, ctx):
        await until(lambda: workers[0].polls > 0 and workers[1].polls > 0)
        status, doc, headers = await post_route(client, {"endpoint": "demo", "api_key": DEV_KEY})
        assert status == 200 and "url" not in doc
        assert doc["status"] == {"ready": 0, "loading": 2, "unhealthy": 0, "draining": 0}
        assert doc["endpoint"] == "demo" and doc["retry_after_s"] == 1.0
        assert headers["Retry-After"] == "1"
        idx = doc["request_idx"]
        assert idx > 0
        # the client's retry keeps its request_idx, and gets a ticket once a worker is ready
        workers[0].status = 200
        await until(lambda: ready_count(ctx) == 1)
        status, t, _ = await post_route(
            client, {"endpoint": "demo", "api_key": DEV_KEY, "request_idx": idx}
        )
        assert t["url"] == workers[0].url and t["request_idx"] == idx


async def test_session_affinity(router: tuple[Client, RouterContext]) -> None:
    client, _ = router
    urls = set()
    for _ in range(10):
        _, t, _ = await post_route(
            client, {"endpoint": "demo", "api_key": DEV_KEY, "session_id": "conversation-1"}
        )
        urls.add(t["url"])
    assert len(urls) == 1


async def test_max_load_full_gives_busy_answer(workers: list[FakeWorker]) -> None:
    from router.config import StaticWorker
    from tests.router.helpers import replace

    s = settings([workers[0].url])
    ep = replace(s.endpoints[0], workers=(StaticWorker(workers[0].url, 100.0, 150.0),))
    s = replace(s, endpoints=(ep, *s.endpoints[1:]))
    async with router_client(s) as (client, ctx):
        await until(lambda: ready_count(ctx) == 1)
        status, t, _ = await post_route(
            client, {"endpoint": "demo", "api_key": DEV_KEY, "cost": 100}
        )
        assert "url" in t
        status, doc, _ = await post_route(
            client, {"endpoint": "demo", "api_key": DEV_KEY, "cost": 100}
        )
        assert status == 200 and "url" not in doc and doc["reason"] == "all_workers_busy"


async def test_public_endpoints(router: tuple[Client, RouterContext]) -> None:
    client, _ = router
    for path in ("/pubkey", "/pubkey/"):
        resp = await client.get(path)
        assert resp.status == 200 and "BEGIN PUBLIC KEY" in await resp.text()
    assert (await client.get("/livez")).status == 200
    ready = await client.get("/readyz")
    assert ready.status == 200 and (await ready.json())["ready"] is True
    # a path that routes nowhere wants a key first, as an endpoint that exists does
    resp = await client.get("/nowhere")
    assert resp.status == 401 and (await resp.json())["error"]["code"] == "missing_api_key"
    resp = await client.get("/nowhere", headers={"Authorization": f"Bearer {DEV_KEY}"})
    assert resp.status == 404 and (await resp.json())["error"]["code"] == "not_found"
    await post_route(client, {"endpoint": "demo", "api_key": DEV_KEY})
    text = await (await client.get("/metrics")).text()
    for name in (
        "router_requests_total",
        "router_request_duration_seconds",
        "router_tickets_total",
        "router_workers",
        "router_inflight_cost",
        "router_health_checks_total",
        "router_store_errors_total",
    ):
        assert name in text
    assert 'router_workers{endpoint="demo",status="ready"} 2.0' in text
    assert 'router_capacity{endpoint="demo"} 200.0' in text  # two ready workers of perf 100
    assert DEV_KEY not in text


async def test_admin_workers_api(router: tuple[Client, RouterContext]) -> None:
    client, ctx = router
    admin = {"Authorization": f"Bearer {ADMIN_KEY}"}
    token = {"Authorization": f"Bearer {WORKER_TOKEN}"}
    extra = FakeWorker()
    await extra.start()
    try:
        # a worker token registers on its endpoint only
        resp = await client.post(
            "/api/v1/workers", json={"endpoint": "other", "url": extra.url}, headers=token
        )
        assert resp.status == 403
        resp = await client.post(
            "/api/v1/workers",
            json={"endpoint": "demo", "url": extra.url, "perf": 50},
            headers=token,
        )
        assert resp.status == 201
        wid = (await resp.json())["id"]
        resp = await client.post(
            "/api/v1/workers",
            json={"endpoint": "demo", "url": extra.url, "perf": 50},
            headers=token,
        )
        assert resp.status == 200  # idempotent
        for url in ("http://bücher.example:3000", "http://10.0.0.7:3000/a&b"):
            resp = await client.post(
                "/api/v1/workers", json={"endpoint": "demo", "url": url}, headers=token
            )
            assert resp.status == 400  # tickets carry the URL: plain ASCII only
        assert (await client.get("/api/v1/workers", headers=token)).status == 403
        await until(lambda: ready_count(ctx) == 3)
        listing = await (await client.get("/api/v1/workers?endpoint=demo", headers=admin)).json()
        assert {w["url"] for w in listing["workers"]} >= {extra.url}
        assert all(w["status"] == "ready" for w in listing["workers"])
        resp = await client.post(f"/api/v1/workers/{wid}/drain", headers=admin)
        assert (await resp.json())["status"] == "draining"
        for _ in range(10):  # a draining worker gets no tickets
            _, t, _ = await post_route(client, {"endpoint": "demo", "api_key": DEV_KEY})
            assert t["url"] != extra.url
        resp = await client.delete(f"/api/v1/workers/{wid}", headers=token)
        assert resp.status == 200
        assert (await client.delete(f"/api/v1/workers/{wid}", headers=admin)).status == 404
        static_id = next(w["id"] for w in listing["workers"] if w["source"] == "static")
        resp = await client.delete(f"/api/v1/workers/{static_id}", headers=admin)
        assert resp.status == 409
        # bad input and bad keys
        for body in (
            {"endpoint": "demo"},
            {"endpoint": "demo", "url": "ftp://x"},
            {"endpoint": "demo", "url": extra.url, "perf": -1},
        ):
            resp = await client.post("/api/v1/workers", json=body, headers=admin)
            assert resp.status == 400
        resp = await client.post(
            "/api/v1/workers",
            json={"endpoint": "demo", "url": extra.url},
            headers={"Authorization": f"Bearer {DEV_KEY}"},
        )
        assert resp.status == 403
        assert (await client.get("/api/v1/workers")).status == 401
    finally:
        await extra.stop()


async def test_ed25519_and_rsa_keyrings_both_sign(workers: list[FakeWorker]) -> None:
    for ring in (KeyRing.ephemeral("rsa"), KeyRing.ephemeral("ed25519")):
        async with router_client(settings([workers[0].url]), keyring=ring) as (client, ctx):
            await until(lambda: ready_count(ctx) == 1)
            _, t, _ = await post_route(client, {"endpoint": "demo", "api_key": DEV_KEY})
            vk = ring.signer.verify_key
            assert vk.verify(canonical(t), base64.b64decode(t["signature"]))
            assert t["reqnum"] >= reqnum_floor(0)


async def test_tickets_signed_on_a_thread_pool_verify(workers: list[FakeWorker]) -> None:
    ring = KeyRing.ephemeral("rsa")
    s = settings([w.url for w in workers])
    s = replace(s, signing=replace(s.signing, threads=2))
    async with router_client(s, keyring=ring) as (client, ctx):
        assert ctx.sign_pool is not None
        await until(lambda: ready_count(ctx) == 2)
        answers = await asyncio.gather(
            *(
                post_route(client, {"endpoint": "demo", "api_key": DEV_KEY, "cost": 10 + i})
                for i in range(16)
            )
        )
    vk = ring.signer.verify_key
    for i, (status, t, _) in enumerate(answers):
        assert status == 200 and t["cost"] == 10 + i
        assert vk.verify(canonical(t), base64.b64decode(t["signature"]))
    assert len({(t["url"], t["reqnum"]) for _, t, _ in answers}) == 16
