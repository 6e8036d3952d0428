"""The open pixel, click redirect and unsubscribe page, for messages really sent over SMTP."""

from __future__ import annotations

import json
import socket
from datetime import timedelta

import pytest
from django.db import connection
from django.test import Client
from django.utils import timezone

from campaigns.models import Message, Recipient
from campaigns.services import campaign_launch, dispatch_due, run_prepare
from contacts.models import Contact, Suppression
from leadcenter.factories import TopicFactory
from tracking import tokens
from tracking.models import TrackingEvent

pytestmark = pytest.mark.django_db
S = Message.Status
BROWSER = "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_5) AppleWebKit/605.1.15 (KHTML, like Gecko)"


@pytest.fixture
def sent_message(smtp_server, make_campaign, add_contacts) -> Message:
    add_contacts("ada@example.test", first_name="Ada")
    campaign = make_campaign(steps=2, topic=TopicFactory(name="Events"))
    run_prepare(run=campaign_launch(campaign=campaign, enqueue=False))
    dispatch_due()
    message = Message.objects.get()
    # Sent a minute ago: past the window in which a click is a scanner's.
    Message.objects.filter(pk=message.pk).update(sent_at=timezone.now() - timedelta(minutes=1))
    message.refresh_from_db()
    assert message.status == S.SENT
    return message


def pixel(message_pk: int) -> str:
    return f"/t/o/{tokens.make_token(tokens.OPEN, message_pk)}.gif"


def test_the_pixel_records_an_open_and_answers_a_gif_that_is_never_cached(client, sent_message):
    response = client.get(pixel(sent_message.pk), HTTP_USER_AGENT=BROWSER)

    assert response.status_code == 200
    assert response["Content-Type"] == "image/gif"
    assert response.content.startswith(b"GIF89a")
    assert "no-store" in response["Cache-Control"]
    sent_message.refresh_from_db()
    assert sent_message.status == S.OPENED
    assert sent_message.open_count == 1
    assert Recipient.objects.get().opened_at is not None


def test_every_open_counts_and_the_first_time_stays(client, sent_message):
    client.get(pixel(sent_message.pk), HTTP_USER_AGENT=BROWSER)
    sent_message.refresh_from_db()
    first = sent_message.opened_at

    client.get(pixel(sent_message.pk), HTTP_USER_AGENT=BROWSER)

    sent_message.refresh_from_db()
    assert sent_message.open_count == 2
    assert sent_message.opened_at == first


@pytest.mark.parametrize(
    "token",
    ["forged", "AAAAAAAAAAAAAAAAAAAAAAAA", "", "x" * 300],
)
def test_a_forged_pixel_token_still_gets_a_gif_and_records_nothing(client, sent_message, token):
    response = client.get(f"/t/o/{token}.gif", HTTP_USER_AGENT=BROWSER)

    assert response.status_code in (200, 404)  # an empty token matches no route at all
    if response.status_code == 200:
        assert response.content.startswith(b"GIF89a")
    assert not TrackingEvent.objects.filter(type="opened").exists()
    sent_message.refresh_from_db()
    assert sent_message.status == S.SENT


def test_an_open_by_a_scanner_is_recorded_as_machine_activity(client, sent_message):
    client.get(pixel(sent_message.pk), HTTP_USER_AGENT="Barracuda Sentinel (EE)")

    event = TrackingEvent.objects.get(type="opened")
    assert event.is_machine
    sent_message.refresh_from_db()
    assert sent_message.status == S.SENT  # a machine's open is not a person's
    assert Recipient.objects.get().opened_at is None


def test_a_click_redirects_to_exactly_the_signed_url_and_is_recorded(client, sent_message):
    token = tokens.make_click_token(sent_message.pk, "https://example.test/pricing?plan=pro&x=1")

    response = client.get(f"/t/c/{token}/", HTTP_USER_AGENT=BROWSER)

    assert response.status_code == 302
    assert response["Location"] == "https://example.test/pricing?plan=pro&x=1"
    sent_message.refresh_from_db()
    assert sent_message.status == S.CLICKED
    assert sent_message.click_count == 1
    assert TrackingEvent.objects.get(type="clicked").url == (
        "https://example.test/pricing?plan=pro&x=1"
    )


def test_the_links_in_the_sent_email_lead_through_the_click_redirect(
    client, smtp_server, sent_message
):
    import re

    data = smtp_server.handler.delivered[0].data.decode()
    body = re.sub(r"=\r\n", "", data).replace("=3D", "=")
    [link] = re.findall(r"http://127\.0\.0\.1:8000(/t/c/[^'\"]+)", body)

    response = client.get(link, HTTP_USER_AGENT=BROWSER)

    assert response["Location"] == "https://example.test/"


def test_an_altered_click_token_redirects_nowhere_and_records_nothing(client, sent_message):
    token = tokens.make_click_token(sent_message.pk, "https://example.test/")
    signed, _, _ = token.partition(".")
    evil = tokens._b64(b"https://evil.example/")

    for bad in (f"{signed}.{evil}", token[:-3] + "abc", "nonsense"):
        response = client.get(f"/t/c/{bad}/", HTTP_USER_AGENT=BROWSER)
        assert response.status_code == 404
        assert "evil" not in response.get("Location", "")
    assert not TrackingEvent.objects.filter(type="clicked").exists()


def test_a_click_within_seconds_of_sending_is_a_scanners(client, sent_message):
    Message.objects.filter(pk=sent_message.pk).update(sent_at=timezone.now())
    token = tokens.make_click_token(sent_message.pk, "https://example.test/")

    client.get(f"/t/c/{token}/", HTTP_USER_AGENT=BROWSER)

    assert TrackingEvent.objects.get(type="clicked").is_machine


def unsubscribe_url(message_pk: int) -> str:
    return f"/t/u/{tokens.make_token(tokens.UNSUBSCRIBE, message_pk)}/"


def test_the_unsubscribe_page_offers_a_choice_and_changes_nothing(client, sent_message):
    response = client.get(unsubscribe_url(sent_message.pk))

    assert response.status_code == 200
    assert b"ada@example.test" in response.content
    assert b"Only Events email" in response.content
    assert b"All email" in response.content
    assert not TrackingEvent.objects.filter(type="unsubscribed").exists()
    assert Contact.objects.get().unsubscribed_at is None


def test_unsubscribing_from_all_mail_suppresses_without_invalidating(client, sent_message):
    response = client.post(unsubscribe_url(sent_message.pk), {"scope": "all"})

    assert b"You are unsubscribed" in response.content
    contact = Contact.objects.get()
    assert contact.unsubscribed_at is not None
    assert contact.email_status == Contact.EmailStatus.VALID
    assert Suppression.objects.filter(email="ada@example.test", reason="unsubscribe").exists()
    sent_message.refresh_from_db()
    assert sent_message.unsubscribed_at is not None
    assert sent_message.status == S.SENT  # an unsubscribe is beside the status


def test_unsubscribing_from_the_topic_only_opts_out_of_it(client, sent_message):
    client.post(unsubscribe_url(sent_message.pk), {"scope": "topic"})

    contact = Contact.objects.get()
    assert list(contact.opted_out_topics.values_list("name", flat=True)) == ["Events"]
    assert contact.unsubscribed_at is None
    assert not Suppression.objects.exists()


def test_one_click_unsubscribe_needs_no_cookie_or_csrf_token(sent_message):
    strict = Client(enforce_csrf_checks=True)

    response = strict.post(
        unsubscribe_url(sent_message.pk),
        "List-Unsubscribe=One-Click",
        content_type="application/x-www-form-urlencoded",
    )

    assert response.status_code == 200
    assert Contact.objects.get().unsubscribed_at is not None
    # Twice (mail clients retry) records it once.
    strict.post(
        unsubscribe_url(sent_message.pk),
        "List-Unsubscribe=One-Click",
        content_type="application/x-www-form-urlencoded",
    )
    assert TrackingEvent.objects.filter(type="unsubscribed").count() == 1


def test_no_follow_up_goes_after_an_unsubscribe(client, smtp_server, sent_message):
    client.post(unsubscribe_url(sent_message.pk), {"scope": "all"})
    Recipient.objects.update(next_step_at=timezone.now() - timedelta(seconds=1))

    dispatch_due()

    assert len(smtp_server.handler.delivered) == 1


def test_a_forged_unsubscribe_token_shows_an_error_and_records_nothing(client, sent_message):
    for method in (client.get, client.post):
        response = method("/t/u/not-a-real-token/")
        assert response.status_code == 404
        assert b"This link is not valid" in response.content
    assert Contact.objects.get().unsubscribed_at is None


@pytest.fixture
def redis_buffer(settings):
    import redis

    from tracking import buffer

    settings.REDIS_URL = "redis://127.0.0.1:6379/7"
    settings.LEADCENTER_TRACKING_BUFFER = "redis"
    buffer.connections_reset()
    client = redis.Redis.from_url(settings.REDIS_URL)
    try:
        client.ping()
    except redis.RedisError:
        pytest.skip("no Redis on 127.0.0.1:6379")
    client.flushdb()
    yield buffer
    client.flushdb()
    buffer.connections_reset()


def test_with_redis_opens_and_clicks_are_queued_then_drained_once(
    client, sent_message, redis_buffer
):
    token = tokens.make_click_token(sent_message.pk, "https://example.test/")
    for _ in range(3):
        assert client.get(pixel(sent_message.pk), HTTP_USER_AGENT=BROWSER).status_code == 200
    assert client.get(f"/t/c/{token}/", HTTP_USER_AGENT=BROWSER).status_code == 302

    assert redis_buffer.events_pending() == 4
    assert not TrackingEvent.objects.filter(type__in=["opened", "clicked"]).exists()
    assert redis_buffer.events_drain() == 4
    assert redis_buffer.events_drain() == 0

    sent_message.refresh_from_db()
    assert (sent_message.open_count, sent_message.click_count) == (3, 1)
    assert sent_message.status == S.CLICKED


def test_a_drain_that_runs_twice_over_the_same_events_records_them_once(
    client, sent_message, redis_buffer
):
    client.get(pixel(sent_message.pk), HTTP_USER_AGENT=BROWSER)
    queued = redis_buffer._redis().lrange(redis_buffer.KEY, 0, -1)
    redis_buffer.events_drain()
    # A drain died after applying but before trimming: the same items are there again.
    redis_buffer._redis().rpush(redis_buffer.KEY, *queued)

    redis_buffer.events_drain()

    sent_message.refresh_from_db()
    assert sent_message.open_count == 1


def test_a_queued_item_that_cannot_be_applied_is_set_aside_and_the_rest_recorded(
    client, sent_message, redis_buffer
):
    """An item the drain cannot read (left by an older version) or the database refuses on
    its own (a NUL, which PostgreSQL cannot store) never blocks the queue: it is kept as an
    unmatched event saying why, and the good events around it are recorded."""
    client.get(pixel(sent_message.pk), HTTP_USER_AGENT=BROWSER)
    queue = redis_buffer._redis()
    queue.rpush(redis_buffer.KEY, b'{"type": "opened", "from_an_older_version": 1}')
    poisoned = {
        "type": "opened", "source": "pixel", "occurred_at": timezone.now().isoformat(),
        "dedupe_key": "pixel:nul", "message_pk": sent_message.pk, "user_agent": "a\x00b",
    }  # fmt: skip
    queue.rpush(redis_buffer.KEY, json.dumps(poisoned))
    client.get(pixel(sent_message.pk), HTTP_USER_AGENT=BROWSER + "\x00")

    redis_buffer.events_drain()

    assert redis_buffer.events_pending() == 0
    sent_message.refresh_from_db()
    set_aside = TrackingEvent.objects.filter(message=None, source="tracking queue")
    assert [e.detail.split(":")[0] for e in set_aside] == ["Not applied"] * set_aside.count()
    assert set_aside.filter(raw__contains="from_an_older_version").exists()
    nul_refused = connection.vendor == "postgresql"
    assert set_aside.filter(raw__contains="pixel:nul").exists() == nul_refused
    assert sent_message.open_count == (2 if nul_refused else 3)
    assert set_aside.count() == (2 if nul_refused else 1)


def test_a_push_after_redis_dropped_the_connection_is_not_lost(client, sent_message, redis_buffer):
    """Pushes go out without waiting for a reply; a connection Redis has closed (a restart,
    a time-out) is noticed before the next push, which goes over a new one."""
    client.get(pixel(sent_message.pk), HTTP_USER_AGENT=BROWSER)
    killed = redis_buffer._redis().client_kill_filter(_type="normal", skipme=True)
    assert killed >= 1

    for _ in range(2):
        client.get(pixel(sent_message.pk), HTTP_USER_AGENT=BROWSER)

    assert redis_buffer.events_pending() == 3
    redis_buffer.events_drain()
    sent_message.refresh_from_db()
    assert sent_message.open_count == 3


def test_without_a_reachable_redis_the_open_is_recorded_in_the_request(
    client, sent_message, redis_buffer, settings
):
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    settings.REDIS_URL = f"redis://127.0.0.1:{port}/7"
    redis_buffer.connections_reset()

    assert client.get(pixel(sent_message.pk), HTTP_USER_AGENT=BROWSER).status_code == 200

    sent_message.refresh_from_db()
    assert sent_message.open_count == 1
