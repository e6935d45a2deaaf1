"""What a request weighs, estimated from its payload alone (pure: no I/O, never raises).

Used when the worker serves without tickets (`--no-verify`); with a ticket, its `cost`
is the weight. Units follow the router's estimate (docs/protocol.md, "The cost of a
proxied request"): tokens for text (tokens asked for + prompt length / 4), width x
height x steps for images.
"""

from __future__ import annotations

import math
from typing import Any

TGI_DEFAULT_NEW_TOKENS = 20  # TGI's own default for parameters.max_new_tokens
OPENAI_DEFAULT_MAX_TOKENS = 16  # the OpenAI completions API's documented default
DEFAULT_COST = 1.0  # a request that says nothing about its size
_MAX_COST = 1e12
_CHARS_PER_TOKEN = 4


def _number(v: Any) -> float | None:
    if isinstance(v, bool) or not isinstance(v, int | float):
        return None
    return float(v) if math.isfinite(v) and v >= 0 else None


def text_length(v: Any) -> int:
    """Characters of text in a prompt, a list of prompts, messages or content parts."""
    if isinstance(v, str):
        return len(v)
    if isinstance(v, list):
        if v and all(isinstance(x, int) and not isinstance(x, bool) for x in v):
            return len(v) * _CHARS_PER_TOKEN  # already tokens: count each as one
        return sum(text_length(x) for x in v)
    if isinstance(v, dict):
        return text_length(v.get("content")) + text_length(v.get("text"))
    return 0


def _tokens(chars: int) -> float:
    return chars / _CHARS_PER_TOKEN


def tgi_workload(path: str, payload: Any) -> float:
    """TGI: parameters.max_new_tokens (default 20) + len(inputs) / 4; /v1/*: OpenAI's."""
    if path.startswith("/v1/"):
        return openai_workload(path, payload)
    if not isinstance(payload, dict):
        return float(TGI_DEFAULT_NEW_TOKENS)
    params = payload.get("parameters")
    new = _number(params.get("max_new_tokens")) if isinstance(params, dict) else None
    if new is None:
        new = float(TGI_DEFAULT_NEW_TOKENS)
    return min(new + _tokens(text_length(payload.get("inputs"))), _MAX_COST)


def openai_workload(path: str, payload: Any) -> float:
    """OpenAI: max_tokens or max_completion_tokens (default 16) + prompt / 4.

    Embeddings generate nothing: their weight is the input length / 4 (at least 1).
    """
    if path == "/v1/models":
        return 0.0  # a listing: no model time
    if not isinstance(payload, dict):
        return float(OPENAI_DEFAULT_MAX_TOKENS)
    if path == "/v1/embeddings":
        return min(max(1.0, _tokens(text_length(payload.get("input")))), _MAX_COST)
    new = _number(payload.get("max_tokens"))
    if new is None:
        new = _number(payload.get("max_completion_tokens"))
    if new is None:
        new = float(OPENAI_DEFAULT_MAX_TOKENS)
    prompt = text_length(payload.get("prompt")) + text_length(payload.get("messages"))
    return min(new + _tokens(prompt), _MAX_COST)


def image_workload(payload: Any) -> float:
    """Image payloads (width and height): width x height x num_inference_steps; else 1.

    Steps default to 1, as in the router's estimate, so both sides agree on the units.
    """
    if not isinstance(payload, dict):
        return DEFAULT_COST
    width, height = _number(payload.get("width")), _number(payload.get("height"))
    if width is None or height is None:
        return DEFAULT_COST
    steps = _number(payload.get("num_inference_steps"))
    return min(width * height * (steps or 1.0), _MAX_COST)
