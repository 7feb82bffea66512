"""The autoscaler's settings from the environment (`.env`): the spec's keys, durations as `5m`, `30s`, `1h30m` or
`10 minutes`. A bad value fails at start, naming the variable."""

from __future__ import annotations

import re
from typing import Literal

from pydantic import Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from services.autoscaling.policy import ScalingPolicy

# longest spellings first: the alternation takes the first that matches
_PART = re.compile(r"(\d+(?:\.\d+)?)(milliseconds?|ms|seconds?|secs?|s|minutes?|mins?|m|hours?|h)?")
_SCALE = {"ms": 0.001, "millisecond": 0.001, "s": 1.0, "sec": 1.0, "second": 1.0, "m": 60.0, "min": 60.0,
          "minute": 60.0, "h": 3600.0, "hour": 3600.0}  # fmt: skip


def parse_duration(text: str | float | int) -> float:
    """Seconds in `text`: "5m", "30s", "1h30m", "10 minutes", "250ms", or a bare number of seconds."""
    if isinstance(text, int | float):
        return float(text)
    compact = text.strip().replace(" ", "").lower()
    if not compact:
        raise ValueError("empty duration")
    total, at = 0.0, 0
    while at < len(compact):
        found = _PART.match(compact, at)
        if not found or found.end() == at:
            raise ValueError(f"{text!r} is not a duration (like 5m, 30s, 1h30m, 10 minutes)")
        number, unit = found.groups()
        unit = unit or "s"
        total += float(number) * _SCALE[unit if unit in _SCALE else unit.rstrip("s")]
        at = found.end()
    return total


DURATIONS = ("scale_up_cooldown", "scale_down_cooldown", "sustain", "interval", "drain_timeout", "slot_audit_grace")


class AutoscalerSettings(BaseSettings):
    """SCALING_* and WORKER_LIMIT, as `.env.example` documents them."""

    model_config = SettingsConfigDict(env_prefix="SCALING_", extra="ignore")

    min_workers: int = Field(1, ge=0)
    max_workers: int = Field(10, ge=1)
    scale_up_threshold: float = Field(0.8, gt=0)
    scale_down_threshold: float = Field(0.2, ge=0)
    scale_up_cooldown: float = 300.0
    scale_down_cooldown: float = 600.0
    sustain: float = 10.0
    worker_limit: int = Field(4, ge=1, validation_alias="WORKER_LIMIT")
    interval: float = 5.0  # seconds between ticks
    drain_timeout: float = 7200.0  # how long a worker picked for removal may finish its runs before it is killed
    # pool=compose service, comma-separated; empty: the autoscaler watches nothing (it runs, and scales no pool)
    pools: str = "llm-pipeline-pool=cpu-worker,llm-pipeline-gpu-pool=gpu-worker"
    gpu_devices: str = ""  # the host's GPU ids ("0,1,2,3"); empty: asked of the NVIDIA runtime (nvidia-smi)
    # how long `gpu-slots` may count slots that no GPU-pool run holds before they are given back (a lost lease
    # store: services/autoscaling/slots.py); 0: never
    slot_audit_grace: float = Field(180.0, ge=0)
    # compose: containers of a compose project; swarm: a swarm stack's services (scripts/swarm_stack.py sets it)
    backend: Literal["compose", "swarm"] = "compose"

    @field_validator(*DURATIONS, mode="before")
    @classmethod
    def _duration(cls, value: object) -> float:
        return parse_duration(value)  # type: ignore[arg-type]

    @model_validator(mode="after")
    def _consistent(self) -> AutoscalerSettings:
        if self.min_workers > self.max_workers:
            raise ValueError(f"SCALING_MIN_WORKERS {self.min_workers} is over SCALING_MAX_WORKERS {self.max_workers}")
        if self.scale_down_threshold >= self.scale_up_threshold:
            raise ValueError(
                f"SCALING_SCALE_DOWN_THRESHOLD {self.scale_down_threshold} must be under SCALING_SCALE_UP_THRESHOLD "
                f"{self.scale_up_threshold}"
            )
        return self

    @field_validator("pools")
    @classmethod
    def _pools(cls, value: str) -> str:
        for part in filter(None, (piece.strip() for piece in value.split(","))):
            pool, _, service = part.partition("=")
            if not pool.strip() or not service.strip():
                raise ValueError(f"{part!r} is not pool=service (e.g. llm-pipeline-pool=cpu-worker)")
        return value

    def pool_services(self) -> dict[str, str]:
        pairs = (part.strip().partition("=") for part in self.pools.split(",") if part.strip())
        return {pool.strip(): service.strip() for pool, _, service in pairs}

    def policy(self) -> ScalingPolicy:
        return ScalingPolicy(
            min_workers=self.min_workers,
            max_workers=self.max_workers,
            scale_up_threshold=self.scale_up_threshold,
            scale_down_threshold=self.scale_down_threshold,
            scale_up_cooldown_s=self.scale_up_cooldown,
            scale_down_cooldown_s=self.scale_down_cooldown,
            worker_limit=self.worker_limit,
            sustain_s=self.sustain,
        )


def load_settings() -> AutoscalerSettings:
    """The settings, or SystemExit with each bad variable named (the service must not start on a typo)."""
    try:
        return AutoscalerSettings()
    except ValidationError as exc:
        names = []
        for error in exc.errors():
            field = str(error["loc"][0]) if error["loc"] else ""
            variable = "WORKER_LIMIT" if field == "WORKER_LIMIT" else f"SCALING_{field.upper()}" if field else ""
            names.append(f"{variable}: {error['msg']}" if variable else error["msg"])
        raise SystemExit("autoscaler: bad settings: " + "; ".join(names)) from exc
