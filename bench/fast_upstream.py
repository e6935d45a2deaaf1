"""A tiny OpenAI-shaped upstream on uvloop + httptools, fast enough not to be the bottleneck.

    python bench/fast_upstream.py --port 3900

`POST /v1/chat/completions` (also `/v1/completions`, `/generate`) answers a small chat
completion at once; with `"stream": true` in the body it sends the headers at once, then
`max_tokens` SSE events (8 unless the body names a number) one every `--interval-ms`,
the first in a write of its own right after the head (or `--first-event-ms` later), then
`data: [DONE]`. Health checks answer 200
with a body every caller here accepts: `/health`, `/health_generate`, `/readyz` (the
router's report), `/v1/models`, `/get_model_info`, `/get_server_info`.
bench/upstream.py, the aiohttp one, served ~28k requests/s direct in bench/RESULTS.md's
proxy table, less than nginx can pass; this one serves several times more on one core.
"""

from __future__ import annotations

import argparse
import asyncio
import re

import httptools

_READY = b'{"ready": true, "inflight_cost": 0, "inflight_requests": 0, "max_reqnum_seen": 0}'
_MODELS = b'{"object":"list","data":[{"id":"bench","object":"model","owned_by":"bench"}]}'
_INFO = b'{"model_path":"bench","tokenizer_path":"bench","is_generation":true}'
_COMPLETION = (
    b'{"id":"cmpl-bench","object":"chat.completion","created":0,"model":"bench",'
    b'"choices":[{"index":0,"message":{"role":"assistant","content":"hello"},'
    b'"finish_reason":"stop"}],"usage":{"prompt_tokens":1,"completion_tokens":1,'
    b'"total_tokens":2}}'
)
_EVENT = (
    b'data: {"id":"cmpl-bench","object":"chat.completion.chunk","created":0,'
    b'"model":"bench","choices":[{"index":0,"delta":{"content":"hi"}}]}\n\n'
)
_DONE = b"data: [DONE]\n\n"
_GET = {
    b"/health": _READY,
    b"/health_generate": _READY,
    b"/readyz": _READY,
    b"/livez": _READY,
    b"/v1/models": _MODELS,
    b"/get_model_info": _INFO,
    b"/get_server_info": _INFO,
}
_POST = frozenset({b"/v1/chat/completions", b"/v1/completions", b"/generate", b"/echo"})
_STREAM_RE = re.compile(rb'"stream"\s*:\s*true')
_TOKENS_RE = re.compile(rb'"max_tokens"\s*:\s*(\d+)')


def _answer(status: bytes, body: bytes, keep_alive: bool) -> bytes:
    return b"".join(
        (
            b"HTTP/1.1 ",
            status,
            b"\r\nContent-Type: application/json\r\nContent-Length: ",
            str(len(body)).encode(),
            b"\r\n" if keep_alive else b"\r\nConnection: close\r\n",
            b"\r\n",
            body,
        )
    )


def _chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


class Upstream(asyncio.Protocol):
    """One client connection: parse requests with httptools, answer each at once."""

    def __init__(self, interval_s: float, first_s: float) -> None:
        self.interval_s = interval_s
        self.first_s = first_s
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)
        self.url = b""
        self.body: list[bytes] = []
        self.streaming = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            assert self.transport is not None
            self.transport.close()

    def on_message_begin(self) -> None:
        self.url = b""
        self.body = []

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        t = self.transport
        assert t is not None
        keep = self.parser.should_keep_alive()
        path = self.url.split(b"?", 1)[0]
        method = self.parser.get_method()
        if method == b"GET" and path in _GET:
            t.write(_answer(b"200 OK", _GET[path], keep))
        elif method == b"POST" and path in _POST:
            body = b"".join(self.body)
            if _STREAM_RE.search(body):
                m = _TOKENS_RE.search(body)
                self.stream(int(m.group(1)) if m else 8, keep)
                return
            t.write(_answer(b"200 OK", _COMPLETION, keep))
        else:
            t.write(_answer(b"404 Not Found", b'{"error":"not found"}', keep))
        if not keep:
            t.close()

    def stream(self, events: int, keep: bool) -> None:
        t = self.transport
        assert t is not None
        # The head goes alone and the first event in a write of its own, as a model
        # server sends them (headers at once, then the first token): a proxy that leaves
        # Nagle on holds that event until the client ACKs the head (delayed ACK: ~40 ms).
        t.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n"
            + (b"" if keep else b"Connection: close\r\n")
            + b"Transfer-Encoding: chunked\r\n\r\n"
        )
        loop = asyncio.get_running_loop()

        def send(left: int) -> None:
            if t.is_closing():
                return
            if left > 0:
                t.write(_chunk(_EVENT))
                loop.call_later(self.interval_s, send, left - 1)
                return
            t.write(_chunk(_DONE) + b"0\r\n\r\n")
            if not keep:
                t.close()

        if self.first_s > 0:
            loop.call_later(self.first_s, send, events)
        else:
            loop.call_soon(send, events)


async def serve(port: int, interval_s: float, first_s: float) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: Upstream(interval_s, first_s), "127.0.0.1", port, reuse_address=True, backlog=4096
    )
    async with server:
        await server.serve_forever()


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--interval-ms", type=float, default=1.0, help="between streamed events")
    ap.add_argument(
        "--first-event-ms",
        type=float,
        default=0.0,
        help="from the head to the first event; 0: in a write of its own right after it",
    )
    args = ap.parse_args()
    try:
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    except ImportError:
        pass
    try:
        asyncio.run(serve(args.port, args.interval_ms / 1000, args.first_event_ms / 1000))
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
