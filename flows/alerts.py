"""Alerts as code: Prefect automations that page someone, and the blocks they send through. `make deploy`
applies them after the deployments; applying again changes nothing (automations and blocks are found by name
and updated in place; ours that the spec no longer lists are deleted).

    python -m flows.alerts             # against PREFECT_API_URL, targets from the environment (.env)

| automation                                  | trigger                                                      |
| llm-pipeline: flow run failed or crashed    | reactive: Failed (TimedOut too), Crashed; one message per deployment |
|                                             | per cooldown                                                 |
| llm-pipeline: flow run running too long     | proactive: Running and no end state within ALERT_MAX_RUNNING (2 h) |
| llm-pipeline: flow run waiting too long     | proactive: Late or Pending, not Running in ALERT_MAX_QUEUE (30 min) |
| llm-pipeline: health threshold crossed      | reactive: the health-check flow's `llm-pipeline.health.breached` event |
| llm-pipeline: crashed run resubmitted       | reactive: flows/recovery.py's "crashed, resubmitted as ..." or    |
|                                             | "crashed again ... not resubmitted" (a person's turn); no cooldown  |

Targets, each optional (ALERT_* in .env): a Slack incoming webhook, a generic JSON webhook, email over SMTP.
Each automation sends to every configured target; with none configured they are installed with no action (the
UI's Automations and Events pages still show them firing) and a warning says so.

The cooldown is Prefect's own trigger window: a reactive trigger with threshold 1 and `within` = cooldown fires
on the first event, then ignores the same key's events until the window ends, so a storm of failures of one
deployment sends one message. The queue rule starts counting when the server marks a run Late (about 15 s after
its scheduled time, PREFECT_API_SERVICES_LATE_RUNS_AFTER_SECONDS) or when a worker takes it (Pending).
"""

from __future__ import annotations

import asyncio
import json
from datetime import timedelta
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from llm_pipeline.health import Window

if TYPE_CHECKING:
    from flows.recovery import RecoverySettings

PREFIX = "llm-pipeline: "
SLACK_BLOCK = "llm-pipeline-alerts-slack"
WEBHOOK_BLOCK = "llm-pipeline-alerts-webhook"
EMAIL_BLOCK = "llm-pipeline-alerts-email"
HEALTH_EVENT = "llm-pipeline.health.breached"
RESUBMITTED_EVENT = "llm-pipeline.run.resubmitted"  # flows/recovery.py emits these two (it imports them from here)
GAVE_UP_EVENT = "llm-pipeline.run.not-resubmitted"

# TimedOut is a Failed-type state with a name (and an event) of its own: a run past execution.run_timeout
END_STATES = [
    *("Completed", "Failed", "TimedOut", "Crashed", "Cancelled", "Cancelling"),
    *("Paused", "Suspended", "AwaitingRetry"),
]


class AlertSettings(BaseSettings):
    """Alert targets and windows from the environment (ALERT_*); a bad value fails naming the variable."""

    model_config = SettingsConfigDict(env_prefix="ALERT_", extra="ignore", env_ignore_empty=True)

    slack_webhook_url: SecretStr | None = None
    webhook_url: SecretStr | None = None
    smtp_host: str | None = None
    smtp_port: int = 587
    smtp_security: Literal["starttls", "ssl", "none"] = "starttls"
    smtp_user: str | None = None
    smtp_password: SecretStr | None = None
    email_from: str | None = None
    email_to: str | None = Field(default=None, description="comma-separated recipients")
    cooldown: Window = timedelta(minutes=15)  # 30m, 2h, 7d; a bare number is seconds
    max_running: Window = timedelta(hours=2)
    max_queue: Window = timedelta(minutes=30)

    @model_validator(mode="after")
    def _email_is_complete(self) -> AlertSettings:
        if self.smtp_host and not (self.email_from and self.recipients()):
            missing = "ALERT_EMAIL_FROM" if not self.email_from else "ALERT_EMAIL_TO"
            raise ValueError(f"{missing} is required when ALERT_SMTP_HOST is set")
        for name in ("max_running", "max_queue"):
            if getattr(self, name) < timedelta(seconds=10):
                raise ValueError(f"ALERT_{name.upper()} must be at least 10s (Prefect's proactive minimum)")
        return self

    def recipients(self) -> list[str]:
        return [a.strip() for a in (self.email_to or "").split(",") if a.strip()]

    def targets(self) -> list[str]:
        return [
            name
            for name, on in (
                ("slack", self.slack_webhook_url),
                ("webhook", self.webhook_url),
                ("email", self.smtp_host),
            )
            if on
        ]


# --- message templates (Jinja, rendered by the server with the run, its deployment and flow) ------------------
_DEPLOYMENT = "{{ (flow.name ~ '/' ~ deployment.name) if deployment else '(no deployment)' }}"
_RUN_FACTS = {
    "failed": "{{ flow_run.state.name }}: {{ flow_run.state.message }}",
    "running": "still {{ flow_run.state.name }} after {{ flow_run.estimated_run_time|humanize_precisedelta }}",
    "waiting": "{{ flow_run.state.name }}, {{ flow_run.estimated_start_time_delta|humanize_precisedelta }} past its "
    "scheduled start",
}
_RUN_TITLES = {
    "failed": "flow run {{ flow_run.state.name }}",
    "running": "flow run running too long",
    "waiting": "flow run waiting too long",
}


def _run_json(kind: str) -> str:
    fields = {
        "alert": f'"{kind}"',
        "deployment": "{{ (" + _DEPLOYMENT[3:-3] + ")|tojson }}",
        "flow_run": "{{ flow_run.name|tojson }}",
        "flow_run_id": '"{{ flow_run.id }}"',
        "state": "{{ flow_run.state.name|tojson }}",
        "message": "{{ flow_run.state.message|tojson }}",
        "duration_s": "{{ flow_run.estimated_run_time.total_seconds()|round(1) }}",
        "queue_s": "{{ flow_run.estimated_start_time_delta.total_seconds()|round(1) }}",
        "expected_start": '"{{ flow_run.expected_start_time }}"',
        "url": "{{ (flow_run|ui_url)|tojson }}",
    }
    return "{" + ", ".join(f'"{k}": {v}' for k, v in fields.items()) + "}"


def _run_text(kind: str) -> tuple[str, str]:
    subject = f"[llm-pipeline] {_RUN_TITLES[kind]}: {_DEPLOYMENT}"
    body = (
        f"{_RUN_TITLES[kind]}\n"
        f"deployment: {_DEPLOYMENT}\n"
        "flow run: {{ flow_run.name }} ({{ flow_run.id }})\n"
        f"state: {_RUN_FACTS[kind]}\n"
        "duration: {{ flow_run.estimated_run_time|humanize_precisedelta }}\n"
        "queue time: {{ flow_run.estimated_start_time_delta|humanize_precisedelta }}\n"
        "scheduled for: {{ flow_run.expected_start_time }}\n"
        "link: {{ flow_run|ui_url }}\n"
    )
    return subject, body


def _slack(subject: str, body: str) -> str:
    return "{% set text %}*" + subject + "*\n" + body + "{% endset %}" + '{"text": {{ text|tojson }}}'


_HEALTH_SUBJECT = "[llm-pipeline] health threshold crossed: {{ event.payload.deployment }}"
_HEALTH_BODY = (
    "health threshold crossed\n"
    "deployment: {{ event.payload.deployment }}\n"
    "window: {{ event.payload.window }}\n"
    "breaches: {{ event.payload.breaches|join('; ') }}\n"
    "figures: {{ event.payload.figures }}\n"
)
_HEALTH_JSON = (
    '{"alert": "health", "deployment": {{ event.payload.deployment|tojson }}, '
    '"window": {{ event.payload.window|tojson }}, "breaches": {{ event.payload.breaches|tojson }}, '
    '"figures": {{ event.payload.figures|tojson }}}'
)


# The recovery events carry their facts (flows/recovery.py): one crash, one message, with no cooldown, so a run that
# crashes again within the failure alert's cooldown still says so.
_RECOVERY_SUBJECT = "[llm-pipeline] {{ event.payload.crashed }} {{ event.payload.summary }}"
_RECOVERY_BODY = (
    "flow run {{ event.payload.crashed }} ({{ event.payload.crashed_id }}) {{ event.payload.summary }}\n"
    "deployment: {{ event.payload.deployment }}\n"
    "why: {{ event.payload.reason }}\n"
    "original run: {{ event.payload.original_id }}, resubmission {{ event.payload.attempt }}\n"
)
_RECOVERY_JSON = (
    '{"alert": "recovery", "event": {{ event.event|tojson }}, "deployment": {{ event.payload.deployment|tojson }}, '
    '"flow_run": {{ event.payload.crashed|tojson }}, "flow_run_id": {{ event.payload.crashed_id|tojson }}, '
    '"message": {{ event.payload.summary|tojson }}, "reason": {{ event.payload.reason|tojson }}, '
    '"resubmitted_id": {{ (event.payload.resubmitted_id or none)|tojson }}, '
    '"original_id": {{ event.payload.original_id|tojson }}}'
)


def _messages(kind: str) -> dict[str, str]:
    """The templates one alert kind sends: email subject and body, Slack's payload, the generic webhook's."""
    if kind == "health":
        subject, body, webhook = _HEALTH_SUBJECT, _HEALTH_BODY, _HEALTH_JSON
    elif kind == "recovery":
        subject, body, webhook = _RECOVERY_SUBJECT, _RECOVERY_BODY, _RECOVERY_JSON
    else:
        (subject, body), webhook = _run_text(kind), _run_json(kind)
    return {"subject": subject, "body": body, "slack": _slack(subject, body), "webhook": webhook}


def automation_specs(settings: AlertSettings) -> list[dict[str, Any]]:
    """The automations as plain dicts (name, trigger, message kind); `apply` turns them into Prefect objects."""
    flow_run = {"prefect.resource.id": "prefect.flow-run.*"}
    return [
        {
            "name": PREFIX + "flow run failed or crashed",
            "kind": "failed",
            "trigger": {
                "posture": "Reactive",
                "match": flow_run,
                "expect": ["prefect.flow-run.Failed", "prefect.flow-run.TimedOut", "prefect.flow-run.Crashed"],
                "for_each": ["related:deployment:prefect.resource.id"],
                "threshold": 1,
                "within": settings.cooldown,
            },
        },
        {
            "name": PREFIX + "flow run running too long",
            "kind": "running",
            "trigger": {
                "posture": "Proactive",
                "match": flow_run,
                "after": ["prefect.flow-run.Running", "prefect.flow-run.Retrying"],
                "expect": [f"prefect.flow-run.{s}" for s in END_STATES],
                "for_each": ["prefect.resource.id"],
                "threshold": 1,
                "within": settings.max_running,
            },
        },
        {
            "name": PREFIX + "flow run waiting too long",
            "kind": "waiting",
            "trigger": {
                "posture": "Proactive",
                "match": flow_run,
                "after": ["prefect.flow-run.Late", "prefect.flow-run.Pending"],
                "expect": [f"prefect.flow-run.{s}" for s in ["Running", *END_STATES]],
                "for_each": ["prefect.resource.id"],
                "threshold": 1,
                "within": settings.max_queue,
            },
        },
        {
            "name": PREFIX + "health threshold crossed",
            "kind": "health",
            "trigger": {
                "posture": "Reactive",
                "match": {"prefect.resource.id": "llm-pipeline.health.*"},
                "expect": [HEALTH_EVENT],
                "for_each": ["prefect.resource.id"],
                "threshold": 1,
                "within": settings.cooldown,
            },
        },
        {
            "name": PREFIX + "crashed run resubmitted",
            "kind": "recovery",
            "trigger": {
                "posture": "Reactive",
                "match": {"prefect.resource.id": "prefect.flow-run.*"},
                "expect": [RESUBMITTED_EVENT, GAVE_UP_EVENT],
                "for_each": ["prefect.resource.id"],
                "threshold": 1,
                "within": timedelta(0),
            },
        },
    ]


async def _apply_blocks(settings: AlertSettings) -> dict[str, Any]:
    """Save (or overwrite) one block per configured target; delete ours whose target was removed."""
    from prefect.blocks.webhook import Webhook
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    from flows.notifications import SMTPEmail

    wanted: dict[str, Any] = {}
    for name, url in ((SLACK_BLOCK, settings.slack_webhook_url), (WEBHOOK_BLOCK, settings.webhook_url)):
        if url:
            wanted[name] = Webhook(method="POST", url=url, headers={"Content-Type": "application/json"})
    if settings.smtp_host:
        wanted[EMAIL_BLOCK] = SMTPEmail(
            host=settings.smtp_host,
            port=settings.smtp_port,
            security=settings.smtp_security,
            username=settings.smtp_user,
            password=settings.smtp_password,
            from_address=settings.email_from or "",
            to=settings.recipients(),
            notify_type="failure",
        )
    ids: dict[str, Any] = {}
    for name, block in wanted.items():
        ids[name] = await block.save(name, overwrite=True)
    async with get_client() as client:
        for name, slug in (
            (SLACK_BLOCK, "webhook"),
            (WEBHOOK_BLOCK, "webhook"),
            (EMAIL_BLOCK, SMTPEmail._block_type_slug),
        ):
            if name in wanted:
                continue
            try:
                document = await client.read_block_document_by_name(name, block_type_slug=slug)
            except ObjectNotFound:
                continue
            await client.delete_block_document(document.id)
    return ids


def _actions(kind: str, blocks: dict[str, Any]) -> list[Any]:
    from prefect.events.actions import CallWebhook, DoNothing, SendNotification

    messages = _messages(kind)
    actions: list[Any] = []
    if SLACK_BLOCK in blocks:
        actions.append(CallWebhook(block_document_id=blocks[SLACK_BLOCK], payload=messages["slack"]))
    if WEBHOOK_BLOCK in blocks:
        actions.append(CallWebhook(block_document_id=blocks[WEBHOOK_BLOCK], payload=messages["webhook"]))
    if EMAIL_BLOCK in blocks:
        actions.append(
            SendNotification(block_document_id=blocks[EMAIL_BLOCK], subject=messages["subject"], body=messages["body"])
        )
    return actions or [DoNothing()]


async def apply_alerts(
    settings: AlertSettings | None = None, recovery: RecoverySettings | None = None
) -> dict[str, str]:
    """Create or update every automation; returns {name: "created" | "updated" | "unchanged" | "deleted"}."""
    from prefect.client.orchestration import get_client
    from prefect.events.schemas.automations import AutomationCore, EventTrigger

    from flows.recovery import RecoverySettings, recovery_actions
    from flows.recovery import automation_specs as recovery_specs

    settings = settings or AlertSettings()
    recovery = recovery or RecoverySettings()
    blocks = await _apply_blocks(settings)
    outcome: dict[str, str] = {}
    # flows/recovery.py's automations act (their actions come from there); the alerts page
    specs = [(spec, False) for spec in automation_specs(settings)] + [(spec, True) for spec in recovery_specs(recovery)]
    async with get_client() as client:
        existing = {a.name: a for a in await client.read_automations() if a.name.startswith(PREFIX)}
        for spec, recovering in specs:
            trigger = EventTrigger(**spec["trigger"])
            automation = AutomationCore(
                name=spec["name"],
                description=f"llm-pipeline {'recovery' if recovering else 'alert'} ({spec['kind']}); applied by "
                "`make deploy` (flows/alerts.py)",
                enabled=True,
                trigger=trigger,
                actions=await recovery_actions(spec["kind"], recovery)
                if recovering
                else _actions(spec["kind"], blocks),
            )
            current = existing.pop(spec["name"], None)
            if current is None:
                await client.create_automation(automation)
                outcome[spec["name"]] = "created"
            elif _same(current, automation):
                outcome[spec["name"]] = "unchanged"
            else:
                await client.update_automation(current.id, automation)
                outcome[spec["name"]] = "updated"
        for name, stale in existing.items():
            await client.delete_automation(stale.id)
            outcome[name] = "deleted"
    return outcome


def _same(current: Any, wanted: Any) -> bool:
    keep = {"name", "description", "enabled", "trigger", "actions", "actions_on_trigger", "actions_on_resolve"}

    def shape(automation: Any) -> str:
        data = automation.model_dump(mode="json", include=keep)
        data["trigger"].pop("id", None)
        for name in ("after", "expect", "for_each"):  # sets: their order is not stable
            data["trigger"][name] = sorted(data["trigger"].get(name) or [])
        return json.dumps(data, sort_keys=True)

    return shape(current) == shape(wanted)


def main() -> None:
    settings = AlertSettings()
    targets = settings.targets()
    outcome = asyncio.run(apply_alerts(settings))
    for name, what in outcome.items():
        print(f"alert {what:9} {name}")
    if targets:
        print(f"alert targets: {', '.join(targets)} (cooldown {settings.cooldown}, from ALERT_* in .env)")
    else:
        print(
            "warning: no alert target configured (set ALERT_SLACK_WEBHOOK_URL, ALERT_WEBHOOK_URL or ALERT_SMTP_* "
            "in .env, then `make deploy`); the automations are installed and show in the UI, but send nothing"
        )


if __name__ == "__main__":
    main()
