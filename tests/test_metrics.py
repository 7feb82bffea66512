"""Metrics against hand-checked golden values."""

from __future__ import annotations

import pytest

from llm_pipeline.evaluation import metrics as m
from llm_pipeline.models.embeddings import resolve_model_path
from llm_pipeline.records import BenchmarkItem
from tests.translated_text import translated_messages


def test_exact_match_normalizes_case_punctuation_and_articles() -> None:
    assert m.exact_match("The $0.45 per kWh!", "$0.45 per kWh") == 1.0
    assert m.exact_match("0.45 per kWh", "$0.45 per kWh") == 0.0
    assert m.exact_match("about 7 kW", "7 kW") == 0.0


def test_rouge_golden() -> None:
    # prediction "about $0.45 per kWh" vs reference "$0.45 per kWh in Denver": tokens (rouge-score drops "$")
    # pred [about, 0, 45, per, kwh] ref [0, 45, per, kwh, in, denver]: 4 common, P=4/5, R=4/6, F=8/11.
    scores = m.rouge("about $0.45 per kWh", "$0.45 per kWh in Denver")
    assert scores["rouge1"] == pytest.approx(8 / 11, abs=1e-6)
    assert scores["rougeL"] == pytest.approx(8 / 11, abs=1e-6)
    assert m.rouge("identical answer here", "identical answer here")["rouge2"] == 1.0


def test_bleu_golden() -> None:
    assert m.bleu("the cat sat on the mat", "the cat sat on the mat") == pytest.approx(1.0)
    assert m.bleu("", "the cat") == 0.0
    assert 0.0 < m.bleu("the cat sat on a mat", "the cat sat on the mat") < 1.0
    assert m.corpus_bleu(["a b c d"], ["a b c d"]) == pytest.approx(1.0)


def _reworded(text: str, spaced: bool) -> str:
    """Every seventh word dropped (a language with spaces between words), else every tenth letter."""
    if spaced:
        return " ".join(w for i, w in enumerate(text.split()) if i % 7 != 3)
    letters = [i for i, c in enumerate(text) if c.isalpha()]
    dropped = set(letters[4::10])
    return "".join(c for i, c in enumerate(text) if i not in dropped)


@pytest.mark.parametrize("language", ["zh_CN", "ja", "ru", "th"])
def test_rouge_and_bleu_score_answers_in_every_script(language: str) -> None:
    """rouge-score's tokenizer keeps [a-z0-9] only: the right answer in Russian, Chinese, Japanese or Thai scored
    ROUGE 0 (no tokens on either side), and sacrebleu split a sentence of Chinese at spaces only, one token, so BLEU
    was 0 for any difference. Real translations (tests/translated_text.py) without a Latin letter: the same answer
    scores 1, one with a few words or letters dropped scores between, an answer to something else scores low. (Thai
    is counted a character a word, as sacrebleu's character tokenizer does, so two unrelated Thai texts share many
    of ROUGE-1's unigrams, its letters: ROUGE-2 and ROUGE-L tell them apart.)"""
    messages = [t for t in translated_messages(language, 60) if not any("a" <= c.lower() <= "z" for c in t)]
    reference, other = messages[0], messages[-1]
    near = _reworded(reference, spaced=language == "ru")
    assert m.rouge(reference, reference) == {"rouge1": 1.0, "rouge2": 1.0, "rougeL": 1.0}
    assert 0.6 < m.rouge(near, reference)["rouge1"] < 1.0 and 0.6 < m.rouge(near, reference)["rougeL"] < 1.0
    assert m.rouge(other, reference)["rouge2"] < 0.5 and m.rouge(other, reference)["rougeL"] < 0.5
    assert m.rouge(other, reference)["rouge1"] < m.rouge(near, reference)["rouge1"]
    assert m.bleu(reference, reference) == pytest.approx(1.0)
    assert 0.1 < m.bleu(near, reference) < 1.0 and m.bleu(other, reference) < 0.1
    assert m.bleu(near, reference) > m.bleu(other, reference)
    assert 0.1 < m.corpus_bleu([near, reference], [reference, reference]) < 1.0


def test_numeric_match_with_tolerance() -> None:
    assert m.numeric_match("it costs 0.45 dollars", "$0.45 per kWh") == 1.0
    assert m.numeric_match("it costs 0.454", "$0.45 per kWh") == 1.0  # within 1 %
    assert m.numeric_match("it costs 0.50", "$0.45 per kWh") == 0.0
    assert m.numeric_match("7 to 11 kW", "between 7 and 11 kW") == 1.0
    assert m.numeric_match("7 kW", "between 7 and 11 kW") == 0.0
    assert m.numeric_match("anything", "no numbers here") is None


def item(answerable: bool) -> BenchmarkItem:
    return BenchmarkItem(
        id="i",
        question="q",
        answer="a",
        context="c",
        category="x",
        difficulty="easy",
        answerable=answerable,
        source_document_id="d",
    )


def test_refusal_accuracy() -> None:
    assert m.refusal_correct("The context does not answer this question.", item(False)) == 1.0
    assert m.refusal_correct("$0.45 per kWh", item(False)) == 0.0
    assert m.refusal_correct("$0.45 per kWh", item(True)) == 1.0
    assert m.refusal_correct("I don't know.", item(True)) == 0.0


def test_bootstrap_ci_brackets_the_mean() -> None:
    values = [0, 1] * 50
    low, high = m.bootstrap_ci(values)
    assert low < 0.5 < high and high - low < 0.3
    assert m.bootstrap_ci([1.0, 1.0, 1.0]) == (1.0, 1.0)


def test_bertscore_with_packaged_minilm() -> None:
    path = resolve_model_path("all-MiniLM-L6-v2")
    same, related, unrelated = m.bertscore_f1(
        ["fast charging costs 45 cents", "fast charging is 45 cents", "tomatoes need sun"],
        ["fast charging costs 45 cents"] * 3,
        path,
        layer=4,
    )
    assert same == pytest.approx(1.0, abs=1e-4)
    assert unrelated < related < same


@pytest.mark.parametrize(
    ("prediction", "reference", "expected"),
    [
        ("It costs 45 cents per kWh.", "$0.45 per kWh", 1.0),  # cents are fractions of the unit
        ("0.45 USD per kWh in Denver", "$0.45 per kWh", 1.0),
        ("$0.45/kWh", "$0.45 per kWh", 1.0),
        ("$0.45 per minute", "$0.45 per kWh", 0.0),  # same amount, wrong unit
        ("$0.46 per kWh", "$0.45 per kWh", 0.0),  # 2.2 % off, over the 1 % tolerance
        ("a $1.09 session fee and $0.45 per kWh", "$0.45 per kWh plus $1.09", 1.0),
        ("free", "$0.45 per kWh", 0.0),
        ("anything", "about 60 grams of CO2", None),  # no price: the item does not count
    ],
)
def test_price_accuracy_golden(prediction: str, reference: str, expected: float | None) -> None:
    assert m.price_match(prediction, reference, tolerance=0.01) == expected


def test_prices_parse_units() -> None:
    assert m.prices("Idle fees of $0.58 per minute start later; 30 cents a session.") == [
        (0.58, "minute"),
        (0.3, "session"),
    ]
