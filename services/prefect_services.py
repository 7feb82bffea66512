"""prefect-services under a watch: `prefect server services start` as a child, started again when its automations
stop hearing events.

    python -m services.prefect_services [--grace 120] [--stall 120] [--every 15] [-- COMMAND ...]

Prefect's triggers service (automations: the zombie check, the resubmission, every alert) reads the event stream
through a Redis consumer group, `reactive-triggers`. Seen on the compose stack (a full test run, 2026-12-07): after
prefect-services was recreated, its process logged "ReactiveTriggers starting" and never read the stream (no
consumer of its name in the group, 20 minutes on), while its event persister, in the same process, read on. Nothing
was logged, the container stayed up, and every automation was dead: two killed workers' runs stayed Running, never
Crashed, never resubmitted. Prefect's cause not found (an in-process stall before the consumer's first read).

This watch asks Redis, every `--every` seconds, for the child's consumers (named `<group>-<hostname>-<pid>-...`).
The child is stalled when, `--grace` seconds after its start, it has no `reactive-triggers` consumer, or when that
consumer has not read for `--stall` seconds while its `event-persister` has (events flow, automations do not hear
them). Then it logs why (an ERROR line), stops the child (SIGTERM, SIGKILL after 20 s) and starts it again. SIGTERM
and SIGINT to the watch go to the child, and the watch ends with it. Where the broker is not Redis
(PREFECT_MESSAGING_BROKER), the child just runs.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

DEFAULT_COMMAND = ["prefect", "server", "services", "start"]
STREAM = "events"
TRIGGERS = "reactive-triggers"
PERSISTER = "event-persister"
STOP_WAIT_S = 20


def _log() -> Any:
    from llm_pipeline.logging import get_logger  # the stack's services log as the pipeline does

    return get_logger("services-watch")


def consumer_idle(client: Any, group: str, pid: int) -> float | None:
    """Seconds since the child's consumer in `group` last read the stream; None when it has none (or no group)."""
    import redis

    prefix = f"{group}-{socket.gethostname()}-{pid}-"
    try:
        rows = client.xinfo_consumers(STREAM, group)
    except redis.ResponseError:  # no stream or no group yet
        return None
    idle = [row["idle"] / 1000 for row in rows if str(row["name"]).startswith(prefix)]
    return min(idle) if idle else None


def why_stalled(client: Any, pid: int, running_s: float, grace_s: float, stall_s: float) -> str | None:
    """Why the child's automations hear no events, or None while they do (or it is too early to say)."""
    if running_s < grace_s:
        return None
    triggers = consumer_idle(client, TRIGGERS, pid)
    if triggers is None:
        return f"no {TRIGGERS} consumer {running_s:.0f} s after the start: automations read no events"
    persister = consumer_idle(client, PERSISTER, pid)
    if triggers > stall_s and persister is not None and persister < stall_s:
        return f"the {TRIGGERS} consumer has not read for {triggers:.0f} s while events are stored"
    return None


def redis_client() -> Any | None:
    """A Redis client on Prefect's own messaging settings (PREFECT_REDIS_MESSAGING_*), or None where the broker is
    not Redis."""
    if os.environ.get("PREFECT_MESSAGING_BROKER") != "prefect_redis.messaging":
        return None
    import redis
    from prefect_redis.client import RedisMessagingSettings

    settings = RedisMessagingSettings()
    options = {"decode_responses": True, "socket_timeout": 10, "socket_connect_timeout": 10}
    if settings.url:
        return redis.Redis.from_url(settings.url, **options)
    return redis.Redis(
        host=settings.host,
        port=settings.port,
        db=settings.db,
        username=settings.username if settings.password else None,  # no password: no AUTH at all
        password=settings.password or None,
        ssl=settings.ssl,
        **options,
    )


def stop(child: subprocess.Popen[bytes]) -> None:
    if child.poll() is None:
        child.terminate()
        try:
            child.wait(STOP_WAIT_S)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()


def supervise(
    command: list[str],
    client: Any | None,
    grace_s: float,
    stall_s: float,
    every_s: float,
    start: Callable[[list[str]], subprocess.Popen[bytes]] = subprocess.Popen,
) -> int:
    """Run `command`, started again whenever `why_stalled` says so; its exit code once it ends by itself."""
    stopping: list[int] = []
    child = start(command)
    started = time.monotonic()

    def forward(signum: int, _frame: Any) -> None:
        stopping.append(signum)
        if child.poll() is None:
            child.send_signal(signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    log = _log()
    log.info("started", pid=child.pid, command=" ".join(command), watching=client is not None)
    confirmed = False  # said once per child that its automations read events
    while True:
        try:
            code = child.wait(every_s)
        except subprocess.TimeoutExpired:
            code = None
        if code is not None:
            return code
        if stopping or client is None:
            continue
        try:
            why = why_stalled(client, child.pid, time.monotonic() - started, grace_s, stall_s)
        except Exception as exc:  # noqa: BLE001 - Redis away: the services' own problem, nothing to restart for
            log.warning("check_failed", error=f"{type(exc).__name__}: {exc}"[:200])
            continue
        if why is None:
            if not confirmed and time.monotonic() - started >= grace_s:
                confirmed = True
                log.info("reading_events", pid=child.pid)
            continue
        log.error("restarting_stalled_services", pid=child.pid, why=why)
        stop(child)
        child = start(command)
        started, confirmed = time.monotonic(), False
        log.info("started", pid=child.pid, command=" ".join(command), watching=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--grace", type=float, default=120.0, help="seconds a start may take to read events")
    parser.add_argument("--stall", type=float, default=120.0, help="seconds without a read that count as a stall")
    parser.add_argument("--every", type=float, default=15.0, help="seconds between checks")
    parser.add_argument("command", nargs="*", default=DEFAULT_COMMAND, help="the services' command (after --)")
    args = parser.parse_args(argv)
    from llm_pipeline.logging import configure_logging

    configure_logging(os.environ.get("LOG_LEVEL") or "INFO", structured=True)  # JSON lines on stderr, as the autoscaler
    code = supervise(args.command or DEFAULT_COMMAND, redis_client(), args.grace, args.stall, args.every)
    return 128 - code if code < 0 else code  # a child ended by a signal: the shell's 128 + N


if __name__ == "__main__":
    sys.exit(main())
