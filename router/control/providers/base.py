"""The provider interface: what the lifecycle loop asks of whatever runs workers.

`start(endpoint, n)` asks for `n` more workers of an endpoint, `stop(worker_id)` ends
one, and `observe()` reports every worker the provider runs and the state it is in.
Providers know nothing of tickets, health or balancing: the lifecycle loop turns what
they report into worker records of the fleet (docs/architecture.md, "Control plane").
Implementations: `static` (workers that exist outside the router), `local` (worker
processes on this machine), `kubernetes` (Deployments and pods).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Literal

from router.control.spec import EndpointRecord

# starting: asked for, not yet serving; running: its process or pod is up (ready or not:
# the router's health polls decide that); stopping: asked to stop; exited: stopped by
# itself (crashed); failed: will not come up (e.g. not ready within its timeout)
WorkerState = Literal["starting", "running", "stopping", "exited", "failed"]


@dataclass(frozen=True, slots=True)
class ProvidedWorker:
    id: str  # the provider's own id, stable for the worker's life
    endpoint: str
    url: str  # the reference worker's base URL; "" until known
    state: WorkerState
    detail: str = ""  # why it is in that state (exit code, last log lines, pod reason)
    started_at: float = 0.0
    rss_bytes: int | None = None  # resident memory of its processes, where known


class ProviderError(Exception):
    """The provider could not do what was asked; the message says why."""


class Provider(ABC):
    name: str = "provider"
    # True: the workers live and die with this router process (local processes), so a
    # replica that loses the leader lease stops them and the new leader starts its own.
    # False: they live in a shared system (a cluster) the new leader adopts as they are.
    owned_by_process: bool = True

    @abstractmethod
    async def start(self, endpoint: EndpointRecord, n: int) -> list[ProvidedWorker]:
        """Start `n` more workers of `endpoint`; return them (state `starting`)."""

    @abstractmethod
    async def stop(self, worker_id: str) -> None:
        """Stop one worker (gracefully: it drains what it still serves, within bounds)."""

    @abstractmethod
    async def observe(self) -> list[ProvidedWorker]:
        """Every worker this provider runs or ran and has not forgotten, with its state."""

    async def remove(self, endpoint: EndpointRecord) -> None:  # noqa: B027 (optional hook)
        """The endpoint is gone (its workers stopped): delete what was made for it."""

    def endpoint_status(self, endpoint: str) -> dict[str, str]:
        """Conditions of the endpoint as a whole (type -> "True"/"False"/"Unknown").

        The `kubernetes` provider reports an InferenceService's (`PredictorReady`,
        `IngressReady`, `Ready`); empty where the provider has none to tell.
        """
        return {}

    async def forget(self, worker_id: str) -> None:  # noqa: B027 (optional hook)
        """Drop what the provider still remembers of a stopped or exited worker."""

    async def close(self) -> None:  # noqa: B027 (optional hook)
        """Stop everything this provider started (the router is shutting down)."""
