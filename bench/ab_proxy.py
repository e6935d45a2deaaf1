"""A/B of two router source trees on proxied requests: router CPU per request, side by side.

    python bench/ab_proxy.py --a /path/to/old/checkout [--b .] [--rounds 10] [--duration 5]

Both routers run at once (each imports `router` from its own tree through PYTHONPATH)
in front of one upstream (`bench/upstream.py`). Each round points wrk at A, then B (the
order turns every round), and reads each router's CPU time from /proc/PID/stat before
and after: CPU per request is that difference over the requests wrk counted. On a shared,
noisy machine this is steadier than requests per second; the medians over the rounds are
reported with their range. `--aiohttp` measures `server.fast_proxy = false` instead.
Installs wrk from Debian's packages when missing. Traffic stays on 127.0.0.1.
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.proxy_bench import KEY, WRK_SCRIPT, ensure  # noqa: E402
from bench.route_bench import cpu_model, free_port, process, wait_http  # noqa: E402

_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_s(pid: int) -> float:
    """User + system CPU seconds of process `pid` so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICKS


def wrk_requests(url: str, connections: int, duration: int, script: Path) -> tuple[int, float]:
    """(requests completed, requests/s) of one wrk run."""
    out = subprocess.run(
        ["wrk", "-t", "1", "-c", str(connections), "-d", f"{duration}s", "-s", str(script), url],
        capture_output=True,
        text=True,
        timeout=duration + 30,
        check=True,
    ).stdout
    n = re.search(r"(\d+) requests in", out)
    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    assert n and rps, out
    return int(n.group(1)), float(rps.group(1))


def router_toml(path: Path, port: int, up_port: int, fast: bool, algorithm: str) -> Path:
    path.write_text(f"""
log_level = "warning"
[server]
port = {port}
fast_proxy = {"true" if fast else "false"}
[signing]
algorithm = "{algorithm}"
[[api_keys]]
key = "{KEY}"
[[endpoints]]
name = "bench"
[[endpoints.workers]]
url = "http://127.0.0.1:{up_port}"
""")
    return path


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--a", type=Path, required=True, help="the baseline source tree")
    ap.add_argument("--b", type=Path, default=ROOT, help="the tree to compare (default: this one)")
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--duration", type=int, default=5)
    ap.add_argument("--connections", type=int, default=32)
    ap.add_argument("--aiohttp", action="store_true", help="both with server.fast_proxy = false")
    ap.add_argument(
        "--algorithm",
        choices=["ed25519", "rsa"],
        default="ed25519",
        help="signing.algorithm of both routers (rsa: the default config)",
    )
    args = ap.parse_args()
    ensure("wrk", "wrk")
    trees = {"A": args.a.resolve(), "B": args.b.resolve()}
    with tempfile.TemporaryDirectory() as tmp_s, ExitStack() as stack:
        tmp = Path(tmp_s)
        script = tmp / "post.lua"
        script.write_text(WRK_SCRIPT)
        up_port = free_port()
        env = dict(os.environ)
        stack.enter_context(
            process(
                [sys.executable, str(ROOT / "bench/upstream.py"), "--port", str(up_port)],
                log=tmp / "upstream.log",
                env=env,
            )
        )
        pids, urls = {}, {}
        for name, tree in trees.items():
            port = free_port()
            conf = router_toml(
                tmp / f"{name}.toml", port, up_port, not args.aiohttp, args.algorithm
            )
            proc = stack.enter_context(
                process(
                    [sys.executable, "-m", "router", "serve", "--config", str(conf)],
                    log=tmp / f"{name}.log",
                    env={**env, "PYTHONPATH": str(tree)},
                )
            )
            pids[name], urls[name] = proc.pid, f"http://127.0.0.1:{port}/bench/echo"
            wait_http(f"http://127.0.0.1:{port}/livez")
        wait_http(f"http://127.0.0.1:{up_port}/readyz")
        time.sleep(2.5)  # each router's first health poll marks the upstream ready
        for name in trees:
            wrk_requests(urls[name], args.connections, 2, script)  # warm up
        per_req: dict[str, list[float]] = {n: [] for n in trees}
        rates: dict[str, list[float]] = {n: [] for n in trees}
        for r in range(args.rounds):
            order = list(trees) if r % 2 == 0 else list(reversed(trees))
            for name in order:
                before = cpu_s(pids[name])
                n, rps = wrk_requests(urls[name], args.connections, args.duration, script)
                per_req[name].append((cpu_s(pids[name]) - before) / max(1, n) * 1e6)
                rates[name].append(rps)
            print(
                f"round {r + 1}: "
                + ", ".join(
                    f"{n} {per_req[n][-1]:.1f} µs/req {rates[n][-1]:.0f} req/s" for n in trees
                ),
                file=sys.stderr,
            )
    path = "aiohttp path" if args.aiohttp else "fast path"
    print(
        f"\nA/B of router CPU per proxied request, {date.today()}, {os.cpu_count()} CPUs "
        f"({cpu_model()}), python {platform.python_version()}, {path}, "
        f"signing.algorithm = {args.algorithm}; wrk -t1 "
        f"-c {args.connections}, {args.rounds} rounds of {args.duration} s, order turning\n"
    )
    print("| router | tree | median CPU µs/request | median req/s | range of µs/request |")
    print("|---|---|---:|---:|---:|")
    for name, tree in trees.items():
        xs = per_req[name]
        print(
            f"| {name} | {tree} | {statistics.median(xs):.1f} | "
            f"{statistics.median(rates[name]):.0f} | {min(xs):.1f}-{max(xs):.1f} |"
        )
    a, b = statistics.median(per_req["A"]), statistics.median(per_req["B"])
    print(f"\nB / A CPU per request: {b / a:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
