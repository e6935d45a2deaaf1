"""Shared fixtures: a real redis-server on a free port, free ports, process helpers."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

REDIS_BIN = shutil.which("redis-server")
REQUIRE_REDIS = os.environ.get("REQUIRE_REDIS") == "1"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.02)
    raise TimeoutError(f"nothing listening on 127.0.0.1:{port} after {timeout_s}s")


class RedisServer:
    """A redis-server child process that tests may kill and restart (empty) on one port."""

    def __init__(self, port: int, workdir: Path) -> None:
        self.port = port
        self.workdir = workdir
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        assert REDIS_BIN
        self.proc = subprocess.Popen(
            [
                REDIS_BIN,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.workdir),
                "--loglevel",
                "warning",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_port(self.port)

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def restart_empty(self) -> None:
        self.kill()
        self.start()

    def flush(self) -> None:
        import redis

        r = redis.Redis(port=self.port)
        r.flushall()
        r.close()


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    if REDIS_BIN is None:
        if REQUIRE_REDIS:
            pytest.fail("redis-server is required (REQUIRE_REDIS=1) but not installed")
        pytest.skip("redis-server not installed")
    with tempfile.TemporaryDirectory() as d:
        server = RedisServer(free_port(), Path(d))
        server.start()
        try:
            yield server
        finally:
            server.kill()


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    """A running, empty Redis (restarted if an earlier test killed it)."""
    if redis_server.proc is None or redis_server.proc.poll() is not None:
        redis_server.start()
    redis_server.flush()
    return redis_server.url
