"""The end-to-end balance benchmark runs on real processes and reports every row."""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path
from types import ModuleType

import pytest

PATH = Path(__file__).resolve().parents[2] / "bench" / "balance_e2e.py"


def _load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("balance_e2e", PATH)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses resolve annotations through sys.modules
    spec.loader.exec_module(mod)
    return mod


e2e = _load()


def test_same_seed_same_workload() -> None:
    a, b = e2e.workload(1, 2000, 24), e2e.workload(1, 2000, 24)
    assert a == b and a != e2e.workload(2, 2000, 24)
    assert all(isinstance(c, int) and c >= 1 for c in a.costs)
    assert sum(a.costs) / len(a.costs) == pytest.approx(24, rel=0.1)
    arr = a.arrivals(10.0, 5.0)
    assert 25 < len(arr) < 80 and all(0 < t <= 5.0 for t, _ in arr)


def test_a_short_run_reports_every_policy(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out.json"
    # two fast workers, one second of arrivals per run: about 20 s in all
    assert (
        e2e.main(
            [
                "--speeds",
                "1",
                "2",
                "--base-tps",
                "100",
                "--mean-cost",
                "8",
                "--rho",
                "0.5",
                "--duration-s",
                "1",
                "--drain-s",
                "5",
                "--proxy-poll-s",
                "0.25",
                "--ticket-poll-s",
                "0.25",
                "--ticket-rho",
                "0.5",
                "--calibrate-s",
                "0.5",
                "--json",
                str(out),
            ]
        )
        == 0
    )
    text = capsys.readouterr().out
    doc = json.loads(out.read_text())
    rows = doc["results"]
    assert [r["policy"] for r in rows if r["mode"] == "proxy"] == list(e2e.POLICIES)
    assert [(r["mode"], r["poll_s"]) for r in rows][-1] == ("ticket", 0.25)
    assert doc["capacity_tps"] > 0
    for r in rows:
        assert r["n"] > 0 and r["errors"] == 0, r
        assert 0 < r["p50_s"] <= r["p99_s"] and math.isfinite(r["mean_s"]) and r["mean_s"] > 0
    for policy in e2e.POLICIES:
        assert policy in text
    assert "Ticket mode" in text
