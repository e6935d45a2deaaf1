"""The real worker app in process: ticket shapes, streaming, admission, load report, errors."""

from __future__ import annotations

import base64
import io
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from router.signing import KeyRing
from tests.workers.helpers import (
    PAYLOAD,
    SHAPES,
    Client,
    RecordingBackend,
    Tickets,
    header_shape,
    next_event,
    readyz,
    settings,
    sse_events,
    until,
    vast_shape,
    worker,
)
from workers.app import STATE
from workers.backends.synthetic import tokens_for
from workers.settings import WorkerSettings


@pytest.fixture
def backend() -> RecordingBackend:
    return RecordingBackend()


@pytest.fixture
async def client(pubkey_file: Path, backend: RecordingBackend) -> AsyncIterator[Client]:
    async with worker(settings(pubkey_file), backend) as c:
        yield c


def expected_text(prompt: str, n: int) -> str:
    return "".join(text for _, text in tokens_for(prompt, n))


async def post(
    client: Client, path: str, ticket: dict[str, Any], payload: Any, shape: Any = vast_shape
) -> Any:
    body, headers = shape(ticket, payload)
    return await client.post(
        path, data=orjson.dumps(body), headers={"Content-Type": "application/json", **headers}
    )


async def error_code(resp: Any) -> str:
    assert resp.content_type == "application/json"
    doc = orjson.loads(await resp.read())
    assert set(doc["error"]) >= {"code", "message"}
    return str(doc["error"]["code"])


async def metric_lines(client: Client) -> list[str]:
    resp = await client.get("/metrics")
    assert resp.status == 200
    return (await resp.text()).splitlines()


@pytest.mark.parametrize("shape", SHAPES.values(), ids=SHAPES.keys())
async def test_each_ticket_shape_is_served(
    client: Client, backend: RecordingBackend, tickets: Tickets, shape: Any
) -> None:
    resp = await post(client, "/generate", tickets.issue(), PAYLOAD, shape)
    assert resp.status == 200, await resp.text()
    doc = orjson.loads(await resp.read())
    assert doc == {"generated_text": expected_text(PAYLOAD["inputs"], 8)}
    # only the model payload reached the backend: no ticket field, no wrapper
    assert backend.payloads == [PAYLOAD]


async def test_tgi_stream(client: Client, tickets: Tickets) -> None:
    resp = await post(client, "/generate_stream", tickets.issue(), PAYLOAD)
    assert resp.status == 200
    assert resp.content_type == "text/event-stream"
    events = [orjson.loads(e) for e in await sse_events(resp)]
    assert [e["index"] for e in events] == list(range(1, 9))
    text = "".join(e["token"]["text"] for e in events)
    assert text == expected_text(PAYLOAD["inputs"], 8)
    assert all(e["generated_text"] is None and e["details"] is None for e in events[:-1])
    assert events[-1]["generated_text"] == text
    assert set(events[0]["token"]) == {"id", "text", "logprob", "special"}


async def test_generate_with_stream_true_streams_with_details(
    client: Client, tickets: Tickets
) -> None:
    payload = {"inputs": "hi", "parameters": {"max_new_tokens": 3, "details": True}, "stream": True}
    resp = await post(client, "/generate", tickets.issue(), payload)
    assert resp.content_type == "text/event-stream"
    events = [orjson.loads(e) for e in await sse_events(resp)]
    assert len(events) == 3
    assert events[-1]["details"] == {"finish_reason": "length", "generated_tokens": 3, "seed": None}


async def test_chat_stream_ends_with_done(client: Client, tickets: Tickets) -> None:
    payload = {
        "model": "m1",
        "messages": [{"role": "user", "content": "hello"}],
        "max_tokens": 5,
        "stream": True,
    }
    resp = await post(client, "/v1/chat/completions", tickets.issue(), payload, header_shape)
    assert resp.status == 200 and resp.content_type == "text/event-stream"
    data = await sse_events(resp)
    assert data[-1] == b"[DONE]"
    chunks = [orjson.loads(d) for d in data[:-1]]
    assert {c["object"] for c in chunks} == {"chat.completion.chunk"}
    assert len({c["id"] for c in chunks}) == 1 and chunks[0]["model"] == "m1"
    deltas = [c["choices"][0]["delta"] for c in chunks]
    assert deltas[0]["role"] == "assistant"
    assert "".join(d.get("content", "") for d in deltas) == expected_text("hello", 5)
    assert len(chunks) == 7  # role, 5 tokens, finish
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"


async def test_completions_stream_and_usage(client: Client, tickets: Tickets) -> None:
    payload = {
        "prompt": "once upon",
        "max_tokens": 4,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    resp = await post(client, "/v1/completions", tickets.issue(), payload)
    data = await sse_events(resp)
    assert data[-1] == b"[DONE]"
    chunks = [orjson.loads(d) for d in data[:-1]]
    assert {c["object"] for c in chunks} == {"text_completion"}
    assert "".join(c["choices"][0]["text"] for c in chunks if c["choices"]) == expected_text(
        "once upon", 4
    )
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == 4


@pytest.mark.parametrize(
    ("path", "payload", "kind"),
    [
        ("/v1/completions", {"prompt": "abc", "max_tokens": 3}, "text_completion"),
        (
            "/v1/chat/completions",
            {"messages": [{"role": "user", "content": "abc"}], "max_tokens": 3},
            "chat.completion",
        ),
    ],
)
async def test_openai_plain_responses(
    client: Client, tickets: Tickets, path: str, payload: dict[str, Any], kind: str
) -> None:
    resp = await post(client, path, tickets.issue(), payload)
    assert resp.status == 200
    doc = orjson.loads(await resp.read())
    assert set(doc) >= {"id", "object", "created", "model", "choices", "usage"}
    assert doc["object"] == kind
    choice = doc["choices"][0]
    text = choice["message"]["content"] if kind == "chat.completion" else choice["text"]
    assert text == expected_text("abc", 3)
    assert doc["usage"]["completion_tokens"] == 3


async def test_bad_model_payload_is_a_json_400(client: Client, tickets: Tickets) -> None:
    resp = await post(client, "/v1/chat/completions", tickets.issue(), {"max_tokens": 3})
    assert resp.status == 400 and await error_code(resp) == "bad_request"


async def test_rejections_are_401_and_counted(
    client: Client, ring: KeyRing, tickets: Tickets
) -> None:
    async def code_of(body: Any, headers: dict[str, str] | None = None) -> str:
        resp = await client.post("/generate", data=orjson.dumps(body), headers=headers or {})
        assert resp.status == 401
        return await error_code(resp)

    assert await code_of(PAYLOAD) == "ticket_missing"
    assert await code_of(PAYLOAD, {"X-Route-Ticket": "%%%"}) == "ticket_malformed"
    assert (
        await code_of(vast_shape({**tickets.issue(), "key_id": "k0"}, PAYLOAD)[0])
        == "ticket_unknown_key"
    )
    assert (
        await code_of(vast_shape({**tickets.issue(), "cost": 1.0}, PAYLOAD)[0])
        == "ticket_bad_signature"
    )
    other_url = Tickets(ring, url="http://elsewhere:1").issue()
    assert await code_of(vast_shape(other_url, PAYLOAD)[0]) == "ticket_wrong_url"
    other_ep = Tickets(ring, endpoint="other").issue()
    assert await code_of(vast_shape(other_ep, PAYLOAD)[0]) == "ticket_wrong_endpoint"
    expired = tickets.issue(expires_at=1.0)
    assert await code_of(vast_shape(expired, PAYLOAD)[0]) == "ticket_expired"
    used = tickets.issue()
    assert (await post(client, "/generate", used, PAYLOAD)).status == 200
    assert await code_of(vast_shape(used, PAYLOAD)[0]) == "ticket_replayed"
    lines = await metric_lines(client)
    for reason in (
        "missing",
        "malformed",
        "unknown_key",
        "bad_signature",
        "wrong_url",
        "wrong_endpoint",
        "expired",
        "replayed",
    ):
        assert f'worker_ticket_rejections_total{{reason="{reason}"}} 1.0' in lines
    assert 'worker_requests_total{code="401",route="/generate"} 8.0' in lines


async def test_newer_tickets_never_push_out_an_unused_one(client: Client, tickets: Tickets) -> None:
    # The attack on the old 1024-wide window: one client routes 1,100 times and uses only
    # the newest tickets; another client's older, unexpired, unused ticket still works.
    victim = tickets.issue()
    one_token = {"inputs": "x", "parameters": {"max_new_tokens": 1}}
    for _ in range(1_100):
        resp = await post(client, "/generate", tickets.issue(), one_token, header_shape)
        assert resp.status == 200
        await resp.read()
    resp = await post(client, "/generate", victim, PAYLOAD)
    assert resp.status == 200, await resp.text()
    resp = await post(client, "/generate", victim, PAYLOAD)
    assert resp.status == 401 and await error_code(resp) == "ticket_replayed"
    _, doc = await readyz(client)
    assert doc["max_reqnum_seen"] == victim["reqnum"] + 1_100
    segments = (tickets.reqnum >> 6) - (victim["reqnum"] >> 6) + 1  # dense: 64 to a segment
    assert f"worker_replay_segments {segments:.1f}" in await metric_lines(client)


async def test_full_replay_memory_answers_503_and_forgets_nothing(
    pubkey_file: Path, tickets: Tickets
) -> None:
    async with worker(settings(pubkey_file, replay_max_segments=1)) as client:
        used = tickets.issue()
        assert (await post(client, "/generate", used, PAYLOAD)).status == 200
        tickets.reqnum += 64  # the next ticket needs a second segment
        fresh = tickets.issue()
        resp = await post(client, "/generate", fresh, PAYLOAD)
        assert resp.status == 503 and await error_code(resp) == "replay_memory_full"
        assert resp.headers["Retry-After"] == "1"
        resp = await post(client, "/generate", used, PAYLOAD)
        assert resp.status == 401 and await error_code(resp) == "ticket_replayed"
        lines = await metric_lines(client)
        assert 'worker_ticket_rejections_total{reason="replay_memory_full"} 1.0' in lines
        assert "worker_replay_segments 1.0" in lines


LONG = {"inputs": "What is deep learning?", "parameters": {"max_new_tokens": 400}}


@pytest.mark.parametrize("shape", SHAPES.values(), ids=SHAPES.keys())
async def test_a_ticket_cheaper_than_its_payload_is_refused(
    client: Client, backend: RecordingBackend, tickets: Tickets, shape: Any
) -> None:
    resp = await post(client, "/generate", tickets.issue(cost=0), LONG, shape)
    assert resp.status == 401 and await error_code(resp) == "ticket_cost_too_low"
    resp = await post(client, "/generate", tickets.issue(cost=150.0), LONG, shape)
    assert resp.status == 401  # 405.5 less half is 202.75
    fair = tickets.issue(cost=203.0)
    resp = await post(client, "/generate", fair, LONG, shape)
    assert resp.status == 200, await resp.text()
    # the README's demo: cost 16 for 16 new tokens plus a 22-character prompt (21.5)
    readme = {"inputs": "What is deep learning?", "parameters": {"max_new_tokens": 16}}
    resp = await post(client, "/generate", tickets.issue(cost=16), readme, shape)
    assert resp.status == 200, await resp.text()
    assert backend.payloads == [LONG, readme]
    lines = await metric_lines(client)
    assert 'worker_ticket_rejections_total{reason="cost_too_low"} 2.0' in lines
    # a refused ticket was not burnt, and a replay is told it is one before its cost
    resp = await post(client, "/generate", fair, LONG, shape)
    assert resp.status == 401 and await error_code(resp) == "ticket_replayed"


async def test_cost_tolerance_1_turns_the_check_off(
    pubkey_file: Path, backend: RecordingBackend, tickets: Tickets
) -> None:
    async with worker(settings(pubkey_file, cost_tolerance=1.0), backend) as client:
        resp = await post(client, "/generate", tickets.issue(cost=0), LONG)
        assert resp.status == 200, await resp.text()
    async with worker(settings(pubkey_file, cost_tolerance=0.0), backend) as client:
        resp = await post(client, "/generate", tickets.issue(cost=405), LONG)
        assert resp.status == 401 and await error_code(resp) == "ticket_cost_too_low"
        resp = await post(client, "/generate", tickets.issue(cost=405.5), LONG)
        assert resp.status == 200


async def test_queue_limit_answers_429_without_burning_the_ticket(
    pubkey_file: Path, backend: RecordingBackend, tickets: Tickets
) -> None:
    s = settings(pubkey_file, perf=10.0, max_queue_time_s=1.0)
    async with worker(s, backend) as client:
        backend.gate.clear()
        slow = await post(client, "/generate_stream", tickets.issue(cost=8.0), PAYLOAD)
        await next_event(slow)  # in flight now, holding 8 cost units
        queued = tickets.issue(cost=8.0)  # (8 + 8) / 10 = 1.6 s > 1 s
        resp = await post(client, "/generate", queued, PAYLOAD)
        assert resp.status == 429 and await error_code(resp) == "overloaded"
        assert resp.headers["Retry-After"] == "1"
        one_token = {"inputs": "x", "parameters": {"max_new_tokens": 1}}  # passes the gate
        small = await post(client, "/generate", tickets.issue(cost=2.0), one_token)
        assert small.status == 200  # (8 + 2) / 10 = 1 s fits
        backend.gate.set()
        assert len(await sse_events(slow)) == 7
        await until(lambda: _idle(client), what="idle")
        # the refused ticket was not recorded as used: it is served now
        again = await post(client, "/generate", queued, PAYLOAD)
        assert again.status == 200
        # an idle worker takes any single request, however large
        huge = await post(client, "/generate", tickets.issue(cost=10_000.0), PAYLOAD)
        assert huge.status == 200


async def test_max_load_answers_429(
    pubkey_file: Path, backend: RecordingBackend, tickets: Tickets
) -> None:
    s = settings(pubkey_file, perf=1000.0, max_load=10.0)
    async with worker(s, backend) as client:
        backend.gate.clear()
        slow = await post(client, "/generate_stream", tickets.issue(cost=8.0), PAYLOAD)
        await next_event(slow)
        one_token = {"inputs": "x", "parameters": {"max_new_tokens": 1}}
        resp = await post(client, "/generate", tickets.issue(cost=3.0), one_token)
        assert resp.status == 429 and int(resp.headers["Retry-After"]) >= 1
        backend.gate.set()
        await sse_events(slow)


async def _idle(client: Client) -> bool:
    _, doc = await readyz(client)
    return bool(doc["inflight_requests"] == 0)


async def test_readyz_reports_inflight_load(
    client: Client, backend: RecordingBackend, tickets: Tickets
) -> None:
    status, doc = await readyz(client)
    assert status == 200
    assert doc == {
        "ready": True,
        "inflight_cost": 0.0,
        "inflight_requests": 0,
        "max_reqnum_seen": 0,
        "perf": backend.perf(),
        "completed_cost": 0.0,
        "busy_s": 0.0,
    }
    backend.gate.clear()
    t = tickets.issue(cost=12.5)
    slow = await post(client, "/generate_stream", t, PAYLOAD)
    await next_event(slow)  # the first event arrives while the stream is still going
    status, doc = await readyz(client)
    assert (doc["inflight_requests"], doc["inflight_cost"], doc["max_reqnum_seen"]) == (
        1,
        12.5,
        t["reqnum"],
    )
    lines = await metric_lines(client)
    assert "worker_inflight_requests 1.0" in lines and "worker_inflight_cost 12.5" in lines
    backend.gate.set()
    assert len(await sse_events(slow)) == 7
    await until(lambda: _idle(client), what="load released after the stream")
    _, doc = await readyz(client)
    assert doc["inflight_cost"] == 0.0 and doc["max_reqnum_seen"] == t["reqnum"]
    # the running totals a router measures speed from (perf_mode = "measured")
    assert doc["completed_cost"] == 12.5 and doc["busy_s"] > 0


async def test_client_disconnect_mid_stream_releases_load(
    client: Client, backend: RecordingBackend, tickets: Tickets
) -> None:
    backend.gate.clear()
    slow = await post(
        client,
        "/v1/chat/completions",
        tickets.issue(cost=50.0),
        {"messages": [{"role": "user", "content": "x"}], "max_tokens": 50, "stream": True},
    )
    await next_event(slow)
    _, doc = await readyz(client)
    assert doc["inflight_requests"] == 1 and backend.active == 1
    slow.close()  # hang up with the stream half done (the gate stays shut)
    await until(lambda: _idle(client), what="load released after the hang-up")
    _, doc = await readyz(client)
    assert doc["inflight_cost"] == 0.0
    assert backend.active == 0  # the token generator was closed, not left to the GC
    lines = await metric_lines(client)
    assert 'worker_requests_total{code="499",route="/v1/chat/completions"} 1.0' in lines


async def test_metrics_names(client: Client, tickets: Tickets) -> None:
    await post(client, "/generate", tickets.issue(), PAYLOAD)
    await client.post("/no/such/path/12345", data=b"{}")
    text = "\n".join(await metric_lines(client))
    for name in (
        "worker_requests_total",
        "worker_ticket_rejections_total",
        "worker_inflight_cost",
        "worker_inflight_requests",
        "worker_backend_ttfb_seconds_bucket",
    ):
        assert name in text
    assert 'worker_requests_total{code="200",route="/generate"} 1.0' in text
    assert 'worker_requests_total{code="404",route="other"} 1.0' in text
    assert "12345" not in text  # raw paths never become label values
    assert "worker_backend_ttfb_seconds_count 1.0" in text


async def test_errors_are_json(client: Client, backend: RecordingBackend, tickets: Tickets) -> None:
    resp = await client.post("/generate", data=b"{not json")
    assert resp.status == 400 and await error_code(resp) == "bad_json"
    resp = await client.post("/nope", data=b"{}")
    assert resp.status == 404 and await error_code(resp) == "not_found"
    resp = await client.get("/generate")
    assert resp.status == 405 and await error_code(resp) == "method_not_allowed"
    resp = await client.post("/generate", data=io.BytesIO(b"x" * (17 * 1024 * 1024)))
    assert resp.status == 413 and await error_code(resp) == "body_too_large"
    backend.fail = True
    resp = await post(client, "/generate", tickets.issue(), PAYLOAD)
    assert resp.status == 500 and await error_code(resp) == "internal"
    assert "Traceback" not in await resp.text()
    resp = await client.get("/livez")
    assert resp.status == 200 and orjson.loads(await resp.read()) == {"status": "ok"}


async def test_backend_failure_mid_stream_cuts_the_connection(
    client: Client, backend: RecordingBackend, tickets: Tickets
) -> None:
    backend.fail_mid_stream = True
    resp = await post(client, "/generate_stream", tickets.issue(), PAYLOAD)
    assert resp.status == 200
    with pytest.raises(aiohttp.ClientPayloadError):
        await sse_events(resp)  # truncated, never a clean end that looks complete
    await until(lambda: _idle(client), what="load released")
    lines = await metric_lines(client)
    assert 'worker_requests_total{code="500",route="/generate_stream"} 1.0' in lines


async def test_draining(client: Client, tickets: Tickets) -> None:
    client.server.app[STATE].start_draining()
    status, doc = await readyz(client)
    assert status == 503 and doc["ready"] is False and doc["draining"] is True
    assert {"inflight_cost", "inflight_requests", "max_reqnum_seen", "perf"} <= set(doc)
    resp = await post(client, "/generate", tickets.issue(), PAYLOAD)
    assert resp.status == 503 and await error_code(resp) == "draining"


async def test_no_verify_serves_without_ticket_at_estimated_cost(backend: RecordingBackend) -> None:
    async with worker(settings(verify=False), backend) as client:
        backend.gate.clear()
        slow = await client.post(
            "/generate_stream",
            data=orjson.dumps({"inputs": "hi", "parameters": {"max_new_tokens": 40}}),
        )
        assert slow.status == 200
        await next_event(slow)
        _, doc = await readyz(client)
        assert doc["inflight_cost"] == 40.0
        backend.gate.set()
        assert len(await sse_events(slow)) == 39
        # a ticket, if any, is still stripped before the backend sees the payload
        ticket = Tickets(KeyRing.ephemeral("ed25519")).issue()
        resp = await client.post("/generate", data=orjson.dumps({**ticket, **PAYLOAD}))
        assert resp.status == 200 and backend.payloads[-1] == PAYLOAD


async def test_not_ready_until_keys_are_loaded(tmp_path: Path) -> None:
    # The router is not up: no keys, so not ready (and every ticket is refused).
    s = WorkerSettings(
        public_url="http://w:1", router_url="http://127.0.0.1:9", jwks_refetch_interval_s=3600
    )
    async with worker(s) as client:
        status, doc = await readyz(client)
        assert status == 503 and doc["ready"] is False
        assert "keys" in doc["reason"]
        token = base64.urlsafe_b64encode(
            orjson.dumps(Tickets(KeyRing.ephemeral("ed25519"), url="http://w:1").issue())
        ).decode()
        resp = await client.post(
            "/generate", data=orjson.dumps(PAYLOAD), headers={"X-Route-Ticket": token}
        )
        assert resp.status == 401 and await error_code(resp) == "ticket_unknown_key"


async def test_health_answers_as_readyz(client: Client) -> None:
    """Model servers' own path: SGLang's and vLLM's routers probe it (bench/cache_bench.py)."""
    resp = await client.get("/health")
    assert resp.status == 200 and (await resp.json())["ready"] is True
