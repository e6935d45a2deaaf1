"""Self-registration against a fake router: retry until 2xx, re-register, deregister at exit."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web

from router.signing import KeyRing
from tests.workers.helpers import ENDPOINT, PUBLIC_URL, readyz, serve_app, settings, until, worker
from workers.app import STATE


@dataclass
class FakeRouter:
    ring: KeyRing = field(default_factory=lambda: KeyRing.ephemeral("ed25519"))
    refuse_first: int = 2  # answer 503 to the first registrations (router still starting)
    posts: list[tuple[str | None, Any]] = field(default_factory=list)
    deletes: list[tuple[str | None, str]] = field(default_factory=list)

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/.well-known/jwks.json", self.jwks)
        app.router.add_post("/api/v1/workers", self.register)
        app.router.add_delete("/api/v1/workers/{worker_id}", self.remove)
        return app

    async def jwks(self, request: web.Request) -> web.Response:
        return web.Response(body=self.ring.jwks_bytes(), content_type="application/json")

    async def register(self, request: web.Request) -> web.Response:
        self.posts.append(
            (request.headers.get("Authorization"), orjson.loads(await request.read()))
        )
        if len(self.posts) <= self.refuse_first:
            return web.json_response(
                {"error": {"code": "store_unavailable", "message": "x"}}, status=503
            )
        return web.json_response(
            {"id": "w-1", "status": "loading"},
            status=201 if len(self.posts) == self.refuse_first + 1 else 200,
        )

    async def remove(self, request: web.Request) -> web.Response:
        self.deletes.append((request.headers.get("Authorization"), request.match_info["worker_id"]))
        return web.json_response({"removed": request.match_info["worker_id"]})


async def test_registers_retries_reregisters_and_deregisters() -> None:
    fake = FakeRouter()
    async with serve_app(fake.app()) as server:
        url = str(server.make_url("")).rstrip("/")
        s = settings(
            router_url=url,
            register_token="tok-1",
            perf=123.0,
            max_load=50.0,
            register_interval_s=0.02,
        )
        async with worker(s) as client:

            async def registered_again() -> bool:
                return len(fake.posts) >= fake.refuse_first + 3

            await until(registered_again, what="registration, then re-registrations")
            registrar = client.server.app[STATE].registrar
            assert registrar is not None and registrar.worker_id == "w-1"
            assert "tok-1" not in repr(registrar) and "tok-1" not in repr(s)
            assert fake.deletes == []
            status, _ = await readyz(client)
            assert status == 200
        assert fake.deletes == [("Bearer tok-1", "w-1")]
    expected = {"endpoint": ENDPOINT, "url": PUBLIC_URL, "perf": 123.0, "max_load": 50.0}
    assert all(p == ("Bearer tok-1", expected) for p in fake.posts)


async def test_registration_body_defaults_and_drain_pause_flag() -> None:
    fake = FakeRouter(refuse_first=0)
    async with serve_app(fake.app()) as server:
        url = str(server.make_url("")).rstrip("/")
        s = settings(router_url=url, register_token="tok", register_interval_s=0.02)
        async with worker(s) as client:

            async def registered() -> bool:
                return len(fake.posts) >= 1

            await until(registered)
            state = client.server.app[STATE]
            state.start_draining()
            assert state.registrar is not None
            assert state.registrar.paused()
        # max_load unset goes out as null; perf is the backend's own figure
        assert fake.posts[0][1]["max_load"] is None
        assert fake.posts[0][1]["perf"] == state.backend.perf()
        assert fake.deletes == [("Bearer tok", "w-1")]
