from __future__ import annotations

import pydoc

import pytest
from django_q.models import Schedule

from campaigns import tasks
from campaigns.models import CampaignRun
from campaigns.services import campaign_launch

pytestmark = pytest.mark.django_db


def test_every_scheduled_function_can_be_found_by_the_workers():
    # django-q2 resolves a task's dotted name with pydoc.locate; None means "not defined".
    schedules = list(Schedule.objects.values_list("func", flat=True))

    assert "campaigns.tasks.dispatch" in schedules
    for func in [*schedules, "campaigns.tasks.run_prepare"]:
        assert pydoc.locate(func) is not None, func


def test_the_prepare_task_prepares_the_run_and_sends_it(smtp_server, make_campaign, add_contacts):
    add_contacts("a@example.test", "b@example.test")
    run = campaign_launch(campaign=make_campaign(), enqueue=False)

    tasks.run_prepare(run.pk)
    tasks.run_prepare(run.pk)  # a task can run twice: the second finds the work done

    run.refresh_from_db()
    assert run.status == CampaignRun.Status.COMPLETED
    assert len(smtp_server.handler.delivered) == 2


def test_the_dispatch_task_reports_what_it_did(smtp_server, make_campaign, add_contacts):
    from campaigns.services import run_prepare

    add_contacts("a@example.test")
    run_prepare(run=campaign_launch(campaign=make_campaign(), enqueue=False))

    assert tasks.dispatch() == {"claimed": 1, "sent": 1, "follow_ups": 0}
