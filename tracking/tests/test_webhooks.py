"""ESP webhooks through django-anymail: its signal, and real HTTP posts to its views with real
signatures and shared secrets, for emails really sent over SMTP first."""

from __future__ import annotations

import base64
import hashlib
import hmac
import itertools
import json
import time
import uuid
from datetime import timedelta

import pytest
from anymail.signals import AnymailTrackingEvent, EventType
from anymail.signals import tracking as anymail_tracking
from django.test import Client
from django.utils import timezone

from campaigns.models import Message, Recipient
from campaigns.services import campaign_launch, dispatch_due, run_prepare
from campaigns.simulator import SimulatedInternet, SimulatorServer
from contacts.models import Contact, Suppression
from leadcenter.factories import (
    CampaignFactory,
    CampaignStepFactory,
    ContactFactory,
    ContactListFactory,
    SendingAccountFactory,
)
from tracking import webhooks
from tracking.models import Rejection, TrackingEvent

pytestmark = pytest.mark.django_db
S = Message.Status
E = TrackingEvent.Type

MAILGUN_KEY = "key-mailgun-webhook-signing-0123456789"
SECRET = "anymail:s3cret-webhook-password"
MAILGUN_URL = "/anymail/mailgun/tracking/"
POSTMARK_URL = "/anymail/postmark/tracking/"
MAILJET_URL = "/anymail/mailjet/tracking/"


# --- set-up: a real run over a real SMTP server ------------------------------------------


@pytest.fixture
def internet():
    with SimulatorServer(SimulatedInternet()) as server:
        yield server


@pytest.fixture
def send(internet):
    """send(*addresses) -> {address: Message}: a real one-step run, each message then given
    the id an ESP would have returned for it (as the anymail sender stores it)."""

    def send_(*addresses: str, steps: int = 1) -> dict[str, Message]:
        account = SendingAccountFactory(
            name="ESP account",
            from_email="sales@leadcenter.test",
            smtp_port=internet.port,
            return_path="bounces@leadcenter.test",
            smtp_timeout=5,
            daily_limit=1000,
            per_minute_limit=1000,
        )
        audience = ContactListFactory(name="Webhook audience")
        for address in addresses:
            ContactFactory(email=address, lists=[audience])
        campaign = CampaignFactory(name="Webhooks")
        campaign.lists.add(audience)
        campaign.accounts.add(account)
        for position in range(1, steps + 1):
            CampaignStepFactory(
                campaign=campaign,
                position=position,
                delay=timedelta(days=1) if position > 1 else timedelta(0),
            )
        run_prepare(run=campaign_launch(campaign=campaign, enqueue=False))
        dispatch_due()
        for message in Message.objects.all():
            Message.objects.filter(pk=message.pk).update(esp_message_id=esp_id(message))
        # Sent a minute ago: past the window in which an open or click is a link scanner's.
        Message.objects.update(sent_at=timezone.now() - timedelta(minutes=1))
        sent = {m.recipient.email: m for m in Message.objects.select_related("recipient")}
        assert {m.status for m in sent.values()} == {S.SENT}
        return sent

    return send_


def esp_id(message: Message) -> str:
    return f"<{message.pk}.esp@mg.leadcenter.test>"


@pytest.fixture
def sync(settings):
    settings.LEADCENTER_WEBHOOKS_SYNC = True
    settings.ANYMAIL = {
        **settings.ANYMAIL,
        "WEBHOOK_SECRET": "",
        "MAILGUN_WEBHOOK_SIGNING_KEY": MAILGUN_KEY,
    }
    return settings


@pytest.fixture
def with_secret(sync):
    sync.ANYMAIL = {**sync.ANYMAIL, "WEBHOOK_SECRET": SECRET}
    return sync


def webhook_events() -> list[TrackingEvent]:
    return list(TrackingEvent.objects.filter(source__startswith="webhook:").order_by("pk"))


def fresh(message: Message) -> Message:
    return Message.objects.select_related("recipient__contact").get(pk=message.pk)


# --- payloads -----------------------------------------------------------------------------


def mailgun_body(
    event: str,
    message: Message,
    *,
    key: str = MAILGUN_KEY,
    token: str | None = None,
    severity: str | None = None,
    code: int | None = None,
    reply: str = "",
    description: str = "",
    **event_data,
) -> str:
    token = token or uuid.uuid4().hex
    timestamp = str(int(time.time()))
    signature = hmac.new(key.encode(), f"{timestamp}{token}".encode(), hashlib.sha256)
    data = {
        "event": event,
        "id": uuid.uuid4().hex[:22],
        "timestamp": time.time(),
        "recipient": message.recipient.email,
        "message": {"headers": {"message-id": esp_id(message).strip("<>")}},
        **event_data,
    }
    if severity:
        data["severity"] = severity
    if code is not None:
        data["delivery-status"] = {"code": code, "message": reply, "description": description}
    return json.dumps(
        {
            "signature": {
                "token": token,
                "timestamp": timestamp,
                "signature": signature.hexdigest(),
            },
            "event-data": data,
        }
    )


def post_mailgun(client: Client, body: str):
    return client.post(MAILGUN_URL, body, content_type="application/json")


def basic_auth(secret: str = SECRET) -> dict[str, str]:
    return {"HTTP_AUTHORIZATION": "Basic " + base64.b64encode(secret.encode()).decode()}


def postmark_delivery(message: Message) -> str:
    return json.dumps(
        {
            "RecordType": "Delivery",
            "MessageID": esp_id(message),
            "Recipient": message.recipient.email,
            "DeliveredAt": timezone.now().isoformat(),
            "Details": "smtp;250 2.0.0 OK",
        }
    )


def anymail_event(message: Message, event_type: str, **kwargs) -> AnymailTrackingEvent:
    kwargs.setdefault("timestamp", timezone.now())
    kwargs.setdefault("event_id", uuid.uuid4().hex)
    return AnymailTrackingEvent(
        event_type=event_type,
        message_id=esp_id(message),
        recipient=message.recipient.email,
        **kwargs,
    )


def signal(event: AnymailTrackingEvent, esp_name: str = "Mailgun") -> None:
    anymail_tracking.send(sender=object, event=event, esp_name=esp_name)


# --- Mailgun: signed webhooks --------------------------------------------------------------


def test_a_mailgun_webhook_with_a_good_signature_is_recorded_and_applied(client, sync, send):
    message = send("ada@example.test")["ada@example.test"]

    response = post_mailgun(client, mailgun_body("delivered", message))

    assert response.status_code == 200
    message = fresh(message)
    assert message.status == S.DELIVERED
    assert message.delivered_at is not None
    [event] = webhook_events()
    assert (event.type, event.source, event.message_id) == (
        "delivered",
        "webhook:mailgun",
        message.pk,
    )
    assert event.email == "ada@example.test"
    assert json.loads(event.raw)["event-data"]["event"] == "delivered"
    assert Recipient.objects.get().delivered_at is not None


def test_an_esp_needs_no_csrf_token(sync, send):
    message = send("ada@example.test")["ada@example.test"]

    response = post_mailgun(Client(enforce_csrf_checks=True), mailgun_body("delivered", message))

    assert response.status_code == 200
    assert fresh(message).status == S.DELIVERED


@pytest.mark.parametrize(
    "key", ["key-someone-else", ""], ids=["signed-with-another-key", "unsigned"]
)
def test_a_forged_mailgun_webhook_is_refused_and_records_nothing(client, sync, send, key):
    message = send("ada@example.test")["ada@example.test"]
    body = json.loads(mailgun_body("failed", message, key=key or "x", severity="permanent"))
    if not key:
        del body["signature"]["signature"]

    response = post_mailgun(client, json.dumps(body))

    assert response.status_code == 400
    assert webhook_events() == []
    assert fresh(message).status == S.SENT


def test_the_mailgun_signing_key_is_read_on_every_request(client, sync, send):
    message = send("ada@example.test")["ada@example.test"]
    sync.ANYMAIL = {**sync.ANYMAIL, "MAILGUN_WEBHOOK_SIGNING_KEY": "key-rotated"}

    assert post_mailgun(client, mailgun_body("delivered", message)).status_code == 400
    assert (
        post_mailgun(client, mailgun_body("delivered", message, key="key-rotated")).status_code
        == 200
    )
    assert len(webhook_events()) == 1


def test_a_permanent_mailgun_failure_with_5_1_1_is_a_hard_bounce(client, sync, send):
    message = send("gone@example.test")["gone@example.test"]
    body = mailgun_body(
        "failed",
        message,
        severity="permanent",
        reason="bounce",
        code=550,
        reply="550 5.1.1 The email account that you tried to reach does not exist.",
    )

    assert post_mailgun(client, body).status_code == 200

    message = fresh(message)
    assert message.status == S.BOUNCED
    rejection = Rejection.objects.get(message=message)
    assert (rejection.kind, rejection.category) == ("hard", "user_not_found")
    assert (rejection.smtp_code, rejection.smtp_status) == (550, "5.1.1")
    assert rejection.source == "webhook:mailgun"
    contact = message.recipient.contact
    assert contact.email_status == Contact.EmailStatus.INVALID
    assert "User not found" in contact.invalid_reason
    assert Suppression.objects.filter(
        email="gone@example.test", reason=Suppression.Reason.HARD_BOUNCE
    ).exists()
    assert message.recipient.status == Recipient.Status.FAILED


def test_a_temporary_mailgun_failure_is_a_soft_bounce_and_not_sent_again_by_us(
    client, sync, send, internet
):
    # Two steps: the run is still running (a follow-up is scheduled), so its due email is
    # looked at by every dispatch.
    message = send("full@example.test", steps=2)["full@example.test"]
    body = mailgun_body(
        "failed",
        message,
        severity="temporary",
        reason="generic",
        code=452,
        reply="452 4.2.2 The email account that you tried to reach is over quota.",
    )

    assert post_mailgun(client, body).status_code == 200

    message = fresh(message)
    assert message.status == S.SOFT_BOUNCED
    rejection = Rejection.objects.get(message=message)
    assert (rejection.kind, rejection.category) == ("soft", "mailbox_full")
    assert message.recipient.contact.email_status == Contact.EmailStatus.VALID
    assert not Suppression.objects.exists()
    # The ESP retries a deferred email itself: our dispatcher must not send it a second time.
    dispatch_due()
    assert len(internet.handler.received_by("full@example.test")) == 1


def test_the_same_webhook_posted_twice_is_recorded_once(client, sync, send):
    message = send("ada@example.test")["ada@example.test"]
    body = mailgun_body("opened", message, **{"client-info": {"user-agent": "Mozilla/5.0"}})

    assert post_mailgun(client, body).status_code == 200
    assert post_mailgun(client, body).status_code == 200

    assert len(webhook_events()) == 1
    message = fresh(message)
    assert message.status == S.OPENED
    assert message.open_count == 1


def test_an_unparseable_mailgun_body_is_answered_400_and_records_nothing(client, sync, send):
    send("ada@example.test")

    response = client.post(MAILGUN_URL, b"{not json", content_type="application/json")

    # The signature cannot even be read: anymail refuses it, and nothing unsigned is kept.
    assert response.status_code == 400
    assert webhook_events() == []


# --- Postmark: the shared secret (HTTP basic auth) -----------------------------------------


# --- Amazon SES: SNS notifications behind the shared secret --------------------------------

SES_URL = "/anymail/amazon_ses/tracking/"


def ses_notification(ses_event: dict) -> tuple[str, dict[str, str]]:
    """An SNS HTTP notification carrying an SES event, with the headers SNS sends."""
    sns_id = str(uuid.uuid4())
    body = {
        "Type": "Notification",
        "MessageId": sns_id,
        "TopicArn": "arn:aws:sns:eu-west-1:123456789012:ses-events",
        "Message": json.dumps(ses_event),
        "Timestamp": timezone.now().isoformat().replace("+00:00", "Z"),
        "SignatureVersion": "1",
        "Signature": "unused",
        "SigningCertURL": "https://sns.eu-west-1.amazonaws.com/cert.pem",
    }
    headers = {
        "HTTP_X_AMZ_SNS_MESSAGE_TYPE": "Notification",
        "HTTP_X_AMZ_SNS_MESSAGE_ID": sns_id,
    }
    return json.dumps(body), headers


def test_an_amazon_ses_hard_bounce_through_sns_is_applied(client, with_secret, send):
    message = send("gone@example.test")["gone@example.test"]
    body, headers = ses_notification(
        {
            "eventType": "Bounce",
            "mail": {"messageId": esp_id(message), "destination": ["gone@example.test"]},
            "bounce": {
                "bounceType": "Permanent",
                "bounceSubType": "General",
                "bouncedRecipients": [
                    {
                        "emailAddress": "gone@example.test",
                        "diagnosticCode": "smtp; 550 5.1.1 user unknown",
                    }
                ],
            },
        }
    )

    refused = client.post(SES_URL, body, content_type="text/plain", **headers)
    response = client.post(SES_URL, body, content_type="text/plain", **headers, **basic_auth())

    assert refused.status_code == 401
    assert response.status_code == 200
    assert fresh(message).status == S.BOUNCED
    rejection = Rejection.objects.get()
    assert (rejection.kind, rejection.category) == ("hard", "user_not_found")
    [event] = webhook_events()
    assert event.source == "webhook:amazon_ses"


@pytest.mark.parametrize(
    "headers",
    [{}, basic_auth("anymail:wrong"), {"HTTP_AUTHORIZATION": "Bearer " + SECRET}],
    ids=["missing", "wrong", "not-basic"],
)
def test_a_postmark_webhook_without_the_shared_secret_is_refused(
    client, with_secret, send, headers
):
    message = send("ada@example.test")["ada@example.test"]

    response = client.post(
        POSTMARK_URL, postmark_delivery(message), content_type="application/json", **headers
    )

    assert response.status_code == 401
    assert response["WWW-Authenticate"].startswith("Basic ")
    assert webhook_events() == []
    assert fresh(message).status == S.SENT


def test_a_postmark_webhook_with_the_shared_secret_is_applied(client, with_secret, send):
    message = send("ada@example.test")["ada@example.test"]

    response = client.post(
        POSTMARK_URL, postmark_delivery(message), content_type="application/json", **basic_auth()
    )

    assert response.status_code == 200
    assert fresh(message).status == S.DELIVERED
    [event] = webhook_events()
    assert event.source == "webhook:postmark"


def test_a_postmark_hard_bounce_is_classified_from_its_type_and_details(client, with_secret, send):
    message = send("gone@example.test")["gone@example.test"]
    body = {
        "RecordType": "Bounce",
        "ID": 4323372036854775807,
        "Type": "HardBounce",
        "TypeCode": 1,
        "MessageID": esp_id(message),
        "Email": "gone@example.test",
        "BouncedAt": timezone.now().isoformat(),
        "Description": "The server was unable to deliver your message (ex: unknown user).",
        "Details": "smtp;550 5.1.1 <gone@example.test>: Recipient address rejected",
    }

    response = client.post(
        POSTMARK_URL, json.dumps(body), content_type="application/json", **basic_auth()
    )

    assert response.status_code == 200
    assert fresh(message).status == S.BOUNCED
    assert Rejection.objects.get().kind == "hard"
    assert fresh(message).recipient.contact.email_status == Contact.EmailStatus.INVALID


@pytest.mark.parametrize(
    "body",
    [b"{not json at all", b"\xff\xfe\x00garbage", b'["a list", "not an event"]', b"null"],
    ids=["broken-json", "not-utf8", "wrong-shape", "null"],
)
def test_a_malformed_body_is_stored_and_answered_without_a_crash(client, with_secret, send, body):
    send("ada@example.test")

    first = client.post(POSTMARK_URL, body, content_type="application/json", **basic_auth())
    again = client.post(POSTMARK_URL, body, content_type="application/json", **basic_auth())

    assert first.status_code == again.status_code == 400
    [event] = webhook_events()  # kept once, however often the ESP sends it again
    assert (event.type, event.source, event.message_id) == ("unknown", "webhook:postmark", None)
    assert event.raw == body.decode("utf-8", "replace").replace("\x00", "\ufffd")
    assert "Could not read" in event.detail
    assert Message.objects.get().status == S.SENT


def test_a_malformed_body_without_the_secret_is_refused_and_not_stored(client, with_secret, send):
    send("ada@example.test")

    response = client.post(POSTMARK_URL, b"{broken", content_type="application/json")

    assert response.status_code == 401
    assert webhook_events() == []


# --- many events in one request ------------------------------------------------------------


def mailjet_event(event: str, message: Message, **fields) -> dict:
    return {
        "event": event,
        "time": int(time.time()),
        "MessageID": message.pk * 1000,
        "email": message.recipient.email,
        **fields,
    }


def test_events_posted_together_go_to_one_task(
    client, with_secret, send, django_capture_on_commit_callbacks
):
    from django_q.models import OrmQ

    with_secret.LEADCENTER_WEBHOOKS_SYNC = False
    sent = send("ada@example.test", "bob@example.test")
    for message in sent.values():
        Message.objects.filter(pk=message.pk).update(esp_message_id=str(message.pk * 1000))
    ada, bob = sent["ada@example.test"], sent["bob@example.test"]
    body = [
        mailjet_event("sent", ada, smtp_reply="250 2.0.0 OK"),
        mailjet_event("open", ada, agent="Mozilla/5.0"),
        mailjet_event(
            "bounce",
            bob,
            error="user unknown",
            hard_bounce=True,
            smtp_reply="550 5.1.1 user unknown",
        ),
    ]

    with django_capture_on_commit_callbacks(execute=True):
        response = client.post(
            MAILJET_URL, json.dumps(body), content_type="application/json", **basic_auth()
        )

    assert response.status_code == 200
    assert webhook_events() == []  # nothing applied in the request
    [queued] = OrmQ.objects.all()
    task = queued.task
    assert task["func"] == webhooks.BATCH_TASK
    [payloads] = task["args"]
    assert len(payloads) == 3

    assert webhooks.webhook_events_apply(payloads) == ["changed", "changed", "changed"]
    assert fresh(ada).status == S.OPENED
    assert fresh(bob).status == S.BOUNCED
    # The task may run twice (a worker dies after the work): nothing happens twice.
    assert webhooks.webhook_events_apply(payloads) == ["duplicate"] * 3
    assert len(webhook_events()) == 3


# --- anymail's signal: every event type -----------------------------------------------------


@pytest.mark.parametrize(
    ("anymail_type", "ours"),
    [
        (EventType.QUEUED, E.QUEUED),
        (EventType.SENT, E.SENT),
        (EventType.DELIVERED, E.DELIVERED),
        (EventType.DEFERRED, E.DEFERRED),
        (EventType.BOUNCED, E.BOUNCED),
        (EventType.REJECTED, E.BOUNCED),
        (EventType.FAILED, E.BOUNCED),
        (EventType.OPENED, E.OPENED),
        (EventType.CLICKED, E.CLICKED),
        (EventType.COMPLAINED, E.COMPLAINED),
        (EventType.UNSUBSCRIBED, E.UNSUBSCRIBED),
        (EventType.AUTORESPONDED, E.AUTOREPLY),
        (EventType.SUBSCRIBED, E.UNKNOWN),
        (EventType.UNKNOWN, E.UNKNOWN),
        ("something-new", E.UNKNOWN),
    ],
)
def test_every_anymail_event_type_has_one_of_ours(anymail_type, ours):
    event = AnymailTrackingEvent(
        event_type=anymail_type,
        timestamp=timezone.now(),
        event_id="ev-1",
        message_id="abc",
        recipient="ada@example.test",
        esp_event={"any": "thing"},
    )

    parsed = webhooks.tracking_event_parse(event, "Amazon SES")

    assert parsed.type == ours
    assert parsed.source == "webhook:amazon_ses"
    assert parsed.esp_message_id == "abc"
    assert parsed.permanent is (ours != E.DEFERRED)
    assert json.loads(parsed.raw) == {"any": "thing"}


@pytest.mark.parametrize(
    ("anymail_type", "status", "event_type"),
    [
        (EventType.QUEUED, S.SENT, E.QUEUED),
        (EventType.SENT, S.SENT, E.SENT),
        (EventType.DELIVERED, S.DELIVERED, E.DELIVERED),
        (EventType.DEFERRED, S.SOFT_BOUNCED, E.DEFERRED),
        # Without a reply or a reason there is nothing to call the address dead for.
        (EventType.BOUNCED, S.FAILED, E.FAILED),
        (EventType.REJECTED, S.FAILED, E.FAILED),
        (EventType.FAILED, S.FAILED, E.FAILED),
        (EventType.OPENED, S.OPENED, E.OPENED),
        (EventType.CLICKED, S.CLICKED, E.CLICKED),
        (EventType.COMPLAINED, S.SENT, E.COMPLAINED),
        (EventType.UNSUBSCRIBED, S.SENT, E.UNSUBSCRIBED),
        (EventType.AUTORESPONDED, S.SENT, E.AUTOREPLY),
        (EventType.UNKNOWN, S.SENT, E.UNKNOWN),
    ],
)
def test_each_event_type_through_the_signal_ends_in_its_status(
    sync, send, anymail_type, status, event_type
):
    message = send("ada@example.test")["ada@example.test"]

    signal(anymail_event(message, anymail_type, click_url="https://example.test/"))

    assert fresh(message).status == status
    [event] = webhook_events()
    assert (event.type, event.message_id) == (event_type, message.pk)


def test_clicks_keep_the_url_and_user_agent(sync, send):
    message = send("ada@example.test")["ada@example.test"]

    signal(
        anymail_event(
            message,
            EventType.CLICKED,
            click_url="https://example.test/p",
            user_agent="Mozilla/5.0 (X11)",
        )
    )

    [event] = webhook_events()
    assert (event.url, event.user_agent) == ("https://example.test/p", "Mozilla/5.0 (X11)")
    assert fresh(message).click_count == 1


# --- hard or soft: the classifier decides, not anymail's event type --------------------------


def test_an_anymail_bounce_with_a_mailbox_full_reply_is_soft(sync, send):
    message = send("full@example.test")["full@example.test"]

    signal(
        anymail_event(
            message,
            EventType.BOUNCED,
            reject_reason="bounced",
            mta_response="552 5.2.2 Mailbox full: quota exceeded",
        ),
        esp_name="SparkPost",
    )

    rejection = Rejection.objects.get()
    assert (rejection.kind, rejection.category) == ("soft", "mailbox_full")
    message = fresh(message)
    assert message.status == S.FAILED  # the ESP gave up; the address is fine
    assert message.recipient.contact.email_status == Contact.EmailStatus.VALID
    assert not Suppression.objects.exists()


@pytest.mark.parametrize(
    ("bounce", "kind", "category"),
    [
        ({"bounceType": "Permanent", "bounceSubType": "NoEmail"}, "hard", "user_not_found"),
        ({"bounceType": "Permanent", "bounceSubType": "General"}, "soft", "unspecified"),
        ({"bounceType": "Transient", "bounceSubType": "MailboxFull"}, "soft", "mailbox_full"),
    ],
)
def test_an_ses_bounce_is_classified_from_its_bounce_type(sync, send, bounce, kind, category):
    message = send("x@example.test")["x@example.test"]
    ses_event = {
        "notificationType": "Bounce",
        "bounce": {
            **bounce,
            "bouncedRecipients": [{"emailAddress": "x@example.test"}],
            "timestamp": timezone.now().isoformat(),
        },
        # SES repeats the headers we sent: our own Message-ID finds the message.
        "mail": {"messageId": "0100018f-ses", "commonHeaders": {"messageId": message.message_id}},
    }

    signal(
        AnymailTrackingEvent(
            event_type=EventType.BOUNCED,
            timestamp=timezone.now(),
            event_id="sns-1",
            message_id="0100018f-ses",
            recipient="x@example.test",
            reject_reason="bounced",
            description="{bounceType}: {bounceSubType}".format(**bounce),
            esp_event=ses_event,
        ),
        esp_name="Amazon SES",
    )

    rejection = Rejection.objects.get(message=message)
    assert (rejection.kind, rejection.category) == (kind, category)
    contact = fresh(message).recipient.contact
    assert (contact.email_status == Contact.EmailStatus.INVALID) is (kind == "hard")


def test_a_complaint_suppresses_the_address_and_leaves_it_valid(sync, send):
    message = send("angry@example.test")["angry@example.test"]

    signal(anymail_event(message, EventType.COMPLAINED, reject_reason="spam"))

    message = fresh(message)
    assert message.complained_at is not None
    assert message.recipient.complained_at is not None
    assert Suppression.objects.filter(
        email="angry@example.test", reason=Suppression.Reason.COMPLAINT
    ).exists()
    assert message.recipient.contact.email_status == Contact.EmailStatus.VALID


def test_an_unsubscribe_through_the_esp_unsubscribes_the_contact(sync, send):
    message = send("bye@example.test")["bye@example.test"]

    signal(anymail_event(message, EventType.UNSUBSCRIBED, reject_reason="unsubscribed"))

    contact = fresh(message).recipient.contact
    assert contact.unsubscribed_at is not None
    assert Suppression.objects.filter(reason=Suppression.Reason.UNSUBSCRIBE).exists()


# --- order does not matter ----------------------------------------------------------------


def test_a_bounce_after_delivery_is_history_and_the_message_stays_delivered(sync, send):
    message = send("ada@example.test")["ada@example.test"]

    signal(anymail_event(message, EventType.DELIVERED))
    signal(anymail_event(message, EventType.BOUNCED, mta_response="550 5.1.1 user unknown"))

    message = fresh(message)
    assert message.status == S.DELIVERED
    assert [e.type for e in webhook_events()] == ["delivered", "bounced"]
    assert Rejection.objects.get().kind == "hard"  # recorded ...
    assert message.recipient.contact.email_status == Contact.EmailStatus.VALID  # ... not acted on
    assert not Suppression.objects.exists()


def test_an_open_that_arrives_before_the_delivery_ends_opened(sync, send):
    message = send("ada@example.test")["ada@example.test"]
    now = timezone.now()

    signal(anymail_event(message, EventType.OPENED, timestamp=now))
    signal(anymail_event(message, EventType.DELIVERED, timestamp=now - timedelta(minutes=1)))

    message = fresh(message)
    assert message.status == S.OPENED
    assert message.opened_at == now
    assert message.delivered_at == now  # an open proves delivery; the first time stays


@pytest.mark.parametrize(
    "order",
    list(itertools.permutations([EventType.DELIVERED, EventType.OPENED, EventType.CLICKED])),
    ids=lambda order: "-".join(order),
)
def test_engagement_in_any_order_ends_in_the_same_state(sync, send, order):
    message = send("ada@example.test")["ada@example.test"]

    for event_type in order:
        signal(anymail_event(message, event_type))

    message = fresh(message)
    assert message.status == S.CLICKED
    assert (message.open_count, message.click_count) == (1, 1)
    assert message.delivered_at and message.opened_at and message.clicked_at


def test_a_late_sent_event_does_not_move_a_delivered_message_back(sync, send):
    message = send("ada@example.test")["ada@example.test"]

    signal(anymail_event(message, EventType.DELIVERED))
    signal(anymail_event(message, EventType.SENT))

    assert fresh(message).status == S.DELIVERED
    assert [e.type for e in webhook_events()] == ["delivered", "sent"]


# --- robustness ---------------------------------------------------------------------------


def test_an_event_the_receiver_cannot_read_is_kept_as_unknown(sync, send):
    message = send("ada@example.test")["ada@example.test"]
    event = anymail_event(message, EventType.DELIVERED, esp_event={"weird": True})
    event.recipient = ["not", "a", "string"]  # breaks our conversion, not anymail's

    signal(event)  # does not raise

    [stored] = webhook_events()
    assert (stored.type, stored.message_id) == ("unknown", None)
    assert json.loads(stored.raw) == {"weird": True}
    assert "Could not read" in stored.detail


def test_an_event_that_fails_to_apply_is_kept_and_the_others_still_apply(sync, send, monkeypatch):
    sent = send("ada@example.test", "bob@example.test")
    ada, bob = sent["ada@example.test"], sent["bob@example.test"]
    payloads = [
        webhooks.event_payload(
            webhooks.tracking_event_parse(anymail_event(m, EventType.DELIVERED), "Mailgun")
        )
        for m in (ada, bob)
    ]
    payloads[0]["occurred_at"] = "not a time"

    assert webhooks.webhook_events_apply(payloads) == ["error", "changed"]

    assert fresh(ada).status == S.SENT
    assert fresh(bob).status == S.DELIVERED
    failed = TrackingEvent.objects.get(type=E.UNKNOWN)
    assert "not a time" in failed.raw
    assert "Could not apply" in failed.detail


def test_without_sync_an_event_is_queued_once_the_transaction_commits(
    settings, send, django_capture_on_commit_callbacks
):
    from django_q.models import OrmQ

    settings.LEADCENTER_WEBHOOKS_SYNC = False
    message = send("ada@example.test")["ada@example.test"]

    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        signal(anymail_event(message, EventType.DELIVERED))
        assert not OrmQ.objects.exists()  # not before the commit

    assert len(callbacks) == 1
    task = OrmQ.objects.get().task
    assert task["func"] == webhooks.TASK
    assert webhook_events() == []
    [payload] = task["args"]
    assert json.loads(json.dumps(payload)) == payload  # JSON-safe

    assert webhooks.webhook_event_apply(payload) == "changed"
    assert fresh(message).status == S.DELIVERED


def test_an_event_for_no_message_of_ours_is_kept_unmatched(sync):
    signal(
        AnymailTrackingEvent(
            event_type=EventType.DELIVERED,
            timestamp=timezone.now(),
            message_id="<unknown@esp>",
            recipient="stranger@example.test",
            esp_event={},
        )
    )

    [event] = webhook_events()
    assert event.message_id is None
    assert event.email == "stranger@example.test"


def test_events_without_an_esp_event_id_are_told_apart_by_their_time(sync, send):
    message = send("ada@example.test")["ada@example.test"]
    now = timezone.now()

    for when in (now, now, now + timedelta(seconds=5)):
        signal(anymail_event(message, EventType.OPENED, event_id=None, timestamp=when))

    assert len(webhook_events()) == 2
    assert fresh(message).open_count == 2


def test_nul_characters_from_an_esp_are_dropped_not_fatal(sync, send):
    """PostgreSQL text refuses NUL; JSON can carry it ("\\u0000")."""
    message = send("ada@example.test")["ada@example.test"]

    signal(
        anymail_event(
            message,
            EventType.OPENED,
            user_agent="Mozilla/5.0\x00",
            esp_event={"agent": "Mozilla/5.0\x00"},
        )
    )

    [event] = webhook_events()
    assert event.user_agent == "Mozilla/5.0"
    assert fresh(message).status == S.OPENED
