"""Build the router's aiohttp application: routes, the error middleware, and resources.

Resources live in `cleanup_ctx` generators, set up in order and torn down in reverse:
the context (store, keys, metrics), the upstream client session, spawned local workers,
then the background loops (snapshot refresh + config reconcile, health poller).
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

import aiohttp
from aiohttp import web

from router import admin, openapi, proxy, ticket
from router.auth import KeyRingAuth
from router.config import ApiKeySettings, Settings
from router.context import CTX, RouterContext
from router.errors import error_middleware, json_response
from router.health import HealthPoller
from router.loops import repeat
from router.metrics import CONTENT_TYPE_LATEST, Metrics
from router.signing import KeyRing
from router.snapshot import Snapshot
from router.spawner import SpawnedWorker, Spawner, plan
from router.state import StoreUnavailable, open_store
from router.state.base import Source, worker_id

log = logging.getLogger(__name__)

SPAWNED = web.AppKey("spawned_workers", list[SpawnedWorker])
# A snapshot refresh reads every worker: at most this many per second, so 10,000 workers
# on Redis are re-read every 10 s (the issue step still checks status and scores its
# shortlist with fresh values), and a tenth as many on the memory store.
_REFRESH_WORKERS_PER_S = 1000.0


def load_keyring(settings: Settings) -> KeyRing:
    if settings.signing.key_files:
        ring = KeyRing.from_files(settings.signing.key_files)
        log.info("signing with key %s (%d key(s) in the ring)", ring.kid, len(ring.keys))
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


def configured_workers(
    settings: Settings, spawned: list[SpawnedWorker]
) -> list[tuple[str, str, float, float | None, Source]]:
    out: list[tuple[str, str, float, float | None, Source]] = []
    for ep in settings.endpoints:
        out += [(ep.name, w.url, w.perf, w.max_load, "static") for w in ep.workers]
    out += [(w.endpoint, w.url, w.spec.perf, w.spec.max_load, "spawned") for w in spawned]
    return out


async def reconcile(ctx: RouterContext, spawned: list[SpawnedWorker]) -> int:
    """Make sure every worker from config (and every spawned one) is in the store.

    After Redis lost its data this brings configured workers back (as `loading`, until
    their next health check). Returns how many were added.
    """
    added = 0
    for wid, (endpoint, url, perf, max_load, source) in _configured(ctx, spawned):
        if ctx.snapshot.get(wid) is None:
            record = await ctx.store.upsert_worker(
                endpoint, url, perf, max_load, source, time.time()
            )
            ctx.snapshot.upsert(record)
            added += 1
    return added


def _configured(
    ctx: RouterContext,
    spawned: list[SpawnedWorker],
) -> list[tuple[str, tuple[str, str, float, float | None, Source]]]:
    """Configured workers with their ids, computed once: reconcile runs every refresh."""
    key = len(spawned)
    if ctx.configured is None or ctx.configured[0] != key:
        ctx.configured = (
            key,
            [(worker_id(w[0], w[1]), w) for w in configured_workers(ctx.settings, spawned)],
        )
    return ctx.configured[1]


async def refresh_once(ctx: RouterContext, spawned: list[SpawnedWorker]) -> None:
    """Re-read the store into the snapshot, then re-add configured workers it lacks.

    The loop ticks every `store.snapshot_interval_s`; a large fleet is re-read less often
    (a full read costs per worker), and the memory store, which this replica's writes
    already mirror into the snapshot, about once a second (for expired tickets).
    """
    now = time.monotonic()
    if now < ctx.next_refresh:
        return
    n = len(ctx.snapshot.workers())
    per_s = _REFRESH_WORKERS_PER_S
    if ctx.settings.store.backend == "memory":
        per_s = per_s / 10  # nothing else writes to it: only expired tickets to catch up
    ctx.next_refresh = now + max(ctx.settings.store.snapshot_interval_s, n / per_s)
    await ctx.snapshot.refresh()
    await reconcile(ctx, spawned)


def _router_url(settings: Settings) -> str:
    host = settings.server.host
    if host in ("0.0.0.0", "::", ""):
        host = "127.0.0.1"
    return f"http://{host}:{settings.server.port}"


def build_app(
    settings: Settings, *, keyring: KeyRing | None = None, spawn_workers: bool = True
) -> web.Application:
    """The router app; `keyring` overrides the configured keys (tests, benchmarks).

    `spawn_workers` False: leave `[[endpoints.spawn]]` workers to another process.
    """
    app = web.Application(
        middlewares=[error_middleware], client_max_size=ticket.MAX_JSON_BODY_BYTES
    )
    app[SPAWNED] = []
    keys = keyring or load_keyring(settings)  # fail before listening on a bad key file

    async def context(app: web.Application) -> AsyncIterator[None]:
        metrics = Metrics()
        store = open_store(settings.store)
        ctx = RouterContext(
            settings=settings,
            endpoints={e.name: e for e in settings.endpoints},
            auth=KeyRingAuth(api_keys(settings)),
            keyring=keys,
            metrics=metrics,
            store=store,
            snapshot=Snapshot(store, metrics, (e.name for e in settings.endpoints)),
            replica_id=uuid.uuid4().hex[:12],
        )
        app[CTX] = ctx
        threads = settings.signing.sign_threads(
            keys.signer.verify_key.algorithm, len(os.sched_getaffinity(0))
        )
        if threads:
            ctx.sign_pool = ThreadPoolExecutor(threads, thread_name_prefix="sign")
            log.info("signing tickets on %d thread(s)", threads)
        try:
            await ctx.snapshot.refresh()
            await reconcile(ctx, [])
        except StoreUnavailable as exc:
            log.error(
                "state store unreachable at start (%s); /route answers 503 until it is back", exc
            )
        yield
        await store.close()
        if ctx.sign_pool is not None:
            ctx.sign_pool.shutdown(wait=True, cancel_futures=True)

    async def client(app: web.Application) -> AsyncIterator[None]:
        connector = aiohttp.TCPConnector(limit=0, ttl_dns_cache=300)
        # auto_decompress off: proxied bodies pass through byte for byte, encoding and all.
        # No cookie jar: one session serves every client, and a cookie a worker set for
        # one client must never be sent on another's request (it also saves jar work).
        async with aiohttp.ClientSession(
            connector=connector, auto_decompress=False, cookie_jar=aiohttp.DummyCookieJar()
        ) as session:
            app[CTX].session = session
            yield

    async def spawn(app: web.Application) -> AsyncIterator[None]:
        spawned = plan(list(settings.endpoints)) if spawn_workers else []
        if not spawned:
            yield
            return
        app[SPAWNED] = spawned
        spawner = Spawner(spawned, _router_url(settings))
        spawner.start()
        yield
        await spawner.stop()

    async def loops(app: web.Application) -> AsyncIterator[None]:
        ctx = app[CTX]
        assert ctx.session is not None
        poller = ctx.health = HealthPoller(
            ctx.store, ctx.snapshot, ctx.session, ctx.endpoints, ctx.replica_id, ctx.metrics
        )
        tasks = [
            _task(
                repeat(
                    lambda: refresh_once(ctx, app[SPAWNED]),
                    settings.store.snapshot_interval_s,
                    "snapshot refresh",
                ),
                "snapshot-refresh",
            ),
            _task(poller.run_forever(), "health-poller"),
        ]
        yield
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await t
        poller.prober.close()

    app.cleanup_ctx.extend([context, client, spawn, loops])
    app.router.add_post("/route", ticket.route)
    app.router.add_post("/route/", ticket.route)
    app.router.add_get("/pubkey", pubkey)
    app.router.add_get("/pubkey/", pubkey)
    app.router.add_get("/.well-known/jwks.json", jwks)
    app.router.add_get("/livez", livez)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/openapi.json", openapi.openapi)
    admin.add_routes(app)
    proxy.add_routes(app)  # last: its /{endpoint}/{path} catches what nothing else did
    return app


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
    body = ctx.metrics.render()
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})
