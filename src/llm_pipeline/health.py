"""Pipeline health over a time window, per deployment, against the spec's thresholds.

Figures from flow runs (fetched from the Prefect API by flows/health.py; this module only computes):
  success rate  completed / finished (completed, failed, crashed; cancelled runs are left out)
  error rate    (failed + crashed) / finished
  duration      mean and max run time of finished runs
  queue time    mean and max of start - expected start; a run still waiting counts from its expected start to now
  resources     sampled during stages (llm_pipeline.resources, stored per run as the `<key>-resources` table
                artifact): CPU mean (stage-time weighted), memory peak, GPU utilisation mean, GPU memory peak;
                per deployment the mean of the runs' means and the max of their peaks
Thresholds (the spec's): success < 95 %, error > 5 %, duration > 2 h, queue > 30 min, any resource > 80 %. A
deployment crossing any of them is unhealthy, and `llm-pipeline health` exits 1.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from statistics import mean
from typing import Annotated, Any

from pydantic import BeforeValidator

from llm_pipeline.resources import combine_usage

FINISHED = {"COMPLETED", "FAILED", "CRASHED"}
ERRORS = {"FAILED", "CRASHED"}
WAITING = {"SCHEDULED", "PENDING", "LATE"}


@dataclass(frozen=True)
class Thresholds:
    min_success_rate: float = 0.95
    max_error_rate: float = 0.05
    max_duration: timedelta = timedelta(hours=2)
    max_queue: timedelta = timedelta(minutes=30)
    max_resource_pct: float = 80.0


@dataclass(frozen=True)
class RunRecord:
    deployment: str
    state: str  # Prefect state type: COMPLETED, FAILED, CRASHED, RUNNING, SCHEDULED...
    expected_start: datetime | None
    start: datetime | None
    run_time: timedelta
    resources: dict[str, float | None] | None = None  # the run's figures (resources.combine_usage), if sampled


@dataclass
class DeploymentHealth:
    deployment: str
    runs: int
    finished: int
    success_rate: float | None
    error_rate: float | None
    mean_duration_s: float | None
    max_duration_s: float | None
    mean_queue_s: float | None
    max_queue_s: float | None
    cpu_mean_pct: float | None = None
    memory_max_pct: float | None = None
    gpu_util_mean_pct: float | None = None
    gpu_memory_max_pct: float | None = None
    breaches: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def parse_window(text: str) -> timedelta:
    """`7d`, `24h`, `90m`, `30s`; a bare number is seconds."""
    units = {"d": "days", "h": "hours", "m": "minutes", "s": "seconds"}
    text = text.strip()
    if text.replace(".", "", 1).isdigit():
        return timedelta(seconds=float(text))
    if len(text) < 2 or text[-1] not in units or not text[:-1].replace(".", "", 1).isdigit():
        raise ValueError(f"a window is a number and a unit (d, h, m, s), e.g. 7d; got {text!r}")
    return timedelta(**{units[text[-1]]: float(text[:-1])})


def _window_or_given(value: Any) -> Any:
    """Before a settings field's own validation: a window written `7d`, `24h`, `90m`, `30s` or a bare number is
    parsed here; ISO 8601 (`PT23H`, what pydantic prints and `validate` shows) and non-strings go on to pydantic."""
    return parse_window(value) if isinstance(value, str) and not value.strip().startswith("P") else value


Window = Annotated[timedelta, BeforeValidator(_window_or_given)]


def deployment_health(runs: list[RunRecord], now: datetime, thresholds: Thresholds) -> list[DeploymentHealth]:
    by_deployment: dict[str, list[RunRecord]] = {}
    for run in runs:
        by_deployment.setdefault(run.deployment, []).append(run)
    report = []
    for name, group in sorted(by_deployment.items()):
        finished = [r for r in group if r.state in FINISHED]
        errors = sum(r.state in ERRORS for r in finished)
        durations = [r.run_time.total_seconds() for r in finished]
        queues = []
        for r in group:
            if r.expected_start is None:
                continue
            if r.start is not None:
                queues.append(max(0.0, (r.start - r.expected_start).total_seconds()))
            elif r.state in WAITING:
                queues.append(max(0.0, (now - r.expected_start).total_seconds()))
        health = DeploymentHealth(
            deployment=name,
            runs=len(group),
            finished=len(finished),
            success_rate=round((len(finished) - errors) / len(finished), 4) if finished else None,
            error_rate=round(errors / len(finished), 4) if finished else None,
            mean_duration_s=round(mean(durations), 3) if durations else None,
            max_duration_s=round(max(durations), 3) if durations else None,
            mean_queue_s=round(mean(queues), 3) if queues else None,
            max_queue_s=round(max(queues), 3) if queues else None,
            **combine_usage([(r.resources, 1.0) for r in group if r.resources]),
        )
        if health.success_rate is not None and health.success_rate < thresholds.min_success_rate:
            health.breaches.append(f"success rate {health.success_rate:.0%} < {thresholds.min_success_rate:.0%}")
        if health.error_rate is not None and health.error_rate > thresholds.max_error_rate:
            health.breaches.append(f"error rate {health.error_rate:.0%} > {thresholds.max_error_rate:.0%}")
        if health.max_duration_s is not None and health.max_duration_s > thresholds.max_duration.total_seconds():
            health.breaches.append(
                f"duration {health.max_duration_s:.0f} s > {thresholds.max_duration.total_seconds():.0f} s"
            )
        if health.max_queue_s is not None and health.max_queue_s > thresholds.max_queue.total_seconds():
            health.breaches.append(
                f"queue time {health.max_queue_s:.0f} s > {thresholds.max_queue.total_seconds():.0f} s"
            )
        for label, value in (
            ("CPU", health.cpu_mean_pct),
            ("memory", health.memory_max_pct),
            ("GPU utilisation", health.gpu_util_mean_pct),
            ("GPU memory", health.gpu_memory_max_pct),
        ):
            if value is not None and value > thresholds.max_resource_pct:
                health.breaches.append(f"{label} {value:.0f} % > {thresholds.max_resource_pct:.0f} %")
        report.append(health)
    return report
