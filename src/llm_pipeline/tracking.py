"""Experiment tracking with Weights & Biases: online, offline or disabled; an outage never fails the pipeline.

`online` without WANDB_API_KEY, or with W&B unreachable, degrades to `offline` with a warning; offline runs
land under the run folder's `wandb/` and can be uploaded later with `wandb sync <dir>`.
One tracker is open per process at a time (`active_tracker`), so later stages can log to the same W&B run.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from llm_pipeline.logging import get_logger

log = get_logger("tracking")

_active: Tracker | None = None


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
    ):
        self.requested_mode = mode
        self.mode = mode
        self.project, self.directory, self.name, self.group = project, directory, name, group
        self.config, self.entity, self.init_timeout_s = config, entity, init_timeout_s
        self.run: Any = None
        self.error: str | None = None

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
        return self.info()

    def _init(self, mode: str) -> Any:
        os.environ.setdefault("WANDB_SILENT", "true")
        self.directory.mkdir(parents=True, exist_ok=True)
        try:
            import wandb

            return wandb.init(
                project=self.project,
                entity=self.entity,
                name=self.name,
                group=self.group,
                job_type="pipeline",
                config=self.config,
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
        info: dict[str, Any] = {"mode": self.mode, "requested_mode": self.requested_mode, "project": self.project}
        if self.run is not None:
            info.update(
                run_id=self.run.id,
                run_dir=str(Path(self.run.dir).parent),
                url=getattr(self.run, "url", None) if self.mode == "online" else None,
            )
            if self.mode == "offline":
                info["sync_command"] = f"wandb sync {Path(self.run.dir).parent}"
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
        global _active
        if self.run is not None:
            try:
                self.run.finish()
            except Exception as exc:
                log.warning("wandb_finish_failed", error=str(exc))
            self.run = None
        if _active is self:
            _active = None


def start_tracker(**kwargs: Any) -> Tracker:
    global _active
    if _active is not None:
        _active.finish()
    _active = Tracker(**kwargs)
    _active.start()
    return _active


def active_tracker() -> Tracker | None:
    return _active
