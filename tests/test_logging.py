"""Structured logs: one JSON event a line, run and stage ids on each, secrets never printed."""

from __future__ import annotations

import json

import pytest

from llm_pipeline.logging import bind, bound, configure_logging, get_logger


@pytest.fixture(autouse=True)
def _reset():
    import structlog

    yield
    structlog.contextvars.clear_contextvars()
    configure_logging("INFO", structured=False)


def test_json_events_carry_run_and_stage(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("INFO", structured=True)
    bind(run_id="r-1")
    with bound(stage="generate-qa-pairs"):
        get_logger("qa").info("qa_generated", pairs=12)
    get_logger("qa").debug("hidden_at_info")
    lines = [json.loads(line) for line in capsys.readouterr().err.splitlines() if line.startswith("{")]
    assert len(lines) == 1
    assert lines[0]["event"] == "qa_generated" and lines[0]["pairs"] == 12
    assert lines[0]["run_id"] == "r-1" and lines[0]["stage"] == "generate-qa-pairs"
    assert lines[0]["level"] == "info" and "timestamp" in lines[0]


def test_log_level_is_honoured(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("WARNING", structured=True)
    get_logger().info("quiet")
    get_logger().warning("loud")
    err = capsys.readouterr().err
    assert "loud" in err and "quiet" not in err


def test_secrets_are_masked(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WANDB_API_KEY", "0123456789abcdef0123456789abcdef01234567")
    configure_logging("INFO", structured=True)
    get_logger().info(
        "calling",
        api_key="sk-live-abcdefghijkl",
        url="https://x/?k=sk-proj-ABCDEFGHIJKLMN",
        note="key 0123456789abcdef0123456789abcdef01234567 used",
    )
    err = capsys.readouterr().err
    assert "sk-live" not in err and "sk-proj" not in err and "0123456789abcdef" not in err
    assert err.count("********") == 3


def test_a_hugging_face_token_is_masked_by_value_and_by_shape(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_TOKEN", "hf_SetInTheEnvironment0123456789ab")
    configure_logging("INFO", structured=True)
    get_logger().info(
        "downloading",
        error="401 for token hf_SetInTheEnvironment0123456789ab",  # the variable's value, under any key
        header="Authorization: Bearer hf_AnotherTokenSeenOnlyByShape0123",  # a token not in the environment
    )
    err = capsys.readouterr().err
    assert "hf_SetIn" not in err and "hf_Another" not in err and err.count("********") == 2
