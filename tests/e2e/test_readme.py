"""The README's demo snippets, run as written against the demo (configs/local.toml).

Every `sh` block of "Run the demo" but the first (which installs and starts the demo)
and every `python` block there run with bash and the test's interpreter, `localhost:8080`
pointed at the demo on a free port, its state file in a temporary directory.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.e2e.procs import ROOT, Proc, free_port, route, wait_port, wait_until

pytestmark = pytest.mark.e2e


def blocks() -> list[tuple[str, str]]:
    text = (ROOT / "README.md").read_text()
    demo = text.split("## Run the demo", 1)[1].split("\n## ", 1)[0]
    found = re.findall(r"```(sh|python)\n(.*?)```", demo, re.S)
    assert found and "inference-router serve" in found[0][1]
    return found[1:]


def test_the_readme_demo_snippets_run_as_written(tmp_path: Path) -> None:
    port = free_port()
    demo = Proc(
        "demo",
        [sys.executable, "-m", "router", "serve", "--config", str(ROOT / "configs/local.toml")],
        tmp_path,
        env={
            "ROUTER_SERVER_PORT": str(port),
            "ROUTER_STORE_STATE_FILE": str(tmp_path / "state.json"),
        },
    ).start()
    try:
        wait_port(port)
        wait_until(
            lambda: "url" in route(f"http://127.0.0.1:{port}", cost=16),
            timeout_s=30,
            what="the demo's workers",
        )
        outputs = []
        for lang, code in blocks():
            code = code.replace("localhost:8080", f"127.0.0.1:{port}")
            code = code.replace("http://127.0.0.1:8080", f"http://127.0.0.1:{port}")
            argv = (
                ["bash", "-euo", "pipefail", "-c", code]
                if lang == "sh"
                else [sys.executable, "-c", code]
            )
            out = subprocess.run(argv, capture_output=True, text=True, timeout=120, cwd=tmp_path)
            assert out.returncode == 0, (code, out.stdout, out.stderr)
            assert "Traceback" not in out.stderr, (code, out.stderr)
            outputs.append(out.stdout)
        joined = "\n".join(outputs)
        for want in (
            '"generated_text"',
            '"endpointName":"sklearn-iris"',
            '"status":"started"',
            '"output"',
            "BEGIN PUBLIC KEY",
        ):
            assert want in joined, want
    except BaseException:
        print(demo.log())
        raise
    finally:
        demo.kill()
