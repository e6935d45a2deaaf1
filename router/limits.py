"""Per-key limits: a request rate, and proxied requests in flight (issue #4).

Both live in the store, so they hold across replicas. Keys without limits cost nothing
here: no store call. A key is named in the store by a prefix of its SHA-256 digest,
never by the key itself.
"""

from __future__ import annotations

import logging
import math
import secrets
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from router.config import ApiKeySettings
from router.context import RouterContext
from router.errors import ApiError
from router.state.base import StoreUnavailable

log = logging.getLogger(__name__)

_LEASE_SLACK_S = 30.0  # a slot's lease outlives the longest request by this much


def key_id(key: ApiKeySettings) -> str:
    return key.key_sha256[:24]


async def check_rate(ctx: RouterContext, key: ApiKeySettings, endpoint: str) -> None:
    """Count one request against the key's rate, or raise 429 with Retry-After."""
    if key.rate_per_s is None:
        return
    wait = await ctx.store.take_rate(key_id(key), key.rate_per_s, key.bucket, time.time())
    if wait > 0:
        ctx.metrics.child(ctx.metrics.limited, endpoint, "rate").inc()
        raise ApiError(
            429,
            "rate_limited",
            f"this API key is over its rate of {key.rate_per_s:g} requests/s",
            headers={"Retry-After": str(max(1, math.ceil(wait)))},
            retry_after_s=round(wait, 3),
        )


@asynccontextmanager
async def in_flight_slot(
    ctx: RouterContext, key: ApiKeySettings, endpoint: str, longest_s: float
) -> AsyncIterator[None]:
    """Hold one of the key's in-flight slots for the block, or raise 429."""
    if key.max_concurrent is None:
        yield
        return
    kid, token = key_id(key), secrets.token_hex(8)
    if not await ctx.store.acquire_slot(
        kid, key.max_concurrent, token, time.time(), longest_s + _LEASE_SLACK_S
    ):
        ctx.metrics.child(ctx.metrics.limited, endpoint, "concurrency").inc()
        raise ApiError(
            429,
            "too_many_in_flight",
            f"this API key already has {key.max_concurrent} requests in flight",
            headers={"Retry-After": "1"},
        )
    try:
        yield
    finally:
        # Runs on success, error and cancellation (client gone) alike.
        try:
            await ctx.store.release_slot(kid, token)
        except StoreUnavailable as exc:
            log.warning("could not release an in-flight slot (%s); its lease frees it", exc)
