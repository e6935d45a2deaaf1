"""The lifecycle loop: one leader drives every endpoint from what its provider reports.

`run_once()` takes the store's leader lease (one replica at a time; a dead leader's lease
runs out within `control.lease_s` and another replica takes over), reads what each
provider runs, and for every endpoint:

* registers running workers in the fleet (health polls then decide when they are
  ready), replaces workers that exited, fails the endpoint (with the worker's last log
  lines) when one never became ready in time;
* starts or stops workers towards the desired count (`desired`, a pure function the
  autoscaler replaces); a worker chosen to stop is drained first: it gets no new work
  and stops once its in-flight cost reached zero, or after `control.drain_timeout_s`;
* sets the endpoint's state: `Pending` -> `Loading` (workers starting, none ready) ->
  `Running` (one ready) -> `Deleting` -> gone, or `Failed` with the reason, or
  `Scaled to zero`; each worker has a GPU provision record (`Pending` -> `Provisioned`
  -> `Released`).

Every decision is logged once at INFO with its reason. Provider calls never block the
data plane: this loop is its own task, and requests never wait on it.
"""

from __future__ import annotations

import logging
import time
from dataclasses import replace

from router.context import RouterContext
from router.control.autoscaler import (
    DEFAULT_PERF,
    LONG_WINDOW_S,
    Decision,
    ScaleMemory,
    WorkerView,
    desired,
)
from router.control.providers.base import ProvidedWorker, Provider, ProviderError
from router.control.registry import Conflict
from router.control.spec import EndpointRecord, Gpr, State, new_gpr
from router.state.base import WorkerRecord, worker_id

log = logging.getLogger(__name__)

LEASE = "control-leader"
_KEEP_RELEASED_GPRS = 8  # released provision records kept per endpoint, newest last


def expired(record: EndpointRecord, now: float, last_activity: float, held: int) -> bool:
    """Idle past `inactivity_timeout_s`: every worker goes, `min_workers` or not.

    This is Bytez's `expirationPeriodSeconds` (a loaded model stops that long after its
    last run) and Vast's inactivity timeout; with no cold tier of stopped-but-loaded
    workers here, `min_workers` holds only while the endpoint is in use.
    """
    timeout = record.autoscaling.inactivity_timeout_s
    idle_since = max(last_activity, record.created)
    return timeout is not None and held == 0 and now - idle_since >= timeout


class Lifecycle:
    def __init__(self, ctx: RouterContext, providers: dict[str, Provider], holder: str) -> None:
        self.ctx = ctx
        self.providers = providers
        self.holder = holder
        self.leader = False
        self._memory: dict[str, ScaleMemory] = {}  # the autoscaler's, per endpoint
        self._said: dict[str, tuple[int, str]] = {}  # last decision logged, per endpoint
        self.demand: dict[str, dict[int, float]] = {}  # the store's, read each tick
        self._draining: dict[str, float] = {}  # provider worker id -> when its drain began
        self.activity: dict[str, tuple[int, float]] = {}  # the store's, read each tick

    async def run_once(self, now: float | None = None) -> bool:
        """One pass if this replica leads; True if it does."""
        ctx = self.ctx
        now = time.time() if now is None else now
        lease_s = ctx.settings.control.lease_s
        if not await ctx.store.take_lease(LEASE, self.holder, lease_s):
            if self.leader:
                log.warning("lost the control-plane lease; stopping this replica's workers")
                await self.step_down()
            return False
        if not self.leader:
            log.info("this replica now leads the control plane (lease %s)", self.holder)
            self.leader = True
        registry = ctx.registry
        if registry.lost:
            await registry.restore()
        await registry.refresh()
        self.activity = await ctx.store.activity()
        self.demand = await ctx.store.demand(int(now) - LONG_WINDOW_S - 1)
        observed: dict[tuple[str, str], list[ProvidedWorker]] = {}
        for name, p in self.providers.items():
            for w in await p.observe():
                observed.setdefault((name, w.endpoint), []).append(w)
        for record in list(registry.records.values()):
            provider = self.providers.get(record.provider)
            if provider is None:
                await self._report_static(record, now)
                continue
            workers = observed.pop((record.provider, record.name), [])
            try:
                await self._drive(record, provider, workers, now)
            except ProviderError as exc:
                log.error("endpoint %s: provider %s failed: %s", record.name, provider.name, exc)
                await self._save(record, "Failed", f"provider error: {exc}", now)
        for (name, endpoint), workers in observed.items():  # their endpoint is gone
            for w in workers:
                if w.state != "stopping":
                    log.info("stopping worker %s of removed endpoint %s", w.id, endpoint)
                    await self._retire(self.providers[name], w)
        return True

    async def step_down(self) -> None:
        """No longer the leader: stop the workers this process runs (the new leader starts
        its own); a cluster's workers stay for the new leader to adopt."""
        self.leader = False
        for provider in self.providers.values():
            if not provider.owned_by_process:
                continue
            for w in await provider.observe():
                await self._retire(provider, w)

    # one endpoint
    async def _drive(
        self, record: EndpointRecord, provider: Provider, workers: list[ProvidedWorker], now: float
    ) -> None:
        fleet = {w.url: w for w in self.ctx.snapshot.endpoint(record.name)}
        # Workers a provider started that it no longer runs (a previous leader's, or this
        # process's before a restart: their processes died with it) are not routed to,
        # even for the moment before a health poll would find them gone.
        running = {w.url for w in workers}
        for rec in [r for r in fleet.values() if r.source == "spawned" and r.url not in running]:
            log.info(
                "endpoint %s: forgetting worker %s (%s): no provider runs it",
                record.name,
                rec.id,
                rec.url,
            )
            await self.ctx.fleet.remove(rec.id)
            del fleet[rec.url]
        if record.state == "Deleting":
            await self._delete(record, provider, workers, fleet, now)
            return
        live: list[ProvidedWorker] = []
        failure = ""
        for w in workers:
            if w.state == "exited":
                log.warning(
                    "endpoint %s: worker %s exited (%s); replacing it",
                    record.name,
                    w.id,
                    _first_line(w.detail),
                )
                await self._retire(provider, w)
            elif w.state == "failed":
                failure = w.detail or "a worker did not become ready"
                log.error(
                    "endpoint %s: worker %s failed: %s", record.name, w.id, _first_line(failure)
                )
                await self._retire(provider, w)
            elif w.state == "stopping":
                continue
            elif w.id in self._draining:
                await self._finish_drain(record, provider, w, fleet, now)
            else:
                live.append(w)
                if w.url and w.url not in fleet and w.state == "running":
                    perf = record.runtime.perf or 100.0
                    await self.ctx.fleet.upsert(
                        record.name, w.url, perf, record.runtime.max_load, "spawned", now
                    )
        if failure or record.state == "Failed":
            for w in live:
                await self._retire(provider, w)
            if failure:
                await self._save(record, "Failed", failure, now)
            return
        want = self._decide(record, live, fleet, now)
        gprs = list(record.gprs)
        m = self.ctx.metrics
        if len(live) < want:
            n = want - len(live)
            if not live:
                m.child(m.cold_starts, record.name).inc()  # one, however many requests wait
            log.info(
                "endpoint %s: starting %d worker(s) (have %d, want %d)",
                record.name,
                n,
                len(live),
                want,
            )
            started = await provider.start(record, n)
            for w in started:
                g = new_gpr(record.name, record.gpu_spec, w.id)
                g.status = "Pending"
                gprs.append(g)
            live += started
        elif len(live) > want:
            extra = _stop_order(live, fleet)[: len(live) - want]
            log.info(
                "endpoint %s: draining %d worker(s) (have %d, want %d)",
                record.name,
                len(extra),
                len(live),
                want,
            )
            for w in extra:
                await self._begin_drain(w, fleet, now)
        ready = [w for w in live if w.url in fleet and fleet[w.url].ready]
        for g in gprs:
            if g.status == "Pending" and any(w.id == g.worker for w in ready):
                g.status = "Provisioned"
            elif g.status in ("Pending", "Provisioned") and not any(w.id == g.worker for w in live):
                g.status = "Released"
        record = replace(record, gprs=_trim(gprs), conditions=provider.endpoint_status(record.name))
        state: State
        if ready:
            state, reason = "Running", f"{len(ready)} of {len(live)} worker(s) ready"
        elif live:
            state, reason = "Loading", f"{len(live)} worker(s) starting, none ready yet"
        elif want == 0 and record.state in ("Running", "Loading", "Scaled to zero"):
            state, reason = "Scaled to zero", "no worker while idle"
        else:
            state, reason = "Pending", "waiting for capacity"
        await self._save(record, state, reason, now)

    def _decide(
        self,
        record: EndpointRecord,
        live: list[ProvidedWorker],
        fleet: dict[str, WorkerRecord],
        now: float,
    ) -> int:
        """How many workers the endpoint should have (router/control/autoscaler.py)."""
        name = record.name
        perf = record.runtime.perf or DEFAULT_PERF
        memory = self._memory.get(name)
        if memory is None:
            memory = self._memory[name] = ScaleMemory(perf=perf)
        seconds = self.demand.get(name, {})
        t = int(now)
        # the last LONG_WINDOW_S seconds, this one (still filling) last: a cold start's
        # demand is seen the tick it arrives
        history = [seconds.get(s, 0.0) for s in range(t - LONG_WINDOW_S + 1, t + 1)]
        views = []
        for w in live:
            rec = fleet.get(w.url)
            ready = rec is not None and rec.ready
            views.append(
                WorkerView(rec.perf if rec is not None else perf, "ready" if ready else "starting")
            )
        held = self.ctx.holds.held(name)
        last = self.activity.get(name, (0, 0.0))[1]
        if expired(record, now, last, held):
            decision = Decision(
                0,
                "down" if live else "hold",
                "inactivity",
                f"{len(live)} -> 0: idle past the inactivity timeout",
            )
        else:
            decision = desired(
                history,
                views,
                record.autoscaling,
                now,
                memory,
                last,
                held,
                held_cost=self.ctx.holds.held_cost(name),
            )
        m = self.ctx.metrics
        m.desired_workers.labels(name).set(decision.workers)
        said = (decision.workers, decision.reason)
        if decision.direction != "hold" and self._said.get(name) != said:
            log.info(
                "endpoint %s: autoscaler %s (%s) %s",
                name,
                decision.direction,
                decision.reason,
                decision.detail,
            )
            m.child(m.decisions, name, decision.direction, decision.reason).inc()
        self._said[name] = said
        return decision.workers

    async def _delete(
        self,
        record: EndpointRecord,
        provider: Provider,
        workers: list[ProvidedWorker],
        fleet: dict[str, WorkerRecord],
        now: float,
    ) -> None:
        """Drain every worker (in-flight requests and streams finish), stop, forget."""
        pending = False
        for w in workers:
            if w.state in ("exited", "failed"):
                await self._retire(provider, w)
                continue
            if w.state == "stopping":
                pending = True
                continue
            if w.id not in self._draining:
                await self._begin_drain(w, fleet, now)
            pending = not await self._finish_drain(record, provider, w, fleet, now) or pending
        if pending:
            return
        for rec in list(fleet.values()):  # registered or static workers of the endpoint
            await self.ctx.fleet.remove(rec.id)
        await provider.remove(record)
        if record.source == "api":
            await self.ctx.registry.forget(record)
            await self.ctx.store.forget_activity(record.name)
        log.info("endpoint %s deleted", record.name)

    async def _begin_drain(
        self, w: ProvidedWorker, fleet: dict[str, WorkerRecord], now: float
    ) -> None:
        self._draining[w.id] = now
        rec = fleet.get(w.url)
        if rec is not None:
            await self.ctx.fleet.drain(rec.id)

    async def _finish_drain(
        self,
        record: EndpointRecord,
        provider: Provider,
        w: ProvidedWorker,
        fleet: dict[str, WorkerRecord],
        now: float,
    ) -> bool:
        """Stop a draining worker once idle (or out of time); True when it is stopped."""
        began = self._draining.get(w.id, now)
        rec = fleet.get(w.url)
        idle = rec is None or (rec.load <= 0 and rec.requests <= 0)
        timeout = self.ctx.settings.control.drain_timeout_s
        if not idle and now - began < timeout:
            return False
        why = "idle" if idle else f"still busy after {timeout:g} s"
        log.info("endpoint %s: stopping drained worker %s (%s)", record.name, w.id, why)
        await self._retire(provider, w)
        return True

    async def _retire(self, provider: Provider, w: ProvidedWorker) -> None:
        """Stop a worker, take it out of the fleet, forget it."""
        self._draining.pop(w.id, None)
        if w.url:
            await self.ctx.fleet.remove(worker_id(w.endpoint, w.url))
        if w.state not in ("exited", "failed"):
            await provider.stop(w.id)
        await provider.forget(w.id)

    async def _report_static(self, record: EndpointRecord, now: float) -> None:
        """Endpoints whose workers the router does not run: their state from health."""
        workers = self.ctx.snapshot.endpoint(record.name)
        if any(w.ready for w in workers):
            await self._save(record, "Running", "a worker is ready", now)
        elif workers:
            await self._save(record, "Loading", "no worker ready yet", now)
        else:
            await self._save(record, "Pending", "no worker registered", now)

    async def _save(self, record: EndpointRecord, state: State, reason: str, now: float) -> None:
        current = self.ctx.registry.records.get(record.name)
        if current is None:
            return
        if (
            current.state == state
            and current.reason == reason
            and current.gprs == record.gprs
            and current.conditions == record.conditions
        ):
            return
        if state != current.state:
            log.info("endpoint %s: %s -> %s (%s)", record.name, current.state, state, reason)
        new = replace(record, state=state, reason=reason, modified=now, version=current.version)
        if record.source != "api":
            self.ctx.registry.records[record.name] = new
            return
        try:
            await self.ctx.registry.update(new)
        except Conflict:
            log.debug("endpoint %s changed meanwhile; next pass", record.name)


def _stop_order(live: list[ProvidedWorker], fleet: dict[str, WorkerRecord]) -> list[ProvidedWorker]:
    """Which workers to stop first: ready ones, the least loaded first.

    A worker still starting is coming capacity (it must not be judged idle and killed
    while it loads its model): it goes last.
    """

    def key(w: ProvidedWorker) -> tuple[int, float]:
        rec = fleet.get(w.url)
        if rec is None or not rec.ready:
            return (1, 0.0)
        return (0, rec.load)

    return sorted(live, key=key)


def _trim(gprs: list[Gpr]) -> list[Gpr]:
    """Every live provision record, and the last few released ones."""
    released = [g for g in gprs if g.status == "Released"]
    keep = {id(g) for g in released[-_KEEP_RELEASED_GPRS:]}
    return [g for g in gprs if g.status != "Released" or id(g) in keep]


def _first_line(text: str) -> str:
    return text.strip().splitlines()[0] if text.strip() else ""
