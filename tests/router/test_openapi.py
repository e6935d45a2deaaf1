"""/openapi.json is valid OpenAPI 3 and every documented operation exists."""

from __future__ import annotations

from typing import Any

from openapi_spec_validator import validate

from tests.router.helpers import ADMIN_KEY, FakeWorker, router_client, settings

SAMPLE = {"{worker_id}": "0123456789abcdef", "{endpoint}": "demo", "{path}": "generate"}


async def test_every_documented_operation_is_routed(workers: list[FakeWorker]) -> None:
    async with router_client(settings([workers[0].url])) as (client, _):
        doc = await (await client.get("/openapi.json")).json()
        validate(doc)
        assert len(doc["paths"]) >= 15
        for path, ops in doc["paths"].items():
            url = path
            for k, v in SAMPLE.items():
                url = url.replace(k, v)
            for method, op in ops.items():
                resp = await client.request(
                    method.upper(),
                    url,
                    headers={"Authorization": f"Bearer {ADMIN_KEY}"},
                    json={} if method in ("post", "put") else None,
                )
                body: Any = await resp.read()
                assert resp.status != 405, (method, path)
                if resp.status == 404:  # an answer from the handler, not "no such route"
                    assert b'"not_found"' not in body or path.startswith("/{endpoint}"), (
                        method,
                        path,
                        body,
                    )
                assert str(resp.status) in op["responses"] or resp.status in (400, 502), (
                    method,
                    path,
                    resp.status,
                    body,
                )
