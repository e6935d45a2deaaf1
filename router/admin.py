"""Worker management at run time: `/api/v1/workers` (admin keys, or worker tokens)."""

from __future__ import annotations

import math
import time
from typing import Any

from aiohttp import web
from yarl import URL

from router import workerurl
from router.auth import key_from_header
from router.config import ApiKeySettings
from router.context import CTX, RouterContext
from router.errors import ApiError, json_response
from router.signing import is_plain_string
from router.state.base import WorkerRecord, worker_id
from router.ticket import read_json_object


def _positive(body: dict[str, Any], field: str, default: float | None) -> float | None:
    v = body.get(field)
    if v is None:
        return default
    if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v) or v <= 0:
        raise ApiError(400, "bad_request", f"{field} must be a number > 0")
    return float(v)


async def register_worker(request: web.Request) -> web.Response:
    """Add a worker, or update the perf/max_load of one this token registered.

    Config workers are never changed here (409), nor workers another token registered
    (403); an endpoint holds at most `registration.max_per_endpoint` registered workers.
    """
    ctx = request.app[CTX]
    body = await read_json_object(request)
    endpoint, url = body.get("endpoint"), body.get("url")
    if not isinstance(endpoint, str) or not endpoint:
        raise ApiError(400, "bad_request", "endpoint (a non-empty string) is required")
    # plain ASCII too: tickets carry the URL, signed as served (docs/protocol.md)
    if not isinstance(url, str) or not is_plain_string(url):
        raise ApiError(
            400, "bad_request", "url must be an http(s) URL such as http://10.0.0.7:3000"
        )
    key = ctx.auth.require_registrar(
        key_from_header(request.headers.get("Authorization")), endpoint
    )
    if endpoint not in ctx.endpoints:
        raise ApiError(404, "unknown_endpoint", f"no endpoint named {endpoint!r}")
    server, reg = ctx.settings.server, ctx.settings.registration
    port, hosts = server.port, [server.host]
    if ctx.listen_url:  # where it really listens (a port 0 in the config is chosen at bind)
        listening = URL(ctx.listen_url)
        port, hosts = listening.port or port, [*hosts, listening.host or ""]
    try:
        url = workerurl.check(
            url, router_port=port, router_hosts=hosts, allowed_networks=reg.allowed_networks
        )
    except workerurl.BadWorkerUrl as exc:
        raise ApiError(400, "bad_worker_url", f"url {exc}") from None
    perf = _positive(body, "perf", 100.0)
    max_load = _positive(body, "max_load", None)
    assert perf is not None
    owner = _owner(key)
    existing = ctx.snapshot.get(worker_id(endpoint, url))
    if existing is None:
        registered = sum(w.source == "registered" for w in ctx.snapshot.endpoint(endpoint))
        if registered >= reg.max_per_endpoint:
            raise ApiError(
                409,
                "endpoint_full",
                f"endpoint {endpoint!r} already has {registered} registered workers "
                "(registration.max_per_endpoint)",
            )
    elif key.admin and existing.source == "registered":
        owner = existing.owner  # an admin may adjust any registered worker
    record = await ctx.fleet.upsert(
        endpoint, url, perf, max_load, "registered", time.time(), owner=owner
    )
    if record.source != "registered":
        raise ApiError(
            409,
            "configured_worker",
            "this worker comes from the router's config; change it there",
        )
    if record.owner != owner:
        raise ApiError(403, "forbidden", "this worker was registered with another token")
    return json_response(record.public(), status=200 if existing is not None else 201)


def _owner(key: ApiKeySettings) -> str:
    """Who registers: a short digest of the key's own digest (never the key)."""
    return key.key_sha256[:16]


async def list_workers(request: web.Request) -> web.Response:
    """The workers as this replica sees them (its snapshot)."""
    ctx = request.app[CTX]
    ctx.auth.require_admin(key_from_header(request.headers.get("Authorization")))
    endpoint = request.query.get("endpoint")
    if endpoint is not None and endpoint not in ctx.endpoints:
        raise ApiError(404, "unknown_endpoint", f"no endpoint named {endpoint!r}")
    # this replica's snapshot: what its /route and proxy decide on (at most one refresh
    # behind other replicas' writes), with no store read per listing
    workers = ctx.snapshot.endpoint(endpoint) if endpoint is not None else ctx.snapshot.workers()
    rows = [w.public() for w in workers]
    rows.sort(key=lambda w: (w["endpoint"], w["url"]))
    return json_response({"workers": rows})


async def _target(request: web.Request, ctx: RouterContext) -> WorkerRecord:
    wid = request.match_info["worker_id"]
    presented = key_from_header(request.headers.get("Authorization"))
    # 401/403 before saying whether the worker exists: only keys that may manage some
    # worker learn that; a worker token then only for its own endpoints
    ctx.auth.require_registrar(presented, None)
    w = await ctx.store.get_worker(wid)
    if w is None:
        raise ApiError(404, "unknown_worker", f"no worker with id {wid!r}")
    ctx.auth.require_registrar(presented, w.endpoint)
    return w


async def drain_worker(request: web.Request) -> web.Response:
    ctx = request.app[CTX]
    w = await _target(request, ctx)
    drained = await ctx.fleet.drain(w.id)
    if drained is None:
        raise ApiError(404, "unknown_worker", f"no worker with id {w.id!r}")
    return json_response(drained.public())


async def remove_worker(request: web.Request) -> web.Response:
    ctx = request.app[CTX]
    w = await _target(request, ctx)
    if w.source != "registered":
        raise ApiError(
            409,
            "configured_worker",
            "this worker comes from the router's config; remove it there (or drain it)",
        )
    await ctx.fleet.remove(w.id)
    return json_response({"removed": w.id})


def add_routes(app: web.Application) -> None:
    app.router.add_post("/api/v1/workers", register_worker)
    app.router.add_get("/api/v1/workers", list_workers)
    app.router.add_post("/api/v1/workers/{worker_id}/drain", drain_worker)
    app.router.add_delete("/api/v1/workers/{worker_id}", remove_worker)
