"""One small vocabulary for everything that happens to an email after it leaves us.

Each outside source (the open pixel, click redirects, the unsubscribe page, anymail webhooks,
bounce and feedback-report mail, replies) turns what it received into an `InboundEvent`, and
`tracking.services.event_record` matches, deduplicates and applies it in one place.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field, fields
from datetime import datetime
from typing import Any

from tracking.models import TrackingEvent

Type = TrackingEvent.Type


@dataclass
class InboundEvent:
    type: str  # a TrackingEvent.Type
    source: str  # a TrackingEvent.Source, or "webhook:<esp>"
    occurred_at: datetime
    dedupe_key: str
    # What identifies the message, strongest first (DESIGN.md "How a send flows", step 6).
    message_pk: int | None = None  # from a signed token or a VERP address
    header_message_ids: list[str] = field(default_factory=list)  # returned headers, replies
    esp_message_id: str = ""
    recipient: str = ""  # the address the event is about
    # Failure details, for the rejection classifier.
    smtp_code: int | None = None
    smtp_status: str = ""
    diagnostic: str = ""
    esp_fields: dict[str, Any] = field(default_factory=dict)
    reject_reason: str = ""  # anymail's
    permanent: bool = True  # a DSN's Action: failed (True) or delayed (False)
    # Engagement details.
    url: str = ""
    user_agent: str = ""
    is_machine: bool = False
    unsubscribe_all: bool = True  # False: only the campaign's topic
    detail: str = ""
    raw: str = ""


def dedupe_key(source: str, *parts: Any) -> str:
    """A stable key from the source's own identifiers, short enough for the unique column."""
    text = "\x1f".join(str(p) for p in parts)
    digest = hashlib.sha256(text.encode("utf-8", "replace")).hexdigest()[:40]
    return f"{source}:{digest}"


_FIELDS = tuple(f.name for f in fields(InboundEvent))


def event_as_dict(event: InboundEvent) -> dict[str, Any]:
    """The event as a plain dict with its time in ISO 8601, for a queue. A shallow copy (lists
    and the dict of ESP fields copied one level): `dataclasses.asdict` deep-copies every value
    and cost more than the rest of a webhook receiver or the open pixel put together."""
    data = {name: getattr(event, name) for name in _FIELDS}
    data["occurred_at"] = event.occurred_at.isoformat()
    data["header_message_ids"] = list(event.header_message_ids)
    data["esp_fields"] = dict(event.esp_fields)
    return data
