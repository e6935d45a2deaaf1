"""A real model, end to end: local provider -> llama.cpp server -> worker -> router -> SDK."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from router.config import HealthSettings
from router.control.providers.local import LocalProvider
from tests.control import realmodel
from tests.control.helpers import until_states
from tests.router.helpers import (
    ADMIN_KEY,
    DEV_KEY,
    ready_count,
    replace,
    router_client,
    settings,
    until,
)

pytestmark = [pytest.mark.realmodel, pytest.mark.timeout(240)]
REQUIRE_REALMODEL = os.environ.get("REQUIRE_REALMODEL") == "1"  # CI: a skip is a failure
QUESTION = [{"role": "user", "content": "What is the capital of France?"}]
# a real model on two shared cores answers a health poll in ms, but now and then in
# half a second: the router tests' 0.5 s timeout would eject it mid-request
HEALTH = HealthSettings(
    interval_s=0.25, timeout_s=2.0, unhealthy_after=3, healthy_after=1, remove_after_s=60
)


async def test_a_real_completion_through_the_router(tmp_path: Path) -> None:
    missing = realmodel.missing()
    if missing is not None:
        if REQUIRE_REALMODEL:
            pytest.fail(f"realmodel: REQUIRE_REALMODEL=1 but not installed: {missing}")
        pytest.skip(f"realmodel: not installed: {missing}")
    openai = pytest.importorskip("openai")
    s = settings([])
    s = replace(s, endpoints=(replace(s.endpoints[0], health=HEALTH), *s.endpoints[1:]))
    async with router_client(s) as (client, ctx):
        router_url = str(client.make_url("")).rstrip("/")
        provider = LocalProvider(router_url, tmp_path, grace_s=5.0)
        try:
            [w] = await provider.start(realmodel.endpoint("demo"), 1)
            await until_states(provider, {w.id: "running"}, timeout_s=150)
            resp = await client.post(
                "/api/v1/workers",
                json={"endpoint": "demo", "url": w.url, "perf": realmodel.RUNTIME.perf},
                headers={"Authorization": f"Bearer {ADMIN_KEY}"},
            )
            assert resp.status == 201, await resp.text()
            await until(lambda: ready_count(ctx) == 1, timeout_s=10)
            sdk = openai.AsyncOpenAI(
                base_url=f"{router_url}/v1", api_key=DEV_KEY, max_retries=0, timeout=60
            )
            try:
                done = await sdk.chat.completions.create(
                    model="demo", messages=QUESTION, max_tokens=8
                )
                text = done.choices[0].message.content
                assert text and text.strip()
                # llama_cpp 0.2.60 skips its max_tokens check while the text ends inside a
                # UTF-8 character (llama.py, the multibyte fix), so a reply ending in "é"
                # can run up to 3 tokens past max_tokens
                assert done.usage is not None and 0 < done.usage.completion_tokens <= 8 + 3
                stream = await sdk.chat.completions.create(
                    model="demo", messages=QUESTION, max_tokens=8, stream=True
                )
                chunks = [c async for c in stream]
            finally:
                await sdk.close()
            pieces = [c.choices[0].delta.content or "" for c in chunks if c.choices]
            assert "".join(pieces).strip()
            assert 1 < len([p for p in pieces if p]) <= 8  # streamed, token by token
            [seen] = await provider.observe()
            assert seen.rss_bytes is not None and seen.rss_bytes > 100 * 2**20  # model + worker
        finally:
            await provider.close()
