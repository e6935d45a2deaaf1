"""Typed router settings: a TOML file, then `ROUTER_*` environment overrides, validated once.

Every error names the setting it is about, e.g. `endpoints[0].policy: must be one of ...`.
"""

from __future__ import annotations

import hashlib
import ipaddress
import math
import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args

from router.control.settings import (
    ControlSettings,
    read_autoscaling,
    read_control,
    read_runtime,
)
from router.control.spec import Autoscaling, RuntimeSpec
from router.signing import MAX_SAFE_INTEGER, is_plain_string

Policy = Literal["least_work", "round_robin", "random", "least_requests", "p2c", "cache_aware"]
PerfMode = Literal["config", "measured"]
StoreBackend = Literal["memory", "redis"]
Algorithm = Literal["rsa", "ed25519"]
SpawnBackend = Literal["synthetic"]

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
# First path segments that proxy mode cannot use as endpoint names (docs/protocol.md, "Proxy mode").
RESERVED_NAMES = frozenset(
    {
        "route",
        "pubkey",
        "livez",
        "readyz",
        "metrics",
        "api",
        "admin",
        "model",
        "v1",
        ".well-known",
        "openapi.json",
    }
)


# Where the memory store keeps control-plane records, relative to the config file.
DEFAULT_STATE_FILE = ".router-data/state.json"


class ConfigError(ValueError):
    """A setting is missing or invalid; the message names it."""


@dataclass(frozen=True, slots=True)
class ServerSettings:
    host: str = "127.0.0.1"
    port: int = 8080
    shutdown_grace_s: float = 30.0
    processes: int = 1  # router processes sharing the port (SO_REUSEPORT); > 1 needs Redis
    # A request's headers and body must arrive within this (slow clients hold a
    # connection and a coroutine each); also how long an idle connection is kept.
    request_read_timeout_s: float = 15.0
    # Proxied requests on the hand-written httptools path (router/proxy/server.py); false:
    # all through aiohttp's server (router/proxy/web.py). Both run the same proxy core.
    fast_proxy: bool = True


@dataclass(frozen=True, slots=True)
class StoreSettings:
    backend: StoreBackend = "memory"
    redis_url: str = field(default="redis://127.0.0.1:6379/0", repr=False)
    key_prefix: str = "ir:"
    timeout_s: float = 0.5  # per Redis command; a stalled Redis must fail fast, not pile up
    snapshot_interval_s: float = 0.1  # how often the local read snapshot is refreshed
    # The memory store keeps control-plane documents here across restarts (relative to
    # the config file's directory); None: in memory only. The Redis store ignores it.
    state_file: Path | None = None


@dataclass(frozen=True, slots=True)
class RegistrationSettings:
    """What `/api/v1/workers` accepts from workers registering themselves."""

    # Worker addresses must be in one of these networks (CIDRs); empty: any address but
    # link-local, cloud metadata and unspecified ones (always refused).
    allowed_networks: tuple[str, ...] = ()
    # Registered workers per endpoint at most: a leaked worker token cannot fill the store.
    max_per_endpoint: int = 1000


@dataclass(frozen=True, slots=True)
class SigningSettings:
    algorithm: Algorithm = "rsa"
    key_files: tuple[Path, ...] = ()
    ticket_ttl_s: float = 60.0
    # Threads that sign tickets off the event loop; None = auto (see `sign_threads()`).
    threads: int | None = None

    def sign_threads(self, algorithm: Algorithm, cpus: int) -> int:
        """Threads to sign `algorithm` keys on `cpus` usable CPUs; 0: sign on the event loop.

        RSA signing takes hundreds of microseconds and releases the GIL, so with a spare
        core a small pool lets the loop parse the next requests meanwhile. Ed25519 signs
        in tens of microseconds, less than a hop to a thread costs, and on one CPU a
        pool only adds that hop.
        """
        if self.threads is not None:
            return self.threads
        return min(cpus, 4) if algorithm == "rsa" and cpus > 1 else 0


@dataclass(frozen=True, slots=True)
class ApiKeySettings:
    key_sha256: str = field(repr=False)
    name: str = ""
    endpoints: tuple[str, ...] = ("*",)
    # tenants: the key uses (and, through the control-plane APIs, manages) the endpoints
    # of these workspaces; others are 404 to it, as if they did not exist
    workspaces: tuple[str, ...] = ()
    admin: bool = False
    register_workers: bool = False  # a worker token: may register/drain/remove workers
    # Limits, shared by every replica through the store; None = unlimited. The rate
    # counts /route and proxied requests; max_concurrent counts proxied requests in
    # flight (in ticket mode the router never learns when a client's call ends).
    rate_per_s: float | None = None
    burst: float | None = None  # requests allowed at once above the rate; default max(1, rate)
    max_concurrent: int | None = None

    @property
    def limited(self) -> bool:
        return self.rate_per_s is not None or self.max_concurrent is not None

    @property
    def bucket(self) -> float:
        return self.burst if self.burst is not None else max(1.0, self.rate_per_s or 1.0)

    def allows(self, endpoint: str, workspace: str = "default") -> bool:
        return (
            self.admin
            or "*" in self.endpoints
            or endpoint in self.endpoints
            or workspace in self.workspaces
        )

    def manages(self, workspace: str) -> bool:
        """May create and delete endpoints in `workspace` (control-plane APIs)."""
        return self.admin or workspace in self.workspaces


@dataclass(frozen=True, slots=True)
class HealthSettings:
    interval_s: float = 1.0
    timeout_s: float = 1.0
    unhealthy_after: int = 2
    healthy_after: int = 2
    remove_after_s: float = 300.0


@dataclass(frozen=True, slots=True)
class StaticWorker:
    url: str
    perf: float = 100.0
    max_load: float | None = None


@dataclass(frozen=True, slots=True)
class SpawnSettings:
    backend: SpawnBackend = "synthetic"
    count: int = 1
    perf: float = 200.0
    ttft_ms: float = 50.0
    tokens_per_s: float = 100.0
    max_load: float | None = None


@dataclass(frozen=True, slots=True)
class CacheAwareSettings:
    """`[endpoints.cache_aware]`: how the cache_aware policy trades cache hits for balance.

    The worker holding the longest prefix of the prompt is chosen unless its work score
    ((load + cost) / perf, seconds of queued work) exceeds the least loaded worker's by
    more than `balance_abs_s` *and* is more than `balance_rel` times it; then least_work
    decides. The index models each worker's KV cache (docs/prefix.md): blocks are
    forgotten `ttl_s` after they were last routed, and beyond `max_blocks_per_worker`
    (128 characters each: 4096 blocks ~ 128k tokens) least recent first.
    """

    # Loose by default: a conversation that moves loses its cache (bench/RESULTS.md,
    # "Prefix-cache-aware routing": 1 s and 1.5x lost 3 points of hit rate for no TTFT)
    balance_abs_s: float = 30.0
    balance_rel: float = 4.0
    ttl_s: float = 600.0
    max_blocks_per_worker: int = 4096


@dataclass(frozen=True, slots=True)
class EndpointSettings:
    name: str
    workspace: str = "default"
    default_cost: float = 100.0
    policy: Policy = "least_work"
    cache_aware: CacheAwareSettings = CacheAwareSettings()
    # "measured": each worker's perf is an EWMA of the cost per second it is seen to
    # serve (router/speed.py), not its configured or reported figure
    perf_mode: PerfMode = "config"
    health_path: str = "/readyz"
    max_queue_time_s: float = 30.0
    retry_after_s: float = 1.0
    models: tuple[str, ...] = ()  # OpenAI `model` names that select this endpoint
    # The model name the workers' server answers to (vLLM's --served-model-name): set,
    # proxy mode writes it into the `model` of OpenAI request bodies before forwarding.
    served_model_name: str | None = None
    # The most a request may weigh: /route's `cost`, X-Cost or the body's estimate above
    # it is a 400. Bounded so one ticket cannot pin a worker (and sums stay exact).
    max_cost: float = 1e9
    # Proxy paths to the worker's own routes (/metrics, /livez, /readyz, /health,
    # /admin, the health path) answer 404 unless this is on.
    expose_worker_routes: bool = False
    # proxy mode
    retries: int = 2
    timeout_connect_s: float = 5.0
    timeout_ttfb_s: float = 120.0  # until the worker's response headers
    timeout_idle_s: float = 60.0  # between two chunks of a response
    timeout_total_s: float = 900.0
    max_body_bytes: int = 16 * 1024 * 1024
    health: HealthSettings = HealthSettings()
    workers: tuple[StaticWorker, ...] = ()
    spawn: tuple[SpawnSettings, ...] = ()
    # control plane: how many workers (router/control/autoscaler.py), and how the local
    # provider runs one (`[endpoints.local]`; `[[endpoints.spawn]]` is read as one)
    autoscaling: Autoscaling = field(default_factory=Autoscaling)
    local: RuntimeSpec | None = None


@dataclass(frozen=True, slots=True)
class Settings:
    server: ServerSettings = ServerSettings()
    store: StoreSettings = StoreSettings()
    signing: SigningSettings = SigningSettings()
    registration: RegistrationSettings = RegistrationSettings()
    api_keys: tuple[ApiKeySettings, ...] = ()
    endpoints: tuple[EndpointSettings, ...] = ()
    log_level: str = "info"
    control: ControlSettings = field(default_factory=ControlSettings)

    def endpoint(self, name: str) -> EndpointSettings | None:
        for ep in self.endpoints:
            if ep.name == name:
                return ep
        return None

    @classmethod
    def from_toml(cls, path: Path | str | None, env: Mapping[str, str] | None = None) -> Settings:
        """Read `path` (None: defaults only), apply `ROUTER_*` env overrides, validate."""
        data: dict[str, Any] = {}
        if path is not None:
            try:
                with open(path, "rb") as f:
                    data = tomllib.load(f)
            except OSError as exc:
                raise ConfigError(f"config file {path}: {exc.strerror}") from exc
            except tomllib.TOMLDecodeError as exc:
                raise ConfigError(f"config file {path}: invalid TOML: {exc}") from exc
            base = Path(path).resolve().parent
        else:
            base = Path.cwd()
        origins = apply_env(data, os.environ if env is None else env)
        return _build(data, base, origins)


# --- environment overrides ---------------------------------------------------------------

# ROUTER_<SECTION>_<KEY> for the scalar sections; lists take comma-separated values.
_ENV_SECTIONS = ("server", "store", "signing")


def apply_env(data: dict[str, Any], env: Mapping[str, str]) -> dict[str, str]:
    """Apply `ROUTER_SECTION_KEY=value` overrides, `ROUTER_LOG_LEVEL`, and one key each
    from `ROUTER_API_KEY`, `ROUTER_ADMIN_KEY` and `ROUTER_WORKER_TOKEN`.

    Returns where each overridden setting came from (`{"server.port": "ROUTER_SERVER_PORT"}`),
    so an error about it names the variable the operator set, not a file line.
    """
    origins: dict[str, str] = {}
    for name, value in env.items():
        if not name.startswith("ROUTER_"):
            continue
        rest = name[len("ROUTER_") :].lower()
        if rest == "log_level":
            data["log_level"] = value
            origins["log_level"] = name
            continue
        if rest == "api_key":  # one extra key from the environment, allowed everywhere
            data.setdefault("api_keys", []).append({"key": value, "name": "env"})
            continue
        if rest == "admin_key":
            data.setdefault("api_keys", []).append(
                {"key": value, "name": "env-admin", "admin": True}
            )
            continue
        if rest == "worker_token":  # workers register with it (a Secret in deploy/)
            data.setdefault("api_keys", []).append(
                {"key": value, "name": "env-workers", "register_workers": True}
            )
            continue
        section, _, key = rest.partition("_")
        if section in _ENV_SECTIONS and key:
            data.setdefault(section, {})[key] = _env_value(value, key)
            origins[f"{section}.{key}"] = name
    return origins


def _env_value(value: str, key: str) -> Any:
    if key.endswith("files"):
        return [v.strip() for v in value.split(",") if v.strip()]
    return value  # converted and checked by the typed readers below


# --- validation ----------------------------------------------------------------------------


class _Reader:
    """Typed access to one TOML table, with errors that name `where.key`."""

    def __init__(self, data: Any, where: str, origins: Mapping[str, str] | None = None) -> None:
        if not isinstance(data, dict):
            raise ConfigError(f"{where}: must be a table")
        self.data = data
        self.where = where
        self.origins = origins or {}  # settings set from the environment: their variable
        self.seen: set[str] = set()

    def _get(self, key: str) -> Any:
        self.seen.add(key)
        return self.data.get(key)

    def path(self, key: str) -> str:
        return f"{self.where}.{key}" if self.where else key

    def name(self, key: str) -> str:
        """The setting as an error names it: with its environment variable if it came from one."""
        path = self.path(key)
        env = self.origins.get(path)
        return f"{env} ({path})" if env else path

    def str_(self, key: str, default: str) -> str:
        v = self._get(key)
        if v is None:
            return default
        if not isinstance(v, str):
            raise ConfigError(f"{self.name(key)}: must be a string")
        return v

    def num(self, key: str, default: float, *, min_: float = 0.0, positive: bool = False) -> float:
        v = self._get(key)
        if v is None:
            return default
        if isinstance(v, str):
            try:
                v = float(v)
            except ValueError:
                raise ConfigError(f"{self.name(key)}: must be a number, got {v!r}") from None
        if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
            raise ConfigError(f"{self.name(key)}: must be a finite number")
        if v < min_ or (positive and v <= 0):
            raise ConfigError(f"{self.name(key)}: must be {'> 0' if positive else f'>= {min_}'}")
        return float(v)

    def opt_num(self, key: str) -> float | None:
        if self.data.get(key) is None:
            self.seen.add(key)
            return None
        return self.num(key, 0.0, positive=True)

    def int_(self, key: str, default: int, *, min_: int = 0, max_: int | None = None) -> int:
        v = self._get(key)
        if v is None:
            return default
        if isinstance(v, str) and v.strip().lstrip("-").isdigit():
            v = int(v)
        if isinstance(v, bool) or not isinstance(v, int):
            got = f", got {v!r}" if isinstance(v, str) else ""
            raise ConfigError(f"{self.name(key)}: must be an integer{got}")
        if v < min_ or (max_ is not None and v > max_):
            raise ConfigError(f"{self.name(key)}: must be between {min_} and {max_}")
        return v

    def bool_(self, key: str, default: bool) -> bool:
        v = self._get(key)
        if v is None:
            return default
        if isinstance(v, str) and v.lower() in ("1", "true", "yes", "0", "false", "no"):
            return v.lower() in ("1", "true", "yes")
        if not isinstance(v, bool):
            raise ConfigError(f"{self.name(key)}: must be true or false")
        return v

    def choice(self, key: str, default: str, choices: tuple[str, ...]) -> str:
        v = self.str_(key, default)
        if v not in choices:
            raise ConfigError(f"{self.name(key)}: must be one of {', '.join(choices)}; got {v!r}")
        return v

    def str_list(self, key: str, default: tuple[str, ...]) -> tuple[str, ...]:
        v = self._get(key)
        if v is None:
            return default
        if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
            raise ConfigError(f"{self.name(key)}: must be a list of strings")
        return tuple(v)

    def tables(self, key: str) -> list[_Reader]:
        v = self._get(key)
        if v is None:
            return []
        if not isinstance(v, list):
            raise ConfigError(f"{self.name(key)}: must be an array of tables ([[{key}]])")
        return [_Reader(item, f"{self.path(key)}[{i}]", self.origins) for i, item in enumerate(v)]

    def table(self, key: str) -> _Reader:
        return _Reader(self._get(key) or {}, self.path(key), self.origins)

    def done(self) -> None:
        unknown = sorted(set(self.data) - self.seen)
        if unknown:
            raise ConfigError(f"{self.name(unknown[0])}: unknown setting")


def _url(r: _Reader, key: str) -> str:
    url = r.str_(key, "")
    if not re.match(r"^https?://[^/\s]+", url):
        raise ConfigError(f"{r.name(key)}: must be an http(s) URL, got {url!r}")
    if not is_plain_string(url):  # tickets carry it, signed as served (docs/protocol.md)
        raise ConfigError(
            f'{r.name(key)}: must be printable ASCII without "\\<>& (percent-encode the rest)'
        )
    return url.rstrip("/")


def _cost(r: _Reader, key: str, default: float) -> float:
    v = r.num(key, default)
    if v > MAX_SAFE_INTEGER:  # tickets carry it, and every JSON reader must read it exactly
        raise ConfigError(f"{r.name(key)}: must be at most 2**53 - 1")
    return v


def _build(data: dict[str, Any], base: Path, origins: Mapping[str, str]) -> Settings:
    top = _Reader(data, "", origins)
    s = top.table("server")
    server = ServerSettings(
        host=s.str_("host", "127.0.0.1"),
        port=s.int_("port", 8080, min_=0, max_=65535),
        shutdown_grace_s=s.num("shutdown_grace_s", 30.0),
        processes=s.int_("processes", 1, min_=1, max_=64),
        request_read_timeout_s=s.num("request_read_timeout_s", 15.0, positive=True),
        fast_proxy=s.bool_("fast_proxy", True),
    )
    s.done()

    st = top.table("store")
    # on by default, in a data directory beside the config; "" turns it off
    state_file = st.str_("state_file", DEFAULT_STATE_FILE)
    store = StoreSettings(
        backend=st.choice("backend", "memory", get_args(StoreBackend)),  # type: ignore[arg-type]
        redis_url=st.str_("redis_url", "redis://127.0.0.1:6379/0"),
        key_prefix=st.str_("key_prefix", "ir:"),
        timeout_s=st.num("timeout_s", 0.5, positive=True),
        snapshot_interval_s=st.num("snapshot_interval_s", 0.1, positive=True),
        state_file=(base / state_file) if state_file else None,
    )
    if store.backend == "redis" and not store.redis_url.startswith(
        ("redis://", "rediss://", "unix://")
    ):
        raise ConfigError(f"{st.name('redis_url')}: must start with redis://, rediss:// or unix://")
    st.done()

    sg = top.table("signing")
    signing = SigningSettings(
        algorithm=sg.choice("algorithm", "rsa", get_args(Algorithm)),  # type: ignore[arg-type]
        key_files=tuple((base / p) for p in sg.str_list("key_files", ())),
        ticket_ttl_s=sg.num("ticket_ttl_s", 60.0, positive=True),
        threads=None if sg.data.get("threads") is None else sg.int_("threads", 0, max_=64),
    )
    sg.done()

    rg = top.table("registration")
    networks = rg.str_list("allowed_networks", ())
    for i, net in enumerate(networks):
        try:
            ipaddress.ip_network(net, strict=False)
        except ValueError:
            raise ConfigError(
                f"registration.allowed_networks[{i}]: {net!r} is not a network (CIDR)"
            ) from None
    registration = RegistrationSettings(
        allowed_networks=networks,
        max_per_endpoint=rg.int_("max_per_endpoint", 1000, min_=1),
    )
    rg.done()

    api_keys: list[ApiKeySettings] = []
    for r in top.tables("api_keys"):
        key, digest = r.str_("key", ""), r.str_("key_sha256", "").lower()
        if bool(key) == bool(digest):
            raise ConfigError(f"{r.where}: set exactly one of key or key_sha256")
        if digest and not re.fullmatch(r"[0-9a-f]{64}", digest):
            raise ConfigError(f"{r.name('key_sha256')}: must be 64 hex characters")
        api_keys.append(
            ApiKeySettings(
                key_sha256=digest or hashlib.sha256(key.encode()).hexdigest(),
                name=r.str_("name", f"key{len(api_keys)}"),
                # a workspace key sees its workspaces only, unless it names endpoints too
                endpoints=r.str_list("endpoints", () if r.data.get("workspaces") else ("*",)),
                workspaces=r.str_list("workspaces", ()),
                admin=r.bool_("admin", False),
                register_workers=r.bool_("register_workers", False),
                rate_per_s=r.opt_num("rate_per_s"),
                burst=None if r.data.get("burst") is None else r.num("burst", 1.0, min_=1.0),
                max_concurrent=None
                if r.data.get("max_concurrent") is None
                else r.int_("max_concurrent", 1, min_=1),
            )
        )
        if api_keys[-1].burst is not None and api_keys[-1].rate_per_s is None:
            raise ConfigError(f"{r.name('burst')}: needs rate_per_s")
        r.done()

    endpoints: list[EndpointSettings] = []
    for r in top.tables("endpoints"):
        endpoints.append(_endpoint(r))
    names = [e.name for e in endpoints]
    for n in names:
        if names.count(n) > 1:
            raise ConfigError(f"endpoints: duplicate endpoint name {n!r}")
    level = top.choice("log_level", "info", ("debug", "info", "warning", "error"))
    control = read_control(top)
    top.done()
    settings = Settings(
        server, store, signing, registration, tuple(api_keys), tuple(endpoints), level, control
    )
    check_processes(settings)
    return settings


def check_processes(settings: Settings) -> None:
    """Several processes must share everything a client can tell apart: state, keys."""
    if settings.server.processes == 1:
        return
    n = settings.server.processes
    if settings.store.backend != "redis":
        raise ConfigError(
            f'server.processes: {n} processes need store.backend = "redis" '
            "(with the memory store each would have its own workers and "
            "reqnums); use 1"
        )
    if not settings.signing.key_files:
        raise ConfigError(
            "server.processes: several processes need signing.key_files "
            "(each would make its own ephemeral key)"
        )
    if not settings.api_keys:
        raise ConfigError(
            "server.processes: several processes need [[api_keys]] (each "
            "would make its own admin key)"
        )
    if settings.server.port == 0:
        raise ConfigError("server.port: must be fixed (not 0) with several processes")


def _served_model_name(r: _Reader) -> str | None:
    name = r.str_("served_model_name", "")
    if r.data.get("served_model_name") is None:
        return None
    if not name or name != name.strip():
        raise ConfigError(f"{r.name('served_model_name')}: must be a non-empty model name")
    return name


def endpoint_from_table(table: dict[str, Any], where: str) -> EndpointSettings:
    """An endpoint's settings from a config-shaped table (what the control-plane APIs
    store), validated exactly as `[[endpoints]]` in a config file; ConfigError names the
    field as `where.field`."""
    return _endpoint(_Reader(table, where))


def _endpoint(r: _Reader) -> EndpointSettings:
    name = r.str_("name", "")
    if not _NAME_RE.match(name):
        raise ConfigError(f"{r.name('name')}: must be 1-64 of letters, digits, '.', '_', '-'")
    if name in RESERVED_NAMES:
        raise ConfigError(f"{r.name('name')}: {name!r} is reserved for the router's own paths")
    health_path = r.str_("health_path", "/readyz")
    if not health_path.startswith("/"):
        raise ConfigError(f"{r.name('health_path')}: must start with '/'")
    h = r.table("health")
    health = HealthSettings(
        interval_s=h.num("interval_s", 1.0, positive=True),
        timeout_s=h.num("timeout_s", 1.0, positive=True),
        unhealthy_after=h.int_("unhealthy_after", 2, min_=1),
        healthy_after=h.int_("healthy_after", 2, min_=1),
        remove_after_s=h.num("remove_after_s", 300.0, positive=True),
    )
    h.done()
    workers = []
    for w in r.tables("workers"):
        workers.append(
            StaticWorker(
                url=_url(w, "url"),
                perf=w.num("perf", 100.0, positive=True),
                max_load=w.opt_num("max_load"),
            )
        )
        w.done()
    spawn = []
    for sp in r.tables("spawn"):
        spawn.append(
            SpawnSettings(
                backend=sp.choice("backend", "synthetic", get_args(SpawnBackend)),  # type: ignore[arg-type]
                count=sp.int_("count", 1, min_=1, max_=64),
                perf=sp.num("perf", 200.0, positive=True),
                ttft_ms=sp.num("ttft_ms", 50.0),
                tokens_per_s=sp.num("tokens_per_s", 100.0, positive=True),
                max_load=sp.opt_num("max_load"),
            )
        )
        sp.done()
    local = None
    if r.data.get("local") is not None:
        lr = r.table("local")
        local = read_runtime(lr)
        lr.done()
    ca = r.table("cache_aware")
    cache_aware = CacheAwareSettings(
        balance_abs_s=ca.num("balance_abs_s", 30.0),
        balance_rel=ca.num("balance_rel", 4.0, min_=1.0),
        ttl_s=ca.num("ttl_s", 600.0, positive=True),
        max_blocks_per_worker=ca.int_("max_blocks_per_worker", 4096, min_=1, max_=1_000_000),
    )
    ca.done()
    autoscaling = Autoscaling()
    if spawn:
        if local is not None:
            raise ConfigError(f"{r.name('spawn')}: use either [[spawn]] or [local], not both")
        first = spawn[0]
        local = RuntimeSpec(
            perf=first.perf,
            max_load=first.max_load,
            ttft_ms=first.ttft_ms,
            tokens_per_s=first.tokens_per_s,
        )
        count = sum(sp.count for sp in spawn)
        autoscaling = Autoscaling(min_workers=count, max_workers=count)
    if r.data.get("autoscaling") is not None:
        a = r.table("autoscaling")
        autoscaling = read_autoscaling(a, autoscaling)
        a.done()
    workspace = r.str_("workspace", "default")
    if not re.fullmatch(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?", workspace):
        raise ConfigError(f"{r.name('workspace')}: must be a DNS label (a-z, 0-9, '-')")
    ep = EndpointSettings(
        name=name,
        workspace=workspace,
        default_cost=_cost(r, "default_cost", 100.0),
        policy=r.choice("policy", "least_work", get_args(Policy)),  # type: ignore[arg-type]
        cache_aware=cache_aware,
        perf_mode=r.choice("perf_mode", "config", get_args(PerfMode)),  # type: ignore[arg-type]
        health_path=health_path,
        max_queue_time_s=r.num("max_queue_time_s", 30.0),
        retry_after_s=r.num("retry_after_s", 1.0, positive=True),
        models=r.str_list("models", ()),
        served_model_name=_served_model_name(r),
        max_cost=r.num("max_cost", 1e9, positive=True),
        expose_worker_routes=r.bool_("expose_worker_routes", False),
        retries=r.int_("retries", 2, min_=0, max_=10),
        timeout_connect_s=r.num("timeout_connect_s", 5.0, positive=True),
        timeout_ttfb_s=r.num("timeout_ttfb_s", 120.0, positive=True),
        timeout_idle_s=r.num("timeout_idle_s", 60.0, positive=True),
        timeout_total_s=r.num("timeout_total_s", 900.0, positive=True),
        max_body_bytes=r.int_("max_body_bytes", 16 * 1024 * 1024, min_=1),
        health=health,
        workers=tuple(workers),
        spawn=tuple(spawn),
        autoscaling=autoscaling,
        local=local,
    )
    r.done()
    return ep
