"""Prefect artifacts: what the UI shows about a run without anyone opening a file.

Keys start with the deployment's name (or the pipeline's, in embedded mode), so the Artifacts page shows each
one's history per deployment:
  <key>-<stage>       markdown, per stage: counts, duration, resources, outputs, cached or not
  <key>-resources     table: CPU, memory and GPU use per stage, and the run's figures (what health reads)
  <key>-metrics       table: the evaluation's headline metrics per candidate
  <key>-report        markdown: links to report.html, report.md and the W&B run, then the report itself
  <key>-<stage>-progress  progress, on the long stages (QA generation, evaluation), updated each tenth
An artifact is a view: any failure to create one is logged and the run goes on.
"""

from __future__ import annotations

import contextvars
import json
import os
import re
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from flows.outage import own_retries
from llm_pipeline import progress
from llm_pipeline.html_report import embed_markdown_images
from llm_pipeline.logging import get_logger
from llm_pipeline.resources import combine_usage

if TYPE_CHECKING:  # the stages module imports every stage's dependencies; health only needs the keys
    from llm_pipeline.stages import StageResult

log = get_logger("artifacts")

OUTPUTS_URL_ENV = "LLM_PIPELINE_OUTPUTS_URL"  # the outputs service's address, as the browser sees it
RESOURCES_SUFFIX = "-resources"
ARTIFACT_RETRIES = 2
RESOURCE_COLUMNS = ("cpu_mean_pct", "cpu_max_pct", "memory_max_pct", "rss_max_mb", "gpu_util_mean_pct",
                    "gpu_memory_max_pct")  # fmt: skip


def artifact_key(*parts: str) -> str:
    """Prefect keys: lowercase letters, digits and dashes."""
    return re.sub(r"-+", "-", re.sub(r"[^a-z0-9-]+", "-", "-".join(parts).lower())).strip("-")


def _safely(what: str, create: Callable[[], Any]) -> Any:
    """An artifact is a view of files already written: made with two client retries (about 6 s), or given up, not
    waited for through an API outage."""
    try:
        with own_retries(ARTIFACT_RETRIES):
            return create()
    except Exception as exc:
        log.warning("artifact_failed", artifact=what, error=f"{type(exc).__name__}: {exc}")
        return None


def output_link(path: Path | str, output_root: Path | None = None) -> str:
    """Where a browser finds a run's file: on the outputs service when LLM_PIPELINE_OUTPUTS_URL is set (the
    compose stack), else the local path as a file:// URL (an embedded run, on the user's own machine)."""
    path = Path(path).resolve()
    base = os.environ.get(OUTPUTS_URL_ENV, "").rstrip("/")
    root = (output_root or Path.cwd()).resolve()
    if base and root in path.parents:
        return f"{base}/{quote(path.relative_to(root).as_posix())}"
    return path.as_uri()


def stage_summary(prefix: str, result: StageResult, output_root: Path | None = None) -> None:
    from prefect.artifacts import create_markdown_artifact

    from llm_pipeline.report import file_table

    lines = [f"### {result.stage}", ""]
    if result.cached:
        lines += [f"Reused from an earlier run (cache hit): `{result.reused_from or 'this run folder'}`.", ""]
    lines += [f"Duration: **{result.duration_s:.1f} s**, started {result.started_at}.", ""]
    status = str(result.counts.get("status", ""))
    if status.startswith("partial"):  # e.g. the QA spending cap reached: say it before anything else
        lines += [f"**{status}**", ""]
    if result.counts:
        lines += ["| count | value |", "|---|---|"]
        lines += [f"| {k} | {_cell(v)} |" for k, v in result.counts.items() if k != "sources.files"]
        lines.append("")
    files = result.counts.get("sources.files") or []
    if files:  # the loader's per-file summary: a file that gave nothing must be seen where the run is looked at
        lines += file_table(files, 50) + [""]
    if result.resources:
        lines += ["| resource | value |", "|---|---|"]
        lines += [f"| {k} | {_cell(v)} |" for k, v in result.resources.items() if v is not None]
        lines.append("")
    if result.outputs:
        links = [f"[{Path(p).name}]({output_link(p, output_root)})" for p in result.outputs.values()]
        folder = Path(next(iter(result.outputs.values()))).parent
        lines += ["Outputs: " + ", ".join(links) + f" (in [the run folder]({output_link(folder, output_root)}/))", ""]
    key = artifact_key(prefix, result.stage)
    _safely(key, lambda: create_markdown_artifact(markdown="\n".join(lines), key=key, description=result.stage))


def _cell(value: Any) -> str:
    if isinstance(value, dict | list):
        return "`" + json.dumps(value)[:200] + "`"
    return str(value)


def resources_table(prefix: str, results: dict[str, StageResult]) -> None:
    """Per-stage rows and a `(run)` row (the run's figures, which `health` reads)."""
    from prefect.artifacts import create_table_artifact

    measured = {name: r.resources for name, r in results.items() if r.resources}
    figures = combine_usage([(usage, results[name].duration_s) for name, usage in measured.items()])
    rows = [{"stage": name, **{c: usage.get(c) for c in RESOURCE_COLUMNS}} for name, usage in measured.items()]
    rows.append({"stage": "(run)", **{c: figures.get(c) for c in RESOURCE_COLUMNS}})
    key = artifact_key(prefix) + RESOURCES_SUFFIX
    _safely(key, lambda: create_table_artifact(table=rows, key=key, description="CPU, memory and GPU use, %"))


def metrics_table(prefix: str, summary_path: Path) -> None:
    from prefect.artifacts import create_table_artifact

    evaluation = json.loads(summary_path.read_text()).get("evaluation", {})
    rows = []
    for candidate, metrics in evaluation.items():
        row: dict[str, Any] = {"candidate": candidate}
        for name, value in metrics.items():
            if isinstance(value, int | float):
                row[name] = round(value, 4)
            elif isinstance(value, str):
                row[name] = value
        rows.append(row)
    key = artifact_key(prefix, "metrics")
    if rows:
        _safely(key, lambda: create_table_artifact(table=rows, key=key, description="evaluation, per candidate"))


def report_artifact(
    prefix: str, run_id: str, final: StageResult, tracking: dict[str, Any], output_root: Path | None = None
) -> None:
    """Links first (report.html, report.md, the run folder, the W&B run or how to sync it), then the report
    itself with its charts embedded."""
    from prefect.artifacts import create_markdown_artifact

    report = Path(final.outputs["report"])
    links = [
        f"**{prefix}**, run `{run_id}`",
        f"- [report.html]({output_link(final.outputs['report_html'], output_root)}) (self-contained, charts embedded)",
        f"- [report.md]({output_link(report, output_root)})",
        f"- [all of the run's files]({output_link(report.parent, output_root)}/)",
    ]
    if tracking.get("url"):
        links.append(f"- [W&B run]({tracking['url']})")
    elif tracking.get("sync_command"):
        links.append(f"- W&B run offline: upload with `{tracking['sync_command']}`")
    else:
        links.append(f"- W&B: {tracking.get('mode', 'disabled')}")
    markdown = "\n".join(links) + "\n\n" + embed_markdown_images(report.read_text(encoding="utf-8"), report.parent)
    key = artifact_key(prefix, "report")
    _safely(key, lambda: create_markdown_artifact(markdown=markdown, key=key, description=f"report, run {run_id}"))


@contextmanager
def progress_artifacts(prefix: str, stage: str) -> Iterator[None]:
    """While a stage runs, its ProgressCounter's tenths update a progress artifact. Prefect calls go through one
    worker thread: the counter may tick inside an event loop (QA's requests), where Prefect's sync API would
    hand back a coroutine instead of running."""
    from prefect.artifacts import create_progress_artifact, update_progress_artifact

    key = artifact_key(prefix, stage, "progress")
    state: dict[str, Any] = {"id": None}
    run_context = contextvars.copy_context()  # the flow run's, so the artifact belongs to it
    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="progress-artifact")

    def post(done: int, total: int, description: str) -> None:
        percent = round(100.0 * done / total, 1) if total else 100.0
        if state["id"] is None:
            state["id"] = _safely(key, lambda: create_progress_artifact(percent, key=key, description=description))
        else:
            _safely(key, lambda: update_progress_artifact(state["id"], percent, description=description))

    def listener(description: str, done: int, total: int) -> None:
        pool.submit(run_context.run, post, done, total, description)

    progress.add_listener(listener)
    try:
        yield
    finally:
        progress.remove_listener(listener)
        pool.shutdown(wait=True)
