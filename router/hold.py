"""Held requests: proxied requests (and Bytez runs) waiting for a worker, in arrival order.

When no worker of an endpoint can take a request (none ready: a cold start; or every
one full), the request is held instead of failed, bounded by the endpoint's
`max_held_requests` and `max_queue_time_s`, and retried as soon as the fleet changes
(a worker became ready, load was released, a refresh brought other replicas' news).
Waiters take turns: a change wakes the first; when it is placed it passes the turn to
the next, and when it cannot be placed it keeps its place at the head and the chain
stops until the next change. So requests go out in arrival order, with no herd of
retries, and a newcomer never jumps the queue. A client that hangs up leaves the queue
(cancellation). Hand-written: the turn discipline is the point, and no asyncio
primitive keeps a waiter's place across a failed attempt.
"""

from __future__ import annotations

import asyncio
from collections import deque

from router.metrics import Metrics


class HoldRefused(Exception):
    """The endpoint already holds `max_held_requests`."""


class _Queue:
    __slots__ = ("cost", "turn", "waiters")

    def __init__(self) -> None:
        self.waiters: deque[asyncio.Future[None]] = deque()
        self.turn: asyncio.Future[None] | None = None  # the waiter whose turn it is
        self.cost: dict[asyncio.Future[None], float] = {}  # what each waiter weighs


class Holds:
    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics
        self._queues: dict[str, _Queue] = {}

    def held(self, endpoint: str) -> int:
        q = self._queues.get(endpoint)
        return len(q.waiters) if q is not None else 0

    def held_cost(self, endpoint: str) -> float:
        """The summed cost of the requests held for `endpoint` (the autoscaler's backlog)."""
        q = self._queues.get(endpoint)
        return sum(q.cost.values()) if q is not None else 0.0

    def waiting(self, endpoint: str) -> bool:
        """True if requests are held: a newcomer queues behind them."""
        return self.held(endpoint) > 0

    async def wait_turn(
        self, endpoint: str, deadline: float, limit: int, *, first: bool = False, cost: float = 0.0
    ) -> bool:
        """Wait for this request's turn to try again; False once `deadline` (loop time) passed.

        `first`: it was already waiting and failed on its turn: it goes back to the
        head, not the tail. HoldRefused if `limit` requests are held already.
        """
        q = self._queues.setdefault(endpoint, _Queue())
        if not first and len(q.waiters) >= limit:
            raise HoldRefused(endpoint)
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[None] = loop.create_future()
        if first:
            q.waiters.appendleft(fut)
        else:
            q.waiters.append(fut)
        q.cost[fut] = cost
        self._gauge(endpoint, q)
        try:
            async with asyncio.timeout_at(deadline):
                await fut
            return True  # the caller holds the turn now, until it calls done()
        except TimeoutError:
            self._lost_turn(q, fut)
            return False
        except BaseException:
            self._lost_turn(q, fut)
            raise
        finally:
            if fut in q.waiters:
                q.waiters.remove(fut)
            q.cost.pop(fut, None)
            self._gauge(endpoint, q)
            if not q.waiters and q.turn is None:
                self._queues.pop(endpoint, None)

    def _lost_turn(self, q: _Queue, fut: asyncio.Future[None]) -> None:
        """A waiter left (timed out, hung up) as its turn came: pass the turn on."""
        if q.turn is fut:
            q.turn = None
            self._next(q)

    def done(self, endpoint: str, placed: bool) -> None:
        """The waiter whose turn it was is done: placed (pass the turn on) or not (stop:
        it waits again at the head, and the next change gives it the next turn)."""
        q = self._queues.get(endpoint)
        if q is None:
            return
        q.turn = None
        if placed:
            self._next(q)
        elif not q.waiters:
            self._queues.pop(endpoint, None)

    def kick(self, endpoint: str | None = None) -> None:
        """The fleet changed: give the first waiter (of `endpoint`, or of all) its turn."""
        for name in [endpoint] if endpoint is not None else list(self._queues):
            q = self._queues.get(name)
            if q is not None and q.turn is None:
                self._next(q)

    def _next(self, q: _Queue) -> None:
        while q.waiters:
            fut = q.waiters.popleft()
            if not fut.done():
                q.turn = fut
                fut.set_result(None)
                return

    def _gauge(self, endpoint: str, q: _Queue) -> None:
        self.metrics.held.labels(endpoint).set(len(q.waiters))
