"""Every policy on crafted snapshots (pure functions: no I/O, seeded randomness)."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from router.balancer import (
    SAMPLE,
    SHORTLIST,
    Candidate,
    _sample,
    finalize,
    fits,
    rendezvous,
    shortlist,
    work_score,
)

RNG = random.Random(7)


def fleet() -> list[Candidate]:
    return [
        Candidate("slow", perf=100),
        Candidate("fast", perf=400),
        Candidate("mid", perf=200),
    ]


def test_least_work_prefers_the_faster_idle_worker() -> None:
    ranked, mode = shortlist("least_work", fleet(), 100, rng=RNG)
    assert [c.id for c in ranked] == ["fast", "mid", "slow"]
    assert mode == "rescore"


def test_least_work_weighs_load_against_speed() -> None:
    ws = fleet()
    ws[1].load = 1000  # fast: (1000+100)/400 = 2.75; mid: 0.5; slow: 1.0
    ranked, _ = shortlist("least_work", ws, 100, rng=RNG)
    assert [c.id for c in ranked] == ["mid", "slow", "fast"]


def test_least_work_respects_max_load_and_readiness() -> None:
    ws = fleet()
    ws[1].max_load, ws[1].load = 150, 100  # fast is busy: 100 + 100 > 150
    ws[2].ready = False
    ranked, _ = shortlist("least_work", ws, 100, rng=RNG)
    assert [c.id for c in ranked] == ["slow"]


def test_an_idle_worker_takes_a_request_bigger_than_its_max_load() -> None:
    w = Candidate("w", perf=1, max_load=10)
    assert fits(w, 50)
    w.load = 1
    assert not fits(w, 50)


def test_least_work_breaks_ties_randomly() -> None:
    ws = [Candidate(str(i), perf=100) for i in range(4)]
    firsts = Counter(
        shortlist("least_work", ws, 1, rng=random.Random(i))[0][0].id for i in range(400)
    )
    assert set(firsts) == {"0", "1", "2", "3"}
    assert min(firsts.values()) > 60


def test_least_requests_counts_requests_not_cost() -> None:
    ws = fleet()
    ws[0].requests, ws[1].requests, ws[2].requests = 0, 5, 2
    ws[0].load = 10_000
    ranked, mode = shortlist("least_requests", ws, 1, rng=RNG)
    assert [c.id for c in ranked] == ["slow", "mid", "fast"] and mode == "ordered"


def test_round_robin_cycles() -> None:
    ws = fleet()
    firsts = [shortlist("round_robin", ws, 1, rng=RNG, tick=t)[0][0].id for t in range(6)]
    assert firsts == ["slow", "fast", "mid", "slow", "fast", "mid"]


def test_random_uses_every_worker() -> None:
    seen = {shortlist("random", fleet(), 1, rng=random.Random(i))[0][0].id for i in range(50)}
    assert seen == {"slow", "fast", "mid"}


def test_p2c_returns_the_better_of_two() -> None:
    ws = fleet()
    for i in range(50):
        ranked, mode = shortlist("p2c", ws, 100, rng=random.Random(i))
        assert len(ranked) == 2 and mode == "rescore"
        assert work_score(ranked[0], 100) <= work_score(ranked[1], 100)


@pytest.mark.parametrize("policy", ["least_work", "round_robin", "random", "least_requests", "p2c"])
def test_no_ready_worker_gives_empty_shortlist(policy: str) -> None:
    ws = fleet()
    for w in ws:
        w.ready = False
    assert shortlist(policy, ws, 1, rng=RNG)[0] == []  # type: ignore[arg-type]


def test_affinity_sticks_then_moves_when_unhealthy_and_returns() -> None:
    ws = [Candidate(f"w{i}", perf=100) for i in range(5)]
    first = shortlist("least_work", ws, 1, rng=RNG, session_id="chat-42")[0][0]
    for i in range(20):  # loads change, the session stays
        ws[i % 5].load = 10.0 * i
        ranked, mode = shortlist("least_work", ws, 1, rng=RNG, session_id="chat-42")
        assert ranked[0].id == first.id and mode == "ordered"
    first.ready = False
    moved = shortlist("least_work", ws, 1, rng=RNG, session_id="chat-42")[0][0]
    assert moved.id != first.id
    first.ready = True  # rendezvous hashing: it comes back to the same worker
    assert shortlist("least_work", ws, 1, rng=RNG, session_id="chat-42")[0][0].id == first.id


def test_affinity_spreads_sessions() -> None:
    ws = [Candidate(f"w{i}", perf=100) for i in range(4)]
    owners = Counter(rendezvous(f"s{i}", ws).id for i in range(400))  # type: ignore[union-attr]
    assert len(owners) == 4 and min(owners.values()) > 60


def test_finalize_modes() -> None:
    a, b = Candidate("a", perf=100, load=50), Candidate("b", perf=100)
    assert finalize([a, b], 10, "ordered") == 0
    assert finalize([a, b], 10, "rescore") == 1
    b.ready = False
    assert finalize([a, b], 10, "rescore") == 0
    a.max_load = 55
    assert finalize([a, b], 10, "rescore") is None


class Counted:
    """A worker that counts how often a policy looked at it."""

    looks = 0
    perf, requests, max_load = 100.0, 0, None

    def __init__(self, wid: str, load: float, ready: bool = True) -> None:
        self.id, self.load, self._ready = wid, load, ready

    @property
    def ready(self) -> bool:
        Counted.looks += 1
        return self._ready


def test_large_fleets_are_sampled_so_a_decision_costs_the_same() -> None:
    rng = random.Random(1)
    for n in (1_000, 10_000):
        fleet = [Counted(f"w{i}", load=float(i % 50)) for i in range(n)]
        Counted.looks = 0
        ranked, mode = shortlist("least_work", fleet, 10, rng=rng)
        assert len(ranked) == SHORTLIST and mode == "rescore"
        assert Counted.looks <= 2 * SAMPLE  # independent of n
        # the picks are the best of a sample: far better than a random worker's load
        assert ranked[0].load <= 15  # a random worker is over 15 seven times in ten
    picks = {shortlist("least_work", fleet, 10, rng=rng)[0][0].id for _ in range(50)}
    assert len(picks) > 10  # ties and samples spread the choices


def test_large_fleet_mostly_down_still_finds_the_ready_worker() -> None:
    fleet = [Counted(f"w{i}", 0.0, ready=(i == 7_777)) for i in range(10_000)]
    ranked, _ = shortlist("least_work", fleet, 1, rng=random.Random(0))
    assert [w.id for w in ranked] == ["w7777"]


def test_large_fleet_round_robin_walks_on_without_a_full_scan() -> None:
    fleet = [Counted(f"w{i}", 0.0, ready=(i % 3 != 0)) for i in range(1_000)]
    Counted.looks = 0
    firsts = [
        shortlist("round_robin", fleet, 1, rng=random.Random(0), tick=t)[0][0].id
        for t in range(1, 7)
    ]
    assert firsts == ["w1", "w2", "w4", "w4", "w5", "w7"]
    assert Counted.looks < 50


def test_the_sample_is_distinct_workers_each_as_likely() -> None:
    rng = random.Random(3)
    fleet = [Candidate(f"w{i}", perf=100) for i in range(2 * SAMPLE + 8)]
    counts: Counter[str] = Counter()
    draws = 4000
    for _ in range(draws):
        ids = [w.id for w in _sample(fleet, rng)]
        assert len(ids) == SAMPLE == len(set(ids))
        counts.update(ids)
    expected = draws * SAMPLE / len(fleet)
    assert len(counts) == len(fleet)  # the first and last workers are drawn too
    assert all(abs(c - expected) < 0.15 * expected for c in counts.values()), counts
