"""Nothing half-written is ever taken for a finished output: every stage output goes through llm_pipeline.io's
atomic writes (a temporary file beside the target, fsynced, then renamed), proven by SIGKILLing a real writer
mid-file, and checked over the source so that a new stage cannot write around them."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

from tests.conftest import wait_until

ROOT = Path(__file__).resolve().parents[1]

WRITER = """
import sys, time
from pathlib import Path
from llm_pipeline.io import write_jsonl

target, marker = Path(sys.argv[1]), Path(sys.argv[2])

def records():
    for i in range(100_000):
        if i == 5_000:
            marker.touch()  # half-way: the parent kills us now
            time.sleep(60)
        yield {"id": i, "text": "x" * 200}

write_jsonl(target, records())
"""


def test_a_writer_killed_mid_file_leaves_the_previous_output_whole(tmp_path: Path) -> None:
    target, marker = tmp_path / "qa_pairs.jsonl", tmp_path / "halfway"
    target.write_text('{"id": "previous, complete"}\n')
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(target), str(marker)], cwd=ROOT)
    try:
        wait_until(marker.exists, 60, "the writer to be half-way")
        os.kill(writer.pid, signal.SIGKILL)
    finally:
        writer.wait(timeout=30)
    assert writer.returncode == -signal.SIGKILL
    assert target.read_text() == '{"id": "previous, complete"}\n'  # the old output, untouched
    leftovers = [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    assert leftovers and all(name.startswith(".qa_pairs.jsonl.") for name in leftovers)  # hidden, never an output


# Writing a file anywhere else in the library must go through llm_pipeline.io (atomic_open and its helpers).
DIRECT_WRITES = re.compile(r"\.write_text\(|\.write_bytes\(|\.savefig\((?!handle)|\bopen\([^)]*['\"][wa]b?['\"]")
ALLOWED = {
    "src/llm_pipeline/io.py": "the atomic writes themselves",
    "src/llm_pipeline/qa/checkpoint.py": "the journal: append-only, one fsynced line per request, torn tail ignored",
}


def test_no_stage_writes_a_file_around_the_atomic_writes() -> None:
    offenders = []
    for path in sorted((ROOT / "src" / "llm_pipeline").rglob("*.py")):
        relative = str(path.relative_to(ROOT))
        if relative in ALLOWED:
            continue
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if DIRECT_WRITES.search(line):
                offenders.append(f"{relative}:{number}: {line.strip()}")
    assert not offenders, "write through llm_pipeline.io.atomic_open:\n" + "\n".join(offenders)
