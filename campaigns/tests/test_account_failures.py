"""Our own side failing: the relay down, our login refused. Messages wait, contacts are
untouched, the error shows on the account and the run, and the account stops after repeats."""

from __future__ import annotations

import pytest
from aiosmtpd.smtp import AuthResult

from campaigns.models import CampaignRun, Message, SendingAccount
from campaigns.services import campaign_launch, dispatch_due, run_prepare
from campaigns.simulator import SimulatedInternet, SimulatorServer, _free_port
from contacts.models import Contact, Suppression
from leadcenter.factories import SendingAccountFactory

pytestmark = pytest.mark.django_db
S = Message.Status


@pytest.fixture
def dead_account():
    # Nothing listens on this port: connection refused, as with a relay that is down.
    return SendingAccountFactory(name="Dead relay", smtp_port=_free_port(), smtp_timeout=2)


def test_a_relay_that_refuses_connections_claims_nothing_and_marks_no_contact(
    make_campaign, add_contacts, dead_account
):
    add_contacts("a@example.test", "b@example.test")
    campaign = make_campaign(accounts=[dead_account])
    run = campaign_launch(campaign=campaign, enqueue=False)
    run_prepare(run=run)

    report = dispatch_due()

    assert report.claimed == 0
    assert set(Message.objects.values_list("status", flat=True)) == {S.QUEUED}
    dead_account.refresh_from_db()
    assert "cannot talk to 127.0.0.1" in dead_account.last_error
    assert dead_account.consecutive_failures == 1
    run.refresh_from_db()
    assert "Dead relay" in run.error
    assert not Contact.objects.filter(email_status="invalid").exists()
    assert not Suppression.objects.exists()


def test_the_account_is_switched_off_after_repeated_failures_and_resumes_when_fixed(
    make_campaign, add_contacts, dead_account, settings
):
    settings.LEADCENTER_ACCOUNT_MAX_FAILURES = 3
    add_contacts("a@example.test")
    campaign = make_campaign(accounts=[dead_account])
    run = campaign_launch(campaign=campaign, enqueue=False)
    run_prepare(run=run)

    for _ in range(5):
        dispatch_due()

    dead_account.refresh_from_db()
    assert dead_account.is_active is False
    assert dead_account.consecutive_failures == 3  # not tried again once switched off
    run.refresh_from_db()
    assert "switched off after 3 failures" in run.error

    # A person fixes the relay and switches the account on again.
    with SimulatorServer(SimulatedInternet()) as server:
        SendingAccount.objects.filter(pk=dead_account.pk).update(
            smtp_port=server.port, is_active=True
        )
        dispatch_due()
        assert [d.rcpt_to for d in server.handler.delivered] == [["a@example.test"]]
    dead_account.refresh_from_db()
    assert dead_account.consecutive_failures == 0
    assert Message.objects.get().status == S.SENT
    run.refresh_from_db()
    assert run.status == CampaignRun.Status.COMPLETED


def _refuse_everyone(server, session, envelope, mechanism, auth_data) -> AuthResult:
    return AuthResult(success=False, handled=False)


def test_a_refused_login_is_our_failure_not_the_contacts(make_campaign, add_contacts):
    handler = SimulatedInternet()
    with SimulatorServer(handler, authenticator=_refuse_everyone, auth_require_tls=False) as server:
        account = SendingAccountFactory(
            name="Wrong password",
            smtp_port=server.port,
            smtp_username="sales",
            smtp_password="wrong",
        )
        add_contacts("a@example.test")
        campaign = make_campaign(accounts=[account])
        run = campaign_launch(campaign=campaign, enqueue=False)
        run_prepare(run=run)

        dispatch_due()

    account.refresh_from_db()
    assert "login refused" in account.last_error
    assert Message.objects.get().status == S.QUEUED
    assert handler.delivered == []
    assert not Contact.objects.filter(email_status="invalid").exists()
