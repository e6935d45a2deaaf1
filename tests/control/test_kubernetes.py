"""The `kubernetes` provider against the in-repo fake API server and its scripted cluster.

No kube-apiserver can run here (tests/control/fake_kube.py says what the fake serves);
the fake cluster runs each pod's `inference-worker` container as a real process, so a
request routed to a pod is answered by a real reference worker. The last test runs the
same flow against a real cluster when KUBECONFIG is set.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import orjson
import pytest

pytest.importorskip("kubernetes_asyncio", reason="kubernetes provider: needs the k8s extra")

from router.config import Settings
from router.control.plane import CONTROL
from router.control.providers import kube_objects as ko
from router.control.providers.kube_watch import KubeApi, Reflector
from router.control.providers.kubernetes import KubernetesProvider
from router.control.settings import KubernetesSettings
from router.control.spec import EndpointRecord, RuntimeSpec
from tests.conftest import free_port
from tests.control.fake_cluster import FakeCluster
from tests.control.fake_kube import FakeKube
from tests.control.helpers import ADMIN, CONTROL_TOML, control_router
from tests.control.test_avesha import BASE, SEED_RAW, call, state_of

KUBE_TOML = """
[[runtimes]]
format = "stuck-model"
backend = "synthetic"
ready_timeout_s = 3
[[runtimes]]
format = "vllm"
backend = "openai"
command = ["{{python}}", "-m", "vllm.entrypoints.openai.api_server", "--port", "{{port}}"]
[control.kubernetes]
api_url = "{api_url}"
worker_port = {port}
worker_image = "inference-router:test"
termination_grace_s = 10
backoff_max_s = 0.5
watch_timeout_s = 30
"""

CREATE = {
    "clusterName": "worker-1",
    "endpointName": "kube-demo",
    "workspace": "team-a",
    "modelSpec": {"modelName": "synthetic", "storageURI": "gs://bucket/model"},
}
CHAT = {"model": "kube-demo", "max_tokens": 4, "messages": [{"role": "user", "content": "hi"}]}


def kube_settings(tmp: Path, api_url: str) -> Settings:
    text = CONTROL_TOML.format(store="memory", redis_url="redis://127.0.0.1:1/0")
    text = text.replace("[control]\n", '[control]\ndefault_provider = "kubernetes"\n', 1)
    text += KUBE_TOML.format(api_url=api_url, port=free_port())
    path = tmp / "router.toml"
    path.write_text(text)
    return Settings.from_toml(path, env={})


@pytest.fixture
async def kube() -> AsyncIterator[FakeKube]:
    k = FakeKube()
    await k.start()
    try:
        yield k
    finally:
        await k.close()


@pytest.fixture
async def cluster(kube: FakeKube, tmp_path: Path) -> AsyncIterator[FakeCluster]:
    (tmp_path / "pods").mkdir()
    c = FakeCluster(kube, tmp_path / "pods")
    await c.start()
    try:
        yield c
    finally:
        await c.close()


async def until(cond: Callable[[], Any], timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        value = cond()
        if isinstance(value, Awaitable):
            value = await value
        if value:
            return
        if time.monotonic() > deadline:
            raise TimeoutError("condition not met in time")
        await asyncio.sleep(0.05)


def provider_of(client: Any) -> KubernetesProvider:
    p = client.app[CONTROL].providers["kubernetes"]
    assert isinstance(p, KubernetesProvider)
    return p


def pods(kube: FakeKube, endpoint: str) -> list[dict[str, Any]]:
    return kube.list("pods", selector=f"{ko.ENDPOINT}={endpoint}")


def ready_pods(kube: FakeKube, endpoint: str) -> list[dict[str, Any]]:
    return [
        p
        for p in pods(kube, endpoint)
        if any(
            c["type"] == "Ready" and c["status"] == "True"
            for c in (p.get("status") or {}).get("conditions") or []
        )
    ]


async def chat(client: Any) -> int:
    resp = await client.post("/v1/chat/completions", headers=ADMIN, json=CHAT)
    await resp.read()
    return int(resp.status)


# the end-to-end flow


async def test_endpoint_api_to_pods_to_a_routed_answer_and_back(
    tmp_path: Path, kube: FakeKube, cluster: FakeCluster
) -> None:
    async with control_router(kube_settings(tmp_path, kube.url)) as (client, ctx):
        status, doc = await call(client, "POST", BASE, CREATE)
        assert status == 200, doc
        await until(lambda: state_of(ctx, "kube-demo") == "Running")
        record = ctx.registry.records["kube-demo"]
        ns = record.namespace
        assert ns.startswith("team-a-kube-demo-")

        # what was applied, where, with which labels
        namespace = kube.get("namespaces", "", ns)
        dep = kube.get("deployments", ns, "kube-demo")
        svc = kube.get("services", ns, "kube-demo")
        assert namespace is not None and dep is not None and svc is not None
        want = {ko.MANAGED_BY: "inference-router", ko.ENDPOINT: "kube-demo", ko.WORKSPACE: "team-a"}
        for obj in (namespace, dep, svc):
            assert obj["metadata"]["labels"] == want
        assert dep["spec"]["replicas"] == 1
        assert [m["manager"] for m in dep["metadata"]["managedFields"]] == ["inference-router"]
        applies = [r for r in kube.requests if r[2] == "application/apply-patch+yaml"]
        assert len(applies) == 3  # namespace, deployment, service: each once
        (pod,) = ready_pods(kube, "kube-demo")
        ip = pod["status"]["podIP"]

        # the worker is the pod, and answers through the router
        (worker,) = ctx.snapshot.endpoint("kube-demo")
        assert worker.url.startswith(f"http://{ip}:") and worker.ready
        assert await chat(client) == 200
        status, doc = await call(client, "GET", f"{BASE}?workspace=team-a&endpoint=kube-demo")
        ep = doc["data"]["endpoint"]
        assert ep["status"] == "Running" and ep["predictStatus"] == "Ready"
        (gpr,) = ep["gpuRequests"]
        assert gpr["status"] == "Provisioned"  # the pod took the id start() gave

        # applying again changes nothing (server-side apply is idempotent)
        provider = provider_of(client)
        before = dep["metadata"]["resourceVersion"], dep["metadata"]["generation"]
        provider._targets["kube-demo"].applied = False
        await provider.sync_once()
        dep = kube.get("deployments", ns, "kube-demo")
        assert dep is not None
        assert (dep["metadata"]["resourceVersion"], dep["metadata"]["generation"]) == before

        status, doc = await call(
            client, "DELETE", BASE, {"workspace": "team-a", "endpoint": "kube-demo"}
        )
        assert status == 200
        await until(lambda: "kube-demo" not in ctx.registry.records)
        assert pods(kube, "kube-demo") == []  # gone before the endpoint was forgotten
        await until(lambda: kube.get("namespaces", "", ns) is None)  # deleted last
        assert kube.get("deployments", ns, "kube-demo") is None
        assert kube.get("services", ns, "kube-demo") is None
        assert ctx.snapshot.endpoint("kube-demo") == []
        assert await provider.observe() == []
        assert cluster.children == {}


async def test_a_raw_inference_service_is_applied_stamped_and_its_conditions_read(
    tmp_path: Path, kube: FakeKube, cluster: FakeCluster
) -> None:
    body = {**SEED_RAW, "workspace": "team-a", "gpuSpec": None}
    async with control_router(kube_settings(tmp_path, kube.url)) as (client, ctx):
        status, doc = await call(client, "POST", BASE, body)
        assert status == 200, doc
        await until(lambda: state_of(ctx, "sklearn-iris") == "Running")
        ns = ctx.registry.records["sklearn-iris"].namespace
        isvc = kube.get("inferenceservices", ns, "sklearn-iris")
        assert isvc is not None
        assert isvc["metadata"]["labels"][ko.ENDPOINT] == "sklearn-iris"
        predictor = isvc["spec"]["predictor"]
        assert predictor["model"]["modelFormat"]["name"] == "sklearn"  # as the client wrote it
        assert predictor["minReplicas"] == predictor["maxReplicas"] == 1
        assert [c["name"] for c in predictor["containers"]] == [ko.WORKER]
        await until(lambda: ctx.registry.records["sklearn-iris"].conditions.get("Ready") == "True")
        status, doc = await call(client, "GET", f"{BASE}?workspace=team-a&endpoint=sklearn-iris")
        ep = doc["data"]["endpoint"]
        assert ep["predictStatus"] == "Ready" and ep["ingressStatus"] == "Ready"
        resp = await client.post(
            "/v1/chat/completions", headers=ADMIN, json={**CHAT, "model": "sklearn-iris"}
        )
        assert resp.status == 200, await resp.text()
        await call(client, "DELETE", BASE, {"workspace": "team-a", "endpoint": "sklearn-iris"})
        await until(lambda: "sklearn-iris" not in ctx.registry.records)
        await until(lambda: kube.list("pods", ns) == [] and kube.list("deployments", ns) == [])


# failure scripts


async def test_image_pull_backoff_fails_the_endpoint_with_the_reason(
    tmp_path: Path, kube: FakeKube, cluster: FakeCluster
) -> None:
    cluster.bad_images.add("inference-router:test")
    async with control_router(kube_settings(tmp_path, kube.url)) as (client, ctx):
        await call(client, "POST", BASE, CREATE)
        await until(lambda: state_of(ctx, "kube-demo") == "Failed")
        record = ctx.registry.records["kube-demo"]
        assert record.reason.startswith("Image Pull Backoff: inference-worker: ")
        assert "inference-router:test" in record.reason
        _, doc = await call(client, "GET", f"{BASE}?workspace=team-a&endpoint=kube-demo")
        ep = doc["data"]["endpoint"]
        assert ep["status"] == "Failed" and "Image Pull Backoff" in ep["reason"]
        assert ep["predictStatus"] == "Failed"
        # the provider removed the pod it reported failed, and asks for none in its place
        await until(lambda: pods(kube, "kube-demo") == [])
        dep = kube.get("deployments", record.namespace, "kube-demo")
        assert dep is not None and dep["spec"]["replicas"] == 0


async def test_a_model_stuck_loading_past_its_deadline_fails_the_endpoint(
    tmp_path: Path, kube: FakeKube, cluster: FakeCluster
) -> None:
    cluster.scripts["stuck"] = "stuck"
    body = {**CREATE, "endpointName": "stuck", "modelSpec": {**CREATE["modelSpec"]}}
    body["modelSpec"]["modelName"] = "stuck-model"  # type: ignore[index]
    async with control_router(kube_settings(tmp_path, kube.url)) as (client, ctx):
        await call(client, "POST", BASE, body)
        await until(
            lambda: (
                state_of(ctx, "stuck") == "Loading"
                and [p["status"].get("phase") for p in pods(kube, "stuck")] == ["Running"]
            )
        )  # its containers run; it never gets ready
        await until(lambda: state_of(ctx, "stuck") == "Failed", timeout_s=15)
        reason = ctx.registry.records["stuck"].reason
        assert reason.startswith("not ready after 3 s"), reason
        await until(lambda: pods(kube, "stuck") == [])


async def test_a_format_without_a_model_server_image_fails_naming_the_setting(
    tmp_path: Path, kube: FakeKube, cluster: FakeCluster
) -> None:
    body = {**CREATE, "modelSpec": {**CREATE["modelSpec"], "modelName": "vllm"}}  # type: ignore[dict-item]
    async with control_router(kube_settings(tmp_path, kube.url)) as (client, ctx):
        await call(client, "POST", BASE, body)
        await until(lambda: state_of(ctx, "kube-demo") == "Failed")
        reason = ctx.registry.records["kube-demo"].reason
        assert "control.kubernetes.model_images" in reason and "'vllm'" in reason, reason
        assert kube.list("deployments") == []  # nothing half-applied


async def test_unscheduled_pods_are_pending_with_the_schedulers_words(
    tmp_path: Path, kube: FakeKube, cluster: FakeCluster
) -> None:
    cluster.scripts["kube-demo"] = "unschedulable"
    async with control_router(kube_settings(tmp_path, kube.url)) as (client, ctx):
        await call(client, "POST", BASE, CREATE)
        provider = provider_of(client)

        async def pending() -> bool:
            ws = await provider.observe()
            return any(w.detail.startswith("Pending: 0/1 nodes are available") for w in ws)

        await until(pending)
        (w,) = await provider.observe()
        assert w.state == "starting" and state_of(ctx, "kube-demo") == "Loading"


async def test_crash_loop_backoff_fails_the_endpoint(
    tmp_path: Path, kube: FakeKube, cluster: FakeCluster
) -> None:
    cluster.scripts["kube-demo"] = "crash"
    async with control_router(kube_settings(tmp_path, kube.url)) as (client, ctx):
        await call(client, "POST", BASE, CREATE)
        await until(lambda: state_of(ctx, "kube-demo") == "Failed")
        reason = ctx.registry.records["kube-demo"].reason
        assert reason.startswith("Crash Loop Backoff: "), reason
        assert "last exit code 1" in reason


async def test_a_watch_410_is_answered_by_a_relist_and_nothing_is_lost(
    tmp_path: Path, kube: FakeKube, cluster: FakeCluster
) -> None:
    async with control_router(kube_settings(tmp_path, kube.url)) as (client, ctx):
        await call(client, "POST", BASE, CREATE)
        await until(lambda: state_of(ctx, "kube-demo") == "Running")
        provider = provider_of(client)
        assert provider.pods is not None
        lists = provider.pods.lists
        # the history is compacted and every open watch told 410; meanwhile a pod changes
        kube.expire()
        (pod,) = pods(kube, "kube-demo")
        changed = dict(
            pod, metadata={**pod["metadata"], "labels": {**pod["metadata"]["labels"], "x": "1"}}
        )
        kube.put("pods", changed)
        await until(lambda: provider.pods is not None and provider.pods.lists > lists)
        await until(
            lambda: any(
                (p["metadata"].get("labels") or {}).get("x") == "1"
                for p in provider.pods.objects.values()  # type: ignore[union-attr]
            )
        )
        assert state_of(ctx, "kube-demo") == "Running" and await chat(client) == 200
        # and a watch resumed from a compacted resourceVersion (HTTP 410) lists again too
        kube.http_410 = True
        kube.expire()
        await until(lambda: provider.pods is not None and provider.pods.lists > lists + 1)
        assert provider.pods.failures == 0


async def test_the_api_server_down_for_10_s_the_endpoint_keeps_serving(
    tmp_path: Path, kube: FakeKube, cluster: FakeCluster
) -> None:
    async with control_router(kube_settings(tmp_path, kube.url)) as (client, ctx):
        await call(client, "POST", BASE, CREATE)
        await until(lambda: state_of(ctx, "kube-demo") == "Running")
        provider = provider_of(client)
        control = client.app[CONTROL]
        assert provider.pods is not None
        lists = provider.pods.lists
        await kube.stop_serving()
        t0 = time.monotonic()
        while time.monotonic() - t0 < 10:
            assert await chat(client) == 200
            assert state_of(ctx, "kube-demo") == "Running"
            await asyncio.sleep(0.5)
        assert provider.pods.failures > 0
        assert all(not t.done() for t in provider._tasks.values())  # no loop crashed
        assert control.lifecycle is not None and control.lifecycle.leader
        await kube.start_serving()
        # it watches again from where it was (its resourceVersion is still served)
        await until(lambda: provider.pods is not None and provider.pods.failures == 0)
        assert provider.pods.lists == lists
        # and it acts on the cluster again: a delete takes the pods away
        await call(client, "DELETE", BASE, {"workspace": "team-a", "endpoint": "kube-demo"})
        await until(lambda: "kube-demo" not in ctx.registry.records)
        assert pods(kube, "kube-demo") == []


# the provider on its own (a plain router in process serves its workers' keys)


@pytest.fixture
async def router_url() -> AsyncIterator[str]:
    from tests.router.helpers import router_client, settings

    async with router_client(settings([])) as (client, _):
        yield f"http://127.0.0.1:{client.port}"


def record(name: str = "solo", **kw: Any) -> EndpointRecord:
    fields: dict[str, Any] = {
        "workspace": "team-a",
        "namespace": f"team-a-{name}-abc123",
        "model_name": "synthetic",
        "runtime": RuntimeSpec(ready_timeout_s=20, ttft_ms=5, tokens_per_s=500),
    }
    return EndpointRecord(name=name, **{**fields, **kw})


async def test_stop_takes_that_pod_and_the_deployment_does_not_bring_it_back(
    kube: FakeKube, cluster: FakeCluster, router_url: str
) -> None:
    ks = KubernetesSettings(api_url=kube.url, worker_port=free_port(), backoff_max_s=0.5)
    provider = KubernetesProvider(ks, router_url)
    try:
        rec = record()
        started = await provider.start(rec, 2)
        assert [w.state for w in started] == ["starting", "starting"]

        async def running() -> list[Any]:
            return [w for w in await provider.observe() if w.state == "running"]

        await until(lambda: _len_is(running, 2))
        ids = {w.id for w in await running()}
        assert ids == {w.id for w in started}  # the pods took the ids start() gave
        victim = sorted(await running(), key=lambda w: w.id)[0]
        await provider.stop(victim.id)
        await until(lambda: _len_is(running, 1))
        await until(lambda: len(pods(kube, "solo")) == 1)
        dep = kube.get("deployments", rec.namespace, "solo")
        assert dep is not None and dep["spec"]["replicas"] == 1
        (left,) = pods(kube, "solo")
        assert victim.url.split("//")[1].split(":")[0] != left["status"]["podIP"]
        await asyncio.sleep(0.5)  # a ReplicaSet would have recreated it by now
        assert len(pods(kube, "solo")) == 1
        # a deleted pod leaves at once (exited), and the Deployment's replacement is adopted
        (survivor,) = await running()
        kube.delete("pods", rec.namespace, left["metadata"]["name"])
        await until(
            lambda: _has(
                provider.observe(),
                lambda ws: any(
                    w.id == survivor.id and w.state in ("exited", "stopping") for w in ws
                ),
            )
        )
        await until(lambda: _len_is(running, 1))
    finally:
        await provider.close()


async def test_a_stop_while_the_objects_are_being_applied_is_still_sent(
    kube: FakeKube, cluster: FakeCluster, router_url: str
) -> None:
    """The apply carries the replicas of its moment; a stop() meanwhile lowers them, and
    the next sync sends the lower count (it is not taken as written)."""
    ks = KubernetesSettings(api_url=kube.url, worker_port=free_port(), backoff_max_s=0.5)
    provider = KubernetesProvider(ks, router_url)
    held, release = asyncio.Event(), asyncio.Event()

    async def gate(method: str, path: str) -> None:
        if method == "PATCH" and "/deployments/" in path and not release.is_set():
            held.set()
            await release.wait()

    kube.gate = gate
    try:
        rec = record()
        started = await provider.start(rec, 2)
        await asyncio.wait_for(held.wait(), 10)  # the Deployment's apply, with replicas 2
        await provider.stop(started[1].id)  # a claim no pod backs yet: replicas 1
        assert provider.target_replicas("solo") == 1
        release.set()

        def settled() -> bool:
            dep = kube.get("deployments", rec.namespace, "solo")
            return dep is not None and dep["spec"]["replicas"] == 1 and len(pods(kube, "solo")) == 1

        await until(settled)
    finally:
        release.set()
        await provider.close()


async def _len_is(f: Callable[[], Awaitable[list[Any]]], n: int) -> bool:
    return len(await f()) == n


async def _has(ws: Awaitable[list[Any]], pred: Callable[[list[Any]], bool]) -> bool:
    return pred(await ws)


async def test_a_restarted_provider_adopts_the_pods_and_asks_for_no_more(
    kube: FakeKube, cluster: FakeCluster, router_url: str
) -> None:
    ks = KubernetesSettings(api_url=kube.url, worker_port=free_port(), backoff_max_s=0.5)
    first = KubernetesProvider(ks, router_url)
    rec = record("adopt")
    try:
        await first.start(rec, 1)
        await until(lambda: len(ready_pods(kube, "adopt")) == 1)
    finally:
        await first.close()  # the cluster stays as it is
    second = KubernetesProvider(ks, router_url)
    try:
        await second.synced()
        (w,) = await second.observe()
        assert w.state == "running" and w.url
        # a start for one more after the restart asks for 2 in all, not 1 + what it had
        await second.start(rec, 1)
        await until(lambda: second.target_replicas("adopt") == 2)
        await until(lambda: len(ready_pods(kube, "adopt")) == 2)
    finally:
        await second.close()


async def test_the_reflector_relists_on_http_410_and_keeps_trying_when_refused(
    kube: FakeKube,
) -> None:
    from kubernetes_asyncio import client

    cfg = client.Configuration()
    cfg.host = kube.url
    api_client = client.ApiClient(configuration=cfg)
    try:
        api = KubeApi(api_client, 2.0)
        r = Reflector(api, "/api/v1/pods", ko.SELECTOR, name="pods", backoff_max_s=0.2)
        kube.put(
            "pods",
            {
                "metadata": {
                    "name": "p",
                    "namespace": "default",
                    "labels": {ko.MANAGED_BY: ko.MANAGER},
                }
            },
        )
        r.resource_version = "1"
        kube.compacted = 5
        kube.http_410 = True
        await r.run_once()  # HTTP 410 on the watch: list next
        assert r.resource_version is None
        task = asyncio.create_task(r.run(), name="test-reflector")
        await until(lambda: r.synced.is_set() and ("default", "p") in r.objects)
        await kube.stop_serving()
        await until(lambda: r.failures >= 3, timeout_s=10)
        kube.remove("pods", "default", "p")  # while nobody watches
        await kube.start_serving()
        await until(lambda: r.failures == 0 and ("default", "p") not in r.objects, timeout_s=10)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    finally:
        await api_client.close()


def test_label_selectors_as_the_api_server_reads_them() -> None:
    from tests.control.fake_kube import parse_selector, selected

    obj = {"metadata": {"labels": {"a": "1", "b": "x"}}}
    cases = {
        "a=1": True,
        "a==1": True,
        "a!=1": False,
        "c!=1": True,
        "a in (1,2)": True,
        "a notin (1,2)": False,
        "b in (y, z)": False,
        "c": False,
        "!c": True,
        "a=1,b in (x)": True,
        "a=1,b=y": False,
        "": True,
    }
    for text, want in cases.items():
        assert selected(obj, parse_selector(text)) is want, text
    with pytest.raises(ValueError):
        parse_selector("a in (1")


async def test_server_side_apply_conflicts_and_force(kube: FakeKube) -> None:
    from tests.control.fake_kube import RESOURCES

    dep = ko.deployment(record(), KubernetesSettings(), 1, "http://router")
    dep["metadata"]["namespace"] = "default"
    body = orjson.dumps(dep)
    res = RESOURCES["deployments"]
    created = kube.apply(res, "default", "solo", body, {"fieldManager": "a"})
    assert created["metadata"]["generation"] == 1
    again = kube.apply(res, "default", "solo", body, {"fieldManager": "a"})
    assert again["metadata"]["resourceVersion"] == created["metadata"]["resourceVersion"]
    other = orjson.loads(body)
    other["spec"]["replicas"] = 3
    from tests.control.fake_kube import ApiError

    with pytest.raises(ApiError) as exc:
        kube.apply(res, "default", "solo", orjson.dumps(other), {"fieldManager": "b"})
    assert exc.value.code == 409
    forced = kube.apply(
        res, "default", "solo", orjson.dumps(other), {"fieldManager": "b", "force": "true"}
    )
    assert forced["spec"]["replicas"] == 3 and forced["metadata"]["generation"] == 2


# contract: every object generated validates against the real schemas


def _records() -> list[EndpointRecord]:
    model = RuntimeSpec(
        backend="openai",
        command=("{python}", "-m", "vllm.entrypoints.openai.api_server", "--port", "{port}"),
        health_path="/health",
        ready_timeout_s=900,
    )
    gpu = {"numberOfGPUs": 2, "gpuShape": "a100", "instanceType": "x", "memoryPerGPU": 80}
    return [
        record("synth"),
        record(
            "llm",
            runtime=model,
            model_name="vllm",
            storage_uri="hf://meta-llama/Llama-3-8B",
            args=("--max-model-len", "4096"),
            resources={"limits": {"cpu": "8", "memory": "64Gi"}},
            gpu_spec=gpu,
        ),
        record("raw", raw_spec=SEED_RAW["rawModelSpec"]),  # type: ignore[arg-type]
    ]


def test_generated_objects_validate_against_the_kubernetes_and_kserve_schemas() -> None:
    import gzip

    import jsonschema
    import kubernetes_validate

    ks = KubernetesSettings(model_images=(("vllm", "vllm/vllm-openai:v0.6.0"),))
    data = Path(__file__).parent / "data" / "inferenceservice-v1beta1.schema.json.gz"
    isvc_schema = orjson.loads(gzip.decompress(data.read_bytes()))
    kinds = []
    for rec in _records():
        for obj in ko.objects(rec, ks, 2, "http://router.example:8080"):
            kinds.append(obj["kind"])
            if obj["kind"] == "InferenceService":
                jsonschema.validate(obj, isvc_schema)
            else:
                kubernetes_validate.validate(obj, "1.37.0", strict=True)
    assert sorted(set(kinds)) == ["Deployment", "InferenceService", "Namespace", "Service"]
    llm = ko.deployment(_records()[1], ks, 1, "http://r")
    model, worker = llm["spec"]["template"]["spec"]["containers"]
    assert model["resources"]["limits"]["nvidia.com/gpu"] == "2"
    assert model["startupProbe"]["failureThreshold"] * model["startupProbe"]["periodSeconds"] >= 900
    assert worker["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert llm["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] == 60


def test_pod_statuses_map_as_the_design_says() -> None:
    def pod(**status: Any) -> dict[str, Any]:
        return {"metadata": {"name": "p", "namespace": "n"}, "spec": {}, "status": status}

    def waiting(reason: str, message: str = "m") -> dict[str, Any]:
        return pod(
            phase="Pending",
            containerStatuses=[
                {"name": "c", "state": {"waiting": {"reason": reason, "message": message}}}
            ],
        )

    assert ko.read_pod(waiting("ImagePullBackOff"), 1).detail.startswith("Image Pull Backoff")
    assert ko.read_pod(waiting("ErrImagePull"), 1).state == "failed"
    assert ko.read_pod(waiting("CrashLoopBackOff"), 1).detail.startswith("Crash Loop Backoff")
    unscheduled = pod(
        phase="Pending",
        conditions=[{"type": "PodScheduled", "status": "False", "message": "0/3 nodes"}],
    )
    v = ko.read_pod(unscheduled, 1)
    assert (v.state, v.detail) == ("starting", "Pending: 0/3 nodes")
    ready = pod(phase="Running", podIP="10.0.0.7", conditions=[{"type": "Ready", "status": "True"}])
    v = ko.read_pod(ready, 8000)
    assert (v.state, v.url) == ("running", "http://10.0.0.7:8000")
    assert ko.read_pod(pod(phase="Failed", reason="Evicted"), 1).state == "exited"


# a real cluster


@pytest.mark.kubernetes
async def test_the_same_flow_against_a_real_cluster(tmp_path: Path) -> None:
    if not os.environ.get("KUBECONFIG"):
        pytest.skip("no KUBECONFIG: the kubernetes test needs a real cluster")
    image = os.environ.get("ROUTER_TEST_WORKER_IMAGE", "inference-router:latest")
    public = os.environ.get("ROUTER_TEST_PUBLIC_URL", "")  # how pods reach this router
    text = CONTROL_TOML.format(store="memory", redis_url="redis://127.0.0.1:1/0")
    text = text.replace("[control]\n", '[control]\ndefault_provider = "kubernetes"\n', 1)
    text += f'[control.kubernetes]\nworker_image = "{image}"\nrouter_url = "{public}"\n'
    path = tmp_path / "router.toml"
    path.write_text(text)
    settings = Settings.from_toml(path, env={})
    async with control_router(settings) as (client, ctx):
        status, doc = await call(client, "POST", BASE, CREATE)
        assert status == 200, doc
        await until(lambda: state_of(ctx, "kube-demo") == "Running", timeout_s=300)
        assert await chat(client) == 200
        await call(client, "DELETE", BASE, {"workspace": "team-a", "endpoint": "kube-demo"})
        await until(lambda: "kube-demo" not in ctx.registry.records, timeout_s=300)


@pytest.mark.parametrize(
    ("table", "field"),
    [
        ('api_url = "ftp://x"', "control.kubernetes.api_url"),
        ('namespace = "Not A Label"', "control.kubernetes.namespace"),
        ("worker_port = 0", "control.kubernetes.worker_port"),
        ("worker_port = 8080", "control.kubernetes.model_port"),  # same as model_port
        ("model_images = {vllm = 3}", "control.kubernetes.model_images"),
        ('image_pull_policy = "Sometimes"', "control.kubernetes.image_pull_policy"),
        ("surprise = 1", "control.kubernetes.surprise"),
    ],
)
def test_bad_kubernetes_settings_name_the_setting(tmp_path: Path, table: str, field: str) -> None:
    from router.config import ConfigError

    path = tmp_path / "router.toml"
    path.write_text(f"[control.kubernetes]\n{table}\n")
    with pytest.raises(ConfigError) as exc:
        Settings.from_toml(path, env={})
    assert str(exc.value).startswith(f"{field}:"), exc.value


def test_kubernetes_settings_are_read(tmp_path: Path) -> None:
    path = tmp_path / "router.toml"
    path.write_text(
        '[control]\ndefault_provider = "kubernetes"\n[control.kubernetes]\n'
        'kubeconfig = "/etc/kube.conf"\nfield_manager = "my-router"\n'
        'model_images = {vllm = "vllm/vllm-openai:v0.6.0"}\n'
    )
    ks = Settings.from_toml(path, env={}).control.kubernetes
    assert ks.kubeconfig == "/etc/kube.conf" and ks.field_manager == "my-router"
    assert ks.model_image("vllm") == "vllm/vllm-openai:v0.6.0" and ks.model_image("x") is None
