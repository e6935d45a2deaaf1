"""The aiohttp server path: proxied requests that aiohttp's server read, on the same core.

Connections the fast path hands over (HEAD, HTTP/1.0, unusual heads) and every
connection when `server.fast_proxy = false` are read by aiohttp. Its handlers here build
the core's `Request` from the head's raw bytes (`request.raw_headers`, the raw target),
exactly as the fast path does, and answer through `WebSink`, which writes with aiohttp's
response objects. The middleware `guard` applies the one parsing rule (path and
duplicate headers) to every route aiohttp serves, proxied or not.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque

from aiohttp import web
from multidict import CIMultiDict

from router.auth import key_from_header
from router.config import EndpointSettings
from router.context import CTX
from router.errors import ApiError, Handler, json_response, read_within
from router.proxy.core import ProxyCore
from router.proxy.message import (
    OPENAI_PATHS,
    Request,
    bad_path,
    duplicate_header,
    error_answer,
)
from router.upstream import Conn

log = logging.getLogger(__name__)

PROXY = web.AppKey("proxy_core", ProxyCore)
# Relayed bytes buffered for a slow client before the worker connection stops being read.
_HIGH_WATER = 256 * 1024


@web.middleware
async def guard(request: web.Request, handler: Handler) -> web.StreamResponse:
    """The parsing rule both servers share, for every route aiohttp serves."""
    target = request.raw_path.partition("?")[0].encode("utf-8", "surrogateescape")
    why = bad_path(target)
    if why is not None:
        raise ApiError(400, "bad_path", why)
    dup = duplicate_header(list(request.raw_headers))
    if dup is not None:
        raise ApiError(400, "duplicate_header", f"more than one {dup.decode('latin-1')} header")
    return await handler(request)


def _view(request: web.Request, core: ProxyCore) -> Request | None:
    """The core's view of an aiohttp request, or None when the path proxies nothing."""
    raw = request.raw_path.encode("utf-8", "surrogateescape")
    path, _, query = raw.partition(b"?")
    method = request.method.encode()
    matched = core.match(method, path)
    if matched is None:
        return None
    req = Request()
    req.method, req.path, req.query = method, path, query or None
    req.kind, req.ep, req.upstream_path = matched
    req.headers = list(request.raw_headers)
    req.peer = (request.remote or "").encode()
    req.scheme = request.scheme.encode()
    sock = request.transport.get_extra_info("sockname") if request.transport else None
    req.server_host = f"{sock[0]}:{sock[1]}".encode() if isinstance(sock, tuple) else b""
    req.keep_alive = request.keep_alive
    return req


async def proxy(request: web.Request) -> web.StreamResponse:
    """`/{endpoint}/{path}` and the OpenAI paths: the proxy core, as on the fast path."""
    core = request.app[PROXY]
    req = _view(request, core)
    if req is None:
        # a key first, as for an endpoint that exists: a 404 says nothing to a stranger
        request.app[CTX].auth.lookup(key_from_header(request.headers.get("Authorization")))
        raise core.not_found(request.match_info.get("endpoint", ""))
    sink = WebSink(request)
    try:
        try:
            req.body = await _read_body(request, core.body_limit(req))
        except ApiError as e:  # answered by the core's rule, as the fast path answers it
            error_answer(sink, req, e.status, e.code, e.message, headers=e.headers, **e.extra)
            return sink.result()
        await core.serve(req, sink)
        return sink.result()
    finally:
        sink.close()


async def _read_body(request: web.Request, limit: int) -> bytes:
    if request.content_length is not None and request.content_length > limit:
        raise ApiError(413, "body_too_large", f"request body over {limit} bytes")

    async def read() -> bytes:
        body = bytearray()
        while chunk := await request.content.read(65536):
            body += chunk
            if len(body) > limit:
                raise ApiError(413, "body_too_large", f"request body over {limit} bytes")
        return bytes(body)

    return await read_within(request, read())


class WebSink:
    """The core's sink on aiohttp: a whole answer becomes a `web.Response`; a relayed
    body a prepared `web.StreamResponse`, written by one task that pauses the worker
    connection while the client reads slower than it sends."""

    def __init__(self, request: web.Request) -> None:
        self.request = request
        self.response: web.StreamResponse | None = None
        self._queue: deque[bytes] = deque()
        self._queued = 0
        self._writer: asyncio.Task[None] | None = None
        self._upstream: Conn | None = None
        self._failed = False

    def answer(
        self,
        req: Request,
        status: int,
        reason: bytes,
        headers: list[tuple[bytes, bytes]],
        body: bytes,
    ) -> None:
        self.response = web.Response(
            status=status,
            reason=reason.decode("latin-1") or None,
            body=body if status >= 200 and status not in (204, 304) else None,
            headers=_headers(headers),
        )

    async def start(
        self,
        req: Request,
        status: int,
        reason: bytes,
        headers: list[tuple[bytes, bytes]],
        length: int | None,
        upstream: Conn,
    ) -> None:
        resp = web.StreamResponse(
            status=status, reason=reason.decode("latin-1") or None, headers=_headers(headers)
        )
        if length is not None:
            resp.content_length = length
        self.response = resp
        self._upstream = upstream
        try:
            await resp.prepare(self.request)
        except ConnectionResetError:
            self._fail()

    def body(self, chunks: list[bytes]) -> None:
        if self._failed:
            return
        self._queue.extend(chunks)
        self._queued += sum(len(c) for c in chunks)
        if self._queued > _HIGH_WATER and self._upstream is not None:
            self._upstream.pause_reading()
        if self._writer is None:
            self._writer = asyncio.get_running_loop().create_task(self._write(), name="proxy-relay")

    async def _write(self) -> None:
        resp = self.response
        assert resp is not None
        try:
            while self._queue:
                chunk = self._queue.popleft()
                self._queued -= len(chunk)
                await resp.write(chunk)
                if self._queued <= _HIGH_WATER // 2 and self._upstream is not None:
                    self._upstream.resume_reading()
        except ConnectionResetError:
            self._fail()
        finally:
            self._writer = None

    def _fail(self) -> None:
        """The client went away: stop reading from the worker (its connection is dropped)."""
        self._failed = True
        self._queue.clear()
        if self._upstream is not None:
            self._upstream.close()

    async def end(self, req: Request) -> None:
        while self._writer is not None:
            await self._writer
        resp = self.response
        self._upstream = None
        if resp is not None and not self._failed:
            with contextlib.suppress(ConnectionResetError):
                await resp.write_eof()

    def abort(self, req: Request) -> None:
        self._upstream = None
        self._failed = True
        if self.request.transport is not None:
            self.request.transport.close()  # a truncated body must not look complete

    def result(self) -> web.StreamResponse:
        assert self.response is not None, "the core answers every request"
        return self.response

    def close(self) -> None:
        if self._writer is not None:
            self._writer.cancel()


def _headers(headers: list[tuple[bytes, bytes]]) -> CIMultiDict[str]:
    out: CIMultiDict[str] = CIMultiDict()
    for name, value in headers:
        out.add(name.decode("latin-1"), value.decode("latin-1"))  # repeated ones kept
    return out


async def list_models(request: web.Request) -> web.Response:
    """`GET /v1/models`: the endpoints this key may use, as OpenAI model objects."""
    ctx = request.app[CTX]
    key = ctx.auth.lookup(key_from_header(request.headers.get("Authorization")))
    data = [
        {"id": m, "object": "model", "created": 0, "owned_by": "inference-router"}
        for ep in ctx.endpoints.values()
        if key.allows(ep.name, ep.workspace)
        for m in _model_names(ep)
    ]
    return json_response({"object": "list", "data": data})


def _model_names(ep: EndpointSettings) -> list[str]:
    """Every `model` that selects `ep`: its name, its `models`, the served name."""
    names = [ep.name, *ep.models]
    if ep.served_model_name is not None and ep.served_model_name not in names:
        names.append(ep.served_model_name)
    return names


def add_routes(app: web.Application) -> None:
    for path in OPENAI_PATHS:
        app.router.add_post(path.decode(), proxy)
    app.router.add_get("/v1/models", list_models)
    app.router.add_route("*", "/{endpoint}", proxy)
    app.router.add_route("*", "/{endpoint}/{path:.*}", proxy)


__all__ = ["PROXY", "WebSink", "add_routes", "guard"]
