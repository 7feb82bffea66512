"""The orchestration side of the `llm-pipeline` command: the commands that need Prefect (`run` in embedded mode,
`trigger` and `health` against a server), added to the library's app (llm_pipeline.cli: `validate`, `version`),
so the installed command offers all of them with the same options and exit codes.

Exit codes: 0 success, 1 the run failed (or, for health, a threshold is crossed), 2 bad input (nothing started).
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from llm_pipeline.cli import ConfigOption, SetOption, app, err, load_or_exit, out, parse_overrides
from llm_pipeline.errors import ConfigError, PipelineError
from llm_pipeline.io import unwritable_folder


@app.command()
def run(config: ConfigOption = Path("configs/test.yaml"), set_: SetOption = None) -> None:
    """Run every stage in Prefect's embedded mode (no server needed) and print where the report is."""
    try:
        overrides = parse_overrides(set_)
    except ConfigError as exc:
        err.print(f"[bold red]config error[/]: {exc}")
        raise typer.Exit(2) from None
    resolved = load_or_exit(config, overrides)  # fail before Prefect starts anything
    if problem := unwritable_folder(resolved.output_path.resolve()):
        err.print(f"[bold red]config error[/] in {config}:")
        err.print(f"  [bold]output_path[/]: the run's outputs cannot be written there ({problem})")
        raise typer.Exit(2)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    # Prefect waits 20 s for its embedded server to answer, then fails the run ("Timed out while attempting to
    # connect to ephemeral Prefect API server"): seen on a busy 2-core machine (the test suite's). A first run on a
    # small machine should wait, not fail.
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
    from flows.pipeline import llm_pipeline as pipeline_flow  # after the environment above: it imports Prefect

    try:
        result = pipeline_flow(config_path=str(config), overrides=overrides or None)
    except PipelineError as exc:
        err.print(f"[bold red]pipeline failed[/]: {exc}")
        raise typer.Exit(1) from None
    except Exception as exc:  # noqa: BLE001 - any failure ends the run with its message, not a traceback wall
        err.print(f"[bold red]pipeline failed[/]: {type(exc).__name__}: {exc}")
        raise typer.Exit(1) from None
    _print_summary(result)


def _api_url() -> str:
    from prefect.settings import PREFECT_API_URL

    return PREFECT_API_URL.value() or "the embedded server"


def _print_summary(result: dict[str, Any]) -> None:
    table = Table(title=f"run {result['run_id']}", show_lines=False)
    table.add_column("stage")
    table.add_column("cached")
    table.add_column("counts")
    for stage, counts in result["stages"].items():
        shown = ", ".join(f"{k}={v}" for k, v in counts.items() if "." not in k)
        table.add_row(stage, "yes" if stage in result["cached"] else "", shown)
    out.print(table)
    summary = json.loads(Path(result["summary"]).read_text())
    for candidate, scores in summary["evaluation"].items():
        if "error" in scores:
            out.print(f"  {candidate}: [red]failed[/] {scores['error']}")
        else:
            shown = ", ".join(f"{k}={v:.3f}" for k, v in scores.items() if isinstance(v, float))
            out.print(f"  {candidate}: {shown}")
    out.print(f"report:  {result['report']}")
    out.print(f"summary: {result['summary']}")


@app.command()
def trigger(
    deployment: Annotated[str, typer.Argument(help="FLOW/DEPLOYMENT, e.g. llm-pipeline/test-pipeline.")],
    wait: Annotated[bool, typer.Option(help="Follow the run to a final state.")] = True,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for a final state.")] = 1800,
    param: Annotated[list[str] | None, typer.Option("--param", help="A parameter: key=value (YAML).")] = None,
) -> None:
    """Start a run of a deployment on the server at PREFECT_API_URL; with --wait, exit 0 only if it Completed."""

    from prefect.deployments import run_deployment
    from prefect.exceptions import ObjectNotFound

    parameters = parse_overrides(param) if param else None
    try:
        flow_run = run_deployment(deployment, parameters=parameters, timeout=0)
    except ObjectNotFound:
        err.print(f"[bold red]no deployment named {deployment}[/] on {_api_url()}: run `make deploy` first")
        raise typer.Exit(2) from None
    except ValueError as exc:
        err.print(f"[bold red]{exc}[/]")
        raise typer.Exit(2) from None
    out.print(f"started flow run {flow_run.name} ({flow_run.id}) of {deployment}")
    if not wait:
        return
    from prefect.client.orchestration import get_client

    deadline = time.monotonic() + timeout
    last = None
    with get_client(sync_client=True) as client:
        while True:
            flow_run = client.read_flow_run(flow_run.id)
            state = flow_run.state
            if state and state.name != last:
                message = f": {state.message}" if state.message else ""
                out.print(f"  {time.strftime('%H:%M:%S')} {state.name}{message}")
                last = state.name
            if state and state.is_final():
                break
            if time.monotonic() > deadline:
                err.print(f"[red]timed out[/] after {timeout:.0f}s in state {last}")
                raise typer.Exit(1)
            time.sleep(2)
    if not state.is_completed():
        raise typer.Exit(1)


@app.command()
def health(
    window: Annotated[str, typer.Option(help="How far back: 7d, 24h, 90m.")] = "7d",
    min_success: Annotated[float, typer.Option(help="Lowest healthy success rate.")] = 0.95,
    max_error: Annotated[float, typer.Option(help="Highest healthy error rate.")] = 0.05,
    max_duration: Annotated[str, typer.Option(help="Longest healthy run.")] = "2h",
    max_queue: Annotated[str, typer.Option(help="Longest healthy wait from expected to actual start.")] = "30m",
    max_resource: Annotated[float, typer.Option(help="Highest healthy CPU, memory or GPU use, %.")] = 80.0,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """Success and error rates, run durations, queue times and resource use (CPU mean, memory peak, GPU
    utilisation mean, GPU memory peak, sampled during stages) per deployment over a window, against thresholds
    (the spec's by default) from the Prefect API (PREFECT_API_URL). Exit 1 when one is crossed."""
    from flows.health import gpu_slot_status, pipeline_health, pool_status
    from llm_pipeline.health import Thresholds, parse_window

    try:
        thresholds = Thresholds(
            min_success, max_error, parse_window(max_duration), parse_window(max_queue), max_resource
        )
        span = parse_window(window)
    except ValueError as exc:
        err.print(f"[bold red]error[/]: {exc}")
        raise typer.Exit(2) from None
    report = pipeline_health(span, thresholds)
    pools, slots = pool_status(), gpu_slot_status()
    unhealthy = [h for h in report if h.breaches]
    if as_json:
        deployments = [h.as_dict() for h in report]
        out.print_json(json.dumps({"window": window, "deployments": deployments, "pools": pools, "gpu_slots": slots}))
    else:
        _print_pools(pools)
        _print_gpu_slots(slots)
        table = Table(title=f"pipeline health, last {window}")
        for column in (
            "deployment",
            "runs",
            "success",
            "errors",
            "duration mean/max s",
            "queue mean/max s",
            "CPU/mem/GPU/GPU mem %",
            "breaches",
        ):
            table.add_column(column)

        def pct(value: float | None) -> str:
            return "-" if value is None else f"{value:.0%}"

        def pair(a: float | None, b: float | None) -> str:
            return "-" if a is None else f"{a:.1f} / {b:.1f}"

        for h in report:
            table.add_row(
                h.deployment,
                str(h.runs),
                pct(h.success_rate),
                pct(h.error_rate),
                pair(h.mean_duration_s, h.max_duration_s),
                pair(h.mean_queue_s, h.max_queue_s),
                " / ".join(
                    "-" if v is None else f"{v:.0f}"
                    for v in (h.cpu_mean_pct, h.memory_max_pct, h.gpu_util_mean_pct, h.gpu_memory_max_pct)
                ),
                "; ".join(h.breaches) or "ok",
            )
        out.print(table)
        if not report:
            out.print(f"no flow runs in the last {window}")
    raise typer.Exit(1 if unhealthy else 0)


def _print_pools(pools: list[dict[str, Any]]) -> None:
    """Workers per pool: online as Prefect sees them, and the autoscaler's replicas and last decision."""
    table = Table(title="workers per pool")
    for column in ("pool", "online", "replicas (draining)", "demand / capacity", "utilization", "min..max", "last"):
        table.add_column(column)
    for pool in pools:
        scaled = pool.get("autoscaler") or {}
        level = scaled.get("utilization")
        table.add_row(
            pool["pool"],
            str(pool["workers_online"]),
            f"{scaled['replicas']} ({scaled.get('draining', 0)})" if "replicas" in scaled else "not scaled",
            f"{scaled['demand']} / {scaled['capacity']}" if "demand" in scaled else "-",
            "-" if level is None else f"{level:.0%}",
            f"{scaled['min']}..{scaled['max']}" if "min" in scaled else "-",
            (scaled.get("last_decision") or {}).get("message") or scaled.get("error") or scaled.get("note") or "-",
        )
    out.print(table)


def _print_gpu_slots(slots: dict[str, int] | None) -> None:
    """The GPU stages' slots: counted, and the runs that could hold them (more counted than that: unheld)."""
    if slots is None:
        out.print("gpu-slots: no such limit (`make deploy` makes it)")
        return
    unheld = slots["counted"] - slots["holders"]
    line = (
        f"gpu-slots: {slots['counted']} of {slots['limit']} counted; GPU-pool runs Running or Cancelling: "
        f"{slots['holders']}"
    )
    if unheld > 0:
        line += (
            f"; [bold red]{unheld} unheld[/] (a lost lease: the autoscaler gives it back after "
            'SCALING_SLOT_AUDIT_GRACE; README, "When a part of the stack dies")'
        )
    out.print(line)


def main() -> None:
    app(prog_name="llm-pipeline")


if __name__ == "__main__":
    sys.exit(main())
