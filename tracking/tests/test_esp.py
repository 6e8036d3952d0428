"""esp_send: a pre-built email through an anymail backend, keeping the ESP's message id.

anymail's test backend records what would go to the ESP's API (django.core.mail.outbox) and
answers as an ESP would; subclasses below answer with a refusal or an API error."""

from __future__ import annotations

import pytest
import requests
from anymail.backends.test import EmailBackend as AnymailTestBackend
from anymail.exceptions import AnymailAPIError
from anymail.message import AnymailRecipientStatus
from anymail.signals import AnymailTrackingEvent
from anymail.signals import tracking as anymail_tracking
from django.core import mail
from django.utils import timezone

from campaigns.mail import build_message
from campaigns.models import Message
from campaigns.smtp import AccountError
from leadcenter.factories import MessageFactory, SendingAccountFactory
from tracking.esp import esp_backend, esp_send

HERE = "tracking.tests.test_esp"


class RefusingBackend(AnymailTestBackend):
    """The ESP answers the call but refuses the recipient (e.g. on its suppression list)."""

    def post_to_esp(self, payload, message):
        message.anymail_test_response = {
            "recipient_status": {
                email: AnymailRecipientStatus(message_id=None, status="rejected")
                for email in payload.recipient_emails
            }
        }
        return super().post_to_esp(payload, message)

    def parse_recipient_status(self, response, payload, message):
        return response["recipient_status"]


def _failing(status_code: int | None):
    class FailingBackend(AnymailTestBackend):
        def post_to_esp(self, payload, message):
            response = None
            if status_code is not None:
                response = requests.Response()
                response.status_code, response.reason = status_code, "Nope"
                response._content = b'{"message": "nope"}'
            raise AnymailAPIError(
                "ESP said no", status_code=status_code, response=response, backend=self
            )

    return FailingBackend


UnauthorisedBackend = _failing(401)
UnprocessableBackend = _failing(422)
DownBackend = _failing(503)
UnreachableBackend = _failing(None)


@pytest.fixture(autouse=True)
def _empty_outbox():
    mail.outbox = []


def raw_email(*, to: str = "Ada Lovelace <ada@example.test>") -> bytes:
    return build_message(
        [
            ("From", "LeadCenter Sales <sales@leadcenter.test>"),
            ("To", to),
            ("Subject", "=?utf-8?q?Caf=C3=A9_for_Ada?="),
            ("Date", "Tue, 04 Jun 2024 10:00:00 +0000"),
            ("Message-ID", "<lc.7.2.abcd@leadcenter.test>"),
            ("In-Reply-To", "<lc.7.1.abcd@leadcenter.test>"),
            ("References", "<lc.7.1.abcd@leadcenter.test>"),
            ("List-Unsubscribe", "<https://lc.test/t/u/tok/>"),
            ("List-Unsubscribe-Post", "List-Unsubscribe=One-Click"),
        ],
        "Hi Ada, café?\n",
        "<p>Hi Ada, café?</p>",
    )


def account(esp: str):
    return SendingAccountFactory.build(name="ESP", esp=esp)


def send(esp: str = "test", **kwargs):
    return esp_send(
        account=account(esp),
        data=kwargs.pop("data", raw_email()),
        envelope_from="bounces+tok@leadcenter.test",
        recipient=kwargs.pop("recipient", "ada@example.test"),
    )


def test_backend_names_are_anymail_s_or_dotted_paths():
    assert esp_backend("mailgun") == "anymail.backends.mailgun.EmailBackend"
    assert esp_backend(" amazon_ses ") == "anymail.backends.amazon_ses.EmailBackend"
    assert esp_backend(f"{HERE}.RefusingBackend") == f"{HERE}.RefusingBackend"


def test_an_accepted_email_returns_the_esp_s_message_id():
    accepted, esp_message_id, detail = send()

    assert accepted is True
    assert esp_message_id == "0"  # the test backend's id: the email's place in the outbox
    assert detail == "test: sent as 0"


def test_the_email_reaches_the_esp_with_our_headers_and_both_bodies():
    send()

    [sent] = mail.outbox
    params = sent.anymail_test_params
    assert str(params["from"]) == "LeadCenter Sales <sales@leadcenter.test>"
    assert [str(a) for a in params["to"]] == ["Ada Lovelace <ada@example.test>"]
    assert params["subject"] == "Café for Ada"
    assert params["text_body"].strip() == "Hi Ada, café?"
    assert params["html_body"] == "<p>Hi Ada, café?</p>"
    headers = params["extra_headers"]
    assert headers["Message-ID"] == "<lc.7.2.abcd@leadcenter.test>"
    assert headers["In-Reply-To"] == headers["References"] == "<lc.7.1.abcd@leadcenter.test>"
    assert headers["List-Unsubscribe"] == "<https://lc.test/t/u/tok/>"
    assert headers["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert "Content-Type" not in headers and "MIME-Version" not in headers
    # What an ESP taking raw MIME (SES) would send keeps our Message-ID.
    assert sent.message()["Message-ID"] == "<lc.7.2.abcd@leadcenter.test>"


def test_the_envelope_recipient_wins_over_a_to_header_that_names_someone_else():
    send(data=raw_email(to="someone@else.test"), recipient="ada@example.test")

    [sent] = mail.outbox
    assert [a.addr_spec for a in sent.anymail_test_params["to"]] == ["ada@example.test"]


def test_a_recipient_the_esp_refuses_is_not_accepted():
    accepted, esp_message_id, detail = send(f"{HERE}.RefusingBackend")

    assert (accepted, esp_message_id) == (False, "")
    assert detail == f"{HERE}.RefusingBackend: rejected"


def test_an_api_error_about_this_email_is_a_refusal_of_it():
    accepted, esp_message_id, detail = send(f"{HERE}.UnprocessableBackend")

    assert (accepted, esp_message_id) == (False, "")
    assert "ESP said no" in detail


@pytest.mark.parametrize("backend", ["UnauthorisedBackend", "DownBackend", "UnreachableBackend"])
def test_a_failure_of_our_account_or_the_esp_is_an_account_error(backend):
    with pytest.raises(AccountError, match="ESP said no"):
        send(f"{HERE}.{backend}")


def test_an_unknown_esp_is_an_account_error():
    with pytest.raises(AccountError, match="no such anymail backend"):
        send("no_such_esp")


@pytest.mark.django_db
def test_the_stored_esp_message_id_matches_the_esp_s_webhooks(settings):
    settings.LEADCENTER_WEBHOOKS_SYNC = True
    message = MessageFactory()
    Message.objects.filter(pk=message.pk).update(status=Message.Status.SENT)
    accepted, esp_message_id, _detail = send(recipient=message.recipient.email)
    assert accepted
    Message.objects.filter(pk=message.pk).update(esp_message_id=esp_message_id)

    anymail_tracking.send(
        sender=object,
        event=AnymailTrackingEvent(
            event_type="delivered",
            timestamp=timezone.now(),
            event_id="ev-1",
            message_id=esp_message_id,
            recipient="",  # no address: only the ESP's id can find the message
            esp_event={},
        ),
        esp_name="Test",
    )

    message.refresh_from_db()
    assert message.status == Message.Status.DELIVERED
