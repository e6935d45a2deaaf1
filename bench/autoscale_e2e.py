"""The autoscaler end to end: a load step 0 -> N -> 0 against a scaled-to-zero endpoint.

    python bench/autoscale_e2e.py [--users 12] [--hold 40] [--timeout 15]

A router (memory store) with one endpoint on the local provider (synthetic workers,
perf 200 cost/s, 50 tokens/s per stream), min 0, max 4 workers, inactivity timeout
`--timeout` s. Locust (headless, `bench/locust_autoscale.py`) runs a step: 5 s at zero,
`--users` streaming users for `--hold` s, zero again. A sampler reads the router's own
view (`/api/v1/workers`) twice a second. Reported: the first request's time to first
token (the cold start), every request's outcome (0 lost is the target), latency and
time-to-first-token percentiles, workers over time, and how long after the load ended
the endpoint was back at zero workers; a PNG plot (bench/plots/autoscale_e2e.png).
"""

from __future__ import annotations

import argparse
import csv
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from datetime import date
from pathlib import Path

import orjson

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.route_bench import cpu_model, free_port, process, wait_http  # noqa: E402

CONFIG = """
log_level = "info"
[server]
port = {port}
[store]
backend = "memory"
state_file = ""
[signing]
algorithm = "ed25519"
[control]
interval_s = 0.25
[[api_keys]]
key = "dev-key"
[[api_keys]]
key = "admin-key"
admin = true
[[endpoints]]
name = "scaled"
default_cost = 16
[endpoints.health]
interval_s = 0.25
healthy_after = 1
[endpoints.local]
backend = "synthetic"
perf = 200
tokens_per_s = 50
ttft_ms = 50
[endpoints.autoscaling]
min_workers = 0
max_workers = 4
inactivity_timeout_s = {timeout}
max_queue_time_s = 30
max_held_requests = 500
"""


def workers(url: str) -> tuple[int, int]:
    req = urllib.request.Request(
        f"{url}/api/v1/workers?endpoint=scaled", headers={"Authorization": "Bearer admin-key"}
    )
    with urllib.request.urlopen(req, timeout=2) as resp:
        rows = orjson.loads(resp.read())["workers"]
    return sum(r["status"] == "ready" for r in rows), len(rows)


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--users", type=int, default=12)
    ap.add_argument("--hold", type=int, default=40)
    ap.add_argument("--timeout", type=float, default=15.0)
    ap.add_argument("--plot", type=Path, default=ROOT / "bench/plots/autoscale_e2e.png")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp_s:
        tmp = Path(tmp_s)
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        cfg = tmp / "router.toml"
        cfg.write_text(CONFIG.format(port=port, timeout=args.timeout))
        samples: list[tuple[float, int, int]] = []
        stop = threading.Event()
        with process(
            [sys.executable, "-m", "router", "serve", "--config", str(cfg)], log=tmp / "router.log"
        ):
            wait_http(f"{url}/livez")
            t0 = time.monotonic()

            def sample() -> None:
                while not stop.is_set():
                    try:
                        ready, total = workers(url)
                        samples.append((time.monotonic() - t0, ready, total))
                    except OSError:
                        pass
                    stop.wait(0.5)

            sampler = threading.Thread(target=sample, daemon=True)
            sampler.start()
            env = {
                **os.environ,
                "STEP_USERS": str(args.users),
                "STEP_HOLD_S": str(args.hold),
                "ROUTER_API_KEY": "dev-key",
                "ROUTER_ENDPOINT": "scaled",
                "LOCUST_EVENTS": str(tmp / "events.csv"),
            }
            subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "locust",
                    "-f",
                    str(ROOT / "bench/locust_autoscale.py"),
                    "--headless",
                    "--host",
                    url,
                    "--csv",
                    str(tmp / "locust"),
                    "--only-summary",
                    "--stop-timeout",
                    "60",
                ],
                env=env,
                check=False,
                capture_output=True,
                timeout=args.hold + 300,
            )
            load_end = time.monotonic() - t0
            zero_at = None
            deadline = time.monotonic() + args.timeout + 60
            while time.monotonic() < deadline:
                if samples and samples[-1][0] > load_end and samples[-1][2] == 0:
                    zero_at = samples[-1][0]
                    break
                time.sleep(0.5)
            stop.set()
            sampler.join(5)
            events = (
                list(csv.reader(open(tmp / "events.csv"))) if (tmp / "events.csv").exists() else []
            )
    ok = [e for e in events if e[1] == "ok"]
    lost = [e for e in events if e[1] != "ok"]
    ttfts = sorted(float(e[3]) for e in ok)
    totals = sorted(float(e[4]) for e in ok)
    first = min(ok, key=lambda e: float(e[0])) if ok else None

    def pct(xs: list[float], p: float) -> float:
        return xs[min(len(xs) - 1, int(p * len(xs)))] if xs else float("nan")

    print(
        f"\nautoscale e2e, {date.today()}, {os.cpu_count()} CPUs ({cpu_model()}), python "
        f"{platform.python_version()}; step 0 -> {args.users} streaming users for "
        f"{args.hold} s -> 0; min 0, max 4 workers, inactivity timeout {args.timeout:g} s\n"
    )
    print(
        "| requests | lost or 5xx | first request TTFT s (cold) | TTFT p50 / p99 s | "
        "total p50 / p99 s | peak workers | zero workers, s after the load ended |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|")
    peak = max((s[2] for s in samples), default=0)
    print(
        f"| {len(events)} | {len(lost)} | {float(first[3]) if first else float('nan'):.2f} | "
        f"{pct(ttfts, 0.5):.2f} / {pct(ttfts, 0.99):.2f} | {pct(totals, 0.5):.2f} / "
        f"{pct(totals, 0.99):.2f} | {peak} | "
        f"{(zero_at - load_end) if zero_at is not None else float('nan'):.1f} |"
    )
    for e in lost[:5]:
        print("lost:", e)
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(9, 4))
        ax.plot([s[0] for s in samples], [s[2] for s in samples], label="workers")
        ax.plot([s[0] for s in samples], [s[1] for s in samples], label="ready", linestyle="--")
        starts = sorted(float(e[0]) for e in events)
        if starts:
            bins = range(0, int(max(s[0] for s in samples)) + 2)
            ax2 = ax.twinx()
            ax2.hist([t for t in starts], bins=list(bins), alpha=0.3, color="gray")
            ax2.set_ylabel("requests started per second")
        ax.set_xlabel("seconds")
        ax.set_ylabel("workers")
        ax.legend(loc="upper left")
        ax.set_title(f"step 0 -> {args.users} users -> 0, scale to zero after {args.timeout:g} s")
        args.plot.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(args.plot, dpi=80, bbox_inches="tight")
        print(f"\nplot: {args.plot.relative_to(ROOT)}")
    except ImportError:
        print("matplotlib not installed: no plot")
    return 0 if not lost else 1


if __name__ == "__main__":
    sys.exit(main())
