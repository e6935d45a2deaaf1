"""`inference-router serve --processes N`: N processes on one port, one Redis, one exit."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from router.signing import write_private_key
from tests.conftest import free_port
from tests.e2e.procs import (
    ROOT,
    Proc,
    request,
    route,
    router_config,
    statuses,
    wait_port,
    wait_until,
    worker_proc,
)

pytestmark = pytest.mark.e2e


def config(tmp_path: Path, port: int, store: str, redis_url: str, worker_urls: list[str]) -> Path:
    key = tmp_path / "k1.pem"
    write_private_key(key, "ed25519")
    cfg = router_config(
        tmp_path / "router.toml",
        port=port,
        store=store,
        redis_url=redis_url,
        worker_urls=worker_urls,
    )
    cfg.write_text(cfg.read_text().replace("[signing]\n", f'[signing]\nkey_files = ["{key}"]\n'))
    return cfg


def test_memory_store_refuses_several_processes(tmp_path: Path) -> None:
    cfg = config(tmp_path, free_port(), "memory", "redis://127.0.0.1:1/0", [])
    out = subprocess.run(
        [sys.executable, "-m", "router", "serve", "--config", str(cfg), "--processes", "2"],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=ROOT,
    )
    assert out.returncode == 2
    assert "server.processes: 2 processes need store.backend" in out.stderr
    assert "Traceback" not in out.stderr


@pytest.mark.redis
def test_two_processes_share_a_port_and_stop_together(tmp_path: Path, redis_url: str) -> None:
    port, wports = free_port(), [free_port(), free_port()]
    url = f"http://127.0.0.1:{port}"
    wurls = [f"http://127.0.0.1:{p}" for p in wports]
    cfg = config(tmp_path, port, "redis", redis_url, wurls)
    parent = Proc(
        "router",
        [sys.executable, "-m", "router", "serve", "--config", str(cfg), "--processes", "2"],
        tmp_path,
    ).start()
    workers = [worker_proc(p, url, tmp_path).start() for p in wports]
    try:
        wait_port(port)
        wait_until(lambda: set(statuses(url).values()) == {"ready"}, what="workers ready")

        def pid() -> int:  # a new connection each time: the kernel picks a process
            status, doc = request("GET", f"{url}/readyz")
            assert status == 200, doc
            return int(doc["pid"])

        pids: set[int] = set()

        def both_answer() -> bool:
            pids.add(pid())
            return len(pids) == 2

        wait_until(both_answer, what="both processes answering")
        assert parent.proc is not None and parent.proc.pid not in pids
        with ThreadPoolExecutor(8) as pool:
            tickets = list(pool.map(lambda _: route(url), range(100)))
        pairs = [(t["url"], t["reqnum"]) for t in tickets]
        assert len(set(pairs)) == 100  # one Redis, one reqnum sequence per worker

        parent.proc.send_signal(signal.SIGTERM)
        assert parent.proc.wait(20) == 0
        wait_until(lambda: not any(_alive(p) for p in pids), timeout_s=5, what="children gone")
    except BaseException:
        print(f"--- router ---\n{parent.log()}")
        raise
    finally:
        for w in workers:
            w.kill()
        parent.kill()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie is gone for our purpose: its parent has exited and init reaps it
    try:
        return Path(f"/proc/{pid}/status").read_text().find("State:\tZ") < 0
    except OSError:
        return False


@pytest.mark.redis
def test_a_child_that_dies_stops_the_rest(tmp_path: Path, redis_url: str) -> None:
    port = free_port()
    cfg = config(tmp_path, port, "redis", redis_url, [])
    parent = Proc(
        "router",
        [sys.executable, "-m", "router", "serve", "--config", str(cfg), "--processes", "2"],
        tmp_path,
    ).start()
    try:
        wait_port(port)
        pids: set[int] = set()
        deadline = time.monotonic() + 15
        while len(pids) < 2 and time.monotonic() < deadline:
            status, doc = request("GET", f"http://127.0.0.1:{port}/readyz")
            if status == 200:
                pids.add(int(doc["pid"]))
        assert len(pids) == 2
        os.kill(min(pids), signal.SIGKILL)
        assert parent.proc is not None and parent.proc.wait(20) != 0
        other = max(pids)
        wait_until(lambda: not _alive(other), timeout_s=10, what="the other child stopped")
    except BaseException:
        print(f"--- router ---\n{parent.log()}")
        raise
    finally:
        parent.kill()
