"""The control-plane APIs in the OpenAPI document (router/openapi.py merges these in).

Avesha's operations answer in its envelope (`Envelope`), Bytez's errors are
`{"error": "..."}` (`BytezError`); docs/control-plane.md describes both.
"""

from __future__ import annotations

from typing import Any

_BEARER: list[dict[str, list[str]]] = [{"apiKey": []}]
_ENVELOPE = {"$ref": "#/components/schemas/Envelope"}
_BYTEZ_ERROR = {"$ref": "#/components/schemas/BytezError"}

SCHEMAS: dict[str, Any] = {
    "Envelope": {
        "type": "object",
        "required": ["statusCode", "status", "message", "data"],
        "properties": {
            "statusCode": {"type": "integer"},
            "status": {"type": "string"},
            "message": {"type": "string"},
            "data": {"nullable": True},
            "error": {
                "type": "object",
                "required": ["errorKey", "message", "data"],
                "properties": {
                    "errorKey": {"type": "string"},
                    "message": {"type": "string"},
                    "data": {"type": "string"},
                },
            },
        },
    },
    "BytezError": {
        "type": "object",
        "required": ["error"],
        "properties": {"error": {"type": "string"}},
    },
}

_GPU = {
    "type": "object",
    "nullable": True,
    "properties": {
        "gpuShape": {"type": "string"},
        "instanceType": {"type": "string"},
        "memoryPerGPU": {"type": "integer"},
        "numberOfGPUs": {"type": "integer"},
        "numberOfGPUNodes": {"type": "integer"},
        "exitDuration": {"type": "string"},
        "priority": {"type": "integer"},
    },
}
_AUTOSCALING = {
    "type": "object",
    "properties": {
        "min_workers": {"type": "integer"},
        "max_workers": {"type": "integer"},
        "target_util": {"type": "number"},
        "cold_mult": {"type": "number"},
        "min_load": {"type": "number"},
        "inactivity_timeout_s": {"type": "number", "nullable": True},
        "max_queue_time_s": {"type": "number"},
        "max_held_requests": {"type": "integer"},
    },
}
_CREATE = {
    "type": "object",
    "required": ["clusterName", "endpointName", "workspace"],
    "properties": {
        "clusterName": {"type": "string"},
        "endpointName": {"type": "string"},
        "workspace": {"type": "string"},
        "modelSpec": {
            "type": "object",
            "nullable": True,
            "properties": {
                "modelName": {"type": "string"},
                "storageURI": {"type": "string"},
                "args": {"type": "array", "items": {"type": "string"}},
                "resources": {"type": "object"},
            },
        },
        "rawModelSpec": {"type": "string", "nullable": True},
        "gpuSpec": _GPU,
        "autoscaling": _AUTOSCALING,
    },
}
_AVESHA_ERRORS = {
    "400": "Bad path, duplicated header or a bad token request",
    "401": "Missing or invalid API key",
    "403": "The key may not manage the workspace",
    "404": "No such endpoint in the workspace",
    "405": "Method not allowed",
    "408": "Body too slow to arrive",
    "409": "Name taken, limit reached, or the endpoint kept changing",
    "413": "Body too large",
    "422": "A field is wrong: the message names it",
    "503": "State store unreachable",
}
_WS = {"name": "workspace", "in": "query", "required": True, "schema": {"type": "string"}}
_EP = {"name": "endpoint", "in": "query", "required": False, "schema": {"type": "string"}}


def _avesha(
    summary: str,
    op_id: str,
    ok: str,
    body: dict[str, Any] | None = None,
    params: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    responses = {"200": ok, **_AVESHA_ERRORS}
    op: dict[str, Any] = {
        "operationId": op_id,
        "summary": summary,
        "tags": ["control"],
        "security": _BEARER,
        "responses": {
            code: {"description": text, "content": {"application/json": {"schema": _ENVELOPE}}}
            for code, text in sorted(responses.items())
        },
    }
    if body is not None:
        op["requestBody"] = {"required": True, "content": {"application/json": {"schema": body}}}
    if params:
        op["parameters"] = params
    return op


_BYTEZ_ERRORS = {
    "400": "Bad input (the message says which)",
    "401": "Missing or invalid API key",
    "403": "The key may not do this",
    "404": "Model not in the catalog, or not loaded",
    "405": "Method not allowed",
    "408": "Body too slow to arrive",
    "409": "The name is taken, or the model is being deleted",
    "413": "Body too large",
    "503": "The model is still starting, or no worker can take the run",
}
_MODEL_BODY = {
    "type": "object",
    "required": ["model"],
    "properties": {
        "model": {"type": "string"},
        "concurrency": {"type": "integer", "minimum": 1},
        "expirationPeriodSeconds": {"type": "number"},
        "prompt": {"type": "string"},
        "input": {},
        "params": {"type": "object"},
        "stream": {"type": "boolean"},
    },
}


def _bytez(summary: str, op_id: str, body: bool = True, stream: bool = False) -> dict[str, Any]:
    ok: dict[str, Any] = {"description": "OK", "content": {"application/json": {"schema": {}}}}
    if stream:
        ok["content"]["text/plain"] = {"schema": {"type": "string"}}
    op: dict[str, Any] = {
        "operationId": op_id,
        "summary": summary,
        "tags": ["models"],
        "security": _BEARER,
        "responses": {
            "200": ok,
            **{
                code: {"description": t, "content": {"application/json": {"schema": _BYTEZ_ERROR}}}
                for code, t in sorted(_BYTEZ_ERRORS.items())
            },
        },
    }
    if body:
        op["requestBody"] = {
            "required": True,
            "content": {"application/json": {"schema": _MODEL_BODY}},
        }
    return op


def paths() -> dict[str, Any]:
    base = "/api/v1/inference-endpoint"
    return {
        "/api/v1/auth": {
            "post": _avesha(
                "Trade an API key for an access token (the key itself)",
                "aveshaAuth",
                "The token",
                body={
                    "type": "object",
                    "required": ["apiKey"],
                    "properties": {"apiKey": {"type": "string"}},
                },
            )
        },
        base: {
            "post": _avesha(
                "Create an inference endpoint",
                "createEndpoint",
                "Accepted: data.endpointName",
                body=_CREATE,
            ),
            "get": _avesha(
                "List endpoints of a workspace, or describe one (with endpoint=)",
                "listOrDescribeEndpoints",
                "data.endpoints[] or data.endpoint",
                params=[_WS, _EP],
            ),
            "delete": _avesha(
                "Delete an endpoint (drain, stop workers, forget)",
                "deleteEndpoint",
                "Deleting",
                body={
                    "type": "object",
                    "required": ["workspace", "endpoint"],
                    "properties": {"workspace": {"type": "string"}, "endpoint": {"type": "string"}},
                },
            ),
        },
        f"{base}/list": {
            "get": _avesha(
                "List endpoints of a workspace", "listEndpoints", "data.endpoints[]", params=[_WS]
            )
        },
        "/model/list": {
            "get": _bytez("The model catalog (?task= filters)", "listModelsGet", body=False),
            "post": _bytez("The model catalog", "listModelsPost", body=False),
        },
        "/model/instances": {
            "get": _bytez("Loaded models", "instancesGet", body=False),
            "post": _bytez("Loaded models", "instancesPost", body=False),
        },
        "/model/job": {"post": _bytez("Queue a job that makes a model available", "modelJob")},
        "/model/load": {"post": _bytez("Start `concurrency` workers of a model", "modelLoad")},
        "/model/status": {"post": _bytez("A model's state and expiry", "modelStatus")},
        "/model/run": {
            "post": _bytez("Run a model (JSON, or a text stream)", "modelRun", stream=True)
        },
        "/model/delete": {"post": _bytez("Stop a loaded model", "modelDelete")},
    }
