"""The control plane as an app resource: providers, the lifecycle loop, jobs, activity.

`control_ctx` is one `cleanup_ctx` step of the router app: it starts the loops (each a
named, owned task with a `run_once`) and, at shutdown, stops them, hands the leader
lease over and stops every worker this replica started. The local provider needs the
router's own URL (its workers fetch the router's keys from it), known only once the
listening socket is bound: the site resolves `LISTENING` and the loop waits for it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

from aiohttp import web

from router.context import CTX
from router.control import avesha, bytez
from router.control.jobs import Jobs
from router.control.lifecycle import LEASE, Lifecycle
from router.control.providers.base import Provider
from router.control.settings import ControlSettings
from router.loops import repeat

log = logging.getLogger(__name__)

# The router's base URL once it listens (set by router/proxy/site.py).
LISTENING = web.AppKey("listening_url", asyncio.Future)
# Which replicas run the control loops at all (`serve --processes N`: the first only).
CONTROL_ENABLED = web.AppKey("control_enabled", bool)


@dataclass(slots=True)
class Control:
    """What the control-plane task made, once the router listens (tests read it)."""

    providers: dict[str, Provider] = field(default_factory=dict)
    lifecycle: Lifecycle | None = None
    job_provider: Provider | None = None


CONTROL = web.AppKey("control", Control)
_ACTIVITY_FLUSH_S = 1.0


def listening(app: web.Application, url: str) -> None:
    """Tell the control plane where the router listens (called by the site)."""
    fut = app.get(LISTENING)
    if fut is not None and not fut.done():
        fut.set_result(url)
    if CTX in app:
        app[CTX].listen_url = url


def providers_for(
    router_url: str, log_dir: Path | None, control: ControlSettings | None = None
) -> dict[str, Provider]:
    """The providers endpoints name; `kubernetes` when it is the default (its client
    library is an optional extra, imported only then)."""
    from router.control.providers.local import LocalProvider

    providers: dict[str, Provider] = {"local": LocalProvider(router_url, log_dir)}
    if control is not None and control.default_provider == "kubernetes":
        from router.control.providers.kubernetes import KubernetesProvider

        providers["kubernetes"] = KubernetesProvider(
            control.kubernetes, control.public_url or router_url
        )
    return providers


async def control_ctx(app: web.Application) -> AsyncIterator[None]:
    ctx = app[CTX]
    app[LISTENING] = asyncio.get_running_loop().create_future()
    tasks = [
        asyncio.create_task(
            ctx.activity.run_forever(ctx.store, _ACTIVITY_FLUSH_S), name="activity-flush"
        )
    ]
    control = app[CONTROL] = Control()
    if app.get(CONTROL_ENABLED, True):

        async def run() -> None:
            url = await app[LISTENING]
            control.providers.update(providers_for(url, None, ctx.settings.control))
            lifecycle = control.lifecycle = Lifecycle(ctx, control.providers, ctx.replica_id)
            # jobs run workers of no endpoint: a provider of their own, which the
            # lifecycle loop (which stops workers of unknown endpoints) never sees
            control.job_provider = providers_for(url, None)["local"]
            jobs = Jobs(ctx, control.job_provider)

            async def step() -> None:
                leader = await lifecycle.run_once()
                await jobs.run_once(leader)

            try:
                await repeat(step, ctx.settings.control.interval_s, "control plane")
            finally:
                await jobs.close()

        tasks.append(asyncio.create_task(run(), name="control-plane"))
    yield
    for task in tasks:
        task.cancel()
    for task in tasks:
        with contextlib.suppress(asyncio.CancelledError):
            await task
    with contextlib.suppress(Exception):
        await ctx.activity.flush(ctx.store)
    if control.lifecycle is not None and control.lifecycle.leader:
        with contextlib.suppress(Exception):
            await ctx.store.release_lease(LEASE, ctx.replica_id)
    for provider in [*control.providers.values(), control.job_provider]:
        if provider is not None:
            await provider.close()


def add_routes(app: web.Application) -> None:
    avesha.add_routes(app)
    bytez.add_routes(app)


MIDDLEWARES = (avesha.avesha_errors, bytez.bytez_errors)
