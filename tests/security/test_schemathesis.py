"""Schemathesis against the router's own OpenAPI document, on a live router process.

Every documented operation gets generated requests, valid and invalid (a bounded number
each); none may produce a server error, and each answer must match the documented status
codes, content types and body schemas (errors, /route's Ticket or NoWorker). Only the
proxy's operations document a `default` answer (the worker's own status, passed through).
"""

from __future__ import annotations

import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)

from router import openapi
from tests.security.test_hostile_clients import SECRET, Router, router  # noqa: F401

schema = schemathesis.openapi.from_dict(openapi.document())


@schema.parametrize()
@settings(max_examples=25, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
def test_no_server_error(case: schemathesis.Case, router: Router) -> None:  # noqa: F811
    response = case.call(
        base_url=router.url, headers={"Authorization": f"Bearer {SECRET}"}, timeout=10
    )
    case.validate_response(
        response,
        checks=[
            not_a_server_error,
            status_code_conformance,
            content_type_conformance,
            response_schema_conformance,
        ],
    )
