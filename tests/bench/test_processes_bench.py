"""bench/processes_bench.py's pure parts: commandstats deltas and MONITOR line counts."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType


def _load() -> ModuleType:
    path = Path(__file__).resolve().parents[2] / "bench" / "processes_bench.py"
    spec = importlib.util.spec_from_file_location("processes_bench", path)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # its dataclasses look their module up there
    spec.loader.exec_module(mod)
    return mod


pb = _load()


def test_delta_keeps_what_changed_and_leaves_out_the_first_reading() -> None:
    before = {"evalsha": (10, 1000), "get": (5, 50), "info": (3, 30)}
    after = {"evalsha": (25, 4000), "get": (5, 50), "info": (4, 40), "hset": (2, 8)}
    # info grew by one: the "before" reading itself, so nothing is left of it
    assert pb.delta(after, before) == {"evalsha": (15, 3000), "hset": (2, 8)}


def test_monitor_lines_split_round_trips_from_script_commands() -> None:
    lines = [
        "OK",
        '1764633600.123456 [0 127.0.0.1:40000] "evalsha" "abc" "2" "k1" "k2"',
        '1764633600.123500 [0 lua] "HINCRBY" "ir:w:1" "load" "1"',
        '1764633600.123501 [0 lua] "hincrby" "ir:w:1" "n" "1"',
        '1764633600.123502 [0 lua] "EXPIRE" "ir:w:1" "30"',
        '1764633600.200000 [0 unix:/tmp/r.sock] "GET" "ir:x"',
        "garbage",
    ]
    assert pb.count_monitor(lines) == {
        ("client", "EVALSHA"): 1,
        ("lua", "HINCRBY"): 2,
        ("lua", "EXPIRE"): 1,
        ("client", "GET"): 1,
    }
