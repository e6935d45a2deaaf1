"""API keys (docs/protocol.md): stored as SHA-256 digests, compared in constant time, never logged.

A key arrives as `Authorization: Bearer K`, `Authorization: Key K` (Bytez) or the `api_key`
field of a `/route` body (Vast). What a key may do is its scope: endpoints, admin, and
registering workers (a worker token).
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable

from router.config import ApiKeySettings


class AuthError(Exception):
    """401 (no or unknown key) or 403 (key not allowed here); the message never has the key."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


def key_from_header(value: str | None) -> str | None:
    """The key in an Authorization header (`Bearer K` or `Key K`), if any."""
    if not value:
        return None
    scheme, _, token = value.strip().partition(" ")
    if scheme.lower() in ("bearer", "key") and token.strip():
        return token.strip()
    return None


class KeyRingAuth:
    def __init__(self, keys: Iterable[ApiKeySettings]) -> None:
        self._keys = list(keys)

    def __bool__(self) -> bool:
        return bool(self._keys)

    def lookup(self, presented: str | None) -> ApiKeySettings:
        """Return the settings of the presented key or raise a 401 AuthError."""
        if not presented:
            raise AuthError(
                401,
                "missing_api_key",
                "an API key is required (Authorization: Bearer KEY or api_key)",
            )
        digest = hashlib.sha256(presented.encode("utf-8", "surrogatepass")).hexdigest()
        found = None
        for k in self._keys:  # compare against every key: timing says nothing of which matched
            if hmac.compare_digest(digest, k.key_sha256):
                found = k
        if found is None:
            raise AuthError(401, "invalid_api_key", "the API key is not valid")
        return found

    def require_admin(self, presented: str | None) -> ApiKeySettings:
        key = self.lookup(presented)
        if not key.admin:
            raise AuthError(403, "forbidden", "an admin API key is required")
        return key

    def require_registrar(self, presented: str | None, endpoint: str | None) -> ApiKeySettings:
        """Admin keys, or worker tokens (register_workers) scoped to `endpoint`."""
        key = self.lookup(presented)
        if key.admin:
            return key
        if not key.register_workers:
            raise AuthError(403, "forbidden", "an admin key or worker token is required")
        if endpoint is not None and not key.allows(endpoint):
            raise AuthError(403, "forbidden", f"this token may not manage endpoint {endpoint!r}")
        return key
