"""The Kubernetes objects of an endpoint, and what a pod's status says: pure functions.

`objects()` builds what the `kubernetes` provider applies for an endpoint, in apply
order: its Namespace, then either a Deployment (the model server and the reference
worker `inference-worker` as two containers of one pod; only the worker for the
synthetic backend) and a Service, or, for a `rawModelSpec`, the InferenceService as the
client wrote it with the router's labels, namespace and replica count stamped on and
the reference worker added as a sidecar container (KServe appends a predictor's
`containers` to the model server's pod). `read_pod()` turns a pod into the worker the
provider reports; `conditions()` reads an InferenceService's status conditions. No I/O,
and no Kubernetes client library: these are plain dicts, as the API serves them.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Any

from router.control import kserve
from router.control.providers.base import WorkerState
from router.control.settings import KubernetesSettings
from router.control.spec import EndpointRecord

MANAGED_BY = "app.kubernetes.io/managed-by"
MANAGER = "inference-router"  # the value of MANAGED_BY on everything the router made
ENDPOINT = "inference-router/endpoint"
WORKSPACE = "inference-router/workspace"
ISVC_LABEL = "serving.kserve.io/inferenceservice"  # KServe's, on an InferenceService's pods
DELETION_COST = "controller.kubernetes.io/pod-deletion-cost"
WORKER = "inference-worker"  # the reference worker's container (and its command)
MODEL = "model-server"
WORKER_PORT = "worker"  # the port names in the pod spec
MODEL_PORT = "model"
GPU = "nvidia.com/gpu"
SELECTOR = f"{MANAGED_BY}={MANAGER}"  # every pod, Deployment and InferenceService of ours

IMAGE_PULL = {"ImagePullBackOff", "ErrImagePull", "ErrImageNeverPull", "InvalidImageName"}
# waiting reasons that no waiting cures: the worker is failed, with these words
FATAL = {
    "CrashLoopBackOff": "Crash Loop Backoff",
    "CreateContainerConfigError": "Create Container Config Error",
    "CreateContainerError": "Create Container Error",
    "RunContainerError": "Run Container Error",
}


def labels(record: EndpointRecord) -> dict[str, str]:
    return {MANAGED_BY: MANAGER, ENDPOINT: record.name, WORKSPACE: record.workspace}


def namespace_of(record: EndpointRecord, ks: KubernetesSettings) -> str:
    return record.namespace or ks.namespace


def objects(
    record: EndpointRecord, ks: KubernetesSettings, replicas: int, router_url: str
) -> list[dict[str, Any]]:
    """Everything applied for `record`, in apply order (the Namespace first)."""
    out = [namespace(record, ks)] if record.namespace else []
    if record.raw_spec is not None:
        return [*out, inference_service(record, ks, replicas, router_url)]
    return [*out, deployment(record, ks, replicas, router_url), service(record, ks)]


def namespace(record: EndpointRecord, ks: KubernetesSettings) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {"name": namespace_of(record, ks), "labels": labels(record)},
    }


def deployment(
    record: EndpointRecord, ks: KubernetesSettings, replicas: int, router_url: str
) -> dict[str, Any]:
    """The endpoint's Deployment; `replicas` is also what the scale subresource sets."""
    rt = record.runtime
    ready_s = max(1, math.ceil(rt.ready_timeout_s))
    containers: list[dict[str, Any]] = []
    if not rt.synthetic:
        containers.append(_model_container(record, ks))
    containers.append(worker_container(record, ks, router_url, ks.model_port))
    pod_spec: dict[str, Any] = {
        # the worker drains on SIGTERM (its --grace-s); streams get this long to finish
        "terminationGracePeriodSeconds": ks.termination_grace_s,
        "containers": containers,
    }
    if ks.service_account:
        pod_spec["serviceAccountName"] = ks.service_account
    sel = {MANAGED_BY: MANAGER, ENDPOINT: record.name}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {
            "name": record.name,
            "namespace": namespace_of(record, ks),
            "labels": labels(record),
        },
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": sel},
            # never below the model's own load deadline (a GPU node may also need scaling)
            "progressDeadlineSeconds": max(600, ready_s + 60),
            "strategy": {
                "type": "RollingUpdate",
                "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0},
            },
            "template": {"metadata": {"labels": labels(record)}, "spec": pod_spec},
        },
    }


def service(record: EndpointRecord, ks: KubernetesSettings) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {
            "name": record.name,
            "namespace": namespace_of(record, ks),
            "labels": labels(record),
        },
        "spec": {
            "type": "ClusterIP",
            "selector": {MANAGED_BY: MANAGER, ENDPOINT: record.name},
            "ports": [{"name": "http", "port": 80, "targetPort": WORKER_PORT}],
        },
    }


def inference_service(
    record: EndpointRecord, ks: KubernetesSettings, replicas: int, router_url: str
) -> dict[str, Any]:
    """The client's InferenceService, stamped: name, namespace, labels, replicas, worker.

    The router's autoscaler owns the replica count (minReplicas = maxReplicas, so an
    HPA, if KServe makes one, holds it there); InferenceServices have no scale
    subresource. The reference worker talks to KServe's model server on its port 8080.
    """
    assert record.raw_spec is not None
    doc = copy.deepcopy(kserve.parse(record.raw_spec, max_bytes=1 << 30).doc)
    meta = doc.setdefault("metadata", {})
    meta["name"] = record.name
    meta["namespace"] = namespace_of(record, ks)
    meta["labels"] = {**(meta.get("labels") or {}), **labels(record)}
    predictor = doc["spec"]["predictor"]
    predictor["minReplicas"] = replicas
    predictor["maxReplicas"] = max(replicas, 1)
    sidecars = [c for c in predictor.get("containers") or [] if c.get("name") != WORKER]
    predictor["containers"] = [*sidecars, worker_container(record, ks, router_url, 8080)]
    predictor.setdefault("terminationGracePeriodSeconds", ks.termination_grace_s)
    return doc


def worker_container(
    record: EndpointRecord, ks: KubernetesSettings, router_url: str, model_port: int
) -> dict[str, Any]:
    """The reference worker: readiness on its /readyz, which follows the model's health."""
    rt = record.runtime
    port = ks.worker_port
    grace = max(1, ks.termination_grace_s - 5)  # drain, then exit before SIGKILL
    args = [
        "--backend",
        rt.backend,
        "--host",
        "0.0.0.0",
        "--port",
        str(port),
        "--public-url",
        f"http://$(POD_IP):{port}",
        "--endpoint",
        record.name,
        "--router-url",
        router_url,
        "--grace-s",
        str(grace),
    ]
    if rt.backend != "synthetic":  # the model server in the same pod
        args += [
            "--backend-url",
            f"http://127.0.0.1:{model_port}",
            "--backend-health-path",
            rt.health_path,
        ]
    if rt.perf is not None:
        args += ["--perf", repr(rt.perf)]
    if rt.max_load is not None:
        args += ["--max-load", repr(rt.max_load)]
    if rt.synthetic:
        args += ["--ttft-ms", repr(rt.ttft_ms), "--tokens-per-s", repr(rt.tokens_per_s)]
    ready_s = max(1, math.ceil(rt.ready_timeout_s))
    return {
        "name": WORKER,
        "image": ks.worker_image,
        "imagePullPolicy": ks.image_pull_policy,
        "command": [WORKER],
        "args": args,
        "env": [{"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}}],
        "ports": [{"name": WORKER_PORT, "containerPort": port, "protocol": "TCP"}],
        "readinessProbe": {
            "httpGet": {"path": "/readyz", "port": WORKER_PORT},
            "periodSeconds": 2,
            "failureThreshold": 2,
        },
        "livenessProbe": {
            "httpGet": {"path": "/livez", "port": WORKER_PORT},
            "periodSeconds": 10,
            "failureThreshold": 3,
        },
        "startupProbe": {
            "httpGet": {"path": "/livez", "port": WORKER_PORT},
            "periodSeconds": 5,
            "failureThreshold": max(3, math.ceil(ready_s / 5)),
        },
    }


def _model_container(record: EndpointRecord, ks: KubernetesSettings) -> dict[str, Any]:
    """The model server: its startup probe lets it load for `ready_timeout_s` (a large
    model takes minutes; a liveness probe alone would kill it mid-load)."""
    rt = record.runtime
    image = ks.model_image(record.model_name)
    if image is None:
        raise ValueError(
            f"control.kubernetes.model_images has no image for model format {record.model_name!r}"
        )
    port = ks.model_port
    argv = [
        a.replace("{port}", str(port))
        .replace("{model_path}", record.storage_uri)
        .replace("{python}", "python")
        for a in rt.command
    ]
    limits: dict[str, Any] = dict((record.resources or {}).get("limits") or {})
    requests: dict[str, Any] = dict((record.resources or {}).get("requests") or {})
    gpus = int((record.gpu_spec or {}).get("numberOfGPUs") or 0)
    if gpus:
        limits[GPU] = str(gpus)
    resources: dict[str, Any] = {}
    if limits:
        resources["limits"] = {k: str(v) for k, v in limits.items()}
    if requests:
        resources["requests"] = {k: str(v) for k, v in requests.items()}
    ready_s = max(1, math.ceil(rt.ready_timeout_s))
    grace = max(1, ks.termination_grace_s - 5)
    c: dict[str, Any] = {
        "name": MODEL,
        "image": image,
        "imagePullPolicy": ks.image_pull_policy,
        "args": [*argv[1:], *record.args] if argv else list(record.args),
        "env": [
            {"name": "STORAGE_URI", "value": record.storage_uri},
            *({"name": k, "value": v} for k, v in rt.env),
        ],
        "ports": [{"name": MODEL_PORT, "containerPort": port, "protocol": "TCP"}],
        "startupProbe": {
            "httpGet": {"path": rt.health_path, "port": MODEL_PORT},
            "periodSeconds": 10,
            "failureThreshold": max(3, math.ceil(ready_s / 10)),
        },
        "livenessProbe": {
            "httpGet": {"path": rt.health_path, "port": MODEL_PORT},
            "periodSeconds": 15,
            "failureThreshold": 4,
        },
        # both containers get SIGTERM at once: the model server stays up while the
        # worker drains what it still streams
        "lifecycle": {"preStop": {"sleep": {"seconds": grace}}},
    }
    if argv:
        c["command"] = argv[:1]
    if resources:
        c["resources"] = resources
    return c


@dataclass(frozen=True, slots=True)
class PodView:
    """What a pod says about its worker."""

    namespace: str
    name: str
    endpoint: str
    url: str  # "" until the pod has an IP
    state: WorkerState
    detail: str
    ready: bool
    terminating: bool
    isvc: bool  # made by KServe for an InferenceService (scaled through it)


def read_pod(pod: dict[str, Any], default_port: int) -> PodView:
    meta = pod.get("metadata") or {}
    spec = pod.get("spec") or {}
    status = pod.get("status") or {}
    lbl = meta.get("labels") or {}
    ip = status.get("podIP") or ""
    port = _worker_port(spec, default_port)
    url = ""
    if ip:
        url = f"http://[{ip}]:{port}" if ":" in ip else f"http://{ip}:{port}"
    conds = {c.get("type"): c for c in status.get("conditions") or []}
    ready = (conds.get("Ready") or {}).get("status") == "True"
    state, detail = _pod_state(meta, status, conds, ready)
    return PodView(
        namespace=meta.get("namespace", ""),
        name=meta.get("name", ""),
        endpoint=lbl.get(ENDPOINT, ""),
        url=url,
        state=state,
        detail=detail,
        ready=ready,
        terminating=bool(meta.get("deletionTimestamp")),
        isvc=ISVC_LABEL in lbl,
    )


def _worker_port(spec: dict[str, Any], default: int) -> int:
    for c in spec.get("containers") or []:
        if c.get("name") != WORKER:
            continue
        for p in c.get("ports") or []:
            if p.get("name") == WORKER_PORT and isinstance(p.get("containerPort"), int):
                return int(p["containerPort"])
    return default


def _pod_state(
    meta: dict[str, Any],
    status: dict[str, Any],
    conds: dict[str, dict[str, Any]],
    ready: bool,
) -> tuple[WorkerState, str]:
    if meta.get("deletionTimestamp"):
        return "stopping", "pod terminating"
    phase = status.get("phase") or "Pending"
    statuses = [
        *(status.get("initContainerStatuses") or []),
        *(status.get("containerStatuses") or []),
    ]
    if phase in ("Failed", "Succeeded"):
        why = " ".join(x for x in (status.get("reason"), status.get("message")) if x)
        codes = []
        for cs in statuses:
            term = (cs.get("state") or {}).get("terminated")
            if term:
                codes.append(f"{cs.get('name')} exited with code {term.get('exitCode')}")
        return "exited", "; ".join([f"pod {phase}" + (f": {why}" if why else ""), *codes])
    for cs in statuses:
        waiting = (cs.get("state") or {}).get("waiting") or {}
        reason = waiting.get("reason") or ""
        message = waiting.get("message") or ""
        name = cs.get("name", "")
        if reason in IMAGE_PULL:
            return "failed", f"Image Pull Backoff: {name}: {message or reason}"
        if reason in FATAL:
            last = (cs.get("lastState") or {}).get("terminated") or {}
            code = f" (last exit code {last['exitCode']})" if "exitCode" in last else ""
            return "failed", f"{FATAL[reason]}: {name}{code}: {message or reason}"
    if ready:
        return "running", "ready"
    scheduled = conds.get("PodScheduled") or {}
    if scheduled.get("status") == "False" or (phase == "Pending" and not status.get("podIP")):
        why = scheduled.get("message") or scheduled.get("reason") or "not scheduled yet"
        return "starting", f"Pending: {why}"
    return "starting", "Loading: containers not ready yet"


def conditions(obj: dict[str, Any]) -> dict[str, str]:
    """An object's status conditions as type -> status ("True", "False", "Unknown")."""
    out: dict[str, str] = {}
    for c in (obj.get("status") or {}).get("conditions") or []:
        if isinstance(c, dict) and isinstance(c.get("type"), str):
            out[c["type"]] = str(c.get("status", "Unknown"))
    return out


def deployment_trouble(obj: dict[str, Any]) -> str:
    """Why a Deployment makes no progress ("" when it does): its conditions' words."""
    for c in (obj.get("status") or {}).get("conditions") or []:
        kind, st = c.get("type"), c.get("status")
        if (kind == "Progressing" and st == "False") or (kind == "ReplicaFailure" and st == "True"):
            return f"{c.get('reason', kind)}: {c.get('message', '')}".strip()
    return ""
