"""Keys from the router's JWKS: late router, rotation by refetch, rate limit, shared fetch."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import orjson
import pytest
from aiohttp import web

from router.signing import KeyRing, SigningKey, generate_private_key, key_id_for
from tests.conftest import free_port
from tests.workers.helpers import (
    PAYLOAD,
    Client,
    Tickets,
    readyz,
    serve_app,
    settings,
    until,
    vast_shape,
    worker,
)
from workers.app import STATE
from workers.keys import KeySource
from workers.verify import TicketVerifier


@dataclass
class FakeRouter:
    """Serves a key ring's JWKS, counting fetches; `gate` holds answers back when cleared."""

    ring: KeyRing
    fetches: int = 0
    gate: asyncio.Event = field(default_factory=asyncio.Event)
    asked: asyncio.Event = field(default_factory=asyncio.Event)

    def __post_init__(self) -> None:
        self.gate.set()

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/.well-known/jwks.json", self.jwks)
        return app

    async def jwks(self, request: web.Request) -> web.Response:
        self.fetches += 1
        self.asked.set()
        await self.gate.wait()
        return web.Response(body=self.ring.jwks_bytes(), content_type="application/json")


def rotated(ring: KeyRing) -> KeyRing:
    """The ring plus a newer key that now signs (the old one still verifies)."""
    private = generate_private_key("ed25519")
    return KeyRing([*ring.keys, SigningKey(key_id_for(private.public_key()), private)])


@pytest.fixture
async def router() -> AsyncIterator[tuple[FakeRouter, str]]:
    fake = FakeRouter(KeyRing.ephemeral("ed25519"))
    async with serve_app(fake.app()) as server:
        yield fake, str(server.make_url("")).rstrip("/")


async def _ready(client: Client) -> bool:
    return (await readyz(client))[0] == 200


async def _serve(client: Client, ticket: dict[str, object]) -> tuple[int, str]:
    resp = await client.post("/generate", data=orjson.dumps(vast_shape(ticket, PAYLOAD)[0]))
    doc = orjson.loads(await resp.read())
    return resp.status, doc["error"]["code"] if "error" in doc else ""


async def test_jwks_fetch_then_rotation_by_refetch(router: tuple[FakeRouter, str]) -> None:
    fake, url = router
    async with worker(settings(router_url=url)) as client:
        await until(lambda: _ready(client), what="worker ready with the router's keys")
        tickets = Tickets(fake.ring)
        assert await _serve(client, tickets.issue()) == (200, "")
        assert fake.fetches == 1

        old = fake.ring
        fake.ring = rotated(old)
        assert fake.ring.kid != old.kid
        assert await _serve(client, tickets.issue(ring=fake.ring)) == (200, "")
        assert fake.fetches == 2  # one refetch on the unknown key_id
        assert await _serve(client, tickets.issue(ring=old)) == (200, "")  # old still valid

        # Another unknown key_id within the interval: refused without asking the router.
        stranger = KeyRing.ephemeral("ed25519")
        assert await _serve(client, tickets.issue(ring=stranger)) == (401, "ticket_unknown_key")
        assert fake.fetches == 2


async def test_worker_waits_for_a_router_that_starts_later() -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    fake = FakeRouter(KeyRing.ephemeral("ed25519"))
    async with worker(settings(router_url=url)) as client:
        status, doc = await readyz(client)
        assert status == 503 and "keys" in doc["reason"]
        async with serve_app(fake.app(), port=port):
            await until(lambda: _ready(client), timeout_s=10, what="keys loaded after retry")
            assert await _serve(client, Tickets(fake.ring).issue()) == (200, "")


async def test_pubkey_file_and_jwks_together(
    router: tuple[FakeRouter, str], tmp_path: Path
) -> None:
    fake, url = router
    pem_ring = KeyRing.ephemeral("rsa")
    path = tmp_path / "k.pem"
    path.write_text(pem_ring.public_pem())

    async def jwks_loaded() -> bool:
        return fake.ring.kid in client.server.app[STATE].verifier.keys

    async with worker(settings(path, router_url=url)) as client:
        assert await _ready(client)  # the PEM key alone makes it ready
        await until(jwks_loaded, what="JWKS loaded beside the PEM key")
        tickets = Tickets(pem_ring)
        assert await _serve(client, tickets.issue()) == (200, "")
        assert await _serve(client, tickets.issue(ring=fake.ring)) == (200, "")


async def test_concurrent_unknown_keys_share_one_refetch(router: tuple[FakeRouter, str]) -> None:
    fake, url = router
    verifier = TicketVerifier({}, "http://w:1", "demo")
    source = KeySource(verifier, url, {}, refetch_interval_s=60)
    async with aiohttp.ClientSession() as session:
        source._session = session  # no background load: refetch alone
        fake.gate.clear()

        async def open_gate_once_asked() -> bool:
            await fake.asked.wait()
            fake.gate.set()
            return True

        results = await asyncio.gather(
            *(source.refetch() for _ in range(5)), open_gate_once_asked()
        )
        assert results == [True] * 6
        assert fake.fetches == 1
        assert set(verifier.keys) == {fake.ring.kid}
        assert await source.refetch() is False  # rate-limited
        assert fake.fetches == 1
        await source.close()


async def test_keys_dropped_from_the_jwks_are_revoked(router: tuple[FakeRouter, str]) -> None:
    fake, url = router
    verifier = TicketVerifier({}, "http://w:1", "demo")
    source = KeySource(verifier, url, {}, refetch_interval_s=0)
    async with aiohttp.ClientSession() as session:
        source._session = session
        assert await source.fetch_once()
        first = fake.ring.kid
        fake.ring = KeyRing.ephemeral("ed25519")
        assert await source.refetch()
        assert set(verifier.keys) == {fake.ring.kid} and first not in verifier.keys


async def test_failed_refetch_keeps_the_keys(router: tuple[FakeRouter, str]) -> None:
    fake, url = router
    verifier = TicketVerifier({}, "http://w:1", "demo")
    source = KeySource(verifier, url, {}, refetch_interval_s=0)
    async with aiohttp.ClientSession() as session:
        source._session = session
        assert await source.fetch_once()
        source.jwks_url = url + "/missing"
        started = time.monotonic()
        assert await source.refetch() is False
        assert time.monotonic() - started < 3
        assert set(verifier.keys) == {fake.ring.kid}


async def test_refresh_revokes_a_dropped_key_without_any_ticket(
    router: tuple[FakeRouter, str],
) -> None:
    fake, url = router
    fake.ring = rotated(fake.ring)  # two keys published: the old one and the new signer
    old, new = fake.ring.keys[0].kid, fake.ring.kid
    verifier = TicketVerifier({}, "http://w:1", "demo")
    source = KeySource(verifier, url, {}, refetch_interval_s=60, refresh_s=0.05)
    async with aiohttp.ClientSession() as session:
        source.start(session)

        async def keys_are(*kids: str) -> bool:
            return set(verifier.keys) == set(kids)

        try:
            await until(lambda: keys_are(old, new))
            fake.ring = KeyRing(fake.ring.keys[1:])  # the router drops the old key
            await until(lambda: keys_are(new))
        finally:
            await source.close()


async def test_refresh_logs_at_info_only_when_the_key_set_changed(
    router: tuple[FakeRouter, str], caplog: pytest.LogCaptureFixture
) -> None:
    fake, url = router
    verifier = TicketVerifier({}, "http://w", "demo")
    source = KeySource(verifier, url, {})
    async with aiohttp.ClientSession() as session:
        source._session = session
        with caplog.at_level(logging.DEBUG, logger="workers.keys"):
            for _ in range(3):  # the first load, then two refreshes with nothing new
                assert await source.fetch_once()
            fake.ring = rotated(fake.ring)
            assert await source.fetch_once()
    levels = [(r.levelno, r.getMessage().split()[1]) for r in caplog.records]
    assert levels == [
        (logging.INFO, "router"),
        (logging.DEBUG, "keys"),
        (logging.DEBUG, "keys"),
        (logging.INFO, "router"),
    ]
    assert fake.ring.kid in caplog.records[-1].getMessage()
