#!/usr/bin/env bash
# TGI's launcher on 127.0.0.1:$MODEL_PORT, the worker in front of it.
# Arguments go to text-generation-launcher (e.g. --max-total-tokens 8192 --quantize awq).
set -euo pipefail
: "${MODEL:?set MODEL to the model to serve, e.g. Qwen/Qwen2.5-0.5B-Instruct}"
exec /usr/local/lib/inference-worker/supervise.sh tgi \
    text-generation-launcher --model-id "$MODEL" --hostname 127.0.0.1 \
    --port "${MODEL_PORT:-8000}" "$@"
