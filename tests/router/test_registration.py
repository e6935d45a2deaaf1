"""Worker registration as hostile input: URLs parsed strictly, where they may point, who
may change what, a cap per endpoint, and registered workers that never become ready."""

from __future__ import annotations

import hashlib
import time
from typing import Any

import pytest

from router.config import ApiKeySettings, RegistrationSettings
from router.state.base import worker_id
from router.workerurl import BadWorkerUrl, check
from tests.router.helpers import (
    ADMIN_KEY,
    WORKER_TOKEN,
    FakeWorker,
    ready_count,
    replace,
    router_client,
    settings,
    until,
)

SECOND_TOKEN = "second-worker-token"
ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}
TOKEN = {"Authorization": f"Bearer {WORKER_TOKEN}"}
SECOND = {"Authorization": f"Bearer {SECOND_TOKEN}"}


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:abc",
        "http://[::1",
        "http://127.0.0.1:99999",
        "http://127.0.0.1:0",
        "http://127.0.0.1:",
        "ftp://10.0.0.1:3000",
        "http://user:pw@10.0.0.1:3000",
        "http://10.0.0.1:3000/?x=1",
        "http://10.0.0.1:3000/#frag",
        "http://10.0.0.1:3000/a/../b",
        "http://10.0.0.1:3000/%2e%2e/b",
        "http://exa mple.com",
        "http://-bad-.example",
        "http://169.254.169.254/latest/meta-data",
        "http://169.254.1.1:3000",
        "http://[fe80::1]:3000",
        "http://[fd00:ec2::254]",
        "http://100.100.100.200",
        "http://metadata.google.internal",
        "http://[::ffff:169.254.169.254]",
        "http://0.0.0.0:3000",
        "http://224.0.0.1:3000",
        "http://127.0.0.1:8080",  # the router itself (below: router_port 8080)
        "http://localhost:8080/x",
        "http://[::1]:8080",
        "http://10.0.0.1:3000/x y",
    ],
)
def test_urls_a_worker_may_not_register(url: str) -> None:
    with pytest.raises(BadWorkerUrl):
        check(url, router_port=8080, router_hosts=("10.9.9.9",))


@pytest.mark.parametrize(
    "url",
    [
        "http://10.0.0.7:3000",
        "https://gpu-3.example.com",
        "http://[2001:db8::7]:3000/w/7",
        "http://127.0.0.1:3001",
        "http://10.9.9.9:3000",
    ],
)
def test_urls_a_worker_may_register(url: str) -> None:
    assert check(url, router_port=8080, router_hosts=("10.9.9.9",)) == url.rstrip("/")


def test_allowed_networks() -> None:
    nets = ("10.0.0.0/8", "fd00::/8")
    assert check("http://10.1.2.3:3000", router_port=1, allowed_networks=nets)
    assert check("http://[fd00::5]:3000", router_port=1, allowed_networks=nets)
    for url in ("http://192.168.1.5:3000", "http://gpu.example.com:3000", "http://[2001:db8::1]"):
        with pytest.raises(BadWorkerUrl):
            check(url, router_port=1, allowed_networks=nets)


def two_tokens(max_per_endpoint: int = 1000, **health: Any) -> Any:
    s = settings([])
    second = ApiKeySettings(
        hashlib.sha256(SECOND_TOKEN.encode()).hexdigest(),
        "second",
        endpoints=("demo",),
        register_workers=True,
    )
    demo = s.endpoints[0]
    if health:
        demo = replace(demo, health=replace(demo.health, **health))
    return replace(
        s,
        api_keys=(*s.api_keys, second),
        endpoints=(demo, *s.endpoints[1:]),
        registration=RegistrationSettings(max_per_endpoint=max_per_endpoint),
    )


async def test_registration_refuses_bad_urls_on_the_api() -> None:
    async with router_client(two_tokens()) as (client, ctx):
        for url in (
            "http://127.0.0.1:abc",
            "http://169.254.169.254",
            "http://[::1",
            f"http://127.0.0.1:{client.port}",
        ):
            resp = await client.post(
                "/api/v1/workers", headers=TOKEN, json={"endpoint": "demo", "url": url}
            )
            assert resp.status == 400, (url, await resp.text())
            assert (await resp.json())["error"]["code"] in ("bad_worker_url", "bad_request")
        assert ctx.snapshot.endpoint("demo") == []


async def test_who_may_change_what() -> None:
    static = FakeWorker()
    await static.start()
    try:
        s = two_tokens()
        demo = replace(s.endpoints[0], workers=(replace_worker(static.url),))
        s = replace(s, endpoints=(demo, *s.endpoints[1:]))
        async with router_client(s) as (client, ctx):
            await until(lambda: ready_count(ctx) == 1)
            # a config worker is not changed through the API, by a token or an admin
            for headers in (TOKEN, ADMIN):
                resp = await client.post(
                    "/api/v1/workers",
                    headers=headers,
                    json={"endpoint": "demo", "url": static.url, "perf": 9},
                )
                assert resp.status == 409, await resp.text()
            assert ctx.snapshot.get(worker_id("demo", static.url)).perf == 100.0  # type: ignore[union-attr]
            # a token changes only what it registered
            url = "http://10.0.0.7:3000"
            resp = await client.post(
                "/api/v1/workers", headers=TOKEN, json={"endpoint": "demo", "url": url, "perf": 50}
            )
            assert resp.status == 201
            resp = await client.post(
                "/api/v1/workers", headers=SECOND, json={"endpoint": "demo", "url": url, "perf": 1}
            )
            assert resp.status == 403
            assert ctx.snapshot.get(worker_id("demo", url)).perf == 50  # type: ignore[union-attr]
            resp = await client.post(
                "/api/v1/workers", headers=TOKEN, json={"endpoint": "demo", "url": url, "perf": 60}
            )
            assert resp.status == 200 and (await resp.json())["perf"] == 60
            resp = await client.post(
                "/api/v1/workers", headers=ADMIN, json={"endpoint": "demo", "url": url, "perf": 70}
            )
            assert resp.status == 200 and (await resp.json())["perf"] == 70
    finally:
        await static.stop()


def replace_worker(url: str) -> Any:
    from router.config import StaticWorker

    return StaticWorker(url, perf=100.0)


async def test_a_cap_on_registered_workers_per_endpoint() -> None:
    async with router_client(two_tokens(max_per_endpoint=3)) as (client, ctx):
        for i in range(3):
            resp = await client.post(
                "/api/v1/workers",
                headers=TOKEN,
                json={"endpoint": "demo", "url": f"http://10.0.0.{i + 1}:3000"},
            )
            assert resp.status == 201
        resp = await client.post(
            "/api/v1/workers",
            headers=TOKEN,
            json={"endpoint": "demo", "url": "http://10.0.0.99:3000"},
        )
        assert resp.status == 409 and (await resp.json())["error"]["code"] == "endpoint_full"
        # re-registering one that is there is no new worker
        resp = await client.post(
            "/api/v1/workers",
            headers=TOKEN,
            json={"endpoint": "demo", "url": "http://10.0.0.1:3000"},
        )
        assert resp.status == 200
        assert len(ctx.snapshot.endpoint("demo")) == 3


async def test_registered_workers_that_never_become_ready_are_removed_static_never() -> None:
    """Registered: removed after remove_after_s without one good poll; static: never."""
    static_url = "http://127.0.0.1:9"  # nothing listens there: never ready
    s = two_tokens(remove_after_s=0.5, interval_s=0.05)
    demo = replace(s.endpoints[0], workers=(replace_worker(static_url),))
    s = replace(s, endpoints=(demo, *s.endpoints[1:]))
    async with router_client(s) as (client, ctx):
        resp = await client.post(
            "/api/v1/workers", headers=TOKEN, json={"endpoint": "demo", "url": "http://127.0.0.1:7"}
        )
        assert resp.status == 201
        registered = worker_id("demo", "http://127.0.0.1:7")
        started = time.monotonic()
        await until(lambda: ctx.snapshot.get(registered) is None, timeout_s=10)
        assert time.monotonic() - started >= 0.4
        # the static one is still there, however long it has been failing
        assert ctx.snapshot.get(worker_id("demo", static_url)) is not None


async def test_draining_refreshes_last_ok() -> None:
    """A worker that answers 503 {"draining": true} is alive: it is not removed for it."""
    w = FakeWorker()
    await w.start()
    try:
        s = two_tokens(remove_after_s=0.5, interval_s=0.05, healthy_after=1)
        async with router_client(s) as (client, ctx):
            resp = await client.post(
                "/api/v1/workers", headers=TOKEN, json={"endpoint": "demo", "url": w.url}
            )
            assert resp.status == 201
            wid = worker_id("demo", w.url)
            await until(lambda: ready_count(ctx) == 1)
            w.status, w.body = 503, {"ready": False, "draining": True}
            await until(lambda: (r := ctx.snapshot.get(wid)) is not None and r.status == "draining")
            before = ctx.snapshot.get(wid).last_ok  # type: ignore[union-attr]
            await until(lambda: ctx.snapshot.get(wid).last_ok > before + 0.6, timeout_s=5)  # type: ignore[union-attr]
            assert ctx.snapshot.get(wid) is not None  # past remove_after_s, still there
    finally:
        await w.stop()
