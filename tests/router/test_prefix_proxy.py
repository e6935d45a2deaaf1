"""cache_aware in proxy mode, on both server paths (the fast_path fixture of test_proxy.py):
the prompt comes from the body the core parsed for the cost."""

from __future__ import annotations

import orjson

from router.prefix import BLOCK_CHARS
from tests.router.helpers import ready_count, router_client, until
from tests.router.test_prefix_routing import STICKY, chat
from tests.router.test_proxy import AUTH, Upstream, fast_path, proxy_settings, ups

__all__ = ["fast_path", "ups"]  # fixtures: every test here runs on both paths


async def test_proxy_sends_a_conversation_to_one_worker(ups: list[Upstream]) -> None:
    s = proxy_settings(ups, policy="cache_aware", cache_aware=STICKY)
    async with router_client(s) as (client, ctx):
        await until(lambda: ready_count(ctx) == 2)
        who: dict[int, set[str]] = {}
        for turn in range(1, 5):
            for conv in range(4):
                resp = await client.post(
                    "/v1/chat/completions",
                    data=orjson.dumps({"model": "demo-model", "messages": chat(conv, turn)}),
                    headers={**AUTH, "Content-Type": "application/json"},
                )
                assert resp.status == 200
                who.setdefault(conv, set()).add((await resp.json())["who"])
        assert all(len(w) == 1 for w in who.values()), who
        # TGI's inputs on the endpoint's own path too
        body = {"inputs": "i" * BLOCK_CHARS * 2, "parameters": {"max_new_tokens": 4}}
        seen = set()
        for _ in range(4):
            resp = await client.post(
                "/demo/generate",
                data=orjson.dumps(body),
                headers={**AUTH, "Content-Type": "application/json"},
            )
            seen.add((await resp.json())["who"])
        assert len(seen) == 1


async def test_proxy_without_a_json_prompt_is_balanced(ups: list[Upstream]) -> None:
    s = proxy_settings(ups, policy="cache_aware")
    async with router_client(s) as (client, ctx):
        await until(lambda: ready_count(ctx) == 2)
        resp = await client.post("/demo/raw", data=b"not json", headers=AUTH)
        assert resp.status == 200
