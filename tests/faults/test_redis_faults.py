"""Redis faults against real router and worker processes: restarted empty, and paused.

What each test asserts is what a client saw (status, time to answer) and what was lost:
reqnums never go backwards, and every worker is found again without restarting anything.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import RedisServer, free_port
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

pytestmark = [pytest.mark.e2e, pytest.mark.redis]

ROUTE = {"endpoint": "demo", "api_key": "dev-key"}


@dataclass
class Stack:
    router_url: str
    static_url: str  # listed in the router's config
    registered_url: str  # known only because it registered itself
    procs: list[Proc]


@pytest.fixture
def stack(tmp_path: Path, redis_url: str) -> Iterator[Stack]:
    port, static_port, reg_port = free_port(), free_port(), free_port()
    router_url = f"http://127.0.0.1:{port}"
    static_url = f"http://127.0.0.1:{static_port}"
    cfg = router_config(
        tmp_path / "router.toml",
        port=port,
        store="redis",
        redis_url=redis_url,
        worker_urls=[static_url],
        interval_s=0.25,
    )
    procs = [
        router_proc(cfg, tmp_path).start(),
        worker_proc(static_port, router_url, tmp_path).start(),
    ]
    wait_port(port)
    procs.append(
        worker_proc(
            reg_port,
            router_url,
            tmp_path,
            "--register-token",
            "worker-token",
            "--register-interval-s",
            "0.5",
        ).start()
    )
    s = Stack(router_url, static_url, f"http://127.0.0.1:{reg_port}", procs)
    try:
        wait_until(
            lambda: statuses(router_url) == {static_url: "ready", s.registered_url: "ready"},
            what="both workers ready",
        )
        yield s
    except BaseException:
        for p in procs:
            print(f"--- {p.name} ---\n{p.log()}")
        raise
    finally:
        for p in reversed(procs):
            p.kill()


def timed_route(router_url: str) -> tuple[int, Any, float]:
    started = time.monotonic()
    status, doc = request("POST", f"{router_url}/route/", ROUTE)
    return status, doc, time.monotonic() - started


def reqnums(router_url: str, n: int) -> dict[str, int]:
    """The highest reqnum seen per worker URL over n tickets."""
    top: dict[str, int] = {}
    for _ in range(n):
        status, t, _ = timed_route(router_url)
        assert status == 200 and "url" in t, t
        top[t["url"]] = max(top.get(t["url"], 0), t["reqnum"])
    return top


def both_routable_again(router_url: str, before: dict[str, int]) -> dict[str, int]:
    got: dict[str, int] = {}

    def check() -> bool:
        status, t, _ = timed_route(router_url)
        if status == 200 and "url" in t:
            got.setdefault(t["url"], t["reqnum"])
        return set(got) == set(before)

    wait_until(check, timeout_s=20, what="both workers routable again")
    return got


def test_redis_restarted_empty_static_and_registered_workers_return(
    stack: Stack, redis_server: RedisServer
) -> None:
    before = reqnums(stack.router_url, 20)
    assert set(before) == {stack.static_url, stack.registered_url}
    redis_server.kill()
    with ThreadPoolExecutor(16) as pool:
        down = list(pool.map(lambda _: timed_route(stack.router_url), range(32)))
    assert all(s == 503 and d["error"]["code"] == "store_unavailable" for s, d, _ in down)
    assert max(t for _, _, t in down) < 3.0  # refused promptly, not queued behind Redis
    assert request("GET", f"{stack.router_url}/readyz")[0] == 503
    redis_server.start()  # empty: workers, reqnums, leases are all gone
    # the static worker comes back from config, the other by registering again
    after = both_routable_again(stack.router_url, before)
    for url, reqnum in after.items():
        assert reqnum > before[url], (url, reqnum, before[url])
    assert request("GET", f"{stack.router_url}/readyz")[0] == 200


def test_redis_paused_longer_than_the_command_timeout(
    stack: Stack, redis_server: RedisServer
) -> None:
    before = reqnums(stack.router_url, 20)
    assert redis_server.proc is not None
    redis_server.proc.send_signal(signal.SIGSTOP)
    try:
        paused_at = time.monotonic()
        with ThreadPoolExecutor(32) as pool:  # a burst of clients while Redis hangs
            burst = list(pool.map(lambda _: timed_route(stack.router_url), range(64)))
        assert all(s == 503 for s, _, _ in burst), {s for s, _, _ in burst}
        # store.timeout_s is 0.5: each answer comes within a few timeouts, none piles up
        assert max(t for _, _, t in burst) < 3.0
        assert time.monotonic() - paused_at < 10.0
        assert request("GET", f"{stack.router_url}/readyz")[0] == 503
        assert request("GET", f"{stack.router_url}/livez")[0] == 200
    finally:
        redis_server.proc.send_signal(signal.SIGCONT)
    # Redis kept its data: the router recovers by itself and reqnums keep increasing
    after = both_routable_again(stack.router_url, before)
    for url, reqnum in after.items():
        assert reqnum > before[url], (url, reqnum, before[url])
    status, _, took = timed_route(stack.router_url)
    assert status == 200 and took < 1.0
    assert request("GET", f"{stack.router_url}/readyz")[0] == 200
