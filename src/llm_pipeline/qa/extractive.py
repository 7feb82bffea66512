"""The offline QA backend: questions whose answers are spans of the document, with no model at all.

A sentence of the form `<subject> <verb> <rest>` becomes "What does <subject> <verb>?" (or "How much ..." for
costs, "What is ..." for the copula) with `<rest>` as the answer, a span of the source. Sentences with numbers
are asked about first: they carry the facts a domain benchmark cares most about.
"""

from __future__ import annotations

import re

from llm_pipeline.records import Document
from llm_pipeline.text import split_sentences

PROMPT_VERSION = "extractive-v1"

_NUMBER = re.compile(r"\d")

# Third-person singular verb -> its base form; plural forms map to themselves.
_VERBS = {
    "costs": "cost",
    "delivers": "deliver",
    "uses": "use",
    "needs": "need",
    "requires": "require",
    "allows": "allow",
    "lets": "let",
    "reduces": "reduce",
    "produces": "produce",
    "recovers": "recover",
    "offsets": "offset",
    "buys": "buy",
    "emits": "emit",
    "stores": "store",
    "pays": "pay",
    "starts": "start",
    "adds": "add",
    "limits": "limit",
    "shares": "share",
    "warms": "warm",
    "drops": "drop",
    "cuts": "cut",
    "applies": "apply",
    "charges": "charge",
    "shows": "show",
    "works": "work",
    "wears": "wear",
    "helps": "help",
    "covers": "cover",
    "negotiates": "negotiate",
    "avoids": "avoid",
    "balances": "balance",
    "offers": "offer",
    "supplies": "supply",
    "accepts": "accept",
    "lowers": "lower",
    "gives": "give",
    "keeps": "keep",
    "improves": "improve",
    "contains": "contain",
    "removes": "remove",
    "supports": "support",
}
_PLURAL_VERBS = set(_VERBS.values()) | {"run", "grow", "rise", "need"}
_COPULA = {"is", "are", "was", "were"}
_MODALS = {"can", "may", "will", "should", "must", "could", "might"}
# A subject that opens with one of these is an adverbial phrase, not a subject: no question from it.
_NOT_SUBJECT_START = {
    "over",
    "in",
    "at",
    "on",
    "for",
    "with",
    "between",
    "after",
    "before",
    "from",
    "not",
    "if",
    "when",
    "while",
    "most",
    "some",
    "by",
    "during",
    "under",
    "without",
}
_MIN_SUBJECT, _MAX_SUBJECT = 2, 12


# Code, not prose (a document's text keeps its code blocks, and a line of code reads as a sentence here: `What is
# // This?` from Node.js's docs): braces, a comment marker, an assignment, an arrow, a backtick
_CODE = re.compile(r"[{}`]|//|/\*|\s=\s|=>|\w\(\)")
_WORDLESS = re.compile(r"^\W+$")  # a subject word with no letter or digit: `------------`, `-`, `#`


def question_for(sentence: str) -> tuple[str, str] | None:
    """(question, answer) for one sentence, or None when no pattern applies (or the sentence is code)."""
    words = sentence.rstrip(".!?").split()
    if not words or words[0].lower() in _NOT_SUBJECT_START or _CODE.search(sentence):
        return None
    for i in range(_MIN_SUBJECT, min(len(words) - 1, _MAX_SUBJECT + 1)):
        verb = words[i].lower()
        subject = " ".join(words[:i])
        answer = " ".join(words[i + 1 :]).strip(" ,;")
        if subject.endswith(",") or any(_WORDLESS.match(word) for word in words[:i]):
            return None
        first = words[0]
        keep_case = len(first) > 1 and any(c.isupper() for c in first[1:])  # DC, CHAdeMO, EVgo
        subject_phrase = subject if keep_case else first.lower() + subject[len(first) :]
        if verb in _MODALS and i + 2 < len(words):
            answer = " ".join(words[i + 2 :]).strip(" ,;")
            return f"What {verb} {subject_phrase} {words[i + 1].lower()}?", answer
        if verb in _COPULA:
            following = words[i + 1].lower()
            if following.endswith(("ed", "ing")) or following in ("not", "now", "often", "usually"):
                return None  # passive or progressive: "is added to", "are moving to"
            return f"What {verb} {subject_phrase}?", answer
        if verb in ("costs", "cost"):
            aux = "does" if verb == "costs" else "do"
            return f"How much {aux} {subject_phrase} cost?", answer
        if verb in _VERBS:
            return f"What does {subject_phrase} {_VERBS[verb]}?", answer
        if verb in _PLURAL_VERBS:
            return f"What do {subject_phrase} {verb}?", answer
    return None


def extractive_pairs(document: Document, n: int, min_answer_words: int = 2) -> list[tuple[str, str, int]]:
    """Up to n (question, answer, sentence index) for a document; numeric sentences first, then in order."""
    candidates = []
    for index, sentence in enumerate(split_sentences(document.text)):
        qa = question_for(sentence)
        if qa and len(qa[1].split()) >= min_answer_words:
            candidates.append((not _NUMBER.search(qa[1]), index, qa))
    candidates.sort(key=lambda c: (c[0], c[1]))
    return [(q, a, index) for _, index, (q, a) in candidates[:n]]
