"""Stage 4, setup-experiment-tracking: the run's W&B run, opened, given what exists so far, and closed with its
identity written down, so finalize resumes it in whichever process it runs."""

from __future__ import annotations

from typing import Any

from llm_pipeline.config import Secrets
from llm_pipeline.io import read_jsonl, write_json
from llm_pipeline.records import QAPair
from llm_pipeline.stages.contract import StageContext
from llm_pipeline.tracking import Tracker


def setup_experiment_tracking(ctx: StageContext) -> dict[str, Any]:
    """Reads: `qa_pairs`, and the earlier stages' counts from the manifest. Writes: `tracking` (tracking.json: the
    W&B run's id, project, mode and folder, what finalize needs to resume it) and the run under `wandb/`.
    Config: `tracking`, `monitoring.enable_monitoring`."""
    config = ctx.config
    mode = "disabled" if not config.monitoring.enable_monitoring else config.tracking.mode
    tracker = Tracker(
        mode=mode,
        project=config.tracking.wandb_project,
        directory=ctx.run_dir,
        name=f"{config.name}-{ctx.run_id}",
        group=ctx.group,
        config=config.model_dump(mode="json"),
        entity=Secrets().wandb_entity,
        init_timeout_s=config.tracking.init_timeout_s,
    )
    tracker.start()
    try:
        for stage, entry in ctx.manifest()["stages"].items():
            numbers = {k: v for k, v in entry.get("counts", {}).items() if not isinstance(v, bool)}
            tracker.log({f"{stage}/{k}": v for k, v in numbers.items()})
        pairs = read_jsonl(ctx.input("qa_pairs"), QAPair)[:50]
        tracker.log_table(
            "qa_sample",
            ["id", "question", "answer", "document_id"],
            [[p.id, p.question, p.answer, p.document_id] for p in pairs],
        )
        write_json(ctx.output("tracking"), tracker.info())
    finally:
        tracker.finish()  # durable on disk before the stage reports success; finalize resumes it
    return {"mode": tracker.mode}
