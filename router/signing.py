"""Routing tickets: canonical form, RSA/Ed25519 signatures, the key ring and its JWKS.

Both the router (which signs) and the reference worker (which verifies) use this module,
so the signed bytes are defined in exactly one place.

What is served is what is signed (docs/protocol.md, "The signature"):
`KeyRing.sign_ticket` first puts every field in the one form that Python's
`json.dumps(t, sort_keys=True, separators=(",", ":"))`, JavaScript's `JSON.stringify`
and Go's `encoding/json` all write back byte for byte, so a verifier rebuilds the signed
bytes from the ticket it received with its standard encoder:

* numbers: an integral value is an integer (`16`, never `16.0`); any other is rounded to
  3 decimals (`16.5`, `1763800030.123`). Both stay within +-(2**53 - 1), JavaScript's
  exact integers, so the shortest round-trip form has no exponent in any of the three;
* strings: printable ASCII without `"`, `\\`, `<`, `>`, `&`, the characters every encoder
  writes as themselves (Python escapes non-ASCII by default, JavaScript does not; Go
  escapes `<>&` by default).

`tests/vectors/` holds signed tickets and their verdicts for verifiers in any language.
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import logging
import math
import os
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import orjson
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, padding, rsa
from nacl.bindings import crypto_sign, crypto_sign_seed_keypair

log = logging.getLogger(__name__)

Algorithm = Literal["rsa", "ed25519"]
PrivateKey = rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey
PublicKey = rsa.RSAPublicKey | ed25519.Ed25519PublicKey

# Fields of a ticket that the signature covers. `signature` and `__request_id` are not.
SIGNED_FIELDS = ("cost", "endpoint", "expires_at", "key_id", "reqnum", "request_idx", "url")
UNSIGNED_FIELDS = ("signature", "__request_id")
TICKET_FIELDS = SIGNED_FIELDS + UNSIGNED_FIELDS

_PKCS1 = padding.PKCS1v15()
_SHA256 = hashes.SHA256()


class SigningKeyError(Exception):
    """A key file or JWKS document could not be used."""


# The largest integer every JSON reader holds exactly (JavaScript numbers are doubles).
MAX_SAFE_INTEGER = 2**53 - 1
# Decimals kept in a non-integral ticket number: 0.001 is the smallest step, and no
# positive value below 1e-4 (where Python's repr switches to an exponent) can occur.
TICKET_DECIMALS = 3
# Characters outside printable ASCII, and those some standard encoder escapes.
_UNPLAIN = re.compile(r'[^\x20-\x7e]|["\\<>&]')


def ticket_number(v: float) -> int | float:
    """Return `v` in the form it is signed and served in: an int if integral, else 3 decimals."""
    if type(v) is float:
        if not math.isfinite(v):
            raise ValueError(f"a ticket number must be finite, got {v!r}")
        v = round(v, TICKET_DECIMALS) + 0.0  # + 0.0: -0.0 becomes 0.0
        if not v.is_integer():
            return v  # below 2**52 in size: every float above is integral
        v = int(v)
    elif type(v) is not int:  # bool included: JSON's true is not a number
        raise ValueError(f"a ticket number must be an int or float, got {type(v).__name__}")
    if not -MAX_SAFE_INTEGER <= v <= MAX_SAFE_INTEGER:
        raise ValueError(f"a ticket number must be within +-(2**53 - 1), got {v!r}")
    return v


@functools.lru_cache(maxsize=4096)  # every ticket checks the same few urls and names
def is_plain_string(s: str) -> bool:
    """True if every standard JSON encoder writes `s` as itself (see the module docstring)."""
    return _UNPLAIN.search(s) is None


def normalize_ticket(ticket: dict[str, Any]) -> dict[str, Any]:
    """Put every signed field of `ticket` in its served form, in place; ValueError if one
    cannot be (a string outside plain ASCII, a number out of range)."""
    for k, v in ticket.items():
        if type(v) is str:
            if k not in UNSIGNED_FIELDS and not is_plain_string(v):
                raise ValueError(f'ticket field {k!r} must be printable ASCII without "\\<>&')
        elif type(v) is not int or not -MAX_SAFE_INTEGER <= v <= MAX_SAFE_INTEGER:
            if k not in UNSIGNED_FIELDS:
                ticket[k] = ticket_number(v)
    return ticket


def _plain_number(v: Any) -> Any:
    # A client that re-encodes a ticket may write 256 as 256.0; it is the same number.
    if type(v) is float and v.is_integer() and abs(v) <= MAX_SAFE_INTEGER:
        return int(v)
    return v


def canonical(ticket: Mapping[str, Any]) -> bytes:
    """Return the signed bytes: every ticket field but the unsigned ones, sorted compact JSON.

    For a ticket as served this equals Python's `json.dumps(t, sort_keys=True,
    separators=(",", ":"))` (see the module docstring); it also reads an integral float
    as the integer it was signed as, for tickets a client re-encoded.
    """
    body = {k: _plain_number(v) for k, v in ticket.items() if k not in UNSIGNED_FIELDS}
    return orjson.dumps(body, option=orjson.OPT_SORT_KEYS)


def _b64url_uint(n: int) -> str:
    raw = n.to_bytes((n.bit_length() + 7) // 8 or 1, "big")
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _b64url_decode(s: str) -> bytes:
    return base64.urlsafe_b64decode(s + "=" * (-len(s) % 4))


def key_id_for(public: PublicKey) -> str:
    """Derive a stable key id from the public key (first 16 hex of its DER SHA-256)."""
    der = public.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return hashlib.sha256(der).hexdigest()[:16]


@dataclass(frozen=True, slots=True)
class VerifyKey:
    """A public key that can check ticket signatures."""

    kid: str
    public: PublicKey

    @property
    def algorithm(self) -> Algorithm:
        return "ed25519" if isinstance(self.public, ed25519.Ed25519PublicKey) else "rsa"

    def verify(self, message: bytes, signature: bytes) -> bool:
        try:
            if isinstance(self.public, ed25519.Ed25519PublicKey):
                self.public.verify(signature, message)
            else:
                self.public.verify(signature, message, _PKCS1, _SHA256)
        except InvalidSignature:
            return False
        return True

    def pem(self) -> str:
        return self.public.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        ).decode()

    def jwk(self) -> dict[str, str]:
        if isinstance(self.public, ed25519.Ed25519PublicKey):
            raw = self.public.public_bytes(
                serialization.Encoding.Raw, serialization.PublicFormat.Raw
            )
            x = base64.urlsafe_b64encode(raw).rstrip(b"=").decode()
            return {
                "kty": "OKP",
                "crv": "Ed25519",
                "x": x,
                "kid": self.kid,
                "alg": "EdDSA",
                "use": "sig",
            }
        nums = self.public.public_numbers()
        return {
            "kty": "RSA",
            "n": _b64url_uint(nums.n),
            "e": _b64url_uint(nums.e),
            "kid": self.kid,
            "alg": "RS256",
            "use": "sig",
        }


def _ed25519_signer(private: ed25519.Ed25519PrivateKey) -> Callable[[bytes], bytes]:
    """Sign with libsodium (PyNaCl, from PyCA like `cryptography`): 22 µs a signature on
    the bench machine against OpenSSL's 36 µs, on every ticket. Ed25519 signatures are
    deterministic, so the bytes are the same either way (tests/router/test_signing.py)."""
    seed = private.private_bytes(
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
    )
    _, secret = crypto_sign_seed_keypair(seed)
    return lambda message: crypto_sign(message, secret)[:64]


class SigningKey:
    """A private key with its id; signs canonical ticket bytes."""

    __slots__ = ("_sign", "kid", "private")

    def __init__(self, kid: str, private: PrivateKey) -> None:
        self.kid = kid
        self.private = private
        # Bound once: /route signs on every request, and isinstance on the key ABCs is slow.
        if isinstance(private, ed25519.Ed25519PrivateKey):
            self._sign: Callable[[bytes], bytes] = _ed25519_signer(private)
        else:
            rsa_key = private
            self._sign = lambda message: rsa_key.sign(message, _PKCS1, _SHA256)

    @property
    def verify_key(self) -> VerifyKey:
        return VerifyKey(self.kid, self.private.public_key())

    def sign(self, message: bytes) -> str:
        return base64.b64encode(self._sign(message)).decode()


def generate_private_key(algorithm: Algorithm) -> PrivateKey:
    if algorithm == "ed25519":
        return ed25519.Ed25519PrivateKey.generate()
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def private_key_pem(private: PrivateKey) -> bytes:
    return private.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def write_private_key(path: Path, algorithm: Algorithm) -> SigningKey:
    """Generate a key and write it as PKCS#8 PEM with mode 0600 (never world-readable)."""
    private = generate_private_key(algorithm)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(private_key_pem(private))
    os.chmod(path, 0o600)
    return SigningKey(key_id_for(private.public_key()), private)


def load_private_key(path: Path) -> SigningKey:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise SigningKeyError(f"cannot read key file {path}: {exc.strerror}") from exc
    try:
        private = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise SigningKeyError(f"key file {path} is not an unencrypted PEM private key") from exc
    if isinstance(private, rsa.RSAPrivateKey):
        if private.key_size < 2048:
            raise SigningKeyError(f"key file {path}: RSA keys must be at least 2048 bits")
    elif not isinstance(private, ed25519.Ed25519PrivateKey):
        raise SigningKeyError(f"key file {path}: only RSA and Ed25519 keys are supported")
    return SigningKey(key_id_for(private.public_key()), private)


def verify_key_from_jwk(jwk: Mapping[str, Any]) -> VerifyKey:
    try:
        kid = str(jwk["kid"])
        if jwk["kty"] == "RSA":
            n = int.from_bytes(_b64url_decode(jwk["n"]), "big")
            e = int.from_bytes(_b64url_decode(jwk["e"]), "big")
            return VerifyKey(kid, rsa.RSAPublicNumbers(e, n).public_key())
        if jwk["kty"] == "OKP" and jwk.get("crv") == "Ed25519":
            return VerifyKey(
                kid, ed25519.Ed25519PublicKey.from_public_bytes(_b64url_decode(jwk["x"]))
            )
    except (KeyError, TypeError, ValueError, binascii.Error) as exc:
        raise SigningKeyError(f"malformed JWK: {exc}") from exc
    raise SigningKeyError(f"unsupported JWK type {jwk.get('kty')!r}")


def verify_keys_from_jwks(doc: Mapping[str, Any]) -> dict[str, VerifyKey]:
    keys = doc.get("keys")
    if not isinstance(keys, list):
        raise SigningKeyError("JWKS document has no 'keys' list")
    out: dict[str, VerifyKey] = {}
    for jwk in keys:
        if isinstance(jwk, Mapping):
            vk = verify_key_from_jwk(jwk)
            out[vk.kid] = vk
    return out


def verify_key_from_pem(pem: bytes, kid: str | None = None) -> VerifyKey:
    public = serialization.load_pem_public_key(pem)
    if not isinstance(public, rsa.RSAPublicKey | ed25519.Ed25519PublicKey):
        raise SigningKeyError("only RSA and Ed25519 public keys are supported")
    return VerifyKey(kid or key_id_for(public), public)


class KeyRing:
    """Keys the router holds: the newest signs `/route` tickets, the newest Ed25519 one
    signs proxy tickets, every one verifies and is published (docs/protocol.md).

    Proxy tickets never leave the router and the worker: an RSA signature per proxied
    request (~0.4 ms of CPU) buys nothing over Ed25519 (~0.02 ms), and a worker verifies
    either through the JWKS. A ring with no Ed25519 key signs proxy tickets with its
    newest key too.
    """

    def __init__(self, keys: Iterable[SigningKey]) -> None:
        self.keys = list(keys)
        if not self.keys:
            raise SigningKeyError("a key ring needs at least one key")
        self.signer = self.keys[-1]
        eddsa = [k for k in self.keys if k.verify_key.algorithm == "ed25519"]
        self.proxy_signer = eddsa[-1] if eddsa else self.signer
        # Ed25519 signs in ~20 us: on the event loop, cheaper than a hop to a thread
        self.proxy_on_loop = bool(eddsa)
        self._jwks = orjson.dumps({"keys": [k.verify_key.jwk() for k in self.keys]})
        self._pem = self.signer.verify_key.pem()

    @classmethod
    def from_files(cls, paths: Iterable[Path]) -> KeyRing:
        return cls(load_private_key(p) for p in paths)

    @classmethod
    def ephemeral(cls, algorithm: Algorithm) -> KeyRing:
        """A fresh ring whose newest key is `algorithm`; an RSA ring gets an Ed25519 key
        too, for proxy tickets."""
        keys = []
        for alg in ("ed25519", "rsa") if algorithm == "rsa" else ("ed25519",):
            private = generate_private_key(alg)
            keys.append(SigningKey(key_id_for(private.public_key()), private))
        return cls(keys)

    @property
    def kid(self) -> str:
        return self.signer.kid

    @property
    def proxy_kid(self) -> str:
        return self.proxy_signer.kid

    def sign_ticket(self, ticket: dict[str, Any], *, proxy: bool = False) -> dict[str, Any]:
        """Put `ticket` in its served form and add `signature` over its canonical bytes.

        `ticket` must carry every signed field, `key_id` included (`kid`, or `proxy_kid`
        with `proxy`); ValueError if a field has no served form (see `normalize_ticket`).
        """
        normalize_ticket(ticket)
        signer = self.proxy_signer if proxy else self.signer
        ticket["signature"] = signer.sign(canonical(ticket))
        return ticket

    def public_pem(self) -> str:
        return self._pem

    def jwks_bytes(self) -> bytes:
        return self._jwks
