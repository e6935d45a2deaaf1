"""The router's listening socket: proxied requests on a fast path, the rest to aiohttp.

Proxy mode through aiohttp's server and client cost about 470 µs of CPU per request
(bench/RESULTS.md), most of it machinery a proxy does not use: request and response
objects, middleware, payload writers, timeout contexts. Here each connection is first
read by a small httptools (llhttp) protocol. A request for `/{endpoint}/...` or an
OpenAI path is served on the spot: parsed once, sent to the worker in one write over a
kept-alive connection (`router/upstream.py`), and the answer relayed chunk by chunk as it
arrives. `POST /route` is answered here too (`ticket.route_answer`). Anything else, and
anything unusual (HTTP/1.0, HEAD, upgrades, encoded or dotted paths, parse errors,
oversized heads), is handed with its bytes to aiohttp's own protocol for the rest of the
connection: the routes, limits and error answers of `router/app.py` apply unchanged,
including its proxy handler.

The behaviour matches `router/proxy.py` and `ticket.route` (the same tickets, retries,
timeouts, passive health, limits, metrics and error bodies), and the same tests run
against both. Turn it off with `server.fast_proxy = false`. Hand-written on purpose: no
maintained library offers an HTTP/1.1 reverse proxy core for asyncio that would let the
router keep its own balancing, tickets and accounting per request.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import functools
import http
import itertools
import logging
import secrets
import socket
import time
from collections import deque
from typing import Any

import httptools
import orjson
from aiohttp import web
from yarl import URL

from router import proxy
from router.auth import AuthError, key_from_header
from router.config import RESERVED_NAMES, EndpointSettings
from router.context import CTX, RouterContext
from router.errors import ApiError
from router.health import PollResult
from router.limits import check_rate, in_flight_slot
from router.proxy import (
    _REQUEST_ID_RE,
    Retry,
    _passive,
    model_endpoint,
    on_workers,
    request_cost,
    ticket_header,
    too_large,
)
from router.state.base import StoreUnavailable
from router.ticket import (
    MAX_JSON_BODY_BYTES,
    json_object,
    no_worker_body,
    route_answer,
)
from router.timers import LazyTimer
from router.upstream import Conn, Pool, UpstreamError

log = logging.getLogger(__name__)

_FAST_METHODS = frozenset({b"GET", b"POST", b"PUT", b"PATCH", b"DELETE", b"OPTIONS"})
_OPENAI_PATHS = frozenset({b"/v1/chat/completions", b"/v1/completions", b"/v1/embeddings"})
_ROUTE_PATHS = frozenset({b"/route", b"/route/"})
# What a fast request is: one endpoint's proxy path, an OpenAI path, or ticket mode.
_PROXY, _OPENAI, _ROUTE = 0, 1, 2
# proxy.py's header sets as bytes (httptools hands names over as bytes); the answer's own
# X-Request-Id is replaced by the router's
_DROP_REQUEST = frozenset(h.encode() for h in proxy.DROP_REQUEST)
_DROP_RESPONSE = frozenset(h.encode() for h in proxy.DROP_RESPONSE) | {b"x-request-id"}
_MAX_HEAD_BYTES = 64 * 1024  # a request head larger than this goes to aiohttp (and its 4xx)
_MAX_HEADERS = 100
_LINGER_S = 2.0  # after answering a body too large before it arrived, read on this long
_MAX_PIPELINED = 8  # complete requests queued on one connection before reading pauses
_SSE_ERROR = (
    b'event: error\ndata: {"error":{"code":"upstream_failed",'
    b'"message":"the worker failed mid-stream"}}\n\n'
)


class _HandOff(Exception):
    """Stop parsing: the rest of the connection goes to aiohttp."""


class Req:
    """One request as the fast path needs it."""

    __slots__ = (
        "answered",
        "auth",
        "body",
        "conn_tokens",
        "ctype",
        "ep",
        "error",
        "expect",
        "headers",
        "host",
        "keep_alive",
        "kind",
        "limit",
        "method",
        "path",
        "query",
        "size",
        "upstream_path",
        "url",
        "x_cost",
        "x_request_id",
        "xff",
    )

    def __init__(self) -> None:
        self.url = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.body: list[bytes] = []
        self.size = 0
        self.limit = 0
        self.auth: bytes | None = None
        self.ctype = b""
        self.x_cost: bytes | None = None
        self.x_request_id = b""
        self.xff = b""
        self.host = b""
        self.conn_tokens: frozenset[bytes] = frozenset()
        self.expect = False
        self.keep_alive = True
        self.method = b""
        self.path = b""
        self.query: bytes | None = None
        self.kind = _PROXY
        self.ep: EndpointSettings | None = None  # None: OpenAI (found by `model`), /route
        self.upstream_path = b""
        self.error: ApiError | None = None
        self.answered = False


class Front:
    """What every connection shares: the router context, aiohttp's protocol, the pool."""

    def __init__(self, ctx: RouterContext, aiohttp_protocol: Any) -> None:
        self.ctx = ctx
        self.aiohttp_protocol = aiohttp_protocol
        self.pool = Pool()
        self.read_timeout_s = ctx.settings.server.request_read_timeout_s
        self.endpoints = {
            name.encode(): ep for name, ep in ctx.endpoints.items() if name not in RESERVED_NAMES
        }
        self.openai_limit = max((e.max_body_bytes for e in ctx.endpoints.values()), default=1)
        self.conns: set[FrontConn] = set()
        self.closing = False
        self.drained = asyncio.Event()  # set once closing and no fast connection is left

    def discard(self, conn: FrontConn) -> None:
        self.conns.discard(conn)
        if self.closing and not self.conns:
            self.drained.set()

    def route(
        self,
        method: bytes,
        path: bytes,
    ) -> tuple[int, EndpointSettings | None, bytes] | None:
        """(kind, endpoint or None, the worker's path); None: not for the fast path."""
        if path in _ROUTE_PATHS:
            return (_ROUTE, None, b"") if method == b"POST" else None
        if path in _OPENAI_PATHS:
            return (_OPENAI, None, path) if method == b"POST" else None
        name, _, rest = path[1:].partition(b"/")
        ep = self.endpoints.get(name)
        if ep is None:
            return None
        return _PROXY, ep, b"/" + rest

    def __call__(self) -> FrontConn:
        return FrontConn(self)


class FrontConn(asyncio.Protocol):
    """One client connection, until (if ever) it is handed to aiohttp."""

    def __init__(self, front: Front) -> None:
        self.front = front
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)
        self.peer = b""
        self.local = b""
        self.reading: Req | None = None  # the request being parsed
        self.queue: deque[Req] = deque()  # parsed, waiting for the one in flight
        self.current: asyncio.Task[None] | None = None
        self.upstream: Conn | None = None  # the worker connection being relayed
        self.raw = bytearray()  # bytes since the parser was last between requests
        self.raw_lost = False
        self.completed_in_raw = 0
        self.handoff_at: int | None = None  # requests completed in `raw` before the handoff
        self.handoff_data = b""
        self.stopped = False  # no more requests are read (an error answer ends the connection)
        self.linger = False  # ... and the client may still be sending: see _reject
        self.deadline: float | None = None  # loop time the connection times out at
        self.timer = LazyTimer(self.loop, lambda: self.deadline, self._timed_out)
        self.head_bytes = 0

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        peer = transport.get_extra_info("peername")
        self.peer = str(peer[0]).encode() if peer else b""
        local = transport.get_extra_info("sockname")
        self.local = f"{local[0]}:{local[1]}".encode() if isinstance(local, tuple) else b""
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.front.conns.add(self)
        self._arm(self.front.read_timeout_s)

    def connection_lost(self, exc: Exception | None) -> None:
        self.front.discard(self)
        self._disarm(now=True)
        if self.current is not None and not self.current.done():
            self.current.cancel()  # the client hung up: drop the worker request at once
        self.queue.clear()

    def pause_writing(self) -> None:  # the client reads slower than the worker sends
        if self.upstream is not None:
            self.upstream.pause_reading()

    def resume_writing(self) -> None:
        if self.upstream is not None:
            self.upstream.resume_reading()

    def data_received(self, data: bytes) -> None:
        if self.handoff_at is not None:
            self.handoff_data += data
            return
        if self.stopped:
            return
        if self.reading is None and not self.raw:
            self.completed_in_raw = 0
        if not self.raw_lost:
            self.raw += data
        try:
            self.parser.feed_data(data)
        except _HandOff:
            pass
        except httptools.HttpParserCallbackError as exc:
            if not isinstance(exc.__context__, _HandOff):
                raise
        except httptools.HttpParserError:
            self._hand_off()  # aiohttp answers malformed requests (400) and logs one line
        if self.handoff_at is not None:
            self._begin_hand_off()
            return
        if self.reading is None:
            self.raw.clear()
            self.raw_lost = False
        elif len(self.raw) > _MAX_HEAD_BYTES:
            if self.head_bytes:  # a head this large: aiohttp refuses it (4xx)
                self._hand_off()
                self._begin_hand_off()
            else:
                # a fast request's body fills it: stop keeping bytes for a hand-off
                self.raw_lost = True
                self.raw.clear()

    # httptools callbacks
    def on_message_begin(self) -> None:
        self.reading = Req()
        self.head_bytes = 1
        if self.current is None:  # else the answer in flight comes first; then the timer
            self._arm(self.front.read_timeout_s)

    def on_url(self, url: bytes) -> None:
        assert self.reading is not None
        self.reading.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        req = self.reading
        assert req is not None
        req.headers.append((name, value))
        if len(req.headers) > _MAX_HEADERS:
            self._hand_off()
            raise _HandOff
        n = name.lower()
        if n == b"authorization":
            req.auth = value
        elif n == b"content-type":
            req.ctype = value.lower()
        elif n == b"x-cost":
            req.x_cost = value
        elif n == b"x-request-id":
            req.x_request_id = value
        elif n == b"x-forwarded-for" and not req.xff:
            req.xff = value
        elif n == b"host":
            req.host = value
        elif n == b"connection":
            req.conn_tokens = req.conn_tokens | {t.strip().lower() for t in value.split(b",")}
        elif n == b"expect":
            req.expect = value.lower() == b"100-continue"

    def on_headers_complete(self) -> None:
        req = self.reading
        assert req is not None
        p = self.parser
        method = p.get_method()
        if p.get_http_version() != "1.1" or method not in _FAST_METHODS or p.should_upgrade():
            self._hand_off()
            raise _HandOff
        try:
            url = httptools.parse_url(req.url)
        except httptools.HttpParserInvalidURLError:
            self._hand_off()
            raise _HandOff from None
        path = url.path
        if (
            url.schema
            or url.host
            or not path
            or path[:1] != b"/"
            or path[:2] == b"//"
            or b"%" in path
            or b"/." in path
        ):
            self._hand_off()  # aiohttp decodes and normalises these; keep its answer
            raise _HandOff
        route = self.front.route(method, path)
        if route is None:
            self._hand_off()
            raise _HandOff
        req.method, req.path, req.query = method, path, url.query
        req.kind, req.ep, req.upstream_path = route
        req.keep_alive = p.should_keep_alive()
        self.head_bytes = 0
        req.limit = (
            req.ep.max_body_bytes
            if req.ep is not None
            else self.front.openai_limit
            if req.kind == _OPENAI
            else MAX_JSON_BODY_BYTES
        )
        for name, value in req.headers:
            if name.lower() == b"content-length":
                try:
                    too_big = int(value) > req.limit
                except ValueError:
                    too_big = False
                if too_big:
                    self._reject(req, too_large(req.limit))
                    raise _HandOff
        if req.expect and self.current is None and not self.queue:
            self._write(b"HTTP/1.1 100 Continue\r\n\r\n")

    def on_body(self, body: bytes) -> None:
        req = self.reading
        assert req is not None
        req.size += len(body)
        if req.size > req.limit:
            self._reject(req, too_large(req.limit))
            raise _HandOff
        req.body.append(body)

    def on_message_complete(self) -> None:
        req = self.reading
        assert req is not None
        self.reading = None
        self.completed_in_raw += 1
        self._queue(req)
        if len(self.queue) >= _MAX_PIPELINED and self.transport is not None:
            self.transport.pause_reading()

    # requests in order
    def _queue(self, req: Req) -> None:
        self.queue.append(req)
        if self.current is None:
            self._next()

    def _next(self) -> None:
        if self.queue:
            self._disarm()
            req = self.queue.popleft()
            self.current = self.loop.create_task(self._run(req))
            return
        self.current = None
        if self.stopped:
            self._linger() if self.linger else self._close()
        elif self.handoff_at is not None:
            self._finish_hand_off()
        elif self.front.closing:
            self._close()
        else:
            if self.transport is not None:
                self.transport.resume_reading()
            # idle: how long a kept-alive connection waits; mid-request: for the rest of it
            self._arm(self.front.read_timeout_s)
            if self.reading is not None and self.reading.expect:
                self._write(b"HTTP/1.1 100 Continue\r\n\r\n")

    async def _run(self, req: Req) -> None:
        try:
            if req.error is not None:
                self.respond_error(req, req.error.status, req.error.code, req.error.message)
            else:
                await serve(self, req)
        except asyncio.CancelledError:
            return  # the client is gone; the connection is too
        except Exception:
            log.exception("unhandled error on %s %s", req.method.decode(), req.path.decode())
            req.keep_alive = False
            if req.answered:
                self._close()  # the answer is under way: it cannot turn into a 500 now
            else:
                self.respond_error(req, 500, "internal_error", "internal error; see the router log")
        if not req.keep_alive:
            self.stopped = True
            self.queue.clear()
        self._next()

    # hand-off to aiohttp
    def _hand_off(self) -> None:
        if self.handoff_at is None:
            self.handoff_at = self.completed_in_raw

    def _begin_hand_off(self) -> None:
        assert self.transport is not None
        self.transport.pause_reading()
        self._disarm()
        if self.raw_lost:
            # A pipelined request after a large body, in one stream: its start is lost.
            # Finish what is in flight and close; the client retries it elsewhere.
            self.stopped, self.handoff_at = True, None
            if self.current is None and not self.queue:
                self._close()
            return
        offset = _offset_after(bytes(self.raw), self.handoff_at or 0)
        self.handoff_data = bytes(self.raw[offset:]) + self.handoff_data
        self.raw.clear()
        self.reading = None
        if self.current is None and not self.queue:
            self._finish_hand_off()

    def _finish_hand_off(self) -> None:
        transport = self.transport
        assert transport is not None
        self.front.discard(self)
        self._disarm(now=True)
        if transport.is_closing():
            return
        proto = self.front.aiohttp_protocol()
        transport.set_protocol(proto)
        proto.connection_made(transport)
        data, self.handoff_data = self.handoff_data, b""
        if data:
            proto.data_received(data)
        transport.resume_reading()

    # timers: one per connection (`LazyTimer`), its deadline moved twice per request
    def _arm(self, after_s: float) -> None:
        self.deadline = self.loop.time() + after_s
        self.timer.moved()

    def _disarm(self, *, now: bool = False) -> None:
        """No timeout until armed again; `now`: drop the timer too (the connection ends)."""
        self.deadline = None
        if now:
            self.timer.cancel()

    def _timed_out(self) -> None:
        self.deadline = None
        req = self.reading
        if req is not None and req.method and self.current is None and not self.queue:
            # the head came, the body is too slow: say so before closing
            s = self.front.read_timeout_s
            self.stopped, req.keep_alive = True, False
            self.respond_error(
                req, 408, "request_timeout", f"the request body did not arrive within {s:g} s"
            )
        self._close()  # idle too long, or a head that never ended (slowloris)

    # writing
    def _reject(self, req: Req, error: ApiError) -> None:
        """Answer `req` with `error` in turn, then close: its body is not read.

        The client may still be sending that body; closing on it at once would reset the
        connection and lose the answer. So the rest of what it sends is read and dropped
        (`stopped`), and the connection lingers a little after the answer (`_linger`).
        """
        req.error = error
        req.keep_alive = False
        self.stopped = self.linger = True
        self.reading = None
        self._queue(req)

    def _linger(self) -> None:
        """Half-close after an early answer; drop what still comes; close in a while."""
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        if transport.can_write_eof():
            transport.write_eof()
        self._arm(min(self.front.read_timeout_s, _LINGER_S))

    def _write(self, data: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    def _close(self) -> None:
        self._disarm(now=True)
        if self.transport is not None:
            self.transport.close()

    def respond_error(
        self,
        req: Req,
        status: int,
        code: str,
        message: str,
        /,
        *,
        headers: dict[str, str] | None = None,
        **extra: Any,
    ) -> None:
        body = orjson.dumps({"error": {"code": code, "message": message}, **extra})
        self.respond(req, status, body, headers)

    def respond(
        self,
        req: Req,
        status: int,
        body: bytes,
        headers: dict[str, str] | None = None,
        content_type: bytes = b"application/json",
    ) -> None:
        req.answered = True
        parts = [
            _status_line(status),
            b"Date: ",
            _date(),
            b"\r\nContent-Type: ",
            content_type,
            b"\r\nContent-Length: %d\r\n" % len(body),
        ]
        for k, v in (headers or {}).items():
            parts += (k.encode("latin-1"), b": ", v.encode("latin-1"), b"\r\n")
        if not req.keep_alive or self.front.closing:
            parts.append(b"Connection: close\r\n")
        parts += (b"\r\n", body)
        self._write(b"".join(parts))


_DATE: list[Any] = [0, b""]


def _date() -> bytes:
    """The Date header's value, made once a second."""
    now = int(time.time())
    if now != _DATE[0]:
        _DATE[:] = [now, email.utils.formatdate(now, usegmt=True).encode()]
    return bytes(_DATE[1])


@functools.cache
def _status_line(status: int) -> bytes:
    try:
        phrase = http.HTTPStatus(status).phrase
    except ValueError:
        phrase = "Unknown"
    return f"HTTP/1.1 {status} {phrase}\r\n".encode()


class _Counter:
    __slots__ = ("done",)

    def __init__(self) -> None:
        self.done = 0

    def on_message_complete(self) -> None:
        self.done += 1


def _offset_after(raw: bytes, n: int) -> int:
    """Where request `n` (0-based) begins in `raw`, which begins between two requests.

    Rare (a pipelined request after fast ones in one read), so it re-parses byte by byte.
    """
    if n == 0:
        return 0
    counter = _Counter()
    parser = httptools.HttpRequestParser(counter)
    for i in range(len(raw)):
        try:
            parser.feed_data(raw[i : i + 1])
        except httptools.HttpParserError:
            return i
        if counter.done >= n:
            return i + 1
    return len(raw)


# The proxy itself ------------------------------------------------------------------------


class _Retry(Retry):
    """A failed try, with what to answer if no other worker does better."""

    def __init__(
        self,
        reason: str,
        status: int,
        body: bytes,
        headers: list[tuple[bytes, bytes]] | None = None,
        error: tuple[str, str] | None = None,
    ) -> None:
        super().__init__(reason)
        self.status = status
        self.body = body
        self.headers = headers or []
        self.error = error


async def serve(fc: FrontConn, req: Req) -> None:
    """Authenticate, find the endpoint, apply the key's limits, forward; errors as JSON."""
    ctx = fc.front.ctx
    try:
        body = b"".join(req.body)
        req.body = []
        authorization = req.auth.decode("latin-1") if req.auth else None
        if req.kind == _ROUTE:
            answer, headers = await route_answer(ctx, json_object(body), authorization)
            fc.respond(req, 200, orjson.dumps(answer), headers)
            return
        presented = key_from_header(authorization)
        if req.ep is None:  # an OpenAI path: the endpoint serves the `model` named
            ctx.auth.lookup(presented)
            try:
                doc = orjson.loads(body)
            except orjson.JSONDecodeError as exc:
                raise ApiError(
                    400, "bad_json", f"request body is not valid JSON: {exc.msg}"
                ) from exc
            model = doc.get("model") if isinstance(doc, dict) else None
            if not isinstance(model, str) or not model:
                raise ApiError(400, "bad_request", "the body must be a JSON object with a 'model'")
            ep = model_endpoint(ctx, model)
            if ep is None:
                raise ApiError(404, "model_not_found", f"no endpoint serves model {model!r}")
            key = ctx.auth.require_endpoint(presented, ep.name)
            if len(body) > ep.max_body_bytes:
                raise too_large(ep.max_body_bytes)
            parsed: Any = doc
        else:
            ep = req.ep
            key = ctx.auth.require_endpoint(presented, ep.name)
            parsed = None
            if body and req.x_cost is None and _is_json(req.ctype):
                try:
                    parsed = orjson.loads(body)
                except orjson.JSONDecodeError:
                    parsed = None  # the worker answers bad JSON itself
        if not key.limited:
            await forward(fc, req, ctx, ep, body, parsed)
            return
        await check_rate(ctx, key, ep.name)
        async with in_flight_slot(ctx, key, ep.name, ep.timeout_total_s):
            await forward(fc, req, ctx, ep, body, parsed)
    except ApiError as exc:
        fc.respond_error(req, exc.status, exc.code, exc.message, headers=exc.headers, **exc.extra)
    except AuthError as exc:
        fc.respond_error(req, exc.status, exc.code, exc.message)
    except StoreUnavailable as exc:
        ctx.metrics.store_errors.inc()
        fc.respond_error(
            req,
            503,
            "store_unavailable",
            f"router state store is unreachable ({exc}); retry shortly",
            headers={"Retry-After": "1"},
        )


_ID_PREFIX = secrets.token_hex(8)
_ids = itertools.count(1)


def _new_request_id() -> str:
    """Unique per process and across processes (a random prefix), not secret: it is
    echoed to the worker and the client, for logs. A counter costs less than urandom."""
    return f"{_ID_PREFIX}{next(_ids):016x}"


def _is_json(ctype: bytes) -> bool:
    return ctype.split(b";", 1)[0].strip() == b"application/json"


async def forward(
    fc: FrontConn, req: Req, ctx: RouterContext, ep: EndpointSettings, body: bytes, parsed: Any
) -> None:
    """Send the request to a worker (retrying on others) and relay its answer."""
    cost = request_cost(
        req.x_cost.decode("latin-1") if req.x_cost is not None else None, parsed, ep
    )
    rid = req.x_request_id
    request_id = (
        rid.decode() if rid and _REQUEST_ID_RE.match(rid.decode("latin-1")) else _new_request_id()
    )
    m = ctx.metrics
    started = time.perf_counter()
    status: int | None = None
    try:
        status, last = await on_workers(
            ctx,
            ep,
            cost,
            request_id,
            lambda ticket, wid: _attempt(fc, req, ctx, ep, body, ticket, wid, request_id),
            _Retry,
        )
        if status is not None:
            return
        if last is not None:
            status = last.status
            if last.error is not None:
                fc.respond_error(req, last.status, *last.error)
            else:
                _relay_whole(
                    fc,
                    req,
                    last.status,
                    b"",
                    last.headers,
                    last.body,
                    request_id,
                    keep_request_id=False,
                )
            return
        no_worker, headers = no_worker_body(ctx, ep.name)
        status = 503
        fc.respond_error(
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


@functools.lru_cache(maxsize=65536)
def _worker_address(url: str) -> tuple[tuple[str, int, bool], bytes, bytes]:
    """(pool key, path prefix, Host header value) of a worker's base URL."""
    u = URL(url)
    tls = u.scheme == "https"
    port = u.port or (443 if tls else 80)
    host = u.raw_host or ""
    named = f"[{host}]" if ":" in host else host  # an IPv6 literal keeps its brackets
    return (host, port, tls), u.raw_path.rstrip("/").encode(), f"{named}:{port}".encode()


def _upstream_request(
    fc: FrontConn,
    req: Req,
    prefix: bytes,
    hostport: bytes,
    ticket: dict[str, Any],
    request_id: str,
    body: bytes,
) -> bytes:
    target = prefix + req.upstream_path
    if req.query:
        target += b"?" + req.query
    parts = [req.method, b" ", target, b" HTTP/1.1\r\nHost: ", hostport, b"\r\n"]
    drop = _DROP_REQUEST | req.conn_tokens if req.conn_tokens else _DROP_REQUEST
    for name, value in req.headers:
        if name.lower() not in drop:
            parts += (name, b": ", value, b"\r\n")
    xff = req.xff + b", " + fc.peer if req.xff else fc.peer
    parts += (
        b"X-Forwarded-For: ",
        xff,
        b"\r\nX-Forwarded-Proto: http\r\nX-Forwarded-Host: ",
        req.host or fc.local,
        b"\r\nX-Request-Id: ",
        request_id.encode(),
        b"\r\nX-Route-Ticket: ",
        ticket_header(ticket).encode(),
        b"\r\n",
    )
    if body or req.method in (b"POST", b"PUT", b"PATCH"):
        parts += (b"Content-Length: %d\r\n\r\n" % len(body), body)
    else:
        parts.append(b"\r\n")
    return b"".join(parts)


async def _attempt(
    fc: FrontConn,
    req: Req,
    ctx: RouterContext,
    ep: EndpointSettings,
    body: bytes,
    ticket: dict[str, Any],
    wid: str,
    request_id: str,
) -> int:
    """One try on one worker; the status relayed, or _Retry before any byte was sent."""
    key, prefix, hostport = _worker_address(ticket["url"])
    request = _upstream_request(fc, req, prefix, hostport, ticket, request_id, body)
    pool = fc.front.pool
    loop = fc.loop
    sent = time.perf_counter()
    total_deadline = loop.time() + ep.timeout_total_s
    conn = pool.take(key)
    for fresh in (conn is None, True):
        if conn is None or fresh:
            try:
                conn = await pool.connect(key, ep.timeout_connect_s)
            except UpstreamError as exc:
                await _passive(ctx, wid, PollResult(False, refused=True, detail=str(exc)))
                raise _Retry(
                    "connect",
                    502,
                    b"",
                    error=("worker_unreachable", "could not connect to a worker"),
                ) from exc
        conn.send(request)
        conn.watch(min(total_deadline, loop.time() + ep.timeout_ttfb_s), None)
        try:
            assert conn.head is not None
            await conn.head
            break
        except UpstreamError as exc:
            if exc.stale and not fresh:
                continue  # the worker closed the idle connection as we reused it
            await _passive(ctx, wid, PollResult(False, detail="ServerDisconnectedError"))
            raise _Retry(
                "disconnect",
                502,
                b"",
                error=("worker_disconnected", "the worker closed the connection"),
            ) from exc
        except TimeoutError:
            fc.respond_error(
                req,
                504,
                "upstream_timeout",
                "the worker did not answer in time",
                request_id=request_id,
            )
            return 504
        except asyncio.CancelledError:
            conn.close()
            raise
        finally:
            conn.unwatch()
    assert conn is not None
    try:
        ctx.metrics.child(ctx.metrics.upstream_ttfb, ep.name).observe(time.perf_counter() - sent)
        status = conn.status
        if status >= 500:
            await _passive(ctx, wid, PollResult(False, detail=f"HTTP {status}"))
        if status in proxy.RETRY_STATUSES:
            if not conn.complete:
                await _finish(loop, conn, total_deadline, ep.timeout_idle_s)
            raise _Retry(f"status_{status}", status, conn.take_body()[:65536], conn.headers)
        return await _relay(fc, req, conn, total_deadline, ep.timeout_idle_s, request_id)
    except _Retry:
        raise
    except (UpstreamError, TimeoutError) as exc:
        if status in proxy.RETRY_STATUSES:  # the error answer itself broke off: still retry
            raise _Retry(f"status_{status}", status, b"") from exc
        raise
    finally:
        pool.put(conn)  # closes it unless its answer ended cleanly and it may be reused


async def _finish(
    loop: asyncio.AbstractEventLoop, conn: Conn, deadline: float, idle_s: float
) -> None:
    if conn.complete:
        return
    conn.watch(deadline, idle_s)
    try:
        await conn.finished()
    finally:
        conn.unwatch()


def _response_headers(conn: Conn) -> tuple[list[tuple[bytes, bytes]], int | None, bool, bool]:
    """Headers to relay, the body's length if known, chunked?, server-sent events?"""
    out: list[tuple[bytes, bytes, bytes]] = []
    length, chunked, sse, tokens = None, False, False, None
    for name, value in conn.headers:
        n = name.lower()
        if n in _DROP_RESPONSE:
            if n == b"content-length":
                with contextlib.suppress(ValueError):
                    length = int(value)
            elif n == b"transfer-encoding":
                chunked = b"chunked" in value.lower()
            elif n == b"connection":
                tokens = {t.strip().lower() for t in value.split(b",")}
            continue
        if n == b"content-type":
            sse = value.lower().startswith(b"text/event-stream")
        out.append((n, name, value))
    # headers a Connection header names are hop-by-hop too (RFC 9110 §7.6.1)
    kept = [(name, value) for n, name, value in out if not tokens or n not in tokens]
    return kept, (None if chunked else length), chunked, sse


def _head(
    status: int,
    reason: bytes,
    headers: list[tuple[bytes, bytes]],
    request_id: str,
    close: bool,
    framing: bytes,
) -> list[bytes]:
    parts = [b"HTTP/1.1 %d %s\r\n" % (status, reason or b"OK")]
    for name, value in headers:
        parts += (name, b": ", value, b"\r\n")
    if request_id:
        parts += (b"X-Request-Id: ", request_id.encode(), b"\r\n")
    if close:
        parts.append(b"Connection: close\r\n")
    parts += (framing, b"\r\n")
    return parts


def _relay_whole(
    fc: FrontConn,
    req: Req,
    status: int,
    reason: bytes,
    headers: list[tuple[bytes, bytes]],
    body: bytes,
    request_id: str,
    keep_request_id: bool = True,
) -> None:
    if not keep_request_id:
        headers = [(n, v) for n, v in headers if n.lower() not in _DROP_RESPONSE]
    # 1xx, 204 and 304 answers carry no body and no Content-Length (RFC 9110 §8.6)
    framing = b"" if status < 200 or status in (204, 304) else b"Content-Length: %d\r\n" % len(body)
    parts = _head(
        status,
        reason or _status_line(status)[13:-2],
        headers,
        request_id if keep_request_id else "",
        not req.keep_alive or fc.front.closing,
        framing,
    )
    parts.append(body)
    req.answered = True
    fc._write(b"".join(parts))


class _ChunkedSink:
    __slots__ = ("fc",)

    def __init__(self, fc: FrontConn) -> None:
        self.fc = fc

    def body(self, chunks: list[bytes]) -> None:
        parts: list[bytes] = []
        for c in chunks:
            if c:
                parts += (b"%x\r\n" % len(c), c, b"\r\n")
        if parts:
            self.fc._write(b"".join(parts))


class _PlainSink:
    __slots__ = ("fc",)

    def __init__(self, fc: FrontConn) -> None:
        self.fc = fc

    def body(self, chunks: list[bytes]) -> None:
        self.fc._write(chunks[0] if len(chunks) == 1 else b"".join(chunks))


async def _relay(
    fc: FrontConn, req: Req, conn: Conn, deadline: float, idle_s: float, request_id: str
) -> int:
    """Write the worker's answer to the client: whole if it is all here, else as it comes."""
    headers, length, _, sse = _response_headers(conn)
    status, loop = conn.status, fc.loop
    close = not req.keep_alive or fc.front.closing
    if not conn.complete and length is not None and length <= proxy.WHOLE_BODY_BYTES and not sse:
        # A small body of known length arrives in one or two reads anyway; sending it
        # whole means a worker that cuts it short gets the client a 502, not a short 200.
        try:
            await _finish(loop, conn, deadline, idle_s)
        except (UpstreamError, TimeoutError) as exc:
            log.warning(
                "upstream %s:%d failed mid-response: %s",
                conn.key[0],
                conn.key[1],
                type(exc).__name__,
            )
            fc.respond_error(
                req, 502, "upstream_failed", "the worker failed mid-response", request_id=request_id
            )
            return status
    if conn.complete:
        _relay_whole(fc, req, status, conn.reason, headers, conn.take_body(), request_id)
        return status
    framing = (
        b"Content-Length: %d\r\n" % length
        if length is not None
        else b"Transfer-Encoding: chunked\r\n"
    )
    req.answered = True
    fc._write(b"".join(_head(status, conn.reason, headers, request_id, close, framing)))
    sink = _PlainSink(fc) if length is not None else _ChunkedSink(fc)
    fc.upstream = conn
    try:
        conn.attach(sink)
        if not conn.complete:
            await _finish(loop, conn, deadline, idle_s)
    except (UpstreamError, TimeoutError) as exc:
        # After the first byte the status is sent: end the stream, say why if we can.
        log.warning(
            "upstream %s:%d failed mid-response: %s", conn.key[0], conn.key[1], type(exc).__name__
        )
        if sse and length is None:
            fc._write(b"%x\r\n%s\r\n0\r\n\r\n" % (len(_SSE_ERROR), _SSE_ERROR))
        else:
            fc.stopped = True  # a truncated body must not look complete
            if fc.transport is not None:
                fc.transport.close()
        return status
    except asyncio.CancelledError:
        log.debug("client went away mid-stream")
        raise
    finally:
        fc.upstream = None
    if length is None:
        fc._write(b"0\r\n\r\n")
    return status


# Serving ---------------------------------------------------------------------------------


class FrontSite(web.BaseSite):
    """An aiohttp site whose connections take the fast path for proxied requests."""

    __slots__ = ("_fast", "_grace_s", "_host", "_port", "_reuse_port", "_sock", "front")

    def __init__(
        self,
        runner: web.BaseRunner,
        host: str | None = None,
        port: int = 0,
        *,
        sock: socket.socket | None = None,
        reuse_port: bool = False,
        fast: bool = True,
        grace_s: float = 30.0,
    ) -> None:
        super().__init__(runner)
        self._host, self._port, self._sock = host, port, sock
        self._reuse_port, self._fast, self._grace_s = reuse_port, fast, grace_s
        self.front: Front | None = None

    @property
    def name(self) -> str:
        return f"http://{self._host}:{self._port}"

    @property
    def port(self) -> int:
        sockets = getattr(self._server, "sockets", None)
        if sockets:
            return int(sockets[0].getsockname()[1])
        return self._port

    async def start(self) -> None:
        await super().start()
        loop = asyncio.get_running_loop()
        server = self._runner.server
        assert server is not None
        factory: Any = server
        if self._fast:
            app = self._runner.app  # type: ignore[attr-defined]
            self.front = factory = Front(app[CTX], server)
        if self._sock is not None:
            self._server = await loop.create_server(factory, sock=self._sock, backlog=1024)
        else:
            self._server = await loop.create_server(
                factory, self._host, self._port, backlog=1024, reuse_port=self._reuse_port or None
            )

    async def stop(self) -> None:
        """Stop listening; let requests in flight on fast connections finish (bounded)."""
        await super().stop()
        front = self.front
        if front is None:
            return
        front.closing = True
        for conn in list(front.conns):
            if conn.current is None and not conn.queue:
                conn._close()
        if front.conns:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(front.drained.wait(), self._grace_s)
        for conn in list(front.conns):
            if conn.current is not None:
                conn.current.cancel()
            conn._close()
        front.pool.close()
