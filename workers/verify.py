"""Ticket checks a worker makes before serving (docs/protocol.md), as pure code.

`extract_ticket` finds the ticket in any of the three request shapes; `TicketVerifier`
checks signature, url, endpoint, expiry, that the reqnum is unused (`ReplayMemory`) and
that the cost covers the payload, in that order. No I/O and no clock here: the caller
passes `now`, and refetches the JWKS when `check` raises an unknown-key rejection.

A worker of your own can use this module alone, with the router's JWKS as a dict (from
`GET /.well-known/jwks.json`; fetch it again for an unknown key and every minute or so)::

    import time
    from workers.verify import TicketRejected, TicketVerifier, extract_ticket

    verifier = TicketVerifier.from_jwks(jwks, "http://10.0.0.7:8000", "llama")

    def check(body, x_route_ticket_header):  # body: the parsed JSON request
        try:
            ticket, payload = extract_ticket(body, x_route_ticket_header)
            verifier.verify(ticket, time.time())  # records the reqnum: one use
        except TicketRejected as exc:
            return 401, {"error": {"code": exc.code, "message": exc.message}}
        return 200, payload  # what the model gets; the ticket is stripped

    verifier.use_jwks(new_jwks)  # on a refetch: keys the router dropped stop verifying

`tests/vectors/` has signed tickets and verdicts to check a verifier in another language.
"""

from __future__ import annotations

import base64
import binascii
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson

from router.signing import (
    SIGNED_FIELDS,
    TICKET_FIELDS,
    SigningKeyError,
    VerifyKey,
    canonical,
    verify_keys_from_jwks,
)

# Ticket fields a well-formed ticket must carry, with the JSON types allowed for each.
_FIELD_TYPES: dict[str, tuple[type, ...]] = {
    "cost": (int, float),
    "endpoint": (str,),
    "expires_at": (int, float),
    "key_id": (str,),
    "reqnum": (int,),
    "request_idx": (int,),
    "url": (str,),
    "signature": (str,),
}
_MAX_SIGNATURE_CHARS = 1024  # RSA-4096 is 684 base64 chars; anything longer is junk


class TicketRejected(Exception):
    """The ticket is missing or fails a check; `reason` becomes `ticket_<reason>`."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message

    @property
    def code(self) -> str:
        return f"ticket_{self.reason}"


def _ticket_from_header(value: str) -> dict[str, Any]:
    try:
        raw = base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))
        ticket = orjson.loads(raw)
    except (binascii.Error, ValueError, orjson.JSONDecodeError) as exc:
        raise TicketRejected("malformed", "X-Route-Ticket is not base64url JSON") from exc
    if not isinstance(ticket, dict):
        raise TicketRejected("malformed", "X-Route-Ticket must encode a JSON object")
    return ticket


def extract_ticket(body: Any, header: str | None) -> tuple[dict[str, Any], Any]:
    """Split a request into (ticket, model payload) for the three shapes of docs/protocol.md.

    1. `{"auth_data": ticket, "payload": {...}}` (Vast SDK);
    2. ticket fields at top level beside the payload (seed 003 example);
    3. `X-Route-Ticket: base64url(ticket JSON)` with the plain payload as body.
    """
    if header:
        return _ticket_from_header(header), body
    if isinstance(body, dict):
        auth = body.get("auth_data")
        if isinstance(auth, dict) and "payload" in body:
            return auth, body["payload"]
        if "signature" in body and "reqnum" in body:
            ticket = {k: body[k] for k in TICKET_FIELDS if k in body}
            payload = {k: v for k, v in body.items() if k not in TICKET_FIELDS}
            return ticket, payload
    raise TicketRejected("missing", "no routing ticket: call /route first")


_SEGMENT_BITS = 6  # a segment holds the 64 reqnums sharing reqnum >> 6
# Forget expired segments at most this often: a sweep is O(segments), ~0.5 us each measured
# on a busy 2-core box (2.5 ms for 5,000; 250 ms at the cap, only ever under abuse).
_PRUNE_INTERVAL_S = 1.0
# ~200 bytes a segment (measured: dict slot, key, tuple, 64-bit int, float): ~100 MB at the cap.
DEFAULT_MAX_SEGMENTS = 500_000


class ReplayMemoryFull(Exception):
    """Remembering one more reqnum would pass the cap; the worker answers 503, not 401."""


class ReplayMemory:
    """Every accepted reqnum, remembered until its ticket has expired (docs/protocol.md).

    No sequence of tickets can make a valid, unexpired, unused one fail: nothing is
    forgotten while its ticket could still be served, so reqnums may arrive in any order
    and from any distance below the highest seen. A reqnum is forgotten once its ticket's
    `expires_at` is before the horizon passed to `prune` (now - clock skew); from then on
    the expiry check refuses it, and since `expires_at` is signed a replay cannot dodge it.

    Reqnums are issued per worker by one counter (+1 a ticket), so accepted ones are
    dense: a dict maps `reqnum >> 6` to (a 64-bit bitmap of the accepted reqnums in that
    segment, the latest `expires_at` among them). Memory: the tickets accepted in one
    TTL + skew (accepted per second x (ticket_ttl_s + clock_skew_s)), one segment per 64
    of them when dense, one per ticket at worst (a client that uses one ticket in 64),
    ~200 bytes a segment. Accepted tickets are served ones, so the worker's throughput
    bounds the rate. Past `max_segments` a reqnum that needs a new segment is refused
    with ReplayMemoryFull rather than forgetting an unexpired one, which would let it be
    replayed.
    """

    __slots__ = ("_forgotten_before", "_next_prune", "_segments", "max_seen", "max_segments")

    def __init__(self, max_segments: int = DEFAULT_MAX_SEGMENTS) -> None:
        self.max_segments = max_segments
        self.max_seen = 0
        self._segments: dict[int, tuple[int, float]] = {}
        # Tickets expiring before this may have been forgotten: refused even if the
        # caller's clock stepped back since the prune.
        self._forgotten_before = -math.inf
        self._next_prune = -math.inf

    @property
    def segments(self) -> int:
        """Segments held now (each ~200 bytes, up to 64 reqnums)."""
        return len(self._segments)

    def check(self, reqnum: int, expires_at: float) -> None:
        """Raise TicketRejected if `reqnum` was used (or may have been, and forgotten)."""
        if expires_at < self._forgotten_before:
            raise TicketRejected("expired", "ticket has expired")
        segment = self._segments.get(reqnum >> _SEGMENT_BITS)
        if segment is not None and (segment[0] >> (reqnum & 63)) & 1:
            raise TicketRejected("replayed", "reqnum was already used")

    def check_room(self, reqnum: int) -> None:
        """Raise ReplayMemoryFull if recording `reqnum` would need a segment past the cap."""
        if len(self._segments) >= self.max_segments and (
            reqnum >> _SEGMENT_BITS not in self._segments
        ):
            raise ReplayMemoryFull(
                f"this worker holds {len(self._segments)} segments of used reqnums, its "
                "limit, until their tickets expire; route again"
            )

    def record(self, reqnum: int, expires_at: float) -> None:
        """Remember `reqnum` as used until `expires_at` has passed."""
        key = reqnum >> _SEGMENT_BITS
        bits, latest = self._segments.get(key, (0, expires_at))
        self._segments[key] = (bits | 1 << (reqnum & 63), max(latest, expires_at))
        if reqnum > self.max_seen:
            self.max_seen = reqnum

    def prune(self, horizon: float) -> None:
        """Forget segments whose every ticket expired before `horizon` (now - skew).

        Sweeps at most once per second of `horizon`, so the O(segments) cost is paid
        rarely; keeping a segment longer is always safe.
        """
        if horizon < self._next_prune:
            return
        self._next_prune = horizon + _PRUNE_INTERVAL_S
        self._forgotten_before = max(self._forgotten_before, horizon)
        # A new dict, not deletes: a dict never shrinks its table, so memory comes back.
        self._segments = {k: v for k, v in self._segments.items() if v[1] >= horizon}


@dataclass(slots=True)
class TicketVerifier:
    """Checks tickets for one worker (its public URL and endpoint) against known keys.

    `cost_tolerance`: a ticket whose cost is below the payload's own cost by more than
    this fraction is refused (`cost_too_low`): a client may not buy a cheap ticket for
    an expensive request, which would skew balancing and admission. 1 turns it off.
    """

    keys: dict[str, VerifyKey]
    public_url: str
    endpoint: str
    clock_skew_s: float = 5.0
    cost_tolerance: float = 0.5
    replay: ReplayMemory = field(default_factory=ReplayMemory)

    def __post_init__(self) -> None:
        self.public_url = self.public_url.rstrip("/")

    @classmethod
    def from_jwks(
        cls, jwks: Mapping[str, Any], public_url: str, endpoint: str, clock_skew_s: float = 5.0
    ) -> TicketVerifier:
        """A verifier for one worker, trusting the keys of a JWKS document (a parsed dict).

        `SigningKeyError` (importable from here) if the document is not a usable JWKS.
        """
        verifier = cls({}, public_url, endpoint, clock_skew_s)
        verifier.use_jwks(jwks)
        return verifier

    def use_jwks(self, jwks: Mapping[str, Any]) -> None:
        """Trust exactly the keys of `jwks` from now on (a key it lacks stops verifying)."""
        self.keys = verify_keys_from_jwks(jwks)

    def verify(
        self, ticket: Mapping[str, Any], now: float, payload_cost: float | None = None
    ) -> int:
        """Check `ticket` and record its reqnum; return the reqnum or raise TicketRejected."""
        reqnum = self.check(ticket, now, payload_cost)
        self.record(ticket)
        return reqnum

    def record(self, ticket: Mapping[str, Any]) -> None:
        """Mark a checked ticket's reqnum used, until the ticket expires."""
        self.replay.record(ticket["reqnum"], ticket["expires_at"])

    def check(
        self, ticket: Mapping[str, Any], now: float, payload_cost: float | None = None
    ) -> int:
        """Check `ticket` without recording its reqnum; return the reqnum or raise.

        `payload_cost`: what the request itself weighs (router.cost.payload_cost), None
        when the payload does not say; then any cost passes.

        For callers that may still refuse the request (admission) after a valid ticket:
        they `record(ticket)` only once they serve, so a 429 does not burn the ticket. No
        await may separate `check` from `record`. Raises ReplayMemoryFull (a 503) only
        for a ticket that passed every check.
        """
        for name, types in _FIELD_TYPES.items():
            value = ticket.get(name)
            if not isinstance(value, types) or isinstance(value, bool):
                raise TicketRejected("malformed", f"ticket field {name!r} missing or mistyped")
        sig_text: str = ticket["signature"]
        if len(sig_text) > _MAX_SIGNATURE_CHARS:
            raise TicketRejected("malformed", "signature is too long")
        if not math.isfinite(ticket["expires_at"]) or not math.isfinite(ticket["cost"]):
            raise TicketRejected("malformed", "ticket numbers must be finite")
        key = self.keys.get(ticket["key_id"])
        if key is None:
            raise TicketRejected("unknown_key", "ticket signed by an unknown key_id")
        try:
            signature = base64.b64decode(sig_text, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise TicketRejected("malformed", "signature is not base64") from exc
        signed = {k: ticket[k] for k in SIGNED_FIELDS}
        if not key.verify(canonical(signed), signature):
            raise TicketRejected("bad_signature", "ticket signature does not verify")
        if ticket["url"].rstrip("/") != self.public_url:
            raise TicketRejected("wrong_url", "ticket was issued for another worker")
        if ticket["endpoint"] != self.endpoint:
            raise TicketRejected("wrong_endpoint", "ticket was issued for another endpoint")
        expires_at: float = ticket["expires_at"]
        if expires_at + self.clock_skew_s < now:
            raise TicketRejected("expired", "ticket has expired")
        reqnum: int = ticket["reqnum"]
        self.replay.prune(now - self.clock_skew_s)
        self.replay.check(reqnum, expires_at)
        cost: float = ticket["cost"]
        if (
            payload_cost is not None
            and self.cost_tolerance < 1
            and cost < payload_cost * (1 - self.cost_tolerance)
        ):
            raise TicketRejected(
                "cost_too_low",
                f"the ticket's cost {cost:g} is below this request's own cost "
                f"{payload_cost:g} (less {self.cost_tolerance:.0%}): route it with a cost "
                "that covers it",
            )
        self.replay.check_room(reqnum)
        return reqnum


__all__ = [
    "ReplayMemory",
    "SigningKeyError",
    "TicketRejected",
    "TicketVerifier",
    "extract_ticket",
]
