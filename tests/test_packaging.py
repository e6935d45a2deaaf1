"""The router image and the console scripts, checked without a Docker engine."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_dockerfile_runs_as_non_root_with_livez_healthcheck() -> None:
    lines = [
        ln.strip()
        for ln in (ROOT / "Dockerfile").read_text().splitlines()
        if ln.strip() and not ln.strip().startswith("#")
    ]
    base = lines[0].split()[1]
    assert base.startswith("python:3.11.") and base.endswith("-slim-bookworm"), base
    users = [ln for ln in lines if ln.startswith("USER ")]
    # numeric and not root: runAsNonRoot cannot check a name (hadolint DL3066)
    assert users and users[-1].split()[1].isdigit() and users[-1] != "USER 0"
    health = "\n".join(
        lines[lines.index(next(ln for ln in lines if ln.startswith("HEALTHCHECK"))) :]
    )
    assert "/livez" in health
    assert any(ln.startswith("ENTRYPOINT") and "inference-router" in ln for ln in lines)


def test_dockerfile_example_config_exists_and_loads() -> None:
    """The `docker run` line in the Dockerfile's header names a config the image holds."""
    from router.config import Settings

    header = (ROOT / "Dockerfile").read_text().split("FROM ", 1)[0]
    shipped = re.findall(r"--config /app/(configs/\S+\.toml)", header)
    assert shipped, "the Dockerfile's example runs a config from configs/"
    for rel in shipped:
        assert Settings.from_toml(ROOT / rel, env={}).endpoints


def test_console_scripts_declared() -> None:
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert meta["project"]["scripts"] == {
        "inference-router": "router.cli:main",
        "inference-worker": "workers.cli:main",
    }


def test_router_help_and_keygen(tmp_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "router", "--help"],
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
    ).stdout
    assert "serve" in out and "keygen" in out and "ROUTER_" in out
    key = tmp_path / "k.pem"
    done = subprocess.run(
        [sys.executable, "-m", "router", "keygen", "--out", str(key), "--algorithm", "ed25519"],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert done.returncode == 0 and key.stat().st_mode & 0o777 == 0o600
    again = subprocess.run(
        [sys.executable, "-m", "router", "keygen", "--out", str(key)],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert again.returncode == 1 and "refusing to overwrite" in again.stderr


def test_bad_config_fails_with_one_clear_line(tmp_path: Path) -> None:
    cfg = tmp_path / "bad.toml"
    cfg.write_text('[[endpoints]]\nname = "demo"\npolicy = "fastest"\n')
    done = subprocess.run(
        [sys.executable, "-m", "router", "serve", "--config", str(cfg)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=30,
    )
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "config error: endpoints[0].policy: must be one of least_work, round_robin, random, "
        "least_requests, p2c, cache_aware; got 'fastest'"
    ]


def test_both_command_lines_print_the_package_version() -> None:
    from importlib.metadata import version

    for module, prog in (("router", "inference-router"), ("workers", "inference-worker")):
        out = subprocess.run(
            [sys.executable, "-m", module, "--version"],
            capture_output=True,
            text=True,
            check=True,
            cwd=ROOT,
        ).stdout
        assert out.strip() == f"{prog} {version('inference-router')}"


def test_license_file_is_the_one_pyproject_declares() -> None:
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert meta["project"]["license"] == "Apache-2.0"
    text = (ROOT / "LICENSE").read_text()
    assert "Apache License" in text and "Version 2.0, January 2004" in text
    assert "END OF TERMS AND CONDITIONS" in text  # the full text, not a pointer to it


def test_ci_lints_formats_and_type_checks_before_the_tests() -> None:
    lines = [
        ln.strip()
        for ln in (ROOT / ".ci/run").read_text().splitlines()
        if ln.strip() and not ln.strip().startswith("#")
    ]

    def at(command: str) -> int:
        return next(i for i, ln in enumerate(lines) if ln.startswith(command))

    pytest_at = next(i for i, ln in enumerate(lines) if "/pytest " in ln)
    for command in (".venv/bin/ruff check", ".venv/bin/ruff format --check", ".venv/bin/mypy"):
        assert at(command) < pytest_at, command
    assert "set -euo pipefail" in lines  # each one fails the run
