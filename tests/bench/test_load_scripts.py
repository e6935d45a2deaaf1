"""The load-test scripts parse, lint clean, and the soak report blames the right fault."""

from __future__ import annotations

import csv
import importlib.util
import os
import shutil
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import ModuleType

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"
SCRIPTS = ["run_locust.sh", "soak.sh", "stack.sh"]


def _load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, BENCH / f"{name}.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_locustfile_defines_the_three_users() -> None:
    # In a child: importing locust monkey-patches the process with gevent.
    out = subprocess.run(
        [sys.executable, "-m", "locust", "-f", str(BENCH / "locustfile.py"), "--list"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    users = out.stdout.split("Available Users:", 1)[1].split()
    assert sorted(users) == ["ProxyJsonUser", "ProxyStreamUser", "TicketUser"]


@pytest.mark.parametrize("script", SCRIPTS)
def test_shell_scripts_parse_and_pass_shellcheck(script: str) -> None:
    subprocess.run(["bash", "-n", str(BENCH / script)], check=True)
    shellcheck = shutil.which("shellcheck") or str(Path(sys.executable).parent / "shellcheck")
    out = subprocess.run(
        [shellcheck, "-x", f"bench/{script}"], cwd=BENCH.parent, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stdout


def _soak_dir(tmp_path: Path, failures: list[str]) -> Path:
    (tmp_path / "locust_stats.csv").write_text(
        "Type,Name,Request Count,Failure Count,50%,99%\nPOST,ticket: POST /route,100,2,4,19\n"
    )
    (tmp_path / "events.tsv").write_text(
        "100.0\tstart (router RSS 1 kB)\n110.0\tfault: SIGKILL worker 1\n"
        "115.0\tfault end: worker 1 restarted\n160.0\tend\n"
    )
    (tmp_path / "failures.tsv").write_text("".join(f + "\n" for f in failures))
    return tmp_path


def test_soak_report_blames_failures_in_a_fault_window(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    report = _load("soak_report")
    d = _soak_dir(
        tmp_path,
        [
            "111.0\tticket: POST /route\tconnect: ConnectionError",
            "119.5\tticket: POST /route\thttp 503: store_unavailable",
        ],
    )
    assert (
        report.main(
            [
                "--results",
                str(d),
                "--rss-before-kb",
                "50000",
                "--rss-after-kb",
                "51000",
                "--fault-window-s",
                "5",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "| SIGKILL worker 1 | connect | 1 |" in out
    assert "| SIGKILL worker 1 | http 503 | 1 |" in out and "PASS" in out


def test_soak_report_fails_on_unexplained_failures_and_rss_growth(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    report = _load("soak_report")
    d = _soak_dir(tmp_path, ["140.0\tticket: POST /route\thttp 500: internal"])
    assert (
        report.main(["--results", str(d), "--rss-before-kb", "50000", "--rss-after-kb", "51000"])
        == 1
    )
    assert "| unexplained | http 500 | 1 |" in capsys.readouterr().out
    d = _soak_dir(tmp_path, [])
    assert (
        report.main(
            [
                "--results",
                str(d),
                "--rss-before-kb",
                "50000",
                "--rss-after-kb",
                "90000",
                "--rss-growth-mb",
                "25",
            ]
        )
        == 1
    )


class _SlowStream(BaseHTTPRequestHandler):
    """An OpenAI-style stream: headers at once, then a chunk every 0.2 s, then [DONE]."""

    protocol_version = "HTTP/1.1"

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", "0")))
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        self.wfile.flush()
        for event in [b'data: {"n": 1}\n\n', b'data: {"n": 2}\n\n', b"data: [DONE]\n\n"]:
            time.sleep(0.2)  # the stream's pace is what the row must time
            self.wfile.write(b"%x\r\n%s\r\n" % (len(event), event))
            self.wfile.flush()
        self.wfile.write(b"0\r\n\r\n")

    def log_message(self, *args: object) -> None:
        pass


def test_locust_stream_row_times_the_stream_to_done(tmp_path: Path) -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _SlowStream)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        subprocess.run(
            [
                sys.executable,
                "-m",
                "locust",
                "-f",
                str(BENCH / "locustfile.py"),
                "--headless",
                "-u",
                "1",
                "-r",
                "1",
                "-t",
                "3s",
                "--only-summary",
                "--host",
                f"http://127.0.0.1:{server.server_address[1]}",
                "--csv",
                str(tmp_path / "run"),
                "ProxyStreamUser",
            ],
            env={**os.environ, "LOCUST_WAIT_S": "0.1"},
            capture_output=True,
            timeout=60,
            check=False,  # locust exits 1 if any request failed; the CSV says which
        )
    finally:
        server.shutdown()
        server.server_close()
    rows = list(csv.DictReader((tmp_path / "run_stats.csv").read_text().splitlines()))
    row = next(r for r in rows if r["Name"] == "proxy: stream /v1/chat/completions")
    assert int(row["Request Count"]) >= 1 and row["Failure Count"] == "0", rows
    # three chunks 0.2 s apart: to [DONE] is >= 600 ms; the headers alone came at once
    assert float(row["Min Response Time"]) >= 550, row
