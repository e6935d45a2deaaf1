"""The synthetic backend's pure parts: token counts, stable text, shared speed, admission."""

from __future__ import annotations

import os
import subprocess
import sys
from contextlib import aclosing
from pathlib import Path
from typing import Any

import pytest

from workers.backends import make_backend
from workers.backends.synthetic import (
    BadRequest,
    SyntheticBackend,
    max_tokens,
    prompt_of,
    tokens_for,
)
from workers.load import Load, admission_delay
from workers.settings import WorkerSettings

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    ("payload", "n"),
    [
        ({}, 16),
        (None, 16),
        ({"max_new_tokens": 5}, 5),
        ({"parameters": {"max_new_tokens": 7}}, 7),
        ({"max_tokens": 9}, 9),
        ({"max_completion_tokens": 4}, 4),
        ({"max_tokens": 3.0}, 3),
        ({"max_tokens": 0}, 1),
        ({"max_tokens": -5}, 1),
        ({"max_tokens": 10**9}, 4096),
        ({"max_tokens": True}, 16),
        ({"max_tokens": "12"}, 16),
        ({"max_tokens": 2.5}, 16),
        ({"max_new_tokens": 2, "max_tokens": 9}, 2),
    ],
)
def test_max_tokens(payload: Any, n: int) -> None:
    assert max_tokens(payload) == n


def test_prompt_of_each_route() -> None:
    assert prompt_of("/generate", {"inputs": "a"}) == "a"
    assert prompt_of("/v1/completions", {"prompt": ["a", "b"]}) == "a\nb"
    chat = {
        "messages": [
            {"role": "system", "content": "s"},
            {"role": "user", "content": [{"type": "text", "text": "u"}]},
        ]
    }
    assert prompt_of("/v1/chat/completions", chat) == "s\nu"
    for path, payload in (
        ("/generate", {"prompt": "a"}),
        ("/generate_stream", []),
        ("/v1/completions", {"prompt": 3}),
        ("/v1/chat/completions", {"messages": []}),
        ("/v1/chat/completions", {"messages": ["x"]}),
    ):
        with pytest.raises(BadRequest):
            prompt_of(path, payload)


def test_text_is_stable_across_processes() -> None:
    here = tokens_for("What is deep learning?", 12)
    assert tokens_for("What is deep learning?", 12) == here
    assert tokens_for("What is deep learning!", 12) != here
    code = (
        "from workers.backends.synthetic import tokens_for; "
        "print(tokens_for('What is deep learning?', 12))"
    )
    for seed in ("1", "2"):
        out = subprocess.run(
            [sys.executable, "-c", code],
            cwd=ROOT,
            check=True,
            capture_output=True,
            text=True,
            env={**os.environ, "PYTHONHASHSEED": seed},
        ).stdout
        assert out.strip() == str(here)


async def test_streams_share_capacity() -> None:
    b = SyntheticBackend(capacity=100.0, tokens_per_s=80.0, ttft_ms=0.0)
    assert b.rate() == 80.0 and b.perf() == 100.0
    gens = [b.generate("p", 3) for _ in range(4)]
    for g in gens:
        await anext(g)
    assert b.active == 4 and b.rate() == 25.0
    for g in gens:
        async with aclosing(g):
            pass
    assert b.active == 0 and b.rate() == 80.0


def test_make_backend_capacity_defaults() -> None:
    def capacity(**kw: Any) -> float:
        return make_backend(WorkerSettings(verify=False, **kw)).perf()

    assert capacity() == 800.0  # 4 streams at the default 200 tokens/s
    assert capacity(perf=300.0) == 300.0
    assert capacity(perf=300.0, capacity=50.0) == 50.0


def test_admission_rule() -> None:
    assert admission_delay(0.0, 0, 10**6, 10.0, 1.0, None) is None  # idle takes anything
    assert admission_delay(5.0, 1, 5.0, 10.0, 1.0, None) is None  # exactly 1 s: fits
    assert admission_delay(5.0, 1, 6.0, 10.0, 1.0, None) == 1
    assert admission_delay(50.0, 3, 10.0, 10.0, 1.0, None) == 5
    assert admission_delay(5.0, 1, 6.0, 1000.0, 30.0, 10.0) == 1  # over max_load
    assert admission_delay(5.0, 1, 5.0, 1000.0, 30.0, 10.0) is None


def test_load_accounting() -> None:
    load = Load()
    load.add(2.5)
    load.add(0.1)
    assert (load.requests, load.cost, load.idle.is_set()) == (2, 2.6, False)
    load.release(2.5)
    load.release(0.1)
    assert (load.requests, load.cost, load.idle.is_set()) == (0, 0.0, True)
