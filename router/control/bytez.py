"""The Bytez model API (`/model/*`): a facade over endpoints, one per loaded model.

A model from the catalog (`[[models]]`) runs as an endpoint named after it (`org/name`
becomes `org--name`, in the caller's workspace), kind `model`, with `concurrency`
workers (min = max) and `expirationPeriodSeconds` as its inactivity timeout: the
lifecycle loop stops it that long after its last run, and every run resets the clock.
`/model/run` turns a prompt into an OpenAI completion on a worker through the proxy
core (tickets, retries, load accounting as any proxied request) and answers `{output}`,
or the generated text as a plain chunked stream; on a model that is not loaded it loads
it and waits, bounded by the endpoint's `max_queue_time_s`. `/model/job` benchmarks a
model (router/control/jobs.py). Auth `Authorization: Key K` (or Bearer); errors are
`{"error": "..."}` with a 4xx.
"""

from __future__ import annotations

import math
import time
from datetime import UTC, datetime
from typing import Any

import orjson
from aiohttp import web

from router.auth import AuthError
from router.config import ApiKeySettings
from router.context import CTX, RouterContext
from router.control.registry import Conflict
from router.control.settings import CatalogModel, model_endpoint_name
from router.control.spec import Autoscaling, EndpointRecord, new_namespace
from router.errors import ApiError, read_within
from router.jsonbody import json_object
from router.proxy.message import PROXY as PROXY_KIND
from router.proxy.message import Request, http_date
from router.proxy.web import PROXY, WebSink
from router.state.base import StoreUnavailable

DEFAULT_EXPIRATION_S = 1800
_MAX_CONCURRENCY = 64
_MAX_BODY_BYTES = 1024 * 1024
JOB_KIND = "job"

# How each endpoint state reads in Bytez's status words.
_STATUS = {
    "Pending": "DEPLOYING",
    "Loading": "DEPLOYING",
    "Running": "RUNNING",
    "Deleting": "STOPPING",
    "Scaled to zero": "STOPPED",
    "Failed": "FAILED",
}


class BytezError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(
        body=orjson.dumps({"error": message}),
        status=status,
        headers=headers,
        content_type="application/json",
    )


@web.middleware
async def bytez_errors(request: web.Request, handler: Any) -> web.StreamResponse:
    """This API's errors as `{"error": "..."}`."""
    if not request.path.startswith("/model/"):
        return await handler(request)  # type: ignore[no-any-return]
    try:
        return await handler(request)  # type: ignore[no-any-return]
    except BytezError as exc:
        return _error(exc.status, exc.message)
    except AuthError as exc:
        return _error(exc.status, exc.message)
    except ApiError as exc:
        return _error(exc.status, exc.message, exc.headers)
    except StoreUnavailable as exc:
        return _error(503, f"router state store is unreachable ({exc})", {"Retry-After": "1"})
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return _error(exc.status, exc.reason)


def _iso(t: float | None) -> str | None:
    if not t:
        return None
    return datetime.fromtimestamp(t, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _key(request: web.Request, ctx: RouterContext) -> ApiKeySettings:
    value = request.headers.get("Authorization", "")
    scheme, _, token = value.strip().partition(" ")
    presented = token.strip() if scheme.lower() in ("key", "bearer") and token.strip() else None
    return ctx.auth.lookup(presented)


def _workspace(key: ApiKeySettings) -> str:
    return key.workspaces[0] if key.workspaces else "default"


def _endpoint_name(model: str, workspace: str) -> str:
    name = model_endpoint_name(model)
    return name if workspace == "default" else f"{workspace}.{name}"


async def _body(request: web.Request) -> dict[str, Any]:
    if request.method == "GET":
        return {}
    raw = await read_within(request, request.content.read(_MAX_BODY_BYTES + 1))
    if len(raw) > _MAX_BODY_BYTES:
        raise BytezError(413, f"request body over {_MAX_BODY_BYTES} bytes")
    if not raw.strip():
        return {}
    try:
        return json_object(raw)
    except ApiError as exc:
        raise BytezError(400, exc.message) from None


def _model(ctx: RouterContext, body: dict[str, Any]) -> CatalogModel:
    name = body.get("model")
    if not isinstance(name, str) or not name:
        raise BytezError(400, "model (a model name such as 'openai-community/gpt2') is required")
    if len(name) > 200:
        raise BytezError(400, "model: at most 200 characters")
    entry = ctx.settings.control.catalog_by_name.get(name)
    if entry is None:
        raise BytezError(404, f"model {name!r} is not in this router's catalog (see /model/list)")
    return entry


def _record(ctx: RouterContext, model: str, workspace: str) -> EndpointRecord | None:
    record = ctx.registry.records.get(_endpoint_name(model, workspace))
    return record if record is not None and record.kind == "model" else None


# list, job --------------------------------------------------------------------------------


async def list_models(request: web.Request) -> web.Response:
    ctx = request.app[CTX]
    _key(request, ctx)
    body = await _body(request)
    task = request.query.get("task") or body.get("task")
    jobs = await ctx.store.list_docs(JOB_KIND)
    out = []
    for m in ctx.settings.control.models:
        if task and m.task != task:
            continue
        job = orjson.loads(jobs[m.name][1]) if m.name in jobs else {}
        done = job.get("status") == "done"
        ram = job.get("rss_gb") if done else m.required_ram_gb
        out.append({"name": m.name, "task": m.task, "requiredRAM": ram, "benchmarked": done})
    return web.Response(body=orjson.dumps(out), content_type="application/json")


async def job(request: web.Request) -> web.Response:
    """Queue a job that makes a model available (starts a worker, measures it, stops it)."""
    ctx = request.app[CTX]
    key = _key(request, ctx)
    if not key.manages(_workspace(key)):
        raise BytezError(403, "this API key may not request models")
    entry = _model(ctx, await _body(request))
    now = time.time()
    found = await ctx.store.get_doc(JOB_KIND, entry.name)
    if found is None:
        doc = {"model": entry.name, "status": "queued", "startTime": None, "modified": now}
        if await ctx.store.put_doc(JOB_KIND, entry.name, orjson.dumps(doc), 0) is not None:
            return _json({"model": entry.name, "success": True, "modified": _iso(now)})
        found = await ctx.store.get_doc(JOB_KIND, entry.name)  # another replica queued it
        if found is None:
            raise BytezError(409, "the job changed meanwhile; try again")
    doc = orjson.loads(found[1])
    status = doc.get("status")
    answer: dict[str, Any] = {"model": entry.name, "success": status != "failed"}
    if status == "done":
        answer.update(
            message="Model available",
            startTime=_iso(doc.get("startTime")),
            endTime=_iso(doc.get("endTime")),
        )
    elif status == "failed":
        answer.update(
            message="Model failed to start",
            error=doc.get("error", ""),
            startTime=_iso(doc.get("startTime")),
            endTime=_iso(doc.get("endTime")),
        )
    else:
        answer.update(message="Model is already queued", startTime=_iso(doc.get("startTime")))
    answer["modified"] = _iso(doc.get("modified"))
    return _json(answer)


def _json(body: Any, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(body), status=status, content_type="application/json")


# load, status, instances, delete --------------------------------------------------------


def _concurrency(body: dict[str, Any]) -> int:
    v = body.get("concurrency", 1)
    if isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= _MAX_CONCURRENCY:
        raise BytezError(400, f"concurrency: must be an integer from 1 to {_MAX_CONCURRENCY}")
    return v


def _expiration(body: dict[str, Any]) -> float:
    v = body.get("expirationPeriodSeconds", DEFAULT_EXPIRATION_S)
    if (
        isinstance(v, bool)
        or not isinstance(v, int | float)
        or not math.isfinite(v)
        or not 1 <= v <= 30 * 86400
    ):
        raise BytezError(400, "expirationPeriodSeconds: must be a number of seconds, 1 to 2592000")
    return float(v)


async def load(request: web.Request) -> web.Response:
    ctx = request.app[CTX]
    key = _key(request, ctx)
    workspace = _workspace(key)
    if not key.manages(workspace):
        raise BytezError(403, "this API key may not load models")
    body = await _body(request)
    entry = _model(ctx, body)
    concurrency, expiration = _concurrency(body), _expiration(body)
    await ensure_loaded(ctx, entry, workspace, concurrency, expiration)
    return _json({"model": entry.name, "status": "started", "concurrency": concurrency})


async def ensure_loaded(
    ctx: RouterContext,
    entry: CatalogModel,
    workspace: str,
    concurrency: int,
    expiration: float,
) -> EndpointRecord:
    """The model's endpoint, created or updated to `concurrency` workers; activity now."""
    name = _endpoint_name(entry.name, workspace)
    auto = Autoscaling(
        min_workers=concurrency, max_workers=concurrency, inactivity_timeout_s=expiration
    )
    await ctx.store.add_activity({name: (0, time.time())})  # the expiry counts from now
    for _ in range(5):
        now = time.time()
        record = ctx.registry.records.get(name)
        if record is None:
            record = EndpointRecord(
                name=name,
                workspace=workspace,
                kind="model",
                namespace=new_namespace(workspace, name.lower().replace(".", "-")[:12]),
                model_name=entry.name,
                provider=ctx.settings.control.default_provider,
                runtime=entry.runtime,
                autoscaling=auto,
                storage_uri=entry.storage_uri,
                settings={
                    **ctx.settings.control.endpoint_settings(entry.runtime_format),
                    "models": [entry.name],
                    "default_cost": entry.default_cost,
                },
                created=now,
                modified=now,
            )
            try:
                return await ctx.registry.create(record)
            except Conflict:
                await ctx.registry.refresh()
                continue
        if record.kind != "model" or record.workspace != workspace:
            raise BytezError(409, f"the name {name!r} is taken by another endpoint")
        if record.state == "Deleting":
            raise BytezError(409, "the model is being deleted; load it again once it stopped")
        if record.autoscaling == auto and record.state != "Failed":
            return record
        state = "Pending" if record.state == "Failed" else record.state
        changed = EndpointRecord.from_doc(record.to_doc(), record.version)
        changed.autoscaling, changed.state, changed.modified = auto, state, now
        try:
            return await ctx.registry.update(changed)
        except Conflict:
            await ctx.registry.refresh()
    raise BytezError(409, "the model kept changing; try again")


async def status(request: web.Request) -> web.Response:
    ctx = request.app[CTX]
    key = _key(request, ctx)
    entry = _model(ctx, await _body(request))
    return _json(await _status(ctx, entry.name, _record(ctx, entry.name, _workspace(key))))


async def _status(ctx: RouterContext, model: str, record: EndpointRecord | None) -> dict[str, Any]:
    if record is None:
        return {"model": model, "status": "STOPPED", "concurrency": 0, "inferences": 0}
    activity = (await ctx.store.activity()).get(record.name, (0, 0.0))
    a = record.autoscaling
    expiration = a.inactivity_timeout_s or DEFAULT_EXPIRATION_S
    last = max(activity[1], record.created)
    out: dict[str, Any] = {
        "model": model,
        "status": _STATUS.get(record.state, "DEPLOYING"),
        "concurrency": a.max_workers,
        "inferences": activity[0],
        "expirationPeriodSeconds": int(expiration),
        "expirationPeriodMinutes": round(expiration / 60, 2),
        "expiresAt": _iso(last + expiration),
        "created": _iso(record.created),
        "modified": _iso(record.modified),
    }
    if record.state == "Failed":
        out["error"] = record.reason
    return out


async def instances(request: web.Request) -> web.Response:
    ctx = request.app[CTX]
    key = _key(request, ctx)
    workspace = _workspace(key)
    rows = [
        await _status(ctx, r.model_name, r)
        for r in ctx.registry.visible(workspace)
        if r.kind == "model" and r.state not in ("Scaled to zero",)
    ]
    return _json(rows)


async def delete(request: web.Request) -> web.Response:
    ctx = request.app[CTX]
    key = _key(request, ctx)
    workspace = _workspace(key)
    if not key.manages(workspace):
        raise BytezError(403, "this API key may not delete models")
    entry = _model(ctx, await _body(request))
    for _ in range(5):
        record = _record(ctx, entry.name, workspace)
        if record is None:
            raise BytezError(404, f"model {entry.name!r} is not loaded")
        if record.state == "Deleting":
            break
        try:
            await ctx.registry.update(record.with_state("Deleting", "deleted by API", time.time()))
            break
        except Conflict:
            await ctx.registry.refresh()
    return _json({"model": entry.name, "status": "STOPPING"})


# run ------------------------------------------------------------------------------------


def _completion(entry: CatalogModel, body: dict[str, Any]) -> tuple[dict[str, Any], bool]:
    prompt = body.get("prompt", body.get("input", body.get("text")))
    if isinstance(prompt, dict):
        prompt = prompt.get("text", prompt.get("prompt"))
    if not isinstance(prompt, str) or not prompt:
        raise BytezError(400, "prompt (or input) must be a non-empty string")
    params = body.get("params", {})
    if not isinstance(params, dict):
        raise BytezError(400, "params must be an object")
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise BytezError(400, "stream must be true or false")
    n = params.get("max_new_tokens", params.get("max_length", params.get("max_tokens", 64)))
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= 32768:
        raise BytezError(400, "params.max_new_tokens (or max_length) must be an integer 1..32768")
    out: dict[str, Any] = {"model": entry.name, "prompt": prompt, "max_tokens": n, "stream": stream}
    for k in ("temperature", "top_p"):
        v = params.get(k)
        if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v):
            out[k] = v
    return out, stream


async def run(request: web.Request) -> web.StreamResponse:
    ctx = request.app[CTX]
    key = _key(request, ctx)
    workspace = _workspace(key)
    body = await _body(request)
    entry = _model(ctx, body)
    completion, stream = _completion(entry, body)
    record = _record(ctx, entry.name, workspace)
    if record is None or record.state in ("Scaled to zero", "Failed"):
        if not key.manages(workspace):
            raise BytezError(409, f"model {entry.name!r} is not loaded (POST /model/load)")
        record = await ensure_loaded(ctx, entry, workspace, 1, DEFAULT_EXPIRATION_S)
    ep = ctx.endpoints.get(record.name)
    if ep is None or not key.allows(record.name, record.workspace):
        raise BytezError(404, f"model {entry.name!r} is not available to this key")
    # a model still starting (or stopping) holds the run until a worker is ready, bounded
    # by its max_queue_time_s (the proxy core's hold, as for any proxied request)
    core = request.app[PROXY]
    req = Request()
    req.method, req.path, req.upstream_path = b"POST", b"/v1/completions", b"/v1/completions"
    req.kind, req.ep = PROXY_KIND, ep
    req.headers = [(b"Content-Type", b"application/json")]
    req.body = orjson.dumps(completion)
    req.peer = (request.remote or "").encode()
    req.scheme, req.host = request.scheme.encode(), request.host.encode()
    sink = RunSink(request, stream)
    try:
        await core.forward(req, sink, ep, completion)
        return sink.result()
    finally:
        sink.close()


class RunSink(WebSink):
    """The proxy core's sink for `/model/run`: an OpenAI completion turned into Bytez's
    `{output}`, or its SSE stream into plain text chunks, as they arrive."""

    def __init__(self, request: web.Request, stream: bool) -> None:
        super().__init__(request)
        self.stream = stream
        self._sse = b""
        self._held: list[bytes] | None = None  # a body to convert whole (not streamed)
        self._status = 200

    def answer(
        self,
        req: Request,
        status: int,
        reason: bytes,
        headers: list[tuple[bytes, bytes]],
        body: bytes,
    ) -> None:
        self.response = _converted(status, body)

    async def start(
        self,
        req: Request,
        status: int,
        reason: bytes,
        headers: list[tuple[bytes, bytes]],
        length: int | None,
        upstream: Any,
    ) -> None:
        if not self.stream or status != 200:
            self._held, self._status = [], status
            return
        plain = [(b"Content-Type", b"text/plain; charset=utf-8"), (b"Date", http_date())]
        await super().start(req, 200, b"", plain, None, upstream)

    def body(self, chunks: list[bytes]) -> None:
        if self._held is not None:
            self._held.extend(chunks)
            return
        self._sse += b"".join(chunks)
        *events, self._sse = self._sse.split(b"\n\n")
        text = [t for e in events if (t := _event_text(e))]
        if text:
            super().body(text)

    async def end(self, req: Request) -> None:
        if self._held is not None:
            self.response = _converted(self._status, b"".join(self._held))
            return
        await super().end(req)


def _converted(status: int, body: bytes) -> web.Response:
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError:
        doc = None
    if status == 200 and isinstance(doc, dict):
        choices = doc.get("choices") or [{}]
        text = choices[0].get("text", choices[0].get("message", {}).get("content", ""))
        return _json({"output": text})
    message = "the model failed to answer"
    if isinstance(doc, dict):
        err = doc.get("error")
        message = err.get("message", message) if isinstance(err, dict) else str(err or message)
    return _error(status if status >= 400 else 502, message)


def _event_text(event: bytes) -> bytes:
    for line in event.split(b"\n"):
        if not line.startswith(b"data:"):
            continue
        data = line[5:].strip()
        if data == b"[DONE]":
            return b""
        try:
            doc = orjson.loads(data)
            choice = doc["choices"][0]
            text = choice.get("text") or (choice.get("delta") or {}).get("content") or ""
        except (orjson.JSONDecodeError, KeyError, IndexError, TypeError, AttributeError):
            return b""
        return str(text).encode()
    return b""


def add_routes(app: web.Application) -> None:
    for method in ("GET", "POST"):
        app.router.add_route(method, "/model/list", list_models)
        app.router.add_route(method, "/model/instances", instances)
    app.router.add_post("/model/job", job)
    app.router.add_post("/model/load", load)
    app.router.add_post("/model/status", status)
    app.router.add_post("/model/run", run)
    app.router.add_post("/model/delete", delete)
