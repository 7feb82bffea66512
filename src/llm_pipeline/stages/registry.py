"""The pipeline's stages, declared once, in the order they run.

Adding a stage is one declaration here and one function in a module of its own (the docstring template: what it
reads, what it writes, which config keys). The flow iterates `PIPELINE`; task names, cache keys, manifest
entries, artifacts, progress and the hand-offs between stages all come from these declarations.
"""

from __future__ import annotations

from typing import Any

from llm_pipeline.config import PipelineConfig, Secrets
from llm_pipeline.io import file_fingerprint
from llm_pipeline.qa.backends import resolve_backend
from llm_pipeline.stages.contract import Stage
from llm_pipeline.stages.evaluate_models import evaluate_models
from llm_pipeline.stages.experiment_tracking import setup_experiment_tracking
from llm_pipeline.stages.finalize import finalize_pipeline
from llm_pipeline.stages.finetune_model import finetune_model
from llm_pipeline.stages.generate_benchmark import generate_benchmark
from llm_pipeline.stages.generate_qa_pairs import generate_qa_pairs
from llm_pipeline.stages.initialize import initialize_pipeline
from llm_pipeline.stages.load_and_deduplicate import load_and_deduplicate_data


def _source_files(config: PipelineConfig) -> dict[str, Any]:
    return {"source": file_fingerprint(config.data.path)}


def _qa_backend(config: PipelineConfig) -> dict[str, Any]:
    # `auto` decides by whether a key is set: a run with a key must not reuse an offline run's pairs
    key = Secrets().openai_api_key
    return {"backend": resolve_backend(config.qa, key.get_secret_value() if key else None)}


PIPELINE: tuple[Stage, ...] = (
    Stage(
        name="initialize-pipeline",
        run=initialize_pipeline,
        outputs={"config": "config.resolved.json"},
        retry="never",
    ),
    Stage(
        name="load-and-deduplicate-data",
        run=load_and_deduplicate_data,
        reads=("data", "dedup"),
        outputs={
            "documents": "documents.jsonl",
            "rejects": "rejects.jsonl",
            "clusters": "duplicate_clusters.jsonl",
            "examples": "cluster_examples.json",
        },
        cached=True,
        key=_source_files,
    ),
    Stage(
        name="generate-qa-pairs",
        run=generate_qa_pairs,
        reads=("qa", "domain"),
        inputs={"documents": "load-and-deduplicate-data.documents"},
        outputs={
            "qa_pairs": "qa_pairs.jsonl",
            "qa_pairs_parquet": "qa_pairs.parquet",
            "qa_rejects": "qa_rejects.jsonl",
            "qa_accounting": "qa_accounting.json",
        },
        cached=True,
        progress=True,
        key=_qa_backend,
    ),
    Stage(
        name="setup-experiment-tracking",
        run=setup_experiment_tracking,
        reads=("tracking", "monitoring"),
        inputs={"qa_pairs": "generate-qa-pairs.qa_pairs"},
        outputs={"tracking": "tracking.json"},
        retry="never",  # W&B trouble degrades to offline or disabled; it never fails the stage
    ),
    Stage(
        name="generate-benchmark",
        run=generate_benchmark,
        reads=("benchmark", "domain"),
        inputs={"qa_pairs": "generate-qa-pairs.qa_pairs", "documents": "load-and-deduplicate-data.documents"},
        outputs={
            "benchmark": "benchmark.jsonl",
            "benchmark_parquet": "benchmark.parquet",
            "benchmark_card": "benchmark_card.md",
            "train_pairs": "train_pairs.jsonl",
        },
        cached=True,
    ),
    Stage(
        name="finetune-model",
        run=finetune_model,
        reads=("finetune",),
        inputs={
            "train_pairs": "generate-benchmark.train_pairs",
            "benchmark": "generate-benchmark.benchmark",
            "qa_pairs": "generate-qa-pairs.qa_pairs",
            "documents": "load-and-deduplicate-data.documents",
            "tracking": "setup-experiment-tracking.tracking",
        },
        outputs={"finetune": "finetune.json", "adapter": "adapter"},
        cached=True,
        keyless=("tracking",),  # a new W&B run each time must not retrain the adapter
        uses_pool=lambda config: config.finetune.enabled,
        pool="gpu",
        progress=True,
    ),
    Stage(
        name="evaluate-models",
        run=evaluate_models,
        reads=("evaluation", "finetune"),
        inputs={
            "benchmark": "generate-benchmark.benchmark",
            "finetune": "finetune-model.finetune",
            "adapter": "finetune-model.adapter",
        },
        outputs={
            "predictions": "predictions.jsonl",
            "evaluation": "evaluation.json",
            "judge": "judge.json",
            "judgements": "judgements.jsonl",
        },
        cached=True,
        pool="gpu",
        progress=True,
    ),
    Stage(
        name="finalize-pipeline",
        run=finalize_pipeline,
        inputs={
            "evaluation": "evaluate-models.evaluation",
            "predictions": "evaluate-models.predictions",
            "judge": "evaluate-models.judge",
            "examples": "load-and-deduplicate-data.examples",
            "tracking": "setup-experiment-tracking.tracking",
            "qa_accounting": "generate-qa-pairs.qa_accounting",
            "qa_pairs": "generate-qa-pairs.qa_pairs",
            "benchmark": "generate-benchmark.benchmark",
            "benchmark_parquet": "generate-benchmark.benchmark_parquet",
            "benchmark_card": "generate-benchmark.benchmark_card",
            "train_pairs": "generate-benchmark.train_pairs",
            "finetune": "finetune-model.finetune",
            "adapter": "finetune-model.adapter",
        },
        outputs={
            "summary": "summary.json",
            "report": "report.md",
            "report_html": "report.html",
            "comparison": "comparison.json",
        },
        retry="never",
    ),
)
STAGES: tuple[str, ...] = tuple(stage.name for stage in PIPELINE)


def stage_named(name: str) -> Stage:
    for stage in PIPELINE:
        if stage.name == name:
            return stage
    raise KeyError(f"no stage named {name!r}; the pipeline's stages: {', '.join(STAGES)}")


def check_contracts(pipeline: tuple[Stage, ...] = PIPELINE) -> None:
    """Every input names an earlier stage's declared output; names and output files are unique; config keys
    exist. Raised at import: a broken declaration fails before any run."""
    seen: dict[str, Stage] = {}
    files: dict[str, str] = {}
    for stage in pipeline:
        if stage.name in seen:
            raise ValueError(f"stage {stage.name!r} is declared twice")
        for section in stage.reads:
            if section not in PipelineConfig.model_fields:
                raise ValueError(f"stage {stage.name!r} reads {section!r}, which is not a config key")
        for name in stage.keyless:
            if name not in stage.inputs:
                raise ValueError(f"stage {stage.name!r}: keyless {name!r} is not one of its inputs")
        for name in stage.inputs:
            producer, output = stage.producer(name)
            if producer not in seen or output not in seen[producer].outputs:
                raise ValueError(
                    f"stage {stage.name!r} input {name!r} = {stage.inputs[name]!r}: no earlier stage declares it"
                )
        for output, file in stage.outputs.items():
            if file in files:
                raise ValueError(f"{stage.name}.{output} and {files[file]} both write {file}")
            files[file] = f"{stage.name}.{output}"
        seen[stage.name] = stage


check_contracts()
