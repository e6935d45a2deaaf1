"""The Redis store: shared state for any number of router replicas (DESIGN §6).

Writes that must be atomic across replicas are Lua scripts (one round trip each); the
router reads through its local snapshot, so a `/route` costs one EVALSHA at most, shared
with the other `/route` calls of the same event-loop pass.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass
from typing import Any, ParamSpec, TypeVar

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.commands.core import AsyncScript
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from router.balancer import Mode
from router.state.base import (
    HealthUpdate,
    Issued,
    Released,
    Source,
    Store,
    StoreUnavailable,
    WorkerRecord,
    reqnum_floor,
    worker_id,
)
from router.state.redis_schema import WORKER_TTL_S, Keys
from router.state.resp import Scripts

P = ParamSpec("P")
T = TypeVar("T")

# Issue tickets for a batch of /route calls (each one exactly as if alone, in order): for
# each, expire its candidates' outstanding tickets (oldest first), mirror
# balancer.finalize() over the candidates with their fresh load, bump the chosen worker's
# reqnum and record the ticket; assign a request_idx when the caller has none (also when
# no worker is chosen). Batching amortises redis-py's per-command cost (a third of a
# /route's CPU when measured) over the calls that arrive in one event-loop pass.
# KEYS: request_idx counter, then (worker hash, pending zset) per candidate per call.
# ARGV: worker_ttl_s, then per call: n_candidates, mode, cost, now, ttl_s, request_idx,
#       reqnum_floor, now_ms.
# Returns 5 values per call: index (-1: none), reqnum, request_idx, load, url.
_ISSUE = """
local wttl = tonumber(ARGV[1])
local function issue_one(k0, n, mode, cost, now, ttl, ridx, floor, now_ms)
  local best, best_score, best_load = nil, 0, 0
  for i = k0, k0 + 2 * n - 1, 2 do
    local wk, pk = KEYS[i], KEYS[i + 1]
    local f = redis.call('HMGET', wk, 'status', 'perf', 'max_load', 'reported_cost',
                         'pending_cost')
    if f[1] == 'ready' then
      local pend = tonumber(f[5]) or 0
      local dropped, nd = 0, 0
      for _, m in ipairs(redis.call('ZRANGE', pk, 0, 63)) do
        local c, e = string.match(m, '^%d+:([^:]+):(.+)$')
        if tonumber(e) >= now then break end
        dropped, nd = dropped + tonumber(c), nd + 1
        redis.call('ZREM', pk, m)
      end
      if nd > 0 then
        if redis.call('ZCARD', pk) == 0 then
          redis.call('HSET', wk, 'pending_cost', 0, 'pending_requests', 0)
          pend = 0
        else
          pend = tonumber(redis.call('HINCRBYFLOAT', wk, 'pending_cost', -dropped))
          redis.call('HINCRBY', wk, 'pending_requests', -nd)
        end
      end
      local load = (tonumber(f[4]) or 0) + pend
      local max_load = tonumber(f[3])
      if max_load == nil or load <= 0 or load + cost <= max_load then
        local score = (load + cost) / tonumber(f[2])
        if mode == 'ordered' then
          best, best_load = i, load
          break
        end
        if best == nil or score < best_score then
          best, best_score, best_load = i, score, load
        end
      end
    end
  end
  if ridx <= 0 then
    ridx = redis.call('INCR', KEYS[1])
    if ridx < tonumber(now_ms) then
      redis.call('SET', KEYS[1], now_ms)  -- the string: a Lua number would print as 1.7e+12
      ridx = tonumber(now_ms)
    end
  end
  if best == nil then return -1, 0, ridx, '0', '' end
  local wk, pk = KEYS[best], KEYS[best + 1]
  local reqnum
  if redis.call('HEXISTS', wk, 'reqnum') == 0 then
    redis.call('HSET', wk, 'reqnum', floor)
    reqnum = tonumber(floor)
  else
    reqnum = redis.call('HINCRBY', wk, 'reqnum', 1)
  end
  redis.call('ZADD', pk, reqnum, string.format('%d:%.17g:%.17g', reqnum, cost, now + ttl))
  redis.call('HINCRBYFLOAT', wk, 'pending_cost', cost)
  redis.call('HINCRBY', wk, 'pending_requests', 1)
  redis.call('EXPIRE', wk, wttl)
  redis.call('EXPIRE', pk, wttl)
  return (best - k0) / 2, reqnum, ridx, string.format('%.17g', best_load + cost),
         redis.call('HGET', wk, 'url')
end
local out, k0 = {}, 2
for a = 2, #ARGV, 8 do
  local n = tonumber(ARGV[a])
  local i, reqnum, ridx, load, url = issue_one(
    k0, n, ARGV[a + 1], tonumber(ARGV[a + 2]), tonumber(ARGV[a + 3]), tonumber(ARGV[a + 4]),
    tonumber(ARGV[a + 5]), ARGV[a + 6], ARGV[a + 7])
  out[#out + 1] = i
  out[#out + 1] = reqnum
  out[#out + 1] = ridx
  out[#out + 1] = load
  out[#out + 1] = url
  k0 = k0 + 2 * n
end
return out
"""

# Write a health poll's outcome if the status is still the expected one (compare and set),
# and drop outstanding tickets the worker has reported seeing.
# KEYS: worker hash, pending zset. ARGV: expected, status, ok_streak, fail_streak, last_ok,
# has_report, inflight_cost, inflight_requests, max_reqnum_seen, perf ('' = keep), ttl
_REPORT = """
if redis.call('HGET', KEYS[1], 'status') ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[1], 'status', ARGV[2], 'ok_streak', ARGV[3], 'fail_streak', ARGV[4],
           'last_ok', ARGV[5])
if ARGV[10] ~= '' then redis.call('HSET', KEYS[1], 'perf', ARGV[10]) end
if ARGV[6] == '1' then
  local seen = ARGV[9]
  local prev = redis.call('HGET', KEYS[1], 'max_reqnum_seen')
  if prev and tonumber(prev) > tonumber(seen) then seen = prev end
  redis.call('HSET', KEYS[1], 'max_reqnum_seen', seen, 'reported_cost', ARGV[7],
             'reported_requests', ARGV[8])
  local done = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', seen)
  if #done > 0 then
    redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', seen)
    if redis.call('ZCARD', KEYS[2]) == 0 then
      redis.call('HSET', KEYS[1], 'pending_cost', 0, 'pending_requests', 0)
    else
      local sum = 0
      for _, m in ipairs(done) do sum = sum + tonumber(string.match(m, '^%d+:([^:]+):')) end
      redis.call('HINCRBYFLOAT', KEYS[1], 'pending_cost', -sum)
      redis.call('HINCRBY', KEYS[1], 'pending_requests', -#done)
    end
  end
end
redis.call('EXPIRE', KEYS[1], ARGV[11])
return 1
"""

# KEYS: worker hash, endpoint set, endpoints set.
# ARGV: id, endpoint, url, perf, max_load ('' = none), source, now, ttl
_UPSERT = """
if redis.call('EXISTS', KEYS[1]) == 0 then
  redis.call('HSET', KEYS[1], 'id', ARGV[1], 'endpoint', ARGV[2], 'url', ARGV[3],
             'source', ARGV[6], 'status', 'loading', 'last_ok', ARGV[7], 'registered_at', ARGV[7])
end
redis.call('HSET', KEYS[1], 'perf', ARGV[4], 'max_load', ARGV[5])
redis.call('EXPIRE', KEYS[1], ARGV[8])
redis.call('SADD', KEYS[2], ARGV[1])
redis.call('SADD', KEYS[3], ARGV[2])
return redis.call('HGETALL', KEYS[1])
"""

# KEYS: worker hash, pending zset, lease. ARGV: id, endpoint-set prefix
_REMOVE = """
local ep = redis.call('HGET', KEYS[1], 'endpoint')
if not ep then return 0 end
redis.call('SREM', ARGV[2] .. ep, ARGV[1])
redis.call('DEL', KEYS[1], KEYS[2], KEYS[3])
return 1
"""

_DRAIN = """
if redis.call('EXISTS', KEYS[1]) == 0 then return false end
redis.call('HSET', KEYS[1], 'status', 'draining', 'admin_drain', 1)
return redis.call('HGETALL', KEYS[1])
"""

# Take finished proxied requests off their workers' load, one per call of a batch (see
# _ISSUE on batching): drop the outstanding ticket, or, if the worker already reported
# seeing it, lower the reported load until the next report (see Store.release).
# KEYS: (worker hash, pending zset) per call. ARGV: (reqnum, cost) per call.
# Returns per call: 1 pending, 2 reported, 0 nothing.
_RELEASE = """
local out = {}
for j = 1, #KEYS / 2 do
  local wk, pk = KEYS[2 * j - 1], KEYS[2 * j]
  local reqnum, cost = ARGV[2 * j - 1], tonumber(ARGV[2 * j])
  local m = redis.call('ZRANGEBYSCORE', pk, reqnum, reqnum)
  if #m > 0 then
    redis.call('ZREM', pk, m[1])
    if redis.call('ZCARD', pk) == 0 then
      redis.call('HSET', wk, 'pending_cost', 0, 'pending_requests', 0)
    else
      local c = tonumber(string.match(m[1], '^%d+:([^:]+):'))
      redis.call('HINCRBYFLOAT', wk, 'pending_cost', -c)
      redis.call('HINCRBY', wk, 'pending_requests', -1)
    end
    out[j] = 1
  else
    local f = redis.call('HMGET', wk, 'max_reqnum_seen', 'reported_cost', 'reported_requests')
    if f[1] and tonumber(reqnum) <= tonumber(f[1]) then
      local rc = math.max(0, (tonumber(f[2]) or 0) - cost)
      local rr = math.max(0, (tonumber(f[3]) or 0) - 1)
      redis.call('HSET', wk, 'reported_cost', string.format('%.17g', rc),
                 'reported_requests', string.format('%d', rr))
      out[j] = 2
    else
      out[j] = 0
    end
  end
end
return out
"""

# GCRA rate limit, the same sums as base.gcra(). KEYS: rate key. ARGV: now, interval,
# burst. Returns the seconds to wait as a string ('0' = allowed and counted).
_RATE = """
local now, interval, burst = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
if tat < now then tat = now end
local ahead = tat - now - (burst - 1) * interval
if ahead > 0 then return string.format('%.17g', ahead) end
tat = tat + interval
redis.call('SET', KEYS[1], string.format('%.17g', tat), 'PX',
           math.max(1, math.ceil((tat - now) * 1000)))
return '0'
"""

# In-flight slots of one key. KEYS: slots zset. ARGV: limit, token, now, lease expiry.
# Drops expired leases, then takes a slot if one is free: 1 taken, 0 all held.
_SLOT = """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[3])
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[1]) then return 0 end
redis.call('ZADD', KEYS[1], ARGV[4], ARGV[2])
local ttl = math.ceil(tonumber(ARGV[4]) - tonumber(ARGV[3])) + 1
if redis.call('TTL', KEYS[1]) < ttl then redis.call('EXPIRE', KEYS[1], ttl) end
return 1
"""

# KEYS: one lease per worker. ARGV: holder, ttl_ms. Returns the 1-based indexes held.
_LEASES = """
local held = {}
for i, k in ipairs(KEYS) do
  local v = redis.call('GET', k)
  if not v then
    redis.call('SET', k, ARGV[1], 'PX', ARGV[2])
    held[#held + 1] = i
  elseif v == ARGV[1] then
    redis.call('PEXPIRE', k, ARGV[2])
    held[#held + 1] = i
  end
end
return held
"""


_UNREACHABLE = (RedisConnectionError, RedisTimeoutError, OSError)
_RELEASED: tuple[Released, ...] = (None, "pending", "reported")  # by _RELEASE's answer
_MAX_BATCH = 64  # /route calls per EVALSHA: bounds the script's run time and argument list
_READ_CHUNK = 16  # worker hashes per round trip when the snapshot re-reads every worker: short
# chunks keep each stall of the event loop short (p99 with 100-1,000 workers)


@dataclass(slots=True)
class _Call:
    """One queued script call: its KEYS and ARGV slices, and its slice of the answer."""

    keys: list[str]
    args: list[Any]
    future: asyncio.Future[list[Any]]


class _Batcher:
    """Run the calls of one event-loop pass as one EVALSHA of a batch script.

    The script takes `common` KEYS/ARGV first, then each call's, and answers `width`
    values per call. A caller cancelled while waiting (its client gone) leaves the batch
    running: what its call did in Redis stands, as it would have without batching.
    """

    def __init__(
        self, script: AsyncScript, width: int, name: str, fast: Scripts | None = None
    ) -> None:
        self.script, self.width, self.name, self.fast = script, width, name, fast
        self._queue: list[_Call] = []
        self._running: set[asyncio.Task[None]] = set()

    async def call(
        self, keys: list[str], args: list[Any], common_keys: list[str], common_args: list[Any]
    ) -> list[Any]:
        loop = asyncio.get_running_loop()
        call = _Call(keys, args, loop.create_future())
        self._queue.append(call)
        if len(self._queue) == 1:
            self._common = (common_keys, common_args)
            loop.call_soon(self.flush)
        elif len(self._queue) >= _MAX_BATCH:
            self.flush()
        return await call.future

    def flush(self) -> None:
        if not self._queue:
            return
        batch, self._queue = self._queue, []
        task = asyncio.create_task(self._run(batch, *self._common), name=self.name)
        self._running.add(task)
        task.add_done_callback(self._running.discard)

    async def _run(
        self, batch: list[_Call], common_keys: list[str], common_args: list[Any]
    ) -> None:
        keys, args = list(common_keys), list(common_args)
        for call in batch:
            keys += call.keys
            args += call.args
        try:
            res: list[Any] = await (
                self.fast.run(self.script, keys, args)
                if self.fast
                else self.script(keys=keys, args=args)
            )
        except BaseException as exc:
            for call in batch:
                if not call.future.done():
                    call.future.set_exception(
                        StoreUnavailable(f"redis unreachable: {type(exc).__name__}")
                        if isinstance(exc, _UNREACHABLE)
                        else exc
                    )
            if isinstance(exc, asyncio.CancelledError | KeyboardInterrupt | SystemExit):
                raise
            return
        w = self.width
        for j, call in enumerate(batch):
            if not call.future.done():
                call.future.set_result(res[j * w : (j + 1) * w])

    async def close(self) -> None:
        self.flush()
        if self._running:
            await asyncio.wait(self._running)


def _unavailable(fn: Callable[P, Coroutine[Any, Any, T]]) -> Callable[P, Coroutine[Any, Any, T]]:
    """Turn connection failures and timeouts into StoreUnavailable (503 at the edge)."""

    @functools.wraps(fn)
    async def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
        try:
            return await fn(*args, **kwargs)
        except _UNREACHABLE as exc:
            raise StoreUnavailable(f"redis unreachable: {type(exc).__name__}") from exc

    return wrapper


def _record(h: dict[str, str]) -> WorkerRecord:
    max_load = h.get("max_load") or ""
    return WorkerRecord(
        id=h["id"],
        endpoint=h["endpoint"],
        url=h["url"],
        perf=float(h.get("perf") or 1.0),
        max_load=float(max_load) if max_load else None,
        source=h.get("source", "static"),  # type: ignore[arg-type]
        status=h.get("status", "loading"),  # type: ignore[arg-type]
        admin_drain=h.get("admin_drain") == "1",
        ok_streak=int(h.get("ok_streak") or 0),
        fail_streak=int(h.get("fail_streak") or 0),
        last_ok=float(h.get("last_ok") or 0),
        reported_cost=float(h.get("reported_cost") or 0),
        reported_requests=int(h.get("reported_requests") or 0),
        max_reqnum_seen=int(h.get("max_reqnum_seen") or 0),
        pending_cost=max(0.0, float(h.get("pending_cost") or 0)),
        pending_requests=max(0, int(h.get("pending_requests") or 0)),
        registered_at=float(h.get("registered_at") or 0),
    )


def _pairs(flat: list[str]) -> dict[str, str]:
    return dict(zip(flat[::2], flat[1::2], strict=True))


class RedisStore(Store):
    def __init__(
        self, url: str, *, prefix: str = "ir:", timeout_s: float = 0.5, max_connections: int = 64
    ) -> None:
        # A bounded pool, and no retry on a timeout: when Redis stalls, requests fail
        # fast (503) instead of queueing connections and coroutines behind it. One retry
        # on a broken connection: after Redis restarts, every pooled connection is dead,
        # and each would otherwise fail the first request to pick it up, minutes later.
        # (Were the link to break after a script was sent, a retry could run it twice:
        # an unused ticket, which expires, or a rate count too many, once.)
        pool = aioredis.BlockingConnectionPool.from_url(
            url,
            max_connections=max_connections,
            timeout=timeout_s,
            decode_responses=True,
            socket_timeout=timeout_s,
            socket_connect_timeout=timeout_s,
            retry=Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,)),
        )
        self.redis: aioredis.Redis = aioredis.Redis.from_pool(pool)
        self.keys = Keys(prefix)
        self._issue = self.redis.register_script(_ISSUE)
        self._report = self.redis.register_script(_REPORT)
        self._upsert = self.redis.register_script(_UPSERT)
        self._remove = self.redis.register_script(_REMOVE)
        self._drain = self.redis.register_script(_DRAIN)
        self._leases = self.redis.register_script(_LEASES)
        self._release = self.redis.register_script(_RELEASE)
        self._rate = self.redis.register_script(_RATE)
        self._slot = self.redis.register_script(_SLOT)
        # /route and proxy calls of one loop pass share one EVALSHA (see _ISSUE).
        # ... over one pipelined connection of their own where the URL allows (resp.py).
        self._scripts = Scripts(url, timeout_s) if Scripts.usable(url) else None
        self._issues = _Batcher(self._issue, 5, "redis-issue-batch", self._scripts)
        self._releases = _Batcher(self._release, 1, "redis-release-batch", self._scripts)

    @_unavailable
    async def ping(self) -> None:
        await self.redis.ping()

    @_unavailable
    async def upsert_worker(
        self,
        endpoint: str,
        url: str,
        perf: float,
        max_load: float | None,
        source: Source,
        now: float,
    ) -> WorkerRecord:
        wid = worker_id(endpoint, url)
        k = self.keys
        flat = await self._upsert(
            keys=[k.worker(wid), k.endpoint_set(endpoint), k.endpoints],
            args=[
                wid,
                endpoint,
                url,
                repr(perf),
                "" if max_load is None else repr(max_load),
                source,
                repr(now),
                WORKER_TTL_S,
            ],
        )
        return _record(_pairs(flat))

    @_unavailable
    async def remove_worker(self, wid: str) -> bool:
        k = self.keys
        n = await self._remove(
            keys=[k.worker(wid), k.pending(wid), k.lease(wid)], args=[wid, k.endpoint_set("")]
        )
        return bool(n)

    @_unavailable
    async def get_worker(self, wid: str) -> WorkerRecord | None:
        h: dict[str, str] = await self.redis.hgetall(self.keys.worker(wid))  # type: ignore[assignment]
        return _record(h) if h else None

    @_unavailable
    async def list_workers(self) -> list[WorkerRecord]:
        k = self.keys
        members: list[Any]
        if self._scripts is not None:
            endpoints: list[str] = sorted(
                (await self._scripts.many([("SMEMBERS", k.endpoints)]))[0]
            )
            if not endpoints:
                return []
            members = await self._scripts.many(
                [("SMEMBERS", k.endpoint_set(ep)) for ep in endpoints]
            )
        else:
            endpoints = sorted(await self.redis.smembers(k.endpoints))  # type: ignore[arg-type]
            if not endpoints:
                return []
            async with self.redis.pipeline(transaction=False) as pipe:
                for ep in endpoints:
                    pipe.smembers(k.endpoint_set(ep))
                members = await pipe.execute()
        pairs = [
            (ep, wid) for ep, ids in zip(endpoints, members, strict=True) for wid in sorted(ids)
        ]
        if not pairs:
            return []
        out: list[WorkerRecord] = []
        gone: list[tuple[str, str]] = []
        for i in range(0, len(pairs), _READ_CHUNK):
            # In chunks, each one round trip well inside the command timeout, and each
            # chunk's records built before the next: the event loop serves requests in
            # between instead of stalling (building 1,000 records at once took 4 ms).
            chunk = pairs[i : i + _READ_CHUNK]
            hashes: list[dict[str, str]]
            if self._scripts is not None:
                # a third of redis-py's pipeline cost, each chunk blocking the loop less
                flat = await self._scripts.many([("HGETALL", k.worker(w)) for _, w in chunk])
                hashes = [_pairs(f) for f in flat]
            else:
                async with self.redis.pipeline(transaction=False) as pipe:
                    for _, wid in chunk:
                        pipe.hgetall(k.worker(wid))
                    hashes = await pipe.execute()
            for (ep, wid), h in zip(chunk, hashes, strict=True):
                if h:
                    out.append(_record(h))
                else:
                    gone.append((ep, wid))  # hash expired: drop the dangling set member
        for ep, wid in gone:
            await self.redis.srem(k.endpoint_set(ep), wid)
        return out

    @_unavailable
    async def drain_worker(self, wid: str) -> WorkerRecord | None:
        flat = await self._drain(keys=[self.keys.worker(wid)])
        return _record(_pairs(flat)) if flat else None

    @_unavailable
    async def record_health(self, wid: str, u: HealthUpdate) -> bool:
        report = u.report or (0.0, 0, 0)
        n = await self._report(
            keys=[self.keys.worker(wid), self.keys.pending(wid)],
            args=[
                u.expected,
                u.status,
                u.ok_streak,
                u.fail_streak,
                repr(u.last_ok),
                "1" if u.report else "0",
                repr(float(report[0])),
                int(report[1]),
                int(report[2]),
                "" if u.perf is None else repr(u.perf),
                WORKER_TTL_S,
            ],
        )
        return bool(n)

    async def issue(
        self,
        candidates: Sequence[str],
        mode: Mode,
        cost: float,
        now: float,
        ttl_s: float,
        request_idx: int,
    ) -> tuple[Issued | None, int]:
        k = self.keys
        keys: list[str] = []
        for wid in candidates:
            keys += [k.worker(wid), k.pending(wid)]
        i, reqnum, ridx, load, url = await self._issues.call(
            keys,
            [
                len(candidates),
                mode,
                repr(float(cost)),
                repr(now),
                repr(ttl_s),
                request_idx,
                reqnum_floor(now),
                int(now * 1000),
            ],
            [k.request_idx],
            [WORKER_TTL_S],
        )
        if int(i) < 0:
            return None, int(ridx)
        return Issued(candidates[int(i)], url, int(reqnum), int(ridx), float(load)), int(ridx)

    async def release(self, wid: str, reqnum: int, cost: float) -> Released:
        (n,) = await self._releases.call(
            [self.keys.worker(wid), self.keys.pending(wid)], [reqnum, repr(float(cost))], [], []
        )
        return _RELEASED[int(n)]

    @_unavailable
    async def take_rate(self, key_id: str, rate_per_s: float, burst: float, now: float) -> float:
        wait = await self._rate(
            keys=[self.keys.rate(key_id)],
            args=[repr(now), repr(1.0 / rate_per_s), repr(float(burst))],
        )
        return float(wait)

    @_unavailable
    async def acquire_slot(
        self, key_id: str, limit: int, token: str, now: float, lease_s: float
    ) -> bool:
        got = await self._slot(
            keys=[self.keys.slots(key_id)], args=[limit, token, repr(now), repr(now + lease_s)]
        )
        return bool(got)

    @_unavailable
    async def release_slot(self, key_id: str, token: str) -> None:
        await self.redis.zrem(self.keys.slots(key_id), token)

    @_unavailable
    async def claim_leases(self, wids: Sequence[str], holder: str, ttl_s: float) -> set[str]:
        if not wids:
            return set()
        held = await self._leases(
            keys=[self.keys.lease(w) for w in wids], args=[holder, max(1, int(ttl_s * 1000))]
        )
        return {wids[int(i) - 1] for i in held}

    async def close(self) -> None:
        await self._issues.close()
        await self._releases.close()
        if self._scripts is not None:
            self._scripts.close()
        await self.redis.aclose()
