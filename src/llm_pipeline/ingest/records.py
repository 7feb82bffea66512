"""From a raw record to a `Document`, by one documented policy for what real files hold.

Normalized (`normalize_text`): NFKC, spaces between words collapsed, the lines kept.
Repaired (the record is kept, the repair counted): NUL bytes and other control characters (all but tab, line
feed and carriage return; in a text, a form feed, a vertical tab and NEL are line breaks) are removed; a lone
UTF-16 surrogate (JSON's `"\\ud83d"` with no partner) becomes U+FFFD; a byte-order mark inside text is removed.
This applies to the text, the id and every string in the metadata, so nothing that loads can fail later when it
is written.
Quarantined (the record goes to the rejects with its reason): no text, text not a string, blank text, text over
`data.max_chars`, an id that is not a string or an integer, metadata not an object or nested deeper than
`MAX_DEPTH`, a duplicate id. Metadata values that JSON cannot hold (bytes, dates, NaN) are made JSON-safe
(text, ISO dates, null).
"""

from __future__ import annotations

import base64
import hashlib
import math
import re
import unicodedata
from collections import Counter
from datetime import date, datetime, time
from decimal import Decimal
from typing import Any

from llm_pipeline.records import Document

MAX_DEPTH = 32  # metadata nesting; JSON files nest far deeper only by accident or malice
_LINE_BREAKS = str.maketrans({"\x0b": "\n", "\x0c": "\n", "\x85": "\n", "\u2028": "\n", "\u2029": "\n"})
_CRLF = re.compile(r"\r\n?")
_INNER_SPACE = re.compile(r"(?<=\S)[^\S\n]+(?=\S)")  # a run of spaces between two words on one line
_TRAILING_SPACE = re.compile(r"[^\S\n]+$", re.MULTILINE)
_BLANK_LINES = re.compile(r"\n{3,}")
_CONTROL = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\ufeff]")
_SURROGATE = re.compile("[\ud800-\udfff]")


class BadRecord(Exception):
    """A record that cannot be used; carries the reason for the quarantine."""


def normalize_text(text: str, keep_indent: bool = False) -> str:
    """NFKC (full-width forms, ligatures, non-breaking spaces), with the text's lines kept: a code block, a table,
    a list or a poem keeps its shape, and a line's indentation (Python's, YAML's) is kept. Every line break
    (CR LF, CR, form feed, vertical tab, NEL, U+2028/9) becomes a line feed; a run of spaces or tabs between two
    words becomes one space; spaces at a line's end and lines holding only spaces are emptied; blank lines in a
    row become one (a paragraph break); the text is stripped. Words and their order are what they were; a
    consumer that wants one line (a report's excerpt) joins the words itself, and exact deduplication hashes the
    words (`dedup.exact.hashing_key`), so a text wrapped differently is still the same text. `keep_indent`: the
    first line keeps its indentation too (a paragraph of a document, normalized alone, as it stands in the whole)."""
    text = _CRLF.sub("\n", unicodedata.normalize("NFKC", text).translate(_LINE_BREAKS))
    text = _INNER_SPACE.sub(" ", _TRAILING_SPACE.sub("", text))
    text = _BLANK_LINES.sub("\n\n", text)
    return text.strip("\n") if keep_indent else text.strip()


def repair(value: str, repairs: Counter[str]) -> str:
    """`value` with control characters removed and lone surrogates replaced (counted in `repairs`)."""
    if _SURROGATE.search(value):
        repairs["lone_surrogates"] += len(_SURROGATE.findall(value))
        value = _SURROGATE.sub("\ufffd", value)
    if _CONTROL.search(value):
        repairs["control_characters"] += len(_CONTROL.findall(value))
        value = _CONTROL.sub("", value)
    return value


def depth(value: Any) -> int:
    """How deeply `value` nests, iteratively: a recursive walk is what a hostile record would crash."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, level = stack.pop()
        if isinstance(item, dict | list):
            deepest = max(deepest, level)
            if level > MAX_DEPTH:
                return level
            children = item.values() if isinstance(item, dict) else item
            stack.extend((child, level + 1) for child in children)
    return deepest


def json_safe(value: Any, repairs: Counter[str]) -> Any:
    """A copy of metadata `value` that JSON can hold and UTF-8 can encode (depth already checked)."""
    if isinstance(value, str):
        return repair(value, repairs)
    if isinstance(value, bool) or value is None or isinstance(value, int):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {repair(str(k), repairs): json_safe(v, repairs) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v, repairs) for v in value]
    if isinstance(value, datetime | date | time):
        return value.isoformat()
    if isinstance(value, Decimal):
        return float(value) if value.is_finite() else None
    if isinstance(value, bytes):
        return base64.b64encode(value[:1024]).decode()
    return repair(str(value), repairs)


def to_document(record: dict[str, Any], max_chars: int, repairs: Counter[str]) -> Document:
    text = record.get("text")
    if text is None:
        raise BadRecord("missing_text: no 'text' field")
    if not isinstance(text, str):
        raise BadRecord(f"wrong_type: text is {type(text).__name__}, expected a string")
    if len(text) > 4 * max_chars:  # far over: not worth normalizing to find out
        raise BadRecord(f"too_long: over {len(text)} characters before normalization, the maximum is {max_chars}")
    text = normalize_text(repair(text.translate(_LINE_BREAKS), repairs))  # before repair takes a form feed
    if not text:
        raise BadRecord("empty_text: text is blank after normalization")
    if len(text) > max_chars:
        raise BadRecord(f"too_long: {len(text)} characters, the maximum is {max_chars}")
    raw_id = record.get("id")
    if raw_id is not None and (isinstance(raw_id, bool) or not isinstance(raw_id, str | int)):
        raise BadRecord(f"wrong_type: id is {type(raw_id).__name__}, expected a string or integer")
    raw_id = repair(str(raw_id), repairs).strip() if raw_id is not None else ""
    doc_id = raw_id or "doc-" + hashlib.sha256(text.encode()).hexdigest()[:12]
    metadata = record.get("metadata") or {}
    if not isinstance(metadata, dict):
        raise BadRecord(f"wrong_type: metadata is {type(metadata).__name__}, expected an object")
    if depth(metadata) > MAX_DEPTH:
        raise BadRecord(f"too_deep: metadata nested deeper than {MAX_DEPTH} levels")
    return Document(id=doc_id, text=text, metadata=json_safe(metadata, repairs))
