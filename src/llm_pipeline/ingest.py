"""Load documents from JSON, JSONL, CSV, Parquet or a folder of .txt/.md files; quarantine bad records.

Every reader is a generator of (location, raw record) so JSONL and Parquet are never held whole. Each raw
record is checked (id, text, metadata, length, duplicate id), its text normalized (Unicode NFKC, whitespace),
and either kept as a `Document` or sent to the rejects with its source location and reason.
A file that cannot be read at all raises DataValidationError: no retry will fix it.
"""

from __future__ import annotations

import csv
import hashlib
import json
import re
import unicodedata
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llm_pipeline.config import DataConfig
from llm_pipeline.errors import DataValidationError
from llm_pipeline.logging import get_logger
from llm_pipeline.records import Document, Reject

log = get_logger("ingest")

TEXT_SUFFIXES = {".txt", ".md"}
_WHITESPACE = re.compile(r"\s+")


class BadRecord(Exception):
    """A record that cannot be used; carries the reason for the quarantine."""


@dataclass
class IngestResult:
    documents: list[Document] = field(default_factory=list)
    rejects: list[Reject] = field(default_factory=list)
    records_seen: int = 0

    def counts(self) -> dict[str, int]:
        reasons: dict[str, int] = {}
        for reject in self.rejects:
            key = reject.reason.split(":")[0]
            reasons[key] = reasons.get(key, 0) + 1
        return {
            "records_seen": self.records_seen,
            "documents": len(self.documents),
            "rejected": len(self.rejects),
            **{f"rejected.{k}": v for k, v in sorted(reasons.items())},
        }


def normalize_text(text: str) -> str:
    """NFKC (full-width forms, ligatures, non-breaking spaces) and collapsed whitespace."""
    return _WHITESPACE.sub(" ", unicodedata.normalize("NFKC", text)).strip()


def detect_format(path: Path) -> str:
    if path.is_dir():
        return "folder"
    suffix = path.suffix.lower()
    formats = {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "json", ".csv": "csv", ".parquet": "parquet"}
    if suffix not in formats:
        raise DataValidationError(f"data.path: cannot tell the format of {path} (use data.format)")
    return formats[suffix]


RawItem = tuple[str, dict[str, Any] | BadRecord, str | None]  # location, record or why not, raw text


def _read_jsonl(path: Path) -> Iterator[RawItem]:
    with path.open("rb") as handle:
        for number, raw_line in enumerate(handle, start=1):
            location = f"line {number}"
            if not raw_line.strip():
                continue
            try:
                line = raw_line.decode("utf-8")
            except UnicodeDecodeError as exc:
                yield location, BadRecord(f"not_utf8: {exc.reason} at byte {exc.start}"), repr(raw_line[:200])
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                yield location, BadRecord(f"invalid_json: {exc.msg} (column {exc.colno})"), line[:200]
                continue
            if not isinstance(record, dict):
                yield location, BadRecord(f"wrong_type: expected an object, got {type(record).__name__}"), line[:200]
                continue
            yield location, record, None


def _read_json(path: Path) -> Iterator[RawItem]:
    try:
        payload = json.loads(path.read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataValidationError(f"data.path: {path} is not valid UTF-8 JSON: {exc}") from exc
    if isinstance(payload, dict) and isinstance(payload.get("documents"), list):
        payload = payload["documents"]
    if not isinstance(payload, list):
        raise DataValidationError(f"data.path: {path} must hold a list of records or {{'documents': [...]}}")
    for index, record in enumerate(payload):
        if isinstance(record, dict):
            yield f"item {index}", record, None
        else:
            yield (
                f"item {index}",
                BadRecord(f"wrong_type: expected an object, got {type(record).__name__}"),
                str(record)[:200],
            )


def _read_csv(path: Path) -> Iterator[RawItem]:
    with path.open(encoding="utf-8", newline="") as handle:
        reader = csv.DictReader(handle)
        if not reader.fieldnames or "text" not in reader.fieldnames:
            raise DataValidationError(f"data.path: {path} needs a 'text' column, has {reader.fieldnames}")
        for number, row in enumerate(reader, start=2):  # row 1 is the header
            record: dict[str, Any] = {"id": row.pop("id", None) or None, "text": row.pop("text")}
            metadata = row.pop("metadata", None)
            if metadata:
                try:
                    record["metadata"] = json.loads(metadata)
                except json.JSONDecodeError:
                    yield f"row {number}", BadRecord("invalid_json: metadata column"), metadata[:200]
                    continue
            else:
                record["metadata"] = {k: v for k, v in row.items() if k and v not in (None, "")}
            yield f"row {number}", record, None


def _read_parquet(path: Path) -> Iterator[RawItem]:
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(path)
    except Exception as exc:  # pyarrow raises several types for a damaged file
        raise DataValidationError(f"data.path: {path} is not a readable Parquet file: {exc}") from exc
    number = 0
    for batch in parquet.iter_batches(batch_size=1024):
        for record in batch.to_pylist():
            number += 1
            if isinstance(record.get("metadata"), str):
                try:
                    record["metadata"] = json.loads(record["metadata"])
                except json.JSONDecodeError:
                    yield f"row {number}", BadRecord("invalid_json: metadata column"), record["metadata"][:200]
                    continue
            yield f"row {number}", record, None


def _read_folder(path: Path) -> Iterator[RawItem]:
    for file in sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in TEXT_SUFFIXES):
        relative = file.relative_to(path)
        try:
            text = file.read_bytes().decode("utf-8")
        except UnicodeDecodeError as exc:
            yield str(relative), BadRecord(f"not_utf8: {exc.reason} at byte {exc.start}"), None
            continue
        metadata: dict[str, Any] = {"source_file": str(relative)}
        if len(relative.parts) > 1:
            metadata["category"] = relative.parts[0]
        heading = next((ln.lstrip("# ").strip() for ln in text.splitlines() if ln.startswith("#")), None)
        if heading:
            metadata["title"] = heading
        yield str(relative), {"id": str(relative.with_suffix("")), "text": text, "metadata": metadata}, None


READERS = {"jsonl": _read_jsonl, "json": _read_json, "csv": _read_csv, "parquet": _read_parquet, "folder": _read_folder}


def _to_document(record: dict[str, Any], max_chars: int) -> Document:
    text = record.get("text")
    if text is None:
        raise BadRecord("missing_text: no 'text' field")
    if not isinstance(text, str):
        raise BadRecord(f"wrong_type: text is {type(text).__name__}, expected a string")
    text = normalize_text(text)
    if not text:
        raise BadRecord("empty_text: text is blank after normalization")
    if len(text) > max_chars:
        raise BadRecord(f"too_long: {len(text)} characters, the maximum is {max_chars}")
    raw_id = record.get("id")
    if raw_id is not None and not isinstance(raw_id, str | int):
        raise BadRecord(f"wrong_type: id is {type(raw_id).__name__}, expected a string or integer")
    doc_id = str(raw_id) if raw_id not in (None, "") else "doc-" + hashlib.sha256(text.encode()).hexdigest()[:12]
    metadata = record.get("metadata") or {}
    if not isinstance(metadata, dict):
        raise BadRecord(f"wrong_type: metadata is {type(metadata).__name__}, expected an object")
    return Document(id=doc_id, text=text, metadata=metadata)


def load_documents(config: DataConfig) -> IngestResult:
    """Read every record of `config.path`; good ones become Documents, bad ones Rejects. Order is kept."""
    fmt = detect_format(config.path) if config.format == "auto" else config.format
    if not config.path.exists():
        raise DataValidationError(f"data.path: no such file or folder: {config.path}")
    source = str(config.path)
    result = IngestResult()
    seen_ids: set[str] = set()
    try:
        for location, item, raw in READERS[fmt](config.path):
            result.records_seen += 1
            try:
                if isinstance(item, BadRecord):
                    raise item
                document = _to_document(item, config.max_chars)
                if document.id in seen_ids:
                    raise BadRecord(f"duplicate_id: {document.id} appeared earlier in the file")
            except BadRecord as bad:
                record_id = item.get("id") if isinstance(item, dict) else None
                result.rejects.append(
                    Reject(
                        source=source,
                        location=location,
                        reason=str(bad),
                        record_id=None if record_id is None else str(record_id),
                        raw=raw if raw is not None else _preview(item),
                    )
                )
                log.warning("record_quarantined", location=location, reason=str(bad))
                continue
            seen_ids.add(document.id)
            result.documents.append(document)
            if config.limit is not None and len(result.documents) >= config.limit:
                break
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DataValidationError(f"data.path: cannot read {config.path}: {exc}") from exc
    log.info("documents_loaded", format=fmt, **result.counts())
    return result


def _preview(item: Any) -> str | None:
    if isinstance(item, dict):
        return json.dumps(item, ensure_ascii=False, default=str)[:200]
    return None
