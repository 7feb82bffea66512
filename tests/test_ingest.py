"""Loading: five formats, normalization, and the quarantine of every kind of bad record."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from llm_pipeline.config import DataConfig
from llm_pipeline.errors import DataValidationError
from llm_pipeline.ingest import load_documents, normalize_text, require_documents

GOOD = [
    {"id": "a", "text": "Level 2 chargers deliver 7 kW.", "metadata": {"category": "technical"}},
    {"id": "b", "text": "Fast charging costs $0.45 per kWh.", "metadata": {"category": "pricing"}},
]


def load(path: Path, **kwargs: object):
    return load_documents(DataConfig(path=path, **kwargs))


def test_jsonl(tmp_path: Path) -> None:
    path = tmp_path / "d.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in GOOD) + "\n")
    result = load(path)
    assert [d.id for d in result.documents] == ["a", "b"]
    assert result.documents[0].category == "technical"


def test_json_list_and_documents_key(tmp_path: Path) -> None:
    for payload in (GOOD, {"documents": GOOD}):
        path = tmp_path / "d.json"
        path.write_text(json.dumps(payload))
        assert [d.id for d in load(path).documents] == ["a", "b"]


def test_csv_extra_columns_become_metadata(tmp_path: Path) -> None:
    path = tmp_path / "d.csv"
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["id", "text", "category"])
        writer.writeheader()
        for r in GOOD:
            writer.writerow({"id": r["id"], "text": r["text"], "category": r["metadata"]["category"]})
    docs = load(path).documents
    assert docs[1].metadata == {"category": "pricing"}


def test_parquet_streams_in_batches(tmp_path: Path) -> None:
    rows = [{"id": f"d{i}", "text": f"document number {i}", "metadata": json.dumps({"n": i})} for i in range(2500)]
    path = tmp_path / "d.parquet"
    pq.write_table(pa.Table.from_pylist(rows), path, row_group_size=500)
    docs = load(path).documents
    assert len(docs) == 2500 and docs[-1].metadata == {"n": 2499}


def test_folder_of_text_and_markdown(tmp_path: Path) -> None:
    (tmp_path / "pricing").mkdir()
    (tmp_path / "pricing" / "rates.md").write_text("# Rates\nFast charging costs $0.45 per kWh.")
    (tmp_path / "notes.txt").write_text("Plain   text\twith  spaces.")
    (tmp_path / "ignored.bin").write_bytes(b"\x00\x01")
    docs = {d.id: d for d in load(tmp_path).documents}
    assert set(docs) == {"pricing/rates", "notes"}
    assert docs["pricing/rates"].metadata["category"] == "pricing"
    assert docs["pricing/rates"].metadata["title"] == "Rates"
    assert docs["notes"].text == "Plain text with spaces."


def test_normalization_nfkc_and_whitespace_keeps_the_lines() -> None:
    """NFKC, spaces between words collapsed, and the text's lines kept: a code block keeps its indentation, a table
    its rows; every kind of line break is a line feed; blank lines in a row are one paragraph break."""
    assert normalize_text("ﬁve\u00a0kW  per\t\tport\n\n\n\n  ＤＣ  \n") == "five kW per port\n\n  DC"
    code = "Example:\r\n\r\n    def rate(kw):\r\n        return  kw * 0.3\r\n"
    assert normalize_text(code) == "Example:\n\n    def rate(kw):\n        return kw * 0.3"
    assert normalize_text("page one\x0cpage two\u2028three\rfour\x85five") == "page one\npage two\nthree\nfour\nfive"
    assert normalize_text("  \n \t \n  indented first line\n") == "indented first line"
    assert normalize_text("  \n \t \n  indented first line\n", keep_indent=True) == "  indented first line"
    for text in (code, "a \n \n \n b", "x\r\r\ry", "\u3000lead\u00a0\u00a0 trail \t"):
        assert normalize_text(normalize_text(text)) == normalize_text(text)  # once is enough


def test_every_kind_of_bad_record_is_quarantined_and_good_ones_go_on(tmp_path: Path) -> None:
    lines = [
        json.dumps(GOOD[0]).encode(),
        b'{"id": "broken", "text": "unterminated',  # invalid JSON
        json.dumps({"id": "blank", "text": "  \t "}).encode(),  # empty text
        json.dumps({"id": "none", "metadata": {}}).encode(),  # missing text
        json.dumps({"id": "int", "text": 42}).encode(),  # wrong type
        json.dumps({"id": "meta", "text": "ok", "metadata": [1]}).encode(),  # wrong metadata type
        b'{"id": "latin1", "text": "caf\xe9"}',  # not UTF-8
        json.dumps({"id": "long", "text": "x" * 500}).encode(),  # over max_chars
        json.dumps({"id": "a", "text": "same id again"}).encode(),  # duplicate id
        b"[1, 2, 3]",  # not an object
        json.dumps(GOOD[1]).encode(),
    ]
    path = tmp_path / "d.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    result = load(path, max_chars=100)
    assert [d.id for d in result.documents] == ["a", "b"]
    reasons = {r.reason.split(":")[0] for r in result.rejects}
    assert reasons == {
        "invalid_json",
        "empty_text",
        "missing_text",
        "wrong_type",
        "not_utf8",
        "too_long",
        "duplicate_id",
    }
    assert len(result.rejects) == 9
    by_line = {r.location: r for r in result.rejects}
    assert by_line["line 2"].reason.startswith("invalid_json")
    assert by_line["line 9"].record_id == "a"
    assert all(r.source == str(path) for r in result.rejects)
    assert result.counts()["rejected"] == 9


def test_unreadable_file_fails_clearly(tmp_path: Path) -> None:
    """Skipped with its reason by default (then too few documents fails the stage, naming it); `fail` at once."""
    path = tmp_path / "d.parquet"
    path.write_bytes(b"this is not parquet")
    with pytest.raises(DataValidationError, match="data.min_documents: 0 documents.*not a readable Parquet file"):
        require_documents(load(path), DataConfig(path=path))
    with pytest.raises(DataValidationError, match="not a readable Parquet file.*on_bad_file: fail"):
        load(path, on_bad_file="fail")
    bad_json = tmp_path / "d.json"
    bad_json.write_text("{not json")
    with pytest.raises(DataValidationError, match="d.json: not valid JSON"):
        load(bad_json, on_bad_file="fail")


def test_sample_corpus_quarantines_its_planted_bad_records() -> None:
    root = Path(__file__).resolve().parents[1]
    result = load(root / "data" / "ev_charging" / "documents.jsonl")
    assert len(result.documents) >= 300
    assert len(result.rejects) == 6
    categories = {d.category for d in result.documents}
    assert {"pricing", "technical", "compatibility", "environmental"} <= categories


def test_limit_stops_after_n_good_records(tmp_path: Path) -> None:
    path = tmp_path / "d.jsonl"
    path.write_text("\n".join(json.dumps({"id": str(i), "text": f"t {i}"}) for i in range(50)))
    assert len(load(path, limit=10).documents) == 10
