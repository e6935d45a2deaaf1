"""Ticket checks as pure code: signatures, each rejection, replay memory, request shapes."""

from __future__ import annotations

import base64
import time
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from router.signing import SIGNED_FIELDS, KeyRing, SigningKey, generate_private_key, key_id_for
from tests.workers.helpers import ENDPOINT, PUBLIC_URL, Tickets
from workers.verify import (
    ReplayMemory,
    ReplayMemoryFull,
    TicketRejected,
    TicketVerifier,
    extract_ticket,
)


@pytest.fixture(scope="module", params=["rsa", "ed25519"])
def ring(request: pytest.FixtureRequest) -> KeyRing:
    return KeyRing.ephemeral(request.param)


@pytest.fixture
def tickets(ring: KeyRing) -> Tickets:
    return Tickets(ring)


ED25519 = KeyRing.ephemeral("ed25519")  # for tests that sign thousands of tickets


def verifier(*rings: KeyRing, skew_s: float = 5.0, max_segments: int = 500_000) -> TicketVerifier:
    keys = {k.kid: k.verify_key for r in rings for k in r.keys}
    return TicketVerifier(keys, PUBLIC_URL, ENDPOINT, skew_s, replay=ReplayMemory(max_segments))


def reason(
    v: TicketVerifier, ticket: Any, now: float | None = None, payload_cost: float | None = None
) -> str:
    with pytest.raises(TicketRejected) as info:
        v.verify(ticket, time.time() if now is None else now, payload_cost)
    assert info.value.code == f"ticket_{info.value.reason}"
    return info.value.reason


def test_round_trip(ring: KeyRing, tickets: Tickets) -> None:
    v = verifier(ring)
    t = tickets.issue()
    assert v.verify(t, time.time()) == t["reqnum"]
    assert v.replay.max_seen == t["reqnum"]
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


def test_replayed(ring: KeyRing, tickets: Tickets) -> None:
    v = verifier(ring)
    first = tickets.issue()
    v.verify(first, time.time())
    assert reason(v, first) == "replayed"
    tickets.reqnum += 10**6  # far newer tickets do not push the first one out
    v.verify(tickets.issue(), time.time())
    assert reason(v, first) == "replayed"


def test_an_unexpired_ticket_outlives_any_number_of_newer_ones() -> None:
    # The attack on the old 1024-wide window: a client routes ~1,100 times and uses only
    # the newest tickets; another client's older, unexpired, unused ticket must still work.
    tickets = Tickets(ED25519)
    v = verifier(ED25519)
    now = time.time()
    victim = tickets.issue()
    for _ in range(1_100):
        v.verify(tickets.issue(), now)
    tickets.reqnum += 5_000  # and tickets issued but never used, past them
    for _ in range(100):
        v.verify(tickets.issue(), now)
    assert v.verify(victim, now) == victim["reqnum"]
    assert reason(v, victim, now) == "replayed"


def test_check_does_not_record(ring: KeyRing, tickets: Tickets) -> None:
    v = verifier(ring)
    t = tickets.issue()
    assert v.check(t, time.time()) == t["reqnum"]
    assert v.check(t, time.time()) == t["reqnum"]
    assert v.replay.max_seen == 0 and v.replay.segments == 0
    v.verify(t, time.time())
    with pytest.raises(TicketRejected, match="already used"):
        v.check(t, time.time())


def test_cost_too_low(ring: KeyRing, tickets: Tickets) -> None:
    now = time.time()
    v = verifier(ring)
    assert reason(v, tickets.issue(cost=0), now, payload_cost=400.0) == "cost_too_low"
    assert reason(v, tickets.issue(cost=199.9), now, payload_cost=400.0) == "cost_too_low"
    for cost in (200, 400.0, 10_000):  # half the payload's cost or more passes
        t = tickets.issue(cost=cost)
        assert v.verify(t, now, 400.0) == t["reqnum"]
    t = tickets.issue(cost=0)  # a payload that says nothing about its cost: no floor
    assert v.verify(t, now, None) == t["reqnum"]
    t = tickets.issue(cost=0)
    assert v.verify(t, now, 0.0) == t["reqnum"]
    strict = verifier(ring)
    strict.cost_tolerance = 0.0
    assert reason(strict, tickets.issue(cost=399), now, payload_cost=400.0) == "cost_too_low"
    off = verifier(ring)
    off.cost_tolerance = 1.0
    t = tickets.issue(cost=0)
    assert off.verify(t, now, 1e12) == t["reqnum"]


def test_cost_is_checked_after_the_reqnum(ring: KeyRing, tickets: Tickets) -> None:
    now = time.time()
    v = verifier(ring, max_segments=1)
    cheap = tickets.issue(cost=1)
    v.verify(cheap, now)
    assert reason(v, cheap, now, payload_cost=400.0) == "replayed"
    assert reason(v, tickets.issue(cost=1, expires_at=1.0), now, 400.0) == "expired"
    tickets.reqnum += 64  # needs a new segment, and memory is full: the cost answers first
    assert reason(v, tickets.issue(cost=1), now, payload_cost=400.0) == "cost_too_low"
    # a refused ticket is not recorded: it is still good for a request it covers
    t = tickets.issue(cost=1)
    v.replay.max_segments = 2
    assert reason(v, t, now, payload_cost=400.0) == "cost_too_low"
    assert v.verify(t, now, 2.0) == t["reqnum"]


NOW = 1_763_800_000.0
BASE = int(NOW * 1000) * 1000  # where the router's counter starts


def _accept(m: ReplayMemory, reqnum: int, expires_at: float = NOW + 60) -> None:
    m.check(reqnum, expires_at)
    m.check_room(reqnum)
    m.record(reqnum, expires_at)


def _refused(m: ReplayMemory, reqnum: int, expires_at: float = NOW + 60) -> str:
    with pytest.raises(TicketRejected) as info:
        m.check(reqnum, expires_at)
    return info.value.reason


def test_memory_in_order_and_out_of_order() -> None:
    m = ReplayMemory()
    for n in range(BASE, BASE + 1000):
        _accept(m, n)
    assert m.max_seen == BASE + 999
    assert m.segments <= 1000 // 64 + 2  # dense: one segment per 64 reqnums
    for n in (BASE, BASE + 1, BASE + 500, BASE + 999):
        assert _refused(m, n) == "replayed"
    for n in (BASE + 1005, BASE + 1001, BASE + 1003, BASE + 1000):
        _accept(m, n)
    for n in (BASE + 1004, BASE + 1002, BASE - 1):  # skipped ones stay usable, below too
        _accept(m, n)
        assert _refused(m, n) == "replayed"


def test_memory_jumps() -> None:
    m = ReplayMemory()
    _accept(m, 1000)
    _accept(m, 10**15)  # a jump (a store reset: unix_ms * 1000) forgets nothing below
    assert m.max_seen == 10**15
    assert _refused(m, 1000) == "replayed"
    _accept(m, 1001)
    _accept(m, 10**15 - 1)
    for n in (1000, 1001, 10**15 - 1, 10**15):
        assert _refused(m, n) == "replayed"
    # segment edges: 64k - 1 and 64k are neighbours in different segments
    _accept(m, 64 * 7 - 1)
    _accept(m, 64 * 7)
    assert _refused(m, 64 * 7 - 1) == "replayed" and _refused(m, 64 * 7) == "replayed"
    _accept(m, 64 * 7 + 1)


def test_pruning_frees_memory_after_expiry() -> None:
    m = ReplayMemory()
    for i in range(1000):  # sparse: one ticket in 64 used, a segment each
        _accept(m, BASE + 64 * i, NOW + 30)
    _accept(m, BASE - 64, NOW + 90)
    assert m.segments == 1001
    m.prune(NOW + 30)  # expiring at the horizon itself: still kept
    assert m.segments == 1001
    assert _refused(m, BASE, NOW + 30) == "replayed"
    m.prune(NOW + 31)
    assert m.segments == 1  # only the one that expires later
    assert _refused(m, BASE - 64, NOW + 90) == "replayed"
    # Forgotten means refused as expired, even for a caller whose clock stepped back.
    assert _refused(m, BASE, NOW + 30) == "expired"
    m.prune(NOW + 200)
    assert m.segments == 0 and m.max_seen == BASE + 64 * 999


def test_a_segment_is_kept_until_its_latest_ticket_expires() -> None:
    m = ReplayMemory()
    _accept(m, BASE, NOW + 120)
    _accept(m, BASE + 1, NOW + 10)  # a shorter-lived ticket after it, same segment
    m.prune(NOW + 60)
    assert _refused(m, BASE, NOW + 120) == "replayed"
    assert _refused(m, BASE + 1, NOW + 10) == "expired"


def test_pruning_sweeps_at_most_once_a_second() -> None:
    m = ReplayMemory()
    _accept(m, BASE, NOW + 10)
    m.prune(NOW + 9.5)
    m.prune(NOW + 10.2)  # expired, but under a second since the last sweep: kept
    assert m.segments == 1
    assert _refused(m, BASE, NOW + 10) == "replayed"
    m.prune(NOW + 10.5)
    assert m.segments == 0


def test_memory_cap_refuses_new_segments_instead_of_forgetting() -> None:
    m = ReplayMemory(max_segments=2)
    _accept(m, BASE, NOW + 30)
    _accept(m, BASE + 64, NOW + 60)
    with pytest.raises(ReplayMemoryFull):
        m.check_room(BASE + 128)
    _accept(m, BASE + 1, NOW + 30)  # an existing segment costs nothing: still accepted
    assert _refused(m, BASE) == "replayed"  # and nothing was forgotten
    m.prune(NOW + 31)
    _accept(m, BASE + 128)  # room again once a segment's tickets expired
    with pytest.raises(ReplayMemoryFull):
        m.check_room(BASE + 192)


def test_full_memory_answers_only_after_every_ticket_check() -> None:
    tickets = Tickets(ED25519)
    v = verifier(ED25519, max_segments=1)
    now = time.time()
    used = tickets.issue()
    v.verify(used, now)
    tickets.reqnum += 64
    fresh = tickets.issue(expires_at=now + 300)
    with pytest.raises(ReplayMemoryFull):
        v.verify(fresh, now)
    assert reason(v, used, now) == "replayed"
    assert reason(v, {**fresh, "cost": 1}, now) == "bad_signature"
    assert reason(v, tickets.issue(expires_at=now - 60), now) == "expired"
    # Once `used` has expired, checking prunes its segment and there is room again.
    assert v.verify(fresh, now + 100) == fresh["reqnum"]
    assert v.replay.segments == 1


# One step of the property test: issue a ticket (reqnum gap, TTL), use the i-th ticket
# issued, replay the i-th one used, or let the clock run (a little back too: NTP).
_issue = st.tuples(
    st.just("issue"),
    st.one_of(st.integers(0, 3), st.integers(0, 200), st.just(10**6)),
    st.sampled_from([1.0, 2.0, 10.0, 30.0, 60.0, 120.0]),
)
_use = st.tuples(st.sampled_from(["use", "replay"]), st.integers(0, 10**6), st.just(0.0))
_advance = st.tuples(
    st.just("advance"), st.just(0), st.sampled_from([-10.0, -1.0, 0.5, 1.0, 3.0, 8.0, 30.0, 130.0])
)


@settings(max_examples=300, deadline=None)
@given(
    steps=st.lists(st.one_of(_issue, _use, _advance), min_size=10, max_size=100),
    skew_s=st.sampled_from([0.0, 5.0]),
)
def test_property_unexpired_unused_tickets_are_accepted_and_replays_refused(
    steps: list[tuple[str, int, float]], skew_s: float
) -> None:
    tickets = Tickets(ED25519)
    v = verifier(ED25519, skew_s=skew_s)
    now = latest = NOW  # `latest`: the furthest the clock has been
    issued: list[dict[str, Any]] = []
    used: list[dict[str, Any]] = []
    for op, n, x in steps:
        if op == "issue":
            tickets.reqnum += n
            issued.append(tickets.issue(expires_at=now + x))
            continue
        if op == "advance":
            now += x
            latest = max(latest, now)
            continue
        pool = issued if op == "use" else used
        if not pool:
            continue
        t = pool[n % len(pool)]
        was_used = any(u is t for u in used)
        if t["expires_at"] + skew_s < now:
            assert reason(v, t, now) == "expired"
        elif t["expires_at"] + skew_s < latest:
            # Expired by a clock that then stepped back: either answer, never twice.
            try:
                v.verify(t, now)
            except TicketRejected as exc:
                assert exc.reason in (("replayed", "expired") if was_used else ("expired",))
            else:
                assert not was_used
                used.append(t)
        elif was_used:
            assert reason(v, t, now) == "replayed"
        else:
            assert v.verify(t, now) == t["reqnum"]
            used.append(t)
    # Nothing is kept past its expiry: an hour on, every segment is freed.
    v.replay.prune(now + 3600)
    assert v.replay.segments == 0


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
