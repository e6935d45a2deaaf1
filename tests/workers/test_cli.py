"""`inference-worker` flags, and the real process: demo request, graceful drain on SIGTERM."""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
import time
from pathlib import Path

import aiohttp
import orjson
import pytest

from router.signing import KeyRing
from tests.conftest import free_port, wait_port
from workers.cli import main, parser, settings_from_args, warn_about
from workers.settings import SettingsError, WorkerSettings

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--port", "70000", "--no-verify"], "--port"),
        (["--perf", "-1", "--no-verify"], "--perf"),
        (["--perf", "nan", "--no-verify"], "--perf"),
        (["--max-queue-time-s", "0", "--no-verify"], "--max-queue-time-s"),
        (["--replay-max-segments", "0", "--no-verify"], "--replay-max-segments"),
        (["--cost-tolerance", "1.5", "--no-verify"], "--cost-tolerance"),
        (["--cost-tolerance", "-0.1", "--no-verify"], "--cost-tolerance"),
        (["--cost-tolerance", "nan", "--no-verify"], "--cost-tolerance"),
        (["--backend", "nope", "--no-verify"], "--backend"),
        (["--public-url", "ftp://x", "--no-verify"], "--public-url"),
        ([], "give --router-url or --pubkey-file"),
        (["--pubkey-file", "/nonexistent/key.pem"], "--pubkey-file"),
        (["--register-token", "t", "--no-verify"], "--register-token"),
        (["--backend", "tgi", "--no-verify"], "--backend-url: required with backend tgi"),
        (
            ["--backend", "openai", "--backend-url", "localhost:8000", "--no-verify"],
            "--backend-url: must be an http(s) URL",
        ),
        (
            ["--backend", "bentoml", "--backend-url", "http://127.0.0.1:3000", "--no-verify"],
            "--perf: required with backend bentoml",
        ),
        (["--backend-url", "http://127.0.0.1:8000", "--no-verify"], "--backend-url: only for"),
    ],
)
def test_bad_flags_exit_2_with_a_clear_message(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    assert message in capsys.readouterr().err


def test_a_worker_that_will_not_register_says_what_to_do(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("WORKER_REGISTER_TOKEN", raising=False)
    flags = ["--router-url", "http://r:8080", "--port", "3001", "--endpoint", "llama"]
    with caplog.at_level(logging.WARNING, logger="workers.cli"):
        warn_about(settings_from_args(parser().parse_args(flags)))
    [record] = caplog.records
    message = record.getMessage()
    assert "--register-token" in message and "'http://127.0.0.1:3001'" in message
    assert "'llama'" in message and "router's config" in message
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="workers.cli"):
        warn_about(settings_from_args(parser().parse_args([*flags, "--register-token", "t"])))
    assert caplog.records == []


def test_replay_window_is_still_accepted_and_ignored() -> None:
    # Deprecated: start scripts that pass it keep working (main logs a warning).
    s = settings_from_args(parser().parse_args(["--no-verify", "--replay-window", "1024"]))
    default = settings_from_args(parser().parse_args(["--no-verify"]))
    assert s == default and s.replay_max_segments == 500_000
    s = settings_from_args(parser().parse_args(["--no-verify", "--replay-max-segments", "9"]))
    assert s.replay_max_segments == 9


def test_pubkey_file_must_be_a_public_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "bad.pem"
    bad.write_text("not a key")
    with pytest.raises(SystemExit) as info:
        main(["--pubkey-file", str(bad)])
    assert info.value.code == 2 and "public key" in capsys.readouterr().err


def test_defaults_and_env_token(monkeypatch: pytest.MonkeyPatch) -> None:
    s = settings_from_args(parser().parse_args(["--no-verify"]))
    assert (s.port, s.public_url, s.endpoint, s.tokens_per_s, s.verify) == (
        3000,
        "http://127.0.0.1:3000",
        "default",
        200.0,
        False,
    )
    monkeypatch.setenv("WORKER_REGISTER_TOKEN", "from-env")
    args = parser().parse_args(
        ["--router-url", "http://r:8080/", "--host", "0.0.0.0", "--port", "3001"]
    )
    s = settings_from_args(args)
    assert s.register_token == "from-env" and "from-env" not in repr(s)
    assert s.router_url == "http://r:8080" and s.public_url == "http://0.0.0.0:3001"


def test_backend_url_flag() -> None:
    args = parser().parse_args(
        ["--backend", "openai", "--backend-url", "http://127.0.0.1:8000/", "--no-verify"]
    )
    s = settings_from_args(args)
    assert (s.backend, s.backend_url, s.perf) == ("openai", "http://127.0.0.1:8000", None)


def test_backend_health_path_flag(capsys: pytest.CaptureFixture[str]) -> None:
    base = ["--backend", "openai", "--backend-url", "http://127.0.0.1:8000", "--no-verify"]
    assert settings_from_args(parser().parse_args(base)).backend_health_path is None
    s = settings_from_args(parser().parse_args([*base, "--backend-health-path", "/v1/models"]))
    assert s.backend_health_path == "/v1/models"
    for argv, message in [
        ([*base, "--backend-health-path", "v1/models"], "must be a path starting with /"),
        (["--no-verify", "--backend-health-path", "/h"], "not for the synthetic backend"),
    ]:
        with pytest.raises(SystemExit) as info:
            main(argv)
        assert info.value.code == 2
        assert f"--backend-health-path: {message}" in capsys.readouterr().err


def test_settings_validate_once() -> None:
    with pytest.raises(SettingsError, match="grace_s"):
        WorkerSettings(verify=False, grace_s=-1)
    with pytest.raises(SettingsError, match="verify"):
        WorkerSettings()
    for bad in (-0.01, 1.01, float("nan"), float("inf")):
        with pytest.raises(SettingsError, match="cost_tolerance"):
            WorkerSettings(verify=False, cost_tolerance=bad)
    assert WorkerSettings(verify=False, cost_tolerance=1).cost_tolerance == 1
    s = settings_from_args(parser().parse_args(["--no-verify", "--cost-tolerance", "0"]))
    assert s.cost_tolerance == 0.0
    assert settings_from_args(parser().parse_args(["--no-verify"])).cost_tolerance == 0.5
    assert WorkerSettings(verify=False, public_url="http://x:1/").public_url == "http://x:1"


async def test_process_serves_then_drains_on_sigterm(tmp_path: Path) -> None:
    port = free_port()
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "workers",
        "--backend",
        "synthetic",
        "--port",
        str(port),
        "--no-verify",
        "--tokens-per-s",
        "20",
        "--ttft-ms",
        "0",
        "--grace-s",
        "20",
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        await asyncio.to_thread(wait_port, port)
        async with aiohttp.ClientSession() as http:
            # the README's demo request
            async with http.post(
                f"{base}/generate", data=b'{"inputs":"hi","parameters":{"max_new_tokens":5}}'
            ) as resp:
                assert resp.status == 200
                assert len((await resp.json())["generated_text"].split()) == 5
            # a 40-token stream at 20 tokens/s: in flight for ~2 s
            async with http.post(
                f"{base}/generate_stream",
                data=orjson.dumps({"inputs": "x", "parameters": {"max_new_tokens": 40}}),
            ) as stream:
                assert (await stream.content.readline()).startswith(b"data:")
                proc.send_signal(signal.SIGTERM)
                deadline = time.monotonic() + 5
                while True:
                    async with http.get(f"{base}/readyz") as r:
                        doc = await r.json()
                        if r.status == 503 and doc.get("draining"):
                            break
                    assert time.monotonic() < deadline, doc
                    await asyncio.sleep(0.01)
                assert doc["inflight_requests"] == 1
                async with http.post(f"{base}/generate", data=b'{"inputs":"hi"}') as r:
                    assert r.status == 503 and (await r.json())["error"]["code"] == "draining"
                rest = await stream.read()
                assert rest.count(b"data:") == 39  # the in-flight stream finished whole
        assert proc.stdout is not None
        output, _ = await asyncio.wait_for(proc.communicate(), 10)
        assert proc.returncode == 0, output.decode()
        assert b"Traceback" not in output
        assert b"draining: 1 request(s) in flight" in output
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def test_process_verifies_with_pubkey_file(tmp_path: Path) -> None:
    ring = KeyRing.ephemeral("ed25519")
    pem = tmp_path / "router.pub.pem"
    pem.write_text(ring.public_pem())
    port = free_port()
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "workers",
        "--port",
        str(port),
        "--endpoint",
        "demo",
        "--pubkey-file",
        str(pem),
        "--log-level",
        "warning",
        cwd=ROOT,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        await asyncio.to_thread(wait_port, port)
        base = f"http://127.0.0.1:{port}"
        ticket = ring.sign_ticket(
            {
                "cost": 4.0,
                "endpoint": "demo",
                "expires_at": time.time() + 30,
                "key_id": ring.kid,
                "reqnum": 10**15,
                "request_idx": 1,
                "url": base,
            }
        )
        async with aiohttp.ClientSession() as http:
            body = {"auth_data": ticket, "payload": {"inputs": "hi"}}
            async with http.post(f"{base}/generate", data=orjson.dumps(body)) as r:
                assert r.status == 200
            async with http.post(f"{base}/generate", data=orjson.dumps(body)) as r:
                assert r.status == 401
                assert (await r.json())["error"]["code"] == "ticket_replayed"
        proc.send_signal(signal.SIGINT)
        assert await asyncio.wait_for(proc.wait(), 10) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
