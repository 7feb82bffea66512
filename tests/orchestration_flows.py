"""Small flows that the orchestration tests deploy: they make queue limits, priorities and failures visible."""

from __future__ import annotations

import time

from prefect import flow, task


@flow(name="sleeper")
def sleeper(seconds: float = 3.0, label: str = "") -> str:
    time.sleep(seconds)
    return label


@flow(name="always-fails")
def always_fails(
    stage: str, config_path: str, run_dir: str, run_id: str, overrides: dict | None = None, group: str = "local"
) -> None:
    """Takes the stage flow's parameters, and fails: the pipeline that handed off to it must fail too."""
    raise RuntimeError("this evaluation deployment fails on purpose")


@flow(name="stalls")
def stalls(
    stage: str, config_path: str, run_dir: str, run_id: str, overrides: dict | None = None, group: str = "local"
) -> None:
    """Takes the stage flow's parameters, writes its process id beside the run's outputs, and never returns: a GPU
    stage that hangs, for the pipeline's time limits to stop."""
    import os
    from pathlib import Path

    (Path(run_dir) / f"{stage}.stalled.pid").write_text(str(os.getpid()))
    time.sleep(3600)


@flow(name="times-out", timeout_seconds=5)
def times_out() -> None:
    """Ends TimedOut (a Failed-type state with a name and an event of its own), as a run past
    execution.run_timeout does."""
    time.sleep(120)


@flow(name="fails-on-purpose")
def fails_on_purpose() -> None:
    """A deployment that always fails: what the alert tests page someone about."""
    raise RuntimeError("this deployment fails on purpose")


@flow(name="sleep-once")
def sleep_once(marker: str, seconds: float = 120.0) -> str:
    """The first run writes its process id to `marker` and sleeps (a victim for a kill); later runs return at once."""
    import os
    from pathlib import Path

    path = Path(marker)
    if path.exists():
        return "second"
    path.write_text(str(os.getpid()))
    time.sleep(seconds)
    return "first"


@flow(name="hands-off-once")
def hands_off_once(marker: str, child: str, child_marker: str, seconds: float = 600.0) -> str:
    """As sleep_once, but the first run hands a stage off as the pipeline does (run_deployment from a task: a child
    run on another pool, `child` = sleep-once's deployment) and waits for it; later runs return at once."""
    import os
    from pathlib import Path

    path = Path(marker)
    if path.exists():
        return "second"
    path.write_text(str(os.getpid()))
    _follow_a_child(child, child_marker, seconds)
    return "first"


@task
def _follow_a_child(deployment: str, marker: str, seconds: float) -> None:
    from prefect.deployments import run_deployment

    run_deployment(deployment, parameters={"marker": marker, "seconds": seconds}, timeout=None)
