"""Is an answer supported by its source? A span of it, or nearly all of its content words and every number."""

from __future__ import annotations

import unicodedata

from llm_pipeline.text import NUMBER, content_words


def _normal(text: str) -> str:
    return unicodedata.normalize("NFKC", text).lower()


def grounding_score(answer: str, source: str) -> float:
    """1.0 for a verbatim span; else the share of the answer's content words found in the source; 0.0 when
    the answer states a number the source does not contain (a wrong price is worse than a vague answer)."""
    answer_n, source_n = " ".join(_normal(answer).split()), " ".join(_normal(source).split())
    if answer_n.strip(" .") and answer_n.strip(" .") in source_n:
        return 1.0
    if set(NUMBER.findall(answer_n)) - set(NUMBER.findall(source_n)):
        return 0.0
    words = content_words(answer)
    if not words:
        return 0.0
    source_words = set(content_words(source))
    return sum(w in source_words for w in words) / len(words)
