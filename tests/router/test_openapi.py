"""/openapi.json is valid OpenAPI 3, every documented operation exists and answers only
what the document says, and /route's answers match its Ticket and NoWorker schemas."""

from __future__ import annotations

from typing import Any

import jsonschema
from openapi_spec_validator import validate

from tests.router.helpers import (
    ADMIN_KEY,
    DEV_KEY,
    FakeWorker,
    ready_count,
    router_client,
    settings,
    until,
)

SAMPLE = {"{worker_id}": "0123456789abcdef", "{endpoint}": "demo", "{path}": "generate"}
PUBLIC = {
    "/route",
    "/route/",
    "/pubkey",
    "/pubkey/",
    "/.well-known/jwks.json",
    "/livez",
    "/readyz",
    "/metrics",
    "/openapi.json",
}


def operations(doc: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [(path, m, op) for path, ops in doc["paths"].items() for m, op in ops.items()]


def schema_check(doc: dict[str, Any], name: str, instance: Any) -> None:
    schema = {"$ref": f"#/components/schemas/{name}", "components": doc["components"]}
    jsonschema.Draft202012Validator(schema).validate(instance)


async def test_every_operation_has_an_id_and_says_who_may_call_it(
    workers: list[FakeWorker],
) -> None:
    async with router_client(settings([workers[0].url])) as (client, _):
        doc = await (await client.get("/openapi.json")).json()
    validate(doc)
    ops = operations(doc)
    ids = [op.get("operationId") for _, _, op in ops]
    assert all(ids) and len(set(ids)) == len(ids), ids
    for path, method, op in ops:
        assert "security" in op, (method, path)  # explicit, never inherited
        if path in PUBLIC:
            assert op["security"] == [], (method, path)
        else:
            assert op["security"] == [{"apiKey": []}], (method, path)
        # only proxied answers may be any status: theirs is the worker's
        assert "default" not in op["responses"] or op["tags"] == ["proxy"], (method, path)
    ok = doc["paths"]["/route"]["post"]["responses"]["200"]["content"]["application/json"]
    assert ok["schema"]["oneOf"] == [
        {"$ref": "#/components/schemas/Ticket"},
        {"$ref": "#/components/schemas/NoWorker"},
    ]


async def test_every_documented_operation_is_routed(workers: list[FakeWorker]) -> None:
    async with router_client(settings([workers[0].url])) as (client, ctx):
        await until(lambda: ready_count(ctx) == 1)
        doc = await (await client.get("/openapi.json")).json()
        assert len(doc["paths"]) >= 15
        for path, method, op in operations(doc):
            url = path
            for k, v in SAMPLE.items():
                url = url.replace(k, v)
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
            # listed by its status: `default` (a worker's own answer) covers none of these
            assert str(resp.status) in op["responses"], (
                method,
                path,
                resp.status,
                body,
            )
            if resp.status >= 400 and resp.content_type == "application/json":
                # the error shape that operation documents (the router's, Avesha's envelope
                # or Bytez's string)
                documented = op["responses"][str(resp.status)]["content"]["application/json"]
                schema_check(doc, documented["schema"]["$ref"].rsplit("/", 1)[1], await resp.json())


async def test_route_answers_match_the_ticket_and_no_worker_schemas(
    workers: list[FakeWorker],
) -> None:
    async with router_client(settings([workers[0].url])) as (client, ctx):
        doc = await (await client.get("/openapi.json")).json()
        await until(lambda: ready_count(ctx) == 1)
        for cost in (16, 16.5, 0):
            resp = await client.post(
                "/route", json={"endpoint": "demo", "api_key": DEV_KEY, "cost": cost}
            )
            ticket = await resp.json()
            assert resp.status == 200 and "url" in ticket
            schema_check(doc, "Ticket", ticket)
        workers[0].status = 503  # the worker goes away: no ready worker
        await until(lambda: ready_count(ctx) == 0)
        resp = await client.post("/route/", json={"endpoint": "demo", "api_key": DEV_KEY})
        busy = await resp.json()
        assert resp.status == 200 and "url" not in busy
        schema_check(doc, "NoWorker", busy)
        for name in ("Ticket", "NoWorker"):  # exactly one of the two fits each answer
            fits = []
            for answer in (ticket, busy):
                try:
                    schema_check(doc, name, answer)
                    fits.append(True)
                except jsonschema.ValidationError:
                    fits.append(False)
            assert fits == ([True, False] if name == "Ticket" else [False, True])
