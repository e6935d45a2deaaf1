"""The replica's local view of every worker: reads never go to the store per request.

Refreshed from the store every `snapshot_interval_s`, and updated in place by this
replica's own writes (tickets issued, health results) so it is never staler than one
refresh for other replicas' changes and exact for its own.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Iterable

from router.metrics import Metrics
from router.state.base import (
    STATUSES,
    HealthUpdate,
    Issued,
    Released,
    Store,
    StoreUnavailable,
    WorkerRecord,
    quantize,
)


class Snapshot:
    def __init__(self, store: Store, metrics: Metrics, endpoints: Iterable[str]) -> None:
        self.store = store
        self.metrics = metrics
        self.endpoint_names = endpoints  # may be live (the registry's dict): read when used
        self._by_id: dict[str, WorkerRecord] = {}
        self._by_endpoint: dict[str, list[WorkerRecord]] = {}
        self.ok = False  # last refresh reached the store
        self.refreshed = asyncio.Event()

    def workers(self) -> list[WorkerRecord]:
        return list(self._by_id.values())

    def endpoint(self, name: str) -> list[WorkerRecord]:
        return self._by_endpoint.get(name, [])

    def get(self, wid: str) -> WorkerRecord | None:
        return self._by_id.get(wid)

    def status_counts(self, endpoint: str) -> dict[str, int]:
        counts = Counter(w.status for w in self.endpoint(endpoint))
        return {s: counts.get(s, 0) for s in STATUSES}

    def replace_all(self, records: Iterable[WorkerRecord]) -> None:
        by_id = {w.id: w for w in records}
        by_endpoint: dict[str, list[WorkerRecord]] = {}
        for w in by_id.values():
            by_endpoint.setdefault(w.endpoint, []).append(w)
        self._by_id, self._by_endpoint = by_id, by_endpoint

    def upsert(self, w: WorkerRecord) -> None:
        self._by_id[w.id] = w
        self.replace_all(list(self._by_id.values()))

    def remove(self, wid: str) -> None:
        if self._by_id.pop(wid, None) is not None:
            self.replace_all(list(self._by_id.values()))

    def apply_issue(self, issued: Issued, cost: float) -> None:
        w = self._by_id.get(issued.worker_id)
        if w is not None:
            w.pending_mcost = issued.pending_mcost  # the store's, fresh: exact
            w.pending_requests += 1

    def apply_release(self, wid: str, cost: float, where: Released) -> None:
        w = self._by_id.get(wid)
        if w is None:
            return
        if where == "pending":
            w.pending_mcost = max(0, w.pending_mcost - quantize(cost))
            w.pending_requests = max(0, w.pending_requests - 1)
        elif where == "reported":
            w.reported_cost = max(0.0, w.reported_cost - cost)
            w.reported_requests = max(0, w.reported_requests - 1)

    def apply_health(self, wid: str, u: HealthUpdate) -> None:
        w = self._by_id.get(wid)
        if w is None:
            return
        w.status, w.ok_streak, w.fail_streak, w.last_ok = (
            u.status,
            u.ok_streak,
            u.fail_streak,
            u.last_ok,
        )
        if u.perf is not None:
            w.perf = u.perf
        if u.report is not None:
            w.reported_cost, w.reported_requests, seen = u.report
            w.max_reqnum_seen = max(w.max_reqnum_seen, seen)

    def export_metrics(self) -> None:
        """Set the per-endpoint gauges from the snapshot (called when /metrics is scraped)."""
        m = self.metrics
        for ep in set(self.endpoint_names) | set(self._by_endpoint):
            workers = self.endpoint(ep)
            for status, n in self.status_counts(ep).items():
                m.workers.labels(ep, status).set(n)
            m.inflight_cost.labels(ep).set(sum(w.load for w in workers))
            m.inflight_requests.labels(ep).set(sum(w.requests for w in workers))
            m.capacity.labels(ep).set(sum(w.perf for w in workers if w.status == "ready"))

    async def refresh(self) -> None:
        """Re-read every worker from the store (run_once of the refresh loop)."""
        try:
            records = await self.store.list_workers()
        except StoreUnavailable:
            self.ok = False
            self.metrics.store_errors.inc()
            raise
        self.ok = True
        self.replace_all(records)
        self.refreshed.set()
