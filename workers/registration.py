"""Self-registration with the router: register at start, again on an interval, leave at exit.

Registration is idempotent on the router's side, so repeating it lets a router whose
store lost its data (a Redis restart, a flush) learn the worker again within one interval.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any
from urllib.parse import quote

import aiohttp
import orjson

from workers.tasks import cancel_and_wait, raise_if_cancelled

log = logging.getLogger(__name__)

_TIMEOUT = aiohttp.ClientTimeout(total=5)
_DEREGISTER_TIMEOUT = aiohttp.ClientTimeout(total=2)
_BACKOFF_FIRST_S = 0.2
_BACKOFF_MAX_S = 5.0


class Registrar:
    """Registers one worker (`endpoint`, `public_url`) with the router's workers API."""

    def __init__(
        self,
        router_url: str,
        token: str,
        endpoint: str,
        public_url: str,
        perf: Callable[[], float],
        max_load: float | None,
        interval_s: float = 15.0,
        paused: Callable[[], bool] = lambda: False,
    ) -> None:
        self.url = f"{router_url.rstrip('/')}/api/v1/workers"
        self._headers = {"Authorization": f"Bearer {token}"}
        self.endpoint = endpoint
        self.public_url = public_url
        self.perf = perf
        self.max_load = max_load
        self.interval_s = interval_s
        self.paused = paused  # True while draining: re-registering would undo the drain
        self.worker_id: str | None = None
        self._session: aiohttp.ClientSession | None = None
        self._task: asyncio.Task[None] | None = None
        self._last_error: str | None = None

    def __repr__(self) -> str:  # the token stays out of logs
        return f"Registrar({self.url!r}, endpoint={self.endpoint!r}, id={self.worker_id!r})"

    def body(self) -> dict[str, Any]:
        return {
            "endpoint": self.endpoint,
            "url": self.public_url,
            "perf": self.perf(),
            "max_load": self.max_load,
        }

    def start(self, session: aiohttp.ClientSession) -> None:
        self._session = session
        self._task = asyncio.get_running_loop().create_task(self.run(), name="worker-register")

    async def close(self) -> None:
        """Stop re-registering and deregister (best effort)."""
        await cancel_and_wait(self._task)
        await self.deregister()
        self._session = None

    async def run_once(self) -> bool:
        """POST the registration once; True on a 2xx."""
        if self._session is None:
            return False
        try:
            async with self._session.post(
                self.url,
                data=orjson.dumps(self.body()),
                headers={**self._headers, "Content-Type": "application/json"},
                timeout=_TIMEOUT,
            ) as resp:
                raw = await resp.read()
                status = resp.status
        except (aiohttp.ClientError, TimeoutError) as exc:
            return self._failed(str(exc) or type(exc).__name__)
        doc = _json_object(raw)
        if not 200 <= status < 300:
            err = doc.get("error")
            detail = err.get("message") if isinstance(err, dict) else None
            return self._failed(f"HTTP {status}" + (f": {detail}" if detail else ""))
        wid = doc.get("id")
        if isinstance(wid, str) and wid:
            if wid != self.worker_id:
                log.info("registered with %s as worker %s", self.url, wid)
            self.worker_id = wid
        elif self.worker_id is None:
            log.warning("registration answered %d without an id; cannot deregister later", status)
        self._last_error = None
        return True

    def _failed(self, why: str) -> bool:
        if why != self._last_error:  # once per distinct problem, not once per retry
            log.warning("registration with %s failed: %s (retrying)", self.url, why)
            self._last_error = why
        return False

    async def run(self) -> None:
        """Register until it succeeds (backing off), then again every `interval_s`."""
        delay = _BACKOFF_FIRST_S
        while True:
            if self.paused():
                await asyncio.sleep(self.interval_s)
                continue
            if await self.run_once():
                delay = _BACKOFF_FIRST_S
                await asyncio.sleep(self.interval_s)
            else:
                raise_if_cancelled()
                await asyncio.sleep(delay)
                delay = min(delay * 2, _BACKOFF_MAX_S)

    async def deregister(self) -> bool:
        """DELETE this worker from the router; True if the router confirmed."""
        if self._session is None or self.worker_id is None:
            return False
        try:
            async with self._session.delete(
                f"{self.url}/{quote(self.worker_id, safe='')}",
                headers=self._headers,
                timeout=_DEREGISTER_TIMEOUT,
            ) as resp:
                await resp.read()
                ok = 200 <= resp.status < 300 or resp.status == 404
        except (aiohttp.ClientError, TimeoutError) as exc:
            log.warning("deregistration from %s failed: %s", self.url, exc)
            return False
        if ok:
            log.info("deregistered worker %s", self.worker_id)
        else:
            log.warning("deregistration of %s answered %d", self.worker_id, resp.status)
        return ok


def _json_object(raw: bytes) -> dict[str, Any]:
    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return {}
    return doc if isinstance(doc, dict) else {}
