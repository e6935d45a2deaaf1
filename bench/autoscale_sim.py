"""Autoscaler simulator: the router's own policy against a fixed fleet and Knative's KPA.

    python bench/autoscale_sim.py [--traces step diurnal bursts idle] [--cold-start-s 20]
                                  [--seeds 1 2 3] [--plots bench/plots] [--no-plots]

A discrete-time simulation (100 ms steps) that calls `router.control.autoscaler.desired()`
(looked up at call time, never copied) once a simulated second, as the lifecycle loop
would, and acts on its answer.

Model (units: seconds and cost units; think tokens):
  * Requests: Poisson arrivals whose rate follows the trace (in cost units/s); each
    request's cost is lognormal (sigma 0.5) with mean `MEAN_COST` (200). The arrivals are
    drawn once per trace and shared by every policy (common random numbers).
  * Workers: `perf` `PERF` (400 cost/s), reached at a full batch of `SLOTS` (8) requests,
    each served at PERF / SLOTS (50 cost/s; a mean request takes 4 s). A continuous-
    batching server with a max batch: FIFO into slots, no slowdown below the batch size.
  * Routing: a request goes to the ready worker with the most free slots; when no ready
    worker has one (none ready, or all full), it is held in one FIFO queue, as the router
    holds requests while no worker can take them (max_load full everywhere). At most
    `max_held_requests` (100) are held: one more fails at once (503); one held past
    `max_queue_time_s` (30 s) fails (503).
  * Scaling: a new worker is ready `--cold-start-s` (20 s) after it starts; a worker
    chosen to stop gets no new request and stops when its last one is done (a drain).
    All policies stop workers in the lifecycle loop's order: ready ones with the fewest
    requests first, starting ones last. GPU-seconds sum every worker's life from its
    start (starting time included) to its stop, inside the trace's [0, duration].
  * Before t = 0, `--warmup-s` (120 s) at the trace's opening rate brings each policy to
    its own fleet for it (uncounted; a trace opening at 0 cost/s starts cold anyway),
    and after the trace `--tail-s` (120 s) with no arrivals lets every request finish.
  * Decisions once a second. `history` is the cost that arrived in each second (held and
    refused requests included); `held` and `held_cost` are the queue's.

Policies:
  * `ours`: `desired()` with min_workers 0, max_workers 20, target_util 0.9,
    inactivity_timeout_s 30.
  * `fixed`: ceil(peak demand / (PERF x 0.9)) workers, ready from t = 0, never changed.
  * `knative`: the KPA as its docs and defaults give it (research notes §4): observed
    concurrency (requests in service + held, the activator's buffer) sampled every
    100 ms and averaged per second; stable window 60 s, panic window 6 s; target
    concurrency = SLOTS (containerConcurrency: a pod's max batch) at utilisation 0.7;
    desired = ceil(concurrency / (target x 0.7)); panic at 200 % of ready pods, held
    until a stable window passes without it, never scaling down in panic; max scale-up
    rate 1000, max scale-down rate 2; a request held on zero pods starts one at once
    (the activator's poke); the last pod goes 30 s after the decision to reach zero
    (scale-to-zero grace period); max scale 20.

Reported per trace and policy: GPU-seconds, p50/p99 latency (arrival to completion, over
completed requests), requests held past 1 s, requests failed. Same seed, same numbers.
"""

from __future__ import annotations

import argparse
import math
import random
import sys
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from router.control import autoscaler  # noqa: E402
from router.control.autoscaler import ScaleMemory, WorkerPhase, WorkerView  # noqa: E402
from router.control.spec import Autoscaling  # noqa: E402

DT = 0.1  # simulation step, s
TICK_S = 1.0  # decision interval, s (both autoscalers)
PERF = 400.0  # cost units/s of a worker at a full batch
SLOTS = 8  # requests a worker serves at once
MEAN_COST = 200.0  # cost units of the mean request
SIGMA = 0.5  # lognormal sigma of request cost
MAX_WORKERS = 20
SETTINGS = Autoscaling(
    min_workers=0,
    max_workers=MAX_WORKERS,
    target_util=0.9,
    inactivity_timeout_s=30.0,
    max_queue_time_s=30.0,
    max_held_requests=100,
)
HELD_PAST_S = 1.0
POLICIES = ("ours", "fixed", "knative")

# Knative KPA defaults (knative.dev/docs/serving/autoscaling; config-autoscaler)
KN_STABLE_S = 60
KN_PANIC_S = 6
KN_UTIL = 0.7
KN_PANIC_THRESHOLD = 2.0
KN_MAX_UP_RATE = 1000.0
KN_MAX_DOWN_RATE = 2.0
KN_ZERO_GRACE_S = 30.0

Rate = Callable[[float], float]  # demand in cost units/s at time t


@dataclass(frozen=True, slots=True)
class Trace:
    name: str
    duration_s: float
    rate: Rate
    about: str


def _step(t: float) -> float:
    return 2400.0 if 60 <= t < 360 else 0.0


def _diurnal(t: float) -> float:
    # a day in 30 min: trough 10 % of the 4000 cost/s peak at "midnight", peak at "noon"
    return 4000.0 * (0.1 + 0.9 * math.sin(math.pi * t / 1800.0) ** 2)


def _bursts(t: float) -> float:
    return 4000.0 if t % 150 >= 140 else 800.0  # 10 s at 5x every 150 s


def _idle(t: float) -> float:
    return 1600.0 if t % 240 < 60 else 0.0  # a minute of work, three minutes of nothing


TRACES = {
    t.name: t
    for t in (
        Trace("step", 600, _step, "0 -> 2400 cost/s (6 workers' worth) for 5 min -> 0"),
        Trace("diurnal", 1800, _diurnal, "a day in 30 min: 400 -> 4000 -> 400 cost/s"),
        Trace("bursts", 900, _bursts, "800 cost/s with 10 s at 4000 every 150 s"),
        Trace("idle", 960, _idle, "1600 cost/s for 60 s, then 180 s of nothing, x4"),
    )
}


@dataclass(slots=True)
class Request:
    arrival: float
    cost: float
    remaining: float = 0.0
    start: float = -1.0  # when it got a slot
    finish: float = -1.0
    failed: bool = False


@dataclass(slots=True)
class Worker:
    started: float
    ready_at: float
    stopped: float | None = None
    draining: bool = False
    serving: list[Request] = field(default_factory=list)

    def ready(self, t: float) -> bool:
        return t >= self.ready_at


@dataclass(slots=True)
class Result:
    trace: str
    policy: str
    requests: list[Request]
    workers: list[Worker]
    times: list[float]  # decision times
    counts: list[int]  # workers (ready + starting) after each decision
    demand: list[float]  # cost arrived per second
    end: float  # the run's end, the tail included
    until: float  # the trace's end: GPU-seconds are counted up to here

    @property
    def gpu_s(self) -> float:
        """Worker lifetimes (starting included) inside the trace, [0, duration]."""
        return sum(
            max(0.0, min(self.until, self.end if w.stopped is None else w.stopped))
            - max(0.0, min(self.until, w.started))
            for w in self.workers
        )

    def latencies(self) -> list[float]:
        return sorted(r.finish - r.arrival for r in self.requests if r.finish >= 0)

    @property
    def held_past(self) -> int:
        def waited(r: Request) -> float:
            if r.start >= 0:
                return r.start - r.arrival
            return (r.finish if r.finish >= 0 else self.end) - r.arrival

        return sum(1 for r in self.requests if waited(r) > HELD_PAST_S)

    @property
    def failed(self) -> int:
        return sum(1 for r in self.requests if r.failed)

    @property
    def answered(self) -> int:
        return sum(1 for r in self.requests if r.finish >= 0 and not r.failed)


def arrivals(trace: Trace, seed: int, warmup_s: float = 0.0) -> list[tuple[float, float]]:
    """(time, cost) of every request: Poisson arrivals at rate / MEAN_COST per second.

    Times run from -warmup_s, at the trace's opening rate until 0.
    """
    rng = random.Random(f"{trace.name}:{seed}")
    mu = math.log(MEAN_COST) - SIGMA**2 / 2
    out: list[tuple[float, float]] = []
    steps = round((trace.duration_s + warmup_s) / DT)
    for i in range(steps):
        t = i * DT - warmup_s
        lam = trace.rate(max(t, 0.0)) / MEAN_COST * DT
        n = _poisson(rng, lam)
        for _ in range(n):
            out.append((t + rng.random() * DT, rng.lognormvariate(mu, SIGMA)))
    out.sort()
    return out


def _poisson(rng: random.Random, lam: float) -> int:
    if lam <= 0:
        return 0
    limit, k, p = math.exp(-lam), 0, rng.random()
    while p > limit:
        k += 1
        p *= rng.random()
    return k


class Knative:
    """The KPA's decision (knative/serving pkg/autoscaler/scaling/autoscaler.go, defaults)."""

    def __init__(self, max_workers: int = MAX_WORKERS) -> None:
        self.max_workers = max_workers
        self.panic_since: float | None = None
        self.max_panic_pods = 0
        self.zero_since: float | None = None

    def desired(
        self, concurrency: list[float], ready: int, current: int, held: int, now: float
    ) -> int:
        stable = _mean(concurrency[-KN_STABLE_S:])
        panic = _mean(concurrency[-KN_PANIC_S:])
        target = SLOTS * KN_UTIL
        ready_pods = max(1.0, float(ready))
        max_up = math.ceil(KN_MAX_UP_RATE * ready_pods)
        max_down = math.floor(ready_pods / KN_MAX_DOWN_RATE)
        dspc = math.ceil(stable / target - 1e-9)
        dppc = math.ceil(panic / target - 1e-9)
        stable_pods = min(max(dspc, max_down), max_up)
        panic_pods = min(max(dppc, max_down), max_up)
        over = dppc / ready_pods >= KN_PANIC_THRESHOLD
        if over:
            self.panic_since = now
        elif self.panic_since is not None and now - self.panic_since >= KN_STABLE_S:
            self.panic_since, self.max_panic_pods = None, 0
        if self.panic_since is not None:
            want = max(panic_pods, self.max_panic_pods)  # never down while panicking
            self.max_panic_pods = want
        else:
            want = stable_pods
        if held > 0 and current == 0:
            want = max(want, 1)  # the activator pokes the autoscaler
        if want == 0 and current > 0:
            self.zero_since = now if self.zero_since is None else self.zero_since
            if now - self.zero_since < KN_ZERO_GRACE_S:
                want = 1
        else:
            self.zero_since = None
        return min(want, self.max_workers)


def fixed_size(trace: Trace) -> int:
    peak = max(trace.rate(i * DT) for i in range(round(trace.duration_s / DT)))
    return math.ceil(peak / (PERF * SETTINGS.target_util) - 1e-9)


def simulate(
    trace: Trace,
    policy: str,
    seed: int = 1,
    cold_start_s: float = 20.0,
    tail_s: float = 0.0,
    warmup_s: float = 0.0,
    settings: Autoscaling = SETTINGS,
) -> Result:
    """Run one policy on one trace and count from t = 0.

    Before 0, `warmup_s` seconds at the trace's opening rate bring each policy to its own
    steady fleet (a trace opening at 0 cost/s starts cold anyway); `tail_s` extra
    seconds after the trace let the fleet wind down.
    """
    todo = deque(Request(t, c) for t, c in arrivals(trace, seed, warmup_s))
    requests = [r for r in todo if r.arrival >= 0]
    workers: list[Worker] = []
    if policy == "fixed":
        workers = [Worker(-warmup_s, -warmup_s) for _ in range(fixed_size(trace))]
    held: deque[Request] = deque()
    memory = ScaleMemory(perf=PERF)
    kpa = Knative(settings.max_workers)
    history: list[float] = []
    concurrency: list[float] = []
    second_cost = second_conc = 0.0
    last_activity = -math.inf
    times: list[float] = []
    counts: list[int] = []
    slot_rate = PERF / SLOTS
    steps = round((warmup_s + trace.duration_s + tail_s) / DT)
    per_tick = round(TICK_S / DT)
    end = steps * DT - warmup_s
    for i in range(steps):
        t = i * DT - warmup_s
        t_next = t + DT
        # arrivals in [t, t + DT): held first (dispatch below takes them at once if it can)
        while todo and todo[0].arrival < t_next:
            r = todo.popleft()
            second_cost += r.cost
            last_activity = r.arrival
            if len(held) >= settings.max_held_requests:
                r.failed, r.finish = True, r.arrival
            else:
                r.remaining = r.cost
                held.append(r)
        # service, with the finish time interpolated inside the step
        for w in workers:
            if w.stopped is not None or not w.serving:
                continue
            still: list[Request] = []
            for r in w.serving:
                if r.remaining <= slot_rate * DT:
                    r.finish = t + r.remaining / slot_rate
                else:
                    r.remaining -= slot_rate * DT
                    still.append(r)
            w.serving = still
            if w.draining and not still:
                w.stopped = t_next
        # held too long: 503
        while held and t_next - held[0].arrival > settings.max_queue_time_s:
            r = held.popleft()
            r.failed, r.finish = True, r.arrival + settings.max_queue_time_s
        # dispatch: the ready worker with the most free slots
        if held:
            open_ = [w for w in workers if w.stopped is None and not w.draining and w.ready(t)]
            while held and open_:
                w = max(open_, key=lambda w: SLOTS - len(w.serving))
                if len(w.serving) >= SLOTS:
                    break
                r = held.popleft()
                r.start = t_next
                w.serving.append(r)
        second_conc += sum(len(w.serving) for w in workers if w.stopped is None) + len(held)
        if (i + 1) % per_tick:
            continue
        # one decision a second
        history.append(second_cost)
        concurrency.append(second_conc / per_tick)
        second_cost = second_conc = 0.0
        live = [w for w in workers if w.stopped is None and not w.draining]
        if policy == "fixed":
            want = len(live)
        elif policy == "ours":
            fleet = [
                WorkerView(
                    PERF, "draining" if w.draining else "ready" if w.ready(t_next) else "starting"
                )
                for w in workers
                if w.stopped is None
            ]
            decision = autoscaler.desired(
                history[-autoscaler.LONG_WINDOW_S :],
                fleet,
                settings,
                t_next,
                memory,
                last_activity,
                len(held),
                held_cost=sum(r.cost for r in held),
            )
            want = decision.workers
        else:
            ready = sum(1 for w in live if w.ready(t_next))
            want = kpa.desired(concurrency, ready, len(live), len(held), t_next)
        _act(workers, live, want, t_next, cold_start_s)
        if t_next > 0:
            times.append(t_next)
            counts.append(sum(1 for w in workers if w.stopped is None and not w.draining))
    demand = history[round(warmup_s / TICK_S) :]
    return Result(
        trace.name, policy, requests, workers, times, counts, demand, end, trace.duration_s
    )


def _phase(w: Worker, now: float) -> WorkerPhase:
    return "draining" if w.draining else "ready" if w.ready(now) else "starting"


def _act(workers: list[Worker], live: list[Worker], want: int, now: float, cold: float) -> None:
    """Start or drain workers towards `want`: ready ones with the fewest requests go first."""
    if want > len(live):
        workers.extend(Worker(now, now + cold) for _ in range(want - len(live)))
        return
    order = sorted(live, key=lambda w: (not w.ready(now), len(w.serving), -w.started))
    for w in order[: len(live) - want]:
        w.draining = True
        if not w.serving:
            w.stopped = now


def percentile(xs: list[float], q: float) -> float:
    if not xs:
        return float("nan")
    return xs[min(len(xs) - 1, max(0, math.ceil(q * len(xs)) - 1))]


def _mean(xs: list[float]) -> float:
    return sum(xs) / len(xs) if xs else 0.0


def plot(results: list[Result], trace: Trace, out: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(10, 4.5))
    demand = results[0].demand
    smooth = [_mean(demand[max(0, i - 9) : i + 1]) / PERF for i in range(len(demand))]
    ax.fill_between(
        [i + 1 for i in range(len(demand))],
        smooth,
        step="pre",
        alpha=0.25,
        color="grey",
        label="demand, 10 s mean (cost/s ÷ one worker's perf)",
    )
    styles = {"ours": ("tab:blue", "-"), "fixed": ("tab:green", ":"), "knative": ("tab:red", "--")}
    for res in results:
        color, style = styles[res.policy]
        label = f"{res.policy} ({res.gpu_s:,.0f} GPU-s)"
        ax.step(res.times, res.counts, where="post", color=color, linestyle=style, label=label)
    ax.set_xlabel("simulated seconds")
    ax.set_ylabel("workers (ready + starting)")
    ax.set_title(f"{trace.name}: {trace.about}")
    ax.legend(loc="upper right", fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"autoscale_{trace.name}.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def targets(runs: dict[str, dict[str, Result]]) -> list[tuple[str, str, bool]]:
    """The issue's targets, each as (what, measured, met)."""
    out: list[tuple[str, str, bool]] = []
    if "diurnal" in runs:
        o, f = runs["diurnal"]["ours"], runs["diurnal"]["fixed"]
        saved = 1 - o.gpu_s / f.gpu_s
        po, pf = percentile(o.latencies(), 0.99), percentile(f.latencies(), 0.99)
        out.append(("diurnal: >= 30 % fewer GPU-s than fixed", f"{saved:.1%}", saved >= 0.3))
        out.append(("diurnal: p99 <= fixed's", f"{po:.2f} vs {pf:.2f} s", po <= pf))
    for name, rs in runs.items():
        o, k = rs["ours"], rs["knative"]
        out.append(
            (f"{name}: GPU-s <= knative", f"{o.gpu_s:,.0f} vs {k.gpu_s:,.0f}", o.gpu_s <= k.gpu_s)
        )
    if "step" in runs:
        o, k = runs["step"]["ours"], runs["step"]["knative"]
        out.append(
            (
                "step: held > 1 s < knative",
                f"{o.held_past} vs {k.held_past}",
                o.held_past < k.held_past,
            )
        )
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--traces", nargs="+", default=list(TRACES), choices=list(TRACES))
    ap.add_argument("--cold-start-s", type=float, default=20.0)
    ap.add_argument("--seeds", type=int, nargs="+", default=[1], help="the table is the first")
    ap.add_argument("--tail-s", type=float, default=120.0, help="let requests finish after it")
    ap.add_argument("--warmup-s", type=float, default=120.0, help="opening rate before t = 0")
    ap.add_argument("--plots", type=Path, default=ROOT / "bench" / "plots")
    ap.add_argument("--no-plots", action="store_true")
    args = ap.parse_args()
    print(
        f"cold start {args.cold_start_s:g} s, worker perf {PERF:g} cost/s in {SLOTS} slots, "
        f"mean request {MEAN_COST:g} cost, seeds {args.seeds}\n"
    )
    per_seed: list[list[tuple[str, str, bool]]] = []
    for n, seed in enumerate(args.seeds):
        runs: dict[str, dict[str, Result]] = {}
        for name in args.traces:
            trace = TRACES[name]
            runs[name] = {
                p: simulate(trace, p, seed, args.cold_start_s, args.tail_s, args.warmup_s)
                for p in POLICIES
            }
            if n == 0 and not args.no_plots:
                plot(list(runs[name].values()), trace, args.plots)
        per_seed.append(targets(runs))
        if n:
            continue
        print(f"seed {seed}:\n")
        print("| trace | policy | GPU-s | p50 s | p99 s | held > 1 s | failed | answered |")
        print("|---|---|---:|---:|---:|---:|---:|---:|")
        for name, rs in runs.items():
            for res in rs.values():
                lat = res.latencies()
                print(
                    f"| {name} | {res.policy} | {res.gpu_s:,.0f} | {percentile(lat, 0.5):.2f} "
                    f"| {percentile(lat, 0.99):.2f} | {res.held_past} | {res.failed} "
                    f"| {res.answered} |"
                )
        sys.stdout.flush()
    print("\n| target | " + " | ".join(f"seed {s}" for s in args.seeds) + " |")
    print("|---|" + "---|" * len(args.seeds))
    for i, (what, _, _) in enumerate(per_seed[0]):
        cells = [f"{row[i][1]} {'met' if row[i][2] else '**not met**'}" for row in per_seed]
        print(f"| {what} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
