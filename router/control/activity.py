"""Inferences per endpoint: counted in memory on the data plane, flushed to the store.

Every ticket issued (ticket mode and proxy mode alike) counts one inference for its
endpoint; `flush()` adds this replica's counts to the store about once a second, so the
lifecycle leader sees every replica's last activity (Bytez's idle expiry, scale to
zero) without a store write per request.
"""

from __future__ import annotations

import logging
import time

from router.state.base import Store, StoreUnavailable

log = logging.getLogger(__name__)


class Activity:
    def __init__(self) -> None:
        self._counts: dict[str, int] = {}
        self._last: dict[str, float] = {}

    def note(self, endpoint: str, now: float | None = None) -> None:
        self._counts[endpoint] = self._counts.get(endpoint, 0) + 1
        self._last[endpoint] = time.time() if now is None else now

    def pending(self) -> dict[str, tuple[int, float]]:
        return {e: (n, self._last[e]) for e, n in self._counts.items()}

    async def flush(self, store: Store) -> None:
        """Add what was counted since the last flush to the store (run_once of its loop)."""
        if not self._counts:
            return
        batch = self.pending()
        self._counts, self._last = {}, {}
        try:
            await store.add_activity(batch)
        except StoreUnavailable:
            for e, (n, t) in batch.items():  # keep them for the next flush
                self._counts[e] = self._counts.get(e, 0) + n
                self._last[e] = max(self._last.get(e, 0.0), t)
            raise
