"""Canonical form, both algorithms, key files, JWKS round trip."""

from __future__ import annotations

import base64
import json
import os
import stat
from pathlib import Path

import orjson
import pytest

from router.signing import (
    KeyRing,
    SigningKeyError,
    canonical,
    load_private_key,
    normalize_ticket,
    ticket_number,
    verify_keys_from_jwks,
    write_private_key,
)

TICKET = {
    "url": "http://127.0.0.1:3001",
    "reqnum": 1763800000000123,
    "cost": 256.0,
    "endpoint": "llama",
    "expires_at": 1763800030.5,
    "key_id": "k",
    "request_idx": 7,
}


def test_canonical_is_sorted_compact_and_excludes_unsigned_fields() -> None:
    t = dict(TICKET, signature="x", __request_id="y")
    raw = canonical(t)
    assert raw == (
        b'{"cost":256,"endpoint":"llama","expires_at":1763800030.5,"key_id":"k",'
        b'"reqnum":1763800000000123,"request_idx":7,"url":"http://127.0.0.1:3001"}'
    )
    assert canonical(dict(TICKET, cost=256)) == raw  # a client that drops ".0" still matches


@pytest.mark.parametrize(
    ("value", "served"),
    [
        (16.0, 16),
        (16, 16),
        (16.5, 16.5),
        (0.0, 0),
        (-0.0, 0),
        (1e6, 1000000),
        (0.1 + 0.2, 0.3),
        (16.0001, 16),
        (0.0004, 0),
        (1763800030.1234567, 1763800030.123),
        (2**53 - 1, 2**53 - 1),
        (float(2**53 - 1), 2**53 - 1),
    ],
)
def test_ticket_numbers_are_integers_when_integral_else_3_decimals(
    value: float, served: float
) -> None:
    got = ticket_number(value)
    assert got == served and type(got) is type(served)
    assert json.dumps(got) == orjson.dumps(got).decode()


@pytest.mark.parametrize("value", [float("nan"), float("inf"), 2**53, 1e16, True, "1", None])
def test_ticket_numbers_outside_every_readers_exact_range_are_refused(value: object) -> None:
    with pytest.raises(ValueError):
        ticket_number(value)  # type: ignore[arg-type]


def test_signed_tickets_are_served_as_signed() -> None:
    ring = KeyRing.ephemeral("ed25519")
    t = ring.sign_ticket(dict(TICKET, key_id=ring.kid, expires_at=1763800030.0))
    assert t["cost"] == 256 and type(t["cost"]) is int
    assert type(t["expires_at"]) is int
    served = json.loads(orjson.dumps(t))
    served.pop("signature")
    assert json.dumps(served, sort_keys=True, separators=(",", ":")).encode() == canonical(t)


@pytest.mark.parametrize(
    "url", ["http://bücher.example", "http://x/?a=1&b=2", 'http://x/"', "http://x/<", "http://\t"]
)
def test_tickets_with_strings_some_encoder_escapes_are_not_signed(url: str) -> None:
    ring = KeyRing.ephemeral("ed25519")
    with pytest.raises(ValueError, match="printable ASCII"):
        ring.sign_ticket(dict(TICKET, key_id=ring.kid, url=url))
    with pytest.raises(ValueError):
        normalize_ticket(dict(TICKET, endpoint="caf\u00e9"))


@pytest.mark.parametrize("algorithm", ["rsa", "ed25519"])
def test_sign_verify_round_trip_through_jwks(algorithm: str) -> None:
    ring = KeyRing.ephemeral(algorithm)  # type: ignore[arg-type]
    ticket = ring.sign_ticket(dict(TICKET, key_id=ring.kid))
    keys = verify_keys_from_jwks(orjson.loads(ring.jwks_bytes()))
    vk = keys[ring.kid]
    sig = base64.b64decode(ticket["signature"])
    assert vk.verify(canonical(ticket), sig)
    assert not vk.verify(canonical(dict(ticket, cost=257.0)), sig)
    if algorithm == "rsa":
        assert len(sig) == 256  # RSA-2048 PKCS#1 v1.5
        assert "BEGIN PUBLIC KEY" in ring.public_pem()


def test_keygen_writes_0600_and_ring_signs_with_newest(tmp_path: Path) -> None:
    old = write_private_key(tmp_path / "k1.pem", "rsa")
    new = write_private_key(tmp_path / "k2.pem", "ed25519")
    assert stat.S_IMODE(os.stat(tmp_path / "k1.pem").st_mode) == 0o600
    ring = KeyRing.from_files([tmp_path / "k1.pem", tmp_path / "k2.pem"])
    assert ring.kid == new.kid
    assert {k["kid"] for k in orjson.loads(ring.jwks_bytes())["keys"]} == {old.kid, new.kid}
    with pytest.raises(FileExistsError):
        write_private_key(tmp_path / "k1.pem", "rsa")


def test_bad_key_files_are_clear_errors(tmp_path: Path) -> None:
    (tmp_path / "junk.pem").write_text("not a key")
    with pytest.raises(SigningKeyError, match="not an unencrypted PEM"):
        load_private_key(tmp_path / "junk.pem")
    with pytest.raises(SigningKeyError, match="cannot read"):
        load_private_key(tmp_path / "missing.pem")


def test_ed25519_tickets_sign_exactly_as_openssl_does() -> None:
    """Tickets are signed by libsodium (faster); the bytes must be OpenSSL's, to the bit."""
    from cryptography.hazmat.primitives.asymmetric import ed25519

    from router.signing import SigningKey

    for _ in range(20):
        private = ed25519.Ed25519PrivateKey.generate()
        key = SigningKey("k", private)
        for size in (0, 1, 200, 5000):
            message = os.urandom(size)
            assert key.sign(message) == base64.b64encode(private.sign(message)).decode()
