"""The kustomize deployment (deploy/kustomize): each overlay renders, every object it makes
is valid for Kubernetes, and the objects fit together as the router needs.

Rendering is `kubectl kustomize` (a client, no cluster); validation is kubernetes-validate's
offline schemas, strict (an unknown field is an error). The Prometheus Operator's kinds
have no schema there, so their shape is checked against a small schema written here from
the operator's API (the fields used, nothing else allowed). `kubectl apply --dry-run`
would need an API server.
"""

from __future__ import annotations

import base64
import copy
import os
import re
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import jsonschema
import kubernetes_validate
import pytest

from router.config import Settings
from tests.deploy.kube import (
    KUSTOMIZE,
    OVERLAYS,
    Obj,
    container,
    kubectl_problem,
    named,
    one,
    pod_spec,
    render,
    render_dir,
)

pytestmark = pytest.mark.skipif((problem := kubectl_problem()) is not None, reason=problem or "")

# The oldest Kubernetes still commonly run that has everything used here.
KUBERNETES_VERSION = "1.30"
# Secrets the operator makes (README, "Deploy on Kubernetes"); never in the repository.
EXTERNAL_SECRETS = {"router-signing-key", "hf-token"}

_DURATION = {
    "type": "string",
    "pattern": r"^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?"
    r"(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$",
}
_SELECTOR = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "matchLabels": {"type": "object", "additionalProperties": {"type": "string"}},
        "matchExpressions": {"type": "array"},
    },
}
_SCRAPE = {
    "type": "object",
    "additionalProperties": False,
    "required": ["port"],
    "properties": {
        "port": {"type": "string", "minLength": 1},
        "path": {"type": "string", "pattern": "^/"},
        "scheme": {"enum": ["http", "https"]},
        "interval": _DURATION,
        "scrapeTimeout": _DURATION,
    },
}


def _monitor(endpoints: str) -> dict[str, Any]:
    return {
        "type": "object",
        "required": ["apiVersion", "kind", "metadata", "spec"],
        "additionalProperties": False,
        "properties": {
            "apiVersion": {"const": "monitoring.coreos.com/v1"},
            "kind": {"type": "string"},
            "metadata": {
                "type": "object",
                "required": ["name", "namespace"],
                "properties": {
                    "name": {"type": "string"},
                    "namespace": {"type": "string"},
                    "labels": {"type": "object", "additionalProperties": {"type": "string"}},
                },
            },
            "spec": {
                "type": "object",
                "required": ["selector", endpoints],
                "additionalProperties": False,
                "properties": {
                    "selector": _SELECTOR,
                    "namespaceSelector": {"type": "object"},
                    "jobLabel": {"type": "string"},
                    endpoints: {"type": "array", "minItems": 1, "items": _SCRAPE},
                },
            },
        },
    }


# The fields of the Prometheus Operator's ServiceMonitor and PodMonitor (v1) used here.
OPERATOR_SCHEMAS = {
    "ServiceMonitor": _monitor("endpoints"),
    "PodMonitor": _monitor("podMetricsEndpoints"),
}


def validate(obj: Obj) -> None:
    if obj["apiVersion"].startswith("monitoring.coreos.com/"):
        jsonschema.validate(obj, OPERATOR_SCHEMAS[obj["kind"]])
        return
    try:
        kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)
    except kubernetes_validate.ValidationError as exc:
        where = "/".join(map(str, exc.path))
        name = f"{obj['kind']}/{obj['metadata']['name']}"
        raise AssertionError(f"{name} {where}: {exc.message}") from None


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_object_is_valid(overlay: str) -> None:
    objs = render(overlay)
    assert objs
    for obj in objs:
        validate(obj)
    kinds = {o["kind"] for o in objs}
    assert {
        "Namespace",
        "Deployment",
        "Service",
        "PodDisruptionBudget",
        "ServiceMonitor",
        "ConfigMap",
        "Secret",
        "ServiceAccount",
        "Role",
        "RoleBinding",
        "StatefulSet",
    } <= kinds


def test_the_checks_catch_mistakes() -> None:
    objs = render("ha")
    deployment = copy.deepcopy(one(objs, "Deployment", "inference-router"))
    container(deployment, "router")["livenesProbe"] = container(deployment, "router").pop(
        "livenessProbe"
    )
    with pytest.raises(AssertionError, match="livenesProbe"):
        validate(deployment)
    monitor = copy.deepcopy(one(objs, "ServiceMonitor", "inference-router"))
    monitor["spec"]["endpoint"] = monitor["spec"].pop("endpoints")
    with pytest.raises(jsonschema.ValidationError):
        validate(monitor)
    monitor = copy.deepcopy(one(objs, "ServiceMonitor", "inference-router"))
    monitor["spec"]["endpoints"][0]["interval"] = "15 seconds"
    with pytest.raises(jsonschema.ValidationError):
        validate(monitor)


def router_settings(objs: tuple[Obj, ...], tmp_path: Path) -> Settings:
    config = named(objs, "ConfigMap", "router-config")["data"]["router.toml"]
    path = tmp_path / "router.toml"
    path.write_text(config)
    env = {"ROUTER_API_KEY": "a", "ROUTER_ADMIN_KEY": "b", "ROUTER_WORKER_TOKEN": "c"}
    return Settings.from_toml(path, env=env)


def mounted_at(obj: Obj, container_name: str, volume: str) -> str:
    mounts = [m for m in container(obj, container_name)["volumeMounts"] if m["name"] == volume]
    assert len(mounts) == 1, f"{volume} is not mounted once in {container_name}"
    return str(mounts[0]["mountPath"])


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_router_deployment_probes_drain_and_config(overlay: str, tmp_path: Path) -> None:
    objs = render(overlay)
    deployment = one(objs, "Deployment", "inference-router")
    router = container(deployment, "router")
    settings = router_settings(objs, tmp_path)
    assert router["livenessProbe"]["httpGet"]["path"] == "/livez"
    assert router["readinessProbe"]["httpGet"]["path"] == "/readyz"
    ports = {p["name"]: p["containerPort"] for p in router["ports"]}
    assert ports["http"] == settings.server.port
    assert settings.server.host == "0.0.0.0"
    # preStop: out of the Service's endpoints first, then SIGTERM and the router's drain,
    # all before the kubelet's SIGKILL
    command = router["lifecycle"]["preStop"]["exec"]["command"]
    assert command[0] == "sleep" and 2 <= int(command[1]) <= 15
    grace = pod_spec(deployment)["terminationGracePeriodSeconds"]
    assert grace > int(command[1]) + settings.server.shutdown_grace_s
    # one store and one signing key for every replica
    assert settings.store.backend == "redis"
    redis_host = urlsplit(settings.store.redis_url).hostname
    one(objs, "Service", str(redis_host))
    keys_dir = mounted_at(deployment, "router", "signing-key")
    volume = next(v for v in pod_spec(deployment)["volumes"] if v["name"] == "signing-key")
    assert [str(p) for p in settings.signing.key_files] == [
        f"{keys_dir}/{item['path']}" for item in volume["secret"]["items"]
    ]
    assert mounted_at(deployment, "router", "config") == "/etc/router/router.toml"
    assert router["args"] == ["serve", "--config", "/etc/router/router.toml"]
    env = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in router["env"] if "valueFrom" in e}
    assert set(env) == {"ROUTER_API_KEY", "ROUTER_ADMIN_KEY", "ROUTER_WORKER_TOKEN"}
    # the API's public URL is the router's Service
    assert urlsplit(settings.control.public_url).hostname == "inference-router"
    one(objs, "Service", "inference-router")


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_pods_run_as_non_root_numeric_users(overlay: str) -> None:
    for obj in render(overlay):
        if obj["kind"] not in ("Deployment", "StatefulSet"):
            continue
        security = pod_spec(obj)["securityContext"]
        assert security["runAsNonRoot"] is True, obj["metadata"]["name"]
        assert isinstance(security["runAsUser"], int) and security["runAsUser"] > 0
        for c in pod_spec(obj)["containers"]:
            assert c["securityContext"]["allowPrivilegeEscalation"] is False
            assert c["securityContext"]["capabilities"]["drop"] == ["ALL"]
            assert ":" in c["image"] and not c["image"].endswith(":latest"), c["image"]


def references(spec: Obj) -> tuple[set[str], set[str]]:
    """(ConfigMaps, Secrets) a pod spec names: volumes and env."""
    config_maps, secrets = set(), set()
    for volume in spec.get("volumes", []):
        if "configMap" in volume:
            config_maps.add(volume["configMap"]["name"])
        if "secret" in volume:
            secrets.add(volume["secret"]["secretName"])
    for c in spec["containers"]:
        for e in c.get("env", []):
            source = e.get("valueFrom", {})
            if "secretKeyRef" in source:
                secrets.add(source["secretKeyRef"]["name"])
            if "configMapKeyRef" in source:
                config_maps.add(source["configMapKeyRef"]["name"])
    return config_maps, secrets


def matches(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_references_resolve(overlay: str) -> None:
    objs = render(overlay)
    names = {(o["kind"], o["metadata"]["name"]) for o in objs}
    namespaces = {o["metadata"].get("namespace") for o in objs if o["kind"] != "Namespace"}
    assert namespaces == {"inference"} and ("Namespace", "inference") in names
    workloads = [o for o in objs if o["kind"] in ("Deployment", "StatefulSet")]
    for obj in workloads:
        config_maps, secrets = references(pod_spec(obj))
        for name in config_maps:
            assert ("ConfigMap", name) in names, f"{obj['metadata']['name']}: {name}"
        for name in secrets - EXTERNAL_SECRETS:
            assert ("Secret", name) in names, f"{obj['metadata']['name']}: {name}"
        assert matches(
            obj["spec"]["selector"]["matchLabels"], obj["spec"]["template"]["metadata"]["labels"]
        )
        account = pod_spec(obj).get("serviceAccountName")
        if account:
            assert ("ServiceAccount", account) in names
    pods = [(o["spec"]["template"]["metadata"]["labels"], pod_spec(o)) for o in workloads]

    def ports_of(spec: Obj) -> set[str]:
        return {p["name"] for c in spec["containers"] for p in c.get("ports", [])}

    for service in (o for o in objs if o["kind"] == "Service"):
        chosen = [s for labels, s in pods if matches(service["spec"]["selector"], labels)]
        assert chosen, f"Service {service['metadata']['name']} selects no pod"
        for port in service["spec"]["ports"]:
            assert all(port["targetPort"] in ports_of(s) for s in chosen)
    router = one(objs, "Service", "inference-router")
    monitor = one(objs, "ServiceMonitor", "inference-router")
    assert matches(monitor["spec"]["selector"]["matchLabels"], router["metadata"]["labels"])
    assert {e["port"] for e in monitor["spec"]["endpoints"]} <= {
        p["name"] for p in router["spec"]["ports"]
    }
    pod_monitor = one(objs, "PodMonitor", "inference-worker")
    scraped = [
        s for labels, s in pods if matches(pod_monitor["spec"]["selector"]["matchLabels"], labels)
    ]
    assert scraped and all(
        {e["port"] for e in pod_monitor["spec"]["podMetricsEndpoints"]} <= ports_of(s)
        for s in scraped
    )
    pdb = one(objs, "PodDisruptionBudget", "inference-router")
    deployment = one(objs, "Deployment", "inference-router")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert matches(pdb["spec"]["selector"]["matchLabels"], labels)
    binding = one(objs, "RoleBinding", "inference-router")
    assert ("Role", binding["roleRef"]["name"]) in names
    assert binding["subjects"] == [
        {
            "kind": "ServiceAccount",
            "name": pod_spec(deployment)["serviceAccountName"],
            "namespace": "inference",
        }
    ]
    for hpa in (o for o in objs if o["kind"] == "HorizontalPodAutoscaler"):
        target = hpa["spec"]["scaleTargetRef"]
        assert (target["kind"], target["name"]) in names


def test_rbac_grants_what_the_kubernetes_provider_needs_and_no_more() -> None:
    rules = one(render("single"), "Role", "inference-router")["rules"]
    granted = {
        (group, resource): set(rule["verbs"])
        for rule in rules
        for group in rule["apiGroups"]
        for resource in rule["resources"]
    }
    manage = {"get", "list", "watch", "create", "patch", "delete"}
    read = {"get", "list", "watch"}
    assert granted == {
        ("apps", "deployments"): manage,
        ("apps", "deployments/scale"): manage,
        ("", "services"): manage,
        ("", "pods"): read,
        ("discovery.k8s.io", "endpointslices"): read,
        ("serving.kserve.io", "inferenceservices"): {"get", "list", "watch", "patch", "delete"},
    }


def test_redis_keeps_an_append_only_file_on_a_volume() -> None:
    redis = one(render("single"), "StatefulSet", "redis")
    args = container(redis, "redis")["args"]
    assert args[args.index("--appendonly") + 1] == "yes"
    data_dir = args[args.index("--dir") + 1]
    claims = {c["metadata"]["name"] for c in redis["spec"]["volumeClaimTemplates"]}
    mounts = {m["mountPath"]: m["name"] for m in container(redis, "redis")["volumeMounts"]}
    assert mounts[data_dir] in claims
    assert args[args.index("--maxmemory-policy") + 1] == "noeviction"


def test_worker_template(tmp_path: Path) -> None:
    objs = render("single")
    worker = one(objs, "Deployment", "llama-worker")
    model, sidecar = container(worker, "model"), container(worker, "worker")
    assert int(model["resources"]["limits"]["nvidia.com/gpu"]) >= 1
    assert sidecar["command"] == ["inference-worker"]
    args = sidecar["args"]

    def flag(name: str) -> str:
        return str(args[args.index(name) + 1])

    settings = router_settings(objs, tmp_path)
    assert settings.endpoint(flag("--endpoint")) is not None
    assert urlsplit(flag("--router-url")).hostname == "inference-router"
    port = int(flag("--port"))
    assert flag("--public-url") == f"http://$(POD_IP):{port}"
    assert {p["name"]: p["containerPort"] for p in sidecar["ports"]} == {"worker": port}
    assert sidecar["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "worker"}
    assert sidecar["livenessProbe"]["httpGet"] == {"path": "/livez", "port": "worker"}
    env = {e["name"]: e for e in sidecar["env"]}
    assert env["POD_IP"]["valueFrom"]["fieldRef"]["fieldPath"] == "status.podIP"
    token = env["WORKER_REGISTER_TOKEN"]["valueFrom"]["secretKeyRef"]
    router_env = {
        e["name"]: e["valueFrom"]["secretKeyRef"]
        for e in container(one(objs, "Deployment", "inference-router"), "router")["env"]
    }
    assert token == router_env["ROUTER_WORKER_TOKEN"]  # the token the router accepts
    # the model server outlives the worker's drain, and the pod outlives both
    backend = urlsplit(flag("--backend-url"))
    assert backend.hostname == "127.0.0.1" and str(backend.port) in model["args"]
    drain_s = float(flag("--grace-s"))
    assert int(model["lifecycle"]["preStop"]["exec"]["command"][1]) > drain_s
    assert pod_spec(worker)["terminationGracePeriodSeconds"] > drain_s + 5


def test_single_overlay_runs_one_router_that_a_node_drain_may_move() -> None:
    objs = render("single")
    assert one(objs, "Deployment", "inference-router")["spec"]["replicas"] == 1
    assert not [o for o in objs if o["kind"] == "HorizontalPodAutoscaler"]
    assert one(objs, "PodDisruptionBudget", "inference-router")["spec"] == {
        "maxUnavailable": 1,
        "selector": {"matchLabels": {"app.kubernetes.io/name": "inference-router"}},
    }


def test_ha_overlay_runs_three_routers_apart_and_keeps_two() -> None:
    objs = render("ha")
    deployment = one(objs, "Deployment", "inference-router")
    assert deployment["spec"]["replicas"] == 3
    hpa = one(objs, "HorizontalPodAutoscaler", "inference-router")
    assert hpa["spec"]["minReplicas"] == 3 and hpa["spec"]["maxReplicas"] > 3
    assert hpa["spec"]["metrics"][0]["resource"]["name"] == "cpu"
    pdb = one(objs, "PodDisruptionBudget", "inference-router")["spec"]
    assert pdb["minAvailable"] == 2 and "maxUnavailable" not in pdb
    terms = pod_spec(deployment)["affinity"]["podAntiAffinity"][
        "preferredDuringSchedulingIgnoredDuringExecution"
    ]
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert any(
        t["podAffinityTerm"]["topologyKey"] == "kubernetes.io/hostname"
        and matches(t["podAffinityTerm"]["labelSelector"]["matchLabels"], labels)
        for t in terms
    )


def test_secret_values_are_marked_placeholders() -> None:
    secret = named(render("single"), "Secret", "router-keys")
    values = {k: base64.b64decode(v).decode() for k, v in secret["data"].items()}
    assert set(values) == {"api-key", "admin-key", "worker-token"}
    for key, value in values.items():
        assert re.fullmatch(r"CHANGE-ME-[a-z-]+", value), f"{key}: not a marked placeholder"


def test_synthetic_worker_component_needs_no_gpu(tmp_path: Path) -> None:
    from workers.cli import parser as worker_parser

    overlay = tmp_path / "try"
    overlay.mkdir()
    (overlay / "kustomization.yaml").write_text(
        "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\n"
        # kustomize takes relative paths only
        f"resources:\n  - {os.path.relpath(KUSTOMIZE / 'overlays' / 'single', overlay)}\n"
        "components:\n"
        f"  - {os.path.relpath(KUSTOMIZE / 'components' / 'synthetic-worker', overlay)}\n"
    )
    objs = render_dir(overlay)
    for obj in objs:
        validate(obj)
    worker = one(objs, "Deployment", "llama-worker")
    (sidecar,) = pod_spec(worker)["containers"]
    assert sidecar["name"] == "worker" and "nvidia.com/gpu" not in str(worker)
    args = worker_parser().parse_args(sidecar["args"])
    assert args.backend == "synthetic" and args.endpoint == "llama"
    assert sidecar["readinessProbe"]["httpGet"]["path"] == "/readyz"
    mounts = {m["name"] for m in sidecar["volumeMounts"]}
    assert mounts <= {v["name"] for v in pod_spec(worker)["volumes"]}
