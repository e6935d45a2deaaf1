"""Real router and worker processes for end-to-end tests."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import orjson

from tests.conftest import free_port, wait_port

ROOT = Path(__file__).resolve().parents[2]


class Proc:
    """A child process with its output in a log file (shown when a test fails)."""

    def __init__(
        self, name: str, argv: list[str], log_dir: Path, env: dict[str, str] | None = None
    ) -> None:
        self.name = name
        self.argv = argv
        self.log_path = log_dir / f"{name}.log"
        self.env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Proc:
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                self.argv, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT, env=self.env
            )
        return self

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-4000:]
        except OSError:
            return ""


def router_config(
    path: Path,
    *,
    port: int,
    store: str,
    redis_url: str,
    worker_urls: list[str],
    interval_s: float = 0.25,
    ticket_ttl_s: float = 3.0,
    algorithm: str = "rsa",
) -> Path:
    workers = "\n".join(f'[[endpoints.workers]]\nurl = "{u}"\nperf = 100\n' for u in worker_urls)
    path.write_text(f"""
log_level = "info"
[server]
port = {port}
shutdown_grace_s = 2
[store]
backend = "{store}"
redis_url = "{redis_url}"
snapshot_interval_s = 0.05
[signing]
algorithm = "{algorithm}"
ticket_ttl_s = {ticket_ttl_s}
[[api_keys]]
key = "dev-key"
endpoints = ["demo"]
[[api_keys]]
key = "admin-key"
admin = true
[[api_keys]]
key = "worker-token"
endpoints = ["demo"]
register_workers = true
[[endpoints]]
name = "demo"
default_cost = 16
[endpoints.health]
interval_s = {interval_s}
timeout_s = 0.5
unhealthy_after = 2
healthy_after = 1
{workers}
""")
    return path


def router_proc(config: Path, log_dir: Path, name: str = "router") -> Proc:
    return Proc(name, [sys.executable, "-m", "router", "serve", "--config", str(config)], log_dir)


def worker_proc(
    port: int, router_url: str, log_dir: Path, *extra: str, name: str | None = None
) -> Proc:
    return Proc(
        name or f"worker-{port}",
        [
            sys.executable,
            "-m",
            "workers",
            "--backend",
            "synthetic",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--public-url",
            f"http://127.0.0.1:{port}",
            "--endpoint",
            "demo",
            "--router-url",
            router_url,
            "--clock-skew-s",
            "0",
            "--ttft-ms",
            "20",
            "--tokens-per-s",
            "400",
            *extra,
        ],
        log_dir,
    )


def request(
    method: str,
    url: str,
    body: Any = None,
    headers: dict[str, str] | None = None,
    raw: bytes | None = None,
) -> tuple[int, Any]:
    data = raw if raw is not None else (orjson.dumps(body) if body is not None else None)
    req = urllib.request.Request(
        url,
        data=data,
        method=method,
        headers={"Content-Type": "application/json", **(headers or {})},
    )
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            status, text = resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        status, text = exc.code, exc.read()
    try:
        return status, orjson.loads(text)
    except orjson.JSONDecodeError:
        return status, text.decode(errors="replace")


def route(router_url: str, **fields: Any) -> dict[str, Any]:
    status, doc = request(
        "POST", f"{router_url}/route/", {"endpoint": "demo", "api_key": "dev-key", **fields}
    )
    assert status == 200, doc
    assert isinstance(doc, dict)
    return doc


def wait_until(cond: Any, timeout_s: float = 15.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout_s
    last = None
    while time.monotonic() < deadline:
        try:
            last = cond()
            if last:
                return last
        except Exception as exc:  # the process may still be starting
            last = exc
        time.sleep(0.05)
    raise TimeoutError(f"{what} not met within {timeout_s}s (last: {last!r})")


def statuses(router_url: str) -> dict[str, str]:
    status, doc = request(
        "GET",
        f"{router_url}/api/v1/workers?endpoint=demo",
        headers={"Authorization": "Bearer admin-key"},
    )
    assert status == 200, doc
    return {w["url"]: w["status"] for w in doc["workers"]}


__all__ = [
    "Proc",
    "free_port",
    "route",
    "router_config",
    "router_proc",
    "statuses",
    "wait_port",
    "wait_until",
    "worker_proc",
]
