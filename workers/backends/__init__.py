"""Model backends the worker can front. `make_backend` builds one from CLI settings."""

from __future__ import annotations

from workers.backends.base import Backend

__all__ = ["BACKENDS", "Backend"]

BACKENDS = ("synthetic",)
