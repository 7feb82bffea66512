"""Stage 1, initialize-pipeline: the run folder and the resolved configuration it runs on."""

from __future__ import annotations

from typing import Any

from llm_pipeline.config import Secrets
from llm_pipeline.io import write_json
from llm_pipeline.logging import get_logger
from llm_pipeline.stages.contract import StageContext
from llm_pipeline.stages.result import code_version

log = get_logger("initialize")


def initialize_pipeline(ctx: StageContext) -> dict[str, Any]:
    """Reads: nothing. Writes: `config` (config.resolved.json: the whole resolved config, secrets masked, its hash,
    the code version, the run id, and the settings likely not meant as written: `warnings`, also logged).
    Config: all of it, as resolved."""
    warnings = ctx.config.dedup.warnings()
    for warning in warnings:
        log.warning("config_warning", warning=warning)
    write_json(
        ctx.output("config"),
        {
            "config": ctx.config.model_dump(mode="json"),
            "secrets": Secrets().masked(),
            "config_hash": ctx.config.fingerprint(),
            "code_version": code_version(),
            "run_id": ctx.run_id,
            "warnings": warnings,
        },
    )
    return {"monitoring": ctx.config.monitoring.enable_monitoring}
