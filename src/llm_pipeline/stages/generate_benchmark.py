"""Stage 5, generate-benchmark: a domain benchmark drawn from the QA pairs (benchmark.py), and the pairs left for
fine-tuning."""

from __future__ import annotations

from typing import Any

from llm_pipeline.benchmark import BENCHMARK_VERSION, build_benchmark
from llm_pipeline.io import read_jsonl, write_jsonl, write_parquet, write_text
from llm_pipeline.records import Document, QAPair
from llm_pipeline.stages.contract import StageContext


def generate_benchmark(ctx: StageContext) -> dict[str, Any]:
    """Reads: `qa_pairs`, `documents`. Writes: `benchmark` (JSONL and `benchmark_parquet`), `benchmark_card`,
    `train_pairs` (the QA pairs not contaminating the benchmark). Config: `benchmark`, `domain`."""
    built = build_benchmark(
        read_jsonl(ctx.input("qa_pairs"), QAPair),
        read_jsonl(ctx.input("documents"), Document),
        ctx.config.benchmark,
        ctx.config.domain,
    )
    write_jsonl(ctx.output("benchmark"), built.items)
    write_parquet(ctx.output("benchmark_parquet"), built.items)
    write_jsonl(ctx.output("train_pairs"), built.train_pairs)
    write_text(ctx.output("benchmark_card"), built.card)
    return {"version": BENCHMARK_VERSION, **built.counts()}
