"""Evaluation generation speed: new tokens/s for a naive loop, plain batched `generate`, and the project's path.

A random-weight Llama-shaped model (default: hidden 2048, 16 layers, 32 heads, 8 KV heads, vocab 128256, ~1.2B
parameters; built from a config, nothing downloaded) answers `--questions` random prompts of 32-96 tokens with
`--new-tokens` new tokens each (EOS disabled, so every answer is full length). Three ways, in one run, each after
a warm-up at its own batch shape (the first call at a new shape costs seconds, compilation more):

  (a) naive: one `generate` per question (on a sample of `--naive-sample` questions: the rate is what counts);
  (b) plain batched `generate` at `--batch` (default 512), dynamic cache, no compilation;
  (c) the project's evaluation path (llm_pipeline.models.generation.BatchedGenerator): length-sorted
      batches of `--project-batch`, prompt widths bucketed, static KV cache + torch.compile "reduce-overhead"
      (CUDA graphs) on CUDA.

    .venv/bin/python benchmarks/eval_gpu.py                 # on a GPU: the full shape
    .venv/bin/python benchmarks/eval_gpu.py --tiny          # on CPU: a tiny shape, to check the script runs

Prints one JSON line per way and a summary with (c) / (b); `--output` writes them to a file.

`--oom-check GIB` instead caps this process's CUDA memory at GIB (torch.cuda.set_per_process_memory_fraction),
starts the project's generator at `--project-batch` with batch size auto, and reports the real out-of-memory
errors it caught and the batch size it settled on (the halving path, on a real CUDA OOM rather than an injected
one), and whether every prompt got its full answer.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

import torch  # noqa: E402

from llm_pipeline.models.generation import BatchedGenerator, GenerationSettings  # noqa: E402

FULL = {"hidden_size": 2048, "num_hidden_layers": 16, "num_attention_heads": 32, "num_key_value_heads": 8,
        "intermediate_size": 8192, "vocab_size": 128256}  # fmt: skip
TINY = {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
        "intermediate_size": 128, "vocab_size": 1000}  # fmt: skip


class IdsOnly:
    """The few tokenizer attributes the generator reads; prompts here are token ids already."""

    pad_token_id = 0
    eos_token_id = None


def build_model(shape: dict[str, int], device: str, dtype: torch.dtype) -> Any:
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        **shape,
        max_position_embeddings=1024,
        tie_word_embeddings=True,
        pad_token_id=0,
        bos_token_id=None,
        eos_token_id=None,
    )
    torch.manual_seed(0)
    with torch.device(device):
        model = LlamaForCausalLM(config).to(dtype)
    model.eval()
    model.generation_config.eos_token_id = None
    model.generation_config.pad_token_id = 0
    return model


def prompts(count: int, vocab: int, seed: int = 1) -> list[list[int]]:
    generator = torch.Generator().manual_seed(seed)
    lengths = torch.randint(32, 97, (count,), generator=generator).tolist()
    return [torch.randint(1, vocab, (n,), generator=generator).tolist() for n in lengths]


def synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def left_padded(batch: list[list[int]], device: str) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(p) for p in batch)
    ids = torch.zeros((len(batch), width), dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    for row, p in enumerate(batch):
        ids[row, width - len(p) :] = torch.tensor(p)
        mask[row, width - len(p) :] = 1
    return ids.to(device), mask.to(device)


def plain_generate(model: Any, batch: list[list[int]], new_tokens: int, device: str) -> int:
    ids, mask = left_padded(batch, device)
    with torch.inference_mode():
        out = model.generate(
            input_ids=ids, attention_mask=mask, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False
        )
    return (out.shape[1] - ids.shape[1]) * out.shape[0]


def timed(label: str, run: Any, **extra: Any) -> dict[str, Any]:
    started = time.perf_counter()
    tokens = run()
    seconds = time.perf_counter() - started
    row = {"way": label, "new_tokens": tokens, "seconds": round(seconds, 3), "tokens_per_s": round(tokens / seconds, 1)}
    row.update(extra)
    print(json.dumps(row), flush=True)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="a tiny shape that runs on CPU in seconds")
    parser.add_argument("--questions", type=int, default=None, help="default 1000 (tiny: 64)")
    parser.add_argument("--new-tokens", type=int, default=None, help="default 64 (tiny: 16)")
    parser.add_argument("--batch", type=int, default=None, help="(b)'s batch size; default 512 (tiny: 16)")
    parser.add_argument("--project-batch", type=int, default=None, help="(c)'s batch size; default 1000 (tiny: 32)")
    parser.add_argument("--naive-sample", type=int, default=None, help="questions for (a); default 32 (tiny: 8)")
    parser.add_argument("--bucket", type=int, default=32, help="(c): prompt widths padded to a multiple of this")
    parser.add_argument("--no-compile", action="store_true", help="(c) without static cache + torch.compile")
    parser.add_argument("--oom-check", type=float, default=None, metavar="GIB", help="cap CUDA memory; see above")
    parser.add_argument("--output", type=Path, default=None)
    args = parser.parse_args()
    tiny = args.tiny or not torch.cuda.is_available()
    device = "cuda" if torch.cuda.is_available() and not args.tiny else "cpu"
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    questions = args.questions or (64 if tiny else 1000)
    new_tokens = args.new_tokens or (16 if tiny else 64)
    batch = args.batch or (16 if tiny else 512)
    project_batch = args.project_batch or (32 if tiny else 1000)
    naive_sample = args.naive_sample or (8 if tiny else 32)
    if device == "cpu":
        torch.set_num_threads(min(2, torch.get_num_threads()))

    shape = TINY if tiny else FULL
    model = build_model(shape, device, dtype)
    parameters = sum(p.numel() for p in model.parameters())
    work = prompts(questions, shape["vocab_size"])
    info = {
        "device": torch.cuda.get_device_name(0) if device == "cuda" else "cpu",
        "parameters": parameters,
        "shape": shape,
        "questions": questions,
        "new_tokens": new_tokens,
        "torch": torch.__version__,
        "transformers": __import__("transformers").__version__,
    }
    print(json.dumps(info), flush=True)
    if args.oom_check is not None:
        oom_check(model, work, args, new_tokens, project_batch, info)
        return
    rows = []

    # (a) naive: one generate per question
    plain_generate(model, work[:1], new_tokens, device)  # warm-up at batch 1
    synchronize(device)
    rows.append(
        timed(
            "a_naive_loop",
            lambda: sum(plain_generate(model, [p], new_tokens, device) for p in work[:naive_sample]),
            questions=naive_sample,
        )
    )

    # (b) plain batched generate
    plain_generate(model, work[:batch], new_tokens, device)  # warm-up at this batch shape
    synchronize(device)
    rows.append(
        timed(
            "b_batched_generate",
            lambda: sum(
                plain_generate(model, work[i : i + batch], new_tokens, device) for i in range(0, questions, batch)
            ),
            batch=batch,
        )
    )

    # (c) the project's path
    settings = GenerationSettings(
        max_new_tokens=new_tokens, batch_size=project_batch, compile=not args.no_compile, length_bucket=args.bucket
    )
    generator = BatchedGenerator(model, IdsOnly(), device, settings)
    generator.generate_ids(work[:project_batch])  # warm-up (compiles on CUDA)
    generator.stats.new_tokens = 0

    def project() -> int:
        outputs = generator.generate_ids(work)
        return sum(len(o) for o in outputs)

    rows.append(
        timed("c_project_path", project, batch=generator.batch_size, compiled=generator.compiled, bucket=args.bucket)
    )
    summary = {
        "c_over_b": round(rows[2]["tokens_per_s"] / rows[1]["tokens_per_s"], 2),
        "b_over_a": round(rows[1]["tokens_per_s"] / rows[0]["tokens_per_s"], 1),
        "target_c_over_b": 2.5,
    }
    print(json.dumps(summary), flush=True)
    if args.output:
        args.output.write_text(json.dumps({"info": info, "rows": rows, **summary}, indent=2) + "\n")


def oom_check(model: Any, work: list[list[int]], args: Any, new_tokens: int, start: int, info: dict) -> None:
    if not torch.cuda.is_available():
        sys.exit("--oom-check needs CUDA (CPU tensors are not capped)")
    total = torch.cuda.get_device_properties(0).total_memory
    torch.cuda.set_per_process_memory_fraction(min(1.0, args.oom_check * 2**30 / total))
    settings = GenerationSettings(max_new_tokens=new_tokens, batch_size=None, max_batch_size=start)
    generator = BatchedGenerator(model, IdsOnly(), "cuda", settings)
    started = time.perf_counter()
    outputs = generator.generate_ids(work)
    seconds = time.perf_counter() - started
    row = {
        "way": "d_oom_check",
        "memory_cap_gib": args.oom_check,
        "start_batch": start,
        "oom_backoffs": generator.stats.oom_backoffs,
        "settled_batch": generator.batch_size,
        "answers_full_length": sum(len(o) == new_tokens for o in outputs),
        "questions": len(work),
        "peak_allocated_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2),
        "seconds": round(seconds, 2),
        "tokens_per_s": round(generator.stats.tokens_per_s, 1),
    }
    print(json.dumps(row), flush=True)
    if args.output:
        args.output.write_text(json.dumps({"info": info, "oom_check": row}, indent=2) + "\n")


if __name__ == "__main__":
    main()
