"""Training examples for supervised fine-tuning, from the QA pairs left out of the benchmark.

Each pair becomes the prompt every generative candidate is evaluated with (`answer_messages`: the question with its
source document as context, rendered by the base model's chat template) followed by the reference answer and EOS;
the loss is on the answer only. Training on the evaluation's own prompt format is what makes "tuned vs base" a fair
comparison: the tuned model learns the domain, not a different prompt.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from llm_pipeline.evaluation.candidates import answer_messages
from llm_pipeline.models.loading import render_prompt
from llm_pipeline.records import Document, QAPair

IGNORE = -100  # labels the loss leaves out (the prompt, padding)


@dataclass
class Example:
    pair_id: str
    input_ids: list[int]
    labels: list[int]


@dataclass
class TrainingSet:
    train: list[Example] = field(default_factory=list)
    held_out: list[Example] = field(default_factory=list)
    left_out: Counter[str] = field(default_factory=Counter)  # reason -> pairs not trained on

    def counts(self) -> dict[str, int]:
        return {
            "train_examples": len(self.train),
            "eval_examples": len(self.held_out),
            **{f"left_out.{reason}": n for reason, n in sorted(self.left_out.items())},
        }


def build_examples(
    pairs: Iterable[QAPair], documents: Iterable[Document], tokenizer: Any, max_length: int
) -> tuple[list[Example], Counter[str]]:
    """One example per pair whose document is known and whose prompt and answer fit in `max_length` tokens."""
    texts = {d.id: d.text for d in documents}
    eos = tokenizer.eos_token_id
    examples: list[Example] = []
    left_out: Counter[str] = Counter()
    for pair in pairs:
        context = texts.get(pair.document_id)
        if context is None:
            left_out["document_missing"] += 1
            continue
        prompt = tokenizer(render_prompt(tokenizer, answer_messages(pair.question, context)), add_special_tokens=False)[
            "input_ids"
        ]
        answer = tokenizer(pair.answer, add_special_tokens=False)["input_ids"] + ([eos] if eos is not None else [])
        if len(prompt) + len(answer) > max_length:
            left_out["too_long"] += 1
            continue
        examples.append(Example(pair.id, prompt + answer, [IGNORE] * len(prompt) + answer))
    return examples, left_out


def split_held_out(examples: list[Example], fraction: float, seed: int) -> tuple[list[Example], list[Example]]:
    """(train, held out): a seeded sample of `fraction` of the examples (at least one where there are two or
    more and the fraction is not 0) kept for eval loss."""
    if fraction <= 0 or len(examples) < 2:
        return examples, []
    order = sorted(range(len(examples)), key=lambda i: examples[i].pair_id)
    random.Random(seed).shuffle(order)
    n = max(1, round(len(examples) * fraction))
    held = set(order[:n])
    return [e for i, e in enumerate(examples) if i not in held], [e for i, e in enumerate(examples) if i in held]


def pack(examples: list[Example], max_length: int) -> list[Example]:
    """Examples concatenated, in order, into sequences of at most `max_length` tokens (an example never split):
    fewer padding tokens per step. Attention crosses example boundaries within a block, as in TRL's classic
    packing; the loss stays on answers only."""
    blocks: list[Example] = []
    ids: list[int] = []
    labels: list[int] = []
    members: list[str] = []
    for example in examples:
        if ids and len(ids) + len(example.input_ids) > max_length:
            blocks.append(Example("+".join(members), ids, labels))
            ids, labels, members = [], [], []
        ids = ids + example.input_ids
        labels = labels + example.labels
        members.append(example.pair_id)
    if ids:
        blocks.append(Example("+".join(members), ids, labels))
    return blocks
