"""The benchmark: stratified by category and difficulty, adversarial variants that mean what they say."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from llm_pipeline.benchmark import build_benchmark, classify_documents, contaminated, difficulty_of
from llm_pipeline.config import BenchmarkConfig, DataConfig, QAConfig
from llm_pipeline.ingest import load_documents
from llm_pipeline.qa import generate_qa
from llm_pipeline.records import Document, QAPair
from llm_pipeline.text import REFUSAL, split_sentences
from tests.translated_text import translated_messages

ROOT = Path(__file__).resolve().parents[1]
CATEGORIES = ["pricing", "technical", "compatibility", "environmental"]


@pytest.fixture(scope="module")
def corpus():
    documents = load_documents(DataConfig(path=ROOT / "data" / "ev_charging" / "documents.jsonl")).documents
    return documents, generate_qa(documents, QAConfig(questions_per_doc=3)).pairs


def test_difficulty_heuristic() -> None:
    context = "Level 2 chargers deliver power. DC fast charging costs $0.45 per kWh, and $1 per session."
    assert difficulty_of("What do level 2 chargers deliver?", "power", context) == "easy"
    assert difficulty_of("How much does DC fast charging cost?", "$0.45 per kWh, and $1 per session", context) == "hard"


def test_stratified_over_categories_and_difficulties(corpus) -> None:
    documents, pairs = corpus
    config = BenchmarkConfig(size=60, categories=CATEGORIES, include_adversarial=False)
    result = build_benchmark(pairs, documents, config, "ev")
    assert len(result.items) == 60
    cells = Counter((i.category, i.difficulty) for i in result.items)
    assert {c for c, _ in cells} == set(CATEGORIES)
    by_id = {d.id: d for d in documents}
    pool = Counter(  # what the builder samples from: the pairs that passed the contamination check
        (by_id[p.document_id].category, difficulty_of(p.question, p.answer, by_id[p.document_id].text))
        for p in pairs
        if p.id not in result.contaminated
    )
    largest = max(cells.values())
    for cell, n in cells.items():  # round-robin: balanced, except a cell that ran out of candidates
        assert n >= largest - 1 or n == pool[cell], (cell, n, pool[cell])
    assert all(i.adversarial is None for i in result.items)


def test_adversarial_variants(corpus) -> None:
    documents, pairs = corpus
    config = BenchmarkConfig(size=80, categories=CATEGORIES, adversarial_fraction=0.4)
    result = build_benchmark(pairs, documents, config, "ev")
    by_id = {i.id: i for i in result.items}
    kinds = Counter(i.adversarial for i in result.items if i.adversarial)
    assert set(kinds) == {"unanswerable", "distractor", "typo", "numeric", "negated", "paraphrase"}
    for item in result.items:
        if item.adversarial is None:
            continue
        original = by_id[item.original_id]
        if item.adversarial == "unanswerable":
            assert item.answer == REFUSAL and not item.answerable and original.answer not in item.context
        elif item.adversarial == "distractor":
            assert original.answer in item.context and len(item.context) > len(original.context)
        elif item.adversarial == "typo":
            assert item.question != original.question and item.answer == original.answer
        elif item.adversarial == "numeric":
            assert item.answer != original.answer and item.answer in item.context
        elif item.adversarial == "negated":
            assert " not " in item.question and item.answer == REFUSAL and not item.answerable
            assert item.context == original.context
        elif item.adversarial == "paraphrase":
            assert item.question != original.question and item.answer == original.answer
    assert "| pricing |" in result.card and "unanswerable" in result.card


def test_same_seed_same_benchmark(corpus) -> None:
    documents, pairs = corpus
    config = BenchmarkConfig(size=30, categories=CATEGORIES)
    first = build_benchmark(pairs, documents, config, "ev").items
    second = build_benchmark(pairs, documents, config, "ev").items
    assert [i.id for i in first] == [i.id for i in second]


def test_unknown_categories_go_to_other(corpus) -> None:
    documents, pairs = corpus
    result = build_benchmark(pairs, documents, BenchmarkConfig(size=20, categories=["pricing"]), "ev")
    assert {i.category for i in result.items} <= {"pricing", "other"}


def test_categories_from_metadata_keywords_then_descriptions() -> None:
    config = BenchmarkConfig(
        categories=["pricing", "technical", "environmental"],
        category_keywords={"pricing": ["price", "per kwh", "fee"]},
        category_descriptions={
            "technical": "Charging hardware, connectors, power levels in kilowatts, voltage and charging speed.",
            "environmental": "Carbon emissions, pollution, recycling and the climate impact of electric cars.",
        },
    )
    docs = [
        Document(id="meta", text="Anything at all.", metadata={"category": "technical"}),
        Document(id="kw", text="The session fee is $1 and energy costs $0.40 per kWh."),
        Document(id="emb", text="Driving electric cuts carbon dioxide emissions and air pollution in cities."),
        Document(id="none", text="The museum opens at nine on Sundays and sells postcards."),
    ]
    assert classify_documents(docs, config) == {
        "meta": "technical",
        "kw": "pricing",
        "emb": "environmental",
        "none": "other",
    }
    chinese = BenchmarkConfig(  # keywords of a language without spaces between words: found inside the text's runs
        categories=["pricing", "technical"], category_keywords={"pricing": ["费用", "价格"], "technical": ["千瓦"]}
    )
    docs = [
        Document(id="fee", text="快速充电站的服务费用为每次一元。"),
        Document(id="power", text="直流快充桩的功率可达一百五十千瓦。"),
        Document(id="museum", text="博物馆周日九点开门。"),
    ]
    assert classify_documents(docs, chinese) == {"fee": "pricing", "power": "technical", "museum": "other"}


def test_contamination_and_sentences_in_chinese_and_japanese() -> None:
    """Chinese and Japanese put no spaces between words: the contamination check's 8-word n-grams found none in a
    question or answer of one "word", so a benchmark item whose answer was also a training pair's went unflagged, and
    sentences were not split at 。 (the adversarial distractor and the baselines work on sentences). Real
    translations (tests/translated_text.py)."""
    for language in ("zh_CN", "ja"):
        messages = [m for m in translated_messages(language, 40) if " " not in m and "。" in m[:-1]]  # unspaced
        shared, own = messages[0], messages[1:4]
        pairs = [
            QAPair(id="a", question=own[0][:20] + "？", answer=shared, document_id="d1"),
            QAPair(id="b", question=own[1][:20] + "？", answer=shared, document_id="d2"),  # the same answer
            QAPair(id="c", question=own[2][:20] + "？", answer=own[2], document_id="d3"),
        ]
        assert contaminated(pairs, n=8, threshold=0.5) == {"a": 1.0, "b": 1.0}, language
        sentences = split_sentences(shared)
        assert len(sentences) >= 2 and "".join(sentences).replace(" ", "") == shared.replace(" ", "")  # none lost
        assert all(s.endswith(("。", "！", "？", "」", "』", "）", "”")) for s in sentences[:-1]), sentences


def test_contamination_flags_overlap_with_other_pairs_only() -> None:
    long_answer = "the charger delivers up to 350 kW to vehicles with an 800 volt battery"
    pairs = [
        QAPair(id="a", question="What does the highway charger deliver?", answer=long_answer, document_id="d1"),
        QAPair(id="b", question="What does the new depot charger deliver?", answer=long_answer, document_id="d2"),
        QAPair(id="c", question="How much is the fee?", answer="$1 per session", document_id="d3"),
        QAPair(id="d", question="How much is the idle fee?", answer="$1 per session", document_id="d4"),  # short
        QAPair(
            id="e",
            question="What do home chargers need?",
            answer="a dedicated 240 volt circuit and a permit from the city",
            document_id="d5",
        ),
    ]
    assert contaminated(pairs, n=8, threshold=0.5) == {"a": 1.0, "b": 1.0}


def test_contaminated_items_are_dropped_and_train_pairs_hold_out_the_benchmark(corpus) -> None:
    documents, pairs = corpus
    result = build_benchmark(pairs, documents, BenchmarkConfig(size=40, categories=CATEGORIES), "ev")
    originals = {i.id.removeprefix("bench-") for i in result.items if i.adversarial is None}
    assert not originals & set(result.contaminated)
    assert not originals & {p.id for p in result.train_pairs}
    assert len(result.train_pairs) == len(pairs) - len(originals)
    assert f"{len(result.contaminated)} candidate items dropped" in result.card
    assert all(i.version == "1.1" for i in result.items)
