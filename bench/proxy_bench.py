"""Proxy overhead: one upstream measured directly, through nginx, and through the router.

    python bench/proxy_bench.py [--duration 10] [--connections 32]

In one run, on this machine: requests/s and p50/p99 for a small JSON POST at 32
connections (wrk), p50 at one connection (added latency), and for a 256-chunk SSE stream
the time to first byte and the added delay per chunk (first vs. last 64 chunks, to show
any growth). Then 20 clients hang up mid-stream through the router and the router's log
is checked for tracebacks. Installs nginx-light and wrk from Debian's packages when
missing (apt-get). The same upstream (`bench/upstream.py`) serves every path; nothing is
pinned, so load generator, proxy and upstream share the machine's cores. Traffic stays on
127.0.0.1; every loop is bounded.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from datetime import date
from pathlib import Path

import aiohttp

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.route_bench import cpu_model, free_port, process, wait_http  # noqa: E402

KEY = "bench-key"
WRK_SCRIPT = """
wrk.method = "POST"
wrk.body = '{"inputs": "hello", "parameters": {"max_new_tokens": 1}}'
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer KEY"
function done(summary, latency, requests)
  io.write(string.format("BENCH p50_us=%d p99_us=%d errors=%d\\n",
           latency:percentile(50), latency:percentile(99),
           summary.errors.status + summary.errors.connect + summary.errors.read
           + summary.errors.write + summary.errors.timeout))
end
""".replace("KEY", KEY)

NGINX_CONF = """
worker_processes 1;
pid {tmp}/nginx.pid;
error_log {tmp}/nginx-error.log warn;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  client_body_temp_path {tmp}/nginx-body;
  proxy_temp_path {tmp}/nginx-proxy;
  fastcgi_temp_path {tmp}/nginx-fcgi;
  uwsgi_temp_path {tmp}/nginx-uwsgi;
  scgi_temp_path {tmp}/nginx-scgi;
  upstream up {{ server 127.0.0.1:{up_port}; keepalive 64; }}
  server {{
    listen 127.0.0.1:{port};
    location /bench/ {{
      proxy_pass http://up/;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_buffering off;
    }}
  }}
}}
"""


def ensure(binary: str, package: str) -> str:
    found = shutil.which(binary) or shutil.which(binary, path="/usr/sbin:/usr/bin")
    if found:
        return found
    print(f"installing {package} (apt-get)", file=sys.stderr)
    subprocess.run(
        ["apt-get", "install", "-y", "-q", package],
        check=True,
        env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"},
        stdout=subprocess.DEVNULL,
    )
    found = shutil.which(binary) or shutil.which(binary, path="/usr/sbin:/usr/bin")
    if not found:
        raise SystemExit(f"{binary} not found after installing {package}")
    return found


def wrk(url: str, connections: int, duration: int, script: Path) -> dict[str, float]:
    out = subprocess.run(
        [
            "wrk",
            "-t",
            "2" if connections > 1 else "1",
            "-c",
            str(connections),
            "-d",
            f"{duration}s",
            "-s",
            str(script),
            url,
        ],
        capture_output=True,
        text=True,
        timeout=duration + 30,
        check=True,
    ).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    m = re.search(r"BENCH p50_us=(\d+) p99_us=(\d+) errors=(\d+)", out)
    assert m, out
    return {
        "rps": rps,
        "p50_ms": int(m.group(1)) / 1000,
        "p99_ms": int(m.group(2)) / 1000,
        "errors": int(m.group(3)),
    }


async def stream_stats(url: str, runs: int, chunks: int, interval_ms: float) -> dict[str, float]:
    """Median time to first byte, and mean gap between chunks early vs. late in the stream."""
    ttfb, early, late, total = [], [], [], []
    headers = {"Authorization": f"Bearer {KEY}"}
    async with aiohttp.ClientSession() as s:
        for _ in range(runs):
            t0 = time.perf_counter()
            async with s.post(
                f"{url}?chunks={chunks}&interval_ms={interval_ms}", headers=headers
            ) as resp:
                assert resp.status == 200, await resp.text()
                arrivals = []
                async for line in resp.content:
                    if line.startswith(b"data:"):
                        arrivals.append(time.perf_counter())
            assert len(arrivals) == chunks, len(arrivals)
            ttfb.append(arrivals[0] - t0)
            gaps = [b - a for a, b in itertools.pairwise(arrivals)]
            early.append(statistics.mean(gaps[:64]))
            late.append(statistics.mean(gaps[-64:]))
            total.append(arrivals[-1] - t0)
    return {
        "ttfb_ms": statistics.median(ttfb) * 1000,
        "gap_early_ms": statistics.median(early) * 1000,
        "gap_late_ms": statistics.median(late) * 1000,
        "total_ms": statistics.median(total) * 1000,
    }


async def hang_ups(url: str, n: int) -> None:
    headers = {"Authorization": f"Bearer {KEY}"}
    async with aiohttp.ClientSession() as s:
        for _ in range(n):
            resp = await s.post(f"{url}?chunks=256&interval_ms=5", headers=headers)
            await resp.content.readline()
            resp.close()  # hang up mid-stream
    await asyncio.sleep(0.5)


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--duration", type=int, default=10)
    ap.add_argument("--connections", type=int, default=32)
    ap.add_argument("--stream-runs", type=int, default=10)
    ap.add_argument(
        "--processes",
        type=int,
        default=1,
        help="router processes (serve --processes N); N > 1 runs them on a private redis-server",
    )
    ap.add_argument(
        "--compare-aiohttp",
        action="store_true",
        help="also measure a second router with server.fast_proxy = false "
        "(the aiohttp path), in the same run",
    )
    args = ap.parse_args()
    nginx = ensure("nginx", "nginx-light")
    ensure("wrk", "wrk")
    with tempfile.TemporaryDirectory() as tmp_s, ExitStack() as stack:
        tmp = Path(tmp_s)
        script = tmp / "post.lua"
        script.write_text(WRK_SCRIPT)
        up_port, ngx_port, router_port = free_port(), free_port(), free_port()
        stack.enter_context(
            process([sys.executable, str(ROOT / "bench/upstream.py"), "--port", str(up_port)])
        )
        (tmp / "nginx.conf").write_text(NGINX_CONF.format(tmp=tmp, up_port=up_port, port=ngx_port))
        stack.enter_context(
            process([nginx, "-c", str(tmp / "nginx.conf"), "-p", str(tmp), "-g", "daemon off;"])
        )
        store = ""
        if args.processes > 1:
            from router.signing import write_private_key

            redis_port = free_port()
            stack.enter_context(
                process(
                    [
                        shutil.which("redis-server") or "redis-server",
                        "--port",
                        str(redis_port),
                        "--save",
                        "",
                        "--appendonly",
                        "no",
                        "--bind",
                        "127.0.0.1",
                    ]
                )
            )
            write_private_key(tmp / "k.pem", "ed25519")
            store = (
                f'processes = {args.processes}\n[store]\nbackend = "redis"\n'
                f'redis_url = "redis://127.0.0.1:{redis_port}/0"\n'
                f'[signing]\nkey_files = ["{tmp / "k.pem"}"]\n'
            )

        def router_toml(path: Path, port: int, fast: bool) -> Path:
            path.write_text(f"""
log_level = "info"
[server]
port = {port}
fast_proxy = {"true" if fast else "false"}
{store or "[signing]"}
algorithm = "ed25519"
[[api_keys]]
key = "{KEY}"
[[endpoints]]
name = "bench"
[[endpoints.workers]]
url = "http://127.0.0.1:{up_port}"
""")
            return path

        router_log = tmp / "router.log"
        stack.enter_context(
            process(
                [
                    sys.executable,
                    "-m",
                    "router",
                    "serve",
                    "--config",
                    str(router_toml(tmp / "router.toml", router_port, True)),
                ],
                log=router_log,
            )
        )
        slow_port = free_port()
        if args.compare_aiohttp:
            if args.processes > 1:
                sys.exit("--compare-aiohttp runs with --processes 1 only")
            stack.enter_context(
                process(
                    [
                        sys.executable,
                        "-m",
                        "router",
                        "serve",
                        "--config",
                        str(router_toml(tmp / "router-aiohttp.toml", slow_port, False)),
                    ],
                    log=tmp / "router-aiohttp.log",
                )
            )
            wait_http(f"http://127.0.0.1:{slow_port}/livez")
        wait_http(f"http://127.0.0.1:{up_port}/readyz")
        wait_http(f"http://127.0.0.1:{ngx_port}/bench/readyz")
        wait_http(f"http://127.0.0.1:{router_port}/livez")
        time.sleep(2.5)  # the router's first health poll marks the upstream ready
        paths = {
            "direct": f"http://127.0.0.1:{up_port}",
            "nginx": f"http://127.0.0.1:{ngx_port}/bench",
            "router": f"http://127.0.0.1:{router_port}/bench",
        }
        if args.compare_aiohttp:
            paths["router (aiohttp path)"] = f"http://127.0.0.1:{slow_port}/bench"
        rows: dict[str, dict[str, float]] = {}
        for name, base in paths.items():
            wrk(f"{base}/echo", args.connections, 2, script)  # warm up
            rows[name] = wrk(f"{base}/echo", args.connections, args.duration, script)
            rows[name]["p50_1c_ms"] = wrk(f"{base}/echo", 1, 5, script)["p50_ms"]
            rows[name].update(
                asyncio.run(stream_stats(f"{base}/stream", args.stream_runs, 256, 2.0))
            )
            print(f"{name}: {rows[name]}", file=sys.stderr)
        asyncio.run(hang_ups(f"{paths['router']}/stream", 20))
        log = router_log.read_text(errors="replace")
    report(rows, log, args)
    return 0


def report(rows: dict[str, dict[str, float]], log: str, args: argparse.Namespace) -> None:
    d, n, r = rows["direct"], rows["nginx"], rows["router"]
    print(
        f"\nproxy bench, {date.today()}, {os.cpu_count()} CPUs ({cpu_model()}), python "
        f"{platform.python_version()}; router processes: {args.processes}; "
        f"wrk -c {args.connections} -d {args.duration}s, small "
        f"JSON POST; streams: 256 SSE chunks 2 ms apart, median of {args.stream_runs}\n"
    )
    print(
        "| path | req/s | p50 ms | p99 ms | errors | p50 at 1 conn ms | stream TTFB ms "
        "| chunk gap first 64 ms | chunk gap last 64 ms | stream total ms |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name, x in rows.items():
        print(
            f"| {name} | {x['rps']:.0f} | {x['p50_ms']:.2f} | {x['p99_ms']:.2f} "
            f"| {x['errors']:.0f} | {x['p50_1c_ms']:.3f} | {x['ttfb_ms']:.2f} "
            f"| {x['gap_early_ms']:.3f} | {x['gap_late_ms']:.3f} | {x['total_ms']:.1f} |"
        )
    print(
        f"\nrouter throughput / nginx: {r['rps'] / n['rps']:.2f}x "
        f"(nginx / direct {n['rps'] / d['rps']:.2f}x)"
    )
    print(
        f"router added p50 at 1 connection: {(r['p50_1c_ms'] - d['p50_1c_ms']) * 1000:.0f} µs"
        f" (nginx: {(n['p50_1c_ms'] - d['p50_1c_ms']) * 1000:.0f} µs)"
    )
    print(
        f"router added stream TTFB: {r['ttfb_ms'] - d['ttfb_ms']:.2f} ms; added per chunk "
        f"{(r['total_ms'] - d['total_ms']) / 256 * 1000:.1f} µs; gap growth first->last 64: "
        f"{(r['gap_late_ms'] - r['gap_early_ms']) * 1000:.0f} µs"
    )
    slow = rows.get("router (aiohttp path)")
    if slow is not None:
        print(
            f"fast path / aiohttp path: {r['rps'] / slow['rps']:.2f}x the requests/s; "
            f"added p50 at 1 connection {(r['p50_1c_ms'] - d['p50_1c_ms']) * 1000:.0f} vs "
            f"{(slow['p50_1c_ms'] - d['p50_1c_ms']) * 1000:.0f} µs"
        )
    tracebacks = log.count("Traceback")
    print(
        f"20 client hang-ups mid-stream: {tracebacks} tracebacks in the router log, "
        f"{sum('went away' in ln for ln in log.splitlines())} log lines about them"
    )


if __name__ == "__main__":
    sys.exit(main())
