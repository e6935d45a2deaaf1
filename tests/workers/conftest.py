"""Fixtures for worker tests: a router key ring, its public key file, a ticket maker."""

from __future__ import annotations

from pathlib import Path

import pytest

from router.signing import KeyRing
from tests.workers.helpers import Tickets


@pytest.fixture(scope="module")
def ring() -> KeyRing:
    return KeyRing.ephemeral("ed25519")


@pytest.fixture
def pubkey_file(tmp_path: Path, ring: KeyRing) -> Path:
    path = tmp_path / "router.pub.pem"
    path.write_text(ring.public_pem())
    return path


@pytest.fixture
def tickets(ring: KeyRing) -> Tickets:
    return Tickets(ring)
