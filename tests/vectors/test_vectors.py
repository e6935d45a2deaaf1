"""The ticket vectors through three verifiers: plain Python, workers.verify, Node.js.

And tickets the real router issues (in process, both algorithms, several costs) through
the same plain rebuild: what is served is what is signed (docs/protocol.md, "The signature").
"""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, padding, rsa

from router.signing import KeyRing, verify_keys_from_jwks
from tests.router.helpers import DEV_KEY, FakeWorker, ready_count, replace, router_client, until
from tests.router.helpers import settings as router_settings
from tests.vectors import make_vectors
from workers.verify import TicketRejected, TicketVerifier

HERE = Path(__file__).resolve().parent
DOC: dict[str, Any] = json.loads(make_vectors.VECTORS.read_text())
CASES = DOC["cases"]
VERIFY_JS = HERE / "verify.js"
NODE = shutil.which("node")


def plain_rebuild(ticket: dict[str, Any]) -> bytes:
    """The signed bytes as a verifier written from the README rebuilds them."""
    signed = {k: v for k, v in ticket.items() if k not in ("signature", "__request_id")}
    return json.dumps(signed, sort_keys=True, separators=(",", ":")).encode()


def plain_verdict(ticket: dict[str, Any], pems: dict[str, str], now: float) -> str:
    """A third-party verifier: the standard json module and `cryptography`, nothing else."""
    pem = pems.get(ticket["key_id"])
    if pem is None:
        return "unknown_key"
    key = serialization.load_pem_public_key(pem.encode())
    signature = base64.b64decode(ticket["signature"])
    try:
        if isinstance(key, ed25519.Ed25519PublicKey):
            key.verify(signature, plain_rebuild(ticket))
        else:
            assert isinstance(key, rsa.RSAPublicKey)
            key.verify(signature, plain_rebuild(ticket), padding.PKCS1v15(), hashes.SHA256())
    except InvalidSignature:
        return "bad_signature"
    return "expired" if ticket["expires_at"] < now else "valid"


def node_verdicts(doc: dict[str, Any], tmp_path: Path) -> dict[str, dict[str, str]]:
    if NODE is None:
        pytest.skip("node is not installed")
    path = tmp_path / "vectors.json"
    path.write_text(json.dumps(doc))
    out = subprocess.run(
        [NODE, str(VERIFY_JS), str(path)], capture_output=True, check=True, timeout=60
    )
    result: dict[str, dict[str, str]] = json.loads(out.stdout)
    return result


def test_committed_vectors_are_what_make_vectors_writes() -> None:
    assert make_vectors.build() == make_vectors.VECTORS.read_bytes(), (
        "tests/vectors/tickets.json is stale: run python tests/vectors/make_vectors.py"
    )


def test_vectors_cover_every_verdict_for_both_algorithms() -> None:
    seen = {(c["name"].split("/")[0], c["verdict"]) for c in CASES}
    verdicts = {"valid", "bad_signature", "unknown_key", "expired"}
    assert seen == {(a, v) for a in ("rsa", "ed25519") for v in verdicts}


@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
def test_plain_python_json_dumps_verifier(case: dict[str, Any]) -> None:
    ticket = json.loads(case["served"])
    assert plain_rebuild(ticket) == case["rebuilt"].encode()
    assert plain_verdict(ticket, DOC["pem"], case["now"]) == case["verdict"]


@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
def test_workers_verify(case: dict[str, Any]) -> None:
    ticket = json.loads(case["served"])
    keys = verify_keys_from_jwks(DOC["jwks"])
    # The worker's own url and endpoint are the ticket's: the vectors test the signature.
    v = TicketVerifier(keys, ticket["url"], ticket["endpoint"], clock_skew_s=0.0)
    try:
        v.verify(ticket, case["now"])
        verdict = "valid"
    except TicketRejected as exc:
        verdict = exc.reason
    assert verdict == case["verdict"]


def test_node_verifier(tmp_path: Path) -> None:
    got = node_verdicts(DOC, tmp_path)
    for case in CASES:
        assert got[case["name"]] == {"verdict": case["verdict"], "rebuilt": case["rebuilt"]}, case[
            "name"
        ]


COSTS = [16, 16.0, 16.5, 0, 1e6, 0.1 + 0.2, 12345.6789, 2**53 - 1]


@pytest.mark.parametrize("fast_proxy", [True, False], ids=["fast", "aiohttp"])
@pytest.mark.parametrize("algorithm", ["rsa", "ed25519"])
async def test_router_issued_tickets_verify_with_plain_json_dumps(
    algorithm: str, fast_proxy: bool, tmp_path: Path
) -> None:
    worker = FakeWorker()
    await worker.start()
    s = router_settings([worker.url])
    # the endpoint's max_cost up to the largest cost the rule serves exactly
    demo = replace(s.endpoints[0], max_cost=float(2**53 - 1))
    s = replace(
        s, server=replace(s.server, fast_proxy=fast_proxy), endpoints=(demo, *s.endpoints[1:])
    )
    try:
        async with router_client(s, KeyRing.ephemeral(algorithm)) as (client, ctx):  # type: ignore[arg-type]
            await until(lambda: ready_count(ctx) == 1)
            pem = await (await client.get("/pubkey")).text()
            jwks = await (await client.get("/.well-known/jwks.json")).json()
            served = []
            for cost in COSTS:
                resp = await client.post(
                    "/route/",
                    data=json.dumps({"endpoint": "demo", "api_key": DEV_KEY, "cost": cost}),
                )
                assert resp.status == 200
                served.append((await resp.read()).decode())
    finally:
        await worker.stop()
    tickets = [json.loads(text) for text in served]
    kid = tickets[0]["key_id"]
    for cost, ticket in zip(COSTS, tickets, strict=True):
        assert ticket["cost"] == round(cost, 3)
        assert plain_verdict(ticket, {kid: pem}, now=0) == "valid", ticket
    doc = {
        "jwks": jwks,
        "cases": [
            {"name": str(i), "now": 0, "served": text, "verdict": "valid"}
            for i, text in enumerate(served)
        ],
    }
    got = node_verdicts(doc, tmp_path)
    assert [got[str(i)]["verdict"] for i in range(len(served))] == ["valid"] * len(served)
