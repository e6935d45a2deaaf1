"""The worker's error answers: one JSON shape that this project's clients and TGI's read.

    {"error": {"code": "ticket_replayed", "message": "reqnum was already used"},
     "error_type": "validation"}

`error.code` and `error.message` are the project's shape (docs/protocol.md, "Errors"). TGI's own
errors are `{"error": "<message>", "error_type": "<type>"}`; the two cannot share the key
`error`, so the object stays and `error_type` joins it. That is all TGI clients need:
Hugging Face's `text-generation` package (`errors.parse_error`) and `huggingface_hub`
pick the exception class from `error_type` and pass the `error` value to it, so a
refused ticket raises `ValidationError` whose `args[0]["code"]` names the check that
failed, a full queue or a draining worker raises `OverloadedError` (route again), and a
worker or model server failure `GenerationError`. Without an `error_type` (404, 405)
they fall back on the status: 404 is `NotFoundError`. The table of types is
`router/tgi.py`'s, which the router's own errors on TGI's paths use too.
"""

from __future__ import annotations

from typing import Any

import orjson
from aiohttp import web

from router.tgi import TGI_ERROR_TYPES  # one table for the worker and the router


def error_body(status: int, code: str, message: str, **extra: Any) -> dict[str, Any]:
    """The JSON body of an error answer (see the module docstring)."""
    body: dict[str, Any] = {"error": {"code": code, "message": message}}
    error_type = TGI_ERROR_TYPES.get(status)
    if error_type is not None:
        body["error_type"] = error_type
    body.update(extra)
    return body


def error_response(
    status: int, code: str, message: str, headers: dict[str, str] | None = None, **extra: Any
) -> web.Response:
    """An error answer as a JSON response."""
    return web.Response(
        body=orjson.dumps(error_body(status, code, message, **extra)),
        status=status,
        headers=headers,
        content_type="application/json",
    )
