"""A timer moved on lazily: for deadlines that change on every request.

Making and cancelling an event-loop timer per request (twice per request on a client
connection, once per try on a worker connection) cost ~2.5% of a proxied request
(bench/RESULTS.md). A `LazyTimer` keeps at most one timer set: moving the deadline later
only records it, and when the timer fires it sets itself again for the deadline as it is
then, or calls `fire` if that has passed.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable


class LazyTimer:
    """Calls `fire()` once loop time passes `due()`; `due()` None: nothing is due."""

    __slots__ = ("_at", "_due", "_fire", "_handle", "_loop")

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        due: Callable[[], float | None],
        fire: Callable[[], None],
    ) -> None:
        self._loop, self._due, self._fire = loop, due, fire
        self._handle: asyncio.TimerHandle | None = None
        self._at = 0.0

    def moved(self) -> None:
        """`due()` changed: set the timer again only if it would now fire too late."""
        when = self._due()
        if when is not None and (self._handle is None or self._at > when):
            if self._handle is not None:
                self._handle.cancel()
            self._handle, self._at = self._loop.call_at(when, self._tick), when

    def cancel(self) -> None:
        """Drop the timer (its owner is done): nothing fires, whatever `due()` says."""
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def _tick(self) -> None:
        self._handle = None
        when = self._due()
        if when is None:
            return
        if self._loop.time() < when:  # moved on since: wait on
            self._handle, self._at = self._loop.call_at(when, self._tick), when
            return
        self._fire()
