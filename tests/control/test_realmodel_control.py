"""A real model through the control plane: created with the Avesha API and loaded with the
Bytez API, served by llama.cpp's server behind the reference worker, answered through the
router's OpenAI path by the openai SDK (plain and streamed), then deleted."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import orjson
import pytest

from router.control.plane import CONTROL
from tests.control import realmodel
from tests.control.helpers import ADMIN, BYTEZ_ADMIN, control_router, control_settings, until_gone
from tests.control.test_avesha import BASE
from tests.router.helpers import until

pytestmark = [pytest.mark.realmodel, pytest.mark.timeout(300)]
REQUIRE_REALMODEL = os.environ.get("REQUIRE_REALMODEL") == "1"
MODEL = "HuggingFaceTB/SmolLM2-135M-Instruct"


def runtime_toml(model_path: Path) -> str:
    command = ", ".join(f'"{c}"' for c in realmodel.RUNTIME.command)
    return f"""
[[runtimes]]
format = "llama-cpp"
backend = "openai"
command = [{command}]
health_path = "{realmodel.RUNTIME.health_path}"
ready_timeout_s = 120
perf = {realmodel.RUNTIME.perf}
max_load = 1          # one request at a time: this server cannot serve two at once
[runtimes.endpoint]
default_cost = 40
[runtimes.endpoint.health]
interval_s = 0.25
timeout_s = 2.0
unhealthy_after = 3
healthy_after = 1
[[models]]
name = "{MODEL}"
task = "text-generation"
runtime = "llama-cpp"
storage_uri = "{model_path.as_uri()}"
"""


@pytest.fixture
def model_path() -> Path:
    missing = realmodel.missing()
    if missing is not None:
        if REQUIRE_REALMODEL:
            pytest.fail(f"realmodel: REQUIRE_REALMODEL=1 but not installed: {missing}")
        pytest.skip(f"realmodel: not installed: {missing}")
    path = realmodel.model_file()
    assert path is not None
    return path


async def test_a_real_model_created_loaded_served_streamed_deleted(
    tmp_path: Path, model_path: Path
) -> None:
    openai = pytest.importorskip("openai")
    settings = control_settings(tmp_path, extra=runtime_toml(model_path))
    async with control_router(settings) as (client, ctx), contextlib.AsyncExitStack() as stack:
        base = str(client.make_url("")).rstrip("/")
        sdk = openai.AsyncOpenAI(
            base_url=f"{base}/v1", api_key="admin-key", max_retries=0, timeout=120
        )
        stack.push_async_callback(sdk.close)  # its connections close on this loop
        body = {
            "clusterName": "local",
            "endpointName": "smol",
            "workspace": "team-beta",
            "modelSpec": {"modelName": "llama-cpp", "storageURI": model_path.as_uri()},
        }
        resp = await client.post(BASE, data=orjson.dumps(body), headers=ADMIN)
        assert resp.status == 200, await resp.text()
        assert await ctx.fleet.until_ready("smol", 150), ctx.registry.records["smol"].reason
        question = [{"role": "user", "content": "What is the capital of France?"}]
        done = await sdk.chat.completions.create(model="smol", messages=question, max_tokens=8)
        assert done.choices[0].message.content
        stream = await sdk.chat.completions.create(
            model="smol", messages=question, max_tokens=8, stream=True
        )
        parts = [c.choices[0].delta.content or "" async for c in stream if c.choices]
        assert "".join(parts)

        # the Bytez API loads the same model file as a catalog model and runs it
        resp = await client.post(
            "/model/load",
            headers=BYTEZ_ADMIN,
            data=orjson.dumps({"model": MODEL, "concurrency": 1}),
        )
        assert resp.status == 200, await resp.text()
        name = MODEL.replace("/", "--")
        assert await ctx.fleet.until_ready(name, 150), ctx.registry.records[name].reason
        resp = await client.post(
            "/model/run",
            headers=BYTEZ_ADMIN,
            data=orjson.dumps(
                {"model": MODEL, "prompt": "The capital of France is", "params": {"max_length": 8}}
            ),
        )
        assert resp.status == 200, await resp.text()
        assert (await resp.json())["output"]

        provider = client.app[CONTROL].providers["local"]
        pids = [p for w in await provider.observe() for p in provider.pids(w.id)]  # type: ignore[attr-defined]
        assert len(pids) == 4  # two workers, each a model server and a reference worker
        resp = await client.request(
            "DELETE",
            BASE,
            headers=ADMIN,
            data=orjson.dumps({"workspace": "team-beta", "endpoint": "smol"}),
        )
        assert resp.status == 200
        resp = await client.post(
            "/model/delete", headers=BYTEZ_ADMIN, data=orjson.dumps({"model": MODEL})
        )
        assert resp.status == 200
        await until(lambda: not {"smol", name} & set(ctx.registry.records), timeout_s=60)
        await until_gone(pids, timeout_s=30)
