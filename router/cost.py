"""What a request weighs, as a pure function of its header and body (docs/protocol.md).

`estimate` is what the router balances a proxied request by; `payload_cost` is the part
that reads the body, which the worker also uses to refuse a ticket bought too cheaply
for its payload (docs/protocol.md, "The checks, in order"). Both walk the body without
recursion: a client's JSON must not be able to raise RecursionError (a 500) however
deeply it nests.
"""

from __future__ import annotations

import math
from typing import Any

DEFAULT_MAX_COST = 1e9  # any single request costlier than this is refused (400)
# Text nested in more lists/objects than this (the body itself counts as one) counts for
# nothing; the router refuses JSON nested deeper anyway, so this only bounds the walk.
MAX_DEPTH = 64
_CHARS_PER_TOKEN = 4
_TEXT_FIELDS = ("prompt", "inputs", "messages", "input")


class BadCost(ValueError):
    """The X-Cost header is not a usable number, or the request costs more than allowed."""


def _num(v: Any) -> float | None:
    if isinstance(v, bool) or not isinstance(v, int | float):
        return None
    return float(v) if math.isfinite(v) and v >= 0 else None


def _text_len(value: Any) -> int:
    """Characters in a prompt, a list of prompts or chat messages (their `content`)."""
    if isinstance(value, str):
        return len(value)
    if not isinstance(value, list | dict):
        return 0
    total = 0
    stack = [(value, 1)]  # (a list or object, how many enclose it, the body included)
    while stack:
        v, depth = stack.pop()
        for x in v if isinstance(v, list) else (v.get("content"),):
            if isinstance(x, str):
                total += len(x)
            elif isinstance(x, list | dict) and depth + 1 < MAX_DEPTH:
                stack.append((x, depth + 1))
    return total


def payload_cost(body: Any) -> float | None:
    """The cost the body itself asks for, or None when it says nothing about it.

    Images (width and height): width * height * num_inference_steps (1 if absent).
    Text: max_tokens / max_completion_tokens / max_new_tokens / parameters.max_new_tokens
    (the first given), plus prompt length / 4 (prompt, inputs, messages, input).
    """
    if not isinstance(body, dict):
        return None
    width, height = _num(body.get("width")), _num(body.get("height"))
    if width is not None and height is not None:
        steps = _num(body.get("num_inference_steps")) or 1.0
        return width * height * steps
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
    prompt = sum(_text_len(body[k]) for k in _TEXT_FIELDS if k in body)
    if out is None and prompt == 0:
        return None
    return (out or 0.0) + prompt / _CHARS_PER_TOKEN


def estimate(
    header: str | None, body: Any, default: float, max_cost: float = DEFAULT_MAX_COST
) -> float:
    """`X-Cost` if given; else `payload_cost(body)`; else `default`.

    Raises BadCost for an X-Cost that is not a finite number in [0, max_cost], and for a
    body whose own cost is above `max_cost` (the router answers 400).
    """
    if header is not None:
        try:
            value = float(header)
        except ValueError:
            raise BadCost("X-Cost must be a number") from None
        if not math.isfinite(value) or value < 0 or value > max_cost:
            raise BadCost(f"X-Cost must be a finite number between 0 and {max_cost:g}")
        return value
    cost = payload_cost(body)
    if cost is None:
        return default
    if not cost <= max_cost:  # inf from width * height * steps included
        raise BadCost(f"this request would cost {cost:g}, above the limit of {max_cost:g}")
    return cost
