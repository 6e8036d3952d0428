"""ESP webhooks: a missing or wrong shared secret or signature is refused and records
nothing; bodies fuzzed with hypothesis (random bytes, random JSON, ESP-like JSON, signed
Mailgun events), sent with valid credentials, never get a 500 or an unhandled exception and
change no message, contact, rejection or suppression."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json

import pytest
from anymail import urls as anymail_urls
from django.urls import reverse
from hypothesis import given
from hypothesis import strategies as st

from campaigns.models import Message
from contacts.models import Contact, Suppression
from leadcenter.factories import MessageFactory
from tests.security.fuzz import fuzz_settings, tried
from tracking.models import Rejection, TrackingEvent

pytestmark = [
    pytest.mark.django_db,
    # anymail's own notices about the SendinBlue URLs and SendGrid, which we fuzz anyway.
    pytest.mark.filterwarnings("ignore::anymail.exceptions.AnymailDeprecationWarning"),
    pytest.mark.filterwarnings("ignore::anymail.exceptions.AnymailNotSupportedWarning"),
]

SECRET = "hook:webhook-shared-secret"
MAILGUN_KEY = "mailgun-signing-key"
ANYMAIL = {
    "WEBHOOK_SECRET": SECRET,
    "MAILGUN_WEBHOOK_SIGNING_KEY": MAILGUN_KEY,
    "MANDRILL_WEBHOOK_KEY": "mandrill-key",
    "MAILERSEND_SIGNING_SECRET": "mailersend-key",
    "MAILERSEND_INBOUND_SECRET": "mailersend-inbound-key",
    "POSTAL_WEBHOOK_KEY": "AAAA",
    "UNISENDER_GO_API_KEY": "unisender-key",
    "BREVO_API_KEY": "brevo-key",
    "SENDINBLUE_API_KEY": "brevo-key",
    "MAILTRAP_API_TOKEN": "mailtrap-key",
    "RESEND_API_KEY": "resend-key",
}
# Each ESP's own signature, checked after the shared secret.
SIGNED = {
    "mailgun_tracking_webhook",
    "mailgun_inbound_webhook",
    "mandrill_webhook",
    "mandrill_tracking_webhook",
    "mailersend_tracking_webhook",
    "mailersend_inbound_webhook",
    "unisender_go_tracking_webhook",
}


def _url(pattern) -> str:
    if "(" in str(pattern.pattern):  # mailgun's inbound(_mime)? regex
        return "/anymail/mailgun/inbound/"
    return reverse(f"anymail:{pattern.name}")


ENDPOINTS = {p.name: _url(p) for p in anymail_urls.urlpatterns}
FUZZED = sorted(ENDPOINTS)  # every ESP's URLs (requirements.txt installs their extras)


def basic(credentials: str) -> str:
    return "Basic " + base64.b64encode(credentials.encode()).decode()


@pytest.fixture(autouse=True)
def _webhooks(settings):
    settings.ANYMAIL = ANYMAIL
    settings.LEADCENTER_WEBHOOKS_SYNC = True


@pytest.fixture
def message(db):
    return MessageFactory(recipient__email="someone@example.test", status=Message.Status.SENT)


def state() -> tuple:
    """What a webhook may change: messages, contacts, rejections, suppressions, and events
    matched to a message. Unmatched "unknown" events (garbage kept for a person) may grow."""
    return (
        list(Message.objects.order_by("pk").values()),
        list(Contact.objects.order_by("pk").values()),
        Rejection.objects.count(),
        Suppression.objects.count(),
        TrackingEvent.objects.filter(message__isnull=False).count(),
    )


def _mailgun_event(message_id: str, event: str = "delivered") -> dict:
    return {
        "event": event,
        "timestamp": 1_760_000_000.5,
        "id": "evt-1",
        "recipient": "someone@example.test",
        "message": {"headers": {"message-id": message_id.strip("<>")}},
    }


def mailgun_signed(event_data: object, key: str = MAILGUN_KEY) -> bytes:
    timestamp, token = "1760000000", "a" * 50
    signature = hmac.new(key.encode(), f"{timestamp}{token}".encode(), hashlib.sha256)
    return json.dumps(
        {
            "signature": {
                "timestamp": timestamp,
                "token": token,
                "signature": signature.hexdigest(),
            },
            "event-data": event_data,
        }
    ).encode()


# --- credentials ----------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(ENDPOINTS))
def test_every_webhook_refuses_a_missing_or_wrong_secret(client, message, name):
    before, events = state(), TrackingEvent.objects.count()
    body = mailgun_signed(_mailgun_event(message.message_id))
    for headers in (
        {},
        {"HTTP_AUTHORIZATION": basic("hook:wrong")},
        {"HTTP_AUTHORIZATION": "Bearer x"},
    ):
        response = client.post(ENDPOINTS[name], body, content_type="application/json", **headers)
        assert response.status_code == 401, headers

    assert state() == before
    assert TrackingEvent.objects.count() == events  # not even an "unknown" event


@pytest.mark.parametrize("name", sorted(SIGNED))
def test_every_signed_webhook_refuses_a_wrong_signature(client, message, name):
    before, events = state(), TrackingEvent.objects.count()
    body = mailgun_signed(_mailgun_event(message.message_id), key="not-the-key")

    response = client.post(
        ENDPOINTS[name],
        body,
        content_type="application/json",
        HTTP_AUTHORIZATION=basic(SECRET),
        HTTP_X_MANDRILL_SIGNATURE="bm90LWl0",
        HTTP_SIGNATURE="bm90LWl0",
        HTTP_X_SERVER_SIGNATURE="bm90LWl0",
        HTTP_X_POSTAL_SIGNATURE="bm90LWl0",
    )

    assert response.status_code == 400
    assert state() == before
    assert TrackingEvent.objects.count() == events


def test_a_correctly_signed_event_is_applied(client, message):
    # The positive control of the two tests above: the same body with the right key counts.
    response = client.post(
        ENDPOINTS["mailgun_tracking_webhook"],
        mailgun_signed(_mailgun_event(message.message_id)),
        content_type="application/json",
        HTTP_AUTHORIZATION=basic(SECRET),
    )

    assert response.status_code == 200
    message.refresh_from_db()
    assert message.status == Message.Status.DELIVERED


# --- fuzzing --------------------------------------------------------------------------------

scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text()
json_values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=5)
    ),
    max_leaves=25,
)
ESP_KEYS = [
    "event", "Event", "RecordType", "type", "eventType", "msys", "message_event", "MessageID",
    "message-id", "message_id", "msg_id", "sg_message_id", "recipient", "email", "Recipient",
    "timestamp", "time", "ts", "event-data", "signature", "mail", "bounce", "Type", "Details",
    "mta_response", "reason", "url", "user-agent", "payload", "data", "headers", "delivery-status",
]  # fmt: skip
EVENT_NAMES = [
    "delivered", "bounce", "bounced", "hard_bounce", "soft_bounce", "open", "opened", "click",
    "spam", "spamreport", "complained", "unsubscribe", "failed", "deferred", "dropped", "Bounce",
    "Delivery", "SpamComplaint", "message.delivered", "email.bounced", "inbound", "",
]  # fmt: skip
esp_like = st.dictionaries(
    st.sampled_from(ESP_KEYS),
    st.sampled_from(EVENT_NAMES) | scalars | st.dictionaries(st.sampled_from(ESP_KEYS), scalars),
    max_size=8,
)
bodies = st.one_of(
    st.binary(max_size=600).map(lambda b: ("application/json", b)),
    json_values.map(lambda v: ("application/json", json.dumps(v).encode())),
    esp_like.map(lambda v: ("application/json", json.dumps(v).encode())),
    st.lists(esp_like, max_size=4).map(lambda v: ("application/json", json.dumps(v).encode())),
    esp_like.map(lambda v: ("application/x-www-form-urlencoded", json.dumps(v).encode())),
    st.one_of(esp_like, json_values).map(
        lambda v: ("application/json", mailgun_signed(v))
    ),  # reaches Mailgun's parser
)


@fuzz_settings(scale=3)
@given(name=st.sampled_from(FUZZED), body=bodies)
def test_fuzzed_webhook_bodies_with_valid_credentials_never_500_and_change_nothing(
    client, message, name, body
):
    tried("webhook bodies")
    content_type, data = body
    before = state()

    response = client.post(
        ENDPOINTS[name], data, content_type=content_type, HTTP_AUTHORIZATION=basic(SECRET)
    )

    assert response.status_code < 500
    assert state() == before
