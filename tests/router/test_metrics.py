"""The router's lock-free counters and histograms expose what prometheus-client's would."""

from __future__ import annotations

import random
import shutil
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from router.metrics import _LATENCY_BUCKETS, Metrics


def samples(text: bytes) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for fam in text_string_to_metric_families(text.decode())
        for s in fam.samples
    }


def test_same_exposition_as_prometheus_client() -> None:
    rng = random.Random(7)
    ours = Metrics()
    ref = CollectorRegistry()
    requests = Counter("router_requests_total", "x", ["endpoint", "mode", "code"], registry=ref)
    duration = Histogram(
        "router_request_duration_seconds",
        "x",
        ["endpoint", "mode"],
        buckets=_LATENCY_BUCKETS,
        registry=ref,
    )
    # values on bucket bounds (le: "less or equal"), between them, past the last one
    values = [*_LATENCY_BUCKETS, 0.0, 1e-9, 500.0, *(rng.lognormvariate(-5, 2) for _ in range(500))]
    for i, v in enumerate(values):
        ep, code = ("a", "b")[i % 2], ("200", "503", "499")[i % 3]
        ours.child(ours.requests, ep, "proxy", code).inc()
        requests.labels(ep, "proxy", code).inc()
        ours.child(ours.duration, ep, "proxy").observe(v)
        duration.labels(ep, "proxy").observe(v)
    mine, theirs = samples(ours.render()), samples(generate_latest(ref))
    mine = {
        k: v
        for k, v in mine.items()
        if k[0].startswith(("router_requests", "router_request_duration"))
    }
    assert mine.keys() == theirs.keys()
    for k, v in theirs.items():
        assert mine[k] == pytest.approx(v), k


def test_counters_only_go_up_and_labels_must_match() -> None:
    m = Metrics()
    with pytest.raises(ValueError):
        m.child(m.retries, "a", "connect").inc(-1)
    with pytest.raises(ValueError):
        m.requests.labels("only-one")
    m.child(m.retries, "a", "connect").inc(2)
    assert (
        samples(m.render())[("router_retries_total", (("endpoint", "a"), ("reason", "connect")))]
        == 2
    )


def test_build_info_and_process_metrics() -> None:
    from router.version import git_commit, package_version

    text = Metrics(algorithm="ed25519", store="redis").render()
    info = {k: v for k, v in samples(text).items() if k[0] == "router_build_info"}
    labels = (
        ("algorithm", "ed25519"),
        ("commit", git_commit()),
        ("store", "redis"),
        ("version", package_version()),
    )
    assert info == {("router_build_info", labels): 1.0}
    names = {name for name, _ in samples(text)}
    assert {"process_cpu_seconds_total", "process_resident_memory_bytes"} <= names
    assert "_created" not in text.decode()


def test_git_commit_is_read_from_a_checkout_only(tmp_path: Path) -> None:
    from router.version import ROOT_CHECKOUT, git_commit

    assert git_commit(tmp_path) == "unknown"  # no .git here
    (tmp_path / ".git").mkdir()  # a broken one: git fails, and that is "unknown" too
    assert git_commit(tmp_path) == "unknown"
    if (ROOT_CHECKOUT / ".git").exists() and shutil.which("git"):
        commit = git_commit(ROOT_CHECKOUT)
        assert len(commit) == 12 and int(commit, 16) >= 0
