"""Files that are one document each: plain text, the markup formats docs are written in (Markdown,
reStructuredText, AsciiDoc: kept as written, the title found), HTML (main content only, by trafilatura), PDF (the
text layer, by pypdf, with where each page starts), DOCX (by python-docx), PowerPoint (by python-pptx, with
where each slide starts), OpenDocument text and presentations (by odfdo), EPUB (by EbookLib, chapter by chapter,
with where each chapter starts) and Jupyter notebooks (their cells, not their outputs). Each reader returns the
document's raw record (text, metadata) or raises BadRecord; its id is given by the folder walk (the file's relative
path). A text keeps its lines (`records.normalize_text`): pages, slides, chapters, paragraphs and headings are
joined by a blank line (`PAGE_BREAK`), a list's items and a table's rows are lines of one block, a row is one line
(`table_row`), HTML is laid out as a browser shows it (`_laid_out`) and Markdown loses its comment blocks.

A document longer than `data.max_chars` is split into parts (`document_parts`): parts of at most `max_chars`
characters, cut where a page, slide or paragraph ends (a paragraph longer than a part: where a sentence ends, else at
a space), each its own document (`<id>#<n>`, with `part`, `parts`, and for PDF and PowerPoint the pages or slides it
spans). Plain text and the markup formats are read as a stream, so a file costs a few parts' size in memory whatever
its length; over `data.max_file_chars` of text, the file is quarantined as too long."""

from __future__ import annotations

import codecs
import io
import itertools
import json
import re
import zipfile
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import regex

from llm_pipeline.ingest.records import BadRecord, normalize_text
from llm_pipeline.ingest.sources import (
    BOMS,
    CHUNK,
    DECLARATION_BYTES,
    Kind,
    UnreadableFile,
    open_binary,
    read_bounded,
    sniff_encoding,
    undecodable,
)
from llm_pipeline.text import PARAGRAPH_BREAK

HTML_MARKUP_FACTOR = 20  # an HTML page may carry this many bytes of markup per character of text
NOTEBOOK_OUTPUT_FACTOR = 20  # a notebook, this many bytes of JSON and outputs (plots in base64) per character
_HEADING = re.compile(r"^\s{0,3}#{1,6}\s+(.+?)\s*#*\s*$", re.MULTILINE)
# reStructuredText: a line underlined (and maybe overlined) with one punctuation character repeated, at least as
# long as the title; the first such section title is the document's
_SETEXT_HEADING = re.compile(r"^ {0,3}(\S[^\n]*?)[ \t]*\n {0,3}(?:=+|-+)[ \t]*$", re.MULTILINE)
_RST_HEADING = re.compile(
    r"^(?:(?P<over>[!-/:-@\[-`{-~])(?P=over)+\n)?[ \t]*(?P<title>\S[^\n]*?)[ \t]*\n"
    r"(?P<under>(?P<mark>[!-/:-@\[-`{-~])(?P=mark)+)[ \t]*$",
    re.MULTILINE,
)
# AsciiDoc: the document title `= Title` (level 0), else the first section title `== Section`
_ADOC_HEADING = re.compile(r"^={1,6}[ \t]+(\S.*?)[ \t]*$", re.MULTILINE)
_HTML_SPACE = re.compile(r"\s+")
# where a sentence ends: . ! ? before a space or a line's end, or CJK's full stop, ! and ?
_SENTENCE_END = re.compile(r"[.!?](?=\s)|[\u3002\uff01\uff1f]")
_SPACE = re.compile(r"\s")
PAGE_BREAK = "\n\n"  # what joins pages, slides, chapters and a text file's paragraphs: a blank line
TITLE_HEAD = 1 << 16  # the characters of a long document's beginning where its title is looked for


class TooLong(BadRecord):
    """A document over the bound it was read with: split into parts where `data.max_file_chars` allows."""


def _read_text(path: Path, kind: Kind, max_bytes: int, declared: Callable[[bytes], str | None] | None = None) -> str:
    with open_binary(path, kind.compression) as stream:
        try:
            read = read_bounded(stream, max_bytes, kind.encoding, declared)  # type: ignore[arg-type]
        except UnicodeDecodeError as exc:
            raise BadRecord(f"{undecodable(exc.encoding)}: {exc.reason} at byte {exc.start}") from exc
    if read is None:
        raise TooLong(f"too_long: the file holds over {max_bytes} bytes of text")
    return read


def text_document(path: Path, kind: Kind, max_bytes: int) -> dict[str, Any]:
    return {"text": _read_text(path, kind, max_bytes), "metadata": {}}


def _markdown_title(text: str) -> dict[str, Any]:
    """The first heading, `# Title` or a Title line underlined with = or - (Markdown's setext form)."""
    found = [m for m in (_HEADING.search(text), _SETEXT_HEADING.search(text)) if m is not None]
    return {"title": min(found, key=lambda m: m.start()).group(1).strip()} if found else {}


def _rst_title(text: str) -> dict[str, Any]:
    for found in _RST_HEADING.finditer(text):
        overline = found["over"]
        if len(found["under"]) >= len(found["title"]) and overline in (None, found["mark"]):
            return {"title": found["title"]}
    return {}


def _asciidoc_title(text: str) -> dict[str, Any]:
    heading = _ADOC_HEADING.search(text)
    return {"title": heading.group(1)} if heading else {}


TITLES: dict[str, Callable[[str], dict[str, Any]]] = {
    "text": lambda text: {},
    "markdown": _markdown_title,
    "rst": _rst_title,
    "asciidoc": _asciidoc_title,
}


_COMMENT_BLOCK = re.compile(r"\s*(?:<!--.*?-->\s*)+", re.DOTALL)


def without_comments(markdown: str) -> str:
    """Markdown without its comment blocks (`<!-- ... -->` standing as a block of their own: what a renderer never
    shows: Node.js's API docs keep each function's YAML change history in them, READMEs their linters' directives
    and TODOs), found by markdown-it as CommonMark does, so a comment inside a code block stays (it is the block's
    text) and so does a comment inside a paragraph."""
    if "<!--" not in markdown:  # most files: no parse
        return markdown
    from markdown_it import MarkdownIt

    markdown = re.sub(r"\r\n?", "\n", markdown)  # markdown-it's line breaks, so its line numbers are ours
    tokens = MarkdownIt("commonmark").parse(markdown)
    dropped = [t.map for t in tokens if t.type == "html_block" and t.map and _COMMENT_BLOCK.fullmatch(t.content)]
    if not dropped:
        return markdown
    lines = markdown.split("\n")
    for start, end in reversed(dropped):
        del lines[start:end]
    return "\n".join(lines)


def markdown_document(path: Path, kind: Kind, max_bytes: int) -> dict[str, Any]:
    """As written, less its comment blocks (`without_comments`); the title: its first heading."""
    text = without_comments(_read_text(path, kind, max_bytes))
    return {"text": text, "metadata": _markdown_title(text)}


def rst_document(path: Path, kind: Kind, max_bytes: int) -> dict[str, Any]:
    text = _read_text(path, kind, max_bytes)
    return {"text": text, "metadata": _rst_title(text)}


def asciidoc_document(path: Path, kind: Kind, max_bytes: int) -> dict[str, Any]:
    text = _read_text(path, kind, max_bytes)
    return {"text": text, "metadata": _asciidoc_title(text)}


_HTML_AS_WRITTEN = ("pre", "textarea")  # elements whose whitespace a browser shows as written


def declared_encoding(head: bytes) -> str | None:
    """The encoding an HTML page declares in its first bytes, as a browser reads the declaration (w3lib: an XML
    declaration's `encoding`, a `<meta charset>` or its http-equiv form; a label as the Encoding Standard maps it,
    `iso-8859-1` to windows-1252, `utf-16` without a byte-order mark to UTF-8), or None where it declares none that
    Python can decode."""
    from w3lib.encoding import html_body_declared_encoding

    name = html_body_declared_encoding(head)
    if name is None:
        return None
    try:
        codecs.lookup(name)
    except LookupError:
        return None
    return name


def decoded_markup(data: bytes) -> str:
    """An HTML or XHTML document's bytes as text: by its byte-order mark, else the encoding it declares
    (`declared_encoding`), else UTF-8; a byte its encoding has no character for read as U+FFFD, as a browser reads
    it (an e-book's chapter: one bad byte does not cost the book)."""
    marked = next((name for bom, name in BOMS if data.startswith(bom)), None)  # UTF-16/32 codecs read their mark
    if marked == "utf-8":
        data = data[len(codecs.BOM_UTF8) :]
    encoding = marked or declared_encoding(data[:DECLARATION_BYTES]) or "utf-8"
    return data.decode(encoding, "replace")


_XML_DECLARATION = re.compile(r"\A\s*<\?xml\s[^>]*\?>")


def _spaced_tree(markup: str | bytes) -> Any:
    """The page parsed (lxml), each run of whitespace in its text a space outside <pre> and <textarea>, as a browser
    shows it, the text after a comment before it (`_keep_tail`); walked without recursion (a hostile page nests
    deeper than Python's stack). None where lxml cannot parse it. Text is decoded already: an XML declaration
    (XHTML's, naming the encoding it was decoded by) is dropped first, lxml refuses text that has one."""
    import lxml.html
    from lxml import etree

    if isinstance(markup, str):
        markup = _XML_DECLARATION.sub("", markup, count=1)
    try:
        root = lxml.html.document_fromstring(markup)
    except (ValueError, etree.ParserError):
        return None
    kept = 0  # the <pre> and <textarea> elements the walk is inside
    for event, element in etree.iterwalk(root, events=("start", "end", "comment", "pi")):
        tag = element.tag if isinstance(element.tag, str) else ""
        if event == "start":
            kept += tag in _HTML_AS_WRITTEN
            if not kept and element.text:
                element.text = _HTML_SPACE.sub(" ", element.text)
            continue
        kept -= tag in _HTML_AS_WRITTEN
        if not kept and element.tail:
            element.tail = _HTML_SPACE.sub(" ", element.tail)
        if event in ("comment", "pi"):  # the text after it goes before it (iterwalk reports these once)
            _keep_tail(element)
    return root


def _keep_tail(node: Any) -> None:
    """Move the text after a comment (its tail) to before it, where it stays if the comment is dropped: trafilatura
    dropped comments with their tails, the rest of a paragraph (the Rust book's `<a ...>“Comparing the Guess to the
    Secret Number”</a><!-- ignore --> section in Chapter 2, we must add...` lost all after the link, at every
    cross-reference). The comment itself stays: its presence sways trafilatura's choice of the main content."""
    if not node.tail:
        return
    previous = node.getprevious()
    while previous is not None and not isinstance(previous.tag, str):  # another comment: its tail went before it
        previous = previous.getprevious()
    if previous is not None:
        previous.tail = (previous.tail or "") + node.tail
    else:  # the walk starts at the root element: a comment it meets has a parent
        parent = node.getparent()
        parent.text = (parent.text or "") + node.tail
    node.tail = None


def html_document(path: Path, kind: Kind, max_bytes: int) -> dict[str, Any]:
    """The page's main content: navigation, headers, footers, scripts and styles dropped by trafilatura, laid out
    as a browser shows it (`_laid_out` over trafilatura's XML: headings, paragraphs, lists, tables and code blocks
    between blank lines, a list item a line with its marker, a code block as written, blank lines and all).
    trafilatura's own text ran a code block's last line into the next paragraph (`}  // namespace demo All Node.js
    addons must export...`), dropped a code block's blank lines and ran a heading into the next line; the page is
    spaced first (`_spaced_tree`: trafilatura keeps the line breaks of a paragraph's source, `for
    verifying\ninvariants.` in Node.js's docs). The title: trafilatura's, from the same parse."""
    import trafilatura

    html = _read_text(path, kind, max_bytes * HTML_MARKUP_FACTOR, declared_encoding)
    page = _spaced_tree(html)
    numbering = {} if page is None else _ordered_lists(page)  # read before trafilatura changes the tree
    outline = [] if page is None else _outline(page)
    page = html if page is None else page  # what lxml cannot parse, trafilatura tries as it is
    found = trafilatura.bare_extraction(
        page, include_comments=False, include_tables=True, include_formatting=True, favor_recall=True,
        with_metadata=True,
    )  # fmt: skip
    text = ""
    if found is not None and found.body is not None:
        if not isinstance(page, str):
            text = _whole_body(page, found.body)
        if not text:
            _number_like_source(found.body, numbering)
            _headings_back(found.body, outline)
            text = _laid_out(found.body, _main_role, _main_marker)
    if not text:
        raise BadRecord("empty_text: no main content found in the page")
    return {"text": text, "metadata": {"title": found.title} if found.title else {}}


def _whole_body(page: Any, body: Any) -> str:
    """The page's body laid out as a browser shows it, where trafilatura fell back to its text, a block a line: on
    a page with under 250 characters of main content, its baseline takes the whole body (scripts, styles, asides and
    footers dropped) as one flat paragraph, no list marker, table row or blank line (49 of 858 real pages here: API
    indexes, redirect pages). That body is laid out here instead (`_laid_out`, as an e-book's chapter), trafilatura's
    own cleaning first, where it holds every character trafilatura's text holds and no other letter (its extra
    characters: list markers, ` | `); otherwise, or on another fallback, "" (trafilatura's text stands)."""
    if len(body) != 1 or body[0].tag != "p" or len(body[0]) or "\n" not in (body[0].text or ""):
        return ""
    try:
        from trafilatura.baseline import basic_cleaning  # the fallback's own cleaning (not a documented API)
    except ImportError:
        return ""
    import copy

    cleaned = basic_cleaning(copy.deepcopy(page)).find(".//body")
    if cleaned is None:
        return ""
    text = _laid_out(cleaned, _html_role, _html_marker)
    flat, ours = Counter("".join(body[0].text.split())), Counter("".join(text.split()))
    if flat - ours or any(_LETTER.match(character) for character in ours - flat):
        return ""
    return text


def _main_marker(item: Any, previous: int | None) -> tuple[str, int | None]:
    rend = item.get("rend") or ""  # a definition list's term and definition: `dt-1`, `dd-1`
    term = rend[:2] if rend[:2] in ("dt", "dd") else None
    return _marker(item, previous, ("list",), lambda parent: parent.get("rend") == "ol", term)


_KEY_CHARS = 60  # a block's text key: its first characters other than whitespace
_KEY_EVENTS = 400  # a block's text key reads at most this many starts and ends of its elements


def _text_key(element: Any) -> str:
    """A block told by its text: its first _KEY_CHARS characters other than whitespace (trafilatura keeps the words
    of the blocks it keeps, not always their spacing or what follows a nested block), read from at most _KEY_EVENTS
    of its elements' starts and ends (a key costs the same however deep the block nests)."""
    from lxml import etree

    key = ""
    for event, node in itertools.islice(etree.iterwalk(element, events=("start", "end")), _KEY_EVENTS):
        piece = node.text if event == "start" else (None if node is element else node.tail)
        if piece:
            key += "".join(piece.split())
            if len(key) >= _KEY_CHARS:
                break
    return key[:_KEY_CHARS]


def _list_key(items: list[Any]) -> tuple[str, ...]:
    return tuple(_text_key(item) for item in items)


_HEADINGS = frozenset({"h1", "h2", "h3", "h4", "h5", "h6"})
_SOURCE_BLOCKS = frozenset({"p", "pre", "ul", "ol", "dl", "table", "blockquote"})  # trafilatura's p, code, list...
_MAIN_BLOCKS = frozenset({"p", "code", "list", "table", "quote"})


def _outermost(root: Any, tags: frozenset[str]) -> Iterator[tuple[Any, bool]]:
    """The elements under `root` with a tag in `tags`, in order, each with whether it is inside none of the others
    (one walk, not each element's ancestors: a hostile page nests deep)."""
    from lxml import etree

    inside = 0
    for event, element in etree.iterwalk(root, events=("start", "end")):
        if element.tag in tags:
            if event == "end":
                inside -= 1
            else:
                yield element, not inside
                inside += 1


def _outline(page: Any) -> list[tuple[str, str, str]]:
    """The page's headings and blocks that stand in no other, in page order: (`head`, its level, its text) or
    (`block`, "", its `_text_key`); scripts and styles left out."""
    outline: list[tuple[str, str, str]] = []
    for element, outermost in _outermost(page, _HEADINGS | _SOURCE_BLOCKS | _HTML_DROPPED):
        if not outermost or element.tag in _HTML_DROPPED:
            continue  # inside a block (a list's nested list, a heading in a table cell): part of that block
        if element.tag in _HEADINGS:
            if text := " ".join("".join(element.itertext()).split()):
                outline.append(("head", element.tag, text))
        else:
            outline.append(("block", "", _text_key(element)))
    return outline


def _headings_back(body: Any, outline: list[tuple[str, str, str]]) -> None:
    """Give back the headings trafilatura dropped over blocks it kept. A page whose content sits in no container
    it knows (no <main>, <article> or content class: a DocBook manual's `div.sect1`s) is read by its recovery
    pass, which takes paragraphs, lists and code but no heading: every section title of Valgrind's manual was
    lost. A heading (or a run of them) goes back before the block that follows it on the page where trafilatura
    kept that block (told by `_text_key`, in page order) and kept no heading with its text; a heading whose next
    block was dropped stays dropped (a sidebar's), and so does one before a heading trafilatura kept (mdBook's
    menu title before a chapter's own heading)."""
    from lxml import etree

    kept: dict[str, list[tuple[int, Any]]] = {}  # trafilatura's blocks that stand in no other, by text, in order
    texts: set[str] = set()  # and its headings': a heading kept (maybe as a paragraph) is not given back
    for place, (element, outermost) in enumerate(_outermost(body, _MAIN_BLOCKS | {"head"})):
        if outermost or element.tag == "head":
            texts.add(key := _text_key(element))
            if element.tag != "head":
                kept.setdefault(key, []).append((place, element))
    waiting: list[tuple[str, str]] = []  # the headings since the last block: (level, text)
    last = -1  # where the last block matched stands in trafilatura's: a match is never before it
    for kind, level, text in outline:
        if kind == "head":
            waiting.append((level, text))
            continue
        if not text:
            continue  # an empty block (a search box's list): nothing to tell it by, no content between
        same = kept.get(text, [])
        while same and same[0][0] < last:
            same.pop(0)
        if same:
            last, block = same.pop(0)
            for level, heading in reversed(waiting):
                if "".join(heading.split())[:_KEY_CHARS] in texts:  # the heading's `_text_key`
                    break  # kept: the headings before it were left out on purpose (a menu's title)
                head = etree.Element("head", rend=level)
                head.text = heading
                block.addprevious(head)
                block = head
        waiting = []


_NUMBERING = ("start", "type", "reversed")  # an <ol>'s attributes that set its items' numbers, with <li value>


def _ordered_lists(page: Any) -> dict[tuple[str, ...], list[tuple[dict[str, str], list[str | None]]]]:
    """The page's ordered lists numbered otherwise than from 1 (`start`, `type`, `reversed`, an item's `value`),
    by `_list_key`, in page order: what trafilatura's XML does not keep (a list in steps split by code blocks,
    `<ol start="3">`, read from 1)."""
    found: dict[tuple[str, ...], list[tuple[dict[str, str], list[str | None]]]] = {}
    for ordered in page.iter("ol"):
        items = [child for child in ordered if child.tag == "li"]
        attributes = {name: ordered.get(name) for name in _NUMBERING if ordered.get(name) is not None}
        values = [item.get("value") for item in items]
        if items and (attributes or any(value is not None for value in values)):
            found.setdefault(_list_key(items), []).append((attributes, values))
    return found


def _number_like_source(body: Any, numbering: dict[tuple[str, ...], list[Any]]) -> None:
    """Give each ordered list of trafilatura's XML the numbering of the page's list with the same items (the first
    one not yet given, where two have the same); one that matches none is numbered from 1."""
    for ordered in body.iter("list"):
        if ordered.get("rend") != "ol":
            continue
        items = [child for child in ordered if child.tag == "item"]
        same = numbering.get(_list_key(items)) if items else None
        if not same:
            continue
        attributes, values = same.pop(0)
        for name, value in attributes.items():
            ordered.set(name, value)
        for item, value in zip(items, values, strict=False):
            if value is not None:
                item.set("value", value)


def _by_unit(
    texts: Iterable[str], unit: str, max_bytes: int, title: Callable[[], Any] = lambda: None
) -> dict[str, Any]:
    """A document made of pages (slides, chapters), from their normalized texts in order: the texts joined by a
    blank line (PAGE_BREAK), `pages` and `page_starts` (where each page begins in the text: an empty page begins
    where the next does), each page's text (the pieces a long document's parts are cut from) and `title()` where
    it gives one (asked after the last page). Raises TooLong past `max_bytes`, naming the page."""
    parts: list[str] = []
    starts: list[int] = []
    pieces: list[str] = []
    position = 0
    for text in texts:
        starts.append(position)
        pieces.append(text)
        if text:
            parts.append(text)
            position += len(text) + len(PAGE_BREAK)  # the blank line that joins it to the next page
        if position > max_bytes:
            raise TooLong(f"too_long: over {max_bytes} characters of text by {unit} {len(starts)}")
    metadata: dict[str, Any] = {f"{unit}s": len(starts), f"{unit}_starts": starts}
    if found := title():
        metadata["title"] = found
    return {"text": PAGE_BREAK.join(parts), "metadata": metadata, "pieces": pieces, "unit": unit}


def notebook_document(path: Path, kind: Kind, max_bytes: int) -> dict[str, Any]:
    """A Jupyter notebook (nbformat 4): its Markdown and raw cells as written, its code cells as fenced code blocks
    (in the kernel's language), in order; the outputs are left out (images in base64, tables of numbers,
    tracebacks: not text to learn a domain from), and so is their size: the file is read up to
    NOTEBOOK_OUTPUT_FACTOR x the text bound. The title: the Markdown cells' first heading."""
    raw = _read_text(path, kind, max_bytes * NOTEBOOK_OUTPUT_FACTOR)
    try:
        notebook = json.loads(raw)
    except (ValueError, RecursionError) as exc:
        raise UnreadableFile(f"not a readable notebook: {type(exc).__name__}: {exc}"[:300]) from exc
    cells = notebook.get("cells") if isinstance(notebook, dict) else None
    if not isinstance(cells, list):
        raise UnreadableFile("not a readable notebook: no list of cells (nbformat 4)")
    metadata = notebook.get("metadata")
    info = metadata.get("language_info") if isinstance(metadata, dict) else None
    language = str(info.get("name", "")) if isinstance(info, dict) else ""
    pieces: list[str] = []
    prose: list[str] = []
    size = 0
    for cell in cells:
        if not isinstance(cell, dict):
            continue
        source = cell.get("source", "")
        text = ("".join(map(str, source)) if isinstance(source, list) else str(source)).strip()
        if not text:
            continue
        if cell.get("cell_type") == "code":
            text = f"```{language}\n{text}\n```"
        else:
            prose.append(text)
        pieces.append(text)
        size += len(text)
        if size > max_bytes:
            raise TooLong(f"too_long: over {max_bytes} characters of text")
    return {"text": "\n\n".join(pieces), "metadata": _markdown_title("\n\n".join(prose)), "pieces": pieces}


def pdf_document(path: Path, kind: Kind, max_bytes: int) -> dict[str, Any]:
    """The text layer, page by page; `page_starts[i]` is where page i + 1 begins in the (normalized) text, so a
    passage can be traced to its page. A PDF of scanned images has no text layer: quarantined as empty."""
    import pypdf

    try:
        reader = pypdf.PdfReader(path)
        pages = reader.pages
        len(pages)  # reads the page tree: a damaged one fails here, as the file's failure
    except Exception as exc:  # pypdf raises many types for a damaged file
        raise UnreadableFile(f"not a readable PDF: {type(exc).__name__}: {exc}") from exc

    def texts() -> Iterator[str]:
        for number, page in enumerate(pages, start=1):
            try:
                yield normalize_text(page.extract_text() or "")
            except Exception as exc:  # a page pypdf cannot decode: the document is quarantined, naming the page
                raise BadRecord(f"unreadable_page: page {number}: {type(exc).__name__}: {exc}") from exc

    def title() -> str | None:
        found = (reader.metadata or {}).get("/Title") if reader.metadata else None
        return str(found) if found else None

    read: list[str] = []
    size = 0
    for text in texts():  # all pages (the words of the whole document mend the hyphens), up to the bound
        read.append(text)
        size += len(text) + len(PAGE_BREAK)
        if size > max_bytes:
            break  # `_by_unit` raises TooLong, naming this page
    pages_read, furniture = without_page_furniture(read)
    document = _by_unit(dehyphenated(pages_read), "page", max_bytes, title)
    if furniture:
        document["metadata"]["furniture_lines"] = furniture  # running headers, footers and page numbers dropped
    return document


_HYPHEN_BREAK = regex.compile(r"(?<![\w-])(\w*\p{L})-\n[ \t]*(\p{Ll}\w*)")  # `manip-` at a line's end, `ulation`
_HYPHENATED_WORD = regex.compile(r"\w+(?:-\w+)*")


_EDGE_LINES = 2  # the lines at a page's top and at its foot where running headers and footers stand
_NUMBER = re.compile(r"\d+")
_LETTER = regex.compile(r"\p{L}")
# where a page's number stands in a header or footer: the line's first or last word (`3`, `- 3 -`, `Chapter 2:
# Utilities 3`), after "page" opening or closing it (`Page 3 of 17 ...`, `... Summary Page 3`), or before "of N"
# or "/N" closing it (`3 of 17`, `3/17`)
_PAGE_NUMBER = re.compile(
    r"^\W*(\d+)\b|\b(\d+)\W*$|^\W*page\s+(\d+)|\bpage\s+(\d+)(?:\s*(?:of|/)\s*\d+)?\W*$|\b(\d+)\s*(?:of|/)\s*\d+\W*$",
    re.IGNORECASE,
)
_HEADER_WORDS = 12  # a running header or footer is short: a longer line carrying the page's number is the page's text


def without_page_furniture(pages: list[str]) -> tuple[list[str], int]:
    """Pages without their running headers and footers, and how many lines were dropped: in the text layer they
    stood inside the paragraphs a page break cuts and began every page's chunk (libtasn1's manual: `Chapter 2: ASN.1
    structure handling 3` atop its pages, a bare page number atop the chapters' first; the MIME-info spec: its title
    atop all 17 pages, its page number at each foot). Among a page's first and last _EDGE_LINES lines, a line is
    furniture where (1) it is the page's first or last line, of _HEADER_WORDS words at most, and carries the page's
    own number where a header does (its first or last word, after "page" or before "of N" at its start or end):
    the printed number is the page's index plus one offset, the one that most pages' edge lines agree on (3 pages
    at least), and the line is that number alone or its words, numbers aside, stand so at that edge of 3 pages or
    more (`Page 1 line 0: charger P1L0 delivers 11 kW ...`, a long line of a page's own text, is not); or (2) the
    same line, numbers and all, with a letter in it, stands at that edge of at least half the pages, 3 or more (a
    running title): dropped but where it first stands (the first page's title, a notice printed once more on each
    page: kept once). A line that repeats at an edge by chance (`return 0;` atop three pages of code), or a page's
    own text whose numbers change from page to page (a catalogue's `Section 3 ... 0.33 EUR`), is neither: kept."""
    edges: list[list[tuple[str, int, str]]] = []  # per page: (edge, line index, the line casefolded, spaced)
    same: dict[tuple[str, str], list[int]] = {}  # (edge, line): the pages it stands on
    for number, page in enumerate(pages):
        lines = page.split("\n")
        filled = [index for index, line in enumerate(lines) if line.strip()]
        top, foot = (
            filled[:_EDGE_LINES],
            [index for index in filled[-_EDGE_LINES:] if index not in filled[:_EDGE_LINES]],
        )
        found = [
            (edge, index, " ".join(lines[index].split()).casefold())
            for edge, at in (("top", top), ("foot", foot))
            for index in at
        ]
        for edge, _, line in found:
            same.setdefault((edge, line), []).append(number)
        edges.append(found)

    def running(edge: str, line: str) -> bool:  # (2)
        where = same[(edge, line)]
        return len(where) >= 3 and 2 * len(where) >= len(pages) and bool(_LETTER.search(line))

    seen: dict[tuple[str, str], set[int]] = {}  # (edge, the line with its numbers as #): the pages it stands on
    offsets: dict[int, set[int]] = {}  # printed page number minus the page's index: the pages that agree
    printed: list[dict[int, set[int]]] = []  # per page: its outermost lines' possible printed numbers, as offsets
    for number, found in enumerate(edges):
        printed.append({})
        outer = [index for edge, index, line in found if not running(edge, line)]  # a running title's
        for edge, index, line in found:  # outermost line is above the page-numbered one (dmca's: 2 lines atop)
            seen.setdefault((edge, _NUMBER.sub("#", line)), set()).add(number)
            short = len(line.split()) <= _HEADER_WORDS  # `Page 1 line 0: charger P1L0 delivers ...`: the text's
            if outer and index in (outer[0], outer[-1]) and short:  # a number in a line under it: a section's
                at = {int(n) - number for match in _PAGE_NUMBER.finditer(line) for n in match.groups() if n}
                printed[-1][index] = at
                for offset in at:
                    offsets.setdefault(offset, set()).add(number)
    best = max(offsets, key=lambda offset: len(offsets[offset]), default=None)
    page_offset = best if best is not None and len(offsets[best]) >= 3 else None

    def furniture(edge: str, index: int, line: str, page: int) -> bool:
        if page_offset in printed[page].get(index, ()):  # (1)
            key = _NUMBER.sub("#", line)
            if _LETTER.search(key) is None or len(seen[(edge, key)]) >= 3:
                return True
        return running(edge, line) and page != same[(edge, line)][0]  # where it first stands, it is the page's

    cleaned: list[str] = []
    dropped = 0
    for number, (page, found) in enumerate(zip(pages, edges, strict=True)):
        drop = {index for edge, index, line in found if furniture(edge, index, line, number)}
        if drop:
            dropped += len(drop)
            page = normalize_text("\n".join(line for index, line in enumerate(page.split("\n")) if index not in drop))
        cleaned.append(page)
    return cleaned, dropped


def dehyphenated(pages: list[str]) -> list[str]:
    """Pages whose words broken across a line by a hyphen (typeset text: `manip-\nulation`, `self-\ncontained`) are
    whole again where the document itself tells how: as `manipulation` where it writes that word elsewhere and never
    `manip-ulation`, as `self-contained` where it writes that and never `selfcontained`; where it writes neither (or
    both), left as it is. The word's two lines become one."""
    seen: dict[str, int] = {}
    for page in pages:
        for word in _HYPHENATED_WORD.findall(page):
            seen[word.lower()] = seen.get(word.lower(), 0) + 1

    def mend(found: regex.Match[str]) -> str:
        head, tail = found[1], found[2]
        joined, hyphenated = seen.get((head + tail).lower(), 0), seen.get(f"{head}-{tail}".lower(), 0)
        if joined and not hyphenated:
            return head + tail
        if hyphenated and not joined:
            return f"{head}-{tail}"
        return found[0]

    return [_HYPHEN_BREAK.sub(mend, page) if "-\n" in page else page for page in pages]


def _blocks(lines: Iterable[tuple[Any, str]]) -> list[str]:
    """An office file's lines, (group, text) each, as its blocks: a run of lines of one group (a list's items, a
    table's rows) one block, a line each; a line of no group (None: a paragraph, a heading) a block of its own.
    The blocks are joined by a blank line (PAGE_BREAK), as a reader shows paragraphs apart, so a heading is not
    the next paragraph's first words (the extractive backend's sentence began with it)."""
    blocks: list[list[str]] = []
    last: Any = None
    for group, text in lines:
        if group is not None and group == last:
            blocks[-1].append(text)
        else:
            blocks.append([text])
        last = group
    return ["\n".join(block) for block in blocks]


_W = "{http://schemas.openxmlformats.org/wordprocessingml/2006/main}"  # WordprocessingML's namespace
_ROMAN = (("m", 1000), ("cm", 900), ("d", 500), ("cd", 400), ("c", 100), ("xc", 90), ("l", 50), ("xl", 40),
          ("x", 10), ("ix", 9), ("v", 5), ("iv", 4), ("i", 1))  # fmt: skip


def _list_number(value: int, style: str) -> str:
    """A list counter as Word writes it in `style` (its numFmt); one it has no rule for: decimal."""
    if style in ("lowerLetter", "upperLetter") and value > 0:
        letters = ""
        while value > 0:
            value, rest = divmod(value - 1, 26)
            letters = chr(ord("a") + rest) + letters
        return letters.upper() if style == "upperLetter" else letters
    if style in ("lowerRoman", "upperRoman") and 0 < value < 4000:
        roman = ""
        for numeral, worth in _ROMAN:
            count, value = divmod(value, worth)
            roman += numeral * count
        return roman.upper() if style == "upperRoman" else roman
    return f"{value:02d}" if style == "decimalZero" else str(value)


class _DocxLists:
    """A DOCX's list markers as Word shows them: a numbered item's number in its level's format and text (`1.`,
    `a)`, `1.2.`, counted per list from its start, a deeper level's count restarting under a new item above it), a
    bulleted item's `- `, two spaces' indent a level; from the numbering part, and the paragraph's numbering or its
    style's (Word's List Number and List Bullet styles number their paragraphs)."""

    def __init__(self, document: Any) -> None:
        self.levels: dict[str, dict[int, tuple[str, str, int]]] = {}  # numId: {level: (format, text, start)}
        self.counts: dict[str, dict[int, int]] = {}
        try:
            numbering = document.part.numbering_part.element
        except (KeyError, NotImplementedError):  # no numbering part: every list item is a bullet
            return
        abstract = {a.get(f"{_W}abstractNumId"): self._levels(a) for a in numbering.iter(f"{_W}abstractNum")}
        for number in numbering.iter(f"{_W}num"):
            reference = number.find(f"{_W}abstractNumId")
            if reference is not None:
                self.levels[number.get(f"{_W}numId")] = abstract.get(reference.get(f"{_W}val"), {})

    @staticmethod
    def _levels(definition: Any) -> dict[int, tuple[str, str, int]]:
        def value(level: Any, name: str, default: str) -> str:
            found = level.find(f"{_W}{name}")
            return default if found is None else found.get(f"{_W}val", default)

        levels = {}
        for level in definition.iter(f"{_W}lvl"):
            written = level.get(f"{_W}ilvl", "0")
            if not written.isdigit():  # a damaged definition: the level is left out (its items get bullets)
                continue
            depth, start = int(written), value(level, "start", "1")
            levels[depth] = (
                value(level, "numFmt", "decimal"),
                value(level, "lvlText", f"%{depth + 1}."),
                int(start) if start.isdigit() else 1,
            )
        return levels

    @staticmethod
    def _numbering(paragraph: Any) -> tuple[str, int] | None:
        """(numId, level) of a paragraph's numbering: its own, else its style's or a base style's; None: none."""
        properties, style = paragraph._p.pPr, paragraph.style  # python-docx has no public handle on numbering
        found = properties.numPr if properties is not None else None
        seen: set[str] = set()  # a style based on itself (or on one based on it) would loop
        while found is None and style is not None and style.style_id not in seen:
            seen.add(style.style_id)
            found = style.element.pPr.numPr if style.element.pPr is not None else None
            style = style.base_style
        try:
            if found is None or found.numId is None or found.numId.val == 0:  # numId 0: numbering taken off
                return None
            return str(found.numId.val), found.ilvl.val if found.ilvl is not None else 0
        except ValueError:  # a damaged numbering reference (not a number): no list item
            return None

    def marker(self, paragraph: Any) -> str | None:
        """The paragraph's list marker, counted (call once a paragraph, in order); None where it is no list item."""
        numbering = self._numbering(paragraph)
        if numbering is None:
            return None
        number, depth = numbering
        levels = self.levels.get(number, {})
        style, text, start = levels.get(depth, ("bullet", "", 1))
        counts = self.counts.setdefault(number, {})
        counts[depth] = counts.get(depth, start - 1) + 1
        for deeper in [level for level in counts if level > depth]:
            del counts[deeper]
        indent = "  " * depth
        if style == "bullet":
            return f"{indent}- "
        if style == "none":
            return indent

        def counter(found: re.Match[str]) -> str:
            level = int(found[1]) - 1
            level_style, _, level_start = levels.get(level, ("decimal", "", 1))
            return _list_number(counts.get(level, level_start), level_style)

        return f"{indent}{re.sub(r'%([1-9])', counter, text).strip()} "


def _docx_text(paragraph: Any) -> str:
    """A DOCX paragraph's text (its runs and its hyperlinks' runs, as python-docx's `text`), a superscript that is
    an exponent written with `^` as in HTML (`m^2`, `2^(n − 1)`)."""
    pieces: list[str] = []
    raised: list[str] = []  # superscript runs in a row (Word splits a run where it likes)

    def settle() -> None:
        content = "".join(raised)
        if content:
            caret, closer = _exponent_marks(next((p for p in reversed(pieces) if p), ""), content)
            pieces.append(f"{caret}{' '.join(content.split())}{closer}" if caret else content)
        raised.clear()

    for item in paragraph.iter_inner_content():
        for run in item.runs if hasattr(item, "runs") else [item]:
            if run.font.superscript:
                raised.append(run.text)
            else:
                settle()
                pieces.append(run.text)
    settle()
    return "".join(pieces)


def docx_document(path: Path, kind: Kind, max_bytes: int) -> dict[str, Any]:
    """Paragraphs and tables in document order, as blocks (`_blocks`): a paragraph or a heading a block, a list's
    items (with their markers, `_DocxLists`) and a table's rows a line each; the title from the core properties or
    the first heading."""
    import docx

    try:
        document = docx.Document(str(path))
    except Exception as exc:  # python-docx raises several types for a damaged or foreign file
        raise UnreadableFile(f"not a readable DOCX: {type(exc).__name__}: {exc}") from exc
    lines: list[tuple[Any, str]] = []
    heading = None
    size = 0  # the text so far, kept as it grows (summing the lines at each block cost O(blocks²))
    lists = _DocxLists(document)
    for number, block in enumerate(document.iter_inner_content()):
        if isinstance(block, docx.text.paragraph.Paragraph):
            marker = lists.marker(block)
            texts = [_docx_text(block) if marker is None else marker + _docx_text(block).lstrip()]
            group: Any = None if marker is None else "list"
            if heading is None and block.style is not None and block.style.name.startswith(("Heading", "Title")):
                heading = block.text.strip() or None
        else:  # a merged cell is in `row.cells` once per column it spans: once here
            rows = (table_row(c.text for c in {id(c._tc): c for c in row.cells}.values()) for row in block.rows)
            texts, group = [row for row in rows if row], ("table", number)
        lines.extend((group, text) for text in texts)
        size += sum(map(len, texts))
        if size > max_bytes:
            raise TooLong(f"too_long: over {max_bytes} characters of text")
    title = document.core_properties.title or heading
    pieces = _blocks(lines)
    return {"text": PAGE_BREAK.join(pieces), "metadata": {"title": title} if title else {}, "pieces": pieces}


def table_row(cells: Iterable[str]) -> str:
    """A table's row as one line, its cells' texts (each on one line) between " | ", as Markdown writes a row: the
    row stays a row where each cell on a line of its own lost which value was whose. A row of empty cells: ""."""
    texts = [" ".join(cell.split()) for cell in cells]
    return " | ".join(texts) if any(texts) else ""


def _zip_archive(path: Path, what: str) -> None:
    """Office files and e-books are zip archives: one that is not fails in those words (its library's own error
    would not say it)."""
    if not zipfile.is_zipfile(path):
        raise UnreadableFile(f"not a readable {what}: not a zip archive")


def _shape_texts(shapes: Any) -> Iterator[str]:
    """The text of a slide's shapes in the deck's order, a block each: a text frame its paragraphs a line each (with
    their bullets, `_slide_lines`), a table its rows a line each, a group's shapes each a block."""
    from pptx.enum.shapes import MSO_SHAPE_TYPE

    for shape in shapes:
        if shape.shape_type == MSO_SHAPE_TYPE.GROUP:
            yield from _shape_texts(shape.shapes)
        elif getattr(shape, "has_table", False):  # a merged cell once: the cells it spans over are `is_spanned`
            rows = (table_row(cell.text for cell in row.cells if not cell.is_spanned) for row in shape.table.rows)
            yield "\n".join(row for row in rows if row)
        elif getattr(shape, "has_text_frame", False):
            yield "\n".join(_slide_lines(shape))


_DRAWING = "{http://schemas.openxmlformats.org/drawingml/2006/main}"
_PRESENTATION = "{http://schemas.openxmlformats.org/presentationml/2006/main}"
_AUTO_NUMBERS = {"arabic": "decimal", "alphaLc": "lowerLetter", "alphaUc": "upperLetter", "romanLc": "lowerRoman",
                 "romanUc": "upperRoman"}  # fmt: skip
_AUTO_ENDS = {"Period": ("", "."), "ParenR": ("", ")"), "ParenBoth": ("(", ")"), "Plain": ("", "")}


def _bullet(properties: Any) -> tuple[str, str, int] | None:
    """What a paragraph's properties (`a:pPr`, or a list style's `a:lvlNpPr`) say of its bullet: ("none", "", 0),
    ("bullet", "", 0), ("number", its autonumber scheme, its start); None where they say nothing (inherited)."""
    if properties is None:
        return None
    if properties.find(f"{_DRAWING}buNone") is not None:
        return ("none", "", 0)
    auto = properties.find(f"{_DRAWING}buAutoNum")
    if auto is not None:
        start = str(auto.get("startAt") or "1")
        return ("number", str(auto.get("type") or "arabicPeriod"), int(start) if start.isdigit() else 1)
    if properties.find(f"{_DRAWING}buChar") is not None or properties.find(f"{_DRAWING}buBlip") is not None:
        return ("bullet", "", 0)
    return None


def _inherited_bullets(shape: Any) -> Callable[[int], tuple[str, str, int]]:
    """A shape's bullet for each paragraph level as PowerPoint inherits it: the shape's list style, then, for a
    placeholder, its layout's and its master's placeholder's, then the master's text style (the title's, a body
    placeholder's with bullets at every level, or other text's: a text box has none)."""
    from pptx.enum.shapes import PP_PLACEHOLDER

    styles = []  # the a:lstStyle elements, nearest first
    chain, master_style = shape, "otherStyle"
    if getattr(shape, "is_placeholder", False):
        kind = shape.placeholder_format.type
        if kind in (PP_PLACEHOLDER.TITLE, PP_PLACEHOLDER.CENTER_TITLE, PP_PLACEHOLDER.VERTICAL_TITLE):
            master_style = "titleStyle"
        elif kind in (PP_PLACEHOLDER.BODY, PP_PLACEHOLDER.OBJECT, PP_PLACEHOLDER.SUBTITLE,
                      PP_PLACEHOLDER.VERTICAL_BODY, PP_PLACEHOLDER.VERTICAL_OBJECT):  # fmt: skip
            master_style = "bodyStyle"
    for _ in range(3):  # the shape, its layout's placeholder, its master's
        body = getattr(chain._element, "txBody", None) if chain is not None else None
        if body is not None and body.find(f"{_DRAWING}lstStyle") is not None:
            styles.append(body.find(f"{_DRAWING}lstStyle"))
        try:
            chain = getattr(chain, "_base_placeholder", None) if chain is not None else None
        except (KeyError, AttributeError, ValueError):  # a placeholder its layout does not have
            chain = None
    try:
        master = shape.part.slide.slide_layout.slide_master._element
        text_styles = master.find(f"{_PRESENTATION}txStyles")
        found = text_styles.find(f"{_PRESENTATION}{master_style}") if text_styles is not None else None
    except (AttributeError, KeyError, ValueError):  # a shape of no slide (a notes page's) or a damaged master
        found = None
    if found is not None:
        styles.append(found)

    def level(depth: int) -> tuple[str, str, int]:
        for style in styles:
            if said := _bullet(style.find(f"{_DRAWING}lvl{depth + 1}pPr")):
                return said
        return ("none", "", 0)

    return level


def _slide_lines(shape: Any) -> Iterator[str]:
    """A text frame's paragraphs a line each, with the marker PowerPoint shows: `- ` for a bullet, `1.`, `a)`, `(iv)`
    for an autonumber (counted per level, a deeper level restarting under a new paragraph above it), two spaces'
    indent a level; an empty paragraph shows none."""
    inherited = _inherited_bullets(shape)
    counts: dict[int, int] = {}
    for paragraph in shape.text_frame.paragraphs:
        try:
            text, depth = paragraph.text, min(max(paragraph.level, 0), 8)
        except ValueError:  # a level that is no number: the paragraph's text at the first level
            text, depth = paragraph.text, 0
        kind, scheme, start = _bullet(paragraph._p.pPr) or inherited(depth)
        for deeper in [level for level in counts if level > depth]:
            del counts[deeper]
        if not text.strip() or kind == "none":
            counts.pop(depth, None)
            yield text
            continue
        indent = "  " * depth
        if kind == "bullet":
            counts.pop(depth, None)
            yield f"{indent}- {text}"
            continue
        counts[depth] = counts.get(depth, start - 1) + 1
        form = next((v for k, v in _AUTO_NUMBERS.items() if scheme.startswith(k)), "decimal")
        before, after = next((v for k, v in _AUTO_ENDS.items() if scheme.endswith(k)), ("", "."))
        yield f"{indent}{before}{_list_number(counts[depth], form)}{after} {text}"


def pptx_document(path: Path, kind: Kind, max_bytes: int) -> dict[str, Any]:
    """Each slide's text (its shapes, tables and groups in order, then its speaker notes, which often carry what the
    slide only names; each a block between blank lines, so a slide's title is not its first bullet's first words);
    `slide_starts[i]` is where slide i + 1 begins in the (normalized) text, as a PDF's pages."""
    import pptx

    _zip_archive(path, "PPTX")
    try:
        deck = pptx.Presentation(str(path))
        slides = list(deck.slides)
    except Exception as exc:  # python-pptx raises several types for a damaged or foreign file
        raise UnreadableFile(f"not a readable PPTX: {type(exc).__name__}: {exc}") from exc
    titles: list[str] = []  # the slides' title placeholders' texts, in order

    def texts() -> Iterator[str]:
        for slide in slides:
            lines = list(_shape_texts(slide.shapes))
            if slide.has_notes_slide and slide.notes_slide.notes_text_frame is not None:
                lines.append(slide.notes_slide.notes_text_frame.text)
            if slide.shapes.title is not None and slide.shapes.title.text.strip():
                titles.append(slide.shapes.title.text.strip())
            yield normalize_text(PAGE_BREAK.join(line for line in lines if line.strip()))

    return _by_unit(texts(), "slide", max_bytes, lambda: deck.core_properties.title or next(iter(titles), None))


# ODF elements whose text is not the document's running text: deleted text kept for change tracking, generated
# tables of contents and indexes (the headings again), declarations
_ODT_SKIPPED = frozenset(
    {"text:tracked-changes", "text:table-of-content", "text:alphabetical-index", "text:illustration-index",
     "text:object-index", "text:user-index", "text:bibliography", "text:sequence-decls", "text:variable-decls",
     "text:user-field-decls", "office:forms"}
)  # fmt: skip


_ODF_FORMATS = {"1": "decimal", "a": "lowerLetter", "A": "upperLetter", "i": "lowerRoman", "I": "upperRoman"}


class _OdfLists:
    """An OpenDocument's list markers as LibreOffice shows them: a bullet's `- `, a number in its level's format
    (`style:num-format`: 1, a, A, i, I) between its prefix and suffix (`1.`, `(a)`), counted per list from its
    start, two spaces' indent a level; from the list's style (a nested list's is its outermost list's)."""

    def __init__(self, document: Any) -> None:
        self.document = document
        self.levels: dict[tuple[str | None, int], tuple[str | None, str, str, int]] = {}

    def level(self, style: str | None, depth: int) -> tuple[str | None, str, str, int]:
        """(format: None for a bullet, "" for no marker; prefix, suffix, start) of a list style's level."""
        if (style, depth) not in self.levels:
            found = self.document.get_style("list", style) if style else None
            level = (
                next((c for c in found.children if c.get_attribute("text:level") == str(depth)), None)
                if found
                else None
            )
            if level is None or level.tag != "text:list-level-style-number":
                self.levels[style, depth] = (None, "", "", 1)
            else:
                start = str(level.get_attribute("text:start-value") or "1")
                self.levels[style, depth] = (
                    str(level.get_attribute("style:num-format") or ""),
                    str(level.get_attribute("style:num-prefix") or ""),
                    str(level.get_attribute("style:num-suffix") or ""),
                    int(start) if start.isdigit() else 1,
                )
        return self.levels[style, depth]

    def marker(self, style: str | None, depth: int, number: int) -> str:
        form, prefix, suffix, _ = self.level(style, depth)
        indent = "  " * (depth - 1)
        if form is None:
            return f"{indent}- "
        if not form:
            return indent
        return f"{indent}{prefix}{_list_number(number, _ODF_FORMATS.get(form, 'decimal'))}{suffix} "


def _odt_blocks(
    element: Any, group: Any = None, lists: _OdfLists | None = None, style: str | None = None, depth: int = 0
) -> Iterator[tuple[str, str, Any]]:
    """(tag, text, group) of each heading and paragraph under an ODF element, in order, wherever it sits: in a
    section, a list item, a frame; a table's row as one line (`table_row`). The group (`_blocks`): the list or the
    table a paragraph is an item or a row of, else None. A list item's first paragraph begins with its marker
    (`lists`; `style` and `depth`: the list's the walk is in). A paragraph's text is odfdo's (spaces, tabs and line
    breaks as written; a footnote's text where its mark is). Not a list's or a table's own text: odfdo renders
    those as Markdown, escaping the text (`max\\_queue\\_size \\- The...` for an item of docutils' rst2odt
    output, found on awscli's docs)."""
    for child in element.children:
        if child.tag in _ODT_SKIPPED:
            continue
        if child.tag in ("text:p", "text:h"):
            yield child.tag, child.text_recursive, group if child.tag == "text:p" else None
        elif child.tag == "table:table-row":  # one line; a covered cell (under a merged one) is not a cell here
            cells = (cell for cell in child.children if cell.tag == "table:table-cell")
            if row := table_row(" ".join(text for _, text, _ in _odt_blocks(cell)) for cell in cells):
                yield child.tag, row, group
        elif child.tag == "table:table":  # its rows (header rows and all) are lines of one block
            yield from _odt_blocks(child, ("table", id(child)), lists, style, depth)
        elif child.tag == "text:list":  # its items (a list nested in one too) are lines of the outermost list
            yield from _odt_list(child, group if group is not None else ("list", id(child)), lists, style, depth + 1)
        else:
            yield from _odt_blocks(child, group, lists, style, depth)


def _odt_list(
    element: Any, group: Any, lists: _OdfLists | None, style: str | None, depth: int
) -> Iterator[tuple[str, str, Any]]:
    """A list's items (`_odt_blocks`), each item's first paragraph after its marker."""
    style = element.get_attribute("text:style-name") or style
    number = (lists.level(style, depth)[3] if lists else 1) - 1
    for item in element.children:
        if item.tag not in ("text:list-item", "text:list-header"):
            continue
        marker = ""
        if item.tag == "text:list-item":  # a header has no marker
            restart = str(item.get_attribute("text:start-value") or "")
            number = int(restart) if restart.isdigit() else number + 1
            marker = lists.marker(style, depth, number) if lists else ""
        for tag, text, inner in _odt_blocks(item, group, lists, style, depth):
            if marker and tag == "text:p":
                text, marker = marker + text.lstrip(), ""
            yield tag, text, inner


def odt_document(path: Path, kind: Kind, max_bytes: int) -> dict[str, Any]:
    """An OpenDocument text (LibreOffice's, many administrations'), by odfdo: its blocks in order (`_blocks`: a
    paragraph or a heading a block, a list's items and a table's rows a line each); the title from its metadata
    or its first heading."""
    from odfdo import Document

    _zip_archive(path, "ODT")
    try:
        document = Document(str(path))
        body = document.body
    except Exception as exc:  # odfdo and lxml raise several types for a damaged or foreign file
        raise UnreadableFile(f"not a readable ODT: {type(exc).__name__}: {exc}") from exc
    if document.get_type() != "text":
        raise UnreadableFile(f"not a readable ODT: an OpenDocument {document.get_type()}, not a text")
    lines: list[tuple[Any, str]] = []
    heading = None
    size = 0
    for tag, text, group in _odt_blocks(body, lists=_OdfLists(document)):
        lines.append((group, text))
        size += len(text)
        if heading is None and tag == "text:h":
            heading = text.strip() or None
        if size > max_bytes:
            raise TooLong(f"too_long: over {max_bytes} characters of text")
    title = (document.meta.title or "").strip() or heading
    pieces = _blocks(lines)
    return {"text": PAGE_BREAK.join(pieces), "metadata": {"title": title} if title else {}, "pieces": pieces}


def _odp_slide(page: Any, lists: _OdfLists | None = None) -> tuple[str, str | None]:
    """A slide's text (its frames in order, then its speaker notes, each a block between blank lines: a frame's
    paragraphs and a table's rows a line each) and its title frame's text."""
    lines: list[str] = []
    title = None
    notes = []
    for child in page.children:
        text = "\n".join(paragraph for _, paragraph, _ in _odt_blocks(child, lists=lists))
        if child.tag == "presentation:notes":
            notes.append(text)
            continue
        lines.append(text)
        if title is None and child.get_attribute("presentation:class") == "title" and text.strip():
            title = text.strip()
    return PAGE_BREAK.join(line for line in [*lines, *notes] if line.strip()), title


def odp_document(path: Path, kind: Kind, max_bytes: int) -> dict[str, Any]:
    """An OpenDocument presentation (.odp, LibreOffice Impress), by odfdo, as a PowerPoint deck is read: each slide's
    text then its speaker notes, `slide_starts`, the title from the metadata or the first slide's title."""
    from odfdo import Document

    _zip_archive(path, "ODP")
    try:
        document = Document(str(path))
        pages = [c for c in document.body.children if c.tag == "draw:page"]
    except Exception as exc:  # odfdo and lxml raise several types for a damaged or foreign file
        raise UnreadableFile(f"not a readable ODP: {type(exc).__name__}: {exc}") from exc
    if document.get_type() != "presentation":
        raise UnreadableFile(f"not a readable ODP: an OpenDocument {document.get_type()}, not a presentation")
    titles: list[str] = []
    lists = _OdfLists(document)

    def texts() -> Iterator[str]:
        for page in pages:
            text, title = _odp_slide(page, lists)
            titles.extend([title] if title else [])
            yield normalize_text(text)

    def title() -> str | None:
        return (document.meta.title or "").strip() or next(iter(titles), None)

    return _by_unit(texts(), "slide", max_bytes, title)


_HTML_LINES = frozenset({"caption", "div", "figcaption", "tbody", "tfoot", "thead", "tr"})
_HTML_PARAGRAPHS = frozenset(
    {"address", "article", "aside", "blockquote", "dl", "figure", "footer", "h1", "h2", "h3", "h4", "h5", "h6",
     "header", "hr", "main", "nav", "ol", "p", "section", "table", "ul"}
)  # fmt: skip
_HTML_DROPPED = frozenset({"script", "style", "template", "noscript", "head"})
_HTML_LISTS = ("ol", "ul")
# How a block is laid out (`_laid_out`): a paragraph (blank lines around it), one as written (a <pre> block), a
# line, a list item (a line with its marker), a line break after it, a table cell, dropped with its text, inline
# but as written (<textarea>); anything else is inline text.
_PARAGRAPH, _WRITTEN, _LINE, _ITEM = "paragraph", "written", "line", "item"
_BREAK, _CELL, _DROPPED, _KEPT, _SUPERSCRIPT = "break", "cell", "dropped", "kept", "superscript"
# a superscript that is an exponent: a number or a one-letter variable, maybe with arithmetic (`7`, `-64`, `n − 1`),
# not a grammar's `*` or `?`, an ordinal's `st`, a `TM`, a label
_EXPONENT = re.compile(r"[-−+]?(?:\d[\d.,]*|[A-Za-z])(?:\s*[-−+*/×·]\s*(?:\d[\d.,]*|[A-Za-z]))*")
_BASE_END = re.compile(r"[\w)\]]$")  # what an exponent's base ends in
_TOKEN = re.compile(r"[\w.,]+")


def _exponent_marks(before: str, superscript: str) -> tuple[str, str]:
    """What goes before and after a superscript's text, given the text before it: `^` (`2^7`, `2^n`) or `^(` and
    `)` (`2^(n − 1)`, `10^(-6)`) for an exponent after its base; nothing for any other superscript."""
    content = " ".join(superscript.split())
    if not _BASE_END.search(before) or not _EXPONENT.fullmatch(content):
        return "", ""
    return ("^", "") if _TOKEN.fullmatch(content) else ("^(", ")")


_BLOCKS = {_PARAGRAPH: 2, _WRITTEN: 2, _LINE: 1, _ITEM: 1}  # the line breaks before and after each kind of block


def _html_role(element: Any) -> str:
    tag = element.tag
    if tag in _HTML_DROPPED:
        return _DROPPED
    if tag == "pre":
        return _WRITTEN
    if tag in ("li", "dt", "dd"):
        return _ITEM
    if tag in _HTML_LISTS and any(True for _ in element.iterancestors("li")):
        return _LINE  # a list inside an item goes on under it, as a browser shows it
    if tag in _HTML_PARAGRAPHS:
        return _PARAGRAPH
    if tag in _HTML_LINES:
        return _LINE
    return {"br": _BREAK, "td": _CELL, "th": _CELL, "textarea": _KEPT, "sup": _SUPERSCRIPT}.get(tag, "")


_HTML_COUNTERS = {"a": "lowerLetter", "A": "upperLetter", "i": "lowerRoman", "I": "upperRoman"}  # <ol type>


def _integer(value: str | None) -> int | None:
    value = (value or "").strip()
    return int(value) if value.lstrip("-").isdigit() else None


def _marker(
    item: Any, previous: int | None, lists: tuple[str, ...], ordered: Callable[[Any], bool], term: str | None = None
) -> tuple[str, int | None]:
    """A list item's marker as a browser shows it, and its number: in an ordered list `N. ` counted as HTML counts
    (from the list's `start`, down where it is `reversed`, from an item's own `value` on; `previous`: the number of
    the item before in its list, None for the first) in its `type` (`a`, `A`, `i`, `I`), else `- `, indented two
    spaces for each list it is nested in; in a definition list (`term`: `dt` or `dd`), none for a term and two
    spaces' indent for its definition."""
    if term is not None:
        return ("  " if term == "dd" else ""), previous
    indent = "  " * max(sum(1 for _ in item.iterancestors(*lists)) - 1, 0)
    parent = item.getparent()
    if parent is None or not ordered(parent):
        return f"{indent}- ", previous
    down = parent.get("reversed") is not None
    number = _integer(item.get("value"))
    if number is None and previous is not None:
        number = previous - 1 if down else previous + 1
    if number is None:  # the list's first item
        number = _integer(parent.get("start"))
    if number is None:
        number = sum(1 for child in parent if child.tag == item.tag) if down else 1
    return f"{indent}{_list_number(number, _HTML_COUNTERS.get(parent.get('type') or '', 'decimal'))}. ", number


# what makes a table's row a page's layout rather than values: a table or a heading in a cell (HTML's, and
# trafilatura's XML's `head`; and a code block, `_WRITTEN`)
_LAYOUT_TAGS = frozenset({"table", "head", "h1", "h2", "h3", "h4", "h5", "h6"})


def _inline_cells(root: Any, role: Callable[[Any], str]) -> set[Any]:
    """The table cells under `root` whose blocks go on their row's line, a space between them: the cells of a row of
    two or more with no table, heading or code block in any (a Google Docs or Word export wraps every cell's text
    in a <p>, which laid out as a block broke a row over lines, ` | ` on a line of its own). A row of one cell, or
    one with a table or a heading in a cell, is an old page's layout, and code keeps its lines (DocBook's FAQ, an
    answer's code in its cell): their cells' blocks keep their lines. One walk."""
    from lxml import etree

    rows: dict[Any, list[Any]] = {}  # each row's cells; a layout row's: None
    open_rows: list[Any] = []  # the row of each cell the walk is inside
    for event, element in etree.iterwalk(root, events=("start", "end")):
        kind = role(element)
        if kind != _CELL:
            layout = element.tag in _LAYOUT_TAGS or kind == _WRITTEN or _as_written(element.text, element.tail)
            if event == "start" and open_rows and layout:
                rows[open_rows[-1]] = None  # type: ignore[assignment]
            continue
        if event == "end":
            open_rows.pop()
            continue
        row = element.getparent()
        open_rows.append(row)
        cells = rows.setdefault(row, [])
        if _as_written(element.text):
            rows[row] = None  # type: ignore[assignment]
        elif cells is not None:
            cells.append(element)
    return {cell for cells in rows.values() if cells is not None and len(cells) > 1 for cell in cells}


def _as_written(*texts: str | None) -> bool:
    """Whether any of `texts` runs over lines: in a spaced tree (`_spaced_tree`) only a <pre>'s or a <textarea>'s
    does, which trafilatura may have renamed (a <pre> in a table's cell: its `quote`)."""
    return any("\n" in text for text in texts if text)


def _laid_out(
    root: Any, role: Callable[[Any], str], marker: Callable[[Any, int | None], tuple[str, int | None]]
) -> str:
    """The text under `root`, laid out by each element's `role`, walked without recursion (a hostile page nests
    deeper than Python's stack): a run of whitespace inside a block a space (the tree is spaced already), none at a
    line's start, a block that begins where an item's marker was put goes on that line; inside a table's cell
    (`_inline_cells`) all on its row's line, a block's breaks a space; normalized."""
    from lxml import etree

    out: list[str] = []
    written = dropped = ends = 0  # the as-written and dropped elements the walk is inside; the text's last breaks
    fresh = True  # at a line's start, or just after an item's marker: leading spaces dropped, no break needed
    inline_cells = _inline_cells(root, role)
    inline = 0  # the inline cells the walk is inside: no line breaks

    def put(text: str | None) -> None:
        nonlocal ends, fresh
        if not text or dropped:
            return
        if inline:
            text = _HTML_SPACE.sub(" ", text)  # a <pre> in a cell too: the row is one line
        if (inline or not written) and fresh:
            text = text.lstrip(" ")
        if text:
            out.append(text)
            ends = len(text) - len(text.rstrip("\n"))
            fresh = ends > 0

    def line_break(wanted: int) -> None:  # where enough breaks already are (or a marker was just put), none more
        nonlocal ends, fresh
        if inline:  # a space (normalize_text makes a run of them one), and the line goes on
            if out and not dropped and not fresh:
                out.append(" ")
            return
        if out and not dropped and ends < wanted and (ends or not fresh):
            out.append("\n" * (wanted - ends))
            ends, fresh = wanted, True

    kinds: list[str] = []  # the role of each element the walk is inside (iterwalk reports elements only)
    closers: list[str] = []  # for each superscript the walk is inside: what ends it (`)` after `^(`)
    numbers: dict[Any, int | None] = {}  # each list's last item's number (kept, not counted again per item)

    for event, element in etree.iterwalk(root, events=("start", "end")):
        if event == "start":
            kind = role(element)
            kinds.append(kind)
            dropped += kind == _DROPPED
            if kind == _SUPERSCRIPT:
                base = "" if dropped or not out else out[-1]
                caret, closer = _exponent_marks(base, "".join(element.itertext()))
                closers.append(closer)
                if caret:
                    out.append(caret)
                    ends, fresh = 0, False
            if kind in _BLOCKS:
                line_break(_BLOCKS[kind])
            if kind == _ITEM:
                text, numbers[element.getparent()] = marker(element, numbers.get(element.getparent()))
                if not dropped:
                    out.append(text.lstrip(" ") if inline else text)
                    ends, fresh = 0, True
            written += kind in (_WRITTEN, _KEPT)
            inline += element in inline_cells
            put(element.text)
            continue
        kind = kinds.pop()
        written -= kind in (_WRITTEN, _KEPT)
        if kind in _BLOCKS or kind == _BREAK:
            line_break(_BLOCKS.get(kind, 1))
        elif kind == _CELL:
            inline -= element in inline_cells
            if not dropped and _next_cell(element, role):
                out.append(" | ")
                ends, fresh = 0, False
        elif kind == _SUPERSCRIPT and (closer := closers.pop()):
            out.append(closer)
            ends, fresh = 0, False
        dropped -= kind == _DROPPED
        put(element.tail)
    return normalize_text("".join(out))


def _next_cell(element: Any, role: Callable[[Any], str]) -> bool:
    """Whether another cell follows `element` in its row (comments between them skipped)."""
    following = element.getnext()
    while following is not None and not isinstance(following.tag, str):
        following = following.getnext()
    return following is not None and role(following) == _CELL


def html_text(markup: str | bytes) -> str:
    """All of a page's text (an e-book's chapter, where there is no site boilerplate to drop), laid out as a browser
    lays it out: a block on lines of its own (a paragraph, heading, list or table between blank lines; a list item,
    with its marker, a table row, a <div> on a line), a run of whitespace inside one a space, a <pre> block as
    written, a table's row a line with ` | ` between its cells; scripts and styles dropped. The tree is
    `_spaced_tree`'s."""
    root = _spaced_tree(markup)
    if root is None:
        return ""
    return _laid_out(root, _html_role, _html_marker)


def _html_marker(item: Any, previous: int | None) -> tuple[str, int | None]:
    term = item.tag if item.tag in ("dt", "dd") else None
    return _marker(item, previous, _HTML_LISTS, lambda parent: parent.tag == "ol", term)


# trafilatura's main content (its XML: head, p, list/item, table/row/cell, code, quote, lb, and inline hi, ref, del)
_MAIN_PARAGRAPHS = frozenset({"head", "p", "quote", "table", "list"})
_MAIN_INLINE = frozenset({"p", "head", "item", "cell", "hi", "ref", "del"})  # where a <code> may be inline


def _main_role(element: Any) -> str:
    tag = element.tag
    if tag == "code":  # a code block (a <pre>'s) unless it stands inside a paragraph's text on one line
        inline = element.getparent() is not None and element.getparent().tag in _MAIN_INLINE
        return "" if inline and "\n" not in "".join(element.itertext()) else _WRITTEN
    if tag == "list" and any(True for _ in element.iterancestors("item")):
        return _LINE
    if tag in _MAIN_PARAGRAPHS:
        return _PARAGRAPH
    if tag == "hi" and element.get("rend") == "#sup":
        return _SUPERSCRIPT
    return {"item": _ITEM, "row": _LINE, "lb": _BREAK, "cell": _CELL}.get(tag, "")


def epub_document(path: Path, kind: Kind, max_bytes: int) -> dict[str, Any]:
    """An e-book, by EbookLib: its chapters in reading order (the spine), each chapter's whole text (`html_text`:
    its blocks a line each, scripts and styles dropped; not trafilatura's main-content extraction, which takes a
    chapter's first heading for a page title and drops it, where a chapter has no site boilerplate to drop);
    `chapter_starts[i]` is where chapter i + 1 begins in the (normalized) text, as a PDF's pages. The navigation
    document (the table of contents) is left out."""
    import ebooklib
    from ebooklib import epub

    _zip_archive(path, "EPUB")
    try:
        book = epub.read_epub(str(path), options={"ignore_ncx": True})
        spine = [book.get_item_with_id(idref) for idref, _ in book.spine]
    except Exception as exc:  # EbookLib raises several types for a damaged or foreign file
        raise UnreadableFile(f"not a readable EPUB: {type(exc).__name__}: {exc}") from exc
    chapters = [
        item
        for item in spine
        if item is not None and item.get_type() == ebooklib.ITEM_DOCUMENT and not isinstance(item, epub.EpubNav)
    ]
    # the chapter's own bytes: EbookLib's get_content() rebuilds the page from them, read as UTF-8 whatever they are
    texts = (html_text(decoded_markup(item.content or b"")) for item in chapters)

    def title() -> str | None:
        titles = book.get_metadata("DC", "title")
        return (str(titles[0][0]).strip() or None) if titles else None

    return _by_unit(texts, "chapter", max_bytes, title)


WHOLE_FILE: dict[str, Callable[[Path, Kind, int], dict[str, Any]]] = {
    "text": text_document,
    "markdown": markdown_document,
    "rst": rst_document,
    "asciidoc": asciidoc_document,
    "html": html_document,
    "pdf": pdf_document,
    "docx": docx_document,
    "pptx": pptx_document,
    "odt": odt_document,
    "odp": odp_document,
    "epub": epub_document,
    "notebook": notebook_document,
}


# Long documents: parts ------------------------------------------------------------------------------------------
STREAMED = {"text", "markdown", "rst", "asciidoc"}  # read as a stream of paragraphs when long
# their libraries hold the whole file (a notebook: its JSON): read once, up to max_file_chars
READ_WHOLE = {"pdf", "docx", "pptx", "odt", "odp", "epub", "notebook"}


def too_long_file(max_file_chars: int) -> str:
    return f"too_long: the file holds over {max_file_chars} characters of text (data.max_file_chars)"


def _cut(text: str, start: int, limit: int) -> int:
    """Where to end a slice of `text` that begins at `start` and holds at most `limit` characters: after the last
    sentence end in its second half, else at the last whitespace there, else at `limit` (that many characters with
    no space in them)."""
    low, high = start + limit // 2, start + limit
    ends = [found.end() for found in _SENTENCE_END.finditer(text, low, high)]
    if ends:
        return ends[-1]
    spaces = [found.start() for found in _SPACE.finditer(text, low, high)]
    return spaces[-1] if spaces else high


def _slices(text: str, limit: int) -> Iterator[str]:
    """`text` (normalized) in slices of at most `limit` characters, cut where `_cut` says."""
    start = 0
    while len(text) - start > limit:
        end = _cut(text, start, limit)
        yield text[start:end].rstrip()
        start = end
        while start < len(text) and text[start].isspace():
            start += 1
    if start < len(text):
        yield text[start:]


def pack(pieces: Iterable[str], limit: int) -> Iterator[tuple[str, int, list[int]]]:
    """Parts of at most `limit` characters, each as many whole pieces (pages, slides, paragraphs: normalized) as fit,
    joined by a blank line (PAGE_BREAK, as in the whole document); a piece longer than a part is cut (`_slices`) and
    goes on in the next. With each part: the index of its first piece (one that began in an earlier part, where it
    goes on), and where in the part each of its pieces from that one begins (0 for the first); an empty piece
    begins where the next one will."""
    texts: list[str] = []
    size = first = 0
    starts: list[int] = []
    gap = len(PAGE_BREAK)
    for index, piece in enumerate(pieces):
        starts.append(size + gap if texts else 0)
        placed = False  # a fragment of this piece is in the part
        for fragment in _slices(piece, limit):
            if texts and size + gap + len(fragment) > limit:
                yield PAGE_BREAK.join(texts), first, starts if placed else starts[:-1]
                texts, size, first, starts = [], 0, index, [0]
            size += len(fragment) + (gap if texts else 0)
            texts.append(fragment)
            placed = True
    if texts:
        yield PAGE_BREAK.join(texts), first, starts


def _paragraph(text: str) -> str:
    """A paragraph normalized as it stands in its document: its first line keeps its indentation (a code block's)."""
    return normalize_text(text, keep_indent=True)


def _stream_paragraphs(path: Path, kind: Kind, limit: int) -> Iterator[str]:
    """A text file's paragraphs (between blank lines), normalized, read as a stream: what is held at once is a
    paragraph of at most 2 x `limit` characters (a longer one comes out in pieces cut where `_cut` says) and a
    chunk."""
    with open_binary(path, kind.compression) as stream:
        encoding = sniff_encoding(stream, kind.encoding)  # type: ignore[arg-type]
        reader = io.TextIOWrapper(stream, encoding=encoding, errors="strict", newline="")
        buffer = ""
        try:
            while True:
                chunk = reader.read(CHUNK)
                *done, buffer = PARAGRAPH_BREAK.split(buffer + chunk)  # the last may go on in the next chunk
                yield from filter(None, map(_paragraph, done))
                while len(buffer) > 2 * limit:  # one paragraph holding more than a part: hand its head on
                    cut = _cut(buffer, 0, limit)
                    if head := _paragraph(buffer[:cut]):
                        yield head
                    buffer = buffer[cut:]
                if not chunk:
                    break
        except UnicodeDecodeError as exc:
            raise BadRecord(f"{undecodable(exc.encoding)}: {exc.reason}") from exc
        if rest := _paragraph(buffer):
            yield rest


def _head_text(path: Path, kind: Kind) -> str:
    """A file's first TITLE_HEAD characters, for its title."""
    with open_binary(path, kind.compression) as stream:
        encoding = sniff_encoding(stream, kind.encoding)  # type: ignore[arg-type]
        return io.TextIOWrapper(stream, encoding=encoding, errors="replace", newline="").read(TITLE_HEAD)


def document_parts(
    path: Path, kind: Kind, record: dict[str, Any] | None, max_chars: int, max_file_chars: int
) -> Iterator[tuple[str, dict[str, Any]]]:
    """A long document's parts, (text, metadata) each. `record`: the document as its reader gave it, where it was
    read whole; None for a text file over the reading bound, read again here as a stream of paragraphs (counted to
    the end once before any part is made, so a file over `max_file_chars` is quarantined whole, never in part).
    Raises BadRecord (TooLong over `max_file_chars`) before the first part."""
    over = too_long_file(max_file_chars)
    if record is None:
        total = count = 0
        for text, _, _ in pack(_stream_paragraphs(path, kind, max_chars), max_chars):
            total, count = total + len(text), count + 1
            if total > max_file_chars:
                raise TooLong(over)
        metadata = TITLES[kind.format](_head_text(path, kind))
        return _numbered(pack(_stream_paragraphs(path, kind, max_chars), max_chars), metadata, None, count)
    if "pieces" in record:
        pieces = record["pieces"]
    else:  # paragraphs, between blank lines
        pieces = [p for p in map(_paragraph, PARAGRAPH_BREAK.split(record["text"])) if p]
    parts = list(pack(pieces, max_chars))
    if sum(len(text) for text, _, _ in parts) > max_file_chars:
        raise TooLong(over)
    metadata = {k: v for k, v in record["metadata"].items() if not k.endswith("_starts")}
    return _numbered(iter(parts), metadata, record.get("unit"), len(parts))


def _numbered(
    parts: Iterator[tuple[str, int, list[int]]], metadata: dict[str, Any], unit: str | None, count: int
) -> Iterator[tuple[str, dict[str, Any]]]:
    """Each part's metadata: the document's (its title; a PDF's `pages`, a deck's `slides`: the file's), `part`
    (from 1) and `parts`; by pages or slides, `first_page` (`first_slide`): the page the part begins in, and
    `page_starts` (`slide_starts`): where in the part that page and each after it begin, as in a whole document."""
    for number, (text, first, starts) in enumerate(parts, start=1):
        extra: dict[str, Any] = {"part": number, "parts": count}
        if unit is not None:
            extra |= {f"first_{unit}": first + 1, f"{unit}_starts": starts}
        yield text, {**metadata, **extra}
