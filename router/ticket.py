"""Ticket mode: `POST /route` picks a worker and returns a signed ticket (docs/protocol.md)."""

from __future__ import annotations

import asyncio
import functools
import math
import secrets
import time
from collections.abc import Sequence
from typing import Any

from aiohttp import web

from router.auth import key_from_header
from router.balancer import shortlist
from router.context import CTX, RouterContext
from router.errors import ApiError, json_response, read_within
from router.jsonbody import json_object
from router.limits import check_rate
from router.prefix import BadPrefix, route_hashes
from router.signing import MAX_SAFE_INTEGER, ticket_number
from router.state.base import StoreUnavailable, WorkerRecord

# The router app's client_max_size: /route and admin bodies. Proxied bodies are read
# from the stream with their endpoint's own limit, which this does not cap.
MAX_JSON_BODY_BYTES = 64 * 1024
_MAX_SESSION_ID = 256


async def read_json_object(request: web.Request) -> dict[str, Any]:
    """The request body as a JSON object, or a 400/413 ApiError."""
    limit = MAX_JSON_BODY_BYTES
    if request.content_length is not None and request.content_length > limit:
        raise ApiError(413, "body_too_large", f"request body over {limit} bytes")
    try:
        raw = await read_within(request, request.read())  # capped by client_max_size
    except web.HTTPRequestEntityTooLarge as exc:
        raise ApiError(413, "body_too_large", f"request body over {limit} bytes") from exc
    return json_object(raw)


def _number(body: dict[str, Any], field: str, default: float) -> float:
    v = body.get(field)
    if v is None:
        return default
    if isinstance(v, bool) or not isinstance(v, int | float):
        raise ApiError(400, "bad_request", f"{field} must be a number")
    if not math.isfinite(v) or v < 0 or v > MAX_SAFE_INTEGER:
        # The ceiling is JavaScript's largest exact integer: every verifier reads it alike.
        raise ApiError(400, "bad_request", f"{field} must be a number from 0 to 2**53 - 1")
    return float(v)


def _request_idx(body: dict[str, Any]) -> int:
    v = body.get("request_idx")
    if v is None:
        return 0
    if isinstance(v, bool) or not isinstance(v, int) or v < 0 or v > MAX_SAFE_INTEGER:
        raise ApiError(400, "bad_request", "request_idx must be an integer from 0 to 2**53 - 1")
    return v


def _optional_str(body: dict[str, Any], field: str, max_len: int) -> str | None:
    v = body.get(field)
    if v is None:
        return None
    if not isinstance(v, str) or len(v) > max_len:
        raise ApiError(400, "bad_request", f"{field} must be a string of at most {max_len} chars")
    return v


async def route(request: web.Request) -> web.Response:
    body = await read_json_object(request)
    answer, headers = await route_answer(
        request.app[CTX], body, request.headers.get("Authorization")
    )
    return json_response(answer, headers=headers)


async def post_only(request: web.Request) -> web.Response:
    """Any method but POST on `/route`: 405 with `Allow: POST`, so a client that GETs it
    learns the method is wrong rather than that the route does not exist."""
    raise ApiError(
        405, "method_not_allowed", "/route takes POST with a JSON body", headers={"Allow": "POST"}
    )


async def route_answer(
    ctx: RouterContext,
    body: dict[str, Any],
    authorization: str | None,
) -> tuple[dict[str, Any], dict[str, str] | None]:
    """`/route` for a parsed body, whichever server read it: (answer, headers) or raise."""
    started = time.perf_counter()
    endpoint = body.get("endpoint")
    if not isinstance(endpoint, str) or not endpoint:
        raise ApiError(400, "bad_request", "endpoint (a non-empty string) is required")
    presented = _optional_str(body, "api_key", 4096) or key_from_header(authorization)
    key = ctx.auth.lookup(presented)
    ep = ctx.endpoints.get(endpoint)
    if ep is None or not key.allows(endpoint, ep.workspace):
        # the same answer either way: a key cannot learn which endpoints exist
        raise ApiError(404, "unknown_endpoint", f"no endpoint named {endpoint!r}")
    if key.limited:
        await check_rate(ctx, key, endpoint)
    cost = _number(body, "cost", ep.default_cost)
    if cost > ep.max_cost:
        raise ApiError(
            400, "bad_cost", f"cost must be at most {ep.max_cost:g} (this endpoint's max_cost)"
        )
    request_idx = _request_idx(body)
    _number(body, "replay_timeout", 0.0)  # accepted for Vast compatibility; tickets expire
    session_id = _optional_str(body, "session_id", _MAX_SESSION_ID)
    hashes = None
    if ep.policy == "cache_aware":
        try:
            hashes = route_hashes(body)
        except BadPrefix as exc:
            raise ApiError(400, "bad_request", str(exc)) from None

    try:
        answer = await _issue(ctx, endpoint, cost, request_idx, session_id, hashes)
    except StoreUnavailable:
        m = ctx.metrics
        m.child(m.requests, endpoint, "ticket", "503").inc()
        m.child(m.tickets, endpoint, "store_error").inc()
        raise
    m = ctx.metrics
    m.child(m.duration, endpoint, "ticket").observe(time.perf_counter() - started)
    return answer


async def issue_ticket(
    ctx: RouterContext,
    endpoint: str,
    cost: float,
    request_idx: int = 0,
    session_id: str | None = None,
    exclude: frozenset[str] = frozenset(),
    request_id: str | None = None,
    proxy: bool = False,
    hashes: Sequence[str] | None = None,
) -> tuple[dict[str, Any] | None, int, str]:
    """Pick a worker and sign its ticket: (ticket or None if none fits, request_idx, worker id).

    `exclude`: worker ids not to pick (proxy retries); `request_id`: the ticket's
    `__request_id` (proxy mode passes its X-Request-Id), else a random one; `proxy`: the
    ticket goes to the worker with a proxied request, signed with the ring's Ed25519 key
    (on the loop: it costs less than a hop to a thread). Used by both modes. `cost` is
    balanced on and signed in its served form (`ticket_number`: 3 decimals, integral as
    an int), so the worker accounts what the router counted.
    `hashes`: the prompt's block hashes (router/prefix.py), for cache_aware endpoints.
    """
    cost = ticket_number(cost)
    ep = ctx.endpoints[endpoint]
    ctx.tick += 1
    workers = ctx.snapshot.endpoint(endpoint)
    if exclude:
        workers = [w for w in workers if w.id not in exclude]
    now = time.time()
    cached: list[WorkerRecord] = []
    share = 0.0
    if hashes and ep.policy == "cache_aware":
        cached, share = await _cached(ctx, endpoint, hashes, now, exclude)
    ranked, mode = shortlist(
        ep.policy,
        workers,
        cost,
        rng=ctx.rng,
        tick=ctx.tick,
        session_id=session_id,
        cached=cached,
        balance=(ep.cache_aware.balance_abs_s, ep.cache_aware.balance_rel),
        cached_share=share,
    )
    issued = None
    if ranked or request_idx <= 0:
        issued, request_idx = await ctx.fleet.issue(
            [c.id for c in ranked], mode, cost, now, ctx.settings.signing.ticket_ttl_s, request_idx
        )
    if issued is None:
        return None, request_idx, ""
    if hashes and ep.policy == "cache_aware":
        m = ctx.metrics
        outcome = "miss" if not cached else "hit" if mode == "ordered" else "balanced"
        m.child(m.prefix_decisions, endpoint, outcome).inc()
        ca = ep.cache_aware
        await ctx.fleet.record_prefix(
            endpoint, issued.worker_id, hashes, now, ca.ttl_s, ca.max_blocks_per_worker
        )
    ctx.activity.note(endpoint, now, cost)
    ticket: dict[str, Any] = {
        "cost": cost,
        "endpoint": endpoint,
        "expires_at": ticket_number(now + ctx.settings.signing.ticket_ttl_s),
        "key_id": ctx.keyring.proxy_kid if proxy else ctx.keyring.kid,
        "reqnum": issued.reqnum,
        "request_idx": issued.request_idx,
        "url": issued.url,
    }
    if proxy and ctx.keyring.proxy_on_loop:
        ctx.keyring.sign_ticket(ticket, proxy=True)
    elif ctx.sign_pool is None:
        ctx.keyring.sign_ticket(ticket, proxy=proxy)
    elif proxy:
        await asyncio.get_running_loop().run_in_executor(
            ctx.sign_pool, functools.partial(ctx.keyring.sign_ticket, ticket, proxy=True)
        )
    else:
        await asyncio.get_running_loop().run_in_executor(
            ctx.sign_pool, ctx.keyring.sign_ticket, ticket
        )
    ticket["__request_id"] = request_id or secrets.token_hex(16)
    return ticket, request_idx, issued.worker_id


async def _cached(
    ctx: RouterContext, endpoint: str, hashes: Sequence[str], now: float, exclude: frozenset[str]
) -> tuple[list[WorkerRecord], float]:
    """The workers of `endpoint` that hold the longest cached prefix of `hashes`, and the
    share of the prompt's blocks it is."""
    match = await ctx.fleet.match_prefix(
        endpoint, hashes, now, ctx.endpoints[endpoint].cache_aware.ttl_s
    )
    out = []
    for wid in match.holders:
        w = ctx.snapshot.get(wid)
        if w is not None and w.endpoint == endpoint and wid not in exclude:
            out.append(w)
    return out, match.depth / match.blocks if match.blocks else 0.0


async def _issue(
    ctx: RouterContext,
    endpoint: str,
    cost: float,
    request_idx: int,
    session_id: str | None,
    hashes: Sequence[str] | None,
) -> tuple[dict[str, Any], dict[str, str] | None]:
    ticket, request_idx, _ = await issue_ticket(
        ctx, endpoint, cost, request_idx, session_id, hashes=hashes
    )
    if ticket is None:
        # the client polls (Vast's protocol); the leader learns the endpoint is wanted
        # (one coalesced start, however many clients poll)
        ctx.activity.wanted(endpoint, cost)
        return _no_worker(ctx, endpoint, request_idx)
    m = ctx.metrics
    m.child(m.tickets, endpoint, "issued").inc()
    m.child(m.requests, endpoint, "ticket", "200").inc()
    return ticket, None


def no_worker_body(ctx: RouterContext, endpoint: str) -> tuple[dict[str, Any], dict[str, str]]:
    """The status breakdown sent when no worker can take a request, and its headers."""
    retry = ctx.endpoints[endpoint].retry_after_s
    counts = ctx.snapshot.status_counts(endpoint)
    body = {
        "endpoint": endpoint,
        "status": counts,
        "retry_after_s": retry,
        "reason": "all_workers_busy" if counts["ready"] else "no_ready_worker",
    }
    return body, {"Retry-After": str(max(1, math.ceil(retry)))}


def _no_worker(
    ctx: RouterContext,
    endpoint: str,
    request_idx: int,
) -> tuple[dict[str, Any], dict[str, str]]:
    """200 without `url`: the Vast SDK keeps polling while `url` is absent (5xx would fail it)."""
    body, headers = no_worker_body(ctx, endpoint)
    m = ctx.metrics
    m.child(m.tickets, endpoint, "all_busy" if body["status"]["ready"] else "no_ready_worker").inc()
    m.child(m.requests, endpoint, "ticket", "200").inc()
    return {**body, "request_idx": request_idx}, headers
