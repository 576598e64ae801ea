"""Alerts for the people who run the flywheel: Prefect automations that post to a webhook.

Declared next to the deployments (``prefect --no-prompt deploy --all`` then ``flywheel stack
alerts --webhook URL``), on the Prefect server the deployments live on:

- a round that failed or crashed (flows ``flywheel-round``, ``round-close``,
  ``round-propose``, ``flywheel``);
- a validation gate that failed (task runs ``validate-<dataset>@<version>``, in any flow);
- a round that has not finished within its expected time (a proactive trigger: no
  Completed / Failed / Crashed / Cancelled event within ``expected`` of its Running one).

The notification goes through a saved ``CustomWebhookNotificationBlock`` (JSON
``{"subject": ..., "text": ...}``: what Slack, Teams and most chat webhooks accept).
Declaring again replaces the automations and the block, so it is safe to re-run.
"""

from __future__ import annotations

from datetime import timedelta

ROUND_FLOWS = ("flywheel-round", "round-close", "round-propose", "flywheel")
BLOCK_NAME = "flywheel-alerts"
FINISHED = (
    "prefect.flow-run.Completed",
    "prefect.flow-run.Failed",
    "prefect.flow-run.Crashed",
    "prefect.flow-run.Cancelled",
)
_RUN = "Flow run {{ flow_run.name }} of {{ flow.name }} ({{ flow_run.id }})"


def alert_automations(block_id, expected: timedelta, round_flows: tuple[str, ...] = ROUND_FLOWS) -> list:
    """The three automations (not yet created), notifying through the block ``block_id``."""
    from prefect.automations import Automation, EventTrigger, Posture, SendNotification

    rounds = {"prefect.resource.role": "flow", "prefect.resource.name": list(round_flows)}

    def notify(subject: str, body: str) -> list:
        return [SendNotification(block_document_id=block_id, subject=subject, body=body)]

    return [
        Automation(
            name="flywheel: a round failed",
            description="A round flow run ended Failed or Crashed.",
            trigger=EventTrigger(
                expect={"prefect.flow-run.Failed", "prefect.flow-run.Crashed"},
                match={"prefect.resource.id": "prefect.flow-run.*"},
                match_related=rounds,
                posture=Posture.Reactive,
                threshold=1,
                within=timedelta(0),
            ),
            actions=notify(
                "flywheel: round {{ flow_run.name }} {{ flow_run.state.name }}",
                f"{_RUN} ended {{{{ flow_run.state.name }}}}: {{{{ flow_run.state.message }}}}. "
                "Re-run it: finished work is reused (infra/RUNBOOK.md, 'A flywheel round failed').",
            ),
        ),
        Automation(
            name="flywheel: a validation gate failed",
            description="A validate-<dataset>@<version> task run failed: a dataset did not pass its gate.",
            trigger=EventTrigger(
                expect={"prefect.task-run.Failed"},
                match={"prefect.resource.id": "prefect.task-run.*", "prefect.resource.name": "validate-*"},
                posture=Posture.Reactive,
                threshold=1,
                within=timedelta(0),
            ),
            actions=notify(
                "flywheel: {{ event.resource.name }} failed",
                "Validation gate {{ event.resource.name }} failed in " + _RUN + ": {{ event.payload }}. "
                "See the validate stage's MLflow run (Data Docs) and infra/RUNBOOK.md.",
            ),
        ),
        Automation(
            name="flywheel: a round is late",
            description=f"A round flow run has not finished within {expected} of starting.",
            trigger=EventTrigger(
                after={"prefect.flow-run.Running"},
                expect=set(FINISHED),
                match={"prefect.resource.id": "prefect.flow-run.*"},
                match_related=rounds,
                for_each={"prefect.resource.id"},
                posture=Posture.Proactive,
                threshold=1,
                within=expected,
            ),
            actions=notify(
                "flywheel: a round is late",
                f"A round flow run has not finished within {expected} of starting "
                "({{ event.resource['prefect.resource.id'] }}). Look at its logs in the Prefect UI.",
            ),
        ),
    ]


def declare_alerts(webhook_url: str, expected: timedelta, round_flows: tuple[str, ...] = ROUND_FLOWS) -> list[str]:
    """Save the webhook block and (re)create the automations on the configured Prefect
    server; returns their names."""
    from prefect.blocks.notifications import CustomWebhookNotificationBlock
    from prefect.client.orchestration import get_client

    block = CustomWebhookNotificationBlock(
        name="flywheel",
        url=webhook_url,
        json_data={"subject": "{{subject}}", "text": "{{body}}"},
        allow_private_urls=True,  # an ops webhook is often on the same private network
    )
    block_id = block.save(BLOCK_NAME, overwrite=True)
    automations = alert_automations(block_id, expected, round_flows)
    with get_client(sync_client=True) as client:
        for old in client.read_automations():
            if old.name in {a.name for a in automations}:
                client.delete_automation(old.id)
    for automation in automations:
        automation.create()
    return [a.name for a in automations]
