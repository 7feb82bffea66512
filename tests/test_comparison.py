"""The morning report's comparison: best model per category, the change since the previous run with
regressions flagged only beyond the confidence interval, and the PNG charts."""

from __future__ import annotations

import json
from pathlib import Path

from llm_pipeline.comparison import compare_runs, previous_evaluation
from llm_pipeline.config import EvaluationConfig
from llm_pipeline.evaluation import aggregate
from llm_pipeline.records import BenchmarkItem

CATEGORIES = ["pricing", "technical"]


def items(n: int = 40) -> list[BenchmarkItem]:
    return [
        BenchmarkItem(
            id=f"b{i}",
            question="q",
            answer="a",
            context="c",
            category=CATEGORIES[i % 2],
            difficulty=("easy", "medium", "hard")[i % 3],
            source_document_id="d",
        )
        for i in range(n)
    ]


def evaluation(scores: dict[str, list[float]]) -> dict:
    config = EvaluationConfig(metrics=["rouge"], domain_metrics=[])
    bench = items()
    return {name: aggregate(bench, [{"rougeL": v} for v in values], config) for name, values in scores.items()}


def run_folder(root: Path, run_id: str, status: str, result: dict | None) -> Path:
    folder = root / run_id
    folder.mkdir(parents=True)
    (folder / "manifest.json").write_text(json.dumps({"status": status}))
    if result is not None:
        (folder / "evaluation.json").write_text(json.dumps(result))
    return folder


def test_regression_flagged_beyond_the_interval_and_noise_is_not(tmp_path: Path) -> None:
    steady = [0.6 + 0.1 * ((i * 7) % 5 - 2) / 2 for i in range(40)]  # mean 0.6, some spread
    before = evaluation({"model-a": [0.9] * 40, "model-b": steady})
    run_folder(tmp_path, "20260101T030000Z-aaaa", "completed", before)
    run_folder(tmp_path, "20260102T030000Z-bbbb", "failed", None)  # a failed run is no baseline
    now_dir = run_folder(tmp_path, "20260103T030000Z-cccc", "running", None)
    now = evaluation({"model-a": [0.3] * 20 + [0.4] * 20, "model-b": list(reversed(steady))})
    result = compare_runs(now, now_dir)
    assert result["previous_run"] == "20260101T030000Z-aaaa"
    assert result["changes"]["model-a"]["rougeL"]["regression"] is True
    assert result["changes"]["model-a"]["rougeL"]["delta"] == -0.55
    assert result["changes"]["model-b"]["rougeL"]["regression"] is False  # same scores, reordered
    assert result["regressions"] == ["model-a.rougeL"]
    for file in result["charts"].values():
        assert (now_dir / file).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_best_model_per_category_and_no_baseline(tmp_path: Path) -> None:
    # model-a wins pricing (even items), model-b technical (odd items)
    now = evaluation(
        {
            "model-a": [0.9 if i % 2 == 0 else 0.1 for i in range(40)],
            "model-b": [0.2 if i % 2 == 0 else 0.8 for i in range(40)],
        }
    )
    now["broken"] = {"error": "ModelLoadError: cannot load"}
    folder = run_folder(tmp_path, "20260103T030000Z-cccc", "running", None)
    result = compare_runs(now, folder)
    assert {c: b["candidate"] for c, b in result["best_per_category"].items()} == {
        "pricing": "model-a",
        "technical": "model-b",
    }
    assert result["previous_run"] is None and result["changes"] == {} and result["regressions"] == []
    assert previous_evaluation(folder) is None
