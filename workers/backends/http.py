"""Forwarding to a model server over HTTP, streaming its answer back as it arrives.

One `aiohttp.ClientSession` per backend, opened in `start()` and closed in `close()`.
Each request sends the model payload (the worker already stripped the ticket) as JSON
to `backend_url + path` and writes every chunk of the answer to the client as it comes,
with the model server's status code and headers (SSE, chunked JSON and binary such as
`image/png` alike; bytes are never decoded or re-encoded). A client hanging up cancels
the handler, and closing the upstream response in `finally` drops that connection, so
the model server sees the disconnect and stops generating.
"""

from __future__ import annotations

import logging
from typing import Any

import aiohttp
import orjson
from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

from workers.backends.base import Backend, BackendFailed
from workers.errors import error_response

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
# Never forwarded to the model server: hop-by-hop, what describes the body we replace,
# and credentials meant for the worker or the router rather than the model server.
_DROP_REQUEST = HOP_BY_HOP | {
    "host",
    "content-length",
    "content-type",
    "content-encoding",
    "expect",
    "authorization",
    "x-route-ticket",
}
_DROP_RESPONSE = HOP_BY_HOP | {"content-length"}
# Let the client's own headers decide these: aiohttp would otherwise ask for gzip, and
# with auto_decompress off a client that never asked for it would receive gzip.
_SKIP_AUTO = ("Accept-Encoding", "User-Agent")

CONNECT_TIMEOUT_S = 10.0  # a local model server accepts at once, or it is down
READY_TIMEOUT_S = 2.0
DEFAULT_PERF_TOKENS_S = 1000.0  # one GPU, a 7-8B model with continuous batching


def _kept(headers: CIMultiDictProxy[str], drop: frozenset[str]) -> CIMultiDict[str]:
    """Headers minus `drop` and minus any header the Connection header names."""
    named = {t.strip().lower() for v in headers.getall("Connection", ()) for t in v.split(",")}
    return CIMultiDict(
        (k, v) for k, v in headers.items() if k.lower() not in drop and k.lower() not in named
    )


def _unavailable(exc: BaseException) -> web.Response:
    return error_response(
        502, "backend_unavailable", f"the model server did not answer: {type(exc).__name__}"
    )


class HttpBackend(Backend):
    """A model server reached over HTTP at `base_url`; subclasses name its paths."""

    name = "http"

    def __init__(
        self, base_url: str, perf: float = DEFAULT_PERF_TOKENS_S, health_path: str | None = None
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self._perf = perf
        if health_path is not None:
            self.health_path = health_path
        self._session: aiohttp.ClientSession | None = None
        self._warned_no_health_path = False

    async def start(self) -> None:
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0),  # the model server does the queueing
            # No total or read timeout: a long generation is normal, and a client that
            # stops waiting hangs up, which cancels the request.
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=CONNECT_TIMEOUT_S),
            auto_decompress=False,
            # One session relays every client's requests: keep no cookies between them.
            cookie_jar=aiohttp.DummyCookieJar(),
        )

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def perf(self) -> float:
        return self._perf

    async def ready(self) -> bool:
        """True when the model server's health path answers 200 within 2 s."""
        if self._session is None:
            return False
        try:
            async with self._session.get(
                self.base_url + self.health_path,
                timeout=aiohttp.ClientTimeout(total=READY_TIMEOUT_S),
                allow_redirects=False,
            ) as resp:
                status = resp.status
        except (aiohttp.ClientError, TimeoutError) as exc:
            log.debug("model server health check failed: %r", exc)
            return False
        if status == 404 and not self._warned_no_health_path:
            # not "still loading": this server has no such path, and never will be ready
            self._warned_no_health_path = True
            log.warning(
                "the model server at %s has no %s (404), so this worker never reports "
                "ready; give --backend-health-path a path it answers with 200 once it "
                "can serve (e.g. /v1/models)",
                self.base_url,
                self.health_path,
            )
        return status == 200

    async def serve(self, request: web.Request, path: str, payload: Any) -> web.StreamResponse:
        if self._session is None:
            raise RuntimeError("backend used before start()")
        url = URL(self.base_url + request.raw_path, encoded=True)  # keeps the query string
        headers = _kept(request.headers, _DROP_REQUEST)
        data: bytes | None = None
        if request.method != "GET":
            data = orjson.dumps(payload)
            headers["Content-Type"] = "application/json"
        try:
            upstream = await self._session.request(
                request.method,
                url,
                data=data,
                headers=headers,
                allow_redirects=False,
                skip_auto_headers=_SKIP_AUTO,
            )
        except (aiohttp.ClientError, TimeoutError) as exc:
            log.warning("model server %s unavailable: %r", self.base_url, exc)
            return _unavailable(exc)
        try:
            return await _relay(request, upstream)
        finally:
            # Read to the end: the connection goes back to the pool. Otherwise (a hang-up,
            # a failure) this closes it, which is how the model server learns to stop.
            upstream.close()


async def _relay(request: web.Request, upstream: aiohttp.ClientResponse) -> web.StreamResponse:
    """Write each upstream chunk to the client as it arrives; never buffer a stream."""
    resp = web.StreamResponse(
        status=upstream.status,
        reason=upstream.reason,
        headers=_kept(upstream.headers, _DROP_RESPONSE),
    )
    chunked = "chunked" in upstream.headers.get("Transfer-Encoding", "").lower()
    if upstream.content_length is not None and not chunked:
        resp.content_length = upstream.content_length
    try:
        await resp.prepare(request)
    except ConnectionResetError:
        log.debug("client went away before the response started")
        return resp
    chunks = upstream.content.iter_any()
    while True:
        try:
            chunk = await anext(chunks)
        except StopAsyncIteration:
            break
        except (aiohttp.ClientError, TimeoutError) as exc:
            # The status is sent: cutting the connection is the only honest signal left.
            raise BackendFailed(f"model server failed mid-response: {exc!r}") from exc
        try:
            await resp.write(chunk)
        except ConnectionResetError:
            log.debug("client went away mid-response")
            return resp
    try:
        await resp.write_eof()
    except ConnectionResetError:
        log.debug("client went away at the end of the response")
    return resp
