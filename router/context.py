"""Everything a request handler needs, built once at startup and reached through `CTX`."""

from __future__ import annotations

import random
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from aiohttp import web

from router.auth import KeyRingAuth
from router.config import EndpointSettings, Settings
from router.health import HealthPoller
from router.metrics import Metrics
from router.signing import KeyRing
from router.snapshot import Snapshot
from router.state.base import Store


@dataclass(slots=True)
class RouterContext:
    settings: Settings
    endpoints: dict[str, EndpointSettings]
    auth: KeyRingAuth
    keyring: KeyRing
    metrics: Metrics
    store: Store
    snapshot: Snapshot
    replica_id: str
    session: aiohttp.ClientSession | None = None  # upstream client (health polls, proxy)
    health: HealthPoller | None = None  # for passive signals from proxy mode
    rng: random.Random = field(default_factory=random.Random)
    tick: int = 0  # round-robin position
    sign_pool: ThreadPoolExecutor | None = None  # None: tickets are signed on the loop
    next_refresh: float = 0.0  # monotonic time the snapshot is next re-read
    # (spawned count, [(worker id, configured worker)]): reconcile's list, built once
    configured: tuple[int, list[tuple[str, tuple[str, str, float, float | None, Any]]]] | None = (
        None
    )


CTX = web.AppKey("router_context", RouterContext)
