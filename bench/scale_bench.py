"""Fleet size: `/route` latency, health-poll CPU and memory with up to 10,000 workers.

    python bench/scale_bench.py [--sizes 10 100 1000 10000] [--duration 6] [--rounds 5]

Workers are virtual: one upstream process (bench/upstream.py) answers the health check
of every `http://127.0.0.1:PORT/w/{i}`, so the router keeps a real fleet of N ready
workers (static, from its config) that costs one process. For each store (memory, Redis)
one router per fleet size is started, all of them up while any is measured (so each size
runs beside the same background work: snapshot re-reads, health polls every
`--latency-poll-s`), and each gets wrk at 8 connections on `/route` in `--rounds` rounds,
the order of sizes turning each round. The table gives each size's median over the
rounds of p50, p99 and requests/s (the decision cost; issue #5 wants p99 within 1.2x
across sizes), and the router's RSS. One measurement per size in a fixed order read this
shared machine's drift as fleet-size cost: `--sequential` still does that. Then,
with 1,000 workers polled every second, it reads the router's CPU time from /proc over
a window with no other traffic (target: under 15% of one core).
Traffic stays on 127.0.0.1; every loop is bounded.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
import urllib.request
from contextlib import ExitStack
from datetime import date
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.route_bench import (  # noqa: E402
    API_KEY,
    WRK_SCRIPT,
    cpu_model,
    free_port,
    process,
    run_wrk,
    wait_http,
)

CLK_TCK = os.sysconf("SC_CLK_TCK")


def config(
    path: Path, port: int, store: str, redis_port: int, up_port: int, n: int, interval_s: float
) -> None:
    workers = "".join(
        f'[[endpoints.workers]]\nurl = "http://127.0.0.1:{up_port}/w/{i}"\n' for i in range(n)
    )
    path.write_text(f"""
log_level = "warning"
[server]
port = {port}
[store]
backend = "{store}"
redis_url = "redis://127.0.0.1:{redis_port}/0"
key_prefix = "scale{n}:"
[signing]
algorithm = "ed25519"
[[api_keys]]
key = "{API_KEY}"
[[endpoints]]
name = "bench"
[endpoints.health]
interval_s = {interval_s}
timeout_s = 5
healthy_after = 1
{workers}""")


def workers_ready(port: int) -> int:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
        for line in resp.read().decode().splitlines():
            if line.startswith('router_workers{endpoint="bench",status="ready"}'):
                return int(float(line.split()[-1]))
    return 0


def wait_ready(port: int, n: int, timeout_s: float = 120.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if workers_ready(port) >= n:
                return
        except OSError:
            pass
        time.sleep(0.5)
    raise TimeoutError(f"{n} workers not ready after {timeout_s}s")


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime + stime


def measure(port: int, duration: int, script: Path) -> dict[str, Any]:
    url = f"http://127.0.0.1:{port}/route"
    run_wrk(url, 1, 8, set(range(os.cpu_count() or 1)), script)  # warm up
    return run_wrk(url, duration, 8, set(range(os.cpu_count() or 1)), script)


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--sizes", type=int, nargs="+", default=[10, 100, 1000, 10000])
    ap.add_argument("--duration", type=int, default=6, help="seconds of wrk per measurement")
    ap.add_argument(
        "--rounds",
        type=int,
        default=5,
        help="measurements of each size, interleaved (median reported)",
    )
    ap.add_argument(
        "--latency-poll-s",
        type=float,
        default=600.0,
        help="health poll interval while /route is measured (polling has its own "
        "row; at 30 s, 10,000 workers make 333 polls a second)",
    )
    ap.add_argument(
        "--sequential",
        action="store_true",
        help="the old way: one router at a time, sizes in order, one measurement "
        "(with --latency-poll-s 30 as before 2026-12-01)",
    )
    ap.add_argument("--poll-workers", type=int, default=1000)
    ap.add_argument("--poll-window", type=float, default=10.0)
    ap.add_argument("--stores", nargs="+", default=["memory", "redis"])
    args = ap.parse_args()
    if shutil.which("wrk") is None:
        print("wrk is required: apt-get install -y wrk", file=sys.stderr)
        return 2
    redis_bin = shutil.which("redis-server")
    stores = [s for s in args.stores if s == "memory" or redis_bin]
    rows: list[dict[str, Any]] = []
    poll: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp_s:
        tmp = Path(tmp_s)
        script = tmp / "route.lua"
        script.write_text(WRK_SCRIPT)
        up_port, redis_port = free_port(), free_port()
        with (
            process([sys.executable, str(ROOT / "bench/upstream.py"), "--port", str(up_port)]),
            process(
                [
                    redis_bin or "true",
                    "--port",
                    str(redis_port),
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                    "--bind",
                    "127.0.0.1",
                ]
            ),
        ):
            wait_http(f"http://127.0.0.1:{up_port}/readyz")
            for store in stores:
                rows += (sequential if args.sequential else interleaved)(
                    args, store, tmp, redis_port, up_port, script
                )
            # health polling cost: N workers at 1 s, no other traffic
            n = args.poll_workers
            port = free_port()
            cfg = tmp / "poll.toml"
            config(cfg, port, "memory", redis_port, up_port, n, interval_s=1.0)
            with process([sys.executable, "-m", "router", "serve", "--config", str(cfg)]) as router:
                wait_http(f"http://127.0.0.1:{port}/livez", timeout_s=60)
                wait_ready(port, n)
                time.sleep(2.0)
                c0, t0 = cpu_s(router.pid), time.monotonic()
                time.sleep(args.poll_window)
                c1, t1 = cpu_s(router.pid), time.monotonic()
                poll = {
                    "n": n,
                    "cpu_pct": 100 * (c1 - c0) / (t1 - t0),
                    "rss_mb": rss_mb(router.pid),
                }
                print(
                    f"health polling {n} workers at 1 s: {poll['cpu_pct']:.1f}% of a core",
                    file=sys.stderr,
                )
    report(rows, poll, args)
    return 0


def _start(
    stack: ExitStack, store: str, n: int, tmp: Path, redis_port: int, up_port: int, poll_s: float
) -> tuple[int, int]:
    port = free_port()
    cfg = tmp / f"{store}-{n}.toml"
    config(cfg, port, store, redis_port, up_port, n, interval_s=poll_s)
    router = stack.enter_context(
        process([sys.executable, "-m", "router", "serve", "--config", str(cfg)])
    )
    wait_http(f"http://127.0.0.1:{port}/livez", timeout_s=60)
    wait_ready(port, n)
    return port, router.pid


def interleaved(
    args: argparse.Namespace, store: str, tmp: Path, redis_port: int, up_port: int, script: Path
) -> list[dict[str, Any]]:
    """Every size's router up at once (so each is measured beside the same background
    work), `rounds` measurements of each, the order of sizes turning each round."""
    sizes = list(args.sizes)
    runs: dict[int, list[dict[str, Any]]] = {n: [] for n in sizes}
    with ExitStack() as stack:
        routers = {
            n: _start(stack, store, n, tmp, redis_port, up_port, args.latency_poll_s) for n in sizes
        }
        time.sleep(2.0)
        for r in range(args.rounds):
            for n in sizes[r % len(sizes) :] + sizes[: r % len(sizes)]:
                res = measure(routers[n][0], args.duration, script)
                runs[n].append(res)
                print(
                    f"{store:6} {n:6} workers, round {r + 1}: {res['rps']:7.0f} req/s p50 "
                    f"{res['p50_ms']:.2f} ms p99 {res['p99_ms']:.2f} ms, "
                    f"{res['missing']} without url",
                    file=sys.stderr,
                )
        rss = {n: rss_mb(pid) for n, (_, pid) in routers.items()}
    return [
        {
            "store": store,
            "n": n,
            **{k: statistics.median(x[k] for x in runs[n]) for k in ("rps", "p50_ms", "p99_ms")},
            "p99_runs": [x["p99_ms"] for x in runs[n]],
            "missing": sum(x["missing"] for x in runs[n]),
            "rss_mb": rss[n],
        }
        for n in sizes
    ]


def sequential(
    args: argparse.Namespace, store: str, tmp: Path, redis_port: int, up_port: int, script: Path
) -> list[dict[str, Any]]:
    """One router at a time, sizes in order, one measurement each (before 2026-12-01)."""
    rows = []
    for n in args.sizes:
        with ExitStack() as stack:
            port, pid = _start(stack, store, n, tmp, redis_port, up_port, args.latency_poll_s)
            res = measure(port, args.duration, script)
            res.update(store=store, n=n, rss_mb=rss_mb(pid), p99_runs=[res["p99_ms"]])
            rows.append(res)
            print(
                f"{store:6} {n:6} workers: {res['rps']:7.0f} req/s p50 {res['p50_ms']:.2f} "
                f"ms p99 {res['p99_ms']:.2f} ms RSS {res['rss_mb']:.0f} MB, "
                f"{res['missing']} without url",
                file=sys.stderr,
            )
    return rows


def report(rows: list[dict[str, Any]], poll: dict[str, float], args: argparse.Namespace) -> None:
    how = (
        "one router at a time, sizes in order, one measurement each"
        if args.sequential
        else f"all sizes' routers up, {args.rounds} rounds, the order turning, medians"
    )
    how += f"; health polls every {args.latency_poll_s:g} s"
    print(
        f"\nscale bench, {date.today()}, {os.cpu_count()} CPUs ({cpu_model()}), python "
        f"{platform.python_version()}; wrk -c 8 -d {args.duration}s POST /route, Ed25519, "
        f"virtual workers on one upstream; {how}\n"
    )
    print(
        "| store | workers | /route req/s | p50 ms | p99 ms | p99 each round ms "
        "| p99 ÷ smallest fleet's | router RSS MB |"
    )
    print("|---|---:|---:|---:|---:|---|---:|---:|")
    for store in dict.fromkeys(r["store"] for r in rows):
        mine = [r for r in rows if r["store"] == store]
        base = float(mine[0]["p99_ms"])
        for r in mine:
            each = ", ".join(f"{x:.2f}" for x in r["p99_runs"])
            print(
                f"| {store} | {r['n']} | {r['rps']:.0f} | {r['p50_ms']:.2f} "
                f"| {r['p99_ms']:.2f} | {each} | {float(r['p99_ms']) / base:.2f} "
                f"| {r['rss_mb']:.0f} |"
            )
    if poll:
        print(
            f"\nHealth polling: {poll['n']} workers every 1 s cost the router "
            f"{poll['cpu_pct']:.1f}% of one core (RSS {poll['rss_mb']:.0f} MB)."
        )


if __name__ == "__main__":
    sys.exit(main())
