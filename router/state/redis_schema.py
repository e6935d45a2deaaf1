"""The Redis key schema: a protocol between router replicas. Change it only with care.

Every key starts with the configured prefix (default `ir:`), so several deployments can
share one Redis database.
"""

from __future__ import annotations

from dataclasses import dataclass

# Hash per worker: endpoint, url, perf, max_load, source, owner (who registered it; ""
# where absent, as in hashes older than the field), status, admin_drain, streaks, last_ok,
# reported_*, max_reqnum_seen, pending_mcost, pending_requests and the reqnum counter.
# Refreshed by every write; a worker nobody writes for a day is garbage.
# pending_mcost is an integer of milli-units (HINCRBY; base.quantize); it replaced the
# float pending_cost (HINCRBYFLOAT), renamed because its type changed: a replica of the
# old version and one of this reads and writes a different field, neither misreads the
# other's (each sees the other's outstanding tickets as absent until they expire).
WORKER_TTL_S = 86_400
# Set of worker ids of one endpoint.
ENDPOINT_SET = "ep:"
# Set of endpoint names that have workers.
ENDPOINTS = "eps"
# Sorted set per worker of outstanding tickets: score reqnum, member
# "reqnum:mcost:expires" with mcost an integer of milli-units. Was "pend:", whose members
# held a float cost: renamed with the type change, as pending_mcost above.
PENDING = "pendm:"
# Counter handing out request_idx values.
REQUEST_IDX = "ridx"
# Health-poll lease per worker (SET NX PX): value is the holding replica's id.
LEASE = "lease:"
WORKER = "w:"
# Per API key (by a prefix of its SHA-256, never the key): the GCRA theoretical arrival
# time of its rate limit, a float of seconds; expires when the allowance is full again.
RATE = "rate:"
# Per API key: sorted set of its proxied requests in flight, score = lease expiry. A
# lease outlives any request (the endpoint's total timeout), so a crashed replica's
# slots free themselves.
SLOTS = "slots:"


@dataclass(frozen=True, slots=True)
class Keys:
    prefix: str = "ir:"

    def worker(self, wid: str) -> str:
        return f"{self.prefix}{WORKER}{wid}"

    def endpoint_set(self, endpoint: str) -> str:
        return f"{self.prefix}{ENDPOINT_SET}{endpoint}"

    @property
    def endpoints(self) -> str:
        return f"{self.prefix}{ENDPOINTS}"

    def pending(self, wid: str) -> str:
        return f"{self.prefix}{PENDING}{wid}"

    @property
    def request_idx(self) -> str:
        return f"{self.prefix}{REQUEST_IDX}"

    def lease(self, wid: str) -> str:
        return f"{self.prefix}{LEASE}{wid}"

    def rate(self, key_id: str) -> str:
        return f"{self.prefix}{RATE}{key_id}"

    def slots(self, key_id: str) -> str:
        return f"{self.prefix}{SLOTS}{key_id}"
