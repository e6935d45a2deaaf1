"""How proxied throughput and CPU per request grow with `serve --processes N`, and Redis's share.

    python bench/processes_bench.py [--processes 1 2] [--rounds 5] [--duration 5]

Starts one upstream (`bench/fast_upstream.py`) and, for each N, one router with
`serve --processes N` on the Redis store, each with a redis-server of its own, so that
INFO commandstats and the redis-server's CPU time count that router's calls only; plus
one single-process router on the memory store for reference. Ed25519 tickets
(`--algorithm`), the fast path. In interleaved rounds (the order turning), wrk (1 thread,
`--connections`) drives `POST /v1/chat/completions` at each router, and the figures over
the run are: requests/s, p99, the CPU time of the router's process tree and of its
redis-server over the requests served (/proc), and the Redis commands per proxied
request by INFO commandstats deltas, less what the same router calls while idle (its
snapshot refresh and health writes, measured once over `--idle` seconds). Then
redis-benchmark measures this machine's single-threaded Redis rate for plain commands.
The model for larger machines in bench/RESULTS.md is built from these figures.
"""

from __future__ import annotations

import argparse
import functools
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path

import redis

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.peer_bench import (  # noqa: E402
    KEY,
    WRK_SCRIPT,
    apt_binary,
    cpu_times,
    machine_load,
    tree_cpu_s,
    wait_ready,
    wrk,
)
from bench.route_bench import cpu_model, free_port, process  # noqa: E402

ROUTER_CONF = """
log_level = "warning"
[server]
port = {port}
{processes}
{store}
[signing]
algorithm = "{algorithm}"
{key_files}
[[api_keys]]
key = "{key}"
[[endpoints]]
name = "bench"
[[endpoints.workers]]
url = "http://127.0.0.1:{up_port}"
"""


@dataclass
class Config:
    """One router under test: its name, processes, and its redis-server's port (or None)."""

    name: str
    processes: int
    redis_port: int | None
    port: int = 0
    pid: int = 0
    redis_pid: int = 0
    idle_calls_per_s: dict[str, float] = field(default_factory=dict)
    rps: list[float] = field(default_factory=list)
    p99_ms: list[float] = field(default_factory=list)
    router_us: list[float] = field(default_factory=list)
    redis_us: list[float] = field(default_factory=list)
    evalsha_per_req: list[float] = field(default_factory=list)
    usec_per_evalsha: list[float] = field(default_factory=list)
    script_us: list[float] = field(default_factory=list)  # EVALSHA time in Redis per request
    errors: int = 0
    # by MONITOR, once: (origin, command) -> per proxied request; origin "client" or "lua"
    monitored: dict[tuple[str, str], float] = field(default_factory=dict)


@functools.cache
def _client(port: int) -> redis.Redis:
    # one connection per server, kept: a new one would add its own CLIENT commands
    return redis.Redis(port=port)


def commandstats(port: int) -> dict[str, tuple[int, int]]:
    """command -> (calls, usec inside Redis) so far."""
    info = _client(port).info("commandstats")
    return {k.removeprefix("cmdstat_"): (v["calls"], v["usec"]) for k, v in info.items()}


def delta(
    after: dict[str, tuple[int, int]], before: dict[str, tuple[int, int]]
) -> dict[str, tuple[int, int]]:
    """Per-command (calls, usec) between two commandstats, less the reading's own INFO."""
    out = {}
    for cmd, (calls, usec) in after.items():
        c0, u0 = before.get(cmd, (0, 0))
        if cmd == "info":
            calls -= 1  # the "before" reading itself
        if calls - c0 > 0:
            out[cmd] = (calls - c0, usec - u0)
    return out


@contextmanager
def redis_server(tmp: Path, port: int) -> Iterator[subprocess.Popen[bytes]]:
    argv = [
        shutil.which("redis-server") or "redis-server",
        "--port",
        str(port),
        "--bind",
        "127.0.0.1",
        "--save",
        "",
        "--appendonly",
        "no",
    ]
    with process(argv, log=tmp / f"redis-{port}.log") as proc:
        deadline = time.monotonic() + 10
        while True:
            try:
                redis.Redis(port=port).ping()
                break
            except redis.ConnectionError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        yield proc


def one_run(c: Config, args: argparse.Namespace, script: Path) -> None:
    url = f"http://127.0.0.1:{c.port}/v1/chat/completions"
    cpu0 = tree_cpu_s(c.pid)
    rcpu0 = tree_cpu_s(c.redis_pid) if c.redis_port else 0.0
    stats0 = commandstats(c.redis_port) if c.redis_port else {}
    t0 = time.monotonic()
    res = wrk(url, args.connections, args.duration, script)
    elapsed = time.monotonic() - t0
    n = max(1, res["requests"])
    c.router_us.append((tree_cpu_s(c.pid) - cpu0) / n * 1e6)
    c.rps.append(res["rps"])
    c.p99_ms.append(res["p99_ms"])
    c.errors += int(res["errors"])
    if c.redis_port:
        c.redis_us.append((tree_cpu_s(c.redis_pid) - rcpu0) / n * 1e6)
        # EVALSHA's time inside Redis includes the commands its script runs, which
        # commandstats counts again under their own names: only EVALSHA's is summed
        calls, usec = delta(commandstats(c.redis_port), stats0).get("evalsha", (0, 0))
        idle = c.idle_calls_per_s.get("evalsha", 0.0) * elapsed
        c.evalsha_per_req.append(max(0.0, calls - idle) / n)
        c.usec_per_evalsha.append(usec / max(1, calls))
        c.script_us.append(usec / n)


def idle_calls(c: Config, seconds: float) -> dict[str, float]:
    """Commands per second this router sends to its Redis with no traffic."""
    assert c.redis_port is not None
    before = commandstats(c.redis_port)
    time.sleep(seconds)
    return {
        k: calls / seconds for k, (calls, _) in delta(commandstats(c.redis_port), before).items()
    }


_MONITOR_RE = re.compile(r'^[\d.]+ \[\d+ ([^\]]+)\] "([^"]+)"')


def monitored(port: int, seconds: float, load: Callable[[], int]) -> Counter[tuple[str, str]]:
    """(origin, COMMAND) counts that redis-cli MONITOR saw while `load()` ran.

    Origin is "lua" for a command a script ran and "client" for one sent over the
    network: a round trip. `load()` returns how many requests it made (0 for none).
    """
    with tempfile.TemporaryFile("w+") as out:
        mon = subprocess.Popen(
            [shutil.which("redis-cli") or "redis-cli", "-p", str(port), "monitor"],
            stdout=out,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        try:
            time.sleep(0.3)  # MONITOR is on before the first request
            load()
            time.sleep(0.3)
        finally:
            mon.terminate()
            mon.wait(10)
        out.seek(0)
        return count_monitor(out)


def count_monitor(lines: Iterable[str]) -> Counter[tuple[str, str]]:
    """(origin, COMMAND) counts of MONITOR lines: "lua" from a script, else "client"."""
    counts: Counter[tuple[str, str]] = Counter()
    for line in lines:
        m = _MONITOR_RE.match(line)
        if m:
            counts["lua" if m.group(1) == "lua" else "client", m.group(2).upper()] += 1
    return counts


def monitor_per_request(
    c: Config, args: argparse.Namespace, script: Path
) -> dict[tuple[str, str], float]:
    """Commands per proxied request by origin: a loaded window less an idle one as long."""
    assert c.redis_port is not None
    url = f"http://127.0.0.1:{c.port}/v1/chat/completions"
    served = [0]

    def load() -> int:
        served[0] = int(wrk(url, args.connections, args.monitor, script)["requests"])
        return served[0]

    busy = monitored(c.redis_port, args.monitor, load)
    idle = monitored(c.redis_port, args.monitor, lambda: time.sleep(args.monitor) or 0)
    return {k: max(0, v - idle.get(k, 0)) / max(1, served[0]) for k, v in busy.items()}


def redis_benchmark(tmp: Path) -> dict[str, float]:
    """Requests/s of plain commands on one redis-server, 32 clients, no pipelining."""
    port = free_port()
    with redis_server(tmp, port):
        out = subprocess.run(
            [
                shutil.which("redis-benchmark") or "redis-benchmark",
                "-p",
                str(port),
                "-q",
                "-n",
                "200000",
                "-c",
                "32",
                "-t",
                "ping_mbulk,set,get,incr",
            ],
            capture_output=True,
            text=True,
            timeout=300,
            check=True,
        ).stdout
    rates = {}
    for line in out.replace("\r", "\n").splitlines():
        m = re.match(r"([A-Z_]+): ([\d.]+) requests per second", line.strip())
        if m:
            rates[m.group(1)] = float(m.group(2))
    return rates


def _med(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def report(configs: list[Config], bench: dict[str, float], args: argparse.Namespace) -> None:
    print(
        "| router | req/s | p99 ms | router CPU µs/request | redis-server CPU µs/request "
        "| EVALSHA/request | µs inside Redis per EVALSHA | µs inside Redis/request | errors |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for c in configs:
        redis_cols = (
            f"{_med(c.redis_us):.1f} | {_med(c.evalsha_per_req):.3f} | "
            f"{_med(c.usec_per_evalsha):.1f} | {_med(c.script_us):.1f}"
            if c.redis_port
            else "- | - | - | -"
        )
        print(
            f"| {c.name} | {_med(c.rps):.0f} | {_med(c.p99_ms):.1f} | {_med(c.router_us):.0f} | "
            f"{redis_cols} | {c.errors} |"
        )
    print()
    for c in configs:
        if not c.redis_port:
            continue
        idle = ", ".join(f"{k} {v:.1f}/s" for k, v in sorted(c.idle_calls_per_s.items()))
        print(f"{c.name}, idle (commandstats, scripts' commands included): {idle or 'none'}")
        if c.monitored:
            for origin, what in (("client", "round trips"), ("lua", "run inside scripts")):
                got = sorted(
                    ((cmd, v) for (o, cmd), v in c.monitored.items() if o == origin and v > 0),
                    key=lambda kv: -kv[1],
                )
                total = sum(v for _, v in got)
                print(
                    f"  MONITOR, per proxied request, {what}: {total:.3f} ("
                    + ", ".join(f"{cmd} {v:.3f}" for cmd, v in got if v >= 0.0005)
                    + ")"
                )
    if bench:
        print(
            "redis-benchmark (-c 32, no pipelining): "
            + ", ".join(f"{k} {v:,.0f}/s" for k, v in bench.items())
        )
    model(configs)


def model(configs: list[Config], cores: tuple[int, ...] = (8, 16, 32, 64)) -> None:
    """Proxied requests/s on bigger machines, from the largest N measured here."""
    redis_rows = [c for c in configs if c.redis_port and c.router_us and c.redis_us]
    if not redis_rows:
        return
    c = max(redis_rows, key=lambda c: c.processes)
    router_us, redis_us = _med(c.router_us), _med(c.redis_us)
    ceiling = 1e6 / redis_us
    print(
        f"\nmodel from '{c.name}': {router_us:.0f} µs of router CPU and {redis_us:.1f} µs of "
        f"redis-server CPU per proxied request ({_med(c.script_us):.1f} µs of it running the "
        f"scripts); one single-threaded Redis: {ceiling:,.0f} req/s at most by its CPU "
        f"({1e6 / _med(c.script_us):,.0f} by script time alone); the upstream and the "
        "clients on other machines; one core kept for Redis\n"
    )
    print("| cores | router processes | router-bound req/s | Redis core busy | req/s |")
    print("|---:|---:|---:|---:|---:|")
    for k in cores:
        bound = (k - 1) * 1e6 / router_us
        print(
            f"| {k} | {k - 1} | {bound:,.0f} | {min(1.0, bound / ceiling):.0%} | "
            f"{min(bound, ceiling):,.0f} |"
        )


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--processes", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--duration", type=float, default=5)
    ap.add_argument("--connections", type=int, default=32)
    ap.add_argument("--idle", type=float, default=3, help="seconds of idle commandstats")
    ap.add_argument(
        "--monitor", type=float, default=2, help="seconds of MONITOR per router (0: none)"
    )
    ap.add_argument("--algorithm", choices=["ed25519", "rsa"], default="ed25519")
    ap.add_argument("--no-memory", action="store_true", help="skip the memory-store reference")
    args = ap.parse_args()
    if shutil.which("wrk") is None and apt_binary("wrk", "wrk")[0] is None:
        raise SystemExit("wrk is needed (apt-get install wrk)")
    if shutil.which("redis-server") is None:
        raise SystemExit("redis-server is needed (apt-get install redis-server)")
    from router.signing import write_private_key

    load_before, ticks_before, started_at = os.getloadavg(), cpu_times(), time.time()
    configs = [] if args.no_memory else [Config("memory store", 1, None)]
    configs += [Config(f"redis store, {n} process(es)", n, free_port()) for n in args.processes]
    with tempfile.TemporaryDirectory() as tmp_s, ExitStack() as stack:
        tmp = Path(tmp_s)
        script = tmp / "post.lua"
        script.write_text(WRK_SCRIPT)
        write_private_key(tmp / "k.pem", args.algorithm)
        up_port = free_port()
        up = stack.enter_context(
            process(
                [sys.executable, str(ROOT / "bench/fast_upstream.py"), "--port", str(up_port)],
                log=tmp / "upstream.log",
            )
        )
        wait_ready(up_port, up, 20)
        procs = {}
        for c in configs:
            c.port = free_port()
            if c.redis_port:
                c.redis_pid = stack.enter_context(redis_server(tmp, c.redis_port)).pid
            conf = tmp / f"router-{c.port}.toml"
            conf.write_text(
                ROUTER_CONF.format(
                    port=c.port,
                    processes=f"processes = {c.processes}",
                    store=(
                        f'[store]\nbackend = "redis"\n'
                        f'redis_url = "redis://127.0.0.1:{c.redis_port}/0"'
                        if c.redis_port
                        else ""
                    ),
                    algorithm=args.algorithm,
                    key_files=f'key_files = ["{tmp / "k.pem"}"]',
                    key=KEY,
                    up_port=up_port,
                )
            )
            procs[c.name] = stack.enter_context(
                process(
                    [sys.executable, "-m", "router", "serve", "--config", str(conf)],
                    log=tmp / f"router-{c.port}.log",
                )
            )
            c.pid = procs[c.name].pid
        for c in configs:
            wait_ready(c.port, procs[c.name])
            wrk(f"http://127.0.0.1:{c.port}/v1/chat/completions", args.connections, 1, script)
        for c in configs:
            if c.redis_port:
                c.idle_calls_per_s = idle_calls(c, args.idle)
        for r in range(args.rounds):
            k = r % len(configs)
            for c in configs[k:] + configs[:k]:
                one_run(c, args, script)
                print(
                    f"round {r + 1} {c.name}: {c.rps[-1]:.0f} req/s, router {c.router_us[-1]:.0f}"
                    f" µs/req" + (f", redis {c.redis_us[-1]:.1f} µs/req" if c.redis_us else ""),
                    file=sys.stderr,
                )
        if args.monitor > 0:
            for c in configs:
                if c.redis_port:
                    c.monitored = monitor_per_request(c, args, script)
        bench = redis_benchmark(tmp)
    load_after = os.getloadavg()
    print(
        f"\nprocesses bench, {date.today()}, {os.cpu_count()} CPUs ({cpu_model()}), python "
        f"{platform.python_version()}, {args.algorithm} tickets, fast path; {args.rounds} "
        f"interleaved rounds, wrk -t1 -c{args.connections} -d{args.duration:g}s; took "
        f"{time.time() - started_at:.0f} s; load average before {load_before[0]:.2f} "
        f"{load_before[1]:.2f} {load_before[2]:.2f}, after {load_after[0]:.2f} "
        f"{load_after[1]:.2f} {load_after[2]:.2f}; {machine_load(ticks_before, cpu_times())}\n"
    )
    report(configs, bench, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
