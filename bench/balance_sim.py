"""Dispatch-policy simulator: the router's own policies on a heterogeneous fleet.

    python bench/balance_sim.py [--seeds 5] [--requests 20000] [--rho 0.5 0.8 0.9 0.95]
                                [--poll-interval 0.25 1 5] [--markdown]

A discrete-event simulation that calls `router.balancer.shortlist()` and `finalize()`
(looked up at call time, never copied) for every arrival, and compares each policy with
an ideal central queue.

Model (units: seconds and units of work):
  * Fleet: 8 workers with speeds 1,1,2,2,3,3,4,4 x base; a 1x worker does 2 units/s, so
    the mean request (1 unit) takes 0.5 s on a 1x worker and 0.125 s on a 4x one. Total
    capacity 40 units/s.
  * Each worker is a FIFO single server: it runs one request at a time, in the order they
    were dispatched to it (the standard model in dispatch studies; processor sharing would
    change the latency of a request after it is placed, FIFO does not).
  * Requests: Poisson arrivals at utilization rho of total capacity; cost lognormal with
    sigma 1, scaled to mean 1 unit (heavy tail: p99 ~ 6 units). The cost is known at
    dispatch, as the router's cost estimate would be.
  * Dispatch: at each arrival the dispatcher builds one `Candidate` per worker with its
    load (remaining work, queued + in service, in units) and in-flight request count, calls
    `shortlist(policy, candidates, cost, rng=..., tick=i)` then `finalize(ranked, cost,
    mode)`, and enqueues at the chosen worker. Default loads are exact (proxy mode).
  * `--poll-interval S` adds ticket-mode rows for least_work: the dispatcher sees each
    worker's load as of the last poll (every S seconds) plus the cost of the tickets it
    issued to it since, never the completions since.
  * Ideal: one central FIFO queue; the head request starts on the first worker to free
    up (the fastest idle one if several are idle). Reported as the baseline. It is
    size-blind: on this heterogeneous fleet least_work, which knows each cost and will
    wait for a fast worker rather than start a big request on a slow one, beats it. On a
    homogeneous fleet least_work on exact loads makes the same choices, so they tie.
Latency is sojourn time (arrival to completion). Each seed draws one workload (unit-rate
gaps and costs) shared by every policy and rho (common random numbers); p99 and mean
are taken per seed, then averaged over seeds. Same seed, same numbers.
"""

from __future__ import annotations

import argparse
import math
import random
import sys
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from router import balancer  # noqa: E402
from router.balancer import Candidate  # noqa: E402

BASE_SPEED = 2.0  # units of work per second on a 1x worker: mean service 0.5 s
SPEEDS = (1, 1, 2, 2, 3, 3, 4, 4)
SIGMA = 1.0
POLICIES = ("round_robin", "random", "least_requests", "least_work", "p2c")
RHOS = (0.5, 0.8, 0.9, 0.95)
POLL_POLICY = "least_work"  # the policy the --poll-interval rows run in ticket mode


@dataclass(frozen=True, slots=True)
class Workload:
    """One seed's requests: gaps of a unit-rate Poisson process and costs (mean 1)."""

    gaps: list[float]
    costs: list[float]


@dataclass(frozen=True, slots=True)
class Record:
    """One completed request."""

    arrival: float
    worker: int
    start: float
    finish: float
    service: float

    @property
    def latency(self) -> float:
        # wait + service rather than finish - arrival: never below service after rounding
        return (self.start - self.arrival) + self.service


def workload(seed: int, n: int) -> Workload:
    """Draw `n` requests for `seed`; scale gaps by 1/rate to get any utilization."""
    rng = random.Random(f"workload-{seed}")
    mu = -SIGMA * SIGMA / 2  # lognormal mean exp(mu + sigma^2/2) = 1
    gaps = [rng.expovariate(1.0) for _ in range(n)]
    costs = [rng.lognormvariate(mu, SIGMA) for _ in range(n)]
    return Workload(gaps, costs)


def arrivals(wl: Workload, rho: float, perfs: list[float]) -> list[float]:
    """Arrival times at utilization `rho` of the fleet's capacity (mean cost is 1)."""
    rate = rho * sum(perfs)
    t, out = 0.0, []
    for g in wl.gaps:
        t += g / rate
        out.append(t)
    return out


def fleet(speeds: tuple[float, ...] = SPEEDS) -> list[float]:
    """Worker speeds in units/s."""
    return [s * BASE_SPEED for s in speeds]


def simulate(
    policy: str,
    wl: Workload,
    rho: float,
    perfs: list[float],
    *,
    seed: int,
    poll_interval_s: float | None = None,
) -> list[Record]:
    """Dispatch every request with the router's policy; return them in arrival order.

    FIFO servers make a request's finish time known when it is enqueued
    (start = max(arrival, worker free), Lindley's recursion), so events are the arrivals
    and the completions they observe; `load` is perf x time until the worker is free.
    """
    rng = random.Random(f"policy-{policy}-{seed}")
    arr = arrivals(wl, rho, perfs)
    nw = len(perfs)
    cands = [Candidate(id=str(i), perf=p) for i, p in enumerate(perfs)]
    index = {c.id: i for i, c in enumerate(cands)}
    free_at = [0.0] * nw  # when each worker finishes everything dispatched to it
    inflight: list[deque[float]] = [deque() for _ in range(nw)]  # finish times, FIFO
    # ticket mode: state as of the last poll, plus tickets issued since
    seen_load = [0.0] * nw
    seen_reqs = [0] * nw
    next_poll = 0.0
    out: list[Record] = []
    for i, (t, cost) in enumerate(zip(arr, wl.costs, strict=True)):
        if poll_interval_s is not None and t >= next_poll:
            poll_t = math.floor(t / poll_interval_s) * poll_interval_s
            for w in range(nw):
                q = inflight[w]
                while q and q[0] <= poll_t:
                    q.popleft()
                seen_load[w] = max(0.0, free_at[w] - poll_t) * perfs[w]
                seen_reqs[w] = len(q)
            next_poll = poll_t + poll_interval_s
        for w, c in enumerate(cands):
            q = inflight[w]
            while q and q[0] <= t:
                q.popleft()
            if poll_interval_s is None:
                c.load = max(0.0, free_at[w] - t) * perfs[w]
                c.requests = len(q)
            else:
                c.load = seen_load[w]
                c.requests = seen_reqs[w]
        ranked, mode = balancer.shortlist(policy, cands, cost, rng=rng, tick=i)  # type: ignore[arg-type]
        pick = balancer.finalize(ranked, cost, mode)
        if pick is None:
            raise RuntimeError(f"{policy}: no worker took request {i}")
        w = index[ranked[pick].id]
        service = cost / perfs[w]
        start = max(t, free_at[w])
        finish = start + service
        free_at[w] = finish
        inflight[w].append(finish)
        if poll_interval_s is not None:
            seen_load[w] += cost
            seen_reqs[w] += 1
        out.append(Record(t, w, start, finish, service))
    return out


def simulate_ideal(wl: Workload, rho: float, perfs: list[float]) -> list[Record]:
    """One central FIFO queue: the head starts on the first worker free, fastest if tied."""
    arr = arrivals(wl, rho, perfs)
    free_at = [0.0] * len(perfs)
    by_speed = sorted(range(len(perfs)), key=lambda w: -perfs[w])
    out: list[Record] = []
    for t, cost in zip(arr, wl.costs, strict=True):
        # requests start in arrival order, so the head is always the newest arrival
        soonest = min(free_at)
        start = max(t, soonest)
        w = next(w for w in by_speed if free_at[w] <= start)
        service = cost / perfs[w]
        free_at[w] = start + service
        out.append(Record(t, w, start, start + service, service))
    return out


def p99(xs: list[float]) -> float:
    """Nearest-rank 99th percentile."""
    s = sorted(xs)
    return s[max(0, math.ceil(0.99 * len(s)) - 1)]


@dataclass(frozen=True, slots=True)
class Row:
    rho: float
    name: str
    mean_s: float
    p99_s: float


def run_grid(
    *,
    seeds: int,
    requests: int,
    rhos: tuple[float, ...] = RHOS,
    policies: tuple[str, ...] = POLICIES,
    poll_intervals: tuple[float, ...] = (),
    speeds: tuple[float, ...] = SPEEDS,
) -> list[Row]:
    """Mean and p99 latency per (rho, policy), averaged over seeds; 'ideal' included."""
    perfs = fleet(speeds)
    loads = [wl for wl in (workload(s, requests) for s in range(seeds))]
    rows = []
    for rho in rhos:
        runs: list[tuple[str, float | None, str]] = [("ideal", None, "ideal")]
        runs += [(p, None, p) for p in policies]
        runs += [(POLL_POLICY, s, f"{POLL_POLICY} (poll {s:g} s)") for s in poll_intervals]
        for policy, poll, name in runs:
            means, tails = [], []
            for seed, wl in enumerate(loads):
                if policy == "ideal":
                    recs = simulate_ideal(wl, rho, perfs)
                else:
                    recs = simulate(policy, wl, rho, perfs, seed=seed, poll_interval_s=poll)
                lat = [r.latency for r in recs]
                means.append(sum(lat) / len(lat))
                tails.append(p99(lat))
            rows.append(Row(rho, name, sum(means) / seeds, sum(tails) / seeds))
    return rows


def render(rows: list[Row], *, markdown: bool, perfs: list[float] | None = None) -> str:
    """The results table and, per rho, least_work's p99 against the issue's targets."""
    by = {(r.rho, r.name): r for r in rows}
    head = ["rho", "policy", "mean s", "p99 s", "p99 ÷ ideal"]
    body = []
    for r in rows:
        ideal = by[(r.rho, "ideal")]
        body.append(
            [
                f"{r.rho:g}",
                r.name,
                f"{r.mean_s:.3f}",
                f"{r.p99_s:.3f}",
                f"{r.p99_s / ideal.p99_s:.2f}",
            ]
        )
    parts = [_table(head, body, markdown)]
    rhos = sorted({r.rho for r in rows})
    if all((rho, n) in by for rho in rhos for n in ("least_work", "round_robin")):
        head2 = [
            "rho",
            "least_work p99 ÷ ideal",
            "least_work p99 ÷ round_robin",
            "targets (≤ 1.5, ≤ 0.5)",
        ]
        body2 = []
        for rho in rhos:
            lw, ideal, rr = by[(rho, "least_work")], by[(rho, "ideal")], by[(rho, "round_robin")]
            a, b = lw.p99_s / ideal.p99_s, lw.p99_s / rr.p99_s
            body2.append(
                [f"{rho:g}", f"{a:.2f}", f"{b:.2g}", "met" if a <= 1.5 and b <= 0.5 else "missed"]
            )
        parts.append(_table(head2, body2, markdown, left=1))
    blind = [n for n in ("round_robin", "random") if any(r.name == n for r in rows)]
    if blind and perfs:
        # an even split gives the slowest worker 1/n of arrivals: over capacity above this
        limit = min(perfs) * len(perfs) / sum(perfs)
        parts.append(
            f"Note: {' and '.join(blind)} ignore speed; the slowest workers are "
            f"overloaded for rho > {limit:g}, so those rows grow with --requests "
            "(no steady state)."
        )
    return "\n\n".join(parts)


def _table(head: list[str], body: list[list[str]], markdown: bool, left: int = 2) -> str:
    if markdown:
        lines = [
            "| " + " | ".join(head) + " |",
            "|" + "|".join("---" if i < left else "---:" for i in range(len(head))) + "|",
        ]
        lines += ["| " + " | ".join(row) + " |" for row in body]
        return "\n".join(lines)
    widths = [max(len(x) for x in col) for col in zip(head, *body, strict=True)]
    fmt = "  ".join(f"{{:{'<' if i < left else '>'}{w}}}" for i, w in enumerate(widths))
    return "\n".join(fmt.format(*row) for row in [head, *body])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--seeds", type=int, default=5, help="workloads per cell (default 5)")
    ap.add_argument("--requests", type=int, default=20_000, help="requests per run (default 20000)")
    ap.add_argument(
        "--rho",
        type=float,
        nargs="+",
        default=list(RHOS),
        help="utilizations of fleet capacity (default 0.5 0.8 0.9 0.95)",
    )
    ap.add_argument(
        "--policies",
        nargs="+",
        default=list(POLICIES),
        choices=POLICIES,
        help="router policies to run (default: all)",
    )
    ap.add_argument(
        "--poll-interval",
        type=float,
        nargs="*",
        default=[],
        metavar="S",
        help="also run least_work in ticket mode with loads polled every S "
        "seconds (e.g. 0.25 1 5; mean service on a 1x worker is 0.5 s)",
    )
    ap.add_argument("--markdown", action="store_true", help="print RESULTS.md tables")
    args = ap.parse_args(argv)
    if args.seeds < 1 or args.requests < 1 or any(not 0 < r < 1 for r in args.rho):
        ap.error("--seeds and --requests must be >= 1 and every --rho in (0, 1)")
    if any(s <= 0 for s in args.poll_interval):
        ap.error("--poll-interval values must be > 0")
    t0 = time.perf_counter()
    rows = run_grid(
        seeds=args.seeds,
        requests=args.requests,
        rhos=tuple(args.rho),
        policies=tuple(args.policies),
        poll_intervals=tuple(args.poll_interval),
    )
    print(render(rows, markdown=args.markdown, perfs=fleet()))
    print(
        f"\n{args.seeds} seeds x {args.requests} requests per cell, fleet speeds "
        f"{'/'.join(str(s) for s in SPEEDS)} x {BASE_SPEED:g} units/s, FIFO workers; "
        f"{time.perf_counter() - t0:.1f} s",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
