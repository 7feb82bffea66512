"""What a team reads each morning: the best model per category, the change since the previous run of the same
pipeline (regressions beyond the confidence interval flagged), and PNG charts for the report (llm_pipeline.charts).

The previous run is the latest earlier run folder of the same pipeline (`<output_path>/<name>/<run id>/`, which
is where every run of one deployment writes) whose manifest says completed and which has an evaluation.json.
A change is a regression when this run's whole 95 % interval lies below the previous mean and the previous
interval lies above this mean: the two intervals say the same thing, so noise alone rarely flags one.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from llm_pipeline.charts import metric_charts
from llm_pipeline.evaluation import scored_candidates
from llm_pipeline.logging import get_logger

log = get_logger("comparison")

HEADLINE = "rougeL"


def previous_evaluation(run_dir: Path) -> tuple[str, dict[str, Any]] | None:
    """(run id, evaluation) of the latest earlier completed run beside this one, or None."""
    earlier = sorted((p for p in run_dir.parent.iterdir() if p.is_dir() and p.name < run_dir.name), reverse=True)
    for folder in earlier:
        manifest, evaluation = folder / "manifest.json", folder / "evaluation.json"
        try:
            if json.loads(manifest.read_text()).get("status") == "completed" and evaluation.is_file():
                return folder.name, json.loads(evaluation.read_text())
        except (OSError, ValueError):
            continue  # a folder from a crashed run: not a baseline
    return None


def changes(current: dict[str, Any], previous: dict[str, Any] | None) -> dict[str, dict[str, Any]]:
    """candidate -> metric -> {now, before, delta, regression, improvement}, for candidates in both runs."""
    if not previous:
        return {}
    out: dict[str, dict[str, Any]] = {}
    before_ok = scored_candidates(previous)
    for name, summary in scored_candidates(current).items():
        if name not in before_ok:
            continue
        rows = {}
        for metric, now in summary["overall"].items():
            then = before_ok[name]["overall"].get(metric)
            if then is None:
                continue
            rows[metric] = {
                "now": now["mean"],
                "before": then["mean"],
                "delta": round(now["mean"] - then["mean"], 6),
                "regression": now["ci_high"] < then["mean"] and then["ci_low"] > now["mean"],
                "improvement": now["ci_low"] > then["mean"] and then["ci_high"] < now["mean"],
            }
        out[name] = rows
    return out


def best_per_category(evaluation: dict[str, Any], metric: str = HEADLINE) -> dict[str, dict[str, Any]]:
    best: dict[str, dict[str, Any]] = {}
    for name, summary in scored_candidates(evaluation).items():
        for category, scores in summary["by"]["category"].items():
            if metric not in scores:
                continue
            mean = scores[metric]["mean"]
            if category not in best or mean > best[category]["mean"]:
                best[category] = {"candidate": name, "mean": mean, "metric": metric}
    return dict(sorted(best.items()))


def compare_runs(evaluation: dict[str, Any], run_dir: Path) -> dict[str, Any]:
    """Everything above, as the JSON the finalize stage writes (comparison.json) and the report renders."""
    previous = previous_evaluation(run_dir)
    result = {
        "metric": HEADLINE,
        "best_per_category": best_per_category(evaluation),
        "previous_run": previous[0] if previous else None,
        "changes": changes(evaluation, previous[1] if previous else None),
        "charts": metric_charts(evaluation, run_dir, HEADLINE),
    }
    regressions = [
        f"{name}.{metric}"
        for name, rows in result["changes"].items()
        for metric, row in rows.items()
        if row["regression"]
    ]
    result["regressions"] = regressions
    if regressions:
        log.warning("evaluation_regressions", previous_run=result["previous_run"], regressions=regressions)
    return result
