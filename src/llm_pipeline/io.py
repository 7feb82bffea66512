"""File I/O shared by every stage: atomic writes, JSONL and Parquet for record lists, content fingerprints."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any, TypeVar

from pydantic import BaseModel

R = TypeVar("R", bound=BaseModel)


@contextmanager
def atomic_open(path: Path, mode: str = "w") -> Iterator[IO[Any]]:
    """Write to a temporary file beside `path`, then rename: a crash never leaves a half-written file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode, encoding=None if "b" in mode else "utf-8") as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def unwritable_folder(path: Path) -> str | None:
    """Why the run's files cannot go in `path`, or None: it exists or was made (with its parents), and a file was
    written in it and removed. Checked before a run starts, so that a wrong `output_path` is a config error naming
    it, not a traceback from the first write."""
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".write-check-"):
            pass
    except OSError as exc:
        return f"{exc.strerror or type(exc).__name__}: {exc.filename or path}"
    return None


def write_jsonl(path: Path, records: Iterable[BaseModel | dict[str, Any]]) -> int:
    count = 0
    with atomic_open(path) as handle:
        for record in records:
            line = record.model_dump_json() if isinstance(record, BaseModel) else json.dumps(record, ensure_ascii=False)
            handle.write(line + "\n")
            count += 1
    return count


def read_jsonl(path: Path, model: type[R]) -> list[R]:
    with path.open(encoding="utf-8") as handle:
        return [model.model_validate_json(line) for line in handle if line.strip()]


def write_json(path: Path, payload: Any) -> None:
    with atomic_open(path) as handle:
        json.dump(payload, handle, indent=2, ensure_ascii=False, default=str)
        handle.write("\n")


def write_text(path: Path, text: str) -> None:
    with atomic_open(path) as handle:
        handle.write(text)


def write_parquet(path: Path, records: list[BaseModel]) -> None:
    """Parquet copy of a record list; nested fields (metadata, scores) are stored as JSON strings."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = []
    for record in records:
        row = record.model_dump()
        rows.append({k: json.dumps(v) if isinstance(v, dict | list) else v for k, v in row.items()})
    table = pa.Table.from_pylist(rows)
    with atomic_open(path, "wb") as handle:
        pq.write_table(table, handle)


def file_fingerprint(*paths: Path) -> str:
    """sha256 over the contents of files (or every file under folders), stable across machines."""
    digest = hashlib.sha256()
    for root in paths:
        files = sorted(p for p in root.rglob("*") if p.is_file()) if root.is_dir() else [root]
        for file in files:
            digest.update(str(file.relative_to(root) if root.is_dir() else file.name).encode())
            with file.open("rb") as handle:
                for chunk in iter(lambda: handle.read(1 << 20), b""):
                    digest.update(chunk)
    return digest.hexdigest()


def text_hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()
