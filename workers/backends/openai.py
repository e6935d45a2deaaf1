"""OpenAI-compatible model servers: vLLM, SGLang, llama.cpp's server and the like.

`/v1/completions`, `/v1/chat/completions` (SSE with `"stream": true`), `/v1/embeddings`,
and `GET /v1/models`; `/health` answers 200 once the model is loaded (vLLM, SGLang and
llama.cpp all serve it).
"""

from __future__ import annotations

from typing import Any

from workers.backends.http import HttpBackend
from workers.backends.workload import openai_workload


class OpenAIBackend(HttpBackend):
    name = "openai"
    health_path = "/health"
    routes = ("/v1/completions", "/v1/chat/completions", "/v1/embeddings")
    get_routes = ("/v1/models",)

    def workload(self, path: str, payload: Any) -> float:
        return openai_workload(path, payload)
