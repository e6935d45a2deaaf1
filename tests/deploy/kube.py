"""Render the kustomize overlays with `kubectl kustomize` (no cluster needed) and read them."""

from __future__ import annotations

import functools
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
KUSTOMIZE = ROOT / "deploy" / "kustomize"
OVERLAYS = ("single", "ha")

Obj = dict[str, Any]


def kubectl_problem() -> str | None:
    """Why `kubectl kustomize` cannot render these files here, or None."""
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        return "kubectl is not installed (.ci/run installs Debian's kubernetes-client)"
    run = subprocess.run(
        [kubectl, "version", "--client"], capture_output=True, text=True, timeout=30
    )
    found = re.search(r"Kustomize Version: v(\d+)", run.stdout)
    if found is None or int(found.group(1)) < 4:
        return f"kubectl's kustomize is older than v4 (labels, patches): {run.stdout.strip()!r}"
    return None


@functools.cache
def render(overlay: str) -> tuple[Obj, ...]:
    """Every object `kubectl kustomize` makes of `overlay`."""
    return render_dir(KUSTOMIZE / "overlays" / overlay)


def render_dir(path: Path) -> tuple[Obj, ...]:
    run = subprocess.run(
        ["kubectl", "kustomize", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 0, run.stderr
    return tuple(doc for doc in yaml.safe_load_all(run.stdout) if doc)


def one(objs: tuple[Obj, ...], kind: str, name: str) -> Obj:
    found = [o for o in objs if o["kind"] == kind and o["metadata"]["name"] == name]
    assert len(found) == 1, f"{kind}/{name}: {len(found)} found"
    return found[0]


def named(objs: tuple[Obj, ...], kind: str, prefix: str) -> Obj:
    """The object of `kind` whose name is `prefix` plus kustomize's hash suffix."""
    found = [
        o
        for o in objs
        if o["kind"] == kind and re.fullmatch(rf"{prefix}-[a-z0-9]{{10}}", o["metadata"]["name"])
    ]
    assert len(found) == 1, f"{kind}/{prefix}-*: {len(found)} found"
    return found[0]


def pod_spec(obj: Obj) -> Obj:
    spec: Obj = obj["spec"]["template"]["spec"]
    return spec


def container(obj: Obj, name: str) -> Obj:
    found = [c for c in pod_spec(obj)["containers"] if c["name"] == name]
    assert len(found) == 1, f"{obj['metadata']['name']}: no container {name}"
    return found[0]
