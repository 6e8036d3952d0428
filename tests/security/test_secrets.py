"""The SMTP password of a sending account and the password of a bounce mailbox never appear in
a page, a log or an export, for any role (every admin page is checked by
test_permission_matrix.py as it opens it)."""

from __future__ import annotations

import logging
import socket
import threading

import pytest
from aiosmtpd.smtp import AuthResult
from django.urls import reverse

from campaigns.models import CampaignRun, SendingAccount
from campaigns.services import campaign_launch, dispatch_due, run_prepare
from campaigns.simulator import SimulatedInternet, SimulatorServer
from leadcenter.factories import SendingAccountFactory
from tests.security.conftest import (
    MAILBOX_PASSWORD,
    SMTP_PASSWORD,
    assert_no_secret,
    body,
    contacts_export,
    file_text,
)
from tracking.bounces import mailbox_poll
from tracking.models import BounceMailbox

pytestmark = pytest.mark.django_db


# Every admin page, for every role, is checked for the passwords by
# tests/security/test_permission_matrix.py as it opens them (one pass over the admin instead
# of two).


def _account_form(account: SendingAccount) -> dict:
    return {
        "name": account.name,
        "from_email": account.from_email,
        "from_name": account.from_name,
        "is_active": "on",
        "smtp_host": account.smtp_host,
        "smtp_port": account.smtp_port,
        "smtp_security": account.smtp_security,
        "smtp_username": account.smtp_username,
        "smtp_timeout": account.smtp_timeout,
        "daily_limit": account.daily_limit,
        "per_minute_limit": account.per_minute_limit,
        "active_weekdays": account.active_weekdays,
        "timezone": account.timezone,
    }


def test_a_saved_password_is_kept_but_never_rendered_back(superuser_client, world):
    account = world["campaigns.sendingaccount"]
    url = reverse("admin:campaigns_sendingaccount_change", args=[account.pk])

    response = superuser_client.post(url, _account_form(account))  # password left empty

    assert response.status_code == 302
    account.refresh_from_db()
    assert account.smtp_password == SMTP_PASSWORD
    assert_no_secret(superuser_client.get(url).content, "the account's change form")


def test_no_export_holds_a_password(clients, world):
    manager = clients["manager"]
    campaign = world["campaigns.campaign"]
    downloads = {
        "contacts CSV": contacts_export(manager, "csv"),
        "contacts XLSX": contacts_export(manager, "xlsx"),
        "sent emails": manager.get(reverse("admin:campaigns_message_export")),
        "recipients": manager.get(reverse("admin:campaigns_recipient_export")),
        "summary": manager.get(
            reverse("admin:campaigns_campaign_summary_export", args=[campaign.pk])
        ),
        "export job": manager.get(
            reverse("admin:campaigns_exportjob_download", args=[world["export_job"].pk])
        ),
    }
    for name, response in downloads.items():
        assert response.status_code == 200, name
        data = body(response)
        assert len(data) > 100, name
        assert_no_secret(file_text(data), name)


def _accept_everyone(server, session, envelope, mechanism, auth_data) -> AuthResult:
    return AuthResult(success=True)


def _refuse_everyone(server, session, envelope, mechanism, auth_data) -> AuthResult:
    return AuthResult(success=False, handled=False)


@pytest.mark.parametrize(
    "authenticator", [_accept_everyone, _refuse_everyone], ids=["ok", "refused"]
)
def test_no_log_line_holds_the_password_during_a_send(
    caplog, make_campaign, add_contacts, authenticator
):
    caplog.set_level(logging.DEBUG)
    handler = SimulatedInternet()
    with SimulatorServer(handler, authenticator=authenticator, auth_require_tls=False) as server:
        account = SendingAccountFactory(
            name="Authenticated relay",
            smtp_port=server.port,
            smtp_username="sales",
            smtp_password=SMTP_PASSWORD,
            smtp_timeout=5,
        )
        add_contacts("a@example.test", "b@example.test")
        campaign = make_campaign(accounts=[account])
        run = campaign_launch(campaign=campaign, enqueue=False)
        run_prepare(run=run)
        dispatch_due()

    account.refresh_from_db()
    run = CampaignRun.objects.get(pk=run.pk)
    if authenticator is _refuse_everyone:
        assert "login refused" in account.last_error
    else:
        assert len(handler.delivered) == 2
    assert caplog.records, "the send logged nothing: the capture is not working"
    for record in caplog.records:
        assert_no_secret(record.getMessage(), f"the log line {record.name}")
        if record.exc_info:
            assert_no_secret(logging.Formatter().formatException(record.exc_info), "a traceback")
    assert_no_secret(account.last_error, "the account's last error")
    assert_no_secret(run.error, "the run's error")


def test_a_view_only_person_sees_whether_a_password_is_stored_not_what_it_is(
    roles, staff_client, world
):
    from django.contrib.auth.models import Group, Permission

    # No role views bounce mailboxes today; give Staff the view permission to check the page.
    Group.objects.get(name="Staff").permissions.add(
        Permission.objects.get(codename="view_bouncemailbox")
    )
    pages = {
        "account": reverse(
            "admin:campaigns_sendingaccount_change", args=[world["campaigns.sendingaccount"].pk]
        ),
        "mailbox": reverse(
            "admin:tracking_bouncemailbox_change", args=[world["tracking.bouncemailbox"].pk]
        ),
    }
    for name, url in pages.items():
        response = staff_client.get(url)
        assert response.status_code == 200, name
        assert "stored (never shown)" in response.content.decode(), name
        assert_no_secret(response.content, name)


class _RefusingPop3:
    """A POP3 server on loopback that greets, takes USER and refuses every PASS, remembering
    what it was sent (so the test knows the password really went over the wire)."""

    def __init__(self) -> None:
        self.received: list[bytes] = []
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(1)
        self.port = self.sock.getsockname()[1]
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        conn, _ = self.sock.accept()
        with conn, conn.makefile("rwb") as stream:
            stream.write(b"+OK ready\r\n")
            stream.flush()
            for line in stream:
                self.received.append(line)
                if line.upper().startswith(b"USER"):
                    stream.write(b"+OK\r\n")
                elif line.upper().startswith(b"PASS"):
                    stream.write(b"-ERR [AUTH] invalid user name or password\r\n")
                else:
                    stream.write(b"+OK bye\r\n")
                    stream.flush()
                    break
                stream.flush()

    def close(self) -> None:
        self.sock.close()


def test_no_log_line_holds_the_mailbox_password_when_its_login_fails(caplog, world):
    caplog.set_level(logging.DEBUG)
    server = _RefusingPop3()
    mailbox = world["tracking.bouncemailbox"]
    BounceMailbox.objects.filter(pk=mailbox.pk).update(
        protocol="pop3", host="127.0.0.1", port=server.port, use_ssl=False
    )
    try:
        report = mailbox_poll(mailbox_id=mailbox.pk)
    finally:
        server.close()

    mailbox.refresh_from_db()
    assert report.errors == 1
    assert any(MAILBOX_PASSWORD.encode() in line for line in server.received)
    assert "invalid user name or password" in mailbox.last_error
    assert_no_secret(mailbox.last_error, "the mailbox's last error")
    assert caplog.records
    for record in caplog.records:
        assert_no_secret(record.getMessage(), f"the log line {record.name}")
        if record.exc_info:
            assert_no_secret(logging.Formatter().formatException(record.exc_info), "a traceback")
