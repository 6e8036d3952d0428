"""A pass of the sender (account_send) in small batches under real transactions, as a worker
runs it: every message once, and where it stops (a pause, its deadline, its allowance) nothing
more is claimed: what it did not send stays queued, without a claim event or a count against
the account's limits."""

from __future__ import annotations

import threading
import time
from email import message_from_bytes, policy

import psycopg
import pytest
from django.db import connection
from django.utils import timezone

from campaigns import selectors, services
from campaigns.models import AccountUsage, Message
from campaigns.services import campaign_launch, campaign_pause, run_prepare
from tracking.models import TrackingEvent

pytestmark = pytest.mark.django_db(transaction=True)

S = Message.Status
E = TrackingEvent.Type


def prepared(make_campaign, add_contacts, count: int):
    add_contacts(*(f"r{i}@example.test" for i in range(count)))
    campaign = make_campaign(name="Ahead")
    run_prepare(run=campaign_launch(campaign=campaign, enqueue=False))
    return campaign


def after_first_batch(monkeypatch, action) -> None:
    send_batch, calls = services._send_batch, []

    def hooked(*args):
        report = send_batch(*args)
        calls.append(1)
        if len(calls) == 1:
            action()
        return report

    monkeypatch.setattr(services, "_send_batch", hooked)


def statuses() -> dict[str, int]:
    counts: dict[str, int] = {}
    for status in Message.objects.values_list("status", flat=True):
        counts[status] = counts.get(status, 0) + 1
    return counts


def claimed_events() -> int:
    return TrackingEvent.objects.filter(type=E.CLAIMED).count()


def test_a_pass_in_small_batches_sends_every_message_once(smtp_server, make_campaign, add_contacts):
    campaign = prepared(make_campaign, add_contacts, 7)
    account = campaign.accounts.get()

    report = services.account_send(account=account, batch_size=2)

    assert (report.claimed, report.sent) == (7, 7)
    assert statuses() == {S.SENT: 7}
    received = [
        message_from_bytes(d.data, policy=policy.default)["Message-ID"]
        for i in range(7)
        for d in smtp_server.handler.received_by(f"r{i}@example.test")
    ]
    assert sorted(received) == sorted(Message.objects.values_list("message_id", flat=True))
    assert claimed_events() == 7
    day = AccountUsage.objects.get(account=account, span=AccountUsage.Span.DAY)
    assert day.claimed == 7


def test_a_pause_after_a_batch_sends_nothing_more_and_leaves_no_claim(
    smtp_server, make_campaign, add_contacts, monkeypatch
):
    campaign = prepared(make_campaign, add_contacts, 6)
    after_first_batch(monkeypatch, lambda: campaign_pause(campaign=campaign))

    report = services.account_send(account=campaign.accounts.get(), batch_size=2)

    assert report.sent == 2
    assert statuses() == {S.SENT: 2, S.QUEUED: 4}
    assert claimed_events() == 2
    assert AccountUsage.objects.get(span=AccountUsage.Span.DAY).claimed == 2


def test_a_pass_ending_at_its_deadline_gives_its_next_batch_back(
    smtp_server, make_campaign, add_contacts, monkeypatch
):
    campaign = prepared(make_campaign, add_contacts, 6)
    deadline = time.monotonic() + 0.5
    after_first_batch(monkeypatch, lambda: time.sleep(max(0.0, deadline - time.monotonic())))

    report = services.account_send(account=campaign.accounts.get(), batch_size=2, deadline=deadline)

    assert report.sent == 2
    assert statuses() == {S.SENT: 2, S.QUEUED: 4}
    assert claimed_events() == 2


def test_a_pass_stops_at_its_message_allowance_in_the_middle_of_a_batch(
    smtp_server, make_campaign, add_contacts
):
    campaign = prepared(make_campaign, add_contacts, 6)

    report = services.account_send(account=campaign.accounts.get(), batch_size=2, max_messages=3)

    assert (report.claimed, report.sent) == (3, 3)
    assert statuses() == {S.SENT: 3, S.QUEUED: 3}
    assert claimed_events() == 3


@pytest.mark.parametrize("pipeline", [True, False], ids=["pipelined", "one at a time"])
def test_a_pass_counts_each_claim_against_the_limits_and_stops_at_them(
    smtp_server, make_campaign, add_contacts, monkeypatch, pipeline
):
    # One at a time: the claim's transaction without psycopg's pipeline mode, as behind a
    # pooler with prepared statements off (leadcenter.database.in_one_round_trip).
    monkeypatch.setattr(psycopg.Pipeline, "is_supported", classmethod(lambda cls: pipeline))
    campaign = prepared(make_campaign, add_contacts, 7)
    account = campaign.accounts.get()
    account.daily_limit = 5
    account.save(update_fields=["daily_limit"])

    report = services.account_send(account=account, batch_size=2)

    # Batches of 2, 2 and the 1 left of the day's 5, each counted as it was claimed.
    assert (report.claimed, report.sent) == (5, 5)
    assert statuses() == {S.SENT: 5, S.QUEUED: 2}
    usage = AccountUsage.objects.filter(account=account)
    assert usage.get(span=AccountUsage.Span.DAY).claimed == 5
    assert sum(usage.filter(span=AccountUsage.Span.SECOND).values_list("claimed", flat=True)) == 5


def test_a_claim_waits_for_another_workers_claim_and_stays_within_the_limit(
    smtp_server, make_campaign, add_contacts
):
    # Another worker of the same account is in the middle of its claim: it holds the
    # account's claim lock and has counted 4 of the day's 5, not committed yet. Our pass read
    # the limits before (nothing used) and claims at once: its claim waits, then takes 1.
    if connection.vendor != "postgresql":
        pytest.skip("SQLite serialises its writers: one claim at a time already")
    campaign = prepared(make_campaign, add_contacts, 7)
    account = campaign.accounts.get()
    account.daily_limit = 5
    account.save(update_fields=["daily_limit"])
    reports: list = []

    def our_pass() -> None:
        try:
            reports.append(services.account_send(account=account, batch_size=10))
        finally:
            connection.close()

    other = psycopg.connect(**connection.get_connection_params(), autocommit=True)
    try:
        with other.transaction():
            other.execute(services._CLAIM_LOCK_SQL, [services._CLAIM_LOCK, account.pk])
            services_now = timezone.now()
            day = selectors.account_day_start(account, services_now)
            other.execute(
                "INSERT INTO campaigns_accountusage (account_id, span, start, claimed) "
                "VALUES (%s, %s, %s, 4)",
                [account.pk, AccountUsage.Span.DAY, day],
            )
            ours = threading.Thread(target=our_pass)
            ours.start()
            ours.join(timeout=1.0)
            assert ours.is_alive(), "our claim did not wait for the other worker's"
    finally:
        other.close()
    ours.join(timeout=30)

    [report] = reports
    assert (report.claimed, report.sent) == (1, 1)
    assert statuses() == {S.SENT: 1, S.QUEUED: 6}
    assert AccountUsage.objects.get(account=account, span=AccountUsage.Span.DAY).claimed == 5
