"""A router in process with the control plane on, from a TOML config like the demo's."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from aiohttp.test_utils import TestClient

from router.config import Settings
from router.context import RouterContext
from router.signing import KeyRing
from tests.router.helpers import router_client

ADMIN = {"Authorization": "Bearer admin-key"}
BYTEZ_ADMIN = {"Authorization": "Key admin-key"}

CONTROL_TOML = """
log_level = "info"
[server]
host = "127.0.0.1"
port = 0
[store]
backend = "{store}"
redis_url = "{redis_url}"
snapshot_interval_s = 0.05
[signing]
algorithm = "ed25519"
[control]
unknown_formats = "synthetic"
interval_s = 0.1
lease_s = 2
drain_timeout_s = 5
[[runtimes]]
format = "synthetic"
backend = "synthetic"
tokens_per_s = 200
ttft_ms = 20
perf = 400
ready_timeout_s = 30
[[models]]
name = "openai-community/gpt2"
task = "text-generation"
runtime = "synthetic"
required_ram_gb = 0.5
[[models]]
name = "EleutherAI/gpt-neo-2.7B"
task = "text-generation"
[[models]]
name = "stabilityai/stable-diffusion-2"
task = "text-to-image"
[[api_keys]]
name = "admin"
key = "admin-key"
admin = true
[[api_keys]]
name = "dev"
key = "dev-key"
endpoints = ["demo"]
[[api_keys]]
name = "team-a"
key = "team-a-key"
workspaces = ["team-a"]
[[api_keys]]
name = "team-b"
key = "team-b-key"
workspaces = ["team-b"]
"""


def control_settings(
    tmp: Path,
    *,
    store: str = "memory",
    redis_url: str = "",
    extra: str = "",
    state_file: Path | None = None,
) -> Settings:
    text = CONTROL_TOML.format(store=store, redis_url=redis_url or "redis://127.0.0.1:1/0")
    if state_file is not None:
        text = text.replace("[signing]", f'state_file = "{state_file}"\n[signing]')
    path = tmp / "router.toml"
    path.write_text(text + extra)
    return Settings.from_toml(path, env={})


@asynccontextmanager
async def control_router(
    settings: Settings, keyring: KeyRing | None = None
) -> AsyncIterator[tuple[TestClient[Any, Any], RouterContext]]:
    """The router in process; replicas of one fleet share `keyring` (as they share keys)."""
    async with router_client(settings, keyring) as (client, ctx):
        yield client, ctx
