"""Documents in: every file under `data.path` (JSONL, JSON, CSV/TSV, Parquet, text, Markdown, HTML, PDF, DOCX;
text formats also gzip/bzip2/xz/zstd-compressed), read record by record, normalized, bad records quarantined.

sources.py tells a file's format, compression and encoding; tables.py and documents.py read records out of it;
records.py turns a raw record into a Document by one repair-or-quarantine policy; load.py walks the folder and
keeps the per-file summary."""

from llm_pipeline.ingest.load import FileSummary, IngestResult, detect_format, load_documents, require_documents
from llm_pipeline.ingest.records import BadRecord, normalize_text

__all__ = [
    "BadRecord",
    "FileSummary",
    "IngestResult",
    "detect_format",
    "load_documents",
    "normalize_text",
    "require_documents",
]
