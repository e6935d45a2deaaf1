"""`/route` throughput of one router process vs. the machine's raw signing rate.

    python bench/route_bench.py [--duration 10] [--connections 32] [--markdown]

For RSA-2048 and Ed25519, with the memory store and with Redis, it starts one router
process pinned to CPU 0 (the load generator, worker and Redis share the other CPUs),
drives `POST /route` with wrk for `--duration` seconds, and prints requests/s and latency
next to the single-core signing rate measured in the same run on the same CPU (the
ceiling: a ticket needs one signature). Needs `wrk` (apt-get install wrk) and, for the
Redis rows, `redis-server`. Traffic stays on 127.0.0.1; every loop is bounded in time.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager, nullcontext
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from router.signing import KeyRing, canonical, write_private_key  # noqa: E402

API_KEY = "bench-key"
BODY = json.dumps({"endpoint": "bench", "api_key": API_KEY, "cost": 100})
WRK_SCRIPT = """
wrk.method = "POST"
wrk.body = '%s'
wrk.headers["Content-Type"] = "application/json"
local threads = {}
function setup(thread) table.insert(threads, thread) end
function init(args) missing = 0 end
function response(status, headers, body)
  if status ~= 200 or not string.find(body, '"url"', 1, true) then missing = missing + 1 end
end
function done(summary, latency, requests)
  local m = 0
  for _, t in ipairs(threads) do m = m + t:get("missing") end
  io.write(string.format("BENCH missing=%%d p50_us=%%d p99_us=%%d\\n", m,
           latency:percentile(50), latency:percentile(99)))
end
""".replace("%%", "%").replace("'%s'", "'" + BODY + "'")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def signing_rate(algorithm: str, seconds: float) -> float:
    """Tickets signed per second on one core (this process, pinned like the router)."""
    ring = KeyRing.ephemeral(algorithm)  # type: ignore[arg-type]
    ticket = {
        "cost": 100.0,
        "endpoint": "bench",
        "expires_at": time.time() + 60,
        "key_id": ring.kid,
        "reqnum": 1763800000000000,
        "request_idx": 1,
        "url": "http://127.0.0.1:3000",
    }
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        for _ in range(50):
            ticket["reqnum"] += 1
            ring.signer.sign(canonical(ticket))
        n += 50
    return n / (time.perf_counter() - start)


def wait_http(
    url: str, timeout_s: float = 20.0, want: str | None = None, data: bytes | None = None
) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(urllib.request.Request(url, data=data), timeout=1) as resp:
                body = resp.read().decode()
                if resp.status == 200 and (want is None or want in body):
                    return
        except OSError:
            pass
        time.sleep(0.1)
    raise TimeoutError(f"{url} not ready after {timeout_s}s")


@contextmanager
def process(
    argv: list[str],
    cpus: set[int] | None = None,
    log: Path | None = None,
    env: dict[str, str] | None = None,
) -> Iterator[subprocess.Popen[bytes]]:
    """Run `argv` (on `cpus`, output to `log`, in `env`) for the block; stop it afterwards."""
    with open(log, "wb") if log else nullcontext(subprocess.DEVNULL) as out:
        proc = subprocess.Popen(
            argv,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            preexec_fn=(lambda: os.sched_setaffinity(0, cpus)) if cpus else None,
        )
        try:
            yield proc
        finally:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def run_wrk(
    url: str, duration: int, connections: int, cpus: set[int], script: Path
) -> dict[str, float]:
    out = subprocess.run(
        [
            "taskset",
            "-c",
            ",".join(map(str, sorted(cpus))),
            "wrk",
            "-t",
            "2",
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
    m = re.search(r"BENCH missing=(\d+) p50_us=(\d+) p99_us=(\d+)", out)
    assert m, out
    errors = re.search(r"Socket errors: (.*)", out)
    return {
        "rps": rps,
        "missing": int(m.group(1)),
        "p50_ms": int(m.group(2)) / 1000,
        "p99_ms": int(m.group(3)) / 1000,
        "socket_errors": errors.group(1) if errors else "",
    }


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--duration", type=int, default=10, help="seconds of load per row")
    ap.add_argument("--connections", type=int, default=32)
    ap.add_argument(
        "--sign-seconds",
        type=float,
        default=3.0,
        help="seconds spent measuring the signing rate before each row",
    )
    ap.add_argument("--markdown", action="store_true", help="print a RESULTS.md table")
    ap.add_argument(
        "--router-cpus",
        default="0",
        metavar="LIST",
        help="CPUs the router may run on, e.g. 0 or 0,1 (default 0); wrk, the "
        "worker and Redis run on the others, or on all when none is left",
    )
    ap.add_argument(
        "--sign-threads",
        type=int,
        default=None,
        metavar="N",
        help="signing.threads for the router (default: its auto rule)",
    )
    ap.add_argument(
        "--only", choices=("rsa", "ed25519"), default=None, help="run one algorithm's rows"
    )
    ap.add_argument(
        "--processes",
        type=int,
        default=1,
        help="router processes (serve --processes N); N > 1 runs the Redis "
        "rows only (several processes need a shared store)",
    )
    ap.add_argument(
        "--fast-proxy",
        choices=("on", "off"),
        default="on",
        help="server.fast_proxy: /route on router/front.py's fast path (on) or "
        "through aiohttp (off)",
    )
    args = ap.parse_args()
    if shutil.which("wrk") is None:
        print("wrk is required: apt-get install -y wrk", file=sys.stderr)
        return 2
    ncpu = os.cpu_count() or 1
    router_cpus = {int(c) for c in args.router_cpus.split(",")}
    other_cpus = set(range(ncpu)) - router_cpus or set(range(ncpu))
    rates: dict[str, list[float]] = {"rsa": [], "ed25519": []}

    redis_bin = shutil.which("redis-server")
    rows = []
    with tempfile.TemporaryDirectory() as tmp_s:
        tmp = Path(tmp_s)
        script = tmp / "route.lua"
        script.write_text(WRK_SCRIPT)
        worker_port = free_port()
        worker = [
            sys.executable,
            "-m",
            "workers",
            "--backend",
            "synthetic",
            "--port",
            str(worker_port),
            "--endpoint",
            "bench",
            "--no-verify",
            "--log-level",
            "warning",
        ]
        redis_port = free_port()
        with ExitStack() as stack:
            stack.enter_context(process(worker, other_cpus))
            if redis_bin:
                stack.enter_context(
                    process(
                        [
                            redis_bin,
                            "--port",
                            str(redis_port),
                            "--save",
                            "",
                            "--appendonly",
                            "no",
                            "--bind",
                            "127.0.0.1",
                        ],
                        other_cpus,
                    )
                )
            else:
                print("redis-server not found: skipping the Redis rows", file=sys.stderr)
            wait_http(f"http://127.0.0.1:{worker_port}/livez")
            stores = ("memory", "redis") if redis_bin else ("memory",)
            if args.processes > 1:
                stores = ("redis",)
            for store in stores:
                for alg in (args.only,) if args.only else ("rsa", "ed25519"):
                    # The ceiling is measured on the router's CPU right before each row:
                    # this shared machine drifts, so only adjacent figures compare well.
                    os.sched_setaffinity(0, {min(router_cpus)})
                    rate = signing_rate(alg, args.sign_seconds)
                    os.sched_setaffinity(0, set(range(ncpu)))
                    rates[alg].append(rate)
                    rows.append(
                        one_row(
                            tmp,
                            alg,
                            store,
                            worker_port,
                            redis_port,
                            args,
                            router_cpus,
                            other_cpus,
                            script,
                            rate,
                        )
                    )

    print_table(rows, rates, args)
    return 0


def one_row(
    tmp: Path,
    alg: str,
    store: str,
    worker_port: int,
    redis_port: int,
    args: argparse.Namespace,
    router_cpus: set[int],
    other_cpus: set[int],
    script: Path,
    sign_rate: float,
) -> dict[str, object]:
    key = tmp / f"{alg}-{store}.pem"
    write_private_key(key, alg)  # type: ignore[arg-type]
    port = free_port()
    cfg = tmp / f"{alg}-{store}.toml"
    cfg.write_text(f"""
log_level = "warning"
[server]
port = {port}
processes = {args.processes if store == "redis" else 1}
fast_proxy = {"true" if args.fast_proxy == "on" else "false"}
[store]
backend = "{store}"
redis_url = "redis://127.0.0.1:{redis_port}/0"
key_prefix = "bench{alg}:"
[signing]
key_files = ["{key}"]
[[api_keys]]
key = "{API_KEY}"
[[endpoints]]
name = "bench"
[[endpoints.workers]]
url = "http://127.0.0.1:{worker_port}"
perf = 1000
""")
    argv = [sys.executable, "-m", "router", "serve", "--config", str(cfg)]
    if args.sign_threads is not None:
        os.environ["ROUTER_SIGNING_THREADS"] = str(args.sign_threads)
    with process(argv, router_cpus):
        wait_http(f"http://127.0.0.1:{port}/route", want='"url"', data=BODY.encode())
        run_wrk(f"http://127.0.0.1:{port}/route", 2, args.connections, other_cpus, script)
        res = run_wrk(
            f"http://127.0.0.1:{port}/route", args.duration, args.connections, other_cpus, script
        )
    res.update(algorithm=alg, store=store, sign_rate=sign_rate, ratio=res["rps"] / sign_rate)
    print(
        f"{alg:8} {store:7} {res['rps']:8.0f} req/s  p50 {res['p50_ms']:.2f} ms  "
        f"p99 {res['p99_ms']:.2f} ms  ({res['ratio']:.0%} of signing rate, "
        f"{res['missing']} answers without url)",
        file=sys.stderr,
    )
    return res


def print_table(
    rows: list[dict[str, object]], rates: dict[str, list[float]], args: argparse.Namespace
) -> None:
    print(
        f"\n/route bench, {date.today()}, {os.cpu_count()} CPUs ({cpu_model()}), "
        f"python {platform.python_version()}, wrk -c {args.connections} "
        f"-d {args.duration}s; {args.processes} router process(es) on CPU(s) "
        f"{args.router_cpus}, signing.threads "
        f"{'auto' if args.sign_threads is None else args.sign_threads}, "
        f"fast_proxy {args.fast_proxy}"
    )
    for alg, label in (("rsa", "RSA-2048"), ("ed25519", "Ed25519")):
        print(
            f"single-core signing rate {label}: "
            + ", ".join(f"{r:.0f}/s" for r in rates[alg])
            + " (measured before each row)"
        )
    print()
    print(
        "| algorithm | store | /route req/s | p50 ms | p99 ms | signing rate /s "
        "| /route ÷ signing | answers without url |"
    )
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['algorithm']} | {r['store']} | {r['rps']:.0f} | {r['p50_ms']:.2f} "
            f"| {r['p99_ms']:.2f} | {r['sign_rate']:.0f} | {r['ratio']:.0%} "
            f"| {r['missing']} |"
        )


if __name__ == "__main__":
    sys.exit(main())
