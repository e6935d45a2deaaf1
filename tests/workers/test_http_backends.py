"""The worker in front of a real (fake) model server: TGI, OpenAI-compatible, BentoML."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from tests.conftest import free_port
from tests.workers.helpers import (
    PAYLOAD,
    SHAPES,
    Client,
    Tickets,
    header_shape,
    next_event,
    readyz,
    serve_app,
    settings,
    sse_events,
    until,
    vast_shape,
    worker,
)
from tests.workers.model_server import PNG, FakeModelServer
from workers.app import STATE
from workers.backends.http import HttpBackend
from workers.backends.png import PNG_SIGNATURE, pattern_png

CHAT = {"model": "m1", "messages": [{"role": "user", "content": "hello"}], "max_tokens": 5}


@pytest.fixture
async def fake() -> AsyncIterator[tuple[FakeModelServer, str]]:
    model = FakeModelServer()
    async with serve_app(model.app()) as server:
        yield model, str(server.make_url("")).rstrip("/")


@asynccontextmanager
async def fronting(
    backend: str, url: str, pubkey_file: Path | None, **overrides: Any
) -> AsyncIterator[Client]:
    """A worker with the `backend` HTTP backend, forwarding to `url`."""
    if backend == "bentoml":
        overrides.setdefault("perf", 1e6)
    if pubkey_file is None:
        overrides["verify"] = False
    async with worker(
        settings(pubkey_file, backend=backend, backend_url=url, **overrides)
    ) as client:
        yield client


async def post(
    client: Client,
    path: str,
    ticket: dict[str, Any],
    payload: Any,
    shape: Any = vast_shape,
    headers: dict[str, str] | None = None,
) -> Any:
    body, extra = shape(ticket, payload)
    return await client.post(
        path,
        data=orjson.dumps(body),
        headers={"Content-Type": "application/json", **extra, **(headers or {})},
    )


async def error_code(resp: Any) -> str:
    assert resp.content_type == "application/json"
    return str(orjson.loads(await resp.read())["error"]["code"])


async def idle(client: Client) -> bool:
    _, doc = await readyz(client)
    return bool(doc["inflight_requests"] == 0)


async def metrics_text(client: Client) -> str:
    return await (await client.get("/metrics")).text()


@pytest.mark.parametrize("shape", SHAPES.values(), ids=SHAPES.keys())
async def test_tgi_serves_tickets_and_forwards_only_the_payload(
    fake: tuple[FakeModelServer, str], pubkey_file: Path, tickets: Tickets, shape: Any
) -> None:
    model, url = fake
    async with fronting("tgi", url, pubkey_file) as client:
        resp = await post(
            client,
            "/generate?trace=1",
            tickets.issue(),
            PAYLOAD,
            shape,
            headers={"Authorization": "Bearer client-key", "X-Custom": "yes"},
        )
        assert resp.status == 200, await resp.text()
        assert orjson.loads(await resp.read()) == {"generated_text": "echo What is deep learning?"}
    assert model.payloads == [PAYLOAD]  # no ticket field, no wrapper
    sent = {k.lower(): v for k, v in model.headers[0].items()}
    assert "x-route-ticket" not in sent and "authorization" not in sent
    assert sent["content-type"] == "application/json" and sent["x-custom"] == "yes"
    assert model.queries == ["trace=1"]


@pytest.mark.parametrize(
    ("backend", "path", "payload", "shape"),
    [
        ("tgi", "/generate_stream", PAYLOAD, vast_shape),
        ("openai", "/v1/chat/completions", {**CHAT, "stream": True}, header_shape),
        ("tgi", "/v1/chat/completions", {**CHAT, "stream": True}, vast_shape),
    ],
)
async def test_streams_chunk_by_chunk(
    fake: tuple[FakeModelServer, str],
    pubkey_file: Path,
    tickets: Tickets,
    backend: str,
    path: str,
    payload: dict[str, Any],
    shape: Any,
) -> None:
    model, url = fake
    async with fronting(backend, url, pubkey_file) as client:
        resp = await post(client, path, tickets.issue(cost=7.0), payload, shape)
        assert resp.status == 200 and resp.content_type == "text/event-stream"
        # The model server holds the rest until the client has the first event: a worker
        # that buffered would never deliver it, and this would time out.
        first = await asyncio.wait_for(next_event(resp), 5)
        status, doc = await readyz(client)
        assert (status, doc["inflight_requests"], doc["inflight_cost"]) == (200, 1, 7.0)
        model.gate.set()
        rest = await sse_events(resp)
        assert len([first, *rest]) == 3
        await until(lambda: idle(client), what="load released")
    assert model.payloads == [payload]


async def test_status_and_content_type_pass_through(
    fake: tuple[FakeModelServer, str], pubkey_file: Path, tickets: Tickets
) -> None:
    _, url = fake
    async with fronting("openai", url, pubkey_file) as client:
        resp = await post(client, "/v1/completions", tickets.issue(), {"prompt": "bad"})
        assert resp.status == 422 and resp.content_type == "application/json"
        assert orjson.loads(await resp.read()) == {"object": "error", "message": "prompt is bad"}
        resp = await post(client, "/v1/embeddings", tickets.issue(), {"input": "abc"})
        assert resp.status == 200
        assert orjson.loads(await resp.read())["data"][0]["embedding"] == [0.5, 0.25]
        assert (
            'worker_requests_total{code="422",route="/v1/completions"} 1.0'
            in await metrics_text(client)
        )


async def test_openai_models_is_a_get_route(
    fake: tuple[FakeModelServer, str], pubkey_file: Path, tickets: Tickets
) -> None:
    model, url = fake
    async with fronting("openai", url, pubkey_file) as client:
        _, headers = header_shape(tickets.issue(cost=0.0), None)
        resp = await client.get("/v1/models", headers=headers)
        assert resp.status == 200, await resp.text()
        assert orjson.loads(await resp.read())["data"][0]["id"] == "m1"
        assert model.payloads == [None]
        resp = await client.post("/v1/models", data=b"{}")
        assert resp.status == 405 and resp.headers["Allow"] == "GET"
        resp = await client.get("/v1/completions")
        assert resp.status == 405 and resp.headers["Allow"] == "POST"
        resp = await client.get("/v1/models")  # a GET needs its ticket too
        assert resp.status == 401 and await error_code(resp) == "ticket_missing"


async def test_bentoml_forwards_any_path_and_binary_answers(
    fake: tuple[FakeModelServer, str], pubkey_file: Path, tickets: Tickets
) -> None:
    model, url = fake
    async with fronting("bentoml", url, pubkey_file) as client:
        payload = {"prompt": "a red fox", "width": 16, "height": 8, "num_inference_steps": 4}
        resp = await post(
            client, "/txt2img", tickets.issue(cost=512.0), payload, headers={"Accept": "image/png"}
        )
        assert resp.status == 200 and resp.content_type == "image/png"
        assert await resp.read() == PNG and resp.content_length == len(PNG)
        resp = await post(client, "/jsonl", tickets.issue(), {"n": 3})
        assert resp.status == 200 and resp.content_type == "application/jsonl"
        assert resp.headers.get("Transfer-Encoding") == "chunked"
        assert [orjson.loads(line) for line in (await resp.read()).splitlines()] == [
            {"i": 0},
            {"i": 1},
            {"i": 2},
        ]
        resp = await post(client, "/no/such/api", tickets.issue(), {})
        assert resp.status == 404  # the service's own 404, passed through
        text = await metrics_text(client)
    assert model.payloads == [payload, {"n": 3}]
    assert model.headers[0]["Accept"] == "image/png"
    assert 'worker_requests_total{code="200",route="other"} 2.0' in text
    assert "/txt2img" not in text  # user-defined paths never become label values


async def test_bentoml_floors_only_pixel_costs(
    fake: tuple[FakeModelServer, str], pubkey_file: Path, tickets: Tickets
) -> None:
    # A service's cost unit is its own: a long prompt is not known to cost tokens there.
    _, url = fake
    async with fronting("bentoml", url, pubkey_file) as client:
        resp = await post(client, "/jsonl", tickets.issue(cost=1.0), {"n": 1, "prompt": "x" * 4000})
        assert resp.status == 200
        payload = {"prompt": "a red fox", "width": 16, "height": 8, "num_inference_steps": 4}
        resp = await post(client, "/txt2img", tickets.issue(cost=100.0), payload)
        assert resp.status == 401 and await error_code(resp) == "ticket_cost_too_low"


async def test_tgi_unknown_path_is_404(
    fake: tuple[FakeModelServer, str], pubkey_file: Path
) -> None:
    model, url = fake
    async with fronting("tgi", url, pubkey_file) as client:
        resp = await client.post("/v1/embeddings", data=b"{}")
        assert resp.status == 404 and await error_code(resp) == "not_found"
    assert model.payloads == []


@pytest.mark.parametrize("backend", ["tgi", "openai", "bentoml"])
async def test_readyz_follows_the_model_servers_health(
    fake: tuple[FakeModelServer, str], pubkey_file: Path, backend: str
) -> None:
    model, url = fake
    async with fronting(backend, url, pubkey_file) as client:
        status, doc = await readyz(client)
        assert status == 200 and doc["ready"] is True
        model.healthy = False
        status, doc = await readyz(client)
        assert status == 503 and doc["reason"] == "backend not ready"
        model.healthy = True
        assert (await readyz(client))[0] == 200


async def test_backend_health_path_replaces_the_backends_own(
    fake: tuple[FakeModelServer, str], pubkey_file: Path, caplog: pytest.LogCaptureFixture
) -> None:
    model, url = fake
    async with fronting("openai", url, pubkey_file, backend_health_path="/v1/models") as client:
        model.healthy = False  # only /health follows it: /v1/models still answers
        assert (await readyz(client))[0] == 200
    with caplog.at_level(logging.WARNING, logger="workers.backends.http"):
        async with fronting("openai", url, pubkey_file, backend_health_path="/nope") as client:
            for _ in range(3):
                status, doc = await readyz(client)
                assert status == 503 and doc["reason"] == "backend not ready"
    # a 404 is said once, for what it is: no such path, not "still loading"
    [record] = [r for r in caplog.records if "/nope" in r.getMessage()]
    assert record.levelno == logging.WARNING
    assert "404" in record.getMessage() and "--backend-health-path" in record.getMessage()


@pytest.mark.parametrize(
    ("backend", "path"),
    [("tgi", "/generate"), ("openai", "/v1/chat/completions"), ("bentoml", "/anything")],
)
async def test_model_server_down_is_a_json_502(
    pubkey_file: Path, tickets: Tickets, backend: str, path: str
) -> None:
    async with fronting(backend, f"http://127.0.0.1:{free_port()}", pubkey_file) as client:
        resp = await post(client, path, tickets.issue(), CHAT)
        assert resp.status == 502 and await error_code(resp) == "backend_unavailable"
        status, doc = await readyz(client)
        assert status == 503 and doc["reason"] == "backend not ready"
        assert doc["inflight_requests"] == 0
        assert 'worker_requests_total{code="502",route=' in await metrics_text(client)


async def test_client_hang_up_mid_stream_cancels_the_upstream_request(
    fake: tuple[FakeModelServer, str], pubkey_file: Path, tickets: Tickets
) -> None:
    model, url = fake
    async with fronting("tgi", url, pubkey_file) as client:
        resp = await post(client, "/generate_stream", tickets.issue(cost=9.0), PAYLOAD)
        await asyncio.wait_for(next_event(resp), 5)
        assert (await readyz(client))[1]["inflight_cost"] == 9.0
        resp.close()  # hang up with the gate still shut
        await asyncio.wait_for(model.cancelled.wait(), 5)
        await until(lambda: idle(client), what="load released after the hang-up")
        assert (
            'worker_requests_total{code="499",route="/generate_stream"} 1.0'
            in await metrics_text(client)
        )


async def test_client_hang_up_before_the_answer_cancels_the_upstream_request(
    fake: tuple[FakeModelServer, str], pubkey_file: Path, tickets: Tickets
) -> None:
    model, url = fake
    async with fronting("bentoml", url, pubkey_file) as client:
        call = asyncio.create_task(post(client, "/hang", tickets.issue(), {}))
        await asyncio.wait_for(model.first_sent.wait(), 5)
        call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await call
        await asyncio.wait_for(model.cancelled.wait(), 5)
        await until(lambda: idle(client), what="load released after the hang-up")


async def test_model_server_failure_mid_stream_cuts_the_connection(
    fake: tuple[FakeModelServer, str],
    pubkey_file: Path,
    tickets: Tickets,
    caplog: pytest.LogCaptureFixture,
) -> None:
    _, url = fake
    async with fronting("bentoml", url, pubkey_file) as client:
        resp = await post(client, "/break", tickets.issue(), {})
        assert resp.status == 200
        with pytest.raises(aiohttp.ClientPayloadError):
            await resp.read()  # truncated, never a clean end that looks complete
        await until(lambda: idle(client), what="load released")
        assert 'worker_requests_total{code="500",route="other"} 1.0' in await metrics_text(client)
    worker_logs = [r for r in caplog.records if r.name.startswith("workers")]
    assert any("failed mid-response" in r.getMessage() for r in worker_logs)
    assert not any(r.exc_info for r in worker_logs)  # one line, no traceback


async def test_no_verify_estimates_cost_from_the_payload(fake: tuple[FakeModelServer, str]) -> None:
    model, url = fake
    async with fronting("openai", url, None) as client:
        resp = await client.post(
            "/v1/chat/completions", data=orjson.dumps({**CHAT, "stream": True})
        )
        await asyncio.wait_for(next_event(resp), 5)
        _, doc = await readyz(client)
        assert doc["inflight_cost"] == 5 + len("hello") / 4
        assert doc["perf"] == 1000.0  # the documented default for tgi and openai
        model.gate.set()
        await sse_events(resp)


async def test_one_session_per_backend(
    fake: tuple[FakeModelServer, str], pubkey_file: Path, tickets: Tickets
) -> None:
    _, url = fake
    async with fronting("tgi", url, pubkey_file) as client:
        backend = client.server.app[STATE].backend
        assert isinstance(backend, HttpBackend)
        session = backend._session
        assert session is not None
        for _ in range(3):
            assert (await post(client, "/generate", tickets.issue(), PAYLOAD)).status == 200
        assert backend._session is session
    assert backend._session is None and session.closed


async def test_synthetic_png_through_a_bentoml_worker(pubkey_file: Path, tickets: Tickets) -> None:
    """End to end: binary bytes from a model server reach the client unchanged."""
    async with worker(settings(verify=False)) as synthetic:
        url = str(synthetic.make_url("")).rstrip("/")
        async with fronting("bentoml", url, pubkey_file) as client:
            assert (await readyz(client))[0] == 200  # the synthetic worker's /readyz
            resp = await post(
                client, "/generate", tickets.issue(), PAYLOAD, headers={"Accept": "image/png"}
            )
            assert resp.status == 200 and resp.content_type == "image/png"
            body = await resp.read()
    assert body.startswith(PNG_SIGNATURE)
    assert body == pattern_png(PAYLOAD["inputs"], 64, 64)
