"""The health state machine (pure) and /readyz report parsing."""

from __future__ import annotations

from router.config import HealthSettings
from router.health import PollResult, parse_report, transition
from router.state.base import WorkerRecord

CFG = HealthSettings(unhealthy_after=2, healthy_after=2)
OK = PollResult(True)
FAIL = PollResult(False, detail="timeout")


def run(w: WorkerRecord, results: list[PollResult]) -> list[str]:
    out = []
    for i, r in enumerate(results):
        u = transition(w, r, CFG, now=100.0 + i)
        w.status, w.ok_streak, w.fail_streak, w.last_ok = (
            u.status,
            u.ok_streak,
            u.fail_streak,
            u.last_ok,
        )
        out.append(w.status)
    return out


def worker(status: str = "loading") -> WorkerRecord:
    return WorkerRecord("id", "demo", "http://w", 100.0, status=status)  # type: ignore[arg-type]


def test_loading_becomes_ready_on_first_success() -> None:
    assert run(worker(), [FAIL, FAIL, FAIL, OK]) == ["loading"] * 3 + ["ready"]


def test_ready_goes_unhealthy_after_threshold_and_back_with_hysteresis() -> None:
    assert run(worker("ready"), [FAIL, OK, FAIL, FAIL, OK, FAIL, OK, OK, OK]) == [
        "ready",
        "ready",
        "ready",
        "unhealthy",
        "unhealthy",
        "unhealthy",
        "unhealthy",
        "ready",
        "ready",
    ]


def test_refused_connection_is_unhealthy_at_once() -> None:
    assert run(worker("ready"), [PollResult(False, refused=True)]) == ["unhealthy"]


def test_worker_draining_and_admin_drain_is_sticky() -> None:
    w = worker("ready")
    assert run(w, [PollResult(False, draining=True)]) == ["draining"]
    assert run(w, [OK, OK]) == ["draining", "ready"]
    w = worker("draining")
    w.admin_drain = True
    assert run(w, [OK, OK, OK, FAIL, FAIL]) == ["draining"] * 5


def test_last_ok_only_moves_on_success() -> None:
    w = worker("ready")
    u = transition(w, FAIL, CFG, now=50.0)
    assert u.last_ok == w.last_ok
    assert transition(w, OK, CFG, now=50.0).last_ok == 50.0


def test_parse_report() -> None:
    body = (
        b'{"ready": true, "inflight_cost": 12.5, "inflight_requests": 2, '
        b'"max_reqnum_seen": 1763800000000123, "perf": 250}'
    )
    assert parse_report(body) == ((12.5, 2, 1763800000000123), 250.0, False)
    assert parse_report(b'{"ready": false, "draining": true}') == (None, None, True)
    assert parse_report(b"OK") == (None, None, False)  # a bare /health answer
    assert parse_report(
        b'{"inflight_cost": -1, "inflight_requests": 1, "max_reqnum_seen": 1, "perf": "fast"}'
    ) == (None, None, False)
