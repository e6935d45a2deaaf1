"""The README demo as written, and workers that register themselves with a token."""

from __future__ import annotations

import signal
import sys
from pathlib import Path

import pytest

from tests.e2e.procs import (
    ROOT,
    Proc,
    free_port,
    request,
    route,
    router_config,
    router_proc,
    statuses,
    wait_port,
    wait_until,
    worker_proc,
)

pytestmark = pytest.mark.e2e


def test_demo_config_serves_the_readme_flow(tmp_path: Path) -> None:
    port = free_port()
    router = Proc(
        "demo",
        [sys.executable, "-m", "router", "serve", "--config", str(ROOT / "configs/local.toml")],
        tmp_path,
        env={"ROUTER_SERVER_PORT": str(port)},
    ).start()
    url = f"http://127.0.0.1:{port}"
    try:
        wait_port(port)
        ticket = wait_until(
            lambda: (t := route(url, cost=16)) and "url" in t and t,
            timeout_s=30,
            what="a spawned worker ready",
        )
        status, doc = request(
            "POST",
            f"{ticket['url']}/generate",
            {
                "auth_data": ticket,
                "payload": {
                    "inputs": "What is deep learning?",
                    "parameters": {"max_new_tokens": 16},
                },
            },
        )
        assert status == 200 and len(doc["generated_text"].split()) == 16
        status, doc = request(
            "POST",
            f"{ticket['url']}/generate",
            {"auth_data": ticket, "payload": {"inputs": "again"}},
        )
        assert status == 401 and doc["error"]["code"] == "ticket_replayed"
        workers = wait_until(
            lambda: (s := statuses_with(url)) and list(s.values()) == ["ready", "ready"] and s,
            timeout_s=30,
            what="both spawned workers ready",
        )
        assert len(workers) == 2
    finally:
        router.kill(signal.SIGTERM)
    assert router.proc is not None and router.proc.returncode == 0, router.log()
    log = router.log()
    assert "Traceback" not in log
    assert "dev-key" not in log and "admin-key" not in log


def statuses_with(url: str) -> dict[str, str]:
    status, doc = request(
        "GET", f"{url}/api/v1/workers", headers={"Authorization": "Bearer admin-key"}
    )
    assert status == 200
    return {w["url"]: w["status"] for w in doc["workers"]}


def test_worker_registers_itself_and_leaves_on_sigterm(tmp_path: Path) -> None:
    port = free_port()
    router_url = f"http://127.0.0.1:{port}"
    cfg = router_config(
        tmp_path / "router.toml", port=port, store="memory", redis_url="", worker_urls=[]
    )
    router = router_proc(cfg, tmp_path).start()
    wport = free_port()
    worker = worker_proc(wport, router_url, tmp_path, "--register-token", "worker-token")
    try:
        wait_port(port)
        worker.start()
        wurl = f"http://127.0.0.1:{wport}"
        wait_until(lambda: statuses(router_url).get(wurl) == "ready", what="worker registered")
        t = route(router_url, cost=4)
        assert t["url"] == wurl
        status, _ = request(
            "POST",
            f"{wurl}/generate",
            {"auth_data": t, "payload": {"inputs": "hi", "parameters": {"max_new_tokens": 4}}},
        )
        assert status == 200
        worker.kill(signal.SIGTERM)
        assert worker.proc is not None and worker.proc.returncode == 0, worker.log()
        wait_until(lambda: wurl not in statuses(router_url), what="worker deregistered")
        assert "url" not in route(router_url)
    finally:
        worker.kill()
        router.kill()
