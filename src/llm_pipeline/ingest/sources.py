"""What a file is and how to read it: its format (by extension, confirmed or found by its first bytes), its
compression (gzip, bzip2, xz, zstd; streamed), its encoding (UTF-8, or UTF-16/32 by their byte-order marks), and
its lines, each bounded in size so that no record, however long, costs more memory than a few times the bound.
"""

from __future__ import annotations

import bz2
import codecs
import gzip
import io
import lzma
import re
import zipfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, BinaryIO

CHUNK = 1 << 16

COMPRESSIONS = {".gz": "gzip", ".bz2": "bzip2", ".xz": "xz", ".zst": "zstd"}
_COMPRESSION_MAGIC = (
    (b"\x1f\x8b", "gzip"),
    (b"BZh", "bzip2"),
    (b"\xfd7zXZ\x00", "xz"),
    (b"\x28\xb5\x2f\xfd", "zstd"),
)
FORMATS_BY_SUFFIX = {
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".json": "json",
    ".csv": "csv",
    ".tsv": "tsv",
    ".parquet": "parquet",
    ".txt": "text",
    ".text": "text",
    ".md": "markdown",
    ".markdown": "markdown",
    ".rst": "rst",
    ".rest": "rst",
    ".adoc": "asciidoc",
    ".asciidoc": "asciidoc",
    ".html": "html",
    ".htm": "html",
    ".xhtml": "html",
    ".pdf": "pdf",
    ".docx": "docx",
    ".pptx": "pptx",
    ".xlsx": "xlsx",
    ".xlsm": "xlsx",
    ".odt": "odt",
    ".ods": "ods",
    ".odp": "odp",
    ".epub": "epub",
    ".ipynb": "notebook",
}
BINARY_FORMATS = {
    "parquet",
    "pdf",
    "docx",
    "pptx",
    "xlsx",
    "odt",
    "ods",
    "odp",
    "epub",
}  # need the whole file, seekable: never compressed here
# Names that plain-text documentation goes by without a suffix (README, NEWS, changelog.Debian.gz, README.source):
# read as text when their bytes are. Not licences and not lists of people: nothing a model should learn a domain from.
DOC_NAMES = frozenset(
    {"readme", "news", "changes", "changelog", "history", "install", "todo", "faq", "usage", "hacking", "bugs",
     "contributing", "release", "relnotes", "notes"}
)  # fmt: skip
# ...but not with a suffix saying it is code, a build or config file, a patch, a log or a backup: install.sh, NEWS.in
NOT_DOC_SUFFIXES = frozenset(
    {".sh", ".bash", ".py", ".pl", ".pm", ".rb", ".js", ".ts", ".go", ".rs", ".java", ".c", ".h", ".cc", ".cpp",
     ".in", ".am", ".ac", ".m4", ".mk", ".cmake", ".conf", ".cfg", ".ini", ".toml", ".yaml", ".yml", ".xml",
     ".patch", ".diff", ".bat", ".ps1", ".log", ".bak", ".old", ".orig", ".rej", ".swp", ".tmp", ".lock",
     ".odt", ".ods", ".odp", ".doc", ".xls", ".ppt", ".rtf", ".epub", ".pages", ".key", ".numbers"}
)  # fmt: skip
# First bytes of files that are not text whatever their name: zip (office files), PDF, images, executables, OLE
_BINARY_MAGIC = (b"PK\x03\x04", b"%PDF", b"\x89PNG", b"GIF8", b"\xff\xd8\xff", b"\x7fELF", b"\xd0\xcf\x11\xe0", b"PAR1")
TEXT_SNIFF_BYTES = 8192  # the bytes that must hold no NUL for a file to be read as plain text
_WORD_BREAK = re.compile(r"[-_ ]")
# Byte-order marks, longest first: UTF-32-LE's starts with UTF-16-LE's.
BOMS = (
    (codecs.BOM_UTF32_LE, "utf-32"),
    (codecs.BOM_UTF32_BE, "utf-32"),
    (codecs.BOM_UTF8, "utf-8"),
    (codecs.BOM_UTF16_LE, "utf-16"),
    (codecs.BOM_UTF16_BE, "utf-16"),
)


class UnreadableFile(Exception):
    """The file as a whole cannot be read (wrong magic, damaged archive, undecodable): its reason is the skip's."""


@dataclass(frozen=True)
class Kind:
    # jsonl, json, csv, tsv, parquet, xlsx, ods, text, markdown, rst, asciidoc, html, pdf, docx, pptx, odt, odp, epub,
    # notebook
    format: str
    compression: str | None = None
    encoding: str = "utf-8"  # a text file's without a byte-order mark (`data.encoding`)


def stem(path: Path) -> Path:
    """The path without its compression suffix and format suffix: `guides/a.md.gz` -> `guides/a`."""
    if path.suffix.lower() in COMPRESSIONS:
        path = path.with_suffix("")
    return path.with_suffix("") if path.suffix.lower() in FORMATS_BY_SUFFIX else path


def head_bytes(path: Path, size: int = 8) -> bytes:
    with path.open("rb") as handle:
        return handle.read(size)


def compression_of(head: bytes) -> str | None:
    return next((name for magic, name in _COMPRESSION_MAGIC if head.startswith(magic)), None)


def _sniff_format(path: Path, head: bytes) -> str | None:
    """A format told by the first bytes alone, for files whose name does not say it."""
    if head.startswith(b"%PDF-"):
        return "pdf"
    if head.startswith(b"PAR1"):
        return "parquet"
    if head.startswith(b"PK\x03\x04"):
        try:
            with zipfile.ZipFile(path) as archive:
                names = set(archive.namelist())
                # ODF and EPUB name their type in a first entry `mimetype`
                mimetype = archive.read("mimetype")[:100].strip() if "mimetype" in names else b""
        except (zipfile.BadZipFile, OSError, RuntimeError):  # RuntimeError: an encrypted entry
            return None
        if "word/document.xml" in names:
            return "docx"
        if "xl/workbook.xml" in names:
            return "xlsx"
        if mimetype.startswith(b"application/vnd.oasis.opendocument."):
            return {b"text": "odt", b"spreadsheet": "ods", b"presentation": "odp"}.get(mimetype.rsplit(b".", 1)[1])
        if mimetype == b"application/epub+zip":
            return "epub"
        return "pptx" if "ppt/presentation.xml" in names else None
    text = head.lstrip(codecs.BOM_UTF8).lstrip().lower()
    if text.startswith((b"<!doctype h", b"<html")):
        return "html"
    return None


def documentation_name(name: str) -> bool:
    """A name plain-text documentation goes by: README, NEWS, CHANGES, changelog, INSTALL, FAQ... (any case, as
    the first word: `README_FIRST`, `release-notes`), maybe with a suffix that is not code's, a build or config
    file's, a patch's, a log's or a backup's (`README.Debian`, `changelog.Debian`, `README.source`)."""
    first, *_ = name.split(".", 1)
    suffix = Path(name).suffix.lower() if "." in name else ""
    return _WORD_BREAK.split(first.lower())[0] in DOC_NAMES and suffix not in NOT_DOC_SUFFIXES


def _text_bytes(path: Path, compression: str | None, scripts: bool) -> bool:
    """The file's first bytes (decompressed) look like text: a UTF-16/32 byte-order mark, or no NUL byte and no
    binary format's magic (and, unless `scripts`, no `#!` line first: a script named like documentation, an INSTALL
    that installs)."""
    with open_binary(path, compression) as stream:
        head = stream.read(TEXT_SNIFF_BYTES)
    if head.startswith(tuple(bom for bom, _ in BOMS)):
        return True
    if b"\x00" in head or head.startswith(_BINARY_MAGIC):
        return False
    return scripts or not head.startswith(b"#!")


def classify(path: Path, plain_text: bool = False) -> Kind | None:
    """The file's kind, or None when it is of no format this loader reads. The name decides the format when it
    has a known suffix (a `.pdf` that is not a PDF then fails to read, loudly); the first bytes decide otherwise.
    Compression is read from the first bytes always, so a `.jsonl.gz` and a gzipped `.jsonl` read alike. A file of
    no known format is plain text when its name is documentation's (`documentation_name`) or `plain_text` says so
    (`data.plain_text`), and its first bytes are text."""
    head = head_bytes(path, 512)
    compression = compression_of(head)
    suffix = path.suffix.lower()
    inner = path.with_suffix("") if suffix in COMPRESSIONS else path
    fmt = FORMATS_BY_SUFFIX.get(inner.suffix.lower())
    if fmt is None and compression is None:
        fmt = _sniff_format(path, head)
    if fmt is None and (plain_text or documentation_name(inner.name)):
        if compression is None and suffix in COMPRESSIONS:
            raise UnreadableFile(f"named {suffix} but not {COMPRESSIONS[suffix]}-compressed")
        fmt = "text" if _text_bytes(path, compression, scripts=plain_text) else None
    if fmt is None:
        return None
    if compression is None and suffix in COMPRESSIONS:
        raise UnreadableFile(f"named {suffix} but not {COMPRESSIONS[suffix]}-compressed")
    if compression and fmt in BINARY_FORMATS:
        raise UnreadableFile(f"a compressed {fmt} is not supported: decompress it first")
    return Kind(fmt, compression)


@contextmanager
def open_binary(path: Path, compression: str | None) -> Iterator[BinaryIO]:
    """The file's bytes, decompressed as they are read (never whole in memory)."""
    if compression is None:
        with path.open("rb") as handle:
            yield handle
        return
    if compression == "zstd":
        import zstandard

        with path.open("rb") as raw, zstandard.ZstdDecompressor().stream_reader(raw) as reader:
            yield io.BufferedReader(reader, CHUNK)  # type: ignore[arg-type]
        return
    opener = {"gzip": gzip.open, "bzip2": bz2.open, "xz": lzma.open}[compression]
    with opener(path, "rb") as handle:
        yield io.BufferedReader(handle, CHUNK)  # type: ignore[arg-type]


def sniff_encoding(stream: io.BufferedReader, fallback: str = "utf-8") -> str:
    """UTF-16 or UTF-32 when the stream starts with their byte-order mark, UTF-8 after its mark, else `fallback`
    (`data.encoding`). A UTF-8 mark is consumed (so it never reaches a record, a CSV header or a document's text);
    UTF-16/32 codecs consume their own."""
    head = stream.peek(4)[:4]
    for bom, encoding in BOMS:
        if head.startswith(bom):
            if encoding == "utf-8":
                stream.read(len(bom))
            return encoding
    return fallback


def undecodable(encoding: str) -> str:
    """The reason code of text that is not in its encoding: `not_utf8`, `not_gb18030`, `not_shift_jis`, ..."""
    return "not_" + encoding.replace("-", "")


def _bytes_to_utf8(line: bytes, encoding: str) -> bytes:
    """A line in `encoding` as UTF-8; bytes `encoding` has no character for kept as they were (not UTF-8 either)."""
    return line.decode(encoding, "surrogateescape").encode("utf-8", "surrogateescape")


def _str_to_utf8(line: str) -> bytes:
    return line.encode("utf-8", "surrogatepass")


def bounded_lines(
    stream: io.BufferedReader, max_bytes: int, part: Part | None = None, fallback: str = "utf-8"
) -> Iterator[tuple[int, bytes | None]]:
    """(line number, the line's UTF-8 bytes) for each line; None for a line over `max_bytes`, which is read
    through in chunks and dropped, so memory stays near `max_bytes` whatever the line's length. UTF-16/32 streams
    are decoded (strictly: a bad code unit fails the file) and re-encoded to UTF-8, surrogates passed through. A
    `fallback` encoding other than UTF-8 (`data.encoding`: gb18030, shift_jis, cp1251, ...) whose newline is the
    byte \\n is read as lines of bytes, each decoded and re-encoded to UTF-8: bytes it has no character for stay
    as they were (the line's record is then quarantined as not UTF-8, as in a UTF-8 file), the other lines load.
    `part`: the stream is that byte range of a UTF-8 file (`file_parts`), its lines numbered from the part's
    first; a part after the first has no byte-order mark to look for."""
    encoding = sniff_encoding(stream, fallback) if part is None or part.start == 0 else fallback
    encode: Callable[[Any], bytes] | None = None
    if encoding == "utf-8":
        read_line = stream.readline
    elif "\n".encode(encoding) == b"\n":  # a legacy encoding with ASCII's newline: lines split on bytes
        read_line = stream.readline
        encode = partial(_bytes_to_utf8, encoding=encoding)
    else:
        read_line = io.TextIOWrapper(stream, encoding=encoding, newline="").readline  # type: ignore[assignment]
        encode = _str_to_utf8

    number = part.first_line - 1 if part is not None else 0
    while True:
        try:
            line = read_line(max_bytes + 1)
        except UnicodeDecodeError as exc:
            raise UnreadableFile(f"not valid {encoding.upper()} after line {number}: {exc.reason}") from exc
        if not line:
            return
        number += 1
        ending = "\n" if isinstance(line, str) else b"\n"
        if len(line) > max_bytes and not line.endswith(ending):  # type: ignore[arg-type]
            while True:  # read the rest of this line through, keeping nothing
                rest = read_line(CHUNK)
                if not rest or rest.endswith(ending):  # type: ignore[arg-type]
                    break
            yield number, None
            continue
        yield number, (encode(line) if encode else line)  # type: ignore[arg-type,misc]


DECLARATION_BYTES = 4096  # where a file's own encoding declaration is looked for (an HTML page's <meta charset>)


def read_bounded(
    stream: io.BufferedReader,
    max_bytes: int,
    fallback: str = "utf-8",
    declared: Callable[[bytes], str | None] | None = None,
) -> str | None:
    """A whole small file as text, or None when it holds over `max_bytes`: decoded by its byte-order mark (as in
    `sniff_encoding`), else by the encoding it declares in its first DECLARATION_BYTES (`declared`: a format that
    has declarations, HTML's), else as `fallback`. Raises UnicodeDecodeError (the record's quarantine gives the
    position)."""
    encoding = sniff_encoding(stream, "")
    data = stream.read(max_bytes + 1)
    if len(data) > max_bytes:
        return None
    if not encoding:
        encoding = (declared(data[:DECLARATION_BYTES]) if declared is not None else None) or fallback
    return data.decode(encoding)


@dataclass(frozen=True)
class Part:
    """Bytes [start, end) of a file, which begin at line `first_line` (1-based): one load task's share of a file
    too big for one (`file_parts`)."""

    start: int
    end: int
    first_line: int


class _Window(io.RawIOBase):
    """Bytes [start, end) of an open file, as a stream of their own."""

    def __init__(self, handle: BinaryIO, start: int, end: int):
        self.handle, self.left = handle, end - start
        handle.seek(start)

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        if self.left <= 0:
            return 0
        view = memoryview(buffer)[: min(len(buffer), self.left)]
        read = self.handle.readinto(view)  # type: ignore[attr-defined]
        self.left -= read or 0
        return read or 0


@contextmanager
def open_part(path: Path, part: Part) -> Iterator[BinaryIO]:
    with path.open("rb") as handle:
        yield io.BufferedReader(_Window(handle, part.start, part.end), CHUNK)  # type: ignore[arg-type]


def file_parts(path: Path, kind: Kind, part_bytes: int) -> list[Part] | None:
    """A JSON Lines file over `part_bytes`, uncompressed and in UTF-8, cut at line ends into parts of about
    `part_bytes` (their first line numbers counted in one pass over the file); None for a file read whole (smaller,
    compressed: a compressed stream cannot be entered mid-way, UTF-16/32 or another `data.encoding`, or another
    format)."""
    size = path.stat().st_size
    if kind.format != "jsonl" or kind.compression is not None or kind.encoding != "utf-8" or size <= part_bytes:
        return None
    head = head_bytes(path, 4)
    if any(head.startswith(bom) for bom, encoding in BOMS if encoding != "utf-8"):
        return None
    parts, start, line = [], 0, 1
    with path.open("rb") as handle:
        while start < size:
            target = min(start + part_bytes, size)
            lines, left, last = 0, target - start, b""
            while left > 0:  # the part's bytes up to the cut it aims at, counted a megabyte at a time
                block = handle.read(min(1 << 20, left))
                if not block:
                    break
                lines, left, last = lines + block.count(b"\n"), left - len(block), block[-1:]
            end = target
            if target < size and last != b"\n":  # carry on to the end of the line it cut
                while True:
                    rest = handle.readline(CHUNK)
                    end += len(rest)
                    if not rest or rest.endswith(b"\n"):
                        lines += 1 if rest.endswith(b"\n") else 0
                        break
            parts.append(Part(start, end, line))
            start, line = end, line + lines
    return parts
