"""Worker test kit: ticket issuing, a recording/gated backend, in-process servers (port 0)."""

from __future__ import annotations

import asyncio
import base64
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from contextlib import aclosing, asynccontextmanager
from pathlib import Path
from typing import Any

import orjson
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from router.signing import KeyRing
from workers.app import build_app
from workers.backends import Backend
from workers.backends.synthetic import SyntheticBackend, Token
from workers.settings import WorkerSettings

Client = TestClient[Any, Any]

PUBLIC_URL = "http://worker.test:3000"
ENDPOINT = "demo"
PAYLOAD: dict[str, Any] = {"inputs": "What is deep learning?", "parameters": {"max_new_tokens": 8}}


class Tickets:
    """Signs tickets like the router does, with strictly increasing reqnums."""

    def __init__(self, ring: KeyRing, url: str = PUBLIC_URL, endpoint: str = ENDPOINT) -> None:
        self.ring = ring
        self.url = url
        self.endpoint = endpoint
        self.reqnum = int(time.time() * 1000) * 1000

    def issue(
        self, cost: float = 8.0, *, ring: KeyRing | None = None, **overrides: Any
    ) -> dict[str, Any]:
        ring = ring or self.ring
        self.reqnum += 1
        ticket: dict[str, Any] = {
            "cost": cost,
            "endpoint": self.endpoint,
            "expires_at": round(time.time() + 30, 3),
            "key_id": ring.kid,
            "reqnum": self.reqnum,
            "request_idx": self.reqnum % 1000 + 1,
            "url": self.url,
            **overrides,
        }
        ring.sign_ticket(ticket)
        ticket["__request_id"] = "0" * 32
        return ticket


def vast_shape(ticket: dict[str, Any], payload: Any) -> tuple[Any, dict[str, str]]:
    return {"auth_data": ticket, "payload": payload, "session_id": None}, {}


def merged_shape(ticket: dict[str, Any], payload: Any) -> tuple[Any, dict[str, str]]:
    return {**ticket, **payload}, {}


def header_shape(ticket: dict[str, Any], payload: Any) -> tuple[Any, dict[str, str]]:
    token = base64.urlsafe_b64encode(orjson.dumps(ticket)).rstrip(b"=").decode()
    return payload, {"X-Route-Ticket": token}


SHAPES = {"vast": vast_shape, "merged": merged_shape, "header": header_shape}


class RecordingBackend(SyntheticBackend):
    """The synthetic backend, recording every payload; with `gate` cleared, a stream
    stops after its first token until the test sets the gate."""

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("ttft_ms", 0.0)
        kwargs.setdefault("tokens_per_s", 10_000.0)
        kwargs.setdefault("capacity", 100_000.0)
        super().__init__(**kwargs)
        self.payloads: list[Any] = []
        self.gate = asyncio.Event()
        self.gate.set()
        self.fail = False  # raise before answering
        self.fail_mid_stream = False  # raise after the first token

    async def serve(self, request: web.Request, path: str, payload: Any) -> web.StreamResponse:
        self.payloads.append(payload)
        if self.fail:
            raise RuntimeError("backend exploded")
        return await super().serve(request, path, payload)

    async def generate(self, prompt: str, n: int) -> AsyncGenerator[Token, None]:
        async with aclosing(super().generate(prompt, n)) as tokens:
            first = True
            async for token in tokens:
                if not first:
                    await self.gate.wait()
                    if self.fail_mid_stream:
                        raise RuntimeError("backend exploded mid-stream")
                first = False
                yield token


def settings(pubkey_file: Path | None = None, **overrides: Any) -> WorkerSettings:
    base: dict[str, Any] = {
        "public_url": PUBLIC_URL,
        "endpoint": ENDPOINT,
        "pubkey_file": pubkey_file,
    }
    return WorkerSettings(**{**base, **overrides})


@asynccontextmanager
async def worker(
    s: WorkerSettings,
    backend: Backend | None = None,
) -> AsyncIterator[Client]:
    """Run the real worker app on 127.0.0.1:0 and give a client for it."""
    async with TestClient(TestServer(build_app(s, backend), host="127.0.0.1")) as client:
        yield client


@asynccontextmanager
async def serve_app(app: web.Application, port: int = 0) -> AsyncIterator[TestServer]:
    """Run a small aiohttp app (a fake router) on 127.0.0.1."""
    server = TestServer(app, host="127.0.0.1", port=port)
    await server.start_server()
    try:
        yield server
    finally:
        await server.close()


async def until(
    cond: Callable[[], Awaitable[bool]], timeout_s: float = 5.0, what: str = "condition"
) -> None:
    """Poll `cond` briefly until true (for state another task changes)."""
    deadline = time.monotonic() + timeout_s
    while not await cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not reached within {timeout_s}s")
        await asyncio.sleep(0.01)


async def readyz(client: Client) -> tuple[int, dict[str, Any]]:
    resp = await client.get("/readyz")
    return resp.status, orjson.loads(await resp.read())


async def sse_events(resp: Any) -> list[bytes]:
    """Read an SSE response to its end; return each event's data (bytes after 'data:')."""
    events = []
    async for line in resp.content:
        line = line.strip()
        if line.startswith(b"data:"):
            events.append(line[5:].strip())
    return events


async def next_event(resp: Any) -> bytes:
    """Read one SSE event's data from a streaming response."""
    while True:
        line = await resp.content.readline()
        if not line:
            raise AssertionError("stream ended before another event")
        if line.startswith(b"data:"):
            return bytes(line[5:].strip())
