"""Proxy mode (DESIGN §7): forward a request to the chosen worker and stream the answer.

`/{endpoint}/{path}` goes to `{worker}/{path}`; `/v1/chat/completions`, `/v1/completions`
and `/v1/embeddings` pick the endpoint from the OpenAI `model` field. Each attempt takes
a signed ticket (sent as `X-Route-Ticket`, so ticket-checking workers accept proxied
traffic) and holds its cost until the response ends, fails, or the client hangs up.
Connection failures, and 502/503/429 before any byte reached the client, are retried on
another worker. Bodies are read whole (up to the endpoint's `max_body_bytes`), so every
retry can replay them.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import logging
import re
import secrets
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import aiohttp
import orjson
from aiohttp import web

from router.auth import key_from_header
from router.config import RESERVED_NAMES, ApiKeySettings, EndpointSettings
from router.context import CTX, RouterContext
from router.cost import BadCost, estimate
from router.errors import ApiError, error_response, json_response, read_within
from router.health import PollResult
from router.limits import check_rate, in_flight_slot
from router.ticket import issue_ticket, no_worker_body

log = logging.getLogger(__name__)

HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "trailers",
        "transfer-encoding",
        "upgrade",
    }
)
# Never forwarded upstream: hop-by-hop, the router's own key, and what the router sets.
DROP_REQUEST = HOP_BY_HOP | {
    "host",
    "content-length",
    "authorization",
    "x-route-ticket",
    "x-cost",
    "x-request-id",
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-forwarded-host",
    "expect",
}
DROP_RESPONSE = HOP_BY_HOP | {"content-length"}
RETRY_STATUSES = frozenset({502, 503, 429})
_REQUEST_ID_RE = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
_SKIP_AUTO = ("User-Agent", "Accept-Encoding", "Content-Type")
# Fixed-length answers up to this size are read whole and answered in one write.
WHOLE_BODY_BYTES = 64 * 1024


def too_large(limit: int) -> ApiError:
    return ApiError(413, "body_too_large", f"request body over {limit} bytes")


class Retry(Exception):
    """An attempt failed before any byte reached the client; try another worker."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class _Retry(Retry):
    def __init__(self, reason: str, response: web.Response) -> None:
        super().__init__(reason)
        self.response = response


T = TypeVar("T")
R = TypeVar("R", bound=Retry)


def request_cost(header: str | None, parsed: Any, ep: EndpointSettings) -> float:
    """What the request weighs (router/cost.py), or 400 for a bad X-Cost."""
    try:
        return estimate(header, parsed, ep.default_cost)
    except BadCost as exc:
        raise ApiError(400, "bad_request", str(exc)) from exc


async def on_workers(
    ctx: RouterContext,
    ep: EndpointSettings,
    cost: float,
    request_id: str,
    attempt: Callable[[dict[str, Any], str], Awaitable[T]],
    retry: type[R],
) -> tuple[T | None, R | None]:
    """`attempt(ticket, worker id)` on one worker, then others while it raises `retry`.

    Each try holds a ticket of its own, released when the try ends however it ends
    (answered, failed, or the client gone). Returns (the answer, None), or (None, the
    last `retry` raised, or None when no worker could take the request at all).
    """
    m = ctx.metrics
    tried: set[str] = set()
    last: R | None = None
    for n in range(ep.retries + 1):
        ticket, _, wid = await issue_ticket(
            ctx, ep.name, cost, exclude=frozenset(tried), request_id=request_id
        )
        if ticket is None:
            break
        tried.add(wid)
        try:
            return await attempt(ticket, wid), None
        except retry as exc:
            last = exc
            if n < ep.retries:
                m.child(m.retries, ep.name, exc.reason).inc()
        finally:
            where = await ctx.store.release(wid, ticket["reqnum"], cost)
            if where is not None:
                ctx.snapshot.apply_release(wid, cost, where)
    return None, last


async def read_body(request: web.Request, limit: int) -> bytes:
    if request.content_length is not None and request.content_length > limit:
        raise too_large(limit)
    return await read_within(request, _read_capped(request, limit))


async def _read_capped(request: web.Request, limit: int) -> bytes:
    body = bytearray()
    while chunk := await request.content.read(65536):
        body += chunk
        if len(body) > limit:
            raise too_large(limit)
    return bytes(body)


async def proxy(request: web.Request) -> web.StreamResponse:
    """`/{endpoint}/{path}`: forward to the same path on a worker of that endpoint.

    `/{endpoint}` alone goes to the worker's `/` (TGI's compat route, where Hugging Face's
    `text-generation` client posts).
    """
    ctx = request.app[CTX]
    name = request.match_info["endpoint"]
    ep = ctx.endpoints.get(name)
    if ep is None or name in RESERVED_NAMES:
        raise ApiError(404, "not_found", f"no endpoint or route named {name!r}")
    key = ctx.auth.require_endpoint(key_from_header(request.headers.get("Authorization")), name)
    body = await read_body(request, ep.max_body_bytes)
    parsed = None
    if body and "X-Cost" not in request.headers and request.content_type == "application/json":
        try:
            parsed = orjson.loads(body)
        except orjson.JSONDecodeError:
            parsed = None  # the worker answers bad JSON itself
    path = "/" + request.match_info.get("path", "")
    return await limited_forward(request, ctx, key, ep, path, body, parsed)


async def openai(request: web.Request) -> web.StreamResponse:
    """`/v1/...` with a JSON body: the endpoint is the one serving the `model` named."""
    ctx = request.app[CTX]
    presented = key_from_header(request.headers.get("Authorization"))
    ctx.auth.lookup(presented)
    limit = max((e.max_body_bytes for e in ctx.endpoints.values()), default=1)
    body = await read_body(request, limit)
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise ApiError(400, "bad_json", f"request body is not valid JSON: {exc.msg}") from exc
    model = doc.get("model") if isinstance(doc, dict) else None
    if not isinstance(model, str) or not model:
        raise ApiError(400, "bad_request", "the body must be a JSON object with a 'model'")
    ep = model_endpoint(ctx, model)
    if ep is None:
        raise ApiError(404, "model_not_found", f"no endpoint serves model {model!r}")
    key = ctx.auth.require_endpoint(presented, ep.name)
    if len(body) > ep.max_body_bytes:
        raise too_large(ep.max_body_bytes)
    return await limited_forward(request, ctx, key, ep, request.path, body, doc)


async def limited_forward(
    request: web.Request,
    ctx: RouterContext,
    key: ApiKeySettings,
    ep: EndpointSettings,
    path: str,
    body: bytes,
    parsed: Any,
) -> web.StreamResponse:
    """`forward()` within the key's limits: its rate, and a slot held to the last byte."""
    if not key.limited:
        return await forward(request, ctx, ep, path, body, parsed)
    await check_rate(ctx, key, ep.name)
    async with in_flight_slot(ctx, key, ep.name, ep.timeout_total_s):
        return await forward(request, ctx, ep, path, body, parsed)


def model_endpoint(ctx: RouterContext, model: str) -> EndpointSettings | None:
    for ep in ctx.endpoints.values():
        if model == ep.name or model in ep.models:
            return ep
    return None


async def list_models(request: web.Request) -> web.Response:
    """`GET /v1/models`: the endpoints this key may use, as OpenAI model objects."""
    ctx = request.app[CTX]
    key = ctx.auth.lookup(key_from_header(request.headers.get("Authorization")))
    data = [
        {"id": m, "object": "model", "created": 0, "owned_by": "inference-router"}
        for ep in ctx.endpoints.values()
        if key.allows(ep.name)
        for m in (ep.name, *ep.models)
    ]
    return json_response({"object": "list", "data": data})


def ticket_header(ticket: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(orjson.dumps(ticket)).rstrip(b"=").decode()


def _connection_tokens(headers: Any) -> set[str]:
    """Header names a `Connection` header declares hop-by-hop (RFC 9110 §7.6.1)."""
    return {t.strip().lower() for v in headers.getall("Connection", ()) for t in v.split(",")}


def _upstream_headers(
    request: web.Request, ticket: dict[str, Any], request_id: str
) -> dict[str, str]:
    drop = DROP_REQUEST | _connection_tokens(request.headers)
    headers = {k: v for k, v in request.headers.items() if k.lower() not in drop}
    peer = request.remote or ""
    prior = request.headers.get("X-Forwarded-For")
    headers["X-Forwarded-For"] = f"{prior}, {peer}" if prior else peer
    headers["X-Forwarded-Proto"] = request.scheme
    headers["X-Forwarded-Host"] = request.host
    headers["X-Request-Id"] = request_id
    headers["X-Route-Ticket"] = ticket_header(ticket)
    return headers


async def forward(
    request: web.Request,
    ctx: RouterContext,
    ep: EndpointSettings,
    path: str,
    body: bytes,
    parsed: Any,
) -> web.StreamResponse:
    """Send the request to a worker (retrying on others) and stream its answer back."""
    cost = request_cost(request.headers.get("X-Cost"), parsed, ep)
    rid = request.headers.get("X-Request-Id", "")
    request_id = rid if _REQUEST_ID_RE.match(rid) else secrets.token_hex(16)
    m = ctx.metrics
    started = time.perf_counter()
    resp: web.StreamResponse | None = None
    try:
        resp, last = await on_workers(
            ctx,
            ep,
            cost,
            request_id,
            lambda ticket, wid: _attempt(request, ctx, ep, path, body, ticket, wid, request_id),
            _Retry,
        )
        if resp is not None:
            return resp
        if last is not None:
            resp = last.response
            return resp
        no_worker, headers = no_worker_body(ctx, ep.name)
        resp = error_response(
            503,
            "no_worker",
            "no worker of this endpoint can take the request now; retry later",
            headers=headers,
            **no_worker,
        )
        return resp
    finally:
        code = str(resp.status) if resp is not None else "499"
        m.child(m.requests, ep.name, "proxy", code).inc()
        m.child(m.duration, ep.name, "proxy").observe(time.perf_counter() - started)


async def _passive(ctx: RouterContext, wid: str, result: PollResult) -> None:
    if ctx.health is not None:
        await ctx.health.observe(wid, result)


async def _attempt(
    request: web.Request,
    ctx: RouterContext,
    ep: EndpointSettings,
    path: str,
    body: bytes,
    ticket: dict[str, Any],
    wid: str,
    request_id: str,
) -> web.StreamResponse:
    assert ctx.session is not None
    url = ticket["url"] + path + (f"?{request.query_string}" if request.query_string else "")
    timeout = _client_timeout(ep)
    sent = time.perf_counter()
    try:
        async with asyncio.timeout(ep.timeout_ttfb_s):
            upstream = await ctx.session.request(
                request.method,
                url,
                data=body or None,
                headers=_upstream_headers(request, ticket, request_id),
                timeout=timeout,
                allow_redirects=False,
                skip_auto_headers=_SKIP_AUTO,
            )
    except aiohttp.ClientConnectorError as exc:
        await _passive(ctx, wid, PollResult(False, refused=True, detail=str(exc)))
        raise _Retry(
            "connect", error_response(502, "worker_unreachable", "could not connect to a worker")
        ) from exc
    except (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError) as exc:
        await _passive(ctx, wid, PollResult(False, detail=type(exc).__name__))
        raise _Retry(
            "disconnect",
            error_response(502, "worker_disconnected", "the worker closed the connection"),
        ) from exc
    except TimeoutError:
        return error_response(
            504, "upstream_timeout", "the worker did not answer in time", request_id=request_id
        )
    except aiohttp.ClientError as exc:
        return error_response(
            502,
            "upstream_error",
            f"worker request failed: {type(exc).__name__}",
            request_id=request_id,
        )
    try:
        ctx.metrics.child(ctx.metrics.upstream_ttfb, ep.name).observe(time.perf_counter() - sent)
        if upstream.status >= 500:
            await _passive(ctx, wid, PollResult(False, detail=f"HTTP {upstream.status}"))
        if upstream.status in RETRY_STATUSES:
            data = await upstream.content.read(65536)
            raise _Retry(
                f"status_{upstream.status}",
                web.Response(
                    body=data, status=upstream.status, headers=_response_headers(upstream)
                ),
            )
        return await _stream(request, upstream, request_id)
    finally:
        upstream.close()  # drops the connection if the body was not read to the end


@functools.cache
def _client_timeout(ep: EndpointSettings) -> aiohttp.ClientTimeout:
    return aiohttp.ClientTimeout(
        total=ep.timeout_total_s, connect=ep.timeout_connect_s, sock_read=ep.timeout_idle_s
    )


def _response_headers(upstream: aiohttp.ClientResponse) -> dict[str, str]:
    drop = DROP_RESPONSE | _connection_tokens(upstream.headers)
    return {k: v for k, v in upstream.headers.items() if k.lower() not in drop}


async def _stream(
    request: web.Request, upstream: aiohttp.ClientResponse, request_id: str
) -> web.StreamResponse:
    """Write each upstream chunk to the client as it arrives; never buffer a stream."""
    headers = _response_headers(upstream)
    headers["X-Request-Id"] = request_id
    chunked = upstream.headers.get("Transfer-Encoding", "").lower() == "chunked"
    length = None if chunked else upstream.content_length
    sse = upstream.content_type == "text/event-stream"
    if length is not None and length <= WHOLE_BODY_BYTES and not sse and request.method != "HEAD":
        # A small body of known length arrives in one or two reads anyway: answering it
        # whole skips the chunk loop (12% of a small request's samples in py-spy; an A/B
        # run of proxy_bench could not separate the gain from this machine's noise), and
        # a worker that cuts it short gets the client a 502, not a truncated 200.
        try:
            data = await upstream.read()
        except (aiohttp.ClientError, TimeoutError) as exc:
            log.warning(
                "upstream %s failed mid-response: %s", upstream.url.origin(), type(exc).__name__
            )
            return error_response(
                502, "upstream_failed", "the worker failed mid-response", request_id=request_id
            )
        return web.Response(
            body=data, status=upstream.status, reason=upstream.reason, headers=headers
        )
    resp = web.StreamResponse(status=upstream.status, reason=upstream.reason, headers=headers)
    if length is not None:
        resp.content_length = length
    try:
        await resp.prepare(request)
    except ConnectionResetError:
        log.debug("client went away before the response started")
        return resp
    it = upstream.content.iter_any()
    failed = False
    while not failed:
        try:
            chunk = await anext(it)
        except StopAsyncIteration:
            break
        except (aiohttp.ClientError, TimeoutError) as exc:
            # After the first byte the status is sent: end the stream, say why if we can.
            log.warning(
                "upstream %s failed mid-response: %s", upstream.url.origin(), type(exc).__name__
            )
            if not sse:
                if request.transport is not None:
                    request.transport.close()  # a truncated body must not look complete
                return resp
            err = {"error": {"code": "upstream_failed", "message": "the worker failed mid-stream"}}
            chunk = b"event: error\ndata: " + orjson.dumps(err) + b"\n\n"
            failed = True
        try:
            await resp.write(chunk)
        except ConnectionResetError:
            log.debug("client went away mid-stream")
            return resp
    await resp.write_eof()
    return resp


def add_routes(app: web.Application) -> None:
    app.router.add_post("/v1/chat/completions", openai)
    app.router.add_post("/v1/completions", openai)
    app.router.add_post("/v1/embeddings", openai)
    app.router.add_get("/v1/models", list_models)
    app.router.add_route("*", "/{endpoint}", proxy)
    app.router.add_route("*", "/{endpoint}/{path:.*}", proxy)
