"""SMTP faults from a server that misbehaves on purpose (faulty_smtp.py), table-driven.

Recipient faults (a reply, a silence or a dropped connection about one recipient's message) end
in the message status and rejection category of DESIGN.md's table; the messages around them are
sent, so the worker carried on; they are not the account's failures, so the account stays on
however many there are. Faults of our own side (the relay refuses the connection, never greets,
breaks the TLS handshake, refuses our login or our sender) claim nothing or give the claim
back, mark no contact, count against the account, and switch it off after
LEADCENTER_ACCOUNT_MAX_FAILURES in a row; once a person fixes it, everything goes out once.
"""

from __future__ import annotations

import time
from collections import Counter

import pytest
from aiosmtpd.smtp import AuthResult

from campaigns.models import Message, SendingAccount
from campaigns.services import campaign_launch, dispatch_due, run_prepare
from campaigns.simulator import SimulatedInternet, SimulatorServer, _free_port
from contacts.models import Contact, Suppression
from leadcenter.factories import SendingAccountFactory
from leadcenter.testing import received
from tests.reliability.faulty_smtp import TARGET, Fault, FaultyServer
from tracking.models import Rejection

S = Message.Status
MAX_FAILURES = 3
TIMEOUT = 1  # the account's SMTP time-out, seconds; the faults hang for longer
HANG = 3
TARGETS = MAX_FAILURES + 1  # more recipient faults in a row than the account would stand

# name, fault, expected status, kind, category, SMTP code recorded
RECIPIENT_FAULTS = [
    (
        "time-out on RCPT",
        Fault("rcpt", "250 OK", hang=HANG),
        S.SOFT_BOUNCED,
        "soft",
        "no_answer",
        None,
    ),
    (
        "time-out on DATA",
        Fault("data", "250 OK", hang=HANG),
        S.SOFT_BOUNCED,
        "soft",
        "no_answer",
        None,
    ),
    (
        "421 mid-session",
        Fault(
            "mail",
            "421 4.3.2 System not accepting network messages, closing connection",
            close=True,
            every_second_mail=True,
        ),
        S.SOFT_BOUNCED,
        "soft",
        "no_answer",
        421,
    ),
    (
        "disconnect during DATA",
        Fault("data", close=True),
        S.SOFT_BOUNCED,
        "soft",
        "no_answer",
        None,
    ),
    (
        "451 throttling on RCPT",
        Fault("rcpt", "451 4.7.1 Rate limited, try again later"),
        S.SOFT_BOUNCED,
        "soft",
        "spam_blocked",
        451,
    ),
    (
        "452 throttling on RCPT",
        Fault("rcpt", "452 4.3.1 Insufficient system resources, try again later"),
        S.SOFT_BOUNCED,
        "soft",
        "unspecified",
        452,
    ),
    (
        "454 throttling on RCPT",
        Fault("rcpt", "454 4.7.0 Temporary authentication failure, try again later"),
        S.SOFT_BOUNCED,
        "soft",
        "spam_blocked",
        454,
    ),
    (
        "451 on DATA",
        Fault("data", "451 4.3.0 Error: queue file write error"),
        S.SOFT_BOUNCED,
        "soft",
        "unspecified",
        451,
    ),
    (
        "550 on RCPT",
        Fault("rcpt", "550 5.1.1 Recipient address rejected: User unknown"),
        S.BOUNCED,
        "hard",
        "user_not_found",
        550,
    ),
    (
        "554 on RCPT",
        Fault("rcpt", "554 5.7.1 Relay access denied"),
        S.FAILED,
        "soft",
        "spam_blocked",
        554,
    ),
    (
        "550 on DATA",
        Fault("data", "550 5.7.1 Message rejected as spam"),
        S.FAILED,
        "soft",
        "spam_blocked",
        550,
    ),
    (
        "554 on DATA",
        Fault("data", "554 5.3.4 Message too big for system"),
        S.FAILED,
        "soft",
        "unspecified",
        554,
    ),
]


def _refuse_login(server, session, envelope, mechanism, auth_data) -> AuthResult:
    return AuthResult(success=False, handled=False)


# name, fault (None: no server at all), account fields, server options, error on the account
ACCOUNT_FAULTS = [
    ("connection refused", None, {}, {}, "cannot talk to"),
    ("no greeting", Fault("greeting", hang=HANG * 2), {}, {}, "cannot talk to"),
    (
        "bad TLS handshake (STARTTLS)",
        Fault("starttls"),
        {"smtp_security": SendingAccount.Security.STARTTLS},
        {},
        "cannot talk to",
    ),
    (
        "bad TLS handshake (implicit TLS to a plain server)",
        Fault(None),
        {"smtp_security": SendingAccount.Security.SSL},
        {},
        "cannot talk to",
    ),
    (
        "failed authentication",
        Fault(None),
        {"smtp_username": "sales", "smtp_password": "wrong"},
        {"authenticator": _refuse_login, "auth_require_tls": False},
        "login refused",
    ),
    (
        "sender refused",
        Fault("mail", "553 5.7.1 Sender address rejected: not owned by user"),
        {},
        {},
        "refused",
    ),
]


def _campaign(make_campaign, add_contacts, account, n_targets: int):
    """Recipients alternate, a healthy address, then one the fault is about: ok0, target0,
    ok1, target1, ..., okN. Sent in this order, over one connection while it lasts."""
    emails = []
    for i in range(n_targets):
        emails += [f"ok{i}@example.test", f"t{i}.{TARGET}@example.test"]
    emails.append(f"ok{n_targets}@example.test")
    add_contacts(*emails)
    campaign = make_campaign(accounts=[account])
    run = campaign_launch(campaign=campaign, enqueue=False)
    run_prepare(run=run)
    return run, emails


def _dispatch() -> tuple[bool, str]:
    """One pass of the worker's dispatch: (survived, what it raised)."""
    try:
        dispatch_due()
    except Exception as exc:  # the worker would die with this
        return False, repr(exc)
    return True, ""


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("name", "fault", "status", "kind", "category", "code"),
    RECIPIENT_FAULTS,
    ids=[row[0] for row in RECIPIENT_FAULTS],
)
def test_a_recipient_fault_ends_in_its_status_and_category_and_the_worker_carries_on(
    make_campaign, add_contacts, settings, figures, name, fault, status, kind, category, code
):
    settings.LEADCENTER_ACCOUNT_MAX_FAILURES = MAX_FAILURES
    started = time.monotonic()
    with FaultyServer(fault) as server:
        account = SendingAccountFactory(
            name="Faulty",
            smtp_port=server.port,
            smtp_timeout=TIMEOUT,
            daily_limit=1000,
            per_minute_limit=1000,
        )
        run, emails = _campaign(make_campaign, add_contacts, account, TARGETS)
        survived, error = _dispatch()
        sink = received(server)

    messages = {m.recipient.email: m for m in Message.objects.select_related("recipient")}
    targets = [messages[e] for e in emails if TARGET in e]
    healthy = [messages[e] for e in emails if TARGET not in e]
    rejections = Counter(
        Rejection.objects.values_list("message__recipient__email", "kind", "category")
    )
    account.refresh_from_db()
    invalid = set(Contact.objects.filter(email_status="invalid").values_list("email", flat=True))
    suppressed = set(Suppression.objects.values_list("email", flat=True))
    outcome = {
        "fault": name,
        "targets": len(targets),
        "target_statuses": dict(Counter(m.status for m in targets)),
        "target_smtp_codes": sorted({m.smtp_code for m in targets}, key=str),
        "rejections": dict(Counter(f"{k}/{c}" for (_, k, c) in rejections.elements())),
        "healthy_sent": sum(m.status == S.SENT for m in healthy),
        "healthy": len(healthy),
        "delivered_to_targets": sum(n for (rcpt, _), n in sink.items() if TARGET in rcpt),
        "worker_survived": survived,
        "account_active": account.is_active,
        "account_failures": account.consecutive_failures,
        "contacts_invalid": len(invalid),
        "seconds": round(time.monotonic() - started, 2),
    }
    figures(f"smtp-fault-{_slug(name)}", {**outcome, "expected": [status, kind, category]})

    assert survived, error
    assert [m.status for m in targets] == [status] * TARGETS
    assert [m.smtp_code for m in targets] == [code] * TARGETS
    assert {(e, k, c) for (e, k, c) in rejections} == {
        (m.recipient.email, kind, category) for m in targets
    }
    assert all(n == 1 for n in rejections.values())
    assert outcome["healthy_sent"] == len(healthy), "the worker did not carry on after the fault"
    assert outcome["delivered_to_targets"] == 0
    # Not our side: the account stays on however many recipient faults in a row.
    assert account.is_active and account.consecutive_failures == 0
    target_emails = {m.recipient.email for m in targets}
    if kind == "hard":
        assert invalid == target_emails and suppressed == target_emails
    else:
        assert invalid == set() and suppressed == set()
    if status == S.SOFT_BOUNCED:
        assert all(m.next_attempt_at and m.next_attempt_at > m.claimed_at for m in targets)
    run.refresh_from_db()
    assert run.status in ("running", "waiting", "completed")


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in name.lower()).strip("-").replace("--", "-")


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("name", "fault", "account_fields", "server_options", "error"),
    ACCOUNT_FAULTS,
    ids=[row[0] for row in ACCOUNT_FAULTS],
)
def test_a_fault_of_our_own_side_holds_the_mail_back_and_stops_the_account_after_repeats(
    make_campaign,
    add_contacts,
    settings,
    figures,
    name,
    fault,
    account_fields,
    server_options,
    error,
):
    settings.LEADCENTER_ACCOUNT_MAX_FAILURES = MAX_FAILURES
    started = time.monotonic()
    server = FaultyServer(fault, **server_options) if fault is not None else None
    if server is not None:
        server.__enter__()
    try:
        account = SendingAccountFactory(
            name="Ours",
            smtp_port=server.port if server else _free_port(),
            smtp_timeout=TIMEOUT,
            daily_limit=1000,
            per_minute_limit=1000,
            **account_fields,
        )
        run, emails = _campaign(make_campaign, add_contacts, account, 2)
        passes = [_dispatch() for _ in range(MAX_FAILURES + 2)]
        sink = received(server) if server else Counter()
    finally:
        if server is not None:
            server.__exit__(None, None, None)
    account.refresh_from_db()
    run.refresh_from_db()
    held = Counter(Message.objects.values_list("status", flat=True))
    attempts = sum(Message.objects.values_list("attempts", flat=True))
    outcome = {
        "fault": name,
        "passes": len(passes),
        "worker_survived": all(ok for ok, _ in passes),
        "statuses_while_down": dict(held),
        "account_active": account.is_active,
        "account_failures": account.consecutive_failures,
        "account_error": account.last_error[:200],
        "run_error": run.error[:200],
        "rejections": Rejection.objects.count(),
        "contacts_invalid": Contact.objects.filter(email_status="invalid").count(),
        "delivered_while_down": sum(sink.values()),
    }

    # A person fixes the relay and switches the account on again: everything goes out, once.
    with SimulatorServer(SimulatedInternet()) as healthy:
        SendingAccount.objects.filter(pk=account.pk).update(
            smtp_port=healthy.port,
            smtp_security=SendingAccount.Security.NONE,
            smtp_username="",
            smtp_password="",
            is_active=True,
        )
        survived_after, _ = _dispatch()
        after = received(healthy)
    outcome.update(
        recovered_sent=Message.objects.filter(status=S.SENT).count(),
        recovered_delivered_once=sorted(Counter(r for r, _ in after).values()) == [1] * len(emails),
        seconds=round(time.monotonic() - started, 2),
    )
    figures(f"smtp-ours-{_slug(name)}", outcome)

    assert outcome["worker_survived"], passes
    assert held == {S.QUEUED: len(emails)}
    assert outcome["delivered_while_down"] == 0
    assert error in account.last_error
    assert not account.is_active
    assert account.consecutive_failures == MAX_FAILURES  # not tried again once switched off
    assert f"switched off after {MAX_FAILURES} failures" in run.error
    assert outcome["rejections"] == 0 and outcome["contacts_invalid"] == 0
    assert not Suppression.objects.exists()
    assert attempts <= MAX_FAILURES * len(emails)
    assert survived_after
    assert outcome["recovered_sent"] == len(emails)
    assert outcome["recovered_delivered_once"]
