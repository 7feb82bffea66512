"""The outputs service as a browser or an attacker meets it: a real server process, raw HTTP requests (no client
that tidies `..` away), a folder holding secrets and symlinks that point out of it."""

from __future__ import annotations

import base64
import http.client
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import free_port, wait_for_http

ROOT = Path(__file__).resolve().parents[1]
AUTH = "admin:s3cret-Outputs-pw"
SECRET = "sk-never-served-" + "x" * 20


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    outside = tmp_path_factory.mktemp("outside")
    (outside / "private.txt").write_text(SECRET)
    root = tmp_path_factory.mktemp("outputs")
    run = root / "test-pipeline" / "20261202T030000Z-abcdef12"
    (run / "wandb" / "offline-run-1").mkdir(parents=True)
    (run / "report.html").write_text("<html><body>report</body></html>")
    (run / "report.md").write_text("# report\n![chart](chart_metrics.png)\n")
    (run / "chart_metrics.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 64)
    (run / "manifest.json").write_text('{"status": "completed"}')
    (run / "wandb" / "settings").write_text(f"[default]\napi_key = {SECRET}\n")
    (root / ".env").write_text(f"OPENAI_API_KEY={SECRET}\n")
    (root / ".qa-cache").mkdir()
    (root / ".qa-cache" / "qa-journal.jsonl").write_text(f'{{"raw": "{SECRET}"}}\n')
    (root / "leak.txt").symlink_to(outside / "private.txt")
    (root / "elsewhere").symlink_to(outside, target_is_directory=True)
    (root / "latest").symlink_to(run, target_is_directory=True)  # a link inside the folder is fine
    port = free_port()
    env = {**os.environ, "PREFECT_SERVER_API_AUTH_STRING": AUTH}
    process = subprocess.Popen(
        [sys.executable, "-m", "services.outputs", "--root", str(root), "--host", "127.0.0.1", "--port", str(port)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    wait_for_http(f"http://127.0.0.1:{port}/health", process=process)
    yield {"port": port, "run": run.relative_to(root).as_posix()}
    process.terminate()
    process.wait(timeout=20)


def get(served: dict, path: str, auth: str | None = AUTH, method: str = "GET") -> tuple[int, dict, bytes]:
    """One raw request: the path goes on the wire exactly as written."""
    connection = http.client.HTTPConnection("127.0.0.1", served["port"], timeout=10)
    headers = {"Authorization": "Basic " + base64.b64encode(auth.encode()).decode()} if auth else {}
    connection.putrequest(method, path, skip_accept_encoding=True)
    for name, value in headers.items():
        connection.putheader(name, value)
    connection.endheaders()
    response = connection.getresponse()
    body = response.read()
    connection.close()
    return response.status, dict(response.getheaders()), body


def test_files_and_listings_are_served_with_the_login(served: dict) -> None:
    status, headers, body = get(served, f"/{served['run']}/report.html")
    assert status == 200 and b"report" in body and headers["content-type"].startswith("text/html")
    status, headers, body = get(served, f"/{served['run']}/chart_metrics.png")
    assert status == 200 and headers["content-type"] == "image/png" and body.startswith(b"\x89PNG")
    status, _, body = get(served, "/")
    assert status == 200 and b"test-pipeline/" in body and b".env" not in body and b".qa-cache" not in body
    status, _, body = get(served, f"/{served['run']}/")
    assert status == 200 and b"report.html" in body and b"manifest.json" in body
    status, _, body = get(served, "/latest/report.md")  # a symlink that stays inside is followed
    assert status == 200 and body.startswith(b"# report")
    assert get(served, f"/{served['run']}/report.md", method="HEAD")[0] == 200


@pytest.mark.parametrize("auth", [None, "admin:wrong", "admin", "nobody:s3cret-Outputs-pw", AUTH + "x"])
def test_a_wrong_or_missing_login_is_refused(served: dict, auth: str | None) -> None:
    status, headers, body = get(served, f"/{served['run']}/report.html", auth=auth)
    assert status == 401 and headers["www-authenticate"].startswith("Basic ") and b"report" not in body


@pytest.mark.parametrize(
    "path",
    [
        "/../outside/private.txt",
        "/%2e%2e/%2e%2e/etc/passwd",
        "/%2E%2E%2F%2E%2E%2Fetc%2Fpasswd",
        "/test-pipeline/..%2f..%2f..%2fetc/passwd",
        "/test-pipeline/%2e%2e/%2e%2e/etc/passwd",
        "/..%5c..%5cetc%5cpasswd",
        "//etc/passwd",
        "/%00/etc/passwd",
        "/leak.txt",
        "/elsewhere/private.txt",
        "/elsewhere/",
        "/.env",
        "/%2eenv",
        "/.qa-cache/qa-journal.jsonl",
        "/latest/wandb/settings",
    ],
)
def test_nothing_outside_the_folder_and_no_secret_is_served(served: dict, path: str) -> None:
    status, _, body = get(served, path)
    assert status in (400, 404), (path, status)
    assert SECRET.encode() not in body and b"root:" not in body


def test_it_is_read_only(served: dict) -> None:
    for method in ("POST", "PUT", "DELETE"):
        assert get(served, f"/{served['run']}/report.md", method=method)[0] == 405


def test_it_refuses_to_start_without_a_login(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("PREFECT_SERVER_API_AUTH_STRING", "OUTPUTS_AUTH_STRING")}
    done = subprocess.run(
        [sys.executable, "-m", "services.outputs", "--root", str(tmp_path), "--port", str(free_port())],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode != 0 and "user:password" in done.stderr
