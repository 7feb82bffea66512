"""Loading speed on real document folders: the loader in one process against `data.load_workers` N, in the same
run, alternating, on folders no one here wrote (a Debian machine's /usr/share/doc: its HTML manuals, PDFs, text
and compressed changelogs; any other folder named). For each folder and worker count: seconds (median of the
rounds), files and documents per second, and whether every round loaded exactly what the one-process loader did
(documents, rejects, per-file summary).

    make bench-load        # or: .venv/bin/python benchmarks/load_benchmark.py /usr/share/doc --workers 1 2 --rounds 3
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from dataclasses import asdict
from pathlib import Path

import structlog

from llm_pipeline.config import DataConfig
from llm_pipeline.ingest import load_documents
from llm_pipeline.ingest.load import PARSED, input_files


def _outcome(result) -> str:  # noqa: ANN001
    return json.dumps(
        [
            [d.model_dump() for d in result.documents],
            [r.model_dump() for r in result.rejects],
            [asdict(f) for f in result.files],
        ],
        sort_keys=True,
        default=str,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folders", nargs="+", type=Path)
    parser.add_argument("--workers", nargs="+", type=int, default=[1, 2])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", type=Path, help="write the rows here too")
    args = parser.parse_args()
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(40))  # errors only: no per-file lines
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    print(f"cpus available: {cpus}; load average before: {os.getloadavg()[0]:.2f}")
    rows = []
    for folder in args.folders:
        config = DataConfig(path=folder, min_documents=0)
        files = input_files(config)
        parsed = sum(1 for path, _ in files if path.suffix.lower().lstrip(".") in PARSED | {"htm", "xhtml"})
        times: dict[int, list[float]] = {w: [] for w in args.workers}
        reference = None
        same = {w: True for w in args.workers}
        documents = 0
        for _ in range(args.rounds):
            for workers in args.workers:  # alternating: the machine's drift falls on both
                start = time.perf_counter()
                result = load_documents(config.model_copy(update={"load_workers": workers}))
                times[workers].append(time.perf_counter() - start)
                outcome = _outcome(result)
                reference = reference or outcome
                same[workers] &= outcome == reference
                documents = len(result.documents)
        base = statistics.median(times[args.workers[0]])
        for workers in args.workers:
            seconds = statistics.median(times[workers])
            row = {
                "folder": str(folder), "files": len(files), "parsed_files": parsed, "documents": documents,
                "workers": workers, "seconds": round(seconds, 2), "files_per_s": round(len(files) / seconds, 1),
                "speedup": round(base / seconds, 2), "same_as_one_process": same[workers],
            }  # fmt: skip
            rows.append(row)
            print(json.dumps(row))
    print(f"load average after: {os.getloadavg()[0]:.2f}")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")
    sys.exit(0 if all(r["same_as_one_process"] for r in rows) else 1)


if __name__ == "__main__":
    main()
