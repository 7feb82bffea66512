"""The orchestration side of the `llm-pipeline` command: the commands that need Prefect (`run` in embedded mode,
`trigger` and `health` against a server), added to the library's app (llm_pipeline.cli: `validate`, `version`),
so the installed command offers all of them with the same options and exit codes.

Exit codes: 0 success, 1 the run failed (or, for health, a threshold is crossed), 2 bad input or a Prefect API that
could not be asked (nothing started).
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
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


CLI_CLIENT_RETRIES = 2
FLOW = "llm-pipeline"  # the flow every deployment of `make deploy` runs (flows/pipeline.py)


def _api_url() -> str:
    from prefect.settings import PREFECT_API_URL

    return PREFECT_API_URL.value() or "the embedded server"


def _api_failure(exc: BaseException) -> str | None:
    """Why the Prefect API could not be asked, when `exc` says that (no server there, a proxy's error page, a
    server that is not Prefect's); None for any other error."""
    import httpx
    import pydantic
    from prefect.exceptions import PrefectHTTPStatusError

    if isinstance(exc, PrefectHTTPStatusError):
        response = exc.response
        kind = response.headers.get("content-type", "no content type").split(";")[0]
        return f"it answered {response.status_code} {response.reason_phrase} ({kind}) to {response.request.url.path}"
    if isinstance(exc, httpx.HTTPError):
        return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    if isinstance(exc, json.JSONDecodeError | pydantic.ValidationError):
        return f"its reply is not the Prefect API's ({type(exc).__name__}): is PREFECT_API_URL the API, ending in /api?"
    return None


@contextmanager
def _few_client_retries() -> Iterator[None]:
    from prefect.settings import PREFECT_CLIENT_MAX_RETRIES, temporary_settings

    retries = {} if "PREFECT_CLIENT_MAX_RETRIES" in os.environ else {PREFECT_CLIENT_MAX_RETRIES: CLI_CLIENT_RETRIES}
    with temporary_settings(updates=retries):
        yield


@contextmanager
def _asking_the_api(what: str) -> Iterator[None]:
    """A command that talks to the server fails with one line naming the server and why, exit 2, not a traceback
    (nothing was started, or nothing could be read). Prefect's client retries a 502 or 503 five times with growing
    pauses, over two minutes of silence at a terminal; here twice (PREFECT_CLIENT_MAX_RETRIES, when not set)."""
    try:
        with _few_client_retries():
            yield
    except Exception as exc:
        why = _api_failure(exc)
        if why is None:
            raise
        err.print(f"[bold red]cannot {what}[/]: the Prefect API at {_api_url()} could not be asked: {why}")
        err.print(f"  {_api_hint(exc)}")
        raise typer.Exit(2) from None


def _api_hint(exc: BaseException) -> str:
    from prefect.exceptions import PrefectHTTPStatusError

    if isinstance(exc, PrefectHTTPStatusError) and exc.response.status_code in (401, 403):
        return (
            "the stack's API asks for a login: set PREFECT_API_AUTH_STRING to PREFECT_SERVER_API_AUTH_STRING from "
            ".env, or run the command in the stack (`docker compose run --rm deployer llm-pipeline ...`)"
        )
    return "is the stack up (`make ps`), and PREFECT_API_URL its address (http://HOST:4200/api)?"


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
    """Start a run of a deployment on the server at PREFECT_API_URL (a bare DEPLOYMENT is one of the llm-pipeline
    flow's); with --wait, exit 0 only if it Completed."""
    from prefect.settings import PREFECT_API_URL

    if not PREFECT_API_URL.value():
        # without it Prefect would start a temporary server of its own, which has no deployments and no workers
        err.print("[bold red]cannot trigger[/]: PREFECT_API_URL is not set; it names the server the deployments are on")
        err.print("  e.g. PREFECT_API_URL=http://127.0.0.1:4200/api (the stack of `make up`), or `make run-test`")
        raise typer.Exit(2)
    if "/" not in deployment:
        deployment = f"{FLOW}/{deployment}"
    parameters = parse_overrides(param) if param else None
    from prefect.deployments import run_deployment
    from prefect.exceptions import ObjectNotFound

    with _asking_the_api(f"trigger {deployment}"):
        try:
            flow_run = run_deployment(deployment, parameters=parameters, timeout=0)
        except ObjectNotFound:
            err.print(f"[bold red]no deployment named {deployment}[/] on {_api_url()}: run `make deploy` first")
            raise typer.Exit(2) from None
        except ValueError as exc:
            if _api_failure(exc):  # a reply that is not JSON is a ValueError too
                raise
            err.print(f"[bold red]{exc}[/]")
            raise typer.Exit(2) from None
    out.print(f"started flow run {flow_run.name} ({flow_run.id}) of {deployment}")
    if wait:
        state = _follow(flow_run.id, timeout)
        if not state.is_completed():
            raise typer.Exit(1)


def _follow(flow_run_id: Any, timeout: float) -> Any:
    """The run's final state, its changes printed as they come. The API going away meanwhile (a server restart)
    is waited out up to the timeout: the run goes on without this command, so its end is what is worth waiting for."""
    from prefect.client.orchestration import get_client

    deadline = time.monotonic() + timeout
    last, lost = None, None
    with _few_client_retries(), get_client(sync_client=True) as client:
        while True:
            try:
                state = client.read_flow_run(flow_run_id).state
            except Exception as exc:
                if (why := _api_failure(exc)) is None:
                    raise
                if lost is None:
                    now = time.strftime("%H:%M:%S")
                    err.print(f"  {now} lost the Prefect API ({why}); asking again until it answers")
                lost = why
                state = None
            else:
                if lost is not None:
                    out.print(f"  {time.strftime('%H:%M:%S')} the Prefect API answers again")
                    lost = None
                if state and state.name != last:
                    message = f": {state.message}" if state.message else ""
                    out.print(f"  {time.strftime('%H:%M:%S')} {state.name}{message}")
                    last = state.name
                if state and state.is_final():
                    return state
            if time.monotonic() > deadline:
                where = f"the API unreachable ({lost})" if lost else f"in state {last}"
                err.print(
                    f"[red]timed out[/] after {timeout:.0f}s, {where}; the run may still go on: flow run {flow_run_id}"
                )
                raise typer.Exit(1)
            time.sleep(2)


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
    with _asking_the_api("read the pipeline's health"):
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
    # Prefect's server (the embedded one of `run`, a temporary one of `health` without PREFECT_API_URL) sends usage
    # telemetry to Prefect's service: nothing leaves a team's machine unasked, and where nothing can leave, every
    # run printed an ERROR line for it. PREFECT_SERVER_ANALYTICS_ENABLED=true turns it back on.
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    app(prog_name="llm-pipeline")


if __name__ == "__main__":
    sys.exit(main())
