"""Ticket checks as pure code: signatures, each rejection, the reqnum window, request shapes."""

from __future__ import annotations

import base64
import time
from typing import Any

import orjson
import pytest

from router.signing import SIGNED_FIELDS, KeyRing, SigningKey, generate_private_key, key_id_for
from tests.workers.helpers import ENDPOINT, PUBLIC_URL, Tickets
from workers.verify import ReplayWindow, TicketRejected, TicketVerifier, extract_ticket


@pytest.fixture(scope="module", params=["rsa", "ed25519"])
def ring(request: pytest.FixtureRequest) -> KeyRing:
    return KeyRing.ephemeral(request.param)


@pytest.fixture
def tickets(ring: KeyRing) -> Tickets:
    return Tickets(ring)


def verifier(*rings: KeyRing, skew_s: float = 5.0, window: int = 1024) -> TicketVerifier:
    keys = {k.kid: k.verify_key for r in rings for k in r.keys}
    return TicketVerifier(keys, PUBLIC_URL, ENDPOINT, skew_s, ReplayWindow(window))


def reason(v: TicketVerifier, ticket: Any, now: float | None = None) -> str:
    with pytest.raises(TicketRejected) as info:
        v.verify(ticket, time.time() if now is None else now)
    assert info.value.code == f"ticket_{info.value.reason}"
    return info.value.reason


def test_round_trip(ring: KeyRing, tickets: Tickets) -> None:
    v = verifier(ring)
    t = tickets.issue()
    assert v.verify(t, time.time()) == t["reqnum"]
    assert v.window.max_seen == t["reqnum"]
    # Survives the wire: JSON out and back in, as a client would send it.
    t2 = orjson.loads(orjson.dumps(tickets.issue()))
    assert v.verify(t2, time.time()) == t2["reqnum"]


def test_cost_256_0_is_served_as_256_and_still_verifies_re_sent_as_256_0(
    ring: KeyRing, tickets: Tickets
) -> None:
    v = verifier(ring)
    t = tickets.issue(cost=256.0)
    wire = orjson.dumps(t)
    assert b'"cost":256,' in wire  # served as signed (docs/protocol.md)
    # A client that re-encodes the ticket with a float writes 256.0: the same number.
    resent = orjson.loads(wire.replace(b'"cost":256,', b'"cost":256.0,'))
    assert type(resent["cost"]) is float
    assert v.verify(resent, time.time()) == t["reqnum"]


def test_missing() -> None:
    for body in ({"inputs": "x"}, [], "text", None, {"auth_data": {"reqnum": 1}}):
        with pytest.raises(TicketRejected) as info:
            extract_ticket(body, None)
        assert info.value.reason == "missing"


@pytest.mark.parametrize(
    "header",
    [
        "!!!not base64!!!",
        base64.urlsafe_b64encode(b"not json").decode(),
        base64.urlsafe_b64encode(b"[1, 2]").decode(),
    ],
)
def test_malformed_header(header: str) -> None:
    with pytest.raises(TicketRejected) as info:
        extract_ticket({"inputs": "x"}, header)
    assert info.value.reason == "malformed"


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("reqnum", "123"),
        ("reqnum", 1.5),
        ("reqnum", True),
        ("cost", "8"),
        ("cost", None),
        ("cost", False),
        ("request_idx", 2.5),
        ("url", None),
        ("endpoint", 7),
        ("key_id", []),
        ("expires_at", "soon"),
        ("signature", 12),
        ("expires_at", float("inf")),
        ("cost", float("nan")),
    ],
)
def test_malformed_fields(ring: KeyRing, tickets: Tickets, field: str, value: Any) -> None:
    assert reason(verifier(ring), {**tickets.issue(), field: value}) == "malformed"


@pytest.mark.parametrize("field", [*SIGNED_FIELDS, "signature"])
def test_malformed_missing_field(ring: KeyRing, tickets: Tickets, field: str) -> None:
    t = tickets.issue()
    del t[field]
    assert reason(verifier(ring), t) == "malformed"


def test_malformed_signature(ring: KeyRing, tickets: Tickets) -> None:
    v = verifier(ring)
    assert reason(v, {**tickets.issue(), "signature": "A" * 5000}) == "malformed"
    assert reason(v, {**tickets.issue(), "signature": "not base64 at all!"}) == "malformed"
    assert reason(v, {**tickets.issue(), "signature": "é" * 8}) == "malformed"


def test_unknown_key(ring: KeyRing, tickets: Tickets) -> None:
    assert reason(verifier(ring), {**tickets.issue(), "key_id": "nope"}) == "unknown_key"
    assert reason(verifier(), tickets.issue()) == "unknown_key"


def _changed(field: str, value: Any, other_kid: str) -> Any:
    if field == "key_id":
        return other_kid  # another known key: the signature must not verify under it
    if isinstance(value, str):
        return value + "x"
    return value + 1


@pytest.mark.parametrize("field", SIGNED_FIELDS)
def test_bad_signature_on_each_signed_field(ring: KeyRing, tickets: Tickets, field: str) -> None:
    other = KeyRing.ephemeral(ring.signer.verify_key.algorithm)
    v = verifier(ring, other)
    t = tickets.issue()
    t[field] = _changed(field, t[field], other.kid)
    assert reason(v, t) == "bad_signature"


def test_bad_signature_from_another_key_with_the_same_id(ring: KeyRing, tickets: Tickets) -> None:
    private = generate_private_key(ring.signer.verify_key.algorithm)
    impostor = KeyRing([SigningKey(ring.kid, private)])
    assert key_id_for(private.public_key()) != ring.kid
    assert reason(verifier(ring), tickets.issue(ring=impostor)) == "bad_signature"


def test_unsigned_fields_may_change(ring: KeyRing, tickets: Tickets) -> None:
    t = {**tickets.issue(), "__request_id": "something else"}
    assert verifier(ring).verify(t, time.time()) == t["reqnum"]


def test_wrong_url_and_endpoint(ring: KeyRing) -> None:
    v = verifier(ring)
    assert reason(v, Tickets(ring, url="http://other:3000").issue()) == "wrong_url"
    assert reason(v, Tickets(ring, endpoint="other").issue()) == "wrong_endpoint"
    # a trailing slash on either side is the same URL
    t = Tickets(ring, url=PUBLIC_URL + "/").issue()
    assert v.verify(t, time.time()) == t["reqnum"]


def test_expired_with_clock_skew(ring: KeyRing, tickets: Tickets) -> None:
    now = time.time()
    v = verifier(ring, skew_s=5.0)
    assert reason(v, tickets.issue(expires_at=now - 6), now) == "expired"
    t = tickets.issue(expires_at=now - 4)  # within the allowed skew
    assert v.verify(t, now) == t["reqnum"]
    assert (
        reason(verifier(ring, skew_s=0.0), tickets.issue(expires_at=now - 0.01), now) == "expired"
    )


def test_checks_run_in_order(ring: KeyRing) -> None:
    # Wrong URL, wrong endpoint and expired at once: the first check (url) answers.
    t = Tickets(ring, url="http://other:1", endpoint="other").issue(expires_at=1.0)
    assert reason(verifier(ring), t) == "wrong_url"
    t = Tickets(ring, endpoint="other").issue(expires_at=1.0)
    assert reason(verifier(ring), t) == "wrong_endpoint"


def test_replayed_and_too_old(ring: KeyRing, tickets: Tickets) -> None:
    v = verifier(ring, window=16)
    first = tickets.issue()
    v.verify(first, time.time())
    assert reason(v, first) == "replayed"
    tickets.reqnum += 100
    v.verify(tickets.issue(), time.time())
    assert reason(v, first) == "too_old"


def test_check_does_not_record(ring: KeyRing, tickets: Tickets) -> None:
    v = verifier(ring)
    t = tickets.issue()
    assert v.check(t, time.time()) == t["reqnum"]
    assert v.check(t, time.time()) == t["reqnum"]
    assert v.window.max_seen == 0
    v.verify(t, time.time())
    with pytest.raises(TicketRejected, match="already used"):
        v.check(t, time.time())


def _accept(w: ReplayWindow, reqnum: int) -> None:
    w.check(reqnum)
    w.record(reqnum)


def _refused(w: ReplayWindow, reqnum: int) -> str:
    with pytest.raises(TicketRejected) as info:
        w.check(reqnum)
    return info.value.reason


def test_window_in_order() -> None:
    w = ReplayWindow(8)
    for n in range(1000, 1100):
        _accept(w, n)
    assert w.max_seen == 1099
    assert _refused(w, 1099) == "replayed"
    assert _refused(w, 1092) == "replayed"  # 7 below the top: still tracked
    assert _refused(w, 1091) == "too_old"  # 8 below: out of the window


def test_window_out_of_order() -> None:
    w = ReplayWindow(8)
    for n in (1005, 1001, 1003, 1007, 1000, 1002):
        _accept(w, n)
    for n in (1005, 1001, 1003, 1007, 1002):
        assert _refused(w, n) == "replayed"
    for n in (1004, 1006):  # skipped ones stay usable inside the window
        _accept(w, n)
    assert _refused(w, 1004) == "replayed"
    assert _refused(w, 999) == "too_old"


def test_window_jumps() -> None:
    w = ReplayWindow(8)
    _accept(w, 1000)
    _accept(w, 1003)  # small jump keeps history
    assert _refused(w, 1000) == "replayed"
    _accept(w, 1002)
    _accept(w, 10**15)  # a jump past the whole window forgets everything below
    assert w.max_seen == 10**15
    assert _refused(w, 1003) == "too_old"
    _accept(w, 10**15 - 7)
    assert _refused(w, 10**15 - 7) == "replayed"
    assert _refused(w, 10**15) == "replayed"
    _accept(w, 10**15 + 8)  # exactly the window size: the old top falls out
    assert _refused(w, 10**15) == "too_old"
    _accept(w, 10**15 + 1)


def test_window_first_reqnum_after_a_store_reset() -> None:
    # The router's counter restarts at unix_ms * 1000: always above what was seen.
    w = ReplayWindow()
    _accept(w, int(time.time() * 1000) * 1000)
    _accept(w, int(time.time() * 1000) * 1000 + 10_000_000)


def test_extract_three_shapes(ring: KeyRing, tickets: Tickets) -> None:
    payload = {"inputs": "hi", "parameters": {"max_new_tokens": 3}}
    t = tickets.issue()

    ticket, got = extract_ticket({"auth_data": t, "payload": payload, "session_id": None}, None)
    assert ticket == t and got == payload

    ticket, got = extract_ticket({**t, **payload}, None)
    assert got == payload  # no ticket field (nor __request_id) reaches the backend
    assert {k: ticket[k] for k in SIGNED_FIELDS} == {k: t[k] for k in SIGNED_FIELDS}
    assert verifier(ring).verify(ticket, time.time()) == t["reqnum"]

    t = tickets.issue()
    raw = base64.urlsafe_b64encode(orjson.dumps(t))
    for header in (raw.decode(), raw.rstrip(b"=").decode()):  # padded or not
        ticket, got = extract_ticket(payload, header)
        assert ticket == t and got == payload
    # the header wins over a body that merely looks like a ticket
    ticket, got = extract_ticket({"auth_data": {}, "payload": 1}, raw.decode())
    assert ticket == t and got == {"auth_data": {}, "payload": 1}


def test_a_third_party_worker_needs_only_workers_verify_and_a_jwks_dict() -> None:
    """The docstring's example of workers/verify.py, on a vector (tests/vectors/)."""
    import json
    from pathlib import Path

    from workers import verify

    doc = json.loads((Path(__file__).parents[1] / "vectors" / "tickets.json").read_text())
    jwks: dict[str, Any] = doc["jwks"]  # as GET /.well-known/jwks.json gives it
    case = next(c for c in doc["cases"] if c["name"] == "ed25519/valid_integral_cost")
    ticket = json.loads(case["served"])
    verifier = verify.TicketVerifier.from_jwks(jwks, ticket["url"], ticket["endpoint"])

    def check(body: Any, header: str | None) -> tuple[int, Any]:
        try:
            t, payload = verify.extract_ticket(body, header)
            verifier.verify(t, case["now"])
        except verify.TicketRejected as exc:
            return 401, {"error": {"code": exc.code, "message": exc.message}}
        return 200, payload

    body = {"auth_data": ticket, "payload": {"inputs": "Hi"}}
    assert check(body, None) == (200, {"inputs": "Hi"})
    assert check(body, None)[1]["error"]["code"] == "ticket_replayed"
    # a refetched JWKS without the key: the key stops verifying
    verifier.use_jwks({"keys": [k for k in jwks["keys"] if k["kid"] != ticket["key_id"]]})
    assert check(body, None)[1]["error"]["code"] == "ticket_unknown_key"
    with pytest.raises(verify.SigningKeyError):
        verify.TicketVerifier.from_jwks({"no": "keys"}, "http://x", "demo")
