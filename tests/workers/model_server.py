"""A fake model server (TGI, OpenAI-compatible, BentoML in one small aiohttp app).

It records what reached it, streams SSE with a gate the test opens, answers PNG bytes,
fails on request, and says when a client hung up on it (its handler was cancelled).
"""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
from aiohttp import web

from workers.backends.png import pattern_png

PNG = pattern_png("a red fox", 16, 8)


class FakeModelServer:
    def __init__(self) -> None:
        self.healthy = True
        self.payloads: list[Any] = []
        self.headers: list[dict[str, str]] = []
        self.queries: list[str] = []
        self.gate = asyncio.Event()  # a stream waits here after its first event
        self.cancelled = asyncio.Event()  # set when a handler is cancelled (peer left)
        self.first_sent = asyncio.Event()

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/health", self.health)
        app.router.add_get("/readyz", self.health)  # BentoML's readiness path
        app.router.add_get("/v1/models", self.models)
        app.router.add_post("/generate", self.generate)
        app.router.add_post("/generate_stream", self.sse)
        app.router.add_post("/v1/chat/completions", self.chat)
        app.router.add_post("/v1/completions", self.completions)
        app.router.add_post("/v1/embeddings", self.embeddings)
        app.router.add_post("/txt2img", self.txt2img)
        app.router.add_post("/jsonl", self.jsonl)
        app.router.add_post("/hang", self.hang)
        app.router.add_post("/break", self.break_mid_stream)
        return app

    async def _record(self, request: web.Request) -> Any:
        self.headers.append(dict(request.headers))
        self.queries.append(request.query_string)
        payload = orjson.loads(await request.read()) if request.can_read_body else None
        self.payloads.append(payload)
        return payload

    async def health(self, request: web.Request) -> web.Response:
        return web.Response(status=200 if self.healthy else 503, text="ok")

    async def models(self, request: web.Request) -> web.Response:
        await self._record(request)
        return web.json_response({"object": "list", "data": [{"id": "m1", "object": "model"}]})

    async def generate(self, request: web.Request) -> web.Response:
        payload = await self._record(request)
        return web.json_response({"generated_text": f"echo {payload['inputs']}"})

    async def _stream(self, request: web.Request, events: list[bytes]) -> web.StreamResponse:
        resp = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
        )
        await resp.prepare(request)
        try:
            await resp.write(events[0])
            self.first_sent.set()
            await self.gate.wait()
            for event in events[1:]:
                await resp.write(event)
        except asyncio.CancelledError:
            self.cancelled.set()
            raise
        await resp.write_eof()
        return resp

    async def sse(self, request: web.Request) -> web.StreamResponse:
        await self._record(request)
        return await self._stream(request, [b'data:{"index":%d}\n\n' % i for i in (1, 2, 3)])

    async def chat(self, request: web.Request) -> web.StreamResponse:
        payload = await self._record(request)
        if payload.get("stream"):
            events = [
                b'data: {"choices":[{"delta":{"content":"%s"}}]}\n\n' % w for w in (b"a", b"b")
            ]
            return await self._stream(request, [*events, b"data: [DONE]\n\n"])
        return web.json_response(
            {
                "object": "chat.completion",
                "choices": [{"message": {"role": "assistant", "content": "hi"}}],
            }
        )

    async def completions(self, request: web.Request) -> web.Response:
        payload = await self._record(request)
        if payload.get("prompt") == "bad":
            return web.json_response({"object": "error", "message": "prompt is bad"}, status=422)
        return web.json_response({"object": "text_completion", "choices": [{"text": "ok"}]})

    async def embeddings(self, request: web.Request) -> web.Response:
        await self._record(request)
        return web.json_response({"object": "list", "data": [{"embedding": [0.5, 0.25]}]})

    async def txt2img(self, request: web.Request) -> web.Response:
        await self._record(request)
        return web.Response(body=PNG, content_type="image/png")

    async def jsonl(self, request: web.Request) -> web.StreamResponse:
        await self._record(request)
        resp = web.StreamResponse(headers={"Content-Type": "application/jsonl"})
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        for i in range(3):
            await resp.write(orjson.dumps({"i": i}) + b"\n")
        await resp.write_eof()
        return resp

    async def hang(self, request: web.Request) -> web.StreamResponse:
        """Never answers: the test hangs up before the first byte."""
        await self._record(request)
        self.first_sent.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            self.cancelled.set()
            raise
        raise AssertionError("unreachable")

    async def break_mid_stream(self, request: web.Request) -> web.StreamResponse:
        await self._record(request)
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        await resp.write(b"data: 1\n\n")
        assert request.transport is not None
        request.transport.close()  # the model server crashed after the first event
        return resp
