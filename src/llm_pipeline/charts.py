"""PNG charts for the report (matplotlib, Agg): metrics by category and difficulty, the candidates side by side,
stage timings, and where the documents went in deduplication. Each function writes into the run folder and
returns {chart name: file name}; report.md links the files, report.html embeds them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from llm_pipeline.evaluation import HEADLINE_METRICS, scored_candidates
from llm_pipeline.io import atomic_open


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(figure: Any, folder: Path, name: str) -> str:
    figure.tight_layout()
    with atomic_open(folder / name, "wb") as handle:  # a killed run leaves no half-drawn chart
        figure.savefig(handle, dpi=100, format=Path(name).suffix[1:])
    _pyplot().close(figure)
    return name


def metric_charts(evaluation: dict[str, Any], folder: Path, metric: str) -> dict[str, str]:
    """Per-category bars and difficulty curves of `metric`, one series per candidate."""
    plt = _pyplot()
    ok = scored_candidates(evaluation)
    if not ok:
        return {}
    files: dict[str, str] = {}
    categories = sorted({c for s in ok.values() for c in s["by"]["category"]})
    width = 0.8 / len(ok)
    figure, axes = plt.subplots(figsize=(max(6, 1.4 * len(categories) + 2), 4))
    for k, (name, summary) in enumerate(ok.items()):
        values = [summary["by"]["category"].get(c, {}).get(metric, {}).get("mean", 0.0) for c in categories]
        axes.bar([i + k * width for i in range(len(categories))], values, width, label=name)
    axes.set_xticks([i + width * (len(ok) - 1) / 2 for i in range(len(categories))], categories)
    axes.set(ylabel=metric, ylim=(0, 1), title=f"{metric} by category")
    axes.legend(fontsize="small")
    files["by_category"] = _save(figure, folder, "chart_by_category.png")

    levels = [d for d in ("easy", "medium", "hard") if any(d in s["by"]["difficulty"] for s in ok.values())]
    figure, axes = plt.subplots(figsize=(6, 4))
    for name, summary in ok.items():
        values = [summary["by"]["difficulty"].get(d, {}).get(metric, {}).get("mean", float("nan")) for d in levels]
        axes.plot(levels, values, marker="o", label=name)
    axes.set(ylabel=metric, ylim=(0, 1), title=f"{metric} by difficulty")
    axes.legend(fontsize="small")
    files["by_difficulty"] = _save(figure, folder, "chart_by_difficulty.png")
    return files


def pipeline_charts(manifest: dict[str, Any], evaluation: dict[str, Any], folder: Path) -> dict[str, str]:
    """The candidates on every headline metric, stage timings, and the dedup breakdown."""
    plt = _pyplot()
    files: dict[str, str] = {}
    ok = scored_candidates(evaluation)
    metrics = [m for m in HEADLINE_METRICS if any(m in s["overall"] for s in ok.values())]
    if ok and metrics:
        width = 0.8 / len(ok)
        figure, axes = plt.subplots(figsize=(max(6, 1.2 * len(metrics) + 2), 4))
        for k, (name, summary) in enumerate(ok.items()):
            means = [summary["overall"].get(m, {}).get("mean", 0.0) for m in metrics]
            lows = [means[i] - summary["overall"].get(m, {}).get("ci_low", means[i]) for i, m in enumerate(metrics)]
            highs = [summary["overall"].get(m, {}).get("ci_high", means[i]) - means[i] for i, m in enumerate(metrics)]
            axes.bar([i + k * width for i in range(len(metrics))], means, width, yerr=[lows, highs], label=name)
        axes.set_xticks([i + width * (len(ok) - 1) / 2 for i in range(len(metrics))], metrics, rotation=20)
        axes.set(ylim=(0, 1), title="candidates, 95 % intervals")
        axes.legend(fontsize="small")
        files["metrics"] = _save(figure, folder, "chart_metrics.png")

    stages = manifest.get("stages", {})
    if stages:
        names = list(stages)
        seconds = [float(stages[n].get("duration_s") or 0.0) for n in names]
        figure, axes = plt.subplots(figsize=(7, 0.45 * len(names) + 1.2))
        colors = ["#9ab" if stages[n].get("cached") else "#37a" for n in names]
        axes.barh(names, seconds, color=colors)
        axes.invert_yaxis()
        axes.set(xlabel="seconds (light: reused from cache)", title="stage timings")
        files["stage_timings"] = _save(figure, folder, "chart_stage_timings.png")

    # the stage that deduplicated: the one whose counts say what dedup kept
    counts = next((s["counts"] for s in stages.values() if "dedup.kept" in s.get("counts", {})), {})
    if counts:
        parts = {"kept": counts.get("dedup.kept", 0)}
        parts.update({k.split(".")[-1]: v for k, v in counts.items() if k.startswith("dedup.removed.")})
        parts["rejected"] = counts.get("rejected", 0)
        figure, axes = plt.subplots(figsize=(6, 3.5))
        axes.bar(list(parts), list(parts.values()), color=["#3a7"] + ["#c84"] * (len(parts) - 2) + ["#888"])
        for i, value in enumerate(parts.values()):
            axes.annotate(str(value), (i, value), ha="center", va="bottom")
        axes.set(ylabel="documents", title="deduplication: kept, removed by method, rejected")
        files["dedup"] = _save(figure, folder, "chart_dedup.png")
    return files
