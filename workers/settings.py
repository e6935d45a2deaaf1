"""The worker's settings: one frozen dataclass, validated once at start."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from workers.verify import DEFAULT_MAX_SEGMENTS

BackendName = Literal["synthetic", "tgi", "openai", "bentoml"]
BACKEND_NAMES: tuple[BackendName, ...] = ("synthetic", "tgi", "openai", "bentoml")
# Backends that forward to a model server at `backend_url`.
HTTP_BACKENDS: frozenset[str] = frozenset({"tgi", "openai", "bentoml"})


class SettingsError(ValueError):
    """A setting is out of range; the message names it."""


@dataclass(frozen=True, slots=True)
class WorkerSettings:
    """Everything `build_app` needs; `public_url` defaults to http://{host}:{port}."""

    backend: BackendName = "synthetic"
    backend_url: str | None = None  # the model server (tgi, openai, bentoml backends)
    backend_health_path: str | None = None  # its readiness path; None: the backend's own
    host: str = "127.0.0.1"
    port: int = 3000
    public_url: str = ""
    endpoint: str = "default"
    router_url: str | None = None
    register_token: str | None = field(default=None, repr=False)
    perf: float | None = None  # cost units/s; None: the backend's own figure
    max_load: float | None = None  # most in-flight cost accepted; None: no limit
    max_queue_time_s: float = 30.0
    # used reqnums kept until their tickets expire: a cap, ~200 bytes a segment of 64
    replay_max_segments: int = DEFAULT_MAX_SEGMENTS
    clock_skew_s: float = 5.0
    # refuse a ticket whose cost < the payload's own cost x (1 - this); 1: never
    cost_tolerance: float = 0.5
    pubkey_file: Path | None = None
    verify: bool = True
    grace_s: float = 30.0
    register_interval_s: float = 15.0
    jwks_refetch_interval_s: float = 5.0  # unknown key_id: refetch at most this often
    jwks_refresh_s: float = 60.0  # refetch the JWKS this often anyway (0: never): revocation
    # synthetic backend
    ttft_ms: float = 50.0
    tokens_per_s: float = 200.0
    capacity: float | None = None  # tokens/s shared by all streams; None: perf, else 200
    kv_cache_tokens: int = 0  # a prefix KV cache of this many tokens; 0: none
    prefill_tokens_per_s: float = 0.0  # uncached prompt tokens prefilled per second; 0: free
    block_chars: int = 64  # the cache's block, in prompt characters

    def __post_init__(self) -> None:
        if not self.public_url:
            object.__setattr__(self, "public_url", f"http://{self.host}:{self.port}")
        object.__setattr__(self, "public_url", self.public_url.rstrip("/"))
        for name in ("router_url", "backend_url"):
            value = getattr(self, name)
            if value is not None:
                object.__setattr__(self, name, value.rstrip("/"))
        self._validate()

    def _validate(self) -> None:
        if self.backend not in BACKEND_NAMES:
            raise SettingsError(f"backend: must be one of {', '.join(BACKEND_NAMES)}")
        self._validate_backend()
        if not 0 <= self.port <= 65535:
            raise SettingsError("port: must be between 0 and 65535")
        for name, url in (("public_url", self.public_url), ("router_url", self.router_url)):
            if url is not None and not _is_http_url(url):
                raise SettingsError(f"{name}: must be an http(s) URL, got {url!r}")
        if not self.endpoint:
            raise SettingsError("endpoint: must not be empty")
        for name in ("perf", "max_load", "capacity"):
            value = getattr(self, name)
            if value is not None and not _positive(value):
                raise SettingsError(f"{name}: must be a finite number > 0")
        for name in ("max_queue_time_s", "tokens_per_s", "register_interval_s"):
            if not _positive(getattr(self, name)):
                raise SettingsError(f"{name}: must be a finite number > 0")
        for name in (
            "clock_skew_s",
            "grace_s",
            "ttft_ms",
            "jwks_refetch_interval_s",
            "jwks_refresh_s",
        ):
            if not _non_negative(getattr(self, name)):
                raise SettingsError(f"{name}: must be a finite number >= 0")
        if not (math.isfinite(self.cost_tolerance) and 0 <= self.cost_tolerance <= 1):
            raise SettingsError("cost_tolerance: must be between 0 and 1")
        if self.kv_cache_tokens < 0 or self.block_chars < 1:
            raise SettingsError("kv_cache_tokens: must be >= 0; block_chars: must be >= 1")
        if not _non_negative(self.prefill_tokens_per_s):
            raise SettingsError("prefill_tokens_per_s: must be a finite number >= 0")
        if self.replay_max_segments < 1:
            raise SettingsError("replay_max_segments: must be >= 1")
        if self.verify and self.router_url is None and self.pubkey_file is None:
            raise SettingsError(
                "verify: needs router_url or pubkey_file to get the router's "
                "keys (or turn verification off)"
            )
        if self.register_token and self.router_url is None:
            raise SettingsError("register_token: needs router_url")

    def _validate_backend(self) -> None:
        if self.backend not in HTTP_BACKENDS:
            if self.backend_health_path is not None:
                raise SettingsError(f"backend_health_path: not for the {self.backend} backend")
            if self.backend_url is not None:
                raise SettingsError(
                    f"backend_url: only for the {', '.join(sorted(HTTP_BACKENDS))} "
                    f"backends, not {self.backend}"
                )
            return
        if self.backend_url is None:
            raise SettingsError(
                f"backend_url: required with backend {self.backend} (the model "
                "server's base URL, e.g. http://127.0.0.1:8000)"
            )
        if not _is_http_url(self.backend_url):
            raise SettingsError(f"backend_url: must be an http(s) URL, got {self.backend_url!r}")
        if self.backend_health_path is not None and not self.backend_health_path.startswith("/"):
            raise SettingsError("backend_health_path: must be a path starting with /")
        # A BentoML service's cost unit is its own (pixels x steps, requests, ...): no
        # default figure would be right, and a wrong one makes admission refuse or flood.
        if self.backend == "bentoml" and self.perf is None:
            raise SettingsError(
                "perf: required with backend bentoml (cost units per second "
                "the service processes, in its own units)"
            )


def _is_http_url(url: str) -> bool:
    parts = urlsplit(url)
    return parts.scheme in ("http", "https") and bool(parts.netloc)


def _positive(v: float) -> bool:
    return math.isfinite(v) and v > 0


def _non_negative(v: float) -> bool:
    return math.isfinite(v) and v >= 0
