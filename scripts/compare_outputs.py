"""Compare two run folders file by file, ignoring what differs between any two runs (times, run ids, durations,
resource figures, W&B folders, images): a refactoring must leave the rest identical.

    python scripts/compare_outputs.py outputs/test-pipeline/<run A> outputs/test-pipeline/<run B>

Exit 0 when every shared output matches, 1 otherwise (each difference printed).
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

# Keys whose values differ between any two runs of the same code on the same input.
VOLATILE_KEYS = {
    "timestamp", "started_at", "finished_at", "run_id", "duration_s", "seconds", "latency_s", "resources",
    "config_hash", "code_version", "reused_from", "run_dir", "directory", "sync_command", "tokens_per_s",
    "fingerprint", "run_name", "name", "config", "secrets", "files",
}  # fmt: skip
SKIPPED_SUFFIXES = {".png", ".html"}  # rendered views of data compared elsewhere (charts embed times)
TIMESTAMPISH = re.compile(
    r"\d{8}T\d{6}Z-[0-9a-f]{8}"  # run ids
    r"|\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)?"  # times
    r"|offline-run-\S+"  # W&B folders
    r"|(?<=\| )\d+\.\d+(?= \| (yes|no) \|)"  # a stage's duration in the report's table
    r"|Config hash `\w+`, code `[\w.+]+`"
)


def scrub(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: scrub(v) for k, v in value.items() if k not in VOLATILE_KEYS}
    if isinstance(value, list):
        return [scrub(v) for v in value]
    if isinstance(value, str):
        if value.startswith("{"):  # a JSON object kept as a string (QA metadata in parquet)
            try:
                return scrub(json.loads(value))
            except json.JSONDecodeError:
                pass
        return TIMESTAMPISH.sub("<volatile>", value)
    return value


def load(path: Path) -> Any:
    if path.suffix == ".json":
        return scrub(json.loads(path.read_text()))
    if path.suffix == ".jsonl":
        return [scrub(json.loads(line)) for line in path.read_text().splitlines() if line.strip()]
    if path.suffix == ".parquet":
        return scrub(pq.read_table(path).to_pylist())
    return TIMESTAMPISH.sub("<volatile>", path.read_text())


def compare(a: Path, b: Path) -> list[str]:
    problems = []
    names_a = {p.name for p in a.iterdir() if p.is_file()}
    names_b = {p.name for p in b.iterdir() if p.is_file()}
    for name in sorted(names_a ^ names_b):
        problems.append(f"only in {'first' if name in names_a else 'second'}: {name}")
    for name in sorted(names_a & names_b):
        if Path(name).suffix in SKIPPED_SUFFIXES:
            continue
        if load(a / name) != load(b / name):
            problems.append(f"differs: {name}")
    return problems


def main() -> int:
    a, b = (Path(p) for p in sys.argv[1:3])
    problems = compare(a, b)
    for problem in problems:
        print(problem)
    print("identical (volatile fields aside)" if not problems else f"{len(problems)} difference(s)")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
