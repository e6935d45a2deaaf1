"""Owned background tasks: stop them at shutdown without hiding their failures."""

from __future__ import annotations

import asyncio
import logging

log = logging.getLogger(__name__)


def raise_if_cancelled() -> None:
    """Re-raise a cancel() that a client timeout racing it turned into a handled error.

    Retry loops call this after each failed attempt, so shutdown never waits forever on a
    loop that caught its own cancellation as a TimeoutError.
    """
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


async def cancel_and_wait(*tasks: asyncio.Task[object] | None) -> None:
    """Cancel `tasks` and wait for them; log any that had failed.

    Waits with asyncio.wait, which never raises the tasks' own outcome, so a
    cancellation of the caller still propagates (nothing here swallows it).
    """
    live = [t for t in tasks if t is not None]
    for t in live:
        t.cancel()
    if not live:
        return
    await asyncio.wait(live)
    for t in live:
        if not t.cancelled() and t.exception() is not None:
            log.error("task %s had failed", t.get_name(), exc_info=t.exception())
