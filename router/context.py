"""What every request handler shares, built once by the app's first `cleanup_ctx` step.

Long-lived resources that come later in start-up (the worker connection pool, the
health poller, the proxy core) are not fields here: each is built by its own
`cleanup_ctx` step and reached through its own typed `web.AppKey` (router/app.py).
"""

from __future__ import annotations

import random
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from aiohttp import web

from router.auth import KeyRingAuth
from router.config import EndpointSettings, Settings
from router.control.activity import Activity
from router.control.registry import Registry
from router.fleet import Fleet
from router.hold import Holds
from router.metrics import Metrics
from router.signing import KeyRing
from router.snapshot import Snapshot
from router.state.base import Store


@dataclass(slots=True)
class RouterContext:
    settings: Settings
    endpoints: dict[str, EndpointSettings]  # the registry's live view (changes in place)
    registry: Registry
    auth: KeyRingAuth
    keyring: KeyRing
    metrics: Metrics
    store: Store
    snapshot: Snapshot  # read it freely; write worker state only through `fleet`
    fleet: Fleet
    holds: Holds  # requests waiting for a worker (cold starts, a full fleet)
    replica_id: str
    sign_pool: ThreadPoolExecutor | None = None  # None: tickets are signed on the loop
    activity: Activity = field(default_factory=Activity)  # inferences per endpoint
    rng: random.Random = field(default_factory=random.Random)
    tick: int = 0  # round-robin position
    listen_url: str = ""  # the router's own base URL, once its socket is bound (the site)


CTX = web.AppKey("router_context", RouterContext)
