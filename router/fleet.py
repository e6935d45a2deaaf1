"""The fleet: every change to worker state goes through here, to the store and then the
snapshot, so the replica's local view is written in exactly one place.

Handlers, the health poller and the proxy never touch the snapshot's mutators; they
call these methods, which write the store first (the truth every replica shares) and
mirror what the store answered into this replica's snapshot (so its own reads are exact
at once, and other replicas' changes arrive with the next `refresh`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence

from router.balancer import Mode
from router.prefix import NO_MATCH, Match
from router.snapshot import Snapshot
from router.speed import Speeds
from router.state.base import HealthUpdate, Issued, Released, Source, Store, WorkerRecord


class Fleet:
    def __init__(self, store: Store, snapshot: Snapshot) -> None:
        self.store = store
        self.snapshot = snapshot
        # per endpoint, an event set (and replaced) when one of its workers may be ready
        self._ready: dict[str, asyncio.Event] = {}
        # called with an endpoint (None: any) whenever its workers changed: held requests
        # (router/hold.py) try again
        self.on_change: list[Callable[[str | None], None]] = []
        self.speeds = Speeds()  # measured perf (router/speed.py), this replica's view

    def _changed(self, endpoint: str | None) -> None:
        for listener in self.on_change:
            listener(endpoint)

    async def until_ready(self, endpoint: str, timeout_s: float) -> bool:
        """Wait until the snapshot has a ready worker of `endpoint`; False after `timeout_s`.

        Woken by what changes the snapshot (this replica's health results, a refresh
        with other replicas' writes), never by polling.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while not self._has_ready(endpoint):
            event = self._ready.setdefault(endpoint, asyncio.Event())
            try:
                async with asyncio.timeout_at(deadline):
                    await event.wait()
            except TimeoutError:
                return self._has_ready(endpoint)
        return True

    def _has_ready(self, endpoint: str) -> bool:
        return any(w.ready for w in self.snapshot.endpoint(endpoint))

    def _wake(self, endpoint: str | None = None) -> None:
        names = [endpoint] if endpoint is not None else list(self._ready)
        for name in names:
            event = self._ready.pop(name, None)
            if event is not None:
                event.set()  # its waiters look again; later ones wait on a new event

    async def refresh(self) -> None:
        """Re-read every worker from the store into the snapshot."""
        await self.snapshot.refresh()
        if self._ready:
            self._wake()
        self._changed(None)

    async def issue(
        self,
        candidates: Sequence[str],
        mode: Mode,
        cost: float,
        now: float,
        ttl_s: float,
        request_idx: int,
    ) -> tuple[Issued | None, int]:
        issued, request_idx = await self.store.issue(
            candidates, mode, cost, now, ttl_s, request_idx
        )
        if issued is not None:
            self.snapshot.apply_issue(issued, cost)
        return issued, request_idx

    async def match_prefix(
        self, endpoint: str, hashes: Sequence[str], now: float, ttl_s: float
    ) -> Match:
        """What the shared prefix index knows of these blocks (router/prefix.py)."""
        if not hashes:
            return NO_MATCH
        depth, holders = await self.store.prefix_lookup(endpoint, hashes, now, ttl_s)
        return Match(depth, len(hashes), tuple(holders))

    async def record_prefix(
        self,
        endpoint: str,
        wid: str,
        hashes: Sequence[str],
        now: float,
        ttl_s: float,
        max_blocks: int,
    ) -> None:
        """Remember that `wid` was sent these blocks (batched on Redis, not awaited)."""
        if hashes:
            await self.store.prefix_record(endpoint, wid, hashes, now, ttl_s, max_blocks)

    async def release(self, wid: str, reqnum: int, cost: float) -> Released:
        where = await self.store.release(wid, reqnum, cost)
        if where is not None:
            self.snapshot.apply_release(wid, cost, where)
            if self.on_change:
                w = self.snapshot.get(wid)
                self._changed(w.endpoint if w is not None else None)
        return where

    async def record_health(self, wid: str, update: HealthUpdate) -> bool:
        written = await self.store.record_health(wid, update)
        if written:
            self.snapshot.apply_health(wid, update)
            w = self.snapshot.get(wid)
            if w is not None:
                if update.status == "ready" and self._ready:
                    self._wake(w.endpoint)
                if update.status != update.expected:
                    self._changed(w.endpoint)
        return written

    async def upsert(
        self,
        endpoint: str,
        url: str,
        perf: float,
        max_load: float | None,
        source: Source,
        now: float,
        owner: str = "",
    ) -> WorkerRecord:
        record = await self.store.upsert_worker(endpoint, url, perf, max_load, source, now, owner)
        self.snapshot.upsert(record)
        return record

    def started(self, wid: str, now: float) -> None:
        """A proxied request went to `wid` (perf_mode = "measured")."""
        self.speeds.start(wid, now)

    async def finished(self, wid: str, cost: float, now: float) -> None:
        """A proxied request to `wid` ended: the worker's measured perf, when a sampling
        window closed, goes to the store (every replica's least_work reads it) and the
        snapshot. The one place measured perf is written in proxy mode."""
        perf = self.speeds.finish(wid, cost, now)
        if perf is not None:
            if await self.store.set_perf(wid, perf):
                w = self.snapshot.get(wid)
                if w is not None:
                    w.perf = perf

    def reported_perf(self, wid: str, completed_cost: float, busy_s: float) -> float | None:
        """Ticket mode: a /readyz report's running totals; the measured perf to write
        with the poll's health update when a window closed (record_health writes it)."""
        return self.speeds.report(wid, completed_cost, busy_s)

    async def remove(self, wid: str) -> bool:
        self.speeds.forget(wid)
        existed = await self.store.remove_worker(wid)
        self.snapshot.remove(wid)
        return existed

    async def drain(self, wid: str) -> WorkerRecord | None:
        drained = await self.store.drain_worker(wid)
        if drained is not None:
            self.snapshot.upsert(drained)
        return drained
