"""The snapshot's own writes: what this replica issued and released shows at once."""

from __future__ import annotations

from router.metrics import Metrics
from router.snapshot import Snapshot
from router.state.base import Issued, WorkerRecord
from router.state.memory import MemoryStore


def snapshot(*records: WorkerRecord) -> Snapshot:
    snap = Snapshot(MemoryStore(), Metrics(), ["demo"])
    snap.replace_all(records)
    return snap


def record(**kw: object) -> WorkerRecord:
    return WorkerRecord("w1", "demo", "http://w1", 100.0, **kw)  # type: ignore[arg-type]


def test_apply_issue_takes_the_store_s_fresh_pending_load() -> None:
    snap = snapshot(record(reported_cost=5.0, pending_mcost=100, pending_requests=1))
    # the store saw another replica's tickets too: its pending sum is what counts
    snap.apply_issue(Issued("w1", "http://w1", 7, 1, 5.0 + 3.5, 3500), 1.5)
    w = snap.get("w1")
    assert w is not None
    assert (w.pending_mcost, w.pending_requests, w.reported_cost) == (3500, 2, 5.0)
    assert w.load == 8.5 and w.pending_cost == 3.5
    snap.apply_issue(Issued("gone", "http://x", 1, 1, 1.0, 1000), 1.0)  # unknown: no-op
    assert snap.workers() == [w]


def test_apply_release_lowers_the_load_it_was_taken_from() -> None:
    snap = snapshot(record(reported_cost=50.0, reported_requests=2, pending_mcost=300))
    w = snap.get("w1")
    assert w is not None
    w.pending_requests = 2
    snap.apply_release("w1", 0.1, "pending")
    assert (w.pending_mcost, w.pending_requests, w.pending_cost) == (200, 1, 0.2)
    snap.apply_release("w1", 30.0, "reported")
    assert (w.reported_cost, w.reported_requests) == (20.0, 1)
    snap.apply_release("w1", 9.0, None)  # nothing was released
    assert (w.pending_mcost, w.reported_cost) == (200, 20.0)
    # never below zero, whatever the cost estimate
    snap.apply_release("w1", 1e9, "pending")
    snap.apply_release("w1", 1e9, "pending")
    snap.apply_release("w1", 1e9, "reported")
    snap.apply_release("w1", 1e9, "reported")
    assert (w.pending_mcost, w.pending_requests, w.reported_cost, w.reported_requests) == (
        0,
        0,
        0.0,
        0,
    )
    assert w.load == 0.0
    snap.apply_release("gone", 1.0, "pending")  # unknown: no-op
