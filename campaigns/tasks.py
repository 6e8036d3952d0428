"""django-q2 tasks: thin, idempotent, taking ids (a task can run twice)."""

from __future__ import annotations

import time

from django.conf import settings

from campaigns import services
from campaigns.models import CampaignRun


def run_prepare(run_id: int) -> None:
    run = CampaignRun.objects.select_related("campaign").filter(pk=run_id).first()
    if run is None:
        return
    try:
        services.run_prepare(run=run)
    except Exception as exc:
        services.run_fail(run=run, error=f"Preparing the audience failed: {exc}")
        raise
    dispatch()


def dispatch() -> dict[str, int]:
    """The scheduled dispatch: sends what is due, within a time budget below the task
    time-out so the cluster never hands the same dispatch to a second worker."""
    deadline = time.monotonic() + settings.Q_CLUSTER["timeout"] * 0.8
    report = services.dispatch_due(deadline=deadline)
    return {"claimed": report.claimed, "sent": report.sent, "follow_ups": report.follow_ups}
