"""The delivery state machine: the only writer of `Message.status`.

Every change of a message's status goes through `message_transition` (one message, any source
of events) or `messages_transition` (a batch in one status, for the sender's claims, outcomes and
cancellations). Both apply the transition table below in a conditional UPDATE and write the
event row in the same transaction, so a status never moves without its history, never moves
backwards, and a late or replayed event cannot overwrite a better status.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import date, datetime, time
from decimal import Decimal
from typing import Any

from django.db import IntegrityError, transaction
from django.db.models import F, QuerySet
from django.db.models.functions import Coalesce
from django.utils import timezone

from campaigns.models import Message, Recipient
from contacts.services import contact_mark_invalid, contact_revalidate
from leadcenter.database import RELAXED_COMMIT, in_one_round_trip, prepared_cursor, relax_commit
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


def is_write_conflict(exc: Exception) -> bool:
    """A deadlock or serialization failure with another writer (PostgreSQL chose this
    transaction to abort): nothing is wrong with the work, which can be tried again."""
    return getattr(exc.__cause__, "sqlstate", None) in ("40P01", "40001")


def is_connection_lost(exc: Exception) -> bool:
    """The database connection went (a restart, a failover, a terminated backend: SQLSTATE
    class 08, or 57P01-57P03; or a broken socket, which has no SQLSTATE). Django opens a new
    one for the next statement; what failed can be tried again there."""
    cause = exc.__cause__
    state = getattr(cause, "sqlstate", None)
    if state:
        return state.startswith("08") or state in ("57P01", "57P02", "57P03")
    return cause is not None and type(cause).__module__.startswith("psycopg")


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
    relaxed_commit: bool = False,
) -> list[int]:
    """Record a batch of messages that a server accepted, with the effect of one
    message_transition (expected status `from_status`) and one recipient update per message,
    but set-wise: one UPDATE of the messages from a VALUES list, guarded by their status (so a
    status never moves backwards), one multi-row INSERT of their events and one UPDATE of their
    recipients. A message another writer moved first goes through message_transition, as it
    would have alone. Returns the ids that moved.

    Outside a transaction, on PostgreSQL, the updates are one statement, its own transaction
    (_accepted_at_once); the messages another writer moved first go through
    message_transition after it. Otherwise all of it is one transaction (a savepoint inside
    the caller's). `relaxed_commit`: that transaction's commit does not wait for the disk
    (leadcenter.database.relax_commit)."""
    if not can_transition(from_status, status):
        raise ValueError(f"{from_status} -> {status} is not a transition of a message")
    if not accepted:
        return []
    connection = transaction.get_connection()
    if connection.vendor == "postgresql" and not connection.in_atomic_block:
        moved = _accepted_at_once(
            connection, accepted, from_status, status, event_type, source, relaxed_commit
        )
        _accepted_others(accepted, moved, event_type, source, status)
        return [item.message_id for item in accepted if item.message_id in moved]
    # PostgreSQL: each UPDATE inserts the events of the messages it moved, in one statement
    # (a data-modifying WITH, as the claim does). SQLite: an INSERT after the UPDATEs.
    together = connection.vendor == "postgresql"
    moved: set[int] = set()
    with transaction.atomic():
        if relaxed_commit:
            relax_commit(connection)
        for sql, params in _accepted_statements(
            connection, accepted, from_status, status, event_type, source, together=together
        ):
            with prepared_cursor(connection) as cursor:
                cursor.execute(sql, params)
                moved.update(pk for (pk,) in cursor.fetchall())
        if not together:
            _events_insert(
                [
                    (i.message_id, i.occurred_at, i.detail)
                    for i in accepted
                    if i.message_id in moved
                ],
                type=event_type,
                source=source,
                from_status=from_status,
                to_status=status,
            )
        _accepted_others(accepted, moved, event_type, source, status)
        for sql, params in _recipients_statements(connection, accepted, event_type):
            with prepared_cursor(connection) as cursor:
                cursor.execute(sql, params)
    return [item.message_id for item in accepted if item.message_id in moved]


def _accepted_statements(
    connection,
    accepted: list[Accepted],
    from_status: str,
    status: str,
    event_type: str,
    source: str,
    *,
    together: bool,
) -> list[tuple[str, list[Any]]]:
    """The UPDATEs of messages_record_accepted, one per set of columns the replies set (an ESP
    reply may carry its own id), each returning the ids it moved; `together` (PostgreSQL):
    each inserts the events of what it moved too."""
    return [
        (f"WITH {', '.join(ctes)} {final}", params)
        for ctes, params, final in _accepted_parts(
            connection, accepted, from_status, status, event_type, source, together=together
        )
    ]


def _accepted_parts(
    connection,
    accepted: list[Accepted],
    from_status: str,
    status: str,
    event_type: str,
    source: str,
    *,
    together: bool,
    suffix: str = "",
) -> list[tuple[list[str], list[Any], str]]:
    """_accepted_statements' statements in parts, one (WITH clauses, parameters, the rest of
    the statement) per group, the rest returning the ids moved; the names of the WITH clauses
    end with `suffix` and the group's number. With `together`, the UPDATE is a WITH clause
    (`moved<suffix><n>`) and the rest a SELECT from it; without, the rest is the UPDATE."""
    quote = connection.ops.quote_name
    table = quote(Message._meta.db_table)
    event_row = ["message", "occurred_at", "detail"]
    event_constants = _event_constants(event_type, source, from_status, status)
    groups: dict[tuple[str, ...], list[Accepted]] = {}
    for item in accepted:
        groups.setdefault(tuple(sorted(item.fields)), []).append(item)
    parts = []
    for k, (names, items) in enumerate(groups.items()):
        v, moved = ("v", "moved") if not (suffix or k) else (f"v{suffix}{k}", f"moved{suffix}{k}")
        fields = [(name, Message._meta.get_field(name)) for name in names]
        columns = [
            ("id", Message._meta.pk),
            ("occurred_at", Message._meta.get_field("status_changed_at")),
            *([("event_detail", TrackingEvent._meta.get_field("detail"))] if together else []),
            *fields,
        ]
        values_cte, params = _values_with(
            connection,
            v,
            columns,
            (
                [
                    i.message_id,
                    i.occurred_at,
                    *([i.detail] if together else []),
                    *(i.fields[n] for n in names),
                ]
                for i in items
            ),
        )
        sets = ["status = %s", f"status_changed_at = {v}.occurred_at"]
        sets += [
            sql
            for field, sql in _fact_columns(event_type, table, f"{v}.occurred_at").items()
            if field not in names
        ]
        sets += [f"{quote(field.column)} = {v}.{name}" for name, field in fields]
        where, where_params = _by_ids(connection, f"{table}.id", [i.message_id for i in items])
        update = (
            f"UPDATE {table} SET {', '.join(sets)} FROM {v} "
            f"WHERE {table}.id = {v}.id AND {table}.status = %s{where} "
        )
        params += [status, from_status, *where_params]
        if not together:
            parts.append(([values_cte], params, f"{update}RETURNING {table}.id"))
            continue
        insert, insert_params = _events_insert_from(connection, moved, event_row, event_constants)
        ctes = [
            values_cte,
            f"{moved} AS ({update}RETURNING {table}.id AS message, {v}.occurred_at, "
            f"{v}.event_detail AS detail)",
            f"events{suffix}{k if suffix or k else ''} AS ({insert})",
        ]
        parts.append((ctes, [*params, *insert_params], f"SELECT message FROM {moved}"))
    return parts


def _accepted_at_once(
    connection,
    accepted: list[Accepted],
    from_status: str,
    status: str,
    event_type: str,
    source: str,
    relaxed_commit: bool,
) -> set[int]:
    """PostgreSQL, outside a transaction: messages_record_accepted's updates of the messages
    (with their events) and of their recipients as one statement, its own transaction: one
    round trip, where BEGIN, SET LOCAL, the two updates and COMMIT are five. On a busy
    machine each round trip waits for the database's process to get a core: with eight
    more (SELECT 1) per batch, the send benchmark went 6% slower. Returns the ids moved."""
    parts = _accepted_parts(
        connection, accepted, from_status, status, event_type, source, together=True, suffix="m"
    )
    ctes = [cte for part_ctes, _, _ in parts for cte in part_ctes]
    params = [value for _, part_params, _ in parts for value in part_params]
    for n, (values_cte, part_params, update) in enumerate(
        _recipients_parts(connection, accepted, event_type, suffix="r")
    ):
        ctes += [values_cte, f"recipients{n} AS ({update})"]
        params += part_params
    final = " UNION ALL ".join(select for _, _, select in parts)
    if relaxed_commit:
        # The commit of this statement's own transaction does not wait for the disk (as SET
        # LOCAL would, which is a round trip of its own).
        final = f"SELECT message FROM ({final}) AS moved WHERE {RELAXED_COMMIT} IS NOT NULL"
    with prepared_cursor(connection) as cursor:
        cursor.execute(f"WITH {', '.join(ctes)} {final}", params)
        return {pk for (pk,) in cursor.fetchall()}


def _accepted_others(
    accepted: list[Accepted], moved: set[int], event_type: str, source: str, status: str
) -> None:
    """The accepted messages the batch's UPDATE did not move (another writer moved them
    first): each through message_transition, as it would have gone alone."""
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


def _fact_columns(event_type: str, table: str, when: str) -> dict[str, str]:
    """_facts() as SQL assignments for an UPDATE of `table`, the time being the SQL `when`."""
    fields = [_FIRST_SEEN.get(event_type)]
    if event_type in _PROVES_DELIVERY:
        fields.append("delivered_at")
    facts = {f: f"{f} = COALESCE({table}.{f}, {when})" for f in fields if f}
    if counter := _COUNTERS.get(event_type):
        facts[counter] = f"{counter} = {table}.{counter} + 1"
    return facts


def _recipients_statements(
    connection, accepted: list[Accepted], event_type: str
) -> list[tuple[str, list[Any]]]:
    """Each accepted message's recipient_fields and the recipient's first-seen facts of the
    event (as _recipient_facts), in one UPDATE per set of columns. A recipient named twice
    gets the later values, as two updates in a row would leave it."""
    return [
        (f"WITH {values_cte} {update}", params)
        for values_cte, params, update in _recipients_parts(connection, accepted, event_type)
    ]


def _recipients_parts(
    connection, accepted: list[Accepted], event_type: str, suffix: str = ""
) -> list[tuple[str, list[Any], str]]:
    """_recipients_statements' statements in parts: (the WITH clause of the rows, named `v`,
    or `v<suffix><n>`, the parameters, the UPDATE)."""
    table = connection.ops.quote_name(Recipient._meta.db_table)
    first_seen = [_RECIPIENT_FIRST_SEEN.get(event_type)]
    if event_type in _PROVES_DELIVERY:
        first_seen.append("delivered_at")
    latest = {item.recipient_id: item for item in accepted}
    groups: dict[tuple[str, ...], list[Accepted]] = {}
    for item in sorted(latest.values(), key=lambda i: i.recipient_id):  # lock order: by id
        groups.setdefault(tuple(sorted(item.recipient_fields)), []).append(item)
    parts = []
    for k, (names, items) in enumerate(groups.items()):
        v = f"v{suffix}{k}" if suffix else "v"
        facts = [f"{f} = COALESCE({table}.{f}, {v}.occurred_at)" for f in first_seen if f]
        if not names and not facts:
            continue
        sets = list(facts)
        if facts and "last_action_at" not in names:
            sets.append(f"last_action_at = {v}.occurred_at")
        columns = [
            ("id", Recipient._meta.pk),
            ("occurred_at", Recipient._meta.get_field("last_action_at")),
            *((name, Recipient._meta.get_field(name)) for name in names),
        ]
        values_cte, params = _values_with(
            connection,
            v,
            columns,
            (
                [i.recipient_id, i.occurred_at, *(i.recipient_fields[n] for n in names)]
                for i in items
            ),
        )
        sets += [f"{field.column} = {v}.{name}" for name, field in columns[2:]]
        where, where_params = _by_ids(connection, f"{table}.id", [i.recipient_id for i in items])
        parts.append(
            (
                values_cte,
                [*params, *where_params],
                f"UPDATE {table} SET {', '.join(sets)} FROM {v} WHERE {table}.id = {v}.id{where}",
            )
        )
    return parts


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
    per_row = ["message", "occurred_at", "detail"]
    constants = _event_constants(type, source, from_status, to_status)
    values_cte, params = _values_with(
        connection,
        "v",
        [(name, meta.get_field(name)) for name in per_row],
        ([pk, when, detail] for pk, when, detail in rows),
    )
    insert, insert_params = _events_insert_from(connection, "v", per_row, constants)
    with prepared_cursor(connection) as cursor:
        cursor.execute(f"WITH {values_cte} {insert}", [*params, *insert_params])


def _event_constants(type: str, source: str, from_status: str, to_status: str) -> dict[str, Any]:
    """What every event of a set-wise transition has in common."""
    return {
        "type": type,
        "source": source,
        "from_status": from_status,
        "to_status": to_status,
        "received_at": timezone.now(),
    }


def _events_insert_from(
    connection, source: str, per_row: list[str], constants: Mapping[str, Any]
) -> tuple[str, list[Any]]:
    """INSERT ... SELECT of event rows, one per row of the relation `source`, whose columns
    named in `per_row` (field names) give those fields; a fresh dedupe key each (made by the
    database, unless `source` gives one); every other column is a constant or its default."""
    meta = TrackingEvent._meta
    cast = connection.vendor == "postgresql"
    columns, select, params = [], [], []
    for field in meta.concrete_fields:
        if field.primary_key:
            continue
        columns.append(connection.ops.quote_name(field.column))
        if field.name in per_row:
            select.append(f"{source}.{field.name}")
            continue
        if field.name == "dedupe_key":
            select.append(_fresh_key_sql(connection))
            continue
        value = constants[field.name] if field.name in constants else field.get_default()
        params.append(_prepare(field, value, connection))
        select.append(f"CAST(%s AS {field.cast_db_type(connection)})" if cast else "%s")
    table = connection.ops.quote_name(meta.db_table)
    sql = f"INSERT INTO {table} ({', '.join(columns)}) SELECT {', '.join(select)} FROM {source}"
    return sql, params


def messages_claim(
    *,
    due: QuerySet | None,
    limit: int,
    occurred_at: datetime,
    picking: tuple[str, tuple] | None = None,
    counted: tuple[str, list[Any]] | None = None,
    capped: tuple[str, list[Any]] | None = None,
    before: list[tuple[str, list[Any]]] | None = None,
) -> list[int]:
    """Claim up to `limit` of the `due` messages (in its order) for this worker: `sending`,
    claimed now, one more attempt, one `claimed` event each. Returns the ids claimed.

    PostgreSQL: one statement. The rows are picked FOR UPDATE SKIP LOCKED, so two workers
    never claim the same message and neither waits for the other; the UPDATE and the events'
    INSERT ride on the same statement. `picking`: claim_picking(due, limit), when the caller
    keeps it (`due` may then be None). `counted`: more WITH clauses (and their parameters)
    for the same statement, which may read the claimed rows from `moved` (its column
    `message`): the caller's count of the claim, written with it. `capped`: SQL of the most
    it may claim, read by the statement itself. Elsewhere (SQLite serialises writers): read,
    then messages_transition per status. Call it inside the transaction that commits the
    claim, or, on PostgreSQL, outside one: then `before` (statements, such as a lock) and the
    claim go in one transaction, in one round trip (leadcenter.database.in_one_round_trip)."""
    fields = {"claimed_at": occurred_at, "attempts": F("attempts") + 1}
    connection = transaction.get_connection()
    if connection.vendor != "postgresql":
        picked = list(due.filter(status__in=_CLAIMABLE).values_list("pk", "status")[:limit])
        claimed: list[int] = []
        for from_status in _CLAIMABLE:
            claimed += messages_transition(
                message_ids=[pk for pk, status in picked if status == from_status],
                from_status=from_status,
                status=S.SENDING,
                event_type=E.CLAIMED,
                source=TrackingEvent.Source.SYSTEM,
                occurred_at=occurred_at,
                fields=fields,
            )
        return sorted(claimed)
    due_sql, due_params = picking or claim_picking(due, limit)
    table = connection.ops.quote_name(Message._meta.db_table)
    dated = Message._meta.get_field("status_changed_at").cast_db_type(connection)
    insert, insert_params = _events_insert_from(
        connection,
        "moved",
        ["message", "from_status"],
        {
            "type": E.CLAIMED,
            "source": TrackingEvent.Source.SYSTEM,
            "occurred_at": occurred_at,
            "to_status": S.SENDING,
            "received_at": timezone.now(),
        },
    )
    # With a cap, the rows picked beyond it are only locked until the claim commits.
    take = f", take AS (SELECT id, status FROM due LIMIT {capped[0]})" if capped else ""
    source = "take" if capped else "due"
    claim = (
        f"WITH due (id, status) AS ({due_sql}){take}, "
        f"moved AS (UPDATE {table} SET status = %s, status_changed_at = CAST(%s AS {dated}), "
        f"claimed_at = CAST(%s AS {dated}), attempts = {table}.attempts + 1 "
        f"FROM {source} WHERE {table}.id = {source}.id AND {table}.status = {source}.status "
        f"RETURNING {table}.id AS message, {source}.status AS from_status), "
        f"events AS ({insert}) "
        f"{', ' + counted[0] if counted else ''} "
        "SELECT message FROM moved ORDER BY message",
        [
            *due_params,
            *(capped[1] if capped else []),
            S.SENDING,
            _prepare(None, occurred_at, connection),
            _prepare(None, occurred_at, connection),
            *insert_params,
            *(counted[1] if counted else []),
        ],
    )
    if before is not None and not connection.in_atomic_block:
        return [pk for (pk,) in in_one_round_trip(connection, [*before, claim])]
    with prepared_cursor(connection) as cursor:
        for sql, params in before or []:
            cursor.execute(sql, params)
        cursor.execute(*claim)
        return [pk for (pk,) in cursor.fetchall()]


_CLAIMABLE = [status for status, moves in TRANSITIONS.items() if S.SENDING in moves]


def claim_picking(due: QuerySet, limit: int) -> tuple[str, tuple]:
    """PostgreSQL: the query that picks up to `limit` of the claimable `due` messages FOR
    UPDATE SKIP LOCKED, compiled, with its parameters. The sender claims from the same
    queryset batch after batch and compiles it once (half a millisecond a batch). Call it
    inside a transaction."""
    picked = (
        due.filter(status__in=_CLAIMABLE)
        .select_for_update(skip_locked=True, of=("self",))
        .values_list("pk", "status")
    )
    connection = transaction.get_connection()
    return picked[:limit].query.get_compiler(connection=connection).as_sql()


def _by_ids(connection, pk: str, ids: list[int]) -> tuple[str, list[Any]]:
    """PostgreSQL: `AND <pk> = ANY(ids)`, for every UPDATE ... FROM a _values_list() of rows
    (`pk`: the updated table's key column, as the statement names it). The planner cannot see
    how many rows the JSON holds (it assumes 100), and against a table of some thousands of
    rows it then reads the whole table into a hash join (1.5 ms of a 2 ms update of 50
    recipients among 10,000): the ids let it look the rows up by key. SQLite plans the join
    by key already."""
    if connection.vendor != "postgresql":
        return "", []
    return f" AND {pk} = ANY(%s)", [ids]


def _values_with(connection, name: str, columns, rows) -> tuple[str, list[Any]]:
    """_values_list() as a WITH clause named `name`, its columns named as in `columns`."""
    values, params = _values_list(connection, columns, rows)
    return f"{name} ({', '.join(column for column, _ in columns)}) AS ({values})", params


def _values_list(connection, columns, rows) -> tuple[str, list[Any]]:
    """A query of the rows, for a WITH clause, and its parameters, each value prepared for
    its field. PostgreSQL gets the rows as one JSON array of arrays, each value read out and
    cast to its column's type: one parameter whatever the batch size, so the statement's text
    stays the same, and the json module encodes a batch far faster than psycopg quotes
    arrays value by value. As jsonb: parsed once; `->>` on json lexes its row again for every
    value it reads (4% of the sender's database CPU, bench.send_cpu). SQLite gets VALUES, the
    values as they are (it has no column types to meet)."""
    fields = [field for _, field in columns]
    if connection.vendor == "postgresql":
        prepared = [
            [_prepare(f, v, connection) for f, v in zip(fields, row, strict=True)] for row in rows
        ]
        casts = ", ".join(
            f"CAST(r ->> {i} AS {f.cast_db_type(connection)})" for i, f in enumerate(fields)
        )
        return (
            f"SELECT {casts} FROM jsonb_array_elements(CAST(%s AS jsonb)) AS r",
            [json.dumps(prepared, default=_json_value, ensure_ascii=False)],
        )
    slots = "(" + ", ".join("%s" for _ in fields) + ")"
    sql: list[str] = []
    params: list[Any] = []
    for row in rows:
        sql.append(slots)
        params += [_prepare(f, v, connection) for f, v in zip(fields, row, strict=True)]
    return "VALUES " + ", ".join(sql), params


def _json_value(value: Any) -> Any:
    """A prepared value JSON has no type for, as PostgreSQL reads it back in its column."""
    if isinstance(value, (datetime, date, time)):
        return value.isoformat()
    if isinstance(value, (Decimal, uuid.UUID)):
        return str(value)
    if isinstance(value, (bytes, memoryview)):
        return "\\x" + bytes(value).hex()
    raise TypeError(f"{type(value).__name__} is not a column value")


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


def _fresh_key_sql(connection) -> str:
    """_fresh_key() made by the database, for rows inserted set-wise: 'local:' and 32
    random hexadecimal digits."""
    if connection.vendor == "postgresql":
        return "'local:' || replace(CAST(gen_random_uuid() AS text), '-', '')"
    return "'local:' || lower(hex(randomblob(16)))"


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


def _rejection_outcome(event: InboundEvent) -> tuple[Classification, str]:
    """A bounce, failure or deferral reported after sending: its classification by the
    rejection table, and the status it moves the message to (a deferral or a temporary failure
    is a soft bounce; a permanent one is bounced when hard, failed otherwise)."""
    classification = classify_rejection(
        smtp_code=event.smtp_code,
        smtp_status=event.smtp_status,
        text=event.diagnostic,
        esp_fields=event.esp_fields,
        reject_reason=event.reject_reason,
    )
    if event.type == E.DEFERRED or not event.permanent:
        return classification, S.SOFT_BOUNCED
    return classification, S.BOUNCED if classification.is_hard else S.FAILED


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
        classification, status = _rejection_outcome(event)
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
            from campaigns.services import recipients_restore
            from tracking.selectors import contacts_hard_bounced_since

            if not contacts_hard_bounced_since([message_id]):
                contact_revalidate(
                    contact_id=Message.objects.values_list("recipient__contact_id", flat=True).get(
                        pk=message_id
                    ),
                    reason=f"{event.type} after the bounce proves the address works",
                )
            recipients_restore(message_ids=[message_id])
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
    by one in order, set-wise (see events_apply). Returns the number of events recorded
    (duplicates left out)."""
    return sum(outcome != "duplicate" for outcome in events_apply(events))


# --- events from outside, a batch at a time ---------------------------------------------------

# The Message columns an event can change besides its status (see _facts).
_MESSAGE_FACTS = (*dict.fromkeys([*_FIRST_SEEN.values(), "delivered_at"]), *_COUNTERS.values())


class _Raced(Exception):
    """Another writer moved one of the batch's messages between our read and our write."""


class _Message:
    """One message of a batch: its row as read, and its state as the batch's events leave it."""

    def __init__(self, row: dict[str, Any]) -> None:
        self.row = row
        self.status: str = row["status"]
        self.changed_at: datetime | None = None  # the time of its last move
        self.values: dict[str, Any] = {name: row[name] for name in _MESSAGE_FACTS}
        self.touched: set[str] = set()  # facts the batch changes
        self.fields: dict[str, Any] = {}  # columns written because the status moved

    def apply(self, event_type: str, when: datetime) -> None:
        """_facts, in Python: first-seen times once, counters every time."""
        names = [_FIRST_SEEN.get(event_type)]
        if event_type in _PROVES_DELIVERY:
            names.append("delivered_at")
        for name in names:
            if name and self.values[name] is None:
                self.values[name] = when
                self.touched.add(name)
        if counter := _COUNTERS.get(event_type):
            self.values[counter] += 1
            self.touched.add(counter)

    def move(self, status: str | None, when: datetime) -> str:
        """The transition table: the status this event moves the message to, or ""."""
        if not status or not can_transition(self.status, status):
            return ""
        self.status, self.changed_at = status, when
        return status


class _Batch:
    """Everything a batch of events writes, gathered in Python before the first write."""

    def __init__(self) -> None:
        self.events: list[TrackingEvent] = []
        # (position in the batch, moved its message, the message's id)
        self.moved: list[tuple[int, bool, int | None]] = []
        self.rejections: list[Rejection] = []
        # recipient id -> column -> time (first-seen times: the first; last_action_at: the last)
        self.recipients: dict[int, dict[str, datetime]] = {}
        self.failed_recipients: set[int] = set()
        self.invalid: dict[int, str] = {}  # contact id -> why (the first hard rejection)
        self.revalid: dict[int, str] = {}  # contact id -> why (the first proof of life)
        self.restored: list[int] = []  # messages whose hard bounce engagement disproved
        self.unsubscribed: dict[int, datetime] = {}  # contact id -> first unsubscribe time
        self.topic_opt_outs: set[tuple[int, int]] = set()  # (contact id, topic id)
        self.suppressions: list[tuple[str, str, str, str]] = []  # email, reason, source, note
        self.contact_emails: dict[int, str] = {}

    def recipient_facts(self, recipient_id: int, event_type: str, when: datetime) -> None:
        """_recipient_facts, in Python."""
        names = [_RECIPIENT_FIRST_SEEN.get(event_type)]
        if event_type in _PROVES_DELIVERY:
            names.append("delivered_at")
        if not any(names):
            return
        facts = self.recipients.setdefault(recipient_id, {})
        for name in filter(None, names):
            facts.setdefault(name, when)
        facts["last_action_at"] = when


@dataclass(frozen=True)
class EventOutcome:
    word: str  # "changed", "recorded" or "duplicate"
    message_id: int | None  # the message it matched (None: unmatched, or a duplicate)


def events_apply(events: Iterable[InboundEvent]) -> list[str]:
    """`events_apply_outcomes`, one word per event."""
    return [outcome.word for outcome in events_apply_outcomes(events)]


def events_apply_outcomes(events: Iterable[InboundEvent]) -> list[EventOutcome]:
    """Record a batch of outside events set-wise, with the final state of recording them one
    by one through `event_record` in the order they happened (ties in the order given).
    Returns, for each event, its word, "changed" (it moved its message's status), "recorded"
    or "duplicate", and the message it matched.

    A handful of statements for the whole batch instead of several per event: the messages
    matched at once (selectors.messages_match), their rows read and locked in one query, the
    state machine run in Python over each message's events, then one multi-row INSERT of the
    events and one of the rejections, one UPDATE of the messages per (from, to) status pair,
    guarded by the status it expects, one of the recipients, and a few for the contacts and
    the suppression list. Replayed, or in another order, a batch ends in the same state. When
    another writer records one of the events or moves one of the messages first (a unique
    dedupe key, a guard that matches fewer rows), the batch starts over from a fresh read.
    """
    from django.db import OperationalError

    events = list(events)
    for _attempt in range(3):
        try:
            with transaction.atomic():
                return _events_apply(events)
        except (_Raced, IntegrityError):
            continue
        except OperationalError as exc:
            if not is_write_conflict(exc):
                raise
    # Still racing after three tries: one event at a time.
    return [_outcome(event_record(event)) for event in events]


def _outcome(result: TransitionResult) -> EventOutcome:
    if result.duplicate or result.event is None:
        return EventOutcome("duplicate", None)
    return EventOutcome("changed" if result.changed else "recorded", result.event.message_id)


def _events_apply(events: list[InboundEvent]) -> list[EventOutcome]:
    from tracking.selectors import messages_match

    outcomes = [EventOutcome("duplicate", None)] * len(events)
    keys = {e.dedupe_key for e in events if e.dedupe_key}
    seen = set(
        TrackingEvent.objects.filter(dedupe_key__in=keys).values_list("dedupe_key", flat=True)
    )
    todo: list[tuple[int, InboundEvent]] = []
    for n, event in enumerate(events):
        if event.dedupe_key in seen:
            continue
        if event.dedupe_key:
            seen.add(event.dedupe_key)
        todo.append((n, event))
    if not todo:
        return outcomes
    todo.sort(key=lambda item: _sortable(item[1].occurred_at))  # stable: ties keep their order
    matched = messages_match([event for _n, event in todo])
    rows = _messages_read({pk for pk in matched if pk is not None})

    def plan(skip: set[int]) -> tuple[_Batch, dict[int, _Message], list]:
        batch, later = _Batch(), []
        messages = {
            pk: _Message(row)
            for pk, row in rows.items()
            if row["recipient__contact_id"] not in skip
        }
        for (n, event), pk in zip(todo, matched, strict=True):
            if pk in rows and pk not in messages:
                later.append((n, event))
            else:
                _event_plan(batch, n, event, messages.get(pk) if pk is not None else None)
        return batch, messages, later

    batch, messages, later = plan(set())
    # A contact whose address one event condemns and another proves working depends on their
    # order in ways a set-wise write would flatten (a suppression added, then lifted): its
    # events go through event_record one by one, after the rest.
    if tangled := set(batch.invalid) & set(batch.revalid):
        batch, messages, later = plan(tangled)
    _batch_write(batch, messages)
    for n, moved, message_id in batch.moved:
        outcomes[n] = EventOutcome("changed" if moved else "recorded", message_id)
    for n, event in later:
        outcomes[n] = _outcome(event_record(event))
    return outcomes


def _sortable(when: datetime) -> datetime:
    """A time that compares with aware ones (a naive time from outside is taken as UTC)."""
    from datetime import UTC

    return when if when.tzinfo is not None else when.replace(tzinfo=UTC)


def _messages_read(pks: set[int]) -> dict[int, dict[str, Any]]:
    """The batch's messages, locked until the batch commits (in id order, so two batches
    cannot deadlock each other)."""
    if not pks:
        return {}
    rows = (
        Message.objects.filter(pk__in=pks)
        .order_by("pk")
        .select_for_update(of=("self",))
        .values(
            "pk",
            "status",
            "recipient_id",
            *_MESSAGE_FACTS,
            "recipient__email",
            "recipient__contact_id",
            "recipient__contact__email",
            "run__campaign__topic_id",
        )
    )
    return {row["pk"]: row for row in rows}


def _event_plan(batch: _Batch, n: int, event: InboundEvent, message: _Message | None) -> None:
    """What `event_record` does for one event, in Python: the rows and changes it makes,
    added to the batch, and the message's state moved on for the events after it."""
    from contacts.models import Suppression
    from tracking.selectors import MACHINE_CLICK_WINDOW

    common = {
        "source": event.source,
        "occurred_at": event.occurred_at,
        "dedupe_key": event.dedupe_key or _fresh_key(),
        "raw": event.raw,
    }
    if message is None:  # kept, unmatched
        batch.events.append(
            TrackingEvent(
                type=event.type,
                email=event.recipient[:254],
                url=event.url[:2000],
                user_agent=event.user_agent[:500],
                is_machine=event.is_machine,
                detail=event.detail or event.diagnostic,
                **common,
            )
        )
        batch.moved.append((n, False, None))
        return

    row, when, current = message.row, event.occurred_at, message.status
    contact_id = row["recipient__contact_id"]
    if event.type in (E.BOUNCED, E.FAILED, E.DEFERRED):  # as event_record and message_reject
        classification, status = _rejection_outcome(event)
        event_type = {S.BOUNCED: E.BOUNCED, S.FAILED: E.FAILED}.get(status, E.DEFERRED)
        message.apply(event_type, when)
        moved = message.move(status, when)
        if moved == S.SOFT_BOUNCED:
            message.fields["next_attempt_at"] = None
        batch.recipient_facts(row["recipient_id"], event_type, when)
        tracking_event = TrackingEvent(
            message_id=row["pk"],
            type=event_type,
            from_status=current,
            to_status=moved,
            detail=event.diagnostic,
            **common,
        )
        batch.events.append(tracking_event)
        batch.moved.append((n, bool(moved), row["pk"]))
        batch.rejections.append(
            Rejection(
                message_id=row["pk"],
                event=tracking_event,
                email=row["recipient__email"],
                kind=classification.kind,
                category=classification.category,
                smtp_code=event.smtp_code,
                smtp_status=event.smtp_status,
                diagnostic=event.diagnostic,
                source=event.source,
            )
        )
        if classification.is_hard and moved:
            batch.failed_recipients.add(row["recipient_id"])
            if contact_id not in batch.invalid:
                label = Rejection.Category(classification.category).label
                reason = f"{label}: {event.diagnostic}".strip(": ")
                batch.invalid[contact_id] = reason
                if email := (row["recipient__contact__email"] or "").strip():
                    batch.suppressions.append(
                        (email, Suppression.Reason.HARD_BOUNCE, event.source, reason)
                    )
        return

    is_machine = event.is_machine
    sent_at = message.values["sent_at"]
    if (
        event.type in (E.OPENED, E.CLICKED)
        and not is_machine
        and sent_at
        and when - sent_at < MACHINE_CLICK_WINDOW
    ):
        is_machine = True
    message.apply(event.type, when)
    moved = message.move(None if is_machine else _EVENT_STATUS.get(event.type), when)
    if not is_machine:
        batch.recipient_facts(row["recipient_id"], event.type, when)
    batch.events.append(
        TrackingEvent(
            message_id=row["pk"],
            type=event.type,
            from_status=current,
            to_status=moved,
            email=event.recipient[:254],
            url=event.url[:2000],
            user_agent=event.user_agent[:500],
            is_machine=is_machine,
            detail=event.detail or event.diagnostic,
            **common,
        )
    )
    batch.moved.append((n, bool(moved), row["pk"]))
    if event.type in (E.UNSUBSCRIBED, E.COMPLAINED):  # as _contact_opt_out
        topic_id = row["run__campaign__topic_id"]
        if event.type == E.UNSUBSCRIBED and not event.unsubscribe_all and topic_id:
            batch.topic_opt_outs.add((contact_id, topic_id))
        else:
            reason = Suppression.Reason.COMPLAINT
            if event.type == E.UNSUBSCRIBED:
                batch.unsubscribed.setdefault(contact_id, when)
                reason = Suppression.Reason.UNSUBSCRIBE
            if (email := row["recipient__email"]).strip():
                batch.suppressions.append((email, reason, event.source, ""))
    if moved and current == S.BOUNCED:  # the bounce was wrong, as in event_record
        batch.revalid.setdefault(
            contact_id, f"{event.type} after the bounce proves the address works"
        )
        batch.contact_emails[contact_id] = row["recipient__contact__email"] or ""
        batch.restored.append(row["pk"])


def _batch_write(batch: _Batch, messages: dict[int, _Message]) -> None:
    from contacts.models import Contact, Suppression
    from contacts.services import suppressions_add_entries

    TrackingEvent.objects.bulk_create(batch.events)
    for rejection in batch.rejections:
        rejection.event_id = rejection.event.pk
    Rejection.objects.bulk_create(batch.rejections)

    # Messages: one UPDATE per (from, to) status pair, guarded by the status its rows are
    # expected in, and one for those whose status stays; first-seen times and counters with
    # them. The rows are locked: a guard that misses means a writer that does not lock.
    groups: dict[tuple | None, list[_Message]] = {}
    for message in messages.values():
        if message.status != message.row["status"]:
            key = (message.row["status"], message.status, tuple(sorted(message.fields.items())))
            groups.setdefault(key, []).append(message)
        elif message.touched:
            groups.setdefault(None, []).append(message)
    for key, group in groups.items():
        ops = {name: _OPS[name] for m in group for name in m.touched}
        rows = {
            m.row["pk"]: {
                name: m.values[name] - m.row[name] if ops[name] == "add" else m.values[name]
                for name in m.touched
            }
            for m in group
        }
        constants, where = {}, {}
        if key is not None:
            where["status"], constants["status"], fields = key
            constants.update(fields)
            ops["status_changed_at"] = "set"
            for m in group:
                rows[m.row["pk"]]["status_changed_at"] = m.changed_at
        if _rows_update(Message, rows=rows, ops=ops, constants=constants, where=where) != len(
            group
        ):
            raise _Raced

    # Recipients: first-seen times and the last action; failed, for a dead address.
    if batch.recipients:
        ops = {name: "coalesce" for facts in batch.recipients.values() for name in facts}
        ops["last_action_at"] = "override"
        _rows_update(Recipient, rows=batch.recipients, ops=ops)
    if batch.failed_recipients:
        Recipient.objects.filter(pk__in=batch.failed_recipients).update(
            status=Recipient.Status.FAILED, next_step_at=None
        )

    # Contacts and the suppression list: contacts.services' rules, set-wise.
    now = timezone.now()
    if batch.invalid:
        _rows_update(
            Contact,
            rows={pk: {"invalid_reason": reason[:255]} for pk, reason in batch.invalid.items()},
            ops={"invalid_reason": "set"},
            constants={"email_status": Contact.EmailStatus.INVALID, "invalid_at": now},
            where={"email_status": Contact.EmailStatus.VALID},
        )
    if batch.unsubscribed:
        _rows_update(
            Contact,
            rows={pk: {"unsubscribed_at": when} for pk, when in batch.unsubscribed.items()},
            ops={"unsubscribed_at": "coalesce"},
        )
    if batch.topic_opt_outs:
        through = Contact.opted_out_topics.through
        through.objects.bulk_create(
            [through(contact_id=c, topic_id=t) for c, t in sorted(batch.topic_opt_outs)],
            ignore_conflicts=True,
        )
    if batch.suppressions:
        suppressions_add_entries(entries=batch.suppressions)
    if batch.revalid:
        from tracking.selectors import contacts_hard_bounced_since

        for contact_id in contacts_hard_bounced_since(batch.restored):
            batch.revalid.pop(contact_id, None)
    for reason in dict.fromkeys(batch.revalid.values()):
        contact_ids = [pk for pk, why in batch.revalid.items() if why == reason]
        Contact.objects.filter(pk__in=contact_ids, email_status=Contact.EmailStatus.INVALID).update(
            email_status=Contact.EmailStatus.VALID, invalid_reason="", invalid_at=None
        )
        emails = {batch.contact_emails[pk].strip().lower() for pk in contact_ids} - {""}
        Suppression.objects.filter(
            email__in=emails, reason=Suppression.Reason.HARD_BOUNCE, lifted_at__isnull=True
        ).update(lifted_at=now, lift_reason=reason[:255])
    if batch.restored:
        from campaigns.services import recipients_restore

        recipients_restore(message_ids=batch.restored)


# How _batch_write sets each Message column: a counter grows by the batch's count, a first-seen
# time is kept when the row has one already.
_OPS = {name: "add" if name in _COUNTERS.values() else "coalesce" for name in _MESSAGE_FACTS}
# SQL of each way of setting a column `c` of row `t` from the value `v` given for the row.
_SET_SQL = {
    "set": "{v}",
    "coalesce": "COALESCE(t.{c}, {v})",  # the row's own value first: a first-seen time
    "override": "COALESCE({v}, t.{c})",  # the given value, where one is given
    "add": "t.{c} + {v}",
}


def _rows_update(
    model: type,
    *,
    rows: Mapping[int, Mapping[str, Any]],
    ops: Mapping[str, str],
    constants: Mapping[str, Any] | None = None,
    where: Mapping[str, Any] | None = None,
) -> int:
    """UPDATE many rows of `model`, each with values of its own, in one statement per few
    thousand rows, the values joined in from _values_list (as messages_record_accepted does).
    `rows`: pk -> column -> value (a column missing from a row leaves it as it is, for every
    way but "set"); `ops`: column -> a way of _SET_SQL; `constants`: columns set to one value
    in every row; `where`: columns each row must hold (equality). Returns the number of rows
    updated. A few compiled statements instead of Django's CASE WHEN pk = ... per row and
    column, which costs more to build than to run."""
    from django.db import connection

    if not rows:
        return 0
    meta, quote = model._meta, connection.ops.quote_name
    columns = [("id", meta.pk), *((name, meta.get_field(name)) for name in ops)]
    sets = [
        f"{quote(field.column)} = "
        + _SET_SQL[ops[name]].format(c=quote(field.column), v=f"v.{name}")
        for name, field in columns[1:]
    ]
    head_params = []
    for name, value in (constants or {}).items():
        field = meta.get_field(name)
        sets.append(f"{quote(field.column)} = %s")
        head_params.append(field.get_db_prep_save(value, connection))
    conditions, tail_params = [f"t.{quote(meta.pk.column)} = v.id"], []
    for name, value in (where or {}).items():
        field = meta.get_field(name)
        conditions.append(f"t.{quote(field.column)} = %s")
        tail_params.append(field.get_db_prep_value(value, connection))
    blank = {name: 0 if op == "add" else None for name, op in ops.items()}
    items = list(rows.items())
    per_statement = max(1, 30_000 // len(columns))  # SQLite's limit of parameters
    updated = 0
    with connection.cursor() as cursor:
        for start in range(0, len(items), per_statement):
            chunk = items[start : start + per_statement]
            values_cte, params = _values_with(
                connection,
                "v",
                columns,
                ([pk, *(row.get(name, blank[name]) for name in ops)] for pk, row in chunk),
            )
            by_ids, by_ids_params = _by_ids(
                connection, f"t.{quote(meta.pk.column)}", [pk for pk, _ in chunk]
            )
            cursor.execute(
                f"WITH {values_cte} "
                f"UPDATE {quote(meta.db_table)} AS t SET {', '.join(sets)} "
                f"FROM v WHERE {' AND '.join(conditions)}{by_ids} RETURNING 1",
                [*params, *head_params, *tail_params, *by_ids_params],
            )
            # Counted from RETURNING: Python's sqlite3 gives no rowcount for a WITH statement.
            updated += len(cursor.fetchall())
    return updated
