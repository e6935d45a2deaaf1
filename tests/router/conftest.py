"""Fixtures for router tests: two fake workers answering /readyz."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from tests.router.helpers import FakeWorker


@pytest.fixture
async def workers() -> AsyncIterator[list[FakeWorker]]:
    ws = [FakeWorker(), FakeWorker()]
    for w in ws:
        await w.start()
    yield ws
    for w in ws:
        await w.stop()
