"""The synthetic backend's prefix KV cache: hits, eviction, prefill time, flags, metrics."""

from __future__ import annotations

import asyncio
import time
from contextlib import aclosing

from workers.backends import make_backend
from workers.backends.kvcache import PrefixCache
from workers.backends.synthetic import SyntheticBackend
from workers.cli import parser, settings_from_args
from workers.load import Load
from workers.metrics import WorkerMetrics
from workers.verify import ReplayMemory

BLOCK = "b" * 64  # one block at the default block size (16 tokens)


def prompt(*heads: str, n: int = 4) -> str:
    """Blocks: one per head letter, then `n` filler blocks of the head's."""
    return "".join(h * 64 for h in heads) + BLOCK * n


def test_a_repeated_prefix_hits_and_a_new_one_misses() -> None:
    c = PrefixCache(capacity_tokens=10_000)
    p = prompt("x")  # 5 blocks: 80 tokens
    assert c.admit(p) == 80
    assert c.admit(p) == 0
    assert c.admit(p + "tail of the next turn " * 3) == 16  # 66 chars more: 16 tokens
    assert c.admit(prompt("y")) == 80  # a different head: the chain differs from there on
    assert (c.hit_tokens, c.miss_tokens) == (80 + 80, 80 + 16 + 80)


def test_counts_add_up() -> None:
    c = PrefixCache(capacity_tokens=10_000)
    total = 0
    for p in (prompt("a"), prompt("a"), prompt("b"), prompt("a", "c")):
        c.admit(p)
        total += len(p) // 4
    assert c.hit_tokens + c.miss_tokens == total
    assert c.hit_tokens == 80 + 16  # the second "a" whole, then the head of "a" + "c"


def test_lru_capacity_loses_a_prefix_from_its_end() -> None:
    c = PrefixCache(capacity_tokens=16 * 6)  # 6 blocks
    a, b = prompt("a", n=3), prompt("b", n=1)  # 4 and 2 blocks
    c.admit(a)
    c.admit(b)
    assert len(c) == 6
    c.admit(prompt("z", n=0))  # one block more: the least recent, a's deepest, goes
    assert len(c) == 6
    assert c.admit(a) == 16  # three of its four blocks still hit


def test_off_by_default() -> None:
    c = PrefixCache(capacity_tokens=0)
    p = prompt("x")
    assert c.admit(p) == c.admit(p) == 80 and len(c) == 0


async def test_time_to_first_token_grows_with_uncached_prefill() -> None:
    b = SyntheticBackend(ttft_ms=0.0, kv_cache_tokens=100_000, prefill_tokens_per_s=2000.0)
    long = prompt("q", n=24)  # 25 blocks: 400 tokens, 0.2 s to prefill

    async def first_token(p: str) -> float:
        started = time.perf_counter()
        async with aclosing(b.generate(p, 1)) as gen:
            async for _ in gen:
                break
        return time.perf_counter() - started

    cold = await first_token(long)
    warm = await first_token(long)
    assert cold >= 0.19 and warm < 0.05
    # prefills queue: two cold prompts at once take twice as long for the second
    times = await asyncio.gather(first_token(prompt("r", n=24)), first_token(prompt("s", n=24)))
    assert max(times) >= 0.38


async def test_metrics_report_the_hit_rate() -> None:
    b = SyntheticBackend(kv_cache_tokens=10_000)
    m = WorkerMetrics(Load(), ReplayMemory(), b)
    b.cache.admit(prompt("m"))
    b.cache.admit(prompt("m"))
    text = m.render().decode()
    assert "worker_prefix_cache_hit_tokens_total 80.0" in text
    assert "worker_prefix_cache_miss_tokens_total 80.0" in text


def test_flags_reach_the_backend() -> None:
    args = parser().parse_args(
        [
            "--no-verify",
            "--kv-cache-tokens",
            "5000",
            "--prefill-tokens-per-s",
            "1234.5",
            "--block-chars",
            "32",
        ]
    )
    backend = make_backend(settings_from_args(args))
    assert isinstance(backend, SyntheticBackend)
    assert backend.cache.capacity_blocks == 5000 // 8 and backend.cache.block_chars == 32
    assert backend.prefill_tokens_per_s == 1234.5
    default = make_backend(settings_from_args(parser().parse_args(["--no-verify"])))
    assert isinstance(default, SyntheticBackend)
    assert default.cache.capacity_blocks == 0 and default.prefill_tokens_per_s == 0.0
