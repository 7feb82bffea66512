"""QA generation's shared parts: the extractive backend, parsing, grounding, chunks, filters, policy, prompts."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import regex

from llm_pipeline.config import DataConfig, QAConfig, RetryDelays
from llm_pipeline.errors import (
    DataValidationError,
    ModelLoadError,
    RateLimitedError,
    ResourceExhaustedError,
    ServiceUnavailableError,
)
from llm_pipeline.ingest import load_documents
from llm_pipeline.qa import generate_qa, resolve_backend
from llm_pipeline.qa.chunking import chunk_text
from llm_pipeline.qa.extractive import extractive_pairs, question_for
from llm_pipeline.qa.filters import filter_pairs
from llm_pipeline.qa.generate import require_pairs
from llm_pipeline.qa.grounding import grounding_score
from llm_pipeline.qa.prompts import PACKAGED_DIR, load_prompts
from llm_pipeline.qa.schema import OutputFormatError, parse_pairs
from llm_pipeline.records import Document, QAPair
from llm_pipeline.retries import RETRY_TABLE, rule_for
from llm_pipeline.text import split_sentences
from tests.translated_text import SCRIPTS, translated_messages

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(
    ("sentence", "question", "answer"),
    [
        (
            "DC fast charging on VoltWay costs $0.45 per kWh in Denver.",
            "How much does DC fast charging on VoltWay cost?",
            "$0.45 per kWh in Denver",
        ),
        (
            "Level 2 chargers deliver between 7 and 11 kW on a 240-volt circuit.",
            "What do level 2 chargers deliver?",
            "between 7 and 11 kW on a 240-volt circuit",
        ),
        (
            "Cold weather can reduce the charging rate by up to 30 percent.",
            "What can cold weather reduce?",
            "the charging rate by up to 30 percent",
        ),
    ],
)
def test_question_patterns(sentence: str, question: str, answer: str) -> None:
    assert question_for(sentence) == (question, answer)


@pytest.mark.parametrize(
    "sentence",
    [
        "A session fee of $1.09 is added to every charge.",  # passive: no sensible question
        "Over its lifetime an electric car emits less.",  # adverbial opener
        "Hello.",
    ],
)
def test_no_question_when_no_pattern_fits(sentence: str) -> None:
    assert question_for(sentence) is None


def test_sentence_split_keeps_prices() -> None:
    assert split_sentences("It costs $0.45 per kWh. Then $1.20 more. Done") == [
        "It costs $0.45 per kWh.",
        "Then $1.20 more.",
        "Done",
    ]


def test_a_blank_line_ends_a_sentence_and_a_hard_wrapped_one_is_one_line() -> None:
    """Texts keep their lines: a heading has no full stop and ran into the next sentence (an extractive answer
    began `# Depot tariffs Depot 0 has...`); a sentence wrapped at 72 columns is one answer, on one line."""
    text = "# Depot tariffs\n\nThe night rate is\n$0.12 per kWh. Day rates\n  differ.\n\n"
    text += "| Model | Power |\n| Pro | 22 kW |"
    assert split_sentences(text) == [
        "# Depot tariffs",
        "The night rate is $0.12 per kWh.",
        "Day rates differ.",
        "| Model | Power | | Pro | 22 kW |",
    ]
    answers = [answer for _, answer, _ in extractive_pairs(Document(id="d", text=text), n=5)]
    assert answers and not any("\n" in a or a.startswith("#") for a in answers), answers


def test_no_question_is_asked_of_code_or_of_a_rule_line() -> None:
    """A document keeps its code blocks, and the extractive backend read their lines as sentences: 149 of its 597
    pairs on a folder of real docs (Node.js's, the Rust book, Valgrind's) were code, `What is // This?` answered by
    `a truncated version of the buffer ... const buffer = Buffer.from('eJzT0yMA', 'base64')`, or a README's rule,
    `What do requirements ------------ - You need?`. Now a sentence with code in it asks nothing; prose does."""
    text = (
        "// This is a truncated version of the buffer\nconst buffer = Buffer.from('eJzT0yMA', 'base64');\n\n"
        "function rate(kw) { return kw * 0.45 }\n\n"
        "Requirements\n------------\n- You need GCC 3.4 or later to compile the s390 port.\n\n"
        "The `gzip` helper is a wrapper.\n\n"
        "A fast charger costs $0.45 per kWh."
    )
    pairs = extractive_pairs(Document(id="d", text=text), n=10)
    # before: also `What is // This?`, `What do requirements ------------ - You need?` and `What is the `gzip` helper?`
    assert [(q, a) for q, a, _ in pairs] == [("How much does a fast charger cost?", "$0.45 per kWh")]
    assert question_for("// This is a truncated version of the buffer") is None
    assert question_for("Requirements ------------ - You need GCC 3.4 or later.") is None
    assert question_for("The module is a wrapper around zlib.") == ("What is the module?", "a wrapper around zlib")


def test_pairs_per_document_answers_are_spans_and_metadata_is_complete() -> None:
    documents = load_documents(DataConfig(path=ROOT / "data" / "ev_charging" / "documents.jsonl", limit=60)).documents
    result = generate_qa(documents, QAConfig(questions_per_doc=3))
    by_doc = {d.id: d for d in documents}
    per_doc: dict[str, int] = {}
    for pair in result.pairs:
        per_doc[pair.document_id] = per_doc.get(pair.document_id, 0) + 1
        assert pair.answer in by_doc[pair.document_id].text  # grounded: a span of the source
        meta = pair.metadata
        assert {
            "document_id",
            "chunk",
            "category",
            "backend",
            "model",
            "prompt_version",
            "latency_s",
            "timestamp",
        } <= set(meta)
        assert meta["answer_start"] == by_doc[pair.document_id].text.find(pair.answer) >= 0
    assert max(per_doc.values()) == 3
    assert len(per_doc) + len(result.documents_without_pairs) == len(documents)
    assert len({p.id for p in result.pairs}) == len(result.pairs)


def test_include_metadata_off_leaves_metadata_empty() -> None:
    pairs = generate_qa(
        [Document(id="d", text="Level 2 chargers deliver 7 kW at home.")], QAConfig(include_metadata=False)
    ).pairs
    assert pairs and all(p.metadata == {} for p in pairs)


def test_auto_backend_is_extractive_without_key_or_model() -> None:
    assert resolve_backend(QAConfig(), api_key=None) == "extractive"


# Parsing, grounding, chunking, filters, policy, prompts, config: the parts the backends share -----------------
@pytest.mark.parametrize(
    "reply",
    [
        '{"pairs": [{"question": "What is CCS?", "answer": "A charging standard"}]}',
        'Sure!\n```json\n{"pairs": [{"question": "What is CCS?", "answer": "A charging standard"}]}\n```',
        '[{"question": "What is CCS?", "answer": "A charging standard"}]',
        '{"pairs": [{"question": "What is CCS?", "answer": "A charging standard",},]} Hope this helps.',
    ],
)
def test_tolerant_parsing(reply: str) -> None:
    (pair,) = parse_pairs(reply, expected=3)
    assert (pair.question, pair.answer) == ("What is CCS?", "A charging standard")


@pytest.mark.parametrize(
    ("reply", "problem"),
    [
        ("", "empty"),
        ("I cannot help with that.", "no JSON object"),
        ('{"questions": []}', '"pairs" list'),
        ('{"pairs": [{"question": "Q?"}]}', "pairs.0.answer: Field required"),
    ],
)
def test_invalid_replies_say_what_to_fix(reply: str, problem: str) -> None:
    with pytest.raises(OutputFormatError, match=re.escape(problem)):
        parse_pairs(reply, expected=2)


def test_grounding() -> None:
    source = "DC fast charging on VoltWay costs $0.45 per kWh in Denver, plus a $1 session fee."
    assert grounding_score("$0.45 per kWh in Denver", source) == 1.0
    assert grounding_score("VoltWay charges $0.45 per kWh in Denver", source) >= 0.8  # reworded, supported
    assert grounding_score("$0.55 per kWh in Denver", source) == 0.0  # a number the source does not state
    assert grounding_score("Free charging on weekends", source) < 0.5


def test_chunks_overlap_and_cover_every_word() -> None:
    words = [f"w{i}" for i in range(1000)]
    chunks = chunk_text(" ".join(words), size=300, overlap=50)
    assert [c.index for c in chunks] == list(range(len(chunks))) and all(c.count == len(chunks) for c in chunks)
    assert all(len(c.text.split()) == 300 for c in chunks)
    covered = [w for c in chunks for w in c.text.split()]
    assert set(covered) == set(words) and chunks[-1].text.split()[-1] == "w999"
    first, second = chunks[0].text.split(), chunks[1].text.split()
    assert first[-50:] == second[:50]  # the overlap
    assert chunk_text("short text", size=300, overlap=50)[0].text == "short text"


def test_a_chunk_is_a_stretch_of_the_text_as_written_lines_and_indentation_kept() -> None:
    """A chunk was its words joined by single spaces: a code block in a manual reached the model on one line."""
    block = "def rate(kw):\n    if kw > 22:\n        return kw * 0.45\n    return kw * 0.30"
    text = "\n\n".join([*(f"Paragraph {i} on depot charging and its tariffs." for i in range(40)), block])
    chunks = chunk_text(text, size=60, overlap=10)
    assert len(chunks) >= 4 and block in chunks[-1].text
    for chunk in chunks:  # each chunk is text[start:end], starting at a word and ending at one
        assert text[chunk.start : chunk.end] == chunk.text and chunk.text == chunk.text.strip()
        assert len(chunk.text.split()) == 60
    assert chunks[0].text.startswith("Paragraph 0 on depot charging and its tariffs.\n\nParagraph 1")


@pytest.mark.parametrize("language", ["zh_CN", "ja", "th"])
def test_chunks_of_text_written_without_spaces_are_bounded_and_cover_it(language: str) -> None:
    """Chinese, Japanese and Thai put no spaces between words: split on whitespace, pages of them were a few dozen
    "words", one chunk however long (a model with a small context refuses it, and questions_per_doc all came from
    it). Real translations (tests/translated_text.py), a dozen joined: chunks of at most `size` characters of the
    script, stretches of the text as written, each starting inside the one before, first to last."""
    text = " ".join(translated_messages(language, 200)[:12])
    script = regex.compile(SCRIPTS[language])
    chunks = chunk_text(text, size=300, overlap=50)
    assert len(chunks) >= 3, [len(c.text) for c in chunks]
    assert all(len(script.findall(c.text)) <= 300 for c in chunks)
    starts = [text.index(c.text) for c in chunks]  # each is a stretch of the text as written
    assert starts[0] == 0 and starts[-1] + len(chunks[-1].text) == len(text)
    assert all(a < b < a + len(chunk.text) for a, b, chunk in zip(starts, starts[1:], chunks, strict=False))
    assert chunk_text(text[:100], size=300, overlap=50)[0].text == text[:100]  # one that fits, unchanged


def _reworded(text: str, script: regex.Pattern[str]) -> str:
    """`text` with every 10th character of its script dropped (every 7th word where words are spaced): what a
    model's answer from its source is like, nearly all of it, not a verbatim span."""
    if script.pattern == SCRIPTS["ru"]:
        return " ".join(w for i, w in enumerate(text.split()) if i % 7 != 3)
    seen = 0
    kept = []
    for character in text:
        if script.fullmatch(character):
            seen += 1
            if seen % 10 == 5:
                continue
        kept.append(character)
    return "".join(kept)


@pytest.mark.parametrize("language", ["zh_CN", "ja", "ru", "th"])
def test_filters_keep_grounded_answers_in_every_script_and_drop_unsupported_ones(language: str) -> None:
    """The quality filters read words as English has them: a Chinese question was one word (too short), and an
    answer in Cyrillic or Thai had no content words (`[a-z0-9]+`), so nothing but a verbatim span was grounded. Real
    translations (tests/translated_text.py): for each, a question from its opening, an answer reworded from it (kept)
    and an answer taken from another message (dropped, ungrounded)."""
    script = regex.compile(SCRIPTS[language])
    # messages without a Latin letter: the old `[a-z0-9]+` found words only in their Latin parts (`ID`, `AppStream`)
    messages = [m for m in translated_messages(language, 60) if not re.search("[A-Za-z]", m)]
    sources = list({m[:6]: m for m in reversed(messages[:-10])}.values())[-10:]  # no two questions alike
    elsewhere = messages[-10:]
    assert len(sources) == 10 and not set(sources) & set(elsewhere)
    pairs, source_of = [], {}
    for i, source in enumerate(sources):
        question = " ".join(source.split()[:8]) + "?" if language == "ru" else source[:14] + "？"
        for kind, answer in (("grounded", _reworded(source, script)), ("unsupported", elsewhere[i])):
            pair = QAPair(id=f"{kind}-{i}", question=question, answer=answer, document_id=f"d{i}")
            pairs.append(pair)
            source_of[pair.id] = source
    result = filter_pairs(pairs, source_of, QAConfig())
    assert sorted(p.id for p in result.kept) == sorted(f"grounded-{i}" for i in range(10)), result.dropped[:3]
    assert {d["id"]: d["reason"] for d in result.dropped} == {f"unsupported-{i}": "ungrounded" for i in range(10)}


def test_the_offline_backend_on_chinese_documents_fails_saying_it_asks_of_english(tmp_path: Path) -> None:
    """`llm-pipeline run` on a folder of Chinese documents with the offline backend (configs/test.yaml's) ended
    with "0 QA pairs from backend extractive" and no why: its question patterns are English ones. Now the error
    says so and what to set."""
    docs = [Document(id=f"d{i}", text=t) for i, t in enumerate(translated_messages("zh_CN", 100)[:6])]
    config = QAConfig(backend="extractive")
    result = generate_qa(docs, config, checkpoint_dir=tmp_path, domain="ev_charging")
    assert result.pairs == []
    with pytest.raises(DataValidationError, match=r"qa.min_pairs: 0 QA pairs from backend extractive") as failed:
        require_pairs(result, len(docs), config, tmp_path / "rejects.jsonl")
    assert "only of English sentences" in str(failed.value) and "set qa.backend to openai or local" in str(failed.value)


def test_filters_count_each_reason() -> None:
    source = "Level 2 chargers deliver 7 kW at home. DC fast chargers deliver 150 kW on highways."

    def pair(i: int, question: str, answer: str) -> QAPair:
        return QAPair(id=f"p{i}", question=question, answer=answer, document_id="d")

    pairs = [
        pair(0, "What do level 2 chargers deliver at home?", "7 kW at home"),
        pair(1, "What do level 2 chargers deliver at home?", "7 kW at home"),  # duplicate question
        pair(2, "Why?", "Because of physics and cables"),  # too short
        pair(3, "What is the charger's warranty period?", "Not stated in the document."),  # unanswerable
        pair(4, "How fast do DC chargers charge on highways?", "350 kW on highways"),  # ungrounded number
        pair(5, "What do DC fast chargers deliver on highways?", "150 kW on highways"),
        pair(6, "What do DC fast chargers deliver on highways at 50 kW?", "150 kW on highways"),  # a new number
    ]
    result = filter_pairs(pairs, {p.id: source for p in pairs}, QAConfig())
    assert [p.id for p in result.kept] == ["p0", "p5", "p6"]
    assert result.reasons == {"duplicate_question": 1, "too_short": 1, "unanswerable": 1, "ungrounded": 1}
    assert next(d for d in result.dropped if d["id"] == "p1")["duplicate_of"] == "p0"


def test_retry_table_matches_the_spec() -> None:
    table = RETRY_TABLE
    tries = {cls.__name__: rule.tries for cls, rule in table.items()}
    assert tries == {
        "RateLimitedError": 5,
        "ServiceUnavailableError": 3,
        "TransientError": 3,
        "ModelLoadError": 2,
        "ResourceExhaustedError": 2,
        "DataValidationError": 1,
        "ConfigError": 1,
        "RunTimedOut": 1,  # past execution.run_timeout: a stalled stage stalls again
    }
    delays = RetryDelays(timeout_step_s=2.0, oom_delay_s=30.0)
    rate = table[RateLimitedError]
    assert rate.delay(1, RateLimitedError("429", retry_after=7.0), delays) >= 7.0  # Retry-After is a floor
    assert rate.delay(4, RateLimitedError("429"), delays) > rate.delay(1, RateLimitedError("429"), delays) - 1
    assert [table[ServiceUnavailableError].delay(k, Exception(), delays) for k in (1, 2)] == [2.0, 4.0]  # linear
    assert table[ModelLoadError].delay(1, Exception(), delays) == 0.0
    assert table[ResourceExhaustedError].delay(1, Exception(), delays) == 30
    assert rule_for(ValueError("a bug")) is None  # outside the hierarchy: never retried
    assert rule_for(OutputFormatError("bad JSON")).label == "data_validation"  # inside it now


def test_prompt_override_gets_its_own_version(tmp_path: Path) -> None:
    for name in ("system.j2", "user.j2"):
        (tmp_path / name).write_text((PACKAGED_DIR / name).read_text() + "\nBe brief.")
    custom = load_prompts(tmp_path)
    assert load_prompts().version == "qa-v1" and custom.version.startswith("custom-")
    messages = custom.messages(
        text="Some text.", n=2, domain="ev_charging", category="pricing", chunk_index=0, chunk_count=1
    )
    assert messages[0]["content"].endswith("Be brief.") and "exactly 2" in messages[1]["content"]
    assert QAConfig(prompt_dir=tmp_path).prompt_dir == tmp_path
    with pytest.raises(ValueError, match="lacks system.j2"):
        QAConfig(prompt_dir=tmp_path / "missing")


def test_backend_config_errors_name_the_field(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from llm_pipeline.config import load_config
    from llm_pipeline.errors import ConfigError

    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.chdir(tmp_path)  # no .env here
    config = ROOT / "configs" / "test.yaml"
    with pytest.raises(ConfigError, match="qa.backend: openai needs OPENAI_API_KEY"):
        load_config(
            config, {"qa": {"backend": "openai"}, "data": {"path": str(ROOT / "data/ev_charging/documents.jsonl")}}
        )
    with pytest.raises(ConfigError, match="backend: local needs model_name"):
        load_config(
            config, {"qa": {"backend": "local"}, "data": {"path": str(ROOT / "data/ev_charging/documents.jsonl")}}
        )
    assert resolve_backend(QAConfig(base_url="http://localhost:8000/v1"), api_key=None) == "openai"
    assert resolve_backend(QAConfig(model_name="./my-model"), api_key=None) == "local"
    assert resolve_backend(QAConfig(), api_key="sk-x") == "openai"
