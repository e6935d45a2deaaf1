"""The OpenAPI 3 document of every public route, served at `GET /openapi.json`.

Every operation has an `operationId` and an explicit `security` (`[]` on the public
ones); `/route`'s 200 answer is a `Ticket` or a `NoWorker` breakdown (docs/protocol.md).
Kept true by tests/router/test_openapi.py, which calls each documented operation and
checks answers against these schemas, and by tests/security/test_schemathesis.py.
"""

from __future__ import annotations

from typing import Any

import orjson
from aiohttp import web

from router.control import openapi as control_openapi

_ERROR = {"$ref": "#/components/schemas/Error"}
_BEARER: list[dict[str, list[str]]] = [{"apiKey": []}]
_PUBLIC: list[dict[str, list[str]]] = []  # explicit: no key, whatever the global default
# 2**53 - 1: the largest number every JSON reader holds exactly (docs/protocol.md)
_MAX_SAFE = 9007199254740991


def _op(
    summary: str,
    *,
    op_id: str,
    tag: str,
    body: dict[str, Any] | None = None,
    responses: dict[str, str] | None = None,
    secure: bool = True,
    params: list[dict[str, Any]] | None = None,
    ok_schema: dict[str, Any] | None = None,
) -> dict[str, Any]:
    # every route of both servers refuses a bad path or an ambiguous head (docs/protocol.md)
    responses = {"400": "Bad path or duplicated header", **(responses or {"200": "OK"})}

    def content(code: str) -> dict[str, Any]:
        if code[0] in "45":
            return {"content": {"application/json": {"schema": _ERROR}}}
        if code == "200" and ok_schema is not None:
            return {"content": {"application/json": {"schema": ok_schema}}}
        return {}

    op: dict[str, Any] = {
        "operationId": op_id,
        "summary": summary,
        "tags": [tag],
        "responses": {
            code: {"description": text, **content(code)} for code, text in sorted(responses.items())
        },
        "security": _BEARER if secure else _PUBLIC,
    }
    if body is not None:
        op["requestBody"] = {"required": True, "content": {"application/json": {"schema": body}}}
    if params:
        op["parameters"] = params
    return op


_ROUTE_BODY = {
    "type": "object",
    "required": ["endpoint"],
    "properties": {
        "endpoint": {"type": "string"},
        "cost": {"type": "number", "minimum": 0, "maximum": _MAX_SAFE},
        "api_key": {"type": "string"},
        "request_idx": {"type": "integer", "minimum": 0, "maximum": _MAX_SAFE},
        "replay_timeout": {"type": "number", "minimum": 0, "maximum": _MAX_SAFE},
        "session_id": {"type": "string"},
        # cache_aware endpoints (docs/prefix.md); never signed into the ticket
        "prefix_hashes": {
            "type": "array",
            "maxItems": 256,
            "items": {"type": "string", "pattern": "^[0-9a-f]{16}$"},
        },
        "messages": {"type": "array", "maxItems": 4096, "items": {"type": "object"}},
        "prompt": {"type": "string"},
    },
}
_SAFE_NUMBER = {"type": "number", "minimum": -_MAX_SAFE, "maximum": _MAX_SAFE}
_SAFE_INTEGER = {"type": "integer", "minimum": 0, "maximum": _MAX_SAFE}
# Printable ASCII without "\<>&: what every JSON encoder writes as itself (signed as served).
_PLAIN = {"type": "string", "pattern": r"^[ !#-%'-;=?-\[\]-~]*$"}
_TICKET = {
    "type": "object",
    "description": "A signed ticket: the worker to call and what it may serve. The signature "
    "covers every field but `signature` and `__request_id` (docs/protocol.md).",
    "required": [
        "cost",
        "endpoint",
        "expires_at",
        "key_id",
        "reqnum",
        "request_idx",
        "url",
        "signature",
        "__request_id",
    ],
    "additionalProperties": False,
    "properties": {
        "cost": _SAFE_NUMBER,
        "endpoint": _PLAIN,
        "expires_at": _SAFE_NUMBER,
        "key_id": _PLAIN,
        "reqnum": _SAFE_INTEGER,
        "request_idx": _SAFE_INTEGER,
        "url": _PLAIN,
        "signature": {"type": "string", "description": "standard base64"},
        "__request_id": {"type": "string"},
    },
}
_STATUS_COUNTS = {
    "type": "object",
    "required": ["ready", "loading", "unhealthy", "draining"],
    "properties": {
        k: {"type": "integer", "minimum": 0} for k in ("ready", "loading", "unhealthy", "draining")
    },
}
_NO_WORKER = {
    "type": "object",
    "description": "No worker can take the request now: no `url`; poll again after "
    "`retry_after_s` (also the Retry-After header), sending `request_idx` back.",
    "required": ["endpoint", "status", "retry_after_s", "reason", "request_idx"],
    "not": {"required": ["url"]},
    "properties": {
        "endpoint": {"type": "string"},
        "status": {"$ref": "#/components/schemas/WorkerStatus"},
        "retry_after_s": {"type": "number", "minimum": 0},
        "reason": {"type": "string", "enum": ["no_ready_worker", "all_workers_busy"]},
        "request_idx": _SAFE_INTEGER,
    },
}
_ROUTE_ANSWER = {
    "oneOf": [{"$ref": "#/components/schemas/Ticket"}, {"$ref": "#/components/schemas/NoWorker"}]
}


def _route(op_id: str) -> dict[str, Any]:
    return _op(
        "Pick a worker and get a signed ticket (ticket mode)",
        op_id=op_id,
        tag="ticket",
        body=_ROUTE_BODY,
        secure=False,
        ok_schema=_ROUTE_ANSWER,
        responses={
            "200": "A ticket, or (no `url`) the worker status breakdown to poll on",
            "400": "Bad input",
            "401": "Missing or invalid API key",
            "404": "Unknown endpoint, or one this key may not use",
            "408": "Body too slow to arrive",
            "413": "Body too large",
            "429": "Over the key's rate limit",
            "503": "State store unreachable",
        },
    )


def _pubkey(op_id: str) -> dict[str, Any]:
    return _op("The signing public key (PEM)", op_id=op_id, tag="keys", secure=False)


_WORKER_ID = [{"name": "worker_id", "in": "path", "required": True, "schema": {"type": "string"}}]
_PROXY_PARAMS = [
    {"name": "endpoint", "in": "path", "required": True, "schema": {"type": "string"}},
    {
        "name": "path",
        "in": "path",
        "required": True,
        "schema": {"type": "string"},
        "description": "worker path, may contain /",
    },
]
_PROXY_RESPONSES = {
    "200": "The worker's answer, streamed as it arrives",
    "400": "Bad path, duplicated header, bad X-Cost or cost, JSON nested too deep",
    "401": "Missing or invalid API key",
    "404": "Unknown endpoint, one this key may not use, or a worker's own route",
    "408": "Body too slow to arrive",
    "413": "Body over the endpoint's limit",
    "429": "Over the key's rate or in-flight limit",
    "502": "The worker failed",
    "503": "No worker can take the request",
    "504": "Worker timed out",
    "default": "Any other status is the worker's own answer, passed through",
}
_OPENAI_BODY = {
    "type": "object",
    "required": ["model"],
    "properties": {"model": {"type": "string"}},
}


def document() -> dict[str, Any]:
    def proxy_op(method: str) -> dict[str, Any]:
        return _op(
            "Forward to a worker of the endpoint (proxy mode)",
            op_id=f"proxy{method.capitalize()}",
            tag="proxy",
            params=_PROXY_PARAMS,
            responses=_PROXY_RESPONSES,
        )

    return {
        "openapi": "3.0.3",
        "info": {
            "title": "inference-router",
            "version": "0.1.0",
            "description": "Inference request router and load-balancing proxy.",
        },
        "components": {
            "securitySchemes": {"apiKey": {"type": "http", "scheme": "bearer"}},
            "schemas": {
                "Error": {
                    "type": "object",
                    "required": ["error"],
                    "properties": {
                        "error": {
                            "type": "object",
                            "required": ["code", "message"],
                            "properties": {
                                "code": {"type": "string"},
                                "message": {"type": "string"},
                            },
                        }
                    },
                },
                "Ticket": _TICKET,
                "NoWorker": _NO_WORKER,
                "WorkerStatus": _STATUS_COUNTS,
                **control_openapi.SCHEMAS,
            },
        },
        "paths": {
            "/route": {"post": _route("route")},
            "/route/": {"post": _route("routeSlash")},
            "/pubkey": {"get": _pubkey("pubkey")},
            "/pubkey/": {"get": _pubkey("pubkeySlash")},
            "/.well-known/jwks.json": {
                "get": _op("Every verifying key (JWKS)", op_id="jwks", tag="keys", secure=False)
            },
            "/livez": {"get": _op("The process serves", op_id="livez", tag="health", secure=False)},
            "/readyz": {
                "get": _op(
                    "Store reachable and key loaded",
                    op_id="readyz",
                    tag="health",
                    secure=False,
                    responses={"200": "Ready", "503": "Not ready"},
                )
            },
            "/metrics": {
                "get": _op("Prometheus metrics", op_id="metrics", tag="health", secure=False)
            },
            "/openapi.json": {
                "get": _op("This document", op_id="openapi", tag="health", secure=False)
            },
            "/api/v1/workers": {
                "get": _op(
                    "List workers (admin)",
                    op_id="listWorkers",
                    tag="admin",
                    params=[{"name": "endpoint", "in": "query", "schema": {"type": "string"}}],
                    responses={"200": "Workers", "401": "No key", "403": "Not admin"},
                ),
                "post": _op(
                    "Register a worker (admin or worker token)",
                    op_id="registerWorker",
                    tag="admin",
                    body={
                        "type": "object",
                        "required": ["endpoint", "url"],
                        "properties": {
                            "endpoint": {"type": "string"},
                            "url": {"type": "string"},
                            "perf": {"type": "number"},
                            "max_load": {"type": "number"},
                        },
                    },
                    responses={
                        "200": "Already known",
                        "201": "Registered",
                        "400": "Bad input",
                        "401": "No key",
                        "403": "Not allowed",
                        "404": "Unknown endpoint",
                    },
                ),
            },
            "/api/v1/workers/{worker_id}/drain": {
                "post": _op(
                    "Stop sending new work to a worker",
                    op_id="drainWorker",
                    tag="admin",
                    params=_WORKER_ID,
                    responses={
                        "200": "Draining",
                        "401": "No key",
                        "403": "Not allowed",
                        "404": "Unknown worker",
                    },
                )
            },
            "/api/v1/workers/{worker_id}": {
                "delete": _op(
                    "Forget a registered worker",
                    op_id="removeWorker",
                    tag="admin",
                    params=_WORKER_ID,
                    responses={
                        "200": "Removed",
                        "401": "No key",
                        "403": "Not allowed",
                        "404": "Unknown worker",
                        "409": "Configured worker",
                    },
                )
            },
            "/v1/chat/completions": {
                "post": _op(
                    "OpenAI chat completions, routed by `model`",
                    op_id="chatCompletions",
                    tag="proxy",
                    body=_OPENAI_BODY,
                    responses={**_PROXY_RESPONSES, "400": "Bad JSON or no model"},
                )
            },
            "/v1/completions": {
                "post": _op(
                    "OpenAI completions, routed by `model`",
                    op_id="completions",
                    tag="proxy",
                    body=_OPENAI_BODY,
                    responses={**_PROXY_RESPONSES, "400": "Bad JSON or no model"},
                )
            },
            "/v1/embeddings": {
                "post": _op(
                    "OpenAI embeddings, routed by `model`",
                    op_id="embeddings",
                    tag="proxy",
                    body=_OPENAI_BODY,
                    responses={**_PROXY_RESPONSES, "400": "Bad JSON or no model"},
                )
            },
            "/v1/models": {
                "get": _op(
                    "Endpoints this key may use, as models",
                    op_id="listModels",
                    tag="proxy",
                    responses={"200": "Models", "401": "Missing or invalid API key"},
                )
            },
            **control_openapi.paths(),
            "/{endpoint}/{path}": {m: proxy_op(m) for m in ("get", "post", "put", "delete")},
            "/{endpoint}": {
                "post": _op(
                    "Forward to the worker's `/` (TGI compat route)",
                    op_id="proxyRoot",
                    tag="proxy",
                    params=_PROXY_PARAMS[:1],
                    responses=_PROXY_RESPONSES,
                )
            },
        },
    }


_DOC = orjson.dumps(document())


async def openapi(request: web.Request) -> web.Response:
    return web.Response(body=_DOC, content_type="application/json")
