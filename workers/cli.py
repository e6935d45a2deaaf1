"""`inference-worker`: the reference worker sidecar in front of a model backend."""

from __future__ import annotations

import argparse
import asyncio
import logging
import math
import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path

from aiohttp import web

from router.logs import configure as configure_logging
from router.signing import SigningKeyError
from router.version import package_version
from workers.app import STATE, build_app
from workers.backends import Backend
from workers.keys import load_pubkey_file
from workers.settings import BACKEND_NAMES, SettingsError, WorkerSettings
from workers.tasks import cancel_and_wait
from workers.verify import DEFAULT_MAX_SEGMENTS

log = logging.getLogger(__name__)

DESCRIPTION = """\
Reference worker: checks the router's signed tickets, accounts its own load, reports it
on /readyz (and /metrics), and hands only the model payload to its backend.

  inference-worker --backend synthetic --port 3001 --endpoint demo \\
      --router-url http://127.0.0.1:8080
  inference-worker --backend openai --backend-url http://127.0.0.1:8000 \\
      --host 0.0.0.0 --port 3000 --public-url http://10.0.0.7:3000 --endpoint llama \\
      --router-url http://router:8080

Keys come from the router's /.well-known/jwks.json (fetched in the background until the
router answers) and/or --pubkey-file. With --register-token (or WORKER_REGISTER_TOKEN)
the worker registers itself with the router and re-registers every --register-interval-s
(15 s). On SIGTERM or SIGINT it reports draining, refuses new work, lets in-flight
requests finish (up to --grace-s), deregisters and exits 0; a second signal stops waiting.
"""

_SHUTDOWN_AFTER_GRACE_S = 1.0  # aiohttp's own wait for connections once grace is over


def _number(text: str, *, allow_zero: bool) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not math.isfinite(v) or v < 0 or (v == 0 and not allow_zero):
        raise argparse.ArgumentTypeError(
            f"must be a finite number {'>=' if allow_zero else '>'} 0, got {text}"
        )
    return v


def _positive(text: str) -> float:
    return _number(text, allow_zero=False)


def _non_negative(text: str) -> float:
    return _number(text, allow_zero=True)


def _fraction(text: str) -> float:
    v = _number(text, allow_zero=True)
    if v > 1:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1, got {text}")
    return v


def _port(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {text!r}") from None
    if not 0 <= v <= 65535:
        raise argparse.ArgumentTypeError(f"must be between 0 and 65535, got {v}")
    return v


def _count(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {v}")
    return v


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="inference-worker",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--backend",
        choices=BACKEND_NAMES,
        default="synthetic",
        help="model backend to front (default: synthetic, a built-in stand-in); "
        "tgi, openai (vLLM, SGLang, llama.cpp) and bentoml forward to a model "
        "server at --backend-url",
    )
    p.add_argument(
        "--backend-url",
        metavar="URL",
        help="the model server's base URL, required with --backend tgi, openai "
        "or bentoml (e.g. http://127.0.0.1:8000)",
    )
    p.add_argument(
        "--backend-health-path",
        metavar="PATH",
        help="the model server's path that answers 200 once it can serve (default: the "
        "backend's own: /health for tgi and openai, /readyz for bentoml); e.g. /v1/models "
        "for servers without /health, such as llama-cpp-python's",
    )
    p.add_argument(
        "--host",
        default="127.0.0.1",
        metavar="ADDR",
        help="address to listen on (default 127.0.0.1)",
    )
    p.add_argument(
        "--port", type=_port, default=3000, metavar="N", help="port to listen on (default 3000)"
    )
    p.add_argument(
        "--public-url",
        metavar="URL",
        help="URL the router gives clients for this worker "
        "(default http://HOST:PORT); tickets must name exactly this URL",
    )
    p.add_argument(
        "--endpoint",
        default="default",
        metavar="NAME",
        help="endpoint this worker serves; tickets must name it (default: default)",
    )
    p.add_argument(
        "--router-url",
        metavar="URL",
        help="router base URL: its JWKS gives the keys, and --register-token registers there",
    )
    p.add_argument(
        "--register-token",
        default=os.environ.get("WORKER_REGISTER_TOKEN"),
        metavar="TOKEN",
        help="worker token to register with the router (default: the "
        "WORKER_REGISTER_TOKEN environment variable)",
    )
    p.add_argument(
        "--register-interval-s",
        type=_positive,
        default=15.0,
        metavar="S",
        help="re-register this often, so a router whose store lost its state "
        "(Redis restarted empty) finds the worker again (default 15)",
    )
    p.add_argument(
        "--perf",
        type=_positive,
        metavar="N",
        help="cost units/s this worker processes, reported to the router "
        "(default: synthetic --capacity; tgi and openai 1000 tokens/s; required "
        "with bentoml, in the service's own units)",
    )
    p.add_argument(
        "--max-load",
        type=_positive,
        metavar="N",
        help="most in-flight cost to accept (default: no limit)",
    )
    p.add_argument(
        "--max-queue-time-s",
        type=_positive,
        default=30.0,
        metavar="S",
        help="answer 429 when queued work would take longer than this (default 30)",
    )
    p.add_argument(
        "--replay-max-segments",
        type=_count,
        default=DEFAULT_MAX_SEGMENTS,
        metavar="N",
        help="used reqnums are kept until their tickets expire, 64 to a segment of "
        "~200 bytes; past N segments new tickets get 503 replay_memory_full rather "
        f"than forgetting (default {DEFAULT_MAX_SEGMENTS:,}, ~100 MB)",
    )
    p.add_argument(
        "--replay-window",
        type=_count,
        metavar="N",
        help="deprecated and ignored: used reqnums are now kept until their tickets "
        "expire, however many come after them",
    )
    p.add_argument(
        "--clock-skew-s",
        type=_non_negative,
        default=5.0,
        metavar="S",
        help="clock difference allowed when checking ticket expiry (default 5)",
    )
    p.add_argument(
        "--cost-tolerance",
        type=_fraction,
        default=0.5,
        metavar="F",
        help="refuse a ticket (401 ticket_cost_too_low) whose cost is below the "
        "request's own cost (tokens asked for + prompt length / 4, or width x height x "
        "steps) by more than this fraction, so a client cannot buy a cheap ticket for "
        "an expensive request; 0: the ticket must cover it all, 1: no check (default 0.5)",
    )
    p.add_argument(
        "--jwks-refresh-s",
        type=_non_negative,
        default=60.0,
        metavar="S",
        help="refetch the router's JWKS this often, so keys it dropped stop "
        "verifying (default 60; 0: only when a ticket names an unknown key)",
    )
    p.add_argument(
        "--pubkey-file",
        type=Path,
        metavar="PEM",
        help="router public key PEM, used with or instead of the JWKS",
    )
    p.add_argument(
        "--no-verify",
        action="store_true",
        help="serve requests without a ticket: anyone who can reach the worker "
        "may use it (development only)",
    )
    p.add_argument(
        "--grace-s",
        type=_non_negative,
        default=30.0,
        metavar="S",
        help="on SIGTERM, time in-flight requests get to finish (default 30)",
    )
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    p.add_argument("--version", action="version", version=f"%(prog)s {package_version()}")
    syn = p.add_argument_group("synthetic backend")
    syn.add_argument(
        "--ttft-ms",
        type=_non_negative,
        default=50.0,
        metavar="MS",
        help="time to first token in ms (default 50)",
    )
    syn.add_argument(
        "--tokens-per-s",
        type=_positive,
        default=200.0,
        metavar="N",
        help="speed of one stream (default 200)",
    )
    syn.add_argument(
        "--capacity",
        type=_positive,
        metavar="N",
        help="tokens/s shared by all streams in flight (default: --perf, else 4 x --tokens-per-s)",
    )
    syn.add_argument(
        "--kv-cache-tokens",
        type=int,
        default=0,
        metavar="N",
        help="model a prefix KV cache of N tokens (4 prompt characters each; default 0: none)",
    )
    syn.add_argument(
        "--prefill-tokens-per-s",
        type=_non_negative,
        default=0.0,
        metavar="N",
        help="uncached prompt tokens prefilled per second, one request at a time "
        "(default 0: prefill takes no time)",
    )
    syn.add_argument(
        "--block-chars",
        type=int,
        default=64,
        metavar="N",
        help="the KV cache's block, in prompt characters (default 64: 16 tokens)",
    )
    return p


def settings_from_args(args: argparse.Namespace) -> WorkerSettings:
    return WorkerSettings(
        backend=args.backend,
        backend_url=args.backend_url,
        backend_health_path=args.backend_health_path,
        host=args.host,
        port=args.port,
        public_url=args.public_url or "",
        endpoint=args.endpoint,
        router_url=args.router_url,
        register_token=args.register_token or None,
        perf=args.perf,
        max_load=args.max_load,
        max_queue_time_s=args.max_queue_time_s,
        register_interval_s=args.register_interval_s,
        jwks_refresh_s=args.jwks_refresh_s,
        replay_max_segments=args.replay_max_segments,
        clock_skew_s=args.clock_skew_s,
        cost_tolerance=args.cost_tolerance,
        pubkey_file=args.pubkey_file,
        verify=not args.no_verify,
        grace_s=args.grace_s,
        ttft_ms=args.ttft_ms,
        tokens_per_s=args.tokens_per_s,
        capacity=args.capacity,
        kv_cache_tokens=args.kv_cache_tokens,
        prefill_tokens_per_s=args.prefill_tokens_per_s,
        block_chars=args.block_chars,
    )


def main(argv: list[str] | None = None) -> int:
    p = parser()
    args = p.parse_args(argv)
    if not args.no_verify and not args.router_url and not args.pubkey_file:
        p.error(
            "give --router-url or --pubkey-file so tickets can be verified "
            "(or --no-verify to serve anyone)"
        )
    if args.register_token and not args.router_url:
        p.error("--register-token needs --router-url")
    try:
        settings = settings_from_args(args)
    except SettingsError as exc:
        p.error(_flag_message(str(exc)))
    if settings.pubkey_file is not None:
        try:
            load_pubkey_file(settings.pubkey_file)
        except SigningKeyError as exc:
            p.error(f"--pubkey-file: {exc}")
    configure_logging(args.log_level)
    if args.replay_window is not None:
        log.warning(
            "--replay-window is deprecated and ignored: used reqnums are kept until their "
            "tickets expire (see --replay-max-segments)"
        )
    warn_about(settings)
    try:
        with asyncio.Runner(loop_factory=_loop_factory()) as runner:
            runner.run(serve(settings))
    except OSError as exc:
        print(
            f"inference-worker: cannot serve on {settings.host}:{settings.port}: {exc}",
            file=sys.stderr,
        )
        return 1
    return 0


def warn_about(settings: WorkerSettings) -> None:
    """Log, once at start, settings that work but are likely not what was meant."""
    if not settings.verify:
        log.warning(
            "--no-verify: tickets are not checked; this worker serves anyone who can reach %s",
            settings.public_url,
        )
    if settings.router_url and not settings.register_token:
        # Nothing else would ever say why the router sends this worker no requests.
        log.warning(
            "no --register-token: this worker will not register with %s; it gets requests "
            "only if the router's config lists url = %r under endpoint %r. Add "
            "--register-token TOKEN (or WORKER_REGISTER_TOKEN) with a worker token for that "
            "endpoint, or list the worker in the router's config",
            settings.router_url,
            settings.public_url,
            settings.endpoint,
        )


def _flag_message(message: str) -> str:
    """Name the flag, not the settings field: 'grace_s: ...' -> '--grace-s: ...'."""
    name, sep, rest = message.partition(": ")
    flag = "--" + name.replace("_", "-")
    return f"{flag}: {rest}" if sep else message


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


async def serve(settings: WorkerSettings, backend: Backend | None = None) -> None:
    """Serve until SIGTERM/SIGINT, then drain: report it, finish in-flight work, leave."""
    app = build_app(settings, backend)
    runner = web.AppRunner(
        app,
        access_log=None,
        handle_signals=False,
        handler_cancellation=True,
        shutdown_timeout=_SHUTDOWN_AFTER_GRACE_S,
    )
    await runner.setup()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await web.TCPSite(runner, settings.host, settings.port).start()
        state = app[STATE]
        log.info(
            "worker for endpoint %s on %s:%d as %s (backend %s, perf %.6g)",
            settings.endpoint,
            settings.host,
            settings.port,
            settings.public_url,
            state.backend.name,
            state.perf,
        )
        await stop.wait()
        stop.clear()  # a second signal stops the grace period early
        state.start_draining()
        log.info(
            "draining: %d request(s) in flight, waiting up to %ss",
            state.load.requests,
            settings.grace_s,
        )
        await _wait_any(state.load.idle, stop, settings.grace_s)
        if state.load.requests:
            log.warning("stopping with %d request(s) still in flight", state.load.requests)
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
        await runner.cleanup()
    log.info("worker stopped")


async def _wait_any(a: asyncio.Event, b: asyncio.Event, timeout_s: float) -> None:
    tasks = [
        asyncio.create_task(a.wait(), name="worker-drain-idle"),
        asyncio.create_task(b.wait(), name="worker-drain-signal"),
    ]
    try:
        await asyncio.wait(tasks, timeout=timeout_s, return_when=asyncio.FIRST_COMPLETED)
    finally:
        await cancel_and_wait(*tasks)
