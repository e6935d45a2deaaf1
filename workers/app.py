"""The worker sidecar's aiohttp app: verify the ticket, account the load, call the backend.

Keys come from the router's JWKS (fetched in the background until it answers, refetched
once on an unknown key_id) and/or a PEM file. With a register token the worker registers
itself with the router and re-registers periodically, so a router whose store lost its
data learns it again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import orjson
from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from router.signing import (
    SigningKeyError,
    VerifyKey,
    verify_key_from_pem,
    verify_keys_from_jwks,
)
from workers.backends.base import Backend
from workers.verify import ReplayWindow, TicketRejected, TicketVerifier, extract_ticket

log = logging.getLogger(__name__)

_REFETCH_MIN_INTERVAL_S = 5.0
_REGISTER_EVERY_S = 15.0
_MAX_BODY_BYTES = 16 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class WorkerSettings:
    public_url: str
    endpoint: str = "default"
    router_url: str | None = None
    register_token: str | None = field(default=None, repr=False)
    perf: float | None = None  # default: the backend's own figure
    max_load: float | None = None
    max_queue_time_s: float = 30.0
    replay_window: int = 1024
    clock_skew_s: float = 5.0
    pubkey_file: Path | None = None
    verify: bool = True
    grace_s: float = 30.0


class Metrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.requests = Counter("worker_requests_total", "Inference requests answered.",
                                ["route", "code"], registry=r)
        self.rejections = Counter("worker_ticket_rejections_total", "Tickets refused.",
                                  ["reason"], registry=r)
        self.inflight_cost = Gauge("worker_inflight_cost", "Cost in flight.", registry=r)
        self.inflight_requests = Gauge("worker_inflight_requests", "Requests in flight.",
                                       registry=r)
        self.ttfb = Histogram("worker_backend_ttfb_seconds",
                              "Time until the backend's response started.", registry=r)


class WorkerState:
    """The worker's live numbers (reported on /readyz) and its ticket checker."""

    def __init__(self, settings: WorkerSettings, backend: Backend) -> None:
        self.settings = settings
        self.backend = backend
        self.metrics = Metrics()
        self.verifier = TicketVerifier({}, settings.public_url, settings.endpoint,
                                       settings.clock_skew_s,
                                       ReplayWindow(settings.replay_window))
        self.keys_loaded = False
        self.inflight_cost = 0.0
        self.inflight_requests = 0
        self.draining = False
        self.worker_id: str | None = None
        self.session: aiohttp.ClientSession | None = None
        self._last_fetch = 0.0
        self._fetch_lock = asyncio.Lock()

    @property
    def perf(self) -> float:
        return self.settings.perf or self.backend.perf()

    def set_keys(self, keys: dict[str, VerifyKey]) -> None:
        self.verifier.keys = {**self.verifier.keys, **keys}
        self.keys_loaded = bool(self.verifier.keys)

    async def fetch_jwks(self) -> bool:
        """Fetch the router's keys once; True on success."""
        assert self.session is not None and self.settings.router_url
        url = self.settings.router_url.rstrip("/") + "/.well-known/jwks.json"
        try:
            async with self.session.get(url, timeout=aiohttp.ClientTimeout(total=3)) as resp:
                if resp.status != 200:
                    log.warning("JWKS fetch from %s answered %d", url, resp.status)
                    return False
                keys = verify_keys_from_jwks(orjson.loads(await resp.read()))
        except (aiohttp.ClientError, TimeoutError, orjson.JSONDecodeError,
                SigningKeyError) as exc:
            log.warning("JWKS fetch from %s failed: %s", url, exc)
            return False
        self.set_keys(keys)
        log.info("loaded %d router key(s) from %s", len(keys), url)
        return True

    async def refetch_for_unknown_key(self) -> None:
        """Refetch the JWKS at most once per interval; concurrent callers share one fetch."""
        if not self.settings.router_url:
            return
        async with self._fetch_lock:
            if time.monotonic() - self._last_fetch < _REFETCH_MIN_INTERVAL_S:
                return
            self._last_fetch = time.monotonic()
            await self.fetch_jwks()


STATE = web.AppKey("worker_state", WorkerState)


def build_app(settings: WorkerSettings, backend: Backend) -> web.Application:
    app = web.Application(client_max_size=_MAX_BODY_BYTES)
    state = WorkerState(settings, backend)
    app[STATE] = state
    if settings.pubkey_file is not None:
        state.set_keys({(k := verify_key_from_pem(settings.pubkey_file.read_bytes())).kid: k})

    async def resources(app: web.Application) -> AsyncIterator[None]:
        await backend.start()
        async with aiohttp.ClientSession() as session:
            state.session = session
            tasks = []
            if settings.verify and settings.router_url:
                tasks.append(_task(_load_keys(state), "jwks-fetch"))
            if settings.register_token and settings.router_url:
                tasks.append(_task(_register_loop(state), "register"))
            yield
            for t in tasks:
                t.cancel()
            for t in tasks:
                with contextlib.suppress(asyncio.CancelledError):
                    await t
            if settings.register_token and state.worker_id:
                await _deregister(state)
        await backend.close()

    app.cleanup_ctx.append(resources)
    app.router.add_get("/livez", livez)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
    app.router.add_route("*", "/{path:.*}", infer)
    return app


def _task(coro: Coroutine[Any, Any, None], name: str) -> asyncio.Task[None]:
    return asyncio.get_running_loop().create_task(coro, name=name)


async def _load_keys(state: WorkerState) -> None:
    delay = 0.2
    while not await state.fetch_jwks():
        await asyncio.sleep(delay)
        delay = min(delay * 2, 5.0)
    state._last_fetch = time.monotonic()


async def _register_loop(state: WorkerState) -> None:
    s = state.settings
    assert state.session is not None and s.router_url
    url = s.router_url.rstrip("/") + "/api/v1/workers"
    body = {"endpoint": s.endpoint, "url": s.public_url, "perf": state.perf,
            "max_load": s.max_load}
    headers = {"Authorization": f"Bearer {s.register_token}"}
    delay = 0.2
    while True:
        try:
            async with state.session.post(url, json=body, headers=headers,
                                          timeout=aiohttp.ClientTimeout(total=3)) as resp:
                doc = await resp.json(content_type=None)
                if resp.status in (200, 201):
                    if state.worker_id is None:
                        log.info("registered with %s as %s", s.router_url, doc.get("id"))
                    state.worker_id = doc.get("id")
                    delay = _REGISTER_EVERY_S
                else:
                    log.warning("registration refused (%d): %s", resp.status,
                                doc.get("error", {}).get("message", doc))
                    delay = min(max(delay * 2, 1.0), _REGISTER_EVERY_S)
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            log.warning("registration with %s failed: %s", s.router_url, exc)
            delay = min(delay * 2, 5.0)
        await asyncio.sleep(delay)


async def _deregister(state: WorkerState) -> None:
    s = state.settings
    assert state.session is not None and s.router_url
    url = f"{s.router_url.rstrip('/')}/api/v1/workers/{state.worker_id}"
    try:
        async with state.session.delete(url, headers={"Authorization":
                                                      f"Bearer {s.register_token}"},
                                        timeout=aiohttp.ClientTimeout(total=2)):
            pass
    except (aiohttp.ClientError, TimeoutError) as exc:
        log.warning("deregistration failed: %s", exc)


def _error(status: int, code: str, message: str,
           headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(body=orjson.dumps({"error": {"code": code, "message": message}}),
                        status=status, content_type="application/json", headers=headers)


async def livez(request: web.Request) -> web.Response:
    return web.Response(body=b'{"status":"ok"}', content_type="application/json")


async def readyz(request: web.Request) -> web.Response:
    state = request.app[STATE]
    body: dict[str, Any] = {
        "ready": False, "inflight_cost": state.inflight_cost,
        "inflight_requests": state.inflight_requests,
        "max_reqnum_seen": state.verifier.window.max_seen,
        "perf": state.perf,
    }
    if state.draining:
        body["draining"] = True
    elif state.settings.verify and not state.keys_loaded:
        body["reason"] = "router keys not loaded yet"
    elif not await state.backend.ready():
        body["reason"] = "backend not ready"
    else:
        body["ready"] = True
    return web.Response(body=orjson.dumps(body), status=200 if body["ready"] else 503,
                        content_type="application/json")


async def metrics(request: web.Request) -> web.Response:
    state = request.app[STATE]
    state.metrics.inflight_cost.set(state.inflight_cost)
    state.metrics.inflight_requests.set(state.inflight_requests)
    return web.Response(body=generate_latest(state.metrics.registry),
                        headers={"Content-Type": CONTENT_TYPE_LATEST})


async def infer(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE]
    path = "/" + request.match_info["path"]
    route = path if path in state.backend.routes else "other"
    resp = await _infer(request, state, path)
    state.metrics.requests.labels(route, str(resp.status)).inc()
    return resp


async def _infer(request: web.Request, state: WorkerState, path: str) -> web.StreamResponse:
    if path not in state.backend.routes:
        return _error(404, "not_found", f"no inference route {path}")
    if request.method != "POST":
        return _error(405, "method_not_allowed", "inference routes take POST",
                      {"Allow": "POST"})
    if state.draining:
        return _error(503, "draining", "this worker is shutting down; route again")
    try:
        body = orjson.loads(await request.read())
    except orjson.JSONDecodeError as exc:
        return _error(400, "bad_json", f"request body is not valid JSON: {exc.msg}")
    except web.HTTPRequestEntityTooLarge:
        return _error(413, "body_too_large", f"request body over {_MAX_BODY_BYTES} bytes")
    try:
        payload, cost = await _check_ticket(state, request, body, path)
    except TicketRejected as exc:
        state.metrics.rejections.labels(exc.reason).inc()
        return _error(401, exc.code, exc.message)
    except _Busy as exc:
        return _error(429, "overloaded", "the queue is full; try another worker",
                      {"Retry-After": str(exc.retry_after_s)})
    state.inflight_cost += cost
    state.inflight_requests += 1
    started = time.perf_counter()
    try:
        resp = await state.backend.serve(request, path, payload)
        state.metrics.ttfb.observe(time.perf_counter() - started)
        return resp
    finally:
        state.inflight_cost -= cost
        state.inflight_requests -= 1
        if state.inflight_requests == 0:
            state.inflight_cost = 0.0  # no float drift left behind when idle


class _Busy(Exception):
    def __init__(self, retry_after_s: int) -> None:
        self.retry_after_s = retry_after_s


def _admit(state: WorkerState, cost: float) -> None:
    """Refuse work that would wait longer than max_queue_time_s (never when idle)."""
    wait_s = (state.inflight_cost + cost) / state.perf
    if state.inflight_requests and wait_s > state.settings.max_queue_time_s:
        raise _Busy(max(1, int(wait_s - state.settings.max_queue_time_s + 1)))


async def _check_ticket(state: WorkerState, request: web.Request, body: Any,
                        path: str) -> tuple[Any, float]:
    """Return (model payload, cost) or raise TicketRejected / _Busy."""
    header = request.headers.get("X-Route-Ticket")
    if not state.settings.verify:
        try:
            _, payload = extract_ticket(body, header)
        except TicketRejected:
            payload = body
        cost = state.backend.workload(path, payload)
        _admit(state, cost)
        return payload, cost
    ticket, payload = extract_ticket(body, header)
    claimed = ticket.get("cost")
    if isinstance(claimed, int | float) and not isinstance(claimed, bool) and claimed >= 0:
        _admit(state, float(claimed))  # before verify: a 429 must not burn the reqnum
    now = time.time()
    try:
        state.verifier.verify(ticket, now)
    except TicketRejected as exc:
        if exc.reason != "unknown_key":
            raise
        await state.refetch_for_unknown_key()  # the router may have rotated its key
        state.verifier.verify(ticket, now)
    return payload, float(ticket["cost"])
