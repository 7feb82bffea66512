"""The `local` QA backend: a transformers causal LM on this machine, batched, on the GPU when there is one.

Prompts are sorted by length and generated in batches with left padding (decoder-only models continue from the
right edge); the tokenizer's chat template is used where it has one. Loading follows the policy table (two
immediate tries); running out of memory halves the batch and tries once more after a long delay.
Generation runs in a worker thread so the event loop keeps writing the journal as batches finish.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

from llm_pipeline.config import QAConfig
from llm_pipeline.errors import ResourceExhaustedError
from llm_pipeline.logging import get_logger
from llm_pipeline.models.generation import BatchedGenerator, GenerationSettings
from llm_pipeline.models.loading import load_configured, render_prompt
from llm_pipeline.qa.backends import QA_BACKENDS, Completion, Job
from llm_pipeline.qa.checkpoint import Usage
from llm_pipeline.qa.policy import RequestPolicy

log = get_logger("qa.local")


@QA_BACKENDS.register("local")
class LocalBackend:
    name = "local"

    def __init__(self, config: QAConfig, api_key: str | None = None):  # no key: the model is local
        assert config.model_name  # the config validator insists
        self.config = config
        self.model_name = config.model_name
        self.model = config.model_name
        policy = RequestPolicy(config.retry, "load_model", model=self.model_name)
        self.lm, self.tokenizer, self.device = policy.call(lambda: load_configured(self.model_name, config))
        self.generator = BatchedGenerator(
            self.lm,
            self.tokenizer,
            self.device,
            GenerationSettings(
                max_new_tokens=config.max_tokens,
                batch_size=config.batch_size,
                seed=config.seed,
                temperature=config.temperature,
                max_oom_backoffs=0,
            ),
        )
        log.info("local_model_loaded", model=self.model_name, device=self.device, batch_size=self.batch_size)

    async def aclose(self) -> None:
        del self.generator, self.lm  # the generator holds the model too
        try:
            import torch

            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        except ImportError:  # pragma: no cover
            pass

    @property
    def batch_size(self) -> int:
        return int(self.generator.batch_size)

    def _generate(self, prompts: list[str]) -> list[Completion]:
        """One pass of the evaluation stage's batched generator; out of memory halves its batch and goes up to
        the policy (one retry after a long delay) instead of backing off again on the spot."""
        import torch

        encoded = [self.tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
        started = time.perf_counter()
        try:
            rows = self.generator.generate_ids(encoded)
        except torch.OutOfMemoryError as exc:
            self.generator.batch_size = max(1, self.generator.batch_size // 2)
            if self.device.startswith("cuda"):
                torch.cuda.empty_cache()
            raise ResourceExhaustedError(f"out of memory; batch now {self.generator.batch_size}") from exc
        latency = (time.perf_counter() - started) / max(1, len(prompts))
        return [
            Completion(
                text=self.tokenizer.decode(row, skip_special_tokens=True),
                # EOS is cut from the row, so a row of the full length ran into the limit
                finish_reason="length" if len(row) >= self.config.max_tokens else "stop",
                usage=Usage(prompt_tokens=len(ids), completion_tokens=len(row)),
                latency_s=latency,
            )
            for ids, row in zip(encoded, rows, strict=True)
        ]

    async def complete_many(self, jobs: list[Job]) -> AsyncIterator[tuple[Job, Completion | BaseException]]:
        prompts = {id(job): render_prompt(self.tokenizer, job.messages) for job in jobs}
        # Similar lengths together: less padding, and every batch's shape is close to the next one's.
        ordered = sorted(jobs, key=lambda j: len(prompts[id(j)]))
        step = max(self.batch_size, 1) * 4  # a few batches per hand-back, so the journal keeps up
        for start in range(0, len(ordered), step):
            group = ordered[start : start + step]
            policy = RequestPolicy(self.config.retry, "local_generate", batch=len(group))
            # Out of memory even at the smaller batch propagates: the stage fails, and says why.
            completions = await asyncio.to_thread(
                policy.call, lambda group=group: self._generate([prompts[id(j)] for j in group])
            )
            for job, completion in zip(group, completions, strict=True):
                completion.attempts = policy.attempts
                yield job, completion
