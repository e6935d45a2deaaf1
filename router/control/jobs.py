"""Bytez model jobs: make a model available by running it once and measuring it.

`/model/job` queues a job document; the control-plane leader runs queued jobs one at a
time: it starts one worker of the model through the provider, waits for it to become
ready (bounded by the runtime's `ready_timeout_s`), sends a fixed workload with tickets
it signs itself, and records the worker's measured `perf` (cost units per second) and
resident memory, then stops it. The catalog then shows the model `benchmarked` with
its measured `requiredRAM`, and loads of it use the measured `perf`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

import aiohttp
import orjson

from router.context import RouterContext
from router.control.providers.base import ProvidedWorker, Provider, ProviderError
from router.control.spec import EndpointRecord
from router.proxy.message import ticket_header
from router.state.base import reqnum_floor

log = logging.getLogger(__name__)

KIND = "job"
_PROMPT = "Explain in one paragraph how a load balancer spreads work over servers."
_TOKENS = 32
_REQUESTS = 8
_CONCURRENCY = 4


class Jobs:
    def __init__(self, ctx: RouterContext, provider: Provider) -> None:
        self.ctx = ctx
        self.provider = provider
        self._task: asyncio.Task[None] | None = None

    async def run_once(self, leader: bool) -> None:
        """Start the oldest queued job if this replica leads and runs none."""
        if not leader or (self._task is not None and not self._task.done()):
            return
        docs = await self.ctx.store.list_docs(KIND)
        queued = sorted(
            ((orjson.loads(raw), v) for v, raw in docs.values()),
            key=lambda dv: dv[0].get("modified", 0),
        )
        for doc, version in queued:
            if doc.get("status") in ("queued", "running"):
                self._task = asyncio.create_task(self._run(doc, version), name="model-job")
                return

    async def close(self) -> None:
        if self._task is not None and not self._task.done():
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass

    async def _put(self, doc: dict[str, Any], version: int) -> int | None:
        doc["modified"] = time.time()
        return await self.ctx.store.put_doc(KIND, doc["model"], orjson.dumps(doc), version)

    async def _run(self, doc: dict[str, Any], version: int) -> None:
        ctx = self.ctx
        model = doc["model"]
        entry = ctx.settings.control.catalog_by_name.get(model)
        if entry is None:
            doc.update(status="failed", error="no longer in the catalog", endTime=time.time())
            await self._put(doc, version)
            return
        doc.update(status="running", startTime=time.time())
        v = await self._put(doc, version)
        if v is None:
            return  # another replica took it
        name = f"job-{abs(hash((model, doc['startTime']))) % 10**8:08d}"
        record = EndpointRecord(name=name, kind="model", model_name=model, runtime=entry.runtime)
        log.info("model job %s: starting one worker to measure it", model)
        worker: ProvidedWorker | None = None
        try:
            (worker,) = await self.provider.start(record, 1)
            worker = await self._until_running(worker, entry.runtime.ready_timeout_s)
            perf = await self._measure(worker)
            rss = (await self._current(worker)).rss_bytes or 0
            doc.update(status="done", perf=perf, rss_gb=round(rss / 2**30, 3), endTime=time.time())
            log.info("model job %s: %.1f cost units/s, %.2f GB", model, perf, rss / 2**30)
        except Exception as exc:  # a job that fails says why; the loop goes on
            log.warning("model job %s failed: %s", model, exc)
            doc.update(status="failed", error=str(exc)[:2000], endTime=time.time())
        finally:
            if worker is not None:
                with contextlib.suppress(ProviderError):
                    await self.provider.stop(worker.id)
                    await self.provider.forget(worker.id)
        await self._put(doc, v)

    async def _current(self, worker: ProvidedWorker) -> ProvidedWorker:
        for w in await self.provider.observe():
            if w.id == worker.id:
                return w
        raise RuntimeError("the worker is gone")

    async def _until_running(self, worker: ProvidedWorker, timeout_s: float) -> ProvidedWorker:
        deadline = time.monotonic() + timeout_s + 5
        while time.monotonic() < deadline:
            w = await self._current(worker)
            if w.state == "running":
                return w
            if w.state in ("exited", "failed"):
                raise RuntimeError(f"the worker did not start: {w.detail}")
            await asyncio.sleep(0.25)  # the provider's own readiness poll is slower
        raise RuntimeError(f"the worker was not ready within {timeout_s:g} s")

    async def _measure(self, worker: ProvidedWorker) -> float:
        """Cost units per second the worker served under a fixed, concurrent workload."""
        ring = self.ctx.keyring
        first = reqnum_floor(time.time())
        cost = float(_TOKENS + len(_PROMPT) / 4)
        body = orjson.dumps({"prompt": _PROMPT, "max_tokens": _TOKENS, "stream": False})
        sem = asyncio.Semaphore(_CONCURRENCY)

        async def one(session: aiohttp.ClientSession, i: int) -> None:
            ticket: dict[str, Any] = {
                "cost": cost,
                "endpoint": worker.endpoint,
                "expires_at": round(time.time() + 600, 3),
                "key_id": ring.kid,
                "reqnum": first + i,
                "request_idx": i + 1,
                "url": worker.url,
            }
            ring.sign_ticket(ticket)
            async with (
                sem,
                session.post(
                    f"{worker.url}/v1/completions",
                    data=body,
                    headers={
                        "Content-Type": "application/json",
                        "X-Route-Ticket": ticket_header(ticket),
                    },
                ) as resp,
            ):
                if resp.status != 200:
                    raise RuntimeError(f"the worker answered {resp.status}: {await resp.text()}")
                await resp.read()

        timeout = aiohttp.ClientTimeout(total=600)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            await one(session, 0)  # warm up
            started = time.perf_counter()
            await asyncio.gather(*(one(session, i) for i in range(1, _REQUESTS + 1)))
            elapsed = time.perf_counter() - started
        return round(cost * _REQUESTS / max(elapsed, 1e-6), 1)
