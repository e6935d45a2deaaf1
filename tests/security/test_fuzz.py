"""Property-based bad input (hypothesis) against real router and worker processes.

Whatever arrives, the answer is a JSON error in the 4xx range or a valid answer: never a
500, never a stack trace, and the process stays up.
"""

from __future__ import annotations

import base64
import json
import time
import urllib.parse
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.e2e.procs import request, route
from tests.security.test_hostile_clients import SECRET, Router, router  # noqa: F401

EXAMPLES = 100
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow],
)

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=40),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4)
    ),
    max_leaves=12,
)
route_fields = {
    "endpoint": st.sampled_from(["demo", "nope", ""]) | json_values,
    "api_key": st.sampled_from(["dev-key", "wrong"]) | json_values,
    "cost": st.floats() | json_values,
    "request_idx": json_values,
    "session_id": json_values,
    "replay_timeout": json_values,
}


def dumps(value: Any) -> bytes:
    """JSON as a client might send it: integers past 64 bits included (orjson refuses)."""
    return json.dumps(value).encode()


def no_server_error(status: int, doc: Any) -> None:
    assert status < 500 or (
        isinstance(doc, dict)
        and doc.get("error", {}).get("code")
        in {"no_worker", "store_unavailable", "upstream_timeout", "worker_unreachable"}
    ), doc
    text = doc if isinstance(doc, str) else orjson.dumps(doc).decode()
    assert "Traceback" not in text and 'File "' not in text
    if status >= 400:
        assert isinstance(doc, dict) and isinstance(doc.get("error", {}).get("code"), str), doc


MAX_SAFE_INTEGER = 2**53 - 1
VALID_KEYS = {"dev-key", "admin-key", "worker-token", SECRET}


def _unreadable(value: Any) -> bool:
    """True if orjson refuses this JSON: NaN or infinities (integers past 64 bits it reads
    as floats, which every check below judges as it judges the integer)."""
    stack = [value]
    while stack:
        v = stack.pop()
        if isinstance(v, bool):
            continue
        if isinstance(v, float) and (v != v or v in (float("inf"), float("-inf"))):
            return True
        if isinstance(v, dict):
            stack += [*v.values()]
        elif isinstance(v, list):
            stack += v
    return False


def _number_ok(v: Any, ceiling: float = MAX_SAFE_INTEGER) -> bool:
    if v is None:
        return True
    if isinstance(v, bool) or not isinstance(v, int | float):
        return False
    return v == v and 0 <= v <= ceiling


def route_status(body: Any) -> int:
    """What /route must answer for `body`, checked in the order docs/protocol.md gives."""
    if _unreadable(body) or not isinstance(body, dict):
        return 400
    endpoint, key = body.get("endpoint"), body.get("api_key")
    if not isinstance(endpoint, str) or not endpoint:
        return 400
    if key is not None and (not isinstance(key, str) or len(key) > 4096):
        return 400
    if key not in VALID_KEYS:
        return 401
    if endpoint != "demo":
        return 404
    if not _number_ok(body.get("cost"), 1e9):  # the endpoint's max_cost
        return 400
    idx = body.get("request_idx")
    if idx is not None and (isinstance(idx, bool) or not isinstance(idx, int)):
        return 400
    if not _number_ok(idx) or not _number_ok(body.get("replay_timeout")):
        return 400
    sid = body.get("session_id")
    if sid is not None and (not isinstance(sid, str) or len(sid) > 256):
        return 400
    return 200


@FUZZ
@given(body=st.fixed_dictionaries({}, optional=route_fields) | json_values)
def test_route_bodies(router: Router, body: Any) -> None:  # noqa: F811
    status, doc = request("POST", f"{router.url}/route/", raw=dumps(body))
    no_server_error(status, doc)
    assert status == route_status(body), (body, doc)


@FUZZ
@given(raw=st.binary(max_size=300))
def test_route_raw_bytes(router: Router, raw: bytes) -> None:  # noqa: F811
    status, doc = request("POST", f"{router.url}/route", raw=raw)
    no_server_error(status, doc)
    try:
        body = json.loads(raw)
    except ValueError:
        assert status == 400, (raw, doc)
        return
    assert status == route_status(body), (raw, doc)


header_names = st.from_regex(r"\A[A-Za-z][A-Za-z0-9-]{0,20}\Z")
header_values = st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=60)


@FUZZ
@given(
    method=st.sampled_from(["GET", "POST", "PUT", "DELETE", "PATCH"]),
    endpoint=st.sampled_from(["demo", "nope", "v1", "api"]),
    path=st.text(max_size=40),
    query=st.text(max_size=20),
    headers=st.dictionaries(header_names, header_values, max_size=5),
    body=st.binary(max_size=200),
)
def test_proxy_paths_and_headers(
    router: Router,  # noqa: F811
    method: str,
    endpoint: str,
    path: str,
    query: str,
    headers: dict[str, str],
    body: bytes,
) -> None:
    url = (
        f"{router.url}/{endpoint}/{urllib.parse.quote(path, safe='/')}"
        f"?{urllib.parse.quote(query, safe='=&')}"
    )
    headers = {
        k: v
        for k, v in headers.items()
        if k.lower() not in {"content-length", "transfer-encoding", "host", "connection", "expect"}
    }
    status, doc = request(
        method, url, headers={**headers, "Authorization": f"Bearer {SECRET}"}, raw=body
    )
    no_server_error(status, doc)


ticket_fields = st.sampled_from(
    [
        "cost",
        "endpoint",
        "expires_at",
        "key_id",
        "reqnum",
        "request_idx",
        "url",
        "signature",
        "__request_id",
    ]
)


@FUZZ
@given(
    shape=st.sampled_from(["auth_data", "merged", "header"]),
    changes=st.dictionaries(ticket_fields, json_values, max_size=3),
    dropped=st.sets(ticket_fields, max_size=2),
    payload=json_values,
)
def test_worker_ticket_shapes(
    router: Router,  # noqa: F811
    shape: str,
    changes: dict[str, Any],
    dropped: set[str],
    payload: Any,
) -> None:
    ticket = route(router.url)
    ticket.update(changes)
    for f in dropped:
        ticket.pop(f, None)
    url, headers = f"{router.worker_url}/generate", {}
    if shape == "auth_data":
        body: Any = {"auth_data": ticket, "payload": payload}
    elif shape == "merged":
        body = {**ticket, **payload} if isinstance(payload, dict) else ticket
    else:
        headers["X-Route-Ticket"] = base64.urlsafe_b64encode(dumps(ticket)).decode()
        body = payload
    status, doc = request("POST", url, headers=headers, raw=dumps(body))
    no_server_error(status, doc)
    if changes or dropped:
        # a ticket changed after signing, or missing a field, never gets through
        unchanged = all(k in {"__request_id"} for k in [*changes, *dropped])
        if not unchanged:
            assert status in {400, 401}, (status, doc, changes, dropped)


def test_still_serving_after_the_fuzz(router: Router) -> None:  # noqa: F811
    assert request("GET", f"{router.url}/livez")[0] == 200
    assert "url" in route(router.url)
    assert router.proc.proc is not None and router.proc.proc.poll() is None
    assert "Traceback" not in router.proc.log()


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("url", "http://127.0.0.1/" + "x" * 200_000),
        ("endpoint", "e" * 200_000),
        ("key_id", "k" * 200_000),
        ("signature", "A" * 200_000),
        ("reqnum", 10**40),
        ("cost", 1e308),
        ("expires_at", 10**40),
        ("request_idx", -(10**40)),
    ],
)
def test_huge_ticket_fields_are_refused_quickly(
    router: Router,  # noqa: F811
    field: str,
    value: Any,
) -> None:
    ticket = {**route(router.url), field: value}
    started = time.monotonic()
    status, doc = request(
        "POST",
        f"{router.worker_url}/generate",
        raw=dumps({"auth_data": ticket, "payload": {"inputs": "x"}}),
    )
    assert status in {400, 401, 413}, (status, doc)
    assert isinstance(doc, dict) and doc["error"]["code"]
    assert time.monotonic() - started < 2.0
