"""The compose files are valid for every profile and override, and refuse to start without the secrets."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def compose() -> list[str]:
    if (
        shutil.which("docker") is None
        or subprocess.run(["docker", "compose", "version"], capture_output=True, check=False).returncode != 0
    ):
        if os.environ.get("CI"):
            pytest.fail("CI needs docker compose: `make test` installs it with ../shared/container-engine/up")
        pytest.skip(reason="docker compose is not installed here")
    return ["docker", "compose"]


VALIDATION_ENV = {"POSTGRES_PASSWORD": "validation-only", "PREFECT_SERVER_API_AUTH_STRING": "v:only"}


def config_of(compose: list[str], *files_and_profiles: str) -> dict:
    """The merged compose config (YAML parsed) for these -f files and --profile flags."""
    import yaml

    result = subprocess.run(
        [*compose, *files_and_profiles, "config"],
        cwd=ROOT,
        env={**os.environ, **VALIDATION_ENV},
        capture_output=True,
        text=True,
        check=True,
    )
    return yaml.safe_load(result.stdout)


def test_every_profile_and_override_is_valid(compose: list[str]) -> None:
    result = subprocess.run(["make", "compose-check"], cwd=ROOT, capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "valid for every profile and override" in result.stdout


def test_missing_secrets_stop_compose_with_the_variable_named(compose: list[str], tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("POSTGRES_PASSWORD", "PREFECT_SERVER_API_AUTH_STRING")}
    empty = tmp_path / "empty.env"
    empty.write_text("")
    result = subprocess.run(
        [*compose, "--env-file", str(empty), "config", "-q"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode != 0
    assert "POSTGRES_PASSWORD" in result.stderr or "PREFECT_SERVER_API_AUTH_STRING" in result.stderr


def test_gpu_worker_reserves_nvidia_devices_and_the_cpu_override_drops_them(compose: list[str]) -> None:
    gpu = config_of(compose, "-f", "docker-compose.yml", "--profile", "gpu")
    devices = gpu["services"]["gpu-worker"]["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["driver"] == "nvidia" and devices[0]["capabilities"] == ["gpu"]
    cpu = config_of(compose, "-f", "docker-compose.yml", "-f", "docker-compose.cpu.yml")
    worker = cpu["services"]["gpu-worker"]
    assert "deploy" not in worker or not worker["deploy"].get("resources")
    assert worker["image"] == "llm-pipeline:cpu"
    for service in cpu["services"].values():  # 127.0.0.1 only, nowhere else
        for port in service.get("ports", []):
            assert port.get("host_ip") == "127.0.0.1", port


def test_the_reverse_proxy_example_is_valid() -> None:
    """docs/proxy/Caddyfile, which the README offers for TLS in front of the UI and the outputs, parses."""
    if shutil.which("caddy") is None:
        if os.environ.get("CI"):
            pytest.fail("CI checks the proxy example: `make test` installs Debian's caddy")
        pytest.skip(reason="no caddy here: apt-get install caddy (make test-tools)")
    done = subprocess.run(
        ["caddy", "validate", "--config", str(ROOT / "docs" / "proxy" / "Caddyfile"), "--adapter", "caddyfile"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "Valid configuration" in done.stdout + done.stderr


def test_every_model_loading_service_has_the_hub_settings_and_the_model_cache(compose: list[str]) -> None:
    config = config_of(compose, "-f", "docker-compose.yml", "--profile", "gpu", "--profile", "ray")
    assert "hf-cache" in config["volumes"]
    for name in ("cpu-worker", "gpu-worker", "ray-head", "ray-worker"):
        service = config["services"][name]
        assert any(v["source"] == "hf-cache" and v["target"] == "/hf-cache" for v in service["volumes"]), name
    for name in ("cpu-worker", "gpu-worker"):  # the flow runs: they load the models
        environment = config["services"][name]["environment"]
        assert environment["HF_HUB_OFFLINE"] == "1" and "HF_TOKEN" in environment, name
