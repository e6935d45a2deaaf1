"""Control-plane benchmarks: time to first token of a new endpoint, and the control plane's
cost to the data plane.

    python bench/control_bench.py [--creates 5] [--rounds 6] [--duration 5] [--real]

1. Create to first token: `POST /api/v1/inference-endpoint`, then at once a streamed
   proxied request (held through the cold start), timed to its first token; the endpoint
   is deleted and the next one created (`--creates` times, median and max). `--real`
   does the same with the llama.cpp runtime (SmolLM2-135M on the CPU, see
   tests/control/realmodel.py) when it is installed.
2. Data plane under load (wrk, small JSON POSTs proxied to a synthetic worker) in rounds
   that alternate between quiet and with a control-plane client running beside it
   (list, describe, create, delete as fast as it can): the data plane's p99 both ways,
   and the control plane's requests/s. Target: p99 within 5 % (`--rounds` rounds, the
   order turning, medians).

One router process on the memory store; everything on 127.0.0.1.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

import aiohttp

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.proxy_bench import WRK_SCRIPT, ensure, wrk  # noqa: E402
from bench.route_bench import cpu_model, free_port, process, wait_http  # noqa: E402

ADMIN = {"Authorization": "Bearer admin-key"}
BASE = "/api/v1/inference-endpoint"

CONFIG = """
log_level = "warning"
[server]
port = {port}
[store]
backend = "memory"
state_file = ""
[signing]
algorithm = "ed25519"
[control]
unknown_formats = "synthetic"
interval_s = 0.1
[[runtimes]]
format = "synthetic"
backend = "synthetic"
perf = 400
tokens_per_s = 100
ttft_ms = 20
[runtimes.endpoint.health]
interval_s = 0.1
healthy_after = 1
{real}
[[api_keys]]
key = "admin-key"
admin = true
[[api_keys]]
key = "bench-key"
[[endpoints]]
name = "bench"
[endpoints.health]
interval_s = 0.25
[endpoints.local]
backend = "synthetic"
perf = 100000
ttft_ms = 0
tokens_per_s = 100000
[endpoints.autoscaling]
min_workers = 1
max_workers = 1
"""


def real_runtime() -> str:
    sys.path.insert(0, str(ROOT))
    from tests.control import realmodel

    if realmodel.missing() is not None:
        return ""
    command = ", ".join(f'"{c}"' for c in realmodel.RUNTIME.command)
    return f"""
[[runtimes]]
format = "llama-cpp"
backend = "openai"
command = [{command}]
health_path = "{realmodel.RUNTIME.health_path}"
perf = 50
max_load = 1
[runtimes.endpoint.health]
interval_s = 0.1
timeout_s = 2
healthy_after = 1
"""


async def first_token(url: str, fmt: str, storage: str, i: int) -> float:
    """Seconds from the create call to the first streamed token through the router."""
    name = f"ttft-{fmt[:5]}-{i}"
    body = {
        "clusterName": "local",
        "endpointName": name,
        "workspace": "bench",
        "modelSpec": {"modelName": fmt, "storageURI": storage},
    }
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=300)) as s:
        t0 = time.perf_counter()
        async with s.post(f"{url}{BASE}", json=body, headers=ADMIN) as resp:
            assert resp.status == 200, await resp.text()
        if fmt == "synthetic":
            req = s.post(
                f"{url}/{name}/generate_stream",
                headers=ADMIN,
                json={"inputs": "Hello", "parameters": {"max_new_tokens": 4}},
            )
        else:
            req = s.post(
                f"{url}/v1/chat/completions",
                headers=ADMIN,
                json={
                    "model": name,
                    "max_tokens": 4,
                    "stream": True,
                    "messages": [{"role": "user", "content": "Hello"}],
                },
            )
        async with req as resp:
            assert resp.status == 200, await resp.text()
            async for line in resp.content:
                if line.startswith(b"data:"):
                    break
            took = time.perf_counter() - t0
            await resp.read()
        async with s.delete(
            f"{url}{BASE}", json={"workspace": "bench", "endpoint": name}, headers=ADMIN
        ) as resp:
            assert resp.status == 200
        # wait until it is gone before the next, so each create starts from nothing
        for _ in range(600):
            async with s.get(f"{url}{BASE}?workspace=bench", headers=ADMIN) as resp:
                if not (await resp.json())["data"]["endpoints"]:
                    break
            await asyncio.sleep(0.05)
    return took


async def control_load(url: str, stop: asyncio.Event) -> int:
    """Control-plane requests as fast as one client goes, until `stop`; how many."""
    n = 0
    async with aiohttp.ClientSession() as s:
        i = 0
        while not stop.is_set():
            name = f"churn-{i % 4}"
            i += 1
            body = {
                "clusterName": "local",
                "endpointName": name,
                "workspace": "churn",
                "modelSpec": {"modelName": "synthetic", "storageURI": "gs://x/y"},
                "autoscaling": {"min_workers": 0, "max_workers": 0},
            }
            for method, path, payload in (
                ("GET", f"{BASE}?workspace=churn", None),
                ("POST", BASE, body),
                ("GET", f"{BASE}?workspace=churn&endpoint={name}", None),
                ("GET", "/model/list", None),
                ("DELETE", BASE, {"workspace": "churn", "endpoint": name}),
            ):
                async with s.request(method, url + path, json=payload, headers=ADMIN) as r:
                    await r.read()
                n += 1
    return n


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--creates", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--duration", type=int, default=5)
    ap.add_argument("--connections", type=int, default=16)
    ap.add_argument("--real", action="store_true", help="also the llama.cpp runtime")
    args = ap.parse_args()
    ensure("wrk", "wrk")
    real = real_runtime() if args.real else ""
    with tempfile.TemporaryDirectory() as tmp_s:
        tmp = Path(tmp_s)
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        cfg = tmp / "router.toml"
        cfg.write_text(CONFIG.format(port=port, real=real))
        script = tmp / "post.lua"
        script.write_text(WRK_SCRIPT)
        with process(
            [sys.executable, "-m", "router", "serve", "--config", str(cfg)], log=tmp / "router.log"
        ):
            wait_http(f"{url}/livez")
            for _ in range(200):  # the bench endpoint's worker is up
                try:
                    wrk(f"{url}/bench/generate", 1, 1, script)
                    break
                except (subprocess.CalledProcessError, AssertionError):
                    time.sleep(0.2)
            ttft = {
                "synthetic": [
                    asyncio.run(first_token(url, "synthetic", "gs://x/y", i))
                    for i in range(args.creates)
                ]
            }
            if real:
                from tests.control import realmodel

                path = realmodel.model_file()
                assert path is not None
                ttft["llama-cpp"] = [
                    asyncio.run(first_token(url, "llama-cpp", path.as_uri(), i))
                    for i in range(args.creates)
                ]
            quiet: list[float] = []
            busy: list[float] = []
            rates: list[float] = []
            for r in range(args.rounds):
                for loaded in (False, True) if r % 2 == 0 else (True, False):
                    if not loaded:
                        quiet.append(
                            wrk(f"{url}/bench/generate", args.connections, args.duration, script)[
                                "p99_ms"
                            ]
                        )
                        continue

                    async def with_load() -> tuple[float, float]:
                        stop = asyncio.Event()
                        task = asyncio.create_task(control_load(url, stop))
                        t0 = time.perf_counter()
                        row = await asyncio.to_thread(
                            wrk, f"{url}/bench/generate", args.connections, args.duration, script
                        )
                        stop.set()
                        n = await task
                        return row["p99_ms"], n / (time.perf_counter() - t0)

                    p99, rate = asyncio.run(with_load())
                    busy.append(p99)
                    rates.append(rate)
    print(
        f"\ncontrol bench, {date.today()}, {os.cpu_count()} CPUs ({cpu_model()}), python "
        f"{platform.python_version()}\n"
    )
    print("| runtime | create -> first token, median s | max s | runs |")
    print("|---|---:|---:|---:|")
    for fmt, xs in ttft.items():
        print(f"| {fmt} | {statistics.median(xs):.2f} | {max(xs):.2f} | {len(xs)} |")
    q, b = statistics.median(quiet), statistics.median(busy)
    print(
        f"\n| data plane p99 (wrk -c {args.connections}, {args.rounds} rounds of "
        f"{args.duration} s) | ms |\n|---|---:|"
    )
    print(f"| alone | {q:.2f} |\n| with the control-plane client | {b:.2f} |")
    print(
        f"\np99 change with the control plane busy: {(b / q - 1) * 100:+.1f} % "
        f"(target <= +5 %); control-plane API: {statistics.median(rates):.0f} requests/s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
