"""A stage's declared contract (`Stage`): what it reads from the config and from earlier stages, what it writes,
whether it is cached, where it prefers to run and how it is retried; and what a stage function is handed
(`StageContext`). The orchestration layer derives tasks, cache keys, manifest entries, artifacts and progress from
the declarations in stages/registry.py, and runs a stage through stages/runner.py.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from llm_pipeline.config import PipelineConfig

MANIFEST_FILE = "manifest.json"

Pool = Literal["cpu", "gpu"]
RetryScope = Literal["table", "never"]


@dataclass(frozen=True)
class Stage:
    """One stage of the pipeline, declared once.

    name      the task's name, the manifest's and the artifacts' key
    run       the stage function: reads `ctx.input(...)`, writes `ctx.output(...)`, returns its counts
    reads     the config sections (or top-level keys) its outputs depend on: part of its cache key
    inputs    input name -> "<stage>.<output>": files written by an earlier stage, handed over by path
    outputs   output name -> file (or folder) name in the run folder; every one must exist when the stage returns
    cached    a rerun with the same config sections, inputs and code reuses its files instead of running
    pool      where it prefers to run: "gpu" stages run as the GPU pool's deployment where one is configured
    retry     "table": Prefect retries it by the class of its error (llm_pipeline.retries); "never"
    progress  long-running: its progress counter feeds a progress artifact
    key       what else decides its outputs (an input file's fingerprint, a resolved backend): in its cache key
    keyless   inputs that say where to report, not what to compute (the W&B run): left out of the cache key
    uses_pool whether a run's config gives the stage work for its pool (None: always); a stage with nothing to do
              (fine-tuning off) runs inline instead of waiting for a GPU worker
    """

    name: str
    run: Callable[[StageContext], dict[str, Any]]
    reads: tuple[str, ...] = ()
    inputs: Mapping[str, str] = field(default_factory=dict)
    outputs: Mapping[str, str] = field(default_factory=dict)
    cached: bool = False
    pool: Pool = "cpu"
    retry: RetryScope = "table"
    progress: bool = False
    key: Callable[[PipelineConfig], dict[str, Any]] | None = None
    keyless: tuple[str, ...] = ()
    uses_pool: Callable[[PipelineConfig], bool] | None = None

    def runs_on_pool(self, config: PipelineConfig) -> bool:
        """Whether this run hands the stage to its pool's deployment (a GPU stage with work to do)."""
        return self.pool == "gpu" and (self.uses_pool is None or self.uses_pool(config))

    def producer(self, input_name: str) -> tuple[str, str]:
        """(stage, output) that an input comes from."""
        stage, _, output = self.inputs[input_name].rpartition(".")
        return stage, output


@dataclass
class StageContext:
    """What a stage function is handed: the config, its run folder, and its inputs as files."""

    stage: Stage
    config: PipelineConfig
    run_dir: Path
    run_id: str
    group: str = "local"  # the deployment the run belongs to (names the W&B group)
    inputs: dict[str, Path] = field(default_factory=dict)
    extra_outputs: dict[str, str] = field(default_factory=dict)  # beyond the declared ones (finalize's charts)

    def input(self, name: str) -> Path:
        return self.inputs[name]

    def output(self, name: str) -> Path:
        return self.run_dir / self.stage.outputs[name]

    def manifest(self) -> dict[str, Any]:
        """The run's manifest as written so far: every earlier stage's status, counts, timing and files."""
        return read_manifest(self.run_dir)

    def counts_of(self, input_name: str) -> dict[str, Any]:
        """The counts of the stage an input comes from."""
        stage, _ = self.stage.producer(input_name)
        return self.manifest()["stages"][stage].get("counts", {})

    def fingerprint_of(self, input_name: str) -> str:
        """The output fingerprint of the stage an input comes from (what its downstream caching keys on)."""
        stage, _ = self.stage.producer(input_name)
        return str(self.manifest()["stages"][stage].get("fingerprint", ""))

    def was_cached(self, input_name: str) -> bool:
        stage, _ = self.stage.producer(input_name)
        return bool(self.manifest()["stages"][stage].get("cached"))


def read_manifest(run_dir: Path) -> dict[str, Any]:
    path = run_dir / MANIFEST_FILE
    return json.loads(path.read_text()) if path.is_file() else {"stages": {}}
