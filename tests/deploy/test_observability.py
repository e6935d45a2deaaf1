"""The Grafana dashboard and the Prometheus alert rules: they parse (promtool), and every
metric they name is one the router or the worker exports on /metrics."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deploy.promql import histogram_base, metric_names
from tests.router.helpers import router_client, settings
from tests.workers.helpers import settings as worker_settings
from tests.workers.helpers import worker

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "deploy" / "grafana" / "router.json"
ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yaml"
PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(
    PROMTOOL is None,
    reason="promtool not installed (Debian's prometheus package; .ci/run installs it)",
)


def dashboard_exprs() -> list[str]:
    def walk(panels: list[dict[str, Any]]) -> list[str]:
        out = []
        for panel in panels:
            out += [t["expr"] for t in panel.get("targets", []) if t.get("expr")]
            out += walk(panel.get("panels", []))
        return out

    doc = json.loads(DASHBOARD.read_text())
    exprs = walk(doc["panels"])
    for var in doc["templating"]["list"]:
        if var["type"] == "query":
            query = var["query"]["query"] if isinstance(var["query"], dict) else var["query"]
            exprs.append(re.sub(r"^label_values\((\w+),\s*\w+\)$", r"\1", query))
    return exprs


def alert_exprs() -> list[str]:
    groups = yaml.safe_load(ALERTS.read_text())["groups"]
    return [rule["expr"] for group in groups for rule in group["rules"]]


@pytest.mark.parametrize(
    ("expr", "names"),
    [
        ('sum by (endpoint, le) (rate(a_bucket{mode="x", b="c{d}"}[5m]))', {"a_bucket"}),
        ("max by (endpoint) (a) > 0 unless on (endpoint) b{s='by (x)'} == 1", {"a", "b"}),
        ("absent(router_build_info)", {"router_build_info"}),
        ("histogram_quantile(0.99, sum by (le) (rate(x_bucket[$__rate_interval])))", {"x_bucket"}),
        ("rate(p_total[1m]) * on (instance) group_left (version) info", {"p_total", "info"}),
        ("deriv(sum(a)[5m:1m]) > 1e3 and bool 2", {"a"}),
    ],
)
def test_metric_names_of_promql(expr: str, names: set[str]) -> None:
    assert metric_names(expr) == names


def test_dashboard_shape() -> None:
    doc = json.loads(DASHBOARD.read_text())
    ids = []

    def walk(panels: list[dict[str, Any]]) -> None:
        for panel in panels:
            ids.append(panel["id"])
            assert {"h", "w", "x", "y"} <= set(panel["gridPos"]), panel["title"]
            if panel["type"] != "row":
                assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
                assert panel["targets"] and panel.get("description"), panel["title"]
                refs = [t["refId"] for t in panel["targets"]]
                assert len(refs) == len(set(refs)), panel["title"]
            walk(panel.get("panels", []))

    walk(doc["panels"])
    assert len(ids) == len(set(ids))
    assert doc["uid"] and doc["title"]
    exprs = "\n".join(dashboard_exprs())
    # what the dashboard is for (docs/architecture.md, "Metrics")
    for needed in (
        "router_requests_total",
        "router_request_duration_seconds_bucket",
        "router_upstream_ttfb_seconds_bucket",
        "router_inflight_cost",
        "router_capacity",
        "router_workers",
        "router_tickets_total",
        "router_retries_total",
        "router_autoscaler_desired_workers",
        "router_cold_starts_total",
        "router_held_requests",
        "worker_ticket_rejections_total",
    ):
        assert needed in exprs, needed


def rules_file_of(exprs: list[str], path: Path) -> Path:
    """The expressions as recording rules, Grafana's variables filled in, for promtool."""

    def fill(expr: str) -> str:
        expr = expr.replace("$__rate_interval", "5m")
        return re.sub(r"\$\{?\w+\}?", ".*", expr)

    rules = [{"record": f"dashboard:expr{i}", "expr": fill(e)} for i, e in enumerate(exprs)]
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    return path


@needs_promtool
def test_promtool_checks_the_alert_rules() -> None:
    assert PROMTOOL is not None
    run = subprocess.run(
        [PROMTOOL, "check", "rules", str(ALERTS)], capture_output=True, text=True, timeout=60
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert f"SUCCESS: {len(alert_exprs())} rules found" in run.stdout


@needs_promtool
def test_dashboard_queries_parse(tmp_path: Path) -> None:
    assert PROMTOOL is not None
    path = rules_file_of(dashboard_exprs(), tmp_path / "dashboard.yaml")
    run = subprocess.run(
        [PROMTOOL, "check", "rules", str(path)], capture_output=True, text=True, timeout=60
    )
    assert run.returncode == 0, run.stdout + run.stderr


def exported(text: str) -> dict[str, str]:
    """Metric family name -> type, from the `# TYPE` lines (families with no sample yet
    are listed too)."""
    return dict((m.group(1), m.group(2)) for m in re.finditer(r"^# TYPE (\S+) (\S+)$", text, re.M))


async def test_every_metric_named_is_exported() -> None:
    async with router_client(settings([])) as (client, _):
        resp = await client.get("/metrics")
        assert resp.status == 200
        families = exported(await resp.text())
    async with worker(worker_settings(verify=False)) as client:
        resp = await client.get("/metrics")
        assert resp.status == 200
        worker_families = exported(await resp.text())
    assert not set(families) & set(worker_families)
    families.update(worker_families)
    histograms = {name for name, kind in families.items() if kind == "histogram"}
    for source, exprs in (("dashboard", dashboard_exprs()), ("alerts", alert_exprs())):
        named = {histogram_base(n, histograms) for e in exprs for n in metric_names(e)}
        assert named, source
        missing = sorted(named - set(families))
        assert not missing, f"{source} names metrics nobody exports: {missing}"
