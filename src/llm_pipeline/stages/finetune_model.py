"""Stage 6, finetune-model (off by default): a LoRA adapter trained on the run's training pairs (finetune/)."""

from __future__ import annotations

from typing import Any

from llm_pipeline.benchmark import BENCHMARK_VERSION
from llm_pipeline.finetune import finetune, model_card
from llm_pipeline.io import file_fingerprint, read_jsonl, write_json, write_text
from llm_pipeline.logging import get_logger
from llm_pipeline.records import Document, QAPair
from llm_pipeline.stages.contract import StageContext
from llm_pipeline.tracking import Tracker

log = get_logger("finetune")

OFF_NOTE = "Fine-tuning is off (`finetune.enabled: false`): this run trained no adapter.\n"


def finetune_model(ctx: StageContext) -> dict[str, Any]:
    """Reads: `train_pairs`, `documents` (each pair's context), `qa_pairs`, `benchmark` and `tracking` (lineage,
    curves).
    Writes: `finetune` (finetune.json: what was trained, on what, how, the losses) and `adapter` (a folder: the
    LoRA adapter, the tokenizer, the model card as README.md). Config: `finetune`."""
    config = ctx.config.finetune
    adapter = ctx.output("adapter")
    adapter.mkdir(parents=True, exist_ok=True)
    if not config.enabled:
        write_text(adapter / "README.md", OFF_NOTE)
        write_json(ctx.output("finetune"), {"enabled": False})
        return {"enabled": 0}
    data = file_fingerprint(ctx.input("train_pairs"), ctx.input("documents"))
    root = config.checkpoint_dir or ctx.config.output_path / ".finetune"
    result = finetune(
        config,
        read_jsonl(ctx.input("train_pairs"), QAPair),
        read_jsonl(ctx.input("documents"), Document),
        adapter,
        root,
        data,
    )
    summary = {
        "enabled": True,
        "base_model": result.base_model,
        "key": result.key,
        "steps": result.steps,
        "resumed_from_step": result.resumed_from_step,
        "seconds": result.seconds,
        "train_seconds": result.train_seconds,
        "tokens_seen": result.tokens_seen,
        "data": result.data,
        "losses": result.losses(),
        "hyperparameters": result.hyperparameters,
        "history": result.history,
        "merged": "adapter/merged" if result.merged_dir else None,  # relative: a cached run has it too
        "checkpoints": str(root / result.key),  # kept across runs: a crashed training resumes from here
        "lineage": {
            "run_id": ctx.run_id,
            "pipeline": ctx.config.name,
            "train_pairs_fingerprint": file_fingerprint(ctx.input("train_pairs")),
            "qa_pairs_fingerprint": ctx.fingerprint_of("qa_pairs"),
            "benchmark_fingerprint": file_fingerprint(ctx.input("benchmark")),
            "benchmark_version": BENCHMARK_VERSION,
        },
    }
    write_text(adapter / "README.md", model_card(summary))
    write_json(ctx.output("finetune"), summary)
    _track(ctx, summary)
    return {
        "enabled": 1,
        "steps": result.steps,
        "resumed_from_step": result.resumed_from_step,
        "train_examples": result.data["train_examples"],
        **{k: v for k, v in summary["losses"].items() if v is not None},
    }


def _track(ctx: StageContext, summary: dict[str, Any]) -> None:
    """The training curves in the run's W&B run (loss and eval loss by step)."""
    import json

    tracker = Tracker.resume(json.loads(ctx.input("tracking").read_text()))
    if tracker is None:
        return
    try:
        for entry in summary["history"]:
            values = {f"finetune/{k}": v for k, v in entry.items() if k in ("loss", "eval_loss", "learning_rate")}
            if values:
                tracker.log({"finetune/step": entry.get("step", 0), **values})
        tracker.summary({f"finetune/{k}": v for k, v in summary["losses"].items() if v is not None})
    finally:
        tracker.finish()
