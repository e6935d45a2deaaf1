"""router/state/resp.py against a real redis-server: scripts, failures, reconnects."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis
from redis.commands.core import AsyncScript
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from router.state.resp import Scripts, pack
from tests.conftest import RedisServer

pytestmark = pytest.mark.redis

ECHO = "return {KEYS[1], ARGV[1], tonumber(ARGV[2]) + 1, redis.call('INCR', KEYS[1])}"


@pytest.fixture
async def scripts(redis_url: str) -> AsyncIterator[tuple[aioredis.Redis, AsyncScript, Scripts]]:
    """redis-py on the test Redis, ECHO registered with it, and a `Scripts` beside it."""
    client = aioredis.Redis.from_url(redis_url, decode_responses=True)
    fast = Scripts(redis_url, 0.5)
    try:
        yield client, client.register_script(ECHO), fast
    finally:
        fast.close()
        await client.aclose()


def test_pack_encodes_like_redis_py() -> None:
    assert pack(("EVALSHA", "ab", 1, "k", 1.5, 2, b"\x00")) == (
        b"*7\r\n$7\r\nEVALSHA\r\n$2\r\nab\r\n$1\r\n1\r\n$1\r\nk\r\n$3\r\n1.5\r\n"
        b"$1\r\n2\r\n$1\r\n\x00\r\n"
    )
    with pytest.raises(TypeError):
        pack((True,))


def test_only_plain_redis_urls_take_this_path() -> None:
    assert Scripts.usable("redis://127.0.0.1:6379/0")
    assert Scripts.usable("redis://:secret@10.0.0.5/3")
    assert not Scripts.usable("rediss://10.0.0.5:6379/0")
    assert not Scripts.usable("unix:///tmp/redis.sock")
    assert not Scripts.usable("redis://h:6379/0?socket_timeout=1")


async def test_scripts_run_load_after_a_flush_and_match_redis_py(
    scripts: tuple[aioredis.Redis, AsyncScript, Scripts],
) -> None:
    client, script, fast = scripts
    # not loaded yet: NOSCRIPT, then SCRIPT LOAD and run
    assert await fast.run(script, ["n"], ["hi", 41]) == ["n", "hi", 42, 1]
    assert await script(keys=["n"], args=["hi", 41]) == ["n", "hi", 42, 2]  # same types
    await client.script_flush()  # as after a Redis restart
    assert await fast.run(script, ["n"], ["hi", 1.5]) == ["n", "hi", 2, 3]
    # many in flight on the one connection: each gets its own answer
    got = await asyncio.gather(*(fast.run(script, ["m"], [str(i), i]) for i in range(50)))
    assert sorted(g[3] for g in got) == list(range(1, 51))
    assert all(g[1] == str(g[2] - 1) for g in got)
    with pytest.raises(ResponseError):
        await fast.run(client.register_script("return redis.call('NOPE')"), [], [])
    assert (await fast.run(script, ["n"], ["x", 0]))[3] == 4  # still in step


async def test_a_dropped_connection_is_replaced(
    scripts: tuple[aioredis.Redis, AsyncScript, Scripts],
) -> None:
    client, script, fast = scripts
    await fast.run(script, ["n"], ["a", 0])
    await client.client_kill_filter(_type="normal", skipme=True)  # drops fast's link
    await asyncio.sleep(0.05)
    assert (await fast.run(script, ["n"], ["b", 0]))[3] == 2


async def test_a_stalled_redis_times_out_then_recovers(
    redis_server: RedisServer, redis_url: str
) -> None:
    client = aioredis.Redis.from_url(redis_url, decode_responses=True)
    script = client.register_script(ECHO)
    fast = Scripts(redis_url, 0.3)
    assert redis_server.proc is not None
    try:
        await fast.run(script, ["n"], ["a", 0])
        os.kill(redis_server.proc.pid, signal.SIGSTOP)
        try:
            loop = asyncio.get_running_loop()
            started = loop.time()
            with pytest.raises(RedisTimeoutError):
                await fast.run(script, ["n"], ["b", 0])
            assert loop.time() - started < 1.0  # not retried on a timeout
        finally:
            os.kill(redis_server.proc.pid, signal.SIGCONT)
        assert (await fast.run(script, ["n"], ["c", 0]))[3] >= 2
        redis_server.kill()
        with pytest.raises(RedisConnectionError):
            await fast.run(script, ["n"], ["d", 0])
        redis_server.start()  # back, empty: a new connection, the script loaded again
        assert await fast.run(script, ["n"], ["e", 0]) == ["n", "e", 1, 1]
    finally:
        fast.close()
        await client.aclose()


async def test_password_and_database_from_the_url(
    redis_server: RedisServer, redis_url: str
) -> None:
    client = aioredis.Redis.from_url(redis_url, decode_responses=True)
    await client.config_set("requirepass", "s3cret")
    try:
        url = f"redis://:s3cret@127.0.0.1:{redis_server.port}/2"
        authed = aioredis.Redis.from_url(url, decode_responses=True)
        script = authed.register_script(ECHO)
        fast = Scripts(url, 0.5)
        try:
            await fast.run(script, ["k"], ["x", 0])
            assert await authed.get("k") == "1"  # database 2, where redis-py looks too
            with pytest.raises(RedisConnectionError):
                await Scripts(f"redis://:wrong@127.0.0.1:{redis_server.port}/2", 0.5).run(
                    script, ["k"], ["x", 0]
                )
        finally:
            fast.close()
            await authed.config_set("requirepass", "")
            await authed.aclose()
    finally:
        await client.aclose()


async def test_many_commands_in_one_round_trip_keep_their_order(
    scripts: tuple[aioredis.Redis, AsyncScript, Scripts],
) -> None:
    client, script, fast = scripts
    await client.hset("h", mapping={"a": "1", "b": "2"})
    got = await fast.many(
        [("SET", "s", "v"), ("GET", "s"), ("HGETALL", "h"), ("HGETALL", "missing"), ("INCR", "s2")]
    )
    assert got[0] == "OK" and got[1] == "v" and got[3] == [] and got[4] == 1
    assert dict(zip(got[2][::2], got[2][1::2], strict=True)) == {"a": "1", "b": "2"}
    with pytest.raises(ResponseError):  # an error among them: raised, once all are read
        await fast.many([("GET", "s"), ("INCR", "s"), ("GET", "s")])
    both = await asyncio.gather(fast.many([("GET", "s")] * 3), fast.run(script, ["n"], ["x", 0]))
    assert both == [["v", "v", "v"], ["n", "x", 1, 1]]
    assert await fast.many([]) == []
