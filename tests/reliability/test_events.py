"""Events: RELIABILITY_EVENTS (1,000) tracking events (opens, clicks, deliveries, hard and soft
bounces, complaints, unsubscribes, replies) over 200 messages, applied once in the order they
happened, then from the same start replayed three times, each pass in a new shuffled order
(the first and third one by one through event_record, the second in batches through the Redis
drain's events_record_many): after every pass the final state (messages, recipients, contacts,
active suppressions, rejections and event counts) equals the state after applying them once."""

from __future__ import annotations

import random
import time
from collections import Counter
from datetime import timedelta

import pytest
from django.db import transaction
from django.utils import timezone

from campaigns.models import Message, Recipient
from contacts.models import Contact, Suppression
from leadcenter.factories import CampaignRunFactory, MessageFactory
from tests.reliability.sizes import EVENTS
from tracking.events import InboundEvent, dedupe_key
from tracking.models import Rejection, TrackingEvent
from tracking.services import event_record, events_record_many

S = Message.Status
E = TrackingEvent.Type
MESSAGES = 200
HUMAN = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 Chrome/120 Safari/537.36"
HARD = {"smtp_code": 550, "smtp_status": "5.1.1", "diagnostic": "550 5.1.1 user unknown"}
SOFT = {"smtp_code": 452, "smtp_status": "4.2.2", "diagnostic": "452 4.2.2 mailbox full"}
# (type, source, share in per mille, extra fields)
MIX = [
    (E.OPENED, "pixel", 300, {}),
    (E.CLICKED, "click", 200, {"url": "https://example.test/offer"}),
    (E.DELIVERED, "webhook:test", 150, {}),
    (E.BOUNCED, "dsn", 60, HARD),
    (E.DEFERRED, "dsn", 60, SOFT),
    (E.COMPLAINED, "arf", 50, {}),
    (E.UNSUBSCRIBED, "unsubscribe", 80, {}),
    (E.REPLIED, "reply", 100, {}),
]


class _Rollback(Exception):
    pass


def _messages() -> list[Message]:
    run = CampaignRunFactory()
    sent_at = timezone.now() - timedelta(hours=3)
    messages = [
        MessageFactory(recipient__run=run, recipient__contact__email=f"m{i}@example.test")
        for i in range(MESSAGES)
    ]
    Message.objects.filter(pk__in=[m.pk for m in messages]).update(status=S.SENT, sent_at=sent_at)
    # Where the send leaves the lead of a one-step campaign.
    Recipient.objects.filter(run=run).update(
        status=Recipient.Status.SENT, steps_sent=1, last_action_at=sent_at
    )
    return messages


def _events(messages: list[Message], rng: random.Random) -> list[InboundEvent]:
    """EVENTS events in the order they happened, over the last two hours."""
    start = timezone.now() - timedelta(hours=2)
    kinds = [(t, src, fields) for t, src, share, fields in MIX for _ in range(share)]
    events = []
    for n in range(EVENTS):
        kind, source, fields = rng.choice(kinds)
        message = rng.choice(messages)
        events.append(
            InboundEvent(
                type=kind,
                source=source,
                occurred_at=start + timedelta(seconds=n * 7200 / EVENTS),
                dedupe_key=dedupe_key("reliability", n),
                message_pk=message.pk,
                recipient=message.recipient.email,
                user_agent=HUMAN,
                unsubscribe_all=True,
                **fields,
            )
        )
    return events


MESSAGE_TIMES = [
    "sent_at", "delivered_at", "opened_at", "clicked_at", "replied_at", "unsubscribed_at",
    "complained_at",
]  # fmt: skip
RECIPIENT_TIMES = [
    "delivered_at", "opened_at", "clicked_at", "replied_at", "unsubscribed_at", "complained_at",
    "bounced_at", "next_step_at",
]  # fmt: skip


def _state() -> dict:
    """Everything the events can change, without the times of our own clock (now()).

    The parts named `*_times` are compared apart (see the test)."""
    messages = Message.objects.values_list(
        "pk", "status", "open_count", "click_count", *MESSAGE_TIMES
    )
    recipients = Recipient.objects.values_list("pk", "status", *RECIPIENT_TIMES)
    contacts = Contact.objects.values_list(
        "pk", "email_status", "invalid_reason", "unsubscribed_at", "do_not_email"
    )
    return {
        # Statuses, counters and which first-seen times are set.
        "messages": {r[0]: (*r[1:4], *(t is not None for t in r[4:])) for r in messages},
        "recipients": {r[0]: tuple(t is not None for t in r[2:]) for r in recipients},
        "contacts": {r[0]: (r[1], bool(r[2]), r[3] is not None, r[4]) for r in contacts},
        "suppressions": sorted(
            Suppression.objects.filter(lifted_at__isnull=True).values_list("email", "reason")
        ),
        "rejections": Counter(
            Rejection.objects.values_list("message_id", "kind", "category", "smtp_code")
        ),
        "events": Counter(TrackingEvent.objects.values_list("message_id", "type")),
        # The values of the first-seen times: the first one recorded stays (a delivery
        # reported after an open keeps the open's time: tracking/tests/test_webhooks.py), so
        # they follow the order of arrival.
        "message_times": {r[0]: r[4:] for r in messages},
        "recipient_times": {r[0]: r[2:] for r in recipients},
        "contact_unsubscribed_at": {r[0]: r[3] for r in contacts},
        # Compared as the rest: a hard bounce recorded before the engagement that disproves it
        # gives the recipient back (test_engagement_after_a_hard_bounce_gives_the_recipient_back).
        "recipient_status": {r[0]: r[1] for r in recipients},
    }


ARRIVAL_ORDER = ("message_times", "recipient_times", "contact_unsubscribed_at")


def _differences(a: dict, b: dict) -> dict:
    """Per part of the state, how many rows differ and the first few of them."""
    found = {}
    for part in a:
        if isinstance(a[part], dict | Counter):
            keys = set(a[part]) | set(b[part])
            diff = sorted((k for k in keys if a[part].get(k) != b[part].get(k)), key=str)
            if diff:
                found[part] = {
                    "rows": len(diff),
                    "first": [(k, a[part].get(k), b[part].get(k)) for k in diff[:3]],
                }
        elif a[part] != b[part]:
            found[part] = {"rows": len(set(a[part]) ^ set(b[part]))}
    return found


@pytest.mark.django_db
def test_events_replayed_three_times_in_shuffled_order_give_the_state_of_applying_them_once(
    figures,
):
    rng = random.Random("events")
    messages = _messages()
    events = _events(messages, rng)
    started = time.monotonic()

    try:
        with transaction.atomic():
            recorded_once = sum(not event_record(e).duplicate for e in events)
            once = _state()
            raise _Rollback
    except _Rollback:
        pass

    passes, states = [], []
    for n in range(3):
        order = events[:]
        rng.shuffle(order)
        if n == 1:  # the Redis drain's path: batches, opens and clicks grouped per message
            recorded = sum(
                events_record_many(order[i : i + 100]) for i in range(0, len(order), 100)
            )
        else:
            recorded = sum(not event_record(e).duplicate for e in order)
        state = _state()
        differences = _differences(once, state)
        passes.append(
            {
                "recorded": recorded,
                "differences": {k: v for k, v in differences.items() if k not in ARRIVAL_ORDER},
                "arrival_order_rows": {
                    k: v["rows"] for k, v in differences.items() if k in ARRIVAL_ORDER
                },
                "same_as_first_pass": not states or state == states[0],
            }
        )
        states.append(state)

    statuses = Counter(s[0] for s in once["messages"].values())
    figures(
        "events-replay",
        {
            "events": len(events),
            "messages": MESSAGES,
            "types": dict(Counter(e.type for e in events)),
            "recorded_once": recorded_once,
            "final_statuses": dict(statuses),
            "active_suppressions": len(once["suppressions"]),
            "passes": passes,
            "passes_equal_to_once": sum(not p["differences"] for p in passes),
            "replays_changing_nothing": sum(p["same_as_first_pass"] for p in passes[1:]),
            "duplicates_recorded_on_replay": sum(p["recorded"] for p in passes[1:]),
            "seconds": round(time.monotonic() - started, 2),
        },
    )

    assert recorded_once == len(events)
    assert [p["recorded"] for p in passes] == [len(events), 0, 0]
    assert [p["differences"] for p in passes] == [{}, {}, {}]
    # The replays of the second and third pass changed nothing at all, arrival-order parts
    # included.
    assert all(p["same_as_first_pass"] for p in passes[1:])
    assert len(statuses) >= 5, statuses  # the mix reached many statuses


@pytest.mark.django_db
def test_engagement_after_a_hard_bounce_gives_the_recipient_back():
    [message] = _messages()[:1]
    Recipient.objects.filter(pk=message.recipient_id).update(status=Recipient.Status.SENT)
    at = timezone.now() - timedelta(hours=1)
    bounce = InboundEvent(
        type=E.BOUNCED, source="dsn", occurred_at=at, dedupe_key="b", message_pk=message.pk, **HARD
    )
    opened = InboundEvent(
        type=E.OPENED,
        source="pixel",
        occurred_at=at + timedelta(minutes=1),
        dedupe_key="o",
        message_pk=message.pk,
        user_agent=HUMAN,
    )

    event_record(bounce)
    event_record(opened)

    assert Contact.objects.get(pk=message.recipient.contact_id).email_status == "valid"
    assert Recipient.objects.get(pk=message.recipient_id).status == Recipient.Status.SENT
