"""Replies and auto-replies to emails really sent over SMTP: through anymail's inbound signal,
a real Postmark inbound webhook, and `reply_parse` for mail read from an account's mailbox."""

from __future__ import annotations

import base64
import json
from datetime import timedelta
from email import message_from_bytes, policy

import pytest
from anymail.inbound import AnymailInboundMessage
from anymail.signals import AnymailInboundEvent, EventType
from anymail.signals import inbound as anymail_inbound
from django.utils import timezone

from campaigns.models import Message, Recipient
from campaigns.services import campaign_launch, dispatch_due, run_prepare
from campaigns.simulator import SimulatedInternet, SimulatorServer
from leadcenter.factories import (
    CampaignFactory,
    CampaignStepFactory,
    ContactFactory,
    ContactListFactory,
    SendingAccountFactory,
)
from tracking import tokens
from tracking.models import TrackingEvent
from tracking.services import event_record
from tracking.webhooks import is_autoreply, reply_parse

pytestmark = pytest.mark.django_db
S = Message.Status
E = TrackingEvent.Type
SECRET = "anymail:s3cret-webhook-password"


@pytest.fixture
def internet():
    with SimulatorServer(SimulatedInternet()) as server:
        yield server


@pytest.fixture
def first_step(internet, settings) -> Message:
    """Step 1 of a two-step sequence (stop on reply), really sent to ada@example.test."""
    settings.LEADCENTER_WEBHOOKS_SYNC = True
    settings.ANYMAIL = {**settings.ANYMAIL, "WEBHOOK_SECRET": SECRET}
    account = SendingAccountFactory(
        name="Replies",
        from_email="sales@leadcenter.test",
        smtp_port=internet.port,
        return_path="bounces@leadcenter.test",
        smtp_timeout=5,
    )
    audience = ContactListFactory(name="Reply audience")
    ContactFactory(email="ada@example.test", first_name="Ada", lists=[audience])
    campaign = CampaignFactory(name="Sequence")
    campaign.lists.add(audience)
    campaign.accounts.add(account)
    CampaignStepFactory(campaign=campaign, position=1, subject="Hello {{ contact.first_name }}")
    CampaignStepFactory(
        campaign=campaign, position=2, subject="Following up", delay=timedelta(days=2)
    )
    run_prepare(run=campaign_launch(campaign=campaign, enqueue=False))
    dispatch_due()
    message = Message.objects.get()
    assert message.status == S.SENT
    return message


def follow_up_due_now(internet) -> list[str]:
    """Let the follow-up's delay pass, dispatch, and return the subjects ada received."""
    Recipient.objects.update(next_step_at=timezone.now() - timedelta(seconds=1))
    dispatch_due()
    return [
        message_from_bytes(d.data, policy=policy.default)["Subject"]
        for d in internet.handler.received_by("ada@example.test")
    ]


def reply_bytes(
    in_reply_to: str | None,
    *,
    subject: str = "Re: Hello Ada",
    message_id: str = "<reply-1@example.test>",
    to: str = "LeadCenter Sales <sales@leadcenter.test>",
    extra: str = "",
    body: str = "Sounds good, call me on Tuesday.",
) -> bytes:
    thread = f"In-Reply-To: {in_reply_to}\r\nReferences: {in_reply_to}\r\n" if in_reply_to else ""
    return (
        "From: Ada Lovelace <ada@example.test>\r\n"
        f"To: {to}\r\n"
        f"Subject: {subject}\r\n"
        "Date: Tue, 04 Jun 2024 10:00:00 +0000\r\n"
        f"Message-ID: {message_id}\r\n"
        f"{thread}{extra}"
        "MIME-Version: 1.0\r\n"
        "Content-Type: text/plain; charset=utf-8\r\n\r\n"
        f"{body}\r\n"
    ).encode()


def inbound(raw: bytes, esp_name: str = "Mailgun") -> None:
    message = AnymailInboundMessage.parse_raw_mime_bytes(raw)
    anymail_inbound.send(
        sender=object,
        event=AnymailInboundEvent(event_type=EventType.INBOUND, message=message, esp_event={}),
        esp_name=esp_name,
    )


# --- replies ------------------------------------------------------------------------------


def test_a_reply_through_anymail_marks_the_message_replied_and_stops_the_follow_up(
    first_step, internet
):
    inbound(reply_bytes(first_step.message_id))

    message = Message.objects.get(pk=first_step.pk)
    assert message.status == S.REPLIED
    assert message.replied_at is not None
    recipient = Recipient.objects.get()
    assert recipient.replied_at is not None
    [event] = TrackingEvent.objects.filter(type=E.REPLIED)
    assert (event.source, event.message_id, event.email) == (
        "reply",
        message.pk,
        "ada@example.test",
    )
    assert "Sounds good" in event.raw

    assert follow_up_due_now(internet) == ["Hello Ada"]  # no "Following up"
    assert Message.objects.count() == 1


def test_a_reply_read_from_a_mailbox_marks_the_message_replied(first_step, internet):
    event = reply_parse(reply_bytes(first_step.message_id))

    assert event is not None
    assert (event.type, event.source) == (E.REPLIED, "reply")
    result = event_record(event)

    assert result.changed
    assert Message.objects.get().status == S.REPLIED
    assert follow_up_due_now(internet) == ["Hello Ada"]


def test_the_same_reply_from_the_esp_and_the_mailbox_is_recorded_once(first_step):
    raw = reply_bytes(first_step.message_id)

    inbound(raw)
    result = event_record(reply_parse(raw))

    assert result.duplicate
    assert TrackingEvent.objects.filter(type=E.REPLIED).count() == 1


def test_a_reply_quoting_the_whole_thread_is_matched_through_references(first_step):
    raw = reply_bytes(
        None,
        extra=(
            "In-Reply-To: <someone-else@example.test>\r\n"
            f"References: <older@example.test> {first_step.message_id} <someone-else@example.test>\r\n"
        ),
    )

    inbound(raw)

    assert Message.objects.get().status == S.REPLIED


def test_a_reply_through_the_postmark_inbound_webhook(client, first_step):
    raw = reply_bytes(first_step.message_id).decode()
    body = {
        "FromFull": {"Email": "ada@example.test", "Name": "Ada Lovelace"},
        "ToFull": [{"Email": "sales@leadcenter.test", "Name": ""}],
        "Subject": "Re: Hello Ada",
        "MessageID": "22c74902-a0c1-4511-804f-341342852c90",
        "RawEmail": raw,
        "Headers": [],
    }
    auth = "Basic " + base64.b64encode(SECRET.encode()).decode()

    refused = client.post(
        "/anymail/postmark/inbound/", json.dumps(body), content_type="application/json"
    )
    response = client.post(
        "/anymail/postmark/inbound/",
        json.dumps(body),
        content_type="application/json",
        HTTP_AUTHORIZATION=auth,
    )

    assert refused.status_code == 401
    assert response.status_code == 200
    assert Message.objects.get().status == S.REPLIED


# --- auto-replies ------------------------------------------------------------------------


def test_an_out_of_office_is_an_autoreply_and_the_follow_up_still_goes(first_step, internet):
    raw = reply_bytes(
        first_step.message_id,
        subject="Out of Office: Hello Ada",
        extra="Auto-Submitted: auto-replied\r\n",
        body="I am away until Monday.",
    )

    inbound(raw)

    message = Message.objects.get()
    assert message.status == S.SENT
    assert message.replied_at is None
    [event] = TrackingEvent.objects.filter(source="reply")
    assert (event.type, event.message_id) == (E.AUTOREPLY, message.pk)
    assert Recipient.objects.get().replied_at is None
    assert follow_up_due_now(internet) == ["Hello Ada", "Following up"]


@pytest.mark.parametrize(
    ("extra", "subject"),
    [
        ("Auto-Submitted: auto-replied\r\n", "Re: Hello Ada"),
        ("Auto-Submitted: auto-generated\r\n", "Re: Hello Ada"),
        ("X-Autoreply: yes\r\n", "Re: Hello Ada"),
        ("X-Autorespond: Hello Ada\r\n", "Re: Hello Ada"),
        ("Precedence: auto_reply\r\n", "Re: Hello Ada"),
        ("Precedence: bulk\r\n", "Re: Hello Ada"),
        ("", "Out of Office: Hello Ada"),
        ("", "Automatic reply: Hello Ada"),
        ("", "Autoreply: Hello Ada"),
        ("", "=?utf-8?q?R=C3=A9ponse_automatique=C2=A0:_Hello?="),
    ],
)
def test_auto_replies_are_recognised(extra, subject):
    message = message_from_bytes(reply_bytes("<x@y>", subject=subject, extra=extra))

    assert is_autoreply(message)


@pytest.mark.parametrize(
    ("extra", "subject"),
    [
        ("", "Re: Hello Ada"),
        ("Auto-Submitted: no\r\n", "Re: Hello Ada"),
        ("", "Re: Out of Office tomorrow? Let us meet today"),
    ],
)
def test_a_person_s_reply_is_not_an_autoreply(extra, subject):
    message = message_from_bytes(reply_bytes("<x@y>", subject=subject, extra=extra))

    assert not is_autoreply(message)


def test_an_auto_reply_to_the_bounce_address_is_matched_by_its_verp_token(first_step):
    """RFC 3834: auto-replies go to the envelope sender, often without In-Reply-To."""
    verp = tokens.verp_address("bounces@leadcenter.test", first_step.pk)
    raw = reply_bytes(None, subject="Automatic reply: Hello Ada", to=verp)

    event = reply_parse(raw)

    assert event is not None
    assert (event.type, event.message_pk) == (E.AUTOREPLY, first_step.pk)
    event_record(event)
    assert TrackingEvent.objects.get(type=E.AUTOREPLY).message_id == first_step.pk


# --- what is not a reply to us -------------------------------------------------------------


def test_mail_that_answers_nothing_of_ours_is_not_an_event(first_step):
    assert reply_parse(reply_bytes("<their-own-thread@example.test>")) is None
    assert reply_parse(reply_bytes(None)) is None

    inbound(reply_bytes("<their-own-thread@example.test>"))

    assert not TrackingEvent.objects.filter(source="reply").exists()
    assert Message.objects.get().status == S.SENT


def test_a_bounce_report_is_left_to_the_bounce_processor(first_step):
    dsn = (
        "From: MAILER-DAEMON@mx.example.test\r\n"
        "To: bounces@leadcenter.test\r\n"
        "Subject: Undelivered Mail Returned to Sender\r\n"
        f"In-Reply-To: {first_step.message_id}\r\n"
        "MIME-Version: 1.0\r\n"
        'Content-Type: multipart/report; report-type=delivery-status; boundary="b"\r\n\r\n'
        "--b\r\nContent-Type: text/plain\r\n\r\nGone.\r\n--b--\r\n"
    ).encode()

    assert reply_parse(dsn) is None


def test_an_unreadable_message_does_not_crash_the_receiver(first_step):
    inbound(b"\xff\xfe not a message at all \x00\x01")
    inbound(reply_bytes(first_step.message_id, extra="Date: not a date\r\n"))

    assert Message.objects.get().status == S.REPLIED


def test_a_reply_with_nul_bytes_in_its_body_is_stored(first_step):
    event = reply_parse(reply_bytes(first_step.message_id, body="see attached\x00\x00 thanks"))

    event_record(event)

    stored = TrackingEvent.objects.get(type=E.REPLIED)
    assert "see attached" in stored.raw and "\x00" not in stored.raw


def test_a_reply_that_reaches_the_bounce_mailbox_marks_the_message_replied(first_step, internet):
    from tracking.bounces import bounces_process

    raw = reply_bytes(first_step.message_id)

    report = bounces_process(messages=[raw])

    assert (report.replies, report.unknown) == (1, 0)
    assert Message.objects.get().status == S.REPLIED
    assert follow_up_due_now(internet) == ["Hello Ada"]
    # Read again, or through the ESP's inbound webhook: recorded once.
    inbound(raw)
    assert bounces_process(messages=[raw]).duplicates == 1
    assert TrackingEvent.objects.filter(type=E.REPLIED).count() == 1


def test_mail_in_the_bounce_mailbox_that_answers_nothing_of_ours_stays_unknown(first_step):
    from tracking.bounces import bounces_process

    report = bounces_process(messages=[reply_bytes("<their-own-thread@example.test>")])

    assert (report.replies, report.unknown) == (0, 1)
    assert Message.objects.get().status == S.SENT
