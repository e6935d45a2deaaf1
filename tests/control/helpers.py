"""Waiting on real processes: is a pid still running, and observe() until a state."""

from __future__ import annotations

import asyncio
import time

from router.control.providers.base import ProvidedWorker, Provider


def alive(pid: int) -> bool:
    """True while `pid` runs (a zombie, dead but not yet reaped, counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except FileNotFoundError:
        return False
    return stat.rsplit(b")", 1)[1].split()[0] != b"Z"


async def until_gone(pids: list[int], timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while any(alive(p) for p in pids):
        assert time.monotonic() < deadline, f"still running: {[p for p in pids if alive(p)]}"
        await asyncio.sleep(0.05)


async def until_states(
    provider: Provider, want: dict[str, str], timeout_s: float = 30.0
) -> dict[str, ProvidedWorker]:
    """observe() until every worker in `want` is in its state; return what it saw.

    A worker that ends up exited or failed when that is not what was wanted fails at
    once, with the provider's detail (exit code, last log lines).
    """
    deadline = time.monotonic() + timeout_s
    while True:
        seen = {w.id: w for w in await provider.observe()}
        if all(i in seen and seen[i].state == s for i, s in want.items()):
            return seen
        for i, s in want.items():
            w = seen.get(i)
            if w is not None and w.state in ("exited", "failed") and w.state != s:
                raise AssertionError(f"worker {i} is {w.state}, not {s}: {w.detail}")
        assert time.monotonic() < deadline, f"wanted {want}, saw {seen}"
        await asyncio.sleep(0.05)
