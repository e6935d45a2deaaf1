"""cache_aware against least_work, round_robin and two peers, on one set of synthetic workers
that model a prefix KV cache (bench/RESULTS.md, "Prefix-cache-aware routing").

    .venv/bin/python bench/cache_bench.py                 # every contender, every workload
    .venv/bin/python bench/cache_bench.py --decision      # decision cost at 10k conversations

Peers run from a separate venv (bench/.peers, gitignored):

    python3 -m venv bench/.peers && bench/.peers/bin/pip install sglang-router vllm-router

A peer that is not installed or does not start is reported as such in the table.

Each (workload, contender) run starts the four workers afresh (cold caches), starts the
router(s), sends the workload with a fixed number of concurrent users (closed loop),
and reads the workers' /metrics before and after: the hit rate is theirs, not the
router's guess. TTFT is measured by the client: the first SSE chunk with text.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import orjson

ROOT = Path(__file__).resolve().parents[1]
PEERS = ROOT / "bench" / ".peers" / "bin"
PY = sys.executable
KEY = "bench-key"
# heterogeneous workers: (decode capacity tokens/s, prefill tokens/s)
WORKERS = [(800.0, 4000.0), (800.0, 4000.0), (400.0, 2000.0), (400.0, 2000.0)]
KV_CACHE_TOKENS = 16_000  # per worker: less than every conversation's context together
MAX_TOKENS = 16
BALANCE = ""  # extra [endpoints.cache_aware] lines (--balance)
WORDS = "the a model cache router token prefix block worker queue request answer fleet".split()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def words(rng: random.Random, chars: int) -> str:
    out: list[str] = []
    n = 0
    while n < chars:
        w = rng.choice(WORDS) + str(rng.randrange(100))
        out.append(w)
        n += len(w) + 1
    return " ".join(out)[:chars]


# --- workloads: lists of "sessions", each a list of message lists sent in turn ---------------


def multi_turn(n_conv: int, turns: int, seed: int = 1) -> list[list[list[dict[str, str]]]]:
    sessions = []
    for c in range(n_conv):
        rng = random.Random(seed * 1000 + c)
        msgs = [{"role": "system", "content": f"Conversation {c}. " + words(rng, 3000)}]
        seq = []
        for t in range(turns):
            msgs = [*msgs, {"role": "user", "content": f"Q{t}: " + words(rng, 300)}]
            seq.append(msgs)
            msgs = [*msgs, {"role": "assistant", "content": words(rng, 300)}]
        sessions.append(seq)
    return sessions


def shared_system(n: int, seed: int = 2) -> list[list[list[dict[str, str]]]]:
    rng = random.Random(seed)
    system = {"role": "system", "content": "You are the fleet's assistant. " + words(rng, 4000)}
    return [[[system, {"role": "user", "content": words(rng, 300)}]] for _ in range(n)]


def no_reuse(n: int, seed: int = 3) -> list[list[list[dict[str, str]]]]:
    rng = random.Random(seed)
    return [[[{"role": "user", "content": f"{i} " + words(rng, 3000)}]] for i in range(n)]


# --- processes ---------------------------------------------------------------------------


@dataclass
class Procs:
    logs: Path
    running: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def start(self, name: str, argv: Sequence[str], env: dict[str, str] | None = None) -> None:
        log = open(self.logs / f"{name}.log", "wb")  # the child's; ours closes with us
        self.running.append(
            subprocess.Popen(
                list(argv), stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})}
            )
        )

    def stop(self) -> None:
        for p in self.running:
            p.terminate()
        for p in self.running:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        self.running.clear()


def start_workers(procs: Procs) -> list[str]:
    urls = []
    for i, (capacity, prefill) in enumerate(WORKERS):
        port = free_port()
        procs.start(
            f"worker{i}",
            [PY, "-m", "workers", "--backend", "synthetic", "--no-verify", "--port", str(port),
             "--endpoint", "llm", "--capacity", repr(capacity), "--tokens-per-s", "200",
             "--ttft-ms", "10", "--kv-cache-tokens", str(KV_CACHE_TOKENS),
             "--prefill-tokens-per-s", repr(prefill), "--block-chars", "64",
             "--log-level", "warning"],
        )  # fmt: skip
        urls.append(f"http://127.0.0.1:{port}")
    return urls


def router_toml(port: int, urls: list[str], policy: str, redis_url: str | None) -> str:
    store = (
        f'backend = "redis"\nredis_url = "{redis_url}"\n'
        if redis_url
        else 'backend = "memory"\nstate_file = ""\n'
    )
    workers = "".join(
        f'[[endpoints.workers]]\nurl = "{u}"\nperf = {c}\n'
        for u, (c, _) in zip(urls, WORKERS, strict=True)
    )
    blocks = KV_CACHE_TOKENS * 4 // 128  # the cache it models, in the router's 128-char blocks
    return f"""log_level = "warning"
[server]
host = "127.0.0.1"
port = {port}
[store]
{store}[signing]
algorithm = "ed25519"
[[api_keys]]
name = "bench"
key = "{KEY}"
admin = true
[[endpoints]]
name = "llm"
models = ["llm"]
policy = "{policy}"
retries = 0
[endpoints.health]
interval_s = 0.5
[endpoints.cache_aware]
max_blocks_per_worker = {blocks}
{BALANCE}{workers}"""


def start_ours(
    procs: Procs, urls: list[str], policy: str, replicas: int, redis: str | None
) -> list[str]:
    bases = []
    for r in range(replicas):
        port = free_port()
        path = procs.logs / f"router{r}.toml"
        path.write_text(router_toml(port, urls, policy, redis))
        procs.start(f"router{r}", [PY, "-m", "router", "serve", "--config", str(path)])
        bases.append(f"http://127.0.0.1:{port}")
    return bases


def start_peer(procs: Procs, urls: list[str], kind: str) -> list[str]:
    port = free_port()
    common = ["--worker-urls", *urls, "--host", "127.0.0.1", "--port", str(port),
              "--policy", "cache_aware", "--prometheus-port", str(free_port())]  # fmt: skip
    if kind == "sglang":
        exe = PEERS / "python"
        if not exe.exists():
            raise RuntimeError("sglang-router is not installed in bench/.peers")
        argv = [str(exe), "-m", "sglang_router.launch_router", *common, "--log-level", "warn"]
    else:
        exe = PEERS / "vllm-router"
        if not exe.exists():
            raise RuntimeError("vllm-router is not installed in bench/.peers")
        argv = [str(exe), *common]
    procs.start(kind, argv)
    return [f"http://127.0.0.1:{port}"]


# --- the client ------------------------------------------------------------------------------


@dataclass
class Result:
    ttft: list[float] = field(default_factory=list)
    errors: int = 0
    requests: int = 0
    elapsed_s: float = 0.0


async def one(
    http: aiohttp.ClientSession, base: str, msgs: list[dict[str, str]], res: Result
) -> None:
    body = {"model": "llm", "messages": msgs, "max_tokens": MAX_TOKENS, "stream": True}
    started = time.perf_counter()
    first: float | None = None
    try:
        async with http.post(
            f"{base}/v1/chat/completions",
            data=orjson.dumps(body),
            headers={"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"},
        ) as resp:
            if resp.status != 200:
                res.errors += 1
                await resp.read()
                return
            async for line in resp.content:
                if first is None and line.startswith(b"data: {") and b'"content":"' in line:
                    doc = orjson.loads(line[6:])
                    delta = doc["choices"][0].get("delta") or {}
                    if delta.get("content"):
                        first = time.perf_counter()
    except (aiohttp.ClientError, TimeoutError):
        res.errors += 1
        return
    res.requests += 1
    if first is not None:
        res.ttft.append(first - started)


async def drive(bases: list[str], sessions: list[list[list[dict[str, str]]]], users: int) -> Result:
    res = Result()
    queue: asyncio.Queue[list[list[dict[str, str]]]] = asyncio.Queue()
    for s in sessions:
        queue.put_nowait(s)
    counter = [0]
    timeout = aiohttp.ClientTimeout(total=120)
    async with aiohttp.ClientSession(timeout=timeout) as http:

        async def user() -> None:
            while not queue.empty():
                for msgs in queue.get_nowait():
                    counter[0] += 1
                    # with two replicas, consecutive requests (and a session's turns) alternate
                    await one(http, bases[counter[0] % len(bases)], msgs, res)

        started = time.perf_counter()
        await asyncio.gather(*(user() for _ in range(users)))
        res.elapsed_s = time.perf_counter() - started
    return res


async def cache_totals(urls: list[str]) -> tuple[float, float]:
    hit = miss = 0.0
    async with aiohttp.ClientSession() as http:
        for u in urls:
            async with http.get(f"{u}/metrics") as resp:
                for line in (await resp.text()).splitlines():
                    if line.startswith("worker_prefix_cache_hit_tokens_total"):
                        hit += float(line.split()[-1])
                    elif line.startswith("worker_prefix_cache_miss_tokens_total"):
                        miss += float(line.split()[-1])
    return hit, miss


async def until_serving(bases: list[str], urls: list[str], timeout_s: float = 60.0) -> None:
    """Every worker answers, then every router serves a tiny request (under one block)."""
    deadline = time.monotonic() + timeout_s
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as http:
        for target in [*(f"{u}/readyz" for u in urls)]:
            while True:
                try:
                    async with http.get(target) as resp:
                        if resp.status == 200:
                            break
                except aiohttp.ClientError:
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{target} never became ready")
                await asyncio.sleep(0.2)
        for base in bases:
            while True:
                res = Result()
                await one(http, base, [{"role": "user", "content": "hi"}], res)
                if res.requests:
                    break
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{base} never served")
                await asyncio.sleep(0.3)
    await asyncio.sleep(1.5)  # our routers: every worker's health poll in


def pct(xs: list[float], q: float) -> float:
    if not xs:
        return float("nan")
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


CONTENDERS = [
    ("cache_aware, 1 replica", "ours", "cache_aware", 1),
    ("cache_aware, 2 replicas (Redis)", "ours", "cache_aware", 2),
    ("least_work", "ours", "least_work", 1),
    ("round_robin", "ours", "round_robin", 1),
    ("sglang-router cache_aware", "sglang", "", 1),
    ("vllm-router cache_aware", "vllm", "", 1),
]


async def run_one(
    procs: Procs, contender: tuple[str, str, str, int], sessions: Any, users: int, redis: str
) -> dict[str, Any]:
    name, kind, policy, replicas = contender
    urls = start_workers(procs)
    try:
        if kind == "ours":
            bases = start_ours(procs, urls, policy, replicas, redis if replicas > 1 else None)
        else:
            bases = start_peer(procs, urls, kind)
        await until_serving(bases, urls)
        h0, m0 = await cache_totals(urls)
        res = await drive(bases, sessions, users)
        h1, m1 = await cache_totals(urls)
    except RuntimeError as exc:
        return {"contender": name, "failed": str(exc)}
    finally:
        procs.stop()
    hit, miss = h1 - h0, m1 - m0
    return {
        "contender": name,
        "hit_rate": hit / (hit + miss) if hit + miss else 0.0,
        "ttft_p50_ms": pct(res.ttft, 0.5) * 1000,
        "ttft_p99_ms": pct(res.ttft, 0.99) * 1000,
        "req_per_s": res.requests / res.elapsed_s,
        "requests": res.requests,
        "errors": res.errors,
    }


def start_redis(procs: Procs) -> str:
    port = free_port()
    procs.start("redis", ["redis-server", "--port", str(port), "--save", "", "--appendonly", "no"])
    time.sleep(0.5)
    return f"redis://127.0.0.1:{port}/0"


async def main_bench(args: argparse.Namespace) -> list[dict[str, Any]]:
    scale = 0.5 if args.quick else 1.0
    workloads = {
        "multi_turn": multi_turn(int(48 * scale), 6),
        "shared_system": shared_system(int(240 * scale)),
        "no_reuse": no_reuse(int(240 * scale)),
    }
    out = []
    with tempfile.TemporaryDirectory() as d:
        redis_procs = Procs(Path(d))
        redis = start_redis(redis_procs)
        try:
            for wname, sessions in workloads.items():
                if args.workload and wname not in args.workload:
                    continue
                for contender in CONTENDERS:
                    if args.only and not any(o in contender[0] for o in args.only):
                        continue
                    flush = ["redis-cli", "-u", redis, "FLUSHALL"]
                    await asyncio.to_thread(subprocess.run, flush, capture_output=True)
                    row = await run_one(Procs(Path(d)), contender, sessions, args.users, redis)
                    row["workload"] = wname
                    print(json.dumps(row), flush=True)
                    out.append(row)
        finally:
            redis_procs.stop()
    return out


def table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| workload | contender | hit rate | TTFT p50 ms | TTFT p99 ms | req/s | errors |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        if "failed" in r:
            lines.append(f"| {r['workload']} | {r['contender']} | failed: {r['failed']} | | | | |")
            continue
        lines.append(
            f"| {r['workload']} | {r['contender']} | {100 * r['hit_rate']:.1f}% | "
            f"{r['ttft_p50_ms']:.0f} | {r['ttft_p99_ms']:.0f} | {r['req_per_s']:.1f} | "
            f"{r['errors']} |"
        )
    return "\n".join(lines)


# --- decision cost ---------------------------------------------------------------------------


async def decision_cost(n_conv: int = 10_000, n_workers: int = 8) -> dict[str, float]:
    from router.balancer import Candidate, shortlist
    from router.prefix import block_hashes
    from router.state.memory import MemoryStore
    from router.state.redis import RedisStore

    rng = random.Random(7)
    texts = [f"conversation {c} " + words(rng, 128 * 20) for c in range(n_conv)]
    hashes = [block_hashes(t) for t in texts]
    workers = [Candidate(f"w{i}", 800.0, rng.random() * 1000) for i in range(n_workers)]
    by_id = {w.id: w for w in workers}
    mem = MemoryStore()
    for w in workers:
        mem._workers[w.id] = None  # type: ignore[assignment]  # the index only checks presence
    now = time.time()
    owner = [f"w{rng.randrange(n_workers)}" for _ in range(n_conv)]
    for h, w in zip(hashes, owner, strict=True):
        await mem.prefix_record("llm", w, h, now, 600.0, 1_000_000)
    # a next turn: the conversation's blocks plus four new ones
    probes = [hashes[rng.randrange(n_conv)] + [f"{rng.getrandbits(64):016x}" for _ in range(4)]
              for _ in range(5000)]  # fmt: skip
    policy_ns, hash_ns = [], []
    r = random.Random(1)
    for p in probes:
        t0 = time.perf_counter_ns()
        _, holders = await mem.prefix_lookup("llm", p, now, 600.0)
        cached = [by_id[h] for h in holders]
        shortlist("cache_aware", workers, 700.0, rng=r, cached=cached, balance=(1.0, 1.5))
        policy_ns.append(time.perf_counter_ns() - t0)
    for t in texts[:2000]:
        t0 = time.perf_counter_ns()
        block_hashes(t + words(rng, 512))
        hash_ns.append(time.perf_counter_ns() - t0)
    out = {
        "conversations": n_conv,
        "lookup_and_policy_p50_us": pct(policy_ns, 0.5) / 1000,
        "lookup_and_policy_p99_us": pct(policy_ns, 0.99) / 1000,
        "hashing_3k_chars_p50_us": pct(hash_ns, 0.5) / 1000,
        "hashing_3k_chars_p99_us": pct(hash_ns, 0.99) / 1000,
    }
    with tempfile.TemporaryDirectory() as d:
        procs = Procs(Path(d))
        url = start_redis(procs)
        try:
            store = RedisStore(url)
            for i in range(0, n_conv, 200):
                for h, w in zip(hashes[i : i + 200], owner[i : i + 200], strict=True):
                    await store.prefix_record("llm", w, h, now, 600.0, 1_000_000)
                await store.settle()
            rtt = []
            for p in probes[:3000]:
                t0 = time.perf_counter_ns()
                await store.prefix_lookup("llm", p, now, 600.0)
                rtt.append(time.perf_counter_ns() - t0)
            await store.close()
            out["redis_lookup_round_trip_p50_us"] = pct(rtt, 0.5) / 1000
            out["redis_lookup_round_trip_p99_us"] = pct(rtt, 0.99) / 1000
        finally:
            procs.stop()
    out["median_depth_check"] = statistics.median(len(p) for p in probes)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--decision", action="store_true", help="measure the decision cost only")
    p.add_argument("--quick", action="store_true", help="half the requests")
    p.add_argument("--users", type=int, default=16, help="concurrent users (default 16)")
    p.add_argument("--workload", nargs="*", help="only these workloads")
    p.add_argument("--only", nargs="*", help="only contenders whose name contains one of these")
    p.add_argument("--out", type=Path, help="write the rows as JSON here")
    p.add_argument(
        "--balance",
        nargs=2,
        type=float,
        metavar=("ABS_S", "REL"),
        help="our cache_aware balance_abs_s and balance_rel (default: the defaults)",
    )
    args = p.parse_args()
    if args.balance:
        global BALANCE
        BALANCE = f"balance_abs_s = {args.balance[0]}\nbalance_rel = {args.balance[1]}\n"
    if args.decision:
        print(json.dumps(asyncio.run(decision_cost()), indent=1))
        return
    rows = asyncio.run(main_bench(args))
    print(table(rows))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
