"""The controllers a cluster runs behind its API, scripted, over `FakeKube`'s store.

* Deployments: `spec.replicas` pods from the template (ownerReferences, a
  `pod-template-hash` label); fewer wanted, the ReplicaSet's victims go first
  (unscheduled, then pending, then not ready, then the lowest
  `controller.kubernetes.io/pod-deletion-cost`, then the newest); status with
  `readyReplicas` and Available/Progressing conditions; pods of a deleted Deployment
  are garbage-collected.
* InferenceServices (KServe, raw mode): a `{name}-predictor` Deployment with the
  service's labels (as KServe's `buildObjectMeta` unions them), `minReplicas` pods,
  the predictor's `containers` as sidecars of `kserve-container`; status conditions
  `PredictorReady`, `IngressReady`, `Ready`.
* A kubelet: schedules a pod (its own IP, 127.0.0.N: each pod a loopback address of its
  own, as each has its own network namespace), pulls its images, and runs the
  `inference-worker` container for real, as its command and args say (`$(POD_IP)`
  expanded), so the provider's pod spec is what starts the worker. Ready once the
  worker's `/readyz` answers 200 (the readiness probe); a deleted pod's worker gets
  SIGTERM and the pod goes once it has exited.

Failure scripts, per endpoint (`scripts[endpoint]`) or by image: `"image-pull"` (or an
image in `bad_images`): ErrImagePull, then ImagePullBackOff; `"unschedulable"`: Pending
with PodScheduled False; `"stuck"`: containers run, never ready (a model that never
loads); `"crash"`: CrashLoopBackOff.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import logging
import secrets
import sys
import tempfile
from pathlib import Path
from typing import Any

import aiohttp

from router.control.providers.child import Child, spawn
from tests.control.fake_kube import FakeKube, now_iso

log = logging.getLogger(__name__)

ENDPOINT = "inference-router/endpoint"
ISVC = "serving.kserve.io/inferenceservice"
COST = "controller.kubernetes.io/pod-deletion-cost"


class FakeCluster:
    def __init__(self, kube: FakeKube, log_dir: Path | None = None) -> None:
        self.kube = kube
        self.log_dir = log_dir or Path(tempfile.mkdtemp(prefix="fake-cluster-"))
        self.scripts: dict[str, str] = {}
        self.bad_images: set[str] = set()
        self.children: dict[tuple[str, str], Child] = {}  # (ns, pod) -> its worker
        self._next_ip = 10
        self._session: aiohttp.ClientSession | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=1))
        self._task = asyncio.create_task(self._run(), name="fake-cluster")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        for child in self.children.values():
            await child.terminate(5)
        self.children.clear()
        if self._session is not None:
            await self._session.close()

    async def _run(self) -> None:
        while True:
            try:
                await self.run_once()
            except Exception:
                log.exception("fake cluster pass failed")
            self.kube.changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.kube.changed.wait(), 0.1)

    async def run_once(self) -> None:
        self._kserve()
        self._deployments()
        await self._kubelet()
        self._statuses()

    # KServe

    def _kserve(self) -> None:
        k = self.kube
        for isvc in k.list("inferenceservices"):
            meta = isvc["metadata"]
            ns, name = meta["namespace"], meta["name"]
            predictor = isvc["spec"]["predictor"]
            lbl = {**(meta.get("labels") or {}), ISVC: name, "component": "predictor"}
            model = predictor.get("model") or {}
            containers = [
                {
                    "name": "kserve-container",
                    "image": f"kserve/{(model.get('modelFormat') or {}).get('name')}server",
                    "args": list(model.get("args") or []),
                    "ports": [{"containerPort": 8080, "protocol": "TCP"}],
                },
                *copy.deepcopy(predictor.get("containers") or []),
            ]
            want = {
                "apiVersion": "apps/v1",
                "kind": "Deployment",
                "metadata": {
                    "name": f"{name}-predictor",
                    "namespace": ns,
                    "labels": lbl,
                    "ownerReferences": [_owner(isvc)],
                },
                "spec": {
                    "replicas": int(predictor.get("minReplicas", 1)),
                    "selector": {"matchLabels": {ISVC: name}},
                    "template": {
                        "metadata": {"labels": lbl},
                        "spec": {
                            "containers": containers,
                            "terminationGracePeriodSeconds": predictor.get(
                                "terminationGracePeriodSeconds", 30
                            ),
                        },
                    },
                },
            }
            dep = k.get("deployments", ns, f"{name}-predictor")
            if dep is None or dep["spec"] != want["spec"] or dep["metadata"]["labels"] != lbl:
                if dep is not None:
                    want["status"] = dep.get("status", {})
                k.put("deployments", want)
        for dep in k.list("deployments"):  # predictors of deleted InferenceServices
            owner = (dep["metadata"].get("ownerReferences") or [{}])[0]
            if owner.get("kind") == "InferenceService":
                ns = dep["metadata"]["namespace"]
                if k.get("inferenceservices", ns, owner["name"]) is None:
                    k.remove("deployments", ns, dep["metadata"]["name"])

    # the Deployment and ReplicaSet controllers

    def _deployments(self) -> None:
        k = self.kube
        deps = {
            (d["metadata"]["namespace"], d["metadata"]["name"]): d for d in k.list("deployments")
        }
        for pod in k.list("pods"):  # garbage collection
            owner = pod["metadata"].get("annotations", {}).get("fake/deployment")
            ns = pod["metadata"]["namespace"]
            if owner and (ns, owner) not in deps and not pod["metadata"].get("deletionTimestamp"):
                k.delete("pods", ns, pod["metadata"]["name"])
        for (ns, name), dep in deps.items():
            pods = [
                p
                for p in k.list("pods", ns)
                if p["metadata"].get("annotations", {}).get("fake/deployment") == name
            ]
            active = [
                p
                for p in pods
                if not p["metadata"].get("deletionTimestamp")
                and (p.get("status") or {}).get("phase") not in ("Failed", "Succeeded")
            ]
            want = int(dep["spec"].get("replicas", 1))
            for _ in range(want - len(active)):
                self._new_pod(dep)
            if len(active) > want:
                for p in sorted(active, key=_victim_rank)[: len(active) - want]:
                    k.delete("pods", ns, p["metadata"]["name"])

    def _new_pod(self, dep: dict[str, Any]) -> None:
        tmpl = copy.deepcopy(dep["spec"]["template"])
        meta = dep["metadata"]
        h = f"{abs(hash(meta['uid'])) % 0xFFFFFFFF:08x}"[:8]
        lbl = {**(tmpl["metadata"].get("labels") or {}), "pod-template-hash": h}
        pod = {
            "metadata": {
                "name": f"{meta['name']}-{h}-{secrets.token_hex(3)[:5]}",
                "namespace": meta["namespace"],
                "labels": lbl,
                "annotations": {"fake/deployment": meta["name"]},
                "ownerReferences": [
                    {
                        "apiVersion": "apps/v1",
                        "kind": "ReplicaSet",
                        "name": f"{meta['name']}-{h}",
                        "uid": meta["uid"],
                        "controller": True,
                    }
                ],
            },
            "spec": tmpl["spec"],
            "status": {"phase": "Pending"},
        }
        self.kube.put("pods", pod)

    # the kubelet

    async def _kubelet(self) -> None:
        k = self.kube
        for pod in k.list("pods"):
            meta, spec, status = pod["metadata"], pod["spec"], pod.get("status") or {}
            ns, name = meta["namespace"], meta["name"]
            script = self.scripts.get(meta.get("labels", {}).get(ENDPOINT, ""), "")
            if meta.get("deletionTimestamp"):
                await self._terminate(ns, name)
                continue
            if not spec.get("nodeName"):
                if script == "unschedulable":
                    if not _cond(status, "PodScheduled"):
                        self._set(
                            pod,
                            phase="Pending",
                            conditions=[
                                _c(
                                    "PodScheduled",
                                    "False",
                                    "Unschedulable",
                                    "0/1 nodes are available: 1 Insufficient nvidia.com/gpu.",
                                )
                            ],
                        )
                    continue
                pod = copy.deepcopy(pod)
                pod["spec"]["nodeName"] = "fake-node-1"
                pod["status"] = {"phase": "Pending", "conditions": [_c("PodScheduled", "True")]}
                k.put("pods", pod)
                continue
            if status.get("podIP") is None and status.get("phase") == "Pending":
                images = [c.get("image", "") for c in spec.get("containers") or []]
                bad = [i for i in images if i in self.bad_images]
                if script == "image-pull" or bad:
                    await self._image_pull(pod, (bad or images)[-1])
                    continue
                if script == "crash":
                    self._crash(pod)
                    continue
                await self._run_pod(pod, script)
                continue
            if status.get("phase") == "Running" and not _cond(status, "Ready"):
                await self._probe(pod)
            child = self.children.get((ns, name))
            if (
                child is not None
                and child.returncode is not None
                and status.get("phase") == "Running"
            ):
                self.children.pop((ns, name))
                self._crash(pod, child.returncode)

    async def _image_pull(self, pod: dict[str, Any], image: str) -> None:
        waiting = [c for c in (pod.get("status") or {}).get("containerStatuses") or []]
        reason = "ImagePullBackOff" if waiting else "ErrImagePull"
        msg = (
            f'Back-off pulling image "{image}"'
            if waiting
            else f'failed to pull and unpack image "{image}": not found'
        )
        current = waiting[0]["state"]["waiting"]["reason"] if waiting else ""
        if current == "ImagePullBackOff":
            return
        statuses = [
            {
                "name": c["name"],
                "image": c.get("image", ""),
                "ready": False,
                "restartCount": 0,
                "state": {"waiting": {"reason": reason, "message": msg}},
            }
            for c in pod["spec"]["containers"]
        ]
        self._set(pod, phase="Pending", containerStatuses=statuses)

    def _crash(self, pod: dict[str, Any], code: int = 1) -> None:
        statuses = [
            {
                "name": c["name"],
                "image": c.get("image", ""),
                "ready": False,
                "restartCount": 5,
                "state": {
                    "waiting": {
                        "reason": "CrashLoopBackOff",
                        "message": f"back-off 5m0s restarting failed container={c['name']}",
                    }
                },
                "lastState": {"terminated": {"exitCode": code, "reason": "Error"}},
            }
            for c in pod["spec"]["containers"]
        ]
        self._set(
            pod,
            phase="Running",
            podIP=self._ip(),
            containerStatuses=statuses,
            conditions=[_c("PodScheduled", "True"), _c("Ready", "False")],
        )

    async def _run_pod(self, pod: dict[str, Any], script: str) -> None:
        ip = self._ip()
        meta = pod["metadata"]
        for c in pod["spec"]["containers"]:
            if c["name"] != "inference-worker" or script == "stuck":
                continue  # other containers (a model server image) only "run"
            argv = _expand(list(c.get("args") or []), ip)
            argv = _override(argv, "--host", ip)
            command = c.get("command") or ["inference-worker"]
            assert command == ["inference-worker"], command
            path = self.log_dir / f"{meta['name']}.log"
            child = await spawn(
                "worker",
                [sys.executable, "-m", "workers", *argv],
                path,
                {"PYTHONUNBUFFERED": "1", "PATH": "/usr/bin:/bin"},
            )
            self.children[(meta["namespace"], meta["name"])] = child
        statuses = [
            {
                "name": c["name"],
                "image": c.get("image", ""),
                "ready": False,
                "restartCount": 0,
                "started": True,
                "state": {"running": {"startedAt": now_iso()}},
            }
            for c in pod["spec"]["containers"]
        ]
        self._set(
            pod,
            phase="Running",
            podIP=ip,
            podIPs=[{"ip": ip}],
            hostIP="127.0.0.1",
            startTime=now_iso(),
            containerStatuses=statuses,
            conditions=[
                _c("PodScheduled", "True"),
                _c("Initialized", "True"),
                _c("ContainersReady", "False"),
                _c("Ready", "False"),
            ],
        )

    async def _probe(self, pod: dict[str, Any]) -> None:
        """The readiness probe: the worker's /readyz (pods with no worker never pass)."""
        ip = pod["status"]["podIP"]
        ports = [
            p["containerPort"]
            for c in pod["spec"]["containers"]
            if c["name"] == "inference-worker"
            for p in c.get("ports") or []
        ]
        if (
            not ports
            or (pod["metadata"]["namespace"], pod["metadata"]["name"]) not in self.children
        ):
            return
        assert self._session is not None
        try:
            async with self._session.get(f"http://{ip}:{ports[0]}/readyz") as resp:
                ok = resp.status == 200
        except (aiohttp.ClientError, TimeoutError):
            return
        if ok:
            statuses = copy.deepcopy(pod["status"]["containerStatuses"])
            for s in statuses:
                s["ready"] = True
            conds = [
                _c("PodScheduled", "True"),
                _c("Initialized", "True"),
                _c("ContainersReady", "True"),
                _c("Ready", "True"),
            ]
            self._set(pod, containerStatuses=statuses, conditions=conds)

    async def _terminate(self, ns: str, name: str) -> None:
        child = self.children.pop((ns, name), None)
        if child is not None:
            await child.terminate(10)
        self.kube.remove("pods", ns, name)

    def _ip(self) -> str:
        self._next_ip += 1
        n = self._next_ip
        return f"127.0.{n // 250}.{n % 250 + 2}"

    def _set(self, pod: dict[str, Any], **status: Any) -> None:
        fresh = self.kube.get("pods", pod["metadata"]["namespace"], pod["metadata"]["name"])
        if fresh is None:
            return
        fresh = copy.deepcopy(fresh)
        fresh["status"] = {**(fresh.get("status") or {}), **status}
        self.kube.put("pods", fresh)

    # statuses of Deployments and InferenceServices

    def _statuses(self) -> None:
        k = self.kube
        for dep in k.list("deployments"):
            ns, name = dep["metadata"]["namespace"], dep["metadata"]["name"]
            pods = [
                p
                for p in k.list("pods", ns)
                if p["metadata"].get("annotations", {}).get("fake/deployment") == name
                and not p["metadata"].get("deletionTimestamp")
            ]
            ready = sum(1 for p in pods if _cond(p.get("status") or {}, "Ready"))
            want = int(dep["spec"].get("replicas", 1))
            st = {
                "observedGeneration": dep["metadata"]["generation"],
                "replicas": len(pods),
                "readyReplicas": ready,
                "availableReplicas": ready,
                "conditions": [
                    _c(
                        "Available",
                        "True" if ready >= want else "False",
                        "MinimumReplicasAvailable"
                        if ready >= want
                        else "MinimumReplicasUnavailable",
                    ),
                    _c(
                        "Progressing",
                        "True",
                        "NewReplicaSetAvailable" if ready >= want else "ReplicaSetUpdated",
                    ),
                ],
            }
            if _strip_times(dep.get("status")) != _strip_times(st):
                fresh = copy.deepcopy(dep)
                fresh["status"] = st
                k.put("deployments", fresh)
        for isvc in k.list("inferenceservices"):
            ns, name = isvc["metadata"]["namespace"], isvc["metadata"]["name"]
            dep = k.get("deployments", ns, f"{name}-predictor")
            ready = bool(dep and (dep.get("status") or {}).get("readyReplicas"))
            t = "True" if ready else "False"
            st = {
                "observedGeneration": isvc["metadata"]["generation"],
                "url": f"http://{name}-{ns}.example.com",
                "address": {"url": f"http://{name}-predictor.{ns}.svc.cluster.local"},
                "conditions": [_c("IngressReady", t), _c("PredictorReady", t), _c("Ready", t)],
                "modelStatus": {
                    "transitionStatus": "UpToDate" if ready else "InProgress",
                    "states": {
                        "activeModelState": "Loaded" if ready else "Loading",
                        "targetModelState": "Loaded",
                    },
                },
            }
            if _strip_times(isvc.get("status")) != _strip_times(st):
                fresh = copy.deepcopy(isvc)
                fresh["status"] = st
                k.put("inferenceservices", fresh)


def _owner(obj: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": obj["apiVersion"],
        "kind": obj["kind"],
        "name": obj["metadata"]["name"],
        "uid": obj["metadata"]["uid"],
        "controller": True,
    }


def _c(kind: str, status: str, reason: str = "", message: str = "") -> dict[str, Any]:
    c: dict[str, Any] = {"type": kind, "status": status, "lastTransitionTime": now_iso()}
    if reason:
        c["reason"] = reason
    if message:
        c["message"] = message
    return c


def _cond(status: dict[str, Any], kind: str) -> bool:
    return any(
        c.get("type") == kind and c.get("status") == "True" for c in status.get("conditions") or []
    )


def _strip_times(doc: Any) -> Any:
    if isinstance(doc, dict):
        return {k: _strip_times(v) for k, v in doc.items() if k != "lastTransitionTime"}
    if isinstance(doc, list):
        return [_strip_times(v) for v in doc]
    return doc


def _victim_rank(pod: dict[str, Any]) -> tuple[int, int, int, int, str]:
    """The ReplicaSet's order of deletion (k8s `ActivePodsWithRanks`, simplified)."""
    status = pod.get("status") or {}
    phase = {"Pending": 0, "Unknown": 1, "Running": 2}.get(status.get("phase", "Pending"), 0)
    cost = int((pod["metadata"].get("annotations") or {}).get(COST, "0"))
    created = pod["metadata"].get("creationTimestamp", "")
    inverted = "".join(chr(0x10FFFF - ord(ch)) for ch in created)  # newest first
    return (
        1 if pod["spec"].get("nodeName") else 0,
        phase,
        1 if _cond(status, "Ready") else 0,
        cost,
        inverted,
    )


def _expand(args: list[str], ip: str) -> list[str]:
    return [a.replace("$(POD_IP)", ip) for a in args]


def _override(argv: list[str], flag: str, value: str) -> list[str]:
    out = list(argv)
    if flag in out:
        out[out.index(flag) + 1] = value
    else:
        out += [flag, value]
    return out
