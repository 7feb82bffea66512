"""Is an answer supported by its source? A span of it, or nearly all of its content words and every number."""

from __future__ import annotations

import unicodedata

import regex

from llm_pipeline.text import NUMBER, UNSPACED_SCRIPTS

# A word of any script (letters with their combining marks, digits; 0.45 and 1,200 whole); a run of characters of a
# script written without spaces is a run, not a word: its words are its character pairs (below).
_WORD = regex.compile(
    rf"(?P<run>[{UNSPACED_SCRIPTS}]+)|(?:(?![{UNSPACED_SCRIPTS}])[\p{{L}}\p{{M}}\p{{N}}])+(?:[.,]\p{{N}}+)*"
)
_STOPWORDS = frozenset(
    "a an the of to in on at for by with and or but is are was were be been it its this that these those as "
    "from than then so such can may will would should could do does did has have had not no".split()
)


def _normal(text: str) -> str:
    return unicodedata.normalize("NFKC", text).lower()


def content_words(text: str) -> list[str]:
    """The words that carry an answer's content: every script's words but English stopwords; in Chinese, Japanese or
    Thai, whose words are not spaced, overlapping character pairs (`充电`, `电桩` of `充电桩`: a pair is the usual
    unit of Chinese retrieval; single characters, few thousand in common use, would match nearly any source)."""
    found = []
    for match in _WORD.finditer(_normal(text)):
        if run := match.group("run"):
            found.extend(run[i : i + 2] for i in range(max(1, len(run) - 1)))
        elif match.group() not in _STOPWORDS:
            found.append(match.group())
    return found


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
