"""The embedded store: one process, no Redis, the same contract as the Redis store."""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Sequence
from dataclasses import replace

from router.balancer import Mode, finalize
from router.state.base import (
    MCOST_PER_COST,
    HealthUpdate,
    Issued,
    Released,
    Source,
    Store,
    WorkerRecord,
    gcra,
    quantize,
    reqnum_floor,
    worker_id,
)
from router.state.ledger import Tickets, add_ticket, expire_tickets, fold_report, release_ticket

_NO_TICKETS: Tickets = deque(maxlen=0)  # a worker's outstanding tickets before its first


class MemoryStore(Store):
    def __init__(self) -> None:
        self._workers: dict[str, WorkerRecord] = {}
        self._reqnums: dict[str, int] = {}
        self._pending: dict[str, Tickets] = {}  # outstanding tickets per worker, oldest first
        self._leases: dict[str, tuple[str, float]] = {}
        self._request_idx = 0
        self._rates: dict[str, float] = {}  # GCRA theoretical arrival time per key
        self._slots: dict[str, dict[str, float]] = {}  # key -> token -> lease expiry

    async def ping(self) -> None:
        return None

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
        w = self._workers.get(wid)
        if w is None:
            w = WorkerRecord(
                wid, endpoint, url, perf, max_load, source, owner, last_ok=now, registered_at=now
            )
            self._workers[wid] = w
        elif (w.source, w.owner) == (source, owner):
            w.perf, w.max_load = perf, max_load
        return replace(w)

    async def remove_worker(self, wid: str) -> bool:
        self._pending.pop(wid, None)
        self._leases.pop(wid, None)
        self._reqnums.pop(wid, None)
        return self._workers.pop(wid, None) is not None

    async def get_worker(self, wid: str) -> WorkerRecord | None:
        w = self._workers.get(wid)
        return replace(w) if w else None

    async def list_workers(self) -> list[WorkerRecord]:
        return [w.copy() for w in self._workers.values()]

    async def drain_worker(self, wid: str) -> WorkerRecord | None:
        w = self._workers.get(wid)
        if w is None:
            return None
        w.status, w.admin_drain = "draining", True
        return replace(w)

    async def record_health(self, wid: str, update: HealthUpdate) -> bool:
        w = self._workers.get(wid)
        if w is None or w.status != update.expected:
            return False
        w.status, w.ok_streak, w.fail_streak = update.status, update.ok_streak, update.fail_streak
        w.last_ok = update.last_ok
        if update.perf is not None:
            w.perf = update.perf
        if update.report is not None:
            fold_report(w, self._pending.get(wid, _NO_TICKETS), update.report)
        return True

    async def issue(
        self,
        candidates: Sequence[str],
        mode: Mode,
        cost: float,
        now: float,
        ttl_s: float,
        request_idx: int,
    ) -> tuple[Issued | None, int]:
        if request_idx <= 0:
            self._request_idx = max(self._request_idx + 1, int(now * 1000))
            request_idx = self._request_idx
        records = [self._workers.get(wid) for wid in candidates]
        live = [w for w in records if w is not None]
        for w in live:
            expire_tickets(w, self._pending.get(w.id, _NO_TICKETS), now)
        mcost = quantize(cost)
        i = finalize(live, mcost / MCOST_PER_COST, mode)
        if i is None:
            return None, request_idx
        w = live[i]
        prev = self._reqnums.get(w.id)
        reqnum = reqnum_floor(now) if prev is None else prev + 1
        self._reqnums[w.id] = reqnum
        add_ticket(w, self._pending.setdefault(w.id, deque()), reqnum, mcost, now + ttl_s)
        issued = Issued(w.id, w.url, reqnum, request_idx, w.load, w.pending_mcost)
        return issued, request_idx

    async def release(self, wid: str, reqnum: int, cost: float) -> Released:
        w = self._workers.get(wid)
        if w is None:
            return None
        return release_ticket(w, self._pending.get(wid, _NO_TICKETS), reqnum, cost)

    async def take_rate(self, key_id: str, rate_per_s: float, burst: float, now: float) -> float:
        tat, retry = gcra(self._rates.get(key_id), now, rate_per_s, burst)
        if retry == 0.0:
            self._rates[key_id] = tat
        return retry

    async def acquire_slot(
        self, key_id: str, limit: int, token: str, now: float, lease_s: float
    ) -> bool:
        held = self._slots.setdefault(key_id, {})
        for t in [t for t, until in held.items() if until <= now]:
            del held[t]
        if len(held) >= limit:
            return False
        held[token] = now + lease_s
        return True

    async def release_slot(self, key_id: str, token: str) -> None:
        held = self._slots.get(key_id)
        if held is not None:
            held.pop(token, None)
            if not held:
                del self._slots[key_id]

    async def claim_leases(self, wids: Sequence[str], holder: str, ttl_s: float) -> set[str]:
        now = time.monotonic()
        held = set()
        for wid in wids:
            cur = self._leases.get(wid)
            if cur is None or cur[0] == holder or cur[1] < now:
                self._leases[wid] = (holder, now + ttl_s)
                held.add(wid)
        return held

    async def close(self) -> None:
        return None
