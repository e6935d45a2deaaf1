"""A client for ticket mode: get a ticket from the router, then call the worker with it.

`AsyncRouterClient` runs on aiohttp, `RouterClient` on the standard library (no event
loop, no extra dependency); both behave alike::

    from router.client import RouterClient

    client = RouterClient("http://127.0.0.1:8080", api_key="dev-key")
    ticket = client.route("demo", cost=16)  # waits while no worker is ready
    print(client.call(ticket, "/generate", {"inputs": "Hi", "parameters": {}}))
    for chunk in client.stream(client.route("demo", cost=16), "/generate_stream", payload):
        ...

For a `cache_aware` endpoint, pass the prompt's `prefix_hashes` (`prefix_hashes(payload)`
computes them here, so the prompt itself never goes to the router): the router sends
the request to the worker most likely to hold that prefix in its KV cache
(docs/prefix.md)::

    payload = {"messages": chat}
    ticket = client.route("llm", cost=200, prefix_hashes=prefix_hashes(payload))

`route` keeps asking while the router answers 200 without `url` (no worker ready yet:
docs/protocol.md, "Answer: no worker ready"), 429 or 503, sleeping what the answer says
(`retry_after_s`, else `Retry-After`) and sending back the `request_idx` it was
assigned, until `timeout_s`; then it raises `NoWorkerReady`. `call` and `stream` send
the ticket in one of the three shapes a worker accepts (docs/protocol.md, "Three
shapes"). A ticket serves one request: route again for the next. Decisions (what an
answer means, what to send) are pure functions shared by both.
"""

from __future__ import annotations

import asyncio
import base64
import http.client
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Literal

import aiohttp
import orjson

from router.prefix import request_hashes

Ticket = dict[str, Any]
Shape = Literal["auth_data", "merged", "header"]
OnWait = Callable[[dict[str, Any]], None]

TICKET_HEADER = "X-Route-Ticket"
_TICKET_FIELDS = frozenset(
    ("cost", "endpoint", "expires_at", "key_id", "reqnum", "request_idx", "url", "signature")
)
_RETRY_STATUSES = frozenset((429, 503))  # over a limit, store unreachable: both pass
_MIN_WAIT_S = 0.01  # never spin, whatever an answer says
_DEFAULT_WAIT_S = 1.0  # an answer that names no wait
_CHUNK_BYTES = 64 * 1024


class RouterClientError(Exception):
    """Base of the errors this client raises."""


class NoWorkerReady(RouterClientError):
    """No worker took the request before the timeout; `status` is the router's last word."""

    def __init__(self, endpoint: str, waited_s: float, status: Mapping[str, Any]) -> None:
        super().__init__(
            f"no worker of endpoint {endpoint!r} was ready within {waited_s:.3g}s "
            f"(last status: {dict(status.get('status') or {})})"
        )
        self.endpoint = endpoint
        self.waited_s = waited_s
        self.status = dict(status)


class RequestFailed(RouterClientError):
    """The router or a worker answered an error (`status` 0: it could not be reached)."""

    def __init__(self, where: str, status: int, code: str, message: str, body: Any) -> None:
        super().__init__(f"{where} answered {status} {code}: {message}" if status else message)
        self.where = where
        self.status = status
        self.code = code
        self.message = message
        self.body = body


class RouteRejected(RequestFailed):
    """`/route` refused the request (bad input, key, endpoint) or the router is unreachable."""


class WorkerError(RequestFailed):
    """The worker refused the ticket or failed; `code` is e.g. `ticket_replayed`."""


@dataclass(frozen=True, slots=True)
class Wait:
    """A `/route` answer that says: ask again after `seconds`."""

    seconds: float
    request_idx: int | None
    body: dict[str, Any]


@dataclass(frozen=True, slots=True)
class WorkerRequest:
    """What to send a worker: the URL, the JSON body and the headers."""

    url: str
    body: bytes
    headers: dict[str, str]


def prefix_hashes(payload: Any) -> list[str]:
    """The block hashes of a request payload's prompt (OpenAI `messages` or `prompt`, TGI
    `inputs`), as `/route` takes them in `prefix_hashes` (docs/prefix.md)."""
    return request_hashes(payload)


def route_body(
    endpoint: str,
    cost: float | None,
    request_idx: int,
    session_id: str | None,
    hashes: Sequence[str] | None = None,
) -> bytes:
    """The `/route` request body; a `request_idx` of 0 asks the router to assign one."""
    body: dict[str, Any] = {"endpoint": endpoint}
    if cost is not None:
        body["cost"] = cost
    if request_idx > 0:
        body["request_idx"] = request_idx
    if session_id is not None:
        body["session_id"] = session_id
    if hashes is not None:
        body["prefix_hashes"] = list(hashes)
    return orjson.dumps(body)


def _loads(raw: bytes) -> Any:
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        return raw.decode(errors="replace")


def _failure(cls: type[RequestFailed], where: str, status: int, raw: bytes) -> RequestFailed:
    """The exception for an error answer: its `{"error": {"code", "message"}}` if it has one."""
    body = _loads(raw)
    code, message = f"http_{status}", str(body)[:500]
    err = body.get("error") if isinstance(body, dict) else None
    if isinstance(err, dict):
        code = str(err.get("code") or code)
        message = str(err.get("message") or message)
    elif isinstance(err, str):  # a model server's own shape, e.g. TGI's
        message = err
    return cls(where, status, code, message, body)


def _seconds(value: Any) -> float | None:
    try:
        v = float(value)
    except (TypeError, ValueError):
        return None
    return v if v >= 0 else None


def route_outcome(status: int, retry_after: str | None, raw: bytes) -> Ticket | Wait:
    """What a `/route` answer means: a ticket, a wait, or (raised) RouteRejected."""
    if status == 200 or status in _RETRY_STATUSES:
        body = _loads(raw)
        if status == 200 and isinstance(body, dict) and "url" in body:
            return body
        if isinstance(body, dict):
            seconds = _seconds(body.get("retry_after_s"))
            if seconds is None:
                seconds = _seconds(retry_after)
            idx = body.get("request_idx")
            return Wait(
                _DEFAULT_WAIT_S if seconds is None else seconds,
                idx if type(idx) is int and idx > 0 else None,
                body,
            )
    raise _failure(RouteRejected, "router", status, raw)


def worker_request(
    ticket: Mapping[str, Any], path: str, payload: Any, shape: Shape
) -> WorkerRequest:
    """The request that carries `payload` to the ticket's worker in shape `shape`.

    `auth_data`: `{"auth_data": ticket, "payload": payload}` (Vast's SDK); `merged`: the
    ticket's fields beside the payload's (a JSON object); `header`: the plain payload,
    and the ticket as `X-Route-Ticket: base64url(ticket JSON)`.
    """
    url = str(ticket["url"]).rstrip("/") + "/" + path.lstrip("/")
    headers = {"Content-Type": "application/json"}
    if shape == "auth_data":
        body: Any = {"auth_data": dict(ticket), "payload": payload}
    elif shape == "merged":
        if not isinstance(payload, Mapping):
            raise ValueError("the merged shape needs a JSON object payload")
        clash = _TICKET_FIELDS.intersection(payload)
        if clash:
            raise ValueError(f"payload fields {sorted(clash)} clash with the ticket's")
        body = {**ticket, **payload}
    elif shape == "header":
        token = base64.urlsafe_b64encode(orjson.dumps(dict(ticket))).rstrip(b"=").decode()
        headers[TICKET_HEADER] = token
        body = payload
    else:
        raise ValueError(f"unknown ticket shape {shape!r}")
    return WorkerRequest(url, orjson.dumps(body), headers)


class _Deadline:
    """How long `route` may still wait."""

    def __init__(self, timeout_s: float) -> None:
        self.timeout_s = timeout_s
        self.started = time.monotonic()

    def left(self) -> float:
        return self.timeout_s - (time.monotonic() - self.started)

    def wait_s(self, wait: Wait) -> float | None:
        """Seconds to sleep before asking again, or None when the time is up."""
        left = self.left()
        if left <= 0:
            return None
        return min(max(wait.seconds, _MIN_WAIT_S), left)


class AsyncRouterClient:
    """Ticket mode on aiohttp: one session for every request, closed by `close()`."""

    def __init__(
        self,
        router_url: str,
        api_key: str,
        *,
        timeout_s: float = 60.0,
        request_timeout_s: float = 300.0,
        session: aiohttp.ClientSession | None = None,
    ) -> None:
        self.router_url = router_url.rstrip("/")
        self.timeout_s = timeout_s
        self.request_timeout_s = request_timeout_s
        self._auth = {"Authorization": f"Bearer {api_key}", "Content-Type": "application/json"}
        self._session = session
        self._owns_session = session is None

    async def __aenter__(self) -> AsyncRouterClient:
        return self

    async def __aexit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def close(self) -> None:
        if self._owns_session and self._session is not None:
            await self._session.close()
        self._session = None

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession()
            self._owns_session = True
        return self._session

    async def route(
        self,
        endpoint: str,
        cost: float | None = None,
        *,
        session_id: str | None = None,
        prefix_hashes: Sequence[str] | None = None,
        timeout_s: float | None = None,
        on_wait: OnWait | None = None,
    ) -> Ticket:
        """A ticket for `endpoint`, waiting up to `timeout_s` for a worker to be ready.

        `on_wait` is called with each answer that says to wait (the status breakdown);
        `prefix_hashes`: the prompt's (`prefix_hashes()`), for cache_aware endpoints.
        """
        deadline = _Deadline(self.timeout_s if timeout_s is None else timeout_s)
        request_idx = 0
        timeout = aiohttp.ClientTimeout(total=self.request_timeout_s)
        while True:
            body = route_body(endpoint, cost, request_idx, session_id, prefix_hashes)
            try:
                async with self._http().post(
                    f"{self.router_url}/route/", data=body, headers=self._auth, timeout=timeout
                ) as resp:
                    raw = await resp.read()
                    outcome = route_outcome(resp.status, resp.headers.get("Retry-After"), raw)
            except (aiohttp.ClientError, TimeoutError) as exc:
                raise RouteRejected(
                    "router", 0, "unreachable", f"cannot reach {self.router_url}: {exc!r}", None
                ) from exc
            if not isinstance(outcome, Wait):
                return outcome
            request_idx = outcome.request_idx or request_idx
            if on_wait is not None:
                on_wait(outcome.body)
            pause = deadline.wait_s(outcome)
            if pause is None:
                raise NoWorkerReady(endpoint, deadline.timeout_s, outcome.body)
            await asyncio.sleep(pause)

    async def call(
        self, ticket: Mapping[str, Any], path: str, payload: Any, *, shape: Shape = "auth_data"
    ) -> Any:
        """POST `payload` to the ticket's worker at `path`; its JSON answer, or WorkerError."""
        req = worker_request(ticket, path, payload, shape)
        timeout = aiohttp.ClientTimeout(total=self.request_timeout_s)
        try:
            async with self._http().post(
                req.url, data=req.body, headers=req.headers, timeout=timeout
            ) as resp:
                raw = await resp.read()
                if resp.status >= 300:
                    raise _failure(WorkerError, "worker", resp.status, raw)
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise WorkerError("worker", 0, "unreachable", f"{req.url}: {exc!r}", None) from exc
        return _loads(raw)

    async def stream(
        self, ticket: Mapping[str, Any], path: str, payload: Any, *, shape: Shape = "auth_data"
    ) -> AsyncIterator[bytes]:
        """POST `payload` to the ticket's worker and yield the answer's bytes as they come.

        Leaving the loop early closes the connection, which cancels the request there.
        """
        req = worker_request(ticket, path, payload, shape)
        # No total: a stream lasts as long as the model writes; a silent one times out.
        timeout = aiohttp.ClientTimeout(total=None, sock_read=self.request_timeout_s)
        try:
            async with self._http().post(
                req.url, data=req.body, headers=req.headers, timeout=timeout
            ) as resp:
                if resp.status >= 300:
                    raise _failure(WorkerError, "worker", resp.status, await resp.read())
                async for chunk in resp.content.iter_any():
                    yield chunk
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise WorkerError("worker", 0, "unreachable", f"{req.url}: {exc!r}", None) from exc


class RouterClient:
    """Ticket mode on the standard library (`urllib.request`), for code without a loop."""

    def __init__(
        self,
        router_url: str,
        api_key: str,
        *,
        timeout_s: float = 60.0,
        request_timeout_s: float = 300.0,
    ) -> None:
        self.router_url = router_url.rstrip("/")
        self.timeout_s = timeout_s
        self.request_timeout_s = request_timeout_s
        self._auth = {"Authorization": f"Bearer {api_key}", "Content-Type": "application/json"}

    def _post(self, url: str, body: bytes, headers: dict[str, str]) -> http.client.HTTPResponse:
        """Open a POST; an error status comes back as a response too, never raised."""
        req = urllib.request.Request(url, data=body, headers=headers, method="POST")
        try:
            resp: http.client.HTTPResponse = urllib.request.urlopen(
                req, timeout=self.request_timeout_s
            )
        except urllib.error.HTTPError as exc:
            return exc  # type: ignore[return-value]  # an HTTPError is a response object
        return resp

    def route(
        self,
        endpoint: str,
        cost: float | None = None,
        *,
        session_id: str | None = None,
        prefix_hashes: Sequence[str] | None = None,
        timeout_s: float | None = None,
        on_wait: OnWait | None = None,
    ) -> Ticket:
        """A ticket for `endpoint`, waiting up to `timeout_s` for a worker to be ready."""
        deadline = _Deadline(self.timeout_s if timeout_s is None else timeout_s)
        request_idx = 0
        while True:
            body = route_body(endpoint, cost, request_idx, session_id, prefix_hashes)
            try:
                with self._post(f"{self.router_url}/route/", body, self._auth) as resp:
                    raw = resp.read()
                    status, retry_after = resp.status, resp.headers.get("Retry-After")
            except (OSError, http.client.HTTPException) as exc:  # URLError is an OSError
                raise RouteRejected(
                    "router", 0, "unreachable", f"cannot reach {self.router_url}: {exc!r}", None
                ) from exc
            outcome = route_outcome(status, retry_after, raw)
            if not isinstance(outcome, Wait):
                return outcome
            request_idx = outcome.request_idx or request_idx
            if on_wait is not None:
                on_wait(outcome.body)
            pause = deadline.wait_s(outcome)
            if pause is None:
                raise NoWorkerReady(endpoint, deadline.timeout_s, outcome.body)
            time.sleep(pause)

    def call(
        self, ticket: Mapping[str, Any], path: str, payload: Any, *, shape: Shape = "auth_data"
    ) -> Any:
        """POST `payload` to the ticket's worker at `path`; its JSON answer, or WorkerError."""
        req = worker_request(ticket, path, payload, shape)
        try:
            with self._post(req.url, req.body, req.headers) as resp:
                raw, status = resp.read(), resp.status
        except (OSError, http.client.HTTPException) as exc:
            raise WorkerError("worker", 0, "unreachable", f"{req.url}: {exc!r}", None) from exc
        if status >= 300:
            raise _failure(WorkerError, "worker", status, raw)
        return _loads(raw)

    def stream(
        self, ticket: Mapping[str, Any], path: str, payload: Any, *, shape: Shape = "auth_data"
    ) -> Iterator[bytes]:
        """POST `payload` to the ticket's worker and yield the answer's bytes as they come."""
        req = worker_request(ticket, path, payload, shape)
        try:
            with self._post(req.url, req.body, req.headers) as resp:
                if resp.status >= 300:
                    raise _failure(WorkerError, "worker", resp.status, resp.read())
                while chunk := resp.read1(_CHUNK_BYTES):
                    yield chunk
        except (OSError, http.client.HTTPException) as exc:
            raise WorkerError("worker", 0, "unreachable", f"{req.url}: {exc!r}", None) from exc
