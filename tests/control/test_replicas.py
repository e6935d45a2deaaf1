"""Two routers on one Redis: every replica sees and routes a created endpoint, names are
unique across them, and one leader runs the workers."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import orjson
import pytest

from router.control.plane import CONTROL
from router.signing import KeyRing
from tests.control.helpers import ADMIN, control_router, control_settings
from tests.control.test_avesha import BASE, SEED_CREATE, state_of
from tests.router.helpers import until

pytestmark = pytest.mark.redis


async def test_a_create_on_one_replica_is_seen_and_routed_by_the_other(
    tmp_path: Path, redis_url: str
) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    sa = control_settings(tmp_path / "a", store="redis", redis_url=redis_url)
    sb = control_settings(tmp_path / "b", store="redis", redis_url=redis_url)
    ring = KeyRing.ephemeral("ed25519")  # replicas share their signing keys
    async with control_router(sa, ring) as (a, ctx_a), control_router(sb, ring) as (b, ctx_b):
        resp = await a.post(BASE, data=orjson.dumps(SEED_CREATE), headers=ADMIN)
        assert resp.status == 200, await resp.text()
        created = time.monotonic()
        await until(lambda: "sklearn-iris" in ctx_b.registry.records, timeout_s=2)
        assert time.monotonic() - created < 1.0  # every replica sees it within 1 s
        await until(lambda: state_of(ctx_b, "sklearn-iris") == "Running", timeout_s=30)
        resp = await b.post(
            "/sklearn-iris/generate",
            headers=ADMIN,
            json={"inputs": "hi", "parameters": {"max_new_tokens": 4}},
        )
        assert resp.status == 200, await resp.text()
        # exactly one replica runs the workers: the leader
        running = [len(await app[CONTROL].providers["local"].observe()) for app in (a.app, b.app)]
        assert sorted(running) == [0, 1], running

        # the same name on both at once: exactly one wins
        body = {**SEED_CREATE, "endpointName": "racer"}
        answers = await asyncio.gather(
            a.post(BASE, data=orjson.dumps(body), headers=ADMIN),
            b.post(BASE, data=orjson.dumps(body), headers=ADMIN),
        )
        assert sorted(r.status for r in answers) == [200, 409]

        # a delete on B takes it away on A too, workers and all
        resp = await b.request(
            "DELETE",
            BASE,
            headers=ADMIN,
            data=orjson.dumps({"workspace": "team-beta", "endpoint": "sklearn-iris"}),
        )
        assert resp.status == 200
        await until(lambda: "sklearn-iris" not in ctx_a.registry.records, timeout_s=30)
        await until(lambda: ctx_a.snapshot.endpoint("sklearn-iris") == [], timeout_s=5)
        resp = await a.post("/sklearn-iris/generate", headers=ADMIN, json={"inputs": "x"})
        assert resp.status == 404


async def test_a_request_held_on_one_replica_is_served_by_a_worker_the_other_started(
    tmp_path: Path, redis_url: str
) -> None:
    from tests.control.test_cold_start import COLD, GEN

    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    extra = COLD.format(held=100)
    sa = control_settings(tmp_path / "a", store="redis", redis_url=redis_url, extra=extra)
    sb = control_settings(tmp_path / "b", store="redis", redis_url=redis_url, extra=extra)
    ring = KeyRing.ephemeral("ed25519")
    async with control_router(sa, ring) as (a, ctx_a), control_router(sb, ring) as (b, ctx_b):
        apps = {id(ctx_a): a.app, id(ctx_b): b.app}
        await until(
            lambda: any(
                app[CONTROL].lifecycle is not None and app[CONTROL].lifecycle.leader
                for app in apps.values()
            )
        )
        leader_ctx = ctx_a if a.app[CONTROL].lifecycle.leader else ctx_b
        follower, follower_ctx = (b, ctx_b) if leader_ctx is ctx_a else (a, ctx_a)
        # the follower holds it; only the leader can start the worker
        resp = await follower.post("/cold/generate", headers=ADMIN, json=GEN)
        assert resp.status == 200, await resp.text()
        assert resp.headers["X-Cold-Start"] == "1"
        assert follower_ctx.holds.held("cold") == 0
        follower_app = apps[id(follower_ctx)]
        assert await follower_app[CONTROL].providers["local"].observe() == []
