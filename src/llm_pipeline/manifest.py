"""The run manifest: what ran, when, for how long, on which config and code, and what each stage wrote."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from llm_pipeline.io import write_json
from llm_pipeline.records import utc_now


class Manifest:
    def __init__(self, path: Path, pipeline: str, run_id: str, config_hash: str, code_version: str):
        self.path = path
        self.data: dict[str, Any] = {
            "pipeline": pipeline,
            "run_id": run_id,
            "config_hash": config_hash,
            "code_version": code_version,
            "started_at": utc_now(),
            "finished_at": None,
            "status": "running",
            "stages": {},
        }

    @classmethod
    def open(cls, path: Path, pipeline: str, run_id: str, config_hash: str, code_version: str) -> Manifest:
        """The manifest at `path` as written so far (a stage run in another process adds to it), or a new one."""
        manifest = cls(path, pipeline, run_id, config_hash, code_version)
        if path.is_file():
            manifest.data = json.loads(path.read_text())
        return manifest

    def record(self, stage: str, status: str, result: Any = None, error: str | None = None) -> None:
        entry: dict[str, Any] = {"status": status}
        if result is not None:
            entry.update(
                duration_s=result.duration_s,
                started_at=result.started_at,
                counts=result.counts,
                outputs={k: Path(v).name for k, v in result.outputs.items()},
                fingerprint=result.fingerprint,
                cached=result.cached,
                reused_from=result.reused_from,
                resources=result.resources,
            )
        if error:
            entry["error"] = error
        self.data["stages"][stage] = entry
        self.save()

    def finish(self, status: str) -> None:
        self.data["status"] = status
        self.data["finished_at"] = utc_now()
        self.save()

    def save(self) -> None:
        write_json(self.path, self.data)


def mark_crashed(output_root: Path, run_suffix: str, reason: str) -> Path | None:
    """The manifest of the run whose folder ends with `run_suffix` (its flow run id's first 8 characters), if it
    still says "running": now "crashed", and the stage it was in too. Returns its path, or None."""
    for path in sorted(output_root.glob(f"*/*-{run_suffix}/manifest.json")):
        data = json.loads(path.read_text())
        if data.get("status") != "running":
            continue
        running = [name for name, entry in data.get("stages", {}).items() if entry.get("status") == "running"]
        for name in running:
            data["stages"][name] = {**data["stages"][name], "status": "crashed", "error": reason}
        data.update(status="crashed", crashed_in=running[-1] if running else None, finished_at=utc_now(), error=reason)
        write_json(path, data)
        return path
    return None
