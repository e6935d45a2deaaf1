"""The deploy configs run: the compose file's router config and the Kubernetes one, each
as a real router process on a real Redis with synthetic workers that register with the
worker token from the environment, answer the README's first requests.

No Docker engine or cluster here: the processes are what the containers would run, with
the addresses (Redis, ports, the signing key's path) pointed at this machine.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import free_port
from tests.deploy.kube import ROOT
from tests.deploy.test_compose import clean_env, interpolate
from tests.e2e.procs import Proc, request, wait_until

DEPLOY = ROOT / "deploy"
KEYS = {"ROUTER_API_KEY": "k-api", "ROUTER_ADMIN_KEY": "k-admin", "ROUTER_WORKER_TOKEN": "k-wt"}

pytestmark = [pytest.mark.e2e, pytest.mark.redis]


def compose() -> dict[str, Any]:
    """The compose file with its variables at their defaults (the README's keys)."""
    doc = yaml.safe_load((DEPLOY / "docker-compose.yaml").read_text())
    return dict(interpolate(doc, clean_env()))


def compose_worker_args() -> list[str]:
    return [str(a) for a in compose()["services"]["worker-1"]["command"]]


def replace_flags(args: list[str], **values: str) -> list[str]:
    out = []
    for arg in args:
        flag = arg.split("=", 1)[0]
        name = flag.lstrip("-").replace("-", "_")
        out.append(f"{flag}={values[name]}" if name in values else arg)
    return out


@pytest.mark.parametrize(
    ("config", "endpoint"),
    [("compose/router.toml", "demo"), ("kustomize/base/router.toml", "llama")],
)
def test_router_config_serves_registered_workers(
    config: str, endpoint: str, redis_url: str, tmp_path: Path
) -> None:
    keys = dict(KEYS)
    if config.startswith("compose/"):  # the keys the README's compose example uses
        keys = {k: compose()["services"]["router"]["environment"][k] for k in KEYS}
    port = free_port()
    router_url = f"http://127.0.0.1:{port}"
    key = tmp_path / "signing.pem"
    procs = []
    try:
        keygen = Proc(
            "keygen", [sys.executable, "-m", "router", "keygen", "--out", str(key)], tmp_path
        ).start()
        assert keygen.proc is not None and keygen.proc.wait(30) == 0, keygen.log()
        env = {
            **keys,
            "ROUTER_SERVER_HOST": "127.0.0.1",
            "ROUTER_SERVER_PORT": str(port),
            "ROUTER_STORE_REDIS_URL": redis_url,
        }
        if "kustomize" in config:  # the Secret's mount path, here
            env["ROUTER_SIGNING_KEY_FILES"] = str(key)
        argv = [sys.executable, "-m", "router", "serve", "--config", str(DEPLOY / config)]
        router = Proc("router", argv, tmp_path, env=env).start()
        procs.append(router)
        wait_until(lambda: request("GET", f"{router_url}/readyz")[0] == 200, 30, "router ready")
        worker_ports = [free_port(), free_port()]
        for wp in worker_ports:
            args = replace_flags(
                compose_worker_args(),
                host="127.0.0.1",
                port=str(wp),
                public_url=f"http://127.0.0.1:{wp}",
                endpoint=endpoint,
                router_url=router_url,
            )
            worker = Proc(
                f"worker-{wp}",
                [sys.executable, "-m", "workers", *args],
                tmp_path,
                env={"WORKER_REGISTER_TOKEN": keys["ROUTER_WORKER_TOKEN"]},
            ).start()
            procs.append(worker)
        admin = {"Authorization": f"Bearer {keys['ROUTER_ADMIN_KEY']}"}

        def ready() -> bool:
            status, doc = request(
                "GET", f"{router_url}/api/v1/workers?endpoint={endpoint}", headers=admin
            )
            return status == 200 and sum(w["status"] == "ready" for w in doc["workers"]) == 2

        wait_until(ready, 30, "both workers registered and ready")
        user = {"Authorization": f"Bearer {keys['ROUTER_API_KEY']}"}
        status, doc = request(
            "POST",
            f"{router_url}/{endpoint}/generate",
            {"inputs": "Hello", "parameters": {"max_new_tokens": 8}},
            headers=user,
        )
        assert status == 200 and doc["generated_text"], doc
        status, ticket = request(
            "POST",
            f"{router_url}/route/",
            {"endpoint": endpoint, "api_key": keys["ROUTER_API_KEY"], "cost": 16},
        )
        assert status == 200 and ticket["url"] in {
            f"http://127.0.0.1:{wp}" for wp in worker_ports
        }, ticket
        text = request("GET", f"{router_url}/metrics")[1]
        assert "router_build_info{" in text and 'store="redis"' in text
    except BaseException:
        for p in procs:
            print(f"--- {p.name}\n{p.log()}")
        raise
    finally:
        for p in reversed(procs):
            p.kill()
