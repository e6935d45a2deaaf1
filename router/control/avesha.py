"""The Avesha inference-endpoint API (`/api/v1/inference-endpoint`): create, list,
describe and delete endpoints, in Avesha's envelope.

Every answer is `{statusCode, status, message, data, error?}` with `statusCode` equal
to the HTTP status (Avesha's SDK reads the envelope's code, so the two must agree).
Errors carry `{errorKey, message, data}`, `data` being a JSON string of the upstream
shape the seed shows, whose `DetailedError.Errormessage` names the offending field
(`"gpuSpec.exitDuration" is not allowed to be empty`). A create stores a `Pending`
record and returns at once; the lifecycle loop (router/control/lifecycle.py) starts
the workers. Auth: `Authorization: Bearer K`; a workspace key manages its workspaces,
an admin key all; an endpoint of another workspace is a 404, as if it did not exist.
"""

from __future__ import annotations

import ipaddress
import re
import shlex
import time
from dataclasses import asdict
from http import HTTPStatus
from typing import Any

import orjson
from aiohttp import web
from yarl import URL

from router.auth import AuthError, key_from_header
from router.config import RESERVED_NAMES, ApiKeySettings, ConfigError, _Reader
from router.context import CTX, RouterContext
from router.control import kserve
from router.control.registry import Conflict
from router.control.settings import read_autoscaling
from router.control.spec import DNS_LABEL, Autoscaling, EndpointRecord, new_namespace
from router.errors import ApiError, read_within
from router.jsonbody import json_object
from router.state.base import StoreUnavailable

BASE = "/api/v1/inference-endpoint"
_MAX_BODY_BYTES = 256 * 1024
_CLUSTER_RE = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9._-]{0,61}[A-Za-z0-9])?$")
_FORMAT_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_URI_RE = re.compile(r"^[a-z][a-z0-9+.-]{0,15}://[^\s\"'\\<>]{1,2000}$")
_DURATION_RE = re.compile(r"^(\d{1,6}h)?(\d{1,6}m)?(\d{1,6}s)?$")
_GPU_INTS = ("memoryPerGPU", "numberOfGPUs", "numberOfGPUNodes")


class Invalid(Exception):
    """A 422 naming the field: `"field" message`."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f'"{field}" {message}')
        self.field = field


def envelope(status: int, data: Any, message: str = "Success") -> web.Response:
    body = {
        "statusCode": status,
        "status": "OK" if status < 400 else _status_word(status),
        "message": message,
        "data": data,
    }
    return web.Response(body=orjson.dumps(body), status=status, content_type="application/json")


def failure(status: int, key: str, message: str, field: str = "") -> web.Response:
    upstream = {
        "error": {
            "Message": message,
            "Status": status,
            "DetailedError": {"Errormessage": message, "Reason": key, "Details": field},
            "StatusCode": status,
            "ReferenceDocumentation": "docs/control-plane.md",
        }
    }
    body = {
        "statusCode": status,
        "status": _status_word(status),
        "message": message,
        "data": None,
        "error": {"errorKey": key, "message": message, "data": orjson.dumps(upstream).decode()},
    }
    return web.Response(body=orjson.dumps(body), status=status, content_type="application/json")


def _status_word(status: int) -> str:
    try:
        return HTTPStatus(status).phrase.upper().replace(" ", "_")
    except ValueError:
        return "UNKNOWN"


@web.middleware
async def avesha_errors(request: web.Request, handler: Any) -> web.StreamResponse:
    """This API's errors in its own envelope (the router's JSON errors elsewhere)."""
    if not request.path.startswith(BASE) and request.path != "/api/v1/auth":
        return await handler(request)  # type: ignore[no-any-return]
    try:
        return await handler(request)  # type: ignore[no-any-return]
    except Invalid as exc:
        return failure(422, "VALIDATION_ERROR", str(exc), exc.field)
    except AuthError as exc:
        return failure(
            exc.status, "UNAUTHORIZED" if exc.status == 401 else "FORBIDDEN", exc.message
        )
    except ApiError as exc:
        known = {404: "NOT_FOUND", 409: "CONFLICT", 413: "PAYLOAD_TOO_LARGE"}
        return failure(exc.status, known.get(exc.status, exc.code.upper()), exc.message)
    except StoreUnavailable as exc:
        return failure(503, "STORE_UNAVAILABLE", f"router state store is unreachable ({exc})")
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return failure(exc.status, exc.reason.upper().replace(" ", "_"), exc.reason)


# reading a request ---------------------------------------------------------------------


def _key(request: web.Request, ctx: RouterContext) -> ApiKeySettings:
    return ctx.auth.lookup(key_from_header(request.headers.get("Authorization")))


async def _body(request: web.Request) -> dict[str, Any]:
    if request.content_length is not None and request.content_length > _MAX_BODY_BYTES:
        raise ApiError(413, "body_too_large", f"request body over {_MAX_BODY_BYTES} bytes")
    raw = await read_within(request, request.content.read(_MAX_BODY_BYTES + 1))
    if len(raw) > _MAX_BODY_BYTES:
        raise ApiError(413, "body_too_large", f"request body over {_MAX_BODY_BYTES} bytes")
    try:
        return json_object(raw)
    except ApiError as exc:
        raise Invalid("body", exc.message) from None


def _string(
    doc: dict[str, Any],
    field: str,
    where: str = "",
    *,
    pattern: re.Pattern[str],
    what: str,
    required: bool = True,
) -> str:
    name = f"{where}{field}"
    value = doc.get(field)
    if value is None or value == "":
        if required:
            raise Invalid(name, "is not allowed to be empty")
        return ""
    if not isinstance(value, str):
        raise Invalid(name, "must be a string")
    if not pattern.match(value):
        raise Invalid(name, f"must be {what}")
    return value


def _name(doc: dict[str, Any], field: str) -> str:
    value = _string(doc, field, pattern=DNS_LABEL, what="a DNS label: 1-63 of a-z, 0-9, '-'")
    return value


def _workspace_of(request: web.Request) -> str:
    ws = request.query.get("workspace", "")
    if not ws:
        raise Invalid("workspace", "is required")
    if not DNS_LABEL.match(ws):
        raise Invalid("workspace", "must be a DNS label: 1-63 of a-z, 0-9, '-'")
    return ws


def _model_spec(doc: Any) -> tuple[str, str, tuple[str, ...], dict[str, Any]]:
    if not isinstance(doc, dict):
        raise Invalid("modelSpec", "must be an object")
    fmt = _string(
        doc,
        "modelName",
        "modelSpec.",
        pattern=_FORMAT_RE,
        what="a model format name (1-64 of letters, digits, '.', '_', '-')",
    )
    uri = _string(
        doc,
        "storageURI",
        "modelSpec.",
        pattern=_URI_RE,
        what="a URI such as gs://bucket/path or https://host/path",
    )
    args = doc.get("args", [])
    if (
        not isinstance(args, list)
        or len(args) > 64
        or not all(isinstance(a, str) and len(a) <= 1024 for a in args)
    ):
        raise Invalid("modelSpec.args", "must be a list of at most 64 strings")
    resources = doc.get("resources", {})
    if (
        not isinstance(resources, dict)
        or not all(
            isinstance(k, str) and isinstance(v, str | int | float) and not isinstance(v, bool)
            for k, v in resources.items()
        )
        or len(resources) > 16
    ):
        raise Invalid("modelSpec.resources", "must be an object of strings (cpu, memory)")
    return fmt, uri, tuple(args), resources


def _gpu_spec(doc: Any) -> dict[str, Any] | None:
    if doc is None or (isinstance(doc, str) and doc.strip().lower() == "none"):
        return None
    if not isinstance(doc, dict):
        raise Invalid("gpuSpec", 'must be an object, null or "None"')
    out: dict[str, Any] = {}
    for field in ("gpuShape", "instanceType"):
        v = doc.get(field)
        if not isinstance(v, str) or not v or len(v) > 128:
            raise Invalid(f"gpuSpec.{field}", "must be a non-empty string of at most 128 chars")
        out[field] = v
    for field in _GPU_INTS:
        v = doc.get(field)
        if isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= 1_000_000:
            raise Invalid(f"gpuSpec.{field}", "must be an integer from 1 to 1000000")
        out[field] = v
    if "exitDuration" in doc:
        v = doc["exitDuration"]
        if v is None or v == "":
            raise Invalid("gpuSpec.exitDuration", "is not allowed to be empty")
        if not isinstance(v, str) or not _DURATION_RE.match(v):
            raise Invalid("gpuSpec.exitDuration", 'must be a duration such as "1h" or "30m"')
        out["exitDuration"] = v
    if "priority" in doc:
        v = doc["priority"]
        if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v <= 1000:
            raise Invalid("gpuSpec.priority", "must be an integer from 0 to 1000")
        out["priority"] = v
    return out


def _autoscaling(doc: Any, base: Autoscaling) -> Autoscaling:
    if doc is None:
        return base
    if not isinstance(doc, dict):
        raise Invalid("autoscaling", "must be an object")
    try:
        r = _Reader(doc, "autoscaling")
        auto = read_autoscaling(r, base)
        r.done()
    except ConfigError as exc:
        field, _, message = str(exc).partition(": ")
        raise Invalid(field, message) from None
    return auto


# handlers ---------------------------------------------------------------------------------


async def auth(request: web.Request) -> web.Response:
    """`POST /api/v1/auth {apiKey}`: Avesha's SDK trades its key for an access token first.

    Here the token is the key itself (sent back to the one who sent it): every other
    call takes it as `Authorization: Bearer K`, so the SDK's flow works unchanged.
    """
    ctx = request.app[CTX]
    body = await _body(request)
    key = body.get("apiKey")
    if not isinstance(key, str) or not key or len(key) > 4096:
        raise Invalid("apiKey", "is required")
    try:
        ctx.auth.lookup(key)
    except AuthError:
        return failure(400, "INVALID_API_KEY", "the API key is not valid")
    return envelope(200, {"accessToken": key})


async def create(request: web.Request) -> web.Response:
    ctx = request.app[CTX]
    key = _key(request, ctx)
    body = await _body(request)
    cluster = _string(
        body, "clusterName", pattern=_CLUSTER_RE, what="1-63 of letters, digits, '.', '_', '-'"
    )
    name = _name(body, "endpointName")
    workspace = _name(body, "workspace")
    if not key.manages(workspace):
        raise AuthError(403, "forbidden", f"this API key may not manage workspace {workspace!r}")
    if name in RESERVED_NAMES:
        raise Invalid("endpointName", f"{name!r} is reserved for the router's own paths")
    model_spec, raw = body.get("modelSpec"), body.get("rawModelSpec")
    if (model_spec is None) == (raw is None):
        raise Invalid("modelSpec", "or rawModelSpec is required (exactly one of them)")
    control = ctx.settings.control
    base = Autoscaling(min_workers=1, max_workers=1)
    raw_spec: str | None = None
    if raw is not None:
        if not isinstance(raw, str):
            raise Invalid("rawModelSpec", "must be a string (an InferenceService in YAML)")
        try:
            isvc = kserve.parse(raw, max_bytes=control.max_spec_bytes)
        except kserve.SpecError as exc:
            raise Invalid(exc.field, exc.message) from None
        fmt, uri, args, resources = isvc.model_format, isvc.storage_uri, isvc.args, isvc.resources
        low = isvc.min_replicas if isvc.min_replicas is not None else 1
        high = isvc.max_replicas if isvc.max_replicas is not None else max(low, 1)
        base = Autoscaling(min_workers=low, max_workers=max(low, high))
        raw_spec = raw
    else:
        fmt, uri, args, resources = _model_spec(model_spec)
    gpu = _gpu_spec(body.get("gpuSpec"))
    autoscaling = _autoscaling(body.get("autoscaling"), base)
    runtime = control.runtime(fmt)
    if runtime is None:
        raise Invalid(
            "modelSpec.modelName"
            if raw is None
            else "rawModelSpec.spec.predictor.model.modelFormat.name",
            f"{fmt!r} is not a model format this router runs (see [[runtimes]])",
        )
    registry = ctx.registry
    if name in registry.records:
        raise ApiError(409, "conflict", f"an endpoint named {name!r} already exists")
    if len(registry.api_records()) >= control.max_endpoints:
        raise ApiError(409, "limit_reached", f"this router holds {control.max_endpoints} endpoints")
    now = time.time()
    record = EndpointRecord(
        name=name,
        workspace=workspace,
        kind="endpoint",
        cluster_name=cluster,
        namespace=new_namespace(workspace, name),
        model_name=fmt,
        storage_uri=uri,
        args=args,
        resources=resources,
        raw_spec=raw_spec,
        gpu_spec=gpu,
        provider=control.default_provider,
        runtime=runtime,
        autoscaling=autoscaling,
        settings={**control.endpoint_settings(fmt), "models": [name]},
        state="Pending",
        created=now,
        modified=now,
    )
    try:
        await registry.create(record)
    except Conflict:
        raise ApiError(409, "conflict", f"an endpoint named {name!r} already exists") from None
    return envelope(200, {"endpointName": name})


async def list_or_describe(request: web.Request) -> web.Response:
    ctx = request.app[CTX]
    key = _key(request, ctx)
    workspace = _workspace_of(request)
    wanted = request.query.get("endpoint")
    if wanted is not None and request.path.endswith("/list"):
        wanted = None
    if wanted is None:
        if not key.manages(workspace) and not key.admin:
            rows: list[dict[str, Any]] = []  # a key sees no workspace it has no part in
        else:
            rows = [summary(ctx, r) for r in ctx.registry.visible(workspace)]
        return envelope(200, {"endpoints": rows})
    record = _find(ctx, key, workspace, wanted)
    return envelope(200, {"endpoint": describe(ctx, record)})


async def delete(request: web.Request) -> web.Response:
    ctx = request.app[CTX]
    key = _key(request, ctx)
    body = await _body(request)
    workspace = _name(body, "workspace")
    name = _string(body, "endpoint", pattern=DNS_LABEL, what="a DNS label")
    record = _find(ctx, key, workspace, name)
    if record.source == "config":
        raise ApiError(409, "conflict", f"{name!r} comes from the router's config; remove it there")
    if record.state != "Deleting":
        for _ in range(3):  # the lifecycle loop may write the record meanwhile
            try:
                await ctx.registry.update(
                    record.with_state("Deleting", "deleted by API", time.time())
                )
                break
            except Conflict:
                await ctx.registry.refresh()
                record = _find(ctx, key, workspace, name)
        else:
            raise ApiError(409, "conflict", "the endpoint kept changing; try again")
    return envelope(200, {})


def _find(ctx: RouterContext, key: ApiKeySettings, workspace: str, name: str) -> EndpointRecord:
    record = ctx.registry.records.get(name)
    if record is None or record.workspace != workspace or not key.manages(workspace):
        raise ApiError(404, "not_found", f"no endpoint {name!r} in workspace {workspace!r}")
    return record


# views --------------------------------------------------------------------------------------


def public_url(ctx: RouterContext) -> str:
    """The router's URL for clients: `control.public_url`, else where it listens."""
    if ctx.settings.control.public_url:
        return ctx.settings.control.public_url
    if ctx.listen_url:
        return ctx.listen_url
    host, port = ctx.settings.server.host, ctx.settings.server.port
    if host in ("0.0.0.0", "::", ""):
        host = "127.0.0.1"
    return f"http://{host}:{port}"


def endpoint_url(ctx: RouterContext, record: EndpointRecord) -> str:
    """The URL a client uses through this router: the endpoint's proxy base URL."""
    return f"{public_url(ctx)}/{record.name}" if record.state == "Running" else ""


def try_command(ctx: RouterContext, record: EndpointRecord) -> list[str]:
    """A curl that works against the endpoint through this router, one line per item."""
    base = public_url(ctx)
    if record.runtime.backend in ("openai",):
        url = f"{base}/v1/chat/completions"
        body = {
            "model": record.name,
            "max_tokens": 16,
            "messages": [{"role": "user", "content": "Hello"}],
        }
    else:
        url = f"{base}/{record.name}/generate"
        body = {"inputs": "Hello", "parameters": {"max_new_tokens": 16}}
    return [
        "curl -sS \\",
        '-H "Authorization: Bearer $API_KEY" \\',
        '-H "Content-Type: application/json" \\',
        f"{shlex.quote(url)} \\",
        f"-d {shlex.quote(orjson.dumps(body).decode())}",
    ]


def summary(ctx: RouterContext, record: EndpointRecord) -> dict[str, Any]:
    return {
        "endpointName": record.name,
        "modelName": record.model_name,
        "status": record.state,
        "endpoint": endpoint_url(ctx, record),
        "clusterName": record.cluster_name,
        "namespace": record.namespace,
    }


def describe(ctx: RouterContext, record: EndpointRecord) -> dict[str, Any]:
    workers = sorted(
        (w.public() for w in ctx.snapshot.endpoint(record.name)), key=lambda w: w["url"]
    )
    ready = any(w["status"] == "ready" for w in workers)
    host = URL(public_url(ctx)).host or ""
    return {
        **summary(ctx, record),
        "predictStatus": _condition(record, "PredictorReady")
        or ("Ready" if ready else ("NotReady" if record.state != "Failed" else "Failed")),
        "ingressStatus": _condition(record, "IngressReady")
        or ("Ready" if record.state == "Running" else "NotReady"),
        "reason": record.reason,
        "tryCommand": try_command(ctx, record),
        "dnsRecords": [{"dns": host, "type": "A" if _is_ip(host) else "CNAME", "value": host}],
        "gpuRequests": [{k: v for k, v in asdict(g).items() if k != "worker"} for g in record.gprs],
        "autoscaling": asdict(record.autoscaling),
        "workers": workers,
        "created": record.created,
        "modified": record.modified,
    }


def _condition(record: EndpointRecord, kind: str) -> str:
    """A KServe condition as Avesha words it ("" when the provider reports none)."""
    status = record.conditions.get(kind)
    if status is None:
        return ""
    if status == "True":
        return "Ready"
    return "Failed" if record.state == "Failed" else "NotReady"


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def add_routes(app: web.Application) -> None:
    app.router.add_post("/api/v1/auth", auth)
    app.router.add_post(BASE, create)
    app.router.add_get(BASE, list_or_describe)
    app.router.add_get(f"{BASE}/list", list_or_describe)
    app.router.add_delete(BASE, delete)
