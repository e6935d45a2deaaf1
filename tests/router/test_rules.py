"""Each rule that exists in Python and in Lua, run from one case table against every copy.

The copies: the Python function, the Lua function alone (its snippet from
router/state/redis_scripts.py and a few lines of harness, by EVAL on a real redis-server),
and both stores through the Store interface. The tables are in rule_cases.py.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis.asyncio as aioredis

from router.balancer import Candidate, finalize
from router.prefix import deepest
from router.state import ledger
from router.state.base import (
    HealthUpdate,
    Store,
    WorkerRecord,
    gcra,
    quantize,
    reqnum_floor,
)
from router.state.prefixes import PrefixIndex
from router.state.redis_scripts import DEEPEST_LUA, FINALIZE_LUA, GCRA_LUA, LEDGER_LUA
from tests.router import rule_cases
from tests.router.stores import ready, report

BASE = reqnum_floor(1_700_000_000.0)  # ticket 0's reqnum where the test picks it
FAR = 1e12  # a ticket's expiry where it does not matter
WK, PK = "t:w", "t:pend"  # the Lua harness's worker hash and pending zset


def table(cases: list[dict[str, Any]]) -> pytest.MarkDecorator:
    return pytest.mark.parametrize("case", cases, ids=[c["name"] for c in cases])


@pytest.fixture
async def r(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(redis_url, decode_responses=True)
    yield client
    await client.aclose()


# --- fits / work score / finalize ---------------------------------------------------------

_FINALIZE_HARNESS = """
local c = cjson.decode(ARGV[1])
local cands = {}
for i, w in ipairs(c.workers) do
  local max_load = w[3]
  if max_load == cjson.null then max_load = nil end
  cands[i] = {load = w[1], perf = w[2], max_load = max_load, ready = w[4]}
end
return finalize(cands, c.cost, c.mode) or 0
"""


@table(rule_cases.FINALIZE)
def test_finalize_python(case: dict[str, Any]) -> None:
    workers = [
        Candidate(f"w{i}", perf, load, max_load=max_load, ready=ok)
        for i, (load, perf, max_load, ok) in enumerate(case["workers"])
    ]
    assert finalize(workers, case["cost"], case["mode"]) == case["pick"]


@table(rule_cases.FINALIZE)
async def test_finalize_lua(r: aioredis.Redis, case: dict[str, Any]) -> None:
    got = await r.eval(FINALIZE_LUA + _FINALIZE_HARNESS, 0, json.dumps(case))  # type: ignore[misc]
    assert (None if got == 0 else got - 1) == case["pick"]


@table(rule_cases.FINALIZE)
async def test_finalize_in_the_store(store: Store, case: dict[str, Any]) -> None:
    now, wids = time.time(), []
    for i, (load, perf, max_load, ok) in enumerate(case["workers"]):
        url = f"http://127.0.0.1:{i + 1}"
        if ok:
            wid, status = await ready(store, "demo", url, perf, max_load), "ready"
        else:
            wid = (await store.upsert_worker("demo", url, perf, max_load, "static", now)).id
            status = "loading"
        if load:
            u = HealthUpdate(status, status, 1, 0, now, (load, 1, 0))  # type: ignore[arg-type]
            assert await store.record_health(wid, u)
        wids.append(wid)
    got, _ = await store.issue(wids, case["mode"], case["cost"], now, 60, 1)
    assert (None if got is None else wids.index(got.worker_id)) == case["pick"]


# --- GCRA ---------------------------------------------------------------------------------

_GCRA_HARNESS = """
local tat = nil
if ARGV[1] ~= '' then tat = tonumber(ARGV[1]) end
local t, wait = gcra(tat, tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4]))
return {string.format('%.17g', t), string.format('%.17g', wait)}
"""


@table(rule_cases.GCRA)
def test_gcra_python(case: dict[str, Any]) -> None:
    tat: float | None = None
    for now, wait in case["calls"]:
        t, got = gcra(tat, now, case["rate"], case["burst"])
        assert (now, got) == (now, wait)
        if got == 0.0:
            tat = t


@table(rule_cases.GCRA)
async def test_gcra_lua(r: aioredis.Redis, case: dict[str, Any]) -> None:
    tat = ""
    for now, wait in case["calls"]:
        t, got = await r.eval(  # type: ignore[misc]
            GCRA_LUA + _GCRA_HARNESS, 0, tat, repr(now), repr(case["rate"]), repr(case["burst"])
        )
        assert (now, float(got)) == (now, wait)
        if float(got) == 0.0:
            tat = t


@table(rule_cases.GCRA)
async def test_gcra_in_the_store(store: Store, case: dict[str, Any]) -> None:
    for now, wait in case["calls"]:
        got = await store.take_rate("k", case["rate"], case["burst"], now)
        assert (now, got) == (now, wait)


# --- the ticket ledger: report fold, release, expiry ----------------------------------------
# Each copy is brought to the case's state, runs the rule, and answers its state as
# (max_reqnum_seen offset or None, (reported cost, requests), pending reqnum offsets,
# (pending mcost, pending requests)).

State = tuple[int | None, tuple[float, int], list[int], tuple[int, int]]


def expected(case: dict[str, Any], seen: int | None, costs: list[float]) -> State:
    left = case["left"]
    return seen, case["reported"], left, (sum(quantize(costs[i]) for i in left), len(left))


def _offset(reqnum: int, base: int) -> int | None:
    return reqnum - base if reqnum else None


def py_state(case: dict[str, Any]) -> tuple[WorkerRecord, ledger.Tickets]:
    w, tickets = WorkerRecord("w", "demo", "http://w", 100.0), ledger.Tickets()
    if case.get("prior"):
        w.reported_cost, w.reported_requests = case["prior"]
        w.max_reqnum_seen = BASE - 1
    for i, t in enumerate(case["tickets"]):
        cost, expires = t if isinstance(t, tuple) else (t, FAR)
        ledger.add_ticket(w, tickets, BASE + i, quantize(cost), expires)
    return w, tickets


def py_read(w: WorkerRecord, tickets: ledger.Tickets) -> State:
    return (
        _offset(w.max_reqnum_seen, BASE),
        (w.reported_cost, w.reported_requests),
        [r - BASE for r, _, _ in tickets],
        (w.pending_mcost, w.pending_requests),
    )


async def lua_state(r: aioredis.Redis, case: dict[str, Any]) -> None:
    fields: dict[str, Any] = {"status": "ready"}
    if case.get("prior"):
        cost, n = case["prior"]
        fields.update(max_reqnum_seen=BASE - 1, reported_cost=repr(cost), reported_requests=n)
    await r.hset(WK, mapping=fields)  # type: ignore[misc]
    args: list[Any] = []
    for i, t in enumerate(case["tickets"]):
        cost, expires = t if isinstance(t, tuple) else (t, FAR)
        args += [BASE + i, quantize(cost), repr(expires)]
    add = (
        "for i = 1, #ARGV, 3 do add_ticket(KEYS[1], KEYS[2], ARGV[i], ARGV[i + 1], ARGV[i + 2]) end"
    )
    if args:
        await r.eval(LEDGER_LUA + add, 2, WK, PK, *args)  # type: ignore[misc]


async def lua_read(r: aioredis.Redis) -> State:
    h: dict[str, str] = await r.hgetall(WK)  # type: ignore[misc]
    members = await r.zrange(PK, 0, -1, withscores=True)
    return (
        _offset(int(h.get("max_reqnum_seen") or 0), BASE),
        (float(h.get("reported_cost") or 0), int(h.get("reported_requests") or 0)),
        [int(score) - BASE for _, score in members],
        (int(h.get("pending_mcost") or 0), int(h.get("pending_requests") or 0)),
    )


async def store_state(store: Store, case: dict[str, Any]) -> tuple[str, int]:
    """The case's state in a store, through its interface: (worker id, ticket 0's reqnum)."""
    wid = await ready(store, "demo", "http://127.0.0.1:1")
    now = time.time()
    base = reqnum_floor(now)  # where the first reqnum would be
    if case["prior"]:
        warm = (await store.issue([wid], "ordered", 1, now, 60, 1))[0]
        assert warm is not None
        await report(store, wid, *case["prior"], warm.reqnum)
        base = warm.reqnum + 1
    for i, cost in enumerate(case["tickets"]):
        t = (await store.issue([wid], "ordered", cost, now, 60, 1))[0]
        assert t is not None
        if i == 0 and not case["prior"]:
            base = t.reqnum
        assert t.reqnum == base + i
    return wid, base


async def store_check(store: Store, wid: str, base: int, want: State) -> None:
    """Compare the store's state; the pending tickets are known by releasing them."""
    w = await store.get_worker(wid)
    assert w is not None
    seen, reported, left, pending = want
    assert (_offset(w.max_reqnum_seen, base), (w.reported_cost, w.reported_requests)) == (
        seen,
        reported,
    )
    assert (w.pending_mcost, w.pending_requests) == pending
    for i in left:
        assert await store.release(wid, base + i, 0) == "pending"
    w = await store.get_worker(wid)
    assert w is not None and (w.pending_mcost, w.pending_requests) == (0, 0)


def _seen(report_seen: int | None, base: int) -> int:
    return 0 if report_seen is None else base + report_seen


@table(rule_cases.REPORT)
def test_report_fold_python(case: dict[str, Any]) -> None:
    w, tickets = py_state(case)
    c, n, seen = case["report"]
    ledger.fold_report(w, tickets, (c, n, _seen(seen, BASE)))
    assert py_read(w, tickets) == expected(case, case["seen"], case["tickets"])


@table(rule_cases.REPORT)
async def test_report_fold_lua(r: aioredis.Redis, case: dict[str, Any]) -> None:
    await lua_state(r, case)
    c, n, seen = case["report"]
    fold = "fold_report(KEYS[1], KEYS[2], ARGV[1], ARGV[2], ARGV[3])"
    await r.eval(LEDGER_LUA + fold, 2, WK, PK, repr(c), n, _seen(seen, BASE))  # type: ignore[misc]
    assert await lua_read(r) == expected(case, case["seen"], case["tickets"])


@table(rule_cases.REPORT)
async def test_report_fold_in_the_store(store: Store, case: dict[str, Any]) -> None:
    wid, base = await store_state(store, case)
    c, n, seen = case["report"]
    await report(store, wid, c, n, _seen(seen, base))
    await store_check(store, wid, base, expected(case, case["seen"], case["tickets"]))


def _release_seen(case: dict[str, Any]) -> int | None:
    return -1 if case["prior"] else None


@table(rule_cases.RELEASE)
def test_release_python(case: dict[str, Any]) -> None:
    w, tickets = py_state(case)
    i, cost = case["release"]
    assert ledger.release_ticket(w, tickets, BASE + i, cost) == case["where"]
    assert py_read(w, tickets) == expected(case, _release_seen(case), case["tickets"])


_WHERE = {0: None, 1: "pending", 2: "reported"}


@table(rule_cases.RELEASE)
async def test_release_lua(r: aioredis.Redis, case: dict[str, Any]) -> None:
    await lua_state(r, case)
    i, cost = case["release"]
    call = "return release_ticket(KEYS[1], KEYS[2], ARGV[1], tonumber(ARGV[2]))"
    got = await r.eval(LEDGER_LUA + call, 2, WK, PK, BASE + i, repr(cost))  # type: ignore[misc]
    assert _WHERE[got] == case["where"]
    assert await lua_read(r) == expected(case, _release_seen(case), case["tickets"])


@table(rule_cases.RELEASE)
async def test_release_in_the_store(store: Store, case: dict[str, Any]) -> None:
    wid, base = await store_state(store, case)
    i, cost = case["release"]
    assert await store.release(wid, base + i, cost) == case["where"]
    want = expected(case, _release_seen(case), case["tickets"])
    await store_check(store, wid, base, want)


def _expire_want(case: dict[str, Any]) -> State:
    return expected({**case, "reported": (0.0, 0)}, None, [c for c, _ in case["tickets"]])


@table(rule_cases.EXPIRE)
def test_expiry_python(case: dict[str, Any]) -> None:
    w, tickets = py_state(case)
    ledger.expire_tickets(w, tickets, case["now"])
    assert py_read(w, tickets) == _expire_want(case)


@table(rule_cases.EXPIRE)
async def test_expiry_lua(r: aioredis.Redis, case: dict[str, Any]) -> None:
    await lua_state(r, case)
    sweep = "local pend = expire_tickets(KEYS[1], KEYS[2], tonumber(ARGV[1])) return pend or -1"
    pend = await r.eval(LEDGER_LUA + sweep, 2, WK, PK, repr(case["now"]))  # type: ignore[misc]
    state = await lua_read(r)
    assert state == _expire_want(case)
    swept = len(state[2]) < len(case["tickets"])
    assert pend == (state[3][0] if swept else -1)  # the pending load after, when it changed


# --- the prefix index: deepest match, record and age ----------------------------------------

_DEEPEST_HARNESS = """
local c = cjson.decode(ARGV[1])
local function holders_at(i) return c.levels[i] end
local depth, found = deepest(#c.levels, holders_at)
table.sort(found)
return {depth, table.concat(found, ' ')}
"""


@table(rule_cases.DEEPEST)
def test_deepest_python(case: dict[str, Any]) -> None:
    levels = case["levels"]
    depth, found = deepest(len(levels), lambda i: list(levels[i - 1]))
    assert (depth, sorted(found)) == (case["depth"], case["holders"])


@table(rule_cases.DEEPEST)
async def test_deepest_lua(r: aioredis.Redis, case: dict[str, Any]) -> None:
    depth, found = await r.eval(DEEPEST_LUA + _DEEPEST_HARNESS, 0, json.dumps(case))  # type: ignore[misc]
    assert (depth, found.split()) == (case["depth"], case["holders"])


def chain(c: str) -> list[str]:
    return ["h" + c[: i + 1] for i in range(len(c))]


@table(rule_cases.PREFIX_INDEX)
def test_prefix_index_python(case: dict[str, Any]) -> None:
    index = PrefixIndex()
    for step in case["steps"]:
        if step[0] == "record":
            _, w, c, t = step
            index.record("demo", w, chain(c), t, case["ttl"], case["max_blocks"])
        elif step[0] == "forget":
            index.forget(step[1])
        else:
            _, c, t, depth, holders = step
            got, found = index.lookup("demo", chain(c), t, case["ttl"])
            assert (step, got, sorted(found)) == (step, depth, holders)


@table(rule_cases.PREFIX_INDEX)
async def test_prefix_index_in_the_store(store: Store, case: dict[str, Any]) -> None:
    ids = {f"w{i}": await ready(store, "demo", f"http://127.0.0.1:{i + 1}") for i in range(3)}
    names = {wid: name for name, wid in ids.items()}
    for step in case["steps"]:
        if step[0] == "record":
            _, w, c, t = step
            await store.prefix_record("demo", ids[w], chain(c), t, case["ttl"], case["max_blocks"])
        elif step[0] == "forget":
            assert await store.remove_worker(ids[step[1]])
        else:
            await store.settle()
            _, c, t, depth, holders = step
            got, found = await store.prefix_lookup("demo", chain(c), t, case["ttl"])
            assert (step, got, sorted(names[w] for w in found)) == (step, depth, holders)
