"""The `local` provider: real worker processes on this machine (the demo, tests, one box).

A worker is the reference worker (`python -m workers`) on a free port and, when the
endpoint's runtime names a model server command, that server on a port of its own with
the worker in front of it. Every process is a `Child`: its own process group, ended when
the router dies, its output in a log file under `log_dir`. `observe()` polls each
starting worker's /readyz (at most once a second) until it answers 200; a process that
dies makes its worker `exited`, one not ready within `ready_timeout_s` is `failed`, and
both are stopped. Nothing is ever restarted here: the lifecycle loop decides that.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import signal
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlsplit

import aiohttp

from router.control.providers.base import (
    ProvidedWorker,
    Provider,
    ProviderError,
    WorkerState,
)
from router.control.providers.child import Child, free_ports, spawn
from router.control.spec import EndpointRecord, RuntimeSpec

log = logging.getLogger(__name__)

READY_POLL_INTERVAL_S = 1.0  # /readyz of a starting worker, at most this often
READY_POLL_TIMEOUT_S = 1.0
LOG_LINES = 20  # of a process's log, in the detail of an exited or failed worker


@dataclass(slots=True)
class _Worker:
    id: str
    endpoint: str
    url: str
    ready_timeout_s: float
    children: list[Child]  # in stop order: the worker first, then its model server
    ports: tuple[int, ...]  # the ones its processes listen on
    started_at: float  # wall clock, as reported
    started_mono: float
    state: WorkerState = "starting"
    detail: str = ""
    next_poll: float = 0.0
    ending: asyncio.Task[None] | None = None  # stopping its processes, once begun

    def view(self) -> ProvidedWorker:
        rss = None
        if self.state == "running":
            sizes = [s for s in (c.rss_bytes() for c in self.children) if s is not None]
            rss = sum(sizes) if sizes else None
        return ProvidedWorker(
            id=self.id,
            endpoint=self.endpoint,
            url=self.url,
            state=self.state,
            detail=self.detail,
            started_at=self.started_at,
            rss_bytes=rss,
        )


class LocalProvider(Provider):
    """Worker processes on this machine; see the module docstring.

    `grace_s` is the worker's own drain time on SIGTERM (its --grace-s); a process still
    running `kill_after_s` past that is killed.
    """

    name = "local"

    def __init__(
        self,
        router_url: str,
        log_dir: Path | None = None,
        *,
        grace_s: float = 10.0,
        kill_after_s: float = 5.0,
    ) -> None:
        self.router_url = router_url.rstrip("/")
        # a temp dir is kept, not deleted at close: a crashed worker's log outlives it
        self.log_dir = log_dir or Path(tempfile.mkdtemp(prefix="router-local-"))
        self.grace_s = grace_s
        self.kill_after_s = kill_after_s
        self._workers: dict[str, _Worker] = {}
        self._session: aiohttp.ClientSession | None = None

    def pids(self, worker_id: str) -> list[int]:
        """The process ids of a worker (the worker first), for operators and tests."""
        return [c.pid for c in self._get(worker_id).children]

    def log_paths(self, worker_id: str) -> list[Path]:
        return [c.log_path for c in self._get(worker_id).children]

    async def start(self, endpoint: EndpointRecord, n: int) -> list[ProvidedWorker]:
        rt = endpoint.runtime
        model_path = _model_path(endpoint) if _uses_model_path(rt) else ""
        if rt.synthetic and rt.backend != "synthetic":
            raise ProviderError(
                f"runtime.backend {rt.backend} needs runtime.command (the model server "
                "to start); without one only the synthetic backend runs"
            )
        if not rt.synthetic and rt.backend == "synthetic":
            raise ProviderError("runtime.command needs runtime.backend tgi, openai or bentoml")
        self.log_dir.mkdir(parents=True, exist_ok=True)
        in_use = {p for w in self._workers.values() for p in w.ports}
        ports = free_ports(n * (1 if rt.synthetic else 2), avoid=in_use)
        started: list[_Worker] = []
        try:
            for i in range(n):
                pair = ports[i * len(ports) // n : (i + 1) * len(ports) // n]
                started.append(await self._start_one(endpoint, pair, model_path))
        except BaseException as exc:
            for w in started:
                await self._end(w)
                del self._workers[w.id]
            if isinstance(exc, OSError):
                raise ProviderError(f"cannot start a worker of {endpoint.name}: {exc}") from exc
            raise
        return [w.view() for w in started]

    async def _start_one(
        self, endpoint: EndpointRecord, ports: list[int], model_path: str
    ) -> _Worker:
        rt = endpoint.runtime
        wid = f"{endpoint.name}-{secrets.token_hex(4)}"
        url = f"http://127.0.0.1:{ports[0]}"
        env = {**os.environ, "PYTHONUNBUFFERED": "1", **dict(rt.env)}
        argv = self._worker_argv(endpoint, ports[0])
        children: list[Child] = []
        try:
            if not rt.synthetic:
                model_port = ports[1]
                command = _substitute(rt.command, model_port, model_path)
                path = self.log_dir / f"{wid}.model.log"
                children.append(await spawn("model server", command, path, env))
                argv += [
                    "--backend-url",
                    f"http://127.0.0.1:{model_port}",
                    "--backend-health-path",
                    rt.health_path,
                ]
            path = self.log_dir / f"{wid}.worker.log"
            children.insert(0, await spawn("worker", argv, path, env))
        except BaseException:
            for c in children:
                c.signal_group(signal.SIGKILL)
                await c.proc.wait()
            raise
        w = _Worker(
            wid,
            endpoint.name,
            url,
            rt.ready_timeout_s,
            children,
            tuple(ports),
            time.time(),
            time.monotonic(),
        )
        self._workers[wid] = w
        log.info(
            "started worker %s of %s at %s (pids %s, logs in %s)",
            wid,
            endpoint.name,
            url,
            ", ".join(str(c.pid) for c in children),
            self.log_dir,
        )
        return w

    def _worker_argv(self, endpoint: EndpointRecord, port: int) -> list[str]:
        rt = endpoint.runtime
        argv = [
            sys.executable,
            "-m",
            "workers",
            "--backend",
            rt.backend,
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--public-url",
            f"http://127.0.0.1:{port}",
            "--endpoint",
            endpoint.name,
            "--router-url",
            self.router_url,
            "--grace-s",
            repr(self.grace_s),
        ]
        if rt.perf is not None:
            argv += ["--perf", repr(rt.perf)]
        if rt.max_load is not None:
            argv += ["--max-load", repr(rt.max_load)]
        if rt.synthetic:
            argv += ["--ttft-ms", repr(rt.ttft_ms), "--tokens-per-s", repr(rt.tokens_per_s)]
            if rt.kv_cache_tokens is not None:
                argv += ["--kv-cache-tokens", str(rt.kv_cache_tokens)]
            if rt.prefill_tokens_per_s is not None:
                argv += ["--prefill-tokens-per-s", repr(rt.prefill_tokens_per_s)]
            if rt.block_chars is not None:
                argv += ["--block-chars", str(rt.block_chars)]
        return argv

    async def observe(self) -> list[ProvidedWorker]:
        now = time.monotonic()
        due: list[_Worker] = []
        for w in self._workers.values():
            if w.state not in ("starting", "running"):
                continue
            dead = next((c for c in w.children if c.returncode is not None), None)
            if dead is not None:
                w.state = "exited"
                w.detail = f"{dead.name} {_exit_text(dead.returncode)}\n{dead.tail(LOG_LINES)}"
                log.warning("worker %s of %s: %s", w.id, w.endpoint, w.detail)
                self._ending(w)  # what is left of it
            elif w.state == "starting" and now - w.started_mono > w.ready_timeout_s:
                w.state = "failed"
                w.detail = f"not ready after {w.ready_timeout_s:g} s\n" + _tails(w.children)
                log.warning("worker %s of %s: %s", w.id, w.endpoint, w.detail)
                self._ending(w)
            elif w.state == "starting" and now >= w.next_poll:
                due.append(w)
        if due:
            async with asyncio.TaskGroup() as tg:
                for w in due:
                    tg.create_task(self._poll(w), name=f"local-provider-poll:{w.id}")
        return [w.view() for w in self._workers.values()]

    async def _poll(self, w: _Worker) -> None:
        """One /readyz of a starting worker: `running` once it answers 200."""
        w.next_poll = time.monotonic() + READY_POLL_INTERVAL_S
        if self._session is None:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=READY_POLL_TIMEOUT_S)
            )
        try:
            async with self._session.get(w.url + "/readyz", allow_redirects=False) as resp:
                ready = resp.status == 200
        except (aiohttp.ClientError, TimeoutError):
            task = asyncio.current_task()
            if task is not None and task.cancelling():  # a timeout racing our cancel
                raise asyncio.CancelledError from None
            return  # not listening yet, or busy loading
        if ready and w.state == "starting":
            w.state = "running"
            log.info(
                "worker %s of %s ready after %.1fs",
                w.id,
                w.endpoint,
                time.monotonic() - w.started_mono,
            )

    async def stop(self, worker_id: str) -> None:
        """SIGTERM the worker (it drains), then its model server; SIGKILL past the bounds.

        Returns once its processes are gone; the worker is then `stopping` (detail
        "stopped", with exit codes) until forgotten. A cancelled caller does not cut the
        stop short: it goes on, owned by the worker's record.
        """
        w = self._get(worker_id)
        if w.state in ("starting", "running"):
            w.state, w.detail = "stopping", "stop requested"
        await asyncio.shield(self._ending(w))
        if w.state == "stopping":
            codes = ", ".join(f"{c.name} {_exit_text(c.returncode)}" for c in w.children)
            w.detail = f"stopped: {codes}"

    async def forget(self, worker_id: str) -> None:
        w = self._workers.get(worker_id)
        if w is None:
            return
        if any(c.returncode is None for c in w.children) or w.ending is not None:
            await asyncio.shield(self._ending(w))
        self._workers.pop(worker_id, None)

    async def close(self) -> None:
        for w in self._workers.values():
            if w.state in ("starting", "running"):
                w.state, w.detail = "stopping", "router shutting down"
        tasks = [self._ending(w) for w in self._workers.values()]
        if tasks:
            await asyncio.wait(tasks)
            for t in tasks:
                if not t.cancelled() and t.exception() is not None:
                    log.error("stopping %s failed", t.get_name(), exc_info=t.exception())
        self._workers.clear()
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _get(self, worker_id: str) -> _Worker:
        w = self._workers.get(worker_id)
        if w is None:
            raise ProviderError(f"no local worker {worker_id!r}")
        return w

    def _ending(self, w: _Worker) -> asyncio.Task[None]:
        """The task that stops `w`'s processes (started on first call, then the same one)."""
        if w.ending is None:
            w.ending = asyncio.create_task(self._end(w), name=f"local-provider-stop:{w.id}")
        return w.ending

    async def _end(self, w: _Worker) -> None:
        # The worker first: it drains in-flight requests, which still need the model server.
        for i, c in enumerate(w.children):
            bound = self.grace_s + self.kill_after_s if i == 0 else self.kill_after_s
            await c.terminate(bound)


def _uses_model_path(rt: RuntimeSpec) -> bool:
    return any("{model_path}" in arg for arg in rt.command)


def _model_path(endpoint: EndpointRecord) -> str:
    """The endpoint's storage URI as a local path: a `file://` URI or a plain path."""
    uri = endpoint.storage_uri
    parts = urlsplit(uri)
    if parts.scheme == "file" and parts.netloc in ("", "localhost"):
        return unquote(parts.path)
    if parts.scheme == "" and uri:
        return uri
    raise ProviderError(
        f"storage_uri {uri!r}: the local provider reads only local files (a path or a file:// URI)"
    )


def _substitute(command: tuple[str, ...], port: int, model_path: str) -> list[str]:
    """`{port}`, `{model_path}` and `{python}` filled in; other braces left as they are."""
    out = []
    for arg in command:
        arg = arg.replace("{port}", str(port)).replace("{model_path}", model_path)
        out.append(arg.replace("{python}", sys.executable))
    return out


def _exit_text(code: int | None) -> str:
    if code is None:
        return "still running"
    if code < 0:
        try:
            return f"exited with code {code} ({signal.Signals(-code).name})"
        except ValueError:
            return f"exited with code {code}"
    return f"exited with code {code}"


def _tails(children: list[Child]) -> str:
    parts = []
    for c in children:
        tail = c.tail(LOG_LINES)
        if tail:
            parts.append(f"--- {c.name} log:\n{tail}")
    return "\n".join(parts)
