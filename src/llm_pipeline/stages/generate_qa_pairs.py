"""Stage 3, generate-qa-pairs: questions and answers from each document (qa/), every request journaled."""

from __future__ import annotations

from typing import Any

from llm_pipeline.config import Secrets
from llm_pipeline.io import read_jsonl, write_json, write_jsonl, write_parquet
from llm_pipeline.qa import generate_qa
from llm_pipeline.qa.generate import require_pairs
from llm_pipeline.records import Document
from llm_pipeline.stages.contract import StageContext


def api_key() -> str | None:
    key = Secrets().openai_api_key
    return key.get_secret_value() if key else None


def generate_qa_pairs(ctx: StageContext) -> dict[str, Any]:
    """Reads: `documents`. Writes: `qa_pairs` (JSONL and `qa_pairs_parquet`), `qa_rejects` (quarantined requests
    and filtered pairs), `qa_accounting` (requests, tokens, cost); fewer pairs than `qa.min_pairs` then fails it.
    Config: `qa`, `domain`; the request journal lives in `qa.checkpoint_dir` (default `<output_path>/.qa-cache`).
    Config `execution`: with `ray`, the documents go to the cluster in shards (engine/ray_qa.py), with the same
    result."""
    documents = read_jsonl(ctx.input("documents"), Document)
    config, cache = ctx.config, ctx.config.output_path / ".qa-cache"
    # run_id: every Prefect retry of this stage adds to the same ledger ("sent by this run")
    if config.execution.engine == "ray":  # by shard on the cluster, from a driver process (engine/ray_qa.py)
        from llm_pipeline.engine.driver import in_driver

        target = "llm_pipeline.engine.ray_qa:generate_on_ray"
        args = (documents, config.qa, cache, api_key(), config.domain, ctx.run_id, config.execution)
        monitoring = config.monitoring
        qa = in_driver(
            config.execution, target, *args, log_level=monitoring.log_level, structured=monitoring.structured_logging
        )
    else:
        qa = generate_qa(
            documents, config.qa, checkpoint_dir=cache, api_key=api_key(), domain=config.domain, run_id=ctx.run_id
        )
    write_jsonl(ctx.output("qa_pairs"), qa.pairs)
    write_parquet(ctx.output("qa_pairs_parquet"), qa.pairs)
    write_jsonl(ctx.output("qa_rejects"), qa.rejects)
    write_json(ctx.output("qa_accounting"), qa.accounting())
    require_pairs(qa, len(documents), config.qa, ctx.output("qa_rejects"))  # after the writes: the rejects can be read
    return {
        "backend": qa.backend,
        **qa.counts(len(documents)),
        "tokens.prompt": qa.usage.prompt_tokens,
        "tokens.completion": qa.usage.completion_tokens,
        "tokens_sent.prompt": qa.usage_sent.prompt_tokens,
        "tokens_sent.completion": qa.usage_sent.completion_tokens,
        "cost_usd": qa.cost_usd,
        "cost_sent_usd": qa.cost_sent_usd,
    }
