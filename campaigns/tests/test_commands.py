from __future__ import annotations

from datetime import timedelta
from io import StringIO

import pytest
from django.core.management import CommandError, call_command
from django.utils import timezone

from campaigns.models import CampaignRun, Message, Recipient

pytestmark = pytest.mark.django_db


def call(*args: str) -> str:
    out = StringIO()
    call_command(*args, stdout=out, stderr=out)
    return out.getvalue()


def test_launch_campaign_wait_sends_the_run_here_and_shows_progress(
    smtp_server, make_campaign, add_contacts
):
    add_contacts("a@example.test", "b@example.test", "x.user-unknown@example.test")
    make_campaign(name="November news")

    output = call("launch_campaign", "November news", "--wait")

    assert "Audience: 3 recipients, 0 filtered out." in output
    assert "100.0% (3 of 3)" in output
    assert "Completed" in output
    run = CampaignRun.objects.get()
    assert run.status == CampaignRun.Status.COMPLETED
    assert len(smtp_server.handler.delivered) == 2


def test_launch_campaign_finds_a_campaign_by_id(smtp_server, make_campaign, add_contacts):
    add_contacts("a@example.test")
    campaign = make_campaign(name="By id")

    output = call("launch_campaign", str(campaign.pk), "--wait")

    assert f"Run #{CampaignRun.objects.get().pk} of By id started." in output


def test_launch_campaign_refuses_an_unknown_campaign():
    with pytest.raises(CommandError, match="No campaign named or numbered 'Nope'"):
        call("launch_campaign", "Nope")


def test_launch_campaign_says_why_a_campaign_cannot_start(make_campaign):
    campaign = make_campaign(name="Empty")
    campaign.steps.all().delete()

    with pytest.raises(CommandError, match="has no steps"):
        call("launch_campaign", "Empty")


def test_send_due_until_idle_sends_follow_ups_whose_time_has_come(
    smtp_server, make_campaign, add_contacts
):
    add_contacts("a@example.test")
    make_campaign(name="Sequence", steps=3, delay=timedelta(hours=1))
    call("launch_campaign", "Sequence", "--wait")
    assert Recipient.objects.get().status == Recipient.Status.PARTIAL

    Recipient.objects.update(next_step_at=timezone.now() - timedelta(minutes=1))
    output = call("send_due", "--until-idle")

    assert "Sent 1" in output
    assert Message.objects.filter(status="sent").count() == 2
    assert len(smtp_server.handler.delivered) == 2
