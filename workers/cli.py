"""`inference-worker`: the reference worker sidecar in front of a model backend."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
import time
from pathlib import Path

from aiohttp import web

from workers.app import STATE, WorkerSettings, build_app
from workers.backends import BACKENDS
from workers.backends.base import Backend

log = logging.getLogger("workers")

DESCRIPTION = """\
Reference worker: verifies the router's signed tickets, accounts its own load, reports
it on /readyz, and forwards only the model payload to its backend.

  inference-worker --backend synthetic --port 3001 --public-url http://127.0.0.1:3001 \\
      --endpoint demo --router-url http://127.0.0.1:8080

With --register-token (or WORKER_REGISTER_TOKEN) it registers itself with the router.
On SIGTERM it reports draining, finishes in-flight requests (up to --grace-s), deregisters
and exits 0.
"""


def _positive(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not v > 0 or v == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {text}")
    return v


def _non_negative(text: str) -> float:
    v = _positive(text) if text.strip() not in ("0", "0.0") else 0.0
    return v


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="inference-worker", description=DESCRIPTION,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backend", choices=BACKENDS, default="synthetic",
                   help="model backend to front (default: synthetic, a built-in stand-in)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on")
    p.add_argument("--port", type=int, default=3000, help="port to listen on (default 3000)")
    p.add_argument("--public-url", help="URL the router gives clients for this worker "
                   "(default http://HOST:PORT); tickets must name exactly this URL")
    p.add_argument("--endpoint", default="default", help="endpoint this worker serves")
    p.add_argument("--router-url", help="router base URL: keys come from its JWKS")
    p.add_argument("--register-token", default=os.environ.get("WORKER_REGISTER_TOKEN"),
                   help="worker token to register with the router (env WORKER_REGISTER_TOKEN)")
    p.add_argument("--perf", type=_positive, help="cost units/s this worker processes "
                   "(default: the backend's figure)")
    p.add_argument("--max-load", type=_positive, help="most in-flight cost to accept")
    p.add_argument("--max-queue-time-s", type=_positive, default=30.0,
                   help="answer 429 when queued work would take longer than this")
    p.add_argument("--replay-window", type=int, default=1024,
                   help="reqnums accepted out of order below the highest seen")
    p.add_argument("--clock-skew-s", type=_non_negative, default=5.0,
                   help="allowed clock difference when checking ticket expiry")
    p.add_argument("--pubkey-file", type=Path, help="router public key PEM (besides JWKS)")
    p.add_argument("--no-verify", action="store_true",
                   help="serve requests without a ticket (development only)")
    p.add_argument("--grace-s", type=_non_negative, default=30.0,
                   help="on SIGTERM, time in-flight requests get to finish")
    p.add_argument("--log-level", default="info",
                   choices=["debug", "info", "warning", "error"])
    syn = p.add_argument_group("synthetic backend")
    syn.add_argument("--ttft-ms", type=_non_negative, default=50.0, help="time to first token")
    syn.add_argument("--tokens-per-s", type=_positive, default=100.0,
                     help="speed of one stream")
    syn.add_argument("--capacity", type=_positive,
                     help="tokens/s shared by all streams (default: --perf or 200)")
    return p


def make_backend(args: argparse.Namespace) -> Backend:
    from workers.backends.synthetic import SyntheticBackend

    return SyntheticBackend(capacity=args.capacity or args.perf or 200.0,
                            tokens_per_s=args.tokens_per_s, ttft_ms=args.ttft_ms)


def main(argv: list[str] | None = None) -> int:
    p = parser()
    args = p.parse_args(argv)
    if not 0 <= args.port <= 65535:
        p.error("--port must be between 0 and 65535")
    if args.replay_window < 1:
        p.error("--replay-window must be >= 1")
    if not args.no_verify and not args.router_url and not args.pubkey_file:
        p.error("give --router-url or --pubkey-file to verify tickets (or --no-verify)")
    if args.pubkey_file and not args.pubkey_file.is_file():
        p.error(f"--pubkey-file {args.pubkey_file}: no such file")
    logging.basicConfig(level=args.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = WorkerSettings(
        public_url=(args.public_url or f"http://{args.host}:{args.port}").rstrip("/"),
        endpoint=args.endpoint, router_url=args.router_url,
        register_token=args.register_token, perf=args.perf, max_load=args.max_load,
        max_queue_time_s=args.max_queue_time_s, replay_window=args.replay_window,
        clock_skew_s=args.clock_skew_s, pubkey_file=args.pubkey_file,
        verify=not args.no_verify, grace_s=args.grace_s)
    if args.no_verify:
        log.warning("--no-verify: serving requests without checking tickets")
    try:
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    except ImportError:
        pass
    try:
        asyncio.run(serve(settings, make_backend(args), args.host, args.port))
    except OSError as exc:
        print(f"error: cannot serve on {args.host}:{args.port}: {exc}", file=sys.stderr)
        return 1
    return 0


async def serve(settings: WorkerSettings, backend: Backend, host: str, port: int) -> None:
    """Serve until SIGTERM/SIGINT, then drain: report it, finish in-flight work, exit."""
    app = build_app(settings, backend)
    runner = web.AppRunner(app, access_log=None, handle_signals=False,
                           shutdown_timeout=settings.grace_s)
    await runner.setup()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await web.TCPSite(runner, host, port).start()
        log.info("worker for endpoint %s serving on %s:%d as %s (backend %s)",
                 settings.endpoint, host, port, settings.public_url, backend.name)
        await stop.wait()
        state = app[STATE]
        state.draining = True
        log.info("draining: %d request(s) in flight", state.inflight_requests)
        deadline = time.monotonic() + settings.grace_s
        while state.inflight_requests and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
    finally:
        await runner.cleanup()
