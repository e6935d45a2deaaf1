"""The fast server path: an httptools (llhttp) protocol in front of aiohttp's.

Proxy mode through aiohttp's server costs hundreds of microseconds of CPU per request
(bench/RESULTS.md), most of it machinery a proxy does not use: request and response
objects, middleware, payload writers. Here each connection is first read by a small
httptools protocol. A request for `/{endpoint}/...` or an OpenAI path is parsed once and
handed to the proxy core (`core.py`) with this connection as its sink; `POST /route` is
answered here too (`ticket.route_answer`). Anything else, and anything unusual (HTTP/1.0,
HEAD, upgrades, absolute-form targets, parse errors, over-long lines), is handed with its
bytes to aiohttp's own protocol for the rest of the connection, where `web.py` serves
proxied requests through the same core, so both paths answer alike by construction.

Hand-written on purpose: no maintained library offers an HTTP/1.1 reverse proxy core for
asyncio that would let the router keep its own balancing, tickets and accounting per
request.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections import deque
from typing import Any

import httptools
import orjson

from router.context import RouterContext
from router.errors import ApiError
from router.jsonbody import json_object
from router.proxy.core import ProxyCore, answering_errors
from router.proxy.message import (
    MAX_LINE_BYTES,
    Request,
    bad_path,
    error_answer,
    header_text,
    http_date,
    read_head,
    reason_phrase,
)
from router.ticket import MAX_JSON_BODY_BYTES, route_answer
from router.timers import LazyTimer
from router.upstream import Conn

log = logging.getLogger(__name__)

_FAST_METHODS = frozenset({b"GET", b"POST", b"PUT", b"PATCH", b"DELETE", b"OPTIONS"})
_ROUTE_PATHS = frozenset({b"/route", b"/route/"})
_MAX_HEAD_BYTES = 64 * 1024  # a request head larger than this goes to aiohttp (and its 4xx)
_MAX_HEADERS = 100
_LINGER_S = 2.0  # after answering a body too large before it arrived, read on this long
_MAX_PIPELINED = 8  # complete requests queued on one connection before reading pauses


class _HandOff(Exception):
    """Stop parsing: the rest of the connection goes to aiohttp."""


class FastRequest(Request):
    """A request as this path reads it: the core's view plus what parsing needs."""

    __slots__ = ("answered", "declared", "error", "expect", "limit", "parts", "route", "size")

    def __init__(self) -> None:
        super().__init__()
        self.parts: list[bytes] = []
        self.size = 0
        self.limit = 0
        self.declared: bytes | None = None  # Content-Length, as sent
        self.expect = False
        self.route = False  # POST /route (ticket mode), not the proxy
        self.error: ApiError | None = None
        self.answered = False


class Front:
    """What every connection shares: the proxy core, aiohttp's protocol, the drain state."""

    def __init__(self, ctx: RouterContext, core: ProxyCore, aiohttp_protocol: Any) -> None:
        self.ctx = ctx
        self.core = core
        self.aiohttp_protocol = aiohttp_protocol
        self.read_timeout_s = ctx.settings.server.request_read_timeout_s
        self.conns: set[FrontConn] = set()
        self.closing = False
        self.drained = asyncio.Event()  # set once closing and no fast connection is left

    def discard(self, conn: FrontConn) -> None:
        self.conns.discard(conn)
        if self.closing and not self.conns:
            self.drained.set()

    def __call__(self) -> FrontConn:
        return FrontConn(self)

    async def stop(self, grace_s: float) -> None:
        """Stop taking requests; let those in flight finish within `grace_s`, then close."""
        self.closing = True
        for conn in list(self.conns):
            if conn.current is None and not conn.queue:
                conn.close()
        if self.conns:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.drained.wait(), grace_s)
        for conn in list(self.conns):
            if conn.current is not None:
                conn.current.cancel()
            conn.close()


class FrontConn(asyncio.Protocol):
    """One client connection, until (if ever) it is handed to aiohttp; the core's sink."""

    def __init__(self, front: Front) -> None:
        self.front = front
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)
        self.peer = b""
        self.local = b""
        self.scheme = b"http"
        self.reading: FastRequest | None = None  # the request being parsed
        self.in_trailers = False  # its head is done: what on_header sees now are trailers
        self.queue: deque[FastRequest] = deque()  # parsed, waiting for the one in flight
        self.current: asyncio.Task[None] | None = None
        self.upstream: Conn | None = None  # the worker connection being relayed
        self.chunked = False  # the body being relayed is chunked
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
        if transport.get_extra_info("sslcontext") is not None:
            self.scheme = b"https"
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
        self.reading = FastRequest()
        self.in_trailers = False
        self.head_bytes = 1
        if self.current is None:  # else the answer in flight comes first; then the timer
            self._arm(self.front.read_timeout_s)

    def on_url(self, url: bytes) -> None:
        assert self.reading is not None
        self.reading.path += url  # the whole target until the head is done
        if len(self.reading.path) > MAX_LINE_BYTES:
            self._hand_off()  # aiohttp refuses a line this long; its answer, then
            raise _HandOff

    def on_header(self, name: bytes, value: bytes) -> None:
        if self.in_trailers:
            return  # trailers never act as headers, and are not forwarded
        req = self.reading
        assert req is not None
        req.headers.append((name, value))
        if len(req.headers) > _MAX_HEADERS or len(name) + len(value) > MAX_LINE_BYTES:
            self._hand_off()
            raise _HandOff
        if name[:1] in b"cCeE":  # cheaper than lowering every name
            n = name.lower()
            if n == b"content-length":
                req.declared = value
            elif n == b"expect":
                req.expect = value.lower() == b"100-continue"

    def on_headers_complete(self) -> None:
        req = self.reading
        assert req is not None
        self.in_trailers = True
        p = self.parser
        method = p.get_method()
        if p.get_http_version() != "1.1" or method not in _FAST_METHODS or p.should_upgrade():
            self._hand_off()
            raise _HandOff
        try:
            url = httptools.parse_url(req.path)
        except httptools.HttpParserInvalidURLError:
            self._hand_off()
            raise _HandOff from None
        if url.schema or url.host or url.path is None:
            self._hand_off()  # absolute-form or odd targets: aiohttp's answer
            raise _HandOff
        path = url.path
        req.method, req.path, req.query = method, path, url.query
        req.keep_alive = p.should_keep_alive()
        req.peer, req.server_host, req.scheme = self.peer, self.local, self.scheme
        why = bad_path(path)
        if why is not None:
            self.head_bytes = 0
            self._reject(req, ApiError(400, "bad_path", why))
            raise _HandOff
        if path in _ROUTE_PATHS and method == b"POST":
            req.route, req.limit = True, MAX_JSON_BODY_BYTES
        else:
            matched = self.front.core.match(method, path)
            if matched is None:
                self._hand_off()
                raise _HandOff
            req.kind, req.ep, req.upstream_path = matched
            req.limit = self.front.core.body_limit(req)
        self.head_bytes = 0
        if req.declared is not None:
            try:
                too_big = int(req.declared) > req.limit
            except ValueError:
                too_big = False
            if too_big:
                self._reject(req, _too_large(req.limit))
                raise _HandOff
        if req.expect and self.current is None and not self.queue:
            self._write(b"HTTP/1.1 100 Continue\r\n\r\n")

    def on_body(self, body: bytes) -> None:
        req = self.reading
        assert req is not None
        req.size += len(body)
        if req.size > req.limit:
            self._reject(req, _too_large(req.limit))
            raise _HandOff
        req.parts.append(body)

    def on_message_complete(self) -> None:
        req = self.reading
        assert req is not None
        self.reading = None
        self.completed_in_raw += 1
        self._queue(req)
        if len(self.queue) >= _MAX_PIPELINED and self.transport is not None:
            self.transport.pause_reading()

    # requests in order
    def _queue(self, req: FastRequest) -> None:
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
            self._linger() if self.linger else self.close()
        elif self.handoff_at is not None:
            self._finish_hand_off()
        elif self.front.closing:
            self.close()
        else:
            if self.transport is not None:
                self.transport.resume_reading()
            # idle: how long a kept-alive connection waits; mid-request: for the rest of it
            self._arm(self.front.read_timeout_s)
            if self.reading is not None and self.reading.expect:
                self._write(b"HTTP/1.1 100 Continue\r\n\r\n")

    async def _run(self, req: FastRequest) -> None:
        try:
            if req.error is not None:
                e = req.error
                error_answer(self, req, e.status, e.code, e.message, headers=e.headers, **e.extra)
            else:
                req.body = b"".join(req.parts)
                req.parts = []
                if req.route:
                    await answering_errors(self.front.ctx, self, req, self._route(req))
                else:
                    await self.front.core.serve(req, self)
        except asyncio.CancelledError:
            return  # the client is gone; the connection is too
        except Exception:
            log.exception("unhandled error on %s %s", req.method.decode(), req.path.decode())
            req.keep_alive = False
            if req.answered:
                self.close()  # the answer is under way: it cannot turn into a 500 now
            else:
                error_answer(self, req, 500, "internal_error", "internal error; see the router log")
        finally:
            self.upstream = None
        if not req.keep_alive:
            self.stopped = True
            self.queue.clear()
        self._next()

    async def _route(self, req: FastRequest) -> None:
        """`POST /route` (ticket mode), answered on this path."""
        read_head(req)
        answer, headers = await route_answer(
            self.front.ctx, json_object(req.body), header_text(req.auth)
        )
        head = [(b"Content-Type", b"application/json"), (b"Date", http_date())]
        for k, v in (headers or {}).items():
            head.append((k.encode("latin-1"), v.encode("latin-1")))
        self.answer(req, 200, b"", head, orjson.dumps(answer))

    # the core's sink
    def answer(
        self,
        req: Request,
        status: int,
        reason: bytes,
        headers: list[tuple[bytes, bytes]],
        body: bytes,
    ) -> None:
        # 1xx, 204 and 304 answers carry no body and no Content-Length (RFC 9110 §8.6)
        framing = (
            b"" if status < 200 or status in (204, 304) else b"Content-Length: %d\r\n" % len(body)
        )
        parts = self._head(req, status, reason, headers, framing)
        parts.append(body)
        self._write(b"".join(parts))

    async def start(
        self,
        req: Request,
        status: int,
        reason: bytes,
        headers: list[tuple[bytes, bytes]],
        length: int | None,
        upstream: Conn,
    ) -> None:
        self.chunked = length is None
        framing = (
            b"Transfer-Encoding: chunked\r\n"
            if length is None
            else (b"Content-Length: %d\r\n" % length)
        )
        self._write(b"".join(self._head(req, status, reason, headers, framing)))
        self.upstream = upstream

    def body(self, chunks: list[bytes]) -> None:
        if not self.chunked:
            self._write(chunks[0] if len(chunks) == 1 else b"".join(chunks))
            return
        parts: list[bytes] = []
        for c in chunks:
            if c:
                parts += (b"%x\r\n" % len(c), c, b"\r\n")
        if parts:
            self._write(b"".join(parts))

    async def end(self, req: Request) -> None:
        if self.chunked:
            self._write(b"0\r\n\r\n")
        self.upstream = None

    def abort(self, req: Request) -> None:
        self.upstream = None
        self.stopped = True  # a truncated body must not look complete
        if self.transport is not None:
            self.transport.close()

    def _head(
        self,
        req: Request,
        status: int,
        reason: bytes,
        headers: list[tuple[bytes, bytes]],
        framing: bytes,
    ) -> list[bytes]:
        assert isinstance(req, FastRequest)
        req.answered = True
        parts = [b"HTTP/1.1 %d %s\r\n" % (status, reason or reason_phrase(status))]
        for name, value in headers:
            parts += (name, b": ", value, b"\r\n")
        if not req.keep_alive or self.front.closing:
            parts.append(b"Connection: close\r\n")
        parts += (framing, b"\r\n")
        return parts

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
                self.close()
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
            error_answer(
                self, req, 408, "request_timeout", f"the request body did not arrive within {s:g} s"
            )
        self.close()  # idle too long, or a head that never ended (slowloris)

    # writing
    def _reject(self, req: FastRequest, error: ApiError) -> None:
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

    def close(self) -> None:
        self._disarm(now=True)
        if self.transport is not None:
            self.transport.close()


def _too_large(limit: int) -> ApiError:
    return ApiError(413, "body_too_large", f"request body over {limit} bytes")


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


__all__ = ["FastRequest", "Front", "FrontConn"]
