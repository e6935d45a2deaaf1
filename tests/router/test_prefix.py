"""The prefix hash function, prompt extraction, /route input checks and the cache_aware
policy: pure functions, no I/O (router/prefix.py, router/balancer.py)."""

from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path
from typing import Any

import pytest

from router.balancer import Candidate, prefer_cached, shortlist
from router.prefix import (
    BLOCK_CHARS,
    MAX_BLOCKS,
    BadPrefix,
    block_hashes,
    prompt_text,
    request_hashes,
    route_hashes,
)

VECTORS = Path(__file__).parents[1] / "vectors" / "prefix.json"


def plain(text: str) -> list[str]:
    """docs/prefix.md written again from the page, with nothing of router/ in it."""
    out, prev = [], b""
    for i in range(0, len(text) - BLOCK_CHARS + 1, BLOCK_CHARS):
        prev = hashlib.blake2b(prev + text[i : i + BLOCK_CHARS].encode(), digest_size=8).digest()
        out.append(prev.hex())
    return out[:MAX_BLOCKS]


def test_vectors_match_the_documented_function() -> None:
    cases = json.loads(VECTORS.read_text())
    assert len(cases) >= 4
    for case in cases:
        text = case["text"] if "text" in case else prompt_text(case["body"])
        assert text is not None
        assert block_hashes(text) == plain(text) == case["hashes"], case["name"]


def test_blocks_chain_so_a_hash_names_its_whole_prefix() -> None:
    a = "x" * BLOCK_CHARS * 3
    b = "y" * BLOCK_CHARS + "x" * BLOCK_CHARS * 2
    ha, hb = block_hashes(a), block_hashes(b)
    assert len(ha) == len(hb) == 3
    assert all(x != y for x, y in zip(ha, hb, strict=True))  # same blocks 2, 3: other hashes
    assert block_hashes(a + "tail") == ha  # a partial last block is not hashed
    assert block_hashes("short") == []
    assert len(block_hashes("z" * BLOCK_CHARS * (MAX_BLOCKS + 5))) == MAX_BLOCKS
    # code points, not bytes: a block of non-ASCII text is BLOCK_CHARS characters
    assert len(block_hashes("é" * BLOCK_CHARS)) == 1


def test_prompt_text_of_each_api() -> None:
    msgs = [{"role": "system", "content": "sys"}, {"role": "user", "content": "hi"}]
    assert prompt_text({"messages": msgs}) == "sys\nhi"
    parts = [{"type": "text", "text": "a"}, {"type": "image_url", "image_url": {}}]
    assert prompt_text({"messages": [{"role": "user", "content": parts}]}) == "a"
    assert prompt_text({"prompt": "p"}) == "p"
    assert prompt_text({"prompt": ["p", "q"]}) == "p\nq"
    assert prompt_text({"inputs": "tgi"}) == "tgi"
    assert prompt_text({"messages": msgs, "prompt": "ignored"}) == "sys\nhi"
    for junk in (None, [], "text", {"messages": [1]}, {"prompt": 3}, {"inputs": ["x"]}, {}):
        assert prompt_text(junk) is None
    assert request_hashes({"inputs": "q" * BLOCK_CHARS}) == block_hashes("q" * BLOCK_CHARS)
    assert request_hashes(None) == []


def test_route_hashes_reads_each_field_in_order() -> None:
    text = "w" * BLOCK_CHARS * 2
    assert route_hashes({"endpoint": "demo"}) is None
    assert route_hashes({"prompt": text}) == block_hashes(text)
    assert route_hashes({"messages": [{"role": "user", "content": text}]}) == block_hashes(text)
    given = block_hashes(text)
    assert route_hashes({"prefix_hashes": given, "prompt": "other"}) == given


@pytest.mark.parametrize(
    "body",
    [
        {"prefix_hashes": "00"},
        {"prefix_hashes": ["0" * 15]},
        {"prefix_hashes": ["0" * 15 + "G"]},
        {"prefix_hashes": ["0" * 15 + "A"]},  # lowercase only: one spelling per hash
        {"prefix_hashes": [1]},
        {"prefix_hashes": ["0" * 16] * (MAX_BLOCKS + 1)},
        {"messages": "hi"},
        {"messages": [{"content": 3}]},
        {"messages": ["hi"]},
        {"messages": [{"content": "x"}] * 5000},
        {"prompt": ["list", "of", "strings"]},
        {"prompt": 7},
    ],
)
def test_route_hashes_refuses_what_is_not_documented(body: dict[str, Any]) -> None:
    with pytest.raises(BadPrefix):
        route_hashes(body)


# --- the policy ---------------------------------------------------------------------------


def fleet(*loads: float, perf: float = 100.0) -> list[Candidate]:
    return [Candidate(f"w{i}", perf, load) for i, load in enumerate(loads)]


def test_the_cached_worker_goes_first_then_least_work() -> None:
    ws = fleet(50.0, 0.0, 10.0)
    ranked, mode = prefer_cached(ws, [ws[0]], 10.0, (1.0, 1.5), random.Random(1))
    assert mode == "ordered" and [w.id for w in ranked] == ["w0", "w1", "w2"]


def test_least_loaded_of_several_holders() -> None:
    ws = fleet(50.0, 0.0, 10.0, 30.0)
    ranked, _ = prefer_cached(ws, [ws[0], ws[3]], 10.0, (1.0, 1.5), random.Random(1))
    assert ranked[0].id == "w3"


def test_out_of_balance_least_work_decides() -> None:
    ws = fleet(500.0, 0.0)  # w0: 5.1 s of work, w1: 0.1 s
    ranked, mode = prefer_cached(ws, [ws[0]], 10.0, (1.0, 1.5), random.Random(1))
    assert mode == "rescore" and ranked[0].id == "w1"
    # both thresholds must be passed: a gap over balance_abs_s alone is not enough
    ranked, mode = prefer_cached(ws, [ws[0]], 10.0, (1.0, 100.0), random.Random(1))
    assert mode == "ordered" and ranked[0].id == "w0"
    ranked, mode = prefer_cached(ws, [ws[0]], 10.0, (10.0, 1.5), random.Random(1))
    assert mode == "ordered" and ranked[0].id == "w0"


def test_perf_counts_in_the_balance() -> None:
    fast, slow = Candidate("fast", 1000.0, 400.0), Candidate("slow", 50.0, 0.0)
    # the cached fast worker has 0.41 s of work, the idle slow one 0.2 s: in balance
    ranked, mode = prefer_cached([fast, slow], [fast], 10.0, (0.5, 1.5), random.Random(1))
    assert mode == "ordered" and ranked[0] is fast


def test_a_holder_that_is_not_ready_or_full_is_passed_over() -> None:
    ws = fleet(0.0, 0.0)
    ws[0].ready = False
    ranked, mode = prefer_cached(ws, [ws[0]], 10.0, (1.0, 1.5), random.Random(1))
    assert mode == "rescore" and [w.id for w in ranked] == ["w1"]
    ws = [Candidate("w0", 100.0, 90.0, max_load=95.0), Candidate("w1", 100.0, 0.0)]
    ranked, mode = prefer_cached(ws, [ws[0]], 10.0, (1.0, 1.5), random.Random(1))
    assert mode == "rescore" and [w.id for w in ranked] == ["w1"]


def test_shortlist_cache_aware_without_a_prefix_is_least_work() -> None:
    ws = fleet(50.0, 0.0, 10.0)
    ranked, mode = shortlist("cache_aware", ws, 10.0, rng=random.Random(1))
    assert mode == "rescore" and [w.id for w in ranked] == ["w1", "w2", "w0"]
    ranked, mode = shortlist("cache_aware", ws, 10.0, rng=random.Random(1), cached=[ws[0]])
    assert mode == "ordered" and ranked[0].id == "w0"
    # a session sticks first: affinity is the client's own word
    ranked, mode = shortlist(
        "cache_aware", ws, 10.0, rng=random.Random(1), session_id="s", cached=[ws[0]]
    )
    assert mode == "ordered" and len(ranked) == 3


def test_large_fleets_sample_and_keep_the_holder() -> None:
    ws = fleet(*([20.0] * 200))
    holder = ws[123]
    ranked, mode = shortlist("cache_aware", ws, 10.0, rng=random.Random(1), cached=[holder])
    assert mode == "ordered" and ranked[0] is holder and len(ranked) == 3


def test_what_the_holder_has_cached_counts_as_work_not_done() -> None:
    ws = fleet(300.0, 0.0)  # w0 holds the prefix with 3.0 s queued; w1 is idle
    # cost 200: on w0 5.0 s against 2.0 s: out of balance (gap 3 s, 2.5 x)
    ranked, mode = prefer_cached(ws, [ws[0]], 200.0, (1.5, 1.5), random.Random(1))
    assert mode == "rescore" and ranked[0].id == "w1"
    # with 90 % of the prompt cached there, w0 would take 3.2 s: a gap of 1.2 s only
    ranked, mode = prefer_cached(ws, [ws[0]], 200.0, (1.5, 1.5), random.Random(1), cached_share=0.9)
    assert mode == "ordered" and ranked[0].id == "w0"
