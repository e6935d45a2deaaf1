"""One worker's ticket ledger: the load of its outstanding tickets (docs/architecture.md).

A worker's load is its last reported in-flight cost plus the cost of the tickets issued
above the highest reqnum it has reported seeing, minus those that expired unused. These
functions are those rules over a record and its outstanding tickets (oldest first),
applied in place: no I/O, no clock. The memory store runs them; the Redis scripts run
their Lua twins of the same names (redis_scripts.py); one case table
(tests/router/rule_cases.py) checks both.
"""

from __future__ import annotations

from collections import deque

from router.state.base import Released, WorkerRecord

Ticket = tuple[int, int, float]  # (reqnum, mcost: base.quantize of its cost, expires_at)
Tickets = deque[Ticket]
# Expired tickets one issue step sweeps per worker at most: bounds a Redis script's run
# time (the rest go on the next sweep). Both stores sweep alike.
SWEEP_MAX = 64


def add_ticket(
    w: WorkerRecord, tickets: Tickets, reqnum: int, mcost: int, expires_at: float
) -> None:
    """Count a new ticket (its reqnum above every outstanding one) in the pending load."""
    tickets.append((reqnum, mcost, expires_at))
    w.pending_mcost += mcost
    w.pending_requests += 1


def expire_tickets(w: WorkerRecord, tickets: Tickets, now: float) -> None:
    """Forget the oldest tickets that expired before `now` (tickets expire in reqnum
    order: every ticket of an endpoint has the same lifetime), up to SWEEP_MAX."""
    n = 0
    while n < SWEEP_MAX and n < len(tickets) and tickets[n][2] < now:
        n += 1
    _drop_oldest(w, tickets, n)


def fold_report(w: WorkerRecord, tickets: Tickets, report: tuple[float, int, int]) -> None:
    """Take a worker's report of (in-flight cost, in-flight requests, max reqnum seen).

    The reported load replaces the last; max_reqnum_seen never goes down (reports can
    arrive out of order), and the tickets at or below it, now counted in the report,
    leave the pending load.
    """
    w.reported_cost, w.reported_requests, seen = report
    w.max_reqnum_seen = max(w.max_reqnum_seen, seen)
    n = 0
    while n < len(tickets) and tickets[n][0] <= w.max_reqnum_seen:
        n += 1
    _drop_oldest(w, tickets, n)


def release_ticket(w: WorkerRecord, tickets: Tickets, reqnum: int, cost: float) -> Released:
    """Take a finished request's cost off the load (see Store.release).

    An outstanding ticket is forgotten with the cost it was issued with, not `cost`; one
    the worker reported seeing lowers the reported load by `cost` (never below zero) until
    the next report says exactly.
    """
    for i, (r, c, _) in enumerate(tickets):
        if r == reqnum:
            del tickets[i]
            _settle(w, tickets, -c, -1)
            return "pending"
    if reqnum <= w.max_reqnum_seen:
        w.reported_cost = max(0.0, w.reported_cost - cost)
        w.reported_requests = max(0, w.reported_requests - 1)
        return "reported"
    return None


def _drop_oldest(w: WorkerRecord, tickets: Tickets, n: int) -> None:
    if n:
        mcost = 0
        for _ in range(n):
            mcost += tickets.popleft()[1]
        _settle(w, tickets, -mcost, -n)


def _settle(w: WorkerRecord, tickets: Tickets, mcost: int, requests: int) -> None:
    """Change the pending sums; zero once no ticket is left (a store that lost tickets
    to a crash or a TTL heals when the last one goes)."""
    if tickets:
        w.pending_mcost += mcost
        w.pending_requests += requests
    else:
        w.pending_mcost, w.pending_requests = 0, 0
