"""Model backends the worker can front; `make_backend` builds the one the settings name.

`base.Backend` is the interface; `synthetic` is an in-process stand-in for a model
server (deterministic text at a controlled speed, and PNG images) used by the demo,
tests and benchmarks. `http.HttpBackend` forwards to a real model server and streams its
answer back; `tgi`, `openai` (vLLM, SGLang, llama.cpp) and `bentoml` name its paths,
its health check and, with the pure estimates in `workload`, what a request weighs.
"""

from __future__ import annotations

from workers.backends.base import Backend
from workers.settings import WorkerSettings

__all__ = ["Backend", "make_backend"]

_DEFAULT_STREAMS_AT_FULL_SPEED = 4  # a GPU batches a few streams before each one slows


def make_backend(settings: WorkerSettings) -> Backend:
    """Build the backend `settings.backend` names, from its settings."""
    if settings.backend == "synthetic":
        from workers.backends.synthetic import SyntheticBackend

        capacity = (
            settings.capacity
            or settings.perf
            or settings.tokens_per_s * _DEFAULT_STREAMS_AT_FULL_SPEED
        )
        return SyntheticBackend(
            capacity=capacity,
            tokens_per_s=settings.tokens_per_s,
            ttft_ms=settings.ttft_ms,
            kv_cache_tokens=settings.kv_cache_tokens,
            prefill_tokens_per_s=settings.prefill_tokens_per_s,
            block_chars=settings.block_chars,
        )
    url = settings.backend_url
    if url is None:  # settings validation makes this unreachable
        raise ValueError(f"backend {settings.backend} needs backend_url")
    from workers.backends.http import DEFAULT_PERF_TOKENS_S

    health = settings.backend_health_path

    if settings.backend == "tgi":
        from workers.backends.tgi import TgiBackend

        return TgiBackend(url, settings.perf or DEFAULT_PERF_TOKENS_S, health)
    if settings.backend == "openai":
        from workers.backends.openai import OpenAIBackend

        return OpenAIBackend(url, settings.perf or DEFAULT_PERF_TOKENS_S, health)
    if settings.backend == "bentoml":
        from workers.backends.bentoml import BentoMLBackend

        if settings.perf is None:  # settings validation makes this unreachable
            raise ValueError("backend bentoml needs perf")
        return BentoMLBackend(url, settings.perf, health_path=health)
    raise ValueError(f"unknown backend {settings.backend!r}")
