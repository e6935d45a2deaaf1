"""Build the router's aiohttp application: routes, middleware, and resources.

Resources live in `cleanup_ctx` generators, set up in order and torn down in reverse,
each reached through its own typed `web.AppKey`: the context (store, snapshot and fleet,
keys, metrics), the upstream connection pool, the health poller and the proxy core that
reports passive signals to it, the control plane (router/control/plane.py: providers,
the lifecycle loop, jobs), then the snapshot and registry refresh loops.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import sys
import time
import uuid
from collections.abc import AsyncIterator, Coroutine
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from aiohttp import web

from router import admin, openapi, ticket
from router.auth import KeyRingAuth
from router.config import ApiKeySettings, Settings
from router.context import CTX, RouterContext
from router.control.plane import CONTROL_ENABLED, control_ctx
from router.control.plane import MIDDLEWARES as CONTROL_MIDDLEWARES
from router.control.plane import add_routes as control_routes
from router.control.registry import Registry
from router.control.spec import STATES
from router.errors import error_middleware, json_response
from router.fleet import Fleet
from router.health import HealthPoller
from router.hold import Holds
from router.loops import repeat
from router.metrics import CONTENT_TYPE_LATEST, Metrics
from router.proxy import web as web_proxy
from router.proxy.core import ProxyCore
from router.proxy.web import PROXY, guard
from router.signing import KeyRing
from router.snapshot import Snapshot
from router.state import StoreUnavailable, open_store
from router.state.base import Source, worker_id
from router.upstream import Pool

log = logging.getLogger(__name__)

POOL = web.AppKey("upstream_pool", Pool)
HEALTH = web.AppKey("health_poller", HealthPoller)
# A snapshot refresh reads every worker: at most this many per second, so 10,000 workers
# on Redis are re-read every 10 s (the issue step still checks status and scores its
# shortlist with fresh values), and a tenth as many on the memory store.
_REFRESH_WORKERS_PER_S = 1000.0
_REGISTRY_POLL_S = 0.25  # one small read (the store's version counter) per poll


def load_keyring(settings: Settings) -> KeyRing:
    if settings.signing.key_files:
        ring = KeyRing.from_files(settings.signing.key_files)
        log.info("signing with key %s (%d key(s) in the ring)", ring.kid, len(ring.keys))
        if not ring.proxy_on_loop:
            log.warning(
                "no Ed25519 key in signing.key_files: proxy tickets are signed with %s "
                "(~0.4 ms of CPU each); add one (`inference-router keygen --algorithm "
                "ed25519`) to sign them in ~20 us",
                ring.kid,
            )
        return ring
    ring = KeyRing.ephemeral(settings.signing.algorithm)
    log.warning(
        "no signing.key_files configured: using an ephemeral %s key %s; tickets will "
        "not verify after a restart (create one with `inference-router keygen`)",
        settings.signing.algorithm,
        ring.kid,
    )
    return ring


def api_keys(settings: Settings) -> list[ApiKeySettings]:
    if settings.api_keys:
        return list(settings.api_keys)
    key = secrets.token_urlsafe(24)
    # Printed once to the terminal, on purpose and never through logging: with no key
    # configured the operator needs some key to call the router at all.
    print(f"no api_keys configured; admin API key for this run: {key}", file=sys.stderr)
    from hashlib import sha256

    return [
        ApiKeySettings(key_sha256=sha256(key.encode()).hexdigest(), name="generated", admin=True)
    ]


def configured_workers(settings: Settings) -> list[tuple[str, str, float, float | None, Source]]:
    out: list[tuple[str, str, float, float | None, Source]] = []
    for ep in settings.endpoints:
        out += [(ep.name, w.url, w.perf, w.max_load, "static") for w in ep.workers]
    return out


class Refresher:
    """The snapshot refresh loop's state: when it next re-reads, and what config lists."""

    def __init__(self, ctx: RouterContext) -> None:
        self.ctx = ctx
        self.next_refresh = 0.0  # monotonic time the snapshot is next re-read
        # configured workers with their ids, computed once: reconcile runs every refresh
        self.configured = [(worker_id(w[0], w[1]), w) for w in configured_workers(ctx.settings)]

    async def reconcile(self) -> int:
        """Make sure every worker from config is in the store.

        After Redis lost its data this brings configured workers back (as `loading`,
        until their next health check). Returns how many were added.
        """
        added = 0
        ctx = self.ctx
        for wid, (endpoint, url, perf, max_load, source) in self.configured:
            if ctx.snapshot.get(wid) is None:
                await ctx.fleet.upsert(endpoint, url, perf, max_load, source, time.time())
                added += 1
        return added

    async def run_once(self) -> None:
        """Re-read the store into the snapshot, then re-add configured workers it lacks.

        The loop ticks every `store.snapshot_interval_s`; a large fleet is re-read less
        often (a full read costs per worker), and the memory store, which this replica's
        writes already mirror into the snapshot, about once a second (for expired
        tickets).
        """
        ctx = self.ctx
        now = time.monotonic()
        if now < self.next_refresh:
            return
        n = len(ctx.snapshot.workers())
        per_s = _REFRESH_WORKERS_PER_S
        if ctx.settings.store.backend == "memory":
            per_s = per_s / 10  # nothing else writes to it: only expired tickets to catch up
        self.next_refresh = now + max(ctx.settings.store.snapshot_interval_s, n / per_s)
        await ctx.fleet.refresh()
        await self.reconcile()


def build_app(
    settings: Settings, *, keyring: KeyRing | None = None, spawn_workers: bool = True
) -> web.Application:
    """The router app; `keyring` overrides the configured keys (tests, benchmarks).

    `spawn_workers` False: run no control-plane loops here (another process of
    `serve --processes N` does), so this process starts no workers.
    """
    app = web.Application(
        middlewares=[error_middleware, guard, *CONTROL_MIDDLEWARES],
        client_max_size=ticket.MAX_JSON_BODY_BYTES,
    )
    app[CONTROL_ENABLED] = spawn_workers
    keys = keyring or load_keyring(settings)  # fail before listening on a bad key file

    async def context(app: web.Application) -> AsyncIterator[None]:
        metrics = Metrics(algorithm=keys.signer.verify_key.algorithm, store=settings.store.backend)
        store = open_store(settings.store)
        registry = Registry(store, settings.endpoints)
        snapshot = Snapshot(store, metrics, registry.endpoints)
        threads = settings.signing.sign_threads(
            keys.signer.verify_key.algorithm, len(os.sched_getaffinity(0))
        )
        sign_pool = ThreadPoolExecutor(threads, thread_name_prefix="sign") if threads else None
        if threads:
            log.info("signing tickets on %d thread(s)", threads)
        ctx = app[CTX] = RouterContext(
            settings=settings,
            endpoints=registry.endpoints,
            registry=registry,
            auth=KeyRingAuth(api_keys(settings)),
            keyring=keys,
            metrics=metrics,
            store=store,
            snapshot=snapshot,
            fleet=Fleet(store, snapshot),
            holds=Holds(metrics),
            replica_id=uuid.uuid4().hex[:12],
            sign_pool=sign_pool,
        )
        ctx.fleet.on_change.append(ctx.holds.kick)  # held requests retry as workers change
        try:
            await registry.refresh()
            await ctx.fleet.refresh()
            await Refresher(ctx).reconcile()
        except StoreUnavailable as exc:
            log.error(
                "state store unreachable at start (%s); /route answers 503 until it is back", exc
            )
        yield
        await store.close()
        if sign_pool is not None:
            sign_pool.shutdown(wait=True, cancel_futures=True)

    async def upstream(app: web.Application) -> AsyncIterator[None]:
        # kept-alive worker connections for proxied requests and health polls alike
        pool = app[POOL] = Pool()
        yield
        pool.close()

    async def health(app: web.Application) -> AsyncIterator[None]:
        ctx = app[CTX]
        poller = app[HEALTH] = HealthPoller(
            ctx.fleet, app[POOL], ctx.endpoints, ctx.replica_id, ctx.metrics
        )
        app[PROXY] = ProxyCore(ctx, app[POOL], poller, ctx.holds)
        task = _task(poller.run_forever(), "health-poller")
        yield
        await _stop(task)

    async def refresh(app: web.Application) -> AsyncIterator[None]:
        refresher = Refresher(app[CTX])
        tasks = [
            _task(
                repeat(refresher.run_once, settings.store.snapshot_interval_s, "snapshot refresh"),
                "snapshot-refresh",
            ),
            # every replica sees an endpoint created or deleted elsewhere within this
            _task(repeat(app[CTX].registry.refresh, _REGISTRY_POLL_S, "registry"), "registry"),
        ]
        yield
        for task in tasks:
            await _stop(task)

    app.cleanup_ctx.extend([context, upstream, health, control_ctx, refresh])
    for path in ("/route", "/route/"):
        app.router.add_post(path, ticket.route)
        app.router.add_route("*", path, ticket.post_only)  # not the proxy's 404
    app.router.add_get("/pubkey", pubkey)
    app.router.add_get("/pubkey/", pubkey)
    app.router.add_get("/.well-known/jwks.json", jwks)
    app.router.add_get("/livez", livez)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/openapi.json", openapi.openapi)
    admin.add_routes(app)
    control_routes(app)
    web_proxy.add_routes(app)  # last: its /{endpoint}/{path} catches what nothing else did
    return app


async def _stop(task: asyncio.Task[None]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


def _task(coro: Coroutine[Any, Any, None], name: str) -> asyncio.Task[None]:
    return asyncio.get_running_loop().create_task(coro, name=name)


async def pubkey(request: web.Request) -> web.Response:
    return web.Response(
        text=request.app[CTX].keyring.public_pem(), content_type="application/x-pem-file"
    )


async def jwks(request: web.Request) -> web.Response:
    return web.Response(
        body=request.app[CTX].keyring.jwks_bytes(),
        content_type="application/json",
        headers={"Cache-Control": "max-age=60"},
    )


async def livez(request: web.Request) -> web.Response:
    return json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    ctx = request.app[CTX]
    try:
        await ctx.store.ping()
    except StoreUnavailable as exc:
        return json_response({"ready": False, "reason": f"store unreachable: {exc}"}, 503)
    return json_response(
        {
            "ready": True,
            "store": ctx.settings.store.backend,
            "key_id": ctx.keyring.kid,
            "replica": ctx.replica_id,
            "pid": os.getpid(),
        }
    )


async def metrics(request: web.Request) -> web.Response:
    ctx = request.app[CTX]
    ctx.snapshot.export_metrics()
    for record in ctx.registry.records.values():
        for state in STATES:
            ctx.metrics.endpoint_state.labels(record.name, state).set(state == record.state)
    body = ctx.metrics.render()
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})
