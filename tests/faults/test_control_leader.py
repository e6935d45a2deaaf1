"""Two router processes on one Redis: the control-plane leader is SIGKILLed, the other
replica takes the lease within a few seconds and runs the endpoint's workers again."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from router.signing import write_private_key
from tests.conftest import free_port
from tests.e2e.procs import Proc, request, router_config, router_proc, wait_port, wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.redis]

CONTROL = """
[control]
interval_s = 0.2
lease_s = 2
[[endpoints]]
name = "scaled"
default_cost = 10
[endpoints.health]
interval_s = 0.2
healthy_after = 1
[endpoints.local]
backend = "synthetic"
perf = 400
ttft_ms = 10
[endpoints.autoscaling]
min_workers = 1
max_workers = 1
"""


def leads(p: Proc) -> bool:
    return "now leads the control plane" in p.log_path.read_text(errors="replace")


def scaled_works(url: str) -> bool:
    status, _ = request(
        "POST",
        f"{url}/scaled/generate",
        {"inputs": "hi", "parameters": {"max_new_tokens": 2}},
        headers={"Authorization": "Bearer admin-key"},
    )
    return status == 200


def test_a_killed_leader_is_replaced(tmp_path: Path, redis_url: str) -> None:
    key = tmp_path / "k.pem"
    write_private_key(key, "ed25519")  # replicas share their signing key
    procs: list[Proc] = []
    urls = []
    try:
        for i in range(2):
            d = tmp_path / f"r{i}"
            d.mkdir()
            port = free_port()
            cfg = router_config(
                d / "router.toml", port=port, store="redis", redis_url=redis_url, worker_urls=[]
            )
            text = cfg.read_text().replace(
                'algorithm = "rsa"', f'algorithm = "ed25519"\nkey_files = ["{key}"]'
            )
            cfg.write_text(text + CONTROL)
            procs.append(router_proc(cfg, d, name=f"router-{i}").start())
            urls.append(f"http://127.0.0.1:{port}")
            wait_port(port)
        wait_until(lambda: any(leads(p) for p in procs), what="a leader")
        wait_until(lambda: all(scaled_works(u) for u in urls), timeout_s=30, what="served")
        leader = next(i for i, p in enumerate(procs) if leads(p))
        other = 1 - leader
        procs[leader].kill()  # SIGKILL: no lease handed over, its workers die with it
        killed = time.monotonic()
        wait_until(lambda: leads(procs[other]), timeout_s=15, what="a new leader")
        took_over = time.monotonic() - killed
        assert took_over < 2 + 2 * 0.2 + 2.0, took_over  # the lease, a tick or two, slack
        wait_until(lambda: scaled_works(urls[other]), timeout_s=30, what="served again")
    except BaseException:
        for p in procs:
            print(f"--- {p.name} ---\n{p.log()}")
        raise
    finally:
        for p in procs:
            p.kill()
