"""Worker errors as Hugging Face's `text-generation` client reads them, against the real
worker app (its TGI paths `/`, `/generate`, `/generate_stream`), and their JSON shape."""

from __future__ import annotations

import asyncio
import base64
from pathlib import Path
from typing import Any

import orjson
import pytest

from tests.workers.helpers import (
    PAYLOAD,
    Client,
    RecordingBackend,
    Tickets,
    next_event,
    settings,
    vast_shape,
    worker,
)
from workers.app import STATE
from workers.errors import error_body

tg = pytest.importorskip("text_generation")
tg_errors = pytest.importorskip("text_generation.errors")

# text-generation 0.7 still calls pydantic's deprecated .dict(); not ours to fix.
pytestmark = pytest.mark.filterwarnings("ignore:The `dict` method is deprecated")


@pytest.fixture
def backend() -> RecordingBackend:
    return RecordingBackend()


def _header(ticket: dict[str, Any] | None) -> dict[str, str]:
    if ticket is None:
        return {}
    return {"X-Route-Ticket": base64.urlsafe_b64encode(orjson.dumps(ticket)).decode()}


def tgi(client: Client, ticket: dict[str, Any] | None, path: str = "") -> Any:
    """TGI's async client on the worker, its ticket in the header (docs/protocol.md, shape 3)."""
    base = str(client.make_url(path))
    return tg.AsyncClient(base, headers=_header(ticket), timeout=10)


async def test_a_valid_ticket_is_served_to_the_tgi_client(
    pubkey_file: Path, tickets: Tickets
) -> None:
    async with worker(settings(pubkey_file)) as client:
        answer = await tgi(client, tickets.issue()).generate("Hi", max_new_tokens=4)
        assert len(answer.generated_text.split()) == 4


async def test_refused_tickets_raise_validation_error_naming_the_check(
    pubkey_file: Path, tickets: Tickets
) -> None:
    async with worker(settings(pubkey_file)) as client:
        used = tickets.issue()
        await tgi(client, used).generate("Hi", max_new_tokens=2)
        cases = [
            (used, "ticket_replayed"),
            (None, "ticket_missing"),
            (tickets.issue(expires_at=1.0), "ticket_expired"),
            ({**tickets.issue(), "cost": 1}, "ticket_bad_signature"),
        ]
        for ticket, code in cases:
            with pytest.raises(tg_errors.ValidationError) as info:
                await tgi(client, ticket).generate("Hi", max_new_tokens=2)
            assert info.value.args[0]["code"] == code
            stream = tgi(client, ticket).generate_stream("Hi", max_new_tokens=2)
            with pytest.raises(tg_errors.ValidationError):
                await anext(stream)
        # /generate too, with the sync client: TGI's own path name
        sync = tg.Client(str(client.make_url("/generate")), headers=_header(used), timeout=10)
        with pytest.raises(tg_errors.ValidationError) as info:
            await asyncio.to_thread(sync.generate, "Hi", max_new_tokens=2)
        assert info.value.args[0]["code"] == "ticket_replayed"


async def test_full_queue_and_draining_raise_overloaded_error(
    pubkey_file: Path, backend: RecordingBackend, tickets: Tickets
) -> None:
    async with worker(settings(pubkey_file, perf=1000.0, max_load=10.0), backend) as client:
        backend.gate.clear()
        slow = await client.post(
            "/generate_stream", data=orjson.dumps(vast_shape(tickets.issue(cost=8.0), PAYLOAD)[0])
        )
        await next_event(slow)
        with pytest.raises(tg_errors.OverloadedError) as info:
            await tgi(client, tickets.issue(cost=3.0)).generate("Hi", max_new_tokens=2)
        assert info.value.args[0]["code"] == "overloaded"
        backend.gate.set()
        await slow.read()
        client.server.app[STATE].start_draining()
        with pytest.raises(tg_errors.OverloadedError) as info:
            await tgi(client, tickets.issue()).generate("Hi", max_new_tokens=2)
        assert info.value.args[0]["code"] == "draining"


async def test_unknown_path_raises_not_found_error(pubkey_file: Path, tickets: Tickets) -> None:
    async with worker(settings(pubkey_file)) as client:
        with pytest.raises(tg_errors.NotFoundError):
            await tgi(client, tickets.issue(), "/nope").generate("Hi", max_new_tokens=2)


def test_error_body_keeps_the_project_shape_and_adds_tgis_error_type() -> None:
    assert error_body(401, "ticket_expired", "ticket has expired") == {
        "error": {"code": "ticket_expired", "message": "ticket has expired"},
        "error_type": "validation",
    }
    assert error_body(429, "overloaded", "full", retry_after_s=2)["error_type"] == "overloaded"
    assert "error_type" not in error_body(404, "not_found", "no route /x")


@pytest.mark.parametrize(
    ("status", "raised"),
    [
        (400, "ValidationError"),
        (401, "ValidationError"),
        (413, "ValidationError"),
        (429, "OverloadedError"),
        (503, "OverloadedError"),
        (500, "GenerationError"),
        (502, "GenerationError"),
        (404, "NotFoundError"),
        (405, "UnknownError"),
    ],
)
def test_text_generation_reads_each_status_as_workers_readme_says(status: int, raised: str) -> None:
    exc = tg_errors.parse_error(status, error_body(status, "code", "message"))
    assert type(exc).__name__ == raised
    assert exc.args[0] == {"code": "code", "message": "message"}
