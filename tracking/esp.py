"""Sending one pre-built email through an ESP's API with django-anymail.

The sender composes every email as raw MIME (campaigns.mail.compose) for SMTP. An account with
`esp` set sends through anymail instead; anymail backends take Django EmailMessage objects, so
the raw message is read back into one: the same From, To, Subject, text and HTML bodies, and
every other header (our Message-ID, Date, In-Reply-To, References, List-Unsubscribe,
List-Unsubscribe-Post) passed on as is. The ESP's message id comes back so its webhooks can be
matched to the message (tracking.selectors.message_match).
"""

from __future__ import annotations

from email import policy
from email.message import EmailMessage
from email.parser import BytesParser
from email.utils import getaddresses

from anymail.exceptions import AnymailAPIError, AnymailError
from django.core.mail import EmailMultiAlternatives, get_connection

from campaigns.models import SendingAccount
from campaigns.smtp import AccountError

# anymail recipient statuses that mean the ESP took the email ("unknown": the ESP's answer
# had no per-recipient status, but the call succeeded).
ACCEPTED = frozenset({"sent", "queued", "scheduled", "unknown"})
# Headers Django's EmailMessage writes itself from its own fields.
_OWN_HEADERS = frozenset(
    {
        "from",
        "to",
        "cc",
        "bcc",
        "reply-to",
        "subject",
        "mime-version",
        "content-type",
        "content-transfer-encoding",
        "return-path",
    }
)
# ESP answers that say our account or the ESP itself is the problem, not this recipient:
# bad API key or permissions, rate limited, the ESP failing. Like an SMTP relay refusing us.
_ACCOUNT_HTTP_STATUSES = frozenset({401, 403, 429})


def esp_backend(esp: str) -> str:
    """An account's `esp` as an email backend path: anymail's backend name ("mailgun",
    "amazon_ses", "postmark", "test") or a full dotted path to a backend class."""
    esp = esp.strip()
    return esp if "." in esp else f"anymail.backends.{esp}.EmailBackend"


def esp_send(
    *, account: SendingAccount, data: bytes, envelope_from: str, recipient: str
) -> tuple[bool, str, str]:
    """Send one raw message to one recipient through the account's anymail backend.

    Returns (accepted, ESP message id, detail). Not accepted: the ESP refused this recipient
    (invalid, on its suppression list) or this email (an API error about its content).
    Raises AccountError when the failure is ours or the ESP's, not the recipient's (no or a
    bad API key, no permission, rate limited, the ESP unreachable or failing), so the caller
    gives the claim back as it does when an SMTP relay refuses us.

    `envelope_from` is not passed on: an ESP owns the envelope of what it sends (its bounce
    processing is what feeds the webhooks), and several ESPs refuse a custom one.
    """
    parsed = BytesParser(policy=policy.default).parsebytes(data)
    email = _django_message(parsed, recipient)
    try:
        connection = get_connection(
            esp_backend(account.esp), fail_silently=False, ignore_recipient_status=True
        )
        connection.send_messages([email])
    except AnymailAPIError as exc:
        status_code = getattr(exc, "status_code", None)
        if status_code is None or status_code >= 500 or status_code in _ACCOUNT_HTTP_STATUSES:
            raise AccountError(f"{account.esp}: {_short(exc)}") from exc
        return False, "", f"{account.esp}: {_short(exc)}"
    except AnymailError as exc:  # an address or feature anymail cannot send: this email
        return False, "", f"{account.esp}: {_short(exc)}"
    except ImportError as exc:
        raise AccountError(f"{account.esp}: no such anymail backend ({exc})") from exc

    status = email.anymail_status
    per_recipient = status.recipients.get(recipient) or next(iter(status.recipients.values()), None)
    if per_recipient is not None:
        message_id, state = per_recipient.message_id, per_recipient.status
    else:
        message_id = status.message_id if not isinstance(status.message_id, set) else None
        state = "unknown"
    esp_message_id = "" if message_id is None else str(message_id)
    accepted = state in ACCEPTED
    detail = f"{account.esp}: {state}" + (f" as {esp_message_id}" if esp_message_id else "")
    return accepted, esp_message_id[:255], detail


def _django_message(parsed: EmailMessage, recipient: str) -> EmailMultiAlternatives:
    to_header = str(parsed.get("To", "") or "")
    addresses = [addr for _name, addr in getaddresses([to_header])]
    # Keep the display name when the header names this recipient; else the bare address.
    to = to_header if [a.lower() for a in addresses] == [recipient.lower()] else recipient
    text_part = parsed.get_body(("plain",))
    html_part = parsed.get_body(("html",))
    email = EmailMultiAlternatives(
        subject=str(parsed.get("Subject", "") or ""),
        body=text_part.get_content() if text_part is not None else "",
        from_email=str(parsed.get("From", "") or ""),
        to=[to],
        reply_to=[str(parsed["Reply-To"])] if parsed.get("Reply-To") else None,
        headers={
            name: str(value) for name, value in parsed.items() if name.lower() not in _OWN_HEADERS
        },
    )
    if html_part is not None:
        email.attach_alternative(html_part.get_content(), "text/html")
    for part in parsed.iter_attachments():
        email.attach(part.get_filename(), part.get_content(), part.get_content_type())
    return email


def _short(exc: BaseException) -> str:
    try:
        text = str(exc)
    except Exception:  # anymail describes the HTTP response, which may be missing
        text = " ".join(str(a) for a in exc.args)
    return " ".join(text.split())[:500]
