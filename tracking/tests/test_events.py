"""event_record: matching, dedupe, consequences, and the same final state in any order."""

from __future__ import annotations

from datetime import timedelta
from itertools import permutations

import pytest
from django.utils import timezone

from campaigns.models import CampaignRun, Message, Recipient
from contacts.models import Contact, Suppression
from leadcenter.factories import CampaignStepFactory, MessageFactory
from tracking.events import InboundEvent, dedupe_key
from tracking.models import Rejection, TrackingEvent
from tracking.services import event_record, events_apply

pytestmark = pytest.mark.django_db
S = Message.Status
E = TrackingEvent.Type


def sent_message(**fields) -> Message:
    message = MessageFactory(**fields)
    Message.objects.filter(pk=message.pk).update(
        status=S.SENT, sent_at=timezone.now() - timedelta(hours=1)
    )
    message.refresh_from_db()
    return message


def event(kind: str, message: Message, n: int = 0, **fields) -> InboundEvent:
    return InboundEvent(
        type=kind,
        source="webhook:test",
        occurred_at=timezone.now() - timedelta(minutes=30 - n),
        dedupe_key=dedupe_key("test", message.pk, kind, n),
        message_pk=message.pk,
        **fields,
    )


HARD = {"smtp_code": 550, "smtp_status": "5.1.1", "diagnostic": "550 5.1.1 user unknown"}


@pytest.mark.parametrize("order", list(permutations(["delivered", "opened", "clicked", "bounced"])))
def test_events_in_any_order_give_the_same_final_state(order):
    message = sent_message()
    events = {
        "delivered": event(E.DELIVERED, message, 1),
        "opened": event(E.OPENED, message, 2),
        "clicked": event(E.CLICKED, message, 3),
        "bounced": event(E.BOUNCED, message, 4, **HARD),
    }

    for name in order:
        event_record(events[name])
    for name in order:  # and replayed: nothing changes
        assert event_record(events[name]).duplicate

    message.refresh_from_db()
    assert message.status == S.CLICKED
    assert (message.open_count, message.click_count) == (1, 1)
    assert TrackingEvent.objects.filter(message=message).count() == 4
    # Engagement proves the address works, whether the bounce came before or after it.
    assert Contact.objects.get().email_status == Contact.EmailStatus.VALID
    assert not Suppression.objects.filter(lifted_at__isnull=True).exists()


def _two_step_sent_message(run_status: str) -> Message:
    """Step 1 of a two-step campaign sent an hour ago, its lead partial as the send leaves it."""
    message = sent_message()
    CampaignStepFactory(campaign=message.run.campaign, position=2, delay=timedelta(days=2))
    CampaignRun.objects.filter(pk=message.run_id).update(status=run_status)
    Recipient.objects.filter(pk=message.recipient_id).update(
        status=Recipient.Status.PARTIAL,
        steps_sent=1,
        next_step_at=message.sent_at + timedelta(days=2),
    )
    return message


@pytest.mark.parametrize("writer", ["one by one", "batch"])
@pytest.mark.parametrize(
    ("run_status", "expected"),
    [("running", ("partial", True)), ("paused", ("partial", True)), ("completed", ("sent", False))],
)
def test_engagement_after_a_hard_bounce_gives_the_lead_back(writer, run_status, expected):
    """Bounce then click ends where click then bounce ends: the lead where the send left it
    (partial, its follow-up due from the sending), or sent when the run is over."""
    message = _two_step_sent_message(run_status)
    bounce, click = event(E.BOUNCED, message, 1, **HARD), event(E.CLICKED, message, 2)

    event_record(bounce)
    recipient = Recipient.objects.get()
    assert (recipient.status, recipient.next_step_at) == ("failed", None)
    if writer == "batch":
        events_apply([click])
    else:
        event_record(click)

    recipient.refresh_from_db()
    assert (recipient.status, recipient.next_step_at is not None) == expected
    if expected[1]:
        assert recipient.next_step_at == message.sent_at + timedelta(days=2)
    assert Contact.objects.get().email_status == Contact.EmailStatus.VALID


@pytest.mark.parametrize("writer", ["one by one", "batch"])
def test_engagement_disproving_an_earlier_bounce_leaves_a_later_one_alone(writer):
    message = _two_step_sent_message("running")
    later = MessageFactory(
        recipient=message.recipient, step=message.run.campaign.steps.get(position=2)
    )
    Message.objects.filter(pk=later.pk).update(status=S.SENT, sent_at=timezone.now())
    event_record(event(E.BOUNCED, message, 1, **HARD))  # a late DSN for step 1
    event_record(event(E.BOUNCED, later, 2, **HARD))

    click = event(E.CLICKED, message, 3)  # proves step 1 went through, not step 2
    events_apply([click]) if writer == "batch" else event_record(click)

    assert Message.objects.get(pk=message.pk).status == S.CLICKED
    assert Recipient.objects.get().status == Recipient.Status.FAILED
    # The later bounce is the latest word on the address.
    assert Contact.objects.get().email_status == Contact.EmailStatus.INVALID
    assert Suppression.objects.filter(reason="hard_bounce", lifted_at__isnull=True).exists()


def test_a_hard_bounce_invalidates_and_suppresses_the_address():
    message = sent_message()

    result = event_record(event(E.BOUNCED, message, **HARD))

    assert result.changed
    message.refresh_from_db()
    assert message.status == S.BOUNCED
    contact = Contact.objects.get()
    assert contact.email_status == Contact.EmailStatus.INVALID
    assert "User not found" in contact.invalid_reason
    assert Suppression.objects.filter(reason="hard_bounce").count() == 1
    assert Rejection.objects.get().category == "user_not_found"


def test_an_esp_bounced_without_a_hard_reason_is_not_hard():
    message = sent_message()

    event_record(event(E.BOUNCED, message, reject_reason="bounced", diagnostic="452 4.2.2 full"))

    message.refresh_from_db()
    assert message.status == S.FAILED  # a final failure, but soft: the address stays valid
    assert Contact.objects.get().email_status == Contact.EmailStatus.VALID
    assert Rejection.objects.get().kind == "soft"


def test_a_complaint_suppresses_but_leaves_the_address_valid():
    message = sent_message()

    event_record(event(E.COMPLAINED, message))

    message.refresh_from_db()
    assert message.complained_at is not None
    assert message.status == S.SENT
    assert Contact.objects.get().email_status == Contact.EmailStatus.VALID
    assert Suppression.objects.get().reason == "complaint"


def test_matching_falls_back_from_message_id_to_esp_id_to_the_latest_by_address():
    older = sent_message()
    newer = sent_message(recipient__contact__email="same@example.test")
    Message.objects.filter(pk=newer.pk).update(esp_message_id="esp-123")

    by_header = InboundEvent(
        type=E.DELIVERED,
        source="dsn",
        occurred_at=timezone.now(),
        dedupe_key="k1",
        header_message_ids=[older.message_id.strip("<>")],
    )
    by_esp = InboundEvent(
        type=E.DELIVERED,
        source="webhook:x",
        occurred_at=timezone.now(),
        dedupe_key="k2",
        esp_message_id="esp-123",
    )
    by_address = InboundEvent(
        type=E.OPENED,
        source="webhook:x",
        occurred_at=timezone.now(),
        dedupe_key="k3",
        recipient="SAME@example.test",
    )
    unmatched = InboundEvent(
        type=E.BOUNCED,
        source="dsn",
        occurred_at=timezone.now(),
        dedupe_key="k4",
        recipient="nobody@example.test",
        raw="the raw bounce",
    )

    assert event_record(by_header).event.message_id == older.pk
    assert event_record(by_esp).event.message_id == newer.pk
    assert event_record(by_address).event.message_id == newer.pk
    kept = event_record(unmatched).event
    assert kept.message_id is None
    assert kept.raw == "the raw bounce"


def test_unmatched_events_are_listed_for_a_person(superuser_client):
    event_record(
        InboundEvent(
            type=E.BOUNCED,
            source="dsn",
            occurred_at=timezone.now(),
            dedupe_key="u1",
            recipient="stranger@example.test",
            raw="Final-Recipient: rfc822; stranger@example.test",
        )
    )
    sent_message()

    page = superuser_client.get("/admin/tracking/trackingevent/?matched=no")

    assert page.status_code == 200
    assert b"stranger@example.test" in page.content
    assert page.context["cl"].result_count == 1


def _state(message: Message) -> tuple:
    message.refresh_from_db()
    r = message.recipient
    r.refresh_from_db()
    events = sorted((e.type, e.is_machine, bool(e.to_status)) for e in message.events.all())
    return (
        message.status,
        message.open_count,
        message.click_count,
        message.opened_at,
        message.clicked_at,
        message.delivered_at,
        r.opened_at,
        r.clicked_at,
        r.delivered_at,
        events,
    )


def test_a_batch_of_opens_and_clicks_ends_as_recording_them_one_by_one():
    from tracking.services import events_record_many

    one, many = sent_message(), sent_message()
    base = timezone.now() - timedelta(minutes=20)
    plan = [
        (E.OPENED, False),
        (E.OPENED, True),
        (E.CLICKED, False),
        (E.OPENED, False),
        (E.CLICKED, True),
        (E.OPENED, False),
    ]

    def events_for(message: Message, tag: str) -> list[InboundEvent]:
        return [
            InboundEvent(
                type=kind,
                source="pixel" if kind == E.OPENED else "click",
                occurred_at=base + timedelta(seconds=i),
                dedupe_key=f"{tag}:{i}",
                message_pk=message.pk,
                is_machine=machine,
                user_agent="Mozilla/5.0" if not machine else "Barracuda",
            )
            for i, (kind, machine) in enumerate(plan)
        ]

    for e in events_for(one, "one"):
        event_record(e)
    batch = events_for(many, "many")
    assert events_record_many([*batch, batch[0]]) == len(plan)  # a duplicate within the batch
    assert events_record_many(batch) == 0  # and the whole batch again

    assert _state(one) == _state(many)
    assert _state(many)[:3] == (S.CLICKED, 4, 2)


# --- batches: events_apply ---------------------------------------------------------------------

SOFT = {"smtp_code": 452, "smtp_status": "4.2.2", "diagnostic": "452 4.2.2 mailbox full"}
# Per message: (event type, minutes after the first, extra fields). Together they cover every
# branch of event_record: engagement moving a message forward, a machine open, a bounce after
# delivery, a hard bounce proved wrong by a later open, a deferral, a soft permanent failure,
# a complaint, an unsubscribe from everything, a late "sent".
SCRIPT: dict[str, list[tuple[str, int, dict]]] = {
    "engaged": [
        (E.DELIVERED, 1, {}),
        (E.OPENED, 2, {"user_agent": "Mozilla/5.0"}),
        (E.OPENED, 3, {"user_agent": "Barracuda", "is_machine": True}),
        (E.CLICKED, 4, {"url": "https://example.com/a"}),
        (E.BOUNCED, 5, HARD),
        (E.SENT, 6, {}),
    ],
    "dead": [(E.BOUNCED, 1, HARD), (E.OPENED, 2, {})],  # the open proves the bounce wrong
    "dead_for_good": [(E.DEFERRED, 1, {**SOFT, "permanent": False}), (E.BOUNCED, 2, HARD)],
    "full": [(E.BOUNCED, 1, SOFT), (E.COMPLAINED, 2, {})],
    "leaving": [(E.DELIVERED, 1, {}), (E.UNSUBSCRIBED, 2, {})],
    "revived": [(E.OPENED, 3, {})],  # hard-bounced before the batch (see _script_messages)
}


def _script_events(messages: dict[str, Message], tag: str, base) -> list[InboundEvent]:
    events = [
        InboundEvent(
            type=kind,
            source="webhook:test",
            occurred_at=base + timedelta(minutes=minutes),
            dedupe_key=f"{tag}:{name}:{n}",
            message_pk=messages[name].pk,
            **fields,
        )
        for name, script in SCRIPT.items()
        for n, (kind, minutes, fields) in enumerate(script)
    ]
    unmatched = InboundEvent(
        type=E.BOUNCED,
        source="dsn",
        occurred_at=base,
        dedupe_key=f"{tag}:unmatched",
        recipient=f"nobody-{tag}@example.test",
    )
    return [*events, unmatched]


def _world_state(messages: dict[str, Message]) -> dict:
    """Everything the events changed, without ids or addresses, per message of the script."""
    state = {}
    for name, message in messages.items():
        message = Message.objects.select_related("recipient__contact").get(pk=message.pk)
        recipient, contact = message.recipient, message.recipient.contact
        suppressions = Suppression.objects.filter(email=contact.email.lower())
        state[name] = (
            message.status,
            message.open_count,
            message.click_count,
            [getattr(message, f) for f in ("sent_at", "delivered_at", "opened_at", "clicked_at",
                                           "complained_at", "status_changed_at")],
            [getattr(recipient, f) for f in ("status", "delivered_at", "opened_at", "clicked_at",
                                             "complained_at", "bounced_at", "last_action_at")],
            (contact.email_status, contact.invalid_reason, bool(contact.unsubscribed_at)),
            sorted((s.reason, s.lifted_at is None, s.lift_reason) for s in suppressions),
            sorted((r.kind, r.category) for r in Rejection.objects.filter(message=message)),
            sorted(
                (e.type, e.occurred_at, e.from_status, e.to_status, e.is_machine)
                for e in message.events.filter(source="webhook:test")
            ),
        )  # fmt: skip
    return state


def _script_messages(sent_at) -> dict[str, Message]:
    messages = {name: sent_message() for name in SCRIPT}
    Message.objects.filter(pk__in=[m.pk for m in messages.values()]).update(sent_at=sent_at)
    revived = messages["revived"]
    event_record(
        InboundEvent(
            type=E.BOUNCED,
            source="dsn",
            occurred_at=sent_at,
            dedupe_key=f"dsn:{revived.pk}",
            message_pk=revived.pk,
            **HARD,
        )
    )
    assert Contact.objects.get(recipients__messages=revived).email_status == "invalid"
    return messages


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_a_batch_ends_as_recording_its_events_one_by_one_in_any_order_and_replayed(seed):
    import random

    from tracking.services import events_apply

    base = timezone.now() - timedelta(minutes=30)
    one_by_one = _script_messages(base - timedelta(hours=1))
    for e in sorted(_script_events(one_by_one, "one", base), key=lambda e: e.occurred_at):
        event_record(e)

    in_a_batch = _script_messages(base - timedelta(hours=1))
    batch = _script_events(in_a_batch, "batch", base)
    random.Random(seed).shuffle(batch)
    outcomes = events_apply(batch)

    assert _world_state(in_a_batch) == _world_state(one_by_one)
    assert set(outcomes) <= {"changed", "recorded"}
    assert TrackingEvent.objects.get(dedupe_key="batch:unmatched").message_id is None

    # Replayed, whole or shuffled again: every event a duplicate, nothing changes.
    before = _world_state(in_a_batch)
    random.Random(seed + 10).shuffle(batch)
    assert events_apply(batch) == ["duplicate"] * len(batch)
    assert events_apply([*batch[:3], *batch[:3]]) == ["duplicate"] * 6
    assert _world_state(in_a_batch) == before


def test_a_batch_reports_which_events_moved_their_message():
    from tracking.services import events_apply

    message = sent_message()
    delivered, opened, late = (
        event(E.DELIVERED, message, 1),
        event(E.OPENED, message, 2),
        event(E.SENT, message, 3),
    )

    assert events_apply([opened, delivered, late, opened]) == [
        "changed",  # delivered (earlier) moved it first, then the open
        "changed",
        "recorded",  # a late "sent" moves nothing back
        "duplicate",  # the same event twice in one batch
    ]
    message.refresh_from_db()
    assert message.status == S.OPENED
