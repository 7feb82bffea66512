"""LoRA fine-tuning speed: trained tokens/s of a plain unpacked Trainer run against the project's settings.

A random-weight Llama-shaped model (default: the 1.2B shape of benchmarks/eval_gpu.py; built from a config and
saved to a scratch folder, nothing downloaded) is tuned with LoRA on synthetic QA pairs whose contexts range from
short to long (20-400 words: padding is what packing saves), through the stage's own function
(llm_pipeline.finetune.finetune), two ways in one run:

  (a) baseline: the plain Trainer path: no packing, fp32 weights, no bf16 autocast;
  (b) project:  packing into `--max-length` blocks, bf16 weights and autocast where CUDA supports them.

Both train `--steps` optimizer steps at `--batch` sequences a step, with the same LoRA settings. The figure is
non-padding tokens trained per second of the Trainer's own runtime; peak GPU memory per way where CUDA is
present. The corpus is synthetic (random words over a small vocabulary): a speed figure, not a quality one.

    .venv/bin/python benchmarks/finetune_gpu.py            # on a GPU: the 1.2B shape
    .venv/bin/python benchmarks/finetune_gpu.py --tiny     # on CPU: a tiny shape, to check the script runs
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

import torch  # noqa: E402
from eval_gpu import FULL, TINY  # noqa: E402 - the same model shapes as the evaluation benchmark

from llm_pipeline.config import FinetuneConfig  # noqa: E402
from llm_pipeline.finetune import finetune  # noqa: E402
from llm_pipeline.records import Document, QAPair  # noqa: E402

WORDS = [f"w{i}" for i in range(400)]


def corpus(pairs: int, seed: int = 1) -> tuple[list[QAPair], list[Document]]:
    rng = random.Random(seed)
    documents, qa = [], []
    for i in range(pairs):
        text = " ".join(rng.choice(WORDS) for _ in range(rng.randint(20, 400))) + "."
        documents.append(Document(id=f"d{i}", text=text))
        question = "What is " + " ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 12))) + "?"
        answer = " ".join(rng.choice(WORDS) for _ in range(rng.randint(2, 20)))
        qa.append(QAPair(id=f"p{i}", question=question, answer=answer, document_id=f"d{i}"))
    return qa, documents


def build_base(shape: dict[str, int], folder: Path) -> Path:
    """A random Llama of `shape` and a word-level tokenizer over WORDS, saved as a model folder."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    vocab = {"<unk>": 0, "<pad>": 1, "</s>": 2}
    for word in [*WORDS, "What", "is", "?", ".", "Context:", "Question:", "System:", "User:", "Assistant:"]:
        vocab.setdefault(word, len(vocab))
    core = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, unk_token="<unk>", pad_token="<pad>", eos_token="</s>")
    config = LlamaConfig(
        **shape, max_position_embeddings=4096, tie_word_embeddings=True, pad_token_id=1, eos_token_id=2
    )
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def run(way: str, base: Path, pairs: list[QAPair], documents: list[Document], args: Any, scratch: Path) -> dict:
    project = way == "project"
    config = FinetuneConfig(
        enabled=True,
        base_model=str(base),
        max_steps=args.steps,
        batch_size=args.batch,
        max_length=args.max_length,
        packing=project,
        bf16="auto" if project else "off",
        eval_fraction=0.0,
        save_steps=10**6,
        lr_scheduler="constant",
        warmup_ratio=0.0,
    )
    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    result = finetune(config, pairs, documents, scratch / way / "adapter", scratch / way / "checkpoints", way)
    return {
        "way": way,
        "steps": result.steps,
        "tokens": result.tokens_seen,
        "train_s": result.train_seconds,
        "tokens_per_s": round(result.tokens_seen / max(result.train_seconds, 1e-9), 1),
        "peak_gpu_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2) if cuda else None,
        "packing": config.packing,
        "bf16": config.bf16,
        "last_loss": result.losses()["last_loss"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny", action="store_true", help="a tiny model shape (CPU smoke run)")
    parser.add_argument("--pairs", type=int, default=2000)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--max-length", type=int, default=2048)
    parser.add_argument("--output", type=Path)
    args = parser.parse_args()
    if args.tiny:
        args.pairs, args.steps, args.max_length = min(args.pairs, 200), min(args.steps, 10), min(args.max_length, 1024)
    pairs, documents = corpus(args.pairs)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        scratch = Path(tmp)
        base = build_base(TINY if args.tiny else FULL, scratch / "base")
        for way in ("baseline", "project"):
            row = run(way, base, pairs, documents, args, scratch)
            print(json.dumps(row), flush=True)
            rows.append(row)
    speedup = rows[1]["tokens_per_s"] / max(rows[0]["tokens_per_s"], 1e-9)
    summary = {
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
        "shape": "tiny" if args.tiny else "1.2B",
        "pairs": args.pairs,
        "steps": args.steps,
        "batch": args.batch,
        "max_length": args.max_length,
        "project_over_baseline": round(speedup, 2),
        "torch": torch.__version__,
    }
    print(json.dumps(summary))
    if args.output:
        args.output.write_text(json.dumps({"rows": rows, "summary": summary}, indent=2) + "\n")


if __name__ == "__main__":
    main()
