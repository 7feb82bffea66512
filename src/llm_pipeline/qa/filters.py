"""Quality filters over the generated pairs: each drop is kept with its reason, and counted by reason.

In order: too short (question or answer under the configured words, as `text.word_count` counts them: a character
of Chinese or Japanese is a word), unanswerable (the answer is a refusal or
says the source does not tell), ungrounded (the answer is not supported by its chunk: llm_pipeline.qa.grounding),
and near-duplicate questions across the whole corpus (MinHash LSH on question words, the dedup stage's code,
verified on the true Jaccard; the first asked is kept).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from llm_pipeline.config import QAConfig
from llm_pipeline.dedup.clusters import clusters_from_pairs
from llm_pipeline.dedup.minhash import candidate_pairs, lsh_params, signatures, verified_pairs
from llm_pipeline.qa.grounding import grounding_score
from llm_pipeline.records import Document, QAPair
from llm_pipeline.text import NUMBER, UNANSWERABLE, word_count

QUESTION_SHINGLE = 1  # questions are short: compare their word sets


@dataclass
class Filtered:
    kept: list[QAPair] = field(default_factory=list)
    dropped: list[dict[str, Any]] = field(default_factory=list)  # the pair plus "reason"

    @property
    def reasons(self) -> dict[str, int]:
        return dict(Counter(d["reason"] for d in self.dropped))


def _drop(result: Filtered, pair: QAPair, reason: str, **detail: Any) -> None:
    result.dropped.append({**pair.model_dump(), "reason": reason, **detail})


def filter_pairs(pairs: list[QAPair], sources: dict[str, str], config: QAConfig) -> Filtered:
    """`sources` maps a pair id to the text its answer must be grounded in (its chunk)."""
    result = Filtered()
    survivors: list[QAPair] = []
    for pair in pairs:
        if word_count(pair.question) < config.min_question_words or word_count(pair.answer) < config.min_answer_words:
            _drop(result, pair, "too_short")
        elif UNANSWERABLE.search(pair.answer):
            _drop(result, pair, "unanswerable")
        else:
            score = grounding_score(pair.answer, sources[pair.id])
            if score < config.grounding_threshold:
                _drop(result, pair, "ungrounded", grounding=round(score, 3))
            else:
                if config.include_metadata:
                    pair.metadata["grounding"] = round(score, 3)
                survivors.append(pair)
    duplicates = near_duplicate_questions(survivors, config.question_similarity_threshold)
    for pair in survivors:
        if pair.id in duplicates:
            _drop(result, pair, "duplicate_question", duplicate_of=duplicates[pair.id])
        else:
            result.kept.append(pair)
    return result


def near_duplicate_questions(pairs: list[QAPair], threshold: float, num_perm: int = 64) -> dict[str, str]:
    """pair id -> the id of the earlier pair whose question it nearly repeats."""
    if len(pairs) < 2:
        return {}
    questions = [Document(id=p.id, text=p.question) for p in pairs]
    sigs = signatures([q.text for q in questions], QUESTION_SHINGLE, num_perm)
    bands, rows = lsh_params(threshold, num_perm)
    similar = verified_pairs(questions, sigs, candidate_pairs(sigs, bands, rows), threshold, "exact", QUESTION_SHINGLE)
    # "...at 50 kW?" and "...at 150 kW?" share nearly every word but ask different things.
    numbers = [set(NUMBER.findall(q.text)) for q in questions]
    similar = [(i, j, s) for i, j, s in similar if numbers[i] == numbers[j]]
    repeats: dict[str, str] = {}
    for cluster in clusters_from_pairs(questions, similar, "question", keep="first"):
        for member in cluster.members:
            if member != cluster.kept:
                repeats[member] = cluster.kept
    return repeats
