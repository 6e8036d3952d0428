"""Builds the email for one message: renders the step for the contact, adds our headers, the
open pixel and rewritten links."""

from __future__ import annotations

import binascii
import re
import secrets
from dataclasses import dataclass, field
from email.header import Header
from email.utils import format_datetime, formataddr

from django.conf import settings
from django.template import Context, Engine, Template
from django.utils import timezone

from campaigns.models import CampaignStep, SendingAccount
from tracking import tokens

_ENGINE = Engine(autoescape=True)
_HREF = re.compile(r"""(href\s*=\s*)(["'])(https?://[^"']+)\2""", re.IGNORECASE)
_BODY_END = re.compile(r"</body\s*>", re.IGNORECASE)
# One address, no display name, no spaces or angle brackets: what may go in RCPT TO.
_ADDRESS = re.compile(r"^[^@\s<>,;\"]+@[^@\s<>,;\"]+\.[^@\s<>,;\"]+$")


class RenderError(Exception):
    """The step's template does not render for this contact (our side: never the contact's)."""


@dataclass
class TemplateCache:
    """Compiled step templates, kept for a dispatch pass so each is parsed once. The source
    is part of the key: a step edited meanwhile is compiled again."""

    _compiled: dict[tuple[int, str, str], Template] = field(default_factory=dict)

    def get(self, step: CampaignStep, part: str) -> Template:
        source = getattr(step, part)
        key = (step.pk, part, source)
        if key not in self._compiled:
            if part != "html_body":
                # Subjects and text bodies are not HTML: no escaping of "&" or quotes.
                source = "{% autoescape off %}" + source + "{% endautoescape %}"
            try:
                self._compiled[key] = _ENGINE.from_string(source)
            except Exception as exc:  # TemplateSyntaxError and friends
                raise RenderError(f"step {step.position} {part}: {exc}") from exc
        return self._compiled[key]


def tracking_url(kind: str, token: str) -> str:
    base = settings.LEADCENTER_BASE_URL
    return f"{base}/t/o/{token}.gif" if kind == tokens.OPEN else f"{base}/t/{kind}/{token}/"


def unsubscribe_url(message_pk: int) -> str:
    return tracking_url(tokens.UNSUBSCRIBE, tokens.make_token(tokens.UNSUBSCRIBE, message_pk))


def _rewrite_links(html: str, message_pk: int) -> str:
    own = settings.LEADCENTER_BASE_URL + "/t/"

    def replace(match: re.Match) -> str:
        url = match.group(3)
        if url.startswith(own):
            return match.group(0)
        tracked = tracking_url(tokens.CLICK, tokens.make_click_token(message_pk, url))
        return f"{match.group(1)}{match.group(2)}{tracked}{match.group(2)}"

    return _HREF.sub(replace, html)


def _add_pixel(html: str, message_pk: int) -> str:
    src = tracking_url(tokens.OPEN, tokens.make_token(tokens.OPEN, message_pk))
    pixel = f'<img src="{src}" width="1" height="1" alt="" style="display:none">'
    if _BODY_END.search(html):
        return _BODY_END.sub(lambda m: pixel + m.group(0), html, count=1)
    return html + pixel


@dataclass(frozen=True)
class OutgoingEmail:
    envelope_from: str
    recipient: str
    data: bytes  # the whole message, CRLF line ends, ready for SMTP DATA


def _header(value: str) -> str:
    """A header value as it goes on the wire: encoded words for non-ASCII, folded if long."""
    value = " ".join(value.split())  # no header injection through a rendered newline
    if value.isascii() and len(value) <= 900:
        return value
    return Header(value, "utf-8", maxlinelen=76).encode(linesep="\r\n")


def _address(name: str, address: str) -> str:
    return formataddr((" ".join(name.split()), address), charset="utf-8") if name else address


def _text_part(subtype: str, text: str) -> bytes:
    body = binascii.b2a_qp(text.replace("\r\n", "\n").encode("utf-8"))
    return (
        f'Content-Type: text/{subtype}; charset="utf-8"\r\n'
        "Content-Transfer-Encoding: quoted-printable\r\n\r\n"
    ).encode() + body.replace(b"\n", b"\r\n")


def build_message(headers: list[tuple[str, str]], text: str, html: str) -> bytes:
    """The MIME message, built directly: the email package's default policy parses every
    header it is given and costs more than the SMTP conversation itself."""
    head = "".join(f"{name}: {value}\r\n" for name, value in headers) + "MIME-Version: 1.0\r\n"
    if not html:
        return head.encode() + _text_part("plain", text) + b"\r\n"
    boundary = f"=_lc_{secrets.token_hex(12)}"
    head += f'Content-Type: multipart/alternative; boundary="{boundary}"\r\n\r\n'
    sep = f"\r\n--{boundary}\r\n".encode()
    return (
        head.encode()
        + sep[2:]
        + _text_part("plain", text)
        + sep
        + _text_part("html", html)
        + f"\r\n--{boundary}--\r\n".encode()
    )


def compose(
    *,
    message_pk: int,
    message_id: str,
    step: CampaignStep,
    contact,
    recipient_email: str,
    account: SendingAccount,
    track_opens: bool,
    track_clicks: bool,
    thread: list[str] | None = None,
    cache: TemplateCache,
    subject_prefix: str = "",
) -> OutgoingEmail:
    """The full email for one message. `thread` lists the Message-IDs of earlier steps."""
    if not _ADDRESS.match(recipient_email):
        raise RenderError(f"not an email address: {recipient_email!r}")
    unsubscribe = unsubscribe_url(message_pk)
    context = {"contact": contact, "unsubscribe_url": unsubscribe, "step": step}
    try:
        subject = cache.get(step, "subject").render(Context(context)).strip()
        text = cache.get(step, "text_body").render(Context(context))
        html = cache.get(step, "html_body").render(Context(context))
    except RenderError:
        raise
    except Exception as exc:  # a template tag failing at render time
        raise RenderError(f"step {step.position}: {exc}") from exc
    if html and track_clicks:
        html = _rewrite_links(html, message_pk)
    if html and track_opens:
        html = _add_pixel(html, message_pk)

    targets = [f"<{unsubscribe}>"]
    if settings.LEADCENTER_UNSUBSCRIBE_MAILTO:
        token = tokens.make_token(tokens.UNSUBSCRIBE, message_pk)
        targets.append(
            f"<mailto:{settings.LEADCENTER_UNSUBSCRIBE_MAILTO}?subject=unsubscribe-{token}>"
        )
    headers = [
        ("From", _address(account.from_name, account.from_email)),
        ("To", _address(contact.full_name if contact is not None else "", recipient_email)),
        ("Subject", _header(subject_prefix + subject)),
        ("Date", format_datetime(timezone.now())),
        ("Message-ID", message_id),
    ]
    if thread:
        headers += [("In-Reply-To", thread[-1]), ("References", _header(" ".join(thread)))]
    headers += [
        ("List-Unsubscribe", ", ".join(targets)),
        ("List-Unsubscribe-Post", "List-Unsubscribe=One-Click"),
    ]
    envelope_from = (
        tokens.verp_address(account.return_path, message_pk)
        if account.return_path
        else account.from_email
    )
    return OutgoingEmail(
        envelope_from=envelope_from,
        recipient=recipient_email,
        data=build_message(headers, text, html),
    )
