"""Vast.ai's own serverless client (PyPI `vastai`), unchanged, against router + worker.

The SDK POSTs `/route/` with `request_idx`, polls while the answer has no `url`, then
POSTs `{"auth_data": ticket, "payload": ..., "session_id": None}` to the worker.
"""

from __future__ import annotations

import asyncio
import ssl
from pathlib import Path

import pytest

from tests.e2e.procs import (
    free_port,
    router_config,
    router_proc,
    statuses,
    wait_port,
    worker_proc,
)

serverless = pytest.importorskip("vastai.serverless.client")

pytestmark = pytest.mark.e2e


def client(router_url: str) -> object:
    c = serverless.CoroutineServerless(
        api_key="dev-key", autoscaler_url=router_url, max_poll_interval=0.5
    )
    # The SDK downloads Vast's root certificate before its first request, even for plain
    # http. Pre-seeding the context keeps it off the network (this machine has none).
    c._ssl_context = ssl.create_default_context()
    return c


async def test_vast_sdk_waits_for_a_worker_then_gets_served(tmp_path: Path) -> None:
    port = free_port()
    router_url = f"http://127.0.0.1:{port}"
    wport = free_port()
    wurl = f"http://127.0.0.1:{wport}"
    cfg = router_config(
        tmp_path / "router.toml",
        port=port,
        store="memory",
        redis_url="",
        worker_urls=[wurl],
        interval_s=0.2,
    )
    router = router_proc(cfg, tmp_path).start()
    worker = worker_proc(wport, router_url, tmp_path)
    try:
        wait_port(port)
        c = client(router_url)
        async with c:
            endpoint = serverless.Endpoint(c, name="demo", id=1, api_key="dev-key")
            payload = {"inputs": "What is deep learning?", "parameters": {"max_new_tokens": 8}}
            # No worker yet: the SDK keeps polling /route/ (200 without url) ...
            pending = asyncio.ensure_future(
                endpoint.request("/generate", payload, cost=8, timeout=60)
            )
            await asyncio.sleep(1.0)
            assert not pending.done()
            # ... until one is up, then it calls the worker with the ticket.
            worker.start()
            result = await asyncio.wait_for(pending, 30)
            assert result["ok"] is True and result["status"] == 200
            assert len(result["response"]["generated_text"].split()) == 8
            assert result["url"] == wurl and result["request_idx"] > 0
            assert result["auth_data"]["reqnum"] > 0
            # and a second request is served straight away
            again = await asyncio.wait_for(endpoint.request("/generate", payload, cost=8), 10)
            assert again["ok"] and again["response"] == result["response"]
        assert statuses(router_url) == {wurl: "ready"}
    except BaseException:
        print(router.log(), worker.log())
        raise
    finally:
        worker.kill()
        router.kill()
