"""The worker's /metrics: no `*_created` series, even in a process that never imports the
router's metrics module (which turns them off too)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

SCRIPT = """
import sys
from workers.load import Load
from workers.metrics import WorkerMetrics
from workers.verify import ReplayMemory
m = WorkerMetrics(Load(), ReplayMemory())
m.requests.labels("/generate", "200").inc()
m.rejections.labels("replayed").inc()
m.ttfb.observe(0.1)
assert "router.metrics" not in sys.modules, "the worker imported the router's metrics"
sys.stdout.write(m.render().decode())
"""


def test_worker_metrics_have_no_created_series() -> None:
    run = subprocess.run(
        [sys.executable, "-c", SCRIPT], capture_output=True, text=True, cwd=ROOT, timeout=60
    )
    assert run.returncode == 0, run.stderr
    assert 'worker_requests_total{code="200",route="/generate"} 1.0' in run.stdout
    assert "worker_backend_ttfb_seconds_count 1.0" in run.stdout
    assert "_created" not in run.stdout
