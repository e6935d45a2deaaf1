"""What a proxied request weighs (DESIGN §7), as a pure function of its header and body."""

from __future__ import annotations

import math
from typing import Any

_MAX_COST = 1e12


class BadCost(ValueError):
    """The client's X-Cost header is not a usable number."""


def _num(v: Any) -> float | None:
    if isinstance(v, bool) or not isinstance(v, int | float):
        return None
    return float(v) if math.isfinite(v) and v >= 0 else None


def _text_len(v: Any) -> int:
    if isinstance(v, str):
        return len(v)
    if isinstance(v, list):
        return sum(_text_len(x) for x in v)
    if isinstance(v, dict):
        return _text_len(v.get("content"))
    return 0


def estimate(header: str | None, body: Any, default: float, max_cost: float = _MAX_COST) -> float:
    """`X-Cost` if given; else tokens or pixels asked for in the body; else `default`.

    Tokens: max_tokens / max_completion_tokens / max_new_tokens / parameters.max_new_tokens,
    plus prompt length / 4. Images: width * height * num_inference_steps.
    """
    if header is not None:
        try:
            value = float(header)
        except ValueError:
            raise BadCost("X-Cost must be a number") from None
        if not math.isfinite(value) or value < 0:
            raise BadCost("X-Cost must be a finite number >= 0")
        if value > max_cost:
            raise BadCost(f"X-Cost must be at most {max_cost:g} (the endpoint's max_cost)")
        return value
    if not isinstance(body, dict):
        return default
    width, height = _num(body.get("width")), _num(body.get("height"))
    if width is not None and height is not None:
        steps = _num(body.get("num_inference_steps")) or 1.0
        return min(width * height * steps, _MAX_COST)
    params = body.get("parameters")
    out = None
    for v in (
        body.get("max_tokens"),
        body.get("max_completion_tokens"),
        body.get("max_new_tokens"),
        params.get("max_new_tokens") if isinstance(params, dict) else None,
    ):
        out = _num(v)
        if out is not None:
            break
    prompt = (
        _text_len(body.get("prompt"))
        + _text_len(body.get("inputs"))
        + _text_len(body.get("messages"))
        + _text_len(body.get("input"))
    )
    if out is None and prompt == 0:
        return default
    return min((out or 0.0) + prompt / 4, _MAX_COST)
