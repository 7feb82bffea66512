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
from typing import Any

from llm_pipeline.config import QAConfig
from llm_pipeline.errors import ResourceExhaustedError
from llm_pipeline.logging import get_logger
from llm_pipeline.models import load_causal_lm, render_prompt
from llm_pipeline.qa.backends import Completion, Job
from llm_pipeline.qa.checkpoint import Usage
from llm_pipeline.qa.policy import RequestPolicy

log = get_logger("qa.local")


class LocalBackend:
    name = "local"

    def __init__(self, config: QAConfig):
        assert config.model_name  # the config validator insists
        self.config = config
        self.model_name = config.model_name
        self.model = config.model_name
        policy = RequestPolicy(config.retry, "load_model", model=self.model_name)
        self.lm, self.tokenizer, self.device = policy.call(
            lambda: load_causal_lm(self.model_name, config.device, config.dtype)
        )
        self.batch_size = config.batch_size
        log.info("local_model_loaded", model=self.model_name, device=self.device, batch_size=self.batch_size)

    async def aclose(self) -> None:
        del self.lm
        try:
            import torch

            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        except ImportError:  # pragma: no cover
            pass

    def _generate(self, prompts: list[str]) -> list[Completion]:
        import torch

        out: list[Completion] = []
        for start in range(0, len(prompts), self.batch_size):
            batch = prompts[start : start + self.batch_size]
            started = time.perf_counter()
            encoded = self.tokenizer(batch, return_tensors="pt", padding=True, add_special_tokens=False).to(self.device)
            settings: dict[str, Any] = {
                "max_new_tokens": self.config.max_tokens,
                "pad_token_id": self.tokenizer.pad_token_id,
            }
            if self.config.temperature > 0:
                settings.update(do_sample=True, temperature=self.config.temperature)
                if self.config.seed is not None:
                    torch.manual_seed(self.config.seed)
            else:
                settings["do_sample"] = False
            try:
                with torch.inference_mode():
                    generated = self.lm.generate(**encoded, **settings)
            except torch.OutOfMemoryError as exc:
                self.batch_size = max(1, self.batch_size // 2)
                if self.device.startswith("cuda"):
                    torch.cuda.empty_cache()
                raise ResourceExhaustedError(f"out of memory at batch {len(batch)}; now {self.batch_size}") from exc
            latency = (time.perf_counter() - started) / len(batch)
            new_tokens = generated[:, encoded["input_ids"].shape[1] :]
            eos = self.tokenizer.eos_token_id
            for row, mask in zip(new_tokens, encoded["attention_mask"], strict=True):
                ids = row.tolist()
                ended = eos is not None and eos in ids
                if ended:
                    ids = ids[: ids.index(eos)]
                ids = [t for t in ids if t != self.tokenizer.pad_token_id]
                out.append(
                    Completion(
                        text=self.tokenizer.decode(ids, skip_special_tokens=True),
                        finish_reason="stop" if ended or len(row) < self.config.max_tokens else "length",
                        usage=Usage(prompt_tokens=int(mask.sum()), completion_tokens=len(ids)),
                        latency_s=latency,
                    )
                )
        return out

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
