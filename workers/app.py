"""The worker's aiohttp app: check the ticket, admit by load, call the backend, report.

Inference requests go: parse JSON -> find and verify the ticket (docs/protocol.md; its
cost must cover the payload's own, `Backend.payload_cost`) -> admit if the queue allows
(workers/load.py) -> record the reqnum -> account the cost while the
backend serves only the model payload. `/readyz` reports the load the router balances
on; `/metrics` exports it. Keys and registration run as resources of the app.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import orjson
from aiohttp import web
from aiohttp.typedefs import Handler

from router.signing import VerifyKey
from workers.backends import Backend, make_backend
from workers.backends.base import BackendFailed
from workers.errors import error_response as _error
from workers.keys import KeySource, load_pubkey_file
from workers.load import Load, admission_delay
from workers.metrics import CONTENT_TYPE_LATEST, WorkerMetrics
from workers.registration import Registrar
from workers.settings import WorkerSettings
from workers.verify import (
    ReplayMemory,
    ReplayMemoryFull,
    TicketRejected,
    TicketVerifier,
    extract_ticket,
)

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 16 * 1024 * 1024
_REPLAY_FULL_RETRY_S = 1  # s; the replay memory is pruned about once a second
_ERROR_CODES = {
    400: "bad_request",
    404: "not_found",
    405: "method_not_allowed",
    413: "body_too_large",
}


class WorkerState:
    """One worker's live state: its backend, keys, ticket checker, load and metrics."""

    def __init__(self, settings: WorkerSettings, backend: Backend) -> None:
        self.settings = settings
        self.backend = backend
        self.load = Load()
        self.verifier = TicketVerifier(
            {},
            settings.public_url,
            settings.endpoint,
            settings.clock_skew_s,
            settings.cost_tolerance,
            ReplayMemory(settings.replay_max_segments),
        )
        self.metrics = WorkerMetrics(self.load, self.verifier.replay, backend)
        static: dict[str, VerifyKey] = {}
        if settings.pubkey_file is not None:
            key = load_pubkey_file(settings.pubkey_file)
            static[key.kid] = key
        router_url = settings.router_url if settings.verify else None
        self.keys = KeySource(
            self.verifier,
            router_url,
            static,
            settings.jwks_refetch_interval_s,
            settings.jwks_refresh_s,
        )
        self.registrar: Registrar | None = None
        if settings.register_token and settings.router_url:
            self.registrar = Registrar(
                settings.router_url,
                settings.register_token,
                settings.endpoint,
                settings.public_url,
                lambda: self.perf,
                settings.max_load,
                settings.register_interval_s,
                paused=lambda: self.draining,
            )
        self.draining = False

    @property
    def perf(self) -> float:
        return self.settings.perf or self.backend.perf()

    def start_draining(self) -> None:
        """Refuse new work and say so on /readyz; in-flight requests finish."""
        self.draining = True

    def report(self) -> dict[str, Any]:
        return {
            "inflight_cost": self.load.cost,
            "inflight_requests": self.load.requests,
            "max_reqnum_seen": self.verifier.replay.max_seen,
            "perf": self.perf,
            "completed_cost": self.load.completed_cost,
            "busy_s": self.load.busy_s(),
        }


STATE = web.AppKey("worker_state", WorkerState)
_BACKEND_STARTED = web.RequestKey("worker_backend_started", float)
_PREPARED = web.RequestKey("worker_response_prepared", web.StreamResponse)


def build_app(settings: WorkerSettings, backend: Backend | None = None) -> web.Application:
    """Build the worker app; `backend` overrides the one `settings.backend` names."""
    state = WorkerState(settings, backend or make_backend(settings))
    app = web.Application(client_max_size=MAX_BODY_BYTES, middlewares=[_errors])
    app[STATE] = state
    app.cleanup_ctx.append(_backend_ctx)
    app.cleanup_ctx.append(_router_ctx)
    app.on_response_prepare.append(_on_prepare)
    app.router.add_get("/livez", livez)
    app.router.add_get("/readyz", readyz)
    # what model servers answer (TGI, vLLM, SGLang): routers that probe it (SGLang's and
    # vLLM's, in bench/cache_bench.py) can front the reference worker as they front those
    app.router.add_get("/health", readyz)
    app.router.add_get("/metrics", metrics)
    app.router.add_route("*", "/{path:.*}", infer)
    return app


async def _backend_ctx(app: web.Application) -> AsyncIterator[None]:
    backend = app[STATE].backend
    await backend.start()
    yield
    await backend.close()


async def _router_ctx(app: web.Application) -> AsyncIterator[None]:
    """The router connection: JWKS loading and self-registration (when configured)."""
    state = app[STATE]
    if state.keys.jwks_url is None and state.registrar is None:
        yield
        return
    async with aiohttp.ClientSession() as session:
        state.keys.start(session)
        if state.registrar is not None:
            state.registrar.start(session)
        try:
            yield
        finally:
            if state.registrar is not None:
                await state.registrar.close()
            await state.keys.close()


def _json(body: Any, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(body), status=status, content_type="application/json")


@web.middleware
async def _errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Answer every error as JSON, never a traceback; a client hanging up is normal."""
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return _error(
            exc.status,
            _ERROR_CODES.get(exc.status, f"http_{exc.status}"),
            exc.reason,
            headers={k: v for k, v in exc.headers.items() if k.lower() == "allow"},
        )
    except Exception as exc:
        prepared: web.StreamResponse | None = request.get(_PREPARED)
        if prepared is None:
            log.exception("error serving %s %s", request.method, request.path)
            return _error(500, "internal", "the worker failed to answer this request")
        # Headers went out: the only honest signal left is to cut the connection.
        if isinstance(exc, ConnectionResetError):
            log.debug("client went away mid-response: %s", exc)
        elif isinstance(exc, BackendFailed):
            log.warning(
                "backend failed mid-response to %s %s: %s", request.method, request.path, exc
            )
        else:
            log.exception("error mid-response to %s %s", request.method, request.path)
        if request.transport is not None:
            request.transport.close()
        return prepared


async def _on_prepare(request: web.Request, response: web.StreamResponse) -> None:
    request[_PREPARED] = response
    started: float | None = request.get(_BACKEND_STARTED)
    if started is not None:
        request.app[STATE].metrics.ttfb.observe(time.perf_counter() - started)


async def livez(request: web.Request) -> web.Response:
    return _json({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    state = request.app[STATE]
    body: dict[str, Any] = {"ready": False}
    if state.draining:
        body["draining"] = True
    elif state.settings.verify and not state.keys.loaded:
        body["reason"] = "router keys not loaded yet"
    else:
        try:
            ok = await state.backend.ready()
        except Exception as exc:  # a broken backend is "not ready", not a 500
            ok = False
            log.debug("backend readiness check failed: %s", exc)
        if ok:
            body["ready"] = True
        else:
            body["reason"] = "backend not ready"
    body.update(state.report())
    return _json(body, status=200 if body["ready"] else 503)


async def metrics(request: web.Request) -> web.Response:
    return web.Response(
        body=request.app[STATE].metrics.render(), headers={"Content-Type": CONTENT_TYPE_LATEST}
    )


async def infer(request: web.Request) -> web.StreamResponse:
    """Any path not above: an inference request for the backend (or a JSON 404)."""
    state = request.app[STATE]
    path = "/" + request.match_info["path"]
    route = state.backend.route_label(path)
    code = "500"
    try:
        resp = await _infer(request, state, path)
        code = str(resp.status)
        if resp.prepared and (request.transport is None or request.transport.is_closing()):
            code = "499"  # streamed until the client hung up
        return resp
    except asyncio.CancelledError:
        code = "499"
        raise
    except web.HTTPException as exc:
        code = str(exc.status)
        raise
    finally:
        state.metrics.requests.labels(route, code).inc()


async def _infer(request: web.Request, state: WorkerState, path: str) -> web.StreamResponse:
    backend = state.backend
    if not backend.serves(path):
        return _error(404, "not_found", f"no route {path}")
    method = "GET" if path in backend.get_routes else "POST"
    if request.method != method:
        return _error(
            405, "method_not_allowed", f"{path} takes {method}", headers={"Allow": method}
        )
    if state.draining:
        return _error(503, "draining", "this worker is shutting down; route again")
    raw = await request.read()
    body: Any = None  # a GET route has no body: its ticket comes as X-Route-Ticket
    if raw or method == "POST":
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            return _error(400, "bad_json", f"request body is not valid JSON: {exc}")
    header = request.headers.get("X-Route-Ticket")
    ticket: dict[str, Any] | None = None
    if state.settings.verify:
        try:
            ticket, payload = extract_ticket(body, header)
            await _check(state, ticket, state.backend.payload_cost(path, payload))
        except TicketRejected as exc:
            state.metrics.rejections.labels(exc.reason).inc()
            return _error(401, exc.code, exc.message)
        except ReplayMemoryFull as exc:
            state.metrics.rejections.labels("replay_memory_full").inc()
            return _error(
                503,
                "replay_memory_full",
                str(exc),
                headers={"Retry-After": str(_REPLAY_FULL_RETRY_S)},
                retry_after_s=_REPLAY_FULL_RETRY_S,
            )
        cost = float(ticket["cost"])
    else:
        try:
            _, payload = extract_ticket(body, header)
        except TicketRejected:
            payload = body
        cost = state.backend.workload(path, payload)
    # No await from _check to here: the reqnum is recorded only for a request we serve.
    retry_after_s = admission_delay(
        state.load.cost,
        state.load.requests,
        cost,
        state.perf,
        state.settings.max_queue_time_s,
        state.settings.max_load,
    )
    if retry_after_s is not None:
        return _error(
            429,
            "overloaded",
            "this worker's queue is full; route again",
            headers={"Retry-After": str(retry_after_s)},
            retry_after_s=retry_after_s,
        )
    if ticket is not None:
        state.verifier.record(ticket)
    state.load.add(cost)
    request[_BACKEND_STARTED] = time.perf_counter()
    try:
        return await state.backend.serve(request, path, payload)
    finally:
        state.load.release(cost)


async def _check(state: WorkerState, ticket: dict[str, Any], payload_cost: float | None) -> int:
    """Check a ticket, refetching the router's keys once for an unknown key_id."""
    now = time.time()
    try:
        return state.verifier.check(ticket, now, payload_cost)
    except TicketRejected as exc:
        if exc.reason != "unknown_key" or not await state.keys.refetch():
            raise
    return state.verifier.check(ticket, now, payload_cost)
