"""W&B tracking: offline runs land on disk with metrics and tables; no key or no service never fails a run; a run
started in one process is continued in another from the file the tracking stage writes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from llm_pipeline.tracking import Tracker


def wandb_file(directory: Path) -> Path:
    files = list(directory.glob("wandb/offline-run-*/run-*.wandb"))
    assert len(files) == 1, files
    return files[0]


def started(**kwargs: object) -> Tracker:
    tracker = Tracker(**kwargs)  # type: ignore[arg-type]
    tracker.start()
    return tracker


def test_offline_run_records_metrics_config_and_tables(tmp_path: Path) -> None:
    tracker = started(
        mode="offline", project="p", directory=tmp_path, name="n", group="g", config={"dedup": {"method": "hybrid"}}
    )
    assert tracker.mode == "offline"
    tracker.log({"dedup/kept_documents": 287, "qa/pairs": 12.5, "not_a_number": "skipped"})
    tracker.log_table("qa_sample", ["question", "answer"], [["What is DC?", "direct current"]])
    info = tracker.info()
    tracker.finish()
    assert tracker.run is None
    assert info["sync_command"].startswith("wandb sync ")
    # Read at once: finish() returns only when the run's data is on disk (it used to return before the W&B
    # service had closed the file, leaving a 7-byte header for a reader on a busy machine).
    raw = wandb_file(tmp_path).read_bytes()
    for needle in (b"dedup/kept_documents", b"287", b"qa/pairs", b"12.5", b"hybrid"):
        assert needle in raw, needle
    assert b"not_a_number" not in raw
    table = next(tmp_path.glob("wandb/offline-run-*/files/media/table/qa_sample_*.table.json"))
    assert json.loads(table.read_text())["data"] == [["What is DC?", "direct current"]]


def test_online_without_key_degrades_to_offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    tracker = Tracker(mode="online", project="p", directory=tmp_path, name="n", group="g", config={})
    info = tracker.start()
    tracker.finish()
    assert info["mode"] == "offline" and info["requested_mode"] == "online"
    wandb_file(tmp_path)


def test_disabled_writes_nothing(tmp_path: Path) -> None:
    tracker = Tracker(mode="disabled", project="p", directory=tmp_path / "w", name="n", group="g", config={})
    assert tracker.start()["mode"] == "disabled"
    tracker.log({"a": 1})
    tracker.finish()
    assert not (tmp_path / "w" / "wandb").exists()


def test_a_wandb_outage_degrades_to_offline_and_keeps_the_data(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A key is set and W&B is down (a real HTTP server answering 503 to everything): the run goes on offline,
    with a warning, and what it logs is on disk for `wandb sync` later."""
    from tests.fakes.receivers import WebhookReceiver

    down = WebhookReceiver(status=503)
    monkeypatch.setenv("WANDB_API_KEY", "0" * 40)
    monkeypatch.setenv("WANDB_BASE_URL", down.url)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    try:
        tracker = started(
            mode="online", project="p", directory=tmp_path, name="n", group="g", config={}, init_timeout_s=5
        )
        tracker.log({"qa/pairs": 42})
        info = tracker.info()
        tracker.finish()
    finally:
        down.stop()
    assert down.received, info.get("error")  # it did try the service
    assert info["mode"] == "offline" and info["requested_mode"] == "online" and "error" in info
    assert b"qa/pairs" in wandb_file(tmp_path).read_bytes()


RESUME = """
import json, sys
from llm_pipeline.tracking import Tracker
tracker = Tracker.resume(json.loads(sys.argv[1]))
tracker.log({"finalize/seen": 7})
tracker.summary({"report": "report.md"})
tracker.finish()
print(json.dumps(tracker.info()))
"""


def test_a_run_started_here_is_continued_in_another_process(tmp_path: Path) -> None:
    """The tracking stage's hand-off is its info (tracking.json): another process resumes the same W&B run from
    it, and what each process logged is on disk under that one run id."""
    import subprocess
    import sys

    tracker = started(mode="offline", project="p", directory=tmp_path, name="run-1", group="g", config={"a": 1})
    tracker.log({"tracking/seen": 3})
    info = tracker.info()
    tracker.finish()
    done = subprocess.run(
        [sys.executable, "-c", RESUME, json.dumps(info)], capture_output=True, text=True, timeout=120, check=True
    )
    resumed = json.loads(done.stdout.strip().splitlines()[-1])
    assert resumed["run_id"] == info["run_id"] and resumed["mode"] == "offline"
    folders = sorted(tmp_path.glob(f"wandb/offline-run-*-{info['run_id']}"))
    assert len(folders) == 2  # one per process, both named by the same run id: `wandb sync` takes both
    first, second = ((f / f"run-{info['run_id']}.wandb").read_bytes() for f in folders)
    assert b"tracking/seen" in first and b"finalize/seen" not in first
    assert b"finalize/seen" in second and b"report.md" in second


def test_resume_of_a_disabled_run_is_nothing() -> None:
    assert Tracker.resume({"mode": "disabled", "project": "p"}) is None
