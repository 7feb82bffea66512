"""The two baselines, which answer from the item's context with no generative model.

Both pick the sentence that best matches the question, then drop from its start the words the question already
says (the subject and verb), leaving the span that answers. When nothing matches well enough they refuse, which
is what an unanswerable item wants.
  retrieval: sentence chosen by cosine of sentence embeddings (the packaged all-MiniLM-L6-v2 by default);
  lexical:   sentence chosen by word overlap with the question (no model).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from llm_pipeline.config import DEFAULT_EMBEDDING_MODEL, CandidateConfig
from llm_pipeline.evaluation.candidates import CANDIDATE_KINDS
from llm_pipeline.models.embeddings import embed
from llm_pipeline.text import REFUSAL, script_words, split_sentences

# a word: letters, digits and $ . % -; in Chinese, Japanese or Thai (no spaces between words) each character
_WORD = script_words(r"[\w$.%-]")


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


@CANDIDATE_KINDS.register("retrieval")
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


@CANDIDATE_KINDS.register("lexical")
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
