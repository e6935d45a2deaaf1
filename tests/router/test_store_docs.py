"""Control-plane state on both stores (documents, the leader lease, activity), and the
memory store's state file."""

from __future__ import annotations

import asyncio
import json
import os
import stat
import subprocess
import sys
import time
from pathlib import Path

import orjson
import pytest

from router.config import Settings
from router.state import StateFileError, StoreUnavailable, open_store
from router.state import statefile as statefile_mod
from router.state.base import Store
from router.state.memory import MemoryStore
from router.state.redis import RedisStore
from tests.conftest import RedisServer

KIND = "endpoint"


def doc(i: int) -> bytes:
    return orjson.dumps({"name": "demo", "writer": i})


# --- documents -------------------------------------------------------------------------


async def test_create_if_absent_wins_exactly_once(store: Store) -> None:
    got = await asyncio.gather(*(store.put_doc(KIND, "demo", doc(i), 0) for i in range(20)))
    won = [(i, v) for i, v in enumerate(got) if v is not None]
    assert len(won) == 1, got
    i, v = won[0]
    assert v >= 1
    assert await store.get_doc(KIND, "demo") == (v, doc(i))


@pytest.mark.redis
async def test_create_if_absent_wins_once_across_replicas(redis_url: str) -> None:
    replicas = [RedisStore(redis_url) for _ in range(4)]
    try:
        got = await asyncio.gather(
            *(r.put_doc(KIND, "demo", doc(i), 0) for i, r in enumerate(replicas * 5))
        )
        assert sum(v is not None for v in got) == 1, got
    finally:
        for r in replicas:
            await r.close()


async def test_put_compares_and_sets_on_the_version(store: Store) -> None:
    v1 = await store.put_doc(KIND, "demo", doc(1), 0)
    assert v1 is not None and v1 >= 1
    assert await store.put_doc(KIND, "demo", doc(2), 0) is None  # exists already
    v2 = await store.put_doc(KIND, "demo", doc(2), v1)
    assert v2 is not None and v2 > v1
    assert await store.put_doc(KIND, "demo", doc(3), v1) is None  # a stale writer loses
    assert await store.put_doc(KIND, "demo", doc(3), v2 + 1) is None
    assert await store.get_doc(KIND, "demo") == (v2, doc(2))
    assert await store.get_doc(KIND, "other") is None
    assert await store.get_doc("workspace", "demo") is None  # kinds are apart


async def test_documents_come_back_byte_for_byte(store: Store) -> None:
    raw = '{ "model" : "café-7b",\n  "emoji": "\U0001f680", "n": 1.10 }'.encode()
    v = await store.put_doc(KIND, "demo", raw, 0)
    assert v is not None
    assert await store.get_doc(KIND, "demo") == (v, raw)
    assert await store.list_docs(KIND) == {"demo": (v, raw)}


async def test_refuses_what_one_store_could_not_keep(store: Store) -> None:
    with pytest.raises(ValueError, match="UTF-8"):
        await store.put_doc(KIND, "demo", b"\xff\xfe", 0)
    with pytest.raises(ValueError, match="kind"):
        await store.put_doc("a:b", "demo", doc(1), 0)
    with pytest.raises(ValueError, match="kind"):
        await store.list_docs("")
    assert await store.docs_version(KIND) == 0


async def test_delete_with_and_without_expected_version(store: Store) -> None:
    v1 = await store.put_doc(KIND, "a", doc(1), 0)
    v2 = await store.put_doc(KIND, "b", doc(2), 0)
    assert v1 is not None and v2 is not None
    assert not await store.delete_doc(KIND, "a", v1 + 100)  # someone changed it: kept
    assert await store.get_doc(KIND, "a") == (v1, doc(1))
    assert await store.delete_doc(KIND, "a", v1)
    assert await store.get_doc(KIND, "a") is None
    assert not await store.delete_doc(KIND, "a", v1)
    assert not await store.delete_doc(KIND, "a")
    assert await store.delete_doc(KIND, "b")
    assert not await store.delete_doc(KIND, "b")
    assert await store.list_docs(KIND) == {}
    # created again, a name never gets back a version a stale writer may still hold
    v3 = await store.put_doc(KIND, "a", doc(3), 0)
    assert v3 is not None and v3 > max(v1, v2)
    assert await store.put_doc(KIND, "a", doc(4), v1) is None


async def test_list_docs_per_kind(store: Store) -> None:
    assert await store.list_docs(KIND) == {}
    va = await store.put_doc(KIND, "a", doc(1), 0)
    vb = await store.put_doc(KIND, "b", doc(2), 0)
    vw = await store.put_doc("workspace", "a", b'{"w":1}', 0)
    assert va is not None and vb is not None and vw is not None
    vb2 = await store.put_doc(KIND, "b", doc(3), vb)
    assert vb2 is not None
    assert await store.list_docs(KIND) == {"a": (va, doc(1)), "b": (vb2, doc(3))}
    assert await store.list_docs("workspace") == {"a": (vw, b'{"w":1}')}
    assert await store.list_docs("nothing") == {}


async def test_docs_version_changes_on_every_write(store: Store) -> None:
    assert await store.docs_version(KIND) == 0  # a fresh store
    seen = [0]

    async def changed() -> None:
        v = await store.docs_version(KIND)
        assert v not in seen
        seen.append(v)

    v = await store.put_doc(KIND, "a", doc(1), 0)
    assert v is not None
    await changed()
    v = await store.put_doc(KIND, "a", doc(2), v)
    assert v is not None
    await changed()
    await store.put_doc(KIND, "b", doc(1), 0)
    await changed()
    assert await store.delete_doc(KIND, "b")
    await changed()
    # nothing written, nothing changed
    assert await store.put_doc(KIND, "a", doc(3), 0) is None
    assert not await store.delete_doc(KIND, "b")
    assert not await store.delete_doc(KIND, "a", v + 1)
    assert await store.docs_version(KIND) == seen[-1]
    assert await store.docs_version("workspace") == 0  # per kind
    await store.put_doc("workspace", "w", doc(1), 0)
    assert await store.docs_version(KIND) == seen[-1]
    await store.delete_doc(KIND, "a")
    await changed()


@pytest.mark.redis
async def test_redis_down_is_unavailable_and_empty_after_restart(
    redis_server: RedisServer, redis_url: str
) -> None:
    store = RedisStore(redis_url)
    try:
        assert await store.put_doc(KIND, "demo", doc(1), 0)
        assert await store.take_lease("leader", "r1", 30)
        await store.add_activity({"demo": (1, 5.0)})
        redis_server.kill()
        calls = [
            store.put_doc(KIND, "demo", doc(2), 1),
            store.get_doc(KIND, "demo"),
            store.delete_doc(KIND, "demo"),
            store.list_docs(KIND),
            store.docs_version(KIND),
            store.take_lease("leader", "r1", 30),
            store.release_lease("leader", "r1"),
            store.add_activity({"demo": (1, 6.0)}),
            store.activity(),
            store.forget_activity("demo"),
        ]
        for call in calls:
            with pytest.raises(StoreUnavailable):
                await call
        redis_server.start()  # empty: Redis lost its data
        assert await store.docs_version(KIND) == 0
        assert await store.list_docs(KIND) == {}
        assert await store.activity() == {}
        assert await store.take_lease("leader", "r2", 30)
    finally:
        await store.close()


# --- the leader lease ---------------------------------------------------------------------


async def test_lease_renewed_by_holder_taken_after_expiry(store: Store) -> None:
    assert await store.take_lease("leader", "r1", 0.2)
    assert not await store.take_lease("leader", "r2", 0.2)
    assert await store.take_lease("leader", "r1", 0.2)  # renew
    assert await store.take_lease("other", "r2", 0.2)  # leases are per name
    await asyncio.sleep(0.3)  # a lease runs out on the clock: nothing to await instead
    assert await store.take_lease("leader", "r2", 30)
    assert not await store.take_lease("leader", "r1", 30)


async def test_release_hands_the_lease_over(store: Store) -> None:
    assert await store.take_lease("leader", "r1", 30)
    await store.release_lease("leader", "r2")  # not the holder: nothing happens
    assert not await store.take_lease("leader", "r2", 30)
    await store.release_lease("leader", "r1")
    assert await store.take_lease("leader", "r2", 30)
    await store.release_lease("nothing", "r1")


async def test_lease_names_are_apart_from_health_poll_leases(store: Store) -> None:
    assert await store.take_lease("w1", "r1", 30)
    assert await store.claim_leases(["w1"], "r2", 30) == {"w1"}


# --- activity -------------------------------------------------------------------------


async def test_activity_sums_counts_and_keeps_the_latest_time(store: Store) -> None:
    assert await store.activity() == {}
    now = time.time()
    await store.add_activity({"a": (2, now), "b": (1, 50.0)})
    await store.add_activity({"a": (3, now - 10)})  # an older time does not win
    await store.add_activity({})
    assert await store.activity() == {"a": (5, now), "b": (1, 50.0)}
    await store.add_activity({"b": (0, 50.5), "c": (7, 1.0)})
    assert await store.activity() == {"a": (5, now), "b": (1, 50.5), "c": (7, 1.0)}
    await store.forget_activity("a")
    await store.forget_activity("nothing")
    assert await store.activity() == {"b": (1, 50.5), "c": (7, 1.0)}
    with pytest.raises(ValueError):
        await store.add_activity({"a": (-1, now)})
    with pytest.raises(ValueError):
        await store.add_activity({"a": (1, float("nan"))})


async def test_concurrent_activity_flushes_all_count(store: Store) -> None:
    await asyncio.gather(*(store.add_activity({"a": (1, float(i))}) for i in range(50)))
    assert await store.activity() == {"a": (50, 49.0)}


# --- the memory store's state file --------------------------------------------------------


async def fill(store: Store) -> dict[str, int]:
    """Write documents of two kinds, one deleted, and some activity; their versions."""
    va = await store.put_doc(KIND, "a", doc(1), 0)
    assert va is not None
    va = await store.put_doc(KIND, "a", doc(2), va)
    vb = await store.put_doc(KIND, "b", doc(3), 0)
    vw = await store.put_doc("workspace", "w", '{"é": 1}'.encode(), 0)
    vc = await store.put_doc(KIND, "c", doc(4), 0)
    assert va and vb and vw and vc
    assert await store.delete_doc(KIND, "c")
    await store.add_activity({"a": (3, 1700000000.123456), "b": (1, 5.0)})
    return {"a": va, "b": vb, "w": vw}


async def test_state_file_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    store = MemoryStore(path)
    v = await fill(store)
    kind_version = await store.docs_version(KIND)
    assert await store.take_lease("leader", "r1", 30)
    await store.close()

    again = MemoryStore(path)
    assert await again.list_docs(KIND) == {"a": (v["a"], doc(2)), "b": (v["b"], doc(3))}
    assert await again.get_doc("workspace", "w") == (v["w"], '{"é": 1}'.encode())
    assert await again.docs_version(KIND) == kind_version
    assert await again.docs_version("workspace") >= 1
    assert await again.activity() == {"a": (3, 1700000000.123456), "b": (1, 5.0)}
    # versions carry on: a stale writer still loses, the current one wins
    assert await again.put_doc(KIND, "a", doc(9), v["a"] - 1) is None
    v_new = await again.put_doc(KIND, "a", doc(9), v["a"])
    assert v_new is not None and v_new > kind_version
    # a deleted name comes back with a version above any it had
    vc = await again.put_doc(KIND, "c", doc(5), 0)
    assert vc is not None and vc > v_new
    # leases are live state: not kept
    assert await again.take_lease("leader", "r2", 30)
    await again.close()


async def test_documents_are_on_disk_when_the_call_returns(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    store = MemoryStore(path)
    v = await store.put_doc(KIND, "a", doc(1), 0)
    assert await MemoryStore(path).get_doc(KIND, "a") == (v, doc(1))  # no close first
    assert await store.delete_doc(KIND, "a")
    assert await MemoryStore(path).list_docs(KIND) == {}
    await store.close()


async def test_activity_written_at_most_once_per_interval(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "state.json"
    writes: list[bytes] = []
    real = statefile_mod.write_atomic

    def counting(p: Path, data: bytes) -> None:
        writes.append(data)
        real(p, data)

    monkeypatch.setattr("router.state.memory.write_atomic", counting)
    # the interval is what is tested, so the test waits on the clock
    store = MemoryStore(path, activity_save_interval_s=0.4)
    for i in range(10):
        await store.add_activity({"a": (1, float(i))})
    assert writes == []  # not in the call: a timer writes them
    await asyncio.sleep(0.05)
    assert len(writes) == 1
    for i in range(10, 20):
        await store.add_activity({"a": (1, float(i))})
    await asyncio.sleep(0.1)
    assert len(writes) == 1  # within the interval: held back
    await asyncio.sleep(0.45)
    assert len(writes) == 2
    assert await MemoryStore(path).activity() == {"a": (20, 19.0)}
    await asyncio.sleep(0.5)
    assert len(writes) == 2  # nothing changed, nothing written
    await store.add_activity({"a": (1, 30.0)})
    await store.close()  # writes what the timer had not yet
    assert len(writes) == 3
    assert await MemoryStore(path).activity() == {"a": (21, 30.0)}


async def test_crash_before_rename_leaves_the_old_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "state.json"
    store = MemoryStore(path)
    v = await store.put_doc(KIND, "a", doc(1), 0)
    assert v is not None
    before = path.read_bytes()

    def crash(src: str, dst: str) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(StoreUnavailable, match=r"state\.json"):
        await store.put_doc(KIND, "a", doc(2), v)
    with pytest.raises(StoreUnavailable):
        await store.delete_doc(KIND, "a")
    # the store is as it was, the file untouched, no temp file left behind
    assert await store.get_doc(KIND, "a") == (v, doc(1))
    assert await store.docs_version(KIND) == v
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["state.json"]
    assert await MemoryStore(path).get_doc(KIND, "a") == (v, doc(1))
    monkeypatch.undo()
    v2 = await store.put_doc(KIND, "a", doc(2), v)  # the disk is back
    assert v2 is not None
    assert await MemoryStore(path).get_doc(KIND, "a") == (v2, doc(2))
    await store.close()


async def test_a_failing_activity_write_keeps_the_counts_and_retries(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "state.json"
    store = MemoryStore(path, activity_save_interval_s=0.05)
    real = statefile_mod.write_atomic
    fail = [True]

    def flaky(p: Path, data: bytes) -> None:
        if fail[0]:
            raise OSError(5, "Input/output error")
        real(p, data)

    monkeypatch.setattr("router.state.memory.write_atomic", flaky)
    await store.add_activity({"a": (2, 1.0)})
    await asyncio.sleep(0.02)
    assert "cannot write" in caplog.text
    assert await store.activity() == {"a": (2, 1.0)}  # no count lost, none to add again
    fail[0] = False
    await asyncio.sleep(0.15)
    assert await MemoryStore(path).activity() == {"a": (2, 1.0)}
    await store.close()


async def test_large_state_is_written_in_a_thread(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "state.json"
    store = MemoryStore(path)
    small = await store.put_doc(KIND, "small", doc(1), 0)
    assert small is not None
    big = orjson.dumps({"spec": "x" * statefile_mod.THREAD_ABOVE_BYTES})
    on_loop: list[bool] = []
    real = statefile_mod.write_atomic

    def where(p: Path, data: bytes) -> None:
        try:
            asyncio.get_running_loop()
            on_loop.append(True)
        except RuntimeError:
            on_loop.append(False)
        real(p, data)

    monkeypatch.setattr("router.state.memory.write_atomic", where)
    v = await store.put_doc(KIND, "small", doc(2), small)
    vb = await store.put_doc(KIND, "big", big, 0)
    assert await store.delete_doc(KIND, "small")
    assert on_loop == [True, False, False]  # once the file is large, off the event loop
    assert await MemoryStore(path).list_docs(KIND) == {"big": (vb, big)}
    assert v is not None
    await store.close()


def test_state_file_mode_is_0600(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    path.write_text("{}")
    os.chmod(path, 0o644)
    statefile_mod.write_atomic(path, b"{}")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


async def test_state_file_written_by_a_put_is_0600(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    store = MemoryStore(path)
    await store.put_doc(KIND, "a", doc(1), 0)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    await store.close()


async def test_missing_state_file_is_an_empty_store(tmp_path: Path) -> None:
    store = MemoryStore(tmp_path / "new.json")
    assert not (tmp_path / "new.json").exists()
    assert await store.list_docs(KIND) == {}
    assert await store.docs_version(KIND) == 0
    # its own directory is made (the router's data directory), not the ones above it
    MemoryStore(tmp_path / "data" / "state.json")
    assert (tmp_path / "data").is_dir()
    with pytest.raises(StateFileError, match="cannot make its directory"):
        MemoryStore(tmp_path / "nowhere" / "deeper" / "state.json")


async def test_torn_state_file_raises_naming_it(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    store = MemoryStore(path)
    await fill(store)
    await store.close()
    whole = path.read_bytes()
    for torn in (whole[: len(whole) // 2], b"", b"\x00" * 16):
        path.write_bytes(torn)
        with pytest.raises(StateFileError, match="not valid JSON") as err:
            MemoryStore(path)
        assert str(path) in str(err.value)


def state(**over: object) -> dict[str, object]:
    base: dict[str, object] = {"format": 1, "kinds": {}, "docs": {}, "activity": {}}
    base.update(over)
    return base


@pytest.mark.parametrize(
    ("content", "fault"),
    [
        ([], "top level: must be an object"),
        ({"docs": {}}, "missing"),
        (state(extra=1), "unknown \\['extra'\\]"),
        (state(format=2), "format: 2"),
        (state(kinds=[]), "kinds: must be an object"),
        (state(kinds={"endpoint": -1}), "kinds.endpoint: must be an integer >= 0"),
        (state(kinds={"a:b": 1}), "kind must be non-empty"),
        (state(docs={"endpoint": []}), "docs.endpoint: must be an object"),
        (state(docs={"endpoint": {"a": {"version": 1}}}), "docs.endpoint.a: must have"),
        (
            state(docs={"endpoint": {"a": {"version": 0, "doc": "{}"}}}),
            "docs.endpoint.a.version: must be an integer >= 1",
        ),
        (
            state(docs={"endpoint": {"a": {"version": True, "doc": "{}"}}}),
            "docs.endpoint.a.version",
        ),
        (
            state(docs={"endpoint": {"a": {"version": 1, "doc": {"x": 1}}}}),
            "docs.endpoint.a.doc: must be a string",
        ),
        (state(activity={"a": 5}), "activity.a: must be \\[inferences"),
        (state(activity={"a": [1.5, 2.0]}), "activity.a\\[0\\]"),
        (state(activity={"a": [1, "now"]}), "activity.a: last activity time"),
    ],
)
def test_wrongly_shaped_state_file_raises_naming_it(
    tmp_path: Path, content: object, fault: str
) -> None:
    path = tmp_path / "state.json"
    path.write_text(json.dumps(content))
    with pytest.raises(StateFileError, match=fault) as err:
        MemoryStore(path)
    assert str(err.value).startswith(f"state file {path}: ")


def test_unreadable_state_file_raises(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    path.mkdir()  # a directory where the file should be
    with pytest.raises(StateFileError, match="cannot read"):
        MemoryStore(path)


async def test_kind_version_never_behind_its_documents(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    path.write_text(
        json.dumps(state(kinds={}, docs={"endpoint": {"a": {"version": 7, "doc": "{}"}}}))
    )
    store = MemoryStore(path)
    assert await store.docs_version(KIND) == 7
    assert await store.put_doc(KIND, "b", b"{}", 0) == 8


async def test_open_store_passes_the_state_file(tmp_path: Path) -> None:
    cfg = tmp_path / "router.toml"
    cfg.write_text('[store]\nstate_file = "state.json"\n')
    store = open_store(Settings.from_toml(cfg).store)
    await store.put_doc(KIND, "a", doc(1), 0)
    await store.close()
    assert (tmp_path / "state.json").exists()


def test_serve_refuses_a_torn_state_file(tmp_path: Path) -> None:
    (tmp_path / "state.json").write_bytes(b'{"format": 1, "kin')
    cfg = tmp_path / "router.toml"
    cfg.write_text('[server]\nport = 0\n[store]\nstate_file = "state.json"\n')
    # a process of its own: serving sets the event loop policy
    done = subprocess.run(
        [sys.executable, "-m", "router", "serve", "--config", str(cfg)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1, done.stderr
    assert f"error: state file {tmp_path / 'state.json'}: not valid JSON" in done.stderr
