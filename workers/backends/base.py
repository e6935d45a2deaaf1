"""What the worker needs of a model backend: readiness, a workload estimate, serving."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

from aiohttp import web


class Backend(ABC):
    """A model server behind the worker (or, for `synthetic`, a stand-in in process)."""

    name: str = "backend"
    health_path: str = "/health"  # the model server's own health path
    routes: tuple[str, ...] = ()  # inference paths the worker serves

    async def start(self) -> None:
        """Open clients, start the model (called once at worker start)."""

    async def close(self) -> None:
        """Release what start() opened."""

    @abstractmethod
    async def ready(self) -> bool:
        """True when the model can serve requests."""

    @abstractmethod
    def workload(self, path: str, payload: Any) -> float:
        """Estimated cost of a request in the endpoint's units (tokens, pixels, ...)."""

    @abstractmethod
    def perf(self) -> float:
        """Cost units per second this backend can process."""

    @abstractmethod
    async def serve(self, request: web.Request, path: str, payload: Any) -> web.StreamResponse:
        """Answer one inference request; `payload` holds no ticket fields."""
