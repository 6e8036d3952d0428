"""Bounce mail read and recorded: tracking.bounces.bounce_parse and bounces_process.

Every test that records sends a real run through the SMTP simulator first, then points a fixture
(tracking/tests/fixtures/bounces/*.eml, real formats of several MTAs) at the message it sent.
"""

from __future__ import annotations

import random
from email.utils import formatdate

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from campaigns.models import Message, Recipient
from contacts.models import Contact, Suppression
from tracking import tokens
from tracking.bounces import bounce_parse, bounces_process
from tracking.models import Rejection, TrackingEvent
from tracking.services import message_transition
from tracking.tests.conftest import FIXTURES

S = Message.Status
E = TrackingEvent.Type

ADA = "ada@example.net"
BOB = "bob@example.net"


def record(*raws: bytes):
    return bounces_process(messages=raws)


def fill(name: str, **values: str) -> bytes:
    """A fixture filled without a database (parse-only tests)."""
    values = {
        "verp": tokens.verp_address("bounces@leadcenter.test", 42),
        "message_id": "<lc.7.1.abcd@leadcenter.test>",
        "recipient": ADA,
        "date": formatdate(),
        **values,
    }
    raw = (FIXTURES / name).read_bytes()
    for key, value in values.items():
        raw = raw.replace(b"{{" + key.upper().encode() + b"}}", value.encode())
    return raw


HARD = [
    # fixture, SMTP code, enhanced status
    ("postfix_user_unknown.eml", 550, "5.1.1"),
    ("exim_failed.eml", 550, "5.1.1"),
    ("qmail_failed.eml", None, "5.1.1"),
    ("exchange_recipient_not_found.eml", 550, "5.1.10"),
    ("gmail_address_not_found.eml", 550, "5.1.1"),
    ("yahoo_no_account.eml", 554, ""),
]


# --- reading ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "code", "status"), HARD)
def test_it_reads_the_failed_recipient_and_reply_of_every_hard_bounce_format(name, code, status):
    [event] = bounce_parse(fill(name))

    assert event.type == E.BOUNCED
    assert event.source == "dsn"
    assert event.permanent is True
    assert event.recipient == ADA
    assert event.smtp_code == code
    assert event.smtp_status == status
    assert event.diagnostic
    assert event.message_pk == 42  # the VERP address the bounce was delivered to
    assert "<lc.7.1.abcd@leadcenter.test>" in event.header_message_ids
    assert "Step 1 for Ada" in event.raw


def test_it_writes_a_multi_line_reply_once():
    [event] = bounce_parse(fill("gmail_address_not_found.eml"))

    assert event.diagnostic.startswith("550 5.1.1 The email account that you tried to reach")
    assert "550-5.1.1" not in event.diagnostic


def test_it_reads_a_delay_notice_as_a_deferral():
    [event] = bounce_parse(fill("postfix_delayed.eml"))

    assert event.type == E.DEFERRED
    assert event.permanent is False
    assert event.smtp_status == "4.4.1"
    assert "Connection timed out" in event.diagnostic


def test_it_reads_a_feedback_report_as_a_complaint():
    [event] = bounce_parse(fill("arf_abuse_yahoo.eml"))

    assert event.type == E.COMPLAINED
    assert event.source == "arf"
    assert event.recipient == ADA
    assert event.message_pk == 42  # from Original-Mail-From
    assert event.header_message_ids == ["<lc.7.1.abcd@leadcenter.test>"]
    assert "Feedback-Type: abuse" in event.detail


def test_a_feedback_report_that_is_not_a_complaint_is_kept_as_unknown():
    raw = fill("arf_abuse_yahoo.eml").replace(b"Feedback-Type: abuse", b"Feedback-Type: not-spam")

    [event] = bounce_parse(raw)

    assert event.type == E.UNKNOWN
    assert event.source == "arf"


def test_it_reads_an_out_of_office_reply_as_an_autoreply():
    [event] = bounce_parse(fill("autoreply_outlook.eml"))

    assert event.type == E.AUTOREPLY
    assert event.recipient == ADA
    assert event.header_message_ids[0] == "<lc.7.1.abcd@leadcenter.test>"
    assert "Automatic reply" in event.detail


@pytest.mark.parametrize(
    "header",
    [
        "X-Autoreply: yes",
        "X-Autorespond: Out of office",
        "Precedence: auto_reply",
        "Auto-Submitted: auto-replied",
        "Subject: Abwesenheitsnotiz: Ihre Nachricht",
        "Subject: Out of Office: Step 1 for Ada",
        "Subject: Automatic reply: Step 1 for Ada",
    ],
)
def test_it_recognises_auto_replies_by_their_headers_or_subject(header):
    raw = (
        f"From: Ada <{ADA}>\nTo: sales@leadcenter.test\n{header}\n"
        "In-Reply-To: <lc.7.1.abcd@leadcenter.test>\nMessage-ID: <ooo-1@example.net>\n\n"
        "I am away until Monday.\n"
    ).encode()

    [event] = bounce_parse(raw)

    assert event.type == E.AUTOREPLY
    assert event.header_message_ids == ["<lc.7.1.abcd@leadcenter.test>"]


def test_a_plain_reply_is_not_an_autoreply():
    raw = (
        f"From: Ada <{ADA}>\nTo: sales@leadcenter.test\nSubject: Re: Step 1 for Ada\n"
        "In-Reply-To: <lc.7.1.abcd@leadcenter.test>\nMessage-ID: <re-1@example.net>\n\n"
        "Sounds good, call me Tuesday.\n"
    ).encode()

    [event] = bounce_parse(raw)

    assert event.type == E.UNKNOWN


def test_a_bounce_that_says_it_is_auto_submitted_is_still_a_bounce():
    [event] = bounce_parse(fill("exim_failed.eml"))  # Auto-Submitted: auto-replied

    assert event.type == E.BOUNCED


@pytest.mark.parametrize("name", ["garbage_not_a_bounce.eml", "garbage_truncated_mime.eml"])
def test_garbage_is_one_unknown_event_with_the_raw_message(name):
    raw = fill(name)

    [event] = bounce_parse(raw)

    assert event.type == E.UNKNOWN
    assert event.source == "dsn"
    assert event.raw.startswith("Return-Path:")
    assert event.detail


def test_each_recipient_of_a_report_is_one_event():
    second = (
        f"Final-Recipient: rfc822; {BOB}\nAction: delayed\nStatus: 4.2.2\n"
        f"Diagnostic-Code: smtp; 452 4.2.2 <{BOB}>: Mailbox full\n\n"
        "--4B7C21A0E2.1795644191/mx1.leadcenter.test\nContent-Description: Undelivered"
    ).encode()
    raw = fill("postfix_user_unknown.eml").replace(
        b"--4B7C21A0E2.1795644191/mx1.leadcenter.test\nContent-Description: Undelivered",
        second,
    )

    events = bounce_parse(raw)

    assert [(e.type, e.recipient, e.smtp_status) for e in events] == [
        (E.BOUNCED, ADA, "5.1.1"),
        (E.DEFERRED, BOB, "4.2.2"),
    ]
    assert len({e.dedupe_key for e in events}) == 2


def test_a_report_without_its_per_message_block_still_names_the_recipient():
    raw = fill("postfix_user_unknown.eml").replace(
        b"Reporting-MTA: dns; mx1.leadcenter.test\nX-Postfix-Queue-ID: 4B7C21A0E2\n"
        b"X-Postfix-Sender: rfc822; ",
        b"X-Ignored: ",
    )
    raw = raw.replace(b"Arrival-Date: Tue, 24 Nov 2026 22:03:09 +0000 (UTC)\n\n", b"")

    [event] = bounce_parse(raw)

    assert (event.type, event.recipient, event.smtp_status) == (E.BOUNCED, ADA, "5.1.1")
    # from the Diagnostic-Code, not from the text of the notification
    assert event.diagnostic.endswith("User unknown in virtual mailbox table")


def test_without_a_diagnostic_code_the_reply_is_taken_from_the_text_next_to_the_address():
    raw = fill("postfix_user_unknown.eml").replace(
        b"Diagnostic-Code: smtp; 550 5.1.1 <ada@example.net>: Recipient address rejected:\n"
        b"    User unknown in virtual mailbox table\n",
        b"",
    )

    [event] = bounce_parse(raw)

    assert event.diagnostic == (
        "550 5.1.1 <ada@example.net>: Recipient address rejected: User unknown in virtual "
        "mailbox table (in reply to RCPT TO command)"
    )
    assert (event.smtp_code, event.smtp_status) == (550, "5.1.1")


def test_a_positive_delivery_report_is_a_delivery():
    raw = fill("postfix_user_unknown.eml").replace(b"Action: failed", b"Action: delivered")

    [event] = bounce_parse(raw)

    assert event.type == E.DELIVERED


def test_the_dedupe_key_is_the_bounces_own_message_id_and_the_recipient():
    raw = fill("postfix_user_unknown.eml")
    # The same bounce, fetched another way, with another trace header on top.
    again = b"Received: from imap.leadcenter.test by x; Tue, 24 Nov 2026 23:00:00 +0000\n" + raw
    other = raw.replace(b"Message-Id: <20261124220311.4B7C", b"Message-Id: <20261124220399.4B7C")

    [first], [second], [third] = bounce_parse(raw), bounce_parse(again), bounce_parse(other)

    assert first.dedupe_key == second.dedupe_key
    assert first.dedupe_key != third.dedupe_key
    assert first.dedupe_key.startswith("dsn:")


def test_without_a_message_id_the_dedupe_key_is_a_hash_of_the_bytes():
    raw = fill("qmail_failed.eml")  # qmail writes no Message-ID on its bounces

    [first], [second] = bounce_parse(raw), bounce_parse(raw)
    [other] = bounce_parse(raw.replace(b"20318 invoked", b"20319 invoked"))

    assert first.dedupe_key == second.dedupe_key
    assert other.dedupe_key != first.dedupe_key


def test_the_raw_message_kept_is_capped():
    raw = fill("postfix_user_unknown.eml") + b"x" * 1_000_000

    [event] = bounce_parse(raw)

    assert len(event.raw) < 210_000
    assert "truncated" in event.raw[-100:]


def test_a_bounce_dated_in_the_future_is_dated_when_received():
    raw = fill("postfix_user_unknown.eml", date="Sat, 01 Jan 2150 00:00:00 +0000")

    [event] = bounce_parse(raw)

    assert event.occurred_at.year < 2150


# --- fuzzing -----------------------------------------------------------------------------------

_FIXTURE_BYTES = [fill(p.name) for p in sorted(FIXTURES.glob("*.eml"))]
_TYPES = {choice.value for choice in E}


def _assert_storable(events) -> None:
    assert events
    for event in events:
        assert event.type in _TYPES
        for text in (event.raw, event.detail, event.diagnostic, event.recipient, event.smtp_status,
                     *event.header_message_ids):  # fmt: skip
            assert "\x00" not in text
            text.encode("utf-8")  # no lone surrogates: PostgreSQL takes it
        assert len(event.recipient) <= 254
        assert len(event.smtp_status) <= 16
        assert event.smtp_code is None or 200 <= event.smtp_code <= 599


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=4000))
def test_bounce_parse_never_raises_on_random_bytes(raw):
    _assert_storable(bounce_parse(raw))


@st.composite
def mutated_fixtures(draw):
    raw = bytearray(draw(st.sampled_from(_FIXTURE_BYTES)))
    rng = random.Random(draw(st.integers(0, 2**32)))
    for _ in range(draw(st.integers(1, 40))):
        at = rng.randrange(len(raw) + 1)
        action = rng.choice(["flip", "delete", "insert", "duplicate", "truncate", "nul"])
        if action == "flip" and at < len(raw):
            raw[at] = rng.randrange(256)
        elif action == "delete":
            del raw[at : at + rng.randrange(1, 200)]
        elif action == "insert":
            raw[at:at] = rng.choice(
                [b"\n", b"\r\n", b"--", b": ", b";", b"=?utf-8?b?", b"\xff\xfe", b"<", b">",
                 b"Content-Type: message/delivery-status\n", b"Action: failed\n",
                 b"Content-Type: multipart/report; boundary=x\n", b"@", b"+", b"\\"]
            )  # fmt: skip
        elif action == "duplicate":
            raw[at:at] = raw[at : at + rng.randrange(1, 500)]
        elif action == "truncate":
            del raw[at:]
        elif action == "nul":
            raw[at:at] = b"\x00"
    return bytes(raw)


@settings(max_examples=400, deadline=None)
@given(mutated_fixtures())
def test_bounce_parse_never_raises_on_mutated_real_bounces(raw):
    _assert_storable(bounce_parse(raw))


@pytest.mark.django_db
@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(mutated_fixtures())
def test_recording_mutated_real_bounces_never_raises(raw):
    report = bounces_process(messages=[raw])

    assert report.messages == 1


# --- recording -----------------------------------------------------------------------------------


@pytest.mark.django_db
@pytest.mark.parametrize(("name", "code", "status"), HARD)
def test_a_hard_bounce_bounces_the_message_and_invalidates_and_suppresses_the_address(
    send, bounce_for, name, code, status
):
    [message] = send(ADA)
    assert message.status == S.SENT

    report = record(bounce_for(name, message))

    message.refresh_from_db()
    assert message.status == S.BOUNCED
    assert report.bounced_hard == 1
    rejection = Rejection.objects.get(message=message)
    assert (rejection.kind, rejection.category) == ("hard", "user_not_found")
    assert (rejection.smtp_code, rejection.smtp_status) == (code, status)
    assert rejection.source == "dsn"
    assert rejection.diagnostic
    contact = Contact.objects.get(email=ADA)
    assert contact.email_status == Contact.EmailStatus.INVALID
    assert "User not found" in contact.invalid_reason
    assert Suppression.objects.filter(email=ADA, reason="hard_bounce").exists()
    assert Recipient.objects.get(pk=message.recipient_id).status == Recipient.Status.FAILED
    event = TrackingEvent.objects.get(message=message, type=E.BOUNCED)
    assert event.source == "dsn"
    assert (event.from_status, event.to_status) == ("sent", "bounced")
    assert "Step 1 for Ada" in event.raw


@pytest.mark.django_db
def test_a_full_mailbox_fails_the_message_but_leaves_the_contact_alone(send, bounce_for):
    [message] = send(ADA)

    report = record(bounce_for("sendmail_mailbox_full.eml", message))

    message.refresh_from_db()
    assert message.status == S.FAILED
    assert report.bounced_soft == 1
    rejection = Rejection.objects.get(message=message)
    assert (rejection.kind, rejection.category) == ("soft", "mailbox_full")
    assert (rejection.smtp_code, rejection.smtp_status) == (552, "5.2.2")
    assert Contact.objects.get(email=ADA).email_status == Contact.EmailStatus.VALID
    assert not Suppression.objects.filter(email=ADA).exists()


@pytest.mark.django_db
def test_a_delay_notice_soft_bounces_the_message_and_leaves_the_contact_alone(send, bounce_for):
    [message] = send(ADA)

    report = record(bounce_for("postfix_delayed.eml", message))

    message.refresh_from_db()
    assert message.status == S.SOFT_BOUNCED
    assert report.deferred == 1
    rejection = Rejection.objects.get(message=message)
    assert (rejection.kind, rejection.category) == ("soft", "no_answer")
    assert rejection.smtp_status == "4.4.1"
    assert Contact.objects.get(email=ADA).email_status == Contact.EmailStatus.VALID
    assert not Suppression.objects.filter(email=ADA).exists()


@pytest.mark.django_db
def test_a_hard_bounce_after_a_delay_notice_bounces_the_message(send, bounce_for):
    [message] = send(ADA)

    record(bounce_for("postfix_delayed.eml", message))
    record(bounce_for("postfix_user_unknown.eml", message))

    message.refresh_from_db()
    assert message.status == S.BOUNCED
    assert Contact.objects.get(email=ADA).email_status == Contact.EmailStatus.INVALID


@pytest.mark.django_db
def test_a_complaint_suppresses_the_address_and_keeps_it_valid(send, bounce_for):
    [message] = send(ADA)

    report = record(bounce_for("arf_abuse_yahoo.eml", message))

    message.refresh_from_db()
    assert report.complaints == 1
    assert message.status == S.SENT  # a complaint is shown beside the status
    assert message.complained_at is not None
    assert Recipient.objects.get(pk=message.recipient_id).complained_at is not None
    assert Suppression.objects.filter(email=ADA, reason="complaint").exists()
    assert not Suppression.objects.filter(email=ADA, reason="hard_bounce").exists()
    assert Contact.objects.get(email=ADA).email_status == Contact.EmailStatus.VALID
    event = TrackingEvent.objects.get(message=message, type=E.COMPLAINED)
    assert event.source == "arf"


@pytest.mark.django_db
def test_a_complaint_with_the_recipient_redacted_is_matched_by_the_returned_message_id(
    send, bounce_for
):
    [message] = send(ADA)
    raw = bounce_for(
        "arf_abuse_yahoo.eml", message, verp="bounces@leadcenter.test", recipient="redacted"
    )

    record(raw)

    assert TrackingEvent.objects.filter(message=message, type=E.COMPLAINED).exists()
    assert Suppression.objects.filter(email=ADA, reason="complaint").exists()


@pytest.mark.django_db
def test_an_autoreply_is_recorded_but_is_not_a_reply(send, bounce_for):
    [message] = send(ADA, steps=2)

    report = record(bounce_for("autoreply_outlook.eml", message))

    message.refresh_from_db()
    recipient = Recipient.objects.get(pk=message.recipient_id)
    assert report.autoreplies == 1
    assert message.status == S.SENT
    assert message.replied_at is None
    assert recipient.replied_at is None
    assert recipient.next_step_at is not None  # the follow-up still goes out
    event = TrackingEvent.objects.get(message=message, type=E.AUTOREPLY)
    assert event.source == "reply"
    assert event.email == ADA
    assert not Rejection.objects.exists()
    assert not Suppression.objects.exists()


@pytest.mark.django_db
def test_an_autoreply_read_from_the_inbox_too_is_recorded_once(send, bounce_for):
    from tracking.services import event_record
    from tracking.webhooks import reply_parse

    [message] = send(ADA)
    raw = bounce_for("autoreply_outlook.eml", message)
    record(raw)

    result = event_record(reply_parse(raw))

    assert result.duplicate
    assert TrackingEvent.objects.filter(type=E.AUTOREPLY).count() == 1


@pytest.mark.django_db
def test_mail_that_is_not_a_bounce_is_kept_unmatched_for_a_person(send, bounce_for):
    [message] = send(ADA)

    report = record(bounce_for("garbage_not_a_bounce.eml"))

    assert report.unknown == 1
    event = TrackingEvent.objects.get(type=E.UNKNOWN)
    assert event.message is None
    assert "50 % off" in event.raw
    message.refresh_from_db()
    assert message.status == S.SENT


@pytest.mark.django_db
def test_a_truncated_bounce_is_kept_as_unknown_on_its_message(send, bounce_for):
    [message] = send(ADA)

    report = record(bounce_for("garbage_truncated_mime.eml", message))

    assert report.unknown == 1
    event = TrackingEvent.objects.get(type=E.UNKNOWN)
    assert event.message_id == message.pk  # its VERP address still says whose it is
    message.refresh_from_db()
    assert message.status == S.SENT
    assert Contact.objects.get(email=ADA).email_status == Contact.EmailStatus.VALID


@pytest.mark.django_db
def test_the_same_bounce_twice_records_nothing_new(send, bounce_for):
    [message] = send(ADA)
    raw = bounce_for("postfix_user_unknown.eml", message)
    record(raw)
    counts = (TrackingEvent.objects.count(), Rejection.objects.count())

    again = record(raw)

    assert again.duplicates == 1
    assert again.bounced_hard == 0
    assert (TrackingEvent.objects.count(), Rejection.objects.count()) == counts


@pytest.mark.django_db
@pytest.mark.parametrize("name", [p.name for p in sorted(FIXTURES.glob("*.eml"))])
def test_every_fixture_read_twice_records_nothing_new(send, bounce_for, name):
    [message] = send(ADA)
    raw = bounce_for(name, message)
    record(raw)
    events = TrackingEvent.objects.count()

    again = record(raw)

    assert again.duplicates >= 1
    assert TrackingEvent.objects.count() == events


@pytest.mark.django_db
def test_a_bounce_for_a_delivered_message_is_history_only(send, bounce_for):
    [message] = send(ADA)
    message_transition(
        message_id=message.pk, event_type=E.DELIVERED, source="manual", status=S.DELIVERED
    )

    record(bounce_for("postfix_user_unknown.eml", message))

    message.refresh_from_db()
    assert message.status == S.DELIVERED
    assert Rejection.objects.filter(message=message, kind="hard").exists()
    assert TrackingEvent.objects.filter(message=message, type=E.BOUNCED).exists()
    assert Contact.objects.get(email=ADA).email_status == Contact.EmailStatus.VALID
    assert not Suppression.objects.exists()


# --- matching order: VERP, then our Message-ID, then the address ----------------------------


@pytest.mark.django_db
def test_the_verp_address_beats_a_wrong_message_id_and_address(send, bounce_for):
    ada, bob = send(ADA, BOB)
    raw = bounce_for("postfix_user_unknown.eml", ada, message_id=bob.message_id, recipient=BOB)

    record(raw)

    ada.refresh_from_db()
    bob.refresh_from_db()
    assert ada.status == S.BOUNCED
    assert bob.status == S.SENT


@pytest.mark.django_db
def test_without_verp_our_message_id_beats_the_address(send, bounce_for):
    ada, bob = send(ADA, BOB)
    raw = bounce_for("exim_failed.eml", ada, verp="bounces@leadcenter.test", recipient=BOB)

    record(raw)

    ada.refresh_from_db()
    bob.refresh_from_db()
    assert ada.status == S.BOUNCED
    assert bob.status == S.SENT


@pytest.mark.django_db
def test_a_forged_verp_token_is_ignored_and_the_message_id_decides(send, bounce_for):
    ada, bob = send(ADA, BOB)
    forged = tokens.verp_address("bounces@leadcenter.test", bob.pk)
    forged = forged.replace("+", "+x", 1)
    raw = bounce_for("postfix_user_unknown.eml", ada, verp=forged)

    record(raw)

    ada.refresh_from_db()
    bob.refresh_from_db()
    assert ada.status == S.BOUNCED
    assert bob.status == S.SENT


@pytest.mark.django_db
def test_with_only_the_address_the_latest_message_to_it_is_matched(send, bounce_for):
    [older] = send(ADA)
    [latest] = send(ADA)
    raw = bounce_for(
        "qmail_failed.eml", latest, verp="bounces@leadcenter.test", message_id="<x@elsewhere>"
    )

    record(raw)

    older.refresh_from_db()
    latest.refresh_from_db()
    assert latest.status == S.BOUNCED
    assert older.status == S.SENT


@pytest.mark.django_db
def test_a_bounce_for_an_address_we_never_emailed_is_kept_unmatched(send, bounce_for):
    send(ADA)
    raw = bounce_for("postfix_user_unknown.eml", recipient="stranger@example.org")

    report = record(raw)

    assert report.unmatched == 1
    event = TrackingEvent.objects.get(type=E.BOUNCED)
    assert event.message is None
    assert event.email == "stranger@example.org"
    assert not Suppression.objects.exists()


@pytest.mark.django_db
def test_files_recorded_in_batches_end_as_one_message_at_a_time(send, bounce_for):
    names = [p.name for p in sorted(FIXTURES.glob("*.eml"))]

    def world(tag: str, batch: int):
        addresses = [f"{tag}{n}@example.net" for n in range(len(names))]
        messages = send(*addresses)
        raws = [
            # A Message-ID of each world's own, first: the bounce's identity (its dedupe key).
            b"Message-ID: <%s.%d@mta.example.net>\n" % (tag.encode(), n) + bounce_for(name, message)
            for n, (name, message) in enumerate(zip(names, messages, strict=True))
        ]
        report = bounces_process(messages=[*raws, raws[0]], batch=batch)
        state = []
        for message in messages:
            message = Message.objects.select_related("recipient__contact").get(pk=message.pk)
            contact = message.recipient.contact
            state.append(
                (
                    message.status,
                    message.recipient.status,
                    contact.email_status,
                    contact.invalid_reason.replace(contact.email, "<address>"),
                    sorted(Suppression.objects.filter(email=contact.email).values_list("reason")),
                    sorted(message.events.values_list("type", "source", "to_status")),
                    sorted(message.rejections.values_list("kind", "category")),
                )
            )
        return report, state

    one_at_a_time = world("one", batch=1)
    in_batches = world("many", batch=5)

    assert in_batches == one_at_a_time
    report, _state = in_batches
    assert report.messages == len(names) + 1
    assert report.duplicates >= 1
    assert report.bounced_hard >= 5
