"""The Bytez model API against a router in process, with real local worker processes."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import orjson
import pytest

from router.context import RouterContext
from tests.control.helpers import BYTEZ_ADMIN, control_router, control_settings
from tests.router.helpers import until

GPT2 = "openai-community/gpt2"
GPT2_EP = "openai-community--gpt2"


async def post(
    client: Any, path: str, body: Any = None, headers: dict[str, str] | None = None
) -> tuple[int, Any]:
    resp = await client.post(
        path,
        data=None if body is None else orjson.dumps(body),
        headers=BYTEZ_ADMIN if headers is None else headers,
    )
    text = await resp.read()
    try:
        return resp.status, orjson.loads(text)
    except orjson.JSONDecodeError:
        return resp.status, text.decode()


def state_of(ctx: RouterContext, name: str = GPT2_EP) -> str | None:
    record = ctx.registry.records.get(name)
    return None if record is None else record.state


async def test_the_seed_sequence(tmp_path: Path) -> None:
    async with control_router(control_settings(tmp_path)) as (client, ctx):
        # list
        status, models = await post(client, "/model/list")
        assert status == 200
        names = [m["name"] for m in models]
        assert GPT2 in names and set(models[0]) >= {"name", "requiredRAM", "benchmarked"}
        resp = await client.get("/model/list?task=text-to-image", headers=BYTEZ_ADMIN)
        assert [m["name"] for m in await resp.json()] == ["stabilityai/stable-diffusion-2"]

        # job: queued, then available with the measured figures
        status, doc = await post(client, "/model/job", {"model": GPT2})
        assert status == 200 and doc["success"] is True and doc["model"] == GPT2, doc
        assert "modified" in doc and "message" not in doc
        status, doc = await post(client, "/model/job", {"model": GPT2})
        assert doc["message"] in ("Model is already queued", "Model available")

        async def available() -> bool:
            _, d = await post(client, "/model/job", {"model": GPT2})
            return bool(d.get("message") == "Model available")

        deadline = time.monotonic() + 60
        while not await available():
            assert time.monotonic() < deadline, "the job did not finish"
            await ctx.fleet.until_ready("never", 0.2)  # a short, event-based pause
        _, doc = await post(client, "/model/job", {"model": GPT2})
        assert doc["startTime"] and doc["endTime"] and doc["success"] is True
        _, models = await post(client, "/model/list")
        gpt2 = next(m for m in models if m["name"] == GPT2)
        assert gpt2["benchmarked"] is True and 0 < gpt2["requiredRAM"] < 4  # GB, measured

        # load, status
        status, doc = await post(client, "/model/load", {"model": GPT2, "concurrency": 1})
        assert (status, doc) == (200, {"model": GPT2, "status": "started", "concurrency": 1})
        await until(lambda: state_of(ctx) == "Running", timeout_s=30)
        status, doc = await post(client, "/model/status", {"model": GPT2})
        assert status == 200 and doc["status"] == "RUNNING" and doc["concurrency"] == 1
        assert doc["expirationPeriodSeconds"] == 1800 and doc["expirationPeriodMinutes"] == 30
        assert doc["expiresAt"].endswith("Z") and doc["created"] and doc["modified"]
        before = doc["inferences"]

        # run, plain and streamed (the seed's request)
        status, doc = await post(
            client,
            "/model/run",
            {
                "model": GPT2,
                "prompt": "Once upon a time there was a",
                "params": {"min_length": 30, "max_length": 16},
            },
        )
        assert status == 200 and isinstance(doc["output"], str) and doc["output"], doc
        resp = await client.post(
            "/model/run",
            headers=BYTEZ_ADMIN,
            data=orjson.dumps(
                {
                    "model": GPT2,
                    "prompt": "Once upon a time there was a",
                    "params": {"min_length": 30, "max_length": 8},
                    "stream": True,
                }
            ),
        )
        assert resp.status == 200 and resp.content_type == "text/plain"
        chunks = [c async for c in resp.content.iter_any()]
        text = b"".join(chunks).decode()
        assert text and "data:" not in text and "[DONE]" not in text, text
        await ctx.activity.flush(ctx.store)
        _, doc = await post(client, "/model/status", {"model": GPT2})
        assert doc["inferences"] >= before + 2

        # instances, delete
        status, rows = await post(client, "/model/instances")
        assert status == 200 and [r["model"] for r in rows] == [GPT2]
        status, doc = await post(client, "/model/delete", {"model": GPT2})
        assert status == 200 and doc["status"] == "STOPPING"
        await until(lambda: state_of(ctx) is None, timeout_s=30)
        _, doc = await post(client, "/model/status", {"model": GPT2})
        assert doc["status"] == "STOPPED"
        status, rows = await post(client, "/model/instances")
        assert rows == []


async def test_idle_expiry_is_prompt_and_a_run_brings_it_back(tmp_path: Path) -> None:
    async with control_router(control_settings(tmp_path)) as (client, ctx):
        status, _ = await post(
            client, "/model/load", {"model": GPT2, "concurrency": 1, "expirationPeriodSeconds": 2}
        )
        assert status == 200
        await until(lambda: state_of(ctx) == "Running", timeout_s=30)
        status, doc = await post(client, "/model/run", {"model": GPT2, "prompt": "hi"})
        assert status == 200
        ran = time.monotonic()
        await ctx.activity.flush(ctx.store)
        # stopped within max(2 s, 10 % of the period) after the period ends (+ a loop tick)
        await until(lambda: state_of(ctx) == "Scaled to zero", timeout_s=15)
        assert time.monotonic() - ran <= 2 + 2 + 1.0, time.monotonic() - ran
        _, doc = await post(client, "/model/status", {"model": GPT2})
        assert doc["status"] == "STOPPED"
        assert ctx.snapshot.endpoint(GPT2_EP) == []
        # a run on the stopped model starts it again and waits for it
        status, doc = await post(client, "/model/run", {"model": GPT2, "prompt": "again"})
        assert status == 200 and doc["output"], doc


async def test_a_run_on_a_model_never_loaded_loads_it_and_waits(tmp_path: Path) -> None:
    async with control_router(control_settings(tmp_path)) as (client, ctx):
        status, doc = await post(client, "/model/run", {"model": GPT2, "prompt": "hello"})
        assert status == 200 and doc["output"], doc
        assert state_of(ctx) == "Running"


@pytest.mark.parametrize(
    ("path", "body", "status"),
    [
        ("/model/load", {}, 400),
        ("/model/load", {"model": 5}, 400),
        ("/model/load", {"model": "no/such-model"}, 404),
        ("/model/load", {"model": GPT2, "concurrency": 0}, 400),
        ("/model/load", {"model": GPT2, "concurrency": "2"}, 400),
        ("/model/load", {"model": GPT2, "concurrency": 10_000}, 400),
        ("/model/load", {"model": GPT2, "expirationPeriodSeconds": -1}, 400),
        ("/model/load", {"model": GPT2, "expirationPeriodSeconds": "soon"}, 400),
        ("/model/status", {"model": "../../etc/passwd"}, 404),
        ("/model/job", {"model": "x" * 1000}, 400),
        ("/model/run", {"model": GPT2}, 400),
        ("/model/run", {"model": GPT2, "prompt": 7}, 400),
        ("/model/run", {"model": GPT2, "prompt": "x", "params": {"max_length": "lots"}}, 400),
        ("/model/run", {"model": GPT2, "prompt": "x", "stream": "yes"}, 400),
        ("/model/delete", {"model": GPT2}, 404),
        ("/model/load", "not an object", 400),
    ],
)
async def test_bad_input_is_a_4xx_with_an_error_string(
    tmp_path: Path, path: str, body: Any, status: int
) -> None:
    async with control_router(control_settings(tmp_path)) as (client, ctx):
        got, doc = await post(client, path, body)
        assert got == status, doc
        assert isinstance(doc, dict) and isinstance(doc["error"], str) and doc["error"], doc
        assert ctx.registry.api_records() == []


async def test_auth(tmp_path: Path) -> None:
    async with control_router(control_settings(tmp_path)) as (client, ctx):
        got, doc = await post(client, "/model/list", headers={})
        assert got == 401 and isinstance(doc["error"], str)
        got, doc = await post(client, "/model/list", headers={"Authorization": "Key wrong"})
        assert got == 401
        got, _ = await post(client, "/model/list", headers={"Authorization": "Key dev-key"})
        assert got == 200  # any key lists the catalog
        got, doc = await post(
            client, "/model/load", {"model": GPT2}, headers={"Authorization": "Key dev-key"}
        )
        assert got == 403  # only admins and workspace keys load models
        # a workspace key loads into its own workspace, under a name of its own
        got, _ = await post(
            client, "/model/load", {"model": GPT2}, headers={"Authorization": "Key team-a-key"}
        )
        assert got == 200
        assert ctx.registry.records["team-a." + GPT2_EP].workspace == "team-a"
