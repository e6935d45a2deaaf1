"""The autoscaler simulator: bookkeeping holds, and it drives the router's own policy."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

from router.control import autoscaler

PATH = Path(__file__).resolve().parents[2] / "bench" / "autoscale_sim.py"


def _load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("autoscale_sim", PATH)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses resolve annotations through sys.modules
    spec.loader.exec_module(mod)
    return mod


sim = _load()
SHORT = sim.Trace("short", 120, lambda t: 1600.0 if 10 <= t < 70 else 0.0, "a short step")


@pytest.mark.parametrize("policy", sim.POLICIES)
def test_every_request_is_answered_or_failed(policy: str) -> None:
    res = sim.simulate(SHORT, policy, seed=3, cold_start_s=5, tail_s=60, warmup_s=10)
    assert res.requests, "the trace made no request"
    for r in res.requests:
        done = r.finish >= 0 and not r.failed
        assert done != r.failed, r  # exactly one of the two
        if done:
            assert r.start >= r.arrival and r.finish > r.start
    assert res.answered + res.failed == len(res.requests)
    assert res.gpu_s >= 0
    assert all(w.stopped is None or w.stopped >= w.started for w in res.workers)
    lat = res.latencies()
    assert sim.percentile(lat, 0.5) <= sim.percentile(lat, 0.99)


def test_fixed_fleet_costs_its_size_times_the_trace() -> None:
    res = sim.simulate(SHORT, "fixed", seed=3, tail_s=30)
    assert res.gpu_s == pytest.approx(sim.fixed_size(SHORT) * SHORT.duration_s)  # tail not counted


def test_the_simulator_calls_the_routers_policy(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[float] = []
    real = autoscaler.desired

    def spy(*args: object, **kwargs: object) -> autoscaler.Decision:
        calls.append(args[3])  # type: ignore[arg-type]
        return real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(autoscaler, "desired", spy)
    res = sim.simulate(SHORT, "ours", seed=3, cold_start_s=5, tail_s=60)
    assert len(calls) == len(res.times)  # once a simulated second
    assert max(res.counts) >= 1 and res.counts[-1] == 0  # up for the step, back to zero
