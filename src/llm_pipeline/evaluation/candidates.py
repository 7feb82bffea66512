"""Candidates to evaluate, behind one interface and a registry keyed by `kind` in config.

Built in: `retrieval` and `lexical` (baselines.py, no generative model), `hf` (hf.py, a transformers causal LM),
`endpoint` (endpoint.py, an OpenAI-compatible server). A kind is a class (or factory) called with its
CandidateConfig, registered with `@CANDIDATE_KINDS.register(kind)`, here or from a user's package (see
llm_pipeline.plugins); `options:` in the candidate's config carries a plug-in's own settings.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

from llm_pipeline.config import CandidateConfig
from llm_pipeline.plugins import Registry
from llm_pipeline.text import REFUSAL


class Candidate(Protocol):
    name: str

    def answer(self, questions: Sequence[str], contexts: Sequence[str]) -> list[str]: ...


CANDIDATE_KINDS: Registry[Any] = Registry(
    "candidate kind",
    "llm_pipeline.candidates",
    builtins=("llm_pipeline.evaluation.baselines", "llm_pipeline.evaluation.hf", "llm_pipeline.evaluation.endpoint"),
)


def build_candidate(config: CandidateConfig) -> Candidate:
    return CANDIDATE_KINDS.get(config.kind)(config)


def answer_messages(question: str, context: str) -> list[dict[str, str]]:
    """The prompt every generative candidate gets: answer from the context, or refuse in the benchmark's words."""
    return [
        {
            "role": "system",
            "content": "Answer the question from the context, in as few words as the context allows. If the "
            f"context does not contain the answer, reply exactly: {REFUSAL}",
        },
        {"role": "user", "content": f"Context: {context}\n\nQuestion: {question}"},
    ]


def first_line(text: str) -> str:
    """A generated answer ends at its first line break (models often go on to a next question)."""
    return text.strip().split("\n", 1)[0].strip()
