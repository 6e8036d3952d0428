"""tracking.services.messages_record_accepted: a batch of accepted messages recorded set-wise
with the same effect as one message_transition and one recipient update per message, inside
the caller's transaction, or on its own (on PostgreSQL: one statement, its own transaction)."""

from datetime import timedelta

import pytest
from django.db import connection
from django.utils import timezone

from campaigns.models import Message, Recipient
from leadcenter.factories import MessageFactory
from tracking.models import TrackingEvent
from tracking.services import Accepted, messages_record_accepted

S = Message.Status
E = TrackingEvent.Type


@pytest.fixture(
    autouse=True,
    params=[
        pytest.param("in a transaction", marks=pytest.mark.django_db),
        pytest.param("on its own", marks=pytest.mark.django_db(transaction=True)),
    ],
)
def way(request):
    """Each test in the caller's transaction (the test's), and outside any (committed)."""
    return request.param


def _message_in(status: str) -> Message:
    message = MessageFactory()
    # Test set-up only: production code never writes the status outside tracking.services.
    Message.objects.filter(pk=message.pk).update(status=status)
    return message


def _accepted(message: Message, when, **fields) -> Accepted:
    return Accepted(
        message_id=message.pk,
        recipient_id=message.recipient_id,
        occurred_at=when,
        fields={"smtp_code": 250, "smtp_status": "2.0.0", "smtp_response": "2.0.0 Ok", **fields},
        recipient_fields={
            "status": Recipient.Status.SENT,
            "steps_sent": 1,
            "next_step_at": None,
            "last_action_at": when,
        },
        detail="2.0.0 Ok",
    )


def test_it_moves_each_message_with_its_own_reply_time_and_one_event_each():
    messages = [_message_in(S.SENDING) for _ in range(3)]
    start = timezone.now()
    whens = [start + timedelta(seconds=i) for i in range(3)]

    moved = messages_record_accepted(
        accepted=[_accepted(m, w) for m, w in zip(messages, whens, strict=True)],
        from_status=S.SENDING,
        status=S.SENT,
        event_type=E.SENT,
        source="smtp",
    )

    assert moved == [m.pk for m in messages]
    for message, when in zip(messages, whens, strict=True):
        message.refresh_from_db()
        assert (message.status, message.smtp_code, message.smtp_response) == (
            S.SENT,
            250,
            "2.0.0 Ok",
        )
        assert message.sent_at == when == message.status_changed_at
        [event] = TrackingEvent.objects.filter(message=message)
        assert (event.type, event.from_status, event.to_status) == (E.SENT, S.SENDING, S.SENT)
        assert (event.occurred_at, event.source, event.detail) == (when, "smtp", "2.0.0 Ok")
        assert event.dedupe_key.startswith("local:")
        recipient = Recipient.objects.get(pk=message.recipient_id)
        assert (recipient.status, recipient.steps_sent, recipient.last_action_at) == (
            Recipient.Status.SENT,
            1,
            when,
        )


def test_a_message_moved_meanwhile_keeps_its_status_and_still_gets_its_event():
    sending = _message_in(S.SENDING)
    # A delivery webhook was faster than our outcome write.
    delivered = _message_in(S.DELIVERED)
    when = timezone.now()

    moved = messages_record_accepted(
        accepted=[_accepted(sending, when), _accepted(delivered, when)],
        from_status=S.SENDING,
        status=S.SENT,
        event_type=E.SENT,
        source="smtp",
    )

    assert moved == [sending.pk]
    delivered.refresh_from_db()
    assert delivered.status == S.DELIVERED
    assert delivered.sent_at == when  # the fact is recorded, the status does not go back
    [event] = TrackingEvent.objects.filter(message=delivered)
    assert (event.from_status, event.to_status) == (S.DELIVERED, "")


def test_an_account_that_confirms_delivery_fills_the_first_seen_times():
    message = _message_in(S.SENDING)
    when = timezone.now()

    messages_record_accepted(
        accepted=[_accepted(message, when, sent_at=when, esp_message_id="esp-1")],
        from_status=S.SENDING,
        status=S.DELIVERED,
        event_type=E.DELIVERED,
        source="smtp",
    )

    message.refresh_from_db()
    assert (message.status, message.esp_message_id) == (S.DELIVERED, "esp-1")
    assert message.sent_at == message.delivered_at == when
    assert Recipient.objects.get(pk=message.recipient_id).delivered_at == when


def test_it_refuses_a_transition_outside_the_table():
    message = _message_in(S.DELIVERED)

    with pytest.raises(ValueError, match="delivered -> sent"):
        messages_record_accepted(
            accepted=[_accepted(message, timezone.now())],
            from_status=S.DELIVERED,
            status=S.SENT,
            event_type=E.SENT,
            source="smtp",
        )


def test_groups_of_different_columns_each_get_their_own_update(way, django_assert_num_queries):
    # An ESP reply carries its id (another set of message columns); a recipient with a step
    # left is partial, with its next step's time (another set of recipient columns).
    esp, smtp = _message_in(S.SENDING), _message_in(S.SENDING)
    when = timezone.now()
    later = _accepted(smtp, when)
    later.recipient_fields.update(
        status=Recipient.Status.PARTIAL, next_step_at=when + timedelta(days=2)
    )
    rows = [_accepted(esp, when, esp_message_id="esp-9"), later]
    first = {**later.recipient_fields, "first_sent_on": when.date()}
    rows[1] = Accepted(**{**later.__dict__, "recipient_fields": first})

    def record():
        return messages_record_accepted(
            accepted=rows, from_status=S.SENDING, status=S.SENT, event_type=E.SENT, source="smtp"
        )

    if way == "on its own" and connection.vendor == "postgresql":
        with django_assert_num_queries(1):  # the updates of both groups and their events
            moved = record()
    else:
        moved = record()

    assert sorted(moved) == sorted([esp.pk, smtp.pk])
    esp.refresh_from_db()
    smtp.refresh_from_db()
    assert (esp.status, esp.esp_message_id, smtp.status, smtp.esp_message_id) == (
        S.SENT,
        "esp-9",
        S.SENT,
        "",
    )
    assert TrackingEvent.objects.filter(type=E.SENT).count() == 2
    a, b = (Recipient.objects.get(pk=m.recipient_id) for m in (esp, smtp))
    assert (a.status, a.next_step_at, a.first_sent_on) == (Recipient.Status.SENT, None, None)
    assert (b.status, b.next_step_at, b.first_sent_on) == (
        Recipient.Status.PARTIAL,
        when + timedelta(days=2),
        when.date(),
    )
