"""Files that are one document each: plain text, Markdown, HTML (main content only, by trafilatura), PDF (the
text layer, by pypdf, with where each page starts) and DOCX (by python-docx). Each reader returns the document's
raw record (text, metadata) or raises BadRecord; its id is given by the folder walk (the file's relative path)."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from llm_pipeline.ingest.records import BadRecord, normalize_text
from llm_pipeline.ingest.sources import Kind, UnreadableFile, open_binary, read_bounded

HTML_MARKUP_FACTOR = 20  # an HTML page may carry this many bytes of markup per character of text
_HEADING = re.compile(r"^\s{0,3}#{1,6}\s+(.+?)\s*#*\s*$", re.MULTILINE)


def _read_text(path: Path, kind: Kind, max_bytes: int) -> str:
    with open_binary(path, kind.compression) as stream:
        try:
            read = read_bounded(stream, max_bytes)  # type: ignore[arg-type]
        except UnicodeDecodeError as exc:
            raise BadRecord(f"not_utf8: {exc.reason} at byte {exc.start}") from exc
    if read is None:
        raise BadRecord(f"too_long: the file holds over {max_bytes} bytes of text")
    return read


def text_document(path: Path, kind: Kind, max_bytes: int) -> dict[str, Any]:
    return {"text": _read_text(path, kind, max_bytes), "metadata": {}}


def markdown_document(path: Path, kind: Kind, max_bytes: int) -> dict[str, Any]:
    text = _read_text(path, kind, max_bytes)
    heading = _HEADING.search(text)
    return {"text": text, "metadata": {"title": heading.group(1).strip()} if heading else {}}


def html_document(path: Path, kind: Kind, max_bytes: int) -> dict[str, Any]:
    """The page's main content: navigation, headers, footers, scripts and styles dropped by trafilatura."""
    import trafilatura

    html = _read_text(path, kind, max_bytes * HTML_MARKUP_FACTOR)
    text = trafilatura.extract(html, include_comments=False, include_tables=True, favor_recall=True)
    if not text:
        raise BadRecord("empty_text: no main content found in the page")
    metadata: dict[str, Any] = {}
    found = trafilatura.extract_metadata(html)
    if found is not None and found.title:
        metadata["title"] = found.title
    return {"text": text, "metadata": metadata}


def pdf_document(path: Path, kind: Kind, max_bytes: int) -> dict[str, Any]:
    """The text layer, page by page; `page_starts[i]` is where page i + 1 begins in the (normalized) text, so a
    passage can be traced to its page. A PDF of scanned images has no text layer: quarantined as empty."""
    import pypdf

    try:
        reader = pypdf.PdfReader(path)
        pages = reader.pages
        count = len(pages)
    except Exception as exc:  # pypdf raises many types for a damaged file
        raise UnreadableFile(f"not a readable PDF: {type(exc).__name__}: {exc}") from exc
    parts: list[str] = []
    starts: list[int] = []
    position = 0
    for page in pages:
        try:
            text = normalize_text(page.extract_text() or "")
        except Exception as exc:  # a page pypdf cannot decode: the document is quarantined, naming the page
            raise BadRecord(f"unreadable_page: page {len(starts) + 1}: {type(exc).__name__}: {exc}") from exc
        starts.append(position)
        if text:
            parts.append(text)
            position += len(text) + 1  # the space that joins it to the next page
        if position > max_bytes:
            raise BadRecord(f"too_long: over {max_bytes} characters of text by page {len(starts)}")
    metadata: dict[str, Any] = {"pages": count, "page_starts": starts}
    title = (reader.metadata or {}).get("/Title") if reader.metadata else None
    if title:
        metadata["title"] = str(title)
    return {"text": " ".join(parts), "metadata": metadata}


def docx_document(path: Path, kind: Kind, max_bytes: int) -> dict[str, Any]:
    """Paragraphs and table cells in document order; the title from the core properties or the first heading."""
    import docx

    try:
        document = docx.Document(str(path))
    except Exception as exc:  # python-docx raises several types for a damaged or foreign file
        raise UnreadableFile(f"not a readable DOCX: {type(exc).__name__}: {exc}") from exc
    parts: list[str] = []
    heading = None
    for block in document.iter_inner_content():
        if isinstance(block, docx.text.paragraph.Paragraph):
            parts.append(block.text)
            if heading is None and block.style is not None and block.style.name.startswith(("Heading", "Title")):
                heading = block.text.strip() or None
        else:
            parts.extend(cell.text for row in block.rows for cell in row.cells)
        if sum(map(len, parts)) > max_bytes:
            raise BadRecord(f"too_long: over {max_bytes} characters of text")
    title = document.core_properties.title or heading
    return {"text": "\n".join(parts), "metadata": {"title": title} if title else {}}


WHOLE_FILE: dict[str, Callable[[Path, Kind, int], dict[str, Any]]] = {
    "text": text_document,
    "markdown": markdown_document,
    "html": html_document,
    "pdf": pdf_document,
    "docx": docx_document,
}
