"""Two router processes on one Redis, as two hosts behind a plain load balancer would be.

Tickets from both replicas get distinct reqnums per worker, a replica's choices see the
load the other issued, and each worker is health-polled by one replica at a time.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

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

pytestmark = [pytest.mark.e2e, pytest.mark.redis]

INTERVAL_S = 0.25
# Unused tickets stay outstanding this long. Long enough that a slow run of the load test
# below (a busy machine) stays inside it: a ticket expiring mid-test lowers a worker's
# load under the test's own bookkeeping.
TICKET_TTL_S = 10.0


class CountingWorker:
    """A stand-in worker that answers /readyz and counts how often it was polled."""

    def __init__(self) -> None:
        counter = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path == "/readyz":
                    with counter.lock:
                        counter.polls.append(time.monotonic())
                body = b'{"ready": true}'
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.polls: list[float] = []
        self.lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def polls_between(self, start: float, end: float) -> int:
        with self.lock:
            return sum(start <= t < end for t in self.polls)


@dataclass
class Replicas:
    urls: list[str]
    worker_urls: list[str]
    counting: CountingWorker


@pytest.fixture
def replicas(tmp_path: Path, redis_url: str) -> Iterator[Replicas]:
    counting = CountingWorker()
    counting.thread.start()
    wports = [free_port(), free_port()]
    wurls = [f"http://127.0.0.1:{p}" for p in wports]
    ports = [free_port(), free_port()]
    urls = [f"http://127.0.0.1:{p}" for p in ports]
    procs: list[Proc] = []
    try:
        for i, port in enumerate(ports):
            d = tmp_path / f"r{i}"
            d.mkdir()
            cfg = router_config(
                d / "router.toml",
                port=port,
                store="redis",
                redis_url=redis_url,
                worker_urls=[*wurls, counting.url],
                interval_s=INTERVAL_S,
                algorithm="ed25519",
                ticket_ttl_s=TICKET_TTL_S,
            )
            procs.append(router_proc(cfg, d, name=f"router-{i}").start())
        # equal perf everywhere (the stand-in reports none: config's 100), so least_work
        # ranks workers by outstanding cost alone
        procs += [worker_proc(p, urls[0], tmp_path, "--perf", "100").start() for p in wports]
        for port in ports:
            wait_port(port)
        wait_until(
            lambda: all(set(statuses(u).values()) == {"ready"} for u in urls),
            what="every worker ready on both replicas",
        )
        yield Replicas(urls, wurls, counting)
    except BaseException:
        for p in procs:
            print(f"--- {p.name} ---\n{p.log()}")
        raise
    finally:
        for p in reversed(procs):
            p.kill()
        counting.server.shutdown()
        counting.server.server_close()


def route(router_url: str, cost: float, endpoint: str = "demo") -> dict[str, Any]:
    status, doc = request(
        "POST", f"{router_url}/route/", {"endpoint": endpoint, "api_key": "dev-key", "cost": cost}
    )
    assert status == 200 and "url" in doc, doc
    assert isinstance(doc, dict)
    return doc


def test_reqnums_are_distinct_across_replicas(replicas: Replicas) -> None:
    with ThreadPoolExecutor(16) as pool:
        tickets = list(pool.map(lambda i: route(replicas.urls[i % 2], 1), range(200)))
    pairs = [(t["url"], t["reqnum"]) for t in tickets]
    assert len(set(pairs)) == len(pairs)
    assert len({u for u, _ in pairs}) == 3  # both replicas spread over every worker


def test_a_replica_sees_the_load_the_other_issued(replicas: Replicas) -> None:
    # Tickets nobody uses stay outstanding for TICKET_TTL_S: all rounds must fit in it.
    # A issues big tickets, B small ones; with least_work on equal workers, B must pick
    # a worker with the least outstanding cost, counting A's tickets as well as its own.
    a, b = replicas.urls
    pending: dict[str, float] = {u: 0.0 for u in [*replicas.worker_urls, replicas.counting.url]}
    started = time.monotonic()
    for _ in range(6):
        t = route(a, 1000)
        pending[t["url"]] += 1000
        t = route(b, 1)
        assert time.monotonic() - started < TICKET_TTL_S - 1, "too slow for the ticket TTL"
        assert pending[t["url"]] == min(pending.values()), (t["url"], pending)
        pending[t["url"]] += 1
    # B alone never saw these costs: only the shared store can have steered it
    assert max(pending.values()) >= 2000


def test_each_worker_is_polled_by_one_replica_at_a_time(replicas: Replicas) -> None:
    time.sleep(0.5)  # leases settle after start
    start = time.monotonic()
    time.sleep(3.0)
    polls = replicas.counting.polls_between(start, start + 3.0)
    one_poller = 3.0 / INTERVAL_S  # 12 polls; two pollers would make ~24
    assert 0.5 * one_poller <= polls <= 1.5 * one_poller, polls
