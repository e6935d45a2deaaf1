"""The local provider with real processes: start, ready, crash, never ready, stop, orphans."""

from __future__ import annotations

import asyncio
import itertools
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from router.control.providers.base import ProviderError
from router.control.providers.local import READY_POLL_INTERVAL_S, LocalProvider
from router.control.spec import EndpointRecord, RuntimeSpec
from tests.conftest import free_port
from tests.control.helpers import alive, until_gone, until_states
from tests.router.helpers import router_client, settings

ROOT = Path(__file__).resolve().parents[2]
SLEEPER = ("{python}", "-c", "import time; print('loading the model', flush=True); time.sleep(60)")


@pytest.fixture
async def router_url() -> AsyncIterator[str]:
    """A real router in process: the workers fetch its keys (JWKS) to become ready."""
    async with router_client(settings([])) as (client, _):
        yield str(client.make_url("")).rstrip("/")


@pytest.fixture
async def provider(router_url: str, tmp_path: Path) -> AsyncIterator[LocalProvider]:
    p = LocalProvider(router_url, tmp_path / "logs", grace_s=2.0, kill_after_s=3.0)
    try:
        yield p
    finally:
        await p.close()


SYNTHETIC = EndpointRecord("demo", runtime=RuntimeSpec(perf=300.0, ttft_ms=5.0))


async def test_two_synthetic_workers_start_then_run(provider: LocalProvider) -> None:
    started = await provider.start(SYNTHETIC, 2)
    assert [w.state for w in started] == ["starting", "starting"]
    assert len({w.id for w in started}) == 2 and len({w.url for w in started}) == 2
    seen = await until_states(provider, {w.id: "running" for w in started})
    async with aiohttp.ClientSession() as http:
        for w in started:
            async with http.get(w.url + "/readyz") as resp:
                doc = orjson.loads(await resp.read())
                assert resp.status == 200 and doc["ready"] is True and doc["perf"] == 300.0
            rss = seen[w.id].rss_bytes
            assert rss is not None and rss > 10 * 2**20  # a Python process with aiohttp
    # a stop on request is a graceful one: the worker drains and exits 0
    first = started[0]
    pids = provider.pids(first.id)
    await provider.stop(first.id)
    assert not any(alive(p) for p in pids)
    [stopped] = [w for w in await provider.observe() if w.id == first.id]
    assert stopped.state == "stopping" and "worker exited with code 0" in stopped.detail
    await provider.forget(first.id)
    assert [w.id for w in await provider.observe()] == [started[1].id]


async def test_a_starting_worker_is_polled_at_most_once_a_second(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # no router: the worker never gets its keys, so it stays starting (503 on /readyz)
    provider = LocalProvider(f"http://127.0.0.1:{free_port()}", tmp_path, grace_s=1.0)
    polls: list[float] = []
    poll = LocalProvider._poll

    async def counted(self: LocalProvider, w: Any) -> None:
        polls.append(time.monotonic())
        await poll(self, w)

    monkeypatch.setattr(LocalProvider, "_poll", counted)
    try:
        [w] = await provider.start(SYNTHETIC, 1)
        deadline = time.monotonic() + 2.5
        while time.monotonic() < deadline:
            [seen] = await provider.observe()
            assert (seen.id, seen.state) == (w.id, "starting")
            await asyncio.sleep(0.01)  # an eager caller: ~100 observe() a second
    finally:
        await provider.close()
    assert 2 <= len(polls) <= 3
    assert all(b - a >= READY_POLL_INTERVAL_S for a, b in itertools.pairwise(polls))


async def test_a_killed_worker_is_exited_with_its_code_and_not_restarted(
    provider: LocalProvider,
) -> None:
    [w] = await provider.start(SYNTHETIC, 1)
    await until_states(provider, {w.id: "running"})
    [pid] = provider.pids(w.id)
    os.kill(pid, signal.SIGKILL)
    seen = await until_states(provider, {w.id: "exited"}, timeout_s=10)
    detail = seen[w.id].detail
    assert detail.startswith("worker exited with code -9 (SIGKILL)")
    assert "worker for endpoint demo" in detail  # its last log lines
    assert seen[w.id].rss_bytes is None
    assert list(seen) == [w.id]  # nothing started in its place


async def test_a_model_server_that_never_gets_ready_is_failed_and_stopped(
    provider: LocalProvider,
) -> None:
    runtime = RuntimeSpec(backend="openai", command=SLEEPER, ready_timeout_s=2.0)
    [w] = await provider.start(EndpointRecord("demo", runtime=runtime), 1)
    pids = provider.pids(w.id)
    assert len(pids) == 2  # the worker and, behind it, the model server
    seen = await until_states(provider, {w.id: "failed"}, timeout_s=15)
    detail = seen[w.id].detail
    assert detail.startswith("not ready after 2 s")
    assert "loading the model" in detail  # the model server's own last lines
    await until_gone(pids)  # failing it stops it
    await provider.forget(w.id)
    assert await provider.observe() == []


async def test_stop_ends_the_worker_and_its_model_server(provider: LocalProvider) -> None:
    runtime = RuntimeSpec(backend="openai", command=SLEEPER)
    [w] = await provider.start(EndpointRecord("demo", runtime=runtime), 1)
    pids = provider.pids(w.id)
    assert all(alive(p) for p in pids)
    await provider.stop(w.id)
    assert not any(alive(p) for p in pids)
    [seen] = await provider.observe()
    assert seen.state == "stopping" and seen.detail.startswith("stopped: worker exited")


async def test_close_ends_everything(router_url: str, tmp_path: Path) -> None:
    provider = LocalProvider(router_url, tmp_path, grace_s=2.0, kill_after_s=3.0)
    runtime = RuntimeSpec(backend="openai", command=SLEEPER)
    workers = [
        *await provider.start(SYNTHETIC, 2),
        *await provider.start(EndpointRecord("demo", runtime=runtime), 1),
    ]
    pids = [p for w in workers for p in provider.pids(w.id)]
    assert len(pids) == 4 and all(alive(p) for p in pids)
    await provider.close()
    assert not any(alive(p) for p in pids)
    assert await provider.observe() == []


async def test_bad_runtimes_are_refused_before_anything_starts(provider: LocalProvider) -> None:
    cases = [
        (RuntimeSpec(backend="openai"), "needs runtime.command"),
        (RuntimeSpec(command=SLEEPER), "needs runtime.backend"),
        (
            RuntimeSpec(backend="openai", command=("{python}", "{model_path}")),
            "reads only local files",
        ),
    ]
    for runtime, message in cases:
        record = EndpointRecord("demo", storage_uri="s3://bucket/m.gguf", runtime=runtime)
        with pytest.raises(ProviderError, match=message):
            await provider.start(record, 1)
    missing = RuntimeSpec(backend="openai", command=("/nonexistent/model-server",))
    with pytest.raises(ProviderError, match="cannot start a worker of demo"):
        await provider.start(EndpointRecord("demo", runtime=missing), 2)
    assert await provider.observe() == []


async def test_model_path_and_port_are_substituted(provider: LocalProvider, tmp_path: Path) -> None:
    model = tmp_path / "my model.gguf"
    model.write_text("weights")
    echo = (
        "{python}",
        "-c",
        "import sys, time; print('args', sys.argv[1:], flush=True); time.sleep(60)",
        "{model_path}",
        "--port={port}",
        "{literal}",
    )
    uri = "file://" + str(model).replace(" ", "%20")
    runtime = RuntimeSpec(backend="openai", command=echo)
    [w] = await provider.start(EndpointRecord("demo", storage_uri=uri, runtime=runtime), 1)
    model_log = provider.log_paths(w.id)[1]
    deadline = time.monotonic() + 10
    while "args" not in model_log.read_text():
        assert time.monotonic() < deadline, model_log.read_text()
        await asyncio.sleep(0.05)
    line = model_log.read_text()
    assert repr(str(model)) in line and "'{literal}'" in line
    port = int(line.split("--port=")[1].split("'")[0])
    assert port != int(w.url.rsplit(":", 1)[1])
    await provider.stop(w.id)


def test_a_router_killed_with_sigkill_leaves_no_child(tmp_path: Path) -> None:
    """The provider in a process that is SIGKILLed: no cleanup code runs, yet none survive."""
    host = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tests.control.provider_host",
            f"http://127.0.0.1:{free_port()}",  # no router: the workers need none to start
            str(tmp_path),
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
    )
    try:
        assert host.stdout is not None
        pids = orjson.loads(host.stdout.readline())
        assert len(pids) == 3 and all(alive(p) for p in pids)
        host.kill()
        host.wait(10)
        asyncio.run(until_gone(pids, timeout_s=10))
    finally:
        host.kill()
        host.wait()
        if host.stdout is not None:
            host.stdout.close()


async def test_the_kv_cache_flags_are_passed_only_when_set(tmp_path: Path) -> None:
    p = LocalProvider("http://127.0.0.1:1", tmp_path / "logs")
    try:
        plain = p._worker_argv(SYNTHETIC, 4000)
        assert "--kv-cache-tokens" not in plain and "--prefill-tokens-per-s" not in plain
        rt = RuntimeSpec(kv_cache_tokens=65536, prefill_tokens_per_s=8000.0, block_chars=32)
        argv = p._worker_argv(EndpointRecord("demo", runtime=rt), 4000)
        i = argv.index("--kv-cache-tokens")
        assert argv[i : i + 6] == [
            "--kv-cache-tokens",
            "65536",
            "--prefill-tokens-per-s",
            "8000.0",
            "--block-chars",
            "32",
        ]
    finally:
        await p.close()
