"""BentoML services: every API is a user-defined POST path, forwarded as is.

The worker takes any path not its own (`/livez`, `/readyz`, `/metrics`) for the service,
so the service's own `/livez`, `/readyz` and `/metrics` are reached only by the worker:
readiness comes from the service's `/readyz`. Answers pass through unchanged, images
(`image/png`, ...) included. Paths are the user's, so metrics label them all "other"
unless `routes` names the known ones.
"""

from __future__ import annotations

from typing import Any

from workers.backends.http import HttpBackend
from workers.backends.workload import image_workload


class BentoMLBackend(HttpBackend):
    name = "bentoml"
    health_path = "/readyz"

    def __init__(
        self,
        base_url: str,
        perf: float,
        routes: tuple[str, ...] = (),
        health_path: str | None = None,
    ) -> None:
        super().__init__(base_url, perf, health_path)
        self.routes = routes  # only for metrics labels: every path is served

    def serves(self, path: str) -> bool:
        return True

    def workload(self, path: str, payload: Any) -> float:
        return image_workload(payload)

    def payload_cost(self, path: str, payload: Any) -> float | None:
        # The service's cost unit is its own: only pixel-steps are known to be in it,
        # a prompt's tokens are not (a text API may well cost 1 a request).
        if isinstance(payload, dict) and "width" in payload and "height" in payload:
            return super().payload_cost(path, payload)
        return None
