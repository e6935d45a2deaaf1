"""The memory store's prefix index: which worker was sent which prompt blocks, and when.

It models each worker's KV cache (docs/prefix.md): a block recorded for a worker stays
until `ttl_s` passes without it being recorded again, or until the worker holds more
than `max_blocks` (least recently used first), or until the worker leaves. A request's
blocks are recorded deepest first, so within one request the deepest block is the
oldest and goes first: a worker keeps whole prefixes, which is what `prefix.deepest`
relies on. The Redis store keeps the same index in Redis (PREFIX_LOOKUP and
PREFIX_RECORD in redis_scripts.py); one case table (tests/router/rule_cases.py) checks
both.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

from router.prefix import deepest

# Expired blocks one record step forgets per worker at most (both stores alike): bounds
# the Redis script's run time; the rest go on the next record.
PREFIX_SWEEP_MAX = 256


class PrefixIndex:
    def __init__(self) -> None:
        self._holders: dict[tuple[str, str], dict[str, float]] = {}  # block -> wid -> time
        self._lru: dict[str, OrderedDict[str, float]] = {}  # wid -> block -> time, oldest first
        self._endpoint: dict[str, str] = {}

    def lookup(
        self, endpoint: str, hashes: Sequence[str], now: float, ttl_s: float
    ) -> tuple[int, list[str]]:
        """(depth, holders): see `prefix.deepest`; entries older than `ttl_s` count as gone."""
        oldest = now - ttl_s
        holders = self._holders

        def at(i: int) -> list[str]:
            h = holders.get((endpoint, hashes[i - 1]))
            return [w for w, t in h.items() if t >= oldest] if h else []

        return deepest(len(hashes), at)

    def record(
        self,
        endpoint: str,
        wid: str,
        hashes: Sequence[str],
        now: float,
        ttl_s: float,
        max_blocks: int,
    ) -> None:
        """Remember that `wid` was sent these blocks at `now`, then age its entries out."""
        lru = self._lru.get(wid)
        if lru is None:
            lru = self._lru[wid] = OrderedDict()
            self._endpoint[wid] = endpoint
        holders = self._holders
        for h in reversed(hashes):
            holders.setdefault((endpoint, h), {})[wid] = now
            lru[h] = now
            lru.move_to_end(h)
        oldest, swept = now - ttl_s, 0
        while lru and swept < PREFIX_SWEEP_MAX:
            h, t = next(iter(lru.items()))
            if t >= oldest:
                break
            self._drop(endpoint, wid, lru, h)
            swept += 1
        while len(lru) > max_blocks:
            self._drop(endpoint, wid, lru, next(iter(lru)))

    def _drop(self, endpoint: str, wid: str, lru: OrderedDict[str, float], h: str) -> None:
        del lru[h]
        key = (endpoint, h)
        held = self._holders.get(key)
        if held is not None:
            held.pop(wid, None)
            if not held:
                del self._holders[key]

    def forget(self, wid: str) -> None:
        """Drop every entry of a worker that left."""
        lru = self._lru.pop(wid, None)
        endpoint = self._endpoint.pop(wid, "")
        if lru:
            for h in list(lru):
                self._drop(endpoint, wid, lru, h)

    def blocks(self, wid: str) -> int:
        """Blocks held for `wid` (tests, the bench)."""
        return len(self._lru.get(wid, ()))
