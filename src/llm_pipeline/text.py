"""Text helpers shared by QA generation, deduplication, the benchmark and evaluation: words, sentences,
numbers and the phrases that mean "the context does not say"."""

from __future__ import annotations

import hashlib
import re
import unicodedata
import zlib

import numpy as np
import regex

# A word for near-duplicate detection, as a reader counts words: a whitespace-separated word, lowercased, with
# sentence punctuation, brackets and quotes stripped from its two ends. What is inside a word stays, so c++, c#,
# g++-multilib, v2.0, x86_64, node.js, don't, >= and <= are words and differ from c, gcc-multilib, v2, = and >=;
# `(dev,32bit,meta)` is one word, not three (a regex that split it made one-word variants of short texts look
# like near-duplicates: docs/benchmarks.md).
DEDUP_EDGE = ".,;:!?\"'()[]{}`"
# after . ! ? where the next sentence starts with a capital, a digit or $; after Chinese and Japanese 。！？
# (and a closing quote or bracket after one), which need no space
PARAGRAPH_BREAK = re.compile(r"\n[^\S\n]*\n")  # a blank line: a line holding nothing but spaces
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z0-9$])|(?<=[。！？])(?![」』”）])\s*|(?<=[。！？][」』”）])\s*")

NUMBER = re.compile(r"\d+(?:[.,]\d+)*")  # 0.45, 1,200: numbers as a text writes them (grounding, question filter)
DECIMAL = re.compile(r"\d+(?:\.\d+)?")  # 0.45, 12: numbers to compare or perturb (metrics, adversarial variants)

# The benchmark's reference answer for an unanswerable item, and what every candidate is told to reply.
REFUSAL = "The context does not answer this question."
# Phrases that make a prediction count as a refusal (evaluation's refusal accuracy).
REFUSAL_MARKERS = (
    "does not answer",
    "cannot answer",
    "can't answer",
    "not enough information",
    "unanswerable",
    "no answer",
    "not mentioned",
    "i don't know",
)
# An answer that is a refusal or a placeholder rather than an answer (QA generation's filter).
UNANSWERABLE = re.compile(
    r"^\W*(n/?a|none|unknown|no answer|not applicable)\W*$"
    r"|\b(not (stated|mentioned|specified|provided|given|included|available) in the (document|text|passage|source)"
    r"|(the )?(document|text|passage|source) does not (say|state|mention|specify|provide|contain)"
    r"|cannot be determined|i (do not|don't) know|insufficient information)\b",
    re.IGNORECASE,
)


# Scripts written without spaces between words (Chinese, Japanese, Thai, Lao, Khmer, Myanmar): a whitespace split
# finds no words in them (a paragraph of Chinese is one "word"), so each of their characters counts as a word. Korean
# (Hangul) is written with spaces and is not among them.
UNSPACED_SCRIPTS = r"\p{Han}\p{Hiragana}\p{Katakana}\p{Thai}\p{Lao}\p{Khmer}\p{Myanmar}"
UNSPACED = regex.compile(rf"[{UNSPACED_SCRIPTS}]")
# a word as a reader counts them: a character of an unspaced script, or a run of other non-space characters
_COUNTED_WORD = regex.compile(rf"[{UNSPACED_SCRIPTS}]|[^\s{UNSPACED_SCRIPTS}]+")
_PUNCTUATION_ONLY = regex.compile(r"\p{P}+")


def script_words(letters: str) -> regex.Pattern[str]:
    """Words of any script: a character of a script written without spaces (`UNSPACED_SCRIPTS`), or a run of
    `letters` (a character class, e.g. `\\w`) outside those scripts."""
    return regex.compile(rf"[{UNSPACED_SCRIPTS}]|(?:(?![{UNSPACED_SCRIPTS}]){letters})+")


_WORD = script_words(r"\w")
# what dedup strips from a word's ends besides DEDUP_EDGE: the full-width punctuation of Chinese and Japanese
_WIDE_EDGE = "，。、；：！？「」『』（）《》【】〈〉“”‘’…·・～"


def word_count(text: str) -> int:
    """Words as a reader counts them: whitespace-separated, and each character of a script written without spaces
    (`UNSPACED_SCRIPTS`) one word. For text without such characters: its whitespace-separated words."""
    return len(_COUNTED_WORD.findall(text))


def word_spans(text: str) -> list[tuple[int, int]]:
    """(start, end) of each word `word_count` counts."""
    return [m.span() for m in _COUNTED_WORD.finditer(text)]


def words_of(text: str) -> list[str]:
    """Lowercased word tokens (`\\w+`; a character of Chinese, Japanese or Thai one word): the benchmark's
    contamination n-grams and question overlap."""
    return _WORD.findall(text.lower())


def dedup_tokens(text: str) -> list[str]:
    """Lowercased whitespace words, sentence punctuation, brackets and quotes stripped from their ends (`DEDUP_EDGE`):
    the units of MinHash's shingles and of its exact verification. Symbols and digits inside a word stay (`c++` is
    not `c`, `gcc-multilib` is not `g++-multilib`)."""
    return [word for chunk in text.lower().split() for word in dedup_words(chunk)]


def dedup_words(chunk: str) -> tuple[str, ...]:
    """A whitespace-separated chunk as `dedup_tokens` counts it: one word, its ends stripped (none: punctuation
    only). A chunk holding characters of a script written without spaces (`UNSPACED`) is that many words, one
    for each such character, and one for each run of other characters between them (punctuation dropped): a
    paragraph of Chinese is hundreds of words, not one, and two that differ in one character share most shingles."""
    if chunk.isascii() or UNSPACED.search(chunk) is None:  # isascii: C speed, for nearly every chunk
        word = chunk.strip(DEDUP_EDGE)
        return (word,) if word else ()
    pieces = (piece.strip(DEDUP_EDGE + _WIDE_EDGE) for piece in _COUNTED_WORD.findall(chunk))
    return tuple(p for p in pieces if p and not _PUNCTUATION_ONLY.fullmatch(p))


def number_mask(text: str) -> int:
    """The numbers a text states (`DECIMAL`, by value: 1.0 is 1, 05 is 5), as a 64-bit set: one bit per number, by
    a stable hash of its value. Semantic dedup keeps two texts apart when each states a number the other does not
    (`numbers_conflict`): two product sheets that differ in a price, a power or a model number are two facts. A
    text with dozens of distinct numbers sets most bits, so a conflict may go unseen (never a false one)."""
    mask = 0
    for value in {float(n) for n in DECIMAL.findall(text)}:
        digest = hashlib.blake2b(repr(value).encode(), digest_size=1).digest()[0]
        mask |= 1 << (digest % 64)
    return mask


def numbers_conflict(a: int, b: int) -> bool:
    """Whether each of two `number_mask`s holds a number the other lacks (one text's numbers a subset of the
    other's, as in a copy with a sentence dropped, is no conflict)."""
    return bool(a & ~b) and bool(b & ~a)


# A word of any script (letters with their combining marks, digits; 0.45 and 1,200 whole); a run of characters of a
# script written without spaces is a run, not a word: its words are its character pairs (below).
_CONTENT_WORD = regex.compile(
    rf"(?P<run>[{UNSPACED_SCRIPTS}]+)|(?:(?![{UNSPACED_SCRIPTS}])[\p{{L}}\p{{M}}\p{{N}}])+(?:[.,]\p{{N}}+)*"
)
_STOPWORDS = frozenset(
    "a an the of to in on at for by with and or but is are was were be been it its this that these those as "
    "from than then so such can may will would should could do does did has have had not no".split()
)


def content_words(text: str) -> list[str]:
    """The words that carry a text's content (QA's grounding, semantic dedup's words rule): every script's words
    but English stopwords; in Chinese, Japanese or Thai, whose words are not spaced, overlapping character pairs
    (`充电`, `电桩` of `充电桩`: a pair is the usual unit of Chinese retrieval; single characters, few thousand in
    common use, would match nearly any source)."""
    found = []
    for match in _CONTENT_WORD.finditer(unicodedata.normalize("NFKC", text).lower()):
        if run := match.group("run"):
            found.extend(run[i : i + 2] for i in range(max(1, len(run) - 1)))
        elif match.group() not in _STOPWORDS:
            found.append(match.group())
    return found


def word_set(text: str) -> np.ndarray:
    """A text's distinct content words (`content_words`) as their CRC-32 hashes, sorted (uint32): a few bytes a word,
    what semantic dedup's words rule compares (the Ray engine ships them, not the texts, to its driver)."""
    return np.unique(np.fromiter((zlib.crc32(w.encode()) for w in content_words(text)), dtype=np.uint32))


def shared_words(a: np.ndarray, b: np.ndarray) -> float:
    """The Jaccard of two texts' distinct content words (`word_set`s): what share of the words either one uses both
    use. Two texts with no content word at all share everything (1.0): nothing tells them apart."""
    common = len(np.intersect1d(a, b, assume_unique=True))
    either = len(a) + len(b) - common
    return common / either if either else 1.0


def split_sentences(text: str) -> list[str]:
    """Sentences, split after . ! ? where the next one starts with a capital, a digit or $, after 。！？, and at a
    blank line (a heading, a list or a table ends there, punctuated or not); each on one line (a text keeps its
    lines, and a hard-wrapped sentence's line breaks are spaces)."""
    blocks = PARAGRAPH_BREAK.split(text)
    return [" ".join(s.split()) for block in blocks for s in _SENTENCE_END.split(block) if s.strip()]


def is_refusal(text: str) -> bool:
    lowered = text.lower()
    return any(marker in lowered for marker in REFUSAL_MARKERS)
