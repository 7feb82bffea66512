"""The watch over prefect-services (services/prefect_services.py), run as the stack runs it, against a real Redis, with
children that read the event stream as Prefect's services do (consumer groups `reactive-triggers` and
`event-persister`, consumers named `<group>-<hostname>-<pid>-<id>`) or stall as Prefect's triggers service was seen
to (its persister reading, its triggers consumer never): the stalled one is started again, the healthy one is
left alone, a SIGTERM ends both."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlparse

import pytest

from tests.conftest import ROOT, wait_until

CHILD = """
import os, socket, sys, time, uuid
import redis
client = redis.Redis.from_url(sys.argv[1], decode_responses=True)
with open(sys.argv[2], "a") as out:
    out.write(f"{os.getpid()}\\n")
groups = sys.argv[3:]
for group in groups:
    try:
        client.xgroup_create("events", group, id="0", mkstream=True)
    except redis.ResponseError:
        pass
names = {g: f"{g}-{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}" for g in groups}
while True:
    for group, name in names.items():
        client.xreadgroup(group, name, {"events": ">"}, count=10, block=200)
    time.sleep(0.1)
"""


@pytest.fixture
def watch_env(redis_url: str) -> dict[str, str]:
    parsed = urlparse(redis_url)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_REDIS_MESSAGING_")}
    env.update(
        {
            "PREFECT_MESSAGING_BROKER": "prefect_redis.messaging",
            "PREFECT_REDIS_MESSAGING_HOST": parsed.hostname or "localhost",
            "PREFECT_REDIS_MESSAGING_PORT": str(parsed.port),
            "PYTHONPATH": str(ROOT),
        }
    )
    return env


@pytest.fixture
def flowing(redis_url: str) -> Iterator[None]:
    """Events on the stream, as a running stack has (heartbeats): a persister that reads has something to read."""
    import redis

    client = redis.Redis.from_url(redis_url)
    stop = False

    def publish() -> None:
        while not stop:
            client.xadd("events", {"data": "{}"}, maxlen=1000)
            time.sleep(0.2)

    thread = threading.Thread(target=publish, daemon=True)
    thread.start()
    yield
    stop = True
    thread.join(5)


def start_watch(env: dict[str, str], redis_url: str, folder: Path, *groups: str) -> subprocess.Popen[bytes]:
    child = [sys.executable, "-c", CHILD, redis_url, str(folder / "pids"), *groups]
    args = ["--grace", "3", "--stall", "3", "--every", "0.5", "--", *child]
    command = [sys.executable, "-m", "services.prefect_services", *args]
    with (folder / "watch.log").open("wb") as log:
        return subprocess.Popen(command, cwd=ROOT, env=env, stderr=log)


def children(folder: Path) -> list[int]:
    pids = folder / "pids"
    return [int(line) for line in pids.read_text().split()] if pids.exists() else []


def logged(folder: Path) -> str:
    return (folder / "watch.log").read_text()


def events(folder: Path) -> list[dict]:
    """The watch's log lines (JSON, as the stack's services log), the child's own output left out."""
    return [json.loads(line) for line in logged(folder).splitlines() if line.startswith("{")]


def end(watch: subprocess.Popen[bytes]) -> int:
    if watch.poll() is None:
        watch.send_signal(signal.SIGTERM)
    return watch.wait(30)


def test_services_whose_triggers_never_read_are_started_again(
    watch_env: dict[str, str], redis_url: str, flowing: None, tmp_path: Path
) -> None:
    watch = start_watch(watch_env, redis_url, tmp_path, "event-persister")  # reads events, its triggers never do
    try:
        restarted = wait_until(lambda: len(children(tmp_path)) >= 2 and children(tmp_path), 60, "a second start")
    finally:
        code = end(watch)
    log = logged(tmp_path)
    first = restarted[0]
    [restart, *_] = [e for e in events(tmp_path) if e["event"] == "restarting_stalled_services"]
    assert restart["pid"] == first and "no reactive-triggers consumer" in restart["why"], log
    assert restart["level"] == "error", log
    with pytest.raises(ProcessLookupError):
        os.kill(first, 0)  # the stalled child was stopped, not left beside the new one
    assert code == 128 + signal.SIGTERM, (code, log)  # the SIGTERM went to the child running then


def test_services_that_read_are_left_alone_and_a_sigterm_ends_them(
    watch_env: dict[str, str], redis_url: str, flowing: None, tmp_path: Path
) -> None:
    watch = start_watch(watch_env, redis_url, tmp_path, "event-persister", "reactive-triggers")
    try:
        [child] = wait_until(lambda: children(tmp_path), 30, "the child")
        wait_until(lambda: "reading_events" in logged(tmp_path), 30, "the watch to find it reading")
        checks = logged(tmp_path).count("\n")
        time.sleep(4)  # the stall bound (3 s) again, checked every 0.5 s: still the same child
        assert children(tmp_path) == [child] and watch.poll() is None, logged(tmp_path)
    finally:
        code = end(watch)
    log = logged(tmp_path)
    assert "restarting_stalled_services" not in log and log.count("\n") == checks, log
    with pytest.raises(ProcessLookupError):
        os.kill(child, 0)  # the SIGTERM went to the child too
    assert code == 128 + signal.SIGTERM, (code, log)
