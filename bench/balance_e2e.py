"""End-to-end balance benchmark: the router's policies on real processes.

    python bench/balance_e2e.py [--speeds 1 2 3 4] [--base-tps 25] [--mean-cost 24]
                                [--rho 0.8 0.9] [--duration-s 30] [--drain-s 20]
                                [--proxy-poll-s 1] [--ticket-poll-s 0.25 1 5]
                                [--ticket-rho 0.9] [--seed 1] [--markdown] [--json FILE]

What bench/balance_sim.py models, measured on processes talking HTTP on 127.0.0.1:
  * Fleet: one synthetic worker per `--speeds` entry; a 1x worker generates `--base-tps`
    tokens/s. Each worker runs with tokens_per_s = capacity = perf = speed x base, so it
    is a processor-sharing server (n streams in flight each get capacity / n) and a
    request's service time alone is its cost / perf. Cost units are tokens, and a
    request's cost is exactly the tokens it asks for (X-Cost / the ticket's cost).
  * Capacity is measured, not assumed: before the runs, each worker gets a batch of
    concurrent requests drawn from the workload (tickets signed here with the router's
    key), and the cost it clears per second at saturation (timer and HTTP overhead
    included; the first token comes at once, so n tokens take (n - 1) / perf) sets the
    arrival rates.
  * Load: open-loop Poisson arrivals at `rho` x measured fleet capacity; costs lognormal
    (sigma 1) with mean `--mean-cost` tokens, rounded to whole tokens; one seed, so
    every policy sees the same sequence. Latency is from the *scheduled* arrival to the
    end of the response (no coordinated omission); requests still running
    `--drain-s` after the last arrival are cancelled and counted at their age then
    (a lower bound, reported as "cut").
  * Proxy mode: the client sends to the router (`/demo/generate`), which learns each
    completion when the response ends. One router process (memory store) per run.
  * Ticket mode (least_work): `POST /route`, then the client calls the worker itself;
    the router learns completions only from `/readyz` polls every `--ticket-poll-s`.

The machine matters: see bench/BALANCE.md for recorded figures and their caveats.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import platform
import random
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import aiohttp

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.balance_sim import _table  # noqa: E402  (one table renderer for both benches)
from router.signing import KeyRing, write_private_key  # noqa: E402
from router.state.base import reqnum_floor  # noqa: E402

POLICIES = ("round_robin", "random", "least_requests", "least_work", "p2c")
ENDPOINT = "demo"
API_KEY = "dev-key"
ADMIN_KEY = "admin-key"
SIGMA = 1.0


# --- processes -----------------------------------------------------------------------------


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Proc:
    """A child process in its own process group, output to a log file."""

    def __init__(self, name: str, argv: list[str], log_dir: Path) -> None:
        self.name = name
        self.log_path = log_dir / f"{name}.log"
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                argv,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=ROOT,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
                start_new_session=True,
            )

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def tail(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-2000:]
        except OSError:
            return ""


async def wait_http(
    session: aiohttp.ClientSession, url: str, proc: Proc, timeout_s: float = 30.0, **kw: Any
) -> Any:
    """GET `url` until it answers 200 JSON; fail early if `proc` died."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.proc.poll() is not None:
            raise RuntimeError(f"{proc.name} exited:\n{proc.tail()}")
        try:
            async with session.get(url, timeout=aiohttp.ClientTimeout(total=2), **kw) as r:
                if r.status == 200:
                    return await r.json()
        except (aiohttp.ClientError, TimeoutError):
            pass
        await asyncio.sleep(0.1)
    raise TimeoutError(f"{url} not ready in {timeout_s}s:\n{proc.tail()}")


@dataclass(frozen=True, slots=True)
class WorkerSpec:
    url: str
    perf: float  # tokens/s, as configured


def start_workers(
    speeds: Sequence[float], base_tps: float, pubkey: Path, log_dir: Path
) -> tuple[list[Proc], list[WorkerSpec]]:
    procs, specs = [], []
    for i, s in enumerate(speeds):
        port, perf = free_port(), s * base_tps
        url = f"http://127.0.0.1:{port}"
        procs.append(
            Proc(
                f"worker-{i}",
                [
                    sys.executable,
                    "-m",
                    "workers",
                    "--backend",
                    "synthetic",
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(port),
                    "--public-url",
                    url,
                    "--endpoint",
                    ENDPOINT,
                    "--pubkey-file",
                    str(pubkey),
                    "--perf",
                    f"{perf:g}",
                    "--capacity",
                    f"{perf:g}",
                    "--tokens-per-s",
                    f"{perf:g}",
                    "--ttft-ms",
                    "0",
                    "--max-queue-time-s",
                    "1e6",
                    "--grace-s",
                    "0",
                    "--log-level",
                    "warning",
                ],
                log_dir,
            )
        )
        specs.append(WorkerSpec(url, perf))
    return procs, specs


def router_config(
    path: Path, *, port: int, key: Path, policy: str, poll_s: float, workers: Sequence[WorkerSpec]
) -> Path:
    static = "\n".join(
        f'[[endpoints.workers]]\nurl = "{w.url}"\nperf = {w.perf:g}\n' for w in workers
    )
    path.write_text(f"""
log_level = "warning"
[server]
port = {port}
shutdown_grace_s = 1
[store]
backend = "memory"
[signing]
algorithm = "ed25519"
key_files = ["{key}"]
ticket_ttl_s = 60
[[api_keys]]
key = "{API_KEY}"
endpoints = ["{ENDPOINT}"]
[[api_keys]]
key = "{ADMIN_KEY}"
admin = true
[[endpoints]]
name = "{ENDPOINT}"
policy = "{policy}"
default_cost = 24
[endpoints.health]
interval_s = {poll_s}
timeout_s = 2
unhealthy_after = 5
healthy_after = 1
{static}
""")
    return path


# --- workload ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Workload:
    gaps: list[float]  # unit-rate exponential gaps
    costs: list[int]  # tokens

    def arrivals(self, rate: float, duration_s: float) -> list[tuple[float, int]]:
        """(time, cost) of the requests arriving within `duration_s` at `rate` per second."""
        t, out = 0.0, []
        for g, c in zip(self.gaps, self.costs, strict=True):
            t += g / rate
            if t > duration_s:
                break
            out.append((t, c))
        return out


def workload(seed: int, n: int, mean_cost: float) -> Workload:
    rng = random.Random(f"balance-e2e-{seed}")
    mu = math.log(mean_cost) - SIGMA * SIGMA / 2
    gaps = [rng.expovariate(1.0) for _ in range(n)]
    costs = [max(1, round(rng.lognormvariate(mu, SIGMA))) for _ in range(n)]
    return Workload(gaps, costs)


def payload(cost: int) -> dict[str, Any]:
    # No prompt: the body's own cost (router/cost.py) is then exactly the tokens asked
    # for, the cost each ticket is bought at, so the worker's cost floor never trips.
    return {"inputs": "", "parameters": {"max_new_tokens": cost}}


# --- measuring -----------------------------------------------------------------------------


async def calibrate(
    session: aiohttp.ClientSession,
    ring: KeyRing,
    workers: list[WorkerSpec],
    wl: Workload,
    seconds: float,
) -> list[float]:
    """Each worker's cost units/s at saturation, all workers at once.

    Each gets, all at once, a batch of requests drawn from the workload's costs worth
    about `seconds` of its configured perf; a processor-sharing worker never idles until
    the last one ends, so total cost / time to finish is its capacity for this workload
    (timer and HTTP overhead, and the first token's free start, included).
    """
    now = time.time()
    floor = reqnum_floor(now - 3600)  # below any router's counter, which starts at now
    rng = random.Random("calibrate")

    async def one(w: WorkerSpec, reqnum: int, n: int) -> None:
        ticket = {
            "cost": n,
            "endpoint": ENDPOINT,
            "expires_at": now + 600,
            "key_id": ring.kid,
            "reqnum": reqnum,
            "request_idx": 1,
            "url": w.url,
        }
        ring.sign_ticket(ticket)
        async with session.post(
            w.url + "/generate", json={"auth_data": ticket, "payload": payload(n)}
        ) as r:
            if r.status != 200:
                raise RuntimeError(f"calibration request to {w.url}: {r.status} {await r.text()}")
            await r.read()

    async def worker(w: WorkerSpec) -> float:
        batch: list[int] = []
        while sum(batch) < w.perf * seconds:
            batch.append(rng.choice(wl.costs))
        t0 = time.perf_counter()
        await asyncio.gather(*(one(w, floor + i + 1, n) for i, n in enumerate(batch)))
        return sum(batch) / (time.perf_counter() - t0)

    return list(await asyncio.gather(*(worker(w) for w in workers)))


@dataclass(frozen=True, slots=True)
class Result:
    mode: str  # "proxy" or "ticket"
    policy: str
    rho: float
    poll_s: float
    n: int
    mean_s: float
    p50_s: float
    p99_s: float
    errors: int
    cut: int  # cancelled after the drain time: counted at their age then


def percentile(xs: Sequence[float], q: float) -> float:
    """Nearest-rank percentile."""
    s = sorted(xs)
    return s[max(0, math.ceil(q * len(s)) - 1)]


async def drive(
    session: aiohttp.ClientSession,
    router: str,
    mode: str,
    arrivals: list[tuple[float, int]],
    drain_s: float,
) -> tuple[list[float], int, int]:
    """Send every request at its time (open loop); return latencies, errors, cut."""
    loop = asyncio.get_running_loop()
    latencies: list[float] = []
    errors = 0
    headers = {"Authorization": f"Bearer {API_KEY}"}

    async def proxy(cost: int) -> bool:
        async with session.post(
            f"{router}/{ENDPOINT}/generate",
            json=payload(cost),
            headers={**headers, "X-Cost": str(cost)},
        ) as r:
            await r.read()
            return r.status == 200

    async def ticket(cost: int) -> bool:
        async with session.post(
            f"{router}/route/", json={"endpoint": ENDPOINT, "api_key": API_KEY, "cost": cost}
        ) as r:
            t = await r.json()
        if "url" not in t:
            return False
        async with session.post(
            t["url"] + "/generate", json={"auth_data": t, "payload": payload(cost)}
        ) as r:
            await r.read()
            return r.status == 200

    send = proxy if mode == "proxy" else ticket

    async def one(at: float, cost: int) -> None:
        nonlocal errors
        try:
            ok = await send(cost)
        except aiohttp.ClientError:
            ok = False
        if ok:
            latencies.append(loop.time() - at)
        else:
            errors += 1

    t0 = loop.time() + 0.2
    tasks: dict[asyncio.Task[None], float] = {}
    for i, (t, cost) in enumerate(arrivals):
        at = t0 + t
        delay = at - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks[asyncio.create_task(one(at, cost), name=f"request-{i}")] = at
    _, pending = await asyncio.wait(tasks, timeout=drain_s) if tasks else (set(), set())
    cut_at = loop.time()
    for task in pending:
        task.cancel()
        latencies.append(cut_at - tasks[task])
    await asyncio.gather(*pending, return_exceptions=True)
    return latencies, errors, len(pending)


async def wait_idle(
    session: aiohttp.ClientSession, workers: list[WorkerSpec], timeout_s: float = 30.0
) -> None:
    """Wait until no worker has a request in flight (cut requests may take a moment)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        busy = 0
        for w in workers:
            async with session.get(w.url + "/readyz") as r:
                busy += (await r.json()).get("inflight_requests", 0)
        if not busy:
            return
        await asyncio.sleep(0.2)


# --- the benchmark -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Plan:
    speeds: tuple[float, ...]
    base_tps: float
    mean_cost: float
    rhos: tuple[float, ...]
    policies: tuple[str, ...]
    duration_s: float
    drain_s: float
    proxy_poll_s: float
    ticket_polls_s: tuple[float, ...]
    ticket_rhos: tuple[float, ...]
    seed: int
    calibrate_s: float


async def run(plan: Plan, work: Path, log: Any = print) -> dict[str, Any]:
    key = work / "router-key.pem"
    ring = KeyRing([write_private_key(key, "ed25519")])
    pub = work / "router-key.pub.pem"
    pub.write_text(ring.public_pem())
    procs, workers = start_workers(plan.speeds, plan.base_tps, pub, work)
    connector = aiohttp.TCPConnector(limit=0)
    results: list[Result] = []
    try:
        async with aiohttp.ClientSession(connector=connector) as session:
            for p, w in zip(procs, workers, strict=True):
                await wait_http(session, w.url + "/livez", p)
            wl = workload(plan.seed, 100_000, plan.mean_cost)
            mean_cost = sum(wl.costs) / len(wl.costs)
            measured = await calibrate(session, ring, workers, wl, plan.calibrate_s)
            capacity = sum(measured)
            log(
                f"capacity: configured {sum(w.perf for w in workers):g} tokens/s, measured "
                f"{capacity:.1f} ({', '.join(f'{m:.1f}' for m in measured)})"
            )
            runs = [
                ("proxy", p, rho, plan.proxy_poll_s) for rho in plan.rhos for p in plan.policies
            ]
            runs += [
                ("ticket", "least_work", rho, s)
                for rho in plan.ticket_rhos
                for s in plan.ticket_polls_s
            ]
            for mode, policy, rho, poll_s in runs:
                arrivals = wl.arrivals(rho * capacity / mean_cost, plan.duration_s)
                r = await one_run(
                    session, plan, work, key, workers, mode, policy, rho, poll_s, arrivals
                )
                log(
                    f"{mode:6} {policy:14} rho {rho:g} poll {poll_s:g} s: n {r.n} mean "
                    f"{r.mean_s:.3f} p50 {r.p50_s:.3f} p99 {r.p99_s:.3f} errors {r.errors} "
                    f"cut {r.cut}"
                )
                results.append(r)
    finally:
        for p in procs:
            p.stop()
    return {
        "plan": asdict(plan),
        "capacity_tps": capacity,
        "measured_tps": measured,
        "configured_tps": [w.perf for w in workers],
        "results": [asdict(r) for r in results],
    }


async def one_run(
    session: aiohttp.ClientSession,
    plan: Plan,
    work: Path,
    key: Path,
    workers: list[WorkerSpec],
    mode: str,
    policy: str,
    rho: float,
    poll_s: float,
    arrivals: list[tuple[float, int]],
) -> Result:
    port = free_port()
    cfg = router_config(
        work / "router.toml", port=port, key=key, policy=policy, poll_s=poll_s, workers=workers
    )
    name = f"router-{mode}-{policy}-{rho:g}-{poll_s:g}"
    router = Proc(name, [sys.executable, "-m", "router", "serve", "--config", str(cfg)], work)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            doc = await wait_http(
                session,
                f"{url}/api/v1/workers?endpoint={ENDPOINT}",
                router,
                headers={"Authorization": f"Bearer {ADMIN_KEY}"},
            )
            if sum(w["status"] == "ready" for w in doc["workers"]) == len(workers):
                break
            if time.monotonic() > deadline:
                raise TimeoutError(f"workers not ready: {doc}")
            await asyncio.sleep(0.1)
        lat, errors, cut = await drive(session, url, mode, arrivals, plan.drain_s)
    finally:
        router.stop()
    await wait_idle(session, workers)
    if not lat:
        lat = [math.nan]
    return Result(
        mode,
        policy,
        rho,
        poll_s,
        len(arrivals),
        sum(lat) / len(lat),
        percentile(lat, 0.5),
        percentile(lat, 0.99),
        errors,
        cut,
    )


# --- report --------------------------------------------------------------------------------


def render(doc: dict[str, Any], markdown: bool) -> str:
    rows = [r for r in doc["results"]]
    parts = []
    proxy = [r for r in rows if r["mode"] == "proxy"]
    lw = {r["rho"]: r for r in proxy if r["policy"] == "least_work"}
    head = [
        "rho",
        "policy",
        "requests",
        "mean s",
        "p50 s",
        "p99 s",
        "mean ÷ lw",
        "p99 ÷ lw",
        "errors",
        "cut",
    ]
    body = []
    for r in proxy:
        ref = lw.get(r["rho"])
        body.append(
            [
                f"{r['rho']:g}",
                r["policy"],
                str(r["n"]),
                f"{r['mean_s']:.3f}",
                f"{r['p50_s']:.3f}",
                f"{r['p99_s']:.3f}",
                f"{r['mean_s'] / ref['mean_s']:.2f}" if ref else "-",
                f"{r['p99_s'] / ref['p99_s']:.2f}" if ref else "-",
                str(r["errors"]),
                str(r["cut"]),
            ]
        )
    if body:
        parts.append(
            f"Proxy mode (health poll every {doc['plan']['proxy_poll_s']:g} s):\n\n"
            + _table(head, body, markdown)
        )
    ticket = [r for r in rows if r["mode"] == "ticket"]
    head = [
        "rho",
        "poll s",
        "requests",
        "mean s",
        "p50 s",
        "p99 s",
        "p99 ÷ proxy lw p99",
        "errors",
        "cut",
    ]
    body = []
    for r in ticket:
        ref = lw.get(r["rho"])
        body.append(
            [
                f"{r['rho']:g}",
                f"{r['poll_s']:g}",
                str(r["n"]),
                f"{r['mean_s']:.3f}",
                f"{r['p50_s']:.3f}",
                f"{r['p99_s']:.3f}",
                f"{r['p99_s'] / ref['p99_s']:.2f}" if ref else "-",
                str(r["errors"]),
                str(r["cut"]),
            ]
        )
    if body:
        parts.append(
            "Ticket mode, least_work (completions learnt from /readyz polls):\n\n"
            + _table(head, body, markdown, left=2)
        )
    return "\n\n".join(parts)


def machine() -> str:
    cpu = platform.processor() or "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{os.cpu_count()} CPUs ({cpu}), Python {platform.python_version()}"


def _loop_factory() -> Any:
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--speeds",
        type=float,
        nargs="+",
        default=[1, 2, 3, 4],
        help="worker speeds, multiples of --base-tps (default 1 2 3 4)",
    )
    ap.add_argument(
        "--base-tps", type=float, default=25.0, help="tokens/s of a 1x worker (default 25)"
    )
    ap.add_argument(
        "--mean-cost",
        type=float,
        default=24.0,
        help="mean request cost in tokens (default 24: ~1 s alone on 1x)",
    )
    ap.add_argument(
        "--rho",
        type=float,
        nargs="*",
        default=[0.8, 0.9],
        help="proxy-mode utilizations of measured capacity (default 0.8 0.9)",
    )
    ap.add_argument("--policies", nargs="+", default=list(POLICIES), choices=POLICIES)
    ap.add_argument(
        "--duration-s", type=float, default=30.0, help="arrivals per run, in seconds (default 30)"
    )
    ap.add_argument(
        "--drain-s",
        type=float,
        default=20.0,
        help="wait this long after the last arrival, then cut (default 20)",
    )
    ap.add_argument(
        "--proxy-poll-s",
        type=float,
        default=1.0,
        help="health poll interval for the proxy runs (default 1)",
    )
    ap.add_argument(
        "--ticket-poll-s",
        type=float,
        nargs="*",
        default=[0.25, 1.0, 5.0],
        help="ticket-mode least_work runs, one per poll interval",
    )
    ap.add_argument(
        "--ticket-rho",
        type=float,
        nargs="*",
        default=[0.9],
        help="utilizations for the ticket runs (default 0.9)",
    )
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument(
        "--calibrate-s",
        type=float,
        default=6.0,
        help="length of the capacity measurement (default 6)",
    )
    ap.add_argument("--markdown", action="store_true", help="print markdown tables")
    ap.add_argument("--json", type=Path, help="also write the raw results here")
    args = ap.parse_args(argv)
    if any(not 0 < r < 1 for r in [*args.rho, *args.ticket_rho]):
        ap.error("every rho must be in (0, 1)")
    if any(s <= 0 for s in [*args.ticket_poll_s, args.proxy_poll_s, *args.speeds]):
        ap.error("speeds and poll intervals must be > 0")
    plan = Plan(
        tuple(args.speeds),
        args.base_tps,
        args.mean_cost,
        tuple(args.rho),
        tuple(args.policies),
        args.duration_s,
        args.drain_s,
        args.proxy_poll_s,
        tuple(args.ticket_poll_s),
        tuple(args.ticket_rho),
        args.seed,
        args.calibrate_s,
    )
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="balance-e2e-") as tmp:
        with asyncio.Runner(loop_factory=_loop_factory()) as runner:
            doc = runner.run(
                run(plan, Path(tmp), log=lambda s: print(s, file=sys.stderr, flush=True))
            )
    doc["machine"] = machine()
    doc["wall_s"] = time.perf_counter() - t0
    print(render(doc, args.markdown))
    print(
        f"\n{doc['machine']}; fleet {'/'.join(f'{s:g}' for s in plan.speeds)} x "
        f"{plan.base_tps:g} tokens/s, measured {doc['capacity_tps']:.1f} tokens/s; "
        f"{plan.duration_s:g} s of arrivals per run; {doc['wall_s']:.0f} s in all"
    )
    if args.json:
        args.json.write_text(json.dumps(doc, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
