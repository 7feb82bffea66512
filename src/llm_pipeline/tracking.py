"""Experiment tracking with Weights & Biases: online, offline or disabled; an outage never fails the pipeline.

`online` without WANDB_API_KEY, or with W&B unreachable, degrades to `offline` with a warning; offline runs
land under the run folder's `wandb/` and can be uploaded later with `wandb sync`.
The hand-off between stages is a file: the tracking stage writes `Tracker.info()` (run id, project, mode,
folder) to tracking.json, and a later stage, in any process, continues the same W&B run with
`Tracker.resume(info)`. `finish()` returns only once the run's data is on disk.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from llm_pipeline.logging import get_logger

log = get_logger("tracking")


class Tracker:
    def __init__(
        self,
        mode: str,
        project: str,
        directory: Path,
        name: str,
        group: str,
        config: dict[str, Any],
        entity: str | None = None,
        init_timeout_s: float = 60.0,
        run_id: str | None = None,
    ):
        self.requested_mode = mode
        self.mode = mode
        self.project, self.directory, self.name, self.group = project, directory, name, group
        self.config, self.entity, self.init_timeout_s = config, entity, init_timeout_s
        self.run_id = run_id  # given: continue that W&B run (a later stage); else set once a new one starts
        self.run_dir: Path | None = None
        self.url: str | None = None
        self.run: Any = None
        self.error: str | None = None

    @classmethod
    def resume(cls, info: dict[str, Any], init_timeout_s: float = 60.0) -> Tracker | None:
        """Continue the W&B run that `info` (a tracking stage's `info()`, from tracking.json) describes, in the
        mode it ended in; None when that run was disabled."""
        if info.get("mode") == "disabled" or not info.get("run_id"):
            return None
        tracker = cls(
            mode=info["mode"],
            project=info["project"],
            directory=Path(info["directory"]),
            name=info.get("name") or "",
            group=info.get("group") or "",
            config={},
            entity=info.get("entity"),
            init_timeout_s=init_timeout_s,
            run_id=info["run_id"],
        )
        _next_second_if_taken(Path(info["directory"]), info["run_id"])
        tracker.start()
        return tracker

    def start(self) -> dict[str, Any]:
        if self.mode == "online" and not os.environ.get("WANDB_API_KEY"):
            log.warning("wandb_degraded", reason="no WANDB_API_KEY", mode="offline")
            self.mode = "offline"
        if self.mode != "disabled":
            self.run = self._init(self.mode)
            if self.run is None and self.mode == "online":
                log.warning("wandb_degraded", reason=self.error, mode="offline")
                self.mode = "offline"
                self.run = self._init("offline")
            if self.run is None:
                log.warning("wandb_unavailable", reason=self.error, mode="disabled")
                self.mode = "disabled"
            else:
                self.run_id, self.run_dir = self.run.id, Path(self.run.dir).parent
                self.url = getattr(self.run, "url", None) if self.mode == "online" else None
        return self.info()

    def _init(self, mode: str) -> Any:
        os.environ.setdefault("WANDB_SILENT", "true")
        self.directory.mkdir(parents=True, exist_ok=True)
        try:
            import wandb

            return wandb.init(
                id=self.run_id,
                resume="allow" if self.run_id else None,
                project=self.project,
                entity=self.entity,
                name=self.name,
                group=self.group,
                job_type="pipeline",
                config=self.config or None,
                dir=str(self.directory),
                mode=mode,
                reinit="finish_previous",
                settings=wandb.Settings(
                    init_timeout=self.init_timeout_s,
                    console="off",
                    x_disable_stats=True,
                    # read per run: wandb's process-wide settings keep the value of their first init
                    **({"base_url": os.environ["WANDB_BASE_URL"]} if os.environ.get("WANDB_BASE_URL") else {}),
                ),
            )
        except Exception as exc:  # W&B raises many types (network, auth, usage); none may stop the pipeline
            self.error = f"{type(exc).__name__}: {exc}"
            return None

    def info(self) -> dict[str, Any]:
        info: dict[str, Any] = {
            "mode": self.mode,
            "requested_mode": self.requested_mode,
            "project": self.project,
            "entity": self.entity,
            "name": self.name,
            "group": self.group,
            "directory": str(self.directory),
        }
        if self.run_dir is not None:
            info.update(run_id=self.run_id, run_dir=str(self.run_dir), url=self.url)
            if self.mode == "offline":
                # every process that continued the run wrote a folder of its own: sync them all, in order
                info["sync_command"] = f"wandb sync {self.directory / 'wandb'}/offline-run-*-{self.run_id}"
        if self.error:
            info["error"] = self.error
        return info

    def log(self, metrics: dict[str, Any]) -> None:
        if self.run is None:
            return
        try:
            self.run.log({k: v for k, v in metrics.items() if isinstance(v, int | float)})
        except Exception as exc:
            log.warning("wandb_log_failed", error=str(exc))

    def log_table(self, key: str, columns: list[str], rows: list[list[Any]]) -> None:
        if self.run is None:
            return
        try:
            import wandb

            self.run.log({key: wandb.Table(columns=columns, data=rows)})
        except Exception as exc:
            log.warning("wandb_log_failed", error=str(exc))

    def log_artifact(self, name: str, kind: str, files: list[Path], metadata: dict[str, Any]) -> None:
        """Files as one W&B artifact; logging the same name again makes a new version when the content changed."""
        if self.run is None:
            return
        try:
            import wandb

            artifact = wandb.Artifact(name, type=kind, metadata=metadata)
            for file in files:
                artifact.add_file(str(file), name=file.name)
            self.run.log_artifact(artifact)
        except Exception as exc:
            log.warning("wandb_artifact_failed", artifact=name, error=str(exc))

    def log_html(self, key: str, path: Path) -> None:
        """A self-contained HTML file (the report), shown in the W&B run's media panel."""
        if self.run is None:
            return
        try:
            import wandb

            self.run.log({key: wandb.Html(path.read_text(encoding="utf-8"))})
        except Exception as exc:
            log.warning("wandb_log_failed", error=str(exc))

    def summary(self, values: dict[str, Any]) -> None:
        if self.run is None:
            return
        for key, value in values.items():
            self.run.summary[key] = value

    def finish(self) -> None:
        """Close the run with its data on disk. `run.finish()` returns once the W&B service has the last record,
        but the service closes the run's file (flushing what it buffers) only after an unanswered `inform_finish`:
        a reader right after could find a bare header. `wandb.teardown()` waits for the service to exit, which
        closes every run's file first."""
        if self.run is None:
            return
        try:
            import wandb

            self.run.finish()
            wandb.teardown()
        except Exception as exc:
            log.warning("wandb_finish_failed", error=str(exc))
        self.run = None


def _next_second_if_taken(directory: Path, run_id: str) -> None:
    """W&B names a run's offline folder by the second it starts and the run id: a resume within the same second
    as the run's start (every stage between them cached) would share, and overwrite, the first folder."""
    import time

    stamp = time.strftime("%Y%m%d_%H%M%S")
    if any((directory / "wandb").glob(f"*-run-{stamp}-{run_id}")):
        time.sleep(1.05 - time.time() % 1)
