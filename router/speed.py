"""Measured worker speed (`perf_mode = "measured"`): an EWMA of cost served per busy second.

A worker's perf is what least_work divides by; measured, it follows what the worker
does: a worker that slows down gets less work without anyone editing its `perf`.
Samples are cost per *busy* second (time with at least one request in flight), over
windows of at least `window_s`, so an idle worker keeps its figure and a worker with
many streams at once is credited with all of them. Two sources:

* proxy mode: the router sees each request start and end (`start`, `finish`);
* ticket mode: the worker's `/readyz` reports `completed_cost` and `busy_s`, running
  totals; `report` turns their growth into samples.

Pure: times come in as arguments, nothing here reads a clock or the store; router/fleet.py
writes the figures it returns.
"""

from __future__ import annotations

from dataclasses import dataclass

WINDOW_S = 1.0  # busy seconds per sample
ALPHA = 0.3  # weight of a new sample: about the last 3 samples count


@dataclass(slots=True)
class _Meter:
    inflight: int = 0
    busy_since: float = 0.0
    busy_s: float = 0.0  # busy time in the open window
    cost: float = 0.0  # cost finished in the open window
    perf: float | None = None
    totals: tuple[float, float] | None = None  # the last report's (completed_cost, busy_s)


class Speeds:
    def __init__(self, window_s: float = WINDOW_S, alpha: float = ALPHA) -> None:
        self.window_s = window_s
        self.alpha = alpha
        self._meters: dict[str, _Meter] = {}

    def perf(self, wid: str) -> float | None:
        m = self._meters.get(wid)
        return None if m is None else m.perf

    def start(self, wid: str, now: float) -> None:
        """A request to `wid` was sent at `now`."""
        m = self._meters.setdefault(wid, _Meter())
        if m.inflight:
            m.busy_s += max(0.0, now - m.busy_since)
        m.busy_since = now
        m.inflight += 1

    def finish(self, wid: str, cost: float, now: float) -> float | None:
        """A request of `cost` to `wid` ended at `now`; the new perf when a window closed."""
        m = self._meters.get(wid)
        if m is None or m.inflight <= 0:
            return None
        m.busy_s += max(0.0, now - m.busy_since)
        m.busy_since = now
        m.inflight -= 1
        m.cost += cost
        return self._close(m)

    def report(self, wid: str, completed_cost: float, busy_s: float) -> float | None:
        """A worker's running totals (ticket mode); the new perf when a window closed."""
        m = self._meters.setdefault(wid, _Meter())
        prev, m.totals = m.totals, (completed_cost, busy_s)
        if prev is None or completed_cost < prev[0] or busy_s < prev[1]:
            return None  # the first report, or the worker restarted: a new baseline
        m.cost += completed_cost - prev[0]
        m.busy_s += busy_s - prev[1]
        return self._close(m)

    def _close(self, m: _Meter) -> float | None:
        if m.busy_s < self.window_s or m.cost <= 0:
            return None
        sample = m.cost / m.busy_s
        m.perf = sample if m.perf is None else self.alpha * sample + (1 - self.alpha) * m.perf
        m.busy_s = m.cost = 0.0
        return m.perf

    def forget(self, wid: str) -> None:
        self._meters.pop(wid, None)
