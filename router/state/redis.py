"""The Redis store: shared state for any number of router replicas (docs/architecture.md).

Writes that must be atomic across replicas are Lua scripts (redis_scripts.py), one round
trip each; the router reads through its local snapshot, so a `/route` costs one EVALSHA at
most, shared with the other `/route` calls of the same event-loop pass.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass
from typing import Any, ParamSpec, TypeVar

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.client import NEVER_DECODE
from redis.commands.core import AsyncScript
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from router.balancer import Mode
from router.state import redis_scripts as lua
from router.state.base import (
    DEMAND_KEEP_S,
    HealthUpdate,
    Issued,
    Released,
    Source,
    Store,
    StoreUnavailable,
    WorkerRecord,
    check_activity,
    check_doc,
    quantize,
    reqnum_floor,
    worker_id,
)
from router.state.redis_schema import DEMAND_TTL_S, WORKER_TTL_S, Keys
from router.state.resp import Scripts

log = logging.getLogger(__name__)

P = ParamSpec("P")
T = TypeVar("T")

_UNREACHABLE = (RedisConnectionError, RedisTimeoutError, OSError)
_RELEASED: tuple[Released, ...] = (None, "pending", "reported")  # by lua.RELEASE's answer
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

    def post(
        self, keys: list[str], args: list[Any], common_keys: list[str], common_args: list[Any]
    ) -> None:
        """Queue a call whose answer nobody awaits (a write that may be lost: the prefix
        index); a failure is logged at debug level, never left unretrieved."""
        loop = asyncio.get_running_loop()
        call = _Call(keys, args, loop.create_future())
        call.future.add_done_callback(_ignore_failure)
        self._queue.append(call)
        if len(self._queue) == 1:
            self._common = (common_keys, common_args)
            loop.call_soon(self.flush)
        elif len(self._queue) >= _MAX_BATCH:
            self.flush()

    async def close(self) -> None:
        self.flush()
        if self._running:
            await asyncio.wait(self._running)


def _ignore_failure(future: asyncio.Future[list[Any]]) -> None:
    if not future.cancelled() and future.exception() is not None:
        log.debug("prefix index write lost: %r", future.exception())


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
        owner=h.get("owner", ""),
        status=h.get("status", "loading"),  # type: ignore[arg-type]
        admin_drain=h.get("admin_drain") == "1",
        ok_streak=int(h.get("ok_streak") or 0),
        fail_streak=int(h.get("fail_streak") or 0),
        last_ok=float(h.get("last_ok") or 0),
        reported_cost=float(h.get("reported_cost") or 0),
        reported_requests=int(h.get("reported_requests") or 0),
        max_reqnum_seen=int(h.get("max_reqnum_seen") or 0),
        pending_mcost=max(0, int(h.get("pending_mcost") or 0)),
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
        self._issue = self.redis.register_script(lua.ISSUE)
        self._report = self.redis.register_script(lua.REPORT)
        self._upsert = self.redis.register_script(lua.UPSERT)
        self._remove = self.redis.register_script(lua.REMOVE)
        self._drain = self.redis.register_script(lua.DRAIN)
        self._leases = self.redis.register_script(lua.LEASES)
        self._release = self.redis.register_script(lua.RELEASE)
        self._rate = self.redis.register_script(lua.RATE)
        self._slot = self.redis.register_script(lua.SLOT)
        self._put_doc = self.redis.register_script(lua.PUT_DOC)
        self._delete_doc = self.redis.register_script(lua.DELETE_DOC)
        self._release_lease = self.redis.register_script(lua.RELEASE_LEASE)
        self._add_activity = self.redis.register_script(lua.ADD_ACTIVITY)
        self._set_perf = self.redis.register_script(lua.SET_PERF)
        # /route and proxy calls of one loop pass share one EVALSHA (see lua.ISSUE).
        # ... over one pipelined connection of their own where the URL allows (resp.py).
        self._scripts = Scripts(url, timeout_s) if Scripts.usable(url) else None
        self._issues = _Batcher(self._issue, 6, "redis-issue-batch", self._scripts)
        self._releases = _Batcher(self._release, 1, "redis-release-batch", self._scripts)
        self._prefix_lookups = _Batcher(
            self.redis.register_script(lua.PREFIX_LOOKUP), 2, "redis-prefix-lookup", self._scripts
        )
        self._prefix_records = _Batcher(
            self.redis.register_script(lua.PREFIX_RECORD), 1, "redis-prefix-record", self._scripts
        )

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
        owner: str = "",
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
                owner,
            ],
        )
        return _record(_pairs(flat))

    @_unavailable
    async def remove_worker(self, wid: str) -> bool:
        k = self.keys
        n = await self._remove(
            keys=[k.worker(wid), k.pending(wid), k.lease(wid), k.prefix_worker(wid)],
            args=[wid, k.endpoint_set(""), k.prefix_block],
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
        i, reqnum, ridx, load, url, pend = await self._issues.call(
            keys,
            [
                len(candidates),
                mode,
                quantize(cost),
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
        issued = Issued(candidates[int(i)], url, int(reqnum), int(ridx), float(load), int(pend))
        return issued, int(ridx)

    async def release(self, wid: str, reqnum: int, cost: float) -> Released:
        (n,) = await self._releases.call(
            [self.keys.worker(wid), self.keys.pending(wid)], [reqnum, repr(float(cost))], [], []
        )
        return _RELEASED[int(n)]

    @_unavailable
    async def set_perf(self, wid: str, perf: float) -> bool:
        return bool(await self._set_perf(keys=[self.keys.worker(wid)], args=[repr(float(perf))]))

    async def prefix_lookup(
        self, endpoint: str, hashes: Sequence[str], now: float, ttl_s: float
    ) -> tuple[int, list[str]]:
        if not hashes:
            return 0, []
        depth, holders = await self._prefix_lookups.call(
            [],
            [endpoint, repr(now), repr(float(ttl_s)), len(hashes), *hashes],
            [],
            [self.keys.prefix_block],
        )
        return int(depth), holders.split() if holders else []

    async def prefix_record(
        self,
        endpoint: str,
        wid: str,
        hashes: Sequence[str],
        now: float,
        ttl_s: float,
        max_blocks: int,
    ) -> None:
        if not hashes:
            return
        k = self.keys
        self._prefix_records.post(
            [],
            [endpoint, wid, repr(now), repr(float(ttl_s)), int(max_blocks), len(hashes), *hashes],
            [],
            [k.prefix_block, k.prefix_worker_base],
        )

    @_unavailable
    async def take_rate(self, key_id: str, rate_per_s: float, burst: float, now: float) -> float:
        wait = await self._rate(
            keys=[self.keys.rate(key_id)],
            args=[repr(now), repr(float(rate_per_s)), repr(float(burst))],
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

    @_unavailable
    async def put_doc(self, kind: str, name: str, doc: bytes, expect_version: int) -> int | None:
        check_doc(kind, doc)
        k = self.keys
        v = await self._put_doc(
            keys=[k.doc(kind, name), k.doc_names(kind), k.docs_version(kind)],
            args=[int(expect_version), doc, name],
        )
        return None if v is None else int(v)

    @_unavailable
    async def get_doc(self, kind: str, name: str) -> tuple[int, bytes] | None:
        check_doc(kind)
        # NEVER_DECODE: the document comes back as the bytes written, not as UTF-8 text
        v, doc = await self.redis.execute_command(  # type: ignore[no-untyped-call]
            "HMGET", self.keys.doc(kind, name), "version", "doc", **{NEVER_DECODE: True}
        )
        return None if v is None or doc is None else (int(v), doc)

    @_unavailable
    async def delete_doc(self, kind: str, name: str, expect_version: int | None = None) -> bool:
        check_doc(kind)
        k = self.keys
        n = await self._delete_doc(
            keys=[k.doc(kind, name), k.doc_names(kind), k.docs_version(kind)],
            args=["" if expect_version is None else int(expect_version), name],
        )
        return bool(n)

    @_unavailable
    async def list_docs(self, kind: str) -> dict[str, tuple[int, bytes]]:
        check_doc(kind)
        k = self.keys
        names: list[str] = sorted(await self.redis.smembers(k.doc_names(kind)))  # type: ignore[arg-type]
        if not names:
            return {}
        async with self.redis.pipeline(transaction=False) as pipe:
            for name in names:
                pipe.execute_command(
                    "HMGET", k.doc(kind, name), "version", "doc", **{NEVER_DECODE: True}
                )
            rows: list[list[bytes | None]] = await pipe.execute()
        return {
            name: (int(v), doc)
            for name, (v, doc) in zip(names, rows, strict=True)
            if v is not None and doc is not None  # deleted since SMEMBERS
        }

    @_unavailable
    async def docs_version(self, kind: str) -> int:
        check_doc(kind)
        v = await self.redis.get(self.keys.docs_version(kind))
        return int(v or 0)

    @_unavailable
    async def take_lease(self, name: str, holder: str, ttl_s: float) -> bool:
        held = await self._leases(
            keys=[self.keys.leader(name)], args=[holder, max(1, int(ttl_s * 1000))]
        )
        return bool(held)

    @_unavailable
    async def release_lease(self, name: str, holder: str) -> None:
        await self._release_lease(keys=[self.keys.leader(name)], args=[holder])

    @_unavailable
    async def add_activity(self, counts: dict[str, tuple[int, float]]) -> None:
        check_activity(counts)
        if not counts:
            return
        args: list[Any] = []
        for name, (n, at) in counts.items():
            args += [name, n, repr(float(at))]
        await self._add_activity(keys=[self.keys.activity_count, self.keys.activity_at], args=args)

    @_unavailable
    async def activity(self) -> dict[str, tuple[int, float]]:
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hgetall(self.keys.activity_count)
            pipe.hgetall(self.keys.activity_at)
            counts, times = await pipe.execute()
        return {
            name: (int(counts.get(name) or 0), float(times.get(name) or 0.0))
            for name in counts.keys() | times.keys()
        }

    @_unavailable
    async def add_demand(self, demand: dict[str, dict[int, float]]) -> None:
        if not demand:
            return
        k = self.keys
        async with self.redis.pipeline(transaction=False) as pipe:
            for name, seconds in demand.items():
                key = k.demand(name)
                for t, cost in seconds.items():
                    pipe.hincrbyfloat(key, str(t), cost)
                pipe.expire(key, DEMAND_TTL_S)
                pipe.sadd(k.demands, name)
            await pipe.execute()

    @_unavailable
    async def demand(self, since: int) -> dict[str, dict[int, float]]:
        k = self.keys
        names: list[str] = sorted(await self.redis.smembers(k.demands))  # type: ignore[arg-type]
        if not names:
            return {}
        async with self.redis.pipeline(transaction=False) as pipe:
            for name in names:
                pipe.hgetall(k.demand(name))
            hashes: list[dict[str, str]] = await pipe.execute()
        out: dict[str, dict[int, float]] = {}
        old_before = since - DEMAND_KEEP_S
        async with self.redis.pipeline(transaction=False) as pipe:
            for name, h in zip(names, hashes, strict=True):
                if not h:
                    pipe.srem(k.demands, name)
                    continue
                seconds = {int(t): float(c) for t, c in h.items()}
                out[name] = {t: c for t, c in seconds.items() if t >= since}
                stale = [str(t) for t in seconds if t < old_before]
                if stale:
                    pipe.hdel(k.demand(name), *stale)
            await pipe.execute()
        return out

    @_unavailable
    async def forget_activity(self, name: str) -> None:
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hdel(self.keys.activity_count, name)
            pipe.hdel(self.keys.activity_at, name)
            await pipe.execute()

    async def settle(self) -> None:
        await self._prefix_records.close()  # flushes and waits; the batcher stays usable

    async def close(self) -> None:
        await self._issues.close()
        await self._releases.close()
        await self._prefix_lookups.close()
        await self._prefix_records.close()
        if self._scripts is not None:
            self._scripts.close()
        await self.redis.aclose()
