"""End to end with real processes: router + two synthetic workers + redis-server."""

from __future__ import annotations

import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest

from router.client import RouterClient, Shape
from tests.conftest import RedisServer
from tests.e2e.procs import (
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

pytestmark = [pytest.mark.e2e, pytest.mark.redis]

INTERVAL_S = 0.25
PAYLOAD = {"inputs": "What is deep learning?", "parameters": {"max_new_tokens": 8}}


@dataclass
class Stack:
    router: Proc
    router_url: str
    workers: list[Proc]
    worker_urls: list[str]
    log_dir: Path

    def restart_worker(self, i: int) -> None:
        port = int(self.worker_urls[i].rsplit(":", 1)[1])
        self.workers[i] = worker_proc(
            port, self.router_url, self.log_dir, name=f"worker-{port}-again"
        ).start()
        wait_port(port)


@pytest.fixture
def stack(tmp_path: Path, redis_url: str) -> Iterator[Stack]:
    port = free_port()
    router_url = f"http://127.0.0.1:{port}"
    wports = [free_port(), free_port()]
    wurls = [f"http://127.0.0.1:{p}" for p in wports]
    cfg = router_config(
        tmp_path / "router.toml",
        port=port,
        store="redis",
        redis_url=redis_url,
        worker_urls=wurls,
        interval_s=INTERVAL_S,
    )
    router = router_proc(cfg, tmp_path).start()
    workers = [worker_proc(p, router_url, tmp_path).start() for p in wports]
    s = Stack(router, router_url, workers, wurls, tmp_path)
    try:
        wait_port(port)
        wait_until(lambda: set(statuses(router_url).values()) == {"ready"}, what="workers ready")
        yield s
    except BaseException:
        for p in [router, *s.workers]:
            print(f"--- {p.name} ---\n{p.log()}")
        raise
    finally:
        for p in [*s.workers, router]:
            p.kill()


def sse_events(url: str, body: Any) -> list[dict[str, Any]]:
    req = urllib.request.Request(
        url, data=orjson.dumps(body), headers={"Content-Type": "application/json"}
    )
    events = []
    with urllib.request.urlopen(req, timeout=10) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/event-stream")
        for line in resp:
            line = line.strip()
            if line.startswith(b"data:"):
                events.append(orjson.loads(line[5:]))
    return events


def shape1(ticket: dict[str, Any], payload: dict[str, Any]) -> dict[str, Any]:
    return {"auth_data": ticket, "payload": payload, "session_id": None}


def shape2(ticket: dict[str, Any], payload: dict[str, Any]) -> dict[str, Any]:
    return {**ticket, **payload}


@pytest.mark.parametrize("shape", [shape1, shape2])
def test_route_then_generate_plain_and_streaming(stack: Stack, shape: Any) -> None:
    t = route(stack.router_url, cost=8)
    assert t["url"] in stack.worker_urls
    status, doc = request("POST", f"{t['url']}/generate", shape(t, PAYLOAD))
    assert status == 200, doc
    text = doc["generated_text"]
    assert isinstance(text, str) and text
    # deterministic backend: the same prompt gives the same text on the other worker too
    t2 = route(stack.router_url, cost=8)
    status, doc2 = request("POST", f"{t2['url']}/generate", shape(t2, PAYLOAD))
    assert status == 200 and doc2["generated_text"] == text

    t3 = route(stack.router_url, cost=8)
    events = sse_events(f"{t3['url']}/generate_stream", shape(t3, PAYLOAD))
    assert len(events) == 8
    assert "".join(e["token"]["text"] for e in events).strip() == text.strip()
    assert events[-1]["generated_text"] is not None


def test_router_client_against_router_and_worker_processes(stack: Stack) -> None:
    client = RouterClient(stack.router_url, "dev-key", timeout_s=10)
    shapes: list[Shape] = ["auth_data", "merged", "header"]
    for shape in shapes:
        ticket = client.route("demo", cost=8)
        assert client.call(ticket, "/generate", PAYLOAD, shape=shape)["generated_text"]
    ticket = client.route("demo", cost=8)
    chunks = list(client.stream(ticket, "/generate_stream", PAYLOAD, shape="header"))
    assert b"".join(chunks).count(b"data:") == 8


def test_bad_tickets_are_refused(stack: Stack) -> None:
    t = route(stack.router_url, cost=8)
    url = t["url"]
    # tampered: any signed field changed after signing
    status, doc = request("POST", f"{url}/generate", shape1({**t, "cost": 1.0}, PAYLOAD))
    assert status == 401 and doc["error"]["code"] == "ticket_bad_signature"
    # another worker's ticket
    other = next(u for u in stack.worker_urls if u != url)
    status, doc = request("POST", f"{other}/generate", shape1(t, PAYLOAD))
    assert status == 401 and doc["error"]["code"] == "ticket_wrong_url"
    # valid once, then replayed
    status, _ = request("POST", f"{url}/generate", shape1(t, PAYLOAD))
    assert status == 200
    status, doc = request("POST", f"{url}/generate", shape2(t, PAYLOAD))
    assert status == 401 and doc["error"]["code"] == "ticket_replayed"
    # no ticket at all
    status, doc = request("POST", f"{url}/generate", PAYLOAD)
    assert status == 401 and doc["error"]["code"] == "ticket_missing"
    # expired (tickets live 3 s in this stack; the worker allows no clock skew)
    old = route(stack.router_url, cost=8)
    time.sleep(max(0.0, old["expires_at"] - time.time()) + 0.2)
    status, doc = request("POST", f"{old['url']}/generate", shape1(old, PAYLOAD))
    assert status == 401 and doc["error"]["code"] == "ticket_expired"


def test_killed_worker_leaves_rotation_and_returns(stack: Stack) -> None:
    victim = stack.worker_urls[0]
    stack.workers[0].kill()
    killed_at = time.monotonic()
    wait_until(
        lambda: statuses(stack.router_url)[victim] == "unhealthy",
        timeout_s=5,
        what="victim unhealthy",
    )
    assert time.monotonic() - killed_at <= 2 * INTERVAL_S + 0.3  # two intervals + slack
    for _ in range(20):
        assert route(stack.router_url)["url"] != victim
    stack.restart_worker(0)
    wait_until(lambda: statuses(stack.router_url)[victim] == "ready", what="victim back")
    urls = {route(stack.router_url)["url"] for _ in range(20)}
    assert victim in urls


def test_no_ready_worker_gives_status_breakdown(stack: Stack) -> None:
    for w in stack.workers:
        w.kill()
    wait_until(
        lambda: set(statuses(stack.router_url).values()) == {"unhealthy"}, what="all unhealthy"
    )
    # /route answers from a snapshot of the store, re-read a few times a second
    wait_until(lambda: "url" not in route(stack.router_url), what="snapshot")
    doc = route(stack.router_url)
    assert "url" not in doc
    assert doc["status"] == {"ready": 0, "loading": 0, "unhealthy": 2, "draining": 0}
    assert doc["request_idx"] > 0 and doc["retry_after_s"] > 0


def test_redis_restarted_empty(stack: Stack, redis_server: RedisServer) -> None:
    last: dict[str, int] = {}
    for _ in range(10):
        t = route(stack.router_url)
        last[t["url"]] = t["reqnum"]
    redis_server.kill()
    started = time.monotonic()
    status, doc = request(
        "POST", f"{stack.router_url}/route/", {"endpoint": "demo", "api_key": "dev-key"}
    )
    assert status == 503 and doc["error"]["code"] == "store_unavailable"
    assert time.monotonic() - started < 2.0
    redis_server.start()
    got: dict[str, int] = {}

    def both_back() -> bool:
        status, doc = request(
            "POST", f"{stack.router_url}/route/", {"endpoint": "demo", "api_key": "dev-key"}
        )
        if status == 200 and "url" in doc:
            got.setdefault(doc["url"], doc["reqnum"])
            # the new ticket is served: the worker accepts the post-restart reqnums
            s, _ = request("POST", f"{doc['url']}/generate", shape1(doc, PAYLOAD))
            assert s == 200
        return set(got) == set(last)

    wait_until(both_back, what="both workers routable after Redis restart")
    for url, reqnum in got.items():
        assert reqnum > last[url], (url, reqnum, last[url])
