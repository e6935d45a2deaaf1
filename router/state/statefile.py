"""The memory store's state file: control-plane documents and activity across restarts.

One JSON object, rewritten whole after a change, atomically: a temp file in the same
directory, fsync, rename over the old file, fsync the directory. A crash at any point
leaves the old file or the new one, never a mix. A torn, corrupt or wrongly shaped file
is a `StateFileError` naming the file and what is wrong, never an empty store: starting
empty would forget every endpoint. Leases and worker records are live state and are not
kept here. The shape:

    {"format": 1,
     "kinds": {kind: version},
     "docs": {kind: {name: {"version": int, "doc": "the JSON document as text"}}},
     "activity": {endpoint: [inferences, last activity unix time]}}
"""

from __future__ import annotations

import contextlib
import math
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

FORMAT = 1
# Above this a write goes to a thread, so a large file does not stall the event loop.
THREAD_ABOVE_BYTES = 64 * 1024

Docs = dict[str, dict[str, tuple[int, bytes]]]  # kind -> name -> (version, doc)
Activity = dict[str, tuple[int, float]]  # endpoint -> (inferences, last activity time)


class StateFileError(Exception):
    """The state file cannot be read back as a store; the message names file and fault."""


@dataclass(slots=True)
class State:
    """What the file holds. A write replaces `docs` and `kinds` by new dicts (see
    `with_doc`); `activity` is updated in place."""

    docs: Docs = field(default_factory=dict)
    kinds: dict[str, int] = field(default_factory=dict)  # kind -> version counter
    activity: Activity = field(default_factory=dict)

    def with_doc(self, kind: str, name: str, entry: tuple[int, bytes] | None) -> State:
        """A copy with `name` of `kind` set to `entry` (None: deleted), the kind bumped."""
        docs = dict(self.docs)
        of_kind = dict(docs.get(kind, {}))
        if entry is None:
            of_kind.pop(name, None)
        else:
            of_kind[name] = entry
        if of_kind:
            docs[kind] = of_kind
        else:
            docs.pop(kind, None)
        kinds = dict(self.kinds)
        kinds[kind] = max(kinds.get(kind, 0) + 1, entry[0] if entry else 0)
        return State(docs, kinds, self.activity)


def encode(state: State) -> bytes:
    return orjson.dumps(
        {
            "format": FORMAT,
            "kinds": state.kinds,
            "docs": {
                kind: {n: {"version": v, "doc": d.decode()} for n, (v, d) in of_kind.items()}
                for kind, of_kind in state.docs.items()
            },
            "activity": {n: [c, t] for n, (c, t) in state.activity.items()},
        }
    )


def load(path: Path) -> State:
    """Read the state file; a missing file is an empty store.

    Its directory (the router's data directory) is made if missing, but not the ones
    above it: a path whose parent is gone (an unmounted volume, a typo) is an error, not
    a silently empty fleet.
    """
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        try:
            path.parent.mkdir(mode=0o700, exist_ok=True)
        except OSError as exc:
            raise StateFileError(
                f"state file {path}: cannot make its directory {path.parent}: {exc.strerror}"
            ) from None
        return State()
    except OSError as exc:
        raise StateFileError(f"state file {path}: cannot read: {exc.strerror}") from exc
    return decode(data, path)


def decode(data: bytes, path: Path) -> State:
    try:
        top = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise StateFileError(f"state file {path}: not valid JSON (torn or corrupt): {exc}") from exc
    try:
        return _shape(top)
    except _Bad as exc:
        raise StateFileError(f"state file {path}: {exc}") from None


class _Bad(Exception):
    """Where the file's shape is wrong, and how."""


def _obj(v: Any, where: str) -> dict[str, Any]:
    if not isinstance(v, dict):
        raise _Bad(f"{where}: must be an object, got {type(v).__name__}")
    return v


def _int(v: Any, where: str, min_: int) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < min_:
        raise _Bad(f"{where}: must be an integer >= {min_}, got {v!r}")
    return v


def _kind(kind: str, where: str) -> str:
    if not kind or ":" in kind:
        raise _Bad(f"{where}: a kind must be non-empty without ':', got {kind!r}")
    return kind


def _shape(top: Any) -> State:
    top = _obj(top, "top level")
    keys = {"format", "kinds", "docs", "activity"}
    if set(top) != keys:
        missing, unknown = sorted(keys - set(top)), sorted(set(top) - keys)
        raise _Bad(f"top level: expected keys {sorted(keys)}; missing {missing}, unknown {unknown}")
    if top["format"] != FORMAT:
        raise _Bad(f"format: {top['format']!r} is not {FORMAT}, the one this version reads")
    kinds = {
        _kind(k, "kinds"): _int(v, f"kinds.{k}", 0) for k, v in _obj(top["kinds"], "kinds").items()
    }
    docs: Docs = {}
    for kind, of_kind in _obj(top["docs"], "docs").items():
        _kind(kind, "docs")
        entries: dict[str, tuple[int, bytes]] = {}
        for name, e in _obj(of_kind, f"docs.{kind}").items():
            where = f"docs.{kind}.{name}"
            e = _obj(e, where)
            if set(e) != {"version", "doc"}:
                raise _Bad(f"{where}: must have exactly the keys 'version' and 'doc'")
            doc = e["doc"]
            if not isinstance(doc, str):
                raise _Bad(f"{where}.doc: must be a string, got {type(doc).__name__}")
            entries[name] = (_int(e["version"], f"{where}.version", 1), doc.encode())
            # the kind's counter hands out versions: it is never behind one of them
            kinds[kind] = max(kinds.get(kind, 0), entries[name][0])
        if entries:
            docs[kind] = entries
    activity: Activity = {}
    for name, a in _obj(top["activity"], "activity").items():
        where = f"activity.{name}"
        if not isinstance(a, list) or len(a) != 2:
            raise _Bad(f"{where}: must be [inferences, last activity time], got {a!r}")
        at = a[1]
        if isinstance(at, bool) or not isinstance(at, int | float) or not math.isfinite(at):
            raise _Bad(f"{where}: last activity time must be a number, got {at!r}")
        activity[name] = (_int(a[0], f"{where}[0]", 0), float(at))
    return State(docs, kinds, activity)


def write_atomic(path: Path, data: bytes) -> None:
    """Replace `path` by `data`: all of it or none, even across a crash (mode 0600)."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    # the rename itself is durable only once the directory is
    dfd = os.open(path.parent, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)
