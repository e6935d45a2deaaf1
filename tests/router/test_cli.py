"""The serving process's own set-up (router/cli.py)."""

from __future__ import annotations

import gc
import weakref

from router.cli import _freeze_startup_objects


def test_serve_freezes_startup_objects_after_collecting_startup_garbage() -> None:
    class Node:
        pass

    a, b = Node(), Node()
    a.other, b.other = b, a  # type: ignore[attr-defined]  # a cycle: only gc frees it
    gone = weakref.ref(a)
    del a, b
    try:
        _freeze_startup_objects()
        assert gone() is None  # collected before the freeze, not kept forever
        assert gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()
