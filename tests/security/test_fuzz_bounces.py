"""Bounce and feedback messages fuzzed with hypothesis: random bytes, email-shaped messages,
RFC 3464 delivery reports and RFC 5965 feedback reports with random fields, and real-looking
bounces byte-mutated. `bounce_parse` never raises; `bounces_process` and the
`process_bounces` command record them without an unhandled exception, and a message that is
not about one of our emails changes no message, contact or suppression."""

from __future__ import annotations

import mailbox
from email.message import EmailMessage, Message
from email.mime.base import MIMEBase

import pytest
from django.core.management import call_command
from hypothesis import given
from hypothesis import strategies as st

from campaigns.models import Message as SentMessage
from contacts.models import Contact, Suppression
from leadcenter.factories import MessageFactory
from tests.security.fuzz import fuzz_settings, tried
from tracking.bounces import bounce_parse, bounces_process
from tracking.models import TrackingEvent

pytestmark = pytest.mark.django_db

# Constructed messages get printable ASCII headers (the email package refuses the rest);
# non-ASCII, control characters and broken structure come from email_shaped() and mutated().
header_text = st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=80)
addresses = st.one_of(
    st.from_regex(r"[a-z0-9.+_-]{1,20}@[a-z0-9-]{1,20}\.(com|net|test)", fullmatch=True),
    header_text,
    st.just("bounces+AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA@leadcenter.test"),  # a VERP look-alike
)
# What goes into a parsed address header of a constructed message (the email package refuses
# the rest while the test builds it); anything else goes in report fields and bodies.
header_addresses = st.from_regex(
    r"[a-z0-9.+_-]{1,20}@[a-z0-9-]{1,20}\.(com|net|test)", fullmatch=True
)
statuses = st.one_of(st.from_regex(r"[245]\.[0-9]{1,3}\.[0-9]{1,3}", fullmatch=True), header_text)
HEADER_NAMES = [
    "From", "To", "Subject", "Date", "Message-ID", "In-Reply-To", "References",
    "Auto-Submitted", "Delivered-To", "X-Original-To", "Return-Path", "Content-Type",
    "X-Failed-Recipients", "Precedence", "Feedback-Type", "X-Autoreply",
]  # fmt: skip


@pytest.fixture
def ours(db):
    # One of our emails, so a fuzzed message has something it could wrongly match.
    return MessageFactory(recipient__email="someone@example.test", status=SentMessage.Status.SENT)


def state() -> tuple:
    return (
        list(SentMessage.objects.order_by("pk").values()),
        list(Contact.objects.order_by("pk").values()),
        Suppression.objects.count(),
        TrackingEvent.objects.filter(message__isnull=False).count(),
    )


@st.composite
def email_shaped(draw) -> bytes:
    lines = [
        f"{draw(st.sampled_from(HEADER_NAMES))}: {draw(header_text)}"
        for _ in range(draw(st.integers(0, 8)))
    ]
    return ("\r\n".join(lines) + "\r\n\r\n" + draw(st.text(max_size=400))).encode(
        "utf-8", "surrogateescape"
    )


@st.composite
def delivery_reports(draw) -> bytes:
    """An RFC 3464 report shaped like campaigns.simulator.build_dsn's, with random fields
    (built here: build_dsn takes its Message-ID from the random module)."""
    recipient = draw(addresses)
    dsn = EmailMessage()
    dsn["From"] = "Mail Delivery System <MAILER-DAEMON@mx.elsewhere.test>"
    dsn["To"] = draw(header_addresses)
    dsn["Subject"] = draw(st.sampled_from(["Undelivered Mail Returned to Sender", ""]))
    dsn["Message-ID"] = f"<dsn-{draw(st.integers(0, 10**6))}@elsewhere.test>"
    dsn.set_content(f"<{recipient}>: {draw(header_text)}\n")
    dsn.make_mixed()
    dsn.replace_header("Content-Type", 'multipart/report; report-type="delivery-status"')
    dsn.set_boundary("lc-fuzz-boundary")  # not the random module's
    per_message, per_recipient = Message(), Message()
    per_message["Reporting-MTA"] = f"dns; {draw(header_text)}"
    per_recipient["Final-Recipient"] = f"rfc822; {recipient}"
    per_recipient["Action"] = draw(st.sampled_from(["failed", "delayed", "delivered", "", "x"]))
    per_recipient["Status"] = draw(statuses)
    per_recipient["Diagnostic-Code"] = draw(header_text)
    report = MIMEBase("message", "delivery-status")
    report.set_payload([per_message, per_recipient])
    dsn.attach(report)
    returned = MIMEBase("text", "rfc822-headers")
    message_id = draw(st.sampled_from(["<x@elsewhere.test>", "", "<>", "<<>>"]))
    returned.set_payload(f"Message-ID: {message_id}\nSubject: {draw(header_text)}\n")
    dsn.attach(returned)
    return dsn.as_bytes()


@st.composite
def feedback_reports(draw) -> bytes:
    report = EmailMessage()
    report["From"] = draw(header_addresses)
    report["Subject"] = draw(header_text)
    report.set_content(draw(st.text(max_size=200)))
    report.make_mixed()
    report.replace_header("Content-Type", 'multipart/report; report-type="feedback-report"')
    report.set_boundary("lc-fuzz-boundary")
    fields = Message()
    fields["Feedback-Type"] = draw(st.sampled_from(["abuse", "fraud", "other", ""]))
    fields["User-Agent"] = draw(header_text)
    fields["Version"] = draw(st.sampled_from(["1", "0.1", "x"]))
    fields["Original-Rcpt-To"] = draw(addresses)
    part = Message()
    part["Content-Type"] = "message/feedback-report"
    part.set_payload(fields.as_string())
    report.attach(part)
    return report.as_bytes()


@st.composite
def mutated(draw, source) -> bytes:
    data = bytearray(draw(source))
    for _ in range(draw(st.integers(1, 12))):
        if not data:
            break
        i = draw(st.integers(0, len(data) - 1))
        data[i] = draw(st.integers(0, 255))
    if draw(st.booleans()):
        data = data[: draw(st.integers(0, len(data)))]
    return bytes(data)


raw_messages = st.one_of(
    st.binary(max_size=1500),
    email_shaped(),
    delivery_reports(),
    feedback_reports(),
    mutated(delivery_reports()),
    mutated(feedback_reports()),
)


@fuzz_settings(scale=3)
@given(raw=raw_messages)
def test_fuzzed_bounce_messages_never_raise_and_change_nothing_of_ours(ours, raw):
    tried("bounce and feedback messages")
    parsed = bounce_parse(raw)  # never raises, by contract
    assert parsed, "every message gives at least one event (an unknown one at worst)"
    before = state()

    report = bounces_process(messages=[raw])

    assert report.messages == 1
    assert state() == before


def test_the_command_reads_a_mailbox_of_garbage_without_failing(ours, tmp_path):
    box = mailbox.Maildir(tmp_path / "Maildir")
    samples = [
        b"",
        b"\x00\xff" * 200,
        b"From: MAILER-DAEMON@x\r\nContent-Type: multipart/report; boundary=\r\n\r\n--\r\n",
        b"Content-Type: message/delivery-status\r\n\r\nStatus: 9.9.9\r\nAction: failed\r\n",
        b'Subject: =?utf-8?q?=ZZ?=\r\nFrom: "\r\n\r\nbody',
    ]
    for sample in samples:
        box.add(sample)
    before = state()

    call_command("process_bounces", maildir=str(tmp_path / "Maildir"))

    assert state() == before
