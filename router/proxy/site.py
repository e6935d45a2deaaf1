"""The router's listening socket: connections start on the fast path (`server.py`).

An aiohttp site whose protocol factory is the fast path's `Front` when
`server.fast_proxy` is on, else aiohttp's own server: the same app, routes and proxy
core either way.
"""

from __future__ import annotations

import asyncio
import socket
from typing import Any

from aiohttp import web

from router.context import CTX
from router.control.plane import listening
from router.proxy.server import Front
from router.proxy.web import PROXY


def listen_socket(host: str, port: int, *, reuse_port: bool = False) -> socket.socket:
    """Bind the router's port (OSError if taken), before anything else starts.

    The socket is bound but not listening yet: connections are refused, not queued,
    until `FrontSite.start` serves it. `host` is resolved as asyncio would (passive),
    and the first address is used: one socket, one family.
    """
    family, kind, proto, _, addr = socket.getaddrinfo(
        host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:  # several processes accept on one port; the kernel spreads them
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)  # as asyncio binds
        sock.bind(addr)
    except OSError:
        sock.close()
        raise
    return sock


class FrontSite(web.BaseSite):
    """An aiohttp site whose connections take the fast path for proxied requests."""

    __slots__ = ("_fast", "_grace_s", "_host", "_port", "_reuse_port", "_sock", "front")

    def __init__(
        self,
        runner: web.BaseRunner,
        host: str | None = None,
        port: int = 0,
        *,
        sock: socket.socket | None = None,
        reuse_port: bool = False,
        fast: bool = True,
        grace_s: float = 30.0,
    ) -> None:
        super().__init__(runner)
        self._host, self._port, self._sock = host, port, sock
        self._reuse_port, self._fast, self._grace_s = reuse_port, fast, grace_s
        self.front: Front | None = None

    @property
    def name(self) -> str:
        return f"http://{self._host}:{self._port}"

    @property
    def port(self) -> int:
        sockets = getattr(self._server, "sockets", None)
        if sockets:
            return int(sockets[0].getsockname()[1])
        return self._port

    async def start(self) -> None:
        await super().start()
        loop = asyncio.get_running_loop()
        server = self._runner.server
        assert server is not None
        factory: Any = server
        if self._fast:
            app = self._runner.app  # type: ignore[attr-defined]
            self.front = factory = Front(app[CTX], app[PROXY], server)
        if self._sock is not None:
            self._server = await loop.create_server(factory, sock=self._sock, backlog=1024)
        else:
            self._server = await loop.create_server(
                factory,
                self._host,
                self._port,
                backlog=1024,
                reuse_port=self._reuse_port or None,
            )
        host = self._host if self._host not in (None, "", "0.0.0.0", "::") else "127.0.0.1"
        if self._sock is not None:
            host = self._sock.getsockname()[0]
        named = f"[{host}]" if ":" in host else host
        listening(self._runner.app, f"http://{named}:{self.port}")  # type: ignore[attr-defined]

    async def stop(self) -> None:
        """Stop listening; let requests in flight on fast connections finish (bounded)."""
        await super().stop()
        if self.front is not None:
            await self.front.stop(self._grace_s)
