"""Hand-off of tracking hits (opens, clicks) from the web request to the workers.

With Redis configured, the pixel and the click redirect only append the event to a Redis list
(a fraction of a millisecond) and answer; the drain task applies the list in order through
`event_record`. Each event carries its dedupe key from the moment it was received, so a drain
that dies half-way and runs again records nothing twice. Without Redis (a first run on SQLite),
events are applied inline.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import threading
import time
from datetime import datetime
from functools import cache

from django.conf import settings
from django.db import OperationalError
from django.utils import timezone

from tracking.events import InboundEvent, event_as_dict
from tracking.models import TrackingEvent
from tracking.selectors import is_machine_agent
from tracking.services import event_record, events_record_many

logger = logging.getLogger(__name__)
KEY = "leadcenter:tracking:events"
LOCK = "leadcenter:tracking:drain-lock"


@cache
def _redis():
    import redis

    # One connection per process, kept open (redis-py locks it for threads).
    return redis.Redis.from_url(settings.REDIS_URL, single_connection_client=True)


@cache
def _pusher():
    """The connection the pixel and the redirect push on, one per process, with Redis's
    replies switched off (CLIENT REPLY OFF): a push is a write to the socket, not a round
    trip, which is most of what a pixel request would otherwise cost (measured: 130 us a push
    with the reply, 20 without). Nothing is given up: the push is in Redis's socket as soon as
    it is written, and a Redis that is gone is noticed before the next push (the socket reads
    as closed) and that event applied inline."""
    import redis

    pool = redis.ConnectionPool.from_url(
        settings.REDIS_URL, socket_timeout=2, socket_connect_timeout=2
    )
    connection = pool.make_connection()
    connection.connect()  # authenticates and selects the database, with replies
    connection.send_command("CLIENT", "REPLY", "OFF")
    return connection


_PUSH_LOCK = threading.Lock()  # a threaded server's requests share the connection


def _push(payload: str) -> None:
    import redis

    with _PUSH_LOCK:
        connection = _pusher()
        try:
            # With replies off nothing ever arrives: a readable socket is a closed one.
            if connection.can_read(timeout=0):
                raise redis.ConnectionError("Redis closed the connection")
            connection.send_command("RPUSH", KEY, payload)
        except (redis.RedisError, OSError):
            _pusher.cache_clear()
            connection.disconnect()
            _pusher().send_command("RPUSH", KEY, payload)  # once more, on a new connection


def _pushes_settle() -> None:
    """Wait until Redis has applied this process's pushes: a round trip on their own
    connection (replies on, then off again) comes back after them."""
    if _pusher.cache_info().currsize:
        with _PUSH_LOCK:
            connection = _pusher()
            connection.send_command("CLIENT", "REPLY", "ON")
            connection.read_response()
            connection.send_command("CLIENT", "REPLY", "OFF")


def connections_reset() -> None:
    """Forget this process's Redis connections (a forked child, or settings changed)."""
    for connection in (_redis, _pusher):
        connection.cache_clear()


# A forked process (a web or django-q2 worker) opens its own connections.
os.register_at_fork(after_in_child=connections_reset)


def is_buffered() -> bool:
    return settings.LEADCENTER_TRACKING_BUFFER == "redis" and bool(settings.REDIS_URL)


def event_submit(event: InboundEvent) -> None:
    """Record the event now, or queue it for the drain when Redis is configured. A Redis that
    does not answer costs nothing but speed: the event is applied inline instead."""
    if is_buffered():
        import redis

        # Only what differs from InboundEvent's defaults: an open is a few short fields.
        payload = {k: v for k, v in event_as_dict(event).items() if v != _DEFAULTS[k]}
        try:
            _push(json.dumps(payload))
            return
        except (redis.RedisError, OSError):
            logger.warning("Redis unavailable; recording a tracking event inline", exc_info=True)
    event_record(_classified(event))


_DEFAULTS = {
    f.name: f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
    for f in dataclasses.fields(InboundEvent)
}


def _classified(event: InboundEvent) -> InboundEvent:
    """A hit from a scanner, previewer or HTTP library is machine activity. Decided when the
    event is recorded, not in the request: the pixel and the redirect answer first."""
    if event.source in (TrackingEvent.Source.PIXEL, TrackingEvent.Source.CLICK):
        event.is_machine = event.is_machine or is_machine_agent(event.user_agent)
    return event


def events_drain(*, batch: int = 500, max_seconds: float = 50.0) -> int:
    """Apply queued events in order until the list is empty or time is up. One drainer at a
    time (a Redis lock); items leave the list only after they are recorded, or, for an item
    that cannot be applied (unreadable, or refused by the database on its own), after it is
    set aside as an unmatched event saying why: one bad item never blocks the list. A database
    that cannot be reached (or a deadlock) stops the drain with the batch still queued; the
    next drain takes it again, and what was recorded already is recognised by its dedupe key."""
    if not is_buffered():
        return 0
    _pushes_settle()
    client = _redis()
    if not client.set(LOCK, "1", nx=True, ex=int(max_seconds) + 30):
        return 0
    applied = 0
    deadline = time.monotonic() + max_seconds
    try:
        while time.monotonic() < deadline:
            items = client.lrange(KEY, 0, batch - 1)
            if not items:
                break
            events: list[tuple[bytes, InboundEvent]] = []
            for item in items:
                try:
                    data = json.loads(item)
                    data["occurred_at"] = datetime.fromisoformat(data["occurred_at"])
                    events.append((item, _classified(InboundEvent(**data))))
                except (ValueError, TypeError, KeyError, AttributeError) as error:
                    _set_aside(item, error)
            try:
                events_record_many([event for _, event in events])
            except OperationalError:
                raise  # the database is away or the batch deadlocked: retried as it is
            except Exception:  # one bad event: find it, keep the rest
                logger.exception("a batch of queued tracking events failed; applying one by one")
                _record_each(events)
            client.ltrim(KEY, len(items), -1)
            applied += len(items)
    finally:
        client.delete(LOCK)
    return applied


def _record_each(events: list[tuple[bytes, InboundEvent]]) -> None:
    for item, event in events:
        try:
            event_record(event)
        except OperationalError:
            raise
        except Exception as error:
            _set_aside(item, error)


def _set_aside(item: bytes, error: Exception) -> None:
    """Keep an item that cannot be applied where a person sees it: an unmatched event (the
    admin's Tracking events list, empty message) with the reason and the item as queued."""
    logger.error("queued tracking event not applied (%s): %r", error, item[:500])
    text = item.decode(errors="replace").replace("\x00", "\ufffd")
    try:
        data = json.loads(text)
        kind = str(data.get("type", ""))
    except (ValueError, AttributeError):
        kind = ""
    TrackingEvent.objects.get_or_create(
        dedupe_key=f"unapplied:{hashlib.sha256(item).hexdigest()}",
        defaults={
            "type": kind if kind in TrackingEvent.Type.values else TrackingEvent.Type.UNKNOWN,
            "source": "tracking queue",
            "occurred_at": timezone.now(),
            "detail": f"Not applied: {type(error).__name__}: {error}".replace("\x00", "")[:2000],
            "raw": text,
        },
    )


def events_pending() -> int:
    if not is_buffered():
        return 0
    _pushes_settle()
    return int(_redis().llen(KEY))
