"""Hugging Face Text Generation Inference: its native routes and its OpenAI-style ones.

https://huggingface.github.io/text-generation-inference/ : `/generate` (one JSON answer,
or SSE with `"stream": true`), `/generate_stream` (SSE), `/v1/chat/completions` and
`/v1/completions`; `/health` answers 200 once the model is loaded.
"""

from __future__ import annotations

from typing import Any

from workers.backends.http import HttpBackend
from workers.backends.workload import tgi_workload


class TgiBackend(HttpBackend):
    name = "tgi"
    health_path = "/health"
    routes = ("/generate", "/generate_stream", "/v1/chat/completions", "/v1/completions")

    def workload(self, path: str, payload: Any) -> float:
        return tgi_workload(path, payload)
