"""The control plane under faults: workers killed or never ready, Redis lost, restarts."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import orjson
import pytest

from router.control.plane import CONTROL
from router.control.providers.local import LocalProvider
from router.signing import KeyRing
from tests.conftest import RedisServer
from tests.control.helpers import ADMIN, alive, control_router, control_settings, until_gone
from tests.control.test_avesha import BASE, SEED_CREATE, state_of
from tests.router.helpers import until

NEVER_READY = """
[[runtimes]]
format = "stuck"
backend = "openai"
command = ["{python}", "-c", "import time; print('loading weights...', flush=True); time.sleep(60)"]
ready_timeout_s = 2
"""


def provider(client: object) -> LocalProvider:
    p = client.app[CONTROL].providers["local"]  # type: ignore[attr-defined]
    assert isinstance(p, LocalProvider)
    return p


async def test_a_killed_worker_is_replaced(tmp_path: Path) -> None:
    async with control_router(control_settings(tmp_path)) as (client, ctx):
        resp = await client.post(BASE, data=orjson.dumps(SEED_CREATE), headers=ADMIN)
        assert resp.status == 200
        await until(lambda: state_of(ctx, "sklearn-iris") == "Running", timeout_s=30)
        (first,) = await provider(client).observe()
        pids = provider(client).pids(first.id)
        os.kill(pids[0], signal.SIGKILL)
        # the lifecycle sees it exit, takes it out of rotation, starts another: wait on
        # what the data plane reads, a ready worker that is not the killed one
        await until(
            lambda: (
                any(w.ready and w.url != first.url for w in ctx.snapshot.endpoint("sklearn-iris"))
                and all(w.url != first.url for w in ctx.snapshot.endpoint("sklearn-iris"))
            ),
            timeout_s=30,
        )
        (second,) = await provider(client).observe()
        assert second.id != first.id
        resp = await client.post(
            "/sklearn-iris/generate",
            headers=ADMIN,
            json={"inputs": "hi", "parameters": {"max_new_tokens": 2}},
        )
        assert resp.status == 200
    await until_gone(provider_pids := [p for p in pids if alive(p)])
    assert provider_pids == [] or not any(alive(p) for p in provider_pids)


async def test_a_worker_never_ready_fails_the_endpoint_with_its_last_lines(
    tmp_path: Path,
) -> None:
    settings = control_settings(tmp_path, extra=NEVER_READY)
    async with control_router(settings) as (client, ctx):
        body = {**SEED_CREATE, "modelSpec": {"modelName": "stuck", "storageURI": "gs://x/y"}}
        resp = await client.post(BASE, data=orjson.dumps(body), headers=ADMIN)
        assert resp.status == 200, await resp.text()
        await until(lambda: state_of(ctx, "sklearn-iris") == "Failed", timeout_s=30)
        reason = ctx.registry.records["sklearn-iris"].reason
        assert "loading weights..." in reason and "2" in reason, reason
        resp = await client.get(f"{BASE}?workspace=team-beta&endpoint=sklearn-iris", headers=ADMIN)
        doc = await resp.json()
        assert doc["data"]["endpoint"]["status"] == "Failed"
        assert doc["data"]["endpoint"]["predictStatus"] == "Failed"
        assert await provider(client).observe() == []  # nothing left running


async def test_the_memory_store_keeps_endpoints_across_a_restart(tmp_path: Path) -> None:
    state = tmp_path / "state.json"
    settings = control_settings(tmp_path, state_file=state)
    ring = KeyRing.ephemeral("ed25519")
    async with control_router(settings, ring) as (client, ctx):
        resp = await client.post(BASE, data=orjson.dumps(SEED_CREATE), headers=ADMIN)
        assert resp.status == 200
        await until(lambda: state_of(ctx, "sklearn-iris") == "Running", timeout_s=30)
        pids = provider(client).pids((await provider(client).observe())[0].id)
    await until_gone(pids)  # stopping the router stops its workers: no orphans
    async with control_router(settings, ring) as (client, ctx):
        assert "sklearn-iris" in ctx.registry.records  # read back from the state file
        # the lifecycle starts its workers again; wait on what the data plane reads
        assert await ctx.fleet.until_ready("sklearn-iris", 30)
        resp = await client.post(
            "/sklearn-iris/generate",
            headers=ADMIN,
            json={"inputs": "hi", "parameters": {"max_new_tokens": 2}},
        )
        assert resp.status == 200


@pytest.mark.redis
async def test_redis_lost_its_data_and_no_endpoint_is_lost(
    tmp_path: Path, redis_url: str, redis_server: RedisServer
) -> None:
    settings = control_settings(tmp_path, store="redis", redis_url=redis_url)
    async with control_router(settings) as (client, ctx):
        resp = await client.post(BASE, data=orjson.dumps(SEED_CREATE), headers=ADMIN)
        assert resp.status == 200
        await until(lambda: state_of(ctx, "sklearn-iris") == "Running", timeout_s=30)
        redis_server.restart_empty()
        # the replica still knows it; the leader writes it back into the new Redis
        await until(lambda: _in_redis(redis_server, "sklearn-iris"), timeout_s=15)
        assert "sklearn-iris" in ctx.registry.records
        assert await ctx.fleet.until_ready("sklearn-iris", 30)
        resp = await client.post(
            "/sklearn-iris/generate",
            headers=ADMIN,
            json={"inputs": "hi", "parameters": {"max_new_tokens": 2}},
        )
        assert resp.status == 200, await resp.text()


def _in_redis(server: RedisServer, name: str) -> bool:
    import redis

    r = redis.Redis(port=server.port)
    try:
        return any(name.encode() in k for k in r.keys("*doc*"))
    except redis.RedisError:
        return False
    finally:
        r.close()


SLOW = """
[[runtimes]]
format = "slow"
backend = "synthetic"
perf = 400
tokens_per_s = 20
ttft_ms = 10
[runtimes.endpoint.health]
interval_s = 0.1
healthy_after = 1
"""


async def test_a_delete_drains_a_stream_in_flight(tmp_path: Path) -> None:
    settings = control_settings(tmp_path, extra=SLOW)
    async with control_router(settings) as (client, ctx):
        body = {**SEED_CREATE, "modelSpec": {"modelName": "slow", "storageURI": "gs://x/y"}}
        resp = await client.post(BASE, data=orjson.dumps(body), headers=ADMIN)
        assert resp.status == 200
        assert await ctx.fleet.until_ready("sklearn-iris", 30)
        stream = await client.post(
            "/sklearn-iris/generate_stream",
            headers=ADMIN,
            json={"inputs": "hi", "parameters": {"max_new_tokens": 40}},  # 2 s at 20 tokens/s
        )
        assert stream.status == 200
        first = await stream.content.readuntil(b"\n\n")
        assert first.startswith(b"data:")
        resp = await client.request(
            "DELETE",
            BASE,
            headers=ADMIN,
            data=orjson.dumps({"workspace": "team-beta", "endpoint": "sklearn-iris"}),
        )
        assert resp.status == 200
        await until(lambda: state_of(ctx, "sklearn-iris") == "Deleting", timeout_s=5)
        rest = await stream.read()  # the stream finishes: the worker drains before it stops
        assert (first + rest).count(b"data:") == 40
        await until(lambda: "sklearn-iris" not in ctx.registry.records, timeout_s=30)
        assert await provider(client).observe() == []


async def test_a_scale_down_drains_the_worker_it_stops(tmp_path: Path) -> None:
    from tests.control.helpers import BYTEZ_ADMIN

    model = """
[[models]]
name = "slow/model"
runtime = "slow"
"""
    settings = control_settings(tmp_path, extra=SLOW + model)
    async with control_router(settings) as (client, ctx):
        load = {"model": "slow/model", "concurrency": 2}
        resp = await client.post("/model/load", headers=BYTEZ_ADMIN, data=orjson.dumps(load))
        assert resp.status == 200
        name = "slow--model"
        await until(lambda: sum(w.ready for w in ctx.snapshot.endpoint(name)) == 2, timeout_s=30)
        streams = [
            await client.post(
                f"/{name}/generate_stream",
                headers=ADMIN,
                json={"inputs": "hi", "parameters": {"max_new_tokens": 40}},
            )
            for _ in range(2)
        ]
        firsts = [await s.content.readuntil(b"\n\n") for s in streams]
        busy = {w.url for w in ctx.snapshot.endpoint(name) if w.load > 0}
        assert len(busy) == 2  # one stream on each
        resp = await client.post(
            "/model/load", headers=BYTEZ_ADMIN, data=orjson.dumps({**load, "concurrency": 1})
        )
        assert resp.status == 200
        for first, s in zip(firsts, streams, strict=True):
            assert (first + await s.read()).count(b"data:") == 40  # neither stream is cut
        await until(lambda: len(ctx.snapshot.endpoint(name)) == 1, timeout_s=30)
        for _ in range(200):  # the drained one is stopped, then forgotten
            if len(await provider(client).observe()) == 1:
                break
            await ctx.fleet.until_ready("never", 0.05)
        assert len(await provider(client).observe()) == 1


@pytest.mark.redis
async def test_a_router_on_redis_restarted_keeps_its_endpoints(
    tmp_path: Path, redis_url: str
) -> None:
    settings = control_settings(tmp_path, store="redis", redis_url=redis_url)
    ring = KeyRing.ephemeral("ed25519")
    async with control_router(settings, ring) as (client, ctx):
        resp = await client.post(BASE, data=orjson.dumps(SEED_CREATE), headers=ADMIN)
        assert resp.status == 200
        assert await ctx.fleet.until_ready("sklearn-iris", 30)
        pids = provider(client).pids((await provider(client).observe())[0].id)
    await until_gone(pids)  # its workers went with it
    async with control_router(settings, ring) as (client, ctx):
        assert "sklearn-iris" in ctx.registry.records  # from Redis
        assert await ctx.fleet.until_ready("sklearn-iris", 30)  # workers started again
        resp = await client.post(
            "/sklearn-iris/generate",
            headers=ADMIN,
            json={"inputs": "hi", "parameters": {"max_new_tokens": 2}},
        )
        assert resp.status == 200
        assert len(await provider(client).observe()) == 1  # one, not one per restart


@pytest.mark.redis
async def test_redis_down_mid_create_leaves_nothing_half_made(
    tmp_path: Path, redis_url: str, redis_server: RedisServer
) -> None:
    settings = control_settings(tmp_path, store="redis", redis_url=redis_url)
    async with control_router(settings) as (client, ctx):
        redis_server.kill()
        resp = await client.post(BASE, data=orjson.dumps(SEED_CREATE), headers=ADMIN)
        doc = await resp.json()
        assert resp.status == doc["statusCode"] == 503  # said plainly, nothing created
        assert "sklearn-iris" not in ctx.registry.records
        assert await provider(client).observe() == []
        redis_server.start()
        for _ in range(100):  # the client retries until the store is back
            resp = await client.post(BASE, data=orjson.dumps(SEED_CREATE), headers=ADMIN)
            if resp.status != 503:
                break
            await ctx.fleet.until_ready("never", 0.1)
        assert resp.status == 200, await resp.text()
        resp = await client.post(BASE, data=orjson.dumps(SEED_CREATE), headers=ADMIN)
        assert resp.status == 409  # exactly one
        assert await ctx.fleet.until_ready("sklearn-iris", 30)
        assert len(await provider(client).observe()) == 1
