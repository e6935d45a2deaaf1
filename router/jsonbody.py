"""JSON request bodies, read one way on every route: parsed by orjson, depth bounded.

Nesting deeper than `MAX_JSON_DEPTH` is a 400 wherever the router reads JSON (proxy
paths, `/route`, the control-plane APIs), so no code that walks a body (the cost
estimate, a spec reader) can be driven into deep recursion by a small, hostile body.
"""

from __future__ import annotations

from typing import Any

import orjson

from router.errors import ApiError

# Deep enough for any real payload (tool schemas nest a dozen levels), shallow enough
# that walking a body is cheap and nothing recursive can overflow.
MAX_JSON_DEPTH = 64


def too_deep(doc: Any, limit: int = MAX_JSON_DEPTH) -> bool:
    """True if `doc` nests lists and objects more than `limit` levels (iteratively)."""
    if not isinstance(doc, dict | list):
        return False
    stack: list[tuple[Any, int]] = [(doc, 1)]
    while stack:
        value, depth = stack.pop()
        if depth > limit:
            return True
        children = value.values() if isinstance(value, dict) else value
        for child in children:
            if isinstance(child, dict | list):
                stack.append((child, depth + 1))
    return False


def _deep_error() -> ApiError:
    return ApiError(
        400, "json_too_deep", f"the JSON body nests deeper than {MAX_JSON_DEPTH} levels"
    )


def loads_bounded(raw: bytes, *, tolerate_invalid: bool = False) -> Any:
    """`raw` parsed, or 400 (`bad_json`, `json_too_deep`).

    `tolerate_invalid`: a body that is not JSON at all gives None instead (the proxy
    forwards it; the worker answers it); one nested too deep is refused either way.
    """
    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        if exc.msg.startswith("depth limit"):  # orjson's own limit, above ours
            raise _deep_error() from None
        if tolerate_invalid:
            return None
        raise ApiError(400, "bad_json", f"request body is not valid JSON: {exc.msg}") from None
    # fewer brackets than the limit cannot nest deeper than it: skip the walk (the usual
    # body, counted in C)
    if raw.count(b"[") + raw.count(b"{") > MAX_JSON_DEPTH and too_deep(doc):
        raise _deep_error()
    return doc


def json_object(raw: bytes) -> dict[str, Any]:
    """`raw` as a JSON object, or a 400 ApiError."""
    doc = loads_bounded(raw) if raw.strip() else None
    if not isinstance(doc, dict):
        raise ApiError(400, "bad_request", "request body must be a JSON object")
    return doc
