"""The OpenAPI 3 document of every public route, served at `GET /openapi.json`.

Kept true by tests/router/test_openapi.py, which calls each documented operation.
"""

from __future__ import annotations

from typing import Any

import orjson
from aiohttp import web

_ERROR = {"$ref": "#/components/schemas/Error"}
_BEARER: list[dict[str, list[str]]] = [{"apiKey": []}]


def _op(
    summary: str,
    *,
    tag: str,
    body: dict[str, Any] | None = None,
    responses: dict[str, str] | None = None,
    secure: bool = True,
    params: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    # every route of both servers refuses a bad path or an ambiguous head (docs/protocol.md)
    responses = {"400": "Bad path or duplicated header", **(responses or {"200": "OK"})}
    op: dict[str, Any] = {
        "summary": summary,
        "tags": [tag],
        "responses": {
            code: {
                "description": text,
                **(
                    {"content": {"application/json": {"schema": _ERROR}}} if code[0] in "45" else {}
                ),
            }
            for code, text in sorted(responses.items())
        },
    }
    if secure:
        op["security"] = _BEARER
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
        # 2**53 - 1: the largest number every JSON reader holds exactly (DESIGN §3.2)
        "cost": {"type": "number", "minimum": 0, "maximum": 9007199254740991},
        "api_key": {"type": "string"},
        "request_idx": {"type": "integer", "minimum": 0, "maximum": 9007199254740991},
        "replay_timeout": {"type": "number", "minimum": 0, "maximum": 9007199254740991},
        "session_id": {"type": "string"},
    },
}
_ROUTE = _op(
    "Pick a worker and get a signed ticket (ticket mode)",
    tag="ticket",
    body=_ROUTE_BODY,
    secure=False,
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
    proxy_op = _op(
        "Forward to a worker of the endpoint (proxy mode)",
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
                }
            },
        },
        "paths": {
            "/route": {"post": _ROUTE},
            "/route/": {"post": _ROUTE},
            "/pubkey": {"get": _op("The signing public key (PEM)", tag="keys", secure=False)},
            "/pubkey/": {"get": _op("The signing public key (PEM)", tag="keys", secure=False)},
            "/.well-known/jwks.json": {
                "get": _op("Every verifying key (JWKS)", tag="keys", secure=False)
            },
            "/livez": {"get": _op("The process serves", tag="health", secure=False)},
            "/readyz": {
                "get": _op(
                    "Store reachable and key loaded",
                    tag="health",
                    secure=False,
                    responses={"200": "Ready", "503": "Not ready"},
                )
            },
            "/metrics": {"get": _op("Prometheus metrics", tag="health", secure=False)},
            "/openapi.json": {"get": _op("This document", tag="health", secure=False)},
            "/api/v1/workers": {
                "get": _op(
                    "List workers (admin)",
                    tag="admin",
                    params=[{"name": "endpoint", "in": "query", "schema": {"type": "string"}}],
                    responses={"200": "Workers", "401": "No key", "403": "Not admin"},
                ),
                "post": _op(
                    "Register a worker (admin or worker token)",
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
                    tag="proxy",
                    body=_OPENAI_BODY,
                    responses={**_PROXY_RESPONSES, "400": "Bad JSON or no model"},
                )
            },
            "/v1/completions": {
                "post": _op(
                    "OpenAI completions, routed by `model`",
                    tag="proxy",
                    body=_OPENAI_BODY,
                    responses={**_PROXY_RESPONSES, "400": "Bad JSON or no model"},
                )
            },
            "/v1/embeddings": {
                "post": _op(
                    "OpenAI embeddings, routed by `model`",
                    tag="proxy",
                    body=_OPENAI_BODY,
                    responses={**_PROXY_RESPONSES, "400": "Bad JSON or no model"},
                )
            },
            "/v1/models": {
                "get": _op(
                    "Endpoints this key may use, as models",
                    tag="proxy",
                    responses={"200": "Models", "401": "Missing or invalid API key"},
                )
            },
            "/{endpoint}/{path}": {op: proxy_op for op in ("get", "post", "put", "delete")},
            "/{endpoint}": {
                "post": _op(
                    "Forward to the worker's `/` (TGI compat route)",
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
