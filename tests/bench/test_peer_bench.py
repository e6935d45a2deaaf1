"""bench/peer_bench.py's pure parts: the /proc CPU reader, round order, the table.

Nothing here installs or starts a peer; the bench itself is run by hand (bench/RESULTS.md).
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import time
from pathlib import Path
from types import ModuleType

import pytest


def _load() -> ModuleType:
    path = Path(__file__).resolve().parents[2] / "bench" / "peer_bench.py"
    spec = importlib.util.spec_from_file_location("peer_bench", path)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # its dataclasses look their module up there
    spec.loader.exec_module(mod)
    return mod


pb = _load()
DIRECT, Row, format_table, parse_stat = pb.DIRECT, pb.Row, pb.format_table, pb.parse_stat
rotated, tree_cpu_s = pb.rotated, pb.tree_cpu_s

_BURN = "import time\nt = time.process_time()\nwhile time.process_time() - t < {s}: pass\n"


def test_parse_stat_reads_a_name_with_spaces_and_parentheses() -> None:
    # pid (comm) state ppid pgrp session tty tpgid flags minflt cminflt majflt cmajflt
    # utime stime cutime cstime ...
    line = "4242 (a (b) c) S 17 4242 4242 0 -1 4194560 10 0 0 0 300 45 7 3 20 0 1 0 99\n"
    assert parse_stat(line) == (17, 300 + 45 + 7 + 3)


def _fake_proc(tmp: Path, procs: dict[int, tuple[int, int]]) -> Path:
    for pid, (ppid, utime) in procs.items():
        d = tmp / str(pid)
        d.mkdir()
        (d / "stat").write_text(f"{pid} (p) S {ppid} 0 0 0 0 0 0 0 0 0 {utime} 0 0 0 20 0\n")
    (tmp / "self").mkdir()  # not a pid: skipped
    (tmp / "999").mkdir()  # a process gone between the listing and the read
    return tmp


def test_tree_cpu_sums_the_root_and_every_descendant_only(tmp_path: Path) -> None:
    ticks = os.sysconf("SC_CLK_TCK")
    proc = _fake_proc(
        tmp_path,
        # 10 -> 11 -> 12 is the tree; 20 is a sibling of 10, 1 their parent
        {1: (0, 1000), 10: (1, ticks), 11: (10, 2 * ticks), 12: (11, 3 * ticks), 20: (1, 500)},
    )
    assert tree_cpu_s(10, proc) == pytest.approx(6.0)
    assert tree_cpu_s(12, proc) == pytest.approx(3.0)
    assert tree_cpu_s(4242, proc) == 0.0


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs Linux /proc")
def test_tree_cpu_counts_a_busy_child_of_a_live_process() -> None:
    # the parent sleeps while its child burns 0.3 s of CPU: the tree must see the child's
    parent = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import subprocess, sys\n"
            f"subprocess.run([sys.executable, '-c', {_BURN.format(s=0.3)!r}])\n"
            "import time; time.sleep(30)\n",
        ]
    )
    try:
        deadline = time.monotonic() + 20
        while tree_cpu_s(parent.pid) < 0.3 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert tree_cpu_s(parent.pid) >= 0.3
    finally:
        parent.kill()
        parent.wait()


def test_rounds_turn_so_each_system_goes_first_once() -> None:
    names = ["a", "b", "c"]
    orders = [rotated(names, r) for r in range(3)]
    assert orders == [["a", "b", "c"], ["b", "c", "a"], ["c", "a", "b"]]
    assert {o[0] for o in orders} == set(names)
    assert rotated([], 5) == []


def test_table_shows_medians_and_keeps_a_failed_peer_with_its_reason() -> None:
    rows = [
        Row(
            DIRECT,
            cpu_us=[9, 11, 10],
            rps=[60e3, 50e3, 70e3],
            p99_128_ms=[4, 5, 6],
            ttfb_ms=[0.3, 0.25, 0.4],
        ),
        Row(
            "nginx (1 worker)",
            cpu_us=[10.4, 12, 9.6],
            rps=[45_900, 40_000, 50_000],
            p99_128_ms=[12.6, 13.0, 11.0],
            added_ttfb_ms=[0.1, 0.2, 0.05],
            errors=2,
        ),
        Row("this router", cpu_us=[495], rps=[812], p99_128_ms=[70.9], added_ttfb_ms=[2.2]),
        Row("SGLang's router", failed="pip install sglang-router==0.3.2: | no matching\ndist"),
    ]
    lines = format_table(rows).splitlines()
    assert lines[0].startswith("| system | CPU µs / request | req/s | p99 at 128 conns |")
    assert len(lines) == 2 + len(rows)
    assert lines[2] == f"| {DIRECT} | 10 | 60.0k | 5.0 ms | (baseline: 0.30 ms) | 9-11 | 0 |"
    assert lines[3] == "| nginx (1 worker) | 10 | 45.9k | 12.6 ms | +0.1 ms | 10-12 | 2 |"
    assert lines[4] == "| this router | 495 | 812 | 70.9 ms | +2.2 ms | 495-495 | 0 |"
    # the reason stays on one line and cannot break the table's columns
    assert lines[5] == (
        "| SGLang's router | failed: pip install sglang-router==0.3.2: / no matching dist "
        "| | | | | |"
    )
    assert all(ln.count("|") == lines[0].count("|") for ln in lines)


def test_machine_load_is_busy_and_steal_shares_between_two_readings() -> None:
    before = pb.cpu_times("cpu  100 0 50 800 50 0 0 0 0 0\ncpu0 1 2 3\n")
    after = pb.cpu_times("cpu  400 0 150 1300 50 0 0 100 0 0\ncpu0 1 2 3\n")
    # 1000 ticks in all: 400 user+system, 500 idle, 100 stolen
    assert pb.machine_load(before, after) == (
        "machine CPU busy (this bench included) 50%, steal 10.0%"
    )
