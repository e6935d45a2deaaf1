"""In-process router and fake workers for router tests (real aiohttp servers, port 0)."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from typing import Any

import orjson
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from router.app import build_app
from router.config import (
    ApiKeySettings,
    EndpointSettings,
    HealthSettings,
    Settings,
    StaticWorker,
    StoreSettings,
)
from router.context import CTX, RouterContext
from router.signing import KeyRing

DEV_KEY, ADMIN_KEY, WORKER_TOKEN, OTHER_KEY = "dev-key", "admin-key", "worker-token", "other"


def keys() -> tuple[ApiKeySettings, ...]:
    import hashlib

    def h(k: str) -> str:
        return hashlib.sha256(k.encode()).hexdigest()

    return (
        ApiKeySettings(h(DEV_KEY), "dev", endpoints=("demo",)),
        ApiKeySettings(h(ADMIN_KEY), "admin", admin=True),
        ApiKeySettings(h(WORKER_TOKEN), "workers", endpoints=("demo",), register_workers=True),
        ApiKeySettings(h(OTHER_KEY), "other", endpoints=("other",)),
    )


@dataclass
class FakeWorker:
    """A tiny aiohttp app that answers the health path like the reference worker."""

    status: int = 200
    body: dict[str, Any] = field(default_factory=lambda: {"ready": True})
    polls: int = 0
    server: TestServer | None = None

    @property
    def url(self) -> str:
        assert self.server is not None
        return str(self.server.make_url("")).rstrip("/")

    async def start(self) -> None:
        app = web.Application()

        async def readyz(request: web.Request) -> web.Response:
            self.polls += 1
            return web.Response(
                body=orjson.dumps(self.body), status=self.status, content_type="application/json"
            )

        app.router.add_get("/readyz", readyz)
        self.server = TestServer(app, host="127.0.0.1")
        await self.server.start_server()

    async def stop(self) -> None:
        if self.server is not None:
            await self.server.close()


def settings(
    worker_urls: list[str],
    *,
    store: StoreSettings | None = None,
    policy: str = "least_work",
    **endpoint: Any,
) -> Settings:
    ep = EndpointSettings(
        name="demo",
        default_cost=100.0,
        policy=policy,  # type: ignore[arg-type]
        health=HealthSettings(
            interval_s=0.05, timeout_s=0.5, unhealthy_after=2, healthy_after=2, remove_after_s=60
        ),
        workers=tuple(StaticWorker(u, perf=100.0) for u in worker_urls),
        **endpoint,
    )
    other = EndpointSettings(name="other")
    return Settings(store=store or StoreSettings(), api_keys=keys(), endpoints=(ep, other))


class FrontTestServer(TestServer):
    """A TestServer listening through `FrontSite`, as `router serve` does: proxied requests
    take the fast path when `server.fast_proxy` is on (the default)."""

    async def start_server(
        self, loop: asyncio.AbstractEventLoop | None = None, **kwargs: Any
    ) -> None:
        from yarl import URL

        from router.proxy.site import FrontSite

        if self.runner:
            return
        self.runner = await self._make_runner(handler_cancellation=True, **kwargs)
        await self.runner.setup()
        sock = self.socket_factory(self.host, self.port or 0, socket.AF_INET)
        settings = self.app[CTX].settings.server
        site = FrontSite(self.runner, sock=sock, fast=settings.fast_proxy, grace_s=2.0)
        await site.start()
        self.host, self.port = sock.getsockname()[:2]
        self.scheme = "http"
        self._root = URL(f"http://{self.host}:{self.port}")


@asynccontextmanager
async def router_client(
    s: Settings, keyring: KeyRing | None = None
) -> AsyncIterator[tuple[TestClient[Any, Any], RouterContext]]:
    """The router in process, served as `router serve` serves it (`FrontSite`)."""
    app = build_app(s, keyring=keyring or KeyRing.ephemeral("ed25519"))
    client = TestClient(FrontTestServer(app, host="127.0.0.1"))
    await client.start_server()
    try:
        yield client, app[CTX]
    finally:
        await client.close()


async def until(cond: Callable[[], bool], timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not cond():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not met in time")
        await asyncio.sleep(0.01)


def ready_count(ctx: RouterContext, endpoint: str = "demo") -> int:
    return ctx.snapshot.status_counts(endpoint)["ready"]


__all__ = ["FakeWorker", "replace", "router_client", "settings", "until"]
