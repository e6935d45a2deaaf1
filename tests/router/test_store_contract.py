"""One contract, two stores: the memory store and a real redis-server must agree."""

from __future__ import annotations

import asyncio
import dataclasses
import random
import time
from decimal import Decimal

import pytest

from router.state.base import (
    MAX_TICKET_MCOST,
    MCOST_PER_COST,
    HealthUpdate,
    Issued,
    Store,
    StoreUnavailable,
    WorkerRecord,
    quantize,
    reqnum_floor,
    worker_id,
)
from router.state.redis import RedisStore
from tests.conftest import RedisServer
from tests.router.stores import ready


async def test_upsert_is_idempotent_and_keeps_health(store: Store) -> None:
    wid = await ready(store, "demo", "http://127.0.0.1:1")
    again = await store.upsert_worker(
        "demo", "http://127.0.0.1:1", 250.0, 500.0, "static", time.time()
    )
    assert again.id == wid == worker_id("demo", "http://127.0.0.1:1")
    assert again.status == "ready"
    assert (again.perf, again.max_load) == (250.0, 500.0)
    assert [w.id for w in await store.list_workers()] == [wid]


async def test_issue_reqnums_start_at_time_floor_and_increase(store: Store) -> None:
    wid = await ready(store, "demo", "http://127.0.0.1:1")
    now = time.time()
    first = (await store.issue([wid], "ordered", 10, now, 60, 0))[0]
    assert first is not None
    assert first.reqnum == reqnum_floor(now)
    assert first.url == "http://127.0.0.1:1"
    nums = [first.reqnum]
    for _ in range(20):
        got = (await store.issue([wid], "ordered", 10, now, 60, 0))[0]
        assert got is not None
        nums.append(got.reqnum)
    assert nums == sorted(set(nums)) and nums[-1] == nums[0] + 20


async def test_request_idx_assigned_once_and_kept(store: Store) -> None:
    wid = await ready(store, "demo", "http://127.0.0.1:1")
    a = (await store.issue([wid], "ordered", 1, time.time(), 60, 0))[0]
    b = (await store.issue([wid], "ordered", 1, time.time(), 60, 0))[0]
    c = (await store.issue([wid], "ordered", 1, time.time(), 60, 77))[0]
    assert a and b and c
    assert a.request_idx > 0 and b.request_idx > a.request_idx
    assert c.request_idx == 77


async def test_reqnums_are_per_worker(store: Store) -> None:
    w1 = await ready(store, "demo", "http://127.0.0.1:1")
    w2 = await ready(store, "demo", "http://127.0.0.1:2")
    now = time.time()
    a1 = (await store.issue([w1], "ordered", 1, now, 60, 0))[0]
    a2 = (await store.issue([w1], "ordered", 1, now, 60, 0))[0]
    b1 = (await store.issue([w2], "ordered", 1, now, 60, 0))[0]
    assert a1 and a2 and b1
    assert a2.reqnum == a1.reqnum + 1
    assert b1.reqnum == reqnum_floor(now)


async def test_issue_skips_not_ready_and_full_workers(store: Store) -> None:
    busy = await ready(store, "demo", "http://127.0.0.1:1", max_load=100)
    loading = (
        await store.upsert_worker("demo", "http://127.0.0.1:2", 100, None, "static", time.time())
    ).id
    free = await ready(store, "demo", "http://127.0.0.1:3")
    now = time.time()
    assert (await store.issue([busy], "ordered", 80, now, 60, 0))[0]  # idle: fits
    got = (await store.issue([busy, loading, free], "ordered", 80, now, 60, 0))[0]
    assert got is not None and got.worker_id == free  # busy is full, loading is not ready
    assert (await store.issue([busy, loading], "ordered", 80, now, 60, 0))[0] is None


async def test_rescore_uses_fresh_load(store: Store) -> None:
    slow = await ready(store, "demo", "http://127.0.0.1:1", perf=100)
    fast = await ready(store, "demo", "http://127.0.0.1:2", perf=400)
    now = time.time()
    picks = []
    for _ in range(5):
        got = (await store.issue([slow, fast], "rescore", 100, now, 60, 0))[0]
        assert got is not None
        picks.append(got.worker_id)
    # scores fast 0.25, 0.5, 0.75 beat slow's 1.0; the fourth ties at 1.0 and the earlier
    # candidate (slow) wins; the fifth is fast again (1.0 < slow's now 2.0)
    assert picks == [fast, fast, fast, slow, fast]
    w = await store.get_worker(fast)
    assert w is not None and w.pending_cost == 400 and w.pending_requests == 4


async def test_report_drops_seen_tickets_and_expiry_drops_unused(store: Store) -> None:
    wid = await ready(store, "demo", "http://127.0.0.1:1")
    now = time.time()
    t = [(await store.issue([wid], "ordered", 10, now, 5, 0))[0] for _ in range(3)]
    assert all(t)
    seen = t[1].reqnum  # type: ignore[union-attr]
    ok = await store.record_health(wid, HealthUpdate("ready", "ready", 2, 0, now, (7.0, 1, seen)))
    assert ok
    w = await store.get_worker(wid)
    assert w is not None
    assert (w.reported_cost, w.pending_cost, w.pending_requests) == (7.0, 10.0, 1)
    assert w.load == 17.0 and w.max_reqnum_seen == seen
    # the third ticket is never used: after it expires an issue step sweeps it
    later = (await store.issue([wid], "ordered", 1, now + 6, 5, 0))[0]
    assert later is not None
    w = await store.get_worker(wid)
    assert w is not None and (w.pending_cost, w.pending_requests) == (1.0, 1)


async def test_record_health_is_compare_and_set(store: Store) -> None:
    wid = await ready(store, "demo", "http://127.0.0.1:1")
    assert await store.drain_worker(wid) is not None
    # a poll computed from the old "ready" status must not undo the admin drain
    assert not await store.record_health(wid, HealthUpdate("ready", "ready", 3, 0, 1.0, None))
    w = await store.get_worker(wid)
    assert w is not None and w.status == "draining" and w.admin_drain


async def test_remove_worker(store: Store) -> None:
    wid = await ready(store, "demo", "http://127.0.0.1:1")
    assert await store.remove_worker(wid)
    assert not await store.remove_worker(wid)
    assert await store.get_worker(wid) is None
    assert await store.list_workers() == []
    assert await store.drain_worker(wid) is None


async def test_leases_one_holder_at_a_time(store: Store) -> None:
    ids = ["a", "b", "c"]
    assert await store.claim_leases(ids, "r1", 5.0) == {"a", "b", "c"}
    assert await store.claim_leases(ids, "r2", 5.0) == set()
    assert await store.claim_leases(["a"], "r1", 5.0) == {"a"}  # renewal


@pytest.mark.redis
async def test_redis_restart_empty_reqnums_keep_increasing(
    redis_server: RedisServer, redis_url: str
) -> None:
    store = RedisStore(redis_url)
    try:
        wid = await ready(store, "demo", "http://127.0.0.1:1")
        before = [
            (await store.issue([wid], "ordered", 1, time.time(), 60, 0))[0] for _ in range(50)
        ]
        last = before[-1]
        assert last is not None
        redis_server.kill()
        with pytest.raises(StoreUnavailable):
            (await store.issue([wid], "ordered", 1, time.time(), 60, 0))[0]
        with pytest.raises(StoreUnavailable):
            await store.ping()
        # a batch that fails fails each of its callers, none left waiting
        burst = await asyncio.wait_for(
            asyncio.gather(
                *(store.issue([wid], "ordered", 1, time.time(), 60, 0) for _ in range(5)),
                store.release(wid, last.reqnum, 1),
                return_exceptions=True,
            ),
            5,
        )
        assert all(isinstance(r, StoreUnavailable) for r in burst)
        redis_server.start()  # empty: every counter and worker is gone
        await store.ping()  # the same client reconnects by itself
        wid = await ready(store, "demo", "http://127.0.0.1:1")
        after = (await store.issue([wid], "ordered", 1, time.time(), 60, 0))[0]
        assert after is not None and after.reqnum > last.reqnum
    finally:
        await store.close()


async def test_request_idx_assigned_even_when_no_worker_fits(store: Store) -> None:
    ticket, idx = await store.issue([], "ordered", 1, time.time(), 60, 0)
    assert ticket is None and idx > 0
    ticket, idx2 = await store.issue([], "ordered", 1, time.time(), 60, 0)
    assert idx2 > idx
    assert (await store.issue([], "ordered", 1, time.time(), 60, 42))[1] == 42


async def test_release_forgets_a_finished_ticket(store: Store) -> None:
    wid = await ready(store, "demo", "http://127.0.0.1:1")
    now = time.time()
    a = (await store.issue([wid], "ordered", 10, now, 60, 0))[0]
    b = (await store.issue([wid], "ordered", 5, now, 60, 0))[0]
    assert a and b
    assert await store.release(wid, b.reqnum, 5) == "pending"
    assert await store.release(wid, b.reqnum, 5) is None  # once only
    w = await store.get_worker(wid)
    assert w is not None and (w.pending_cost, w.pending_requests) == (10.0, 1)
    assert await store.release(wid, a.reqnum, 10) == "pending"
    w = await store.get_worker(wid)
    assert w is not None and (w.pending_cost, w.pending_requests) == (0.0, 0)
    assert await store.release("nope", 1, 1) is None


async def test_release_of_a_reported_ticket_lowers_the_reported_load(store: Store) -> None:
    """Proxy mode knows completions: a request finishing between two health reports
    takes its cost off at once, though the last report had folded its ticket in."""
    wid = await ready(store, "demo", "http://127.0.0.1:1")
    now = time.time()
    a = (await store.issue([wid], "ordered", 30, now, 60, 0))[0]
    b = (await store.issue([wid], "ordered", 20, now, 60, 0))[0]
    assert a and b
    # the worker reports both in flight: their tickets leave the pending list
    assert await store.record_health(
        wid, HealthUpdate("ready", "ready", 2, 0, now, (50.0, 2, b.reqnum))
    )
    w = await store.get_worker(wid)
    assert w and (w.pending_cost, w.reported_cost, w.reported_requests) == (0.0, 50.0, 2)
    assert await store.release(wid, a.reqnum, 30) == "reported"
    w = await store.get_worker(wid)
    assert w and (w.reported_cost, w.reported_requests) == (20.0, 1)
    # a ticket above what the worker reported seeing is not in its reported load
    c = (await store.issue([wid], "ordered", 7, now, 60, 0))[0]
    assert c and await store.release(wid, c.reqnum, 7) == "pending"
    assert await store.release(wid, c.reqnum, 7) is None
    # never below zero, even when the router's cost estimate exceeds the worker's
    assert await store.release(wid, b.reqnum, 999) == "reported"
    w = await store.get_worker(wid)
    assert w and (w.reported_cost, w.reported_requests) == (0.0, 0)


async def test_concurrent_issues_match_one_at_a_time(store: Store) -> None:
    """A burst (batched into shared EVALSHAs on Redis) picks exactly as serial calls do."""
    fleets = []
    for ep in ("serial", "burst"):
        fleets.append(
            [
                await ready(store, ep, f"http://127.0.0.1:{i}", perf=perf, max_load=ml)
                for i, (perf, ml) in enumerate(
                    [(100.0, None), (300.0, None), (100.0, 250.0)], start=1
                )
            ]
        )
    now = time.time()
    costs = [100.0, 30.0, 250.0, 5.0] * 10
    serial = [await store.issue(fleets[0], "rescore", c, now, 60, 0) for c in costs]
    burst = await asyncio.gather(*(store.issue(fleets[1], "rescore", c, now, 60, 0) for c in costs))

    def picks(got: list[tuple[Issued | None, int]], fleet: list[str]) -> list[int]:
        return [fleet.index(t.worker_id) if t else -1 for t, _ in got]

    assert picks(burst, fleets[1]) == picks(serial, fleets[0])
    assert len(set(picks(burst, fleets[1]))) == 3  # every worker got some
    idxs = [idx for _, idx in burst]
    assert len(set(idxs)) == len(costs) and min(idxs) > max(idx for _, idx in serial)
    for wid in fleets[1]:
        nums = [t.reqnum for t, _ in burst if t is not None and t.worker_id == wid]
        assert nums == sorted(nums) and len(set(nums)) == len(nums)
    for a, b in zip(fleets[0], fleets[1], strict=True):
        wa, wb = await store.get_worker(a), await store.get_worker(b)
        assert (
            wa
            and wb
            and (wa.pending_cost, wa.pending_requests) == (wb.pending_cost, wb.pending_requests)
        )


@pytest.mark.redis
async def test_redis_batches_bursts_of_issues_and_releases(redis_url: str) -> None:
    import redis.asyncio as aioredis

    store = RedisStore(redis_url)
    admin = aioredis.Redis.from_url(redis_url)
    try:
        wid = await ready(store, "demo", "http://127.0.0.1:1")
        await admin.config_resetstat()
        got = await asyncio.gather(
            *(store.issue([wid], "ordered", 1, time.time(), 60, 0) for _ in range(100))
        )
        assert len({t.reqnum for t, _ in got if t is not None}) == 100
        calls = (await admin.info("commandstats"))["cmdstat_evalsha"]["calls"]
        assert calls <= 4  # 100 calls in one loop pass: ceil(100 / 64) batches
        released = await asyncio.gather(
            *(store.release(wid, t.reqnum, 1) for t, _ in got if t is not None)
        )
        assert all(released)
        calls = (await admin.info("commandstats"))["cmdstat_evalsha"]["calls"] - calls
        assert calls <= 4
        w = await store.get_worker(wid)
        assert w is not None and (w.pending_cost, w.pending_requests) == (0.0, 0)
    finally:
        await admin.aclose()
        await store.close()


async def test_rate_limit_allows_a_burst_then_the_rate(store: Store) -> None:
    now = 1000.0
    assert [await store.take_rate("k1", 2.0, 3.0, now) for _ in range(3)] == [0.0] * 3
    wait = await store.take_rate("k1", 2.0, 3.0, now)
    assert wait == pytest.approx(0.5)  # one request per 0.5 s once the burst is spent
    assert await store.take_rate("k1", 2.0, 3.0, now + 0.25) == pytest.approx(0.25)
    assert await store.take_rate("k1", 2.0, 3.0, now + 0.5) == 0.0
    assert await store.take_rate("k1", 2.0, 3.0, now + 0.5) > 0
    assert await store.take_rate("k2", 2.0, 3.0, now) == 0.0  # keys are independent
    # a refused request is not counted: after 1.5 s idle, the burst is back in full
    assert [await store.take_rate("k1", 2.0, 3.0, now + 2.0) for _ in range(3)] == [0.0] * 3


async def test_in_flight_slots_are_bounded_released_and_leased(store: Store) -> None:
    now = 1000.0
    assert await store.acquire_slot("k", 2, "a", now, 60)
    assert await store.acquire_slot("k", 2, "b", now, 60)
    assert not await store.acquire_slot("k", 2, "c", now, 60)
    await store.release_slot("k", "a")
    await store.release_slot("k", "a")  # twice is harmless
    assert await store.acquire_slot("k", 2, "c", now, 60)
    assert not await store.acquire_slot("k", 2, "d", now + 59, 60)
    # a holder that never released (its replica died): the lease frees the slot
    assert await store.acquire_slot("k", 2, "d", now + 61, 60)
    assert await store.acquire_slot("other", 1, "x", now, 60)


@pytest.mark.redis
async def test_redis_restart_leaves_no_stale_connection_behind(
    redis_server: RedisServer, redis_url: str
) -> None:
    """Pooled connections from before a restart are dead; none may fail a request after."""
    store = RedisStore(redis_url)
    try:
        wid = await ready(store, "demo", "http://127.0.0.1:1")
        # fill the pool: concurrent calls each hold a connection
        await asyncio.gather(*(store.get_worker(wid) for _ in range(12)))
        await asyncio.gather(*(store.take_rate(f"k{i}", 1, 1, time.time()) for i in range(12)))
        redis_server.restart_empty()
        for _ in range(30):  # sequential: each may pick a connection idle since the restart
            await store.get_worker(wid)
            await store.take_rate("k", 1000, 1000, time.time())
    finally:
        await store.close()


async def test_list_workers_returns_a_large_fleet_whole(store: Store) -> None:
    # many Redis read chunks (50 each), across two endpoints
    now = time.time()
    for i in range(600):
        await store.upsert_worker(
            "a" if i % 2 else "b", f"http://127.0.0.1:1/w/{i}", 100.0, None, "static", now
        )
    workers = await store.list_workers()
    assert len(workers) == 600 and len({w.id for w in workers}) == 600
    assert {w.url for w in workers} == {f"http://127.0.0.1:1/w/{i}" for i in range(600)}


def test_a_record_copy_has_every_field_and_is_its_own() -> None:
    values: dict[str, object] = {}
    for i, f in enumerate(dataclasses.fields(WorkerRecord)):
        values[f.name] = {"source": "registered", "status": "ready", "admin_drain": True}.get(
            f.name, f"v{i}" if f.type == "str" else i + 1
        )
    w = WorkerRecord(**values)  # type: ignore[arg-type]
    c = w.copy()
    assert c == w and c is not w
    assert dataclasses.asdict(c) == values
    c.pending_mcost = -1
    assert w.pending_mcost == values["pending_mcost"]


@pytest.mark.parametrize("seed", range(3))
async def test_pending_load_sums_stay_exact(store: Store, seed: int) -> None:
    """Issue, release and expiry in any order keep a worker's load the exact decimal sum
    of its outstanding tickets (floats would leave 1e9 + 0.1 - 1e9 = 0.10000002384)."""
    rng = random.Random(seed)
    wid = await ready(store, "demo", "http://127.0.0.1:1")
    ttl, now = 10.0, time.time()
    out: dict[int, tuple[float, float]] = {}  # reqnum -> (cost, expires_at)

    def exact() -> float:
        return float(sum((Decimal(repr(c)) for c, _ in out.values()), Decimal(0)))

    async def check() -> None:
        w = await store.get_worker(wid)
        assert w is not None
        assert (w.pending_cost, w.load, w.pending_requests) == (exact(), exact(), len(out))

    for _ in range(120):
        op = rng.random()
        if op < 0.5 or not out:
            cost = rng.choice([0.1, 0.2, 1e9, 3.3])
            got, _ = await store.issue([wid], "ordered", cost, now, ttl, 1)
            assert got is not None
            for r in sorted(out):  # the issue step swept the expired ones, oldest first
                if out[r][1] < now:
                    del out[r]
            out[got.reqnum] = (cost, now + ttl)
            assert got.load == exact()
        elif op < 0.8:
            r = rng.choice(sorted(out))
            assert await store.release(wid, r, out.pop(r)[0]) == "pending"
        else:
            now += rng.uniform(0, 6)
            continue
        await check()
    # everything expires: the next ticket is all that is left, then nothing
    now += 2 * ttl
    got, _ = await store.issue([wid], "ordered", 0.1, now, ttl, 1)
    assert got is not None and got.load == 0.1
    out = {got.reqnum: (0.1, now + ttl)}
    await check()
    assert await store.release(wid, got.reqnum, 0.1) == "pending"
    out = {}
    await check()
    w = await store.get_worker(wid)
    assert w is not None and w.load == 0.0 and w.pending_mcost == 0


async def test_a_huge_cost_leaves_other_tickets_load_intact(store: Store) -> None:
    wid = await ready(store, "demo", "http://127.0.0.1:1")
    now = time.time()
    small = (await store.issue([wid], "ordered", 100, now, 60, 1))[0]
    huge = (await store.issue([wid], "ordered", 1e308, now, 60, 1))[0]
    assert small and huge and huge.load == 100 + MAX_TICKET_MCOST / MCOST_PER_COST
    assert await store.release(wid, huge.reqnum, 1e308) == "pending"
    w = await store.get_worker(wid)
    assert w is not None and w.load == 100.0


def test_quantize_counts_milli_units_up_to_a_ceiling() -> None:
    assert [quantize(c) for c in (0.0, 0.0004, 0.1, 3.3, 1e9)] == [0, 0, 100, 3300, 10**12]
    assert quantize(1e12) == quantize(1e308) == MAX_TICKET_MCOST
    w = WorkerRecord("id", "demo", "http://w", 100.0, pending_mcost=300)
    assert (w.pending_cost, w.load) == (0.3, 0.3)
    w.pending_cost = 0.2  # older callers set the float
    assert w.pending_mcost == 200


async def test_a_lease_expires_and_another_holder_takes_it(store: Store) -> None:
    assert await store.claim_leases(["a", "b"], "r1", 0.2) == {"a", "b"}
    assert await store.claim_leases(["a"], "r2", 0.2) == set()
    await asyncio.sleep(0.3)  # a real lease runs on the store's clock: nothing to await
    assert await store.claim_leases(["a"], "r2", 5.0) == {"a"}
    assert await store.claim_leases(["a", "b"], "r1", 5.0) == {"b"}  # r1 renews nothing it lost


async def test_upsert_changes_only_a_worker_of_the_same_source_and_owner(store: Store) -> None:
    now = time.time()
    static = await ready(store, "demo", "http://127.0.0.1:1", perf=100.0, max_load=None)
    # a registration cannot change a configured worker; it gets the record as stored
    got = await store.upsert_worker("demo", "http://127.0.0.1:1", 1.0, 5.0, "registered", now, "a")
    assert (got.id, got.source, got.owner, got.perf, got.max_load) == (
        static,
        "static",
        "",
        100.0,
        None,
    )
    assert got.status == "ready"
    # token A registers a worker; token B cannot change it, A can
    url = "http://127.0.0.1:2"
    a = await store.upsert_worker("demo", url, 200.0, 50.0, "registered", now, "a")
    assert (a.source, a.owner, a.perf, a.max_load, a.status) == (
        "registered",
        "a",
        200.0,
        50.0,
        "loading",
    )
    b = await store.upsert_worker("demo", url, 1.0, None, "registered", now, "b")
    assert (b.owner, b.perf, b.max_load) == ("a", 200.0, 50.0)
    a2 = await store.upsert_worker("demo", url, 300.0, None, "registered", now + 1, "a")
    assert (a2.owner, a2.perf, a2.max_load, a2.registered_at) == ("a", 300.0, None, now)
    # the config (source static, no owner) cannot take it over either
    c = await store.upsert_worker("demo", url, 9.0, 9.0, "static", now)
    assert (c.source, c.owner, c.perf) == ("registered", "a", 300.0)
    stored = {w.id: w for w in await store.list_workers()}
    assert (stored[a.id].owner, stored[a.id].perf) == ("a", 300.0)
    assert (stored[static].owner, stored[static].perf) == ("", 100.0)
    assert await store.get_worker(a.id) == stored[a.id]
