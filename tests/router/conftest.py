"""Fixtures for router tests: two fake workers answering /readyz; each store in turn."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from router.state.base import Store
from router.state.memory import MemoryStore
from router.state.redis import RedisStore
from tests.router.helpers import FakeWorker


@pytest.fixture(params=["memory", "redis"])
async def store(request: pytest.FixtureRequest) -> AsyncIterator[Store]:
    """The memory store, then one on a real redis-server: a contract test runs on both."""
    if request.param == "memory":
        s: Store = MemoryStore()
    else:
        s = RedisStore(request.getfixturevalue("redis_url"))
    yield s
    await s.close()


@pytest.fixture
async def workers() -> AsyncIterator[list[FakeWorker]]:
    ws = [FakeWorker(), FakeWorker()]
    for w in ws:
        await w.start()
    yield ws
    for w in ws:
        await w.stop()
