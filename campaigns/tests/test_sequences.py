"""Follow-ups, pause, resume, terminate, limits and active hours, over a real SMTP server."""

from __future__ import annotations

from datetime import datetime, time, timedelta
from email import message_from_bytes, policy
from zoneinfo import ZoneInfo

import pytest
from django.utils import timezone

from campaigns import selectors
from campaigns.models import Campaign, CampaignRun, Message, Recipient
from campaigns.services import (
    CampaignError,
    campaign_launch,
    campaign_pause,
    campaign_resume,
    dispatch_due,
    run_prepare,
    run_terminate,
)
from leadcenter.factories import SendingAccountFactory
from tracking.models import TrackingEvent
from tracking.services import message_transition

pytestmark = pytest.mark.django_db
S = Message.Status


def launch(campaign: Campaign) -> CampaignRun:
    run = campaign_launch(campaign=campaign, enqueue=False)
    run_prepare(run=run)
    return run


def received(smtp_server) -> list[tuple[str, str]]:
    """(address, subject) of every email the server accepted, in order."""
    out = []
    for delivery in smtp_server.handler.delivered:
        email = message_from_bytes(delivery.data, policy=policy.default)
        out += [(rcpt, email["Subject"]) for rcpt in delivery.rcpt_to]
    return out


def test_a_follow_up_goes_after_its_delay_from_the_same_account_threaded(
    smtp_server, make_campaign, add_contacts, account
):
    other = SendingAccountFactory(name="Other", smtp_port=smtp_server.port)
    add_contacts("ada@example.test", "bob@example.test", first_name="Pat")
    campaign = make_campaign(steps=2, delay=timedelta(days=2), accounts=[account, other])
    run = launch(campaign)
    dispatch_due()
    assert Recipient.objects.filter(status=Recipient.Status.PARTIAL).count() == 2
    assert len(received(smtp_server)) == 2

    dispatch_due()  # the delay has not passed: nothing more goes out
    assert len(received(smtp_server)) == 2
    Recipient.objects.update(next_step_at=timezone.now() - timedelta(seconds=1))
    dispatch_due()

    assert sorted(received(smtp_server)) == [
        ("ada@example.test", "Step 1 for Pat"),
        ("ada@example.test", "Step 2 for Pat"),
        ("bob@example.test", "Step 1 for Pat"),
        ("bob@example.test", "Step 2 for Pat"),
    ]
    for recipient in Recipient.objects.all():
        first, second = recipient.messages.order_by("step__position")
        assert first.account_id == second.account_id == recipient.account_id
        email = next(
            message_from_bytes(d.data, policy=policy.default)
            for d in smtp_server.handler.delivered
            if recipient.email in d.rcpt_to and b"Step 2" in d.data
        )
        assert email["In-Reply-To"] == first.message_id
        assert email["References"] == first.message_id
        assert recipient.status == Recipient.Status.SENT
    run.refresh_from_db()
    assert run.status == CampaignRun.Status.COMPLETED


@pytest.mark.parametrize("event", ["replied", "unsubscribed", "complained"])
def test_no_follow_up_after_a_reply_an_unsubscribe_or_a_complaint(
    smtp_server, make_campaign, add_contacts, event
):
    add_contacts("ada@example.test")
    run = launch(make_campaign(steps=2))
    dispatch_due()
    message = Message.objects.get()
    status = S.REPLIED if event == "replied" else None
    message_transition(message_id=message.pk, event_type=event, source="manual", status=status)

    Recipient.objects.update(next_step_at=timezone.now() - timedelta(seconds=1))
    dispatch_due()

    assert len(received(smtp_server)) == 1
    assert Message.objects.count() == 1
    run.refresh_from_db()
    assert run.status == CampaignRun.Status.COMPLETED


def test_pause_stops_sending_and_resume_sends_each_address_exactly_once(
    smtp_server, make_campaign, add_contacts, settings
):
    settings.LEADCENTER_BATCH_SIZE = 3
    add_contacts(*(f"r{i}@example.test" for i in range(10)))
    campaign = make_campaign()
    run = launch(campaign)
    campaign_pause(campaign=campaign)
    run.refresh_from_db()
    assert run.status == CampaignRun.Status.PAUSED
    dispatch_due()
    assert received(smtp_server) == []  # paused: nothing claimed

    campaign_resume(campaign=campaign)
    dispatch_due()

    addresses = [address for address, _ in received(smtp_server)]
    assert sorted(addresses) == sorted(f"r{i}@example.test" for i in range(10))
    assert len(addresses) == len(set(addresses))
    run.refresh_from_db()
    assert run.status == CampaignRun.Status.COMPLETED
    campaign.refresh_from_db()
    assert campaign.state == Campaign.State.FINISHED


def test_a_pause_mid_batch_gives_the_unsent_claims_back(
    smtp_server, make_campaign, add_contacts, monkeypatch
):
    from campaigns import services
    from campaigns.smtp import SmtpSession

    add_contacts(*(f"r{i}@example.test" for i in range(6)))
    campaign = make_campaign()
    run = launch(campaign)
    real_submit = SmtpSession.submit
    sent_so_far = []

    def submit_then_pause(
        self, envelope_from, recipient, data, key, next_envelope=None, next_ready=False
    ):
        # A person clicks Pause once the second email has gone out (with the third's MAIL,
        # RCPT and DATA behind it: the session closes the connection before its content).
        real_submit(self, envelope_from, recipient, data, key, next_envelope, next_ready)
        sent_so_far.append(recipient)
        if len(sent_so_far) == 2:
            campaign_pause(campaign=campaign)

    monkeypatch.setattr(SmtpSession, "submit", submit_then_pause)
    monkeypatch.setattr(services._RunStatusCache, "ttl", 0.0)

    dispatch_due()

    assert len(received(smtp_server)) == 2
    assert Message.objects.filter(status=S.SENT).count() == 2
    assert Message.objects.filter(status=S.QUEUED).count() == 4
    assert not Message.objects.filter(status=S.SENDING).exists()
    run.refresh_from_db()
    assert run.status == CampaignRun.Status.PAUSED


def test_terminate_cancels_what_has_not_gone_out(smtp_server, make_campaign, add_contacts):
    add_contacts("a@example.test", "b@example.test")
    campaign = make_campaign(steps=2)
    run = launch(campaign)

    cancelled = run_terminate(run=run)

    assert cancelled == 2
    assert set(Message.objects.values_list("status", flat=True)) == {S.CANCELLED}
    assert TrackingEvent.objects.filter(type="cancelled").count() == 2
    dispatch_due()
    assert received(smtp_server) == []
    run.refresh_from_db()
    assert run.status == CampaignRun.Status.TERMINATED
    with pytest.raises(CampaignError):
        run_terminate(run=run)


def test_a_second_launch_while_a_run_is_in_progress_is_refused(make_campaign, add_contacts):
    add_contacts("a@example.test")
    campaign = make_campaign()
    launch(campaign)

    with pytest.raises(CampaignError, match="already has a run in progress"):
        campaign_launch(campaign=campaign, enqueue=False)


def test_the_daily_limit_holds_across_passes_and_restarts(
    smtp_server, make_campaign, add_contacts, account
):
    account.daily_limit = 4
    account.save()
    add_contacts(*(f"r{i}@example.test" for i in range(10)))
    run = launch(make_campaign())

    dispatch_due()
    dispatch_due()  # counted from the database: a second pass (or a restart) adds nothing

    assert len(received(smtp_server)) == 4
    run.refresh_from_db()
    assert run.status == CampaignRun.Status.WAITING  # out of quota until tomorrow
    assert selectors.account_capacity(account, timezone.now()) == 0


def test_the_per_minute_limit_holds(smtp_server, make_campaign, add_contacts, account, monkeypatch):
    account.per_minute_limit = 3
    account.save()
    add_contacts(*(f"r{i}@example.test" for i in range(6)))
    launch(make_campaign())
    real_now = timezone.now
    started = real_now()

    def at(seconds: float) -> None:
        monkeypatch.setattr(
            timezone, "now", lambda: real_now() - started + (started + timedelta(seconds=seconds))
        )

    at(0)
    dispatch_due()
    assert len(received(smtp_server)) == 3
    at(59)  # still within the minute of those three
    dispatch_due()
    assert len(received(smtp_server)) == 3
    at(62)  # a minute (and the second they were claimed in) later
    dispatch_due()
    assert len(received(smtp_server)) == 6
    assert selectors.account_capacity(account, timezone.now()) == 0


def test_nothing_goes_out_outside_active_hours(smtp_server, make_campaign, add_contacts, account):
    now = timezone.now().astimezone(ZoneInfo("Europe/Berlin"))
    account.timezone = "Europe/Berlin"
    account.active_from = (now + timedelta(hours=2)).time().replace(second=0, microsecond=0)
    account.active_until = (now + timedelta(hours=3)).time().replace(second=0, microsecond=0)
    account.save()
    add_contacts("a@example.test")
    run = launch(make_campaign())

    dispatch_due()

    assert received(smtp_server) == []
    run.refresh_from_db()
    assert run.status == CampaignRun.Status.WAITING


@pytest.mark.parametrize(
    ("local_time", "weekdays", "start", "end", "inside"),
    [
        ("2026-11-23 09:30", "12345", time(9), time(17), True),  # Monday morning
        ("2026-11-23 08:59", "12345", time(9), time(17), False),
        ("2026-11-23 17:00", "12345", time(9), time(17), False),
        ("2026-11-28 10:00", "12345", time(9), time(17), False),  # Saturday
        ("2026-11-28 10:00", "1234567", None, None, True),
        ("2026-11-23 23:30", "1234567", time(22), time(6), True),  # across midnight
        ("2026-11-24 05:59", "1234567", time(22), time(6), True),
        ("2026-11-24 06:00", "1234567", time(22), time(6), False),
    ],
)
def test_active_hours_follow_the_account_time_zone(local_time, weekdays, start, end, inside):
    zone = ZoneInfo("America/New_York")
    account = SendingAccountFactory.build(
        timezone="America/New_York", active_weekdays=weekdays, active_from=start, active_until=end
    )
    moment = datetime.strptime(local_time, "%Y-%m-%d %H:%M").replace(tzinfo=zone)

    assert selectors.account_is_within_hours(account, moment.astimezone(ZoneInfo("UTC"))) is inside


def test_a_run_with_email_due_that_no_account_may_send_now_waits_on_the_queue(
    smtp_server, make_campaign, add_contacts, account
):
    add_contacts("a@example.test", "b@example.test")
    account.daily_limit = 1
    account.save()
    run = launch(make_campaign())
    dispatch_due()
    run.refresh_from_db()
    assert run.status == CampaignRun.Status.RUNNING  # it sent one

    dispatch_due()  # the daily limit is used up: the other email waits

    run.refresh_from_db()
    assert run.status == CampaignRun.Status.WAITING
    assert run.get_status_display() == "Waiting on queue"
    account.daily_limit = 10
    account.save()
    dispatch_due()
    run.refresh_from_db()
    assert run.status == CampaignRun.Status.COMPLETED


def test_the_usage_migration_counts_what_the_old_count_saw(account):
    # Today's claims (since midnight in the account's zone) and the last two minutes' per
    # second: what account_capacity counted from the emails before the counters.
    import importlib

    from django.apps import apps

    from campaigns.models import AccountUsage
    from leadcenter.factories import MessageFactory

    migration = importlib.import_module("campaigns.migrations.0014_account_usage")
    now = timezone.now()
    account.per_minute_limit = account.daily_limit = 100
    account.save()
    claimed = [now - timedelta(seconds=5), now - timedelta(seconds=5), now - timedelta(hours=1)]
    claimed.append(selectors.account_day_start(account, now) - timedelta(minutes=1))  # yesterday
    for when in claimed:
        message = MessageFactory(account=account, recipient__account=account)
        Message.objects.filter(pk=message.pk).update(claimed_at=when)

    from types import SimpleNamespace

    from django.db import connection

    migration.backfill(apps, SimpleNamespace(connection=connection))  # what RunPython passes

    assert AccountUsage.objects.get(span="day").claimed == 3
    assert [u.claimed for u in AccountUsage.objects.filter(span="second")] == [2]
    assert selectors.account_capacity(account, now) == 100 - 3
