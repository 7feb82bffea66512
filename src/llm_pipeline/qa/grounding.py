"""Is an answer supported by its source? A span of it, or nearly all of its content words and every number."""

from __future__ import annotations

import re
import unicodedata

from llm_pipeline.text import NUMBER

_WORD = re.compile(r"[a-z0-9]+(?:[.,][0-9]+)*")
_STOPWORDS = frozenset(
    "a an the of to in on at for by with and or but is are was were be been it its this that these those as "
    "from than then so such can may will would should could do does did has have had not no".split()
)


def _normal(text: str) -> str:
    return unicodedata.normalize("NFKC", text).lower()


def content_words(text: str) -> list[str]:
    return [w for w in _WORD.findall(_normal(text)) if w not in _STOPWORDS]


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
