"""`inference-router`: serve the router, or make a signing key."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import errno
import gc
import logging
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

from router.config import ConfigError, Settings, check_processes
from router.logs import configure as configure_logging
from router.signing import SigningKeyError, write_private_key
from router.version import package_version

log = logging.getLogger("router")

DESCRIPTION = """\
Inference request router and load-balancing proxy.

  inference-router serve --config configs/local.toml   run the router (the demo config
                                                       starts two synthetic workers)
  inference-router keygen --out keys/k1.pem            write a signing key (mode 0600)

Every setting can also come from the environment: ROUTER_SERVER_PORT=9000,
ROUTER_STORE_BACKEND=redis, ROUTER_STORE_REDIS_URL=redis://..., ROUTER_SIGNING_ALGORITHM,
ROUTER_SIGNING_KEY_FILES=a.pem,b.pem, ROUTER_LOG_LEVEL, ROUTER_API_KEY / ROUTER_ADMIN_KEY /
ROUTER_WORKER_TOKEN (one extra key each). See configs/router.example.toml for every setting.

To use several cores, `serve --processes N` runs N router processes on one port
(SO_REUSEPORT) that share the Redis store; it needs store.backend = "redis",
signing.key_files and [[api_keys]], so that every process signs with the same keys.
"""

# Set by `serve --processes N` in each child: its index (0 starts any spawned workers).
_CHILD_ENV = "ROUTER_PROCESS_INDEX"


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="inference-router",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--version", action="version", version=f"%(prog)s {package_version()}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    serve = sub.add_parser(
        "serve", help="run the router", description="Run the router until SIGINT/SIGTERM."
    )
    serve.add_argument(
        "--config",
        "-c",
        type=Path,
        help="TOML config file (default: "
        "built-in defaults: memory store, ephemeral key, no endpoints)",
    )
    serve.add_argument("--host", help="override server.host")
    serve.add_argument("--port", type=int, help="override server.port")
    serve.add_argument(
        "--log-level", choices=["debug", "info", "warning", "error"], help="override log_level"
    )
    serve.add_argument(
        "--processes",
        type=int,
        metavar="N",
        help="override server.processes: N processes on one port "
        "(SO_REUSEPORT), all on the Redis store (default 1)",
    )
    keygen = sub.add_parser(
        "keygen",
        help="write a new signing key (PEM, mode 0600)",
        description="Write a new private signing key. Add its path to "
        "signing.key_files (newest last) to rotate keys.",
    )
    keygen.add_argument("--out", type=Path, required=True, help="file to create")
    keygen.add_argument(
        "--algorithm",
        choices=["rsa", "ed25519"],
        default="rsa",
        help="rsa (RSA-2048, Vast-compatible, default) or ed25519 (faster)",
    )
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = _parser().parse_args(argv)
    if args.command == "keygen":
        try:
            key = write_private_key(args.out, args.algorithm)
        except FileExistsError:
            print(f"error: {args.out} exists; refusing to overwrite a key", file=sys.stderr)
            return 1
        except (OSError, SigningKeyError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        print(f"wrote {args.algorithm} key {key.kid} to {args.out} (mode 0600)")
        return 0
    if args.command != "serve":
        _parser().print_help()
        return 2
    try:
        settings = Settings.from_toml(args.config)
        settings = _override(settings, args)
    except ConfigError as exc:
        print(f"config error: {exc}", file=sys.stderr)
        return 2
    child = os.environ.get(_CHILD_ENV)
    tag = f" [p{child}]" if child is not None else ""
    configure_logging(settings.log_level, tag)
    if settings.server.processes > 1 and child is None:
        return supervise(settings, argv)
    return serve(settings, index=int(child) if child is not None else 0)


def supervise(settings: Settings, argv: list[str]) -> int:
    """Run `server.processes` copies of this command as children; stop with them.

    Signals are forwarded once (the children have their own session, so a terminal's
    Ctrl-C does not reach them twice). If a child exits unbidden the others are stopped
    and the exit code is that child's.
    """
    n = settings.server.processes
    cmd = [sys.executable, "-m", "router", *argv]
    children = [
        subprocess.Popen(cmd, env={**os.environ, _CHILD_ENV: str(i)}, start_new_session=True)
        for i in range(n)
    ]
    log.info(
        "serving on port %d with %d processes (pids %s)",
        settings.server.port,
        n,
        ", ".join(str(c.pid) for c in children),
    )
    stopping = False

    def stop(sig: int, _frame: object = None) -> None:
        nonlocal stopping
        stopping = True
        for c in children:
            if c.poll() is None:
                c.send_signal(sig)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    rc = 0
    running = {c.pid: c for c in children}
    while running:
        pid, status = os.wait()
        child = running.pop(pid, None)
        if child is None:
            continue
        code = os.waitstatus_to_exitcode(status)
        child.returncode = code
        if not stopping:
            log.error("router process %d exited with %d; stopping the others", pid, code)
            rc = code or 1
            stop(signal.SIGTERM)
        elif code != 0 and rc == 0:
            rc = code if code > 0 else 1
    return rc


def _freeze_startup_objects() -> None:
    """Leave what startup made (modules, the app, config) out of later garbage collections.

    A full collection walks every object the collector tracks, and the event loop stops
    while it runs: ~20 ms in a router with 10 workers and 90-114 ms with 10,000 on the
    bench machine, a few times a minute under load (bench/RESULTS.md). Frozen objects are
    still freed when nothing refers to them; only reference cycles among them would stay.
    """
    gc.collect()
    gc.freeze()


def _run(app: Any, settings: Settings, sock: socket.socket) -> None:
    """Serve `app` on `sock` until SIGINT or SIGTERM, then shut down within the grace period.

    Like aiohttp's `run_app`, but the listening socket is a `FrontSite`: proxied requests
    take the fast path (router/proxy/server.py), everything else aiohttp's server.
    """
    from aiohttp import web
    from aiohttp.web_runner import GracefulExit

    from router.proxy.site import FrontSite

    server = settings.server

    async def main() -> None:
        runner = web.AppRunner(
            app,
            handle_signals=True,
            access_log=None,
            shutdown_timeout=server.shutdown_grace_s,
            # a client hanging up cancels its handler, so a proxied upstream request is
            # dropped at once and its load released
            handler_cancellation=True,
            # closes connections idle this long, and ones whose request headers have not
            # all arrived by then (slowloris)
            keepalive_timeout=server.request_read_timeout_s,
        )
        await runner.setup()
        try:
            site = FrontSite(
                runner,
                server.host,
                server.port,
                sock=sock,
                fast=server.fast_proxy,
                grace_s=server.shutdown_grace_s,
            )
            await site.start()
            _freeze_startup_objects()
            await asyncio.Event().wait()
        finally:
            await runner.cleanup()

    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    task = loop.create_task(main())
    try:
        loop.run_until_complete(task)
    except (GracefulExit, KeyboardInterrupt):
        log.info(
            "draining: no new connections; requests in flight get up to %gs",
            server.shutdown_grace_s,
        )
    finally:
        if not task.done():
            task.cancel()  # runs the runner's cleanup: the graceful part of the shutdown
        while not task.done():
            # A second signal (`timeout` and some supervisors signal the process group
            # as well as the process) must not cut the cleanup short; the grace period
            # bounds it.
            with contextlib.suppress(asyncio.CancelledError, GracefulExit, KeyboardInterrupt):
                loop.run_until_complete(task)
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()
        sock.close()
    log.info("stopped")


def _override(settings: Settings, args: argparse.Namespace) -> Settings:
    from dataclasses import replace

    server = settings.server
    if args.host:
        server = replace(server, host=args.host)
    if args.port is not None:
        if not 0 <= args.port <= 65535:
            raise ConfigError("--port: must be between 0 and 65535")
        server = replace(server, port=args.port)
    if args.processes is not None:
        if not 1 <= args.processes <= 64:
            raise ConfigError("--processes: must be between 1 and 64")
        server = replace(server, processes=args.processes)
    if any(ep.spawn for ep in settings.endpoints) and server.port == 0:
        raise ConfigError("server.port: must be fixed (not 0) when endpoints spawn workers")
    level = args.log_level or settings.log_level
    settings = replace(settings, server=server, log_level=level)
    check_processes(settings)
    return settings


def serve(settings: Settings, index: int = 0) -> int:
    """Serve until a signal; `index` > 0: a child of `--processes` beside child 0."""

    from router.app import build_app
    from router.proxy.site import listen_socket
    from router.signing import SigningKeyError
    from router.state import StateFileError

    try:
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    except ImportError:
        log.info("uvloop not installed; using the default event loop")
    server = settings.server
    try:
        # the port first: a router that cannot listen must start nothing (no workers)
        sock = listen_socket(server.host, server.port, reuse_port=server.processes > 1)
    except OSError as exc:
        hint = ""
        if exc.errno == errno.EADDRINUSE:
            hint = "; another process holds it: choose another port with --port N"
        print(
            f"error: cannot listen on {server.host}:{server.port}: {exc.strerror or exc}{hint}",
            file=sys.stderr,
        )
        return 1
    try:
        # spawned demo workers belong to child 0 only: the others would start them again
        app = build_app(settings, spawn_workers=index == 0)
        log.info(
            "starting router on http://%s:%d (store: %s; endpoints: %s)",
            server.host,
            sock.getsockname()[1],
            settings.store.backend,
            ", ".join(e.name for e in settings.endpoints) or "none",
        )
        _run(app, settings, sock)
    except SigningKeyError as exc:
        sock.close()
        print(f"config error: signing.key_files: {exc}", file=sys.stderr)
        return 2
    except StateFileError as exc:  # a torn state file: refuse rather than start empty
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(
            f"error: cannot serve on {settings.server.host}:{settings.server.port}: {exc}",
            file=sys.stderr,
        )
        return 1
    return 0
