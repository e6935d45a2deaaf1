"""Fleet size: `/route` latency, health-poll CPU and memory with up to 10,000 workers.

    python bench/scale_bench.py [--sizes 10 100 1000 10000] [--duration 8] [--markdown]

Workers are virtual: one upstream process (bench/upstream.py) answers the health check
of every `http://127.0.0.1:PORT/w/{i}`, so the router keeps a real fleet of N ready
workers (static, from its config) that costs one process. For each store (memory, Redis)
and each size it starts one router and measures, with wrk at 8 connections,
`/route` p50/p99 and requests/s (the decision cost; issue #5 wants p99 within 1.2x
across sizes), and the router's RSS. Health polls run every 30 s there, out of the way.
Then, with 1,000 workers polled every second, it reads the router's CPU time from
/proc over a window with no other traffic (target: under 15% of one core).
Traffic stays on 127.0.0.1; every loop is bounded.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import sys
import tempfile
import time
import urllib.request
from datetime import date
from pathlib import Path

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


def config(path: Path, port: int, store: str, redis_port: int, up_port: int, n: int,
           interval_s: float) -> None:
    workers = "".join(f'[[endpoints.workers]]\nurl = "http://127.0.0.1:{up_port}/w/{i}"\n'
                      for i in range(n))
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


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[10, 100, 1000, 10000])
    ap.add_argument("--duration", type=int, default=8, help="seconds of wrk per row")
    ap.add_argument("--poll-workers", type=int, default=1000)
    ap.add_argument("--poll-window", type=float, default=10.0)
    ap.add_argument("--stores", nargs="+", default=["memory", "redis"])
    ap.add_argument("--markdown", action="store_true")
    args = ap.parse_args()
    if shutil.which("wrk") is None:
        print("wrk is required: apt-get install -y wrk", file=sys.stderr)
        return 2
    redis_bin = shutil.which("redis-server")
    stores = [s for s in args.stores if s == "memory" or redis_bin]
    rows, poll = [], {}
    with tempfile.TemporaryDirectory() as tmp_s:
        tmp = Path(tmp_s)
        script = tmp / "route.lua"
        script.write_text(WRK_SCRIPT)
        up_port, redis_port = free_port(), free_port()
        with process([sys.executable, str(ROOT / "bench/upstream.py"), "--port",
                      str(up_port)]), \
             process([redis_bin or "true", "--port", str(redis_port), "--save", "",
                      "--appendonly", "no", "--bind", "127.0.0.1"]):
            wait_http(f"http://127.0.0.1:{up_port}/readyz")
            for store in stores:
                for n in args.sizes:
                    port = free_port()
                    cfg = tmp / f"{store}-{n}.toml"
                    config(cfg, port, store, redis_port, up_port, n, interval_s=30)
                    with process([sys.executable, "-m", "router", "serve", "--config",
                                  str(cfg)]) as router:
                        wait_http(f"http://127.0.0.1:{port}/livez", timeout_s=60)
                        wait_ready(port, n)
                        run_wrk(f"http://127.0.0.1:{port}/route", 2, 8, {0, 1}, script)
                        res = run_wrk(f"http://127.0.0.1:{port}/route", args.duration, 8,
                                      set(range(os.cpu_count() or 1)), script)
                        res.update(store=store, n=n, rss_mb=rss_mb(router.pid))
                        rows.append(res)
                        print(f"{store:6} {n:6} workers: {res['rps']:7.0f} req/s p50 "
                              f"{res['p50_ms']:.2f} ms p99 {res['p99_ms']:.2f} ms RSS "
                              f"{res['rss_mb']:.0f} MB, {res['missing']} without url",
                              file=sys.stderr)
            # health polling cost: N workers at 1 s, no other traffic
            n = args.poll_workers
            port = free_port()
            cfg = tmp / "poll.toml"
            config(cfg, port, "memory", redis_port, up_port, n, interval_s=1.0)
            with process([sys.executable, "-m", "router", "serve", "--config",
                          str(cfg)]) as router:
                wait_http(f"http://127.0.0.1:{port}/livez", timeout_s=60)
                wait_ready(port, n)
                time.sleep(2.0)
                c0, t0 = cpu_s(router.pid), time.monotonic()
                time.sleep(args.poll_window)
                c1, t1 = cpu_s(router.pid), time.monotonic()
                poll = {"n": n, "cpu_pct": 100 * (c1 - c0) / (t1 - t0),
                        "rss_mb": rss_mb(router.pid)}
                print(f"health polling {n} workers at 1 s: {poll['cpu_pct']:.1f}% of a core",
                      file=sys.stderr)
    report(rows, poll, args)
    return 0


def report(rows: list[dict[str, object]], poll: dict[str, float],
           args: argparse.Namespace) -> None:
    print(f"\nscale bench, {date.today()}, {os.cpu_count()} CPUs ({cpu_model()}), python "
          f"{platform.python_version()}; wrk -c 8 -d {args.duration}s POST /route, Ed25519, "
          "virtual workers on one upstream\n")
    print("| store | workers | /route req/s | p50 ms | p99 ms | p99 ÷ smallest fleet's "
          "| router RSS MB |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for store in dict.fromkeys(r["store"] for r in rows):
        mine = [r for r in rows if r["store"] == store]
        base = float(mine[0]["p99_ms"])  # type: ignore[arg-type]
        for r in mine:
            print(f"| {store} | {r['n']} | {r['rps']:.0f} | {r['p50_ms']:.2f} "
                  f"| {r['p99_ms']:.2f} | {float(r['p99_ms']) / base:.2f} "  # type: ignore[arg-type]
                  f"| {r['rss_mb']:.0f} |")
    if poll:
        print(f"\nHealth polling: {poll['n']} workers every 1 s cost the router "
              f"{poll['cpu_pct']:.1f}% of one core (RSS {poll['rss_mb']:.0f} MB).")


if __name__ == "__main__":
    sys.exit(main())
