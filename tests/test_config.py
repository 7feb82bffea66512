"""Config: every spec key, flat or nested; overlays and overrides; bad configs fail naming the field."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from llm_pipeline.config import FLAT_KEYS, load_config
from llm_pipeline.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]


def write(tmp_path: Path, payload: dict, name: str = "c.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(payload))
    return path


def minimal(tmp_path: Path, **extra: object) -> dict:
    data = tmp_path / "docs.jsonl"
    data.write_text('{"id": "a", "text": "hello world"}\n')
    return {"name": "t", "data": {"path": str(data)}, **extra}


@pytest.mark.parametrize("name", sorted(p.stem for p in (ROOT / "configs").glob("*.yaml")))
def test_shipped_configs_are_valid(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)
    config = load_config(ROOT / "configs" / f"{name}.yaml")
    assert config.name.endswith("pipeline")


def test_finetune_settings_are_checked_before_any_work(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as raised:
        load_config(write(tmp_path, minimal(tmp_path, finetune={"enabled": True})))
    assert any(field == "finetune" and "base_model" in message for field, message in raised.value.problems)
    clash = minimal(
        tmp_path,
        finetune={"enabled": True, "base_model": "some/model"},
        evaluation={"candidates": [{"name": "tuned", "kind": "lexical"}]},
    )
    with pytest.raises(ConfigError, match="tuned"):
        load_config(write(tmp_path, clash))
    off = load_config(write(tmp_path, minimal(tmp_path)))
    assert off.finetune.enabled is False and off.finetune.base_model is None


def test_every_spec_key_is_accepted_flat_and_lands_in_its_section(tmp_path: Path) -> None:
    data = tmp_path / "d.jsonl"
    data.write_text('{"id": "a", "text": "x y"}\n')
    flat = {
        "name": "flat",
        "data_path": str(data),
        "output_path": str(tmp_path / "out"),
        "model_name": "m",
        "domain": "ev",
        "wandb_project": "p",
        "similarity_threshold": 0.9,
        "deduplication_method": "minhash",
        "questions_per_doc": 4,
        "include_metadata": False,
        "benchmark_size": 7,
        "include_adversarial": False,
        "difficulty_levels": ["easy"],
        "categories": ["pricing"],
        "evaluation_metrics": ["bleu"],
        "domain_metrics": ["numeric_accuracy"],
        "enable_monitoring": False,
        "log_level": "debug",
        "structured_logging": False,
    }
    config = load_config(write(tmp_path, flat))
    for key, (section, field) in FLAT_KEYS.items():
        value = getattr(getattr(config, section), field)
        expected = flat[key].upper() if key == "log_level" else flat[key]
        assert (str(value) if key == "data_path" else value) == expected, key
    assert config.domain == "ev" and config.output_path == tmp_path / "out"


def test_environment_overrides_file_and_overlay(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "environments").mkdir()
    write(
        tmp_path, {"monitoring": {"log_level": "DEBUG", "structured_logging": False}}, "environments/development.yaml"
    )
    path = write(tmp_path, minimal(tmp_path, qa={"questions_per_doc": 2}))
    monkeypatch.setenv("PIPELINE_ENV", "development")
    config = load_config(path)
    assert config.monitoring.log_level == "DEBUG" and config.monitoring.structured_logging is False
    monkeypatch.setenv("PIPELINE__QA__QUESTIONS_PER_DOC", "5")
    monkeypatch.setenv("LOG_LEVEL", "warning")
    config = load_config(path)
    assert config.qa.questions_per_doc == 5
    assert config.monitoring.log_level == "WARNING"


def test_unknown_environment_overlay_is_an_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PIPELINE_ENV", "staging")
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, minimal(tmp_path)))
    assert info.value.problems[0][0] == "PIPELINE_ENV"


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"dedup": {"similarity_threshold": 1.5}}, "dedup.similarity_threshold"),
        ({"evaluation": {"metrics": ["rouge", "meteor"]}}, "evaluation.metrics.1"),
        ({"dedup": {"method": "fuzzy"}}, "dedup.method"),
        ({"data": {"path": "/nowhere/docs.jsonl"}}, "data.path"),
        ({"benchmark": {"categories": []}}, "benchmark.categories"),
        ({"qa": {"questions_per_dc": 3}}, "qa.questions_per_dc"),
        ({"execution": {"stage_timeouts": {"finetune-model": "soon"}}}, "execution.stage_timeouts.finetune-model"),
        ({"execution": {"stage_timeouts": {"evaluate-models": "0s"}}}, "execution.stage_timeouts"),
    ],
)
def test_bad_config_names_the_field(tmp_path: Path, change: dict, field: str) -> None:
    payload = minimal(tmp_path)
    for section, values in change.items():
        payload.setdefault(section, {}).update(values)
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, payload))
    assert field in [f for f, _ in info.value.problems]


def run_cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    import os

    return subprocess.run(
        [sys.executable, "-m", "flows.cli", *args],  # the app the `llm-pipeline` command runs
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, **(env or {})},
        timeout=120,
    )


def test_cli_validate_exits_2_naming_the_field(tmp_path: Path) -> None:
    payload = minimal(tmp_path, dedup={"similarity_threshold": 1.5})
    result = run_cli("validate", str(write(tmp_path, payload)))
    assert result.returncode == 2
    assert "dedup.similarity_threshold" in result.stderr


def test_cli_set_with_nothing_after_the_equals_is_the_empty_string(tmp_path: Path) -> None:
    """`--set execution.ray_address=` clears the address (the README's "empty: a Ray of its own"); it used to be
    YAML's null and failed with "Input should be a valid string". `null` still means none."""
    config = str(write(tmp_path, minimal(tmp_path)))
    cleared = run_cli("validate", config, "--set", "execution.ray_address=", "--set", "execution.run_timeout=null")
    assert cleared.returncode == 0, cleared.stderr
    assert 'ray_address: ""' in cleared.stdout or "ray_address: ''" in cleared.stdout, cleared.stdout
    assert "run_timeout: null" in cleared.stdout
    refused = run_cli("validate", config, "--set", "execution.ray_num_cpus=")
    assert refused.returncode == 2 and "execution.ray_num_cpus" in refused.stderr


def test_a_stage_timeout_for_a_stage_that_does_not_exist_names_the_ones_that_do(tmp_path: Path) -> None:
    config = str(write(tmp_path, minimal(tmp_path)))
    typo = run_cli("validate", config, "--set", "execution.stage_timeouts.qa-generation=2h")
    assert typo.returncode == 2 and "execution.stage_timeouts" in typo.stderr, typo.stderr
    assert "no stage 'qa-generation'" in typo.stderr and "generate-qa-pairs" in typo.stderr, typo.stderr
    good = run_cli("validate", config, "--set", "execution.stage_timeouts.generate-qa-pairs=90m")
    assert good.returncode == 0 and "generate-qa-pairs: PT1H30M" in good.stdout, good.stdout + good.stderr


def test_cli_validate_prints_resolved_config_with_secrets_masked() -> None:
    secret = "sk-test-VERYSECRET-1234567890"
    result = run_cli(
        "validate",
        "configs/test.yaml",
        "--set",
        "qa.questions_per_doc=4",
        env={"OPENAI_API_KEY": secret, "WANDB_API_KEY": "wandb-secret-value-123456"},
    )
    assert result.returncode == 0, result.stderr
    printed = yaml.safe_load(result.stdout)
    assert printed["config"]["qa"]["questions_per_doc"] == 4
    assert printed["secrets"]["OPENAI_API_KEY"] == "********"
    assert secret not in result.stdout + result.stderr
    assert "wandb-secret-value-123456" not in result.stdout + result.stderr
    # embedding_backend auto: the threshold of each backend it may take; a named backend: its own
    assert printed["derived"]["dedup.cosine_threshold"] == {
        "torch (up to 5000 windows of max_seq_length tokens)": 0.95,
        "static (more)": 0.85,
    }
    named = run_cli("validate", "configs/test.yaml", "--set", "dedup.embedding_backend=static")
    assert yaml.safe_load(named.stdout)["derived"]["dedup.cosine_threshold"] == 0.85
    assert "warning" not in result.stderr + named.stderr
    # a cosine set by hand with auto: valid, but it applies to two backends that score apart: said, with the fix
    mixed = run_cli("validate", "configs/test.yaml", "--set", "dedup.semantic_threshold=0.9")
    assert mixed.returncode == 0 and "warning: dedup.semantic_threshold: 0.9 applies to whichever" in mixed.stderr
    assert "set dedup.embedding_backend" in mixed.stderr
    pinned = run_cli("validate", "configs/test.yaml", "--set", "dedup.semantic_threshold=0.9",
                     "--set", "dedup.embedding_backend=torch")  # fmt: skip
    assert pinned.returncode == 0 and "warning" not in pinned.stderr


def test_a_run_keeps_and_logs_the_configs_warnings(tmp_path: Path) -> None:
    """The warning `validate` prints is in the run's config.resolved.json and its log too (a run started without
    validating)."""
    from structlog.testing import capture_logs

    from llm_pipeline.config import PipelineConfig
    from llm_pipeline.stages.contract import StageContext
    from llm_pipeline.stages.initialize import initialize_pipeline
    from llm_pipeline.stages.registry import stage_named

    logged = []
    for threshold, expected in ((None, 0), (0.9, 1)):
        config = PipelineConfig(**minimal(tmp_path, dedup={"semantic_threshold": threshold}))
        ctx = StageContext(stage_named("initialize-pipeline"), config, tmp_path / str(threshold), "run")
        ctx.run_dir.mkdir()
        with capture_logs() as events:  # whatever an earlier test configured the log's handlers to
            initialize_pipeline(ctx)
        warnings = json.loads(ctx.output("config").read_text())["warnings"]
        assert len(warnings) == expected and all("dedup.semantic_threshold: 0.9" in w for w in warnings)
        logged += [e["warning"] for e in events if e["event"] == "config_warning"]
    assert logged == warnings


def test_cli_run_refuses_bad_config_before_any_work(tmp_path: Path) -> None:
    out = tmp_path / "out"
    payload = minimal(tmp_path, output_path=str(out), benchmark={"categories": []})
    result = run_cli("run", "--config", str(write(tmp_path, payload)))
    assert result.returncode == 2
    assert "benchmark.categories" in result.stderr
    assert not out.exists()


def test_cli_run_refuses_an_output_path_it_cannot_write_naming_the_field(tmp_path: Path) -> None:
    """A folder under a file (a typo, a volume not mounted): exit 2 naming `output_path` and why, before Prefect
    starts (no traceback, no run); it used to start the flow and end in a FileNotFoundError from the manifest."""
    (tmp_path / "a-file").write_text("not a folder")
    payload = minimal(tmp_path, output_path=str(tmp_path / "a-file" / "out"))
    result = run_cli("run", "--config", str(write(tmp_path, payload)))
    assert result.returncode == 2, result.stderr[-2000:]
    assert "output_path" in result.stderr and "Not a directory" in result.stderr
    assert "Traceback" not in result.stderr + result.stdout and "Flow run" not in result.stderr + result.stdout
    writable = minimal(tmp_path, output_path=str(tmp_path / "new" / "out"), benchmark={"categories": []})
    refused = run_cli("run", "--config", str(write(tmp_path, writable)))  # a bad config is still refused first
    assert refused.returncode == 2 and "benchmark.categories" in refused.stderr and not (tmp_path / "new").exists()


def test_dotenv_with_stack_variables_is_fine_and_pipeline_keys_apply(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write(tmp_path, minimal(tmp_path))
    (tmp_path / ".env").write_text("POSTGRES_PASSWORD=x\nPIPELINE__QA__QUESTIONS_PER_DOC=4\n")
    monkeypatch.chdir(tmp_path)
    assert load_config(path).qa.questions_per_doc == 4


def test_unknown_top_level_key_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, minimal(tmp_path, dedupe={"method": "exact"})))
    assert info.value.problems[0][0] == "dedupe"
