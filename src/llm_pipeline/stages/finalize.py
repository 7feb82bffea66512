"""Stage 8, finalize-pipeline: the run's summary, report (markdown and self-contained HTML), charts and the
comparison with the previous run; and the rest of the W&B run, resumed from the tracking stage's file."""

from __future__ import annotations

import json
import time
from typing import Any

from llm_pipeline.charts import pipeline_charts
from llm_pipeline.comparison import compare_runs
from llm_pipeline.evaluation.paired import paired_comparison
from llm_pipeline.finetune.card import model_card
from llm_pipeline.html_report import render_html
from llm_pipeline.io import atomic_open, read_jsonl, write_json, write_text
from llm_pipeline.records import BenchmarkItem, Prediction
from llm_pipeline.report import build_summary, render_report
from llm_pipeline.stages.contract import MANIFEST_FILE, StageContext
from llm_pipeline.tracking import Tracker

TUNED = ("base", "tuned")  # the candidates evaluate-models adds with fine-tuning on
MODEL_CARD = "model_card.md"
TRACKED_ROWS = 2000  # rows per W&B table: enough to browse, small enough to upload


def finalize_pipeline(ctx: StageContext) -> dict[str, Any]:
    """Reads: `evaluation`, `predictions`, `examples`, `tracking`, `qa_accounting`, `qa_pairs`, `benchmark` (and its
    parquet and card), `train_pairs`, and the manifest. Writes: `summary` (summary.json), `report` (report.md),
    `report_html`, `comparison` (against the previous run in the same folder), and the charts as extra outputs.
    Config: none of its own; `name` for the W&B artifacts' names."""
    started = time.perf_counter()
    evaluation = json.loads(ctx.input("evaluation").read_text())
    examples = json.loads(ctx.input("examples").read_text())
    tracking = json.loads(ctx.input("tracking").read_text())
    qa = json.loads(ctx.input("qa_accounting").read_text())
    tuned = _tuned_vs_base(ctx)
    judged = json.loads(ctx.input("judge").read_text())
    judged = judged if judged.get("enabled") else None
    comparison = compare_runs(evaluation, ctx.run_dir)
    write_json(ctx.output("comparison"), comparison)
    manifest = ctx.manifest()
    # This stage reports on itself too: it is complete once the files below are written.
    own = {
        "status": "completed",
        "duration_s": round(time.perf_counter() - started, 3),
        "cached": False,
        "counts": {"report": "report.md", "summary": "summary.json"},
    }
    stages = {**manifest.get("stages", {}), ctx.stage.name: own}
    charts = {**comparison["charts"], **pipeline_charts({**manifest, "stages": stages}, evaluation, ctx.run_dir)}
    files = {p.name for p in ctx.run_dir.iterdir() if p.is_file()}  # the charts are written by now
    files |= {ctx.stage.outputs[name] for name in ("summary", "report", "report_html")} | {MANIFEST_FILE}
    manifest = {**manifest, "files": sorted(files), "stages": stages}
    summary = build_summary(manifest, evaluation, qa, comparison)
    summary |= ({"tuned_vs_base": tuned} if tuned else {}) | ({"judge": judged} if judged else {})
    write_json(ctx.output("summary"), summary)
    markdown = render_report(
        manifest,
        evaluation,
        examples,
        tracking,
        qa,
        comparison,
        charts,
        qa_cached=ctx.was_cached("qa_accounting"),
        tuned_vs_base=tuned,
        judge=judged,
    )
    write_text(ctx.output("report"), markdown)
    with atomic_open(ctx.output("report_html")) as handle:
        handle.write(render_html(markdown, ctx.run_dir, f"{manifest['pipeline']}: run {manifest['run_id']}"))
    tracker = Tracker.resume(tracking)
    if tracker is not None:
        try:
            _track_run(tracker, ctx, manifest, summary)
        finally:
            tracker.finish()
    ctx.extra_outputs.update({f"chart_{k}": str(ctx.run_dir / v) for k, v in charts.items()})
    if tuned:  # the adapter's card, completed with how it did (the adapter folder itself may be a cached run's)
        finetune = json.loads(ctx.input("finetune").read_text())
        write_text(ctx.run_dir / MODEL_CARD, model_card(finetune, tuned))
        ctx.extra_outputs["model_card"] = str(ctx.run_dir / MODEL_CARD)
    return {
        "stages": len(manifest["stages"]),
        "regressions": len(comparison["regressions"]),
        "previous_run": comparison["previous_run"] or "none",
    }


def _tuned_vs_base(ctx: StageContext) -> dict[str, Any] | None:
    """With fine-tuning on: the tuned candidate against its base, item by item (evaluation/paired.py)."""
    if not json.loads(ctx.input("finetune").read_text()).get("enabled"):
        return None
    return paired_comparison(
        read_jsonl(ctx.input("predictions"), Prediction), read_jsonl(ctx.input("benchmark"), BenchmarkItem), *TUNED
    )


def _track_run(tracker: Tracker, ctx: StageContext, manifest: dict[str, Any], summary: dict[str, Any]) -> None:
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
    bench = read_jsonl(ctx.input("benchmark"), BenchmarkItem)[:TRACKED_ROWS]
    tracker.log_table(
        "benchmark",
        ["id", "category", "difficulty", "adversarial", "question", "answer"],
        [[i.id, i.category, i.difficulty, i.adversarial or "", i.question, i.answer] for i in bench],
    )
    predictions = read_jsonl(ctx.input("predictions"), Prediction)[:TRACKED_ROWS]
    tracker.log_table(
        "predictions",
        ["item_id", "candidate", "prediction", "reference", "exact_match", "rougeL"],
        [
            [p.item_id, p.candidate, p.prediction, p.reference, p.scores.get("exact_match"), p.scores.get("rougeL")]
            for p in predictions
        ],
    )
    name = ctx.config.name
    tracker.log_artifact(
        f"{name}-qa-pairs", "dataset", [ctx.input("qa_pairs"), ctx.input("train_pairs")], ctx.counts_of("qa_pairs")
    )
    tracker.log_artifact(
        f"{name}-benchmark",
        "dataset",
        [ctx.input(k) for k in ("benchmark", "benchmark_parquet", "benchmark_card")],
        ctx.counts_of("benchmark"),
    )
    evaluation_counts = ctx.counts_of("evaluation")
    tracker.log_artifact(
        f"{name}-evaluation",
        "evaluation",
        [ctx.input("evaluation"), ctx.input("predictions")],
        {k: v for k, v in evaluation_counts.items() if isinstance(v, int | float)},
    )
    tracker.summary({"report": str(ctx.output("report")), "report_html": str(ctx.output("report_html"))})
    tracker.log_html("report", ctx.output("report_html"))
