from datetime import timedelta
from itertools import product

import pytest
from django.utils import timezone

from campaigns.models import Message
from leadcenter.factories import MessageFactory
from tracking.models import TrackingEvent
from tracking.services import message_transition, messages_transition

S = Message.Status
E = TrackingEvent.Type

# Written out from DESIGN.md "Statuses", independently of tracking.services.TRANSITIONS.
ALLOWED = {
    ("queued", "sending"), ("queued", "cancelled"),
    ("sending", "queued"),  # a claim given back unsent (see tracking.services.TRANSITIONS)
    ("sending", "sent"), ("sending", "delivered"), ("sending", "soft_bounced"),
    ("sending", "bounced"), ("sending", "failed"), ("sending", "cancelled"),
    ("soft_bounced", "sending"), ("soft_bounced", "sent"), ("soft_bounced", "delivered"),
    ("soft_bounced", "bounced"), ("soft_bounced", "failed"), ("soft_bounced", "cancelled"),
    ("sent", "soft_bounced"), ("sent", "delivered"), ("sent", "bounced"), ("sent", "failed"),
    ("delivered", "opened"), ("opened", "clicked"), ("clicked", "replied"),
    ("delivered", "clicked"), ("delivered", "replied"), ("opened", "replied"),
}  # fmt: skip
# "any sent-or-later status -> opened | clicked | replied (engagement proves delivery)"
for _status in ("sent", "soft_bounced", "bounced", "failed"):
    ALLOWED |= {(_status, "opened"), (_status, "clicked"), (_status, "replied")}

ALL = [choice.value for choice in S]


def _message_in(status: str) -> Message:
    message = MessageFactory()
    # Test set-up only: production code never writes the status outside tracking.services.
    Message.objects.filter(pk=message.pk).update(status=status)
    return message


@pytest.mark.django_db
@pytest.mark.parametrize(("current", "new"), list(product(ALL, ALL)))
def test_every_pair_of_statuses_follows_the_table(current, new):
    message = _message_in(current)

    result = message_transition(
        message_id=message.pk, event_type=E.UNKNOWN, source="manual", status=new
    )

    message.refresh_from_db()
    expected = (current, new) in ALLOWED
    assert result.changed is expected
    assert message.status == (new if expected else current)
    # Every event is stored, whether or not it moved the status.
    event = TrackingEvent.objects.get(message=message)
    assert event.from_status == current
    assert event.to_status == (new if expected else "")


@pytest.mark.django_db
def test_a_bounce_after_delivery_is_recorded_but_keeps_delivered():
    message = _message_in("delivered")

    result = message_transition(
        message_id=message.pk, event_type=E.BOUNCED, source="dsn", status=S.BOUNCED
    )

    message.refresh_from_db()
    assert message.status == S.DELIVERED
    assert not result.changed
    assert message.events.filter(type=E.BOUNCED).count() == 1


@pytest.mark.django_db
def test_a_replayed_event_is_recorded_once():
    message = _message_in("sent")

    first = message_transition(
        message_id=message.pk,
        event_type=E.OPENED,
        source="pixel",
        status=S.OPENED,
        dedupe_key="pixel:abc",
    )
    second = message_transition(
        message_id=message.pk,
        event_type=E.OPENED,
        source="pixel",
        status=S.OPENED,
        dedupe_key="pixel:abc",
    )

    message.refresh_from_db()
    assert first.changed and not first.duplicate
    assert second.duplicate and not second.changed
    assert message.open_count == 1
    assert TrackingEvent.objects.filter(dedupe_key="pixel:abc").count() == 1


@pytest.mark.django_db
def test_first_seen_times_are_kept_and_counters_grow():
    message = _message_in("sent")
    first_open = timezone.now() - timedelta(hours=2)

    message_transition(
        message_id=message.pk,
        event_type=E.OPENED,
        source="pixel",
        status=S.OPENED,
        occurred_at=first_open,
    )
    message_transition(message_id=message.pk, event_type=E.OPENED, source="pixel", status=S.OPENED)

    message.refresh_from_db()
    recipient = message.recipient
    recipient.refresh_from_db()
    assert message.status == S.OPENED
    assert message.open_count == 2
    assert message.opened_at == first_open
    # An open proves delivery even though no delivery event arrived.
    assert message.delivered_at == first_open
    assert recipient.opened_at == first_open
    assert recipient.delivered_at == first_open


@pytest.mark.django_db
def test_an_event_that_matches_no_message_is_kept_unmatched():
    result = message_transition(
        message_id=None,
        event_type=E.BOUNCED,
        source="dsn",
        email="nobody@example.test",
        raw="Final-Recipient: rfc822; nobody@example.test",
    )

    assert not result.changed
    event = TrackingEvent.objects.get()
    assert event.message is None
    assert event.email == "nobody@example.test"


@pytest.mark.django_db
def test_unsubscribe_is_an_event_beside_the_status():
    message = _message_in("clicked")

    message_transition(message_id=message.pk, event_type=E.UNSUBSCRIBED, source="unsubscribe")

    message.refresh_from_db()
    assert message.status == S.CLICKED
    assert message.unsubscribed_at is not None
    assert message.recipient.unsubscribed_at is not None


@pytest.mark.django_db
def test_a_batch_moves_only_messages_still_in_the_expected_status():
    queued = [_message_in("queued") for _ in range(3)]
    already_claimed = _message_in("sending")

    moved = messages_transition(
        message_ids=[m.pk for m in queued] + [already_claimed.pk],
        from_status=S.QUEUED,
        status=S.SENDING,
        event_type=E.CLAIMED,
        source="system",
    )

    assert sorted(moved) == sorted(m.pk for m in queued)
    assert Message.objects.filter(status=S.SENDING).count() == 4
    assert TrackingEvent.objects.filter(type=E.CLAIMED).count() == 3
    assert not TrackingEvent.objects.filter(message=already_claimed).exists()


@pytest.mark.django_db
def test_a_batch_refuses_a_transition_outside_the_table():
    message = _message_in("delivered")

    with pytest.raises(ValueError, match="delivered -> bounced"):
        messages_transition(
            message_ids=[message.pk],
            from_status=S.DELIVERED,
            status=S.BOUNCED,
            event_type=E.BOUNCED,
            source="dsn",
        )
