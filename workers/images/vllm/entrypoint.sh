#!/usr/bin/env bash
# vLLM's OpenAI-compatible server on 127.0.0.1:$MODEL_PORT, the worker in front of it.
# Arguments go to `vllm serve` (e.g. --max-model-len 8192 --gpu-memory-utilization 0.9).
set -euo pipefail
: "${MODEL:?set MODEL to the model to serve, e.g. Qwen/Qwen2.5-0.5B-Instruct}"
exec /usr/local/lib/inference-worker/supervise.sh openai \
    vllm serve "$MODEL" --host 127.0.0.1 --port "${MODEL_PORT:-8000}" "$@"
