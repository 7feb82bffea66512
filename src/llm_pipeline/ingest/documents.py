"""Files that are one document each: plain text, the markup formats docs are written in (Markdown,
reStructuredText, AsciiDoc: kept as written, the title found), HTML (main content only, by trafilatura), PDF (the
text layer, by pypdf, with where each page starts), DOCX (by python-docx) and PowerPoint (by python-pptx, with
where each slide starts). Each reader returns the document's raw record (text, metadata) or raises BadRecord; its
id is given by the folder walk (the file's relative path)."""

from __future__ import annotations

import re
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from llm_pipeline.ingest.records import BadRecord, normalize_text
from llm_pipeline.ingest.sources import Kind, UnreadableFile, open_binary, read_bounded, undecodable

HTML_MARKUP_FACTOR = 20  # an HTML page may carry this many bytes of markup per character of text
_HEADING = re.compile(r"^\s{0,3}#{1,6}\s+(.+?)\s*#*\s*$", re.MULTILINE)
# reStructuredText: a line underlined (and maybe overlined) with one punctuation character repeated, at least as
# long as the title; the first such section title is the document's
_RST_HEADING = re.compile(
    r"^(?:(?P<over>[!-/:-@\[-`{-~])(?P=over)+\n)?[ \t]*(?P<title>\S[^\n]*?)[ \t]*\n"
    r"(?P<under>(?P<mark>[!-/:-@\[-`{-~])(?P=mark)+)[ \t]*$",
    re.MULTILINE,
)
# AsciiDoc: the document title `= Title` (level 0), else the first section title `== Section`
_ADOC_HEADING = re.compile(r"^={1,6}[ \t]+(\S.*?)[ \t]*$", re.MULTILINE)


def _read_text(path: Path, kind: Kind, max_bytes: int) -> str:
    with open_binary(path, kind.compression) as stream:
        try:
            read = read_bounded(stream, max_bytes, kind.encoding)  # type: ignore[arg-type]
        except UnicodeDecodeError as exc:
            raise BadRecord(f"{undecodable(exc.encoding)}: {exc.reason} at byte {exc.start}") from exc
    if read is None:
        raise BadRecord(f"too_long: the file holds over {max_bytes} bytes of text")
    return read


def text_document(path: Path, kind: Kind, max_bytes: int) -> dict[str, Any]:
    return {"text": _read_text(path, kind, max_bytes), "metadata": {}}


def markdown_document(path: Path, kind: Kind, max_bytes: int) -> dict[str, Any]:
    text = _read_text(path, kind, max_bytes)
    heading = _HEADING.search(text)
    return {"text": text, "metadata": {"title": heading.group(1).strip()} if heading else {}}


def rst_document(path: Path, kind: Kind, max_bytes: int) -> dict[str, Any]:
    text = _read_text(path, kind, max_bytes)
    for found in _RST_HEADING.finditer(text):
        overline = found["over"]
        if len(found["under"]) >= len(found["title"]) and overline in (None, found["mark"]):
            return {"text": text, "metadata": {"title": found["title"]}}
    return {"text": text, "metadata": {}}


def asciidoc_document(path: Path, kind: Kind, max_bytes: int) -> dict[str, Any]:
    text = _read_text(path, kind, max_bytes)
    heading = _ADOC_HEADING.search(text)
    return {"text": text, "metadata": {"title": heading.group(1)} if heading else {}}


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


def _shape_texts(shapes: Any) -> Iterator[str]:
    """The text of a slide's shapes in the deck's order: text frames by paragraph, tables by cell, groups opened."""
    from pptx.enum.shapes import MSO_SHAPE_TYPE

    for shape in shapes:
        if shape.shape_type == MSO_SHAPE_TYPE.GROUP:
            yield from _shape_texts(shape.shapes)
        elif getattr(shape, "has_table", False):
            yield from (cell.text for row in shape.table.rows for cell in row.cells)
        elif getattr(shape, "has_text_frame", False):
            yield from (paragraph.text for paragraph in shape.text_frame.paragraphs)


def pptx_document(path: Path, kind: Kind, max_bytes: int) -> dict[str, Any]:
    """Each slide's text (its shapes, tables and groups in order, then its speaker notes, which often carry what the
    slide only names); `slide_starts[i]` is where slide i + 1 begins in the (normalized) text, as a PDF's pages."""
    import pptx

    if not zipfile.is_zipfile(path):
        raise UnreadableFile("not a readable PPTX: not a zip archive")
    try:
        deck = pptx.Presentation(str(path))
        slides = list(deck.slides)
    except Exception as exc:  # python-pptx raises several types for a damaged or foreign file
        raise UnreadableFile(f"not a readable PPTX: {type(exc).__name__}: {exc}") from exc
    parts: list[str] = []
    starts: list[int] = []
    position = 0
    first_title = None
    for slide in slides:
        lines = list(_shape_texts(slide.shapes))
        if slide.has_notes_slide and slide.notes_slide.notes_text_frame is not None:
            lines.append(slide.notes_slide.notes_text_frame.text)
        title_shape = slide.shapes.title
        if first_title is None and title_shape is not None and title_shape.text.strip():
            first_title = title_shape.text.strip()
        text = normalize_text("\n".join(line for line in lines if line.strip()))
        starts.append(position)
        if text:
            parts.append(text)
            position += len(text) + 1
        if position > max_bytes:
            raise BadRecord(f"too_long: over {max_bytes} characters of text by slide {len(starts)}")
    title = deck.core_properties.title or first_title
    metadata: dict[str, Any] = {"slides": len(slides), "slide_starts": starts}
    if title:
        metadata["title"] = title
    return {"text": " ".join(parts), "metadata": metadata}


WHOLE_FILE: dict[str, Callable[[Path, Kind, int], dict[str, Any]]] = {
    "text": text_document,
    "markdown": markdown_document,
    "rst": rst_document,
    "asciidoc": asciidoc_document,
    "html": html_document,
    "pdf": pdf_document,
    "docx": docx_document,
    "pptx": pptx_document,
}
