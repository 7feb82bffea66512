"""A process worker that drains on SIGTERM: it stops taking flow runs at once and exits only when the runs it holds
have finished. Prefect's own `prefect worker start` exits on SIGTERM and leaves its runs `Running` with no process
behind them (observed with 3.9: a 20 s run never finished); `docker stop`, `docker compose down`/`up` and the
autoscaler's scale-down all send SIGTERM, so every worker in the stack starts here instead.

    python -m workers.serve --pool llm-pipeline-pool --limit 4

A second SIGTERM (or SIGINT) stops at once, as Prefect's worker does; Docker's stop timeout (the autoscaler's
SCALING_DRAIN_TIMEOUT, compose's stop_grace_period) bounds the wait from outside.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import socket
import sys
import warnings
from datetime import UTC, datetime

import anyio
from prefect.settings import PREFECT_WORKER_HEARTBEAT_SECONDS, PREFECT_WORKER_PREFETCH_SECONDS
from prefect.workers.process import ProcessWorker

with warnings.catch_warnings():  # a subclass re-registers Prefect's "process" type: same worker, said once
    warnings.simplefilter("ignore", UserWarning)

    class DrainingProcessWorker(ProcessWorker):
        """Prefect's process worker with one switch: once `draining`, its poll takes no run."""

        draining: bool = False

        async def get_and_submit_flow_runs(self):  # noqa: ANN201 - Prefect's signature
            if self.draining:
                # still "polling" for the healthcheck: a draining worker is healthy, it just takes nothing
                self._last_polled_time = datetime.now(UTC)
                return []
            return await super().get_and_submit_flow_runs()

        @property
        def runs_in_flight(self) -> int:
            return self._limiter.borrowed_tokens if self._limiter is not None else len(self._submitting_flow_run_ids)


def _say(message: str) -> None:
    print(message, flush=True)


async def serve(pool: str, limit: int | None, name: str, healthcheck: bool) -> None:
    worker = DrainingProcessWorker(
        name=name,
        work_pool_name=pool,
        limit=limit,
        prefetch_seconds=PREFECT_WORKER_PREFETCH_SECONDS.value(),
        heartbeat_interval_seconds=int(PREFECT_WORKER_HEARTBEAT_SECONDS.value()),
    )
    signals = asyncio.Queue()
    loop = asyncio.get_running_loop()
    for number in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(number, signals.put_nowait, number)
    async with anyio.create_task_group() as group:
        group.start_soon(lambda: worker.start(with_healthcheck=healthcheck, printer=_say))
        first = await signals.get()
        worker.draining = True
        _say(
            f"Worker {name!r}: {signal.Signals(first).name}, draining: takes no more flow runs, "
            f"{worker.runs_in_flight} still running"
        )
        while worker.runs_in_flight > 0:
            with anyio.move_on_after(0.5):
                await signals.get()
                _say(f"Worker {name!r}: second signal, stopping now with {worker.runs_in_flight} running")
                break
        else:
            _say(f"Worker {name!r}: drained, stopping")
        group.cancel_scope.cancel()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pool", required=True, help="work pool to poll")
    parser.add_argument("--limit", type=int, default=None, help="flow runs at once (Prefect's worker limit)")
    parser.add_argument("--name", default=None, help="worker name (default: pool and this host's name)")
    parser.add_argument("--with-healthcheck", action="store_true", help="serve /health on :8080, as Prefect's")
    args = parser.parse_args(argv)
    name = args.name or f"{args.pool}@{socket.gethostname()}"
    try:
        asyncio.run(
            serve(args.pool, args.limit if args.limit and args.limit > 0 else None, name, args.with_healthcheck)
        )
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
