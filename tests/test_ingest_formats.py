"""Loading what teams really have: a folder of every format (PDF and DOCX written here by their own libraries),
compressed files, byte-order marks and UTF-16/32, ragged and huge CSV, records built to crash a parser, and
files that are not data at all. Each case names the exact ids loaded and the exact records quarantined."""

from __future__ import annotations

import bz2
import codecs
import csv
import gzip
import io
import itertools
import json
import lzma
import re
import tracemalloc
import zipfile
from pathlib import Path

import docx
import pptx
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard
from fpdf import FPDF
from pptx.util import Inches

from llm_pipeline.config import DataConfig
from llm_pipeline.errors import DataValidationError
from llm_pipeline.ingest import IngestResult, load_documents, require_documents
from llm_pipeline.ingest.records import normalize_text
from llm_pipeline.io import write_jsonl
from llm_pipeline.text import split_sentences
from tests.translated_text import translated_messages

ARTICLE = (
    "Level 2 chargers deliver up to 19 kW from a 240 volt circuit. Most drivers charge overnight at home, and a "
    "full battery takes six to ten hours depending on the car's onboard charger and the size of its pack."
)


def load(path: Path, **kwargs: object) -> IngestResult:
    return load_documents(DataConfig(path=path, **kwargs))


def jsonl(*records: dict) -> bytes:
    return "".join(json.dumps(r) + "\n" for r in records).encode()


def rejected(result: IngestResult) -> dict[str, str]:
    """{location or id: reason prefix} of the quarantined records."""
    return {(r.record_id or f"{Path(r.source).name}:{r.location}"): r.reason.split(":")[0] for r in result.rejects}


def write_pdf(path: Path, pages: list[str], title: str | None = None) -> None:
    pdf = FPDF()
    if title:
        pdf.set_title(title)
    pdf.set_font("Helvetica", size=11)
    for text in pages:
        pdf.add_page()
        pdf.multi_cell(0, 6, text)
    pdf.output(str(path))


def write_docx(path: Path, heading: str, paragraphs: list[str], cells: list[str]) -> None:
    document = docx.Document()
    document.add_heading(heading, level=1)
    for text in paragraphs:
        document.add_paragraph(text)
    table = document.add_table(rows=1, cols=len(cells))
    for cell, text in zip(table.rows[0].cells, cells, strict=True):
        cell.text = text
    document.save(str(path))


def parts_by_file(result: IngestResult, limit: int) -> dict[str, list]:
    """The documents of a load with nothing rejected, by file (a part's id without its `#n`), none over `limit`."""
    assert result.rejects == []
    by_file: dict[str, list] = {}
    for document in result.documents:
        by_file.setdefault(document.id.split("#")[0], []).append(document)
        assert len(document.text) <= limit
    return by_file


def assert_parts_are_the_text(parts: list, whole: str) -> None:
    """A long document's parts lose nothing and move nothing: their words, in order, are the whole text's, and each
    part is a stretch of the whole text as it stands (its lines and blank lines kept)."""
    assert " ".join(d.text for d in parts).split() == whole.split()
    at = 0
    for document in parts:
        found = whole.find(document.text, at)
        assert found >= 0, document.text[:80]
        at = found + len(document.text)


def write_epub(path: Path, title: str, chapters: list[str], nav_in_spine: bool = False) -> None:
    """An EPUB 3 written by EbookLib: one chapter a body of HTML, the navigation document (and an NCX) beside them,
    in the spine first where `nav_in_spine` (as some books have it)."""
    from ebooklib import epub

    book = epub.EpubBook()
    book.set_identifier(path.stem)
    book.set_title(title)
    items = []
    for number, body in enumerate(chapters, start=1):
        chapter = epub.EpubHtml(title=f"Chapter {number}", file_name=f"c{number}.xhtml", lang="en")
        chapter.content = f"<html><body>{body}</body></html>"
        book.add_item(chapter)
        items.append(chapter)
    book.toc = items
    book.add_item(epub.EpubNcx())
    book.add_item(epub.EpubNav())
    book.spine = ["nav", *items] if nav_in_spine else items
    epub.write_epub(str(path), book)


HTML = f"""<!DOCTYPE html><html><head><title>Home charging guide</title>
<script>var tracking = "SCRIPT-TEXT-MUST-NOT-LOAD";</script><style>.nav {{ color: red }}</style></head>
<body><nav><ul><li><a href="/">Home</a></li><li><a href="/shop">Shop NAVIGATION-LINK</a></li></ul></nav>
<header>Subscribe to our newsletter HEADER-BANNER</header>
<main><article><h1>Home charging guide</h1><p>{ARTICLE}</p>
<p>Installing a wallbox needs a licensed electrician and, in most places, a permit from the local authority.</p>
</article></main><footer>Copyright 2026 FOOTER-TEXT. All rights reserved. Privacy. Cookies.</footer></body></html>"""


def test_a_folder_of_every_format_loads_each_and_lists_what_it_skipped(tmp_path: Path) -> None:
    root = tmp_path / "corpus"
    (root / "pricing").mkdir(parents=True)
    (root / "manuals").mkdir()
    (root / ".git").mkdir()
    (root / "pricing" / "tariffs.jsonl").write_bytes(
        jsonl({"id": "t1", "text": "Fast charging costs $0.45 per kWh."}, {"id": "t2", "text": "Night rate: $0.12."})
    )
    (root / "faq.json").write_text(json.dumps({"documents": [{"id": "q1", "text": "Can I charge in the rain? Yes."}]}))
    with (root / "sites.csv").open("w", newline="") as handle:
        csv.writer(handle).writerows([["id", "text", "city"], ["s1", "Station one, by the lake.", "Oslo"]])
    pq.write_table(pa.Table.from_pylist([{"id": "p1", "text": "Parquet row about plugs."}]), root / "plugs.parquet")
    (root / "notes.txt").write_text("Plain notes about cables.")
    (root / "manuals" / "guide.md").write_text("# Wallbox guide\n\nMount it 1.2 m above the floor.")
    (root / "manuals" / "home.html").write_text(HTML)
    write_pdf(root / "manuals" / "spec.pdf", ["Page one: the connector.", "Page two: the cable rating."], "Spec")
    write_docx(root / "manuals" / "install.docx", "Installing", ["Turn the power off first."], ["Cable", "6 mm2"])
    (root / "more.jsonl.gz").write_bytes(gzip.compress(jsonl({"id": "g1", "text": "From a gzip file."})))
    (root / "more.csv.bz2").write_bytes(bz2.compress(b"id,text\nb1,From a bzip2 file.\n"))
    (root / "more.txt.xz").write_bytes(lzma.compress(b"From an xz file."))
    (root / "more.md.zst").write_bytes(zstandard.ZstdCompressor().compress(b"# Zstd\n\nFrom a zstd file."))
    (root / "photo.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(64))
    (root / "LICENSE").write_text("Permission is hereby granted, free of charge...")
    (root / ".git" / "config.jsonl").write_bytes(jsonl({"id": "hidden", "text": "never read"}))

    result = load(root)

    assert {d.id for d in result.documents} == {
        "t1", "t2", "q1", "s1", "p1", "notes", "manuals/guide", "manuals/home", "manuals/spec", "manuals/install",
        "g1", "b1", "more.md", "more.txt",
    }  # fmt: skip
    assert rejected(result) == {}  # more.md.zst and more.txt.xz, one id without suffixes: each keeps its own
    docs = {d.id: d for d in result.documents}
    assert docs["t1"].metadata == {"source_file": "pricing/tariffs.jsonl", "category": "pricing"}
    assert docs["s1"].metadata["city"] == "Oslo"
    assert docs["manuals/guide"].metadata["title"] == "Wallbox guide"
    home = docs["manuals/home"]
    assert "19 kW" in home.text and "licensed electrician" in home.text
    for boilerplate in ("SCRIPT-TEXT", "NAVIGATION-LINK", "FOOTER-TEXT", "color: red"):
        assert boilerplate not in home.text
    assert home.metadata["title"] == "Home charging guide"
    spec = docs["manuals/spec"]
    assert spec.metadata["pages"] == 2 and spec.metadata["title"] == "Spec"
    second = spec.metadata["page_starts"][1]
    assert spec.text[second:].startswith("Page two") and spec.text.startswith("Page one")
    install = docs["manuals/install"]
    assert install.metadata["title"] == "Installing" and "Turn the power off first." in install.text
    assert "6 mm2" in install.text
    assert docs["g1"].text == "From a gzip file." and docs["b1"].text == "From a bzip2 file."
    assert docs["more.md"].text == "# Zstd\n\nFrom a zstd file." and docs["more.txt"].text == "From an xz file."

    by_file = {f.path: f for f in result.files}
    assert by_file["photo.png"].status == "skipped" and by_file["LICENSE"].status == "skipped"
    assert ".git/config.jsonl" not in by_file
    assert by_file["more.jsonl.gz"].compression == "gzip" and by_file["more.jsonl.gz"].documents == 1
    assert by_file["pricing/tariffs.jsonl"].documents == 2
    counts = result.counts()
    assert counts["files"] == 15 and counts["files.skipped"] == 2 and counts["files.failed"] == 0
    assert counts["documents"] == 14


def test_byte_order_marks_and_utf16_utf32_are_decoded_other_encodings_quarantined_by_position(tmp_path: Path) -> None:
    bom = codecs.BOM_UTF8
    (tmp_path / "bom.jsonl").write_bytes(bom + jsonl({"id": "j1", "text": "first"}, {"id": "j2", "text": "second"}))
    (tmp_path / "bom.csv").write_bytes(bom + b"id,text\nc1,with a header that must stay 'id'\n")
    (tmp_path / "bom.md").write_bytes(bom + b"# Title\n\nMarkdown body.")
    records = jsonl({"id": "u16", "text": "UTF-16 text: caf\u00e9 \u26a1"}).decode()
    (tmp_path / "wide.jsonl").write_bytes(records.encode("utf-16"))  # with its BOM, little-endian here
    (tmp_path / "wider.txt").write_bytes(codecs.BOM_UTF32_BE + "UTF-32 text, caf\u00e9.".encode("utf-32-be"))
    (tmp_path / "mixed.jsonl").write_bytes(
        jsonl({"id": "m1", "text": "fine"}) + b'{"id": "m2", "text": "caf\xe9"}\n' + jsonl({"id": "m3", "text": "ok"})
    )
    result = load(tmp_path)
    docs = {d.id: d for d in result.documents}
    assert set(docs) == {"j1", "j2", "c1", "bom", "u16", "wider", "m1", "m3"}
    assert docs["bom"].text == "# Title\n\nMarkdown body." and docs["bom"].metadata["title"] == "Title"
    assert docs["u16"].text == "UTF-16 text: caf\u00e9 \u26a1"
    assert docs["wider"].text == "UTF-32 text, caf\u00e9."
    reject = result.rejects[0]
    assert len(result.rejects) == 1 and reject.location == "line 2"
    assert reject.reason == "not_utf8: invalid continuation byte at byte 25"  # 0-based, in the line


def _decodes(data: bytes, encoding: str) -> bool:
    try:
        data.decode(encoding)
    except UnicodeDecodeError:
        return False
    return True


def _write_folder(folder: Path, messages: list[str], encoding: str) -> None:
    """Five files of a team's kinds holding `messages` (real translations), in `encoding`, and one in UTF-8 with its
    byte-order mark (which wins over `data.encoding`)."""
    folder.mkdir()
    (folder / "note.txt").write_bytes(messages[0].encode(encoding))
    (folder / "guide.md.gz").write_bytes(gzip.compress(f"# {messages[1][:12]}\n\n{messages[1]}".encode(encoding)))
    lines = "".join(
        json.dumps({"id": f"j{i}", "text": m}, ensure_ascii=False) + "\n" for i, m in enumerate(messages[2:4])
    )
    (folder / "records.jsonl").write_bytes(lines.encode(encoding))
    table = io.StringIO()
    csv.writer(table).writerows([["id", "text"], ["c1", messages[4]]])
    (folder / "table.csv").write_bytes(table.getvalue().encode(encoding))
    (folder / "page.html").write_bytes(
        f"<html><body><article><p>{messages[5]}</p></article></body></html>".encode(encoding)
    )
    (folder / "utf8.txt").write_bytes(codecs.BOM_UTF8 + messages[6].encode())


@pytest.mark.parametrize(("language", "encoding"), [("zh_CN", "gb18030"), ("ja", "shift_jis"), ("ru", "cp1251")])
def test_files_in_a_legacy_encoding_load_as_their_utf8_copies_with_data_encoding(
    tmp_path: Path, language: str, encoding: str
) -> None:
    """A Chinese team's text files are often GB18030, a Japanese team's Shift-JIS, a Russian one's Windows-1251:
    each record was quarantined as not UTF-8. With `data.encoding` they load, the same documents as the same files
    written in UTF-8 (real translations: tests/translated_text.py); a UTF-8 file with its byte-order mark still
    reads as UTF-8; a line with bytes the encoding has no character for is quarantined alone; an unknown encoding
    fails the config naming the field."""
    messages = [m for m in translated_messages(language, 60) if all(c.encode(encoding, "ignore") for c in m)][:7]
    _write_folder(tmp_path / "utf8", messages, "utf-8")
    _write_folder(tmp_path / "legacy", messages, encoding)
    expected = {d.id: (d.text, d.metadata.get("title")) for d in load(tmp_path / "utf8").documents}
    assert len(expected) == 7
    before = load(tmp_path / "legacy")  # the default, utf-8: each record quarantined but the one with its BOM
    assert [d.id for d in before.documents] == ["utf8"] and len(before.rejects) == 6
    assert {r.reason.split(":")[0] for r in before.rejects} == {"not_utf8"}
    legacy = load(tmp_path / "legacy", encoding=encoding.upper().replace("_", "-"))  # as a user may spell it
    assert {d.id: (d.text, d.metadata.get("title")) for d in legacy.documents} == expected and not legacy.rejects

    bad = messages[3].encode(encoding)
    nothing = next(b for b in map(bytes, zip(range(0x80, 0x100))) if not _decodes(b + b" ", encoding))
    bad = bad[: len(bad) // 2] + nothing + bad[len(bad) // 2 :]  # a byte that is no character in the encoding
    records = tmp_path / "legacy" / "records.jsonl"
    records.write_bytes(records.read_bytes().splitlines(keepends=True)[0] + b'{"id": "j1", "text": "' + bad + b'"}\n')
    partly = load(tmp_path / "legacy", encoding=encoding)
    assert {d.id for d in partly.documents} == set(expected) - {"j1"}
    assert rejected(partly) == {"records.jsonl:line 2": f"not_{encoding}"}
    with pytest.raises(ValueError, match="encoding"):
        DataConfig(path=tmp_path, encoding="no-such-codec")


def test_csv_ragged_rows_huge_fields_and_bad_bytes_are_quarantined_by_line(tmp_path: Path) -> None:
    path = tmp_path / "d.csv"
    huge = "long field " * 20_000  # 220,000 characters: over csv's default limit of 131,072
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["id", "text", "source"])
        writer.writerow(["r1", "A quoted field, with a comma\nand a line break.", "manual"])
        writer.writerow(["r2", huge, "manual"])
    with path.open("ab") as handle:
        handle.write(b"r3,Unquoted text, with a comma that cuts it,manual\n")  # 4 fields: ragged
        handle.write(b"r4,too few\n")  # 2 fields: ragged
        handle.write(b"r5,caf\xe9 in Latin-1,manual\n")
        handle.write(b"r6,The last good row.,manual\n")
    result = load(path, max_chars=250_000)
    assert [d.id for d in result.documents] == ["r1", "r2", "r6"]
    assert result.documents[0].text == "A quoted field, with a comma\nand a line break."  # the line break kept
    assert len(result.documents[1].text) == len(huge.strip())
    assert [(r.location, r.reason.split(":")[0]) for r in result.rejects] == [
        ("line 5", "ragged_row"), ("line 6", "ragged_row"), ("line 7", "not_utf8")
    ]  # fmt: skip
    assert result.rejects[0].reason == "ragged_row: 4 fields, the header has 3"
    # the same file with the default max_chars: the huge row is quarantined as too long, the rest go on
    default = load(path)
    assert [d.id for d in default.documents] == ["r1", "r6"]
    assert rejected(default)["r2"] == "too_long"


def test_records_built_to_crash_a_parser_are_quarantined_or_repaired_and_then_written(tmp_path: Path) -> None:
    deep = '{"id": "deep", "text": "nested", "metadata": {"x": ' + "[" * 100_000 + "]" * 100_000 + "}}"
    nest = {"a": 1}
    for _ in range(40):
        nest = {"a": nest}
    lines = [
        deep.encode(),
        json.dumps({"id": "deepish", "text": "within the parser's reach", "metadata": nest}).encode(),
        b'{"id": "surrogate", "text": "emoji half: \\ud83d and a whole one: \\ud83d\\ude00"}',
        json.dumps({"id": "nul", "text": "NUL\u0000 bytes\u0000 and a bell\u0007 inside"}).encode(),
        b'{"id": "nan", "text": "a float that JSON cannot hold", "metadata": {"score": NaN}}',
        b'{"id": true, "text": "a boolean id"}',
        json.dumps({"id": "good", "text": "an ordinary record"}).encode(),
    ]
    path = tmp_path / "hostile.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    result = load(path)
    docs = {d.id: d for d in result.documents}
    assert set(docs) == {"surrogate", "nul", "nan", "good"}
    assert rejected(result) == {"hostile.jsonl:line 1": "too_deep", "deepish": "too_deep", "True": "wrong_type"}
    assert docs["surrogate"].text == "emoji half: \ufffd and a whole one: \U0001f600"
    assert docs["nul"].text == "NUL bytes and a bell inside"
    assert docs["nan"].metadata == {"score": None}
    assert result.counts()["repaired.lone_surrogates"] == 1 and result.counts()["repaired.control_characters"] == 3
    out = tmp_path / "documents.jsonl"
    write_jsonl(out, result.documents)  # the stage's next step: must not fail on anything that loaded
    write_jsonl(tmp_path / "rejects.jsonl", result.rejects)
    assert len(out.read_text(encoding="utf-8").splitlines()) == 4


def test_a_huge_record_is_rejected_in_bounded_memory(tmp_path: Path) -> None:
    """A 20 MiB record (a JSONL line and a text file) costs about the line bound, not its size, to reject."""
    big = "word " * (4 << 20)  # 20 MiB
    (tmp_path / "big.jsonl").write_bytes(jsonl({"id": "big", "text": big}, {"id": "small", "text": "fits"}))
    (tmp_path / "big.txt").write_text(big)
    tracemalloc.start()
    try:
        result = load(tmp_path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert [d.id for d in result.documents] == ["small"]
    assert {(Path(r.source).name, r.reason.split(":")[0]) for r in result.rejects} == {
        ("big.jsonl", "too_long"), ("big.txt", "too_long")
    }  # fmt: skip
    assert peak < 8 * (6 * 50_000 + 65_536), f"peak {peak / 1e6:.1f} MB to reject a 20 MiB record"


def test_compressed_files_are_told_by_their_bytes_and_a_damaged_one_keeps_what_was_read(tmp_path: Path) -> None:
    records = [{"id": f"r{i}", "text": f"record number {i} " * 20} for i in range(400)]
    (tmp_path / "named.jsonl.gz").write_bytes(gzip.compress(jsonl(*records[:2])))
    (tmp_path / "unnamed.jsonl").write_bytes(gzip.compress(jsonl(*records[2:4])))  # gzip without the suffix
    (tmp_path / "liar.jsonl.gz").write_bytes(jsonl(records[4]))  # says gzip, is not
    damaged = gzip.compress(jsonl(*records[5:]))
    (tmp_path / "damaged.jsonl.gz").write_bytes(damaged[: len(damaged) // 2])
    result = load(tmp_path)
    by_file = {f.path: f for f in result.files}
    assert by_file["named.jsonl.gz"].documents == 2 and by_file["unnamed.jsonl"].documents == 2
    assert by_file["liar.jsonl.gz"].status == "failed"
    assert "not gzip-compressed" in (by_file["liar.jsonl.gz"].reason or "")
    cut = by_file["damaged.jsonl.gz"]
    assert cut.status == "failed" and 0 < cut.documents < 395
    assert {d.id for d in result.documents} >= {"r0", "r1", "r2", "r3", "r5"}
    with pytest.raises(DataValidationError, match=r"damaged\.jsonl\.gz: EOFError.*data.on_bad_file: fail"):
        load(tmp_path, on_bad_file="fail")


def test_inputs_that_yield_nothing_fail_naming_the_field_and_the_files(tmp_path: Path) -> None:
    (tmp_path / "data.xls").write_bytes(b"\xd0\xcf\x11\xe0not really")  # Excel 97's format: not read
    (tmp_path / "broken.parquet").write_bytes(b"this is not parquet")
    (tmp_path / "empty.jsonl").write_bytes(jsonl({"id": "x", "text": "   "}))
    config = DataConfig(path=tmp_path)
    result = load_documents(config)
    assert result.documents == [] and rejected(result) == {"x": "empty_text"}
    with pytest.raises(DataValidationError) as error:
        require_documents(result, config)
    message = str(error.value)
    assert message.startswith("data.min_documents: 0 documents loaded")
    assert "broken.parquet: not a readable Parquet file" in message and "data.xls: not a supported format" in message
    assert "empty_text: 1" in message
    require_documents(result, DataConfig(path=tmp_path, min_documents=0))  # a user who wants an empty run


def test_include_and_exclude_globs_and_a_folder_format_mismatch(tmp_path: Path) -> None:
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "a.md").write_text("# A\n\nalpha")
    (tmp_path / "docs" / "README.md").write_text("# Readme\n\nhow this folder is laid out")
    (tmp_path / "b.jsonl").write_bytes(jsonl({"id": "b", "text": "beta"}))
    assert {d.id for d in load(tmp_path, exclude=["*README*"]).documents} == {"docs/a", "b"}
    assert {d.id for d in load(tmp_path, include=["*.jsonl"]).documents} == {"b"}
    with pytest.raises(ValueError, match="format: 'jsonl' is for a single file"):
        DataConfig(path=tmp_path, format="jsonl")


def test_a_pdf_with_no_text_layer_and_a_pdf_that_is_not_one(tmp_path: Path) -> None:
    pdf = FPDF()
    pdf.add_page()  # a page with no text: what a scan without OCR gives
    pdf.output(str(tmp_path / "scan.pdf"))
    (tmp_path / "fake.pdf").write_text("not a pdf at all")
    (tmp_path / "fake.docx").write_bytes(b"PK\x03\x04 not a zip")
    write_pdf(tmp_path / "real.pdf", ["Some text."])
    result = load(tmp_path)
    assert [d.id for d in result.documents] == ["real"]
    assert rejected(result) == {"scan": "empty_text"}
    status = {f.path: f.status for f in result.files}
    assert status == {"fake.docx": "failed", "fake.pdf": "failed", "real.pdf": "loaded", "scan.pdf": "loaded"}


def write_deck(path: Path) -> None:
    """Three slides as a team makes them: a title slide, bullets with speaker notes, a table and a group of shapes."""
    deck = pptx.Presentation()
    deck.core_properties.title = ""  # python-pptx's template says "PowerPoint Presentation": a real deck's is blank
    first = deck.slides.add_slide(deck.slide_layouts[0])
    first.shapes.title.text = "Depot charging plan"
    first.placeholders[1].text = "Fleet of 40 vans, overnight"
    second = deck.slides.add_slide(deck.slide_layouts[1])
    second.shapes.title.text = "Power budget"
    body = second.placeholders[1].text_frame
    body.text = "Grid connection: 250 kW"
    body.add_paragraph().text = "Load management caps each charger at 11 kW"
    second.notes_slide.notes_text_frame.text = "The utility upgrade takes nine months."
    third = deck.slides.add_slide(deck.slide_layouts[5])
    third.shapes.title.text = "Chargers"
    table = third.shapes.add_table(2, 2, Inches(1), Inches(2), Inches(6), Inches(1)).table
    for (row, column), text in {(0, 0): "Model", (0, 1): "Power", (1, 0): "Wallbox Pro", (1, 1): "22 kW"}.items():
        table.cell(row, column).text = text
    group = third.shapes.add_group_shape()
    group.shapes.add_textbox(Inches(1), Inches(4), Inches(3), Inches(1)).text_frame.text = "Grouped callout text"
    deck.save(str(path))


def test_a_slides_bullets_and_numbers_are_the_ones_powerpoint_shows(tmp_path: Path) -> None:
    """A slide's bullets had no markers (python-pptx gives a paragraph's text, not whether it shows a bullet: that
    is inherited from the layout and the master), so a numbered list of steps was plain lines. Now a paragraph
    shows what PowerPoint shows: a content placeholder's bullets from the master's body style (`- `, two spaces'
    indent a level), an autonumber in its scheme counted per level from its start, none where the paragraph or
    its shape says none, none in a title or a plain text box, none on the speaker notes."""
    drawing = "{http://schemas.openxmlformats.org/drawingml/2006/main}"

    def numbered(paragraph: object, scheme: str, start: int | None = None) -> None:
        properties = paragraph._p.get_or_add_pPr()
        automatic = properties.makeelement(f"{drawing}buAutoNum", {"type": scheme})
        if start is not None:
            automatic.set("startAt", str(start))
        properties.append(automatic)

    deck = pptx.Presentation()
    slide = deck.slides.add_slide(deck.slide_layouts[1])  # Title and Content
    slide.shapes.title.text = "Commissioning"
    body = slide.placeholders[1].text_frame
    body.text = "Before the visit"
    for text, level, scheme in [
        ("Check the breaker", 1, None), ("Label the circuit", 1, None), ("Steps", 0, None),
        ("Mount", 1, "arabicPeriod"), ("Wire", 1, "arabicPeriod"), ("Test", 1, "arabicPeriod"),
        ("", 0, None), ("Sign-off", 0, "none"),
    ]:  # fmt: skip
        paragraph = body.add_paragraph()
        paragraph.text, paragraph.level = text, level
        if scheme == "none":
            paragraph._p.get_or_add_pPr().append(paragraph._p.makeelement(f"{drawing}buNone", {}))
        elif scheme:
            numbered(paragraph, scheme, 3 if text == "Mount" else None)
    box = slide.shapes.add_textbox(Inches(1), Inches(5), Inches(4), Inches(1)).text_frame
    box.text = "Appendix clauses"
    for text in ("Scope", "Liability"):
        paragraph = box.add_paragraph()
        paragraph.text = text
        numbered(paragraph, "romanLcParenBoth")
    slide.notes_slide.notes_text_frame.text = "Bring the torque wrench."
    deck.save(str(tmp_path / "commissioning.pptx"))
    (document,) = load(tmp_path).documents
    assert document.text == (
        "Commissioning\n\n- Before the visit\n  - Check the breaker\n  - Label the circuit\n- Steps\n  3. Mount\n"
        "  4. Wire\n  5. Test\n\nSign-off\n\nAppendix clauses\n(i) Scope\n(ii) Liability\n\nBring the torque wrench."
    )


def test_markdown_keeps_its_lines_and_code_and_loses_only_its_comment_blocks(tmp_path: Path) -> None:
    """Node.js's API docs (found on this machine's copy) keep each function's YAML change history in `<!-- -->`
    blocks, which no reader of the rendered page sees, and the loaded text had them all, on one line with the
    rest. Now a Markdown file's text is as written, lines, indentation and code blocks kept, less the comment
    blocks; a comment inside a code block or a paragraph is text and stays, and so does an unclosed one."""
    code = "```html\n<!-- part of the example -->\n<p>Hi</p>\n```"
    (tmp_path / "assert.md").write_text(
        "# Assert\n\n<!--introduced_in=v0.1.21-->\n\n> Stability: 2 - Stable\r\n\r\n"
        "<!-- YAML\nadded: v9.9.0\n\nchanges:\n  - version: v15.0.0\n-->\n\n"
        f"In strict mode <!-- inline --> methods\nbehave like strict ones.\n\n{code}\n\n"
        "    <!-- an indented code block -->\n\n<!-- TODO --> <!-- lint: off -->\n\n- item one\n  - nested\n"
    )
    (tmp_path / "open.md").write_text("Before.\n\n<!-- never closed\n\nAfter.\n")
    docs = {d.id: d for d in load(tmp_path).documents}
    assert docs["assert"].text == (
        "# Assert\n\n> Stability: 2 - Stable\n\nIn strict mode <!-- inline --> methods\nbehave like strict ones."
        f"\n\n{code}\n\n    <!-- an indented code block -->\n\n- item one\n  - nested"
    )
    assert docs["assert"].metadata["title"] == "Assert"
    assert docs["open"].text == "Before.\n\n<!-- never closed\n\nAfter."


def test_slides_restructuredtext_and_asciidoc_load_with_their_titles_and_slide_starts(tmp_path: Path) -> None:
    write_deck(tmp_path / "plan.pptx")
    write_deck(tmp_path / "exported-deck")  # no suffix: told by the zip's contents
    (tmp_path / "broken.pptx").write_bytes(b"PK\x03\x04 not a zip")
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "install.rst").write_text(
        ".. _install:\n\n=============\nInstallation\n=============\n\nMount the unit 1.2 m above the floor.\n\n"
        "Wiring\n------\n\nUse a 6 mm2 cable.\n"
    )
    (tmp_path / "docs" / "notes.rest").write_text("No heading here, only a paragraph about cables.\n")
    (tmp_path / "docs" / "ops.adoc").write_text(
        "// a comment line\n= Operations Handbook\n:toc:\n\n== Daily checks\n\nInspect each cable.\n"
    )
    (tmp_path / "docs" / "part.asciidoc").write_text("== Tariffs\n\nNight rate: 0.12 EUR per kWh.\n")
    (tmp_path / "docs" / "guide.rst.gz").write_bytes(gzip.compress(b"Guide\n=====\n\nCompressed rst.\n"))
    (tmp_path / "docs" / "faq.md").write_text("Charging FAQ\n============\n\nBody text.\n\n## Later heading\n")

    result = load(tmp_path)

    docs = {d.id: d for d in result.documents}
    assert set(docs) == {
        "plan", "exported-deck", "docs/install", "docs/notes", "docs/ops", "docs/part", "docs/guide", "docs/faq"
    }  # fmt: skip
    assert docs["docs/faq"].metadata["title"] == "Charging FAQ"  # Markdown's underlined (setext) heading
    plan = docs["plan"]
    assert plan.metadata["title"] == "Depot charging plan" and plan.metadata["slides"] == 3
    starts = plan.metadata["slide_starts"]
    assert plan.text[: starts[1]] == "Depot charging plan\n\nFleet of 40 vans, overnight\n\n"  # a shape a block
    assert plan.text[starts[1] : starts[2]] == (  # a frame's paragraphs a line each (bullets), the notes a block
        "Power budget\n\n- Grid connection: 250 kW\n- Load management caps each charger at 11 kW\n\n"
        "The utility upgrade takes nine months.\n\n"
    )
    assert plan.text[starts[2] :] == "Chargers\n\nModel | Power\nWallbox Pro | 22 kW\n\nGrouped callout text"  # rows
    assert docs["exported-deck"].text == plan.text
    install = docs["docs/install"]
    assert install.metadata == {"title": "Installation", "source_file": "docs/install.rst", "category": "docs"}
    assert "Use a 6 mm2 cable." in install.text
    assert "title" not in docs["docs/notes"].metadata
    assert docs["docs/ops"].metadata["title"] == "Operations Handbook"
    assert docs["docs/part"].metadata["title"] == "Tariffs"
    assert docs["docs/guide"].metadata["title"] == "Guide"
    status = {f.path: (f.status, f.format) for f in result.files}
    assert status["broken.pptx"] == ("failed", "pptx")
    assert {f.path: f.reason for f in result.files}["broken.pptx"] == "not a readable PPTX: not a zip archive"
    assert status["exported-deck"] == ("loaded", "pptx") and status["docs/ops.adoc"] == ("loaded", "asciidoc")
    assert status["docs/notes.rest"] == ("loaded", "rst") and status["docs/guide.rst.gz"] == ("loaded", "rst")
    assert result.rejects == []


def test_a_utf16_json_array_streams_like_utf8(tmp_path: Path) -> None:
    """A JSON array in UTF-16 (what Windows tools write) is decoded as it streams, not cut at a size."""
    records = [{"id": f"r{i}", "text": f"caf\u00e9 \u26a1 record {i} " * 40} for i in range(3000)]
    (tmp_path / "wide.json").write_bytes(json.dumps({"documents": records}, ensure_ascii=False).encode("utf-16"))
    (tmp_path / "wider.json").write_bytes(json.dumps([{"id": "w", "text": "UTF-32 too"}]).encode("utf-32"))
    result = load(tmp_path)
    assert len(result.documents) == 3001 and not result.rejects
    assert result.documents[2999].text == ("caf\u00e9 \u26a1 record 2999 " * 40).strip()


def test_text_and_ids_under_the_names_each_source_uses(tmp_path: Path) -> None:
    """A team's exports rarely say `text`: a product CSV with `sku` and `description`, a help-desk JSONL with
    `ticket` and `body`, a Parquet of articles with `content` and no id. `data.text_field` and `data.id_field` (a
    name or a list, the first present wins) read each; a record with none of the names is quarantined naming the
    setting, and a CSV without any of them fails that file saying which columns it has."""
    folder = tmp_path / "exports"
    folder.mkdir()
    with (folder / "products.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerows([["sku", "description", "price"], ["A1", "Wallbox 11 kW, 5 m cable", "499"]])
        writer.writerow(["A2", "Wallbox 22 kW, 7 m cable", "799"])
    tickets = [
        {"ticket": 7, "body": "Charger 55 shows error E4 at start.", "category": "support", "metadata": {"p": 1}},
        {"ticket": 8, "subject": "no body"},
    ]
    (folder / "tickets.jsonl").write_text("".join(json.dumps(t) + "\n" for t in tickets))
    articles = pa.table({"content": ["Preconditioning the battery shortens a winter charge."], "views": [12]})
    pq.write_table(articles, folder / "articles.parquet")
    with (folder / "other.csv").open("w", newline="") as handle:
        csv.writer(handle).writerows([["name", "notes"], ["x", "y"]])
    (folder / "manuals").mkdir()
    guides = [
        {"id": "g1", "content": "Torque the lugs to 40 Nm.", "category": "technical"},
        {"id": "g2", "content": "Wear gloves."},
    ]
    (folder / "manuals" / "guides.jsonl").write_text("".join(json.dumps(g) + "\n" for g in guides))

    config = DataConfig(path=folder, text_field=["description", "body", "content"], id_field=["sku", "ticket", "id"])
    result = load_documents(config)
    by_id = {d.id: d for d in result.documents}
    assert {"7", "A1", "A2", "g1", "g2"} < set(by_id) and len(by_id) == 6
    # a record's own category wins over its folder's name; without one, the folder names it
    assert by_id["g1"].metadata["category"] == "technical" and by_id["g2"].metadata["category"] == "manuals"
    assert by_id["A1"].text == "Wallbox 11 kW, 5 m cable" and by_id["A1"].metadata["price"] == "499"
    assert by_id["7"].text == "Charger 55 shows error E4 at start."
    # the record's other keys are metadata, as a CSV's other columns are, over what the folder would say
    assert by_id["7"].metadata == {"category": "support", "p": 1, "source_file": "tickets.jsonl"}
    [article] = [d for d in result.documents if d.text.startswith("Preconditioning")]
    assert article.id.startswith("doc-")  # no id column: an id from the text's hash
    assert article.metadata["views"] == 12
    [reject] = result.rejects
    assert reject.reason == "missing_text: none of the fields ['description', 'body', 'content'] (data.text_field)"
    assert reject.location == "line 2" and '"subject": "no body"' in reject.raw
    [other] = [f for f in result.files if f.path == "other.csv"]
    assert other.status == "failed" and "['description', 'body', 'content']" in other.reason
    assert "['name', 'notes']" in other.reason

    default = load_documents(DataConfig(path=folder))  # the default names: nothing here is read
    assert default.documents == [] and {f.status for f in default.files} <= {"loaded", "failed"}
    with pytest.raises(ValueError, match="both name"):
        DataConfig(path=folder, text_field="sku", id_field=["sku"])
    assert DataConfig(path=folder, text_field="body").text_field == ["body"]


def stdlib_paragraphs(count: int) -> list[str]:
    """Paragraphs of real prose no one here wrote: the docstrings of Python's own modules and their functions, each
    docstring's paragraphs (blank-line separated) in order, up to `count` of at least 80 characters."""
    import importlib
    import inspect

    found: list[str] = []
    for name in ("argparse", "asyncio", "collections", "configparser", "difflib", "email", "ftplib", "http.client",
                 "imaplib", "json", "logging", "pathlib", "shutil", "smtplib", "subprocess", "tarfile", "threading",
                 "unittest", "urllib.request", "zipfile"):  # fmt: skip
        module = importlib.import_module(name)
        for _, member in [("", module), *inspect.getmembers(module)]:
            for paragraph in (inspect.getdoc(member) or "").split("\n\n"):
                if len(paragraph) >= 80 and paragraph not in found:
                    found.append(paragraph)
                    if len(found) == count:
                        return found
    raise AssertionError(f"only {len(found)} docstring paragraphs found")


def test_a_long_document_file_is_split_into_parts_that_lose_nothing(tmp_path: Path) -> None:
    """A manual longer than `data.max_chars` (a 300-page PDF is ~600k characters) was quarantined whole: now it is
    parts of at most max_chars, cut where a paragraph or page ends, in order, their texts together the document's
    whole text. Plain text read whole (under the reading bound) and as a stream (over it, compressed too), a
    paragraph longer than a part cut where its sentences end, a PDF with a page longer than a part, a DOCX."""
    limit = 4_000  # the reading bound is 6 x 4,000 + 64 KiB = 89,536 bytes
    paragraphs = stdlib_paragraphs(700)
    short = [p for p in paragraphs if len(p) < limit // 2]
    run_on = " ".join(p.replace("\n", " ") for p in short[:60])  # one paragraph of ~4 parts, no blank line in it
    assert len(run_on) > 3 * limit
    streamed = "# The standard library, told by itself\n\n" + "\n\n".join([*short[60:300], run_on, *short[300:]])
    assert len(streamed.encode()) > 6 * limit + 65_536
    (tmp_path / "library.md.gz").write_bytes(gzip.compress(streamed.encode()))
    whole = "\n\n".join(short[:20])
    assert limit < len(whole) < 6 * limit
    (tmp_path / "notes.txt").write_text(whole)
    sizes = zip(range(0, 400, 20), [1, 2, 20, 3] * 5, strict=True)  # paragraphs a page
    pages = [" ".join(" ".join(short[i : i + n]).split()) for i, n in sizes]  # flowing text, as a PDF's page
    pages.insert(5, "")  # a blank page, as a scan's or a chapter's back
    pdf = FPDF()
    pdf.set_font("Helvetica", size=5)  # small print: a page of 20 paragraphs holds more than a part
    for text in pages:
        pdf.add_page()
        pdf.multi_cell(0, 2.5, text.encode("latin-1", "replace").decode("latin-1"))
    pdf.output(str(tmp_path / "manual.pdf"))
    import pypdf

    extracted = [normalize_text(page.extract_text() or "") for page in pypdf.PdfReader(tmp_path / "manual.pdf").pages]
    assert len(extracted) == len(pages) and max(map(len, extracted)) > limit
    write_docx(tmp_path / "spec.docx", "Specification", short[:30], ["Cable", "6 mm2"])
    (tmp_path / "small.txt").write_text(short[0])

    result = load(tmp_path, max_chars=limit)

    by_file = parts_by_file(result, limit)
    assert [d.id for d in by_file["small"]] == ["small"]  # a document that fits is as it was: no part
    assert "part" not in by_file["small"][0].metadata

    def parts_of(name: str, original: str) -> list:
        parts = by_file[name]
        assert [d.id for d in parts] == [f"{name}#{n}" for n in range(1, len(parts) + 1)]
        assert {(d.metadata["part"], d.metadata["parts"]) for d in parts} == {(n, len(parts)) for n in
                                                                              range(1, len(parts) + 1)}  # fmt: skip
        assert_parts_are_the_text(parts, normalize_text(original))
        return parts

    library = parts_of("library", streamed)
    assert len(library) > 30 and all(d.metadata["title"] == "The standard library, told by itself" for d in library)
    starts, inside = {normalize_text(p)[:40] for p in short[60:]}, normalize_text(run_on)
    for document in library[1:]:  # a part begins where a paragraph does, but in the one longer than a part
        assert document.text[:40] in starts or document.text[:40] in inside, document.text[:80]
    ends = [d.text for d in library if d.text[-40:] in inside and not inside.endswith(d.text[-40:])]
    assert len(ends) >= 2 and all(text.endswith((".", "!", "?")) for text in ends)  # that one: where sentences end
    parts_of("notes", whole)
    assert len(by_file["notes"]) >= 2

    manual = parts_of("manual", "\n\n".join(p for p in extracted if p))
    assert all(d.metadata["pages"] == len(pages) for d in manual)
    page_of: dict[int, list[tuple[str, int]]] = {}
    for document in manual:  # every page begins (or goes on) in a part, in order, where its page_starts say
        first, page_starts = document.metadata["first_page"], document.metadata["page_starts"]
        assert page_starts[0] == 0 and page_starts == sorted(page_starts)
        for offset, start in enumerate(page_starts):
            page_of.setdefault(first + offset, []).append((document.id, start))
    assert sorted(page_of) == list(range(1, len(pages) + 1))
    texts = {d.id: d.text for d in manual}
    for number, where in page_of.items():
        document_id, start = where[0]
        assert texts[document_id][start:].startswith(extracted[number - 1][:60]), f"page {number}"
    assert any(len(where) > 1 for where in page_of.values())  # a page longer than a part went on in the next

    spec = parts_of("spec", "\n\n".join(["Specification", *short[:30], "Cable | 6 mm2"]))  # the table's row: a line
    assert all(d.metadata["title"] == "Specification" for d in spec)
    summary = {f.path: f for f in result.files}
    assert summary["library.md.gz"].documents == len(library) and summary["library.md.gz"].records == len(library)


def test_a_document_file_over_max_file_chars_is_quarantined_whole(tmp_path: Path) -> None:
    """Over `data.max_file_chars` the file is quarantined as one, naming the field, and no part of it loads (a part
    of a file is not what anyone asked for); with max_file_chars equal to max_chars, no document is split."""
    text = "\n\n".join(stdlib_paragraphs(200))
    (tmp_path / "book.txt.gz").write_bytes(gzip.compress(text.encode()))
    (tmp_path / "book2.txt").write_text(text)
    (tmp_path / "kept.jsonl").write_bytes(jsonl({"id": "k", "text": "A record that fits."}))
    result = load(tmp_path, max_chars=2_000, max_file_chars=len(text) // 2)
    assert [d.id for d in result.documents] == ["k"]
    assert {r.source.rsplit("/", 1)[1]: r.reason for r in result.rejects} == {
        "book.txt.gz": f"too_long: the file holds over {len(text) // 2} characters of text (data.max_file_chars)",
        "book2.txt": f"too_long: the file holds over {len(text) // 2} characters of text (data.max_file_chars)",
    }
    unsplit = load(tmp_path, max_chars=len(text) // 3, max_file_chars=len(text) // 3)
    assert [d.id for d in unsplit.documents] == ["k"] and rejected(unsplit) == {"book": "too_long", "book2": "too_long"}
    with pytest.raises(ValueError, match="max_file_chars .* is below max_chars"):
        DataConfig(path=tmp_path, max_chars=10_000, max_file_chars=5_000)


def test_documentation_named_files_load_as_text_and_data_plain_text_reads_any_name(tmp_path: Path) -> None:
    """A docs folder as packages ship it (/usr/share/doc here: README, NEWS.gz, changelog.Debian.gz, README.Debian,
    no suffix at all) gave nothing: 190 of 694 files skipped there. Files named as documentation is are read as
    plain text when their bytes are text; `data.plain_text` globs read any other text file; licences, build files
    and binary files stay skipped, named with why."""
    root = tmp_path / "doc"
    (root / "charger").mkdir(parents=True)
    (root / "charger" / "README").write_text("Wallbox charger\n\nMount the unit 1.2 m above the floor.\n")
    (root / "charger" / "NEWS.gz").write_bytes(gzip.compress(b"Version 2.1\n\nAdds load balancing for 3 units.\n"))
    (root / "charger" / "changelog.Debian.gz").write_bytes(gzip.compress(b"charger (2.1-1) stable; urgency=low\n"))
    (root / "charger" / "README.Debian").write_text("On Debian the service runs as the charger user.\n")
    (root / "charger" / "ReadMe_First").write_bytes("Lisez-moi d'abord : câble 6 mm².\n".encode("utf-16"))
    (root / "charger" / "README.png").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(64))
    (root / "charger" / "NEWS.bak").write_text("Version 2.0 ...")  # a backup: the suffix says so
    (root / "charger" / "README.bin").write_bytes(b"\x7fELF\x02\x01\x01\x00" + bytes(64))  # the bytes say so
    (root / "charger" / "notes.manual").write_bytes(b"PK\x03\x04 a zip with no NUL in its first bytes")  # magic
    (root / "charger" / "LICENSE").write_text("Permission is hereby granted, free of charge...")
    (root / "charger" / "Makefile").write_text("all:\n\tcc -o charger main.c\n")
    (root / "charger" / "charger.conf").write_text("max_current = 32\n")
    (root / "charger" / "install.log.gz").write_bytes(gzip.compress(b"Installed charger 2.1 on unit 7.\n"))
    (root / "charger" / "INSTALL").write_text("#!/bin/sh\nset -e\ncp charger /usr/bin\n")  # a script, not a text
    (root / "charger" / "TODO.gz").write_bytes(b"not gzip at all")

    result = load(root)

    docs = {d.id: d.text for d in result.documents}
    assert docs == {
        "charger/README": "Wallbox charger\n\nMount the unit 1.2 m above the floor.",
        "charger/NEWS": "Version 2.1\n\nAdds load balancing for 3 units.",
        "charger/changelog.Debian": "charger (2.1-1) stable; urgency=low",
        "charger/README.Debian": "On Debian the service runs as the charger user.",
        "charger/ReadMe_First": "Lisez-moi d'abord : câble 6 mm2.",  # UTF-16 by its BOM; NFKC made ² a 2
    }
    files = {f.path.split("/", 1)[1]: (f.status, f.format, f.reason) for f in result.files}
    assert files["NEWS.gz"] == ("loaded", "text", None) and files["README"] == ("loaded", "text", None)
    for name in (
        "README.png",
        "README.bin",
        "notes.manual",
        "NEWS.bak",
        "LICENSE",
        "Makefile",
        "charger.conf",
        "install.log.gz",
        "INSTALL",
    ):
        assert files[name][0] == "skipped", name
    assert files["TODO.gz"] == ("failed", None, "named .gz but not gzip-compressed")

    globbed = load(root, plain_text=["*.conf", "charger/*.log", "*/Makefile"])  # globs also match without .gz
    more = {d.id: d.text for d in globbed.documents}.keys() - docs.keys()
    assert more == {"charger/charger.conf", "charger/install.log", "charger/Makefile"}
    assert {d.id: d.text for d in globbed.documents}["charger/install.log"] == "Installed charger 2.1 on unit 7."
    assert {f.path.split("/", 1)[1]: f.status for f in globbed.files}["README.png"] == "skipped"


def test_a_page_and_its_source_side_by_side_both_load_under_ids_that_keep_their_suffix(tmp_path: Path) -> None:
    """Node.js's API docs as Debian ships them: `fs.md` (the source), `fs.html` (its rendering) and `fs.json.gz`
    (its metadata) side by side. The md and the HTML would both be `api/fs`: the second was quarantined as a
    repeated id (85 rejects on /usr/share/doc/nodejs). Each now keeps its suffix in its id; a file of records
    beside them, and a document with no namesake, keep the ids they had."""
    api = tmp_path / "api"
    api.mkdir()
    (api / "fs.md").write_text("# File system\n\nThe `node:fs` module reads and writes files.\n")
    (api / "fs.html").write_text(HTML.replace("Home charging guide", "File system"))
    (api / "fs.json.gz").write_bytes(gzip.compress(json.dumps([{"id": "api/fs", "text": "Record text."}]).encode()))
    (api / "path.md").write_text("# Path\n\nThe `node:path` module joins paths.\n")
    (api / "guide.md.gz").write_bytes(gzip.compress(b"# Guide, gzipped\n"))
    (api / "guide.md.xz").write_bytes(lzma.compress(b"# Guide, xz\n"))
    result = load(tmp_path)
    assert rejected(result) == {}
    assert [d.id for d in result.documents] == [
        "api/fs.html", "api/fs", "api/fs.md", "api/guide.md.gz", "api/guide.md.xz", "api/path"
    ]  # fmt: skip
    assert result.documents[1].text == "Record text."  # the JSON's record, by its own id


def test_excel_workbooks_load_sheet_by_sheet_as_csv_does(tmp_path: Path) -> None:
    """A team's FAQ or catalogue kept in Excel was skipped as an unknown format. Written here by XlsxWriter (not the
    library that reads it): a cover sheet with no text column (left out), the header below an empty row, ids that
    Excel stores as numbers, a date, a formula, an empty row, a row with no answer, a row with a value past the
    header (ragged), a second sheet; a workbook with no text column anywhere, a damaged one, one with no suffix."""
    import datetime

    import xlsxwriter

    def workbook(path: Path) -> None:
        book = xlsxwriter.Workbook(str(path))
        cover = book.add_worksheet("Cover")
        cover.write("A1", "Charging FAQ, 2026 edition")
        cover.write("A2", "Owner: support team")
        faq = book.add_worksheet("FAQ")
        dates = book.add_format({"num_format": "yyyy-mm-dd"})
        faq.write_row(1, 0, ["id", "question", "answer", "updated", "price_eur"])  # row 2: row 1 left empty
        faq.write_row(2, 0, [101, "Can I charge in the rain?", "Yes: connectors are sealed."])
        faq.write_datetime(2, 3, datetime.datetime(2026, 3, 1), dates)
        faq.write_number(2, 4, 0.45)
        faq.write_row(3, 0, [102, "Night rate?", "0.12 EUR per kWh from 22:00.", None, 0.12])
        faq.write_formula(3, 4, "=0.06*2", None, 0.12)  # a formula: its saved value is read
        faq.write_row(5, 0, [103, "Who installs a wallbox?", ""])  # row 5 empty; no answer here
        faq.write_row(6, 0, [104, "Cable length?", "Five metres, standard.", None, None, "stray note"])
        faq.write_row(7, 0, ["A-7", "Plug types?", "Type 2 in Europe, CCS for fast charging."])
        sites = book.add_worksheet("Sites")
        sites.write_row(0, 0, ["answer", "city"])
        sites.write_row(1, 0, ["Station one, by the lake.", "Oslo"])
        book.close()

    workbook(tmp_path / "faq.xlsx")
    workbook(tmp_path / "workbook-export")  # no suffix: told by the zip's contents
    lookup = xlsxwriter.Workbook(str(tmp_path / "lookup.xlsx"))
    lookup.add_worksheet("Codes").write_row(0, 0, ["code", "label"])
    lookup.close()
    (tmp_path / "broken.xlsx").write_bytes(b"PK\x03\x04 not a zip")

    result = load(tmp_path, text_field=["answer"])

    faq = {d.id: d for d in result.documents if d.metadata.get("source_file") == "faq.xlsx"}
    assert len(result.documents) == len(faq) == 4  # the copy in workbook-export repeats every id
    assert [d.id for d in faq.values()][:3] == ["101", "102", "A-7"]  # Excel's 101.0 is the id 101
    assert faq["101"].text == "Yes: connectors are sealed."
    assert faq["101"].metadata == {
        "question": "Can I charge in the rain?", "updated": "2026-03-01T00:00:00", "price_eur": 0.45,
        "sheet": "FAQ", "source_file": "faq.xlsx",
    }  # fmt: skip
    assert faq["102"].metadata["price_eur"] == 0.12 and "updated" not in faq["102"].metadata
    site = next(d for d in faq.values() if d.metadata["sheet"] == "Sites")
    assert site.text == "Station one, by the lake." and site.metadata["city"] == "Oslo"
    reasons = {(Path(r.source).name, r.location): r.reason.split(":")[0] for r in result.rejects}
    assert reasons == {
        ("faq.xlsx", "sheet 'FAQ' row 6"): "empty_text",
        ("faq.xlsx", "sheet 'FAQ' row 7"): "ragged_row",
        ("workbook-export", "sheet 'FAQ' row 6"): "empty_text",
        ("workbook-export", "sheet 'FAQ' row 7"): "ragged_row",
        ("workbook-export", "sheet 'FAQ' row 3"): "duplicate_id",  # faq.xlsx, read first, has 101..., A-7
        ("workbook-export", "sheet 'FAQ' row 4"): "duplicate_id",
        ("workbook-export", "sheet 'FAQ' row 8"): "duplicate_id",
        ("workbook-export", "sheet 'Sites' row 2"): "duplicate_id",  # the same text: the same hash id
    }
    files = {f.path: (f.status, f.format, f.documents) for f in result.files}
    assert files["faq.xlsx"] == ("loaded", "xlsx", 4) and files["workbook-export"][:2] == ("loaded", "xlsx")
    reason = {f.path: f.reason for f in result.files}
    assert files["lookup.xlsx"][0] == "failed" and "{'Codes': ['code', 'label']}" in reason["lookup.xlsx"]
    assert reason["lookup.xlsx"].startswith("needs one of the columns ['answer'] (data.text_field) in a sheet")
    assert files["broken.xlsx"][0] == "failed" and reason["broken.xlsx"].startswith("not a readable XLSX")


def rst_paragraphs(source: Path) -> list[str]:
    """The paragraphs of a reStructuredText file as docutils reads them (its own text of each, roles and all;
    whitespace normalized), its warnings about roles it does not know left out."""
    from docutils import nodes
    from docutils.core import publish_doctree

    tree = publish_doctree(source.read_text(), settings_overrides={"report_level": 5, "halt_level": 5})
    return [
        " ".join(p.astext().split())
        for p in tree.findall(nodes.paragraph)
        if not isinstance(p.parent, nodes.system_message)
    ]


def test_opendocument_text_and_epub_load_in_reading_order_with_titles_and_chapter_starts(tmp_path: Path) -> None:
    """A team's LibreOffice documents and e-books were skipped as "not a supported format". Real prose no one here
    wrote (Python's email package's architecture notes, shipped with CPython as reStructuredText) written as ODT by
    docutils' writer (rst2odt: not the reader's library), as ODT by odfdo (headings, a table, a list, a section,
    a table of contents and tracked deleted text, which are not the document's text) and as an EPUB by EbookLib
    (a chapter a section, the navigation document in the spine): each paragraph is read whole, in order; titles
    come from the metadata; an EPUB's chapters carry their starts, as a PDF's pages; damaged files fail by name."""
    import email
    import html

    from docutils.core import publish_file
    from odfdo import Document, Element, Header, List, Paragraph, Section, Table

    source = Path(email.__file__).parent / "architecture.rst"
    paragraphs = rst_paragraphs(source)
    assert len(paragraphs) >= 30, paragraphs
    folder = tmp_path / "docs"
    folder.mkdir()
    publish_file(
        source_path=str(source),
        destination_path=str(folder / "rst2odt.odt"),
        writer="odf_odt",
        settings_overrides={"report_level": 5, "halt_level": 5},
    )

    document = Document("text")
    document.body.clear()
    document.body.append(
        Element.from_tag(
            '<text:table-of-content text:name="toc"><text:index-body>'
            "<text:p>TOC-ENTRY 1</text:p></text:index-body></text:table-of-content>"
        )
    )
    document.body.append(Element.from_tag("<text:tracked-changes><text:changed-region text:id=\"c1\"><text:deletion>"
                                          "<text:p>DELETED-TEXT</text:p></text:deletion></text:changed-region>"
                                          "</text:tracked-changes>"))  # fmt: skip
    document.body.append(Header(1, "Package architecture"))
    section = Section(name="body")
    for paragraph in paragraphs[:4]:
        section.append(Paragraph(paragraph))
    document.body.append(section)
    table = Table("Components", width=2, height=2)
    for (x, y), value in {(0, 0): "Component", (1, 0): "Role", (0, 1): "Parser", (1, 1): "bytes to model"}.items():
        table.set_value((x, y), value)
    document.body.append(table)
    item = "max_queue_size - The maximum number of tasks in the task queue."  # as awscli's docs write an item
    document.body.append(List([*paragraphs[4:6], item]))
    document.meta.title = "Email architecture"
    document.save(str(folder / "odfdo.odt"))

    chunks = (paragraphs[:3], paragraphs[3:6], paragraphs[6:])
    write_epub(
        folder / "book.epub",
        "The email package",
        [
            f"<h1>Part {n}</h1>" + "".join(f"<p>{html.escape(p)}</p>" for p in chunk) + "<script>SCRIPT-TEXT</script>"
            for n, chunk in enumerate(chunks, start=1)
        ],
        nav_in_spine=True,
    )
    (folder / "book-without-suffix").write_bytes((folder / "book.epub").read_bytes())  # told by its mimetype
    (folder / "broken.odt").write_bytes(b"PK\x03\x04 not an archive")
    (folder / "broken.epub").write_bytes((folder / "odfdo.odt").read_bytes())  # an ODT named .epub

    result = load(folder)
    docs = {d.id: d for d in result.documents}
    assert set(docs) == {"rst2odt", "odfdo", "book", "book-without-suffix"}, rejected(result)
    status = {f.path: f.status for f in result.files}
    assert status["broken.odt"] == status["broken.epub"] == "failed"
    reasons = {f.path: f.reason for f in result.files}
    assert "not a readable ODT" in reasons["broken.odt"] and "not a readable EPUB" in reasons["broken.epub"]

    def in_order(text: str, expected: list[str]) -> None:  # as words: a line break in an ODT paragraph is a space
        text, at = " ".join(text.split()), 0
        for paragraph in expected:
            found = text.find(paragraph, at)
            assert found >= 0, (paragraph[:80], text[at : at + 200])
            at = found + len(paragraph)

    in_order(docs["rst2odt"].text, paragraphs)  # every plain paragraph of the source, whole and in order
    assert docs["rst2odt"].metadata["title"].endswith("Package Architecture")
    odt = docs["odfdo"]
    assert odt.metadata["title"] == "Email architecture" and odt.text.startswith("Package architecture\n")
    in_order(odt.text, paragraphs[:6])
    assert "\nParser | bytes to model\n" in odt.text  # a table's row, one line
    assert item in odt.text  # not odfdo's Markdown: `max\\_queue\\_size \\-`
    assert "TOC-ENTRY" not in odt.text and "DELETED-TEXT" not in odt.text
    ebook = docs["book"]
    assert ebook.metadata["title"] == "The email package" and ebook.metadata["chapters"] == 3
    in_order(ebook.text, paragraphs)
    starts = ebook.metadata["chapter_starts"]
    assert [ebook.text[s:].split("\n", 1)[0] for s in starts] == ["Part 1", "Part 2", "Part 3"]  # a heading a line
    assert "SCRIPT-TEXT" not in ebook.text and docs["book-without-suffix"].text == ebook.text


def test_an_html_pages_paragraph_is_a_line_and_its_code_as_written(tmp_path: Path) -> None:
    """trafilatura keeps the line breaks of a paragraph's source, which a browser shows as spaces (Node.js's docs:
    `for verifying\ninvariants.`): the page's text is now spaced as shown, a paragraph on a line of its own, and a
    <pre> block keeps its lines and indentation."""
    (tmp_path / "page.html").write_text(
        "<html><head><title>Assert</title></head><body><nav>Home NAVIGATION</nav><main><article>\n"
        "<h1>Assert</h1>\n<p>The node:assert module provides a set of assertion functions for verifying\n"
        "   invariants, <code>strict</code>\n   or legacy.</p>\n<p>Example:</p>\n"
        "<pre><code>assert.deepEqual(\n    [1, 2],\n    [1, 2]);</code></pre>\n"
        "<p>A second paragraph long enough to be the page's content and not its boilerplate, as\nwritten.</p>"
        "</article></main></body></html>"
    )
    (page,) = load(tmp_path).documents
    lines = page.text.split("\n")
    assert (
        "The node:assert module provides a set of assertion functions for verifying invariants, strict or legacy."
        in lines
    )
    assert "assert.deepEqual(\n    [1, 2],\n    [1, 2]);" in page.text
    assert lines[-1] == "A second paragraph long enough to be the page's content and not its boilerplate, as written."
    assert "NAVIGATION" not in page.text


def test_an_html_pages_headings_lists_and_code_blocks_stand_apart_as_a_browser_shows_them(tmp_path: Path) -> None:
    """trafilatura's own text ran a code block's last line into the next paragraph (`}  // namespace demo All
    Node.js addons must export...`, Node.js's addons page), dropped a code block's blank lines, ran a heading into
    the next line (the extractive backend's sentence began with it) and two code blocks of one <pre> (Node's ES
    module and CommonJS flavours) into one, and numbered no list. The main content is now laid out from
    trafilatura's XML as a browser shows it (a definition list's terms on lines of their own, each definition
    indented under its term); the navigation and the footer stay out."""
    (tmp_path / "addons.html").write_text(
        "<html><head><title>Addons</title></head><body><nav><ul><li>Home NAVIGATION</li><li>API</li></ul></nav>"
        "<main><article><h2>Hello world</h2><p>The equivalent of the\n   following JavaScript code:</p>"
        "<pre><code>module.exports.hello = () => 'world';</code></pre>"
        "<p>First, create the file <code>hello.cc</code>:</p>"
        "<pre><code>namespace demo {\n\nvoid Method() {\n  return;\n}\n\n}  // namespace demo</code></pre>"
        "<p>All addons must export an initialization function.</p><pre><code class='mjs'>import * as fs from "
        "'node:fs';</code><code class='cjs'>const fs = require('node:fs');</code></pre><h3>Building</h3><ol><li>Install"
        " the headers.</li><li>Build with <code>node-gyp</code>:<ul><li>configure</li><li>build</li></ul></li></ol>"
        "<dl><dt><code>--napi</code></dt><dd><p>Build against Node-API.</p></dd>"
        "<dt>--debug</dt><dd>Keep symbols.</dd></dl>"
        "<table><tr><th>Option</th><th>Default</th></tr><tr><td>napi</td><td>8</td></tr></table>"
        "<p>A closing paragraph long enough to be content, not boilerplate.</p></article></main>"
        "<footer>FOOTER-TEXT</footer></body></html>"
    )
    (page,) = load(tmp_path).documents
    assert page.text == (
        "Hello world\n\nThe equivalent of the following JavaScript code:\n\nmodule.exports.hello = () => 'world';\n\n"
        "First, create the file hello.cc:\n\nnamespace demo {\n\nvoid Method() {\n  return;\n}\n\n} // namespace demo"
        "\n\nAll addons must export an initialization function.\n\nimport * as fs from 'node:fs';\n\n"
        "const fs = require('node:fs');\n\nBuilding\n\n1. Install the headers.\n2. Build with node-gyp:\n  - configure"
        "\n  - build\n\n--napi\n  Build against Node-API.\n\n--debug\n  Keep symbols.\n\nOption | Default\nnapi | 8\n\n"
        "A closing paragraph long enough to be content, not boilerplate."
    )
    assert page.metadata["title"] == "Addons"
    # the extractive backend's sentences: a heading is one of its own, the code's last line not the prose's start
    sentences = split_sentences(page.text)
    assert "Hello world" in sentences and "Building" in sentences
    assert "All addons must export an initialization function." in sentences


STEPS = (
    "<h2>Install</h2><p>Mount the wallbox and wire it as these steps say, one after another, in this order.</p>"
    "<ol><li>Drill the holes.</li></ol><pre><code>drill --depth 60mm</code></pre>"
    "<ol start='2'><li>Hang the <b>wallbox</b>.</li><li>Wire it.</li></ol><pre><code>wire --phase 3</code></pre>"
    "<ol start='4'><li>Test it.</li></ol><p>Its checks, counted down, and the appendix's clauses:</p>"
    "<ol reversed><li>Fuse.</li><li>Earth.</li><li>Cable.</li></ol>"
    "<ol type='a' start='3'><li>Clause one.</li><li value='7'>Clause two.</li><li>Clause three.</li></ol>"
    "<ol type='I'><li>Annex.</li><li>Annex.</li></ol><ol type='I' start='4'><li>Annex.</li><li>Annex.</li></ol>"
    "<p>Step 4 is the one the inspector asks to see, with the report of the test, on the day of the visit.</p>"
)


@pytest.mark.parametrize("container", ["html", "epub"])
def test_an_ordered_list_is_numbered_as_the_browser_numbers_it(tmp_path: Path, container: str) -> None:
    """A page's steps split by code blocks (`<ol start="2">` after the first block, as Markdown renders them, on
    Node.js's permissions page and in the Rust Reference) read `1.` every time on the web page's path (trafilatura's
    XML keeps no list attribute), so "step 4" pointed nowhere. Each list is now numbered as a browser numbers it,
    from its `start`, down when `reversed`, from an item's `value` on, in its `type`, on a web page (numbering given
    back from the page's own list with the same items; two lists with the same items in page order) as in an
    e-book's chapter."""
    if container == "html":
        (tmp_path / "install.html").write_text(f"<html><body><main><article>{STEPS}</article></main></body></html>")
    else:
        write_epub(tmp_path / "install.epub", "Install", [STEPS])
    (document,) = load(tmp_path).documents
    numbered = [line for line in document.text.splitlines() if re.match(r"[0-9a-zA-Z]+\. ", line)]
    assert numbered == [
        "1. Drill the holes.", "2. Hang the wallbox.", "3. Wire it.", "4. Test it.",
        "3. Fuse.", "2. Earth.", "1. Cable.",
        "c. Clause one.", "g. Clause two.", "h. Clause three.",
        "I. Annex.", "II. Annex.", "IV. Annex.", "V. Annex.",
    ]  # fmt: skip


def test_a_manuals_section_headings_stay_over_their_sections(tmp_path: Path) -> None:
    """A page whose content sits in no container trafilatura knows (no <main> or <article>: DocBook's HTML, every
    page of Valgrind's manual) is read by its recovery pass, which keeps paragraphs, lists and code but no heading:
    263 section titles of Valgrind's manual were lost, `2.7. Core Command-line Options` and all (here, the second
    section's). Each comes back over its section; a sidebar's heading, whose links trafilatura drops, stays out."""
    sections = {
        "2.1. What the checker does with your program": [
            "The checker is designed to be as non-intrusive as possible and works directly with existing binaries.",
            "You do not need to recompile, relink or otherwise modify the program that is to be checked by it.",
        ],
        "2.2. Getting started": [
            "First compile your program with debugging information so that error messages name the exact lines.",
            "Then run it under the checker as you would normally run it, with the options listed further below.",
        ],
    }
    body = "".join(
        f'<div class="sect1"><div class="titlepage"><div><div><h2 class="title" style="clear: both">'
        f'<a name="s{number}"></a>{title}</h2></div></div></div>' + "".join(f"<p>{text}</p>" for text in texts)
        + "<pre class='programlisting'>checker --tool=memcheck ls -l</pre></div>"
        for number, (title, texts) in enumerate(sections.items())
    )  # fmt: skip
    sidebar = "".join(f"<li><a href='/p{n}.html'>Other page {n}</a></li>" for n in range(12))
    (tmp_path / "manual-core.html").write_text(
        "<html><head><title>2. Using the core</title></head><body><div class='navheader'><table><tr><td>"
        "<a href='a.html'>Prev</a></td><td><a href='b.html'>Next</a></td></tr></table></div>"
        f"<div class='chapter'><div class='titlepage'><div><div><h1 class='title'>2. Using the core</h1></div>"
        f"</div></div>{body}</div><div id='sidebar'><h3>Elsewhere on the site</h3><ul>{sidebar}</ul></div>"
        "</body></html>"
    )
    (page,) = load(tmp_path).documents
    blocks = page.text.split("\n\n")
    for title, texts in sections.items():
        assert blocks.count(title) == 1, blocks
        assert blocks[blocks.index(title) + 1] == texts[0]
    assert "Elsewhere on the site" not in page.text and "Other page" not in page.text


COMMENT_PARAGRAPH = (
    'using <code>parse</code> in the <a href="ch02.html#guess">“Comparing the Guess to the Secret\nNumber”</a>'
    "<!-- ignore --> section in Chapter 2, we must add<!-- a --><!-- b --> a type <?php echo 1 ?>annotation."
)
EXPONENT_PARAGRAPH = (
    "An i8 stores −(2<sup>n − 1</sup>) to 2<sup>n − 1</sup> − 1, that is −(2<sup>7</sup>) to 2<sup>7</sup> − 1; "
    "a step of 10<sup>-6</sup> m<sup>2</sup>; Item<sup>*</sup> on the 1<sup>st</sup> of May, Brand<sup>TM</sup>."
)


@pytest.mark.parametrize(
    ("paragraph", "expected"),
    [
        pytest.param(
            COMMENT_PARAGRAPH,
            "using parse in the “Comparing the Guess to the Secret Number” section in Chapter 2, we must add a type "
            "annotation.",
            id="the-text-after-a-comment",
        ),
        pytest.param(
            EXPONENT_PARAGRAPH,
            "An i8 stores −(2^(n − 1)) to 2^(n − 1) − 1, that is −(2^7) to 2^7 − 1; a step of 10^(-6) m^2; Item* on "
            "the 1st of May, BrandTM.",
            id="an-exponent",
        ),
    ],
)
def test_a_page_and_a_chapter_keep_what_a_browser_shows(tmp_path: Path, paragraph: str, expected: str) -> None:
    """The text after a comment: trafilatura dropped a comment with its tail, the rest of its paragraph; the Rust
    book writes `<!-- ignore -->` after each cross-reference link, and every such sentence lost its end (`...in the
    “Comparing the Guess to the Secret Number”` and nothing after; 7,219 words of the book's 391,099). An e-book's
    chapter lost the same text (the layout walk never saw comments). A processing instruction in HTML is a comment
    to lxml: the same.

    An exponent: a superscript was run into its base, the Rust book's `2<sup>7</sup> − 1` read `27 − 1` and
    `−(2<sup>n − 1</sup>)` read `−(2n − 1)`, other numbers than the page's (a QA pair or a benchmark answer built on
    them would be wrong). An exponent (a number or a one-letter variable, maybe with arithmetic) is now written with
    `^`, parenthesized where it is more than one token; other superscripts (a grammar's `*`, an ordinal's `st`, a
    `TM`) stay as they were."""
    filler = "<p>" + "A paragraph of the chapter's own text, long enough to be its main content. " * 4 + "</p>"
    (tmp_path / "page.html").write_text(
        f"<html><head><title>Page</title></head><body><main>{filler}<p>{paragraph}</p>{filler}</main></body></html>"
    )
    write_epub(tmp_path / "book.epub", "Book", [f"{filler}<p>{paragraph}</p>"])

    texts = {d.id: d.text for d in load(tmp_path).documents}

    assert set(texts) == {"page", "book"}
    for name, text in texts.items():
        assert expected in text.split("\n"), (name, text)


# A table as Google Docs' "Web page" export writes it: every cell's text in a <p> (Word's and Confluence's exports
# too); a cell with two paragraphs, one with a line break, one with a list; then an old page's layout box (a table
# of one cell holding a heading and paragraphs) and a two-column layout (a cell holding a table)
CELL_TABLES = (
    '<h1 class="c7"><span class="c6">Charging prices</span></h1>'
    '<p class="c3"><span class="c1">Our prices depend on the charger\'s power and include VAT.</span></p>'
    '<table class="c9"><tr class="c5"><td class="c8"><p class="c2"><span class="c10">Charger</span></p></td>'
    '<td class="c8"><p class="c2"><span>Power</span></p></td><td class="c8"><p class="c2">Price per kWh</p></td></tr>'
    '<tr><td><p class="c2">AC</p><p class="c2">wall or post</p></td><td><p>22 kW<br/>three-phase</p></td>'
    "<td><p>0.39 EUR</p></td></tr>"
    "<tr><td><p>DC fast</p></td><td><ul><li>50 kW</li><li>150 kW</li></ul></td><td><p>0.59</p><p>EUR</p></td></tr>"
    "<tr><td><p>Check</p></td><td><pre>$ charge --status\nOK</pre></td></tr>"
    "</table>"
    "<table><tr><td><h2>Idle fees</h2><p>An idle fee of 0.10 EUR per minute applies after 45 minutes.</p>"
    "<p>It stops when the car is unplugged.</p></td></tr></table>"
    "<table><tr><td><table><tr><td><p>Card</p></td><td><p>App</p></td></tr></table></td>"
    "<td><p>Pay by card or by app at every charger.</p><p>Receipts come by e-mail.</p></td></tr></table>"
)


@pytest.mark.parametrize("container", ["html", "epub"])
def test_a_table_whose_cells_hold_paragraphs_is_a_row_a_line(tmp_path: Path, container: str) -> None:
    """A table exported from Google Docs (Word's and Confluence's exports alike) wraps every cell's text in a <p>:
    each cell came out a paragraph of its own, ` | ` on lines of their own between them (`Charger\\n\\n |\\n\\nPower`),
    which value was whose lost. A row is one line again, a cell's paragraphs, line breaks and list items on it
    between spaces, as an office file's table reads (`table_row`). A table that is an old page's layout (a cell
    alone in its row, or a row with a heading or a table in a cell) keeps its paragraphs on their lines, and a row
    with a code block its code's lines (DocBook's FAQ: the answers' code); on a web
    page, trafilatura takes a table out of the layout cell it stood in, which leaves a row of two cells."""
    if container == "html":
        (tmp_path / "prices.html").write_text(f'<html><body class="c12 doc-content">{CELL_TABLES}</body></html>')
    else:
        write_epub(tmp_path / "prices.epub", "Prices", [CELL_TABLES])
    (document,) = load(tmp_path).documents
    lines = document.text.splitlines()
    for row in [
        "Charger | Power | Price per kWh",
        "AC wall or post | 22 kW three-phase | 0.39 EUR",
        "DC fast | - 50 kW - 150 kW | 0.59 EUR",
        "Card | App",
    ]:
        assert row in lines, (row, document.text)
    paragraphs = document.text.split("\n\n")
    for block in [
        "Idle fees",
        "An idle fee of 0.10 EUR per minute applies after 45 minutes.",
        "It stops when the car is unplugged.",
    ]:
        assert block in paragraphs, (block, document.text)
    assert "$ charge --status\nOK" in document.text  # a row with code keeps its lines
    two_columns = ["Pay by card or by app at every charger.", "Receipts come by e-mail."]
    if container == "epub":
        assert set(two_columns) <= set(paragraphs), document.text
    else:  # trafilatura moves a table out of the cell it stood in: the two columns are a row of 2 cells, one empty
        assert f" | {' '.join(two_columns)}" in lines, document.text


def test_a_short_page_keeps_its_headings_lists_and_table_rows(tmp_path: Path) -> None:
    """On a page with under 250 characters of main content trafilatura falls back to its baseline, which takes the
    whole body as one flat paragraph, a block a line: no list marker, no blank line, a table's cells a line each
    (`Type\\nPower\\nAC\\n22 kW`: which value was whose lost). 49 of 858 real pages here (API indexes, redirect
    pages). That body is laid out as a browser shows it now, as a longer page's is, its footer and scripts still
    dropped; nothing trafilatura kept is lost."""
    (tmp_path / "faq.html").write_text(
        "<html><head><title>Plugs</title><script>var SCRIPT_TEXT = 1;</script></head><body>"
        "<h1>Plugs</h1><p>Which plug fits?</p><ol><li>Type 2</li><li>CCS</li></ol>"
        "<table><tr><th>Type</th><th>Power</th></tr><tr><td>AC</td><td>22 kW</td></tr></table>"
        "<footer>FOOTER-TEXT</footer></body></html>"
    )

    (document,) = load(tmp_path).documents

    assert document.text == "Plugs\n\nWhich plug fits?\n\n1. Type 2\n2. CCS\n\nType | Power\nAC | 22 kW"


def _replaced_in_zip(path: Path, name: str, data: bytes) -> None:
    """The zip at `path` with its member `name` holding `data` instead (members and their order kept: an EPUB's
    `mimetype` stays first and stored)."""
    with zipfile.ZipFile(path) as old:
        members = [(info, old.read(info)) for info in old.infolist()]
    with zipfile.ZipFile(path, "w") as new:
        for info, content in members:
            new.writestr(info, data if info.filename == name else content)


def test_an_html_page_is_read_in_the_encoding_it_declares(tmp_path: Path) -> None:
    """A page's own declaration of its encoding was not read: a Word "Web page" export (windows-1252, declared in
    its <meta>) and XHTML declaring ISO-8859-1 (libxslt's manual: 5 of its pages on this machine) were quarantined
    whole as `not_utf8`; XHTML with an XML declaration naming any encoding, UTF-8 included (95 of 250 real pages
    under /usr/share/doc), lost its layout (lxml refuses text with that declaration: paragraphs kept their source's
    line breaks, lists their blank lines, a manual its headings); an e-book's chapter declaring ISO-8859-1 read its
    accents wrong. Now a page is read by its byte-order mark, else the encoding it declares (its XML declaration or
    <meta>, as a browser reads them: ISO-8859-1 is windows-1252), else `data.encoding`; a page that is not in the
    encoding it declares is quarantined with the position, as before."""
    price = "Le tarif « nuit » : 0,39 € le kWh – café offert."
    filler = "Un paragraphe du texte de la page, assez long pour en être le contenu principal. " * 4
    filler = filler.strip()  # (a page of under 250 characters of text is read by trafilatura's flat fallback)
    word = (
        '<html><head><meta http-equiv=Content-Type content="text/html; charset=windows-1252">'
        "<title>Tarifs</title></head><body lang=FR><div class=WordSection1>"
        f"<h1>Tarifs</h1><p class=MsoNormal>{price}<o:p></o:p></p><p class=MsoNormal>{filler}</p>"
        "<p class=MsoNormal>Une recharge \u201crapide\u201d co\u00fbte plus.</p></div></body></html>"
    )
    (tmp_path / "word.htm").write_bytes(word.encode("cp1252"))
    xhtml = (
        '<?xml version="1.0" encoding="ISO-8859-1"?>\n<!DOCTYPE html PUBLIC "-//W3C//DTD XHTML 1.0 Strict//EN" '
        '"http://www.w3.org/TR/xhtml1/DTD/xhtml1-strict.dtd">\n<html xmlns="http://www.w3.org/1999/xhtml">'
        "<head><title>Manuel</title></head><body><h1>Manuel</h1>\n<p>Ce document d\u00e9crit la\nrecharge \u00e0 "
        "domicile\net ses r\u00e8gles.</p>\n<ul>\n<li>Une prise</li>\n\n<li>Un c\u00e2ble</li>\n</ul>"
        f"<p>{filler}</p></body></html>"
    )
    (tmp_path / "manuel.xhtml").write_bytes(xhtml.encode("iso-8859-1"))
    (tmp_path / "utf8.html").write_bytes(
        xhtml.replace("ISO-8859-1", "UTF-8").replace("Manuel", "Guide").encode("utf-8")
    )
    (tmp_path / "meta.html").write_bytes(
        f'<html><head><meta charset="utf-8"></head><body><p>Запаска: 0,39 € за кВт·ч.</p><p>{filler}</p>'
        "</body></html>".encode()
    )
    (tmp_path / "lying.html").write_bytes(
        b'<html><head><meta charset="utf-8"></head><body><p>caf\xe9 au lait</p></body></html>'
    )
    write_epub(tmp_path / "livre.epub", "Livre", ["<p>PLACEHOLDER</p>"])
    chapter = (
        '<?xml version="1.0" encoding="iso-8859-1"?>\n<html xmlns="http://www.w3.org/1999/xhtml"><head>'
        "<title>Chapitre</title></head><body><p>\u00c9t\u00e9 comme hiver, la borne r\u00e9pond.</p></body></html>"
    )
    _replaced_in_zip(tmp_path / "livre.epub", "EPUB/c1.xhtml", chapter.encode("iso-8859-1"))

    result = load(tmp_path, encoding="cp1251")  # the run's fallback: a page's declaration comes first

    texts = {d.id: d.text for d in result.documents}
    assert texts == {
        "word": f"Tarifs\n\n{price}\n\n{filler}\n\nUne recharge \u201crapide\u201d co\u00fbte plus.",
        "manuel": "Manuel\n\nCe document d\u00e9crit la recharge \u00e0 domicile et ses r\u00e8gles.\n\n"
        f"- Une prise\n- Un c\u00e2ble\n\n{filler}",
        "utf8": "Guide\n\nCe document d\u00e9crit la recharge \u00e0 domicile et ses r\u00e8gles.\n\n"
        f"- Une prise\n- Un c\u00e2ble\n\n{filler}",
        "meta": f"Запаска: 0,39 € за кВт·ч.\n\n{filler}",
        "livre": "\u00c9t\u00e9 comme hiver, la borne r\u00e9pond.",
    }
    assert rejected(result) == {"lying.html:file": "not_utf8"}
    (reject,) = result.rejects
    assert reject.reason == "not_utf8: invalid continuation byte at byte 53", reject.reason


def test_a_pdfs_words_hyphenated_across_lines_are_whole_where_the_document_says_how(tmp_path: Path) -> None:
    """A typeset PDF breaks words across lines with a hyphen, and its text layer keeps `manip-\nulation` (libtasn1's
    manual: 23 such breaks): a word no one searches for, two tokens to dedup and the QA model. A break is mended
    where the document itself writes the word whole elsewhere (`manipulation`) or with its hyphen (`self-contained`),
    and never the other way; where it writes neither, the break stays (`YYMMDDhh-\nmm` might be either)."""
    write_pdf(
        tmp_path / "manual.pdf",
        [
            "Distinguished Encoding Rules manip-\nulation of trees.\nA self-\ncontained module is simpler.\n"
            "The field YYMMDDhh-\nmm stays as written.",
            "Every manipulation is checked, and self-contained code is tested.",
        ],
    )

    (manual,) = load(tmp_path).documents

    assert "Distinguished Encoding Rules manipulation of trees." in manual.text.split("\n")
    assert "A self-contained module is simpler." in manual.text.split("\n")
    assert "The field YYMMDDhh-\nmm stays as written." in manual.text
    assert manual.metadata["page_starts"] == [0, manual.text.index("Every manipulation")]


class _Handbook(FPDF):
    """A typeset handbook's page furniture, as fpdf2 draws it on every page: a running title atop the first
    chapter's pages, the chapter's title and the page's number atop the second's, `Page N of M` at the foot."""

    def header(self) -> None:
        self.set_font("Helvetica", size=9)
        if self.page_no() <= 4:
            self.cell(0, 5, "EV Charging Handbook", new_x="LMARGIN", new_y="NEXT")
        else:
            self.cell(0, 5, f"Chapter 2: Tariffs {self.page_no()}", new_x="LMARGIN", new_y="NEXT")

    def footer(self) -> None:
        self.set_y(-15)
        self.set_font("Helvetica", size=9)
        self.cell(0, 10, f"Page {self.page_no()} of {{nb}}", align="C")


def test_a_pdfs_running_headers_and_page_numbers_are_not_its_text(tmp_path: Path) -> None:
    """A typeset PDF's running title, chapter line and page number are in its text layer on every page: they began
    every page's chunk and cut the paragraph a page break runs through (libtasn1's manual: `Chapter 2: ASN.1
    structure handling 3` atop its pages; IRS instructions: a proof line, a printer's note and `-2- Instructions
    for Form 1040NR` on each of 48 pages). They are dropped now, counted in `furniture_lines`: a line at a page's
    edge with the page's own number, or the same line at an edge of many pages. The first page keeps the title it
    opens with; a line that happens to stand atop 3 of 8 pages (`Wallbox Pro`, no page number) stays."""
    pdf = _Handbook()
    pdf.set_font("Helvetica", size=11)
    bodies = []
    for number in range(1, 9):
        pdf.add_page()
        body = f"Wallbox Pro\nSection {number} explains the tariff of depot {number} in detail, at 0.{30 + number} EUR."
        if number not in (2, 5, 7):
            body = body.removeprefix("Wallbox Pro\n")
        bodies.append(body)
        pdf.multi_cell(0, 6, body)
    pdf.output(str(tmp_path / "handbook.pdf"))

    (handbook,) = load(tmp_path).documents

    starts = [*handbook.metadata["page_starts"], len(handbook.text) + 2]
    pages = [handbook.text[start : end - 2] for start, end in itertools.pairwise(starts)]
    assert pages == [f"EV Charging Handbook\n{bodies[0]}", *bodies[1:]], handbook.text
    assert handbook.metadata["furniture_lines"] == 3 + 4 + 8


def test_a_docx_lists_numbers_read_as_word_shows_them(tmp_path: Path) -> None:
    """A numbered list of a numbering definition of its own (as a Word template writes one): each level's format
    and text (`%1)` in letters, `%1.%2.` in roman numerals under it), a deeper level restarting under each new item
    above it, nested items indented. Before, no marker at all: `Plan`, `Survey`, ... as plain lines. A damaged
    numbering reference or a style based on itself costs the marker, never the file."""
    from docx.oxml import parse_xml

    main = "http://schemas.openxmlformats.org/wordprocessingml/2006/main"
    word = docx.Document()
    numbering = word.part.numbering_part.element
    numbering.insert(0, parse_xml(
        f'<w:abstractNum xmlns:w="{main}" w:abstractNumId="90">'
        '<w:lvl w:ilvl="0"><w:start w:val="1"/><w:numFmt w:val="lowerLetter"/><w:lvlText w:val="%1)"/></w:lvl>'
        '<w:lvl w:ilvl="1"><w:start w:val="1"/><w:numFmt w:val="upperRoman"/><w:lvlText w:val="%1.%2."/></w:lvl>'
        "</w:abstractNum>"
    ))  # fmt: skip
    numbering.append(parse_xml(f'<w:num xmlns:w="{main}" w:numId="90"><w:abstractNumId w:val="90"/></w:num>'))
    word.add_paragraph("Steps")
    for text, level in [("Plan", "0"), ("Survey", "1"), ("Permit", "1"), ("Build", "0"), ("Trench", "1"), ("Odd", "x")]:
        paragraph = word.add_paragraph(text)
        paragraph._p.get_or_add_pPr().append(
            parse_xml(f'<w:numPr xmlns:w="{main}"><w:ilvl w:val="{level}"/><w:numId w:val="90"/></w:numPr>')
        )
    # a damaged file's styles: one based on itself (followed for its numbering, it looped forever)
    word.styles.element.append(parse_xml(
        f'<w:style xmlns:w="{main}" w:type="paragraph" w:styleId="Loop"><w:name w:val="Loop"/>'
        '<w:basedOn w:val="Loop"/></w:style>'
    ))  # fmt: skip
    word.add_paragraph("After the list.").style = word.styles["Loop"]
    word.save(str(tmp_path / "plan.docx"))

    (plan,) = load(tmp_path).documents

    assert plan.text == (  # a numbering reference that is no number: no marker
        "Steps\n\na) Plan\n  a.I. Survey\n  a.II. Permit\nb) Build\n  b.I. Trench\n\nOdd\n\nAfter the list."
    )


def test_an_odt_lists_numbers_read_as_libreoffice_shows_them(tmp_path: Path) -> None:
    """An ODT list numbered by its style (each level's format, prefix, suffix and start; a nested list takes the
    outer list's style): before, its items were plain lines."""
    from odfdo import Document as OdfDocument
    from odfdo import Element, List, Paragraph

    writer = OdfDocument("text")
    writer.body.clear()
    writer.insert_style(
        Element.from_tag(
            '<text:list-style style:name="Steps"><text:list-level-style-number text:level="1" style:num-format="a"'
            ' style:num-suffix=")"/><text:list-level-style-number text:level="2" style:num-format="I" '
            'style:num-prefix="(" style:num-suffix=")" text:start-value="2"/></text:list-style>'
        ),
        automatic=True,
    )
    writer.body.append(Paragraph("Steps"))
    steps = List(["Plan", "Build"])
    steps.set_attribute("text:style-name", "Steps")
    steps.children[1].append(List(["Survey", "Permit"]))
    writer.body.append(steps)
    writer.save(str(tmp_path / "plan.odt"))

    (plan,) = load(tmp_path).documents

    assert plan.text == "Steps\n\na) Plan\nb) Build\n  (II) Survey\n  (III) Permit"


def test_an_ebook_chapter_is_laid_out_as_a_reader_shows_it(tmp_path: Path) -> None:
    """An e-book's chapter was one line (trafilatura's html2txt: every run of whitespace a space), its code and its
    tables run into the prose. Now a chapter's blocks are lines: paragraphs and headings between blank lines, list
    items (with their markers, numbered from an ordered list's start) and table rows a line each (cells between
    ` | `), a <pre> block as written, the source's own line
    breaks inside a paragraph spaces (as a reader shows them), a script's text nowhere."""
    chapter = (
        "<h1>Depot   tariffs</h1>\n<p>The night rate\n    is <b>$0.12</b> per kWh.</p>"
        "<ul><li>Wallbox</li><li>Depot DC<br/>150 kW</li></ul><ol start='2'><li><p>Plug in.</p></li><li>Pay.</li></ol>"
        "<dl><dt>AC</dt><dd>Up to 22 kW.</dd></dl>"
        "<table><thead><tr><th>Model</th>\n<th>Power</th></tr></thead>"
        "<tbody><tr><td>Pro</td><!-- a note --><td>22 kW</td></tr></tbody></table>"
        "<pre>def rate(kw):\n    return kw * 0.30</pre><script>var x = 'SCRIPT-TEXT';</script><div>After.</div>"
    )
    write_epub(tmp_path / "tariffs.epub", "Tariffs", [chapter, "<p>Second chapter.</p>"])
    (book,) = load(tmp_path).documents
    assert book.text == (
        "Depot tariffs\n\nThe night rate is $0.12 per kWh.\n\n- Wallbox\n- Depot DC\n150 kW\n\n2. Plug in.\n\n3. Pay."
        "\n\nAC\n  Up to 22 kW."
        "\n\nModel | Power\nPro | 22 kW"
        "\n\ndef rate(kw):\n    return kw * 0.30\n\nAfter.\n\nSecond chapter."
    )
    assert book.metadata["chapter_starts"] == [0, book.text.index("Second chapter.")]


def test_a_table_in_an_office_file_is_a_row_a_line_with_a_merged_cell_once(tmp_path: Path) -> None:
    """A table in a DOCX, a PPTX or an ODT was its cells one a line (once the text kept its lines: before, one run
    of words), which value was whose lost; now each row is a line, cells between " | " as Markdown writes them, a
    cell's own paragraphs on that line, a merged cell once (python-docx repeats it per column it spans), a row of
    empty cells left out."""
    from odfdo import Document as OdfDocument
    from odfdo import Paragraph, Table

    rows = [("Depot chargers", None, "Notes"), ("Wallbox Pro", "22 kW", "wall,\nindoor"), ("", "", "")]
    expected = "Chargers\n\nDepot chargers | Notes\nWallbox Pro | 22 kW | wall, indoor\n\nAfter the table."  # blocks
    word = docx.Document()
    word.add_paragraph("Chargers")
    grid = word.add_table(rows=3, cols=3)
    grid.cell(0, 0).merge(grid.cell(0, 1))
    deck = pptx.Presentation()
    slide = deck.slides.add_slide(deck.slide_layouts[6])
    frame = slide.shapes.add_textbox(Inches(1), Inches(0.5), Inches(4), Inches(1))
    frame.text_frame.text = "Chargers"
    shape = slide.shapes.add_table(3, 3, Inches(1), Inches(2), Inches(6), Inches(2)).table
    shape.cell(0, 0).merge(shape.cell(0, 1))
    odt = OdfDocument("text")
    odt.body.clear()
    odt.body.append(Paragraph("Chargers"))
    sheet = Table("Chargers", width=3, height=3)
    for y, row in enumerate(rows):
        for x, text in enumerate(row):
            if text is not None:
                grid.cell(y, x).text = shape.cell(y, x).text = text
                if text:
                    sheet.set_value((x, y), text.replace("\n", " "))
    sheet.set_span((0, 0, 1, 0))  # the first two cells of the first row, merged
    odt.body.append(sheet)
    odt.body.append(Paragraph("After the table."))
    word.add_paragraph("After the table.")
    slide.shapes.add_textbox(Inches(1), Inches(5), Inches(4), Inches(1)).text_frame.text = "After the table."
    word.save(str(tmp_path / "word.docx"))
    deck.save(str(tmp_path / "deck.pptx"))
    odt.save(str(tmp_path / "writer.odt"))

    result = load(tmp_path)

    assert {d.id: d.text for d in result.documents} == {"word": expected, "deck": expected, "writer": expected}


def test_an_office_files_headings_and_paragraphs_are_blocks_its_lists_lines(tmp_path: Path) -> None:
    """A DOCX's and an ODT's paragraphs were joined by a line break, so a heading ran into the paragraph under it
    (the extractive backend's sentence began `Installation Mount the wallbox...`). Now a paragraph or a heading is
    a block between blank lines, as a reader sees them apart, and a list's items (nested ones too) and a table's
    rows are lines of one block. A DOCX's list items carry Word's markers (`- `, `1.`), and its superscript exponents
    are written with `^`, as an HTML page's are."""
    from odfdo import Document as OdfDocument
    from odfdo import Header, List, ListItem, Paragraph

    word = docx.Document()
    word.add_heading("Installation", level=1)
    word.add_paragraph("Mount the wallbox 1.2 m above the floor")
    for item in ("Drill four holes", "Fix the bracket"):
        word.add_paragraph(item, style="List Bullet")
    word.add_heading("Wiring", level=2)
    word.add_paragraph("Use a 6 mm2 cable.")
    for item in ("Turn the power off", "Connect L1, L2 and L3"):
        word.add_paragraph(item, style="List Number")
    raised = word.add_paragraph("A 12 m")  # exponents as in HTML; Word splits runs where it likes
    for text, superscript in (("2", True), (" bay; 2", False), ("n ", True), ("− 1", True), (" slots, the 1", False)):
        raised.add_run(text).font.superscript = superscript
    raised.add_run("st").font.superscript = True
    raised.add_run(" free.")
    word.save(str(tmp_path / "word.docx"))
    odt = OdfDocument("text")
    odt.body.clear()
    odt.body.append(Header(1, "Installation"))
    odt.body.append(Paragraph("Mount the wallbox 1.2 m above the floor"))
    steps = List(["Drill four holes"])
    fixing = ListItem("Fix the bracket")
    fixing.append(List(["with the screws supplied"]))
    steps.append(fixing)
    odt.body.append(steps)
    odt.body.append(Header(2, "Wiring"))
    odt.body.append(Paragraph("Use a 6 mm2 cable."))
    odt.body.append(List(["Turn the power off", "Connect L1, L2 and L3"]))
    odt.save(str(tmp_path / "writer.odt"))

    texts = {d.id: d.text for d in load(tmp_path).documents}

    assert texts["word"] == (  # Word's List Bullet and List Number styles: its markers
        "Installation\n\nMount the wallbox 1.2 m above the floor\n\n- Drill four holes\n- Fix the bracket\n\nWiring\n\n"
        "Use a 6 mm2 cable.\n\n1. Turn the power off\n2. Connect L1, L2 and L3\n\n"
        "A 12 m^2 bay; 2^(n − 1) slots, the 1st free."
    )
    assert texts["writer"] == (  # a list without a style: bullets
        "Installation\n\nMount the wallbox 1.2 m above the floor\n\n- Drill four holes\n- Fix the bracket\n"
        "  - with the screws supplied\n\nWiring\n\nUse a 6 mm2 cable.\n\n- Turn the power off\n- Connect L1, L2 and L3"
    )
    for text in texts.values():  # an unpunctuated heading or list is a sentence of its own
        sentences = split_sentences(text)
        assert sentences[:2] == ["Installation", "Mount the wallbox 1.2 m above the floor"]
        assert "Wiring" in sentences and "Use a 6 mm2 cable." in sentences


def test_opendocument_spreadsheets_and_presentations_load_as_excel_and_powerpoint_do(tmp_path: Path) -> None:
    """LibreOffice Calc and Impress files were skipped. A spreadsheet as Calc saves one (every table 1,024 columns
    wide and a million rows long, the empty rest written as repeated cells and rows: read without expanding them), a
    cover table without the text column (left out), ids stored as numbers (101, not 101.0), a price of 0.45, an
    empty row and a ragged one; a presentation with a title frame, a body frame, a table and speaker notes on each
    slide: slide by slide with `slide_starts`, as a PowerPoint deck."""
    from odfdo import Document, DrawPage, Element, Frame

    def cell(value: object) -> str:
        if value is None:
            return "<table:table-cell/>"
        if isinstance(value, (int, float)):
            typed = f'office:value-type="float" office:value="{value}"'
        else:
            typed = 'office:value-type="string"'
        return f"<table:table-cell {typed}><text:p>{value}</text:p></table:table-cell>"

    def table(name: str, rows: list[list[object]]) -> Element:
        body = "".join(
            "<table:table-row>" + "".join(cell(v) for v in row)
            + f'<table:table-cell table:number-columns-repeated="{1024 - len(row)}"/></table:table-row>'
            for row in rows
        )  # fmt: skip
        rest = 1048576 - len(rows)
        return Element.from_tag(
            f'<table:table table:name="{name}"><table:table-column table:number-columns-repeated="1024"/>{body}'
            f'<table:table-row table:number-rows-repeated="{rest}"><table:table-cell '
            'table:number-columns-repeated="1024"/></table:table-row></table:table>'
        )

    sheet = Document("spreadsheet")
    sheet.body.clear()
    sheet.body.append(table("Cover", [["Charging FAQ, 2026 edition"], ["Owner: support team"]]))
    sheet.body.append(table("FAQ", [
        ["id", "question", "answer", "price_eur"],
        [101, "Can I charge in the rain?", "Yes: connectors are sealed.", 0.45],
        [None, None, None, None],
        [102, "Night rate?", "0.12 EUR per kWh from 22:00.", 0.12],
        [103, "Cable length?", "Five metres.", None, "stray note"],
    ]))  # fmt: skip
    sheet.save(str(tmp_path / "faq.ods"))
    (tmp_path / "sheet-export").write_bytes((tmp_path / "faq.ods").read_bytes())  # no suffix: its mimetype says

    deck = Document("presentation")
    deck.body.clear()
    for number in (1, 2):
        page = DrawPage(f"page{number}", name=f"Slide {number}")
        page.append(Frame.text_frame(f"Depot tariffs {number}", size=("20cm", "2cm"), presentation_class="title"))
        page.append(Frame.text_frame([f"Night rate {number}: $0.1{number} per kWh.", "Day rate: $0.30."]))
        page.append(Element.from_tag(
            "<presentation:notes><draw:frame><draw:text-box><text:p>"
            f"NOTES {number}: ask the depot manager first.</text:p></draw:text-box></draw:frame></presentation:notes>"
        ))  # fmt: skip
        deck.body.append(page)
    deck.meta.title = ""
    deck.save(str(tmp_path / "tariffs.odp"))
    (tmp_path / "broken.ods").write_bytes((tmp_path / "tariffs.odp").read_bytes())  # a presentation named .ods

    result = load(tmp_path, text_field=["answer", "text"])
    docs = {(d.metadata.get("source_file"), d.id): d for d in result.documents}
    assert set(docs) == {("faq.ods", "101"), ("faq.ods", "102"), ("tariffs.odp", "tariffs")}, rejected(result)
    rain = docs[("faq.ods", "101")]
    assert rain.text == "Yes: connectors are sealed."
    assert rain.metadata == {
        "question": "Can I charge in the rain?", "price_eur": 0.45, "sheet": "FAQ", "source_file": "faq.ods",
    }  # fmt: skip
    reasons = {(Path(r.source).name, r.location): r.reason.split(":")[0] for r in result.rejects}
    assert reasons == {
        ("faq.ods", "sheet 'FAQ' row 5"): "ragged_row",
        ("sheet-export", "sheet 'FAQ' row 5"): "ragged_row",
        ("sheet-export", "sheet 'FAQ' row 2"): "duplicate_id",  # faq.ods, read first, has 101 and 102
        ("sheet-export", "sheet 'FAQ' row 4"): "duplicate_id",
    }
    slides = docs[("tariffs.odp", "tariffs")]
    assert slides.metadata["slides"] == 2 and slides.metadata["title"] == "Depot tariffs 1"
    second = slides.metadata["slide_starts"][1]
    first = "Depot tariffs 1\n\nNight rate 1: $0.11 per kWh.\nDay rate: $0.30.\n\nNOTES 1: ask the depot manager first."
    assert slides.text[:second] == first + "\n\n"
    assert slides.text[second:].startswith("Depot tariffs 2\n\nNight rate 2")
    files = {f.path: (f.status, f.format) for f in result.files}
    assert files["sheet-export"] == ("loaded", "ods") and files["tariffs.odp"] == ("loaded", "odp")
    reason = {f.path: f.reason for f in result.files}
    assert files["broken.ods"][0] == "failed" and "not a spreadsheet" in reason["broken.ods"]


def test_long_office_files_ebooks_and_notebooks_come_in_parts_that_lose_nothing(tmp_path: Path) -> None:
    """An ODT, an ODP, an EPUB and a notebook longer than `data.max_chars` become parts, as a PDF does: read once
    whole (their libraries hold the file), cut where a paragraph, slide, chapter or cell ends. (The ODP, left out
    of the formats read whole, was quarantined as too long past the reading bound: this test found it.)"""
    import html

    from odfdo import Document, DrawPage, Frame, Paragraph

    limit = 4_000  # the reading bound is 6 x 4,000 + 64 KiB = 89,536 bytes: each file holds more text than that
    short = [p for p in stdlib_paragraphs(700) if len(p) < limit // 2]
    assert sum(map(len, short)) > 6 * limit + 65_536
    text = Document("text")
    text.body.clear()
    for paragraph in short:
        text.body.append(Paragraph(paragraph))
    text.save(str(tmp_path / "guide.odt"))
    deck = Document("presentation")
    deck.body.clear()
    for number in range(0, len(short), 3):
        page = DrawPage(f"p{number}")
        page.append(Frame.text_frame(short[number : number + 3], size=("20cm", "15cm")))
        deck.body.append(page)
    deck.meta.title = "Library deck"
    deck.save(str(tmp_path / "deck.odp"))
    write_epub(
        tmp_path / "book.epub",
        "Library book",
        ["".join(f"<p>{html.escape(p)}</p>" for p in short[n : n + 30]) for n in range(0, len(short), 30)],
    )
    cells = [{"cell_type": "markdown", "metadata": {}, "source": ["# Library notebook\n", "\n", short[0]]}]
    for paragraph in short[1:]:
        cells.append({"cell_type": "markdown", "metadata": {}, "source": paragraph})
    notebook = {"cells": cells, "metadata": {}, "nbformat": 4, "nbformat_minor": 5}
    (tmp_path / "analysis.ipynb").write_text(json.dumps(notebook))

    result = load(tmp_path, max_chars=limit)

    by_file = parts_by_file(result, limit)
    assert set(by_file) == {"guide", "deck", "book", "analysis"}
    for name, parts in by_file.items():
        assert len(parts) >= 3 and [d.metadata["part"] for d in parts] == list(range(1, len(parts) + 1)), name
        joined = " ".join(" ".join(d.text for d in parts).split())  # as words: HTML's <p> wraps its lines
        at = 0
        for paragraph in short[1:]:  # every paragraph whole, in order (each within one part, none cut)
            found = joined.find(" ".join(normalize_text(paragraph).split()), at)
            assert found >= 0, (name, paragraph[:60])
            at = found
    for name, unit in (("deck", "first_slide"), ("book", "first_chapter")):  # each part from where it begins
        firsts = [d.metadata[unit] for d in by_file[name]]
        assert firsts == sorted(firsts) and firsts[0] == 1 and firsts[-1] > 1, (name, firsts)
    assert by_file["analysis"][0].metadata["title"] == "Library notebook"


def test_a_notebooks_cells_load_in_order_and_its_outputs_do_not(tmp_path: Path) -> None:
    """A Jupyter notebook: Markdown and raw cells as written, code cells fenced in the kernel's language (a `#`
    comment in code is not the title), outputs left out however large (a plot in base64, a printed table, a
    traceback); sources as a list of lines or one string; a notebook that is not JSON, or not of cells, fails."""
    plot = "iVBORw0KGgo" + "A" * 400_000  # a plot's PNG in base64: ~400 kB of output
    cells = [
        {"cell_type": "code", "metadata": {}, "execution_count": 1, "source": ["# load the tariffs\n", "import csv"],
         "outputs": [{"output_type": "stream", "name": "stdout", "text": ["PRINTED-OUTPUT\n"]}]},
        {"cell_type": "markdown", "metadata": {}, "source": "# Night tariffs\n\nOff-peak charging costs $0.12 a kWh."},
        {"cell_type": "code", "metadata": {}, "execution_count": 2, "source": "plot(tariffs)",
         "outputs": [{"output_type": "display_data", "data": {"image/png": plot, "text/plain": ["<Figure>"]},
                      "metadata": {}},
                     {"output_type": "error", "ename": "ValueError", "evalue": "TRACEBACK-TEXT", "traceback": []}]},
        {"cell_type": "raw", "metadata": {}, "source": ["Raw note: rates change in March."]},
        {"cell_type": "markdown", "metadata": {}, "source": []},
    ]  # fmt: skip
    notebook = {
        "cells": cells,
        "metadata": {"language_info": {"name": "python"}, "kernelspec": {"name": "python3"}},
        "nbformat": 4,
        "nbformat_minor": 5,
    }
    (tmp_path / "tariffs.ipynb").write_text(json.dumps(notebook, indent=1))
    (tmp_path / "broken.ipynb").write_text('{"cells": [')
    (tmp_path / "old.ipynb").write_text(json.dumps({"worksheets": [{"cells": []}], "nbformat": 3}))

    result = load(tmp_path)

    [document] = result.documents
    assert document.id == "tariffs" and document.metadata["title"] == "Night tariffs"
    assert document.text == normalize_text(
        "```python\n# load the tariffs\nimport csv\n```\n\n# Night tariffs\n\nOff-peak charging costs $0.12 a kWh."
        "\n\n```python\nplot(tariffs)\n```\n\nRaw note: rates change in March."
    )
    for output in ("PRINTED-OUTPUT", "TRACEBACK-TEXT", "<Figure>", plot[:20]):
        assert output not in document.text
    reasons = {f.path: f.reason for f in result.files if f.status == "failed"}
    assert reasons["broken.ipynb"].startswith("not a readable notebook: JSONDecodeError")
    assert reasons["old.ipynb"] == "not a readable notebook: no list of cells (nbformat 4)"


def _everything(result: IngestResult) -> tuple:
    """A load's whole outcome: documents, rejects, per-file summary, counts."""
    return (
        [d.model_dump() for d in result.documents],
        [r.model_dump() for r in result.rejects],
        [(f.path, f.status, f.format, f.records, f.documents, f.quarantined, f.reason) for f in result.files],
        result.records_seen,
        dict(result.repairs),
    )


def _folder_of_documents(folder: Path) -> None:
    """Document files of every parsed kind, with the bad ones a team has: 24 files."""
    for number in range(8):
        page = f"<html><head><title>Page {number}</title></head><body><main><h1>Depot {number}</h1><p>{ARTICLE}</p>"
        (folder / f"page{number}.html").write_text(
            page + f"<p>Bay {number} has a 150 kW charger.</p></main></body></html>"
        )
    (folder / "latin1.html").write_bytes(b"<html><body><p>caf\xe9 " + ARTICLE.encode() + b"</p></body></html>")
    (folder / "empty.html").write_text("<html><body><script>var x = 1;</script></body></html>")
    for number in range(4):
        write_pdf(folder / f"manual{number}.pdf", [f"Manual {number}. {ARTICLE}", f"Page two of manual {number}."])
    (folder / "broken.pdf").write_bytes(b"%PDF-1.4 this is not a PDF at all")
    for number in range(4):
        write_docx(folder / f"sheet{number}.docx", f"Sheet {number}", [ARTICLE], ["Model", f"{number} kW"])
    (folder / "broken.docx").write_bytes(b"PK\x03\x04 not a zip")
    write_epub(folder / "book.epub", "Book", ["<p>Chapter one.</p>", "<p>Chapter two.</p>"])
    (folder / "page0.md").write_text("# Depot 0\n\nThe same stem as page0.html.\n")
    (folder / "records.jsonl").write_bytes(jsonl({"id": "page3", "text": ARTICLE}, {"id": "r1", "text": "x" * 5}))


def test_document_files_read_by_worker_processes_load_as_they_do_in_place(tmp_path: Path) -> None:
    """`data.load_workers` reads the parsed formats (HTML, PDF, office files, e-books) in a pool of processes
    ahead of the loader: a folder of them loads in about half the time on 2 cores (docs/benchmarks.md). Nothing
    else changes: the same documents in the same order, the same quarantined records and failed files with the
    same reasons, the same per-file summary, for 1 worker, for 3, and by default (auto: 24 files here)."""
    _folder_of_documents(tmp_path)

    in_place = load(tmp_path, load_workers=1)
    three = load(tmp_path, load_workers=3)
    auto = load(tmp_path)

    assert _everything(three) == _everything(in_place)
    assert _everything(auto) == _everything(in_place)
    statuses = {f.path: f.status for f in in_place.files}
    assert statuses["broken.pdf"] == statuses["broken.docx"] == "failed"
    assert rejected(in_place)["latin1.html:file"] == "not_utf8"
    assert len(in_place.documents) == 8 + 4 + 4 + 1 + 1 + 1  # pages, manuals, sheets, the book, page0.md, r1


def test_a_reader_process_killed_mid_file_loses_no_file(tmp_path: Path) -> None:
    """A worker reading a file dies (killed here with SIGKILL while it parses a 1.6 MB page; out of memory or a
    parser's crash alike): the files it had in flight are read again, each alone in a new pool, and the load ends
    with every document it would have had in place; a file that kills its reader twice fails alone, named."""
    import os
    import signal
    import threading

    import psutil

    paragraph = "<p>Depot charger number {} delivers 150 kW to two bays and bills 0.59 EUR per kWh.</p>"
    for number in range(3):
        body = "".join(paragraph.format(f"{number}-{i}") for i in range(15_000))
        (tmp_path / f"big{number}.html").write_text(f"<html><body><main>{body}</main></body></html>")
    for number in range(14):
        (tmp_path / f"small{number}.html").write_text(
            f"<html><body><main><p>{number}. {ARTICLE}</p></main></body></html>"
        )
    expected = _everything(load(tmp_path, load_workers=1))

    outcome: dict[str, IngestResult] = {}
    me = psutil.Process()
    others = {child.pid for child in me.children(recursive=True)}  # this test process's own (a Prefect server's)
    loader = threading.Thread(target=lambda: outcome.setdefault("result", load(tmp_path, load_workers=2)))
    loader.start()
    killed = None
    while loader.is_alive() and killed is None:  # the first of the load's workers that has parsed for half a second
        for child in me.children():
            if child.pid in others:
                continue
            try:
                if child.cpu_times().user > 0.5:
                    os.kill(child.pid, signal.SIGKILL)
                    killed = child.pid
                    break
            except psutil.NoSuchProcess:
                continue
        loader.join(0.05)
    loader.join()

    assert killed is not None, "no worker was seen parsing"
    assert _everything(outcome["result"]) == expected
