"""The embedded store: one process, no Redis, the same contract as the Redis store.

With a state file (statefile.py) its control-plane documents and activity outlive a
restart: a document is written to the file before the call returns, activity at most
once every `activity_save_interval_s` by a timer, and at close.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from router.balancer import Mode, finalize
from router.state.base import (
    DEMAND_KEEP_S,
    MCOST_PER_COST,
    HealthUpdate,
    Issued,
    Released,
    Source,
    Store,
    StoreUnavailable,
    WorkerRecord,
    check_activity,
    check_doc,
    gcra,
    quantize,
    reqnum_floor,
    worker_id,
)
from router.state.ledger import Tickets, add_ticket, expire_tickets, fold_report, release_ticket
from router.state.prefixes import PrefixIndex
from router.state.statefile import THREAD_ABOVE_BYTES, State, encode, load, write_atomic

log = logging.getLogger(__name__)

_NO_TICKETS: Tickets = deque(maxlen=0)  # a worker's outstanding tickets before its first


def _claim(leases: dict[str, tuple[str, float]], key: str, holder: str, ttl_s: float) -> bool:
    """Take or renew one lease unless another holder's is still running."""
    now = time.monotonic()
    cur = leases.get(key)
    if cur is None or cur[0] == holder or cur[1] < now:
        leases[key] = (holder, now + ttl_s)
        return True
    return False


class MemoryStore(Store):
    def __init__(
        self, state_file: Path | None = None, *, activity_save_interval_s: float = 1.0
    ) -> None:
        """`state_file`: where documents and activity are kept across restarts (None:
        nowhere); read now, so a torn or corrupt one raises StateFileError here."""
        self._workers: dict[str, WorkerRecord] = {}
        self._reqnums: dict[str, int] = {}
        self._pending: dict[str, Tickets] = {}  # outstanding tickets per worker, oldest first
        self._leases: dict[str, tuple[str, float]] = {}
        self._request_idx = 0
        self._rates: dict[str, float] = {}  # GCRA theoretical arrival time per key
        self._slots: dict[str, dict[str, float]] = {}  # key -> token -> lease expiry
        self._named_leases: dict[str, tuple[str, float]] = {}  # take_lease: not persisted
        self._demand: dict[str, dict[int, float]] = {}  # endpoint -> second -> cost; live
        self.prefixes = PrefixIndex()
        self._file = state_file
        self._control = load(state_file) if state_file is not None else State()
        self._write_lock = asyncio.Lock()  # one file write at a time, docs changed in turn
        self._activity_interval_s = activity_save_interval_s
        self._activity_rev = self._activity_saved_rev = 0  # changes made / written
        self._saved_at = -float("inf")  # monotonic time of the last write attempt
        self._flush_timer: asyncio.TimerHandle | None = None
        self._flush_task: asyncio.Task[None] | None = None

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
        self.prefixes.forget(wid)
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

    async def set_perf(self, wid: str, perf: float) -> bool:
        w = self._workers.get(wid)
        if w is None:
            return False
        w.perf = perf
        return True

    async def prefix_lookup(
        self, endpoint: str, hashes: Sequence[str], now: float, ttl_s: float
    ) -> tuple[int, list[str]]:
        return self.prefixes.lookup(endpoint, hashes, now, ttl_s)

    async def prefix_record(
        self,
        endpoint: str,
        wid: str,
        hashes: Sequence[str],
        now: float,
        ttl_s: float,
        max_blocks: int,
    ) -> None:
        if wid in self._workers:
            self.prefixes.record(endpoint, wid, hashes, now, ttl_s, max_blocks)

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
        return {wid for wid in wids if _claim(self._leases, wid, holder, ttl_s)}

    # --- control plane -------------------------------------------------------------------

    async def put_doc(self, kind: str, name: str, doc: bytes, expect_version: int) -> int | None:
        check_doc(kind, doc)
        async with self._write_lock:  # compare, write the file, then set: in turn
            cur = self._control.docs.get(kind, {}).get(name)
            cur_v = cur[0] if cur else 0
            if cur_v != expect_version:
                return None
            v = max(self._control.kinds.get(kind, 0), cur_v) + 1
            await self._commit(self._control.with_doc(kind, name, (v, bytes(doc))))
            return v

    async def get_doc(self, kind: str, name: str) -> tuple[int, bytes] | None:
        check_doc(kind)
        return self._control.docs.get(kind, {}).get(name)

    async def delete_doc(self, kind: str, name: str, expect_version: int | None = None) -> bool:
        check_doc(kind)
        async with self._write_lock:
            cur = self._control.docs.get(kind, {}).get(name)
            if cur is None or (expect_version is not None and cur[0] != expect_version):
                return False
            await self._commit(self._control.with_doc(kind, name, None))
            return True

    async def list_docs(self, kind: str) -> dict[str, tuple[int, bytes]]:
        check_doc(kind)
        return dict(self._control.docs.get(kind, {}))

    async def docs_version(self, kind: str) -> int:
        check_doc(kind)
        return self._control.kinds.get(kind, 0)

    async def take_lease(self, name: str, holder: str, ttl_s: float) -> bool:
        return _claim(self._named_leases, name, holder, ttl_s)

    async def release_lease(self, name: str, holder: str) -> None:
        cur = self._named_leases.get(name)
        if cur is not None and cur[0] == holder:
            del self._named_leases[name]

    async def add_activity(self, counts: dict[str, tuple[int, float]]) -> None:
        check_activity(counts)
        act = self._control.activity
        for name, (n, at) in counts.items():
            c, t = act.get(name, (0, 0.0))
            act[name] = (c + n, max(t, float(at)))
        if counts:
            self._activity_changed()

    async def activity(self) -> dict[str, tuple[int, float]]:
        return dict(self._control.activity)

    async def add_demand(self, demand: dict[str, dict[int, float]]) -> None:
        for name, seconds in demand.items():
            held = self._demand.setdefault(name, {})
            for t, cost in seconds.items():
                held[t] = held.get(t, 0.0) + cost
            oldest = max(seconds) - DEMAND_KEEP_S
            for t in [t for t in held if t < oldest]:
                del held[t]

    async def demand(self, since: int) -> dict[str, dict[int, float]]:
        return {
            name: {t: c for t, c in held.items() if t >= since}
            for name, held in self._demand.items()
        }

    async def forget_activity(self, name: str) -> None:
        if self._control.activity.pop(name, None) is not None:
            self._activity_changed()

    # --- the state file --------------------------------------------------------------------

    async def _commit(self, state: State) -> None:
        """Write `state` to the file, then make it the store's; StoreUnavailable if the
        write failed (the store is as it was). Call it holding the write lock."""
        if self._file is None:
            self._control = state
            return
        rev = self._activity_rev
        data = encode(state)
        self._saved_at = time.monotonic()
        if len(data) <= THREAD_ABOVE_BYTES:
            self._write(data)
        else:
            write = asyncio.create_task(asyncio.to_thread(self._write, data), name="state-write")
            try:
                await asyncio.shield(write)
            except asyncio.CancelledError:
                # A thread cannot be stopped: wait for it, so that file and store agree
                # on whether this write happened, then let the cancellation through.
                await asyncio.wait([write])
                if not write.cancelled() and write.exception() is None:
                    self._control, self._activity_saved_rev = state, rev
                raise
        self._control, self._activity_saved_rev = state, rev

    def _write(self, data: bytes) -> None:
        assert self._file is not None
        try:
            write_atomic(self._file, data)
        except OSError as exc:
            raise StoreUnavailable(f"state file {self._file}: cannot write: {exc}") from exc

    def _activity_changed(self) -> None:
        self._activity_rev += 1
        self._schedule_flush()

    def _schedule_flush(self) -> None:
        if self._file is None or self._flush_timer is not None or self._flush_task is not None:
            return  # a flush to come writes this change too
        delay = max(0.0, self._saved_at + self._activity_interval_s - time.monotonic())
        self._flush_timer = asyncio.get_running_loop().call_later(delay, self._start_flush)

    def _start_flush(self) -> None:
        self._flush_timer = None
        self._flush_task = asyncio.create_task(self._flush(), name="state-activity-flush")

    async def _flush(self) -> None:
        try:
            async with self._write_lock:
                if self._activity_rev != self._activity_saved_rev:
                    await self._commit(self._control)
        except StoreUnavailable as exc:
            # the counts stay in memory; the next flush (or document write) retries
            log.warning("%s; activity kept in memory, retrying", exc)
        finally:
            self._flush_task = None
        if self._activity_rev != self._activity_saved_rev:
            self._schedule_flush()

    async def close(self) -> None:
        if self._flush_task is not None:
            await self._flush_task
        if self._flush_timer is not None:  # (the flush may have set one to retry)
            self._flush_timer.cancel()
            self._flush_timer = None
        if self._file is not None and self._activity_rev != self._activity_saved_rev:
            async with self._write_lock:
                try:
                    await self._commit(self._control)
                except StoreUnavailable as exc:
                    log.error("%s; the last activity counts are lost", exc)
