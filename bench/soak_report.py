"""Summarise a soak run (bench/soak.sh): requests, failures by kind and fault, RSS.

    python bench/soak_report.py --results DIR --rss-before-kb N --rss-after-kb N ...

Reads DIR/locust_stats.csv (locust's summary), DIR/failures.tsv (one line per failure,
written by the locustfile: time, request name, message) and DIR/events.tsv (the faults
soak.sh injected). A failure between a fault and FAULT_WINDOW_S after its end is put
down to that fault; any other failure is unexplained. Exits 1 if a failure is
unexplained or the router's RSS grew more than the bound.
"""

from __future__ import annotations

import argparse
import csv
import os
import platform
import sys
from collections import Counter
from datetime import date
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.route_bench import cpu_model


def fault_windows(
    events: list[tuple[float, str]], slack_s: float
) -> list[tuple[float, float, str]]:
    """(start, end + slack, name) for each `fault:` event, ended by the next `fault end`."""
    out = []
    for i, (t, text) in enumerate(events):
        if text.startswith("fault:"):
            end = next((t2 for t2, x in events[i + 1 :] if x.startswith("fault end")), t)
            out.append((t, end + slack_s, text.removeprefix("fault:").strip()))
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--results", type=Path, required=True)
    ap.add_argument("--rss-before-kb", type=int, required=True)
    ap.add_argument("--rss-after-kb", type=int, required=True)
    ap.add_argument("--rss-growth-mb", type=float, default=25.0)
    ap.add_argument("--fault-window-s", type=float, default=5.0)
    ap.add_argument("--soak-s", type=int, default=0)
    ap.add_argument("--users", type=int, default=0)
    args = ap.parse_args(argv)
    d: Path = args.results

    with open(d / "locust_stats.csv", newline="") as f:
        stats = list(csv.DictReader(f))
    events = [
        (float(t), text)
        for t, text in (
            line.split("\t", 1) for line in (d / "events.tsv").read_text().splitlines() if line
        )
    ]
    failures = [
        (float(t), name, msg)
        for t, name, msg in (
            line.split("\t", 2) for line in (d / "failures.tsv").read_text().splitlines() if line
        )
    ]
    windows = fault_windows(events, args.fault_window_s)

    print(
        f"Soak, {date.today()}: {args.soak_s} s, {args.users} users, router + 4 synthetic "
        f"workers + Redis on 127.0.0.1; {os.cpu_count()} CPUs ({cpu_model()}), python "
        f"{platform.python_version()}\n"
    )
    print("| request | requests | failures | p50 ms | p99 ms |")
    print("|---|---:|---:|---:|---:|")
    for row in stats:
        print(
            f"| {row['Name']} | {row['Request Count']} | {row['Failure Count']} "
            f"| {row['50%']} | {row['99%']} |"
        )

    by_cause: Counter[tuple[str, str]] = Counter()
    for t, _name, msg in failures:
        kind = msg.split(":", 1)[0].strip()[:60]
        cause = next((w for s, e, w in windows if s <= t <= e), "unexplained")
        by_cause[(cause, kind)] += 1
    print("\n| fault | failure kind | count |")
    print("|---|---|---:|")
    for (cause, kind), n in sorted(by_cause.items()):
        print(f"| {cause} | {kind} | {n} |")
    if not by_cause:
        print("| (none) | | 0 |")

    print("\nFaults injected (seconds from the first event):")
    t0 = events[0][0] if events else 0.0
    for t, text in events:
        print(f"- {t - t0:7.1f} s  {text}")

    growth_mb = (args.rss_after_kb - args.rss_before_kb) / 1024
    unexplained = sum(n for (cause, _), n in by_cause.items() if cause == "unexplained")
    print(
        f"\nRouter RSS: {args.rss_before_kb / 1024:.1f} MB after warm-up, "
        f"{args.rss_after_kb / 1024:.1f} MB at the end ({growth_mb:+.1f} MB; bound "
        f"{args.rss_growth_mb:.0f} MB). Failures: {len(failures)}, of them unexplained "
        f"(outside every fault window): {unexplained}."
    )
    ok = unexplained == 0 and growth_mb <= args.rss_growth_mb
    print("Result: " + ("PASS" if ok else "FAIL"))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
