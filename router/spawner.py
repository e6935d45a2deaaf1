"""The `local` provider: worker processes the router starts on this machine (the demo).

Each `[[endpoints.spawn]]` entry starts `count` reference workers with the synthetic
backend on free ports; a worker that exits is restarted after a short pause, and all
are stopped (SIGTERM, then SIGKILL) when the router shuts down.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import sys
from dataclasses import dataclass

from router.config import EndpointSettings, SpawnSettings

log = logging.getLogger(__name__)

_RESTART_DELAY_S = 1.0
_STOP_TIMEOUT_S = 5.0


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


@dataclass(frozen=True, slots=True)
class SpawnedWorker:
    endpoint: str
    url: str
    port: int
    spec: SpawnSettings

    def argv(self, router_url: str) -> list[str]:
        args = [
            sys.executable,
            "-m",
            "workers",
            "--backend",
            self.spec.backend,
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--public-url",
            self.url,
            "--endpoint",
            self.endpoint,
            "--router-url",
            router_url,
            "--perf",
            repr(self.spec.perf),
            "--ttft-ms",
            repr(self.spec.ttft_ms),
            "--tokens-per-s",
            repr(self.spec.tokens_per_s),
        ]
        if self.spec.max_load is not None:
            args += ["--max-load", repr(self.spec.max_load)]
        return args


def plan(endpoints: list[EndpointSettings]) -> list[SpawnedWorker]:
    """Choose a free port and URL for every worker the config asks to spawn."""
    out = []
    for ep in endpoints:
        for spec in ep.spawn:
            for _ in range(spec.count):
                port = free_port()
                out.append(SpawnedWorker(ep.name, f"http://127.0.0.1:{port}", port, spec))
    return out


class Spawner:
    def __init__(self, workers: list[SpawnedWorker], router_url: str) -> None:
        self.workers = workers
        self.router_url = router_url
        self._tasks: list[asyncio.Task[None]] = []
        self._procs: dict[str, asyncio.subprocess.Process] = {}

    def start(self) -> None:
        for w in self.workers:
            self._tasks.append(asyncio.create_task(self._supervise(w), name=f"spawn:{w.url}"))

    async def _supervise(self, w: SpawnedWorker) -> None:
        while True:
            proc = await asyncio.create_subprocess_exec(
                *w.argv(self.router_url), stdin=asyncio.subprocess.DEVNULL
            )
            self._procs[w.url] = proc
            log.info(
                "started %s worker for %s at %s (pid %d)",
                w.spec.backend,
                w.endpoint,
                w.url,
                proc.pid,
            )
            code = await proc.wait()
            log.warning(
                "worker %s exited with %s; restarting in %.0fs", w.url, code, _RESTART_DELAY_S
            )
            await asyncio.sleep(_RESTART_DELAY_S)

    async def stop(self) -> None:
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await t
        for proc in self._procs.values():
            if proc.returncode is None:
                proc.terminate()
        for proc in self._procs.values():
            try:
                await asyncio.wait_for(proc.wait(), _STOP_TIMEOUT_S)
            except TimeoutError:
                proc.kill()
                await proc.wait()
