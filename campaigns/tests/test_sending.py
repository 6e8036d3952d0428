from __future__ import annotations

from datetime import timedelta
from email import message_from_bytes, policy

import pytest
from django.db import IntegrityError, transaction
from django.db.models import Count
from django.utils import timezone

from campaigns.models import Campaign, CampaignRun, Message, Recipient
from campaigns.services import (
    campaign_launch,
    dispatch_due,
    run_prepare,
)
from contacts.models import Contact, Suppression
from tracking import tokens
from tracking.models import Rejection

pytestmark = pytest.mark.django_db

S = Message.Status


def launch_and_send(campaign: Campaign) -> CampaignRun:
    run = campaign_launch(campaign=campaign, enqueue=False)
    run_prepare(run=run)
    dispatch_due()
    run.refresh_from_db()
    return run


def message_for(email: str) -> Message:
    return Message.objects.select_related("recipient__contact").get(recipient__email=email)


def test_an_accepted_email_is_sent_over_smtp_with_our_headers(
    smtp_server, make_campaign, add_contacts
):
    add_contacts("ada@example.test", first_name="Ada")
    campaign = make_campaign(name="Launch")

    run = launch_and_send(campaign)

    message = message_for("ada@example.test")
    assert message.status == S.SENT
    assert message.smtp_code == 250
    assert message.smtp_response.startswith("2.0.0 Ok: queued as")
    [delivery] = smtp_server.handler.received_by("ada@example.test")
    email = message_from_bytes(delivery.data, policy=policy.default)
    assert email["Message-ID"] == message.message_id
    assert email["Subject"] == "Step 1 for Ada"
    assert email["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert f"/t/u/{tokens.make_token(tokens.UNSUBSCRIBE, message.pk)}/" in email["List-Unsubscribe"]
    # VERP: the envelope sender names the message, so a bounce finds it.
    assert tokens.read_verp_address(delivery.mail_from) == message.pk
    html = email.get_body(("html",)).get_content()
    assert f"/t/o/{tokens.make_token(tokens.OPEN, message.pk)}.gif" in html
    assert "href='https://example.test/'" not in html
    assert "/t/c/" in html
    assert run.status == CampaignRun.Status.COMPLETED
    assert Recipient.objects.get(email="ada@example.test").status == Recipient.Status.SENT
    campaign.refresh_from_db()
    assert campaign.state == Campaign.State.FINISHED


def test_every_filter_reason_is_recorded_and_nothing_is_sent_to_filtered(
    smtp_server, make_campaign, add_contacts, audience
):
    from leadcenter.factories import ContactFactory, TopicFactory

    topic = TopicFactory(name="Events")
    campaign = make_campaign(topic=topic)
    add_contacts("ok@example.test")
    add_contacts("unsub@example.test", unsubscribed_at=timezone.now())
    add_contacts("dne@example.test", do_not_email=True)
    add_contacts("dnme@example.test", do_not_mass_email=True)
    add_contacts("", first_name="NoAddress")
    add_contacts("invalid@example.test", email_status=Contact.EmailStatus.INVALID)
    add_contacts("not-an-address")
    add_contacts("blocked@example.test")
    Suppression.objects.create(email="blocked@example.test", reason=Suppression.Reason.MANUAL)
    [opted_out] = add_contacts("optout@example.test")
    opted_out.opted_out_topics.add(topic)
    # The same address twice (one with a stray space a CRM left behind).
    add_contacts("twice@example.test")
    ContactFactory(email="Twice@example.test ", lists=[audience])

    run = launch_and_send(campaign)

    reasons = dict(run.recipients.values_list("email", "filter_reason"))
    assert reasons == {
        "ok@example.test": "",
        "unsub@example.test": "unsubscribed",
        "dne@example.test": "do_not_email",
        "dnme@example.test": "do_not_mass_email",
        "": "no_email",
        "invalid@example.test": "invalid_email",
        "not-an-address": "invalid_email",
        "blocked@example.test": "blocked",
        "optout@example.test": "no_email_selected",
        "twice@example.test": "",
        "Twice@example.test ": "duplicate",
    }
    delivered = {rcpt for d in smtp_server.handler.delivered for rcpt in d.rcpt_to}
    assert delivered == {"ok@example.test", "twice@example.test"}
    assert run.total_recipients == 11
    assert run.total_filtered == 9


def test_a_run_whose_every_contact_is_filtered_ends_filtered(make_campaign, add_contacts):
    add_contacts("gone@example.test", do_not_email=True)
    campaign = make_campaign()

    run = campaign_launch(campaign=campaign, enqueue=False)
    run_prepare(run=run)

    run.refresh_from_db()
    assert run.status == CampaignRun.Status.FILTERED
    assert not Message.objects.exists()


def test_a_contact_is_one_recipient_of_a_run_and_its_runs_are_found_by_contact(
    make_campaign, add_contacts
):
    [contact] = add_contacts("once@example.test")
    runs = [
        run_prepare(run=campaign_launch(campaign=make_campaign(name=name), enqueue=False))
        for name in ("First", "Second")
    ]

    assert list(contact.recipients.order_by("run_id").values_list("run_id", flat=True)) == [
        run.pk for run in runs
    ]
    with pytest.raises(IntegrityError), transaction.atomic():
        Recipient.objects.create(run=runs[0], contact=contact, email=contact.email)


def test_recipients_are_spread_round_robin_over_the_accounts(make_campaign, add_contacts, account):
    from leadcenter.factories import SendingAccountFactory

    second = SendingAccountFactory(name="Second", smtp_port=account.smtp_port)
    for i in range(10):
        add_contacts(f"r{i}@example.test")
        if i % 3 == 0:  # filtered contacts in between take no turn
            add_contacts(f"gone{i}@example.test", do_not_email=True)
    campaign = make_campaign(accounts=[account, second])

    run = campaign_launch(campaign=campaign, enqueue=False)
    run_prepare(run=run)

    per_account = dict(Message.objects.values_list("account__name").annotate(n=Count("pk")))
    assert per_account == {"Sales": 5, "Second": 5}
    in_contact_order = run.recipients.exclude(status=Recipient.Status.FILTERED).order_by(
        "contact_id"
    )
    assert [r.account.name for r in in_contact_order] == ["Sales", "Second"] * 5
    assert not run.recipients.filter(status=Recipient.Status.FILTERED, account__isnull=False)


@pytest.mark.parametrize(
    ("address", "status", "kind", "category", "code"),
    [
        ("x.user-unknown@example.test", S.BOUNCED, "hard", "user_not_found", 550),
        ("x@no-domain.example.test", S.BOUNCED, "hard", "domain_not_found", 550),
        ("x.mailbox-full@example.test", S.SOFT_BOUNCED, "soft", "mailbox_full", 452),
        ("x.spam-block@example.test", S.FAILED, "soft", "spam_blocked", 554),
        ("x.no-answer@example.test", S.SOFT_BOUNCED, "soft", "no_answer", 421),
        ("x.drop-in-data@example.test", S.SOFT_BOUNCED, "soft", "no_answer", None),
    ],
)
def test_each_smtp_reply_ends_in_its_status_and_category(
    smtp_server, make_campaign, add_contacts, address, status, kind, category, code
):
    [contact] = add_contacts(address)
    add_contacts("after@example.test")  # sent after the failure, on the same or a new connection
    campaign = make_campaign()

    launch_and_send(campaign)

    message = message_for(address)
    assert message.status == status
    assert message.smtp_code == code
    rejection = Rejection.objects.get(message=message)
    assert (rejection.kind, rejection.category) == (kind, category)
    contact.refresh_from_db()
    if kind == "hard":
        assert contact.email_status == Contact.EmailStatus.INVALID
        assert contact.invalid_reason
        assert Suppression.objects.filter(
            email=address, reason=Suppression.Reason.HARD_BOUNCE, lifted_at__isnull=True
        ).exists()
    else:
        assert contact.email_status == Contact.EmailStatus.VALID
        assert not Suppression.objects.exists()
    if status == S.SOFT_BOUNCED:
        assert message.next_attempt_at > timezone.now()
    assert message_for("after@example.test").status == S.SENT


def test_a_server_slower_than_the_time_out_is_a_soft_no_answer(
    smtp_server, make_campaign, add_contacts, account
):
    smtp_server.handler.slow_delay = 3
    account.smtp_timeout = 1
    account.save()
    add_contacts("x.slow-server@example.test", "after@example.test")

    launch_and_send(make_campaign())

    message = message_for("x.slow-server@example.test")
    assert message.status == S.SOFT_BOUNCED
    assert Rejection.objects.get(message=message).category == "no_answer"
    assert message_for("after@example.test").status == S.SENT


def test_a_soft_bounce_is_retried_and_gives_up_after_the_maximum_age(
    smtp_server, make_campaign, add_contacts, settings
):
    settings.LEADCENTER_RETRY_BASE = timedelta(seconds=0)
    add_contacts("x.mailbox-full@example.test")
    campaign = make_campaign()
    run = launch_and_send(campaign)
    assert message_for("x.mailbox-full@example.test").status == S.SOFT_BOUNCED
    assert run.status == CampaignRun.Status.RUNNING  # a retry is pending

    Message.objects.update(created=timezone.now() - timedelta(days=4))
    dispatch_due()

    message = message_for("x.mailbox-full@example.test")
    assert message.status == S.FAILED
    assert message.attempts == 2
    run.refresh_from_db()
    assert run.status == CampaignRun.Status.COMPLETED


def test_an_account_that_confirms_delivery_marks_accepted_mail_delivered(
    make_campaign, add_contacts, account
):
    account.confirms_delivery = True
    account.save()
    add_contacts("ada@example.test")

    launch_and_send(make_campaign())

    message = message_for("ada@example.test")
    assert message.status == S.DELIVERED
    assert message.sent_at and message.delivered_at


def test_a_hard_bounced_address_gets_no_later_email(smtp_server, make_campaign, add_contacts):
    add_contacts("x.user-unknown@example.test")
    launch_and_send(make_campaign(name="First"))

    second = launch_and_send(make_campaign(name="Second"))

    assert second.recipients.get().filter_reason == "invalid_email"
    assert len(smtp_server.handler.refused) == 1


def test_a_template_error_fails_the_message_and_not_the_contact(make_campaign, add_contacts):
    [contact] = add_contacts("ada@example.test")
    campaign = make_campaign()
    campaign.steps.update(subject="Hi {% if %}")

    launch_and_send(campaign)

    message = message_for("ada@example.test")
    assert message.status == S.FAILED
    assert "template error" in message.smtp_response
    contact.refresh_from_db()
    assert contact.email_status == Contact.EmailStatus.VALID


def test_an_account_with_an_esp_sends_through_anymail_and_keeps_the_esp_message_id(
    make_campaign, add_contacts, account, settings
):
    from django.core import mail

    account.esp = "test"  # anymail's test backend: records what it would send
    account.save()
    add_contacts("ada@example.test", first_name="Ada")

    run = launch_and_send(make_campaign())

    message = message_for("ada@example.test")
    assert message.status == S.SENT
    assert message.esp_message_id
    [sent] = mail.outbox
    assert sent.to[0].endswith("<ada@example.test>")
    assert sent.extra_headers["Message-ID"] == message.message_id
    assert run.status == CampaignRun.Status.COMPLETED


def _statements_to_send(count: int, tag: str, make_campaign, add_contacts, follow_up: bool):
    """The statements of the dispatch that sends `count` emails of one step (the first, or a
    threaded follow-up), and the emails it sent."""
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    add_contacts(*(f"{tag}{i}@example.test" for i in range(count)))
    campaign = make_campaign(name=f"Batch {tag}")
    if follow_up:
        campaign.steps.create(position=2, subject="Again", text_body="Hi", delay=timedelta(0))
    run = campaign_launch(campaign=campaign, enqueue=False)
    run_prepare(run=run)
    if follow_up:
        dispatch_due()  # the first step; the second is due at once
    with CaptureQueriesContext(connection) as queries:
        dispatch_due()
    # (The audience list keeps the contacts added before: they go too, in the same batch.)
    sent = Message.objects.filter(run=run, step__position=2 if follow_up else 1, status=S.SENT)
    assert sent.filter(recipient__email__startswith=tag).count() == count
    return [q["sql"] for q in queries]


def test_a_claimed_batch_reads_the_values_the_orm_reads(make_campaign, add_contacts):
    # The claim reads its batch with a query of its own (and, on PostgreSQL in UTC, psycopg's
    # compiled timestamp loader instead of Django's): the same values, the same time zone.
    from campaigns.services import messages_claim

    lead_at = timezone.now() - timedelta(days=3, microseconds=7)
    add_contacts("ada@example.test", "bob@example.test", lead_at=lead_at)
    campaign = make_campaign()
    run_prepare(run=campaign_launch(campaign=campaign, enqueue=False))

    claimed = messages_claim(account=campaign.accounts.get(), limit=10, now=timezone.now())

    assert len(claimed) == 2
    for message in claimed:
        orm = Message.objects.select_related("recipient__contact").get(pk=message.pk)
        for name in ("created", "claimed_at", "status_changed_at"):
            assert getattr(message, name) == getattr(orm, name), name
            assert getattr(message, name).utcoffset() == timedelta(0), name
        contact, orm_contact = message.recipient.contact, orm.recipient.contact
        for name in ("created", "updated", "lead_at", "unsubscribed_at"):
            assert getattr(contact, name) == getattr(orm_contact, name), name
        assert contact.lead_at == lead_at
        assert contact.lead_at.tzinfo is not None


@pytest.mark.parametrize("follow_up", [False, True], ids=["first step", "follow-up"])
def test_a_batch_costs_the_same_statements_for_three_emails_as_for_twenty(
    smtp_server, make_campaign, add_contacts, settings, follow_up
):
    # The sender reads and writes a batch set-wise: a query per email (a lazily loaded field,
    # a relation read one by one) would show here as statements growing with the batch.
    settings.LEADCENTER_BATCH_SIZE = 100
    # (Sizes under SQLite's 999 parameters per INSERT, which splits a bigger one in two.)
    few = _statements_to_send(3, "few", make_campaign, add_contacts, follow_up)
    many = _statements_to_send(20, "many", make_campaign, add_contacts, follow_up)
    assert len(many) == len(few), "\n".join(q[:160] for q in many)


def test_the_sender_prepares_its_per_batch_statements_once(
    smtp_server, make_campaign, add_contacts, settings
):
    # Batches of two: the claim, the batch read, the limits' count and the outcome's writes
    # run three times each, prepared once on the connection.
    from django.db import connection

    if connection.vendor != "postgresql":
        pytest.skip("prepared statements: PostgreSQL")
    settings.LEADCENTER_BATCH_SIZE = 2
    add_contacts(*(f"p{i}@example.test" for i in range(6)))
    run = launch_and_send(make_campaign())

    assert run.recipients.filter(status="sent").count() == 6
    with connection.cursor() as cursor:
        cursor.execute("SELECT statement FROM pg_prepared_statements WHERE from_sql = false")
        prepared = [statement for (statement,) in cursor.fetchall()]
    assert sum("SKIP LOCKED" in statement for statement in prepared) == 1  # the claim
    assert sum("= ANY(CAST($1 AS bigint[]))" in statement for statement in prepared) >= 1
    assert sum("SUM(claimed)" in s for s in prepared) == 1  # the limits' read
    assert sum("ON CONFLICT (account_id, span, start)" in s for s in prepared) == 1  # their count
    assert sum("UPDATE" in s and "campaigns_recipient" in s for s in prepared) == 1


@pytest.mark.parametrize("seconds_later", [0.0, 1.5], ids=["same second", "a second later"])
def test_a_step_edited_during_a_pass_goes_out_as_edited_within_a_second(
    smtp_server, make_campaign, add_contacts, monkeypatch, seconds_later
):
    # The sender reads a pass's steps and runs once a second, not for every batch: an edit
    # made while a pass sends shows in the batches claimed from a second after it on.
    from campaigns import services

    add_contacts("ada@example.test", "bob@example.test", "cy@example.test")
    campaign = make_campaign(name="Edited")
    run_prepare(run=campaign_launch(campaign=campaign, enqueue=False))
    step = campaign.steps.get()
    clock = {"now": 1000.0}
    monkeypatch.setattr(services._StepsAndRuns, "_now", staticmethod(lambda: clock["now"]))
    send_batch = services._send_batch

    def edit_after_the_first_batch(account, session, batch, *args):
        report = send_batch(account, session, batch, *args)
        if step.subject.startswith("Step"):
            step.subject = "Edited for {{ contact.first_name }}"
            step.save(update_fields=["subject"])
            clock["now"] += seconds_later
        return report

    monkeypatch.setattr(services, "_send_batch", edit_after_the_first_batch)
    services.account_send(account=campaign.accounts.get(), batch_size=1)

    subjects = [
        message_from_bytes(delivery.data, policy=policy.default)["Subject"]
        for email in ("ada@example.test", "bob@example.test", "cy@example.test")
        for delivery in smtp_server.handler.received_by(email)
    ]
    assert len(subjects) == 3
    edited = sum(subject.startswith("Edited for ") for subject in subjects)
    assert edited == (2 if seconds_later else 0)
