"""ESP webhooks and replies, turned into InboundEvents (DESIGN.md "How a send flows", step 6).

django-anymail parses every ESP's webhooks, checks the shared secret (HTTP basic auth from
ANYMAIL["WEBHOOK_SECRET"]) and each ESP's own signature, and sends its `tracking` and
`inbound` signals with one normalised event shape. The receivers here turn those into our own
`InboundEvent` and hand them, as JSON-safe dicts, to a django-q2 task that calls
`tracking.services.events_apply`, where events are matched, deduplicated and applied, a batch
at a time, as `event_record` applies one. A receiver does no database work of its own, so the
ESP gets its answer at once.

`LEADCENTER_WEBHOOKS_SYNC` applies events in the request instead (tests, small installs).

`anymail_urls()` is anymail's own URL list with each view wrapped: a missing or wrong shared
secret is answered 401 before anymail looks at the body, a body anymail cannot parse is stored
as an "unknown" event and answered 400 (anymail itself answers 500 for some ESPs), and the
events of one request (SendGrid, SparkPost, Mailjet post hundreds at once) go to one task.
"""

from __future__ import annotations

import contextvars
import dataclasses
import hashlib
import json
import logging
import re
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from datetime import UTC, datetime
from email import message_from_bytes
from email.header import decode_header, make_header
from email.message import Message as EmailMessage
from email.utils import getaddresses, parseaddr, parsedate_to_datetime
from functools import wraps
from typing import Any

from anymail.signals import AnymailTrackingEvent, EventType
from anymail.signals import inbound as anymail_inbound
from anymail.signals import tracking as anymail_tracking
from anymail.utils import get_anymail_setting, get_request_basic_auth
from django.conf import settings
from django.contrib.auth.decorators import login_not_required
from django.core.exceptions import SuspiciousOperation
from django.db import DatabaseError, transaction
from django.http import HttpRequest, HttpResponse
from django.urls import URLPattern
from django.utils import timezone
from django.utils.crypto import constant_time_compare
from django.utils.datastructures import MultiValueDict
from django.views.decorators.csrf import csrf_exempt

from campaigns.models import Message
from tracking import tokens
from tracking.classification import parse_smtp_reply
from tracking.events import InboundEvent, dedupe_key, event_as_dict
from tracking.models import TrackingEvent
from tracking.services import event_record, events_apply

logger = logging.getLogger(__name__)

E = TrackingEvent.Type
TASK = "tracking.webhooks.webhook_event_apply"
BATCH_TASK = "tracking.webhooks.webhook_events_apply"
# Stored payloads are for a person reading the history; a reply's attachments are not.
RAW_LIMIT = 256_000
# Events applied per transaction by the task (see webhook_events_apply): set-wise, a chunk
# costs a handful of statements and holds its messages' row locks for a fraction of a second.
CHUNK = 500

# anymail's event types -> ours. A bounce, rejection or failure is "bounced" and permanent:
# tracking.classification decides hard or soft from the reply and the ESP's fields, because
# anymail's "bounced" covers full mailboxes and spam blocks as well as dead addresses.
EVENT_TYPES: dict[str, str] = {
    EventType.QUEUED: E.QUEUED,
    EventType.SENT: E.SENT,
    EventType.DELIVERED: E.DELIVERED,
    EventType.DEFERRED: E.DEFERRED,
    EventType.BOUNCED: E.BOUNCED,
    EventType.REJECTED: E.BOUNCED,
    EventType.FAILED: E.BOUNCED,
    EventType.OPENED: E.OPENED,
    EventType.CLICKED: E.CLICKED,
    EventType.COMPLAINED: E.COMPLAINED,
    EventType.UNSUBSCRIBED: E.UNSUBSCRIBED,
    EventType.AUTORESPONDED: E.AUTOREPLY,
}

# Keys of ESP payloads that hold a basic SMTP code or an enhanced status (Mailgun's
# delivery-status, SparkPost, SendGrid), used when the reply text itself has none.
_CODE_KEYS = ("code", "error_code", "smtp_code", "bounce_code")
_STATUS_KEYS = ("enhanced-code", "enhanced_code", "status", "smtp_status")
_CODE_RE = re.compile(r"^[245]\d\d$")
_STATUS_RE = re.compile(r"^[245]\.\d{1,3}\.\d{1,3}$")


def esp_slug(esp_name: str) -> str:
    """anymail's display name ("Amazon SES") -> the backend name ("amazon_ses")."""
    return "_".join(str(esp_name).lower().split()) or "unknown"


# --- tracking events ----------------------------------------------------------------------


def tracking_event_parse(event: AnymailTrackingEvent, esp_name: str) -> InboundEvent:
    """One anymail tracking event in our vocabulary."""
    esp = esp_slug(esp_name)
    source = f"webhook:{esp}"
    fields = esp_fields(event.esp_event)
    raw = _json(event.esp_event)
    event_type = EVENT_TYPES.get(event.event_type, E.UNKNOWN)
    message_id = "" if event.message_id is None else str(event.message_id)
    recipient = (event.recipient or "").strip()
    occurred_at = _aware(event.timestamp) or timezone.now()

    if event.event_id:
        # SES and SparkPost put one notification id on the events of every recipient of it.
        key = dedupe_key(source, "id", event.event_id, event.event_type, recipient)
    else:
        stamp = event.timestamp.isoformat() if event.timestamp else _digest(raw)
        key = dedupe_key(source, esp, message_id, event.event_type, stamp, recipient)

    mta_response = str(event.mta_response or "").strip()
    description = str(event.description or "").strip()
    diagnostic = mta_response
    if description and description.lower() not in mta_response.lower():
        diagnostic = f"{mta_response} ({description})" if mta_response else description
    smtp_code, smtp_status, _rest = parse_smtp_reply(mta_response)
    if smtp_code is None:
        smtp_code = next(
            (int(v) for k in _CODE_KEYS if _CODE_RE.match(v := str(fields.get(k, "")))), None
        )
    if not smtp_status:
        smtp_status = next(
            (v for k in _STATUS_KEYS if _STATUS_RE.match(v := str(fields.get(k, "")))), ""
        )

    return InboundEvent(
        type=event_type,
        source=source,
        occurred_at=occurred_at,
        dedupe_key=key,
        header_message_ids=_our_header_ids(message_id, event.esp_event),
        esp_message_id=message_id[:255],
        recipient=recipient,
        smtp_code=smtp_code,
        smtp_status=smtp_status,
        diagnostic=diagnostic,
        esp_fields=fields,
        reject_reason=str(event.reject_reason or ""),
        permanent=event_type != E.DEFERRED,
        url=str(event.click_url or ""),
        user_agent=str(event.user_agent or ""),
        detail=description,
        raw=raw,
    )


def esp_fields(esp_event: Any, *, limit: int = 200) -> dict[str, Any]:
    """The scalar fields of an ESP's raw event, nested objects flattened breadth-first (the
    outermost occurrence of a name wins): SES's bounce.bounceType and bounceSubType, Postmark's
    Type, Mailgun's delivery-status code, for the rejection classifier. Lists are left out:
    they hold one entry per recipient, and anymail already picked this recipient's."""
    flat: dict[str, Any] = {}
    queue: list[Any] = [esp_event]
    while queue and len(flat) < limit:
        node = queue.pop(0)
        if isinstance(node, MultiValueDict):
            node = node.dict()
        if not isinstance(node, Mapping):
            continue
        for key, value in node.items():
            if isinstance(value, Mapping):
                queue.append(value)
            elif value is None or isinstance(value, str | int | float | bool):
                flat.setdefault(str(key), value)
    return flat


def _our_header_ids(message_id: str, esp_event: Any) -> list[str]:
    """Message-IDs in the event that may be ours: an ESP that keeps the Message-ID we set
    reports it as the message id (Mailgun); SES repeats the mail's headers."""
    ids = [message_id] if "@" in message_id else []
    if isinstance(esp_event, Mapping):
        mail = esp_event.get("mail")
        headers = mail.get("commonHeaders") if isinstance(mail, Mapping) else None
        if isinstance(headers, Mapping) and isinstance(headers.get("messageId"), str):
            ids.append(headers["messageId"])
    return ids


def _json(value: Any) -> str:
    if isinstance(value, MultiValueDict):
        value = dict(value.lists())
    try:
        text = json.dumps(value, default=str, ensure_ascii=False)
    except (TypeError, ValueError):
        text = repr(value)
    return text[:RAW_LIMIT]


def _text(data: bytes) -> str:
    """Bytes as storable text: undecodable bytes and NULs (which PostgreSQL text refuses)
    replaced."""
    return data[:RAW_LIMIT].decode("utf-8", "replace").replace("\x00", "\ufffd")


def _digest(text: str | bytes) -> str:
    data = text.encode("utf-8", "replace") if isinstance(text, str) else text
    return hashlib.sha256(data).hexdigest()


def _aware(value: datetime | None) -> datetime | None:
    if value is None or not isinstance(value, datetime):
        return None
    return value if timezone.is_aware(value) else value.replace(tzinfo=UTC)


# --- replies ------------------------------------------------------------------------------

_MESSAGE_ID_RE = re.compile(r"<[^<>\s]+>")
_AUTO_SUBJECT_RE = re.compile(
    r"^\s*(auto(matic)?[ -]?(reply|response|antwort)|out of (the )?office|abwesenheit"
    r"|r[ée]ponse automatique|respuesta autom[áa]tica|risposta automatica|away from"
    r"|on vacation|vacation reply)",
    re.IGNORECASE,
)
_AUTO_REPLY_HEADERS = ("X-Autoreply", "X-Autorespond", "X-AutoReply-From", "X-Mail-Autoreply")
_NOT_REPLIES = ("multipart/report",)  # DSNs and feedback reports: the bounce processor's
_DAEMONS = re.compile(r"^(mailer-daemon|postmaster)@", re.IGNORECASE)


def reply_parse(raw: bytes, *, envelope_recipient: str = "") -> InboundEvent | None:
    """A reply or an auto-reply to one of our emails, from the raw message; None when it
    answers none of them, or is a bounce or feedback report (tracking's DSN/ARF reading
    handles those). For replies that arrive in an account's own mailbox."""
    message = message_from_bytes(raw)
    return reply_event(message, raw=raw, envelope_recipient=envelope_recipient)


def reply_event(
    message: EmailMessage, *, raw: bytes | str = b"", envelope_recipient: str = ""
) -> InboundEvent | None:
    """The event for a parsed message (anymail's AnymailInboundMessage, or any email.Message).

    Matched by In-Reply-To and References to our Message-IDs, or, for an auto-reply sent to
    the envelope sender as RFC 3834 asks, by the VERP token in the address it came to. An
    answer to nothing of ours is None: an address alone is not enough to call mail a reply.
    """
    if message.get_content_type() in _NOT_REPLIES:
        return None
    sender = parseaddr(_header(message, "From"))[1]
    if _DAEMONS.match(sender):
        return None
    referenced = _MESSAGE_ID_RE.findall(
        f"{_header(message, 'In-Reply-To')} {_header(message, 'References')}"
    )
    # The last References are the nearest; a long thread is cut to what can be ours.
    ids = list(dict.fromkeys(reversed(referenced)))[:20]
    known = bool(ids) and Message.objects.filter(message_id__in=ids).exists()
    message_pk = None if known else _verp_pk(message, envelope_recipient)
    if not known and message_pk is None:
        return None

    if isinstance(raw, bytes) and raw:
        text = _text(raw)
    else:
        text = (raw if isinstance(raw, str) and raw else _as_text(message)).replace("\x00", "")
    subject = _header(message, "Subject")
    own_id = _header(message, "Message-ID").strip()
    key = dedupe_key("reply", own_id or _digest(text))
    date = _date(message)
    return InboundEvent(
        type=E.AUTOREPLY if is_autoreply(message) else E.REPLIED,
        source=TrackingEvent.Source.REPLY,
        occurred_at=date or timezone.now(),
        dedupe_key=key,
        message_pk=message_pk,
        header_message_ids=ids,
        recipient=sender,
        detail=(f"From {sender}: {subject}" if sender else subject)[:1000].replace("\x00", ""),
        raw=text[:RAW_LIMIT],
    )


def is_autoreply(message: EmailMessage) -> bool:
    """An out-of-office or other automatic answer rather than a person's reply (RFC 3834's
    Auto-Submitted, the X-Autoreply family, Precedence, and the usual subjects)."""
    auto_submitted = _header(message, "Auto-Submitted").strip().lower()
    if auto_submitted and auto_submitted != "no":
        return True
    if any(message.get(name) is not None for name in _AUTO_REPLY_HEADERS):
        return True
    if _header(message, "Precedence").strip().lower() in ("auto_reply", "bulk", "junk"):
        return True
    return bool(_AUTO_SUBJECT_RE.match(_header(message, "Subject")))


def _header(message: EmailMessage, name: str) -> str:
    """A header as text, encoded words decoded, whatever the message's policy; "" if absent
    or unreadable."""
    try:
        value = message.get(name)
        if value is None:
            return ""
        text = str(value)
        if "=?" in text:
            text = str(make_header(decode_header(text)))
        return " ".join(text.split())
    except (ValueError, TypeError, LookupError, IndexError, AttributeError):
        return ""


def _verp_pk(message: EmailMessage, envelope_recipient: str) -> int | None:
    candidates = [envelope_recipient] if envelope_recipient else []
    for name in ("Delivered-To", "X-Original-To", "To", "Cc"):
        candidates += [addr for _name, addr in getaddresses([_header(message, name)]) if addr]
    for address in candidates:
        if (pk := tokens.read_verp_address(address)) is not None:
            return pk
    return None


def _date(message: EmailMessage) -> datetime | None:
    try:
        return _aware(parsedate_to_datetime(_header(message, "Date")))
    except (TypeError, ValueError, IndexError):
        return None


def _as_text(message: EmailMessage) -> str:
    try:
        return message.as_string()
    except Exception:  # a message anymail parsed but the generator cannot write back
        return "\n".join(f"{k}: {v}" for k, v in message.items())


# --- receivers ----------------------------------------------------------------------------


def tracking_received(sender, event: AnymailTrackingEvent, esp_name: str, **kwargs) -> None:
    """anymail's `tracking` signal. Never raises: an event that cannot be read is kept as an
    "unknown" event with its raw payload, for a person to look at."""
    try:
        inbound_event = tracking_event_parse(event, esp_name)
    except Exception as exc:
        logger.exception("unreadable %s tracking event", esp_name)
        inbound_event = _unreadable(esp_name, _json(getattr(event, "esp_event", None)), exc)
    _submit_safely(inbound_event)


def inbound_received(sender, event, esp_name: str, **kwargs) -> None:
    """anymail's `inbound` signal: replies and auto-replies to our emails."""
    try:
        message = event.message
        inbound_event = reply_event(
            message, envelope_recipient=getattr(message, "envelope_recipient", None) or ""
        )
    except Exception as exc:
        logger.exception("unreadable %s inbound message", esp_name)
        inbound_event = _unreadable(esp_name, _json(getattr(event, "esp_event", None)), exc)
    if inbound_event is not None:
        _submit_safely(inbound_event)


anymail_tracking.connect(tracking_received, dispatch_uid="leadcenter.tracking_received")
anymail_inbound.connect(inbound_received, dispatch_uid="leadcenter.inbound_received")


def _unreadable(esp_name: str, raw: str, exc: BaseException) -> InboundEvent:
    source = f"webhook:{esp_slug(esp_name)}"
    return InboundEvent(
        type=E.UNKNOWN,
        source=source,
        occurred_at=timezone.now(),
        dedupe_key=dedupe_key(source, "unreadable", _digest(raw)),
        detail=f"Could not read this {esp_name} event: {type(exc).__name__}: {exc}"[:1000],
        raw=raw[:RAW_LIMIT],
    )


# --- hand-off to the task -----------------------------------------------------------------

_batch: contextvars.ContextVar[list[dict[str, Any]] | None] = contextvars.ContextVar(
    "leadcenter_webhook_batch", default=None
)


def event_payload(event: InboundEvent) -> dict[str, Any]:
    """An InboundEvent as a JSON-safe dict, for the task queue."""
    payload = event_as_dict(event)
    for name, value in payload.items():
        if isinstance(value, str) and "\x00" in value:  # PostgreSQL text cannot hold NUL
            payload[name] = value.replace("\x00", "")
    payload["header_message_ids"] = [i.replace("\x00", "") for i in event.header_message_ids]
    if not all(isinstance(v, _JSON_SCALARS) for v in event.esp_fields.values()):
        # esp_fields() keeps scalars only; anything else is made JSON-safe the slow way.
        payload["esp_fields"] = json.loads(json.dumps(event.esp_fields, default=str))
    return payload


_JSON_SCALARS = (str, int, float, bool, type(None))


def event_from_payload(payload: Mapping[str, Any]) -> InboundEvent:
    names = {f.name for f in dataclasses.fields(InboundEvent)}
    values = {k: v for k, v in payload.items() if k in names}
    values["occurred_at"] = datetime.fromisoformat(values["occurred_at"])
    return InboundEvent(**values)


def _submit_safely(event: InboundEvent) -> None:
    try:
        payload = event_payload(event)
        batch = _batch.get()
        if batch is not None:
            batch.append(payload)
        else:
            _submit([payload])
    except Exception:
        logger.exception("could not hand over webhook event %s", event.dedupe_key)


def _submit(payloads: list[dict[str, Any]]) -> None:
    """Apply now (LEADCENTER_WEBHOOKS_SYNC) or enqueue one task once the caller commits."""
    if not payloads:
        return
    if settings.LEADCENTER_WEBHOOKS_SYNC:
        webhook_events_apply(payloads)
        return

    def enqueue() -> None:
        from django_q.tasks import async_task

        if len(payloads) == 1:
            async_task(TASK, payloads[0], group="webhooks")
        else:
            async_task(BATCH_TASK, payloads, group="webhooks")

    transaction.on_commit(enqueue)


@contextmanager
def collecting() -> Iterator[list[dict[str, Any]]]:
    """Collect the events the receivers see inside the block into one list, instead of one
    task each; the caller submits them."""
    batch: list[dict[str, Any]] = []
    token = _batch.set(batch)
    try:
        yield batch
    finally:
        _batch.reset(token)


# --- the task -----------------------------------------------------------------------------


def webhook_event_apply(payload: dict[str, Any]) -> str:
    """django-q2 task: record and apply one event (idempotent: its dedupe key is unique)."""
    return webhook_events_apply([payload])[0] if payload else ""


def webhook_events_apply(payloads: list[dict[str, Any]]) -> list[str]:
    """django-q2 task: record and apply events in order. Returns one word per event:
    "changed", "recorded", "duplicate" or "error". An event that fails is kept as an
    "unknown" event with its payload and the error, and the others still apply.

    Events are applied CHUNK at a time in one transaction, set-wise
    (tracking.services.events_apply: a handful of statements per chunk). A chunk that fails
    as a whole is applied again one event at a time, each in its own savepoint, to find the
    event that fails and keep the others."""
    outcomes: list[str] = []
    for start in range(0, len(payloads), CHUNK):
        chunk = payloads[start : start + CHUNK]
        try:
            with transaction.atomic():
                outcomes += _apply_batch(chunk)
        except Exception:
            logger.warning("a batch of webhook events failed; applying them one by one",
                           exc_info=True)  # fmt: skip
            with transaction.atomic():
                outcomes += _apply_chunk(chunk)
    return outcomes


def _apply_batch(payloads: list[dict[str, Any]]) -> list[str]:
    events: list[InboundEvent] = []
    errors: set[int] = set()
    for n, payload in enumerate(payloads):
        try:
            events.append(event_from_payload(payload))
        except Exception as exc:
            logger.exception("webhook event %s failed", payload.get("dedupe_key", ""))
            events.append(_failed(payload, exc))
            errors.add(n)
    outcomes = events_apply(events)
    return ["error" if n in errors else outcome for n, outcome in enumerate(outcomes)]


def _apply_chunk(payloads: list[dict[str, Any]]) -> list[str]:
    keys = [str(p.get("dedupe_key", "")) for p in payloads]
    seen = set(
        TrackingEvent.objects.filter(dedupe_key__in=[k for k in keys if k]).values_list(
            "dedupe_key", flat=True
        )
    )
    outcomes: list[str] = []
    for key, payload in zip(keys, payloads, strict=True):
        if key and key in seen:
            outcomes.append("duplicate")
            continue
        seen.add(key)
        try:
            with transaction.atomic():
                result = event_record(event_from_payload(payload))
        except Exception as exc:
            logger.exception("webhook event %s failed", key)
            with transaction.atomic():
                event_record(_failed(payload, exc))
            outcomes.append("error")
            continue
        if result.duplicate:
            outcomes.append("duplicate")
        else:
            outcomes.append("changed" if result.changed else "recorded")
    return outcomes


def _failed(payload: Mapping[str, Any], exc: BaseException) -> InboundEvent:
    raw = _json(payload)
    source = str(payload.get("source") or "webhook")[:40]
    return InboundEvent(
        type=E.UNKNOWN,
        source=source,
        occurred_at=timezone.now(),
        dedupe_key=dedupe_key(source, "failed", _digest(raw)),
        detail=f"Could not apply this event: {type(exc).__name__}: {exc}"[:1000],
        raw=raw,
    )


# --- anymail's URLs, guarded ----------------------------------------------------------------


def anymail_urls() -> tuple[list[URLPattern], str]:
    """anymail.urls with every view wrapped by `_guarded`, under anymail's own namespace, for
    `path("anymail/", include(anymail_urls()))`."""
    from anymail import urls

    patterns = [
        URLPattern(p.pattern, _guarded(p.callback), p.default_args, p.name)
        for p in urls.urlpatterns
    ]
    return patterns, urls.app_name


def _guarded(view):
    view_class = getattr(view, "view_class", None)
    esp_name = getattr(view_class, "esp_name", None)
    esp_name = esp_name if isinstance(esp_name, str) else "unknown"

    @csrf_exempt
    @login_not_required
    @wraps(view)
    def guarded(request: HttpRequest, *args, **kwargs) -> HttpResponse:
        if request.method == "POST" and not _shared_secret_ok(request):
            response = HttpResponse("Missing or wrong webhook credentials.", status=401)
            response["WWW-Authenticate"] = 'Basic realm="LeadCenter webhooks"'
            return response
        if view_class is not None:
            # anymail reads its settings (signing keys) when it builds the view: a failure
            # there is our own configuration (500), whatever the body.
            view_class(**getattr(view, "view_initkwargs", {}))
        with collecting() as batch:
            try:
                response = view(request, *args, **kwargs)
            except (SuspiciousOperation, ImportError, DatabaseError):
                # A bad signature (400, nothing stored), a package we lack (anymail's
                # ImproperlyInstalled, 500), or the database is down (500: the ESP will send
                # it again).
                raise
            except Exception as exc:
                # anymail could not parse the body (an AnymailConfigurationError here comes
                # from the body too: a tracking payload posted to the inbound URL). The
                # caller passed the shared secret (or none is configured), so keep what it
                # sent for a person to read.
                logger.warning("unreadable %s webhook: %s", esp_name, exc)
                batch.append(event_payload(_unreadable(esp_name, _text(request.body), exc)))
                response = HttpResponse("Unreadable webhook body.", status=400)
        _submit(batch)
        return response

    return guarded


def _shared_secret_ok(request: HttpRequest) -> bool:
    """The same check as anymail's (any of the WEBHOOK_SECRET "user:password" strings), made
    first so a caller without it gets 401 and never reaches a parser."""
    secrets = get_anymail_setting("webhook_secret", default=[])
    if isinstance(secrets, str):
        secrets = [secrets] if secrets else []
    if not secrets:
        return True  # anymail warns about this configuration; the ESP's signature still counts
    given = get_request_basic_auth(request) or ""
    return any(constant_time_compare(given, secret) for secret in secrets)
