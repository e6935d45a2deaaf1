"""The store interface shared by the memory and Redis stores (docs/architecture.md).

The store owns everything replicas must agree on: worker records and health, reqnum
counters, outstanding tickets (ticket-mode load) and health-poll leases; and for the
control plane (docs/control-plane.md) versioned documents, the leader lease and endpoint activity.
The router reads worker records through a local snapshot and writes through these
methods.
"""

from __future__ import annotations

import hashlib
import math
import operator
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import Any, Literal

from router.balancer import Mode

Status = Literal["loading", "ready", "unhealthy", "draining"]
STATUSES: tuple[Status, ...] = ("ready", "loading", "unhealthy", "draining")
Source = Literal["static", "registered", "spawned"]


# Demand history is kept this long per endpoint: the autoscaler's long window and more.
DEMAND_KEEP_S = 180


class StoreUnavailable(Exception):
    """The store cannot be reached; callers answer 503 and try again later."""


def worker_id(endpoint: str, url: str) -> str:
    """Derive a worker's id from endpoint and URL, so every replica names it alike."""
    return hashlib.sha256(f"{endpoint}\0{url}".encode()).hexdigest()[:16]


# A ticket's cost is counted in integer milli-units (quantize), so that a worker's pending
# load is an exact integer sum: adding and removing costs brings it back to exactly 0
# (with floats, 1e308 + 100 - 1e308 == 0 loses the 100). Redis sums it with HINCRBY, and
# its Lua scripts read it as a double, exact to 2**53 milli-units: ~9e12 cost units
# outstanding per worker (with costs <= 1e9, ~9,000 max-cost tickets; at the per-ticket
# ceiling MAX_TICKET_MCOST, 9).
MCOST_PER_COST = 1000
MAX_TICKET_MCOST = 10**15  # a ticket counts at most 1e12 cost units (router/cost.py's bound)


def quantize(cost: float) -> int:
    """A ticket's cost in integer milli-units, at most MAX_TICKET_MCOST (cost >= 0, finite)."""
    if cost * MCOST_PER_COST >= MAX_TICKET_MCOST:
        return MAX_TICKET_MCOST
    return round(cost * MCOST_PER_COST)


@dataclass(slots=True)
class WorkerRecord:
    """One worker as stored. `load`/`requests` include outstanding tickets (ticket mode)."""

    id: str
    endpoint: str
    url: str
    perf: float
    max_load: float | None = None
    source: Source = "static"
    owner: str = ""  # who registered it (a digest of its token); "" for config workers
    status: Status = "loading"
    admin_drain: bool = False
    ok_streak: int = 0
    fail_streak: int = 0
    last_ok: float = 0.0  # last successful poll (registration time until then)
    reported_cost: float = 0.0
    reported_requests: int = 0
    max_reqnum_seen: int = 0
    pending_mcost: int = 0  # tickets issued above max_reqnum_seen, not yet expired (quantize)
    pending_requests: int = 0
    registered_at: float = 0.0

    def copy(self) -> WorkerRecord:
        """A copy, five times as fast as dataclasses.replace (the memory store hands the
        snapshot a copy of every record on each refresh: 1,000 took 3 ms that way)."""
        return WorkerRecord(*_record_fields(self))

    @property
    def pending_cost(self) -> float:
        """The outstanding tickets' cost in cost units: the nearest float to the exact sum."""
        return self.pending_mcost / MCOST_PER_COST

    @pending_cost.setter
    def pending_cost(self, cost: float) -> None:
        self.pending_mcost = quantize(cost)

    @property
    def load(self) -> float:
        return self.reported_cost + self.pending_mcost / MCOST_PER_COST

    @property
    def requests(self) -> int:
        return self.reported_requests + self.pending_requests

    @property
    def ready(self) -> bool:
        return self.status == "ready"

    def public(self) -> dict[str, Any]:
        """The admin API's view of the worker."""
        return {
            "id": self.id,
            "endpoint": self.endpoint,
            "url": self.url,
            "perf": self.perf,
            "max_load": self.max_load,
            "source": self.source,
            "status": self.status,
            "load": self.load,
            "inflight_requests": self.requests,
            "max_reqnum_seen": self.max_reqnum_seen,
            "last_ok": self.last_ok or None,
        }


_record_fields = operator.attrgetter(*(f.name for f in fields(WorkerRecord)))


@dataclass(frozen=True, slots=True)
class Issued:
    """The outcome of a successful atomic pick: who, and the numbers for the ticket."""

    worker_id: str
    url: str
    reqnum: int
    request_idx: int
    load: float  # the worker's load after this ticket
    pending_mcost: int  # the worker's pending load after this ticket (WorkerRecord's)


# Where a finished proxied request's cost was taken from (see Store.release).
Released = Literal["pending", "reported"] | None


@dataclass(frozen=True, slots=True)
class HealthUpdate:
    """What one health poll decided, written only if the status is still `expected`."""

    expected: Status
    status: Status
    ok_streak: int
    fail_streak: int
    last_ok: float
    report: tuple[float, int, int] | None  # (inflight_cost, inflight_requests, max_reqnum_seen)
    perf: float | None = None


class Store(ABC):
    """State shared between router replicas."""

    @abstractmethod
    async def ping(self) -> None:
        """Raise StoreUnavailable if the store cannot serve."""

    @abstractmethod
    async def upsert_worker(
        self,
        endpoint: str,
        url: str,
        perf: float,
        max_load: float | None,
        source: Source,
        now: float,
        owner: str = "",
    ) -> WorkerRecord:
        """Add a worker (status loading), or update perf/max_load of a known one that has
        the same `source` and `owner` (else leave it as it is); return it as stored.

        A record whose source or owner differs from the caller's is a refusal: a
        registration cannot change a configured worker, nor one another token registered.
        """

    @abstractmethod
    async def remove_worker(self, wid: str) -> bool:
        """Forget a worker; True if it existed."""

    @abstractmethod
    async def get_worker(self, wid: str) -> WorkerRecord | None: ...

    @abstractmethod
    async def list_workers(self) -> list[WorkerRecord]:
        """Every worker of every endpoint (the snapshot refresh reads this)."""

    @abstractmethod
    async def drain_worker(self, wid: str) -> WorkerRecord | None:
        """Mark a worker draining until removed (admin action)."""

    @abstractmethod
    async def record_health(self, wid: str, update: HealthUpdate) -> bool:
        """Apply a poll's outcome if the status is still `update.expected`; True if written."""

    @abstractmethod
    async def issue(
        self,
        candidates: Sequence[str],
        mode: Mode,
        cost: float,
        now: float,
        ttl_s: float,
        request_idx: int,
    ) -> tuple[Issued | None, int]:
        """Atomically pick among `candidates` with fresh load, bump its reqnum, add the ticket.

        Returns the ticket numbers (None if no candidate is ready and fits) and the
        request_idx: the one given, or a new one when `request_idx` <= 0. A missing reqnum
        counter starts at unix_time_ms * 1000, so reqnums keep growing even after the store
        lost its data. The ticket counts `quantize(cost)` milli-units, and the choice is
        made with that cost.
        """

    @abstractmethod
    async def release(self, wid: str, reqnum: int, cost: float) -> Released:
        """Take a finished request's cost off its worker's load (proxy mode).

        "pending": the ticket was still outstanding and is forgotten. "reported": the
        worker had reported seeing it, so its cost sits in the reported load, which comes
        down by `cost` until the next report says exactly. None: nothing to release.
        Call it once per ticket.
        """

    # The prefix index of cache_aware routing (router/prefix.py, docs/prefix.md): which
    # worker was sent which prompt blocks, shared by every replica.
    @abstractmethod
    async def prefix_lookup(
        self, endpoint: str, hashes: Sequence[str], now: float, ttl_s: float
    ) -> tuple[int, list[str]]:
        """(depth, holders): the most leading `hashes` some worker of `endpoint` holds
        (recorded within `ttl_s`), and the workers that hold that many (`prefix.deepest`).
        One round trip on Redis; lookups of one event-loop pass share it."""

    @abstractmethod
    async def prefix_record(
        self,
        endpoint: str,
        wid: str,
        hashes: Sequence[str],
        now: float,
        ttl_s: float,
        max_blocks: int,
    ) -> None:
        """Remember that `wid` was sent these blocks; age its entries out (older than
        `ttl_s`, least recently used beyond `max_blocks`). May return before the write
        is done (Redis batches them); a lost write only costs a cache miss."""

    @abstractmethod
    async def set_perf(self, wid: str, perf: float) -> bool:
        """Set a known worker's perf (measured: router/speed.py); True if it exists."""

    async def settle(self) -> None:
        """Wait until the writes that may return early (prefix_record) are done."""
        return None

    @abstractmethod
    async def take_rate(self, key_id: str, rate_per_s: float, burst: float, now: float) -> float:
        """Count one request against a key's rate (GCRA, see `gcra`): 0.0 if allowed,
        else the seconds until one would be (and nothing is counted)."""

    @abstractmethod
    async def acquire_slot(
        self, key_id: str, limit: int, token: str, now: float, lease_s: float
    ) -> bool:
        """Hold one of a key's `limit` in-flight slots under `token` until released or
        `now + lease_s`; False if all are held."""

    @abstractmethod
    async def release_slot(self, key_id: str, token: str) -> None:
        """Give back the slot held under `token` (no-op if it is gone)."""

    @abstractmethod
    async def claim_leases(self, wids: Sequence[str], holder: str, ttl_s: float) -> set[str]:
        """Take or renew the health-poll lease of each worker; return those `holder` holds."""

    # Control-plane documents: JSON bytes, each with a version for compare-and-set. A
    # version comes from its kind's counter (docs_version): versions of a kind never
    # repeat, so a name deleted and created again never matches a stale expect_version.
    @abstractmethod
    async def put_doc(self, kind: str, name: str, doc: bytes, expect_version: int) -> int | None:
        """Write `doc` if the stored version is `expect_version` (0: only if absent).
        Return the new version (>= 1), or None when the stored version differs (someone
        else wrote first): two replicas creating one name at once, exactly one wins.

        `kind` is a short identifier without ':'; `doc` is UTF-8 (JSON): ValueError else.
        """

    @abstractmethod
    async def get_doc(self, kind: str, name: str) -> tuple[int, bytes] | None: ...

    @abstractmethod
    async def delete_doc(self, kind: str, name: str, expect_version: int | None = None) -> bool:
        """Delete (only at `expect_version` when given); True if it was deleted."""

    @abstractmethod
    async def list_docs(self, kind: str) -> dict[str, tuple[int, bytes]]:
        """Every document of `kind`: name -> (version, doc).

        Read `docs_version` first: a write after it shows as a change on the next poll.
        """

    @abstractmethod
    async def docs_version(self, kind: str) -> int:
        """A number that changes whenever any document of `kind` is written or deleted
        (replicas poll it a few times a second and re-read on change); 0 when the store
        holds no record of it (a new store, or a Redis that lost its data)."""

    @abstractmethod
    async def take_lease(self, name: str, holder: str, ttl_s: float) -> bool:
        """Take or renew the named lease (one leader across replicas); True if `holder`
        holds it now. Another holder's lease is taken only once it expired."""

    @abstractmethod
    async def release_lease(self, name: str, holder: str) -> None:
        """Give the lease up if `holder` holds it (a clean shutdown hands over at once)."""

    @abstractmethod
    async def add_activity(self, counts: dict[str, tuple[int, float]]) -> None:
        """Per endpoint: add `n` to its inference count and keep the latest activity time
        (max of stored and given). Replicas flush batched counts every second or so."""

    @abstractmethod
    async def activity(self) -> dict[str, tuple[int, float]]:
        """Per endpoint: (inferences so far, last activity unix time)."""

    @abstractmethod
    async def add_demand(self, demand: dict[str, dict[int, float]]) -> None:
        """Per endpoint, per unix second: add the cost routed (or wanted, with no worker to
        take it) in that second. Replicas flush every second or so; kept DEMAND_KEEP_S."""

    @abstractmethod
    async def demand(self, since: int) -> dict[str, dict[int, float]]:
        """Per endpoint, per unix second from `since` on: the cost every replica routed."""

    @abstractmethod
    async def forget_activity(self, name: str) -> None: ...

    @abstractmethod
    async def close(self) -> None: ...


def check_doc(kind: str, doc: bytes | None = None) -> None:
    """Refuse what one store would keep and the other could not (Store.put_doc)."""
    if not kind or ":" in kind:
        raise ValueError(f"document kind must be non-empty without ':', got {kind!r}")
    if doc is not None:
        try:
            doc.decode()
        except UnicodeDecodeError:
            raise ValueError(f"{kind} document must be UTF-8 (JSON)") from None


def check_activity(counts: dict[str, tuple[int, float]]) -> None:
    """Refuse counts that cannot be summed and stored exactly (Store.add_activity)."""
    for name, (n, at) in counts.items():
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise ValueError(f"activity of {name!r}: count must be an integer >= 0, got {n!r}")
        if not math.isfinite(at):
            raise ValueError(f"activity of {name!r}: time must be finite, got {at!r}")


def reqnum_floor(now: float) -> int:
    """Where a missing reqnum counter starts (docs/protocol.md, "Reqnums")."""
    return int(now * 1000) * 1000


def gcra(tat: float | None, now: float, rate_per_s: float, burst: float) -> tuple[float, float]:
    """One request against a GCRA allowance: (new theoretical arrival time, retry after).

    `tat` is the stored theoretical arrival time (None: unused, full allowance). A request
    is allowed while the allowance is at most `burst - 1` requests ahead of `now`; then
    retry after is 0.0 and the returned time is one interval later. Otherwise `tat` comes
    back unchanged with the seconds to wait. Its Lua twin is GCRA_LUA in redis_scripts.py.
    """
    interval = 1.0 / rate_per_s
    t = now if tat is None or tat < now else tat
    ahead = t - now - (burst - 1.0) * interval
    if ahead > 0:
        return t, ahead
    return t + interval, 0.0
