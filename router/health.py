"""Worker health: a pure state machine and the poller that feeds it (docs/architecture.md).

States: loading (never ready yet) -> ready <-> unhealthy, draining (admin, or the worker
answering 503 `{"draining": true}`), removed (registered workers with no success for
`remove_after_s`). A refused connection means the process is gone: the worker leaves
rotation at once instead of waiting for `unhealthy_after` failures.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import math
import time
from dataclasses import dataclass
from typing import Any, TypeGuard

import orjson

from router.config import EndpointSettings, HealthSettings
from router.fleet import Fleet
from router.loops import repeat
from router.metrics import Metrics
from router.state.base import HealthUpdate, Status, WorkerRecord
from router.upstream import Pool, UpstreamError

log = logging.getLogger(__name__)

_MAX_CONCURRENT_POLLS = 256
# Health results written to the store at once: under the Redis pool's 64 connections,
# so a fleet of thousands polled together cannot starve /route of connections (or time
# out waiting for one and lose the results).
_MAX_CONCURRENT_WRITES = 16


@dataclass(frozen=True, slots=True)
class PollResult:
    ok: bool
    draining: bool = False
    refused: bool = False  # nothing listening: the worker process is gone
    report: tuple[float, int, int] | None = None
    perf: float | None = None
    detail: str = ""
    served: tuple[float, float] | None = None  # running (completed_cost, busy_s), if reported


def transition(w: WorkerRecord, r: PollResult, cfg: HealthSettings, now: float) -> HealthUpdate:
    """The next health state of `w` after poll result `r`."""
    status: Status = w.status
    if r.ok:
        ok, fail, last_ok = w.ok_streak + 1, 0, now
        if w.admin_drain:
            status = "draining"
        elif w.status in ("loading", "ready") or ok >= cfg.healthy_after:
            status = "ready"
    elif r.draining:
        ok, fail, last_ok = 0, 0, now
        status = "draining"
    else:
        ok, fail, last_ok = 0, w.fail_streak + 1, w.last_ok
        if (
            w.status in ("ready", "draining")
            and not w.admin_drain
            and (r.refused or fail >= cfg.unhealthy_after)
        ):
            status = "unhealthy"
    return HealthUpdate(w.status, status, ok, fail, last_ok, r.report, r.perf)


def served_totals(body: bytes) -> tuple[float, float] | None:
    """The running (completed_cost, busy_s) a reference worker reports on /readyz."""
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(doc, dict):
        return None
    cost, busy = doc.get("completed_cost"), doc.get("busy_s")
    return (float(cost), float(busy)) if _num(cost) and _num(busy) else None


def parse_report(body: bytes) -> tuple[tuple[float, int, int] | None, float | None, bool]:
    """Read the reference worker's /readyz JSON: (load report, perf, draining flag)."""
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None, None, False
    if not isinstance(doc, dict):
        return None, None, False
    draining = doc.get("draining") is True
    report = None
    cost, reqs, seen = (
        doc.get("inflight_cost"),
        doc.get("inflight_requests"),
        doc.get("max_reqnum_seen"),
    )
    if _num(cost) and isinstance(reqs, int) and isinstance(seen, int):
        report = (float(cost), max(0, reqs), max(0, seen))
    perf = doc.get("perf")
    return report, float(perf) if _num(perf) and perf > 0 else None, draining


def _num(v: Any) -> TypeGuard[float]:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) and v >= 0


def classify(status: int, body: bytes) -> PollResult:
    """What a health answer says: ready, draining, or failed (with any load report)."""
    report, perf, draining = parse_report(body)
    if status == 200 and not draining:
        return PollResult(True, report=report, perf=perf, served=served_totals(body))
    if status == 503 and draining:
        return PollResult(False, draining=True, report=report)
    return PollResult(False, report=report, detail=f"HTTP {status}")


async def poll(pool: Pool, url: str, path: bytes, timeout_s: float) -> PollResult:
    """GET one worker's health path over the shared connection pool and classify it."""
    try:
        return classify(*await pool.get(url, path, timeout_s))
    except UpstreamError as exc:
        return PollResult(False, refused=exc.refused, detail=str(exc))
    except TimeoutError:
        return PollResult(False, detail="TimeoutError")
    except ValueError as exc:  # a URL the router cannot use: it never becomes ready
        return PollResult(False, refused=True, detail=f"unusable URL: {exc}")


def _phase(wid: str) -> float:
    """A stable fraction in [-0.5, 0.5) from the worker id (a hex hash already)."""
    try:
        return int(wid[:8], 16) / 2**32 - 0.5
    except ValueError:
        return 0.0


class HealthPoller:
    """Polls the workers this replica holds a lease on; one poller per worker fleet-wide."""

    def __init__(
        self,
        fleet: Fleet,
        pool: Pool,
        endpoints: dict[str, EndpointSettings],
        holder: str,
        metrics: Metrics,
    ) -> None:
        self.fleet = fleet
        self.store = fleet.store
        self.snapshot = fleet.snapshot
        self.pool = pool
        self.endpoints = endpoints
        self.holder = holder
        self.metrics = metrics
        self._last_poll: dict[str, float] = {}
        self._sem = asyncio.Semaphore(_MAX_CONCURRENT_POLLS)
        self._writes = asyncio.Semaphore(_MAX_CONCURRENT_WRITES)
        self.tick_s = min((e.health.interval_s for e in endpoints.values()), default=1.0)

    async def run_once(self, now: float | None = None) -> int:
        """Poll every due worker whose lease this replica holds; return how many were polled."""
        now = time.time() if now is None else now
        due = [
            w
            for w in self.snapshot.workers()
            if w.endpoint in self.endpoints
            and now - self._last_poll.get(w.id, 0.0)
            >= self.endpoints[w.endpoint].health.interval_s * 0.95
        ]
        if not due:
            return 0
        held = await self.store.claim_leases([w.id for w in due], self.holder, self.tick_s * 3)
        mine = [w for w in due if w.id in held]
        for w in mine:
            # Polls keep a per-worker phase: after the first (at once, for a quick start)
            # a fleet registered together is spread over the interval, not polled in
            # bursts of thousands that stall the loop.
            first = w.id not in self._last_poll
            self._last_poll[w.id] = now + (
                _phase(w.id) * self.endpoints[w.endpoint].health.interval_s * 0.5 if first else 0.0
            )
        results = await asyncio.gather(*(self._check(w) for w in mine), return_exceptions=True)
        failed = [r for r in results if isinstance(r, BaseException)]
        for r in failed:
            if not isinstance(r, Exception):
                raise r  # a cancellation is never swallowed
        if failed:
            # their next poll (one interval on) writes again; StoreUnavailable is the usual
            log.debug(
                "health poll: %d of %d results not written: %r", len(failed), len(mine), failed[0]
            )
        return len(mine)

    async def _check(self, w: WorkerRecord) -> None:
        ep = self.endpoints[w.endpoint]
        async with self._sem:
            result = await poll(self.pool, w.url, ep.health_path.encode(), ep.health.timeout_s)
        now = time.time()
        m = self.metrics
        m.child(m.health_checks, w.endpoint, "ok" if result.ok else "fail").inc()
        if not result.ok and w.source != "static" and now - w.last_ok > ep.health.remove_after_s:
            log.warning(
                "removing worker %s (%s): no successful health check for %.0fs",
                w.id,
                w.url,
                now - w.last_ok,
            )
            await self.fleet.remove(w.id)
            self._last_poll.pop(w.id, None)
            return
        await self._apply(w, result, now)

    async def observe(self, wid: str, result: PollResult) -> None:
        """Count a passive signal (proxy mode: refused connection, 5xx) like a failed poll."""
        w = self.snapshot.get(wid)
        if w is not None and w.endpoint in self.endpoints:
            await self._apply(w, result, time.time())

    async def _apply(self, w: WorkerRecord, result: PollResult, now: float) -> None:
        ep = self.endpoints[w.endpoint]
        update = transition(w, result, ep.health, now)
        if ep.perf_mode == "measured":
            # the figure the worker states is not what it is seen to do: keep the measured
            # one, and move it when the worker's served totals close a window
            perf = None
            if result.served is not None:
                perf = self.fleet.reported_perf(w.id, *result.served)
            update = dataclasses.replace(update, perf=perf)
        if update.status != w.status:
            log.info(
                "worker %s (%s) %s -> %s%s",
                w.id,
                w.url,
                w.status,
                update.status,
                f": {result.detail}" if result.detail else "",
            )
        async with self._writes:
            await self.fleet.record_health(w.id, update)

    async def run_forever(self) -> None:
        await repeat(self.run_once, self.tick_s / 4, "health poll")
