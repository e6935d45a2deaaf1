"""The router's public keys on the worker: a PEM file and/or the router's JWKS.

The JWKS is fetched at start by a background task that retries with backoff until the
router answers (it may start after the worker), then again every `refresh_s`, so a key
the router dropped from its ring stops verifying here too. A ticket with an unknown `key_id` asks
for one refetch: at most one per `refetch_interval_s`, and concurrent asks share the
fetch in flight, so a flood of forged key ids cannot turn into a flood of fetches.
"""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path

import aiohttp
import orjson
from cryptography.exceptions import UnsupportedAlgorithm

from router.signing import SigningKeyError, VerifyKey, verify_key_from_pem, verify_keys_from_jwks
from workers.tasks import cancel_and_wait, raise_if_cancelled
from workers.verify import TicketVerifier

log = logging.getLogger(__name__)

_FETCH_TIMEOUT = aiohttp.ClientTimeout(total=3)
_BACKOFF_FIRST_S = 0.2
_BACKOFF_MAX_S = 5.0


def load_pubkey_file(path: Path) -> VerifyKey:
    """Read a router public key PEM; raise SigningKeyError with a clear message."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise SigningKeyError(f"cannot read public key file {path}: {exc.strerror}") from exc
    try:
        return verify_key_from_pem(data)
    except (ValueError, UnsupportedAlgorithm) as exc:  # ValueError includes SigningKeyError
        raise SigningKeyError(f"{path} is not an RSA or Ed25519 public key PEM") from exc


def _fingerprint(keys: dict[str, VerifyKey]) -> list[tuple[str, str]]:
    """What identifies a key set: each kid with its public key (as PEM)."""
    return sorted((kid, key.pem()) for kid, key in keys.items())


class KeySource:
    """Keeps `verifier.keys` = the PEM file's key + the router's current JWKS."""

    def __init__(
        self,
        verifier: TicketVerifier,
        router_url: str | None,
        static_keys: dict[str, VerifyKey],
        refetch_interval_s: float = 5.0,
        refresh_s: float = 60.0,
    ) -> None:
        self.verifier = verifier
        self.jwks_url = f"{router_url.rstrip('/')}/.well-known/jwks.json" if router_url else None
        self.static_keys = dict(static_keys)
        self.refetch_interval_s = refetch_interval_s
        self.refresh_s = refresh_s  # 0: fetch once, then only on an unknown key_id
        self.verifier.keys = dict(self.static_keys)
        self._session: aiohttp.ClientSession | None = None
        self._loader: asyncio.Task[None] | None = None
        self._refetch: asyncio.Task[bool] | None = None
        self._last_refetch = -float("inf")
        self._last_error: str | None = None

    @property
    def loaded(self) -> bool:
        return bool(self.verifier.keys)

    def start(self, session: aiohttp.ClientSession) -> None:
        """Start the background JWKS load (when there is a router to ask)."""
        self._session = session
        if self.jwks_url is not None:
            self._loader = asyncio.get_running_loop().create_task(
                self.load_and_refresh(), name="worker-jwks-load"
            )

    async def close(self) -> None:
        await cancel_and_wait(self._loader, self._refetch)
        self._session = None

    async def fetch_once(self) -> bool:
        """Fetch the JWKS and replace the router's keys; True on success."""
        if self._session is None or self.jwks_url is None:
            return False
        try:
            async with self._session.get(self.jwks_url, timeout=_FETCH_TIMEOUT) as resp:
                if resp.status != 200:
                    return self._failed(f"answered HTTP {resp.status}")
                keys = verify_keys_from_jwks(orjson.loads(await resp.read()))
        except (aiohttp.ClientError, TimeoutError, orjson.JSONDecodeError, SigningKeyError) as exc:
            return self._failed(str(exc) or type(exc).__name__)
        if not keys:
            return self._failed("published no keys")
        # Replace rather than merge: a key the router stopped publishing is revoked.
        new = {**self.static_keys, **keys}
        changed = _fingerprint(new) != _fingerprint(self.verifier.keys)
        self.verifier.keys = new
        self._last_error = None
        # A refresh runs every minute: INFO only when it changed something.
        if changed:
            log.info("loaded router keys %s from %s", ", ".join(sorted(keys)), self.jwks_url)
        else:
            log.debug("router keys unchanged at %s", self.jwks_url)
        return True

    def _failed(self, why: str) -> bool:
        if why != self._last_error:  # once per distinct problem, not once per retry
            log.warning("fetching router keys from %s failed: %s (retrying)", self.jwks_url, why)
            self._last_error = why
        return False

    async def load_until_done(self) -> None:
        """Fetch until the router answers, backing off between tries."""
        delay = _BACKOFF_FIRST_S
        while not await self.fetch_once():
            raise_if_cancelled()
            await asyncio.sleep(delay)
            delay = min(delay * 2, _BACKOFF_MAX_S)

    async def load_and_refresh(self) -> None:
        """Load the keys, then refresh them every `refresh_s` (a failure keeps them)."""
        await self.load_until_done()
        while self.refresh_s > 0:
            await asyncio.sleep(self.refresh_s)
            await self.fetch_once()

    async def refetch(self) -> bool:
        """Refetch for an unknown key_id; True if keys were (re)loaded by this or a shared fetch.

        The fetch runs in its own task, shielded: a client hanging up must not cancel a
        fetch other requests are waiting on.
        """
        if self._refetch is None or self._refetch.done():
            now = time.monotonic()
            if self._session is None or now - self._last_refetch < self.refetch_interval_s:
                return False
            self._last_refetch = now
            self._refetch = asyncio.get_running_loop().create_task(
                self.fetch_once(), name="worker-jwks-refetch"
            )
        return await asyncio.shield(self._refetch)
