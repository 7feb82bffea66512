"""Evaluation candidates on Ray actors: a model-loading candidate (`hf`) answers the benchmark data-parallel, on
one actor per GPU of the cluster, each with the model loaded once and a contiguous shard of the questions.

The actors exist only where they help: a cluster with GPUs (one actor per GPU, `num_gpus=1` each), or where
`execution.candidate_actors` asks for a number (on a CPU-only cluster, actors of one CPU: how the tests run
this here). Otherwise, and for a candidate split over the GPUs of one host (`device_map`: it needs them all in
one process), the endpoint and the baselines, the candidate answers in the stage's process as locally. Answers
are the model's on each prompt: a shard is batched as the local engine batches the whole (greedy decoding, left
padding, masked), so they are the local answers. An actor that dies is restarted (its model loaded again) and
its shard retried (`execution.task_retries`).
"""

from __future__ import annotations

import math
from typing import Any

import ray

from llm_pipeline.config import CandidateConfig, ExecutionConfig
from llm_pipeline.engine.ray_session import fetch, ray_session
from llm_pipeline.logging import get_logger

log = get_logger("evaluation")

ACTOR_KINDS = ("hf",)  # candidates that load a model here (endpoints and baselines gain nothing from actors)


@ray.remote
class CandidateActor:
    def __init__(self, config: CandidateConfig, threads: int):
        import torch

        from llm_pipeline.evaluation.candidates import build_candidate

        torch.set_num_threads(threads)  # its share of the node, not every core of it
        self.candidate = build_candidate(config)

    def answer(self, questions: list[str], contexts: list[str]) -> list[str]:
        return self.candidate.answer(questions, contexts)

    def record(self) -> dict[str, Any]:
        from llm_pipeline.evaluation.workflow import generation_record

        if hasattr(self.candidate, "close"):
            self.candidate.close()
        return generation_record(self.candidate)


def actors_for(config: CandidateConfig, execution: ExecutionConfig, gpus: int) -> int:
    """How many actors answer for this candidate on a cluster with `gpus` GPUs (0: in the stage's process)."""
    if config.kind not in ACTOR_KINDS or config.device_map is not None:
        return 0
    return execution.candidate_actors if execution.candidate_actors is not None else gpus


def answer_on_ray(
    config: CandidateConfig, questions: list[str], contexts: list[str], execution: ExecutionConfig
) -> tuple[list[str], dict[str, Any]] | None:
    """(answers in order, the generation record), or None where the candidate is better answered in the stage's
    process (module docstring)."""
    with ray_session(execution) as address:
        gpus = int(ray.cluster_resources().get("GPU", 0))
        count = min(actors_for(config, execution, gpus), len(questions))
        if count == 0:
            return None
        resources = {"num_gpus": 1} if gpus else {"num_cpus": 1}
        retries = execution.task_retries
        actors = [
            CandidateActor.options(max_restarts=retries, max_task_retries=retries, **resources).remote(config, 1)
            for _ in range(count)
        ]
        size = math.ceil(len(questions) / count)
        try:  # the actors (and the GPUs they hold) released on an external cluster even when a shard fails
            refs = [
                actor.answer.remote(questions[k * size : (k + 1) * size], contexts[k * size : (k + 1) * size])
                for k, actor in enumerate(actors)
            ]
            answers = [answer for shard in fetch(refs, address) for answer in shard]
            records = fetch([actor.record.remote() for actor in actors], address)
        finally:
            for actor in actors:
                ray.kill(actor)
    log.info("candidate_on_ray", candidate=config.name, actors=count, gpus_per_actor=1 if gpus else 0)
    return answers, merge_records(records, count)


def merge_records(records: list[dict[str, Any]], actors: int) -> dict[str, Any]:
    """One generation record for the candidate: the settings (the same on every actor), tokens and out-of-memory
    backoffs summed, throughput summed (the actors ran at once), the smallest batch size any actor ended with."""
    if not records or "generation" not in records[0]:
        return records[0] if records else {}
    merged = {**records[0]["generation"], "actors": actors}
    generations = [r["generation"] for r in records]
    for key in ("new_tokens", "oom_backoffs"):
        if key in merged:
            merged[key] = sum(g.get(key, 0) for g in generations)
    if "tokens_per_s" in merged:
        merged["tokens_per_s"] = round(sum(g.get("tokens_per_s", 0.0) for g in generations), 1)
    if "batch_size_used" in merged:
        merged["batch_size_used"] = min(g.get("batch_size_used", 0) for g in generations)
    return {"generation": merged}


def ray_answerer(execution: ExecutionConfig, log_level: str, structured: bool) -> Any:
    """An answerer for `evaluate_candidates`: each candidate's answers from actors on Ray, through a driver
    process of its own (engine/driver.py); None back means: answer it here."""
    from llm_pipeline.engine.driver import in_driver

    def answerer(
        config: CandidateConfig, questions: list[str], contexts: list[str]
    ) -> tuple[list[str], dict[str, Any]] | None:
        if config.kind not in ACTOR_KINDS or config.device_map is not None:
            return None  # no driver started for what stays here
        target = "llm_pipeline.engine.ray_candidates:answer_on_ray"
        return in_driver(
            execution, target, config, questions, contexts, execution, log_level=log_level, structured=structured
        )

    return answerer
