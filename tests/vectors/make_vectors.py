"""Write tests/vectors/tickets.json: signed tickets and the verdict a verifier must reach.

    python tests/vectors/make_vectors.py

Keys are read from tests/vectors/test-keys/ (written there on the first run), so running it
again writes the same bytes: RSA PKCS#1 v1.5 and Ed25519 signatures are deterministic.
tests/vectors/test_vectors.py checks that the committed file is what this script writes.
The keys are test keys, published on purpose: never configure a router with them.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import orjson

HERE = Path(__file__).resolve().parent
if __package__ in (None, ""):  # run as a script: make `router` importable
    sys.path.insert(0, str(HERE.parents[1]))

from router.signing import (  # noqa: E402
    SIGNED_FIELDS,
    UNSIGNED_FIELDS,
    KeyRing,
    SigningKey,
    canonical,
    load_private_key,
    write_private_key,
)

VECTORS = HERE / "tickets.json"
KEYS = HERE / "test-keys"  # not "keys/": .gitignore keeps real keys out
NOW = 1763800000  # the `now` every case is judged at, unless it says otherwise
REQUEST_ID = "0123456789abcdef0123456789abcdef"
BASE: dict[str, Any] = {
    "cost": 16,
    "endpoint": "llama",
    "expires_at": 1763800030.125,
    "key_id": "",
    "reqnum": 1763800000000123,
    "request_idx": 1763799999123,
    "url": "http://10.0.0.7:8000",
}


def _key(name: str, algorithm: str) -> SigningKey:
    path = KEYS / f"{name}.pem"
    if path.exists():
        return load_private_key(path)
    return write_private_key(path, algorithm)  # type: ignore[arg-type]


def _sign(key: SigningKey, **fields: Any) -> dict[str, Any]:
    """A ticket as the router serves it: fields in its order, then signature, request id."""
    ticket = {**BASE, "key_id": key.kid, **fields}
    KeyRing([key]).sign_ticket(ticket)
    ticket["__request_id"] = REQUEST_ID
    return ticket


def _case(
    name: str, ticket: dict[str, Any], verdict: str, now: float = NOW, served: bytes | None = None
) -> dict[str, Any]:
    text = served if served is not None else orjson.dumps(ticket)
    return {
        "name": name,
        "now": now,
        "served": text.decode(),
        "rebuilt": canonical(orjson.loads(text)).decode(),
        "verdict": verdict,
    }


def _cases(alg: str, key: SigningKey, stranger: SigningKey) -> list[dict[str, Any]]:
    def tampered(name: str, **fields: Any) -> dict[str, Any]:
        return _case(f"{alg}/tampered_{name}", {**_sign(key), **fields}, "bad_signature")

    t = _sign(key)
    unsorted = dict(reversed(list(t.items())))
    expired = _sign(key, expires_at=1763800030)
    return [
        _case(f"{alg}/valid_integral_cost", t, "valid"),
        _case(f"{alg}/valid_fractional_cost", _sign(key, cost=16.5), "valid"),
        _case(f"{alg}/valid_zero_cost", _sign(key, cost=0), "valid"),
        _case(f"{alg}/valid_large_cost", _sign(key, cost=1e6), "valid"),
        _case(
            f"{alg}/valid_smallest_step", _sign(key, cost=0.001, expires_at=1763800030.0), "valid"
        ),
        _case(
            f"{alg}/valid_largest_integers",
            _sign(key, reqnum=2**53 - 1, request_idx=2**53 - 1, cost=2**53 - 1),
            "valid",
        ),
        _case(
            f"{alg}/valid_url_with_path", _sign(key, url="http://10.0.0.7:8000/w/7_a-b~c"), "valid"
        ),
        _case(f"{alg}/valid_fields_unsorted", unsorted, "valid"),
        _case(
            f"{alg}/valid_pretty_printed",
            t,
            "valid",
            served=orjson.dumps(t, option=orjson.OPT_INDENT_2),
        ),
        _case(f"{alg}/valid_until_its_expiry", expired, "valid", now=1763800030),
        _case(f"{alg}/expired", expired, "expired", now=1763800030.001),
        tampered("cost", cost=17),
        tampered("url", url="http://10.0.0.8:8000"),
        tampered("endpoint", endpoint="llama2"),
        tampered("expires_at", expires_at=1763800090.125),
        tampered("reqnum", reqnum=1763800000000122),
        tampered("request_idx", request_idx=1763799999124),
        _case(
            f"{alg}/signature_of_another_ticket",
            {**t, "signature": _sign(key, cost=17)["signature"]},
            "bad_signature",
        ),
        # Signed by a key the JWKS does not hold, naming one it does.
        _case(f"{alg}/wrong_key", {**_sign(stranger), "key_id": key.kid}, "bad_signature"),
        _case(f"{alg}/unknown_key_id", _sign(stranger), "unknown_key"),
    ]


def build() -> bytes:
    """The vectors file's bytes."""
    rsa, ed = _key("rsa", "rsa"), _key("ed25519", "ed25519")
    rsa_x, ed_x = _key("rsa-stranger", "rsa"), _key("ed25519-stranger", "ed25519")
    ring = KeyRing([rsa, ed])
    doc = {
        "about": "Signed routing tickets and the verdict for each; see README.md here.",
        "signed_fields": list(SIGNED_FIELDS),
        "unsigned_fields": list(UNSIGNED_FIELDS),
        "jwks": orjson.loads(ring.jwks_bytes()),
        "pem": {k.kid: k.verify_key.pem() for k in ring.keys},
        "algorithms": {rsa.kid: "RS256", ed.kid: "EdDSA"},
        "cases": _cases("rsa", rsa, rsa_x) + _cases("ed25519", ed, ed_x),
    }
    return orjson.dumps(doc, option=orjson.OPT_INDENT_2) + b"\n"


def main() -> None:
    VECTORS.write_bytes(build())
    print(f"wrote {VECTORS}")


if __name__ == "__main__":
    main()
