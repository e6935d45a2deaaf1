"""Pure workload estimates of the HTTP backends (used when serving without tickets)."""

from __future__ import annotations

from typing import Any

import pytest

from workers.backends.workload import image_workload, openai_workload, tgi_workload


@pytest.mark.parametrize(
    ("path", "payload", "cost"),
    [
        ("/generate", {"inputs": "abcdefgh", "parameters": {"max_new_tokens": 10}}, 12.0),
        ("/generate_stream", {"inputs": "abcd"}, 21.0),  # TGI's default: 20 new tokens
        ("/generate", {"inputs": "abcd", "parameters": {"max_new_tokens": True}}, 21.0),
        ("/generate", None, 20.0),
        (
            "/v1/chat/completions",
            {"messages": [{"role": "user", "content": "abcd"}], "max_tokens": 4},
            5.0,
        ),
    ],
)
def test_tgi_workload(path: str, payload: Any, cost: float) -> None:
    assert tgi_workload(path, payload) == cost


@pytest.mark.parametrize(
    ("path", "payload", "cost"),
    [
        ("/v1/completions", {"prompt": "abcdefgh", "max_tokens": 10}, 12.0),
        ("/v1/completions", {"prompt": ["abcd", "efgh"]}, 18.0),  # default 16 tokens
        (
            "/v1/chat/completions",
            {
                "messages": [{"role": "user", "content": [{"type": "text", "text": "abcd"}]}],
                "max_completion_tokens": 3,
            },
            4.0,
        ),
        ("/v1/chat/completions", {"messages": 42, "max_tokens": -1}, 16.0),
        ("/v1/embeddings", {"input": "abcdefgh" * 4}, 8.0),
        ("/v1/embeddings", {"input": [[1, 2, 3, 4, 5]]}, 5.0),  # token ids count as tokens
        ("/v1/embeddings", {"input": ""}, 1.0),
        ("/v1/models", None, 0.0),
        ("/v1/completions", "not an object", 16.0),
    ],
)
def test_openai_workload(path: str, payload: Any, cost: float) -> None:
    assert openai_workload(path, payload) == cost


@pytest.mark.parametrize(
    ("payload", "cost"),
    [
        ({"prompt": "x", "width": 512, "height": 512, "num_inference_steps": 30}, 512 * 512 * 30),
        ({"width": 64, "height": 32}, 64 * 32),  # steps default to 1, as in the router
        ({"width": 64}, 1.0),
        ({"text": "summarize me"}, 1.0),
        ([1, 2], 1.0),
        ({"width": "64", "height": 64}, 1.0),
        ({"width": float("nan"), "height": 64}, 1.0),
    ],
)
def test_image_workload(payload: Any, cost: float) -> None:
    assert image_workload(payload) == cost
