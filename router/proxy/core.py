"""The proxy core: decide, forward, retry and account one proxied request.

Both server paths are thin adapters over this module (docs/architecture.md): the
httptools protocol (`server.py`) and aiohttp's server (`web.py`) each build a `Request`
(the head's bytes as they arrived, the body) and hand the core a `Sink` to answer
through. The core imports neither adapter and writes only through the sink, so every
rule below holds on both paths by construction: one header rule, one path rule, one
retry loop, one relay, one set of error answers. Towards the worker it speaks through
`router.upstream.Pool`, the kept-alive connections that health polls use too.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Coroutine
from typing import Any

import orjson

from router.auth import AuthError, key_from_header
from router.config import RESERVED_NAMES, ApiKeySettings, EndpointSettings
from router.context import RouterContext
from router.cost import BadCost, estimate
from router.errors import ApiError
from router.health import HealthPoller, PollResult
from router.hold import HoldRefused, Holds
from router.jsonbody import loads_bounded
from router.limits import check_rate, in_flight_slot
from router.prefix import request_hashes
from router.proxy.message import (
    DROP_REQUEST,
    DROP_RESPONSE,
    OPENAI,
    OPENAI_PATHS,
    PROXY,
    WORKER_ROUTES,
    Request,
    Sink,
    error_answer,
    header_text,
    is_json,
    read_head,
    request_id,
    ticket_header,
)
from router.state.base import StoreUnavailable
from router.ticket import issue_ticket, no_worker_body
from router.upstream import Conn, Pool, UpstreamError, worker_address

log = logging.getLogger(__name__)

RETRY_STATUSES = frozenset({502, 503, 429})
# Worker answers that count against its health: the worker failed, not the client.
EJECT_STATUSES = frozenset({502, 503, 504})
# Fixed-length answers up to this size are read whole and answered in one write.
WHOLE_BODY_BYTES = 64 * 1024
_SSE_ERROR = (
    b'event: error\ndata: {"error":{"code":"upstream_failed",'
    b'"message":"the worker failed mid-stream"}}\n\n'
)


async def answering_errors(
    ctx: RouterContext, sink: Sink, req: Request, step: Coroutine[Any, Any, None]
) -> None:
    """Await `step`, answering the router's own exceptions as JSON errors through `sink`
    (the one edge where they are translated for requests the core serves)."""
    try:
        await step
    except ApiError as exc:
        error_answer(sink, req, exc.status, exc.code, exc.message, headers=exc.headers, **exc.extra)
    except AuthError as exc:
        error_answer(sink, req, exc.status, exc.code, exc.message)
    except StoreUnavailable as exc:
        ctx.metrics.store_errors.inc()
        error_answer(
            sink,
            req,
            503,
            "store_unavailable",
            f"router state store is unreachable ({exc}); retry shortly",
            headers={"Retry-After": "1"},
        )


def rename_model(req: Request, doc: Any, served: str) -> None:
    """Name the model in an OpenAI request body as the worker's server knows it.

    Clients name the endpoint (or one of its `models`); a bare vLLM answers 404 to any
    `model` but its `--served-model-name`. Called only for endpoints that set
    `served_model_name`, and the body is re-encoded only when the name differs, so other
    requests pay nothing. The answer is relayed as the server wrote it.
    """
    if isinstance(doc, dict) and isinstance(doc.get("model"), str) and doc["model"] != served:
        doc["model"] = served
        req.body = orjson.dumps(doc)


class _Retry(Exception):
    """A try failed before any byte reached the client: what to answer if no other does."""

    def __init__(
        self,
        reason: str,
        status: int,
        body: bytes = b"",
        headers: list[tuple[bytes, bytes]] | None = None,
        error: tuple[str, str] | None = None,
    ) -> None:
        super().__init__(reason)
        self.reason = reason
        self.status = status
        self.body = body
        self.headers = headers or []
        self.error = error


# The core ----------------------------------------------------------------------------------


class ProxyCore:
    """Proxy mode for one router: what both server adapters call."""

    def __init__(
        self, ctx: RouterContext, pool: Pool, health: HealthPoller | None, holds: Holds
    ) -> None:
        self.ctx = ctx
        self.pool = pool
        self.health = health
        self.holds = holds
        self._seen = -1  # the registry version `_by_name` was built at
        self._by_name: dict[bytes, EndpointSettings] = {}
        self.openai_limit = 1

    def _names(self) -> dict[bytes, EndpointSettings]:
        """Endpoints by raw name, rebuilt when the registry changed (endpoints come and go)."""
        registry = self.ctx.registry
        if registry.version != self._seen:
            eps = self.ctx.endpoints
            self._by_name = {n.encode(): ep for n, ep in eps.items() if n not in RESERVED_NAMES}
            self.openai_limit = max((e.max_body_bytes for e in eps.values()), default=1)
            self._seen = registry.version
        return self._by_name

    # what a request is
    def match(
        self, method: bytes, path: bytes
    ) -> tuple[int, EndpointSettings | None, bytes] | None:
        """(kind, endpoint or None, the worker's path) of a proxied request; None: not one.

        `path` is raw and already passed `bad_path`. An endpoint's name is matched as
        sent: names are plain ASCII, so an encoded one names nothing.
        """
        if path in OPENAI_PATHS:
            return (OPENAI, None, path) if method == b"POST" else None
        name, _, rest = path[1:].partition(b"/")
        ep = self._names().get(name)
        if ep is None:
            return None
        return PROXY, ep, b"/" + rest

    def body_limit(self, req: Request) -> int:
        if req.ep is not None:
            return req.ep.max_body_bytes
        self._names()
        return self.openai_limit

    def not_found(self, name: str) -> ApiError:
        """The answer for an endpoint that does not exist or that the key may not use:
        the same, so a key cannot learn which endpoints exist."""
        return ApiError(404, "not_found", f"no endpoint or route named {name!r}")

    def model_endpoint(self, model: str) -> EndpointSettings | None:
        for ep in self.ctx.endpoints.values():
            if model == ep.name or model in ep.models or model == ep.served_model_name:
                return ep
        return None

    # serving
    async def serve(self, req: Request, sink: Sink) -> None:
        """Authenticate, find the endpoint, apply the key's limits, forward; errors as JSON."""
        await answering_errors(self.ctx, sink, req, self._serve(req, sink))

    async def _serve(self, req: Request, sink: Sink) -> None:
        ctx = self.ctx
        read_head(req)
        ep, key, parsed = self._admit(req)
        if not key.limited:
            await self.forward(req, sink, ep, parsed)
            return
        await check_rate(ctx, key, ep.name)
        async with in_flight_slot(ctx, key, ep.name, ep.timeout_total_s):
            await self.forward(req, sink, ep, parsed)

    def _admit(self, req: Request) -> tuple[EndpointSettings, ApiKeySettings, Any]:
        """(endpoint, key, parsed JSON body or None) of a request the router will forward."""
        auth = self.ctx.auth
        presented = key_from_header(header_text(req.auth))
        body = req.body
        if req.ep is None:  # an OpenAI path: the endpoint serves the `model` named
            key = auth.lookup(presented)
            doc = loads_bounded(body)
            model = doc.get("model") if isinstance(doc, dict) else None
            if not isinstance(model, str) or not model:
                raise ApiError(400, "bad_request", "the body must be a JSON object with a 'model'")
            ep = self.model_endpoint(model)
            if ep is None or not key.allows(ep.name, ep.workspace):
                raise ApiError(404, "model_not_found", f"no endpoint serves model {model!r}")
            if len(body) > ep.max_body_bytes:
                raise ApiError(
                    413, "body_too_large", f"request body over {ep.max_body_bytes} bytes"
                )
            if ep.served_model_name is not None:
                rename_model(req, doc, ep.served_model_name)
            return ep, key, doc
        ep = req.ep
        key = auth.lookup(presented)
        if not key.allows(ep.name, ep.workspace):
            raise self.not_found(ep.name)
        if not ep.expose_worker_routes:
            first = req.upstream_path[1:].partition(b"/")[0]
            if first in WORKER_ROUTES or req.upstream_path == ep.health_path.encode():
                raise ApiError(
                    404,
                    "not_found",
                    "the worker's own routes are not reachable through the router",
                )
        parsed = None
        if body and is_json(req.ctype):
            parsed = loads_bounded(body, tolerate_invalid=True)  # the worker answers bad JSON
            if ep.served_model_name is not None and req.upstream_path in OPENAI_PATHS:
                rename_model(req, parsed, ep.served_model_name)  # base URL /{endpoint}/v1
        return ep, key, parsed

    def cost(self, req: Request, ep: EndpointSettings, parsed: Any) -> float:
        """What the request weighs (router/cost.py), or 400."""
        try:
            return estimate(header_text(req.x_cost), parsed, ep.default_cost, ep.max_cost)
        except BadCost as exc:
            raise ApiError(400, "bad_cost", str(exc)) from exc

    async def forward(self, req: Request, sink: Sink, ep: EndpointSettings, parsed: Any) -> None:
        """Send the request to a worker (retrying on others) and relay its answer."""
        cost = self.cost(req, ep, parsed)
        # the prompt's block hashes, for a cache_aware endpoint: from the body the core
        # parsed already (for the cost), so a request is read once
        hashes = request_hashes(parsed) if ep.policy == "cache_aware" else None
        rid = request_id(req)
        m = self.ctx.metrics
        started = time.perf_counter()
        status: int | None = None
        try:
            status, last = await self._on_workers(req, sink, ep, cost, rid, hashes)
            if status is not None:
                return
            if last is not None:
                status = last.status
                if last.error is not None:
                    error_answer(sink, req, last.status, *last.error)
                else:
                    relayed = [(n, v) for n, v in last.headers if n.lower() not in DROP_RESPONSE]
                    relayed.append((b"X-Request-Id", rid.encode()))
                    sink.answer(req, last.status, b"", relayed, last.body)
                return
            no_worker, headers = no_worker_body(self.ctx, ep.name)
            if req.held:
                no_worker["reason"] = {
                    "timeout": "cold_start_timeout"
                    if not no_worker["status"]["ready"]
                    else "queue_timeout",
                    "full": "too_many_held",
                }.get(req.held, no_worker["reason"])
            status = 503
            error_answer(
                sink,
                req,
                503,
                "no_worker",
                "no worker of this endpoint can take the request now; retry later",
                headers=headers,
                **no_worker,
            )
        finally:
            code = str(status) if status is not None else "499"
            m.child(m.requests, ep.name, "proxy", code).inc()
            m.child(m.duration, ep.name, "proxy").observe(time.perf_counter() - started)

    async def _on_workers(
        self,
        req: Request,
        sink: Sink,
        ep: EndpointSettings,
        cost: float,
        rid: str,
        hashes: list[str] | None = None,
    ) -> tuple[int | None, _Retry | None]:
        """One try on one worker, then others while it fails before any byte went out.

        Each try holds a ticket of its own, released when the try ends however it ends
        (answered, failed, or the client gone). Returns (the status relayed, None), or
        (None, the last failed try, or None when no worker could take the request).
        """
        ctx = self.ctx
        m = ctx.metrics
        tried: set[str] = set()
        last: _Retry | None = None
        held = False
        for n in range(ep.retries + 1):
            ticket: dict[str, Any] | None = None
            if n or not self.holds.waiting(ep.name):  # a newcomer queues behind the held
                ticket, _, wid = await issue_ticket(
                    ctx,
                    ep.name,
                    cost,
                    exclude=frozenset(tried),
                    request_id=rid,
                    proxy=True,
                    hashes=hashes,
                )
            if ticket is None and not held and (n == 0 or _worker_gone(ep, last)):
                # none can take it (a cold start, a full fleet), or the only ones were
                # gone (a managed endpoint's worker that died): wait for one, once
                held = True
                ticket, wid = await self._hold(req, ep, cost, rid, hashes, frozenset(tried))
            if ticket is None:
                break
            tried.add(wid)
            measured = ep.perf_mode == "measured"
            if measured:
                ctx.fleet.started(wid, time.monotonic())
            try:
                return await self._attempt(req, sink, ep, ticket, wid, rid), None
            except _Retry as exc:
                last = exc
                if n < ep.retries:
                    m.child(m.retries, ep.name, exc.reason).inc()
            finally:
                try:
                    await ctx.fleet.release(wid, ticket["reqnum"], cost)
                    if measured:
                        await ctx.fleet.finished(wid, cost, time.monotonic())
                except StoreUnavailable as exc:
                    # the answer may be out already: never a second one; the ticket's
                    # cost leaves the worker's load when the ticket expires
                    ctx.metrics.store_errors.inc()
                    log.warning("could not release a proxied request's load: %s", exc)
        return None, last

    async def _hold(
        self,
        req: Request,
        ep: EndpointSettings,
        cost: float,
        rid: str,
        hashes: list[str] | None = None,
        exclude: frozenset[str] = frozenset(),
    ) -> tuple[dict[str, Any] | None, str]:
        """Hold a request no worker can take now (router/hold.py) until one can, in
        arrival order; (ticket, worker id), or (None, "") past the endpoint's bounds."""
        a = ep.autoscaling
        if a.max_held_requests <= 0 or a.max_queue_time_s <= 0:
            return None, ""
        ctx = self.ctx
        if ep.local is None and not ctx.snapshot.endpoint(ep.name):
            return None, ""  # no worker, and none the router could start: waiting is futile
        ctx.activity.wanted(ep.name, cost)  # the leader starts a worker if there is none
        deadline = asyncio.get_running_loop().time() + a.max_queue_time_s
        again = False
        while True:
            try:
                if not await self.holds.wait_turn(
                    ep.name, deadline, a.max_held_requests, first=again, cost=cost
                ):
                    req.held = "timeout"
                    return None, ""
            except HoldRefused:
                req.held = "full"
                return None, ""
            placed = False
            try:
                ticket, _, wid = await issue_ticket(
                    ctx, ep.name, cost, exclude=exclude, request_id=rid, proxy=True, hashes=hashes
                )
                placed = ticket is not None
            finally:
                self.holds.done(ep.name, placed)
            if ticket is not None:
                req.held = "served"
                return ticket, wid
            again = True

    async def _passive(self, wid: str, result: PollResult) -> None:
        if self.health is not None:
            await self.health.observe(wid, result)

    def _upstream_request(
        self, req: Request, prefix: bytes, hostport: bytes, ticket: dict[str, Any], rid: str
    ) -> bytes:
        target = prefix + req.upstream_path
        if req.query:
            target += b"?" + req.query
        parts = [req.method, b" ", target, b" HTTP/1.1\r\nHost: ", hostport, b"\r\n"]
        drop = DROP_REQUEST | req.conn_tokens if req.conn_tokens else DROP_REQUEST
        for name, value in req.headers:
            if name.lower() not in drop:
                parts += (name, b": ", value, b"\r\n")
        xff = req.xff + b", " + req.peer if req.xff else req.peer
        parts += (
            b"X-Forwarded-For: ",
            xff,
            b"\r\nX-Forwarded-Proto: ",
            req.scheme,
            b"\r\nX-Forwarded-Host: ",
            req.host or req.server_host,
            b"\r\nX-Request-Id: ",
            rid.encode(),
            b"\r\nX-Route-Ticket: ",
            ticket_header(ticket).encode(),
            b"\r\n",
        )
        body = req.body
        if body or req.method in (b"POST", b"PUT", b"PATCH"):
            parts += (b"Content-Length: %d\r\n\r\n" % len(body), body)
        else:
            parts.append(b"\r\n")
        return b"".join(parts)

    async def _attempt(
        self,
        req: Request,
        sink: Sink,
        ep: EndpointSettings,
        ticket: dict[str, Any],
        wid: str,
        rid: str,
    ) -> int:
        """One try on one worker; the status relayed, or _Retry before any byte was sent."""
        key, prefix, hostport = worker_address(ticket["url"])
        request = self._upstream_request(req, prefix, hostport, ticket, rid)
        pool = self.pool
        loop = asyncio.get_running_loop()
        sent = time.perf_counter()
        total_deadline = loop.time() + ep.timeout_total_s
        head_only = req.method == b"HEAD"
        conn = pool.take(key)
        for fresh in (conn is None, True):
            if conn is None or fresh:
                try:
                    conn = await pool.connect(key, ep.timeout_connect_s)
                except UpstreamError as exc:
                    await self._passive(wid, PollResult(False, refused=True, detail=str(exc)))
                    raise _Retry(
                        "connect",
                        502,
                        error=("worker_unreachable", "could not connect to a worker"),
                    ) from exc
            conn.send(request, head_only=head_only)
            conn.watch(min(total_deadline, loop.time() + ep.timeout_ttfb_s), None)
            try:
                assert conn.head is not None
                await conn.head
                break
            except UpstreamError as exc:
                if exc.stale and not fresh:
                    continue  # the worker closed the idle connection as we reused it
                await self._passive(wid, PollResult(False, detail="ServerDisconnectedError"))
                raise _Retry(
                    "disconnect",
                    502,
                    error=("worker_disconnected", "the worker closed the connection"),
                ) from exc
            except TimeoutError:
                await self._passive(wid, PollResult(False, detail="time to first byte exceeded"))
                error_answer(
                    sink,
                    req,
                    504,
                    "upstream_timeout",
                    "the worker did not answer in time",
                    request_id=rid,
                )
                return 504
            except asyncio.CancelledError:
                conn.close()
                raise
            finally:
                conn.unwatch()
        assert conn is not None
        status = 0
        try:
            m = self.ctx.metrics
            m.child(m.upstream_ttfb, ep.name).observe(time.perf_counter() - sent)
            status = conn.status
            if status in EJECT_STATUSES:
                await self._passive(wid, PollResult(False, detail=f"HTTP {status}"))
            if status in RETRY_STATUSES:
                if not conn.complete:
                    await _finish(conn, total_deadline, ep.timeout_idle_s)
                raise _Retry(f"status_{status}", status, conn.take_body()[:65536], conn.headers)
            return await self._relay(req, sink, conn, total_deadline, ep.timeout_idle_s, rid)
        except _Retry:
            raise
        except (UpstreamError, TimeoutError) as exc:
            if status in RETRY_STATUSES:  # the error answer itself broke off: still retry
                raise _Retry(f"status_{status}", status) from exc
            raise
        finally:
            pool.put(conn)  # closes it unless its answer ended cleanly and it may be reused

    async def _relay(
        self,
        req: Request,
        sink: Sink,
        conn: Conn,
        deadline: float,
        idle_s: float,
        rid: str,
    ) -> int:
        """Write the worker's answer to the client: whole if it is all here, else as it comes."""
        headers, length, sse = _answer_headers(conn)
        headers.append((b"X-Request-Id", rid.encode()))
        if req.held == "served":
            headers.append((b"X-Cold-Start", b"1"))  # it waited for a worker to be ready
        status = conn.status
        if not conn.complete and length is not None and length <= WHOLE_BODY_BYTES and not sse:
            # A small body of known length arrives in one or two reads anyway; sending it
            # whole means a worker that cuts it short gets the client a 502, not a short 200.
            try:
                await _finish(conn, deadline, idle_s)
            except (UpstreamError, TimeoutError) as exc:
                log.warning(
                    "upstream %s:%d failed mid-response: %s",
                    conn.key[0],
                    conn.key[1],
                    type(exc).__name__,
                )
                error_answer(
                    sink,
                    req,
                    502,
                    "upstream_failed",
                    "the worker failed mid-response",
                    request_id=rid,
                )
                return status
        if conn.complete and not conn.head_only:
            sink.answer(req, status, conn.reason, headers, conn.take_body())
            return status
        await sink.start(req, status, conn.reason, headers, length, conn)
        if conn.head_only:
            await sink.end(req)
            return status
        try:
            conn.attach(sink)
            if not conn.complete:
                await _finish(conn, deadline, idle_s)
        except (UpstreamError, TimeoutError) as exc:
            # After the first byte the status is sent: end the stream, say why if we can.
            log.warning(
                "upstream %s:%d failed mid-response: %s",
                conn.key[0],
                conn.key[1],
                type(exc).__name__,
            )
            if sse and length is None:
                sink.body([_SSE_ERROR])
                await sink.end(req)
            else:
                sink.abort(req)
            return status
        except asyncio.CancelledError:
            log.debug("client went away mid-stream")
            raise
        await sink.end(req)
        return status


def _worker_gone(ep: EndpointSettings, last: _Retry | None) -> bool:
    """The last try found its worker gone, on an endpoint the router runs workers for."""
    return ep.local is not None and last is not None and last.reason in ("connect", "disconnect")


async def _finish(conn: Conn, deadline: float, idle_s: float) -> None:
    if conn.complete:
        return
    conn.watch(deadline, idle_s)
    try:
        await conn.finished()
    finally:
        conn.unwatch()


def _answer_headers(conn: Conn) -> tuple[list[tuple[bytes, bytes]], int | None, bool]:
    """Headers to relay (repeated ones kept), the body's length if known, server-sent events?"""
    out: list[tuple[bytes, bytes, bytes]] = []
    length, chunked, sse = None, False, False
    tokens: set[bytes] = set()
    for name, value in conn.headers:
        n = name.lower()
        if n in DROP_RESPONSE:
            if n == b"content-length":
                try:
                    length = int(value)
                except ValueError:
                    length = None
            elif n == b"transfer-encoding":
                chunked = b"chunked" in value.lower()
            elif n == b"connection":
                tokens.update(t.strip().lower() for t in value.split(b","))
            continue
        if n == b"content-type":
            sse = value.lower().startswith(b"text/event-stream")
        out.append((n, name, value))
    # headers a Connection header names are hop-by-hop too (RFC 9110 §7.6.1)
    kept = [(name, value) for n, name, value in out if not tokens or n not in tokens]
    return kept, (None if chunked else length), sse
