"""A stand-in router for the orphan test: a LocalProvider with two workers, then idle.

Run as `python -m tests.control.provider_host ROUTER_URL LOG_DIR` (on uvloop, as the
router runs); it prints the pids of every process it started as one JSON line and waits
to be killed.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import orjson
import uvloop

from router.control.providers.local import LocalProvider
from router.control.spec import EndpointRecord, RuntimeSpec

SLEEPER = ("{python}", "-c", "import time; time.sleep(120)")


async def main(router_url: str, log_dir: Path) -> None:
    provider = LocalProvider(router_url, log_dir)
    synthetic = EndpointRecord("demo")
    served = EndpointRecord("demo", runtime=RuntimeSpec(backend="openai", command=SLEEPER))
    workers = [*await provider.start(synthetic, 1), *await provider.start(served, 1)]
    pids = [pid for w in workers for pid in provider.pids(w.id)]
    print(orjson.dumps(pids).decode(), flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    uvloop.run(main(sys.argv[1], Path(sys.argv[2])))
