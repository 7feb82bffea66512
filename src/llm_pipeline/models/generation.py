"""Batched generation with causal LMs, shared by QA generation's local backend, the evaluation stage's `hf`
candidates and the GPU benchmark (benchmarks/eval_gpu.py).

- Prompts are tokenized once and sorted by length, longest first, so padding is small and an out-of-memory
  error shows up on the first batch rather than the last.
- Left padding (the model continues from the right edge), greedy decoding by default, seed fixed.
- Batch size `auto`: start at `max_batch_size` and halve on CUDA out-of-memory until a batch fits (or, with
  `max_oom_backoffs`, re-raise after that many, for a caller with its own policy); the size that fitted is kept
  for the rest of the run (and reported).
- `compile: true` (CUDA): a static KV cache plus torch.compile of the decode step, so each step replays a CUDA
  graph instead of launching hundreds of kernels; batches are padded to a few fixed shapes so each shape is
  compiled once. This is what issue 6's benchmark measures (benchmarks/eval_gpu.py).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from llm_pipeline.logging import get_logger

log = get_logger("evaluation.generation")


@dataclass
class GenerationSettings:
    max_new_tokens: int = 64
    batch_size: int | None = None  # None = auto
    max_batch_size: int = 64
    seed: int | None = 13
    compile: bool = False
    length_bucket: int = 32  # compiled: prompt widths padded up to a multiple of this (few shapes, few compiles)
    temperature: float = 0.0  # 0 = greedy; above, sampling (QA generation may want some variety)
    max_oom_backoffs: int | None = None  # None: halve until a batch fits; 0: raise at once (the caller decides)

    def recorded(self) -> dict[str, Any]:
        return {
            "decoding": "greedy" if self.temperature == 0 else f"sampling, temperature {self.temperature}",
            "max_new_tokens": self.max_new_tokens,
            "batch_size": self.batch_size or "auto",
            "seed": self.seed,
            "compile": self.compile,
        }


@dataclass
class GenerationStats:
    batches: int = 0
    batch_size: int = 0
    new_tokens: int = 0
    seconds: float = 0.0
    oom_backoffs: int = 0

    @property
    def tokens_per_s(self) -> float:
        return self.new_tokens / self.seconds if self.seconds else 0.0


class BatchedGenerator:
    def __init__(self, model: Any, tokenizer: Any, device: str, settings: GenerationSettings):
        self.model, self.tokenizer, self.device, self.settings = model, tokenizer, device, settings
        self.batch_size = settings.batch_size or settings.max_batch_size
        self.stats = GenerationStats(batch_size=self.batch_size)
        self.compiled = settings.compile and device.startswith("cuda")
        if self.compiled:
            from transformers import CompileConfig

            # transformers compiles the decode step itself when the cache is static and the device is CUDA;
            # "reduce-overhead" captures it as a CUDA graph, replayed once per generated token.
            model.generation_config.cache_implementation = "static"
            model.generation_config.compile_config = CompileConfig(fullgraph=True, mode="reduce-overhead")

    def _bucket(self, length: int) -> int:
        """Prompt lengths padded up to a multiple of `length_bucket` when compiled: few shapes, few compilations."""
        step = self.settings.length_bucket
        return -(-length // step) * step if self.compiled else length

    def generate(self, prompts: list[str]) -> list[str]:
        encoded = [self.tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
        return [self.tokenizer.decode(ids, skip_special_tokens=True).strip() for ids in self.generate_ids(encoded)]

    def generate_ids(self, encoded: list[list[int]]) -> list[list[int]]:
        """New token ids per prompt (EOS and padding removed), in the prompts' order."""
        import torch

        if self.settings.seed is not None:
            torch.manual_seed(self.settings.seed)
        order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]), reverse=True)
        outputs: list[list[int]] = [[] for _ in encoded]
        position = 0
        while position < len(order):
            chunk = order[position : position + self.batch_size]
            try:
                rows, new_tokens, seconds = self._batch([encoded[i] for i in chunk])
            except torch.OutOfMemoryError:
                limit = self.settings.max_oom_backoffs
                if self.batch_size == 1 or (limit is not None and self.stats.oom_backoffs >= limit):
                    raise
                self.batch_size = max(1, self.batch_size // 2)
                self.stats.oom_backoffs += 1
                self.stats.batch_size = self.batch_size
                if self.device.startswith("cuda"):
                    torch.cuda.empty_cache()
                log.warning("generation_oom_backoff", batch_size=self.batch_size)
                continue
            for i, row in zip(chunk, rows, strict=True):
                outputs[i] = row
            self.stats.batches += 1
            self.stats.new_tokens += new_tokens
            self.stats.seconds += seconds
            position += len(chunk)
        return outputs

    def _decoding(self) -> dict[str, Any]:
        if self.settings.temperature > 0:
            return {"do_sample": True, "temperature": self.settings.temperature}
        return {"do_sample": False}

    def _batch(self, ids: list[list[int]]) -> tuple[list[list[int]], int, float]:
        import torch

        pad = self.tokenizer.pad_token_id
        real = len(ids)
        if self.compiled and real < self.batch_size:  # one batch shape: a short last batch is padded with copies
            ids = ids + [ids[0]] * (self.batch_size - real)
        width = self._bucket(max(len(x) for x in ids))
        input_ids = torch.full((len(ids), width), pad, dtype=torch.long)
        mask = torch.zeros((len(ids), width), dtype=torch.long)
        for row, sequence in enumerate(ids):  # left padding
            input_ids[row, width - len(sequence) :] = torch.tensor(sequence)
            mask[row, width - len(sequence) :] = 1
        started = time.perf_counter()
        with torch.inference_mode():
            generated = self.model.generate(
                input_ids=input_ids.to(self.device),
                attention_mask=mask.to(self.device),
                max_new_tokens=self.settings.max_new_tokens,
                pad_token_id=pad,
                **self._decoding(),
            )
        if self.device.startswith("cuda"):
            torch.cuda.synchronize()
        seconds = time.perf_counter() - started
        new = generated[:real, width:]
        eos = self.model.generation_config.eos_token_id
        eos = self.tokenizer.eos_token_id if eos is None else eos
        eos = set(eos) if isinstance(eos, list) else ({eos} if eos is not None else set())
        rows, count = [], 0
        for row in new.tolist():
            ends = [k for k, token in enumerate(row) if token in eos]
            row = row[: ends[0]] if ends else row
            row = [t for t in row if t != pad]
            count += len(row)
            rows.append(row)
        return rows, count, seconds
