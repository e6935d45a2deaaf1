"""A model stand-in: deterministic text at a controllable speed, in TGI and OpenAI formats.

`POST /generate` with `Accept: image/png` (or `image/*`) answers a small deterministic
PNG instead, so binary answers can be tested end to end without a diffusion model.

The first token comes after `ttft_ms`; then each stream runs at `tokens_per_s`, but all
streams in flight share `capacity` tokens/s (processor sharing: with n in flight each
gets min(tokens_per_s, capacity / n)), so a busy worker slows down like a GPU does and
the balancer has something real to balance. Cost units are tokens: perf() = capacity.

With `kv_cache_tokens` the worker models a prefix KV cache (kvcache.py): only the
prompt tokens it does not hold are prefilled, at `prefill_tokens_per_s`, one request's
prefill at a time (prefill is compute-bound: requests queue for it), before the
`ttft_ms` every request waits. Both off by default: no prefill time, nothing cached.
Its hit rate is on /metrics (worker_prefix_cache_{hit,miss}_tokens_total).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import random
import time
import uuid
from collections.abc import AsyncGenerator
from contextlib import aclosing
from typing import Any

import orjson
from aiohttp import web

from workers.backends.base import Backend
from workers.backends.kvcache import PrefixCache
from workers.backends.png import pattern_png
from workers.errors import error_response

log = logging.getLogger(__name__)

WORDS = (
    "the model routes each request to a worker that has capacity while tokens stream "
    "back quickly and the fleet stays balanced under load with signed tickets for "
    "every call so nothing is lost"
).split()
DEFAULT_TOKENS = 16
IMAGE_SIZE = 64  # default width and height of a synthetic picture
MAX_IMAGE_SIZE = 256
MAX_TOKENS = 4096
_TOKEN_ID_BASE = 1000  # fake vocabulary ids, clear of the usual special tokens

Token = tuple[int, str]


class BadRequest(Exception):
    """The payload is not a request this route understands."""


def _count(v: Any) -> int | None:
    if isinstance(v, bool):
        return None
    if isinstance(v, int):
        return v
    if isinstance(v, float) and v.is_integer():
        return int(v)
    return None


def max_tokens(payload: Any) -> int:
    """Tokens to generate: max_new_tokens, parameters.max_new_tokens or max_tokens."""
    n: int | None = None
    if isinstance(payload, dict):
        params = payload.get("parameters")
        candidates = (
            payload.get("max_new_tokens"),
            params.get("max_new_tokens") if isinstance(params, dict) else None,
            payload.get("max_tokens"),
            payload.get("max_completion_tokens"),
        )
        n = next((c for c in map(_count, candidates) if c is not None), None)
    return max(1, min(MAX_TOKENS, DEFAULT_TOKENS if n is None else n))


def prompt_of(path: str, payload: Any) -> str:
    """The prompt text of a request to `path`; raise BadRequest if it has none."""
    if not isinstance(payload, dict):
        raise BadRequest("the request body must be a JSON object")
    if path in ("/", "/generate", "/generate_stream"):
        inputs = payload.get("inputs")
        if not isinstance(inputs, str):
            raise BadRequest("'inputs' (a string) is required")
        return inputs
    if path == "/v1/completions":
        prompt = payload.get("prompt")
        if isinstance(prompt, list) and all(isinstance(p, str) for p in prompt):
            return "\n".join(prompt)
        if not isinstance(prompt, str):
            raise BadRequest("'prompt' (a string or a list of strings) is required")
        return prompt
    messages = payload.get("messages")
    if not isinstance(messages, list) or not messages:
        raise BadRequest("'messages' (a non-empty list) is required")
    return "\n".join(_content_text(m) for m in messages)


def _content_text(message: Any) -> str:
    if not isinstance(message, dict):
        raise BadRequest("each message must be an object")
    content = message.get("content")
    if content is None or isinstance(content, str):
        return content or ""
    if isinstance(content, list):  # content parts: [{"type": "text", "text": ...}, ...]
        return " ".join(
            p["text"] for p in content if isinstance(p, dict) and isinstance(p.get("text"), str)
        )
    raise BadRequest("message content must be a string or a list of parts")


def tokens_for(prompt: str, n: int) -> list[Token]:
    """The same prompt always gives the same tokens, in any process (no hash() salt)."""
    seed = int.from_bytes(hashlib.sha256(prompt.encode()).digest()[:8], "big")
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        i = rng.randrange(len(WORDS))
        out.append((_TOKEN_ID_BASE + i, " " + WORDS[i]))
    return out


class SyntheticBackend(Backend):
    name = "synthetic"
    health_path = "/health"
    # "/" is TGI's compat route (Hugging Face's `text-generation` client posts there):
    # a JSON list of one result, or the /generate_stream events with "stream": true.
    routes = ("/", "/generate", "/generate_stream", "/v1/completions", "/v1/chat/completions")

    def __init__(
        self,
        capacity: float = 800.0,
        tokens_per_s: float = 200.0,
        ttft_ms: float = 50.0,
        model: str = "synthetic",
        kv_cache_tokens: int = 0,
        prefill_tokens_per_s: float = 0.0,
        block_chars: int = 64,
    ) -> None:
        self.capacity = capacity
        self.tokens_per_s = tokens_per_s
        self.ttft_s = ttft_ms / 1000
        self.model = model
        self.active = 0  # requests generating now (they share `capacity`)
        self.cache = PrefixCache(kv_cache_tokens, block_chars)
        self.prefill_tokens_per_s = prefill_tokens_per_s
        self._prefill = asyncio.Lock()  # one prefill at a time

    def prefix_cache_tokens(self) -> tuple[int, int] | None:
        return self.cache.hit_tokens, self.cache.miss_tokens

    async def ready(self) -> bool:
        return True

    def perf(self) -> float:
        return self.capacity

    def workload(self, path: str, payload: Any) -> float:
        return float(max_tokens(payload))

    def rate(self) -> float:
        """Tokens/s one stream gets now."""
        return min(self.tokens_per_s, self.capacity / max(1, self.active))

    async def generate(self, prompt: str, n: int) -> AsyncGenerator[Token, None]:
        """Yield `n` tokens at the shared speed; close it (aclosing) to free its share."""
        uncached = self.cache.admit(prompt)
        if self.prefill_tokens_per_s > 0 and uncached:
            async with self._prefill:
                await asyncio.sleep(uncached / self.prefill_tokens_per_s)
        self.active += 1
        try:
            await asyncio.sleep(self.ttft_s)
            for i, token in enumerate(tokens_for(prompt, n)):
                if i:
                    await asyncio.sleep(1.0 / self.rate())
                yield token
        finally:
            self.active -= 1

    async def serve(self, request: web.Request, path: str, payload: Any) -> web.StreamResponse:
        if path == "/generate" and wants_image(request.headers.get("Accept", "")):
            return await self._image(payload)
        try:
            prompt = prompt_of(path, payload)
        except BadRequest as exc:
            return error_response(400, "bad_request", str(exc))
        n = max_tokens(payload)
        stream = payload.get("stream") is True
        if path == "/generate_stream" or (path in ("/", "/generate") and stream):
            return await _sse(request, self._tgi_events(payload, prompt, n))
        if path == "/generate":
            return _json(await self._tgi_full(payload, prompt, n))
        if path == "/":
            return _json([await self._tgi_full(payload, prompt, n)])
        chat = path == "/v1/chat/completions"
        if stream:
            return await _sse(request, self._openai_chunks(payload, prompt, n, chat), done=True)
        return _json(await self._openai_full(payload, prompt, n, chat))

    async def _image(self, payload: Any) -> web.Response:
        """A PNG for `{"inputs" or "prompt", "width", "height"}` (64 x 64 by default)."""
        doc = payload if isinstance(payload, dict) else {}
        prompt = next((p for p in (doc.get("inputs"), doc.get("prompt")) if isinstance(p, str)), "")
        width, height = (_image_side(doc.get(k)) for k in ("width", "height"))
        await asyncio.sleep(self.ttft_s)
        return web.Response(body=pattern_png(prompt, width, height), content_type="image/png")

    async def _text(self, prompt: str, n: int) -> str:
        async with aclosing(self.generate(prompt, n)) as tokens:
            return "".join([text async for _, text in tokens])

    # TGI: https://huggingface.github.io/text-generation-inference/ (/generate, /generate_stream)

    async def _tgi_full(self, payload: dict[str, Any], prompt: str, n: int) -> dict[str, Any]:
        async with aclosing(self.generate(prompt, n)) as gen:
            tokens = [{"id": i, "text": t, "logprob": 0.0, "special": False} async for i, t in gen]
        body: dict[str, Any] = {"generated_text": "".join(str(t["text"]) for t in tokens)}
        if _tgi_wants_details(payload):
            # a full answer's details also list the prefill and every token (TGI's shape)
            body["details"] = {**_tgi_details(n), "prefill": [], "tokens": tokens}
        return body

    async def _tgi_events(
        self, payload: dict[str, Any], prompt: str, n: int
    ) -> AsyncGenerator[bytes, None]:
        details = _tgi_wants_details(payload)
        text = ""
        async with aclosing(self.generate(prompt, n)) as tokens:
            index = 0
            async for token_id, token_text in tokens:
                index += 1  # TGI counts generated tokens from 1
                text += token_text
                last = index == n
                yield (
                    b"data:"
                    + orjson.dumps(
                        {
                            "index": index,
                            "token": {
                                "id": token_id,
                                "text": token_text,
                                "logprob": 0.0,
                                "special": False,
                            },
                            "generated_text": text if last else None,
                            "details": _tgi_details(n) if last and details else None,
                        }
                    )
                    + b"\n\n"
                )

    # OpenAI: /v1/completions and /v1/chat/completions, plain and streamed.

    def _head(self, payload: dict[str, Any], chat: bool, chunk: bool) -> dict[str, Any]:
        kind = "chat.completion" if chat else "text_completion"
        model = payload.get("model")
        return {
            "id": ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex[:24],
            "object": kind + ".chunk" if chat and chunk else kind,
            "created": int(time.time()),
            "model": model if isinstance(model, str) and model else self.model,
        }

    async def _openai_full(
        self, payload: dict[str, Any], prompt: str, n: int, chat: bool
    ) -> dict[str, Any]:
        text = await self._text(prompt, n)
        choice: dict[str, Any] = (
            {
                "index": 0,
                "message": {"role": "assistant", "content": text},
                "logprobs": None,
                "finish_reason": "length",
            }
            if chat
            else {"index": 0, "text": text, "logprobs": None, "finish_reason": "length"}
        )
        return {
            **self._head(payload, chat, chunk=False),
            "choices": [choice],
            "usage": _usage(prompt, n),
        }

    async def _openai_chunks(
        self, payload: dict[str, Any], prompt: str, n: int, chat: bool
    ) -> AsyncGenerator[bytes, None]:
        head = self._head(payload, chat, chunk=True)
        if chat:
            yield _chunk(
                head,
                {
                    "index": 0,
                    "delta": {"role": "assistant", "content": ""},
                    "logprobs": None,
                    "finish_reason": None,
                },
            )
        async with aclosing(self.generate(prompt, n)) as tokens:
            async for _, text in tokens:
                yield _chunk(
                    head,
                    {
                        "index": 0,
                        "delta": {"content": text},
                        "logprobs": None,
                        "finish_reason": None,
                    }
                    if chat
                    else {"index": 0, "text": text, "logprobs": None, "finish_reason": None},
                )
        yield _chunk(
            head,
            {"index": 0, "delta": {}, "logprobs": None, "finish_reason": "length"}
            if chat
            else {"index": 0, "text": "", "logprobs": None, "finish_reason": "length"},
        )
        options = payload.get("stream_options")
        if isinstance(options, dict) and options.get("include_usage") is True:
            yield (
                b"data: "
                + orjson.dumps({**head, "choices": [], "usage": _usage(prompt, n)})
                + b"\n\n"
            )


async def _sse(
    request: web.Request, events: AsyncGenerator[bytes, None], done: bool = False
) -> web.StreamResponse:
    """Write each event as it is produced (never buffered); end with [DONE] for OpenAI.

    Headers go out with the first event, as a model server's do once the first token is
    decoded, so the worker's time-to-first-byte is the time to first token.
    """
    resp = web.StreamResponse(
        headers={
            "Content-Type": "text/event-stream",
            "Cache-Control": "no-cache",
            "X-Accel-Buffering": "no",
        }
    )
    try:
        async with aclosing(events):
            async for event in events:
                if not resp.prepared:
                    await resp.prepare(request)
                await resp.write(event)
        if not resp.prepared:
            await resp.prepare(request)
        if done:
            await resp.write(b"data: [DONE]\n\n")
        await resp.write_eof()
    except ConnectionResetError:
        log.debug("client went away mid-stream")
    return resp


def wants_image(accept: str) -> bool:
    """True if an Accept header asks for an image (`image/png`, `image/*`), not `*/*`."""
    return any(
        part.split(";", 1)[0].strip().lower().startswith("image/") for part in accept.split(",")
    )


def _image_side(v: Any) -> int:
    n = _count(v)
    return IMAGE_SIZE if n is None else max(1, min(MAX_IMAGE_SIZE, n))


def _tgi_wants_details(payload: dict[str, Any]) -> bool:
    params = payload.get("parameters")
    return isinstance(params, dict) and params.get("details") is True


def _tgi_details(n: int) -> dict[str, Any]:
    return {"finish_reason": "length", "generated_tokens": n, "seed": None}


def _usage(prompt: str, n: int) -> dict[str, int]:
    prompt_tokens = max(1, len(prompt) // 4)
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": n,
        "total_tokens": prompt_tokens + n,
    }


def _chunk(head: dict[str, Any], choice: dict[str, Any]) -> bytes:
    return b"data: " + orjson.dumps({**head, "choices": [choice]}) + b"\n\n"


def _json(body: Any, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(body), status=status, content_type="application/json")
