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
from collections.abc import Callable
from dataclasses import replace

from router.context import RouterContext
from router.control.providers.base import ProvidedWorker, Provider, ProviderError
from router.control.registry import Conflict
from router.control.spec import EndpointRecord, Gpr, State, new_gpr
from router.state.base import WorkerRecord, worker_id

log = logging.getLogger(__name__)

LEASE = "control-leader"
_KEEP_RELEASED_GPRS = 8  # released provision records kept per endpoint, newest last

# desired(record, now, last_activity) -> how many workers the endpoint should have
Desired = Callable[[EndpointRecord, float, float], int]


def base_desired(record: EndpointRecord, now: float, last_activity: float) -> int:
    """`min_workers`, or none once idle past `inactivity_timeout_s` (scale to zero)."""
    a = record.autoscaling
    timeout = a.inactivity_timeout_s
    idle_since = max(last_activity, record.created)
    if timeout is not None and now - idle_since >= timeout:
        return 0
    return max(a.min_workers, 1 if timeout is not None else 0) if a.max_workers else 0


class Lifecycle:
    def __init__(
        self,
        ctx: RouterContext,
        providers: dict[str, Provider],
        holder: str,
        desired: Desired = base_desired,
    ) -> None:
        self.ctx = ctx
        self.providers = providers
        self.holder = holder
        self.desired = desired
        self.leader = False
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
        """No longer the leader: stop what this replica runs (the new leader starts its own)."""
        self.leader = False
        for provider in self.providers.values():
            for w in await provider.observe():
                await self._retire(provider, w)

    # one endpoint
    async def _drive(
        self, record: EndpointRecord, provider: Provider, workers: list[ProvidedWorker], now: float
    ) -> None:
        fleet = {w.url: w for w in self.ctx.snapshot.endpoint(record.name)}
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
        last = self.activity.get(record.name, (0, 0.0))[1]
        want = self.desired(record, now, last)
        gprs = list(record.gprs)
        if len(live) < want:
            n = want - len(live)
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
