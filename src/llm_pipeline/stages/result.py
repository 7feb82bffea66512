"""What a stage run leaves behind (`StageResult`: its files, counts, timing, resources and a fingerprint), how a
result is timed, and how a reused (cached) result's files are brought into a new run's folder."""

from __future__ import annotations

import hashlib
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

import llm_pipeline
from llm_pipeline.io import file_fingerprint
from llm_pipeline.logging import get_logger
from llm_pipeline.records import utc_now
from llm_pipeline.resources import ResourceSampler

log = get_logger("stages")


class StageResult(BaseModel):
    stage: str
    outputs: dict[str, str] = Field(default_factory=dict)  # name -> path of a file the stage wrote
    counts: dict[str, Any] = Field(default_factory=dict)
    started_at: str = ""
    duration_s: float = 0.0
    fingerprint: str = ""  # sha256 over the output files: what downstream caching keys on
    cached: bool = False
    reused_from: str | None = None
    resources: dict[str, Any] = Field(default_factory=dict)  # CPU, memory, GPU use while it ran (resources.py)

    def path(self, name: str) -> Path:
        return Path(self.outputs[name])


@contextmanager
def timed(stage: str) -> Iterator[StageResult]:
    """A result for `stage` that records its start, duration, resource use and, once the body has set its
    outputs, their fingerprint."""
    result = StageResult(stage=stage, started_at=utc_now())
    started = time.perf_counter()
    log.info("stage_started", stage=stage)
    with ResourceSampler() as sampler:
        yield result
    result.resources = sampler.summary()
    result.duration_s = round(time.perf_counter() - started, 3)
    result.fingerprint = file_fingerprint(*[Path(p) for p in result.outputs.values()]) if result.outputs else ""
    log.info(
        "stage_finished",
        stage=stage,
        seconds=result.duration_s,
        **{k: v for k, v in result.counts.items() if isinstance(v, int | float)},
    )


def code_version() -> str:
    """Package version plus a hash of the library's source, so a code change invalidates cached stages."""
    digest = hashlib.sha256()
    root = Path(llm_pipeline.__file__).parent
    for file in sorted(root.rglob("*.py")):
        digest.update(file.relative_to(root).as_posix().encode())
        digest.update(file.read_bytes())
    return f"{llm_pipeline.__version__}+{digest.hexdigest()[:12]}"


def materialize(result: StageResult, run_dir: Path) -> StageResult:
    """Bring a cached stage's files into this run's folder (hard links where possible) and say where from."""
    outputs = {}
    for name, path in result.outputs.items():
        source = Path(path)
        target = run_dir / source.name
        if source.resolve() != target.resolve():
            if source.is_dir():  # a folder output (a model): its files linked one by one
                shutil.rmtree(target, ignore_errors=True)
                shutil.copytree(source, target, copy_function=_link_or_copy)
            else:
                target.unlink(missing_ok=True)
                _link_or_copy(source, target)
        outputs[name] = str(target)
    reused = (
        None
        if all(Path(p).parent.resolve() == run_dir.resolve() for p in result.outputs.values())
        else str(Path(next(iter(result.outputs.values()))).parent)
    )
    cached = reused is not None or result.cached
    return result.model_copy(
        # a reused result did no work in this run: the resources it reports were another run's
        update={
            "outputs": outputs,
            "cached": cached,
            "reused_from": reused,
            "resources": {} if cached else result.resources,
        }
    )


def _link_or_copy(source: str | Path, target: str | Path) -> None:
    try:
        Path(target).hardlink_to(source)
    except OSError:
        shutil.copy2(source, target)


def outputs_exist(result: StageResult) -> bool:
    """Every output file is there (a folder output: it and the files it had are)."""
    return all(Path(p).is_file() or Path(p).is_dir() for p in result.outputs.values())
