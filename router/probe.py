"""Health-check GETs over one kept-alive connection per worker, parsed by httptools.

A router polls every worker every second; with aiohttp's client a poll cost ~250 µs of
CPU (request and response objects, timers, cookie and redirect handling), a quarter of a
core for 1,000 workers. Health checks need none of that: this sends a prebuilt GET on a
persistent connection and parses the answer with httptools (llhttp, the parser Node.js
uses). Only plain `http://` URLs take this path; the poller uses aiohttp for the rest.
Hand-written on purpose, small, and covered by tests/router/test_probe.py.
"""

from __future__ import annotations

import asyncio
import contextlib

import httptools
from yarl import URL

MAX_BODY = 64 * 1024


class ProbeError(Exception):
    """The worker could not be asked or did not answer properly."""

    def __init__(self, detail: str, *, refused: bool = False) -> None:
        super().__init__(detail)
        self.refused = refused


class _Conn(asyncio.Protocol):
    """One connection: at most one request in flight, answers parsed as they arrive."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.answer: asyncio.Future[tuple[int, bytes]] | None = None
        self.body = bytearray()
        self.closed = False

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is no subclass

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(ProbeError(f"bad HTTP answer: {exc}"))
            self.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._fail(ProbeError("connection closed" if exc is None else type(exc).__name__))

    # httptools callbacks
    def on_body(self, body: bytes) -> None:
        self.body += body
        if len(self.body) > MAX_BODY:
            self._fail(ProbeError("health answer too large"))
            self.close()

    def on_message_complete(self) -> None:
        if self.answer is not None and not self.answer.done():
            self.answer.set_result((self.parser.get_status_code(), bytes(self.body)))
        if not self.parser.should_keep_alive():
            self.close()

    def _fail(self, exc: ProbeError) -> None:
        if self.answer is not None and not self.answer.done():
            self.answer.set_exception(exc)

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()

    async def get(self, request: bytes) -> tuple[int, bytes]:
        assert self.transport is not None
        self.body = bytearray()
        self.answer = asyncio.get_running_loop().create_future()
        self.transport.write(request)
        return await self.answer


class Prober:
    """GET a worker's health URL, reusing the connection from its last poll."""

    def __init__(self) -> None:
        self._conns: dict[str, _Conn] = {}

    @staticmethod
    def usable(url: URL) -> bool:
        return url.scheme == "http" and url.host is not None

    async def get(self, key: str, url: URL, timeout_s: float) -> tuple[int, bytes]:
        """(status, body) of `GET url`; ProbeError if it cannot be had within `timeout_s`."""
        path = url.raw_path_qs or "/"
        host = url.raw_host or ""
        request = (
            f"GET {path} HTTP/1.1\r\nHost: {host}:{url.port}\r\n"
            "User-Agent: inference-router-health\r\nAccept: application/json\r\n\r\n"
        ).encode("latin-1")
        try:
            async with asyncio.timeout(timeout_s):
                conn = self._conns.get(key)
                if conn is not None and not conn.closed:
                    try:
                        return await conn.get(request)
                    except ProbeError:
                        pass  # a kept-alive connection the worker closed: try a new one
                conn = await self._connect(key, host, url.port or 80)
                return await conn.get(request)
        except TimeoutError:
            self.forget(key)  # an answer may still come: never read it as the next one
            raise ProbeError("TimeoutError") from None
        except ProbeError:
            self.forget(key)
            raise

    async def _connect(self, key: str, host: str, port: int) -> _Conn:
        self.forget(key)
        loop = asyncio.get_running_loop()
        try:
            _, conn = await loop.create_connection(_Conn, host, port)
        except OSError as exc:
            raise ProbeError(str(exc) or type(exc).__name__, refused=True) from exc
        self._conns[key] = conn
        return conn

    def forget(self, key: str) -> None:
        conn = self._conns.pop(key, None)
        if conn is not None:
            conn.close()

    def close(self) -> None:
        for key in list(self._conns):
            with contextlib.suppress(Exception):
                self.forget(key)
