"""Answerers to evaluate, behind one interface and a registry keyed by `kind` in config.

Both baselines answer from the item's context: pick the sentence that best matches the question, then drop
from its start the words the question already says (the subject and verb), leaving the span that answers.
When nothing matches well enough they refuse, which is what an unanswerable item wants.
  retrieval: sentence chosen by cosine of sentence embeddings (the packaged all-MiniLM-L6-v2 by default);
  lexical:   sentence chosen by word overlap with the question (no model).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np

from llm_pipeline.benchmark import REFUSAL
from llm_pipeline.config import DEFAULT_EMBEDDING_MODEL, CandidateConfig
from llm_pipeline.embeddings import embed
from llm_pipeline.qa.extractive import split_sentences

_WORD = re.compile(r"[\w$.%-]+")


class Candidate(Protocol):
    name: str

    def answer(self, questions: Sequence[str], contexts: Sequence[str]) -> list[str]: ...


def _stem(word: str) -> str:
    word = word.lower().strip(".,;:")
    return word[:-1] if word.endswith("s") and len(word) > 3 else word


def answer_span(question: str, sentence: str) -> str:
    """The sentence without its leading words that the question already contains."""
    asked = {_stem(w) for w in _WORD.findall(question)}
    words = sentence.rstrip(".!?").split()
    start = 0
    while start < len(words) - 1 and _stem(words[start]) in asked | {"a", "an", "the", "can", "usually"}:
        start += 1
    return " ".join(words[start:])


def _overlap(question: str, sentence: str) -> float:
    q = {_stem(w) for w in _WORD.findall(question)}
    s = {_stem(w) for w in _WORD.findall(sentence)}
    return len(q & s) / max(1, len(q))


class RetrievalCandidate:
    def __init__(self, config: CandidateConfig, min_similarity: float = 0.45):
        self.name = config.name
        self.model = config.model or DEFAULT_EMBEDDING_MODEL
        self.min_similarity = min_similarity

    def answer(self, questions: Sequence[str], contexts: Sequence[str]) -> list[str]:
        sentences = [split_sentences(c) or [c] for c in contexts]
        flat = [s for group in sentences for s in group]
        vectors = embed(list(questions) + flat, self.model)
        q_vectors, s_vectors = vectors[: len(questions)], vectors[len(questions) :]
        answers, offset = [], 0
        for i, group in enumerate(sentences):
            scores = s_vectors[offset : offset + len(group)] @ q_vectors[i]
            offset += len(group)
            best = int(np.argmax(scores))
            answers.append(REFUSAL if scores[best] < self.min_similarity else answer_span(questions[i], group[best]))
        return answers


class LexicalCandidate:
    def __init__(self, config: CandidateConfig, min_overlap: float = 0.5):
        self.name = config.name
        self.min_overlap = min_overlap

    def answer(self, questions: Sequence[str], contexts: Sequence[str]) -> list[str]:
        answers = []
        for question, context in zip(questions, contexts, strict=True):
            group = split_sentences(context) or [context]
            best = max(group, key=lambda s: _overlap(question, s))
            answers.append(REFUSAL if _overlap(question, best) < self.min_overlap else answer_span(question, best))
        return answers


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


def _first_line(text: str) -> str:
    return text.strip().split("\n", 1)[0].strip()


class HFCandidate:
    """A transformers causal LM by hub name or local path, through the shared loader and the batched generator."""

    def __init__(self, config: CandidateConfig):
        from llm_pipeline.generation import BatchedGenerator, GenerationSettings
        from llm_pipeline.models import load_causal_lm

        assert config.model  # the config validator insists
        self.name = config.name
        model, self.tokenizer, device = load_causal_lm(config.model, config.device, config.dtype)
        self.settings = GenerationSettings(
            max_new_tokens=config.max_new_tokens,
            batch_size=config.batch_size,
            max_batch_size=config.max_batch_size,
            compile=config.compile,
        )
        self.generator = BatchedGenerator(model, self.tokenizer, device, self.settings)

    def answer(self, questions: Sequence[str], contexts: Sequence[str]) -> list[str]:
        from llm_pipeline.models import render_prompt

        prompts = [
            render_prompt(self.tokenizer, answer_messages(q, c)) for q, c in zip(questions, contexts, strict=True)
        ]
        return [_first_line(text) for text in self.generator.generate(prompts)]

    def close(self) -> None:
        """Free the model's memory before the next candidate loads (GPU memory above all)."""
        self.stats = self.generator.stats  # kept for the report; the model goes
        del self.generator
        import gc

        import torch

        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


class EndpointCandidate:
    """An OpenAI-compatible endpoint, through the QA stage's client, limits and error policy."""

    def __init__(self, config: CandidateConfig):
        from llm_pipeline.config import QAConfig, Secrets

        self.name = config.name
        key = Secrets().openai_api_key
        self.api_key = key.get_secret_value() if key else None
        self.qa_config = QAConfig(
            backend="openai",
            base_url=config.base_url,
            model_name=config.model,
            concurrency=config.concurrency,
            requests_per_minute=config.requests_per_minute,
            max_tokens=max(16, config.max_new_tokens),
            temperature=0.0,
            response_format="text",
        )

    def answer(self, questions: Sequence[str], contexts: Sequence[str]) -> list[str]:
        from llm_pipeline.qa import run_sync

        return run_sync(self._answer(list(questions), list(contexts)))

    async def _answer(self, questions: list[str], contexts: list[str]) -> list[str]:
        from llm_pipeline.qa.backends import Job
        from llm_pipeline.qa.chunking import Chunk
        from llm_pipeline.qa.openai_backend import OpenAIBackend
        from llm_pipeline.records import Document

        backend = OpenAIBackend(self.qa_config, self.api_key)
        jobs = [
            Job(
                key=str(i),
                document=Document(id=str(i), text=c),
                chunk=Chunk(0, 1, c),
                messages=answer_messages(q, c),
                n=1,
            )
            for i, (q, c) in enumerate(zip(questions, contexts, strict=True))
        ]
        answers: list[str] = [""] * len(jobs)
        try:
            async for job, outcome in backend.complete_many(jobs):
                if isinstance(outcome, BaseException):
                    raise outcome  # still failing after the policy's tries: the candidate fails, the others go on
                answers[int(job.key)] = _first_line(outcome.text)
        finally:
            await backend.aclose()
        return answers


CANDIDATES: dict[str, type[Any]] = {
    "retrieval": RetrievalCandidate,
    "lexical": LexicalCandidate,
    "hf": HFCandidate,
    "endpoint": EndpointCandidate,
}


def build_candidate(config: CandidateConfig) -> Candidate:
    return CANDIDATES[config.kind](config)
