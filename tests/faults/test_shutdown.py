"""Graceful shutdown of real router and worker processes: SIGTERM loses no stream.

The router stops taking connections, lets streams in flight finish within
server.shutdown_grace_s, then exits 0; past the grace it cuts them and still exits. The
worker reports `draining` first, so the router stops sending it work, then finishes what
it holds and exits 0.
"""

from __future__ import annotations

import signal
import socket
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.procs import request, route, statuses, wait_until
from tests.e2e.test_proxy_clients import AUTH, Stack, sse

pytestmark = pytest.mark.e2e

STREAM = {"inputs": "hi", "parameters": {"max_new_tokens": 30}}  # 1.5 s at 20 tokens/s


class Reader(threading.Thread):
    """Read one proxied stream in the background; note the first line and how it ended."""

    def __init__(self, url: str, body: Any = STREAM) -> None:
        super().__init__(daemon=True)
        self.url, self.body = url, body
        self.lines: list[bytes] = []
        self.first = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            for _, line in sse(self.url, self.body, AUTH):
                self.lines.append(line)
                self.first.set()
        except BaseException as exc:  # the test looks at what the client saw
            self.error = exc
        finally:
            self.first.set()


def refused(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return False
    except OSError:
        return True


def grace(stack: Stack, seconds: float) -> None:
    """Restart the stack's router with another shutdown grace."""
    cfg = Path(stack.router.argv[-1])
    cfg.write_text(cfg.read_text().replace("shutdown_grace_s = 2", f"shutdown_grace_s = {seconds}"))
    stack.router.kill()
    stack.router.start()
    wait_until(lambda: set(statuses(stack.url).values()) == {"ready"}, what="ready again")


@pytest.mark.parametrize("signals", [1, 2], ids=["one_sigterm", "two_sigterms"])
def test_router_sigterm_lets_streams_finish_then_exits_0(tmp_path: Path, signals: int) -> None:
    """Twice: `timeout` and some supervisors signal the process and its group."""
    s = Stack(tmp_path, 1, 0.25, "--tokens-per-s", "20")
    try:
        grace(s, 10)
        port = int(s.url.rsplit(":", 1)[1])
        reader = Reader(f"{s.url}/demo/generate_stream")
        reader.start()
        assert reader.first.wait(10) and reader.error is None
        assert s.router.proc is not None
        s.router.proc.send_signal(signal.SIGTERM)
        if signals == 2:
            time.sleep(0.2)
            s.router.proc.send_signal(signal.SIGTERM)
        wait_until(lambda: refused(port), timeout_s=3, what="no new connections")
        reader.join(15)
        # the stream in flight ran to its end: every token, no error event
        assert reader.error is None, reader.error
        assert len(reader.lines) == 30 and b"event: error" not in reader.lines
        assert s.router.proc.wait(10) == 0
        log = s.router.log()
        assert "Traceback" not in log and "asynchronous generator" not in log
    except BaseException:
        print(s.logs())
        raise
    finally:
        s.close()


def test_router_grace_is_bounded(tmp_path: Path) -> None:
    s = Stack(tmp_path, 1, 0.25, "--tokens-per-s", "20")
    try:
        grace(s, 1)
        reader = Reader(
            f"{s.url}/demo/generate_stream", {"inputs": "hi", "parameters": {"max_new_tokens": 400}}
        )  # 20 s
        reader.start()
        assert reader.first.wait(10)
        assert s.router.proc is not None
        stopped = time.monotonic()
        s.router.proc.send_signal(signal.SIGTERM)
        assert s.router.proc.wait(10) == 0
        assert time.monotonic() - stopped < 5.0  # 1 s grace, then the stream is cut
        reader.join(10)
        assert not reader.is_alive() and len(reader.lines) < 400
    except BaseException:
        print(s.logs())
        raise
    finally:
        s.close()


def test_worker_sigterm_drains_before_it_goes(tmp_path: Path) -> None:
    s = Stack(tmp_path, 2, 0.25, "--tokens-per-s", "20", "--grace-s", "10")
    try:
        leaving, staying = s.worker_urls
        reader = Reader(f"{leaving}/generate_stream", None)
        # a ticket-mode stream straight at the worker that is about to leave
        ticket = _ticket_for(s.url, leaving)
        reader.body = {**ticket, **STREAM}
        reader.start()
        assert reader.first.wait(10) and reader.error is None
        w = s.workers[0]
        assert w.proc is not None
        w.proc.send_signal(signal.SIGTERM)

        def says_draining() -> bool:
            status, doc = request("GET", f"{leaving}/readyz")
            return status == 503 and doc.get("draining") is True

        wait_until(says_draining, timeout_s=3, what="worker reports draining")
        wait_until(
            lambda: statuses(s.url)[leaving] == "draining", timeout_s=5, what="router sees draining"
        )
        # from now on every ticket goes to the other worker
        assert all(route(s.url)["url"] == staying for _ in range(20))
        reader.join(15)
        assert reader.error is None, reader.error
        assert len(reader.lines) == 30
        assert w.proc.wait(10) == 0
    except BaseException:
        print(s.logs())
        raise
    finally:
        s.close()


def _ticket_for(router_url: str, worker_url: str) -> dict[str, Any]:
    for _ in range(50):
        t = route(router_url)
        if t["url"] == worker_url:
            return t
    raise AssertionError(f"no ticket for {worker_url} in 50 tries")
