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

# Control plane (docs/control-plane.md). None of these expire: a document lives until deleted, and
# activity until its endpoint is forgotten.
# Hash per document, "doc:{kind}:{name}" (kinds have no ':'): `version` (an integer from
# the kind's counter) and `doc` (the JSON bytes as written).
DOC = "doc:"
# Set per kind of its document names, so listing needs no SCAN.
DOC_NAMES = "docs:"
# Counter per kind (INCR), bumped by every write and delete of one of its documents:
# replicas poll it to notice changes. Missing (0): no write since Redis lost its data.
DOCS_VERSION = "docsv:"
# Named lease (one leader across replicas; SET PX, renewed by its holder): the value is
# the holder's id; its TTL is the caller's ttl_s.
LEADER = "leader:"
# Hash of endpoint -> inferences so far (HINCRBY).
ACTIVITY_COUNT = "act:n"
# Hash of endpoint -> last activity unix time, as the replica wrote it (kept as a max).
ACTIVITY_AT = "act:t"
# Hash per endpoint of routed cost per unix second (field: the second), HINCRBYFLOAT by
# every replica; the whole hash expires DEMAND_TTL_S after its last write, and the leader
# drops fields older than base.DEMAND_KEEP_S when it reads.
DEMAND = "dem:"
DEMAND_TTL_S = 300
# Set of endpoint names that have a demand hash.
DEMANDS = "dems"

# Prefix index of cache_aware routing (docs/prefix.md; router/state/prefixes.py is the
# memory store's twin). Hash per endpoint and block hash, "pfx:{endpoint}:{hash}": worker
# id -> the unix time it was last sent that block (as the replica wrote it); a lookup
# ignores entries older than the endpoint's cache_aware.ttl_s, and the key expires ttl_s
# after its last write.
PREFIX_BLOCK = "pfx:"
# Sorted set per worker of the blocks it holds, for aging: member the block hash, score
# the time in microseconds minus the block's depth (a request's deeper blocks are older,
# so a worker loses a prefix from its end); trimmed to the endpoint's
# cache_aware.max_blocks_per_worker, least recent first; expires with ttl_s.
PREFIX_WORKER = "pfxw:"


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

    def doc(self, kind: str, name: str) -> str:
        return f"{self.prefix}{DOC}{kind}:{name}"

    def doc_names(self, kind: str) -> str:
        return f"{self.prefix}{DOC_NAMES}{kind}"

    def docs_version(self, kind: str) -> str:
        return f"{self.prefix}{DOCS_VERSION}{kind}"

    def leader(self, name: str) -> str:
        return f"{self.prefix}{LEADER}{name}"

    @property
    def activity_count(self) -> str:
        return f"{self.prefix}{ACTIVITY_COUNT}"

    @property
    def activity_at(self) -> str:
        return f"{self.prefix}{ACTIVITY_AT}"

    def demand(self, endpoint: str) -> str:
        return f"{self.prefix}{DEMAND}{endpoint}"

    @property
    def demands(self) -> str:
        return f"{self.prefix}{DEMANDS}"

    @property
    def prefix_block(self) -> str:
        """The start of every block hash's key; the scripts append "{endpoint}:{hash}"."""
        return f"{self.prefix}{PREFIX_BLOCK}"

    @property
    def prefix_worker_base(self) -> str:
        return f"{self.prefix}{PREFIX_WORKER}"

    def prefix_worker(self, wid: str) -> str:
        return f"{self.prefix}{PREFIX_WORKER}{wid}"
