"""The commands that talk to a Prefect server (`trigger`, `health`) as an operator meets them: run as the installed
command, against a server that is not there, a proxy's error page, a page that is not the API, and a real Prefect
server that goes away and comes back while `trigger --wait` follows a run. Each says what is wrong in a line or two
and exits with its documented code; none prints a traceback. And `run`, the first command a user tries, with its
own embedded server: a good run prints no ERROR line."""

from __future__ import annotations

import os
import queue
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from tests.conftest import PrefectServer, free_port, prefect_call

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def command_env(api_url: str | None, tmp_path: Path) -> dict[str, str]:
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "prefect-home"), "COLUMNS": "200"}
    env.pop("PREFECT_API_URL", None)
    if api_url:
        env["PREFECT_API_URL"] = api_url
    return env


def llm_pipeline(*args: str, env: dict[str, str], timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "flows.cli", *args], capture_output=True, text=True, cwd=ROOT, env=env, timeout=timeout
    )


class Page:
    """A real HTTP server answering every request with one page: a proxy whose upstream is down (502), or a
    login page in front of the API (200)."""

    def __init__(self, status: int):
        body = f"<html><head><title>{status}</title></head><body><h1>Sign in</h1></body></html>".encode()

        class Handler(BaseHTTPRequestHandler):
            def _page(self) -> None:
                self.send_response(status)
                self.send_header("Content-Type", "text/html; charset=utf-8")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_POST = do_PATCH = do_PUT = do_DELETE = _page

            def log_message(self, *_: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/api"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def pages() -> Iterator[dict[str, Page]]:
    made = {"502": Page(502), "200": Page(200)}
    yield made
    for page in made.values():
        page.close()


def said_why(done: subprocess.CompletedProcess[str], url: str) -> str:
    output = done.stdout + done.stderr
    assert done.returncode == 2, output[-3000:]
    assert "Traceback" not in output and len(output.splitlines()) <= 4, output[-3000:]
    assert f"the Prefect API at {url} could not be asked" in done.stderr, output
    return done.stderr


def test_server_commands_say_why_the_api_cannot_be_asked(pages: dict[str, Page], tmp_path: Path) -> None:
    """Before: a 300-line traceback ending in `ConnectError`, and two minutes of silence behind a 502."""
    closed = f"http://127.0.0.1:{free_port()}/api"
    assert "ConnectError" in said_why(llm_pipeline("health", env=command_env(closed, tmp_path)), closed)
    assert "ConnectError" in said_why(
        llm_pipeline("trigger", "llm-pipeline/x", env=command_env(closed, tmp_path)), closed
    )
    proxy = pages["502"].url
    started = time.monotonic()
    assert "it answered 502 Bad Gateway (text/html)" in said_why(
        llm_pipeline("health", env=command_env(proxy, tmp_path)), proxy
    )
    assert time.monotonic() - started < 60  # Prefect's client retries twice here, not five times (over 2 minutes)
    login = pages["200"].url
    for args in (["health", "--json"], ["trigger", "llm-pipeline/x"]):
        assert "is PREFECT_API_URL the API" in said_why(llm_pipeline(*args, env=command_env(login, tmp_path)), login)


def test_trigger_without_a_server_says_which_setting_is_missing(tmp_path: Path) -> None:
    """Without PREFECT_API_URL, Prefect would start a temporary server of its own, with no deployment on it."""
    done = llm_pipeline("trigger", "test-pipeline", env=command_env(None, tmp_path), timeout=60)
    assert done.returncode == 2 and "PREFECT_API_URL is not set" in done.stderr, done.stdout + done.stderr
    assert "Traceback" not in done.stderr and "temporary server" not in done.stdout + done.stderr


class Lines:
    """A running command's output, line by line as it comes (stdout and stderr together)."""

    def __init__(self, process: subprocess.Popen[str]):
        self.process, self.seen, self.queue = process, [], queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.queue.put(line)

    def wait_for(self, text: str, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = self.queue.get(timeout=max(0.01, deadline - time.monotonic()))
            except queue.Empty:
                break
            self.seen.append(line)
            if text in line:
                return line
        raise AssertionError(f"no line with {text!r} within {timeout} s; the output so far:\n{''.join(self.seen)}")


def test_trigger_wait_rides_out_a_server_restart_and_ends_with_the_run(tmp_path: Path) -> None:
    """`trigger --wait` on a real Prefect server: a bare deployment name is the llm-pipeline flow's, the server
    going away mid-wait is said once and waited out, and the run's end (here cancelled by hand: no worker serves
    this server) ends the command with exit 1."""
    (home := tmp_path / "server-home").mkdir()
    server = PrefectServer(home)
    api = server.api_url
    try:
        flow = prefect_call("POST", f"{api}/flows/", json={"name": "llm-pipeline"}).json()
        prefect_call("POST", f"{api}/deployments/", json={"name": "nightly", "flow_id": flow["id"]})
        missing = llm_pipeline("trigger", "no-such", env=command_env(api, tmp_path))
        assert missing.returncode == 2 and "no deployment named llm-pipeline/no-such" in missing.stderr, missing

        process = subprocess.Popen(
            [sys.executable, "-m", "flows.cli", "trigger", "nightly", "--wait", "--timeout", "300"],
            cwd=ROOT,
            env=command_env(api, tmp_path),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        lines = Lines(process)
        started = lines.wait_for("started flow run", 90)
        flow_run_id = started.split("(")[1].split(")")[0]
        lines.wait_for("Scheduled", 30)
        server.stop()
        lines.wait_for("lost the Prefect API", 60)
        server = PrefectServer(home, port=server.port)  # the same database, as a restart
        lines.wait_for("the Prefect API answers again", 60)
        cancelled = {"state": {"type": "CANCELLED", "name": "Cancelled"}, "force": True}
        prefect_call("POST", f"{api}/flow_runs/{flow_run_id}/set_state", json=cancelled)
        lines.wait_for("Cancelled", 60)
        assert process.wait(timeout=30) == 1
        assert not any("Traceback" in line for line in lines.seen), "".join(lines.seen)
    finally:
        if "process" in locals() and process.poll() is None:
            process.kill()
        server.stop()


def test_a_first_run_prints_no_error_line(tmp_path: Path) -> None:
    """`llm-pipeline run` as a first try meets it (embedded mode, no network): before, every run printed an ERROR
    line from Prefect's server failing to send its usage telemetry to Prefect's service. Telemetry is off now
    (PREFECT_SERVER_ANALYTICS_ENABLED), and nothing else in a good run says ERROR."""
    settings = [
        f"output_path={tmp_path / 'out'}",
        "data.limit=40",
        "benchmark.size=10",
        "evaluation.metrics=[exact_match]",
        "evaluation.domain_metrics=[]",
    ]
    env = command_env(None, tmp_path)
    env.pop("PREFECT_SERVER_ANALYTICS_ENABLED", None)
    args = ["run", "--config", "configs/test.yaml", *(a for s in settings for a in ("--set", s))]
    done = llm_pipeline(*args, env=env, timeout=300)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-3000:]
    assert "report:" in done.stdout
    errors = [line for line in output.splitlines() if "| ERROR" in line or '"level": "error"' in line]
    assert not errors, "\n".join(errors)
