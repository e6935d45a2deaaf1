"""The Avesha endpoint API against a router in process, with real local worker processes."""

from __future__ import annotations

import asyncio
import os
import subprocess
from pathlib import Path
from typing import Any

import orjson
import pytest

from router.context import RouterContext
from tests.control.helpers import ADMIN, control_router, control_settings
from tests.router.helpers import until

BASE = "/api/v1/inference-endpoint"

# The seed's examples, as written (with this router's host).
SEED_CREATE = {
    "clusterName": "worker-1",
    "endpointName": "sklearn-iris",
    "workspace": "team-beta",
    "modelSpec": {
        "modelName": "sklearn",
        "storageURI": "gs://kfserving-examples/models/sklearn/1.0/model",
    },
}
SEED_RAW = {
    "clusterName": "worker-1",
    "endpointName": "sklearn-iris",
    "gpuSpec": {
        "gpuShape": "hello",
        "instanceType": "world",
        "memoryPerGPU": 1024,
        "numberOfGPUNodes": 1,
        "numberOfGPUs": 1,
    },
    "workspace": "team-beta",
    "rawModelSpec": 'apiVersion: "serving.kserve.io/v1beta1"\nkind: "InferenceService"\n'
    'metadata:\n name: "sklearn-iris"\nspec:\n predictor:\n  model:\n   modelFormat:\n'
    '    name: sklearn\n   storageUri: "gs://kfserving-examples/models/sklearn/1.0/model"\n',
}


async def call(
    client: Any, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, Any]]:
    resp = await client.request(
        method,
        path,
        data=None if body is None else orjson.dumps(body),
        headers={**ADMIN, **(headers or {})} if headers is not None else ADMIN,
    )
    doc = await resp.json()
    assert doc["statusCode"] == resp.status, doc  # the envelope agrees with HTTP
    return resp.status, doc


def state_of(ctx: RouterContext, name: str) -> str | None:
    record = ctx.registry.records.get(name)
    return None if record is None else record.state


@pytest.mark.parametrize("body", [SEED_CREATE, SEED_RAW], ids=["modelSpec", "rawModelSpec"])
async def test_the_seed_flow_create_list_describe_route_delete(
    tmp_path: Path, body: dict[str, Any]
) -> None:
    async with control_router(control_settings(tmp_path)) as (client, ctx):
        status, doc = await call(client, "POST", BASE, body)
        assert status == 200 and doc["data"] == {"endpointName": "sklearn-iris"}, doc
        assert doc["status"] == "OK" and doc["message"] == "Success"
        await until(lambda: state_of(ctx, "sklearn-iris") == "Running", timeout_s=30)

        for path in (f"{BASE}/list?workspace=team-beta", f"{BASE}?workspace=team-beta"):
            status, doc = await call(client, "GET", path)
            assert status == 200
            (row,) = doc["data"]["endpoints"]
            assert row["endpointName"] == "sklearn-iris" and row["modelName"] == "sklearn"
            assert row["status"] == "Running" and row["clusterName"] == "worker-1"
            assert row["namespace"].startswith("team-beta-sklearn-iris-")
            assert row["endpoint"] == f"http://127.0.0.1:{client.port}/sklearn-iris"

        status, doc = await call(client, "GET", f"{BASE}?workspace=team-beta&endpoint=sklearn-iris")
        ep = doc["data"]["endpoint"]
        assert ep["predictStatus"] == "Ready" and ep["ingressStatus"] == "Ready"
        assert len(ep["workers"]) == 1 and ep["workers"][0]["status"] == "ready"
        (gpr,) = ep["gpuRequests"]
        assert gpr["status"] == "Provisioned" and gpr["gprName"].startswith("sklearn-iris-gpr-")
        if body is SEED_RAW:
            assert gpr["numberOfGPUs"] == 1 and gpr["memoryPerGPU"] == "1048576"

        # tryCommand is a curl that works against the router as written
        script = "\n".join(ep["tryCommand"])
        out = await asyncio.to_thread(
            subprocess.run,
            ["bash", "-c", script],
            capture_output=True,
            text=True,
            timeout=30,
            env={**os.environ, "API_KEY": "admin-key"},
        )
        assert out.returncode == 0 and "generated_text" in out.stdout, (script, out)

        # the OpenAI path finds it by name
        resp = await client.post(
            "/v1/chat/completions",
            headers=ADMIN,
            json={
                "model": "sklearn-iris",
                "max_tokens": 4,
                "messages": [{"role": "user", "content": "hi"}],
            },
        )
        assert resp.status == 200, await resp.text()

        status, doc = await call(
            client, "DELETE", BASE, {"workspace": "team-beta", "endpoint": "sklearn-iris"}
        )
        assert status == 200 and doc["data"] == {}
        await until(lambda: "sklearn-iris" not in ctx.registry.records, timeout_s=30)
        assert ctx.snapshot.endpoint("sklearn-iris") == []
        control = client.app  # the provider forgot its processes
        from router.control.plane import CONTROL

        assert await control[CONTROL].providers["local"].observe() == []
        status, doc = await call(client, "GET", f"{BASE}?workspace=team-beta&endpoint=sklearn-iris")
        assert status == 404 and doc["error"]["errorKey"] == "NOT_FOUND"


def bad(**changes: Any) -> dict[str, Any]:
    body = {**SEED_CREATE, "modelSpec": dict(SEED_CREATE["modelSpec"])}  # type: ignore[arg-type]
    for k, v in changes.items():
        if "." in k:
            outer, inner = k.split(".", 1)
            if v is ...:
                body[outer].pop(inner, None)
            else:
                body[outer][inner] = v
        elif v is ...:
            body.pop(k, None)
        else:
            body[k] = v
    return body


GPU = {
    "gpuShape": "a10",
    "instanceType": "VM.GPU.A10.2",
    "memoryPerGPU": 24,
    "numberOfGPUNodes": 1,
    "numberOfGPUs": 1,
}
BOMB = 'a: &a ["x","x","x","x","x","x","x","x"]\nb: &b [*a,*a,*a,*a,*a,*a,*a,*a]\nc: [*b,*b,*b]\n'


@pytest.mark.parametrize(
    ("body", "field"),
    [
        (bad(clusterName=...), "clusterName"),
        (bad(clusterName=5), "clusterName"),
        (bad(clusterName="a" * 200), "clusterName"),
        (bad(endpointName=...), "endpointName"),
        (bad(endpointName="Not_A_Label"), "endpointName"),
        (bad(endpointName="../../etc"), "endpointName"),
        (bad(endpointName="a" * 64), "endpointName"),
        (bad(endpointName="route"), "endpointName"),
        (bad(endpointName=["x"]), "endpointName"),
        (bad(workspace=...), "workspace"),
        (bad(workspace="Team Beta"), "workspace"),
        (bad(modelSpec=...), "modelSpec"),
        (bad(modelSpec="sklearn"), "modelSpec"),
        (bad(**{"modelSpec.modelName": ...}), "modelSpec.modelName"),
        (bad(**{"modelSpec.modelName": "a/../b"}), "modelSpec.modelName"),
        (bad(**{"modelSpec.storageURI": ...}), "modelSpec.storageURI"),
        (bad(**{"modelSpec.storageURI": "not a uri"}), "modelSpec.storageURI"),
        (bad(**{"modelSpec.storageURI": "gs://" + "x" * 3000}), "modelSpec.storageURI"),
        (bad(**{"modelSpec.args": "--x"}), "modelSpec.args"),
        (bad(gpuSpec=7), "gpuSpec"),
        (bad(gpuSpec={**GPU, "gpuShape": ""}), "gpuSpec.gpuShape"),
        (bad(gpuSpec={**GPU, "memoryPerGPU": "24"}), "gpuSpec.memoryPerGPU"),
        (bad(gpuSpec={**GPU, "numberOfGPUs": 0}), "gpuSpec.numberOfGPUs"),
        (bad(gpuSpec={**GPU, "numberOfGPUNodes": True}), "gpuSpec.numberOfGPUNodes"),
        (bad(gpuSpec={**GPU, "exitDuration": ""}), "gpuSpec.exitDuration"),
        (bad(gpuSpec={**GPU, "exitDuration": "soon"}), "gpuSpec.exitDuration"),
        (bad(gpuSpec={**GPU, "priority": -1}), "gpuSpec.priority"),
        (bad(autoscaling={"min_workers": 3, "max_workers": 1}), "autoscaling.min_workers"),
        (bad(autoscaling={"target_util": 2}), "autoscaling.target_util"),
        (bad(autoscaling={"inactivity_timeout_s": "long"}), "autoscaling.inactivity_timeout_s"),
        (bad(autoscaling={"surprise": 1}), "autoscaling.surprise"),
        (bad(rawModelSpec="kind: Deployment"), "modelSpec"),  # both given
        (bad(modelSpec=..., rawModelSpec=5), "rawModelSpec"),
        (bad(modelSpec=..., rawModelSpec=": : :\n  - ["), "rawModelSpec"),
        (bad(modelSpec=..., rawModelSpec="apiVersion: v1\nkind: Pod\n"), "rawModelSpec.apiVersion"),
        (
            bad(
                modelSpec=...,
                rawModelSpec=SEED_RAW["rawModelSpec"].replace(  # type: ignore[union-attr]
                    '"InferenceService"', "Deployment"
                ),
            ),
            "rawModelSpec.kind",
        ),
        (bad(modelSpec=..., rawModelSpec=BOMB), "rawModelSpec"),
        (bad(modelSpec=..., rawModelSpec="x: &anchor 1\ny: 2\n"), "rawModelSpec"),
        (
            bad(modelSpec=..., rawModelSpec="a:\n" + "  " * 0 + "[" * 100 + "]" * 100),
            "rawModelSpec",
        ),
        (bad(modelSpec=..., rawModelSpec="x: " + "y" * 100_000), "rawModelSpec"),
    ],
)
async def test_bad_input_is_a_422_naming_the_field(
    tmp_path: Path, body: dict[str, Any], field: str
) -> None:
    async with control_router(control_settings(tmp_path)) as (client, ctx):
        status, doc = await call(client, "POST", BASE, body)
        assert status == 422, doc
        assert doc["error"]["errorKey"] == "VALIDATION_ERROR"
        assert f'"{field}"' in doc["error"]["message"], doc
        upstream = orjson.loads(doc["error"]["data"])
        assert upstream["error"]["StatusCode"] == 422
        assert upstream["error"]["DetailedError"]["Details"] == field
        assert ctx.registry.api_records() == []


async def test_auth_conflicts_and_tenants(tmp_path: Path) -> None:
    async with control_router(control_settings(tmp_path)) as (client, ctx):
        status, doc = await call(client, "POST", BASE, SEED_CREATE, headers={})
        assert status == 200
        resp = await client.post(BASE, data=orjson.dumps(SEED_CREATE))
        assert resp.status == 401 and (await resp.json())["statusCode"] == 401
        team_a = {"Authorization": "Bearer team-a-key"}
        status, doc = await call(client, "POST", BASE, SEED_CREATE, headers=team_a)
        assert status == 403  # team-a may not create in team-beta
        status, doc = await call(client, "POST", BASE, SEED_CREATE)
        assert status == 409 and doc["error"]["errorKey"] == "CONFLICT"
        # the same name in another workspace is taken too: names are router-wide
        status, doc = await call(
            client, "POST", BASE, {**SEED_CREATE, "workspace": "team-a"}, headers=team_a
        )
        assert status == 409
        status, doc = await call(
            client,
            "POST",
            BASE,
            {**SEED_CREATE, "workspace": "team-a", "endpointName": "a-one"},
            headers=team_a,
        )
        assert status == 200
        # a workspace key sees its own workspace only; another's endpoint is a 404
        status, doc = await call(client, "GET", f"{BASE}?workspace=team-beta", headers=team_a)
        assert status == 200 and doc["data"]["endpoints"] == []
        status, doc = await call(
            client, "GET", f"{BASE}?workspace=team-beta&endpoint=sklearn-iris", headers=team_a
        )
        assert status == 404
        status, doc = await call(
            client,
            "DELETE",
            BASE,
            {"workspace": "team-beta", "endpoint": "sklearn-iris"},
            headers=team_a,
        )
        assert status == 404
        status, doc = await call(client, "GET", f"{BASE}?workspace=team-a", headers=team_a)
        assert [r["endpointName"] for r in doc["data"]["endpoints"]] == ["a-one"]
        # and routes only its own: another workspace's endpoint is a 404 on the data plane
        await until(lambda: state_of(ctx, "sklearn-iris") == "Running", timeout_s=30)
        resp = await client.post(
            "/sklearn-iris/generate",
            headers=team_a,
            json={"inputs": "x", "parameters": {"max_new_tokens": 2}},
        )
        assert resp.status == 404
        resp = await client.post(
            "/route", json={"endpoint": "sklearn-iris", "api_key": "team-a-key"}
        )
        assert resp.status == 404
        status, doc = await call(client, "GET", f"{BASE}?endpoint=x")
        assert status == 422 and '"workspace"' in doc["error"]["message"]


async def test_a_1mb_body_is_a_413_envelope(tmp_path: Path) -> None:
    import io

    async with control_router(control_settings(tmp_path)) as (client, ctx):
        body = orjson.dumps({**SEED_CREATE, "rawModelSpec": "x" * (1 << 20)})
        resp = await client.post(BASE, data=io.BytesIO(body), headers=ADMIN)
        doc = await resp.json()
        assert resp.status == doc["statusCode"] == 413
        assert ctx.registry.api_records() == []


async def test_the_sdk_trades_its_key_for_a_token(tmp_path: Path) -> None:
    async with control_router(control_settings(tmp_path)) as (client, _):
        resp = await client.post("/api/v1/auth", json={"apiKey": "admin-key"})
        doc = await resp.json()
        assert resp.status == doc["statusCode"] == 200
        token = doc["data"]["accessToken"]
        resp = await client.get(
            f"{BASE}?workspace=team-beta", headers={"Authorization": f"Bearer {token}"}
        )
        assert resp.status == 200
        resp = await client.post("/api/v1/auth", json={"apiKey": "nope"})
        assert resp.status == (await resp.json())["statusCode"] == 400
