"""Recovery from a crashed worker: a flow run whose heartbeats stop is marked Crashed, and a Crashed run is
resubmitted with the same parameters, at most RECOVERY_MAX_RESUBMITS times per original run.

Three automations, installed by `make deploy` beside the alerts (flows/alerts.py applies them):
- "llm-pipeline: crash zombie flow runs": proactive; after Running or a heartbeat, neither a heartbeat nor an end state
  within RECOVERY_HEARTBEAT_WINDOW (90 s): the crash-silent-run deployment checks the run and sets it Crashed unless
  it beats again (`crash_if_silent`: heartbeats are events, and while the API is away every run's are lost, so an
  outage longer than the window is silence in every live run at once; a Crashed mark on a live run would revoke its
  deployment slot's lease, which its engine answers by stopping it, and resubmit it beside itself).
- "llm-pipeline: crash runs stuck pending": proactive; after Pending (or Submitting), no start, no return to waiting
  and no end within RECOVERY_PENDING_WINDOW (10 min): the same check, which sets it Crashed unless it leaves Pending
  meanwhile. A worker killed between taking a run and starting its process leaves it Pending, where no heartbeat
  ever comes: without this it stayed Pending for good, listed as running-soon in the UI and never resubmitted.
- "llm-pipeline: resubmit crashed flow runs": reactive on Crashed: runs the resubmit-crashed deployment with the
  crashed run's id.

Workers send a heartbeat every PREFECT_FLOWS_HEARTBEAT_FREQUENCY seconds (the compose stack sets 30, Prefect's
minimum), so the default window is three missed beats. A run marked Crashed frees its deployment's concurrency
slot, and the crash alert (flows/alerts.py) pages as for any Crashed run. A Failed run is never resubmitted: a
failure is the code's own verdict; nor is a child run (a GPU-pool stage), which its parent's stage retry submits
again. A crashed pipeline's stage runs still going are cancelled (their workers stop them): nothing waits for
their result, and one that stalled would hold the GPU from the resubmission. The resubmitted run carries tags
naming the crashed one; it resumes from the stage cache and the QA journal, so completed stages are not recomputed
and completed requests not paid again.
The crashed run's manifest ends "crashed", naming the stage it was in.
"""

from __future__ import annotations

import os
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from prefect import flow
from prefect.client.schemas.objects import State
from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from flows.alerts import GAVE_UP_EVENT, RESUBMITTED_EVENT
from llm_pipeline.health import Window
from llm_pipeline.logging import get_logger
from llm_pipeline.manifest import mark_crashed

log = get_logger("recovery")

RECOVERY_FLOW = "resubmit-crashed"
RECOVERY_DEPLOYMENT = f"{RECOVERY_FLOW}/{RECOVERY_FLOW}"
CONFIRM_FLOW = "crash-silent-run"
CONFIRM_DEPLOYMENT = f"{CONFIRM_FLOW}/{CONFIRM_FLOW}"
HEARTBEAT_EVENT = "prefect.flow-run.heartbeat"
BEAT_LAG_S = 15  # a heartbeat's way into the events table: the client's reconnect, the API, the persister's batch
CONFIRM_POLL_S = 5
ORIGIN_TAG, ATTEMPT_TAG, FROM_TAG = "recovery-origin:", "recovery-attempt:", "resubmitted-from:"
# TimedOut: a Failed-type state with a name and an event of its own (a flow past its timeout, execution.run_timeout):
# an end, not a silence (Prefect refuses the zombie rule's Crashed from a final state anyway)
TERMINAL = ["Completed", "Failed", "TimedOut", "Crashed", "Cancelled"]
PENDING = ["Pending", "Submitting"]  # the Pending-type states a worker sets while it starts a run
# what a run that was Pending goes to when all is well: started, sent back to wait (a slot, a retry), or stopped
LEFT_PENDING = ["Running", "Scheduled", "Late", "AwaitingRetry", "AwaitingConcurrencySlot", "Paused", "Cancelling"]


class RecoverySettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="RECOVERY_", extra="ignore", env_ignore_empty=True)

    heartbeat_window: Window = Field(timedelta(seconds=90), description="no heartbeat this long: Crashed")
    # a start can take minutes on a loaded host (seen: 3.5 min from Submitting to Running on 2 busy cores) or pull
    # an image first: the window is generous, and a run that starts while the check looks is spared
    pending_window: Window = Field(timedelta(minutes=10), description="Pending this long, not started: Crashed")
    max_resubmits: int = Field(1, ge=0, description="resubmissions per original run (0: never)")

    @field_validator("heartbeat_window", "pending_window")
    @classmethod
    def _at_least_ten_seconds(cls, value: timedelta, info: Any) -> timedelta:
        if value < timedelta(seconds=10):
            raise ValueError(f"RECOVERY_{info.field_name.upper()} must be at least 10s (Prefect's proactive minimum)")
        return value


def automation_specs(settings: RecoverySettings) -> list[dict[str, Any]]:
    """The three automations as plain dicts (name, trigger, action kind), as flows/alerts.py installs them."""
    flow_run = {"prefect.resource.id": "prefect.flow-run.*"}
    return [
        {
            "name": "llm-pipeline: crash zombie flow runs",
            "kind": "zombie",
            "trigger": {
                "posture": "Proactive",
                "match": flow_run,
                # deployment runs only: the workers' (and docker-pool containers') heartbeat setting reaches those;
                # a run started by hand against the server beats at Prefect's default, every 180 s
                "match_related": {"prefect.resource.role": "deployment"},
                # from Running too: a run killed before its first heartbeat reached the server is caught as well
                "after": ["prefect.flow-run.Running", HEARTBEAT_EVENT],
                "expect": [HEARTBEAT_EVENT, *(f"prefect.flow-run.{s}" for s in TERMINAL)],
                "for_each": ["prefect.resource.id"],
                "threshold": 1,
                "within": settings.heartbeat_window,
            },
        },
        {
            "name": "llm-pipeline: crash runs stuck pending",
            "kind": "stuck",
            "trigger": {
                "posture": "Proactive",
                "match": flow_run,
                "match_related": {"prefect.resource.role": "deployment"},
                "after": [f"prefect.flow-run.{s}" for s in PENDING],
                "expect": [f"prefect.flow-run.{s}" for s in (*LEFT_PENDING, *TERMINAL)],
                "for_each": ["prefect.resource.id"],
                "threshold": 1,
                "within": settings.pending_window,
            },
        },
        {
            "name": "llm-pipeline: resubmit crashed flow runs",
            "kind": "resubmit",
            "trigger": {
                "posture": "Reactive",
                "match": flow_run,
                "expect": ["prefect.flow-run.Crashed"],
                "for_each": ["prefect.resource.id"],
                "threshold": 1,
                "within": timedelta(0),
            },
        },
    ]


async def recovery_actions(kind: str, settings: RecoverySettings) -> list[Any]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.objects import StateType
    from prefect.events.actions import ChangeFlowRunState, DoNothing, RunDeployment
    from prefect.exceptions import ObjectNotFound

    if kind == "resubmit" and settings.max_resubmits == 0:
        return [DoNothing()]
    # the rules that have the check run: the window each fires on, and the message of the mark without the check
    checked = {"zombie": (settings.heartbeat_window, silent_for), "stuck": (settings.pending_window, stuck_for)}
    window, crashed_message = checked.get(kind, (settings.heartbeat_window, silent_for))
    window_s = int(window.total_seconds())
    name = CONFIRM_DEPLOYMENT if kind in checked else RECOVERY_DEPLOYMENT
    async with get_client() as client:
        try:
            deployment = await client.read_deployment_by_name(name)
        except ObjectNotFound:
            deployment = None
    if deployment is None and kind in checked:
        log.warning("zombie_check_not_installed", reason=f"no deployment {name}: silence alone marks a run Crashed")
        return [ChangeFlowRunState(state=StateType.CRASHED, name="Crashed", message=crashed_message(window_s))]
    if deployment is None:
        log.warning("recovery_not_installed", reason=f"no deployment {name}: run `make deploy`")
        return [DoNothing()]
    # an explicit jinja value renders as a string: Prefect wraps a bare "{{ flow_run.id }}" in `tojson`, which
    # cannot encode a UUID ("Unable to create flow run from deployment: InvalidJinja()")
    run_id = {"__prefect_kind": "jinja", "template": "{{ flow_run.id }}"}
    parameters: dict[str, Any] = {"flow_run_id": run_id}
    if kind == "resubmit":
        parameters["max_resubmits"] = settings.max_resubmits
    else:  # the window the rule fired on, whatever the worker's environment says
        parameters["window_s"] = window_s
    return [RunDeployment(source="selected", deployment_id=deployment.id, parameters=parameters)]


def silent_for(seconds: int) -> str:
    """The Crashed message of a run the zombie rule found dead."""
    return f"no heartbeat for {seconds} s: its worker or process died (marked by llm-pipeline recovery)"


def stuck_for(seconds: int) -> str:
    """The Crashed message of a run the stuck-pending rule found never started."""
    return (
        f"Pending for {seconds} s, never started: its worker died while starting it (marked by llm-pipeline recovery)"
    )


def heartbeat_seconds() -> int:
    """How often deployment runs beat (the stack's PREFECT_FLOWS_HEARTBEAT_FREQUENCY; Prefect's floor is 30 s)."""
    from prefect.settings import get_current_settings

    return max(get_current_settings().flows.heartbeat_frequency or 30, 30)


def last_heartbeat(client: Any, run_id: Any, since: datetime) -> datetime | None:
    """When the run's latest heartbeat that the API has stored was sent, if after `since`."""
    from prefect.events.filters import (
        EventFilter,
        EventNameFilter,
        EventOccurredFilter,
        EventOrder,
        EventResourceFilter,
    )

    page = client.read_events(
        EventFilter(
            occurred=EventOccurredFilter(since=since, until=datetime.now(UTC) + timedelta(minutes=5)),
            event=EventNameFilter(name=[HEARTBEAT_EVENT]),
            resource=EventResourceFilter(id=[f"prefect.flow-run.{run_id}"]),
            order=EventOrder.DESC,
        ),
        limit=1,
    )
    return page.events[0].occurred if page.events else None


@flow(name=CONFIRM_FLOW)
def crash_if_silent(flow_run_id: str, window_s: int = 90) -> State[str]:
    """The zombie rule's verdict, checked before it is carried out: the run is set Crashed only if it sends no
    heartbeat within a heartbeat's period (plus BEAT_LAG_S) from now. Ends Completed with the verdict ("alive",
    "ended" or "crashed") as its result and, with the reason, as its state's message (the UI shows it). For a run
    still Pending (the stuck-pending rule's), leaving Pending within that time is what spares it.

    The rule fires after RECOVERY_HEARTBEAT_WINDOW without a heartbeat, its last one at L: it fired at L + window
    or later, and this runs later still, so a dead run's heartbeats all precede now - window. One after that is a
    live run's: its beats were lost while the API was away (the rule runs in `prefect-services`, which stays up),
    and this runs only once the API is back (a worker cannot pick it up before), within one period of which a live
    run beats again."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.responses import SetStateStatus
    from prefect.states import Completed, Crashed

    def verdict(word: str, why: str, **facts: Any) -> State[str]:
        (log.warning if word == "alive" else log.info)(
            "zombie_check", flow_run=flow_run_id, verdict=word, why=why, **facts
        )
        return Completed(message=f"{word}: {why}", data=word)

    began = datetime.now(UTC)
    newer_than = began - timedelta(seconds=window_s)
    deadline = time.monotonic() + heartbeat_seconds() + BEAT_LAG_S
    pending: str | None = None  # the Pending-type state the run was found in
    with get_client(sync_client=True) as client:
        while True:
            run = client.read_flow_run(flow_run_id)
            if run.state is None or run.state.is_final():
                return verdict("ended", f"{run.name} ended {getattr(run.state, 'name', None)} before the check")
            if run.state.is_pending():
                pending = pending or run.state.name
            elif pending:
                return verdict("alive", f"{run.name} was {pending} for {window_s} s and went {run.state.name}")
            beat = None if pending else last_heartbeat(client, run.id, newer_than)
            if beat is not None:
                why = f"{run.name} was silent for {window_s} s (the API away?) and beat again at {beat.isoformat()}"
                return verdict("alive", why, heartbeat=beat.isoformat())
            if time.monotonic() >= deadline:
                break
            time.sleep(CONFIRM_POLL_S)
        result = client.set_flow_run_state(
            run.id, Crashed(message=stuck_for(window_s) if pending else silent_for(window_s))
        )
    if result.status != SetStateStatus.ACCEPT:  # it ended meanwhile: Prefect keeps its end
        return verdict("ended", f"{run.name} ended while the check waited ({str(result.details)[:120]})")
    waited = round((datetime.now(UTC) - began).total_seconds())
    if pending:
        return verdict("crashed", f"{run.name} was {pending} for {window_s} s and the {waited} s after: Crashed")
    return verdict("crashed", f"{run.name} sent no heartbeat in {window_s} s, nor in the {waited} s after: Crashed")


def _tag_value(tags: list[str], prefix: str) -> str | None:
    return next((t[len(prefix) :] for t in tags if t.startswith(prefix)), None)


@flow(name=RECOVERY_FLOW)
def resubmit_crashed(flow_run_id: str, max_resubmits: int = 1) -> str | None:
    """Resubmit a Crashed deployment run with its parameters, tagged with the run it replaces, unless its
    original has been resubmitted `max_resubmits` times; mark the crashed run's manifest. Returns the new id."""
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        crashed = client.read_flow_run(flow_run_id)
        if crashed.state is None or not crashed.state.is_crashed() or crashed.deployment_id is None:
            log.info("not_resubmitted", flow_run=flow_run_id, reason="not a Crashed deployment run")
            return None
        if crashed.parent_task_run_id is not None:  # a GPU-pool stage's child: its parent's hand-off retries it
            log.info("not_resubmitted", flow_run=crashed.name, reason="a child run: its parent's stage retries it")
            return None
        orphans = cancel_orphaned_stages(client, crashed.id)
        marked = mark_crashed(_output_root(), str(crashed.id)[:8], crashed.state.message or "crashed")
        origin = _tag_value(crashed.tags, ORIGIN_TAG) or str(crashed.id)
        attempt = int(_tag_value(crashed.tags, ATTEMPT_TAG) or 0)
        deployment = client.read_deployment(crashed.deployment_id)
        flow_name = client.read_flow(crashed.flow_id).name
        facts = {
            "crashed": crashed.name,
            "crashed_id": str(crashed.id),
            "deployment": f"{flow_name}/{deployment.name}",
            "reason": crashed.state.message or "",
            "original_id": origin,
            "attempt": attempt + 1,
            "cancelled_stage_runs": orphans,
        }
        if attempt >= max_resubmits:
            log.warning("not_resubmitted", flow_run=crashed.name, origin=origin, reason=f"{attempt} resubmits done")
            summary = (
                f"crashed again after {attempt} resubmission(s) of {origin}; not resubmitted "
                f"(RECOVERY_MAX_RESUBMITS={max_resubmits}): a person's turn"
            )
            _emit(GAVE_UP_EVENT, crashed.id, None, {**facts, "summary": summary})
            return None
        kept = [t for t in crashed.tags if not t.startswith((ORIGIN_TAG, ATTEMPT_TAG, FROM_TAG))]
        resubmitted = client.create_flow_run_from_deployment(
            crashed.deployment_id,
            parameters=crashed.parameters,
            tags=[*kept, f"{ORIGIN_TAG}{origin}", f"{ATTEMPT_TAG}{attempt + 1}", f"{FROM_TAG}{crashed.id}"],
        )
    summary = f"crashed, resubmitted as {resubmitted.name} ({resubmitted.id})"
    _emit(
        RESUBMITTED_EVENT,
        crashed.id,
        resubmitted.id,
        {**facts, "resubmitted_as": resubmitted.name, "resubmitted_id": str(resubmitted.id), "summary": summary},
    )
    log.warning(
        "resubmitted",
        crashed=crashed.name,
        resubmitted_as=resubmitted.name,
        attempt=attempt + 1,
        cancelled_stage_runs=orphans,
        manifest=str(marked) if marked else None,
    )
    return str(resubmitted.id)


def cancel_orphaned_stages(client: Any, crashed_id: Any) -> list[str]:
    """Cancel the stage runs a crashed pipeline handed off and that are still going (a GPU-pool stage): nobody waits
    for their result any more, and a stalled one would keep the GPU and its `gpu-slots` slot from the resubmission's
    own stage for good. Prefect cancels the children of a Cancelled run, not of a Crashed one; their workers kill
    them as for any cancellation. Returns the cancelled runs' names."""
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterParentFlowRunId, FlowRunFilterState
    from prefect.client.schemas.objects import StateType

    from flows.pipeline import cancel_stage_run

    going = [StateType.SCHEDULED, StateType.PENDING, StateType.RUNNING, StateType.PAUSED]
    children = client.read_flow_runs(
        flow_run_filter=FlowRunFilter(
            parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[crashed_id]),
            state=FlowRunFilterState(type={"any_": going}),
        )
    )
    why = f"its pipeline run {crashed_id} crashed: nothing waits for this stage's result"
    return [child.name for child in children if cancel_stage_run(client, child.id, why)]


def _emit(event: str, crashed_id: Any, resubmitted_id: Any, payload: dict[str, Any]) -> None:
    """The event the recovery alert (flows/alerts.py) pages on: about the crashed run, naming its replacement."""
    from prefect.events import emit_event

    related = [{"prefect.resource.id": f"prefect.flow-run.{resubmitted_id}", "prefect.resource.role": "resubmission"}]
    emit_event(
        event,
        resource={"prefect.resource.id": f"prefect.flow-run.{crashed_id}", "prefect.resource.name": payload["crashed"]},
        related=related if resubmitted_id else [],
        payload=payload,
    )


def _output_root() -> Path:
    return Path(os.environ.get("PIPELINE__OUTPUT_PATH", "outputs"))
