"""A child process the router owns: its own process group, and dead when the router dies.

`spawn` starts a command in a new session, so one signal to its group reaches whatever it
starts, and (Linux) with `PR_SET_PDEATHSIG = SIGTERM`, so even a router killed with
SIGKILL leaves no orphan behind. Its output goes to a log file that `tail()` reads back.
The parent-death signal follows the *thread* that forked: spawn from the event loop's
thread, which lives as long as the router.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import signal
import socket
import sys
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
_TAIL_BYTES = 16 * 1024  # enough for the last ~20 lines of any sane log


def _prctl() -> Callable[..., int] | None:
    if not sys.platform.startswith("linux"):
        return None
    prctl: Callable[..., int] = ctypes.CDLL(None, use_errno=True).prctl
    return prctl


# Resolved once in the parent: the forked child must not dlopen or import anything.
_PRCTL = _prctl()


def _die_with_parent(parent_pid: int) -> Callable[[], None]:
    """A preexec function: SIGTERM this child when the router (its parent) dies."""
    prctl, sigterm = _PRCTL, int(signal.SIGTERM)

    def preexec() -> None:
        if prctl is not None:
            prctl(_PR_SET_PDEATHSIG, sigterm, 0, 0, 0)
        # The router died between fork and prctl: no signal will ever come, so go now.
        if os.getppid() != parent_pid:
            os.kill(os.getpid(), sigterm)

    return preexec


def free_ports(n: int, avoid: Collection[int] = ()) -> list[int]:
    """`n` distinct free ports on 127.0.0.1, none in `avoid` (ports children will bind)."""
    socks: list[socket.socket] = []
    try:
        ports: list[int] = []
        while len(ports) < n:
            s = socket.socket()
            socks.append(s)  # held open until all are chosen: no port is chosen twice
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
            if port not in avoid:
                ports.append(port)
        return ports
    finally:
        for s in socks:
            s.close()


@dataclass(slots=True)
class Child:
    """One process (the leader of its own group) and the log file its output goes to."""

    name: str  # what it is, for messages: "worker", "model server"
    proc: asyncio.subprocess.Process
    log_path: Path

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def returncode(self) -> int | None:
        return self.proc.returncode

    def signal_group(self, sig: signal.Signals) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, sig)

    async def terminate(self, timeout_s: float) -> int:
        """SIGTERM its group; SIGKILL it if the leader has not exited within `timeout_s`."""
        if self.proc.returncode is None:
            self.signal_group(signal.SIGTERM)
            try:
                await asyncio.wait_for(self.proc.wait(), timeout_s)
            except TimeoutError:
                log.warning(
                    "%s (pid %d) still running %.0fs after SIGTERM: SIGKILL",
                    self.name,
                    self.pid,
                    timeout_s,
                )
                self.signal_group(signal.SIGKILL)
                await self.proc.wait()
        # whatever the leader started and left behind in its group
        self.signal_group(signal.SIGKILL)
        return await self.proc.wait()

    def tail(self, lines: int = 20) -> str:
        """The last `lines` lines of its log ("" if it has none)."""
        try:
            with open(self.log_path, "rb") as f:
                f.seek(0, os.SEEK_END)
                f.seek(max(0, f.tell() - _TAIL_BYTES))
                data = f.read()
        except OSError:
            return ""
        return "\n".join(data.decode(errors="replace").splitlines()[-lines:])

    def rss_bytes(self) -> int | None:
        """Its resident memory (VmRSS), None when it is gone or /proc does not say."""
        try:
            with open(f"/proc/{self.pid}/status", "rb") as f:
                for line in f:
                    if line.startswith(b"VmRSS:"):
                        return int(line.split()[1]) * 1024  # kB
        except (OSError, ValueError, IndexError):
            return None
        return None


async def spawn(name: str, argv: Sequence[str], log_path: Path, env: Mapping[str, str]) -> Child:
    """Start `argv` as a `Child` (see the module docstring), its output to `log_path`."""
    # a few bytes of metadata on a local disk: not worth a thread
    out = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=out,
            stderr=asyncio.subprocess.STDOUT,
            env=dict(env),
            start_new_session=True,
            preexec_fn=_die_with_parent(os.getpid()),
        )
    finally:
        os.close(out)  # the child has its own copy
    return Child(name, proc, log_path)
