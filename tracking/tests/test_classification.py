from __future__ import annotations

from typing import Any

import pytest

from tracking.classification import Classification, classify_rejection, parse_smtp_reply
from tracking.models import Rejection

Kind, Category = Rejection.Kind, Rejection.Category
USER = Classification(Kind.HARD, Category.USER_NOT_FOUND)
DOMAIN = Classification(Kind.HARD, Category.DOMAIN_NOT_FOUND)
FULL = Classification(Kind.SOFT, Category.MAILBOX_FULL)
NO_ANSWER = Classification(Kind.SOFT, Category.NO_ANSWER)
SPAM = Classification(Kind.SOFT, Category.SPAM_BLOCKED)
UNSPECIFIED = Classification(Kind.SOFT, Category.UNSPECIFIED)


# Replies as real servers write them, classified from the text alone.
REAL_WORLD = [
    # --- Gmail ---
    (
        "550-5.1.1 The email account that you tried to reach does not exist. Please try "
        "double-checking the recipient's email address for typos or unnecessary spaces. Learn "
        "more at\n550 5.1.1  https://support.google.com/mail/?p=NoSuchUser",
        USER,
    ),
    ("452-4.2.2 The email account that you tried to reach is over quota.", FULL),
    ("552-5.2.2 The email account that you tried to reach is over quota and inactive.", FULL),
    ("550-5.2.1 The email account that you tried to reach is disabled.", USER),
    # 4.2.1 is Gmail's "receiving mail too quickly": x.2.1 is a user code, but 4xx is never hard.
    ("450-4.2.1 The user you are trying to contact is receiving mail too quickly.", UNSPECIFIED),
    (
        "550-5.7.26 This mail is unauthenticated, which poses a security risk to the sender and "
        "Gmail users, and has been blocked.",
        SPAM,
    ),
    (
        "421-4.7.0 [1.2.3.4] Our system has detected an unusual rate of unsolicited mail "
        "originating from your IP address.",
        SPAM,
    ),
    (
        "550-5.7.1 [1.2.3.4] Our system has detected that this message is likely unsolicited mail.",
        SPAM,
    ),
    # Generic 4.3.0, but 421 itself says the server closed the channel on us.
    ("421-4.3.0 Temporary System Problem.  Try again later.", NO_ANSWER),
    # --- Microsoft 365 / Outlook.com ---
    ("550 5.1.10 RESOLVER.ADR.RecipientNotFound; Recipient not found by SMTP address lookup", USER),
    ("#550 5.1.1 RESOLVER.ADR.ExRecipNotFound; not found ##", USER),
    # 5.4.1 "Access denied" (DBEB) usually means no such recipient in the tenant, but it is also
    # what a tenant's relay/connector misconfiguration returns; the text never says the user is
    # missing, so we do not mark the contact invalid on it.
    ("550 5.4.1 Recipient address rejected: Access denied. AS(201806281)", UNSPECIFIED),
    ("554 5.2.2 mailbox full; STOREDRV.Deliver.Exception:QuotaExceededException", FULL),
    ("550 5.7.606 Access denied, banned sending IP [1.2.3.4]", SPAM),
    # 4.7.500-699 is Microsoft throttling a sender it does not trust yet: the table puts every
    # 4.7.x under the spam filter, even though the words only say "Server busy".
    ("451 4.7.500 Server busy. Please try again later.", SPAM),
    (
        "550 5.7.1 Unfortunately, messages from [1.2.3.4] weren't sent. Please contact your "
        "Internet service provider since part of their network is on our block list (S3150).",
        SPAM,
    ),
    # Outlook.com uses this for missing mailboxes, but so do many servers for policy refusals.
    ("550 5.5.0 Requested action not taken: mailbox unavailable (S2017062302).", UNSPECIFIED),
    # 5.1.8 is about our sender address: never the recipient's fault.
    ("550 5.1.8 Access denied, bad outbound sender.", UNSPECIFIED),
    ("550 5.4.316 Message expired, connection refused(Socket error code 10061)", NO_ANSWER),
    # --- Yahoo / AOL ---
    (
        "554 delivery error: dd This user doesn't have a yahoo.com account (x@yahoo.com) [0] - "
        "mta1.mail.yahoo.com",
        USER,
    ),
    (
        "421 4.7.0 [TSS04] Messages from 1.2.3.4 temporarily deferred due to unexpected volume "
        "or user complaints - 4.16.55.1; see https://postmaster.yahooinc.com/error-codes",
        SPAM,
    ),
    (
        "553 5.7.1 [BL21] Connections will not be accepted from 1.2.3.4, because the ip is in "
        "Spamhaus's list; see https://postmaster.yahooinc.com/error-codes",
        SPAM,
    ),
    ("554 5.7.1 :HVU:B1 https://postmaster.aol.com/error-codes#554hvub1", SPAM),
    # --- Postfix ---
    (
        "550 5.1.1 <x@example.com>: Recipient address rejected: User unknown in local recipient "
        "table",
        USER,
    ),
    (
        "Host or domain name not found. Name service error for name=example.invalid type=A: "
        "Host not found",
        DOMAIN,
    ),
    ("connect to mx.example.com[1.2.3.4]:25: Connection timed out", NO_ANSWER),
    ("connect to mx.example.com[1.2.3.4]:25: Connection refused", NO_ANSWER),
    (
        "lost connection with mx.example.com[1.2.3.4] while receiving the initial server greeting",
        NO_ANSWER,
    ),
    ("452 4.2.2 Mailbox full", FULL),
    ("554 5.7.1 Service unavailable; Client host [1.2.3.4] blocked using zen.spamhaus.org", SPAM),
    ("554 5.7.1 <x@example.com>: Relay access denied", SPAM),
    # Greylisting is a temporary, generic refusal.
    (
        "450 4.2.0 <x@example.com>: Recipient address rejected: Greylisted, see "
        "http://postgrey.schweikert.ch/help/example.com.html",
        UNSPECIFIED,
    ),
    # Our own sender domain does not resolve: the recipient is fine.
    ("450 4.1.8 <noreply@ours.example>: Sender address rejected: Domain not found", UNSPECIFIED),
    ("550 5.1.2 Host unknown (Name server: example.invalid: host not found)", DOMAIN),
    ("552 5.3.4 Message size exceeds fixed limit", UNSPECIFIED),
    ("452 4.5.3 Error: too many recipients", UNSPECIFIED),
    # --- Exim ---
    # Exim says "Unrouteable address" when the domain has no MX/A record (the router found no
    # host), so the usual reading is a dead domain.
    ("550 Unrouteable address", DOMAIN),
    # Exim gave up after its retry window without ever getting through.
    ("retry timeout exceeded", NO_ANSWER),
    ("550 No Such User Here", USER),
    (
        "SMTP error from remote mail server after RCPT TO:<x@example.com>: 550 5.1.1 User unknown",
        USER,
    ),
    # The cause Exim gave up on was the full mailbox, not the network.
    ("mailbox is full: retry timeout exceeded", FULL),
    ("all relevant MX records point to non-existent hosts", DOMAIN),
    ("SMTP error from remote mail server after end of data: 550 Message rejected as spam", SPAM),
    # --- others ---
    ("550 5.1.1 <x@comcast.net> Not our Customer", USER),
    ("550 Invalid Recipient - https://community.mimecast.com/docs/DOC-1369#550", USER),
    ("550 permanent failure for one or more recipients (x@example.com:blocked)", SPAM),
    ("554 5.7.1 Rejected by dnsbl: bl.spamcop.net", SPAM),
    ("550 5.1.0 Address rejected.", UNSPECIFIED),
]


@pytest.mark.parametrize(("text", "expected"), REAL_WORLD)
def test_real_world_replies(text: str, expected: Classification) -> None:
    assert classify_rejection(text=text) == expected
    # The Diagnostic-Code form ("smtp; ...") classifies the same.
    assert classify_rejection(text=f"smtp; {text}") == expected


# Every signal of the rejection table, one per row.
SIGNALS: list[tuple[dict[str, Any], Classification]] = [
    # user not found
    ({"smtp_status": "5.1.1"}, USER),
    ({"smtp_status": "5.1.10"}, USER),
    ({"smtp_status": "5.2.1"}, USER),
    ({"smtp_status": "5.1.6"}, USER),
    ({"smtp_code": 550, "text": "user unknown"}, USER),
    ({"smtp_code": 551, "text": "no such user"}, USER),
    ({"smtp_code": 553, "text": "mailbox does not exist"}, USER),
    ({"reject_reason": "invalid"}, USER),
    # domain not found
    ({"smtp_status": "5.1.2"}, DOMAIN),
    ({"smtp_status": "5.4.4", "text": "Domain not found"}, DOMAIN),
    ({"text": "no MX record for example.invalid"}, DOMAIN),
    ({"text": "DNS lookup returned NXDOMAIN"}, DOMAIN),
    # mailbox full
    ({"smtp_status": "4.2.2"}, FULL),
    ({"smtp_status": "5.2.2"}, FULL),
    ({"smtp_code": 452, "text": "quota exceeded"}, FULL),
    ({"smtp_code": 552, "text": "Mailbox full"}, FULL),
    ({"smtp_code": 552, "text": "user is over quota"}, FULL),
    ({"smtp_code": 452, "text": "insufficient storage"}, FULL),
    # no answer
    ({"smtp_code": 421}, NO_ANSWER),
    ({"smtp_status": "4.4.1"}, NO_ANSWER),
    ({"smtp_status": "4.4.7"}, NO_ANSWER),
    ({"smtp_status": "5.4.7"}, NO_ANSWER),
    ({"text": "Connection reset by peer"}, NO_ANSWER),
    ({"reject_reason": "timed_out"}, NO_ANSWER),
    # spam blocked
    ({"smtp_status": "5.7.1"}, SPAM),
    ({"smtp_status": "4.7.1"}, SPAM),
    ({"smtp_status": "5.7.26"}, SPAM),
    ({"smtp_status": "5.7.27"}, SPAM),
    ({"smtp_status": "4.7.0"}, SPAM),
    ({"smtp_code": 554, "text": "Message looks like spam"}, SPAM),
    ({"smtp_code": 554, "text": "IP is on a blacklist"}, SPAM),
    ({"smtp_code": 554, "text": "poor sender reputation"}, SPAM),
    ({"reject_reason": "spam"}, SPAM),
    ({"reject_reason": "blocked"}, SPAM),
    # unspecified
    ({"smtp_status": "5.3.0"}, UNSPECIFIED),
    ({"smtp_status": "4.3.2"}, UNSPECIFIED),
    ({"smtp_code": 550}, UNSPECIFIED),
    ({"smtp_code": 451}, UNSPECIFIED),
    ({"text": "something odd happened"}, UNSPECIFIED),
    ({}, UNSPECIFIED),
    # anymail's "bounced" does not by itself mean hard; "other"/"unsubscribed" say nothing.
    ({"reject_reason": "bounced"}, UNSPECIFIED),
    ({"reject_reason": "other"}, UNSPECIFIED),
    ({"reject_reason": "unsubscribed"}, UNSPECIFIED),
]


@pytest.mark.parametrize(("kwargs", "expected"), SIGNALS)
def test_table_signals(kwargs: dict[str, Any], expected: Classification) -> None:
    assert classify_rejection(**kwargs) == expected


ESP: list[tuple[dict[str, str], Classification]] = [
    ({"bounceType": "Permanent", "bounceSubType": "NoEmail"}, USER),
    ({"bounceType": "Permanent", "bounceSubType": "Suppressed"}, USER),
    ({"bounceType": "Permanent", "bounceSubType": "OnAccountSuppressionList"}, UNSPECIFIED),
    ({"bounceType": "Permanent", "bounceSubType": "General"}, UNSPECIFIED),
    ({"bounceType": "Transient", "bounceSubType": "MailboxFull"}, FULL),
    ({"bounceType": "Transient", "bounceSubType": "MessageTooLarge"}, UNSPECIFIED),
    ({"bounceType": "Transient", "bounceSubType": "ContentRejected"}, SPAM),
    ({"bounceType": "Transient", "bounceSubType": "General"}, UNSPECIFIED),
    ({"bounceType": "Undetermined", "bounceSubType": "Undetermined"}, UNSPECIFIED),
    ({"Type": "HardBounce"}, USER),
    ({"Type": "BadEmailAddress"}, USER),
    ({"Type": "SoftBounce"}, UNSPECIFIED),
    ({"Type": "Transient"}, NO_ANSWER),
    ({"Type": "DnsError"}, NO_ANSWER),
    ({"Type": "SpamNotification"}, SPAM),
    ({"Type": "SpamComplaint"}, SPAM),
    ({"Type": "Blocked"}, SPAM),
    ({"Type": "AutoResponder"}, UNSPECIFIED),
    ({"Type": "ManuallyDeactivated"}, UNSPECIFIED),
    ({"Type": "Unknown"}, UNSPECIFIED),
]


@pytest.mark.parametrize(("esp_fields", "expected"), ESP)
def test_esp_fields(esp_fields: dict[str, str], expected: Classification) -> None:
    assert classify_rejection(esp_fields=esp_fields) == expected


PRECEDENCE: list[tuple[str, dict[str, Any], Classification]] = [
    # Generic enhanced or basic codes let the words decide.
    ("generic 5.0.0 + user words", {"text": "550 5.0.0 User unknown"}, USER),
    (
        "generic 5.0.0 + blocklist words",
        {"text": "554 5.0.0 Service unavailable; Client host blocked using zen.spamhaus.org"},
        SPAM,
    ),
    ("generic 5.1.0 + user words", {"text": "550 5.1.0 <x@example.com> no such mailbox"}, USER),
    ("generic 5.5.0 + quota words", {"text": "552 5.5.0 quota exceeded"}, FULL),
    ("generic 4.0.0 + timeout", {"text": "451 4.0.0 Connection timed out"}, NO_ANSWER),
    # A specific enhanced code beats the words.
    ("5.2.2 beats 'does not exist'", {"text": "552 5.2.2 mailbox does not exist or full"}, FULL),
    ("5.1.1 beats spam words", {"text": "550 5.1.1 blocked: no such user"}, USER),
    ("5.7.1 beats user words", {"text": "550 5.7.1 user unknown"}, SPAM),
    ("enhanced beats 421", {"text": "421 4.7.0 try again later"}, SPAM),
    # A 5.1.1 with no text is hard.
    ("bare 5.1.1 text", {"text": "5.1.1"}, USER),
    ("bare 5.1.1 status", {"smtp_status": "5.1.1", "smtp_code": 550}, USER),
    # 4xx is never hard, whatever it says.
    ("4xx user words", {"text": "450 User unknown"}, UNSPECIFIED),
    ("4.1.1", {"smtp_status": "4.1.1"}, UNSPECIFIED),
    ("4xx code + 5.1.1 status", {"smtp_code": 450, "smtp_status": "5.1.1"}, UNSPECIFIED),
    # A temporary dead domain is a server we cannot reach right now.
    (
        "4.1.2",
        {"text": "450 4.1.2 <x@example.com>: Recipient address rejected: Domain not found"},
        NO_ANSWER,
    ),
    (
        "DNS try again",
        {"text": "Name service error for name=example.com type=MX: Host not found, try again"},
        NO_ANSWER,
    ),
    ("4.4.3 DNS", {"smtp_status": "4.4.3", "text": "Host or domain name not found"}, NO_ANSWER),
    # Codes beat ESP fields; ESP fields beat anymail and words.
    ("code beats SES", {"smtp_status": "5.1.1", "esp_fields": {"bounceType": "Transient"}}, USER),
    (
        "SES transient keeps words soft",
        {"text": "user unknown", "esp_fields": {"bounceType": "Transient"}},
        UNSPECIFIED,
    ),
    (
        "SES permanent/general + user words",
        {
            "text": "user unknown",
            "esp_fields": {"bounceType": "Permanent", "bounceSubType": "General"},
        },
        USER,
    ),
    (
        "SES beats anymail",
        {
            "esp_fields": {"bounceType": "Transient", "bounceSubType": "MailboxFull"},
            "reject_reason": "invalid",
        },
        FULL,
    ),
    (
        "Postmark beats words",
        {"esp_fields": {"Type": "AutoResponder"}, "text": "does not exist"},
        UNSPECIFIED,
    ),
    # Postmark's HardBounce and anymail's invalid are only defaults: the words may refine them.
    (
        "HardBounce refined to domain",
        {"esp_fields": {"Type": "HardBounce"}, "text": "Host or domain name not found"},
        DOMAIN,
    ),
    ("invalid refined to domain", {"reject_reason": "invalid", "text": "no MX record"}, DOMAIN),
    ("anymail beats words", {"reject_reason": "timed_out", "text": "user unknown"}, NO_ANSWER),
    ("bounced + user words", {"reject_reason": "bounced", "text": "No such user"}, USER),
    # Explicit arguments win over what the text says.
    ("explicit status wins", {"smtp_status": "5.2.2", "text": "550 5.1.1 User unknown"}, FULL),
    ("explicit code wins", {"smtp_code": 421, "text": "550 Unknown error"}, NO_ANSWER),
    ("status with noise", {"smtp_status": " #5.1.1 (bad address)"}, USER),
    ("unreadable status ignored", {"smtp_status": "n/a", "text": "over quota"}, FULL),
]


@pytest.mark.parametrize(
    ("kwargs", "expected"), [p[1:] for p in PRECEDENCE], ids=[p[0] for p in PRECEDENCE]
)
def test_precedence(kwargs: dict[str, Any], expected: Classification) -> None:
    assert classify_rejection(**kwargs) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "smtp; 550-5.1.1 The email account that you tried to reach does not exist. Learn "
            "more at\n550 5.1.1  https://support.google.com/mail/?p=NoSuchUser",
            (
                550,
                "5.1.1",
                "The email account that you tried to reach does not exist. Learn more "
                "at https://support.google.com/mail/?p=NoSuchUser",
            ),
        ),
        (
            "550 5.1.10 RESOLVER.ADR.RecipientNotFound; Recipient not found",
            (550, "5.1.10", "RESOLVER.ADR.RecipientNotFound; Recipient not found"),
        ),
        (
            "SMTP error from remote mail server after RCPT TO:<x1@example.com>: 550 5.1.1 User "
            "unknown",
            (
                550,
                "5.1.1",
                "SMTP error from remote mail server after RCPT TO:<x1@example.com>: User unknown",
            ),
        ),
        # The "(554.30)" id and the "[0]" are not codes.
        (
            "554 delivery error: dd mailbox is disabled (554.30)",
            (554, "", "delivery error: dd mailbox is disabled (554.30)"),
        ),
        ("Status: 5.1.1", (None, "5.1.1", "Status:")),
        # IP addresses, ports and version numbers are not codes.
        (
            "connect to mx.example.com[5.6.7.8]:25: Connection refused",
            (None, "", "connect to mx.example.com[5.6.7.8]:25: Connection refused"),
        ),
        ("Exim 4.94.2 lost connection", (None, "", "Exim 4.94.2 lost connection")),
        ("550 Unrouteable address", (550, "", "Unrouteable address")),
        ("421", (421, "", "")),
        ("", (None, "", "")),
    ],
)
def test_parse_smtp_reply(text: str, expected: tuple[int | None, str, str]) -> None:
    assert parse_smtp_reply(text) == expected


def test_is_hard() -> None:
    assert USER.is_hard and DOMAIN.is_hard
    assert not any(c.is_hard for c in (FULL, NO_ANSWER, SPAM, UNSPECIFIED))
