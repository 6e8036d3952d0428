"""Bounce mail, feedback reports, auto-replies (and a person's replies that reach the bounce
mailbox) turned into `InboundEvent`s, and recorded.

`bounce_parse(raw)` reads one raw message and never raises: flufl.bounce finds the failed
addresses (decades of MTA formats, RFC 3464 or not); our own code reads RFC 3464
`message/delivery-status` blocks (Action, Status, Diagnostic-Code, the recipients) and RFC 5965
feedback reports, recognises out-of-office replies, and for plain-text bounces takes the SMTP
reply written next to the address. What identifies the message, strongest first: our VERP
address (the bounce is delivered to bounces+<token>@...), our Message-ID in the returned
headers, the recipient's address (DESIGN.md "How a send flows", step 6). Anything it cannot
read becomes one event of type "unknown" holding the raw message, for a person to read.

`bounces_process(messages=...)` records the events of many messages through
`tracking.services.event_record`, which matches, deduplicates and applies them. Dedupe keys come
from the bounce's own Message-ID (or a hash of its bytes) and the recipient, so the same bounce
read twice, from a file, a Maildir or a mailbox, records nothing new.

The sources (`maildir_messages`, `mbox_messages`, `mailbox_messages`) are generators that
acknowledge a message (move it to cur/ as seen, delete it, flag it on the server) only when the
next one is asked for, that is once the previous one was recorded: a database error stops the
run and leaves the unrecorded message where it was.
"""

from __future__ import annotations

import email
import hashlib
import imaplib
import logging
import mailbox as mailbox_lib
import os
import poplib
import re
import ssl
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, fields
from datetime import UTC, datetime, timedelta
from email.message import Message
from email.parser import HeaderParser
from email.utils import getaddresses, parseaddr, parsedate_to_datetime
from pathlib import Path

from flufl.bounce import all_failures

from tracking.classification import Classification, classify_rejection, parse_smtp_reply
from tracking.events import InboundEvent, dedupe_key
from tracking.models import TrackingEvent
from tracking.tokens import read_verp_address

logger = logging.getLogger(__name__)
# flufl.bounce logs every detector it runs at INFO (a dozen lines for each message read) and
# a detector that chokes on a malformed message with a traceback, which we catch and log.
logging.getLogger("flufl.bounce").setLevel(logging.CRITICAL)

E = TrackingEvent.Type
Source = TrackingEvent.Source

RAW_LIMIT = 200_000  # characters of the message kept on each event
# Messages recorded together when they come from files, which need no acknowledgement.
FILE_BATCH = 500
_MAX_IDS = 20  # Message-IDs looked up per bounce
_MAX_EVENTS = 50  # recipients per bounce; a real one names one or a few

# Where the address a bounce was delivered to may be written, most reliable first.
_ENVELOPE_HEADERS = (
    "Delivered-To",
    "X-Original-To",
    "Envelope-To",
    "X-Envelope-To",
    "X-Rcpt-To",
    "To",
    "Cc",
    "Return-Path",
)
_STATUS_RE = re.compile(r"(?<![\w.])[245]\.\d{1,3}\.\d{1,3}(?![\w.])")
_MSGID_LINE_RE = re.compile(r"^message-id:[ \t]*(<[^<>\s]{1,250}>)", re.IGNORECASE | re.MULTILINE)
_MSGID_RE = re.compile(r"<[^<>\s]{1,250}>")
# A line holding an SMTP reply: "550 5.1.1 ...", "550-5.1.1 ...", "Remote host said: 554 ...".
_REPLY_RE = re.compile(r"(?<![\w.\[\]#:/-])([245]\d\d)(?:[ -]|$)")
_BOUNCE_SENDER_RE = re.compile(r"^(mailer-daemon|postmaster|mail-daemon|mailerdaemon)@", re.I)
_BOUNCE_SUBJECT_RE = re.compile(
    r"undeliver|delivery status notification|returned mail|mail delivery fail|failure notice"
    r"|delivery fail|non-?delivery|delayed mail|delivery (has )?(been )?delayed|could not be deliv"
    r"|unzustellbar|non remis",
    re.IGNORECASE,
)
_AUTOREPLY_SUBJECT_RE = re.compile(
    r"out of (the )?office|automatic reply|auto[- ]?reply|auto[- ]?response|autosvar"
    r"|abwesenheitsnotiz|abwesenheit|r[ée]ponse automatique|respuesta autom[áa]tica"
    r"|risposta automatica|automatisch antwoord|afwezig|vacation (reply|notice|message)"
    r"|away from (the )?office|on vacation|on leave",
    re.IGNORECASE,
)
_COMPLAINT_TYPES = {"abuse", "fraud"}


# --- parsing -------------------------------------------------------------------------------


def bounce_parse(raw: bytes, *, received_at: datetime | None = None) -> list[InboundEvent]:
    """The events one raw message says: bounced or deferred recipients, a complaint, an
    auto-reply, or one "unknown" event. Never raises: whatever goes wrong in here, the message
    is kept as an "unknown" event for a person to read."""
    try:
        return _Bounce(raw, received_at).events()
    except Exception as exc:  # a malformed message must never stop the run
        logger.warning("could not read a bounce message: %r", exc, exc_info=True)
        return [_fallback_unknown(raw, received_at, f"Could not be read: {exc!r}")]


def _clean(text: object, limit: int | None = None) -> str:
    """Text a database column takes: no NUL, no lone surrogates (non-ASCII header bytes come
    back from the parser as surrogate escapes)."""
    text = str(text) if text is not None else ""
    try:
        text = text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    except UnicodeEncodeError:
        text = text.encode("utf-8", "replace").decode("utf-8")
    text = text.replace("\x00", "\ufffd")
    return text[:limit] if limit else text


def _one_line(text: object, limit: int = 2000) -> str:
    return _clean(" ".join(_clean(text).split()), limit)


def _raw_text(raw: bytes) -> str:
    text = _clean(raw[: RAW_LIMIT * 4].decode("utf-8", "replace"))
    if len(text) > RAW_LIMIT or len(raw) > RAW_LIMIT * 4:
        text = f"{text[:RAW_LIMIT]}\n[... truncated: the message has {len(raw):,} bytes]"
    return text


def _raw_digest(raw: bytes) -> str:
    return "sha256:" + hashlib.sha256(raw).hexdigest()


def _fallback_unknown(raw: bytes, received_at: datetime | None, detail: str) -> InboundEvent:
    return InboundEvent(
        type=E.UNKNOWN,
        source=Source.DSN,
        occurred_at=received_at or _now(),
        dedupe_key=dedupe_key(Source.DSN, _raw_digest(raw), ""),
        detail=_clean(detail, 2000),
        raw=_raw_text(raw),
    )


def _now() -> datetime:
    return datetime.now(UTC)


def _header(msg: Message, name: str) -> str:
    try:
        value = msg.get(name)
    except Exception:  # a broken header reads as absent
        return ""
    return _clean(value) if value is not None else ""


def _headers(msg: Message, name: str) -> list[str]:
    try:
        return [_clean(v) for v in msg.get_all(name) or []]
    except Exception:
        return []


def _address(value: str) -> str:
    """The address in an RFC 3464 recipient field ("rfc822; a@b"), a header or a bare string."""
    value = value.strip()
    kind, sep, rest = value.partition(";")
    if sep and "@" not in kind:
        value = rest.strip()
    if any(c in value for c in "<>( \t"):
        value = parseaddr(value)[1] or value
    value = value.strip().strip("<>").strip()
    return value[:254] if "@" in value else ""


def _addresses(values: Iterable[str]) -> list[str]:
    try:
        return [a for _, a in getaddresses(list(values)) if "@" in a]
    except Exception:
        return []


def _verp(addresses: Iterable[str]) -> int | None:
    for address in addresses:
        if "+" in address:
            pk = read_verp_address(address.strip().strip("<>"))
            if pk is not None:
                return pk
    return None


def _message_ids(text: str) -> list[str]:
    return _MSGID_RE.findall(text or "")


def _walk(msg: Message) -> list[Message]:
    try:
        return list(msg.walk())
    except Exception:
        return [msg]


def _part_text(part: Message) -> str:
    """A leaf part's decoded text (transfer encoding undone, charset applied loosely)."""
    try:
        payload = part.get_payload(decode=True)
    except Exception:
        payload = None
    if payload is None:
        body = part.get_payload()
        return _clean(body) if isinstance(body, str) else ""
    charset = "utf-8"
    try:
        charset = part.get_content_charset() or "utf-8"
        return _clean(payload.decode(charset, "replace"))
    except (LookupError, ValueError):
        return _clean(payload.decode("utf-8", "replace"))


def _dsn_blocks(part: Message) -> list[Message]:
    """The header blocks of a delivery-status part, however the parser left them."""
    payload = part.get_payload()
    if isinstance(payload, list) and all(isinstance(p, Message) for p in payload):
        if part.get_content_type() == "message/delivery-status":
            return payload
        # message/global-delivery-status parses as one message: its headers are the
        # per-message block and its body the per-recipient blocks.
        text = "".join(_flat(p) for p in payload)
    else:
        text = _part_text(part)
    blocks = re.split(r"\r?\n[ \t]*\r?\n", text.strip())
    return [HeaderParser().parsestr(block.strip() + "\n") for block in blocks if block.strip()]


def _flat(msg: Message) -> str:
    try:
        return _clean(msg.as_string())
    except Exception:  # the generator chokes on some broken parts: headers and text will do
        head = "".join(f"{k}: {_clean(v)}\n" for k, v in msg.items())
        body = msg.get_payload()
        return head + "\n" + (_clean(body) if isinstance(body, str) else "")


def _reply(text: str) -> tuple[int | None, str, str]:
    """(code, enhanced status, readable text) of a reply; a multi-line reply ("550-5.1.1 ...
    550-5.1.1 ... 550 5.1.1 ...") is written once as "550 5.1.1 ..."."""
    code, status, rest = parse_smtp_reply(text)
    if code is not None and text.startswith(str(code)):
        text = " ".join(p for p in (str(code), status, rest) if p)
    return code, status, text


@dataclass
class _Returned:
    """What the returned copy of our email (or its headers) says."""

    message_ids: list[str]
    verp_addresses: list[str]
    recipients: list[str]


class _Bounce:
    def __init__(self, raw: bytes, received_at: datetime | None) -> None:
        self.raw = raw
        self.received_at = received_at
        self.msg = email.message_from_bytes(raw)
        self.parts = _walk(self.msg)
        self.own_id = (_message_ids(_header(self.msg, "Message-ID")) or [""])[0]
        self.key_id = self.own_id or _raw_digest(raw)
        self._raw_text: str | None = None

    # -- the pieces every event shares

    @property
    def raw_text(self) -> str:
        if self._raw_text is None:
            self._raw_text = _raw_text(self.raw)
        return self._raw_text

    def occurred_at(self) -> datetime:
        fallback = self.received_at or _now()
        try:
            when = parsedate_to_datetime(_header(self.msg, "Date"))
        except (TypeError, ValueError, IndexError, OverflowError):
            return fallback
        if when is None:
            return fallback
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        # A clock far off (or a forged date) must not put the event in the future.
        if when > _now() + timedelta(hours=1) or when.year < 1990:
            return fallback
        return when

    def returned(self) -> _Returned:
        ids: list[str] = []
        verps: list[str] = []
        recipients: list[str] = []
        for part in self.parts:
            ctype = part.get_content_type()
            headers: Message | None = None
            if ctype in ("message/rfc822", "message/global"):
                payload = part.get_payload()
                if isinstance(payload, list) and payload and isinstance(payload[0], Message):
                    headers = payload[0]
            elif ctype in ("text/rfc822-headers", "message/rfc822-headers"):
                headers = HeaderParser().parsestr(_part_text(part).lstrip())
            if headers is None:
                continue
            ids += _message_ids(_header(headers, "Message-ID"))
            verps += _addresses([_header(headers, "Return-Path"), _header(headers, "Sender")])
            recipients += _addresses([_header(headers, "To")])
        # Plain-text bounces (qmail, Exim, Yahoo) quote the message inline in the body.
        for part in self.parts:
            if not part.is_multipart() and part.get_content_maintype() == "text":
                ids += _MSGID_LINE_RE.findall(_part_text(part))
        ids = [i for i in dict.fromkeys(_clean(i, 255) for i in ids) if i != self.own_id]
        return _Returned(ids[:_MAX_IDS], verps, recipients)

    def verp(self, *extra: str) -> int | None:
        envelope: list[str] = []
        for name in _ENVELOPE_HEADERS:
            envelope += _addresses(_headers(self.msg, name))
        return _verp([*envelope, *extra])

    def event(self, type_: str, source: str, recipient: str = "", **kwargs) -> InboundEvent:
        recipient = _clean(recipient, 254)
        key = dedupe_key(source, self.key_id, recipient.lower())
        if type_ == E.AUTOREPLY and self.own_id:
            # The key tracking.webhooks.reply_event gives the same auto-reply read from an
            # account's inbox, so it is recorded once whichever mailbox it reached.
            key = dedupe_key(Source.REPLY, self.own_id)
        return InboundEvent(
            type=type_,
            source=source,
            occurred_at=self.occurred_at(),
            dedupe_key=key,
            recipient=recipient,
            raw=self.raw_text,
            **kwargs,
        )

    # -- what kind of message it is

    def events(self) -> list[InboundEvent]:
        if self.is_feedback_report():
            return self.complaint_events()
        delivery_status = [p for p in self.parts if "delivery-status" in p.get_content_type()]
        flufl_temporary, flufl_permanent = self.flufl()
        if delivery_status or flufl_temporary or flufl_permanent:
            events = self.failure_events(delivery_status, flufl_temporary, flufl_permanent)
            if events:
                return events[:_MAX_EVENTS]
            return [self.unknown("A delivery report without a failed or delayed recipient.")]
        if self.is_autoreply():
            return [self.autoreply_event()]
        if (reply := self.reply()) is not None:
            return [reply]
        return [self.unknown("Not a bounce, feedback report or auto-reply that we could read.")]

    def reply(self) -> InboundEvent | None:
        """A person's answer to one of our emails that reached this mailbox (where the return
        path is also where replies go), as the inbound webhook reads it: only when its
        In-Reply-To or References name one of our Message-IDs (a VERP address alone is how
        bounces and auto-replies come back, not people)."""
        from tracking.webhooks import reply_event

        event = reply_event(self.msg, raw=self.raw)
        if event is None or event.message_pk is not None:
            return None
        return event

    def flufl(self) -> tuple[list[str], list[str]]:
        try:
            temporary, permanent = all_failures(self.msg)
        except Exception as exc:  # a detector choking on odd input
            logger.info("flufl.bounce could not scan a message: %r", exc)
            return [], []

        def decoded(found: Iterable[bytes]) -> list[str]:
            out = [_clean(a.decode("ascii", "replace"), 254) for a in found]
            return sorted(a for a in out if "@" in a)

        return decoded(temporary), decoded(permanent)

    def is_feedback_report(self) -> bool:
        if self.msg.get_content_type() == "multipart/report":
            report_type = _clean(self.msg.get_param("report-type", "") or "").lower()
            if report_type.strip('"') == "feedback-report":
                return True
        return any(p.get_content_type() == "message/feedback-report" for p in self.parts)

    def is_autoreply(self) -> bool:
        sender = parseaddr(_header(self.msg, "From"))[1]
        subject = _one_line(_header(self.msg, "Subject"))
        if _BOUNCE_SENDER_RE.match(sender) or _BOUNCE_SUBJECT_RE.search(subject):
            return False
        auto_submitted = _header(self.msg, "Auto-Submitted").strip().lower()
        precedence = _header(self.msg, "Precedence").strip().lower()
        return bool(
            (auto_submitted and not auto_submitted.startswith("no"))
            or _header(self.msg, "X-Autoreply")
            or _header(self.msg, "X-Autorespond")
            or _header(self.msg, "X-Autoresponder")
            or precedence == "auto_reply"
            or _AUTOREPLY_SUBJECT_RE.search(subject)
        )

    # -- the events of each kind

    def failure_events(
        self, delivery_status: list[Message], temporary: list[str], permanent: list[str]
    ) -> list[InboundEvent]:
        returned = self.returned()
        per_message: list[Message] = []
        per_recipient: list[Message] = []
        for block in (b for part in delivery_status for b in _dsn_blocks(part)):
            # The per-message block comes first, but some MTAs leave it out: tell them apart
            # by their fields, not their place.
            if _header(block, "Action") or _header(block, "Final-Recipient"):
                per_recipient.append(block)
            else:
                per_message.append(block)
        extra_verp: list[str] = [*returned.verp_addresses]
        extra_ids: list[str] = []
        for block in per_message:
            extra_verp += [_address(_header(block, "X-Postfix-Sender"))]
            extra_ids += _message_ids(_header(block, "X-Original-Message-ID"))
        message_pk = self.verp(*[v for v in extra_verp if v])
        ids = [*returned.message_ids, *(i for i in extra_ids if i not in returned.message_ids)]
        common = {"message_pk": message_pk, "header_message_ids": ids[:_MAX_IDS]}

        events: list[InboundEvent] = []
        seen: set[str] = set()
        for block in per_recipient:
            action = _header(block, "Action").strip().lower()
            if action.startswith(("fail", "error")):
                type_, permanent_failure = E.BOUNCED, True
            elif action.startswith("delayed"):
                type_, permanent_failure = E.DEFERRED, False
            elif action.startswith("delivered"):
                type_, permanent_failure = E.DELIVERED, False
            else:  # relayed, expanded: nothing happened to the message yet
                continue
            recipient = ""
            for name in ("Original-Recipient", "Final-Recipient", "X-Actual-Recipient"):
                if recipient := _address(_header(block, name)):
                    break
            if recipient.lower() in seen:
                continue
            seen.add(recipient.lower())
            status_match = _STATUS_RE.search(_header(block, "Status"))
            diagnostic = _one_line(_header(block, "Diagnostic-Code"))
            diagnostic = re.sub(r"^[\w-]+;\s*", "", diagnostic)  # "smtp; " and the like
            if not diagnostic and type_ != E.DELIVERED:
                diagnostic = self.text_near(recipient)
            code, parsed_status, diagnostic = _reply(diagnostic)
            events.append(
                self.event(
                    type_,
                    Source.DSN,
                    recipient,
                    smtp_code=code,
                    smtp_status=status_match.group(0) if status_match else parsed_status,
                    diagnostic=diagnostic,
                    permanent=permanent_failure,
                    detail=diagnostic,
                    **common,
                )
            )
        # Addresses flufl.bounce found that no delivery-status block named (every non-RFC 3464
        # format): the diagnostic is the SMTP reply written next to the address.
        for recipients, type_, permanent_failure in (
            (permanent, E.BOUNCED, True),
            (temporary, E.DEFERRED, False),
        ):
            for recipient in recipients:
                if recipient.lower() in seen:
                    continue
                seen.add(recipient.lower())
                code, status, diagnostic = _reply(self.text_near(recipient))
                events.append(
                    self.event(
                        type_,
                        Source.DSN,
                        recipient,
                        smtp_code=code,
                        smtp_status=status,
                        diagnostic=diagnostic,
                        permanent=permanent_failure,
                        detail=diagnostic,
                        **common,
                    )
                )
        return events

    def text_near(self, address: str) -> str:
        """The SMTP reply written next to the address in a human-readable part: from the
        address's paragraph, the first line holding a reply code, with the lines continuing
        it; else the paragraph itself."""
        if not address:
            return ""
        needle = address.lower()
        for part in self.parts:
            if part.is_multipart() or part.get_content_type() not in ("text/plain", "text/html"):
                continue
            text = _part_text(part)
            if part.get_content_type() == "text/html":
                text = re.sub(r"<[^>]{0,2000}>", " ", text)
            at = text.lower().find(needle)
            if at < 0:
                continue
            start = text.rfind("\n", 0, at) + 1
            paragraph = re.split(r"\n[ \t]*\n|\n-{2,}|\n\s*\*{2,}", text[start:], maxsplit=1)[0]
            lines = paragraph.splitlines()
            for n, line in enumerate(lines):
                found = _REPLY_RE.search(line)
                if not found:
                    continue
                reply = [line[found.start() :]]
                code = found.group(1)
                for more in lines[n + 1 :]:
                    stripped = more.strip()
                    # "550-5.1.1 ..." continuation lines, or an indented wrap of the reply
                    if stripped.startswith(code) or more[:1] in " \t":
                        reply.append(stripped)
                    else:
                        break
                return _one_line(" ".join(reply), 1000)
            rest = paragraph[at - start + len(address) :]
            return _one_line(rest.strip(" \t\r\n:>"), 1000)
        return ""

    def complaint_events(self) -> list[InboundEvent]:
        returned = self.returned()
        report: Message | None = None
        for part in self.parts:
            if part.get_content_type() == "message/feedback-report":
                blocks = _dsn_blocks(part)
                report = blocks[0] if blocks else None
                break
        feedback_type = _header(report, "Feedback-Type").strip().lower() if report else ""
        original_from = _address(_header(report, "Original-Mail-From")) if report else ""
        recipients = [
            address
            for name in ("Original-Rcpt-To", "Removal-Recipient")
            for value in (_headers(report, name) if report else [])
            if (address := _address(value))
        ]
        recipients += returned.recipients
        recipient = recipients[0] if recipients else ""
        detail = "; ".join(
            f"{name}: {value}"
            for name in ("Feedback-Type", "User-Agent", "Source-IP", "Reported-Domain")
            if report is not None and (value := _one_line(_header(report, name), 200))
        )
        message_pk = self.verp(original_from, *returned.verp_addresses)
        if feedback_type and feedback_type not in _COMPLAINT_TYPES:
            # not-spam, virus, auth-failure (DMARC reports), other: no person complained.
            return [
                self.event(
                    E.UNKNOWN,
                    Source.ARF,
                    message_pk=message_pk,
                    header_message_ids=returned.message_ids,
                    detail=f"A feedback report that is not a complaint. {detail}",
                )
            ]
        return [
            self.event(
                E.COMPLAINED,
                Source.ARF,
                recipient,
                message_pk=message_pk,
                header_message_ids=returned.message_ids,
                detail=detail or "A feedback report (spam complaint).",
            )
        ]

    def autoreply_event(self) -> InboundEvent:
        ids = [
            *_message_ids(_header(self.msg, "In-Reply-To")),
            *reversed(_message_ids(_header(self.msg, "References"))),
        ]
        ids = [i for i in dict.fromkeys(_clean(i, 255) for i in ids) if i != self.own_id]
        returned = self.returned()
        ids += [i for i in returned.message_ids if i not in ids]
        sender = _address(_header(self.msg, "From"))
        subject = _one_line(_header(self.msg, "Subject"), 500)
        return self.event(
            E.AUTOREPLY,
            Source.REPLY,
            sender,
            message_pk=self.verp(),
            header_message_ids=ids[:_MAX_IDS],
            detail=f"Auto-reply: {subject}" if subject else "Auto-reply",
        )

    def unknown(self, why: str) -> InboundEvent:
        """Kept for a person to read; matched only on strong evidence (our VERP address or our
        Message-ID), never on the sender's address."""
        subject = _one_line(_header(self.msg, "Subject"), 300)
        sender = _one_line(_header(self.msg, "From"), 300)
        returned = self.returned()
        return self.event(
            E.UNKNOWN,
            Source.DSN,
            message_pk=self.verp(*returned.verp_addresses),
            header_message_ids=returned.message_ids,
            detail=f"{why} From: {sender or '-'}; Subject: {subject or '-'}",
        )


# --- recording -----------------------------------------------------------------------------


@dataclass
class BounceReport:
    messages: int = 0
    bounced_hard: int = 0
    bounced_soft: int = 0  # a permanent failure that does not condemn the address
    deferred: int = 0
    complaints: int = 0
    autoreplies: int = 0
    replies: int = 0  # a person's answers that reached the mailbox
    delivered: int = 0  # positive delivery reports
    unmatched: int = 0  # bounces, complaints, auto-replies matching none of our messages
    unknown: int = 0
    duplicates: int = 0  # seen before: nothing recorded again
    errors: int = 0  # mailboxes that could not be read

    def merge(self, other: BounceReport) -> None:
        for f in fields(self):
            setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))

    def as_dict(self) -> dict[str, int]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    def summary(self) -> str:
        return (
            f"Processed {self.messages} messages: bounced {self.bounced_hard} hard, "
            f"{self.bounced_soft} soft · deferred {self.deferred} · complaints "
            f"{self.complaints} · auto-replies {self.autoreplies} · replies {self.replies}"
            f" · delivered {self.delivered}"
            f" · unmatched {self.unmatched} · unknown {self.unknown} · duplicates "
            f"{self.duplicates}" + (f" · mailbox errors {self.errors}" if self.errors else "")
        )


def bounces_process(
    *,
    messages: Iterable[bytes],
    received_at: datetime | None = None,
    report: BounceReport | None = None,
    batch: int = 1,
) -> BounceReport:
    """Parse and record each raw message. A database error propagates (and a source then
    leaves the message unacknowledged, to be read again); a message we cannot read does not.
    `report`: counts are added to it as they happen, so a caller that catches an error still
    knows what was recorded before it.

    `batch`: record the events of that many messages at once, set-wise
    (tracking.services.events_apply_outcomes). Only for sources that acknowledge nothing
    (files): a source that acknowledges a message when the next one is asked for would
    acknowledge a whole batch before it is recorded. One message at a time otherwise."""
    from tracking.services import event_record, events_apply_outcomes

    report = report if report is not None else BounceReport()
    if batch <= 1:
        for raw in messages:
            report.messages += 1
            for event in bounce_parse(raw, received_at=received_at):
                result = event_record(event)
                duplicate = result.duplicate or result.event is None
                _count(report, event, None if duplicate else result.event.message_id, duplicate)
        return report
    pending: list[InboundEvent] = []
    parsed = 0

    def flush() -> None:
        nonlocal parsed
        outcomes = events_apply_outcomes(pending)
        report.messages += parsed
        for event, outcome in zip(pending, outcomes, strict=True):
            _count(report, event, outcome.message_id, outcome.word == "duplicate")
        pending.clear()
        parsed = 0

    for raw in messages:
        parsed += 1
        pending += bounce_parse(raw, received_at=received_at)
        if parsed >= batch:
            flush()
    if parsed:
        flush()
    return report


def _count(
    report: BounceReport, event: InboundEvent, message_id: int | None, duplicate: bool
) -> None:
    if duplicate:
        report.duplicates += 1
    elif event.type == E.UNKNOWN:
        report.unknown += 1
    elif message_id is None:
        report.unmatched += 1
    elif event.type == E.BOUNCED:
        # The same pure classification event_record gave its Rejection: no query.
        if _classify(event).is_hard:
            report.bounced_hard += 1
        else:
            report.bounced_soft += 1
    elif event.type == E.DEFERRED:
        report.deferred += 1
    elif event.type == E.COMPLAINED:
        report.complaints += 1
    elif event.type == E.AUTOREPLY:
        report.autoreplies += 1
    elif event.type == E.REPLIED:
        report.replies += 1
    elif event.type == E.DELIVERED:
        report.delivered += 1


def _classify(event: InboundEvent) -> Classification:
    return classify_rejection(
        smtp_code=event.smtp_code,
        smtp_status=event.smtp_status,
        text=event.diagnostic,
        esp_fields=event.esp_fields,
        reject_reason=event.reject_reason,
    )


# --- sources -------------------------------------------------------------------------------


def file_messages(paths: Iterable[str | Path]) -> Iterator[bytes]:
    for path in paths:
        yield Path(path).read_bytes()


def maildir_messages(directory: str | Path, *, delete: bool = False) -> Iterator[bytes]:
    """Unseen messages of a Maildir (new/, and cur/ without the S flag). Each one, once
    recorded, is moved to cur/ with the S (seen) flag, or deleted."""
    root = Path(directory)
    for sub in ("new", "cur"):
        folder = root / sub
        if not folder.is_dir():
            continue
        for name in sorted(os.listdir(folder)):
            if name.startswith("."):
                continue
            base, _, info = name.partition(":")
            flags = info[2:] if info.startswith("2,") else ""
            if sub == "cur" and "S" in flags:
                continue
            path = folder / name
            try:
                raw = path.read_bytes()
            except (FileNotFoundError, IsADirectoryError):  # taken by another reader
                continue
            yield raw
            try:
                if delete:
                    path.unlink()
                else:
                    path.rename(root / "cur" / f"{base}:2,{''.join(sorted({*flags, 'S'}))}")
            except FileNotFoundError:
                pass


def mbox_messages(path: str | Path, *, delete: bool = False) -> Iterator[bytes]:
    box = mailbox_lib.mbox(str(path), create=False)
    box.lock()
    try:
        for key in list(box.keys()):
            yield box.get_bytes(key)
            if delete:
                box.remove(key)
        box.flush()
    finally:
        box.unlock()
        box.close()


def mailbox_messages(mailbox, *, deadline: float | None = None) -> Iterator[bytes]:
    """The messages waiting in an account's BounceMailbox, over IMAP or POP3."""
    if mailbox.protocol == mailbox.Protocol.POP3:
        yield from _pop3_messages(mailbox, deadline)
    else:
        yield from _imap_messages(mailbox, deadline)


_TIMEOUT = 60


def _ssl_context() -> ssl.SSLContext:
    return ssl.create_default_context()


def _pop3_messages(mailbox, deadline: float | None) -> Iterator[bytes]:
    if mailbox.use_ssl:
        # An explicit context: the stdlib's default for POP3_SSL checks no certificate.
        conn: poplib.POP3 = poplib.POP3_SSL(
            mailbox.host, mailbox.effective_port, timeout=_TIMEOUT, context=_ssl_context()
        )
    else:
        conn = poplib.POP3(mailbox.host, mailbox.effective_port, timeout=_TIMEOUT)
    try:
        conn.user(mailbox.username)
        conn.pass_(mailbox.password)
        count, _size = conn.stat()
        for number in range(1, count + 1):
            if deadline is not None and time.monotonic() > deadline:
                break
            _response, lines, _octets = conn.retr(number)
            yield b"\r\n".join(lines) + b"\r\n"
            if mailbox.delete_after:
                conn.dele(number)
    finally:
        # QUIT commits the deletions of the messages recorded so far.
        try:
            conn.quit()
        except (OSError, poplib.error_proto):
            conn.close()


def _imap_messages(mailbox, deadline: float | None) -> Iterator[bytes]:
    if mailbox.use_ssl:
        conn: imaplib.IMAP4 = imaplib.IMAP4_SSL(
            mailbox.host, mailbox.effective_port, ssl_context=_ssl_context(), timeout=_TIMEOUT
        )
    else:
        conn = imaplib.IMAP4(mailbox.host, mailbox.effective_port, timeout=_TIMEOUT)
    deleted = False
    try:
        conn.login(mailbox.username, mailbox.password)
        typ, data = conn.select(_imap_quote(mailbox.folder or "INBOX"))
        if typ != "OK":
            raise imaplib.IMAP4.error(f"cannot open folder {mailbox.folder!r}: {data!r}")
        typ, data = conn.uid("SEARCH", None, "UNSEEN")
        if typ != "OK":
            raise imaplib.IMAP4.error(f"SEARCH failed: {data!r}")
        uids = b" ".join(d for d in data if d).split()
        for uid in uids:
            if deadline is not None and time.monotonic() > deadline:
                break
            typ, data = conn.uid("FETCH", uid, "(BODY.PEEK[])")
            raw = next((item[1] for item in data if isinstance(item, tuple)), None)
            if typ != "OK" or raw is None:
                continue  # expunged meanwhile
            yield raw
            flag = r"(\Deleted)" if mailbox.delete_after else r"(\Seen)"
            conn.uid("STORE", uid, "+FLAGS", flag)
            deleted |= mailbox.delete_after
    finally:
        try:
            if deleted:
                conn.expunge()
            conn.logout()
        except (OSError, imaplib.IMAP4.error):
            pass


def _imap_quote(folder: str) -> str:
    if re.fullmatch(r"[\w./-]+", folder):
        return folder
    return '"' + folder.replace("\\", "\\\\").replace('"', '\\"') + '"'


def mailbox_poll(*, mailbox_id: int, deadline: float | None = None) -> BounceReport:
    """Read and record one account's bounce mailbox; a connection or login failure is kept on
    the mailbox (last_error) and counted, never raised, so one bad mailbox does not stop the
    others."""
    from django.utils import timezone

    from tracking.models import BounceMailbox

    mailbox = BounceMailbox.objects.select_related("account").filter(pk=mailbox_id).first()
    if mailbox is None:
        return BounceReport()
    error = ""
    report = BounceReport()
    try:
        source = mailbox_messages(mailbox, deadline=deadline)
        try:
            bounces_process(messages=source, report=report)
        finally:
            source.close()
    except (OSError, EOFError, imaplib.IMAP4.error, poplib.error_proto) as exc:
        error = f"{type(exc).__name__}: {exc}"
        logger.warning("bounce mailbox %s (%s): %s", mailbox.pk, mailbox, error)
        report.errors += 1
    BounceMailbox.objects.filter(pk=mailbox.pk).update(
        last_polled_at=timezone.now(), last_error=error[:2000]
    )
    return report
