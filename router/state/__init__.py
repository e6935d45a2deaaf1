"""Shared router state: the `Store` interface (base), the embedded `MemoryStore` and the
`RedisStore` for several replicas. `open_store` picks one from settings. The memory
store keeps control-plane documents in a state file (statefile) when configured."""

from __future__ import annotations

from router.config import StoreSettings
from router.state.base import Store, StoreUnavailable, WorkerRecord
from router.state.statefile import StateFileError

__all__ = ["StateFileError", "Store", "StoreUnavailable", "WorkerRecord", "open_store"]


def open_store(settings: StoreSettings) -> Store:
    if settings.backend == "redis":
        from router.state.redis import RedisStore

        return RedisStore(
            settings.redis_url, prefix=settings.key_prefix, timeout_s=settings.timeout_s
        )
    from router.state.memory import MemoryStore

    return MemoryStore(settings.state_file)
