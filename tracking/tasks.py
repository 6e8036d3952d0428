"""django-q2 tasks: thin, idempotent, taking ids (a task can run twice)."""

from __future__ import annotations

import time

from django.conf import settings

from tracking import bounces
from tracking.models import BounceMailbox


def bounces_poll() -> dict[str, int]:
    """The scheduled poll (every 5 minutes): read every active bounce mailbox and record what
    it holds. Runs within a time budget below the task time-out; what is left waits for the
    next poll. Running twice at once records nothing twice (dedupe keys)."""
    deadline = time.monotonic() + settings.Q_CLUSTER["timeout"] * 0.8
    total = bounces.BounceReport()
    for mailbox_id in BounceMailbox.objects.filter(is_active=True).values_list("pk", flat=True):
        if time.monotonic() > deadline:
            break
        total.merge(bounces.mailbox_poll(mailbox_id=mailbox_id, deadline=deadline))
    return total.as_dict()
