"""EVALSHA on one pipelined Redis connection, parsed by hiredis: the per-request scripts.

Every `/route` and proxied request runs two scripts (issue, then release), batched per
event-loop pass (`_Batcher` in redis.py). Through redis-py each batch paid ~40-50 µs of
CPU in its generic command path: pool checkout under a condition, argument encoding,
retry and timeout wrappers, response parsing, pool release (py-spy: 22% of a proxied
request on the Redis store). These two scripts need none of it: `Scripts` writes the
packed command on one long-lived connection and hands replies, in order, to the callers
waiting for them. hiredis is the parser redis-py itself uses. Plain `redis://` URLs only
(host, port, database, user and password); others keep redis-py for these calls too.

Failures read as redis-py's do, so the store maps them the same way (503 at the edge):
a broken connection is `ConnectionError` (tried once more, on a new connection, as
redis-py's `Retry(NoBackoff(), 1)` does), no answer within the timeout is `TimeoutError`
(never retried; the connection is dropped, as its replies would come out of step), an
error reply is `ResponseError`, and `NOSCRIPT` (Redis restarted empty) loads the script
and runs it again. Hand-written on purpose; covered by tests/router/test_resp.py and the
Redis store contract tests.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from typing import Any
from urllib.parse import unquote, urlsplit

import hiredis
from redis.commands.core import AsyncScript
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError


def pack(args: tuple[Any, ...] | list[Any]) -> bytes:
    """A RESP array of bulk strings; numbers as redis-py encodes them (str, repr)."""
    out = [b"*%d\r\n" % len(args)]
    for a in args:
        if isinstance(a, bytes):
            b = a
        elif isinstance(a, str):
            b = a.encode()
        elif isinstance(a, bool):
            raise TypeError("booleans are not Redis arguments")
        elif isinstance(a, int):
            b = b"%d" % a
        elif isinstance(a, float):
            b = repr(a).encode()
        else:
            raise TypeError(f"cannot send {type(a).__name__} to Redis")
        out += (b"$%d\r\n" % len(b), b, b"\r\n")
    return b"".join(out)


class _Conn(asyncio.Protocol):
    """One connection; replies go to the waiting futures in the order sent."""

    def __init__(self) -> None:
        self.reader = hiredis.Reader(encoding="utf-8")
        # (future, replies still to come, replies so far or None for a single command)
        self.waiters: deque[tuple[asyncio.Future[Any], list[int], list[Any] | None]] = deque()
        self.transport: asyncio.Transport | None = None
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.reader.feed(data)
        while True:
            try:
                reply = self.reader.gets()
            except hiredis.ProtocolError:
                self.close()
                return
            if reply is False:
                return
            if not self.waiters:  # a reply nobody asked for: out of step, start again
                self.close()
                return
            fut, left, got = self.waiters[0]
            if got is not None:  # one of several commands sent together
                got.append(reply)
                left[0] -= 1
                if left[0]:
                    continue
                reply = next((r for r in got if isinstance(r, hiredis.ReplyError)), got)
            self.waiters.popleft()
            if fut.done():
                continue  # its caller timed out (the connection is closing) or left
            if isinstance(reply, hiredis.ReplyError):
                msg = str(reply)
                fut.set_exception(
                    NoScriptError(msg) if msg.startswith("NOSCRIPT") else ResponseError(msg)
                )
            else:
                fut.set_result(reply)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        while self.waiters:
            fut, _, _ = self.waiters.popleft()
            if not fut.done():
                fut.set_exception(
                    RedisConnectionError("connection to redis lost" if exc is None else str(exc))
                )

    def send(self, command: bytes, count: int = 0) -> asyncio.Future[Any]:
        """Write `command`; its reply, or with `count`, that many commands' replies."""
        assert self.transport is not None
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.waiters.append((fut, [count], [] if count else None))
        self.transport.write(command)
        return fut

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.abort()  # connection_lost fails the waiters


class Scripts:
    """Run registered scripts by EVALSHA over one pipelined connection."""

    def __init__(self, url: str, timeout_s: float) -> None:
        u = urlsplit(url)
        self.host = u.hostname or "127.0.0.1"
        self.port = u.port or 6379
        self.db = int(u.path.lstrip("/") or 0)
        self.username = unquote(u.username) if u.username else None
        self.password = unquote(u.password) if u.password else None
        self.timeout_s = timeout_s
        self._conn: _Conn | None = None
        self._lock = asyncio.Lock()

    @staticmethod
    def usable(url: str) -> bool:
        u = urlsplit(url)
        if u.scheme != "redis" or u.query or u.fragment:
            return False
        try:
            int(u.path.lstrip("/") or 0)
            _ = u.port
        except ValueError:
            return False
        return True

    async def run(self, script: AsyncScript, keys: list[str], args: list[Any]) -> Any:
        command = pack(("EVALSHA", script.sha, len(keys), *keys, *args))
        retried = loaded = False
        while True:
            try:
                return await self._call(command)
            except NoScriptError:
                if loaded:
                    raise
                loaded = True
                await self._call(pack(("SCRIPT", "LOAD", script.script)))
            except RedisConnectionError:
                if retried:
                    raise
                retried = True  # a connection Redis dropped (restarted): once more, anew

    async def many(self, commands: list[tuple[Any, ...]]) -> list[Any]:
        """Several commands in one write and one round trip (not a transaction)."""
        if not commands:
            return []
        data = b"".join(pack(c) for c in commands)
        try:
            return list(await self._call(data, len(commands)))
        except RedisConnectionError:
            return list(await self._call(data, len(commands)))  # once more, anew

    async def _call(self, command: bytes, count: int = 0) -> Any:
        conn = self._conn
        if conn is None or conn.closed:
            conn = await self._connect()
        fut = conn.send(command, count)
        try:
            async with asyncio.timeout(self.timeout_s):
                return await fut
        except TimeoutError:
            conn.close()
            raise RedisTimeoutError("redis did not answer in time") from None

    async def _connect(self) -> _Conn:
        async with self._lock:
            if self._conn is not None and not self._conn.closed:
                return self._conn
            loop = asyncio.get_running_loop()
            conn: _Conn | None = None
            try:
                async with asyncio.timeout(self.timeout_s):
                    _, conn = await loop.create_connection(_Conn, self.host, self.port)
                    setup = []
                    if self.password is not None:
                        auth = (
                            ("AUTH", self.username, self.password)
                            if self.username
                            else ("AUTH", self.password)
                        )
                        setup.append(conn.send(pack(auth)))
                    if self.db:
                        setup.append(conn.send(pack(("SELECT", self.db))))
                    for result in await asyncio.gather(*setup, return_exceptions=True):
                        if isinstance(result, BaseException):
                            raise result
            except (OSError, TimeoutError, RedisConnectionError) as exc:
                if conn is not None:
                    conn.close()
                raise RedisConnectionError(
                    f"cannot connect to redis: {exc or type(exc).__name__}"
                ) from exc
            except ResponseError as exc:
                if conn is not None:
                    conn.close()
                raise RedisConnectionError(f"redis refused the connection: {exc}") from exc
            self._conn = conn
            return conn

    def close(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(Exception):
                self._conn.close()
            self._conn = None
