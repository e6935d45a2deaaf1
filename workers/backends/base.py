"""What the worker needs of a model backend: readiness, a workload estimate, serving.

A backend is either in process (`synthetic`) or a client of a model server (TGI, vLLM
or another OpenAI-compatible server, BentoML) that it proxies to. The worker owns
tickets, admission and load accounting; a backend only answers model requests.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

from aiohttp import web

from router.cost import payload_cost


class BackendFailed(Exception):
    """The model server failed after the response started: the worker cuts the connection."""


class Backend(ABC):
    """A model server behind the worker (or, for `synthetic`, a stand-in in process)."""

    name: str = "backend"
    health_path: str = "/health"  # the model server's own health path
    routes: tuple[str, ...] = ()  # inference paths the worker serves (POST)
    get_routes: tuple[str, ...] = ()  # read-only paths served on GET, without a body

    def serves(self, path: str) -> bool:
        """True if `path` is a route of this backend (on POST, or GET for `get_routes`)."""
        return path in self.routes or path in self.get_routes

    def route_label(self, path: str) -> str:
        """The metrics label for `path`: a known route, else "other" (labels stay bounded)."""
        return path if path in self.routes or path in self.get_routes else "other"

    async def start(self) -> None:  # noqa: B027 (optional hook)
        """Open clients, start the model (called once at worker start)."""

    async def close(self) -> None:  # noqa: B027 (optional hook)
        """Release what start() opened."""

    @abstractmethod
    async def ready(self) -> bool:
        """True when the model can serve requests."""

    @abstractmethod
    def workload(self, path: str, payload: Any) -> float:
        """Estimated cost of a request in the endpoint's units (tokens, pixels, ...)."""

    def payload_cost(self, path: str, payload: Any) -> float | None:
        """The least a ticket for this request should cost, before the tolerance.

        The router's own estimate of the body (router/cost.py), so both sides agree on
        units; None (no floor) when the payload says nothing about its size.
        """
        return payload_cost(payload)

    @abstractmethod
    def perf(self) -> float:
        """Cost units per second this backend can process."""

    def prefix_cache_tokens(self) -> tuple[int, int] | None:
        """Prompt tokens served from and missing in a prefix KV cache so far (totals), or
        None if the backend knows of no such cache."""
        return None

    @abstractmethod
    async def serve(self, request: web.Request, path: str, payload: Any) -> web.StreamResponse:
        """Answer one inference request; `payload` holds no ticket fields.

        Stream with `web.StreamResponse`, writing each chunk as it is produced. A client
        that hangs up shows as `ConnectionResetError` on write or as cancellation: let
        cancellation propagate; errors before any byte is sent may be JSON responses
        `{"error": {"code", "message"}}`; after it, raise `BackendFailed`.
        """
