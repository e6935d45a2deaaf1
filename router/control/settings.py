"""Control-plane settings: the `[control]` table, `[[runtimes]]`, the `[[models]]` catalog.

Read by router/config.py with the same typed reader, so a bad value stops the router at
start with one message naming it (`runtimes[1].command: ...`); the Avesha and Bytez
APIs read their `autoscaling` objects with the same functions, so a bad one is a 422
naming the field the same way.

    [control]
    public_url = "http://127.0.0.1:8080"  # what clients use; "" = the listening address
    unknown_formats = "synthetic"         # a modelSpec no runtime serves: synthetic, refuse

    [control.kubernetes]                  # for default_provider = "kubernetes"
    kubeconfig = ""                       # "" = $KUBECONFIG, ~/.kube/config or in-cluster
    worker_image = "inference-router:latest"
    model_images = {llama-cpp = "ghcr.io/ggml-org/llama.cpp:server"}

    [[runtimes]]                          # how the local provider runs a model format
    format = "llama-cpp"
    backend = "openai"
    command = ["{python}", "-m", "llama_cpp.server", "--model", "{model_path}",
               "--port", "{port}"]
    health_path = "/v1/models"

    [[models]]                            # the Bytez catalog
    name = "openai-community/gpt2"
    task = "text-generation"
    runtime = "synthetic"                 # a runtime's format
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, get_args

from router.control.spec import BACKENDS, DNS_LABEL, Autoscaling, RuntimeSpec

if TYPE_CHECKING:
    from router.config import _Reader

UnknownFormats = Literal["synthetic", "refuse"]
ProviderName = Literal["local", "static", "kubernetes"]
_FORMAT_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_MODEL_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,95}(/[A-Za-z0-9][A-Za-z0-9._-]{0,95})?$")
# The runtime every unknown format falls back to under unknown_formats = "synthetic".
SYNTHETIC = RuntimeSpec()


@dataclass(frozen=True, slots=True)
class CatalogModel:
    """One model of the Bytez catalog: what `/model/list` shows and how it is run."""

    name: str
    task: str = "text-generation"
    runtime: RuntimeSpec = SYNTHETIC
    runtime_format: str = "synthetic"
    required_ram_gb: float | None = None  # shown until a job measures it
    default_cost: float = 100.0
    storage_uri: str = ""  # where its runtime finds the weights ({model_path})


PullPolicy = Literal["Always", "IfNotPresent", "Never"]


@dataclass(frozen=True, slots=True)
class KubernetesSettings:
    """`[control.kubernetes]`: where the API server is and what the provider makes there.

    `api_url` set: that URL, no credentials (the test fake, `kubectl proxy`); else
    `in_cluster`, else `kubeconfig` ("" = $KUBECONFIG or ~/.kube/config) and `context`.
    """

    api_url: str = ""
    kubeconfig: str = ""
    context: str = ""
    in_cluster: bool = False
    field_manager: str = "inference-router"  # every server-side apply, and scale writes
    namespace: str = "default"  # for endpoints that have none (config endpoints)
    worker_image: str = "inference-router:latest"  # has the `inference-worker` command
    model_images: tuple[tuple[str, str], ...] = ()  # model format -> model server image
    image_pull_policy: PullPolicy = "IfNotPresent"
    worker_port: int = 8000
    model_port: int = 8080
    router_url: str = ""  # how workers in the cluster reach the router; "" = public_url
    termination_grace_s: int = 60  # streams get this long to finish when a pod stops
    service_account: str = ""
    watch_timeout_s: float = 300.0  # a watch is renewed (from its resourceVersion) this often
    request_timeout_s: float = 10.0
    backoff_max_s: float = 5.0  # reconnecting to an API server that went away, at most this

    def model_image(self, fmt: str) -> str | None:
        return dict(self.model_images).get(fmt)


@dataclass(frozen=True, slots=True)
class ControlSettings:
    public_url: str = ""
    unknown_formats: UnknownFormats = "refuse"
    default_provider: ProviderName = "local"
    interval_s: float = 0.5  # the lifecycle loop's tick
    lease_s: float = 5.0  # the leader's lease: a dead leader is replaced within this
    drain_timeout_s: float = 30.0  # a deleted endpoint's requests get this long to finish
    max_endpoints: int = 1000  # API-made endpoints, across workspaces
    max_spec_bytes: int = 64 * 1024  # a rawModelSpec larger than this is a 422
    runtimes: tuple[tuple[str, RuntimeSpec], ...] = ()
    # per runtime format, endpoint settings its endpoints get (`[runtimes.endpoint]`)
    runtime_settings: dict[str, dict[str, Any]] = field(default_factory=dict, compare=False)
    models: tuple[CatalogModel, ...] = ()
    kubernetes: KubernetesSettings = KubernetesSettings()
    catalog_by_name: dict[str, CatalogModel] = field(default_factory=dict, compare=False)

    def endpoint_settings(self, fmt: str) -> dict[str, Any]:
        """The endpoint settings table an endpoint of this format starts with."""
        return dict(self.runtime_settings.get(fmt, {}))

    def runtime(self, fmt: str) -> RuntimeSpec | None:
        """The runtime for a model format; the synthetic one under "synthetic"; else None."""
        for name, spec in self.runtimes:
            if name == fmt:
                return spec
        return SYNTHETIC if self.unknown_formats == "synthetic" else None


def read_runtime(r: _Reader) -> RuntimeSpec:
    from router.config import ConfigError

    backend = r.choice("backend", "synthetic", BACKENDS)
    command = r.str_list("command", ())
    if backend != "synthetic" and not command:
        raise ConfigError(
            f"{r.name('command')}: the {backend} backend needs a model server command"
        )
    if backend == "synthetic" and command:
        raise ConfigError(f"{r.name('backend')}: a command needs the backend that speaks to it")
    health_path = r.str_("health_path", "/health")
    if not health_path.startswith("/"):
        raise ConfigError(f"{r.name('health_path')}: must start with '/'")
    env = r.data.get("env") or {}
    r.seen.add("env")
    if not isinstance(env, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in env.items()
    ):
        raise ConfigError(f"{r.name('env')}: must be a table of strings")
    return RuntimeSpec(
        backend=backend,  # type: ignore[arg-type]
        command=command,
        health_path=health_path,
        ready_timeout_s=r.num("ready_timeout_s", 120.0, positive=True),
        perf=r.opt_num("perf"),
        max_load=r.opt_num("max_load"),
        ttft_ms=r.num("ttft_ms", 50.0),
        tokens_per_s=r.num("tokens_per_s", 100.0, positive=True),
        kv_cache_tokens=None
        if r.data.get("kv_cache_tokens") is None
        else r.int_("kv_cache_tokens", 0, max_=10**9),
        prefill_tokens_per_s=None
        if r.data.get("prefill_tokens_per_s") is None
        else r.num("prefill_tokens_per_s", 0.0),
        block_chars=None
        if r.data.get("block_chars") is None
        else r.int_("block_chars", 64, min_=1, max_=1 << 20),
        env=tuple(sorted(env.items())),
    )


def read_autoscaling(r: _Reader, base: Autoscaling | None = None) -> Autoscaling:
    """`Autoscaling` from a table (config or an API body), on top of `base`; the same
    checks either way, each naming its field."""
    from router.config import ConfigError

    base = base or Autoscaling()
    timeout = r.data.get("inactivity_timeout_s", base.inactivity_timeout_s)
    r.seen.add("inactivity_timeout_s")
    if timeout is not None and (
        isinstance(timeout, bool)
        or not isinstance(timeout, int | float)
        or not math.isfinite(timeout)
        or timeout < 0
    ):
        raise ConfigError(f"{r.name('inactivity_timeout_s')}: must be a number >= 0 (or absent)")
    auto = Autoscaling(
        min_workers=r.int_("min_workers", base.min_workers, min_=0, max_=1024),
        max_workers=r.int_("max_workers", base.max_workers, min_=0, max_=1024),
        target_util=r.num("target_util", base.target_util, positive=True),
        cold_mult=r.num("cold_mult", base.cold_mult),
        min_load=r.num("min_load", base.min_load),
        inactivity_timeout_s=None if timeout is None else float(timeout),
        max_queue_time_s=r.num("max_queue_time_s", base.max_queue_time_s),
        max_held_requests=r.int_("max_held_requests", base.max_held_requests, max_=100_000),
    )
    if auto.min_workers > auto.max_workers:
        raise ConfigError(f"{r.name('min_workers')}: must be at most max_workers")
    if auto.target_util > 1:
        raise ConfigError(f"{r.name('target_util')}: must be in (0, 1]")
    return auto


def read_kubernetes(k: _Reader) -> KubernetesSettings:
    from router.config import ConfigError

    api_url = k.str_("api_url", "")
    if api_url and not re.match(r"^https?://[^/\s]+", api_url):
        raise ConfigError(f"{k.name('api_url')}: must be an http(s) URL")
    router_url = k.str_("router_url", "")
    if router_url and not re.match(r"^https?://[^/\s]+", router_url):
        raise ConfigError(f"{k.name('router_url')}: must be an http(s) URL")
    images = k.data.get("model_images") or {}
    k.seen.add("model_images")
    if not isinstance(images, dict) or not all(
        isinstance(f, str) and isinstance(i, str) and i for f, i in images.items()
    ):
        raise ConfigError(f"{k.name('model_images')}: must be a table of format = image")
    namespace = k.str_("namespace", "default")
    if not DNS_LABEL.match(namespace):
        raise ConfigError(f"{k.name('namespace')}: must be a DNS label (a-z, 0-9, '-')")
    manager = k.str_("field_manager", "inference-router")
    if not manager or len(manager) > 128:
        raise ConfigError(f"{k.name('field_manager')}: must be 1-128 characters")
    out = KubernetesSettings(
        api_url=api_url.rstrip("/"),
        kubeconfig=k.str_("kubeconfig", ""),
        context=k.str_("context", ""),
        in_cluster=k.bool_("in_cluster", False),
        field_manager=manager,
        namespace=namespace,
        worker_image=k.str_("worker_image", "inference-router:latest"),
        model_images=tuple(sorted(images.items())),
        image_pull_policy=k.choice(  # type: ignore[arg-type]
            "image_pull_policy", "IfNotPresent", get_args(PullPolicy)
        ),
        worker_port=k.int_("worker_port", 8000, min_=1, max_=65535),
        model_port=k.int_("model_port", 8080, min_=1, max_=65535),
        router_url=router_url.rstrip("/"),
        termination_grace_s=k.int_("termination_grace_s", 60, min_=1, max_=86400),
        service_account=k.str_("service_account", ""),
        watch_timeout_s=k.num("watch_timeout_s", 300.0, positive=True),
        request_timeout_s=k.num("request_timeout_s", 10.0, positive=True),
        backoff_max_s=k.num("backoff_max_s", 5.0, positive=True),
    )
    if out.worker_port == out.model_port:
        raise ConfigError(f"{k.name('model_port')}: must differ from worker_port")
    k.done()
    return out


def read_control(top: _Reader) -> ControlSettings:
    from router.config import ConfigError

    c = top.table("control")
    from router.config import endpoint_from_table

    runtimes: list[tuple[str, RuntimeSpec]] = []
    runtime_settings: dict[str, dict[str, Any]] = {}
    for rt in top.tables("runtimes"):
        fmt = rt.str_("format", "")
        if not _FORMAT_RE.match(fmt):
            raise ConfigError(
                f"{rt.name('format')}: must be 1-64 of letters, digits, '.', '_', '-'"
            )
        if any(fmt == f for f, _ in runtimes):
            raise ConfigError(f"{rt.name('format')}: {fmt!r} is listed twice")
        runtimes.append((fmt, read_runtime(rt)))
        table = rt.data.get("endpoint")
        rt.seen.add("endpoint")
        if table is not None:
            if not isinstance(table, dict) or "name" in table or "workspace" in table:
                raise ConfigError(f"{rt.name('endpoint')}: must be a table of endpoint settings")
            endpoint_from_table({**table, "name": "check"}, rt.name("endpoint"))  # checked now
            runtime_settings[fmt] = table
        rt.done()
    by_format = dict(runtimes)
    models: list[CatalogModel] = []
    for m in top.tables("models"):
        name = m.str_("name", "")
        if not _MODEL_RE.match(name):
            raise ConfigError(
                f"{m.name('name')}: must look like 'org/model' (letters, digits, . _ -)"
            )
        if any(name == x.name for x in models):
            raise ConfigError(f"{m.name('name')}: {name!r} is listed twice")
        fmt = m.str_("runtime", "synthetic")
        runtime = by_format.get(fmt, SYNTHETIC if fmt == "synthetic" else None)
        if runtime is None:
            raise ConfigError(f"{m.name('runtime')}: no [[runtimes]] entry has format {fmt!r}")
        models.append(
            CatalogModel(
                name=name,
                task=m.str_("task", "text-generation"),
                runtime=runtime,
                runtime_format=fmt,
                required_ram_gb=m.opt_num("required_ram_gb"),
                default_cost=m.num("default_cost", 100.0, positive=True),
                storage_uri=m.str_("storage_uri", ""),
            )
        )
        m.done()
    public_url = c.str_("public_url", "")
    if public_url and not re.match(r"^https?://[^/\s]+", public_url):
        raise ConfigError(f"{c.name('public_url')}: must be an http(s) URL")
    out = ControlSettings(
        public_url=public_url.rstrip("/"),
        unknown_formats=c.choice("unknown_formats", "refuse", get_args(UnknownFormats)),  # type: ignore[arg-type]
        default_provider=c.choice("default_provider", "local", get_args(ProviderName)),  # type: ignore[arg-type]
        interval_s=c.num("interval_s", 0.5, positive=True),
        lease_s=c.num("lease_s", 5.0, positive=True),
        drain_timeout_s=c.num("drain_timeout_s", 30.0),
        max_endpoints=c.int_("max_endpoints", 1000, min_=0),
        max_spec_bytes=c.int_("max_spec_bytes", 64 * 1024, min_=1024),
        runtimes=tuple(runtimes),
        runtime_settings=runtime_settings,
        models=tuple(models),
        kubernetes=read_kubernetes(c.table("kubernetes")),
        catalog_by_name={x.name: x for x in models},
    )
    c.done()
    return out


def model_endpoint_name(model: str) -> str:
    """The endpoint a Bytez model runs as: its name with '/' as '--' (a path segment)."""
    return model.replace("/", "--")


__all__ = [
    "CatalogModel",
    "ControlSettings",
    "KubernetesSettings",
    "model_endpoint_name",
    "read_autoscaling",
    "read_control",
    "read_kubernetes",
    "read_runtime",
]
