"""The request view, the sink, and the one parsing rule both server paths share.

A server adapter (router/proxy/server.py, router/proxy/web.py) builds a `Request` from
the head's bytes as they arrived and hands the core a `Sink`; the functions here are the
only place a head or path is judged, so the two paths cannot read one request two ways
(docs/protocol.md, "Proxy mode").
"""

from __future__ import annotations

import base64
import email.utils
import functools
import http
import itertools
import re
import secrets
import time
from typing import Any, Protocol

import orjson

from router.config import EndpointSettings
from router.errors import ApiError
from router.tgi import TGI_ERROR_TYPES, TGI_PATHS
from router.upstream import Conn

# What a request for the proxy is: one endpoint's path, or an OpenAI path (the endpoint
# is the one serving the body's `model`).
PROXY, OPENAI = 0, 1
OPENAI_PATHS = frozenset({b"/v1/chat/completions", b"/v1/completions", b"/v1/embeddings"})

HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"te",
        b"trailer",
        b"trailers",
        b"transfer-encoding",
        b"upgrade",
    }
)
# Never forwarded upstream: hop-by-hop, the router's own key, and what the router sets.
DROP_REQUEST = HOP_BY_HOP | {
    b"host",
    b"content-length",
    b"authorization",
    b"x-route-ticket",
    b"x-cost",
    b"x-request-id",
    b"x-forwarded-for",
    b"x-forwarded-proto",
    b"x-forwarded-host",
    b"expect",
}
# Never relayed to the client: hop-by-hop, framing (the sink frames), and the worker's
# X-Request-Id (the client gets the router's, exactly once).
DROP_RESPONSE = HOP_BY_HOP | {b"content-length", b"x-request-id"}
# A second one of these makes the request ambiguous (which key? which cost?): 400.
UNIQUE_HEADERS = frozenset({b"authorization", b"host", b"x-cost", b"content-length"})
# The longest request line or header line either server accepts (aiohttp's own limit;
# the fast path hands anything longer to aiohttp, which refuses it).
MAX_LINE_BYTES = 8190
# Worker routes that are the worker's own business (metrics, probes, administration):
# not reachable through the proxy unless the endpoint says so (`expose_worker_routes`).
WORKER_ROUTES = frozenset({b"metrics", b"livez", b"readyz", b"health", b"admin"})
_REQUEST_ID_RE = re.compile(rb"^[A-Za-z0-9._:-]{1,128}$")
_ENCODED_DOT_OR_SLASH = re.compile(rb"%(2[eEfF]|5[cC])")
_JSON = (b"Content-Type", b"application/json")


class Request:
    """One request as both server paths hand it to the core: the head's bytes, the body."""

    __slots__ = (
        "auth",
        "body",
        "conn_tokens",
        "ctype",
        "ep",
        "headers",
        "held",
        "host",
        "keep_alive",
        "kind",
        "method",
        "path",
        "peer",
        "query",
        "scheme",
        "server_host",
        "upstream_path",
        "x_cost",
        "x_request_id",
        "xff",
    )

    def __init__(self) -> None:
        self.method = b""
        self.path = b""  # the raw path, as sent (checked by `bad_path`)
        self.query: bytes | None = None
        self.headers: list[tuple[bytes, bytes]] = []
        self.body = b""
        self.peer = b""  # the client's address
        self.scheme = b"http"
        self.server_host = b""  # host:port the client connected to
        self.keep_alive = True
        self.kind = PROXY
        self.ep: EndpointSettings | None = None  # None: OpenAI, found by the body's model
        self.upstream_path = b""
        self.held = ""  # "": never held; "served", "timeout", "full": how its hold ended
        # read from `headers` by `read_head`
        self.auth: bytes | None = None
        self.ctype = b""
        self.x_cost: bytes | None = None
        self.x_request_id = b""
        self.xff = b""
        self.host = b""
        self.conn_tokens: frozenset[bytes] = frozenset()


class Sink(Protocol):
    """Where the core writes its answer: one per client connection (fast path) or request.

    `answer` writes a whole answer (the sink adds framing, and Date and Connection as
    needed); `start` writes a head whose body follows through `body` (chunked when
    `length` is None) and tells the sink the worker connection it may pause while its
    client reads slowly; `end` finishes such a body; `abort` cuts it off so that a
    truncated body can never look complete.
    """

    def answer(
        self,
        req: Request,
        status: int,
        reason: bytes,
        headers: list[tuple[bytes, bytes]],
        body: bytes,
    ) -> None: ...

    async def start(
        self,
        req: Request,
        status: int,
        reason: bytes,
        headers: list[tuple[bytes, bytes]],
        length: int | None,
        upstream: Conn,
    ) -> None: ...

    def body(self, chunks: list[bytes]) -> None: ...

    async def end(self, req: Request) -> None: ...

    def abort(self, req: Request) -> None: ...


# The one parsing rule --------------------------------------------------------------------


def bad_path(path: bytes) -> str | None:
    """Why a request path may not be served (400), or None.

    Nothing may reach outside a worker's base path: dot-segments, encoded dots, slashes
    and backslashes are refused before anything decodes or normalises them, on every
    route of both servers, so no decoder downstream can turn them into a traversal.
    """
    if not path.startswith(b"/") or path.startswith(b"//"):
        return "the path must start with a single '/'"
    if b"/." not in path and b"%" not in path and b"\\" not in path:
        return None  # the usual path: nothing below can match
    if b"\\" in path or _ENCODED_DOT_OR_SLASH.search(path):
        return "encoded dots, slashes and backslashes are not allowed in the path"
    for segment in path.split(b"/"):
        if segment in (b".", b".."):
            return "dot-segments ('.', '..') are not allowed in the path"
    return None


def duplicate_header(headers: list[tuple[bytes, bytes]]) -> bytes | None:
    """The name of a header that must appear once but appears twice, or None."""
    seen: set[bytes] = set()
    for name, _ in headers:
        n = name.lower()
        if n in UNIQUE_HEADERS:
            if n in seen:
                return n
            seen.add(n)
    return None


def read_head(req: Request) -> None:
    """Read what the core needs from the headers, in one pass; 400 on an ambiguous head."""
    seen: set[bytes] = set()
    xff: list[bytes] = []
    tokens: set[bytes] = set()
    for name, value in req.headers:
        n = name.lower()
        if n in UNIQUE_HEADERS:
            if n in seen:
                raise ApiError(
                    400, "duplicate_header", f"more than one {name.decode('latin-1')} header"
                )
            seen.add(n)
        if n == b"authorization":
            req.auth = value
        elif n == b"content-type":
            req.ctype = value.lower()
        elif n == b"x-cost":
            req.x_cost = value
        elif n == b"x-request-id":
            req.x_request_id = value
        elif n == b"x-forwarded-for":
            xff.append(value)
        elif n == b"host":
            req.host = value
        elif n == b"connection":
            tokens.update(t.strip().lower() for t in value.split(b","))
    if xff:
        req.xff = b", ".join(xff)
    if tokens:
        req.conn_tokens = frozenset(tokens)


def header_text(value: bytes | None) -> str | None:
    """A header's bytes as text, the way aiohttp decodes them (UTF-8, bytes kept)."""
    return None if value is None else value.decode("utf-8", "surrogateescape")


def ticket_header(ticket: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(orjson.dumps(ticket)).rstrip(b"=").decode()


_ID_PREFIX = secrets.token_hex(8)
_ids = itertools.count(1)


def new_request_id() -> str:
    """Unique per process and across processes (a random prefix), not secret: it is
    echoed to the worker and the client, for logs. A counter costs less than urandom."""
    return f"{_ID_PREFIX}{next(_ids):016x}"


def request_id(req: Request) -> str:
    rid = req.x_request_id
    return rid.decode() if rid and _REQUEST_ID_RE.match(rid) else new_request_id()


_DATE: list[Any] = [0, b""]


def http_date() -> bytes:
    """The Date header's value, made once a second."""
    now = int(time.time())
    if now != _DATE[0]:
        _DATE[:] = [now, email.utils.formatdate(now, usegmt=True).encode()]
    return bytes(_DATE[1])


@functools.cache
def reason_phrase(status: int) -> bytes:
    try:
        return http.HTTPStatus(status).phrase.encode()
    except ValueError:
        return b"Unknown"


def error_answer(
    sink: Sink,
    req: Request,
    status: int,
    code: str,
    message: str,
    /,
    *,
    headers: dict[str, str] | None = None,
    **extra: Any,
) -> None:
    """Answer `{"error": {"code", "message"}, **extra}` through `sink`; on TGI's paths with
    TGI's `error_type` too (router/tgi.py), as the worker answers there."""
    doc: dict[str, Any] = {"error": {"code": code, "message": message}}
    if req.upstream_path in TGI_PATHS:
        error_type = TGI_ERROR_TYPES.get(status)
        if error_type is not None:
            doc["error_type"] = error_type
    body = orjson.dumps({**doc, **extra})
    head = [_JSON, (b"Date", http_date())]
    if headers:
        head += [(k.encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()]
    sink.answer(req, status, b"", head, body)


def is_json(ctype: bytes) -> bool:
    return ctype.split(b";", 1)[0].strip() == b"application/json"
