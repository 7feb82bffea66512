"""Load every record under `data.path`, a file or a folder (walked recursively): good records become Documents,
bad ones Rejects with their file, place and reason, and each file gets a line in the summary (records, documents,
quarantined; or skipped, or failed, and why). Unknown files are listed as skipped, never read as documents."""

from __future__ import annotations

import fnmatch
import os
import pickle
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from llm_pipeline.config import DataConfig
from llm_pipeline.errors import DataValidationError
from llm_pipeline.ingest.documents import (
    READ_WHOLE,
    STREAMED,
    WHOLE_FILE,
    TooLong,
    document_parts,
    too_long_file,
)
from llm_pipeline.ingest.records import BadRecord, normalize_text, to_document
from llm_pipeline.ingest.sources import (
    COMPRESSIONS,
    FORMATS_BY_SUFFIX,
    Kind,
    Part,
    UnreadableFile,
    classify,
    compression_of,
    head_bytes,
    stem,
)
from llm_pipeline.ingest.tables import (
    RawItem,
    read_csv,
    read_json,
    read_jsonl,
    read_ods,
    read_parquet,
    read_xlsx,
)
from llm_pipeline.logging import get_logger
from llm_pipeline.records import Document, Reject

log = get_logger("ingest")

TABLES = {
    "jsonl": read_jsonl,
    "json": read_json,
    "csv": read_csv,
    "tsv": read_csv,
    "parquet": read_parquet,
    "xlsx": read_xlsx,
    "ods": read_ods,
}
HEADED = {"csv": read_csv, "tsv": read_csv, "xlsx": read_xlsx, "ods": read_ods}  # a header names the columns
SUMMARY_FILES = 1000  # files listed one by one in the summary; the totals count every file


@dataclass
class FileSummary:
    path: str  # relative to data.path (the file's name when data.path is a file)
    status: str  # loaded | skipped | failed
    format: str | None = None
    compression: str | None = None
    records: int = 0
    documents: int = 0
    quarantined: int = 0
    reason: str | None = None  # why skipped or failed


@dataclass
class IngestResult:
    documents: list[Document] = field(default_factory=list)
    rejects: list[Reject] = field(default_factory=list)
    records_seen: int = 0
    files: list[FileSummary] = field(default_factory=list)
    repairs: Counter[str] = field(default_factory=Counter)
    # (location, raw) of each document, when an engine keeps them: a document that a later file's loader finds
    # to repeat an id is quarantined with them, as the one-process loader would have
    origins: list[tuple[str, str | None]] | None = None
    loaded: int | None = None  # documents loaded, where `documents` is not held in this process (ray engine)

    @property
    def document_count(self) -> int:
        return len(self.documents) if self.loaded is None else self.loaded

    def counts(self) -> dict[str, Any]:
        reasons = Counter(reject.reason.split(":")[0] for reject in self.rejects)
        statuses = Counter(f.status for f in self.files)
        return {
            "records_seen": self.records_seen,
            "documents": self.document_count,
            "rejected": len(self.rejects),
            "files": len(self.files),
            **{f"files.{k}": statuses.get(k, 0) for k in ("loaded", "skipped", "failed")},
            **{f"rejected.{k}": v for k, v in sorted(reasons.items())},
            **{f"repaired.{k}": v for k, v in sorted(self.repairs.items())},
        }

    def file_summary(self) -> list[dict[str, Any]]:
        """Every file that failed or was skipped, then the loaded ones, up to SUMMARY_FILES lines."""
        order = {"failed": 0, "skipped": 1, "loaded": 2}
        return [asdict(f) for f in sorted(self.files, key=lambda f: order[f.status])[:SUMMARY_FILES]]


def detect_format(path: Path) -> str:
    """`folder`, or a single file's format (as `data.format: auto` would read it)."""
    if path.is_dir():
        return "folder"
    try:
        kind = classify(path)
    except UnreadableFile as exc:
        raise DataValidationError(f"data.path: {path}: {exc}") from exc
    if kind is None:
        raise DataValidationError(f"data.path: cannot tell the format of {path} (use data.format)")
    return kind.format


def line_bound(max_chars: int) -> int:
    """Bytes a line (or a text file) may hold: UTF-8's 4 bytes a character, JSON's escapes and some metadata.
    Anything longer is quarantined as too long without being parsed, so memory stays near this bound."""
    return 6 * max_chars + 65_536


def _walk(root: Path, config: DataConfig) -> Iterator[Path]:
    for path in sorted(root.rglob("*")):
        relative = path.relative_to(root).as_posix()
        if any(part.startswith(".") for part in path.relative_to(root).parts):
            continue  # hidden files and folders (.git, .DS_Store, editors' swap files): never a team's data
        if not path.is_file():
            continue
        if config.include and not any(fnmatch.fnmatch(relative, p) for p in config.include):
            continue
        if any(fnmatch.fnmatch(relative, p) for p in config.exclude):
            continue
        yield path


def plain_text(relative: str, config: DataConfig) -> bool:
    """`data.plain_text` names the file (its relative path, with or without a compression suffix)."""
    names = (relative, _bare(relative).as_posix())
    return any(fnmatch.fnmatch(name, pattern) for pattern in config.plain_text for name in names)


def _kind(path: Path, config: DataConfig, relative: str | None = None) -> Kind | None:
    if config.format in ("auto", "folder"):
        found = classify(path, plain_text(relative or path.name, config))
        return None if found is None else replace(found, encoding=config.encoding)
    return Kind(config.format, compression_of(head_bytes(path)), config.encoding)


def _raw_items(
    path: Path,
    kind: Kind,
    relative: str,
    max_bytes: int,
    nested: bool,
    part: Part | None = None,
    fields: tuple[list[str], list[str]] = (["text"], ["id"]),
    parts: tuple[int, int] | None = None,
    document_id: str | None = None,
    read: Callable[[], dict[str, Any]] | None = None,
) -> Iterator[RawItem]:
    """`fields`: the keys or columns of a record's text and of its id, the first present (`data.text_field`,
    `data.id_field`). `parts`: (`data.max_chars`, `data.max_file_chars`) where a document file longer than a record
    may be is split into parts (`documents.document_parts`); None: it is quarantined as too long. `document_id`:
    a whole-file document's id where the path without suffixes would repeat another's (`ids_for_shared_stems`).
    `read`: the document file's reader already called, in another process (`_Readers`): its record, or what it
    raised."""
    if kind.format in TABLES:
        if kind.format in HEADED:  # the columns are known from a header: records come out named
            items, fields = HEADED[kind.format](path, kind, max_bytes, *fields), (["text"], ["id"])
        elif part is None:
            items = TABLES[kind.format](path, kind, max_bytes)
        else:
            items = read_jsonl(path, kind, max_bytes, part)
        for location, item, raw in items:
            if isinstance(item, dict):
                record = _as_record(item, fields, relative if nested else None)
                if isinstance(record, BadRecord) and raw is None:
                    raw = _preview(item)  # as the record was read
                item = record
            yield location, item, raw
        return
    identity = document_id or stem(Path(relative)).as_posix()
    found: dict[str, Any] = {"source_file": relative}
    if "/" in relative:
        found["category"] = relative.split("/")[0]
    record: dict[str, Any] | None
    whole = parts is not None and kind.format in READ_WHOLE  # read once, up to max_file_chars: its library holds it
    try:
        record = read() if read is not None else WHOLE_FILE[kind.format](path, kind, _bound(kind, max_bytes, parts))
    except TooLong as bad:
        if parts is None or kind.format not in STREAMED:  # HTML: pages over 20 x the bound's bytes stay out
            yield "file", TooLong(too_long_file(parts[1])) if whole and parts else bad, None
            return
        record = None  # read again as a stream, in parts
    except BadRecord as bad:
        yield "file", bad, None
        return
    if record is not None and (parts is None or not _longer(record["text"], parts[0])):
        metadata = {**found, **record["metadata"]}
        yield "file", {"id": identity, "text": record["text"], "metadata": metadata}, None
        return
    assert parts is not None
    try:
        cut = document_parts(path, kind, record, *parts)
        for number, (text, metadata) in enumerate(cut, start=1):
            part_record = {"id": f"{identity}#{number}", "text": text, "metadata": {**found, **metadata}}
            yield f"part {number}", part_record, None
    except BadRecord as bad:
        yield "file", bad, None


def _bound(kind: Kind, max_bytes: int, parts: tuple[int, int] | None) -> int:
    """What a document file's reader is given as its bound: `data.max_file_chars` for a format its library holds
    whole (read once, split into parts after), the record's bound otherwise."""
    return parts[1] if parts is not None and kind.format in READ_WHOLE else max_bytes


def _splitting(config: DataConfig) -> tuple[int, int] | None:
    return (config.max_chars, config.max_file_chars) if config.max_file_chars > config.max_chars else None


# Reading document files in other processes (`data.load_workers`) ------------------------------------------------
PARSED = frozenset({"html", "pdf", "docx", "pptx", "odt", "odp", "epub"})  # their readers parse: worth a process
PARALLEL_MIN_FILES = 16  # fewer such files: read in this process (a process pool's start costs more)
MAX_AUTO_WORKERS = 8


def _read_elsewhere(path: Path, kind: Kind, bound: int) -> tuple[bool, Any]:
    """In a worker process: (True, the reader's record) or (False, what it raised; one that cannot cross to the
    loader's process as an UnreadableFile with the same words the loader would have written)."""
    try:
        return True, WHOLE_FILE[kind.format](path, kind, bound)
    except Exception as exc:
        try:
            pickle.loads(pickle.dumps(exc))  # noqa: S301 - its own bytes, just made
        except Exception:
            return False, UnreadableFile(f"{type(exc).__name__}: {exc}")
        return False, exc


class _Readers:
    """The document files of a load read ahead by a pool of processes, in the loader's order, at most WINDOW per
    worker at a time (the records waiting are a few files' worth). `take(relative)` gives the loader a call that
    returns the record or raises what the reader raised, as the reader called in place would. A worker that dies
    (killed, out of memory, a parser's crash) loses only the files in flight: each is read again, alone, in a new
    pool, and the one that kills that pool too fails with the reason, the load going on without it."""

    WINDOW = 2

    def __init__(self, files: list[tuple[Path, str]], config: DataConfig, workers: int):
        self.workers = workers
        self.jobs: list[tuple[str, Path, Kind, int]] = []
        for path, relative in files:
            try:
                kind = _kind(path, config, relative)
            except Exception:  # noqa: BLE001 - load_file meets it again, in place, and reports it
                continue
            if kind is not None and kind.format in PARSED:
                self.jobs.append((relative, path, kind, _bound(kind, line_bound(config.max_chars), _splitting(config))))
        self.next = 0
        self.pending: dict[str, Any] = {}
        self.pool: Any = None

    def _pool(self) -> Any:
        if self.pool is None:
            import concurrent.futures
            import multiprocessing

            # fork, as MinHash's pool: the workers need only the readers, already imported
            context = multiprocessing.get_context("fork")
            self.pool = concurrent.futures.ProcessPoolExecutor(self.workers, mp_context=context)
        return self.pool

    def _fill(self) -> None:
        while self.next < len(self.jobs) and len(self.pending) < self.WINDOW * self.workers:
            relative, path, kind, bound = self.jobs[self.next]
            self.pending[relative] = self._pool().submit(_read_elsewhere, path, kind, bound)
            self.next += 1

    def take(self, relative: str) -> Callable[[], dict[str, Any]] | None:
        self._fill()
        future = self.pending.pop(relative, None)
        if future is None:
            return None  # not a parsed format: read in place

        def read() -> dict[str, Any]:
            ok, value = self._result(relative, future)
            if not ok:
                raise value
            return value  # type: ignore[no-any-return]

        return read

    def _result(self, relative: str, future: Any) -> tuple[bool, Any]:
        from concurrent.futures.process import BrokenProcessPool

        try:
            return future.result()  # type: ignore[no-any-return]
        except BrokenProcessPool as exc:
            done = {name: found for name, found in self.pending.items() if isinstance(found, _Done)}
            in_flight = [
                job for job in self.jobs if job[0] == relative or (job[0] in self.pending and job[0] not in done)
            ]
            self.close(wait=False)
            self.pending = dict(done)  # results read again after an earlier break stay
            outcome: tuple[bool, Any] | None = None
            for job in in_flight:  # each again, alone: the one that kills a pool again is the culprit
                found = self._alone(job, exc)
                if job[0] == relative:
                    outcome = found
                else:
                    self.pending[job[0]] = _Done(found)
            assert outcome is not None
            return outcome

    def _alone(self, job: tuple[str, Path, Kind, int], broken: BaseException) -> tuple[bool, Any]:
        from concurrent.futures.process import BrokenProcessPool

        _, path, kind, bound = job
        try:
            return self._pool().submit(_read_elsewhere, path, kind, bound).result()  # type: ignore[no-any-return]
        except BrokenProcessPool:
            self.close(wait=False)
            log.warning("file_reader_died", file=job[0])
            return False, UnreadableFile(f"the process reading it died twice ({broken})")

    def close(self, wait: bool = True) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=wait, cancel_futures=True)
            self.pool = None


class _Done:
    """A result already at hand, as a future gives one."""

    def __init__(self, value: tuple[bool, Any]):
        self.value = value

    def result(self) -> tuple[bool, Any]:
        return self.value


def load_workers(config: DataConfig, files: list[tuple[Path, str]]) -> int:
    """How many processes read document files ahead (`data.load_workers`); 1: none, all read in place. A run with
    `data.limit` reads in place (it stops mid-way; a pool would read past it)."""
    if config.limit is not None:
        return 1
    if config.load_workers:
        return config.load_workers
    parsed = sum(1 for path, _ in files if FORMATS_BY_SUFFIX.get(_bare(path.name).suffix.lower()) in PARSED)
    if parsed < PARALLEL_MIN_FILES:
        return 1
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(cpus, MAX_AUTO_WORKERS))


def _longer(text: str, max_chars: int) -> bool:
    """Over `max_chars` as a document's text is measured (normalized)."""
    return len(text) > max_chars and len(normalize_text(text)) > max_chars


def _as_record(
    item: dict[str, Any], fields: tuple[list[str], list[str]], folder_file: str | None
) -> dict[str, Any] | BadRecord:
    """A table's record as `to_document` takes it: its text and id from the first of the configured keys it has
    (`data.text_field`, `data.id_field`); its other keys in its metadata, as a CSV's other columns are (its own
    `metadata` object wins where both name a key); and, read from a folder (`folder_file`: its relative path),
    the file's `source_file` and subfolder `category` where neither names them. A BadRecord when it has none of
    the configured text keys."""
    text_fields, id_fields = fields
    text_field = next((name for name in text_fields if name in item), None)
    if text_field is None and text_fields != ["text"]:  # the default: to_document's own `missing_text`
        named = f"no {text_fields[0]!r} field" if len(text_fields) == 1 else f"none of the fields {text_fields}"
        return BadRecord(f"missing_text: {named} (data.text_field)")
    id_field = next((name for name in id_fields if name in item), None)
    metadata = item.get("metadata") or {}
    if isinstance(metadata, dict):  # otherwise to_document names its type
        skipped = {text_field, id_field, "text", "id", "metadata"}
        metadata = {**{k: v for k, v in item.items() if k not in skipped}, **metadata}
        if folder_file is not None:
            metadata.setdefault("source_file", folder_file)
            if "/" in folder_file:
                metadata.setdefault("category", folder_file.split("/")[0])
    text = item[text_field] if text_field is not None else None
    return {"id": item[id_field] if id_field is not None else None, "text": text, "metadata": metadata}


def load_documents(config: DataConfig) -> IngestResult:
    """Read every record under `config.path`; good ones become Documents, bad ones Rejects. Order is kept (files
    in sorted order). A file that cannot be read is skipped with a warning (`data.on_bad_file: skip`) or fails
    the load (`fail`). Call `require_documents` to enforce `data.min_documents`."""
    result = IngestResult()
    seen_ids: set[str] = set()
    files = input_files(config)
    ids = ids_for_shared_stems([relative for _, relative in files])
    workers = load_workers(config, files)
    readers = _Readers(files, config, workers) if workers > 1 else None
    try:
        for path, relative in files:
            read = readers.take(relative) if readers is not None else None
            load_file(path, relative, config, result, seen_ids, document_id=ids.get(relative), read=read)
            if config.limit is not None and len(result.documents) >= config.limit:
                break
    finally:
        if readers is not None:
            readers.close()
    log.info(
        "documents_loaded",
        **{k: v for k, v in result.counts().items() if v},
        **({"load_workers": workers} if workers > 1 else {}),
    )
    return result


def input_files(config: DataConfig) -> list[tuple[Path, str]]:
    """(path, path relative to data.path) of every file to read, in the order they are read."""
    if not config.path.exists():
        raise DataValidationError(f"data.path: no such file or folder: {config.path}")
    if not config.path.is_dir():
        return [(config.path, config.path.name)]
    return [(path, path.relative_to(config.path).as_posix()) for path in _walk(config.path, config)]


def _bare(relative: str) -> Path:
    """The relative path without its compression suffix: `api/fs.md.gz` -> `api/fs.md`."""
    path = Path(relative)
    return path.with_suffix("") if path.suffix.lower() in COMPRESSIONS else path


def ids_for_shared_stems(relatives: list[str]) -> dict[str, str]:
    """{relative path: id} for the files whose document id, the path without suffixes, another file's would
    repeat: a page's source and its rendering (`api/fs.md`, `api/fs.html`), a text in two compressions. Each keeps
    its format suffix (`api/fs.md`), or all its suffixes where that is not enough (`api/fs.md.gz`, `api/fs.md.xz`),
    so neither is quarantined as a repeated id. Files of records (JSONL, JSON, CSV/TSV, Parquet) are left out:
    their records carry their own ids."""
    stems: dict[str, list[str]] = {}
    for relative in relatives:
        if FORMATS_BY_SUFFIX.get(_bare(relative).suffix.lower()) not in TABLES:
            stems.setdefault(stem(Path(relative)).as_posix(), []).append(relative)
    ids: dict[str, str] = {}
    for group in (g for g in stems.values() if len(g) > 1):
        bare = [_bare(relative).as_posix() for relative in group]
        ids |= dict(zip(group, bare if len(set(bare)) == len(bare) else group, strict=True))
    return ids


def load_file(
    path: Path,
    relative: str,
    config: DataConfig,
    result: IngestResult,
    seen_ids: set[str],
    source: str | None = None,
    part: Part | None = None,
    document_id: str | None = None,
    read: Callable[[], dict[str, Any]] | None = None,
) -> None:
    """One file's records into `result` (its documents, rejects, summary line, repairs), stopping at
    `data.limit`. `seen_ids`: ids taken earlier; a record repeating one is quarantined. `source`: the file as
    rejects name it (default: `path`). A file is read whole by one call, the unit of work an engine hands out, or
    one `part` of it (`sources.file_parts`: a big JSON Lines file), its summary line then counting that part.
    `document_id`: a whole-file document's id, where its path without suffixes would repeat another file's
    (`ids_for_shared_stems`). `read`: its reader already called elsewhere (`_Readers.take`)."""
    folder = config.path.is_dir()
    summary = FileSummary(path=relative, status="loaded")
    result.files.append(summary)
    try:
        kind = _kind(path, config, relative)
        if kind is None:
            summary.status, summary.reason = "skipped", f"not a supported format ({path.suffix or 'no suffix'})"
            log.warning("file_skipped", file=relative, reason=summary.reason)
            return
        summary.format, summary.compression = kind.format, kind.compression
        fields = (config.text_field, config.id_field)
        bound = line_bound(config.max_chars)
        items = _raw_items(
            path, kind, relative, bound, nested=folder, part=part, fields=fields, parts=_splitting(config),
            document_id=document_id, read=read if part is None and kind.format in PARSED else None,
        )  # fmt: skip
        for location, item, raw in items:
            summary.records += 1
            result.records_seen += 1
            document = _accept(item, raw, location, source or str(path), config, seen_ids, result)
            if document is None:
                summary.quarantined += 1
                continue
            summary.documents += 1
            if config.limit is not None and len(result.documents) >= config.limit:
                break
    except Exception as exc:  # whatever a damaged file raises, it is this file's failure, not the stage's
        reason = str(exc) if isinstance(exc, UnreadableFile) else f"{type(exc).__name__}: {exc}"
        summary.status, summary.reason = "failed", reason[:500]
        if config.on_bad_file == "fail":
            raise DataValidationError(f"data.path: cannot read {path}: {reason} (data.on_bad_file: fail)") from exc
        log.warning("file_failed", file=relative, reason=summary.reason, records_kept=summary.documents)


def _accept(
    item: dict[str, Any] | BadRecord,
    raw: str | None,
    location: str,
    source: str,
    config: DataConfig,
    seen_ids: set[str],
    result: IngestResult,
) -> Document | None:
    """The record as a Document, kept in `result`; or None, its Reject kept instead."""
    try:
        if isinstance(item, BadRecord):
            raise item
        document = to_document(item, config.max_chars, result.repairs)
        if document.id in seen_ids:
            raise BadRecord(f"duplicate_id: {document.id} appeared earlier")
    except BadRecord as bad:
        record_id = item.get("id") if isinstance(item, dict) else None
        result.rejects.append(
            Reject(
                source=source,
                location=location,
                reason=str(bad),
                record_id=None if record_id is None else _safe(str(record_id)),
                raw=_safe(raw) if raw is not None else _preview(item),
            )
        )
        log.warning("record_quarantined", file=source, location=location, reason=str(bad))
        return None
    seen_ids.add(document.id)
    result.documents.append(document)
    if result.origins is not None:
        result.origins.append((location, _safe(raw) if raw is not None else _preview(item)))
    return document


def require_documents(result: IngestResult, config: DataConfig) -> None:
    """Fail, naming the field and what the files held, when fewer than `data.min_documents` documents loaded: a
    run over inputs that yield nothing must not end "completed"."""
    if result.document_count >= config.min_documents:
        return
    counts = result.counts()
    problems = [f"{f.path}: {f.reason}" for f in result.files if f.status != "loaded"][:5]
    reasons = Counter(r.reason.split(":")[0] for r in result.rejects).most_common(3)
    detail = f"{counts['files']} files ({counts['files.loaded']} read, {counts['files.failed']} failed, "
    detail += f"{counts['files.skipped']} skipped), {counts['records_seen']} records, {counts['rejected']} quarantined"
    if reasons:
        detail += " (" + ", ".join(f"{reason}: {n}" for reason, n in reasons) + ")"
    if problems:
        detail += "; " + "; ".join(problems)
    raise DataValidationError(
        f"data.min_documents: {result.document_count} documents loaded from {config.path}, at least "
        f"{config.min_documents} needed: {detail}"
    )


def _safe(text: str) -> str:
    return text.encode("utf-8", "backslashreplace").decode("utf-8")[:200]


def _preview(item: Any) -> str | None:
    import json

    if isinstance(item, dict):
        try:
            return _safe(json.dumps(item, ensure_ascii=False, default=str)[:200])
        except (RecursionError, ValueError):
            return "<a record too deeply nested to show>"
    return None
