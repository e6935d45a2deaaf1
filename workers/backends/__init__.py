"""Model backends the worker can front; `make_backend` builds the one the settings name.

`base.Backend` is the interface; `synthetic` is an in-process stand-in for a model
server (deterministic text at a controlled speed) used by the demo, tests and benchmarks.
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

        capacity = (settings.capacity or settings.perf
                    or settings.tokens_per_s * _DEFAULT_STREAMS_AT_FULL_SPEED)
        return SyntheticBackend(capacity=capacity, tokens_per_s=settings.tokens_per_s,
                                ttft_ms=settings.ttft_ms)
    raise ValueError(f"unknown backend {settings.backend!r}")
