"""A model stand-in: deterministic text at a controllable speed, in TGI and OpenAI formats.

Time to first token is `ttft_ms`; each stream then runs at `tokens_per_s`, but all
streams share `capacity` tokens/s (processor sharing), so a busy worker slows down like
a GPU does and the balancer has something real to balance.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import random
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import orjson
from aiohttp import web

from workers.backends.base import Backend

log = logging.getLogger(__name__)

_WORDS = ("the model routes each request to a worker that has capacity while tokens stream "
          "back quickly and the fleet stays balanced under load with signed tickets for "
          "every call so nothing is lost").split()
_DEFAULT_TOKENS = 16
_MAX_TOKENS = 4096


def _int(v: Any) -> int | None:
    return v if isinstance(v, int) and not isinstance(v, bool) else None


def max_tokens(payload: Any) -> int:
    """Tokens asked for: max_new_tokens, parameters.max_new_tokens or max_tokens."""
    n = None
    if isinstance(payload, dict):
        params = payload.get("parameters")
        n = (_int(payload.get("max_new_tokens"))
             or (_int(params.get("max_new_tokens")) if isinstance(params, dict) else None)
             or _int(payload.get("max_tokens")))
    return max(1, min(_MAX_TOKENS, n or _DEFAULT_TOKENS))


def prompt_of(payload: Any) -> str:
    if not isinstance(payload, dict):
        return ""
    for key in ("inputs", "prompt"):
        if isinstance(payload.get(key), str):
            return str(payload[key])
    messages = payload.get("messages")
    if isinstance(messages, list):
        return "\n".join(str(m.get("content", "")) for m in messages if isinstance(m, dict))
    return ""


def tokens_for(prompt: str, n: int) -> list[str]:
    """The same prompt always gives the same text (stable across processes)."""
    seed = int.from_bytes(hashlib.sha256(prompt.encode()).digest()[:8], "big")
    rng = random.Random(seed)
    return [" " + rng.choice(_WORDS) for _ in range(n)]


class SyntheticBackend(Backend):
    name = "synthetic"
    health_path = "/health"
    routes = ("/generate", "/generate_stream", "/v1/completions", "/v1/chat/completions")

    def __init__(self, capacity: float = 200.0, tokens_per_s: float = 100.0,
                 ttft_ms: float = 50.0, model: str = "synthetic") -> None:
        self.capacity = capacity
        self.tokens_per_s = tokens_per_s
        self.ttft_s = ttft_ms / 1000
        self.model = model
        self.active = 0  # streams producing tokens now

    async def ready(self) -> bool:
        return True

    def perf(self) -> float:
        return self.capacity

    def workload(self, path: str, payload: Any) -> float:
        return float(max_tokens(payload))

    async def _tokens(self, payload: Any) -> AsyncIterator[str]:
        await asyncio.sleep(self.ttft_s)
        self.active += 1
        try:
            for i, tok in enumerate(tokens_for(prompt_of(payload), max_tokens(payload))):
                if i:
                    rate = min(self.tokens_per_s, self.capacity / max(1, self.active))
                    await asyncio.sleep(1.0 / rate)
                yield tok
        finally:
            self.active -= 1

    async def serve(self, request: web.Request, path: str, payload: Any) -> web.StreamResponse:
        stream = isinstance(payload, dict) and payload.get("stream") is True
        if path == "/generate_stream" or (path == "/generate" and stream):
            return await self._sse(request, self._tgi_events(payload))
        if path == "/generate":
            text = "".join([t async for t in self._tokens(payload)])
            return _json({"generated_text": text})
        chat = path == "/v1/chat/completions"
        if stream:
            return await self._sse(request, self._openai_chunks(payload, chat), done=True)
        return _json(await self._openai_full(payload, chat))

    async def _sse(self, request: web.Request, events: AsyncIterator[bytes],
                   done: bool = False) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream",
                                           "Cache-Control": "no-cache"})
        await resp.prepare(request)
        try:
            async for event in events:
                await resp.write(event)
            if done:
                await resp.write(b"data: [DONE]\n\n")
            await resp.write_eof()
        except ConnectionResetError:
            log.debug("client went away mid-stream")
        return resp

    async def _tgi_events(self, payload: Any) -> AsyncIterator[bytes]:
        text = ""
        n = max_tokens(payload)
        i = 0
        async for tok in self._tokens(payload):
            text += tok
            last = i == n - 1
            yield b"data:" + orjson.dumps({
                "index": i, "token": {"id": i, "text": tok, "logprob": 0.0, "special": False},
                "generated_text": text if last else None,
                "details": {"finish_reason": "length", "generated_tokens": n} if last else None,
            }) + b"\n\n"
            i += 1

    def _head(self, chat: bool, chunk: bool) -> dict[str, Any]:
        kind = "chat.completion" if chat else "text_completion"
        return {"id": ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex[:24],
                "object": kind + ".chunk" if chat and chunk else kind,
                "created": int(time.time()), "model": self.model}

    async def _openai_chunks(self, payload: Any, chat: bool) -> AsyncIterator[bytes]:
        head = self._head(chat, chunk=True)
        if chat:
            yield _chunk(head, {"index": 0, "delta": {"role": "assistant", "content": ""},
                                "finish_reason": None})
        async for tok in self._tokens(payload):
            choice = ({"index": 0, "delta": {"content": tok}, "finish_reason": None} if chat
                      else {"index": 0, "text": tok, "logprobs": None, "finish_reason": None})
            yield _chunk(head, choice)
        final = ({"index": 0, "delta": {}, "finish_reason": "length"} if chat
                 else {"index": 0, "text": "", "logprobs": None, "finish_reason": "length"})
        yield _chunk(head, final)

    async def _openai_full(self, payload: Any, chat: bool) -> dict[str, Any]:
        text = "".join([t async for t in self._tokens(payload)])
        n = max_tokens(payload)
        prompt_tokens = max(1, len(prompt_of(payload)) // 4)
        choice: dict[str, Any] = (
            {"index": 0, "message": {"role": "assistant", "content": text},
             "finish_reason": "length"} if chat
            else {"index": 0, "text": text, "logprobs": None, "finish_reason": "length"})
        return {**self._head(chat, chunk=False), "choices": [choice],
                "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": n,
                          "total_tokens": prompt_tokens + n}}


def _chunk(head: dict[str, Any], choice: dict[str, Any]) -> bytes:
    return b"data: " + orjson.dumps({**head, "choices": [choice]}) + b"\n\n"


def _json(body: Any) -> web.Response:
    return web.Response(body=orjson.dumps(body), content_type="application/json")
