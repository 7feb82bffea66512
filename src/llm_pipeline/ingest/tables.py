"""Files of many records: JSON Lines, JSON, CSV/TSV, Parquet and Excel workbooks. Each reader is a generator of
(location, raw record or the reason it is bad, raw text) and never holds more than one record (or one Parquet
batch) at a time; a record that cannot be parsed is yielded as a `BadRecord` and the file goes on."""

from __future__ import annotations

import csv
import io
import json
import zipfile
from collections.abc import Iterator, Sequence
from decimal import Decimal
from pathlib import Path
from typing import Any

from llm_pipeline.ingest.records import BadRecord
from llm_pipeline.ingest.sources import (
    Kind,
    Part,
    UnreadableFile,
    bounded_lines,
    open_binary,
    open_part,
    sniff_encoding,
    undecodable,
)
from llm_pipeline.logging import get_logger

log = get_logger("ingest")

RawItem = tuple[str, dict[str, Any] | BadRecord, str | None]  # location, record or why not, raw text
_ESCAPED = range(0xDC80, 0xDD00)
CHUNK_CHARS = 1 << 16  # where surrogateescape puts bytes that are not UTF-8


def _parse_json_record(line: str) -> dict[str, Any] | BadRecord:
    try:
        record = json.loads(line)
    except json.JSONDecodeError as exc:
        return BadRecord(f"invalid_json: {exc.msg} (column {exc.colno})")
    except RecursionError:
        return BadRecord("too_deep: nested too deeply to parse")
    if not isinstance(record, dict):
        return BadRecord(f"wrong_type: expected an object, got {type(record).__name__}")
    return record


def read_jsonl(path: Path, kind: Kind, max_bytes: int, part: Part | None = None) -> Iterator[RawItem]:
    """`part`: only that byte range of the file (an engine's share of a big file), its lines numbered as in the
    whole file."""
    opened = open_part(path, part) if part is not None else open_binary(path, kind.compression)
    with opened as stream:
        for number, raw_line in bounded_lines(stream, max_bytes, part, kind.encoding):  # type: ignore[arg-type]
            location = f"line {number}"
            if raw_line is None:
                yield location, BadRecord(f"too_long: the line is over {max_bytes} bytes"), None
                continue
            if not raw_line.strip():
                continue
            try:
                line = raw_line.decode("utf-8")
            except UnicodeDecodeError as exc:
                yield location, BadRecord(_undecodable(kind.encoding, exc)), repr(raw_line[:200])
                continue
            record = _parse_json_record(line)
            yield location, record, line[:200] if isinstance(record, BadRecord) else None


def read_json(path: Path, kind: Kind, max_bytes: int) -> Iterator[RawItem]:
    """A JSON array of records, or an object with a `documents` array, streamed item by item (ijson): memory
    follows the largest record, not the file."""
    import ijson

    with open_binary(path, kind.compression) as stream:
        encoding = sniff_encoding(stream, kind.encoding)  # type: ignore[arg-type]
        source: Any = stream if encoding == "utf-8" else _AsUtf8(io.TextIOWrapper(stream, encoding=encoding))
        head = source.peek(64)[:64].lstrip()
        prefix = "documents.item" if head.startswith(b"{") else "item"
        index = -1
        try:
            for index, record in enumerate(ijson.items(source, prefix, use_float=True)):
                if isinstance(record, dict):
                    yield f"item {index}", record, None
                else:
                    preview = str(record)[:200]
                    yield (
                        f"item {index}",
                        BadRecord(f"wrong_type: expected an object, got {type(record).__name__}"),
                        preview,
                    )
        except ijson.common.IncompleteJSONError as exc:
            raise UnreadableFile(f"not valid JSON after item {index + 1}: {str(exc)[:200]}") from exc
        except RecursionError as exc:
            raise UnreadableFile(f"nested too deeply to parse after item {index + 1}") from exc
        if index < 0:
            raise UnreadableFile("holds no records: expected a list of records or {'documents': [...]}")


class _AsUtf8:
    """A UTF-16/32 text stream read back as UTF-8 bytes, a chunk at a time (ijson parses bytes): streamed like a
    UTF-8 file, never decoded whole."""

    def __init__(self, text: io.TextIOWrapper):
        self._text = text
        self._pending = b""

    def peek(self, size: int) -> bytes:
        while len(self._pending) < size:
            chunk = self._text.read(CHUNK_CHARS)
            if not chunk:
                break
            self._pending += chunk.encode("utf-8", "surrogatepass")
        return self._pending

    def read(self, size: int = -1) -> bytes:
        wanted = CHUNK_CHARS if size is None or size < 0 else size
        self.peek(wanted)
        out, self._pending = self._pending[:wanted], self._pending[wanted:]
        return out


class _Lines:
    """CSV's lines from bounded UTF-8 lines: bytes that are not UTF-8 kept as escapes (their row is quarantined
    with its line), lines over the bound replaced by an empty line and remembered (their row is quarantined)."""

    def __init__(self, lines: Iterator[tuple[int, bytes | None]]):
        self._lines = lines
        self.number = 0
        self.too_long: list[int] = []

    def __iter__(self) -> Iterator[str]:
        for number, line in self._lines:
            self.number = number
            if line is None:
                self.too_long.append(number)
                yield "\n"
            else:
                yield line.decode("utf-8", "surrogateescape")


def read_csv(
    path: Path, kind: Kind, max_bytes: int, text_fields: Sequence[str] = ("text",), id_fields: Sequence[str] = ("id",)
) -> Iterator[RawItem]:
    """CSV (or TSV) with a header that names a text column (`text`, or the first of `data.text_field` it has); an
    id column (`id`, or the first of `data.id_field`) and a `metadata` column of JSON are read when present, other
    columns become metadata. A row with more or fewer fields than the header is quarantined with its line (an
    unquoted comma in the text would otherwise cut it silently)."""
    delimiter = "\t" if kind.format == "tsv" else ","
    csv.field_size_limit(max(131_072, max_bytes))
    with open_binary(path, kind.compression) as stream:
        lines = _Lines(bounded_lines(stream, max_bytes, fallback=kind.encoding))  # type: ignore[arg-type]
        reader = csv.reader(lines, delimiter=delimiter, strict=False)
        try:
            header = next(reader)
        except StopIteration as exc:
            raise UnreadableFile("is empty: no header row") from exc
        header = [h.strip() for h in header]
        text_field = next((name for name in text_fields if name in header), None)
        id_field = next((name for name in id_fields if name in header), "")
        if text_field is None:
            named = "a 'text' column" if list(text_fields) == ["text"] else f"one of the columns {list(text_fields)}"
            raise UnreadableFile(f"needs {named} (data.text_field), has {header}")
        reported = 0
        while True:
            try:
                row = next(reader)
            except StopIteration:
                break
            except csv.Error as exc:
                yield f"line {lines.number}", BadRecord(f"invalid_csv: {exc}"), None
                continue
            while reported < len(lines.too_long):
                yield (
                    f"line {lines.too_long[reported]}",
                    BadRecord(f"too_long: the line is over {max_bytes} bytes"),
                    None,
                )
                reported += 1
            if not row or row == [""]:
                continue
            yield _csv_record(header, row, lines.number, text_field, id_field, kind.encoding)


def _undecodable(encoding: str, exc: UnicodeDecodeError) -> str:
    """A JSON Lines line's reason when its bytes are not text: `not_utf8` and where; in a file of another
    `data.encoding`, the bytes that encoding has no character for were kept as they were (`bounded_lines`)."""
    if encoding == "utf-8":
        return f"{undecodable(encoding)}: {exc.reason} at byte {exc.start}"
    return f"{undecodable(encoding)}: bytes {encoding} has no character for, near byte {exc.start} of the line"


def _csv_record(
    header: list[str], row: list[str], line: int, text_field: str, id_field: str, encoding: str = "utf-8"
) -> RawItem:
    location = f"line {line}"
    preview = ",".join(row)[:200]
    if len(row) != len(header):
        return location, BadRecord(f"ragged_row: {len(row)} fields, the header has {len(header)}"), preview
    for value in row:
        bad = next((i for i, ch in enumerate(value) if ord(ch) in _ESCAPED), None)
        if bad is not None:
            reason = f"{undecodable(encoding)}: invalid byte at character {bad} of a field"
            return location, BadRecord(reason), ascii(preview)
    return _named(location, dict(zip(header, row, strict=True)), text_field, id_field)


def _named(location: str, fields: dict[str, Any], text_field: str, id_field: str) -> RawItem:
    """A row of a table with a header (CSV, a sheet) as a record: its text and id columns (an empty id: none), its
    `metadata` column's JSON where there is one, else its other non-empty columns as metadata."""
    identity = fields.pop(id_field, "") if id_field else ""
    record: dict[str, Any] = {"id": None if identity == "" else identity, "text": fields.pop(text_field)}
    metadata = fields.pop("metadata", "")
    if isinstance(metadata, str) and metadata:
        try:
            record["metadata"] = json.loads(metadata)
        except (json.JSONDecodeError, RecursionError):
            return location, BadRecord("invalid_json: metadata column"), metadata[:200]
    else:
        record["metadata"] = {k: v for k, v in fields.items() if k and v != ""}
    return location, record, None


def read_parquet(path: Path, kind: Kind, max_bytes: int) -> Iterator[RawItem]:
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(path)
    except Exception as exc:  # pyarrow raises several types for a damaged file
        raise UnreadableFile(f"not a readable Parquet file: {exc}") from exc
    number = 0
    for batch in parquet.iter_batches(batch_size=64):  # a few records at a time: rows can be large
        for record in batch.to_pylist():
            number += 1
            if isinstance(record.get("metadata"), str):
                try:
                    record["metadata"] = json.loads(record["metadata"])
                except (json.JSONDecodeError, RecursionError):
                    yield f"row {number}", BadRecord("invalid_json: metadata column"), record["metadata"][:200]
                    continue
            yield f"row {number}", record, None


def _cell(value: Any) -> Any:
    """A spreadsheet cell as a record holds it: empty as "", a whole number (Excel keeps every number as a float,
    ODF as a decimal) as an int, so an id column of 101, 102 gives ids 101, 102 and not 101.0; other decimals as
    floats; dates and the rest as they are."""
    if value is None:
        return ""
    if isinstance(value, Decimal):
        value = float(value)
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def read_xlsx(
    path: Path, kind: Kind, max_bytes: int, text_fields: Sequence[str] = ("text",), id_fields: Sequence[str] = ("id",)
) -> Iterator[RawItem]:
    """An Excel workbook (.xlsx, .xlsm): each sheet a table read as a CSV is (its first non-empty row the header,
    a text column, an id column and a `metadata` column of JSON when present, the other columns metadata, with
    `sheet`: the sheet's name), a row at a time (openpyxl's read-only mode; formulas give their saved values). A
    sheet with no text column (a cover sheet, a lookup table) is left out with a warning; a workbook in which no
    sheet has one fails, naming each sheet's columns. A row with a value right of the header's last column is
    quarantined as ragged, with its sheet and row."""
    import openpyxl

    handle = path.open("rb")  # a file object: openpyxl refuses a path whose suffix is not an Excel one
    try:
        book = openpyxl.load_workbook(handle, read_only=True, data_only=True)
    except Exception as exc:  # openpyxl raises several types for a damaged or foreign file
        handle.close()
        raise UnreadableFile(f"not a readable XLSX: {type(exc).__name__}: {exc}") from exc
    try:
        sheets = ((sheet.title, sheet.iter_rows(values_only=True)) for sheet in book.worksheets)
        yield from _sheet_rows(path, sheets, "XLSX", text_fields, id_fields)
    finally:
        book.close()
        handle.close()


def read_ods(
    path: Path, kind: Kind, max_bytes: int, text_fields: Sequence[str] = ("text",), id_fields: Sequence[str] = ("id",)
) -> Iterator[RawItem]:
    """An OpenDocument spreadsheet (.ods, LibreOffice's), by odfdo, as an Excel workbook is read (read_xlsx): each
    table a sheet. The trailing empty rows and columns a spreadsheet application writes as one repeated row (a
    million of them, 1,024 cells wide) are dropped without being expanded."""
    from odfdo import Document

    if not zipfile.is_zipfile(path):
        raise UnreadableFile("not a readable ODS: not a zip archive")
    try:
        document = Document(str(path))
        tables = document.body.get_tables() if document.get_type() == "spreadsheet" else None
    except Exception as exc:  # odfdo and lxml raise several types for a damaged or foreign file
        raise UnreadableFile(f"not a readable ODS: {type(exc).__name__}: {exc}") from exc
    if tables is None:
        raise UnreadableFile(f"not a readable ODS: an OpenDocument {document.get_type()}, not a spreadsheet")

    def rows(table: Any) -> Iterator[tuple[Any, ...]]:
        table.rstrip(aggressive=True)
        yield from map(tuple, table.get_values())

    yield from _sheet_rows(path, ((table.name, rows(table)) for table in tables), "ODS", text_fields, id_fields)


def _sheet_rows(
    path: Path,
    sheets: Iterator[tuple[str, Iterator[tuple[Any, ...]]]],
    what: str,
    text_fields: Sequence[str],
    id_fields: Sequence[str],
) -> Iterator[RawItem]:
    """The records of a workbook's sheets, (name, rows of values) each: the first non-empty row a sheet's header, a
    sheet without a text column left out with a warning, a workbook with none failing naming each sheet's columns."""
    columns: dict[str, list[str]] = {}
    try:
        for title, sheet_rows in sheets:
            header: list[str] | None = None
            text_field = id_field = ""
            for number, row in enumerate(sheet_rows, start=1):
                values = [_cell(value) for value in row]
                while values and values[-1] == "":
                    values.pop()
                if not values:
                    continue
                if header is None:
                    header = [str(value).strip() for value in values]
                    columns[title] = header
                    text_field = next((name for name in text_fields if name in header), "")
                    id_field = next((name for name in id_fields if name in header), "")
                    if not text_field:
                        log.warning("sheet_skipped", file=str(path), sheet=title, columns=header[:20])
                        break
                    continue
                yield _sheet_record(title, number, header, values, text_field, id_field)
    except UnreadableFile:
        raise
    except Exception as exc:  # a damaged sheet part: what was read before it stays
        raise UnreadableFile(f"not a readable {what}: {type(exc).__name__}: {exc}") from exc
    if not any(name in header for header in columns.values() for name in text_fields):
        named = "a 'text' column" if list(text_fields) == ["text"] else f"one of the columns {list(text_fields)}"
        raise UnreadableFile(f"needs {named} (data.text_field) in a sheet, has {columns or 'no rows'}")


def _sheet_record(
    sheet: str, number: int, header: list[str], values: list[Any], text_field: str, id_field: str
) -> RawItem:
    location = f"sheet {sheet!r} row {number}"
    preview = ",".join(map(str, values))[:200]
    if len(values) > len(header):
        reason = f"ragged_row: a value in column {len(values)}, the header has {len(header)} columns"
        return location, BadRecord(reason), preview
    fields = dict(zip(header, values + [""] * (len(header) - len(values)), strict=True))
    location, record, raw = _named(location, fields, text_field, id_field)  # an id of 0 is the id 0
    if isinstance(record, dict) and isinstance(record["metadata"], dict):
        record["metadata"].setdefault("sheet", sheet)
    return location, record, raw
