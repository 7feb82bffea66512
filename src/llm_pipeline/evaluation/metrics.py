"""Per-sample answer metrics and their aggregates. Libraries, not the `evaluate` package (which fetches its
metric scripts from the Hub at run time and so fails offline): rouge-score, sacrebleu, bert-score.

Every per-sample score is in [0, 1]. Domain metrics:
  numeric_accuracy: on items whose reference has numbers, 1 when every reference number appears in the
                    prediction within `numeric_tolerance` (1 %, relative; units are compared as written);
  price_accuracy:   on items whose reference states a price, 1 when every price ($0.45, 45 cents, 0.45 USD)
                    is in the prediction within the same tolerance and with the same per-unit (per kWh,
                    minute, session, hour, month) where the reference names one;
  refusal_accuracy: on every item, 1 when the prediction refuses exactly when the item is unanswerable;
  robustness:       mean score on adversarial variants / mean score on their originals (an aggregate).
"""

from __future__ import annotations

import re
import string
from collections.abc import Sequence
from functools import lru_cache

import numpy as np

from llm_pipeline.records import BenchmarkItem
from llm_pipeline.text import DECIMAL, UNSPACED, is_refusal, script_words

_ARTICLES = re.compile(r"\b(a|an|the)\b")


def normalize_answer(text: str) -> str:
    """SQuAD-style normalization: lowercase, no punctuation, no articles, single spaces."""
    text = text.lower()
    text = "".join(ch for ch in text if ch not in set(string.punctuation) - {"$", "%", "."} or ch == ".")
    text = text.replace(". ", " ").rstrip(".")
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def exact_match(prediction: str, reference: str) -> float:
    return float(normalize_answer(prediction) == normalize_answer(reference))


# A word of any script for ROUGE: a character of a script written without spaces, or a run of letters and digits
_ROUGE_WORD = script_words(r"[\p{L}\p{M}\p{N}]")


class _EveryScriptTokenizer:
    """rouge-score's tokenizer keeps `[a-z0-9]` and drops every other character: a Russian, Greek or Chinese answer
    had no tokens, and the right answer scored 0. ASCII text is tokenized by it as before (lowercased, Porter
    stems); other text into words of any script (`_ROUGE_WORD`), the ASCII ones stemmed as before, a character of
    Chinese, Japanese or Thai one word (as sacrebleu's Chinese tokenizer and the QA filters count them)."""

    def __init__(self) -> None:
        from rouge_score import tokenizers

        self._default = tokenizers.DefaultTokenizer(use_stemmer=True)

    def tokenize(self, text: str) -> list[str]:
        if text.isascii():
            return self._default.tokenize(text)
        tokens: list[str] = []
        for word in _ROUGE_WORD.findall(text.lower()):
            if word.isascii():
                tokens.extend(self._default.tokenize(word))
            else:
                tokens.append(word)
        return tokens


@lru_cache(maxsize=1)
def _rouge_scorer():  # type: ignore[no-untyped-def]
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], tokenizer=_EveryScriptTokenizer())


def _bleu_spaced(text: str) -> str:
    """`text` with a space on each side of every character of Chinese, Japanese or Thai: sacrebleu's default
    tokenizer (13a) splits at spaces and punctuation, so a sentence of Chinese was one token and any difference
    made BLEU 0. Each character a token, as its own Chinese tokenizer does; other text unchanged."""
    return UNSPACED.sub(r" \g<0> ", text)


def rouge(prediction: str, reference: str) -> dict[str, float]:
    scores = _rouge_scorer().score(reference, prediction)
    return {name: round(score.fmeasure, 6) for name, score in scores.items()}


def bleu(prediction: str, reference: str) -> float:
    """Sentence BLEU (sacrebleu, exponential smoothing) scaled to [0, 1]."""
    if not prediction:
        return 0.0
    return round(_sentence_bleu().sentence_score(_bleu_spaced(prediction), [_bleu_spaced(reference)]).score / 100.0, 6)


@lru_cache(maxsize=1)
def _sentence_bleu():  # type: ignore[no-untyped-def]
    from sacrebleu.metrics import BLEU

    return BLEU(effective_order=True)


def corpus_bleu(predictions: Sequence[str], references: Sequence[str]) -> float:
    from sacrebleu.metrics import BLEU

    spaced_predictions = [_bleu_spaced(p) for p in predictions]
    spaced_references = [_bleu_spaced(r) for r in references]
    return round(BLEU().corpus_score(spaced_predictions, [spaced_references]).score / 100.0, 6)


def numeric_match(prediction: str, reference: str, tolerance: float = 0.01) -> float | None:
    """None when the reference has no number (the item does not count for this metric)."""
    wanted = [float(n) for n in DECIMAL.findall(reference)]
    if not wanted:
        return None
    got = [float(n) for n in DECIMAL.findall(prediction)]
    ok = all(any(abs(g - w) <= tolerance * max(abs(w), 1e-9) for g in got) for w in wanted)
    return float(ok)


_PRICE = re.compile(
    r"(?P<symbol>[$€£])\s?(?P<amount>\d+(?:\.\d+)?)"
    r"|(?P<amount2>\d+(?:\.\d+)?)\s?(?P<word>cents?|¢|usd|eur|gbp|dollars?|euros?|pounds?)\b",
    re.IGNORECASE,
)
_PER = re.compile(
    r"^\s*(?:per|/|a|an|each)\s?(kwh|kilowatt[- ]hours?|minutes?|min|sessions?|hours?|hr|months?|charges?)\b", re.I
)
_UNIT_NAMES = {"kilowatt": "kwh", "minute": "minute", "min": "minute", "session": "session", "hour": "hour",
               "hr": "hour", "month": "month", "charge": "session", "kwh": "kwh"}  # fmt: skip


def prices(text: str) -> list[tuple[float, str | None]]:
    """(amount in whole currency units, per-unit or None) for each price in the text: `$0.45 per kWh`,
    `45 cents/kWh`, `0.45 USD a minute`. Cents become fractions; the currency itself is not compared."""
    found = []
    for match in _PRICE.finditer(text):
        amount = float(match.group("amount") or match.group("amount2"))
        word = (match.group("word") or "").lower()
        if word.startswith("cent") or word == "¢":
            amount /= 100
        per = _PER.match(text[match.end() :])
        unit = None
        if per:
            name = per.group(1).lower().replace(" ", "-")
            unit = next((v for k, v in _UNIT_NAMES.items() if name.startswith(k)), name)
        found.append((amount, unit))
    return found


def price_match(prediction: str, reference: str, tolerance: float = 0.01) -> float | None:
    """1 when every price of the reference is in the prediction within `tolerance` (relative), with the same
    per-unit where the reference names one; None when the reference states no price."""
    wanted = prices(reference)
    if not wanted:
        return None
    got = prices(prediction)
    ok = all(
        any(abs(g - w) <= tolerance * max(w, 1e-9) and (unit is None or unit == g_unit) for g, g_unit in got)
        for w, unit in wanted
    )
    return float(ok)


def refusal_correct(prediction: str, item: BenchmarkItem) -> float:
    return float(is_refusal(prediction) == (not item.answerable))


def bertscore_f1(
    predictions: Sequence[str], references: Sequence[str], model_path: str, layer: int, batch_size: int = 64
) -> list[float]:
    """BERTScore F1 with a local model (no baseline rescaling, which would need a Hub download)."""
    if not predictions:
        return []
    from bert_score import score

    _, _, f1 = score(
        list(predictions),
        list(references),
        model_type=model_path,
        num_layers=layer,
        batch_size=batch_size,
        lang="en",
        verbose=False,
        device="cpu",
    )
    return [round(float(v), 6) for v in f1.tolist()]


def bootstrap_ci(
    values: Sequence[float], resamples: int = 1000, confidence: float = 0.95, seed: int = 0
) -> tuple[float, float]:
    """Percentile bootstrap confidence interval of the mean."""
    data = np.asarray(values, dtype=float)
    if len(data) == 0:
        return (float("nan"), float("nan"))
    if len(data) == 1:
        return (float(data[0]), float(data[0]))
    rng = np.random.default_rng(seed)
    means = data[rng.integers(0, len(data), size=(resamples, len(data)))].mean(axis=1)
    alpha = (1 - confidence) / 2
    return (round(float(np.quantile(means, alpha)), 6), round(float(np.quantile(means, 1 - alpha)), 6))
