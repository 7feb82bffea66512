"""Where a test run's time went: the waits and docker/make calls that `TEST_TRACE=FILE make test` wrote (one JSON
line each, tests/conftest.py `trace`), summed by test and listed longest first. Standard library only.

    python3 scripts/test_trace.py FILE [--top 40]
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("file")
    parser.add_argument("--top", type=int, default=40, help="how many of the longest single waits or calls to list")
    args = parser.parse_args()
    with open(args.file) as lines:
        rows = [json.loads(line) for line in lines if line.strip()]
    by_test: dict[str, float] = defaultdict(float)
    by_worker: dict[str, float] = defaultdict(float)
    for row in rows:
        by_test[row["test"]] += row["seconds"]
        by_worker[row["worker"]] += row["seconds"]
    print("traced seconds by worker: " + ", ".join(f"{w} {s:.0f}" for w, s in sorted(by_worker.items())))
    print("\ntraced seconds by test (waits and docker/make calls; what runs between them is not counted):")
    for test, seconds in sorted(by_test.items(), key=lambda item: -item[1])[: args.top]:
        print(f"{seconds:8.1f}  {test}")
    print(f"\nthe {args.top} longest:")
    for row in sorted(rows, key=lambda r: -r["seconds"])[: args.top]:
        name = row["test"].split("::")[-1][:70]
        print(f"{row['seconds']:8.1f}  {row['kind']:8} {row['outcome']:8} {row['what'][:70]:70}  {name}")


if __name__ == "__main__":
    main()
