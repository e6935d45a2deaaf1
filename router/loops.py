"""Background loops: `repeat` runs a `run_once` step forever, and stops when cancelled."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from router.state.base import StoreUnavailable

log = logging.getLogger(__name__)


async def repeat(step: Callable[[], Awaitable[object]], interval_s: float, what: str) -> None:
    """Await `step()` every `interval_s`; log its failures; never outlive a cancel().

    A library that turns our cancellation into an error (a timeout racing the cancel,
    say) must not make the loop run on after shutdown: the task's pending cancel request
    is checked after every failure.
    """
    task = asyncio.current_task()
    while True:
        try:
            await step()
        except StoreUnavailable as exc:
            log.debug("%s: store unavailable: %s", what, exc)
        except Exception:
            log.exception("%s failed", what)
        if task is not None and task.cancelling():
            raise asyncio.CancelledError
        await asyncio.sleep(interval_s)
