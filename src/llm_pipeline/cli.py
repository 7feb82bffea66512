"""The library's side of the `llm-pipeline` command: what needs no Prefect (`validate`, `version`) and the
helpers every command shares. The orchestration side (flows/cli.py) adds `run`, `trigger` and `health` to
this app; the installed `llm-pipeline` command is that whole app.

Exit codes: 0 success, 1 the run failed, 2 bad configuration (nothing was started).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any

import typer
import yaml
from rich.console import Console

import llm_pipeline
from llm_pipeline.config import AUTO_CONTEXTUAL_MAX_DOCS, DedupConfig, PipelineConfig, Secrets, load_config
from llm_pipeline.errors import ConfigError
from llm_pipeline.qa.backends import resolve_backend

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Turn domain documents into QA data, a domain benchmark and a model evaluation report.",
)
out = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)

ConfigOption = Annotated[Path, typer.Option("--config", "-c", help="Pipeline config YAML.")]
SetOption = Annotated[list[str] | None, typer.Option("--set", help="Override a key: section.field=value (repeatable).")]


def parse_overrides(pairs: list[str] | None) -> dict[str, Any]:
    """`qa.questions_per_doc=3` -> {"qa": {"questions_per_doc": 3}}; values are parsed as YAML scalars, except that
    nothing after `=` is the empty string (as in a shell's `VAR=`), not YAML's null: write `null` for none."""
    overrides: dict[str, Any] = {}
    for pair in pairs or []:
        if "=" not in pair:
            raise ConfigError([(pair, "an override is written key=value, e.g. qa.questions_per_doc=3")])
        key, value = pair.split("=", 1)
        target = overrides
        *parents, leaf = key.strip().split(".")
        for part in parents:
            target = target.setdefault(part, {})
        target[leaf] = yaml.safe_load(value) if value.strip() else ""
    return overrides


def cosine_thresholds(dedup: DedupConfig) -> float | dict[str, float]:
    """The semantic threshold; with `embedding_backend: auto` on the CPU, each backend's, by corpus size."""
    if not dedup.backend_by_size:
        return dedup.cosine_threshold_of(dedup.backend_for(0))
    return {
        f"torch (up to {AUTO_CONTEXTUAL_MAX_DOCS} windows of max_seq_length tokens)": dedup.cosine_threshold_of(
            "torch"
        ),
        "static (more)": dedup.cosine_threshold_of("static"),
    }


def load_or_exit(config: Path, overrides: dict[str, Any]) -> PipelineConfig:
    try:
        return load_config(config, overrides)
    except ConfigError as exc:
        err.print(f"[bold red]config error[/] in {config}:")
        for field, message in exc.problems:
            err.print(f"  [bold]{field}[/]: {message}")
        raise typer.Exit(2) from None


@app.command()
def validate(config: Annotated[Path, typer.Argument(help="Pipeline config YAML.")], set_: SetOption = None) -> None:
    """Resolve a config (file, PIPELINE_ENV overlay, PIPELINE__* variables) and print it, secrets masked."""
    try:
        overrides = parse_overrides(set_)
    except ConfigError as exc:
        err.print(f"[bold red]config error[/]: {exc}")
        raise typer.Exit(2) from None
    resolved = load_or_exit(config, overrides)
    payload = {
        "config": resolved.model_dump(mode="json"),
        "secrets": Secrets().masked(),
        "derived": {
            "dedup.jaccard_threshold": resolved.dedup.jaccard_threshold,
            "dedup.cosine_threshold": cosine_thresholds(resolved.dedup),
            "qa.backend": resolve_backend(
                resolved.qa, api_key=key.get_secret_value() if (key := Secrets().openai_api_key) else None
            ),
        },
        "config_hash": resolved.fingerprint(),
    }
    out.print(yaml.safe_dump(payload, sort_keys=False), end="", markup=False, highlight=False)
    for warning in resolved.dedup.warnings():
        err.print(f"[yellow]warning[/]: {warning}", markup=True, highlight=False)
    err.print(f"[green]valid[/]: {config}")


@app.command()
def models(config: ConfigOption = Path("configs/test.yaml"), set_: SetOption = None) -> None:
    """Download the models CONFIG names by hub id (finetune base, hf candidates, a local QA model) into the Hugging
    Face cache (HF_HOME), so a scheduled run finds them with the hub off. Needs HF_HUB_OFFLINE=0."""
    from llm_pipeline.models.loading import hub_offline
    from llm_pipeline.models.prefetch import configured_models, prefetch

    resolved = load_or_exit(config, parse_overrides(set_))
    wanted = configured_models(resolved)
    if not wanted:
        out.print(f"{config} names no model by hub id: nothing to download")
        return
    if hub_offline():
        names = ", ".join(name for _, name in wanted)
        err.print(f"[bold red]HF_HUB_OFFLINE=1[/]: downloads are off; set HF_HUB_OFFLINE=0 to fetch {names}")
        raise typer.Exit(1)
    try:
        for setting, name, path in prefetch(resolved):
            out.print(f"{setting}: {name} -> {path}")
    except RuntimeError as exc:
        err.print(f"[bold red]download failed[/]: {exc}")
        raise typer.Exit(1) from None


@app.command()
def version() -> None:
    """Print the package version."""
    out.print(llm_pipeline.__version__)


def main() -> None:
    app(prog_name="llm-pipeline")


if __name__ == "__main__":
    sys.exit(main())
