"""`inference-router serve` as a process: what it says when it cannot listen, and when it stops."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.e2e.procs import ROOT, Proc, wait_port

pytestmark = pytest.mark.e2e


def test_a_taken_port_fails_before_anything_starts_and_suggests_port(tmp_path: Path) -> None:
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        # the demo config spawns two workers: none may start when the router cannot listen
        out = subprocess.run(
            [sys.executable, "-m", "router", "serve", "--config", "configs/local.toml"],
            cwd=ROOT,
            env={**os.environ, "ROUTER_SERVER_PORT": str(port)},
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert out.returncode == 1, out.stderr
    assert f"cannot listen on 127.0.0.1:{port}" in out.stderr
    assert "--port" in out.stderr
    assert "started worker" not in out.stderr  # the local provider logs each start
    assert "starting router" not in out.stderr
    assert "Traceback" not in out.stderr


def test_stopping_is_logged_at_info(tmp_path: Path) -> None:
    cfg = tmp_path / "router.toml"
    cfg.write_text('[server]\nshutdown_grace_s = 2\n[[endpoints]]\nname = "demo"\n')
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    router = Proc(
        "router",
        [sys.executable, "-m", "router", "serve", "--config", str(cfg), "--port", str(port)],
        tmp_path,
    ).start()
    try:
        wait_port(port)
    finally:
        router.kill(signal.SIGTERM)
    assert router.proc is not None and router.proc.returncode == 0, router.log()
    log = router.log()
    assert "INFO router: draining" in log and log.rstrip().endswith("INFO router: stopped"), log
