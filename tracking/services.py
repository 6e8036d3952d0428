"""The delivery state machine: the only writer of `Message.status`.

Every change of a message's status goes through `message_transition` (one message, any source
of events) or `messages_transition` (a batch in one status, for the sender's claims, outcomes and
cancellations). Both apply the transition table below in a conditional UPDATE and write the
event row in the same transaction, so a status never moves without its history, never moves
backwards, and a late or replayed event cannot overwrite a better status.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from django.db import IntegrityError, transaction
from django.db.models import F, QuerySet
from django.db.models.functions import Coalesce
from django.utils import timezone

from campaigns.models import Message, Recipient
from contacts.services import contact_mark_invalid, contact_revalidate
from tracking.classification import Classification, classify_rejection
from tracking.events import InboundEvent
from tracking.models import Rejection, TrackingEvent

S = Message.Status
E = TrackingEvent.Type

_ENGAGEMENT = (S.OPENED, S.CLICKED, S.REPLIED)

# current status -> statuses it may move to (DESIGN.md "Statuses").
TRANSITIONS: dict[str, frozenset[str]] = {
    S.QUEUED: frozenset({S.SENDING, S.CANCELLED}),
    # sending -> queued gives a claim back before any SMTP command was sent for it (the run
    # was paused mid-batch, our relay refused our sender): nothing left us, so it is not a
    # step backwards in delivery, and it is how "pausing keeps everything" holds.
    S.SENDING: frozenset(
        {S.QUEUED, S.SENT, S.DELIVERED, S.SOFT_BOUNCED, S.BOUNCED, S.FAILED, S.CANCELLED}
    ),
    S.SOFT_BOUNCED: frozenset(
        {S.SENDING, S.SENT, S.DELIVERED, S.BOUNCED, S.FAILED, S.CANCELLED, *_ENGAGEMENT}
    ),
    S.SENT: frozenset({S.SOFT_BOUNCED, S.DELIVERED, S.BOUNCED, S.FAILED, *_ENGAGEMENT}),
    # A bounce or failure can be wrong (a late DSN matched by address, a relay that gave up
    # while the mail went through); engagement through a signed token proves delivery.
    S.BOUNCED: frozenset(_ENGAGEMENT),
    S.FAILED: frozenset(_ENGAGEMENT),
    S.DELIVERED: frozenset(_ENGAGEMENT),
    S.OPENED: frozenset({S.CLICKED, S.REPLIED}),
    S.CLICKED: frozenset({S.REPLIED}),
    S.REPLIED: frozenset(),
    S.CANCELLED: frozenset(),
}


def can_transition(current: str, new: str) -> bool:
    return new in TRANSITIONS.get(current, frozenset())


# Event type -> the message's first-seen time it sets (once) and the counter it increments.
_FIRST_SEEN: dict[str, str] = {
    E.SENT: "sent_at",
    E.DELIVERED: "delivered_at",
    E.OPENED: "opened_at",
    E.CLICKED: "clicked_at",
    E.REPLIED: "replied_at",
    E.UNSUBSCRIBED: "unsubscribed_at",
    E.COMPLAINED: "complained_at",
}
_COUNTERS: dict[str, str] = {E.OPENED: "open_count", E.CLICKED: "click_count"}
# Engagement proves delivery, so it also fills delivered_at when no delivery event came.
_PROVES_DELIVERY = {E.OPENED, E.CLICKED, E.REPLIED}
# Event type -> the recipient's first-seen time, kept for fast report counts.
_RECIPIENT_FIRST_SEEN: dict[str, str] = {
    E.DELIVERED: "delivered_at",
    E.OPENED: "opened_at",
    E.CLICKED: "clicked_at",
    E.REPLIED: "replied_at",
    E.UNSUBSCRIBED: "unsubscribed_at",
    E.COMPLAINED: "complained_at",
    E.BOUNCED: "bounced_at",
}


@dataclass(frozen=True)
class TransitionResult:
    event: TrackingEvent | None
    changed: bool  # the status moved
    duplicate: bool = False  # the dedupe key was seen before: nothing was recorded again

    @property
    def from_status(self) -> str:
        return self.event.from_status if self.event else ""


def _facts(event_type: str, occurred_at: datetime) -> dict[str, Any]:
    """Field updates an event makes whether or not the status moves."""
    facts: dict[str, Any] = {}
    if field := _FIRST_SEEN.get(event_type):
        facts[field] = Coalesce(F(field), occurred_at)
    if event_type in _PROVES_DELIVERY:
        facts["delivered_at"] = Coalesce(F("delivered_at"), occurred_at)
    if counter := _COUNTERS.get(event_type):
        facts[counter] = F(counter) + 1
    return facts


def _recipient_facts(
    recipient_ids: Iterable[int] | QuerySet, event_type: str, when: datetime
) -> None:
    fields = [_RECIPIENT_FIRST_SEEN.get(event_type)]
    if event_type in _PROVES_DELIVERY:
        fields.append("delivered_at")
    updates: dict[str, Any] = {f: Coalesce(F(f), when) for f in fields if f}
    if updates:
        Recipient.objects.filter(pk__in=recipient_ids).update(last_action_at=when, **updates)


def message_transition(
    *,
    message_id: int | None,
    event_type: str,
    source: str,
    status: str | None = None,
    occurred_at: datetime | None = None,
    dedupe_key: str | None = None,
    fields: Mapping[str, Any] | None = None,
    expected_status: str | None = None,
    **event_fields: Any,
) -> TransitionResult:
    """Record one event and, when the table allows it, move the message to `status`.

    `fields` are extra Message columns written only when the status moves (the SMTP reply of
    a send attempt, the next attempt time). The event is stored even when the status does not
    move, or when no message matched (`message_id` None); an event whose `dedupe_key` was seen
    before records nothing and reports `duplicate`. A caller that knows the current status
    (the sender, which claimed the message) passes `expected_status` and saves a read.
    """
    occurred_at = occurred_at or timezone.now()
    if dedupe_key and TrackingEvent.objects.filter(dedupe_key=dedupe_key).exists():
        return TransitionResult(event=None, changed=False, duplicate=True)
    try:
        # A savepoint only when a duplicate can race us (a dedupe key from outside); our own
        # events have fresh keys and cost no savepoint inside the caller's transaction.
        with transaction.atomic(savepoint=bool(dedupe_key)):
            return _apply(
                message_id=message_id,
                event_type=event_type,
                source=source,
                status=status,
                occurred_at=occurred_at,
                dedupe_key=dedupe_key,
                fields=fields or {},
                event_fields=event_fields,
                expected_status=expected_status,
            )
    except IntegrityError:
        # Two deliveries of the same event raced; the other one recorded it.
        if dedupe_key and TrackingEvent.objects.filter(dedupe_key=dedupe_key).exists():
            return TransitionResult(event=None, changed=False, duplicate=True)
        raise


def _apply(
    *,
    message_id: int | None,
    event_type: str,
    source: str,
    status: str | None,
    occurred_at: datetime,
    dedupe_key: str | None,
    fields: Mapping[str, Any],
    event_fields: dict[str, Any],
    expected_status: str | None = None,
) -> TransitionResult:
    current = ""
    changed = False
    facts = _facts(event_type, occurred_at)
    if (
        message_id is not None
        and expected_status
        and status
        and can_transition(expected_status, status)
        and Message.objects.filter(pk=message_id, status=expected_status).update(
            status=status, status_changed_at=occurred_at, **facts, **fields
        )
        == 1
    ):
        current, changed = expected_status, True
        if event_type in _RECIPIENT_FIRST_SEEN or event_type in _PROVES_DELIVERY:
            recipient_ids = Message.objects.filter(pk=message_id).values("recipient_id")
            _recipient_facts(recipient_ids, event_type, occurred_at)
    elif message_id is not None:
        # Optimistic: read the status, then update only if it is still that status. A
        # concurrent writer makes the UPDATE match nothing, and we read again.
        for _attempt in range(5):
            row = Message.objects.filter(pk=message_id).values("status", "recipient_id").first()
            if row is None:
                message_id = None
                break
            current = row["status"]
            if not status or not can_transition(current, status):
                if facts:
                    Message.objects.filter(pk=message_id).update(**facts)
                break
            updated = Message.objects.filter(pk=message_id, status=current).update(
                status=status, status_changed_at=occurred_at, **facts, **fields
            )
            if updated == 1:
                changed = True
                break
        else:  # pragma: no cover - needs five concurrent writers on one message
            raise RuntimeError(f"message {message_id} kept changing under us")
        if message_id is not None and not event_fields.get("is_machine"):
            _recipient_facts([row["recipient_id"]], event_type, occurred_at)
    event = TrackingEvent.objects.create(
        message_id=message_id,
        type=event_type,
        source=source,
        occurred_at=occurred_at,
        dedupe_key=dedupe_key or _fresh_key(),
        from_status=current,
        to_status=status if changed else "",
        **event_fields,
    )
    return TransitionResult(event=event, changed=changed)


def messages_transition(
    *,
    message_ids: Iterable[int],
    from_status: str,
    status: str,
    event_type: str,
    source: str,
    occurred_at: datetime | None = None,
    fields: Mapping[str, Any] | None = None,
    detail: str = "",
) -> list[int]:
    """Move a batch of messages that are all in `from_status` to `status`, set-wise.

    Returns the ids that moved (a message another writer moved first is left out) and writes
    one event row for each. Used for claims, batch outcomes and cancellations, where a loop of
    single transitions would cost a round trip per email.
    """
    if not can_transition(from_status, status):
        raise ValueError(f"{from_status} -> {status} is not a transition of a message")
    ids = list(message_ids)
    if not ids:
        return []
    occurred_at = occurred_at or timezone.now()
    facts = _facts(event_type, occurred_at)
    with transaction.atomic():
        # Lock the rows we are about to move so the set we report is exactly the set moved.
        candidates = Message.objects.filter(pk__in=ids, status=from_status)
        moved = list(candidates.select_for_update().values_list("pk", "recipient_id"))
        if not moved:
            return []
        moved_ids = [pk for pk, _ in moved]
        Message.objects.filter(pk__in=moved_ids).update(
            status=status, status_changed_at=occurred_at, **facts, **(fields or {})
        )
        _recipient_facts({rid for _, rid in moved}, event_type, occurred_at)
        _events_insert(
            [(pk, occurred_at, detail) for pk in moved_ids],
            type=event_type,
            source=source,
            from_status=from_status,
            to_status=status,
        )
    return moved_ids


@dataclass(frozen=True)
class Accepted:
    """One message a server took, for messages_record_accepted: when, the Message columns its
    reply sets (`fields`, as in message_transition), the Recipient columns the sender sets with
    it (`recipient_fields`), and the reply text kept on its event."""

    message_id: int
    recipient_id: int
    occurred_at: datetime
    fields: Mapping[str, Any]
    recipient_fields: Mapping[str, Any]
    detail: str = ""


def messages_record_accepted(
    *,
    accepted: list[Accepted],
    from_status: str,
    status: str,
    event_type: str,
    source: str,
) -> list[int]:
    """Record a batch of messages that a server accepted, with the effect of one
    message_transition (expected status `from_status`) and one recipient update per message,
    but set-wise: one UPDATE of the messages from a VALUES list, guarded by their status (so a
    status never moves backwards), one multi-row INSERT of their events and one UPDATE of their
    recipients. A message another writer moved first goes through message_transition, as it
    would have alone. Call it inside the transaction that should hold the whole batch. Returns
    the ids that moved."""
    if not can_transition(from_status, status):
        raise ValueError(f"{from_status} -> {status} is not a transition of a message")
    if not accepted:
        return []
    connection = transaction.get_connection()
    quote = connection.ops.quote_name
    table = quote(Message._meta.db_table)
    moved: set[int] = set()
    with transaction.atomic(savepoint=False):
        # Rows are grouped by the columns they set (an ESP reply may carry its own id).
        groups: dict[tuple[str, ...], list[Accepted]] = {}
        for item in accepted:
            groups.setdefault(tuple(sorted(item.fields)), []).append(item)
        for names, items in groups.items():
            columns = [
                ("id", Message._meta.pk),
                ("occurred_at", Message._meta.get_field("status_changed_at")),
                *((name, Message._meta.get_field(name)) for name in names),
            ]
            values, params = _values_list(
                connection,
                columns,
                ([i.message_id, i.occurred_at, *(i.fields[n] for n in names)] for i in items),
            )
            sets = ["status = %s", "status_changed_at = v.occurred_at"]
            sets += [
                sql
                for field, sql in _fact_columns(event_type, table, "v.occurred_at").items()
                if field not in names
            ]
            sets += [f"{quote(field.column)} = v.{name}" for name, field in columns[2:]]
            with connection.cursor() as cursor:
                cursor.execute(
                    f"WITH v ({', '.join(name for name, _ in columns)}) AS ({values}) "
                    f"UPDATE {table} SET {', '.join(sets)} FROM v "
                    f"WHERE {table}.id = v.id AND {table}.status = %s RETURNING {table}.id",
                    [*params, status, from_status],
                )
                moved.update(pk for (pk,) in cursor.fetchall())
        _events_insert(
            [(i.message_id, i.occurred_at, i.detail) for i in accepted if i.message_id in moved],
            type=event_type,
            source=source,
            from_status=from_status,
            to_status=status,
        )
        for item in accepted:
            if item.message_id not in moved:
                message_transition(
                    message_id=item.message_id,
                    event_type=event_type,
                    source=source,
                    status=status,
                    occurred_at=item.occurred_at,
                    fields=item.fields,
                    detail=item.detail,
                )
        _recipients_update(connection, accepted, event_type)
    return [item.message_id for item in accepted if item.message_id in moved]


def _fact_columns(event_type: str, table: str, when: str) -> dict[str, str]:
    """_facts() as SQL assignments for an UPDATE of `table`, the time being the SQL `when`."""
    fields = [_FIRST_SEEN.get(event_type)]
    if event_type in _PROVES_DELIVERY:
        fields.append("delivered_at")
    facts = {f: f"{f} = COALESCE({table}.{f}, {when})" for f in fields if f}
    if counter := _COUNTERS.get(event_type):
        facts[counter] = f"{counter} = {table}.{counter} + 1"
    return facts


def _recipients_update(connection, accepted: list[Accepted], event_type: str) -> None:
    """Each accepted message's recipient_fields and the recipient's first-seen facts of the
    event (as _recipient_facts), in one UPDATE per set of columns. A recipient named twice
    gets the later values, as two updates in a row would leave it."""
    table = connection.ops.quote_name(Recipient._meta.db_table)
    first_seen = [_RECIPIENT_FIRST_SEEN.get(event_type)]
    if event_type in _PROVES_DELIVERY:
        first_seen.append("delivered_at")
    facts = [f"{f} = COALESCE({table}.{f}, v.occurred_at)" for f in first_seen if f]
    latest = {item.recipient_id: item for item in accepted}
    groups: dict[tuple[str, ...], list[Accepted]] = {}
    for item in latest.values():
        groups.setdefault(tuple(sorted(item.recipient_fields)), []).append(item)
    for names, items in groups.items():
        if not names and not facts:
            continue
        sets = list(facts)
        if facts and "last_action_at" not in names:
            sets.append("last_action_at = v.occurred_at")
        columns = [
            ("id", Recipient._meta.pk),
            ("occurred_at", Recipient._meta.get_field("last_action_at")),
            *((name, Recipient._meta.get_field(name)) for name in names),
        ]
        values, params = _values_list(
            connection,
            columns,
            (
                [i.recipient_id, i.occurred_at, *(i.recipient_fields[n] for n in names)]
                for i in items
            ),
        )
        sets += [f"{field.column} = v.{name}" for name, field in columns[2:]]
        with connection.cursor() as cursor:
            cursor.execute(
                f"WITH v ({', '.join(name for name, _ in columns)}) AS ({values}) "
                f"UPDATE {table} SET {', '.join(sets)} FROM v WHERE {table}.id = v.id",
                params,
            )


def _events_insert(
    rows: list[tuple[int, datetime, str]],
    *,
    type: str,
    source: str,
    from_status: str,
    to_status: str,
) -> None:
    """Our own events of one kind for many messages, each (message id, time, detail), in one
    INSERT: the rows bulk_create would write (every other column at its default, a fresh
    dedupe key each), without a model instance and a dozen parameters per row."""
    if not rows:
        return
    connection = transaction.get_connection()
    meta = TrackingEvent._meta
    per_row = ["message", "occurred_at", "dedupe_key", "detail"]
    constants = {
        "type": type,
        "source": source,
        "from_status": from_status,
        "to_status": to_status,
        "received_at": timezone.now(),
    }
    values, params = _values_list(
        connection,
        [(name, meta.get_field(name)) for name in per_row],
        ([pk, when, _fresh_key(), detail] for pk, when, detail in rows),
    )
    cast = connection.vendor == "postgresql"
    columns, select = [], []
    for field in meta.concrete_fields:
        if field.primary_key:
            continue
        columns.append(connection.ops.quote_name(field.column))
        if field.name in per_row:
            select.append(f"v.{field.name}")
            continue
        value = constants[field.name] if field.name in constants else field.get_default()
        params.append(_prepare(field, value, connection))
        select.append(f"CAST(%s AS {field.cast_db_type(connection)})" if cast else "%s")
    with connection.cursor() as cursor:
        cursor.execute(
            f"WITH v ({', '.join(per_row)}) AS ({values}) "
            f"INSERT INTO {connection.ops.quote_name(meta.db_table)} ({', '.join(columns)}) "
            f"SELECT {', '.join(select)} FROM v",
            params,
        )


def _values_list(connection, columns, rows) -> tuple[str, list[Any]]:
    """A query of the rows, for a WITH clause, and its parameters, each value prepared for
    its field. PostgreSQL gets one array per column, cast to the column's type, unnested: one
    parameter per column keeps the statement's text the same whatever the batch size, so
    psycopg parses it once (it parses a statement of more than 50 parameters at every
    execution). SQLite gets VALUES, the values as they are (it has no column types to meet)."""
    fields = [field for _, field in columns]
    if connection.vendor == "postgresql":
        arrays: list[list[Any]] = [[] for _ in fields]
        for row in rows:
            for array, field, value in zip(arrays, fields, row, strict=True):
                array.append(_prepare(field, value, connection))
        casts = ", ".join(f"CAST(%s AS {f.cast_db_type(connection)}[])" for f in fields)
        return f"SELECT * FROM unnest({casts})", arrays
    slots = "(" + ", ".join("%s" for _ in fields) + ")"
    sql: list[str] = []
    params: list[Any] = []
    for row in rows:
        sql.append(slots)
        params += [_prepare(f, v, connection) for f, v in zip(fields, row, strict=True)]
    return "VALUES " + ", ".join(sql), params


def _prepare(field, value: Any, connection) -> Any:
    """A value as the ORM would save it into `field`, with a shortcut for the plain types a
    batch writes (a datetime is adapted as the ORM adapts it; None, int and str go as they
    are)."""
    if value is None or type(value) in (int, str, bool):
        return value
    if isinstance(value, datetime) and value.tzinfo is not None:
        return connection.ops.adapt_datetimefield_value(value)
    return field.get_db_prep_save(value, connection)


def _fresh_key() -> str:
    """A dedupe key for events that cannot arrive twice (our own actions)."""
    return f"local:{uuid.uuid4().hex}"


def message_reject(
    *,
    message_id: int,
    classification: Classification,
    status: str,
    source: str,
    smtp_code: int | None = None,
    smtp_status: str = "",
    diagnostic: str = "",
    occurred_at: datetime | None = None,
    dedupe_key: str | None = None,
    fields: Mapping[str, Any] | None = None,
    raw: str = "",
) -> TransitionResult:
    """A failure reply for a message: its Rejection row, the status move and, when the
    rejection is hard, the contact's address marked invalid and suppressed."""
    event_type = E.BOUNCED if status == S.BOUNCED else E.DEFERRED
    if status == S.FAILED:
        event_type = E.FAILED
    with transaction.atomic():
        result = message_transition(
            message_id=message_id,
            event_type=event_type,
            source=source,
            status=status,
            occurred_at=occurred_at,
            dedupe_key=dedupe_key,
            fields=fields,
            detail=diagnostic,
            raw=raw,
        )
        if result.duplicate:
            return result
        message = (
            Message.objects.filter(pk=message_id)
            .values("recipient__contact_id", "recipient__email")
            .first()
        )
        Rejection.objects.create(
            message_id=message_id,
            event=result.event,
            email=message["recipient__email"] if message else "",
            kind=classification.kind,
            category=classification.category,
            smtp_code=smtp_code,
            smtp_status=smtp_status,
            diagnostic=diagnostic,
            source=source,
        )
        # A bounce that arrives after delivery or engagement is history only: the address
        # demonstrably worked, so it is not marked invalid.
        if classification.is_hard and message and result.changed:
            # The lead has failed for this run: no follow-up goes to a dead address.
            Recipient.objects.filter(messages__pk=message_id).update(
                status=Recipient.Status.FAILED, next_step_at=None
            )
            label = Rejection.Category(classification.category).label
            contact_mark_invalid(
                contact_id=message["recipient__contact_id"],
                reason=f"{label}: {diagnostic}".strip(": "),
                source=source,
            )
    return result


# --- events from outside -------------------------------------------------------------------

# Event type -> the status it moves a message to (None: recorded beside the status).
_EVENT_STATUS: dict[str, str | None] = {
    E.DELIVERED: S.DELIVERED,
    E.OPENED: S.OPENED,
    E.CLICKED: S.CLICKED,
    E.REPLIED: S.REPLIED,
    E.DEFERRED: S.SOFT_BOUNCED,
    E.UNSUBSCRIBED: None,
    E.COMPLAINED: None,
    E.AUTOREPLY: None,
    E.SENT: S.SENT,
    E.QUEUED: None,
    E.UNKNOWN: None,
}


def event_record(event: InboundEvent) -> TransitionResult:
    """Match an outside event to its message, record it once, and apply it: the status
    through the state machine, and the consequences of DESIGN.md (a hard rejection marks the
    address invalid and suppresses it; a complaint or an unsubscribe suppresses it and leaves
    the address valid). An event that matches nothing is kept, unmatched."""
    from tracking.selectors import is_too_soon_after_sending, message_match

    if TrackingEvent.objects.filter(dedupe_key=event.dedupe_key).exists():
        return TransitionResult(event=None, changed=False, duplicate=True)
    message_id = message_match(event)
    common = {
        "source": event.source,
        "occurred_at": event.occurred_at,
        "dedupe_key": event.dedupe_key,
        "raw": event.raw,
    }
    if event.type in (E.BOUNCED, E.FAILED, E.DEFERRED) and message_id is not None:
        classification = classify_rejection(
            smtp_code=event.smtp_code,
            smtp_status=event.smtp_status,
            text=event.diagnostic,
            esp_fields=event.esp_fields,
            reject_reason=event.reject_reason,
        )
        if event.type == E.DEFERRED or not event.permanent:
            status = S.SOFT_BOUNCED
        elif classification.is_hard:
            status = S.BOUNCED
        else:
            status = S.FAILED
        return message_reject(
            message_id=message_id,
            classification=classification,
            status=status,
            smtp_code=event.smtp_code,
            smtp_status=event.smtp_status,
            diagnostic=event.diagnostic,
            # A delay reported from outside (an ESP, a relay's DSN) means they are still
            # retrying: the message must not be due for our dispatcher, or it goes out twice.
            fields={"next_attempt_at": None} if status == S.SOFT_BOUNCED else None,
            **common,
        )
    if (
        event.type in (E.OPENED, E.CLICKED)
        and not event.is_machine
        and message_id is not None
        and is_too_soon_after_sending(message_pk=message_id, when=event.occurred_at)
    ):
        event.is_machine = True
    status = None if event.is_machine else _EVENT_STATUS.get(event.type)
    with transaction.atomic():
        result = message_transition(
            message_id=message_id,
            event_type=event.type,
            status=status,
            email=event.recipient[:254],
            url=event.url[:2000],
            user_agent=event.user_agent[:500],
            is_machine=event.is_machine,
            detail=event.detail or event.diagnostic,
            **common,
        )
        if result.duplicate or message_id is None:
            return result
        if event.type in (E.UNSUBSCRIBED, E.COMPLAINED):
            _contact_opt_out(message_id, event)
        if result.changed and result.from_status == S.BOUNCED:
            # A person engaged with a message we thought bounced: the bounce was wrong (a late
            # or misattributed DSN), so its consequences are undone, whatever the order in
            # which the two arrived.
            contact_revalidate(
                contact_id=Message.objects.values_list("recipient__contact_id", flat=True).get(
                    pk=message_id
                ),
                reason=f"{event.type} after the bounce proves the address works",
            )
    return result


def _contact_opt_out(message_id: int, event: InboundEvent) -> None:
    """An unsubscribe or a complaint: the contact stops getting mail at once (a suppression),
    but the address is not marked invalid. An unsubscribe from one topic opts out of it only."""
    from contacts.models import Contact, Suppression
    from contacts.services import suppression_add

    row = (
        Message.objects.filter(pk=message_id)
        .values("recipient__contact_id", "recipient__email", "run__campaign__topic_id")
        .first()
    )
    contact_id, email, topic_id = (
        row["recipient__contact_id"],
        row["recipient__email"],
        row["run__campaign__topic_id"],
    )
    if event.type == E.UNSUBSCRIBED and not event.unsubscribe_all and topic_id:
        Contact.opted_out_topics.through.objects.get_or_create(
            contact_id=contact_id, topic_id=topic_id
        )
        return
    if event.type == E.UNSUBSCRIBED:
        Contact.objects.filter(pk=contact_id, unsubscribed_at__isnull=True).update(
            unsubscribed_at=event.occurred_at
        )
    reason = (
        Suppression.Reason.UNSUBSCRIBE
        if event.type == E.UNSUBSCRIBED
        else Suppression.Reason.COMPLAINT
    )
    if email.strip():
        suppression_add(email=email, reason=reason, source=event.source)


def events_record_many(events: list[InboundEvent]) -> int:
    """Record a batch of queued events (the Redis drain) with the effect of recording them one
    by one in order, but with a few statements per message instead of several per event:
    opens and clicks of known messages are grouped per message; anything else goes through
    event_record. Returns the number of events recorded (duplicates left out)."""
    from tracking.selectors import MACHINE_CLICK_WINDOW

    engagement = [e for e in events if e.type in (E.OPENED, E.CLICKED) and e.message_pk]
    others = [e for e in events if e not in engagement]
    recorded = sum(0 if event_record(e).duplicate else 1 for e in others)
    if not engagement:
        return recorded
    with transaction.atomic():
        seen = set(
            TrackingEvent.objects.filter(
                dedupe_key__in=[e.dedupe_key for e in engagement]
            ).values_list("dedupe_key", flat=True)
        )
        fresh: dict[str, InboundEvent] = {}
        for e in engagement:
            if e.dedupe_key not in seen:
                fresh.setdefault(e.dedupe_key, e)
        rows = {
            r["pk"]: r
            for r in Message.objects.filter(pk__in={e.message_pk for e in fresh.values()}).values(
                "pk", "status", "recipient_id", "sent_at"
            )
        }
        by_message: dict[int, list[InboundEvent]] = {}
        for e in sorted(fresh.values(), key=lambda e: e.occurred_at):
            if e.message_pk not in rows:
                recorded += 0 if event_record(e).duplicate else 1  # kept, unmatched
                continue
            sent_at = rows[e.message_pk]["sent_at"]
            if not e.is_machine and sent_at and e.occurred_at - sent_at < MACHINE_CLICK_WINDOW:
                e.is_machine = True
            by_message.setdefault(e.message_pk, []).append(e)
        new_events: list[TrackingEvent] = []
        for pk, group in by_message.items():
            new_events += _engagement_apply(rows[pk], group)
        TrackingEvent.objects.bulk_create(new_events)
    return recorded + len(new_events)


def _engagement_apply(row: dict, group: list[InboundEvent]) -> list[TrackingEvent]:
    """One message's opens and clicks of a batch: counters, first-seen times, the status moved
    at most once (to the best engagement the table allows), and their event rows."""
    current = row["status"]
    human = [e for e in group if not e.is_machine]
    first = {
        t: min((e.occurred_at for e in group if e.type == t), default=None)
        for t in (E.OPENED, E.CLICKED)
    }
    updates: dict[str, Any] = {
        "open_count": F("open_count") + sum(e.type == E.OPENED for e in group),
        "click_count": F("click_count") + sum(e.type == E.CLICKED for e in group),
        "delivered_at": Coalesce(F("delivered_at"), min(e.occurred_at for e in group)),
    }
    for event_type, field in ((E.OPENED, "opened_at"), (E.CLICKED, "clicked_at")):
        if first[event_type]:
            updates[field] = Coalesce(F(field), first[event_type])
    # Walk the events in time order as one-by-one recording would: each records the status it
    # found, and those that move it, the status they moved it to.
    target, last_move = current, None
    steps: dict[int, tuple[str, str]] = {}
    for e in group:
        wanted = None if e.is_machine else _EVENT_STATUS[e.type]
        moves = wanted is not None and can_transition(target, wanted)
        steps[id(e)] = (target, wanted if moves else "")
        if moves:
            target, last_move = wanted, e
    moved = target != current and (
        Message.objects.filter(pk=row["pk"], status=current).update(
            status=target, status_changed_at=last_move.occurred_at, **updates
        )
        == 1
    )
    if target != current and not moved:
        # Another writer moved the message meanwhile: apply this group one by one instead.
        for e in group:
            message_transition(
                message_id=row["pk"],
                event_type=e.type,
                source=e.source,
                status=None if e.is_machine else _EVENT_STATUS[e.type],
                occurred_at=e.occurred_at,
                dedupe_key=e.dedupe_key,
                url=e.url[:2000],
                user_agent=e.user_agent[:500],
                is_machine=e.is_machine,
            )
        return []
    if not moved:
        Message.objects.filter(pk=row["pk"]).update(**updates)
    if human:
        recipient_updates = {"delivered_at": Coalesce(F("delivered_at"), human[0].occurred_at)}
        for event_type, field in ((E.OPENED, "opened_at"), (E.CLICKED, "clicked_at")):
            times = [e.occurred_at for e in human if e.type == event_type]
            if times:
                recipient_updates[field] = Coalesce(F(field), min(times))
        Recipient.objects.filter(pk=row["recipient_id"]).update(
            last_action_at=human[-1].occurred_at, **recipient_updates
        )
    return [
        TrackingEvent(
            message_id=row["pk"],
            type=e.type,
            source=e.source,
            occurred_at=e.occurred_at,
            dedupe_key=e.dedupe_key,
            from_status=steps[id(e)][0],
            to_status=steps[id(e)][1],
            url=e.url[:2000],
            user_agent=e.user_agent[:500],
            is_machine=e.is_machine,
        )
        for e in group
    ]
