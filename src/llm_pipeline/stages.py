"""The seven stages as plain functions over files in the run folder: each reads its inputs by path, writes its
outputs, and returns a `StageResult` (paths, counts, timing, a fingerprint of what it wrote).

Prefect is not imported here: flows/pipeline.py wraps each function in a task. Hand-offs are files, named by the
stage that wrote them, so a stage can run in another process or on another pool from the same shared folder.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

import llm_pipeline
from llm_pipeline.benchmark import BENCHMARK_VERSION, build_benchmark
from llm_pipeline.charts import pipeline_charts
from llm_pipeline.comparison import compare_runs
from llm_pipeline.config import PipelineConfig, Secrets
from llm_pipeline.dedup import deduplicate
from llm_pipeline.evaluation import evaluate_candidates
from llm_pipeline.html_report import render_html
from llm_pipeline.ingest import load_documents
from llm_pipeline.io import atomic_open, file_fingerprint, read_jsonl, write_json, write_jsonl, write_parquet
from llm_pipeline.logging import get_logger
from llm_pipeline.qa import generate_qa
from llm_pipeline.records import BenchmarkItem, Document, Prediction, QAPair, utc_now
from llm_pipeline.report import build_summary, render_report
from llm_pipeline.resources import ResourceSampler
from llm_pipeline.tracking import active_tracker, start_tracker

log = get_logger("stages")

EXAMPLE_CLUSTERS = 5  # clusters shown, with their texts, in report.md
STAGES = (
    "initialize-pipeline",
    "load-and-deduplicate-data",
    "generate-qa-pairs",
    "setup-experiment-tracking",
    "generate-benchmark",
    "evaluate-models",
    "finalize-pipeline",
)


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
def _timed(stage: str) -> Iterator[StageResult]:
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
            target.unlink(missing_ok=True)
            try:
                target.hardlink_to(source)
            except OSError:
                shutil.copy2(source, target)
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


def outputs_exist(result: StageResult) -> bool:
    return all(Path(p).is_file() for p in result.outputs.values())


# 1 ---------------------------------------------------------------------------------------------------------
def initialize_pipeline(config: PipelineConfig, run_dir: Path, run_id: str) -> StageResult:
    with _timed("initialize-pipeline") as result:
        run_dir.mkdir(parents=True, exist_ok=True)
        resolved = run_dir / "config.resolved.json"
        write_json(
            resolved,
            {
                "config": config.model_dump(mode="json"),
                "secrets": Secrets().masked(),
                "config_hash": config.fingerprint(),
                "code_version": code_version(),
                "run_id": run_id,
            },
        )
        result.outputs = {"config": str(resolved)}
        result.counts = {"monitoring": config.monitoring.enable_monitoring}
    return result


# 2 ---------------------------------------------------------------------------------------------------------
def load_and_deduplicate_data(config: PipelineConfig, run_dir: Path) -> StageResult:
    with _timed("load-and-deduplicate-data") as result:
        ingested = load_documents(config.data)
        deduped = deduplicate(ingested.documents, config.dedup)
        files = {
            "documents": run_dir / "documents.jsonl",
            "rejects": run_dir / "rejects.jsonl",
            "clusters": run_dir / "duplicate_clusters.jsonl",
            "examples": run_dir / "cluster_examples.json",
        }
        write_jsonl(files["documents"], deduped.kept)
        write_jsonl(files["rejects"], ingested.rejects)
        write_jsonl(files["clusters"], deduped.clusters)
        # The report shows a few clusters with their texts; removed members exist nowhere else after this stage.
        texts = {d.id: d.text for d in ingested.documents}
        examples = [
            {**c.model_dump(), "texts": {m: texts.get(m, "")[:300] for m in c.members[:3]}}
            for c in deduped.clusters[:EXAMPLE_CLUSTERS]
        ]
        write_json(files["examples"], examples)
        result.outputs = {k: str(v) for k, v in files.items()}
        result.counts = {
            **ingested.counts(),
            **{f"dedup.{k}": v for k, v in deduped.counts(len(ingested.documents)).items()},
        }
    return result


# 3 ---------------------------------------------------------------------------------------------------------
def generate_qa_pairs(config: PipelineConfig, documents_path: Path, run_dir: Path) -> StageResult:
    with _timed("generate-qa-pairs") as result:
        documents = read_jsonl(documents_path, Document)
        key = Secrets().openai_api_key
        qa = generate_qa(
            documents,
            config.qa,
            checkpoint_dir=config.output_path / ".qa-cache",
            api_key=key.get_secret_value() if key else None,
            domain=config.domain,
        )
        files = {
            "qa_pairs": run_dir / "qa_pairs.jsonl",
            "qa_pairs_parquet": run_dir / "qa_pairs.parquet",
            "qa_rejects": run_dir / "qa_rejects.jsonl",
            "qa_accounting": run_dir / "qa_accounting.json",
        }
        write_jsonl(files["qa_pairs"], qa.pairs)
        write_parquet(files["qa_pairs_parquet"], qa.pairs)
        write_jsonl(files["qa_rejects"], qa.rejects)
        write_json(files["qa_accounting"], qa.accounting())
        result.outputs = {k: str(v) for k, v in files.items()}
        result.counts = {
            "backend": qa.backend,
            **qa.counts(len(documents)),
            "tokens.prompt": qa.usage.prompt_tokens,
            "tokens.completion": qa.usage.completion_tokens,
            "tokens_sent.prompt": qa.usage_sent.prompt_tokens,
            "tokens_sent.completion": qa.usage_sent.completion_tokens,
            "cost_usd": qa.cost_usd,
            "cost_sent_usd": qa.cost_sent_usd,
        }
    return result


# 4 ---------------------------------------------------------------------------------------------------------
def setup_experiment_tracking(
    config: PipelineConfig, run_dir: Path, run_id: str, group: str, upstream: dict[str, dict[str, Any]], qa_path: Path
) -> StageResult:
    """Open the W&B run for this pipeline run and log what exists so far; finalize logs the rest."""
    with _timed("setup-experiment-tracking") as result:
        mode = "disabled" if not config.monitoring.enable_monitoring else config.tracking.mode
        tracker = start_tracker(
            mode=mode,
            project=config.tracking.wandb_project,
            directory=run_dir,
            name=f"{config.name}-{run_id}",
            group=group,
            config=config.model_dump(mode="json"),
            entity=Secrets().wandb_entity,
            init_timeout_s=config.tracking.init_timeout_s,
        )
        for stage, counts in upstream.items():
            tracker.log({f"{stage}/{k}": v for k, v in counts.items()})
        pairs = read_jsonl(qa_path, QAPair)[:50]
        tracker.log_table(
            "qa_sample",
            ["id", "question", "answer", "document_id"],
            [[p.id, p.question, p.answer, p.document_id] for p in pairs],
        )
        info_path = run_dir / "tracking.json"
        write_json(info_path, tracker.info())
        result.outputs = {"tracking": str(info_path)}
        result.counts = {"mode": tracker.mode}
    return result


# 5 ---------------------------------------------------------------------------------------------------------
def generate_benchmark(config: PipelineConfig, qa_path: Path, documents_path: Path, run_dir: Path) -> StageResult:
    with _timed("generate-benchmark") as result:
        built = build_benchmark(
            read_jsonl(qa_path, QAPair), read_jsonl(documents_path, Document), config.benchmark, config.domain
        )
        jsonl, parquet, card = run_dir / "benchmark.jsonl", run_dir / "benchmark.parquet", run_dir / "benchmark_card.md"
        train = run_dir / "train_pairs.jsonl"
        write_jsonl(jsonl, built.items)
        write_parquet(parquet, built.items)
        write_jsonl(train, built.train_pairs)
        card.write_text(built.card, encoding="utf-8")
        result.outputs = {
            "benchmark": str(jsonl),
            "benchmark_parquet": str(parquet),
            "benchmark_card": str(card),
            "train_pairs": str(train),
        }
        result.counts = {"version": BENCHMARK_VERSION, **built.counts()}
    return result


# 6 ---------------------------------------------------------------------------------------------------------
def evaluate_models(config: PipelineConfig, benchmark_path: Path, run_dir: Path) -> StageResult:
    with _timed("evaluate-models") as result:
        evaluated = evaluate_candidates(read_jsonl(benchmark_path, BenchmarkItem), config.evaluation)
        predictions, summary = run_dir / "predictions.jsonl", run_dir / "evaluation.json"
        write_jsonl(predictions, evaluated.predictions)
        write_json(summary, evaluated.summary)
        result.outputs = {"predictions": str(predictions), "evaluation": str(summary)}
        result.counts = evaluated.counts()
    return result


# 7 ---------------------------------------------------------------------------------------------------------
def finalize_pipeline(
    config: PipelineConfig, run_dir: Path, manifest: dict[str, Any], results: dict[str, StageResult]
) -> StageResult:
    with _timed("finalize-pipeline") as result:
        started = time.perf_counter()
        evaluation = json.loads(results["evaluate-models"].path("evaluation").read_text())
        examples = json.loads(results["load-and-deduplicate-data"].path("examples").read_text())
        tracking = json.loads(results["setup-experiment-tracking"].path("tracking").read_text())
        qa = json.loads(results["generate-qa-pairs"].path("qa_accounting").read_text())
        comparison_path = run_dir / "comparison.json"
        comparison = compare_runs(evaluation, run_dir)
        write_json(comparison_path, comparison)
        summary_path, report_path = run_dir / "summary.json", run_dir / "report.md"
        # This stage reports on itself too: it is complete once the files below are written.
        own = {
            "status": "completed",
            "duration_s": round(time.perf_counter() - started, 3),
            "cached": False,
            "counts": {"report": "report.md", "summary": "summary.json"},
        }
        stages = {**manifest.get("stages", {}), "finalize-pipeline": own}
        charts = {**comparison["charts"], **pipeline_charts({**manifest, "stages": stages}, evaluation, run_dir)}
        files = {p.name for p in run_dir.iterdir() if p.is_file()}  # the charts are written by now
        files |= {"summary.json", "report.md", "report.html", "manifest.json"}
        manifest = {**manifest, "files": sorted(files), "stages": stages}
        summary = build_summary(manifest, evaluation, qa, comparison)
        write_json(summary_path, summary)
        markdown = render_report(manifest, evaluation, examples, tracking, qa, comparison, charts)
        report_path.write_text(markdown, encoding="utf-8")
        html_path = run_dir / "report.html"
        with atomic_open(html_path) as handle:
            handle.write(render_html(markdown, run_dir, f"{manifest['pipeline']}: run {manifest['run_id']}"))
        tracker = active_tracker()
        if tracker is not None:
            _track_run(tracker, config, manifest, summary, results, report_path, html_path)
            tracker.finish()
        result.outputs = {
            "summary": str(summary_path),
            "report": str(report_path),
            "report_html": str(html_path),
            "comparison": str(comparison_path),
            **{f"chart_{k}": str(run_dir / v) for k, v in charts.items()},
        }
        result.counts = {
            "stages": len(manifest["stages"]),
            "regressions": len(comparison["regressions"]),
            "previous_run": comparison["previous_run"] or "none",
        }
    return result


TRACKED_ROWS = 2000  # rows per W&B table: enough to browse, small enough to upload


def _track_run(
    tracker: Any,
    config: PipelineConfig,
    manifest: dict[str, Any],
    summary: dict[str, Any],
    results: dict[str, StageResult],
    report_path: Path,
    html_path: Path,
) -> None:
    """Everything a W&B run should show the morning after: per-stage metrics, evaluation scores, tables of the
    benchmark and the per-sample predictions, the datasets as versioned artifacts, and the report."""
    for stage, entry in manifest.get("stages", {}).items():
        numbers = {k: v for k, v in entry.get("counts", {}).items() if isinstance(v, int | float)}
        tracker.log(
            {
                f"stage/{stage}/duration_s": entry.get("duration_s") or 0.0,
                **{f"stage/{stage}/{k}": v for k, v in numbers.items()},
                **{f"resources/{stage}/{k}": v for k, v in (entry.get("resources") or {}).items() if v is not None},
            }
        )
    for candidate, scores in summary["evaluation"].items():
        tracker.log({f"eval/{candidate}/{k}": v for k, v in scores.items() if isinstance(v, float)})
    bench = read_jsonl(results["generate-benchmark"].path("benchmark"), BenchmarkItem)[:TRACKED_ROWS]
    tracker.log_table(
        "benchmark",
        ["id", "category", "difficulty", "adversarial", "question", "answer"],
        [[i.id, i.category, i.difficulty, i.adversarial or "", i.question, i.answer] for i in bench],
    )
    predictions = read_jsonl(results["evaluate-models"].path("predictions"), Prediction)[:TRACKED_ROWS]
    tracker.log_table(
        "predictions",
        ["item_id", "candidate", "prediction", "reference", "exact_match", "rougeL"],
        [
            [p.item_id, p.candidate, p.prediction, p.reference, p.scores.get("exact_match"), p.scores.get("rougeL")]
            for p in predictions
        ],
    )
    qa, benchmark, evaluation = (results[s] for s in ("generate-qa-pairs", "generate-benchmark", "evaluate-models"))
    tracker.log_artifact(
        f"{config.name}-qa-pairs", "dataset", [qa.path("qa_pairs"), benchmark.path("train_pairs")], qa.counts
    )
    tracker.log_artifact(
        f"{config.name}-benchmark",
        "dataset",
        [benchmark.path(k) for k in ("benchmark", "benchmark_parquet", "benchmark_card")],
        benchmark.counts,
    )
    tracker.log_artifact(
        f"{config.name}-evaluation",
        "evaluation",
        [evaluation.path("evaluation"), evaluation.path("predictions")],
        {k: v for k, v in evaluation.counts.items() if isinstance(v, int | float)},
    )
    tracker.summary({"report": str(report_path), "report_html": str(html_path)})
    tracker.log_html("report", html_path)
