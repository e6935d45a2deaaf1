"""The `kubernetes` provider: an endpoint is a Deployment (or an InferenceService); a pod, a worker.

Needs the `k8s` extra (`pip install 'inference-router[k8s]'`, kubernetes_asyncio); the
core never imports this module unless `control.default_provider = "kubernetes"`.

* **Objects** (`kube_objects`): a Namespace, then a Deployment and a Service, or the
  client's InferenceService with the router's labels stamped on. All through
  server-side apply (`PATCH`, `application/apply-patch+yaml`, one `fieldManager`,
  `force`), so applying again changes nothing.
* **Workers** come from watching pods labelled `app.kubernetes.io/managed-by=
  inference-router` in every namespace (`kube_watch.Reflector`: list, watch, 410 ->
  list again, reconnect with backoff). A ready pod is `running` at
  `http://{podIP}:{worker port}`; a pod not ready yet is `starting` (detail `Pending:
  ...` while unscheduled); a container waiting on ImagePullBackOff/ErrImagePull is
  `failed` with "Image Pull Backoff: ...", CrashLoopBackOff "Crash Loop Backoff: ...";
  a pod not ready within the runtime's `ready_timeout_s` is `failed`. The provider
  removes a failed pod itself (as the local provider stops a failed process). A pod
  deleted by someone else is `exited` ("pod deleted") until forgotten, so the router
  stops routing to it at once; a pod being deleted is `stopping` until it is gone.
* **Replicas** are the provider's own count per endpoint, written to the Deployment's
  scale subresource (an InferenceService has none: its `minReplicas`/`maxReplicas`).
  `start(endpoint, n)` sets it to the workers reported plus `n` (an absolute count, so
  a restarted router that has not listed yet asks for no more than it wants). A
  replica not yet backed by a pod is reported as a *claim*, a `starting` worker whose
  id the next new pod takes over: ids stay stable from `start()` on and the lifecycle
  never asks twice for the same capacity.
* **Stopping one pod**: the pod gets the lowest `controller.kubernetes.io/pod-deletion-
  cost`, then the replicas go down by one (the ReplicaSet removes the cheapest pod, which
  is this one among pods of equal readiness), then the pod is deleted too: should the
  ReplicaSet have picked another pod, the Deployment replaces that one and the chosen
  pod is still gone; either way the count is right and the pod asked for is stopped.
  `stop()` returns once the pod is gone (its worker drained within the pod's grace
  period), as the local provider returns once its processes exited; past that bound
  it returns anyway and the deletion goes on.
* **Status**: `endpoint_status()` is an InferenceService's conditions (`PredictorReady`,
  `IngressReady`, `Ready`), which the lifecycle stores and the Avesha API reports as
  `predictStatus`/`ingressStatus`.
* API calls never run inside `start`/`stop`: they change the wanted state and wake one
  sync task, which applies it and retries while the API server is away; `observe`
  reads the caches. Requests never wait on the cluster, and the lifecycle loop only in
  `stop()`, bounded (above). `close()` stops watching and leaves the cluster as it is:
  pods outlive a router restart, and the next leader finds them in its first list.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from router.control.providers import kube_objects as ko
from router.control.providers.base import ProvidedWorker, Provider, ProviderError, WorkerState
from router.control.providers.kube_watch import Key, KubeApi, KubeError, Reflector, key_of
from router.control.settings import KubernetesSettings
from router.control.spec import EndpointRecord

log = logging.getLogger(__name__)

APPLY = "application/apply-patch+yaml"
MERGE = "application/merge-patch+json"
LOWEST_COST = "-2147483648"  # pod-deletion-cost is an int32: this pod goes first
SYNC_INTERVAL_S = 1.0  # retrying what the API server did not take, at most this often
DEFAULT_READY_TIMEOUT_S = 600.0  # pods found in the cluster, whose endpoint we have not seen
ISVC_PATH = "/apis/serving.kserve.io/v1beta1"


@dataclass(slots=True)
class _Claim:
    id: str
    since: float  # monotonic: when it was asked for (its load deadline counts from here)


@dataclass(slots=True)
class _Target:
    """What the provider wants of one endpoint in the cluster."""

    endpoint: str
    namespace: str
    isvc: bool
    record: EndpointRecord | None  # None: learnt from the cluster (this router restarted)
    replicas: int
    written: int | None = None  # replicas last written; None: not yet
    applied: bool = False
    claims: list[_Claim] = field(default_factory=list)
    removals: list[str] = field(default_factory=list)  # pods to delete
    removing: bool = False  # the endpoint is gone: delete its objects
    error: str = ""  # the API server refused our objects: claims fail with it
    trouble: str = ""  # the last transient failure, shown while claims wait

    @property
    def ready_timeout_s(self) -> float:
        return self.record.runtime.ready_timeout_s if self.record else DEFAULT_READY_TIMEOUT_S

    def dirty(self) -> bool:
        return (
            self.removing
            or bool(self.removals)
            or (not self.applied and self.record is not None)
            or self.written != self.replicas
        )


class KubernetesProvider(Provider):
    """Workers as pods of a Kubernetes cluster; see the module docstring."""

    name = "kubernetes"
    owned_by_process = False  # pods outlive a leader: the next one adopts them

    def __init__(self, settings: KubernetesSettings, router_url: str) -> None:
        self.settings = settings
        # how workers in the cluster reach the router (their keys, their registration)
        self.router_url = (settings.router_url or router_url).rstrip("/")
        self.api: KubeApi | None = None
        self._client: Any = None  # kubernetes_asyncio.client.ApiClient
        self.pods: Reflector | None = None
        self.deployments: Reflector | None = None
        self.isvcs: Reflector | None = None
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._targets: dict[str, _Target] = {}
        self._bound: dict[Key, str] = {}  # pod -> worker id
        self._since: dict[Key, float] = {}  # pod -> when its worker was asked for
        self._was_ready: set[Key] = set()
        self._stopped: set[Key] = set()  # pods we are deleting
        self._ended: dict[str, ProvidedWorker] = {}  # failed or exited, until forgotten
        self._gone: dict[Key, asyncio.Event] = {}  # set when that pod is deleted (stop waits)
        self._wake = asyncio.Event()
        self._config_error = ""
        self._init_lock = asyncio.Lock()
        self._sync_lock = asyncio.Lock()  # one sync at a time: each reads what the last wrote

    # the interface

    async def start(self, endpoint: EndpointRecord, n: int) -> list[ProvidedWorker]:
        await self._connect()
        if endpoint.raw_spec is not None:
            self._watch_isvcs()
        t = self._targets.get(endpoint.name)
        if t is None or t.removing:
            t = self._targets[endpoint.name] = _Target(
                endpoint.name,
                ko.namespace_of(endpoint, self.settings),
                endpoint.raw_spec is not None,
                endpoint,
                replicas=0,
            )
        if t.record is None or t.record != endpoint:
            t.record, t.applied = endpoint, False  # (re-)apply: idempotent if unchanged
        t.error = ""
        have = len(self._active_pods(endpoint.name)) + len(t.claims)
        t.replicas = max(t.replicas, have) + n
        now = time.monotonic()
        new = [_Claim(f"{endpoint.name}-{secrets.token_hex(4)}", now) for _ in range(n)]
        t.claims += new
        self._wake.set()
        log.info(
            "endpoint %s: asking for %d more pod(s) (replicas %d) in namespace %s",
            endpoint.name,
            n,
            t.replicas,
            t.namespace,
        )
        return [self._claim_view(t, c, "Pending: asked the cluster for a pod") for c in new]

    async def stop(self, worker_id: str) -> None:
        if self._ended.get(worker_id) is not None:
            return  # already being removed
        for t in self._targets.values():
            for c in t.claims:
                if c.id == worker_id:
                    t.claims.remove(c)
                    t.replicas = max(0, t.replicas - 1)
                    self._wake.set()
                    return
        key = next((k for k, wid in self._bound.items() if wid == worker_id), None)
        if key is None or self.pods is None or key not in self.pods.objects:
            log.debug("stop %s: no such pod (gone already)", worker_id)
            return
        self._remove_pod(key, scale_down=True)
        # as the local provider waits for its processes: back once the pod is gone (its
        # worker drained), or after its grace period; the deletion goes on regardless
        gone = self._gone.setdefault(key, asyncio.Event())
        bound = self.settings.termination_grace_s + self.settings.request_timeout_s
        try:
            await asyncio.wait_for(gone.wait(), bound)
        except TimeoutError:
            log.warning("stop %s: pod %s still there after %.0fs", worker_id, key[1], bound)
        finally:
            self._gone.pop(key, None)

    async def observe(self) -> list[ProvidedWorker]:
        try:
            await self._connect()
        except ProviderError:
            return []  # logged once by _connect; start() reports it on the endpoint
        now = time.monotonic()
        out: list[ProvidedWorker] = []
        pods = self.pods.objects if self.pods is not None else {}
        by_endpoint: dict[str, list[dict[str, Any]]] = {}
        for pod in pods.values():
            ep = ((pod.get("metadata") or {}).get("labels") or {}).get(ko.ENDPOINT)
            if ep:
                by_endpoint.setdefault(ep, []).append(pod)
        for ep in sorted({*by_endpoint, *self._targets}):
            out += self._observe_endpoint(ep, by_endpoint.get(ep, []), now)
        out += self._ended.values()
        return out

    async def forget(self, worker_id: str) -> None:
        self._ended.pop(worker_id, None)

    async def remove(self, endpoint: EndpointRecord) -> None:
        t = self._targets.get(endpoint.name)
        if t is None:
            t = self._targets[endpoint.name] = _Target(
                endpoint.name,
                ko.namespace_of(endpoint, self.settings),
                endpoint.raw_spec is not None,
                endpoint,
                replicas=0,
            )
        t.record = t.record or endpoint
        t.removing, t.replicas = True, 0
        t.claims.clear()
        self._wake.set()

    def endpoint_status(self, endpoint: str) -> dict[str, str]:
        if self.isvcs is None:
            return {}
        for obj in self.isvcs.objects.values():
            lbl = (obj.get("metadata") or {}).get("labels") or {}
            if lbl.get(ko.ENDPOINT) == endpoint:
                return ko.conditions(obj)
        return {}

    async def close(self) -> None:
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()
        if self._client is not None:
            await self._client.close()
            self._client = None
        self.api = None

    # what a sync pass or a test waits for

    async def synced(self, timeout_s: float = 10.0) -> None:
        """Wait for the first pod list (tests; a leader that needs the cluster's view)."""
        await self._connect()
        assert self.pods is not None
        await asyncio.wait_for(self.pods.synced.wait(), timeout_s)

    def target_replicas(self, endpoint: str) -> int | None:
        t = self._targets.get(endpoint)
        return None if t is None else t.replicas

    async def sync_once(self) -> None:
        """Apply what is wanted: objects, replicas, pod deletions, endpoint removals."""
        api = self.api
        if api is None:
            return
        async with self._sync_lock:
            for t in list(self._targets.values()):
                if t.dirty():
                    await self._sync_guarded(api, t)

    async def _sync_guarded(self, api: KubeApi, t: _Target) -> None:
        try:
            await self._sync_target(api, t)
            t.trouble = ""
        except (KubeError, aiohttp.ClientError, OSError, TimeoutError) as exc:
            if isinstance(exc, KubeError) and not exc.transient:
                t.error = f"the Kubernetes API refused it: {exc}"
                log.error("endpoint %s: %s", t.endpoint, t.error)
            else:
                t.trouble = f"Kubernetes API unavailable: {type(exc).__name__}: {exc}"
                log.warning("endpoint %s: %s (retrying)", t.endpoint, t.trouble)
        except ValueError as exc:  # objects that cannot be built (config)
            t.error = str(exc)
            log.error("endpoint %s: %s", t.endpoint, t.error)

    # inside

    async def _connect(self) -> None:
        if self.api is not None:
            return
        if self._config_error:
            raise ProviderError(self._config_error)
        async with self._init_lock:
            if self.api is not None:
                return
            try:
                self._client = await _api_client(self.settings)
            except Exception as exc:  # the config loaders raise many kinds
                self._config_error = f"cannot reach a Kubernetes API server: {exc}"
                log.error("kubernetes provider: %s", self._config_error)
                raise ProviderError(self._config_error) from exc
            ks = self.settings
            self.api = api = KubeApi(self._client, ks.request_timeout_s)
            self.pods = Reflector(
                api,
                "/api/v1/pods",
                ko.SELECTOR,
                name="kubernetes pods",
                on_event=self._pod_event,
                watch_timeout_s=ks.watch_timeout_s,
                backoff_max_s=ks.backoff_max_s,
            )
            self.deployments = Reflector(
                api,
                "/apis/apps/v1/deployments",
                ko.SELECTOR,
                name="kubernetes deployments",
                watch_timeout_s=ks.watch_timeout_s,
                backoff_max_s=ks.backoff_max_s,
            )
            for r in (self.pods, self.deployments):
                self._spawn(f"kubernetes-watch:{r.path}", r.run())
            self._spawn("kubernetes-sync", self._sync_loop())

    def _watch_isvcs(self) -> None:
        """InferenceServices are watched from the first one on (a cluster may lack KServe)."""
        if self.isvcs is not None or self.api is None:
            return
        ks = self.settings
        self.isvcs = Reflector(
            self.api,
            f"{ISVC_PATH}/inferenceservices",
            ko.SELECTOR,
            name="kubernetes inferenceservices",
            watch_timeout_s=ks.watch_timeout_s,
            backoff_max_s=ks.backoff_max_s,
        )
        self._spawn("kubernetes-watch:inferenceservices", self.isvcs.run())

    def _spawn(self, name: str, coro: Any) -> None:
        self._tasks[name] = asyncio.create_task(coro, name=name)

    async def _sync_loop(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), SYNC_INTERVAL_S)
            self._wake.clear()
            try:
                await self.sync_once()
            except Exception:
                log.exception("kubernetes provider: sync failed")

    async def _sync_target(self, api: KubeApi, t: _Target) -> None:
        ks = self.settings
        if t.removing:
            await self._delete_objects(api, t)
            if self._targets.get(t.endpoint) is t:
                del self._targets[t.endpoint]
            return
        # stop() and start() change t.replicas while a request here is awaited: what is
        # written down as written is the count that was sent, so a change is sent next time
        if not t.applied and t.record is not None and not t.error:
            replicas = t.replicas
            for obj in ko.objects(t.record, ks, replicas, self.router_url):
                await api.request(
                    "PATCH",
                    _object_path(obj),
                    query={"fieldManager": ks.field_manager, "force": "true"},
                    body=obj,
                    content_type=APPLY,
                )
            t.applied, t.written = True, replicas
            log.info("endpoint %s: applied its objects in %s", t.endpoint, t.namespace)
        removals = list(t.removals)  # a pod stop() adds meanwhile waits for the next sync
        for pod in removals:
            try:  # the ReplicaSet removes the cheapest pod when the count goes down
                await api.request(
                    "PATCH",
                    f"/api/v1/namespaces/{t.namespace}/pods/{pod}",
                    query={"fieldManager": ks.field_manager},
                    body={"metadata": {"annotations": {ko.DELETION_COST: LOWEST_COST}}},
                    content_type=MERGE,
                )
            except KubeError as exc:
                if exc.status != 404:
                    raise
        if t.written != (replicas := t.replicas):
            await self._scale(api, t, replicas)
            t.written = replicas
        for pod in removals:
            try:
                await api.request("DELETE", f"/api/v1/namespaces/{t.namespace}/pods/{pod}")
            except KubeError as exc:
                if exc.status != 404:
                    raise
            t.removals.remove(pod)

    async def _scale(self, api: KubeApi, t: _Target, replicas: int) -> None:
        ks = self.settings
        query = {"fieldManager": ks.field_manager}
        body: dict[str, Any]
        if t.isvc:
            predictor = {"minReplicas": replicas, "maxReplicas": max(replicas, 1)}
            body = {"spec": {"predictor": predictor}}
            path = f"{ISVC_PATH}/namespaces/{t.namespace}/inferenceservices/{t.endpoint}"
        else:
            body = {"spec": {"replicas": replicas}}
            path = f"/apis/apps/v1/namespaces/{t.namespace}/deployments/{t.endpoint}/scale"
        await api.request("PATCH", path, query=query, body=body, content_type=MERGE)
        log.info("endpoint %s: replicas -> %d", t.endpoint, replicas)

    async def _delete_objects(self, api: KubeApi, t: _Target) -> None:
        ns = t.namespace
        if t.isvc:
            paths = [f"{ISVC_PATH}/namespaces/{ns}/inferenceservices/{t.endpoint}"]
        else:
            paths = [
                f"/apis/apps/v1/namespaces/{ns}/deployments/{t.endpoint}",
                f"/api/v1/namespaces/{ns}/services/{t.endpoint}",
            ]
        if t.record is not None and t.record.namespace:  # the endpoint's own: it goes too
            paths.append(f"/api/v1/namespaces/{ns}")
        for path in paths:
            try:
                await api.request("DELETE", path, query={"propagationPolicy": "Background"})
            except KubeError as exc:
                if exc.status != 404:
                    raise
        log.info("endpoint %s: deleted its objects in %s", t.endpoint, ns)

    def _active_pods(self, endpoint: str) -> list[Key]:
        if self.pods is None:
            return []
        out = []
        for k, pod in self.pods.objects.items():
            meta = pod.get("metadata") or {}
            if (meta.get("labels") or {}).get(ko.ENDPOINT) != endpoint:
                continue
            wid = self._bound.get(k)
            if meta.get("deletionTimestamp") or k in self._stopped or wid in self._ended:
                continue
            out.append(k)
        return out

    def _observe_endpoint(
        self, endpoint: str, pods: list[dict[str, Any]], now: float
    ) -> list[ProvidedWorker]:
        t = self._targets.get(endpoint)
        out: list[ProvidedWorker] = []
        active = 0
        for pod in sorted(pods, key=_created):
            v = ko.read_pod(pod, self.settings.worker_port)
            if v.isvc:
                self._watch_isvcs()  # KServe's pods: their service's conditions matter
            k = (v.namespace, v.name)
            wid = self._bound.get(k)
            if wid is None:
                if v.terminating:
                    wid = v.name
                elif t is not None and t.claims:
                    claim = t.claims.pop(0)  # the oldest claim: its id, its deadline
                    wid, self._since[k] = claim.id, claim.since
                else:
                    wid, self._since[k] = v.name, now
                self._bound[k] = wid
            if wid in self._ended:
                continue
            if v.terminating or k in self._stopped:
                out.append(self._view(wid, endpoint, v.url, "stopping", "pod terminating"))
                continue
            state, detail = v.state, v.detail
            if v.ready:
                self._was_ready.add(k)
            elif state == "starting" and k in self._was_ready:
                state, detail = "running", "not ready (was ready)"  # health polls decide
            deadline = t.ready_timeout_s if t is not None else DEFAULT_READY_TIMEOUT_S
            if state == "starting" and now - self._since.get(k, now) > deadline:
                state = "failed"
                detail = f"not ready after {deadline:g} s ({detail})"
            w = self._view(wid, endpoint, v.url if state == "running" else "", state, detail)
            if state in ("failed", "exited"):
                log.warning("endpoint %s: pod %s %s: %s", endpoint, v.name, state, detail)
                self._ended[wid] = w
                self._remove_pod(k, scale_down=state == "failed")
                continue
            active += 1
            out.append(w)
        if t is not None and not t.removing:
            out += self._observe_claims(t, active, now)
        return out

    def _observe_claims(self, t: _Target, active: int, now: float) -> list[ProvidedWorker]:
        """Replicas not yet backed by a pod: claims (made for a gap the Deployment fills)."""
        need = max(0, t.replicas - active)
        while len(t.claims) < need:
            t.claims.append(_Claim(f"{t.endpoint}-{secrets.token_hex(4)}", now))
        del t.claims[need:]
        out = []
        trouble = self._trouble(t)
        for c in list(t.claims):
            failed = t.error or (
                f"not ready after {t.ready_timeout_s:g} s (Pending: {trouble or 'no pod'})"
                if now - c.since > t.ready_timeout_s
                else ""
            )
            if failed:
                log.warning("endpoint %s: worker %s failed: %s", t.endpoint, c.id, failed)
                t.claims.remove(c)
                t.replicas = max(0, t.replicas - 1)
                self._ended[c.id] = self._view(c.id, t.endpoint, "", "failed", failed)
                self._wake.set()
                continue
            out.append(self._claim_view(t, c, f"Pending: {trouble or 'waiting for a pod'}"))
        return out

    def _trouble(self, t: _Target) -> str:
        if t.trouble:
            return t.trouble
        if self.deployments is not None and not t.isvc:
            dep = self.deployments.objects.get((t.namespace, t.endpoint))
            if dep is not None:
                return ko.deployment_trouble(dep)
        return ""

    def _claim_view(self, t: _Target, c: _Claim, detail: str) -> ProvidedWorker:
        return self._view(c.id, t.endpoint, "", "starting", detail)

    def _view(
        self, wid: str, endpoint: str, url: str, state: WorkerState, detail: str
    ) -> ProvidedWorker:
        return ProvidedWorker(
            id=wid, endpoint=endpoint, url=url, state=state, detail=detail, started_at=time.time()
        )

    def _remove_pod(self, k: Key, *, scale_down: bool) -> None:
        """Delete a pod (and, when asked, lower its endpoint's replicas so it stays gone)."""
        pod = self.pods.objects.get(k) if self.pods is not None else None
        if pod is None or k in self._stopped:
            return
        self._stopped.add(k)
        v = ko.read_pod(pod, self.settings.worker_port)
        t = self._targets.get(v.endpoint)
        if t is None:  # a pod from before this router started: learn its endpoint
            t = self._targets[v.endpoint] = _Target(
                v.endpoint, v.namespace, v.isvc, None, replicas=self._replicas_now(v)
            )
            t.written = t.replicas
        if scale_down:
            t.replicas = max(0, t.replicas - 1)
        t.removals.append(v.name)
        self._wake.set()

    def _replicas_now(self, v: ko.PodView) -> int:
        dep = None
        if self.deployments is not None and not v.isvc:
            dep = self.deployments.objects.get((v.namespace, v.endpoint))
        if dep is not None:
            return int((dep.get("spec") or {}).get("replicas") or 0)
        return len(self._active_pods(v.endpoint))

    def _pod_event(self, kind: str, pod: dict[str, Any]) -> None:
        if kind != "DELETED":
            return
        k = key_of(pod)
        if (gone := self._gone.get(k)) is not None:
            gone.set()
        wid = self._bound.pop(k, None)
        self._since.pop(k, None)
        self._was_ready.discard(k)
        stopped = k in self._stopped
        self._stopped.discard(k)
        if wid is None or stopped or wid in self._ended:
            return
        ep = ((pod.get("metadata") or {}).get("labels") or {}).get(ko.ENDPOINT, "")
        log.warning("endpoint %s: pod %s was deleted", ep, k[1])
        self._ended[wid] = self._view(wid, ep, "", "exited", "pod deleted")


def _created(pod: dict[str, Any]) -> tuple[str, str]:
    meta = pod.get("metadata") or {}
    return (str(meta.get("creationTimestamp") or ""), str(meta.get("name") or ""))


def _object_path(obj: dict[str, Any]) -> str:
    meta = obj["metadata"]
    kind, name, ns = obj["kind"], meta["name"], meta.get("namespace", "")
    if kind == "Namespace":
        return f"/api/v1/namespaces/{name}"
    if kind == "Deployment":
        return f"/apis/apps/v1/namespaces/{ns}/deployments/{name}"
    if kind == "Service":
        return f"/api/v1/namespaces/{ns}/services/{name}"
    if kind == "InferenceService":
        return f"{ISVC_PATH}/namespaces/{ns}/inferenceservices/{name}"
    raise ValueError(f"no API path known for kind {kind}")


async def _api_client(ks: KubernetesSettings) -> Any:
    """A kubernetes_asyncio ApiClient for `api_url`, in-cluster or a kubeconfig."""
    try:
        from kubernetes_asyncio import client, config
    except ImportError as exc:
        raise ProviderError(
            "the kubernetes provider needs kubernetes_asyncio: pip install 'inference-router[k8s]'"
        ) from exc
    cfg = client.Configuration()
    if ks.api_url:
        cfg.host = ks.api_url
    elif ks.in_cluster:
        config.load_incluster_config(client_configuration=cfg)  # type: ignore[no-untyped-call]
    else:
        await config.load_kube_config(
            config_file=ks.kubeconfig or None,
            context=ks.context or None,
            client_configuration=cfg,
        )
    return client.ApiClient(configuration=cfg)
