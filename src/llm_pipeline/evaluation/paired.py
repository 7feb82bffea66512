"""Two candidates compared item by item on the same benchmark (tuned against its base): for every metric, overall
and per category and difficulty, the mean of each, the mean paired difference with a bootstrap interval, and a
regression flag where the second is worse beyond the interval (its upper bound below 0)."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from typing import Any

from llm_pipeline.evaluation.metrics import bootstrap_ci
from llm_pipeline.records import BenchmarkItem, Prediction


def _row(first: list[float], second: list[float]) -> dict[str, Any]:
    deltas = [b - a for a, b in zip(first, second, strict=True)]
    low, high = bootstrap_ci(deltas)
    n = len(deltas)
    return {
        "base": round(sum(first) / n, 6),
        "tuned": round(sum(second) / n, 6),
        "delta": round(sum(deltas) / n, 6),
        "low": low,
        "high": high,
        "n": n,
        "regression": high < 0,
    }


def paired_comparison(
    predictions: Iterable[Prediction], items: Iterable[BenchmarkItem], first: str, second: str
) -> dict[str, Any] | None:
    """`second` against `first` on the items both answered; None when either has no prediction."""
    by_candidate: dict[str, dict[str, dict[str, float]]] = defaultdict(dict)
    for p in predictions:
        if p.candidate in (first, second):
            by_candidate[p.candidate][p.item_id] = p.scores
    if not by_candidate.get(first) or not by_candidate.get(second):
        return None
    index = {i.id: i for i in items}
    shared = [i for i in by_candidate[first] if i in by_candidate[second] and i in index]
    metrics = sorted(
        {m for i in shared for m in by_candidate[first][i]} & {m for i in shared for m in by_candidate[second][i]}
    )
    result: dict[str, Any] = {"first": first, "second": second, "items": len(shared), "overall": {}, "by": {}}
    for metric in metrics:
        scored = [i for i in shared if metric in by_candidate[first][i] and metric in by_candidate[second][i]]
        if not scored:
            continue
        result["overall"][metric] = _row(
            [by_candidate[first][i][metric] for i in scored], [by_candidate[second][i][metric] for i in scored]
        )
        for breakdown in ("category", "difficulty"):
            groups: dict[str, list[str]] = defaultdict(list)
            for i in scored:
                groups[getattr(index[i], breakdown)].append(i)
            for group, ids in sorted(groups.items()):
                result["by"].setdefault(breakdown, {}).setdefault(group, {})[metric] = _row(
                    [by_candidate[first][i][metric] for i in ids], [by_candidate[second][i][metric] for i in ids]
                )
    result["regressions"] = [f"{metric}" for metric, row in result["overall"].items() if row["regression"]] + [
        f"{metric} ({breakdown} {group})"
        for breakdown, groups in result["by"].items()
        for group, rows in groups.items()
        for metric, row in rows.items()
        if row["regression"]
    ]
    return result
