"""Endpoints as data: the control plane's record of one endpoint, and how to run its workers.

An `EndpointRecord` is what the Avesha and Bytez APIs create and what the lifecycle loop
drives; it is stored as JSON in the store (one document per endpoint, with a version for
compare-and-set), so every replica reads the same one. `RuntimeSpec` says how the local
provider starts a worker (the synthetic backend, or a model server command with the
reference worker in front). `Autoscaling` carries Vast's names for the scaling settings.
Everything here is plain data with `to_doc`/`from_doc`: no I/O.
"""

from __future__ import annotations

import math
import re
import secrets
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any, Literal, get_args

State = Literal["Pending", "Loading", "Running", "Failed", "Deleting", "Scaled to zero"]
STATES: tuple[State, ...] = get_args(State)
Kind = Literal["endpoint", "model"]  # made by the Avesha API, or by the Bytez API
Source = Literal["config", "api"]
Backend = Literal["synthetic", "openai", "tgi", "bentoml"]
BACKENDS: tuple[Backend, ...] = get_args(Backend)
GprStatus = Literal["Queued", "Pending", "Provisioned", "Released"]

# DNS-label names (RFC 1123): they become Kubernetes object names and namespaces too.
DNS_LABEL = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")


@dataclass(frozen=True, slots=True)
class Autoscaling:
    """Per-endpoint scaling, with the names and meanings of Vast's autoscaler."""

    min_workers: int = 1
    max_workers: int = 1
    target_util: float = 0.9  # capacity = predicted load / target_util
    cold_mult: float = 2.5
    min_load: float = 0.0  # capacity floor, cost units per second
    inactivity_timeout_s: float | None = None  # None: never scale the last worker away
    max_queue_time_s: float = 30.0  # how long a request may be held for a worker
    max_held_requests: int = 100  # requests held at once while no worker can take them

    def check(self, where: str) -> None:
        """Raise ValueError naming the bad field (`where.field`)."""
        if not 0 <= self.min_workers <= self.max_workers <= 1024:
            raise ValueError(f"{where}.min_workers: must be 0..max_workers (max_workers <= 1024)")
        if not 0 < self.target_util <= 1:
            raise ValueError(f"{where}.target_util: must be in (0, 1]")
        for name in ("cold_mult", "min_load", "max_queue_time_s"):
            v = getattr(self, name)
            if not math.isfinite(v) or v < 0:
                raise ValueError(f"{where}.{name}: must be a finite number >= 0")
        t = self.inactivity_timeout_s
        if t is not None and (not math.isfinite(t) or t < 0):
            raise ValueError(f"{where}.inactivity_timeout_s: must be a finite number >= 0")
        if not 0 <= self.max_held_requests <= 100_000:
            raise ValueError(f"{where}.max_held_requests: must be 0..100000")


@dataclass(frozen=True, slots=True)
class RuntimeSpec:
    """How the local provider starts one worker of an endpoint.

    `command` empty: the reference worker with the synthetic backend. Else the model
    server command line, with `{port}` (its port), `{model_path}` (the endpoint's
    storage URI as a local path) and `{python}` (this interpreter) substituted; the
    reference worker runs in front of it with `backend` pointing at that port.
    """

    backend: Backend = "synthetic"
    command: tuple[str, ...] = ()
    health_path: str = "/health"  # the model server's own readiness path
    ready_timeout_s: float = 120.0  # longer than this to become ready: Failed
    perf: float | None = None  # cost units/s; None: the backend's own figure
    max_load: float | None = None
    ttft_ms: float = 50.0  # synthetic backend
    tokens_per_s: float = 100.0  # synthetic backend
    # synthetic backend's prefix KV cache (workers/backends/kvcache.py); None: its default
    kv_cache_tokens: int | None = None
    prefill_tokens_per_s: float | None = None
    block_chars: int | None = None
    env: tuple[tuple[str, str], ...] = ()

    @property
    def synthetic(self) -> bool:
        return not self.command


@dataclass(slots=True)
class Gpr:
    """A GPU provision record per worker (Avesha's gpuRequests[])."""

    gprName: str  # the wire's own names
    gprId: str
    instanceType: str = ""
    gpuShape: str = ""
    numberOfGPUs: int = 0
    numberOfGPUNodes: int = 0
    memoryPerGPU: str = "0"  # MB, a string on the wire
    status: GprStatus = "Queued"
    worker: str = ""  # the provider's worker id it provisions


@dataclass(slots=True)
class EndpointRecord:
    """One endpoint of the control plane, as stored (see module docstring)."""

    name: str
    workspace: str = "default"
    kind: Kind = "endpoint"
    source: Source = "api"
    cluster_name: str = ""
    namespace: str = ""
    model_name: str = ""  # Avesha: the model format/runtime; Bytez: the model id
    storage_uri: str = ""
    args: tuple[str, ...] = ()
    resources: dict[str, Any] = field(default_factory=dict)
    raw_spec: str | None = None  # a KServe InferenceService, verbatim
    gpu_spec: dict[str, Any] | None = None
    provider: str = "local"
    runtime: RuntimeSpec = RuntimeSpec()
    autoscaling: Autoscaling = Autoscaling()
    # data-plane settings of the endpoint, as a config table (router/config.py reads it)
    settings: dict[str, Any] = field(default_factory=dict)
    state: State = "Pending"
    reason: str = ""
    gprs: list[Gpr] = field(default_factory=list)
    # the provider's conditions of the endpoint (KServe's PredictorReady, IngressReady)
    conditions: dict[str, str] = field(default_factory=dict)
    created: float = 0.0
    modified: float = 0.0
    version: int = 0  # the store's version of this document (not stored inside it)

    def to_doc(self) -> dict[str, Any]:
        doc = asdict(self)
        doc.pop("version")
        doc["runtime"]["command"] = list(self.runtime.command)
        doc["runtime"]["env"] = [list(kv) for kv in self.runtime.env]
        doc["args"] = list(self.args)
        return doc

    @classmethod
    def from_doc(cls, doc: dict[str, Any], version: int = 0) -> EndpointRecord:
        d = {k: v for k, v in doc.items() if k in _RECORD_FIELDS}
        rt = dict(d.get("runtime") or {})
        rt["command"] = tuple(rt.get("command") or ())
        rt["env"] = tuple(tuple(kv) for kv in rt.get("env") or ())
        d["runtime"] = RuntimeSpec(**{k: v for k, v in rt.items() if k in _RUNTIME_FIELDS})
        auto = d.get("autoscaling") or {}
        d["autoscaling"] = Autoscaling(**{k: v for k, v in auto.items() if k in _AUTO_FIELDS})
        d["gprs"] = [Gpr(**g) for g in d.get("gprs") or ()]
        d["args"] = tuple(d.get("args") or ())
        return cls(**d, version=version)

    def with_state(self, state: State, reason: str, now: float) -> EndpointRecord:
        return replace(self, state=state, reason=reason, modified=now)


_RECORD_FIELDS = {f.name for f in fields(EndpointRecord)} - {"version"}
_RUNTIME_FIELDS = {f.name for f in fields(RuntimeSpec)}
_AUTO_FIELDS = {f.name for f in fields(Autoscaling)}


def new_namespace(workspace: str, name: str) -> str:
    """`{workspace}-{name[:12]}-{6 random}`: Avesha's pattern, assigned once and stored."""
    alphabet = "abcdefghijklmnopqrstuvwxyz0123456789"
    suffix = "".join(secrets.choice(alphabet) for _ in range(6))
    return f"{workspace}-{name[:12].rstrip('-')}-{suffix}"[:63].rstrip("-")


def new_gpr(name: str, gpu_spec: dict[str, Any] | None, worker: str) -> Gpr:
    """A GPR for one worker of endpoint `name`, from its gpuSpec (CPU: zero GPUs)."""
    alphabet = "abcdefghijklmnopqrstuvwxyz0123456789"
    suffix = "".join(secrets.choice(alphabet) for _ in range(6))
    spec = gpu_spec or {}
    return Gpr(
        gprName=f"{name}-gpr-{suffix}",
        gprId=secrets.token_hex(8),
        instanceType=str(spec.get("instanceType", "")),
        gpuShape=str(spec.get("gpuShape", "")),
        numberOfGPUs=int(spec.get("numberOfGPUs", 0)),
        numberOfGPUNodes=int(spec.get("numberOfGPUNodes", 0)),
        memoryPerGPU=str(int(spec.get("memoryPerGPU", 0)) * 1024),  # GB in, MB out
        worker=worker,
    )
