"""Launch, pause, resume, terminate, preview and test email from the admin: POST only, and
refused on the server to anyone without campaigns.launch_campaign."""

from __future__ import annotations

import pytest
from django.urls import reverse

from campaigns.models import Campaign, CampaignRun, Message
from campaigns.services import campaign_launch, run_prepare

pytestmark = pytest.mark.django_db


def url(name: str, pk: int) -> str:
    return reverse(f"admin:campaigns_{name}", args=[pk])


def test_a_manager_launches_a_run_from_the_campaign_page(
    manager_client, make_campaign, add_contacts
):
    add_contacts("a@example.test")
    campaign = make_campaign()

    page = manager_client.get(url("campaign_change", campaign.pk))
    assert b"Launch a run" in page.content
    response = manager_client.post(url("campaign_launch", campaign.pk))

    run = CampaignRun.objects.get()
    assert response.status_code == 302
    assert response["Location"] == url("campaignrun_change", run.pk)
    assert run.started_by.username == "manager"
    campaign.refresh_from_db()
    assert campaign.state == Campaign.State.ACTIVE


@pytest.mark.parametrize("action", ["campaign_launch", "campaign_pause", "campaign_resume"])
def test_campaign_controls_refuse_get(manager_client, make_campaign, action):
    campaign = make_campaign()

    assert manager_client.get(url(action, campaign.pk)).status_code == 405
    assert not CampaignRun.objects.exists()


@pytest.mark.parametrize("who", ["staff_client", "support_client"])
@pytest.mark.parametrize("action", ["campaign_launch", "campaign_pause", "campaign_resume"])
def test_campaign_controls_are_refused_without_the_permission(
    request, make_campaign, add_contacts, who, action
):
    client = request.getfixturevalue(who)
    add_contacts("a@example.test")
    campaign = make_campaign()

    assert client.post(url(action, campaign.pk)).status_code == 403
    assert not CampaignRun.objects.exists()
    page = client.get(url("campaign_change", campaign.pk))
    assert b"Launch a run" not in page.content


def test_pause_and_resume_from_the_campaign_page(manager_client, make_campaign, add_contacts):
    add_contacts("a@example.test")
    campaign = make_campaign()
    run = run_prepare(run=campaign_launch(campaign=campaign, enqueue=False))

    manager_client.post(url("campaign_pause", campaign.pk))
    run.refresh_from_db()
    assert run.status == CampaignRun.Status.PAUSED
    assert b"Resume" in manager_client.get(url("campaign_change", campaign.pk)).content

    manager_client.post(url("campaign_resume", campaign.pk))
    run.refresh_from_db()
    assert run.status == CampaignRun.Status.RUNNING


def test_terminate_from_the_run_page(manager_client, staff_client, make_campaign, add_contacts):
    add_contacts("a@example.test")
    run = run_prepare(run=campaign_launch(campaign=make_campaign(), enqueue=False))

    assert staff_client.post(url("campaignrun_terminate", run.pk)).status_code == 403
    assert manager_client.get(url("campaignrun_terminate", run.pk)).status_code == 405
    manager_client.post(url("campaignrun_terminate", run.pk))

    run.refresh_from_db()
    assert run.status == CampaignRun.Status.TERMINATED
    assert Message.objects.get().status == Message.Status.CANCELLED


def test_the_preview_renders_each_step_for_a_contact_with_its_headers(
    staff_client, make_campaign, add_contacts
):
    [contact] = add_contacts("ada@example.test", first_name="Ada")
    campaign = make_campaign(steps=2)

    page = staff_client.get(url("campaign_preview", campaign.pk) + f"?contact={contact.pk}")

    assert page.status_code == 200
    assert b"Step 1 for Ada" in page.content
    assert b"Step 2 for Ada" in page.content
    assert b"List-Unsubscribe" in page.content
    # Staff may look but not send.
    assert b"Send test email" not in page.content


def test_a_manager_sends_a_test_email_of_a_step(
    manager_client, smtp_server, make_campaign, add_contacts, account
):
    [contact] = add_contacts("ada@example.test", first_name="Ada")
    campaign = make_campaign()
    step = campaign.steps.get()

    response = manager_client.post(
        url("campaign_test_email", campaign.pk),
        {"step": step.pk, "contact": contact.pk, "account": account.pk, "to": "me@example.test"},
        follow=True,
    )

    assert b"Test email of step 1 sent to me@example.test" in response.content
    [delivery] = smtp_server.handler.delivered
    assert delivery.rcpt_to == ["me@example.test"]
    assert b"Subject: [Test] Step 1 for Ada" in delivery.data
    assert not Message.objects.exists()  # outside any run


def test_support_cannot_send_a_test_email(
    support_client, smtp_server, make_campaign, add_contacts, account
):
    [contact] = add_contacts("ada@example.test")
    campaign = make_campaign()

    response = support_client.post(
        url("campaign_test_email", campaign.pk),
        {
            "step": campaign.steps.get().pk,
            "contact": contact.pk,
            "account": account.pk,
            "to": "me@example.test",
        },
    )

    assert response.status_code == 403
    assert smtp_server.handler.delivered == []


def test_the_run_page_shows_progress_and_messages_in_doubt(
    staff_client, make_campaign, add_contacts, settings
):
    from datetime import timedelta

    from django.utils import timezone

    from campaigns.services import messages_claim, runs_refresh

    add_contacts("a@example.test", "b@example.test")
    campaign = make_campaign()
    run = run_prepare(run=campaign_launch(campaign=campaign, enqueue=False))
    # A worker claims both and dies before any outcome is recorded.
    claimed = messages_claim(account=campaign.accounts.get(), limit=2, now=timezone.now())
    assert len(claimed) == 2
    Message.objects.update(
        claimed_at=timezone.now() - settings.LEADCENTER_IN_DOUBT_AFTER - timedelta(minutes=1)
    )

    runs_refresh()
    page = staff_client.get(url("campaignrun_change", run.pk))

    assert b"2 emails</a>: a worker stopped while sending them" in page.content
    assert b"0% (0 of 2)" in page.content
    run.refresh_from_db()
    # Nothing else is left to do: the run completes, the two stay in doubt for a person.
    assert run.status == CampaignRun.Status.COMPLETED
    assert Message.objects.filter(status="sending").count() == 2
