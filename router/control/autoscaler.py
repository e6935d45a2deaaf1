"""The autoscaling policy: how many workers an endpoint should have, from its demand.

`desired()` is pure (no I/O, no clock: `now` comes in); the lifecycle loop and
`bench/autoscale_sim.py` call the same function. Its inputs: `history`, the cost routed
to the endpoint per second (index -1 the last full second; it should count every
request that arrived, held or refused ones too, or a cold endpoint would never see
demand), the fleet (each worker's `perf` and phase), the endpoint's `Autoscaling`, and
a `ScaleMemory` the loop keeps per endpoint between calls.

The rules (docs/control-plane.md; the anchors are Vast's autoscaler and Knative's KPA):

* Demand: the mean of the last `SHORT_WINDOW_S` (6) and of the last `LONG_WINDOW_S`
  (60) seconds of history (fewer at start); predicted = max(short, long), and during a
  cold start (requests held, no worker ready) at least the mean of the short window's
  seconds since the last one without demand: the 6 s mean of a step from idle is
  diluted by the idle seconds before it (the last second alone is too noisy). On top, the
  backlog: `held_cost / BACKLOG_DRAIN_S` (held requests are work already owed; without
  it a fleet sized for the arrival rate would take minutes to drain a cold start's
  queue). capacity = max(min_load, (predicted + backlog) / target_util).
* Scale up at once: keep every worker (starting ones are coming capacity) and add new
  ones, each assumed to have the fleet's mean perf (`ScaleMemory.perf`, the last mean
  seen, `DEFAULT_PERF` before any worker existed; the loop may seed it from the
  endpoint's runtime perf), until the sum of perf covers capacity.
* Scale down only when both windows say fewer will do (so the short window can stop a
  scale-down but never cause one: a fall is seen through the long window), only to a
  count that sufficed for the whole last `SCALE_DOWN_DELAY_S` (30 s; Knative's
  scale-down-delay shape: the max of the needs over that window, so the fleet follows
  a falling long window 30 s late instead of in 30 s steps), and never while bursting:
  panic starts when short-window demand reaches `PANIC_RATIO` (2x) the ready capacity,
  and lasts until `PANIC_HOLD_S` (60 s) after the last time it did (Knative). A
  starting worker is never counted among the idle: a scale-down keeps every starting
  worker and drops only ready ones.
* The last worker (n -> 0) is a stage of its own (Ray's downscale_to_zero_delay_s): it
  goes only when the endpoint is idle (nothing routed for the whole long window,
  nothing held) and `inactivity_timeout_s` has passed since `last_activity`; None
  keeps it for ever, 0 lets it go as soon as idle.
* A held request with no worker starts one at once, whatever the windows say.
* Everything is clamped to [min_workers, max_workers] last.

`cold_mult` has no effect here, on purpose. Vast keeps cold_mult x the active load as
*stopped* workers with the model loaded, which cost disk, not GPU time, and resume in
seconds. The providers here have no such state: a worker with its model loaded is a
running GPU, so holding a cold tier would cost cold_mult x the fleet's GPU-seconds. The
role the cold tier plays (capacity that survives a lull) is played by the scale-down
delay and the panic hold; the field is kept so Vast's settings load unchanged.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal, get_args

from router.control.spec import Autoscaling

WorkerPhase = Literal["starting", "ready", "draining"]  # starting: model loading, not ready
Direction = Literal["up", "down", "hold"]
Reason = Literal[
    "held",  # a request waits and no worker exists: one starts at once
    "burst",  # up while bursting, or a scale-down refused because of it
    "load",  # up to cover the predicted load
    "min_load",  # the capacity floor sets the count
    "min_workers",
    "max_workers",
    "delay",  # fewer would do, but not for the whole scale-down delay yet
    "idle",  # down: the long window has needed fewer for the whole delay
    "inactivity",  # the last worker goes (or waits for the inactivity timeout)
    "steady",
]
REASONS: tuple[Reason, ...] = get_args(Reason)

SHORT_WINDOW_S = 6  # seconds of history for bursts (Knative's panic window)
LONG_WINDOW_S = 60  # seconds of history for the steady load (Knative's stable window)
SCALE_DOWN_DELAY_S = 30.0  # a lower count must have sufficed this long before using it
PANIC_RATIO = 2.0  # short-window demand / ready capacity that starts a burst (Knative 200%)
PANIC_HOLD_S = 60.0  # no scale-down until this long after the last burst reading
BACKLOG_DRAIN_S = 10.0  # held cost is planned to be served within this many seconds
DEFAULT_PERF = 100.0  # a new worker's perf before any worker was seen (lifecycle's default)


@dataclass(frozen=True, slots=True)
class WorkerView:
    perf: float  # cost units per second it can process
    phase: WorkerPhase


@dataclass(slots=True)
class ScaleMemory:
    """What one endpoint's decisions remember between calls (kept by the loop)."""

    perf: float = DEFAULT_PERF  # a new worker's expected perf: the last fleet mean seen
    panic_until: float = -math.inf  # no scale-down before this (bursting)
    since: float | None = None  # the first decision's time: no scale-down a delay after it
    needs: deque[tuple[float, int]] = field(default_factory=deque)  # (when, count needed)


@dataclass(frozen=True, slots=True)
class Decision:
    workers: int  # how many workers the endpoint should have (ready + starting)
    direction: Direction
    reason: str  # a metrics label, one of REASONS
    detail: str  # a human line for the INFO log


def desired(
    history: Sequence[float],
    fleet: Sequence[WorkerView],
    settings: Autoscaling,
    now: float,
    memory: ScaleMemory,
    last_activity: float,
    held: int = 0,
    *,
    held_cost: float = 0.0,
) -> Decision:
    """How many workers the endpoint should have now, and why (see module docstring)."""
    short = _mean(history[-SHORT_WINDOW_S:])
    long = _mean(history[-LONG_WINDOW_S:])
    active = [w for w in fleet if w.phase != "draining"]
    ready = [w.perf for w in active if w.phase == "ready"]
    starting = [w.perf for w in active if w.phase == "starting"]
    current = len(active)
    if active:
        memory.perf = sum(w.perf for w in active) / current
    if memory.since is None:
        memory.since = now

    ready_cap = sum(ready)
    if short > 0 and short >= PANIC_RATIO * ready_cap:
        memory.panic_until = now + PANIC_HOLD_S
    bursting = now < memory.panic_until

    predicted = max(short, long)
    if held > 0 and ready_cap == 0:
        # a cold start: the 6 s mean of a step from idle is diluted by the idle seconds
        # before it, and each second lost here is more queue to drain once workers are up
        predicted = max(predicted, _mean(_since_idle(history[-SHORT_WINDOW_S:])))
    demand = predicted / settings.target_util
    backlog = max(held_cost, 0.0) / BACKLOG_DRAIN_S / settings.target_util
    capacity = max(settings.min_load, demand + backlog)
    perf = memory.perf if memory.perf > 0 else DEFAULT_PERF
    need = _count(capacity, ready, starting, perf)

    # The need as a step function of time; a scale-down goes only as low as its max over
    # the delay window, so the first entry kept is the one in force at the window's start.
    memory.needs.append((now, max(need, 1)))
    while len(memory.needs) > 1 and memory.needs[1][0] <= now - SCALE_DOWN_DELAY_S:
        memory.needs.popleft()

    workers = current
    reason: Reason = "steady"
    why = f"demand {short:.4g}/{long:.4g} cost/s (6 s/60 s), capacity {capacity:.4g}"
    if need > current:
        workers = need
        if bursting:
            reason = "burst"
        elif backlog > 0 and _count(demand, ready, starting, perf) <= current:
            reason = "held"  # the arrival rate alone is covered: the queue asks for more
        elif settings.min_load > demand + backlog:
            reason = "min_load"
        else:
            reason = "load"
        why += f" > fleet perf {ready_cap + sum(starting):.4g}"
    elif need < current:
        delayed = max(n for _, n in memory.needs)
        if bursting:
            reason = "burst"
            why += f"; bursting until {memory.panic_until:.0f}, no scale-down"
        elif now - memory.since < SCALE_DOWN_DELAY_S:
            reason = "delay"
            why += f"; {need} would do, deciding for {SCALE_DOWN_DELAY_S:g} s first"
        elif need == 0 and delayed <= 1:
            workers, reason = _last_worker(settings, now, last_activity, held)
            why += f"; idle, last activity at {last_activity:.0f}"
            if workers == 1 and current > 1:
                reason = "idle"
        elif delayed < current:
            workers, reason = delayed, "idle"
            why += f"; {delayed} sufficed for {SCALE_DOWN_DELAY_S:g} s"
        else:
            reason = "delay"
            why += f"; {need} would do, waiting {SCALE_DOWN_DELAY_S:g} s"

    if held > 0 and workers == 0:
        workers, reason = 1, "held"
        why = f"{held} request(s) held and no worker"
    if workers < settings.min_workers:
        workers, reason = settings.min_workers, "min_workers"
    if workers > settings.max_workers:
        workers, reason = settings.max_workers, "max_workers"
    direction: Direction = "up" if workers > current else "down" if workers < current else "hold"
    return Decision(workers, direction, reason, f"{current} -> {workers}: {why}")


def _last_worker(
    settings: Autoscaling, now: float, last_activity: float, held: int
) -> tuple[int, Reason]:
    """1 or 0 for an idle endpoint: the inactivity timeout decides (None: never 0)."""
    timeout = settings.inactivity_timeout_s
    if held > 0 or timeout is None or now - last_activity < timeout:
        return 1, "inactivity"
    return 0, "inactivity"


def _count(capacity: float, ready: list[float], starting: list[float], perf: float) -> int:
    """Workers that cover `capacity` (see module docstring).

    Short of it: every worker kept (starting ones as coming capacity) plus new ones of
    `perf` each. Above it: every starting worker (never a candidate to stop) plus the
    fewest ready ones, fastest first, that cover it alone, so that no ready worker
    serving now is stopped in favour of one still loading.
    """
    if sum(ready) + sum(starting) < capacity:
        have = sum(ready) + sum(starting)
        return len(ready) + len(starting) + math.ceil((capacity - have) / perf - 1e-9)
    n, total = len(starting), 0.0
    for p in sorted(ready, reverse=True):
        if total >= capacity:
            break
        total += p
        n += 1
    return n


def _since_idle(values: Sequence[float]) -> Sequence[float]:
    """The trailing seconds with demand, after the last second without any."""
    for i in range(len(values) - 1, -1, -1):
        if values[i] <= 0:
            return values[i + 1 :]
    return values


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else 0.0
