"""Ticket checks a worker makes before serving (DESIGN §3.3), as pure code.

`extract_ticket` finds the ticket in any of the three request shapes; `TicketVerifier`
checks signature, url, endpoint, expiry and the reqnum replay window, in that order.
No I/O here: the app refetches the JWKS when `verify` raises an unknown-key rejection.

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
    """Split a request into (ticket, model payload) for the three shapes of DESIGN §3.3.

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


class ReplayWindow:
    """Reqnums seen, as a bitmap over the `size` numbers below the highest seen.

    Accepts out-of-order arrival inside the window, refuses any reqnum seen before and
    any that fell out of the window (too old to tell whether it was seen).
    """

    def __init__(self, size: int = 1024) -> None:
        self.size = size
        self.max_seen = 0
        self._bits = 0  # bit i set <=> reqnum (max_seen - i) was seen
        self._mask = (1 << size) - 1

    def check(self, reqnum: int) -> None:
        if reqnum > self.max_seen:
            return
        delta = self.max_seen - reqnum
        if delta >= self.size:
            raise TicketRejected("too_old", "reqnum is older than the replay window")
        if (self._bits >> delta) & 1:
            raise TicketRejected("replayed", "reqnum was already used")

    def record(self, reqnum: int) -> None:
        if reqnum > self.max_seen:
            shift = reqnum - self.max_seen
            self._bits = 1 if shift >= self.size else ((self._bits << shift) | 1) & self._mask
            self.max_seen = reqnum
        else:
            self._bits |= 1 << (self.max_seen - reqnum)


@dataclass(slots=True)
class TicketVerifier:
    """Checks tickets for one worker (its public URL and endpoint) against known keys."""

    keys: dict[str, VerifyKey]
    public_url: str
    endpoint: str
    clock_skew_s: float = 5.0
    window: ReplayWindow = field(default_factory=ReplayWindow)

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

    def verify(self, ticket: Mapping[str, Any], now: float) -> int:
        """Check `ticket` and record its reqnum; return the reqnum or raise TicketRejected."""
        reqnum = self.check(ticket, now)
        self.window.record(reqnum)
        return reqnum

    def check(self, ticket: Mapping[str, Any], now: float) -> int:
        """Check `ticket` without recording its reqnum; return the reqnum or raise.

        For callers that may still refuse the request (admission) after a valid ticket:
        they record with `window.record(reqnum)` only once they serve, so a 429 does not
        burn the ticket. No await may separate `check` from `record`.
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
        if ticket["expires_at"] + self.clock_skew_s < now:
            raise TicketRejected("expired", "ticket has expired")
        reqnum: int = ticket["reqnum"]
        self.window.check(reqnum)
        return reqnum


__all__ = [
    "ReplayWindow",
    "SigningKeyError",
    "TicketRejected",
    "TicketVerifier",
    "extract_ticket",
]
