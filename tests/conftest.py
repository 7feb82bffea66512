"""Shared fixtures: a pinned, offline environment, and real servers built once per session."""

from __future__ import annotations

import os

# Before anything imports torch, transformers or Prefect: no hub lookups (they take a minute to fail here),
# one torch thread (parallel torch processes on 2 cores slow each other 2-20x), no W&B network, no bars.
PINNED_ENVIRONMENT = {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "TRANSFORMERS_VERBOSITY": "error",
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",
    "OMP_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
    "TOKENIZERS_PARALLELISM": "false",
    "WANDB_SILENT": "true",
    "WANDB_MODE": "offline",
    "LLM_PIPELINE_PROGRESS": "0",
    "PREFECT_LOGGING_EXTRA_LOGGERS": "llm_pipeline",
    "PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW": "ignore",
}
for name, value in PINNED_ENVIRONMENT.items():
    os.environ.setdefault(name, value)
for leaked in ("OPENAI_API_KEY", "WANDB_API_KEY", "PIPELINE_ENV", "LOG_LEVEL"):
    os.environ.pop(leaked, None)
if os.environ.get("PYTEST_XDIST_WORKER"):  # each worker its own Prefect home: embedded runs' database, caches
    import atexit
    import shutil
    import tempfile

    os.environ["PREFECT_HOME"] = tempfile.mkdtemp(prefix=f"prefect-home-{os.environ['PYTEST_XDIST_WORKER']}-")
    atexit.register(shutil.rmtree, os.environ["PREFECT_HOME"], True)

import contextlib  # noqa: E402
import json  # noqa: E402
import shutil  # noqa: E402
import socket  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from collections.abc import Iterator  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import httpx  # noqa: E402
import psutil  # noqa: E402
import pytest  # noqa: E402

pytest_plugins = ["tests.stack"]  # the compose stack, shared by test_stack.py and test_ui.py

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "data" / "ev_charging" / "documents.jsonl"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def published_port() -> int:
    """A free port for Docker to publish minutes later (after `make up` builds the image): below the kernel's
    ephemeral range, which `free_port` draws from and every outgoing connection and Ray's own servers take ports
    from meanwhile (a Ray test on the other pytest worker once took the stack's port before Docker bound it:
    "address already in use"), and above Ray's worker ports (10002-19999)."""
    import random

    try:
        first_ephemeral = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        first_ephemeral = 32768
    for port in random.sample(range(20000, max(20001, first_ephemeral)), 200):
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    return free_port()


def wait_for_http(url: str, timeout: float = 90.0, process: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode} before {url} answered")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise TimeoutError(f"{url} did not answer within {timeout}s")


def trace(kind: str, what: str, started: float, outcome: str = "ok") -> None:
    """With TEST_TRACE=FILE, a line per wait and per docker/make call: which test spent how long on what (where a
    slow suite's time goes; `scripts/test_trace.py FILE` sums it). Nothing is written without it."""
    if path := os.environ.get("TEST_TRACE"):
        row = {
            "test": os.environ.get("PYTEST_CURRENT_TEST", ""),  # with its phase: (setup), (call), (teardown)
            "worker": os.environ.get("PYTEST_XDIST_WORKER", "main"),
            "kind": kind,
            "what": what[:200],
            "seconds": round(time.monotonic() - started, 2),
            "outcome": outcome,
        }
        with open(path, "a") as out:
            out.write(json.dumps(row) + "\n")


def wait_until(condition: Any, timeout: float, what: str) -> Any:
    """Poll `condition` until it returns something truthy (returned), or fail naming `what`."""
    started = time.monotonic()
    deadline = started + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            trace("wait", what, started)
            return value
        time.sleep(0.5)
    trace("wait", what, started, "timeout")
    raise AssertionError(f"not within {timeout}s: {what}")


RETRIED_STATUSES = (429, 502, 503)  # what Prefect's own client tries again (PREFECT_CLIENT_RETRY_EXTRA_CODES aside)


class RetryingTransport(httpx.HTTPTransport):
    """A test's raw client of a Prefect API, retried as Prefect's own client is: on 429, 502 and 503, up to 9 times
    with growing pauses. A SQLite server answers 503 while another writer (its startup services, on a busy machine)
    holds the database ("database is locked"), asking the client to try again; a test calling once failed so in CI."""

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        for attempt in range(1, 10):
            response = super().handle_request(request)
            if response.status_code not in RETRIED_STATUSES:
                return response
            response.read()
            response.close()
            time.sleep(0.5 * attempt)
        return super().handle_request(request)


def prefect_call(method: str, url: str, **kwargs: Any) -> httpx.Response:
    """One request to a Prefect server's API (RetryingTransport), its answer or the HTTP error it is."""
    with httpx.Client(transport=RetryingTransport(), timeout=30) as client:
        return client.request(method, url, **kwargs).raise_for_status()


class PrefectServer:
    """A real `prefect server start` process with its own home and database."""

    def __init__(
        self,
        home: Path,
        database_url: str | None = None,
        extra_env: dict[str, str] | None = None,
        port: int | None = None,
    ):
        self.home = home
        self.port = port or free_port()  # a port given: the same server started again, as a restart
        self.api_url = f"http://127.0.0.1:{self.port}/api"
        env = {
            **os.environ,
            "PREFECT_HOME": str(home),
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "PREFECT_UI_ENABLED": "false",
            "PREFECT_SERVER_LOGGING_LEVEL": "WARNING",
            **(extra_env or {}),
        }
        env.pop("PREFECT_API_URL", None)
        if database_url:
            env["PREFECT_SERVER_DATABASE_CONNECTION_URL"] = database_url
        self.log = (home / "server.log").open("a")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(self.port)],
            env=env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        wait_for_http(f"{self.api_url}/health", process=self.process)

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
        self.log.close()


def _drain_prefect_senders() -> None:
    """Send what Prefect's per-process events and API-log workers hold, and stop them. Prefect keeps one of each
    per process, keyed without the API's address: after a switch to another server they would go on sending to
    the first one (stopped by then: the health flow's alert event was lost so). The next use starts fresh ones on
    the current server."""
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker

    EventsWorker.drain_all(timeout=10)
    APILogWorker.drain_all(timeout=10)


@contextlib.contextmanager
def prefect_api(api_url: str, storage: Path | None = None) -> Iterator[None]:
    """Point this process's Prefect client at `api_url` (and its result storage at `storage`) inside the block:
    the one way tests switch servers, draining what was queued for the previous server on the way in, and for
    this one on the way out while it still runs."""
    from prefect.settings import PREFECT_API_URL, PREFECT_LOCAL_STORAGE_PATH, temporary_settings

    updates: dict[Any, Any] = {PREFECT_API_URL: api_url}
    if storage is not None:
        updates[PREFECT_LOCAL_STORAGE_PATH] = str(storage)
    _drain_prefect_senders()
    with temporary_settings(updates=updates):
        try:
            yield
        finally:
            _drain_prefect_senders()


@pytest.fixture(scope="session")
def prefect_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrefectServer]:
    """A real Prefect server (SQLite) for the session; the test process's Prefect client points at it."""
    home = tmp_path_factory.mktemp("prefect-home")
    server = PrefectServer(home)
    with prefect_api(server.api_url, home / "storage"):
        yield server
    server.stop()


@pytest.fixture
def sample_copy(tmp_path: Path) -> Path:
    target = tmp_path / "documents.jsonl"
    shutil.copy(SAMPLE, target)
    return target


def docker_available() -> bool:
    try:
        import docker

        docker.from_env(timeout=5).ping()
        return True
    except Exception:
        return False


def require_docker() -> None:
    """Skip (locally) or fail (under CI) a test that needs a Docker engine when none answers."""
    if not docker_available():
        if os.environ.get("CI"):
            pytest.fail("CI needs a Docker engine: `make test` starts one with ../shared/container-engine/up")
        pytest.skip(reason="no Docker engine here: run `bash ../shared/container-engine/up` (CI always does)")
    os.environ.setdefault("TESTCONTAINERS_RYUK_DISABLED", "true")


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A real Postgres 15 in a container (testcontainers), as an asyncpg URL for Prefect."""
    require_docker()
    from testcontainers.community.postgres import PostgresContainer

    with PostgresContainer(
        "postgres:15", username="prefect", password="prefect-test", dbname="prefect", driver="asyncpg"
    ) as container:
        yield container.get_connection_url()


@pytest.fixture(scope="session")
def postgres_prefect_server(tmp_path_factory: pytest.TempPathFactory, postgres_url: str) -> Iterator[PrefectServer]:
    """A real `prefect server start` on Postgres; the test process's client points at it while in use."""
    server = PrefectServer(tmp_path_factory.mktemp("prefect-pg-home"), database_url=postgres_url)
    yield server
    server.stop()


class Worker:
    """A real `prefect worker start` process polling every second."""

    def __init__(
        self,
        api_url: str,
        pool: str,
        home: Path,
        env: dict[str, str] | None = None,
        worker_type: str = "process",
        limit: int | None = None,
    ):
        self.log_path = home / f"worker-{pool}-{free_port()}.log"
        self.log = self.log_path.open("w")
        command = [sys.executable, "-m", "prefect", "worker", "start", "--pool", pool, "--type", worker_type]
        if limit is not None:
            command += ["--limit", str(limit)]
        self._terminated: float | None = None  # when SIGTERM was sent
        self._family: set[psutil.Process] = set()  # the flow-run processes seen under it
        self.process = subprocess.Popen(
            command,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env={
                **os.environ,
                "PREFECT_API_URL": api_url,
                "PREFECT_WORKER_QUERY_SECONDS": "1",
                "PREFECT_WORKER_PREFETCH_SECONDS": "1",
                # as the stack's workers: the zombie automation expects a heartbeat at least every 30 s
                "PREFECT_FLOWS_HEARTBEAT_FREQUENCY": "30",
                **(env or {}),
            },
        )

    def terminate(self) -> None:
        """SIGTERM, once (Prefect's worker stops polling and waits for its runs; a second SIGTERM kills them)."""
        import signal

        if self.process.poll() is None and self._terminated is None:
            self._note_family()
            os.killpg(self.process.pid, signal.SIGTERM)
            self._terminated = time.monotonic()

    def _note_family(self) -> None:
        """Remember the processes under the worker: Prefect starts each flow run's process in a session of its
        own, so a signal to the worker's group does not reach it, and once the worker is gone it has no parent
        to be found by."""
        with contextlib.suppress(psutil.Error):
            self._family.update(psutil.Process(self.process.pid).children(recursive=True))

    def stop(self) -> None:
        """SIGTERM, then up to 20 s from it for the worker to end, then SIGKILL; then SIGKILL to any flow-run
        process it left (a run past its timeout still sleeping, say), so that none outlives its test and loads
        the next ones. Several workers: `terminate` each first, so that their 20 s run together."""
        import signal

        self.terminate()
        if self.process.poll() is None:
            try:
                self.process.wait(timeout=max(0.0, 20 - (time.monotonic() - (self._terminated or 0.0))))
            except subprocess.TimeoutExpired:
                self._note_family()
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=30)
        for process in self._family:
            with contextlib.suppress(psutil.Error):  # is_running: the same process, not a reused pid
                if process.is_running():
                    process.kill()
        self.log.close()

    def __enter__(self) -> Worker:
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """A real Redis 7 in a container (testcontainers)."""
    require_docker()
    from testcontainers.community.redis import RedisContainer

    with RedisContainer("redis:7") as container:
        yield f"redis://{container.get_container_host_ip()}:{container.get_exposed_port(6379)}/0"


# Two pytest workers (`make test`, pytest-xdist): most of the stack's and the chaos tests' time is waiting on
# containers, heartbeats and cooldowns, and the CPU idles through it. A few things exist once per machine and
# their tests must run on one worker, in order: the compose stack (one project, one set of ports and volumes,
# and the swarm beside it) and the Ray engine's cluster. These groups are a file map, read by the scheduler
# below: xdist's own `xdist_group` mark does nothing under pytest 9.2 (pytest-dev/pytest-xdist#1386: xdist
# rewrites `item._nodeid`, which pytest no longer reads), so it would have started the stack on both workers.
WORKER_GROUPS: dict[str, tuple[str, ...]] = {
    "compose-stack": (
        "tests/test_autoscaling_stack.py",
        "tests/test_chaos.py",
        "tests/test_ray_stack.py",
        "tests/test_stack.py",
        "tests/test_swarm.py",
        "tests/test_ui.py",
    ),
    "ray-cluster": ("tests/test_ray_engine.py",),
}
GROUP_OF_FILE = {path: group for group, paths in WORKER_GROUPS.items() for path in paths}
# the fixtures that stand for a thing that exists once: a test that uses one must be in its group's files
SHARED_FIXTURES = {"stack": "compose-stack", "swarm": "compose-stack", "ray_cluster": "ray-cluster"}


def _test_file(nodeid: str) -> str:
    return nodeid.split("::", 1)[0]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    stray = [
        f"{item.nodeid} (uses {fixture}: list its file under {group!r} in WORKER_GROUPS, tests/conftest.py)"
        for item in items
        for fixture, group in SHARED_FIXTURES.items()
        if fixture in item.fixturenames and GROUP_OF_FILE.get(_test_file(item.nodeid)) != group
    ]
    if stray:
        raise pytest.UsageError("tests outside their worker group:\n  " + "\n  ".join(stray))
    if os.environ.get("PYTEST_XDIST_WORKER"):  # the groups first (the longest units), each in collection order
        order = list(WORKER_GROUPS)
        items.sort(key=lambda item: order.index(g) if (g := GROUP_OF_FILE.get(_test_file(item.nodeid))) else len(order))


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """Work handed out by file, a group's files as one unit, in collection order (the groups come first)."""
    from xdist.scheduler import LoadScopeScheduling

    class GroupScheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            path = _test_file(nodeid)
            return GROUP_OF_FILE.get(path, path)

    config.option.loadscopereorder = False
    return GroupScheduling(config, log)
