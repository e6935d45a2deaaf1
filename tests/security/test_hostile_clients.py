"""Hostile clients against a real router process: slow, oversized, nosy, key-fishing.

One router (memory store, DEBUG logging, a 1 s request read timeout) and one synthetic
worker serve the whole module; a stand-in "evil" server counts any request that would
mean the router can be used as an open proxy.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import orjson
import pytest

from tests.conftest import free_port
from tests.e2e.procs import (
    Proc,
    request,
    router_config,
    router_proc,
    statuses,
    wait_port,
    wait_until,
    worker_proc,
)

pytestmark = pytest.mark.e2e

SECRET = "sk-LEAKCHECK-7f3a9c1e5b"  # a valid key that must never be echoed anywhere
WRONG = "sk-WRONGKEY-0d2e4f6a8c"  # an invalid one, likewise


class Evil:
    """A server the router must never be tricked into calling."""

    def __init__(self) -> None:
        hits = self.hits = []  # type: list[str]

        class Handler(BaseHTTPRequestHandler):
            def _any(self) -> None:
                hits.append(f"{self.command} {self.path}")
                self.send_response(200)
                self.send_header("Content-Length", "4")
                self.end_headers()
                self.wfile.write(b"evil")

            do_GET = do_POST = do_PUT = do_DELETE = _any

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


@dataclass
class Router:
    url: str
    port: int
    worker_url: str
    proc: Proc
    evil: Evil
    bodies: list[bytes] = field(default_factory=list)

    def call(
        self,
        method: str,
        path: str,
        body: Any = None,
        headers: dict[str, str] | None = None,
        raw: bytes | None = None,
    ) -> tuple[int, Any]:
        status, doc = request(method, f"{self.url}{path}", body, headers, raw)
        self.bodies.append(orjson.dumps(doc) if not isinstance(doc, str) else doc.encode())
        return status, doc


@pytest.fixture(scope="module")
def router(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Router]:
    tmp = tmp_path_factory.mktemp("hostile")
    port, wport = free_port(), free_port()
    url, wurl = f"http://127.0.0.1:{port}", f"http://127.0.0.1:{wport}"
    cfg = router_config(
        tmp / "router.toml", port=port, store="memory", redis_url="", worker_urls=[wurl]
    )
    text = cfg.read_text().replace('log_level = "info"', 'log_level = "debug"')
    text = text.replace(
        "shutdown_grace_s = 2\n", "shutdown_grace_s = 2\nrequest_read_timeout_s = 1\n"
    )
    text = text.replace("default_cost = 16\n", "default_cost = 16\nmax_body_bytes = 4096\n")
    text += f'\n[[api_keys]]\nkey = "{SECRET}"\nendpoints = ["demo"]\n'
    cfg.write_text(text)
    proc = router_proc(cfg, tmp).start()
    worker = worker_proc(wport, url, tmp).start()
    try:
        wait_port(port)
        wait_until(lambda: set(statuses(url).values()) == {"ready"}, what="ready")
        yield Router(url, port, wurl, proc, Evil())
    finally:
        worker.kill()
        proc.kill()


def raw_exchange(port: int, data: bytes, timeout_s: float = 5.0) -> bytes:
    """Send `data`, read until the router closes the connection (send `Connection: close`).

    Everything the router wrote comes back, so a second, smuggled answer would show.
    """
    with socket.create_connection(("127.0.0.1", port), timeout=timeout_s) as s:
        s.sendall(data)
        out = b""
        while True:
            try:
                chunk = s.recv(65536)
            except ConnectionResetError:
                break
            if not chunk:
                break
            out += chunk
        return out


def answers(raw: bytes) -> list[tuple[int, bytes]]:
    """(status, body) of each HTTP answer in `raw`."""
    import httptools

    got: list[tuple[int, bytes]] = []
    body: list[bytes] = []

    class P:
        def on_body(self, b: bytes) -> None:
            body.append(b)

        def on_message_complete(self) -> None:
            got.append((parser.get_status_code(), b"".join(body)))
            body.clear()

    parser = httptools.HttpResponseParser(P())
    parser.feed_data(raw)
    return got


def test_slow_headers_are_cut_off(router: Router) -> None:
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", router.port), timeout=5) as s:
        s.sendall(b"GET /livez HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        closed = False
        for _ in range(40):  # a byte every 0.1 s, never finishing the headers
            try:
                s.sendall(b"a")
                s.settimeout(0.1)
                if s.recv(1024) == b"":
                    closed = True
                    break
            except TimeoutError:
                continue
            except (BrokenPipeError, ConnectionResetError):
                closed = True
                break
    assert closed, "the server kept a connection whose headers never ended"
    assert time.monotonic() - started < 3.5  # the 1 s read timeout, checked once a second


def test_slow_body_gets_408(router: Router) -> None:
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", router.port), timeout=5) as s:
        s.sendall(
            b"POST /route HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b'Content-Length: 100\r\n\r\n{"endpoint": '
        )
        answer = s.recv(65536)
    assert answer.startswith(b"HTTP/1.1 408"), answer[:100]
    assert b'"request_timeout"' in answer
    assert time.monotonic() - started < 3.0


def test_oversized_bodies_are_413_json(router: Router) -> None:
    big = b'{"endpoint": "demo", "pad": "' + b"x" * (2 << 20) + b'"}'
    status, doc = router.call("POST", "/route", raw=big)
    assert status == 413 and doc["error"]["code"] == "body_too_large"
    status, doc = router.call(
        "POST", "/demo/generate", raw=b"x" * 5000, headers={"Authorization": f"Bearer {SECRET}"}
    )
    assert status == 413 and doc["error"]["code"] == "body_too_large"


@pytest.mark.parametrize(
    "headers",
    [
        b"".join(b"X-H%d: v\r\n" % i for i in range(300)),  # too many
        b"X-Big: " + b"v" * 100_000 + b"\r\n",  # one too large
        b"X-Bad\x00Name: v\r\n",  # not a header at all
    ],
)
def test_bad_headers_are_4xx_not_500(router: Router, headers: bytes) -> None:
    answer = raw_exchange(router.port, b"GET /livez HTTP/1.1\r\nHost: x\r\n" + headers + b"\r\n")
    status = int(answer.split(b" ", 2)[1]) if answer else 0
    assert 400 <= status < 500, answer[:200]
    assert b"Traceback" not in answer
    assert router.call("GET", "/livez")[0] == 200  # still serving
    wait_until(
        lambda: "bad request from 127.0.0.1: HTTP 400" in router.proc.log(), what="the log line"
    )
    log = router.proc.log_path.read_text(errors="replace")
    assert "Traceback" not in log and "ERROR" not in log  # a client's fault: one DEBUG line


def test_no_open_proxy(router: Router) -> None:
    evil = f"127.0.0.1:{router.evil.port}"
    auth = f"Authorization: Bearer {SECRET}\r\n".encode()
    # (request head, the one status it must get): 400 for what the parsing rule refuses,
    # the worker's own 404 for paths that stay on the worker
    tricks = [
        (f"GET http://{evil}/x HTTP/1.1\r\nHost: {evil}\r\n".encode() + auth, 400),
        (f"GET http://{evil}/demo/x HTTP/1.1\r\nHost: {evil}\r\n".encode() + auth, 400),
        (f"GET /demo/x HTTP/1.1\r\nHost: {evil}\r\n".encode() + auth, 404),
        (f"GET //{evil}/x HTTP/1.1\r\nHost: x\r\n".encode() + auth, 400),
        (f"GET /demo//{evil}/x HTTP/1.1\r\nHost: x\r\n".encode() + auth, 404),
        (f"GET /demo/http://{evil}/x HTTP/1.1\r\nHost: x\r\n".encode() + auth, 404),
        (b"GET /demo/../api/v1/workers HTTP/1.1\r\nHost: x\r\n" + auth, 400),
        (b"GET /demo/%2e%2e/%2e%2e/etc/passwd HTTP/1.1\r\nHost: x\r\n" + auth, 400),
        (b"GET /demo/..%2F..%2Fapi HTTP/1.1\r\nHost: x\r\n" + auth, 400),
        (f"CONNECT {evil} HTTP/1.1\r\nHost: {evil}\r\n".encode() + auth, 400),
        (
            f"GET /demo/x HTTP/1.1\r\nHost: x\r\nX-Forwarded-Host: {evil}\r\n".encode() + auth,
            404,
        ),
    ]
    for trick, want in tricks:
        got = answers(raw_exchange(router.port, trick + b"Connection: close\r\n\r\n"))
        assert [status for status, _ in got] == [want], (trick, got)
        assert b"evil" not in got[0][1], trick
    assert router.evil.hits == []  # not one request left for anything but the worker


def test_admin_routes_need_an_admin_key(router: Router) -> None:
    wid = "0" * 16
    cases = [
        ("GET", "/api/v1/workers"),
        ("POST", f"/api/v1/workers/{wid}/drain"),
        ("DELETE", f"/api/v1/workers/{wid}"),
    ]
    for method, path in cases:
        assert router.call(method, path)[0] == 401
        assert router.call(method, path, headers={"Authorization": f"Bearer {SECRET}"})[0] == 403
        assert router.call(method, path, headers={"Authorization": f"Bearer {WRONG}"})[0] == 401
    status, _ = router.call(
        "POST",
        "/api/v1/workers",
        {"endpoint": "demo", "url": f"http://127.0.0.1:{router.evil.port}"},
        headers={"Authorization": f"Bearer {SECRET}"},
    )
    assert status == 403  # an ordinary key cannot add a worker, evil or not


def test_api_keys_never_appear_in_logs_metrics_or_errors(router: Router) -> None:
    for key in (SECRET, WRONG):
        router.call("POST", "/route", {"endpoint": "demo", "api_key": key})
        router.call("POST", "/route", {"endpoint": "nope", "api_key": key})
        router.call("POST", "/route", {"endpoint": "demo", "api_key": key, "cost": -1})
        router.call(
            "POST", "/demo/generate", {"inputs": "x"}, headers={"Authorization": f"Bearer {key}"}
        )
        router.call(
            "POST",
            "/v1/chat/completions",
            {"model": "nope"},
            headers={"Authorization": f"Key {key}"},
        )
    router.call("GET", "/metrics")
    # no wait: the router's log handler writes each record before the answer goes out
    seen = b"\n".join(router.bodies).decode(errors="replace") + router.proc.log_path.read_text(
        errors="replace"
    )
    assert "starting router" in seen  # the log was captured
    for key in (SECRET, WRONG):
        leaks = [line for line in seen.splitlines() if key in line]
        assert not leaks, leaks[:3]
