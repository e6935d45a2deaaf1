"""The balance simulator: bookkeeping, the ideal baseline, the router's own policies."""

from __future__ import annotations

import importlib.util
import itertools
import sys
from pathlib import Path
from types import ModuleType

import pytest

from router import balancer

PATH = Path(__file__).resolve().parents[2] / "bench" / "balance_sim.py"
N = 3000


def _load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("balance_sim", PATH)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses resolve annotations through sys.modules
    spec.loader.exec_module(mod)
    return mod


sim = _load()
PERFS = sim.fleet()
WL = sim.workload(0, N)


def _mean(recs: list) -> float:
    return sum(r.latency for r in recs) / len(recs)


def _p99(recs: list) -> float:
    return sim.p99([r.latency for r in recs])


# The ideal queue has no dispatcher, so nothing to poll: it runs once, with poll None.
@pytest.mark.parametrize(
    ("policy", "poll"),
    [*((p, poll) for p in sim.POLICIES for poll in (None, 1.0)), ("ideal", None)],
)
def test_every_request_completes_once_and_no_faster_than_its_service(
    policy: str, poll: float | None
) -> None:
    if policy == "ideal":
        recs = sim.simulate_ideal(WL, 0.9, PERFS)
    else:
        recs = sim.simulate(policy, WL, 0.9, PERFS, seed=0, poll_interval_s=poll)
    assert len(recs) == N
    arrivals = sim.arrivals(WL, 0.9, PERFS)
    assert [r.arrival for r in recs] == arrivals  # one record per request, in order
    for r, cost in zip(recs, WL.costs, strict=True):
        assert r.service == pytest.approx(cost / PERFS[r.worker])
        assert r.start >= r.arrival
        assert r.finish == pytest.approx(r.start + r.service)
        assert r.latency >= r.service
    # each FIFO server runs one request at a time: its busy spans never overlap
    for w in range(len(PERFS)):
        mine = sorted((r for r in recs if r.worker == w), key=lambda r: r.start)
        for a, b in itertools.pairwise(mine):
            assert b.start >= a.finish - 1e-9


def test_ideal_ties_least_work_and_beats_the_rest_on_a_homogeneous_fleet() -> None:
    # With equal workers, least_work on exact loads sends each request to the worker
    # that frees first, which is what the central queue does: they tie.
    perfs = sim.fleet((2,) * 8)
    ideal = _mean(sim.simulate_ideal(WL, 0.9, perfs))
    for policy in sim.POLICIES:
        got = _mean(sim.simulate(policy, WL, 0.9, perfs, seed=0))
        assert ideal <= got * (1 + 1e-9), policy
    assert _mean(sim.simulate("least_work", WL, 0.9, perfs, seed=0)) == pytest.approx(ideal)


def test_ideal_beats_size_blind_policies_on_the_heterogeneous_fleet() -> None:
    # least_work (and p2c's work score) know each request's cost and can wait for a
    # fast worker; the size-blind central queue cannot, so only size-blind policies
    # are held to it here (see the module docstring of bench/balance_sim.py).
    ideal = _mean(sim.simulate_ideal(WL, 0.9, PERFS))
    for policy in ("round_robin", "random", "least_requests"):
        assert ideal <= _mean(sim.simulate(policy, WL, 0.9, PERFS, seed=0)), policy


def test_least_work_beats_round_robin_at_rho_09_on_p99() -> None:
    lw = _p99(sim.simulate("least_work", WL, 0.9, PERFS, seed=0))
    rr = _p99(sim.simulate("round_robin", WL, 0.9, PERFS, seed=0))
    assert lw < rr


def test_same_seed_same_numbers() -> None:
    kw = dict(seeds=2, requests=500, rhos=(0.8,), poll_intervals=(1.0,))
    assert sim.run_grid(**kw) == sim.run_grid(**kw)
    a = sim.simulate("random", sim.workload(3, 500), 0.8, PERFS, seed=3)
    b = sim.simulate("random", sim.workload(3, 500), 0.8, PERFS, seed=3)
    assert a == b
    c = sim.simulate("random", sim.workload(4, 500), 0.8, PERFS, seed=4)
    assert a != c


def test_uses_the_routers_policy_functions(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = {"shortlist": 0, "finalize": 0}
    real_shortlist, real_finalize = balancer.shortlist, balancer.finalize

    def shortlist(*a: object, **kw: object) -> object:
        calls["shortlist"] += 1
        return real_shortlist(*a, **kw)  # type: ignore[arg-type]

    def finalize(candidates: list, cost: float, mode: str) -> int:
        calls["finalize"] += 1
        return len(candidates) - 1  # always the last shortlisted: observable below

    monkeypatch.setattr(balancer, "shortlist", shortlist)
    monkeypatch.setattr(balancer, "finalize", finalize)
    wl = sim.workload(0, 200)
    recs = sim.simulate("least_work", wl, 0.5, PERFS, seed=0)
    assert calls == {"shortlist": 200, "finalize": 200}
    monkeypatch.setattr(balancer, "finalize", real_finalize)
    assert recs != sim.simulate("least_work", wl, 0.5, PERFS, seed=0)


def test_cli_prints_a_markdown_table(capsys: pytest.CaptureFixture[str]) -> None:
    assert (
        sim.main(
            [
                "--seeds",
                "1",
                "--requests",
                "300",
                "--rho",
                "0.9",
                "--markdown",
                "--poll-interval",
                "1",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "| rho | policy | mean s | p99 s | p99 ÷ ideal |" in out
    assert "| 0.9 | least_work (poll 1 s) |" in out
    assert "least_work p99 ÷ round_robin" in out
