"""Kept-alive HTTP/1.1 connections to workers, parsed by httptools: proxied requests and
health polls share them (docs/architecture.md).

aiohttp's client costs about 100 µs of CPU per proxied request (request and response
objects, timeout contexts, payload writers) and ~250 µs per health poll; a proxy needs
none of that. A `Conn` sends a prebuilt request in one write and parses the answer with
httptools (llhttp). Body chunks are held until the caller attaches a `Sink`, then handed
over as they arrive, within the same `data_received` call: nothing is buffered in
between, and a chunk's bytes are written to the client before the next read from the
worker. `Pool.get` is the health poll: a GET on a kept-alive connection, its answer
capped. Hand-written on purpose (no maintained asyncio client exposes a connection at
this level), small, and covered by tests/router/test_upstream.py and every proxy test.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import ssl
from collections.abc import Callable
from typing import Protocol

import httptools
from yarl import URL

from router.timers import LazyTimer

_MAX_IDLE_PER_WORKER = 64
# An idle connection is closed after this long (aiohttp's connector keeps them 15 s too):
# some model servers never close idle connections, and a large fleet would otherwise
# hold file descriptors without end.
KEEPALIVE_S = 15.0
_MAX_HEAD_BYTES = 64 * 1024
# A health answer longer than this is a failed poll, never read on.
MAX_HEALTH_BODY = 64 * 1024

Key = tuple[str, int, bool]  # (host, port, tls): one pool of connections per worker address


class UpstreamError(Exception):
    """The worker could not be reached, or failed before its answer ended.

    `refused`: the connection could not be made. `stale`: a kept-alive connection closed
    before any byte of the answer came back (the worker timed it out as we reused it):
    safe to send again on a new connection.
    """

    def __init__(self, detail: str, *, refused: bool = False, stale: bool = False) -> None:
        super().__init__(detail)
        self.refused = refused
        self.stale = stale


class Sink(Protocol):
    def body(self, chunks: list[bytes]) -> None: ...


@functools.lru_cache(maxsize=65536)
def worker_address(url: str) -> tuple[Key, bytes, bytes]:
    """(pool key, path prefix, Host header value) of a worker's base URL.

    An IPv6 literal keeps its brackets in Host (RFC 9110 §7.2), for proxied requests
    and health polls alike.
    """
    u = URL(url)
    tls = u.scheme == "https"
    port = u.port or (443 if tls else 80)
    host = u.raw_host or ""
    named = f"[{host}]" if ":" in host else host
    return (host, port, tls), u.raw_path.rstrip("/").encode(), f"{named}:{port}".encode()


class Conn(asyncio.Protocol):
    """One connection to one worker; at most one request on it at a time."""

    def __init__(self, pool: Pool, key: Key) -> None:
        self.pool = pool
        self.key = key
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.loop = asyncio.get_running_loop()
        self.closed = False
        self.reused = False
        self.paused = False
        self.idle_since = 0.0
        # the watch (`watch`): fail at `w_deadline`, or after `w_idle_s` without a read
        self.w_deadline: float | None = None
        self.w_idle_s: float | None = None
        self.w_timer = LazyTimer(self.loop, self._watch_due, self._watch_fire)
        self._reset()

    def _reset(self) -> None:
        self.status = 0
        self.reason = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.head_bytes = 0
        self.pending: list[bytes] = []
        self.body_bytes = 0
        self.body_limit: int | None = None  # more body than this fails the answer
        self.head_only = False  # the answer to a HEAD: it ends with its head
        self.sink: Sink | None = None
        self.head: asyncio.Future[None] | None = None
        self.done: asyncio.Future[None] | None = None  # made by `finished()` if awaited
        self.error: Exception | None = None
        self.have_head = False
        self.complete = False
        self.got_bytes = False
        self.keep_alive = False
        self.last_read = 0.0

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is no subclass

    def data_received(self, data: bytes) -> None:
        self.got_bytes = True
        self.last_read = self.loop.time()
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserCallbackError as exc:
            cause = exc.__context__
            self.fail(cause if isinstance(cause, UpstreamError) else UpstreamError(str(exc)))
            return
        except httptools.HttpParserError as exc:
            self.fail(UpstreamError(f"bad HTTP answer: {exc}"))
            return
        if self.pending and self.sink is not None:
            chunks, self.pending = self.pending, []
            self.sink.body(chunks)
        if self.complete and self.done is not None and not self.done.done():
            self.done.set_result(None)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.pool.forget(self)
        self.w_timer.cancel()
        if self.have_head and not self.complete and self._until_close():
            # No length and not chunked: the body ends where the connection does.
            self.complete = True
            self.keep_alive = False
            if self.pending and self.sink is not None:
                chunks, self.pending = self.pending, []
                self.sink.body(chunks)
            if self.done is not None and not self.done.done():
                self.done.set_result(None)
            return
        detail = "connection closed" if exc is None else (str(exc) or type(exc).__name__)
        self.fail(UpstreamError(detail, stale=self.reused and not self.got_bytes))

    def pause_writing(self) -> None:  # a request body bigger than the socket buffer
        pass

    def resume_writing(self) -> None:
        pass

    # httptools callbacks
    def on_status(self, status: bytes) -> None:
        self.reason += status

    def on_header(self, name: bytes, value: bytes) -> None:
        self.head_bytes += len(name) + len(value)
        if self.head_bytes > _MAX_HEAD_BYTES:
            raise UpstreamError("answer headers too large")
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        status = self.parser.get_status_code()
        if status < 200:  # 1xx: an interim answer; the real one follows
            self.headers, self.reason, self.head_bytes = [], b"", 0
            return
        self.status = status
        self.have_head = True
        self.keep_alive = self.parser.should_keep_alive()
        if self.head_only:
            # The parser cannot be told the request was a HEAD, so it would wait for a
            # body of Content-Length bytes: the answer ends here, and so does the
            # connection (its parser state is no use for a next answer).
            self.complete, self.keep_alive = True, False
        if self.head is not None and not self.head.done():
            self.head.set_result(None)

    def on_body(self, body: bytes) -> None:
        if self.head_only:
            return
        self.body_bytes += len(body)
        if self.body_limit is not None and self.body_bytes > self.body_limit:
            raise UpstreamError("answer too large")
        self.pending.append(body)

    def on_message_complete(self) -> None:
        if self.have_head:
            self.complete = True
            self.keep_alive = self.keep_alive and self.parser.should_keep_alive()

    # use
    def _until_close(self) -> bool:
        for name, _ in self.headers:
            n = name.lower()
            if n in (b"content-length", b"transfer-encoding"):
                return False
        return self.status not in (204, 304)

    def send(
        self, request: bytes, *, head_only: bool = False, body_limit: int | None = None
    ) -> None:
        """Send one request; `head_only`: it is a HEAD; `body_limit`: cap the answer."""
        assert self.transport is not None
        self._reset()
        self.head_only, self.body_limit = head_only, body_limit
        self.head = self.loop.create_future()
        self.last_read = self.loop.time()
        self.transport.write(request)

    def finished(self) -> asyncio.Future[None]:
        """A future done when the answer has ended (at once if it has), or failed."""
        fut = self.done
        if fut is None:
            fut = self.done = self.loop.create_future()
            if self.complete:
                fut.set_result(None)
            elif self.error is not None:
                fut.set_exception(self.error)
        return fut

    # the watch: one `LazyTimer` per connection, its deadline moved per request
    def watch(self, deadline: float, idle_s: float | None) -> None:
        """Fail at loop time `deadline`, or once nothing was read for `idle_s`."""
        self.w_deadline, self.w_idle_s = deadline, idle_s
        self.w_timer.moved()

    def unwatch(self) -> None:
        self.w_deadline = None  # a timer still set finds nothing to do when it fires

    def _watch_due(self) -> float | None:
        if self.w_deadline is None or self.closed:
            return None
        if self.w_idle_s is None:
            return self.w_deadline
        return min(self.w_deadline, self.last_read + self.w_idle_s)

    def _watch_fire(self) -> None:
        self.w_deadline = None
        self.fail(TimeoutError("the worker did not answer in time"))

    def attach(self, sink: Sink) -> None:
        """From now on hand body chunks to `sink` as they arrive (buffered ones at once)."""
        self.sink = sink
        if self.pending:
            chunks, self.pending = self.pending, []
            sink.body(chunks)

    def take_body(self) -> bytes:
        chunks, self.pending = self.pending, []
        return b"".join(chunks)

    def fail(self, exc: Exception) -> None:
        self.error = exc
        for fut in (self.head, self.done):
            if fut is not None and not fut.done():
                fut.set_exception(exc)
                fut.exception()  # retrieved: the caller may be gone (client hung up)
        self.close()

    def close(self) -> None:
        self.closed = True
        self.pool.forget(self)
        self.w_timer.cancel()
        if self.transport is not None:
            self.transport.abort()

    def pause_reading(self) -> None:
        if self.transport is not None and not self.closed and not self.paused:
            self.paused = True
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self.transport is not None and not self.closed and self.paused:
            self.paused = False
            self.transport.resume_reading()


class Pool:
    """Idle kept-alive connections per worker address, newest used first."""

    def __init__(self, keepalive_s: float = KEEPALIVE_S) -> None:
        self._idle: dict[Key, list[Conn]] = {}
        self._ssl: ssl.SSLContext | None = None
        self.keepalive_s = keepalive_s
        self._sweep: asyncio.TimerHandle | None = None

    def take(self, key: Key) -> Conn | None:
        idle = self._idle.get(key)
        while idle:
            conn = idle.pop()
            if not conn.closed:
                conn.reused = True
                return conn
        return None

    def _expire(self) -> None:
        """Close connections idle longer than `keepalive_s` (the oldest lead each list)."""
        self._sweep = None
        loop = asyncio.get_running_loop()
        cutoff = loop.time() - self.keepalive_s
        for key in list(self._idle):
            idle = self._idle[key]
            n = 0
            while n < len(idle) and idle[n].idle_since <= cutoff:
                n += 1
            old, idle[:n] = idle[:n], []
            for conn in old:
                conn.close()
            if not idle:
                del self._idle[key]
        if self._idle:
            self._sweep = loop.call_later(self.keepalive_s / 2, self._expire)

    async def connect(self, key: Key, timeout_s: float) -> Conn:
        host, port, tls = key
        loop = asyncio.get_running_loop()
        factory: Callable[[], Conn] = lambda: Conn(self, key)  # noqa: E731
        try:
            async with asyncio.timeout(timeout_s):
                if tls:
                    if self._ssl is None:
                        self._ssl = ssl.create_default_context()
                    _, conn = await loop.create_connection(
                        factory, host, port, ssl=self._ssl, server_hostname=host
                    )
                else:
                    _, conn = await loop.create_connection(factory, host, port)
        except TimeoutError:
            raise UpstreamError("connect timed out", refused=True) from None
        except OSError as exc:
            raise UpstreamError(str(exc) or type(exc).__name__, refused=True) from exc
        return conn

    def put(self, conn: Conn) -> None:
        """Keep `conn` for the next request to its worker, if its answer left it reusable."""
        if conn.closed or not conn.complete or not conn.keep_alive:
            conn.close()
            return
        conn.sink = None
        # the client may have paused it as the answer's last bytes came in: a pooled
        # connection that never reads again would time out its next request
        conn.resume_reading()
        idle = self._idle.setdefault(conn.key, [])
        if len(idle) >= _MAX_IDLE_PER_WORKER:
            conn.close()
            return
        conn.idle_since = conn.loop.time()
        idle.append(conn)
        if self._sweep is None:
            self._sweep = conn.loop.call_later(self.keepalive_s / 2, self._expire)

    async def get(self, url: str, path: bytes, timeout_s: float) -> tuple[int, bytes]:
        """(status, body) of `GET {url}{path}` (a health poll) within `timeout_s`.

        On a kept-alive connection when one is idle; one that the worker closed as it
        was reused is replaced once. A body over MAX_HEALTH_BODY fails the poll. Raises
        UpstreamError (`refused` when nothing listens) or TimeoutError.
        """
        key, prefix, hostport = worker_address(url)
        request = b"".join(
            (
                b"GET ",
                prefix + path,
                b" HTTP/1.1\r\nHost: ",
                hostport,
                b"\r\nUser-Agent: inference-router-health\r\nAccept: application/json\r\n\r\n",
            )
        )
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        conn = self.take(key)
        for fresh in (conn is None, True):
            if conn is None or fresh:
                conn = await self.connect(key, max(0.001, deadline - loop.time()))
            conn.send(request, body_limit=MAX_HEALTH_BODY)
            conn.watch(deadline, None)
            try:
                await conn.finished()
            except UpstreamError as exc:
                if exc.stale and not fresh:
                    continue  # the worker closed the idle connection as we reused it
                raise
            except BaseException:
                conn.close()  # a late answer must never be read as the next one's
                raise
            finally:
                conn.unwatch()
            break
        assert conn is not None
        status, body = conn.status, conn.take_body()
        self.put(conn)
        return status, body

    def forget(self, conn: Conn) -> None:
        idle = self._idle.get(conn.key)
        if idle and conn in idle:
            idle.remove(conn)

    def close(self) -> None:
        if self._sweep is not None:
            self._sweep.cancel()
            self._sweep = None
        for idle in self._idle.values():
            for conn in list(idle):
                with contextlib.suppress(Exception):
                    conn.close()
        self._idle.clear()
