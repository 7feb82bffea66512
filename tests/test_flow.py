"""The whole flow on a real Prefect server: every stage's output, logs in the UI, caching, failure handling."""

from __future__ import annotations

import asyncio
import json
import re
import time
from pathlib import Path
from typing import Any

import pytest

from llm_pipeline.stages import STAGES
from tests.fakes.openai_server import FakeOpenAI

ROOT = Path(__file__).resolve().parents[1]
CONFIG = str(ROOT / "configs" / "test.yaml")
pytestmark = pytest.mark.slow


def lines(path: Path) -> int:
    return sum(1 for line in path.read_text().splitlines() if line.strip())


async def _read(kind: str, flow_run_id: str) -> list[Any]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, LogFilter, LogFilterFlowRunId

    async with get_client() as client:
        if kind == "logs":
            return await client.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id])))
        return await client.read_task_runs(flow_run_filter=FlowRunFilter(id={"any_": [flow_run_id]}))


def poll(kind: str, flow_run_id: str, until, timeout: float = 30.0) -> list[Any]:
    """Logs and task runs reach the server's database asynchronously: poll, don't assume."""
    deadline = time.monotonic() + timeout
    while True:
        found = asyncio.run(_read(kind, flow_run_id))
        if until(found) or time.monotonic() > deadline:
            return found
        time.sleep(1)


@pytest.fixture(scope="module")
def first_run(prefect_server, tmp_path_factory) -> dict[str, Any]:
    from prefect.settings import PREFECT_TASKS_REFRESH_CACHE, temporary_settings

    from flows.pipeline import llm_pipeline

    out = tmp_path_factory.mktemp("outputs")
    overrides = {"output_path": str(out), "benchmark": {"size": 30}}
    # every stage runs here whatever ran before in this process (the cache keys hold no output path: another
    # test's run of the same config would be reused), and its results are cached for the reruns below
    with temporary_settings({PREFECT_TASKS_REFRESH_CACHE: True}):
        result = llm_pipeline(config_path=CONFIG, overrides=overrides)
    return {"result": result, "overrides": overrides}


def test_a_runs_ids_do_not_outlive_it(first_run, capsys: pytest.CaptureFixture[str]) -> None:
    """The next flow in the same process (a served flow, embedded runs one after another) must not log its events
    under the finished run's id: the flow binds its ids for its own body only."""
    import structlog

    from llm_pipeline.logging import configure_logging, get_logger

    assert first_run["result"]["run_id"]
    assert not {"run_id", "pipeline"} & set(structlog.contextvars.get_contextvars())
    configure_logging("INFO", structured=True)
    get_logger("after").info("after_the_run")
    events = [json.loads(line) for line in capsys.readouterr().err.splitlines() if line.startswith("{")]
    after = [e for e in events if e["event"] == "after_the_run"]
    assert after and "run_id" not in after[0] and "pipeline" not in after[0], after


def test_every_stage_writes_its_outputs(first_run) -> None:
    run_dir = Path(first_run["result"]["run_dir"])
    assert lines(run_dir / "documents.jsonl") == 300  # 330 good records less 30 planted copies
    assert lines(run_dir / "rejects.jsonl") == 6  # the sample's malformed records
    assert lines(run_dir / "duplicate_clusters.jsonl") == 30
    # The sample corpus is templated: the same question recurs across documents, and only its first asking is
    # kept (the rest are in qa_rejects.jsonl as duplicate_question).
    questions = [json.loads(line)["question"].lower() for line in (run_dir / "qa_pairs.jsonl").open()]
    assert len(questions) >= 150 and len(set(questions)) == len(questions)
    rejected = [json.loads(line) for line in (run_dir / "qa_rejects.jsonl").open()]
    assert rejected and {r["reason"] for r in rejected} <= {"duplicate_question", "too_short", "ungrounded"}
    assert lines(run_dir / "benchmark.jsonl") == 30
    assert lines(run_dir / "predictions.jsonl") == 60  # 2 candidates x 30 items
    for name in (
        "qa_pairs.parquet",
        "benchmark.parquet",
        "benchmark_card.md",
        "evaluation.json",
        "tracking.json",
        "config.resolved.json",
        "train_pairs.jsonl",
        "comparison.json",
        "chart_by_category.png",
        "chart_by_difficulty.png",
    ):
        assert (run_dir / name).stat().st_size > 0, name
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert list(manifest["stages"]) == list(STAGES) and manifest["status"] == "completed"
    assert manifest["config_hash"] and manifest["code_version"].startswith("0.1.0+")
    summary = json.loads((run_dir / "summary.json").read_text())
    assert list(summary["stages"]) == list(STAGES)
    assert set(summary["evaluation"]) == {"retrieval-minilm", "lexical-overlap"}
    report = (run_dir / "report.md").read_text()
    for stage in STAGES:
        assert f"| {stage} | completed |" in report
    assert "## Model comparison" in report and "bertscore_f1" in report
    # fine-tuning off (the default): the stage says so, adds no candidate, and the report has no tuned section
    assert json.loads((run_dir / "finetune.json").read_text()) == {"enabled": False}
    assert json.loads((run_dir / "judge.json").read_text()) == {"enabled": False}
    assert (run_dir / "judgements.jsonl").read_text() == "" and "LLM judge" not in report
    assert "Tuned vs base" not in report and not (run_dir / "model_card.md").exists()
    # One W&B run, continued by finalize from tracking.json: a folder per stage that wrote to it, one run id.
    run_id = json.loads((run_dir / "tracking.json").read_text())["run_id"]
    assert len(list(run_dir.glob("wandb/offline-run-*"))) == 2
    logged = b"".join(p.read_bytes() for p in run_dir.glob(f"wandb/offline-run-*-{run_id}/run-{run_id}.wandb"))
    tables = {p.name.split("_")[0] for p in run_dir.glob("wandb/offline-run-*/files/media/table/*.table.json")}
    assert tables >= {"qa", "benchmark", "predictions"}  # qa_sample, benchmark, predictions
    assert list(run_dir.glob("wandb/offline-run-*/files/media/html/report_*.html"))
    for artifact in ("test-pipeline-qa-pairs", "test-pipeline-benchmark", "test-pipeline-evaluation"):
        assert artifact.encode() in logged, artifact
    assert b"stage/generate-qa-pairs/duration_s" in logged and b"eval/lexical-overlap/rougeL" in logged
    assert b"resources/generate-qa-pairs/cpu_mean_pct" in logged
    # report.html stands alone: every chart the markdown links is embedded, none is fetched from elsewhere.
    html = (run_dir / "report.html").read_text()
    charts = re.findall(r"\]\((chart_\w+\.png)\)", report)
    assert len(charts) >= 5 and html.count('src="data:image/png;base64,') == len(charts)
    assert not re.search(r'src="(?!data:)', html) and "<table>" in html


def test_the_run_is_told_in_prefect_artifacts(first_run) -> None:
    """A markdown summary per stage, the resources and metrics tables, QA's progress and the report with its
    links: keyed by pipeline (deployment), each belonging to this flow run."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey, FlowRunFilter

    async def read() -> list[Any]:
        async with get_client() as client:
            return await client.read_artifacts(
                artifact_filter=ArtifactFilter(key=ArtifactFilterKey(like_="test-pipeline-")),
                flow_run_filter=FlowRunFilter(id={"any_": [first_run["result"]["flow_run_id"]]}),
            )

    mine = {a.key: a for a in asyncio.run(read())}
    for stage in STAGES:
        assert mine[f"test-pipeline-{stage}"].type == "markdown", stage
        assert f"### {stage}" in mine[f"test-pipeline-{stage}"].data
    report = mine["test-pipeline-report"]
    assert report.type == "markdown" and "report.html" in report.data and "wandb sync" in report.data
    # embedded (no outputs service): local links; the charts are embedded, so the UI shows them anyway
    assert "](file://" in report.data and report.data.count("](data:image/png;base64,") >= 5
    resources = json.loads(mine["test-pipeline-resources"].data)
    assert [r["stage"] for r in resources] == [*STAGES, "(run)"]
    assert all(r["cpu_mean_pct"] is not None and 0 < r["memory_max_pct"] <= 100 for r in resources)
    metrics = json.loads(mine["test-pipeline-metrics"].data)
    assert {r["candidate"] for r in metrics} == {"retrieval-minilm", "lexical-overlap"}
    assert all(0 <= r["rougeL"] <= 1 for r in metrics)
    progress = mine["test-pipeline-generate-qa-pairs-progress"]
    assert progress.type == "progress" and float(progress.data) == 100.0
    manifest = json.loads((Path(first_run["result"]["run_dir"]) / "manifest.json").read_text())
    assert all(manifest["stages"][s]["resources"]["samples"] >= 1 for s in STAGES)


def test_library_events_reach_the_prefect_run_logs(first_run) -> None:
    flow_run_id = first_run["result"]["flow_run_id"]

    def finished_stages(found: list[Any]) -> list[dict[str, Any]]:
        return [json.loads(log.message) for log in found if '"stage_finished"' in log.message]

    # Logs reach the server in batches: wait until every stage's event is there (or the poll times out).
    logs = poll("logs", flow_run_id, lambda found: {e["stage"] for e in finished_stages(found)} >= set(STAGES))
    finished = finished_stages(logs)
    assert {event["stage"] for event in finished} >= set(STAGES)
    assert all(event["run_id"] == first_run["result"]["run_id"] for event in finished)


def test_rerun_reuses_completed_stages(first_run) -> None:
    from flows.pipeline import llm_pipeline

    second = llm_pipeline(config_path=CONFIG, overrides=first_run["overrides"])
    assert set(second["cached"]) == {
        "load-and-deduplicate-data",
        "generate-qa-pairs",
        "generate-benchmark",
        "finetune-model",
        "evaluate-models",
    }
    first_dir, second_dir = Path(first_run["result"]["run_dir"]), Path(second["run_dir"])
    assert first_dir != second_dir
    assert (second_dir / "qa_pairs.jsonl").read_bytes() == (first_dir / "qa_pairs.jsonl").read_bytes()
    manifest = json.loads((second_dir / "manifest.json").read_text())
    assert manifest["stages"]["generate-qa-pairs"]["reused_from"] == str(first_dir)
    # The morning report compares with the run before: same cached evaluation, so no regression.
    comparison = json.loads((second_dir / "comparison.json").read_text())
    assert comparison["previous_run"] == first_dir.name and comparison["regressions"] == []
    assert set(comparison["changes"]) == {"retrieval-minilm", "lexical-overlap"}
    report = (second_dir / "report.md").read_text()
    assert f"Against run `{first_dir.name}`. No regression beyond the confidence interval." in report
    assert "![rougeL by category](chart_by_category.png)" in report


def test_changing_a_stage_config_reruns_that_stage_and_after(first_run) -> None:
    from flows.pipeline import llm_pipeline

    overrides = {**first_run["overrides"], "benchmark": {"size": 24}}
    third = llm_pipeline(config_path=CONFIG, overrides=overrides)
    assert set(third["cached"]) == {"load-and-deduplicate-data", "generate-qa-pairs"}
    assert lines(Path(third["run_dir"]) / "benchmark.jsonl") == 24


def test_deleted_cached_outputs_are_rebuilt_not_trusted(prefect_server, tmp_path: Path) -> None:
    import shutil

    from flows.pipeline import llm_pipeline

    # Sections no other test uses, for dedup and QA (the QA key is its section plus the fingerprint of the
    # documents, which a nearby dedup threshold leaves unchanged): every cached stage's key is this test's alone.
    overrides = {
        "output_path": str(tmp_path),
        "dedup": {"similarity_threshold": 0.86},
        "qa": {"min_answer_words": 3},
        "benchmark": {"size": 10},
        "evaluation": {"metrics": ["exact_match"]},
    }
    first = llm_pipeline(config_path=CONFIG, overrides=overrides)
    assert first["cached"] == []
    shutil.rmtree(first["run_dir"])  # a user cleans up outputs/
    second = llm_pipeline(config_path=CONFIG, overrides=overrides)
    assert second["cached"] == []  # the cache pointed at deleted files: every stage ran again
    assert lines(Path(second["run_dir"]) / "documents.jsonl") == 300
    manifest = json.loads((Path(second["run_dir"]) / "manifest.json").read_text())
    assert manifest["status"] == "completed"


def test_unreadable_data_fails_the_run_without_retry(prefect_server, tmp_path: Path) -> None:
    from prefect.exceptions import PrefectException

    from flows.pipeline import llm_pipeline
    from llm_pipeline.errors import DataValidationError

    bad = tmp_path / "broken.parquet"
    bad.write_bytes(b"not parquet at all")
    with pytest.raises((DataValidationError, PrefectException)):
        llm_pipeline(config_path=CONFIG, overrides={"output_path": str(tmp_path / "out"), "data": {"path": str(bad)}})
    manifest = json.loads(next((tmp_path / "out").rglob("manifest.json")).read_text())
    assert manifest["status"] == "failed"
    failed = manifest["stages"]["load-and-deduplicate-data"]
    assert failed["status"] == "failed" and "not a readable Parquet file" in failed["error"]
    flow_run_prefix = manifest["run_id"].rsplit("-", 1)[1]

    def mine() -> list[Any]:
        runs = asyncio.run(_failed_task_runs("load-and-deduplicate-data"))
        return [r for r in runs if str(r.flow_run_id).startswith(flow_run_prefix) and r.state and r.state.is_final()]

    deadline = time.monotonic() + 30  # task-run rows reach the server's database asynchronously
    while not mine() and time.monotonic() < deadline:
        time.sleep(1)
    found = mine()
    assert len(found) == 1 and found[0].run_count == 1  # a data error is never retried


def test_an_output_path_that_cannot_be_written_fails_the_run_naming_it(prefect_server, tmp_path: Path) -> None:
    """As a worker meets it (the flow called without the CLI's own check): a ConfigError naming `output_path`,
    never retried, before any stage."""
    from flows.pipeline import llm_pipeline
    from llm_pipeline.errors import ConfigError

    (tmp_path / "a-file").write_text("not a folder")
    with pytest.raises(ConfigError) as raised:
        llm_pipeline(config_path=CONFIG, overrides={"output_path": str(tmp_path / "a-file" / "out")})
    assert raised.value.problems[0][0] == "output_path" and "Not a directory" in raised.value.problems[0][1]


async def _failed_task_runs(name: str) -> list[Any]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import TaskRunFilter, TaskRunFilterName

    async with get_client() as client:
        return await client.read_task_runs(task_run_filter=TaskRunFilter(name=TaskRunFilterName(like_=name)))


def test_no_secret_reaches_any_output_or_log(
    prefect_server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    from flows.pipeline import llm_pipeline

    secrets = {"OPENAI_API_KEY": "sk-test-" + "Q7" * 20, "WANDB_API_KEY": "0f1e2d3c4b5a" * 3 + "abcd"}
    for name, value in secrets.items():
        monkeypatch.setenv(name, value)
    # The key is really used: QA goes through the openai backend, to a server that sees the Authorization header.
    with FakeOpenAI() as server:
        result = llm_pipeline(
            config_path=CONFIG,
            overrides={
                "output_path": str(tmp_path),
                "qa": {
                    "backend": "openai",
                    "base_url": server.base_url,
                    "model_name": "fake-model",
                    "requests_per_minute": None,
                    "prices": {"fake-model": {"input_per_million": 0.15, "output_per_million": 0.6}},
                },
                "benchmark": {"size": 12},
                "evaluation": {"metrics": ["exact_match"]},
            },
        )
    assert server.authorizations == {f"Bearer {secrets['OPENAI_API_KEY']}"}
    report = (Path(result["run_dir"]) / "report.md").read_text()
    assert "## QA generation: requests, tokens, cost" in report and "| sent by this run | 300 |" in report
    files = [f for f in tmp_path.rglob("*") if f.is_file()]  # the run folder and the QA journal beside it
    assert len(files) > 15  # the stage files and W&B's offline run directory
    for file in files:
        content = file.read_bytes()
        for value in secrets.values():
            assert value.encode() not in content, f"a secret is in {file}"
    resolved = json.loads((Path(result["run_dir"]) / "config.resolved.json").read_text())
    assert resolved["secrets"]["OPENAI_API_KEY"] == "********"
    printed = capfd.readouterr()
    logs = poll("logs", result["flow_run_id"], lambda found: any("stage_finished" in log.message for log in found))
    for value in secrets.values():
        assert value not in printed.out + printed.err
        assert all(value not in log.message for log in logs)


def test_a_qa_spending_cap_ends_the_stage_partial_and_says_so_everywhere(prefect_server, tmp_path: Path) -> None:
    """The cap reached mid-stage: the pipeline goes on with what was answered, and the report, the manifest and
    the stage's Prefect artifact all say QA is partial, with the numbers."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey, FlowRunFilter

    from flows.pipeline import llm_pipeline

    with FakeOpenAI() as server:
        qa = {
            "backend": "openai",
            "base_url": server.base_url,
            "model_name": "fake-model",
            "requests_per_minute": None,
            "prices": {"fake-model": {"input_per_million": 0.15, "output_per_million": 0.6}},
            "max_cost_usd": 0.004,
        }
        overrides = {"output_path": str(tmp_path), "data": {"limit": 60}, "qa": qa, "benchmark": {"size": 10}}
        result = llm_pipeline(config_path=CONFIG, overrides={**overrides, "evaluation": {"metrics": ["exact_match"]}})
        billed = server.stats()["billed"]
    assert (billed["prompt_tokens"] * 0.15 + billed["completion_tokens"] * 0.6) / 1e6 <= 0.004
    run_dir = Path(result["run_dir"])
    counts = json.loads((run_dir / "manifest.json").read_text())["stages"]["generate-qa-pairs"]["counts"]
    assert counts["status"].startswith("partial: budget reached") and 0 < counts["requests.refused_budget"] < 60
    assert "**QA partial: budget reached" in (run_dir / "report.md").read_text()

    async def artifact() -> Any:
        async with get_client() as client:
            [found] = await client.read_artifacts(
                artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["test-pipeline-generate-qa-pairs"])),
                flow_run_filter=FlowRunFilter(id={"any_": [result["flow_run_id"]]}),
            )
            return found

    assert "**partial: budget reached" in asyncio.run(artifact()).data


def test_a_model_that_gives_no_pair_fails_the_run_naming_qa_min_pairs(prefect_server, tmp_path: Path) -> None:
    """Found outside in: llama-cpp-python's server with a 135M model answered every request with JSON that is not
    pairs, and the run ended Completed, exit 0, with a benchmark of 0 items and an evaluation of nothing. Here an
    untrained tiny Llama, loaded by the local backend's own code, answers as badly: the run fails at QA, naming
    `qa.min_pairs` and why, the quarantined replies are on disk, and no later stage runs on nothing."""
    from prefect.exceptions import PrefectException

    from flows.pipeline import llm_pipeline
    from llm_pipeline.errors import DataValidationError
    from tests.tiny_models import save, tiny_llama, train_tokenizer

    sample = (ROOT / "data/ev_charging/documents.jsonl").read_text().splitlines()[:40]
    tokenizer = train_tokenizer(sample)  # the lines as they are (the sample holds broken ones on purpose)
    model = save(tiny_llama(tokenizer), tokenizer, tmp_path / "untrained")
    qa = {"backend": "local", "model_name": str(model), "max_tokens": 24, "max_format_retries": 0}
    overrides = {"output_path": str(tmp_path / "out"), "data": {"limit": 3}, "qa": qa, "benchmark": {"size": 10}}
    with pytest.raises((DataValidationError, PrefectException)) as failed:
        llm_pipeline(config_path=CONFIG, overrides={**overrides, "evaluation": {"metrics": ["exact_match"]}})
    assert "qa.min_pairs: 0 QA pairs from backend local" in str(failed.value)
    assert "3 documents, 3 requests, 3 quarantined (invalid output" in str(failed.value)
    manifest = json.loads(next((tmp_path / "out").rglob("manifest.json")).read_text())
    assert manifest["status"] == "failed" and manifest["stages"]["generate-qa-pairs"]["status"] == "failed"
    assert "generate-benchmark" not in manifest["stages"] or manifest["stages"]["generate-benchmark"]["status"] != (
        "completed"
    )
    rejects = [json.loads(line) for line in next((tmp_path / "out").rglob("qa_rejects.jsonl")).open()]
    assert len(rejects) == 3 and all(r["reason"].startswith("invalid output") and r["raw"] for r in rejects)


def test_a_folder_of_jsonl_files_loads_like_the_one_file_and_a_folder_of_nothing_fails(
    prefect_server, tmp_path: Path
) -> None:
    """The sample corpus split over a folder (JSONL, gzipped JSONL, CSV) gives the same documents as the file; a
    folder that yields none fails the run naming data.min_documents, never "completed" with nothing."""
    import csv
    import gzip

    from flows.pipeline import llm_pipeline

    lines = (ROOT / "data/ev_charging/documents.jsonl").read_bytes().splitlines(keepends=True)  # bad ones too
    folder = tmp_path / "corpus"
    (folder / "part-2").mkdir(parents=True)
    third = len(lines) // 3
    (folder / "part-1.jsonl").write_bytes(b"".join(lines[:third]))
    (folder / "part-2" / "more.jsonl.gz").write_bytes(gzip.compress(b"".join(lines[third : 2 * third])))
    with (folder / "part-3.csv").open("w", newline="") as handle:  # the records a CSV can hold: id, text, metadata
        writer = csv.writer(handle)
        writer.writerow(["id", "text", "metadata"])
        for line in lines[2 * third :]:
            try:
                r = json.loads(line)
            except ValueError:
                continue
            if isinstance(r, dict) and isinstance(r.get("text"), str):
                writer.writerow([r.get("id", ""), r["text"], json.dumps(r.get("metadata") or {})])
    (folder / "notes.key").write_bytes(b"PK\x03\x04 an office file this loader does not read")
    out = tmp_path / "out"
    llm_pipeline(config_path=CONFIG, overrides={"output_path": str(out), "data": {"path": str(folder)}})
    run_dir = next(out.rglob("manifest.json")).parent
    counts = json.loads((run_dir / "manifest.json").read_text())["stages"]["load-and-deduplicate-data"]["counts"]
    assert counts["files.loaded"] == 3 and counts["files.skipped"] == 1 and counts["documents"] >= 300
    report = (run_dir / "report.md").read_text()
    assert "## Inputs" in report and "| `notes.key` | skipped |" in report
    assert "| `part-2/more.jsonl.gz` | loaded | jsonl (gzip) |" in report

    empty = tmp_path / "nothing"
    empty.mkdir()
    (empty / "slides.pptx").write_bytes(b"PK\x03\x04")
    (empty / "LICENSE").write_text("no documents here")  # a README would now be read as one
    from tests.test_config import run_cli

    config = tmp_path / "c.yaml"
    config.write_text((ROOT / "configs/test.yaml").read_text())
    cli = run_cli("run", "--config", str(config), "--set", f"data.path={empty}", "--set", f"output_path={out}")
    assert cli.returncode != 0, cli.stdout[-2000:]
    assert "data.min_documents: 0 documents loaded" in cli.stdout + cli.stderr, (cli.stdout + cli.stderr)[-3000:]


def test_a_run_stalled_past_its_run_timeout_stops_naming_the_stage(prefect_server, tmp_path: Path) -> None:
    """A QA endpoint that never answers, with a request deadline of an hour: `llm-pipeline run` stops at
    execution.run_timeout, exit 1, the manifest failed at the QA stage with the reason, the stages before it
    completed."""
    from tests.qa_support import run_against_a_silent_endpoint

    out = tmp_path / "out"
    started = time.monotonic()
    settings = {"output_path": str(out), "execution.run_timeout": "60s"}  # the stages before QA: seconds
    cli = run_against_a_silent_endpoint(prefect_server.api_url, settings)
    took = time.monotonic() - started
    said = cli.stdout + cli.stderr
    assert cli.returncode == 1, said[-3000:]
    assert "execution.run_timeout" in said and "generate-qa-pairs" in said, said[-3000:]
    manifest = json.loads(next(out.rglob("manifest.json")).read_text())
    assert manifest["status"] == "failed"
    stages = manifest["stages"]
    assert stages["generate-qa-pairs"]["status"] == "failed"
    assert stages["generate-qa-pairs"]["error"].startswith("RunTimedOut: execution.run_timeout")
    # done, or reused from an earlier test's run of the same config on this server
    assert stages["load-and-deduplicate-data"]["status"] in ("completed", "cached")
    print(f"\nrun stopped by execution.run_timeout=60s after {took:.0f}s in all (start-up included)")


def test_with_finetuning_on_the_report_leads_with_tuned_vs_base(prefect_server, tmp_path: Path) -> None:
    """finetune.enabled with a tiny Llama built here as the base: the stage trains a LoRA adapter on the run's
    training pairs, evaluation adds base and tuned with the same settings, the report opens with the paired
    comparison, the model card carries lineage and scores; a rerun reuses the adapter (cached, linked)."""
    from flows.pipeline import llm_pipeline
    from llm_pipeline.evaluation.candidates import answer_messages
    from tests.test_judge import fair_judge
    from tests.tiny_models import save, tiny_llama, train_tokenizer

    corpus = (ROOT / "data/ev_charging/documents.jsonl").read_text(errors="replace")  # with the sample's bad records
    tokenizer = train_tokenizer([corpus, *[m["content"] for m in answer_messages("question", "context")]])
    base = save(tiny_llama(tokenizer), tokenizer, tmp_path / "base")
    overrides = {
        "output_path": str(tmp_path / "out"),
        "benchmark": {"size": 20},
        "evaluation": {"metrics": ["exact_match", "rouge"], "domain_metrics": []},
        "finetune": {
            "enabled": True,
            "base_model": str(base),
            "max_steps": 12,
            "batch_size": 4,
            "learning_rate": 5e-3,
            "save_steps": 5,
            "device": "cpu",
            "eval_max_new_tokens": 6,
        },
    }
    with FakeOpenAI(judge=fair_judge) as judge_server:
        overrides["evaluation"]["judge"] = {"enabled": True, "model": "judge-model", "base_url": judge_server.base_url}
        result = llm_pipeline(config_path=CONFIG, overrides=overrides)
        again = llm_pipeline(config_path=CONFIG, overrides=overrides)
        judged_requests = judge_server.stats()["total"]
    run_dir = Path(result["run_dir"])
    finetuned = json.loads((run_dir / "finetune.json").read_text())
    assert finetuned["enabled"] and finetuned["steps"] == 12 and finetuned["data"]["train_examples"] > 50
    assert finetuned["lineage"]["run_id"] == result["run_id"] and finetuned["losses"]["last_eval_loss"] is not None
    assert (run_dir / "adapter" / "adapter_model.safetensors").is_file()
    logged = b"".join(p.read_bytes() for p in run_dir.glob("wandb/offline-run-*/run-*.wandb"))
    assert b"finetune/loss" in logged and b"finetune/eval_loss" in logged  # the curves, in the run's W&B run
    evaluation = json.loads((run_dir / "evaluation.json").read_text())
    assert set(evaluation) == {"retrieval-minilm", "lexical-overlap", "base", "tuned"}
    same = ("decoding", "max_new_tokens", "batch_size", "seed", "compile")
    assert [evaluation["tuned"]["generation"][k] for k in same] == [evaluation["base"]["generation"][k] for k in same]
    assert evaluation["tuned"]["generation"]["max_new_tokens"] == 6
    report = (run_dir / "report.md").read_text()
    assert report.index("## Tuned vs base (20 benchmark items)") < report.index("## Stages")
    assert "Delta by category" in report and "Delta by difficulty" in report
    summary = json.loads((run_dir / "summary.json").read_text())
    assert set(summary["tuned_vs_base"]["overall"]) >= {"exact_match", "rougeL"}
    card = (run_dir / "model_card.md").read_text()
    assert f"base_model: {base}" in card and "## Evaluation: tuned vs base" in card and result["run_id"] in card
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["stages"]["finetune-model"]["status"] == "completed"
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey, FlowRunFilter

    async def progress() -> list[Any]:
        async with get_client() as client:
            return await client.read_artifacts(
                artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["test-pipeline-finetune-model-progress"])),
                flow_run_filter=FlowRunFilter(id={"any_": [result["flow_run_id"]]}),
            )

    [training] = asyncio.run(progress())  # the stage's progress artifact followed the training to its end
    assert training.type == "progress" and float(training.data) == 100.0

    # the judge: every answer of the four candidates pointwise, tuned against base in both orders
    judged = json.loads((run_dir / "judge.json").read_text())
    assert judged["requests"] == 20 * 4 + 20 * 2 and set(judged["pointwise"]) == set(evaluation)
    assert judged_requests <= judged["requests"]  # identical texts share a verdict; the rerun asked nothing
    assert "tuned vs base" in judged["pairwise"] and "## LLM judge (judge-model" in report
    assert "LLM judge, head to head over 20 items" in report
    assert sum(1 for _ in (run_dir / "judgements.jsonl").open()) == judged["requests"]
    rerun = json.loads((Path(again["run_dir"]) / "manifest.json").read_text())
    assert rerun["stages"]["finetune-model"]["status"] == "cached"
    assert rerun["stages"]["evaluate-models"]["status"] == "cached"
    assert (Path(again["run_dir"]) / "adapter" / "adapter_model.safetensors").is_file()
