"""deploy/docker-compose.yaml: the router on Redis and two synthetic workers, checked
without a Docker engine. `docker compose config` (or the older `docker-compose config`)
validates and interpolates the file where installed; the checks below run on its output,
or on the file as YAML with `${VAR:-default}` filled in where neither is installed."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from router.config import Settings
from workers.cli import parser as worker_parser
from workers.cli import settings_from_args

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "deploy" / "docker-compose.yaml"


def compose_command() -> list[str] | None:
    """A Compose that can run `config` here (no engine needed for it), or None."""
    if shutil.which("docker"):
        run = subprocess.run(["docker", "compose", "version"], capture_output=True, timeout=30)
        if run.returncode == 0:
            return ["docker", "compose"]
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    return None


def interpolate(value: Any, env: dict[str, str]) -> Any:
    """Compose's `${VAR}` / `${VAR:-default}` over a parsed file, as `config` does."""
    if isinstance(value, dict):
        return {k: interpolate(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, env) for v in value]
    if isinstance(value, str):
        return re.sub(
            r"\$\{(\w+)(?::-([^}]*))?\}",
            lambda m: env.get(m.group(1)) or (m.group(2) or ""),
            value,
        )
    return value


def clean_env() -> dict[str, str]:
    """The environment without the file's variables, so their defaults are what is read."""
    names = set(re.findall(r"\$\{(\w+)", COMPOSE.read_text()))
    return {k: v for k, v in os.environ.items() if k not in names}


def rendered() -> dict[str, Any]:
    compose = compose_command()
    env = clean_env()
    if compose is None:
        doc = yaml.safe_load(COMPOSE.read_text())  # anchors and `<<` merges resolved
        return {k: v for k, v in interpolate(doc, env).items() if not k.startswith("x-")}
    run = subprocess.run(
        [*compose, "-f", str(COMPOSE), "config"],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        cwd=ROOT,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    return dict(yaml.safe_load(run.stdout))


@pytest.fixture(scope="module")
def doc() -> dict[str, Any]:
    return rendered()


def as_dict(env: Any) -> dict[str, str]:
    if isinstance(env, list):
        return dict(item.split("=", 1) for item in env)
    return {k: str(v) for k, v in (env or {}).items()}


def command(service: dict[str, Any]) -> list[str]:
    cmd = service["command"]
    return cmd.split() if isinstance(cmd, str) else [str(c) for c in cmd]


def test_services(doc: dict[str, Any]) -> None:
    assert set(doc["services"]) == {"redis", "router", "worker-1", "worker-2"}


def test_router_builds_from_the_repository_and_runs_on_redis(
    doc: dict[str, Any], tmp_path: Path
) -> None:
    router = doc["services"]["router"]
    context = (COMPOSE.parent / router["build"]["context"]).resolve()
    assert context == ROOT and (context / router["build"]["dockerfile"]).is_file()
    args = command(router)
    assert args[:2] == ["serve", "--config"]
    mounts = {}
    for volume in router["volumes"]:
        if isinstance(volume, str):
            source, target = volume.split(":")[:2]
        else:
            source, target = volume["source"], volume["target"]
        mounts[target] = (COMPOSE.parent / source).resolve()
    config = mounts[args[2]]
    env = as_dict(router["environment"])
    assert {"ROUTER_API_KEY", "ROUTER_ADMIN_KEY", "ROUTER_WORKER_TOKEN"} <= set(env)
    settings = Settings.from_toml(config, env=env)
    assert settings.server.host == "0.0.0.0"
    assert settings.store.backend == "redis"
    assert urlsplit(settings.store.redis_url).hostname == "redis"
    assert router["depends_on"]["redis"]["condition"] == "service_healthy"
    ports = [str(p.get("published")) if isinstance(p, dict) else p for p in router["ports"]]
    assert any(str(settings.server.port) in p for p in ports)
    redis = doc["services"]["redis"]
    redis_cmd = command(redis)
    assert redis_cmd[redis_cmd.index("--appendonly") + 1] == "yes"


@pytest.mark.parametrize("name", ["worker-1", "worker-2"])
def test_workers_register_with_the_routers_worker_token(
    doc: dict[str, Any], name: str, tmp_path: Path
) -> None:
    router = doc["services"]["router"]
    worker = doc["services"][name]
    assert worker["image"] == router["image"]  # the router's image has inference-worker
    entrypoint = worker["entrypoint"]
    assert (entrypoint if isinstance(entrypoint, list) else entrypoint.split()) == [
        "inference-worker"
    ]
    args = worker_parser().parse_args(command(worker))
    settings = settings_from_args(args)
    assert settings.backend == "synthetic" and settings.host == "0.0.0.0"
    assert urlsplit(settings.router_url or "").hostname == "router"
    assert urlsplit(settings.public_url).hostname == name  # the name on this network
    config_env = as_dict(router["environment"])
    token = as_dict(worker["environment"])["WORKER_REGISTER_TOKEN"]
    assert token and token == config_env["ROUTER_WORKER_TOKEN"]
    router_config = COMPOSE.parent / "compose" / "router.toml"
    assert Settings.from_toml(router_config, env=config_env).endpoint(settings.endpoint)
    assert "/readyz" in " ".join(worker["healthcheck"]["test"])
