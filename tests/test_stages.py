"""The stage registry and its contracts: declarations checked, no stage named outside the registry, the library
free of Prefect, and every hand-off a file: each stage run in a process of its own gives a whole run."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from llm_pipeline.stages import PIPELINE, STAGES, Stage
from llm_pipeline.stages.registry import check_contracts

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "test.yaml"


def test_the_declarations_hold_together() -> None:
    check_contracts(PIPELINE)  # what import did already; here for the record
    assert STAGES[0] == "initialize-pipeline" and STAGES[-1] == "finalize-pipeline" and len(STAGES) == 8
    cached = [s.name for s in PIPELINE if s.cached]
    assert cached == [
        "load-and-deduplicate-data",
        "generate-qa-pairs",
        "generate-benchmark",
        "finetune-model",
        "evaluate-models",
    ]
    assert [s.name for s in PIPELINE if s.pool == "gpu"] == ["finetune-model", "evaluate-models"]
    assert [s.name for s in PIPELINE if s.progress] == ["generate-qa-pairs", "finetune-model", "evaluate-models"]


@pytest.mark.parametrize(
    ("broken", "message"),
    [
        (lambda p: (p[0], replace(p[1], inputs={"x": "finalize-pipeline.summary"}), *p[2:]), "no earlier stage"),
        (lambda p: (*p, replace(p[1], name="copy", outputs={"d": "documents.jsonl"})), "both write documents.jsonl"),
        (lambda p: (p[0], replace(p[1], reads=("dedupe",)), *p[2:]), "not a config key"),
        (lambda p: (*p, p[1]), "declared twice"),
    ],
)
def test_a_broken_declaration_is_refused(broken, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        check_contracts(broken(PIPELINE))


def _python_files(*folders: str) -> list[Path]:
    return [p for folder in folders for p in (ROOT / folder).rglob("*.py")]


def test_no_stage_name_is_written_outside_the_registry() -> None:
    """Task names, manifest keys, artifacts and inputs all come from the declarations."""
    registry = ROOT / "src/llm_pipeline/stages/registry.py"
    pattern = re.compile("[\"'](" + "|".join(map(re.escape, STAGES)) + ")[\"'.]")
    found = [
        f"{path.relative_to(ROOT)}:{number}: {line.strip()}"
        for path in _python_files("src", "flows")
        if path != registry
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if pattern.search(line)
    ]
    assert found == []


def test_the_library_never_imports_prefect_or_flows() -> None:
    """Every library module imported, in a fresh interpreter: neither Prefect nor the orchestration layer loads."""
    code = (
        "import importlib, pkgutil, sys, llm_pipeline\n"
        "for m in pkgutil.walk_packages(llm_pipeline.__path__, 'llm_pipeline.'):\n"
        "    importlib.import_module(m.name)\n"
        "print(sorted({n.split('.')[0] for n in sys.modules} & {'prefect', 'flows'}))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == "[]"
    imports = re.compile(r"^\s*(from|import)\s+(prefect|flows)\b", re.MULTILINE)
    assert [p for p in _python_files("src") if imports.search(p.read_text())] == []


ONE_STAGE = """
import json, sys
from pathlib import Path
from llm_pipeline.config import load_config
from llm_pipeline.manifest import Manifest
from llm_pipeline.stages import MANIFEST_FILE, code_version, run_stage, stage_named

name, config_path, overrides, run_dir = sys.argv[1], sys.argv[2], json.loads(sys.argv[3]), Path(sys.argv[4])
config = load_config(config_path, overrides)
manifest = Manifest.open(run_dir / MANIFEST_FILE, config.name, run_dir.name, config.fingerprint(), code_version())
result = run_stage(stage_named(name), config, run_dir, run_dir.name)
manifest.record(name, "completed", result)
print(json.dumps(result.counts))
"""


@pytest.mark.slow
def test_each_stage_in_a_process_of_its_own_makes_a_whole_run(tmp_path: Path) -> None:
    """No stage reaches another through memory: eight processes, one stage each, hand over through the run folder
    (finalize continues the W&B run that the tracking stage's process opened)."""
    run_dir = tmp_path / "test-pipeline" / "20261202T000000Z-isolated"
    overrides = json.dumps(
        {"output_path": str(tmp_path), "benchmark": {"size": 12}, "evaluation": {"metrics": ["exact_match"]}}
    )
    for stage in STAGES:
        done = subprocess.run(
            [sys.executable, "-c", ONE_STAGE, stage, str(CONFIG), overrides, str(run_dir)],
            capture_output=True,
            text=True,
            timeout=600,
            cwd=ROOT,
        )
        assert done.returncode == 0, (stage, done.stderr[-3000:])
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert list(manifest["stages"]) == list(STAGES)
    assert sum(1 for _ in (run_dir / "predictions.jsonl").open()) == 2 * 12
    summary = json.loads((run_dir / "summary.json").read_text())
    assert set(summary["evaluation"]) == {"retrieval-minilm", "lexical-overlap"}
    run_id = json.loads((run_dir / "tracking.json").read_text())["run_id"]
    folders = sorted(run_dir.glob(f"wandb/offline-run-*-{run_id}"))
    assert len(folders) == 2  # opened by the tracking stage's process, continued by finalize's
    finalize_log = (folders[1] / f"run-{run_id}.wandb").read_bytes()
    assert b"eval/lexical-overlap/exact_match" in finalize_log and b"stage/generate-qa-pairs/duration_s" in finalize_log


def test_a_stage_that_skips_a_declared_output_fails(tmp_path: Path) -> None:
    from llm_pipeline.config import load_config
    from llm_pipeline.errors import PipelineError
    from llm_pipeline.stages import run_stage

    lazy = Stage(name="lazy", run=lambda ctx: {}, outputs={"report": "lazy.md"})
    with pytest.raises(PipelineError, match="without writing its declared outputs"):
        run_stage(lazy, load_config(CONFIG), tmp_path, "run")
