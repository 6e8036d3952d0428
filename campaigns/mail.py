"""Builds the email for one message: renders the step for the contact, adds our headers, the
open pixel and rewritten links."""

from __future__ import annotations

import binascii
import functools
import html
import itertools
import re
import secrets
from dataclasses import dataclass, field
from email.header import Header
from email.utils import format_datetime, formataddr

from django.conf import settings
from django.db.models import Model
from django.template import Context, Engine, Template
from django.template.base import TextNode, Variable, VariableNode
from django.template.defaulttags import AutoEscapeControlNode
from django.utils import timezone

from campaigns.models import CampaignStep, SendingAccount
from tracking import tokens

_ENGINE = Engine(autoescape=True)
_HREF = re.compile(r"""(href\s*=\s*)(["'])(https?://[^"']+)\2""", re.IGNORECASE)
_BODY_END = re.compile(r"</body\s*>", re.IGNORECASE)
# The same, case-sensitive, for ASCII HTML lower-cased first (same length, same offsets): a
# case-insensitive pattern cannot use re's fast search for its literal start. Over the send
# benchmark's 3 KB body: 14 us to find the links, against 3 us with the lower-casing.
_HREF_LOWER = re.compile(_HREF.pattern)
_BODY_END_LOWER = re.compile(_BODY_END.pattern)
# One address, no display name, no spaces or angle brackets: what may go in RCPT TO.
_ADDRESS = re.compile(r"^[^@\s<>,;\"]+@[^@\s<>,;\"]+\.[^@\s<>,;\"]+$")


class RenderError(Exception):
    """The step's template does not render for this contact (our side: never the contact's)."""


@dataclass
class TemplateCache:
    """Compiled step templates, kept for a dispatch pass so each is parsed once. The source
    is part of the key: a step edited meanwhile is compiled again."""

    _compiled: dict[tuple[int, str, str], Template] = field(default_factory=dict)
    _plans: dict[tuple[int, str, str], list | None] = field(default_factory=dict)

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
            self._plans[key] = _plan(self._compiled[key])
        return self._compiled[key]

    def render(self, step: CampaignStep, part: str, context: dict) -> str:
        """The part rendered with `context`, as `get(...).render(Context(context))` renders
        it. A template made only of text and plain variables (what mail merges mostly are) is
        rendered from its pieces, without a Context and a node walk per email."""
        template = self.get(step, part)
        plan = self._plans[(step.pk, part, getattr(step, part))]
        if plan is not None:
            rendered = _render_plan(plan, context)
            if rendered is not None:
                return rendered
        return template.render(Context(context))


# Model -> names of its plain (concrete, non-relation) fields, which a template reads as
# attributes without side effects.
_PLAIN_FIELDS: dict[type, frozenset[str]] = {}
_MISSING = object()


def _plan(template: Template) -> list | None:
    """The template as pieces: literal strings and (lookups, escape) for plain variables; None
    when it has anything else (a tag, a filter, a literal, a translation)."""
    nodes = list(template.nodelist)
    escape = template.engine.autoescape
    if len(nodes) == 1 and type(nodes[0]) is AutoEscapeControlNode:
        escape = nodes[0].setting
        nodes = list(nodes[0].nodelist)
    pieces: list = []
    for node in nodes:
        if type(node) is TextNode:
            pieces.append(node.s)
            continue
        if type(node) is not VariableNode:
            return None
        expression = node.filter_expression
        variable = expression.var
        if (
            expression.filters
            or not isinstance(variable, Variable)
            or not variable.lookups
            or variable.translate
        ):
            return None
        pieces.append((variable.lookups, escape))
    return pieces


def _render_plan(plan: list, context: dict) -> str | None:
    """The pieces rendered as Django would render them, or None when a variable is not a
    plain string reached through plain model fields (then Django renders the template: it
    knows about callables, missing values, numbers, dates and localisation)."""
    out: list[str] = []
    for piece in plan:
        if type(piece) is str:
            out.append(piece)
            continue
        lookups, escape = piece
        value = context.get(lookups[0], _MISSING)
        for bit in lookups[1:]:
            if not isinstance(value, Model) or callable(value):
                return None
            fields = _PLAIN_FIELDS.get(type(value))
            if fields is None:
                # Django tries value[bit] before the attribute: only for models without it.
                fields = _PLAIN_FIELDS[type(value)] = frozenset(
                    ()
                    if hasattr(type(value), "__getitem__")
                    else (f.attname for f in value._meta.concrete_fields if not f.is_relation)
                )
            # A loaded field's value is in the instance's __dict__ (a deferred one is not:
            # reading it would query, so Django does that).
            value = value.__dict__.get(bit, _MISSING) if bit in fields else _MISSING
        if not isinstance(value, str):
            return None
        if escape:
            # conditional_escape(), without its lazy-string wrapper: the same text.
            value = value.__html__() if hasattr(value, "__html__") else html.escape(value)
        out.append(value)
    return "".join(out)


def tracking_url(kind: str, token: str, base: str | None = None) -> str:
    """`base`: settings.LEADCENTER_BASE_URL, when the caller has read it already."""
    base = settings.LEADCENTER_BASE_URL if base is None else base
    return f"{base}/t/o/{token}.gif" if kind == tokens.OPEN else f"{base}/t/{kind}/{token}/"


def _rewrite_links(html: str, message_pk: int, base: str, secret: str) -> str:
    """Every absolute http(s) link but our own, as a click-tracking URL."""
    own = base + "/t/"
    found = _HREF_LOWER.finditer(html.lower()) if html.isascii() else _HREF.finditer(html)
    pieces, done = [], 0
    for match in found:
        start, end = match.span(3)
        url = html[start:end]
        if url.startswith(own):
            continue
        pieces += (
            html[done:start],
            tracking_url(
                tokens.CLICK, tokens.make_click_token(message_pk, url, secret=secret), base
            ),
        )
        done = end
    if not pieces:
        return html
    pieces.append(html[done:])
    return "".join(pieces)


def _add_pixel(html: str, message_pk: int, base: str, secret: str) -> str:
    """The open pixel, before the first </body>, or at the end."""
    src = tracking_url(tokens.OPEN, tokens.make_token(tokens.OPEN, message_pk, secret=secret), base)
    pixel = f'<img src="{src}" width="1" height="1" alt="" style="display:none">'
    end = _BODY_END_LOWER.search(html.lower()) if html.isascii() else _BODY_END.search(html)
    if end:
        return html[: end.start()] + pixel + html[end.start() :]
    return html + pixel


def envelope_sender(account: SendingAccount, message_pk: int, *, secret: str | None = None) -> str:
    """MAIL FROM: the account's VERP address for the message, when it has a return path."""
    if account.return_path:
        return tokens.verp_address(account.return_path, message_pk, secret=secret)
    return account.from_email


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


def _text_part(subtype: str, text: str, boundary: str = "") -> bytes:
    """A text part, its line ends CRLF (a lone CR too: it would go bare even through
    quoted-printable). As it is (7bit, RFC 2045 2.7) when it can go so: ASCII, no NUL, no
    line over 998 characters (RFC 5322 2.1.1), and without the multipart boundary. Otherwise
    quoted-printable, which holds anything (and never "=_", the boundary's start). Most
    rendered emails are plain ASCII HTML: encoding them costs more than the rest of building
    the message, and makes them bigger."""
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    if (
        text.isascii()
        and "\0" not in text
        and (not boundary or boundary not in text)
        and max(map(len, text.split("\n"))) <= 998
    ):
        encoding, body = "7bit", text.encode("ascii")
    else:
        encoding, body = "quoted-printable", binascii.b2a_qp(text.encode("utf-8"))
    return (
        f'Content-Type: text/{subtype}; charset="utf-8"\r\n'
        f"Content-Transfer-Encoding: {encoding}\r\n\r\n"
    ).encode() + body.replace(b"\n", b"\r\n")


# A MIME boundary needs only be absent from the parts: a quoted-printable body cannot hold
# "=_" ("=" is written "=3D"), so one that starts with it is safe, and a part that goes as it
# is must not hold it (_text_part); the rest makes it unique.
_BOUNDARY_PREFIX = f"=_lc_{secrets.token_hex(6)}_"
_boundaries = itertools.count()


def build_message(headers: list[tuple[str, str]], text: str, html: str) -> bytes:
    """The MIME message, built directly: the email package's default policy parses every
    header it is given and costs more than the SMTP conversation itself."""
    head = "".join(f"{name}: {value}\r\n" for name, value in headers) + "MIME-Version: 1.0\r\n"
    if not html:
        return head.encode() + _text_part("plain", text) + b"\r\n"
    boundary = f"{_BOUNDARY_PREFIX}{next(_boundaries)}"
    head += f'Content-Type: multipart/alternative; boundary="{boundary}"\r\n\r\n'
    sep = f"\r\n--{boundary}\r\n".encode()
    return (
        head.encode()
        + sep[2:]
        + _text_part("plain", text, boundary)
        + sep
        + _text_part("html", html, boundary)
        + f"\r\n--{boundary}--\r\n".encode()
    )


_date_cache: tuple[int, str] = (0, "")


def _date_header() -> str:
    """The Date header for now, formatted once a second."""
    global _date_cache
    now = timezone.now()
    second = int(now.timestamp())
    if _date_cache[0] != second:
        _date_cache = (second, format_datetime(now.replace(microsecond=0)))
    return _date_cache[1]


@functools.lru_cache(maxsize=256)
def _from_header(name: str, address: str) -> str:
    return _address(name, address)


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
    base, secret = settings.LEADCENTER_BASE_URL, settings.SECRET_KEY
    unsubscribe_token = tokens.make_token(tokens.UNSUBSCRIBE, message_pk, secret=secret)
    unsubscribe = tracking_url(tokens.UNSUBSCRIBE, unsubscribe_token, base)
    context = {"contact": contact, "unsubscribe_url": unsubscribe, "step": step}
    try:
        subject = cache.render(step, "subject", context).strip()
        text = cache.render(step, "text_body", context)
        html = cache.render(step, "html_body", context)
    except RenderError:
        raise
    except Exception as exc:  # a template tag failing at render time
        raise RenderError(f"step {step.position}: {exc}") from exc
    if html and track_clicks:
        html = _rewrite_links(html, message_pk, base, secret)
    if html and track_opens:
        html = _add_pixel(html, message_pk, base, secret)

    targets = [f"<{unsubscribe}>"]
    if mailto := settings.LEADCENTER_UNSUBSCRIBE_MAILTO:
        targets.append(f"<mailto:{mailto}?subject=unsubscribe-{unsubscribe_token}>")
    headers = [
        ("From", _from_header(account.from_name, account.from_email)),
        ("To", _address(contact.full_name if contact is not None else "", recipient_email)),
        ("Subject", _header(subject_prefix + subject)),
        ("Date", _date_header()),
        ("Message-ID", message_id),
    ]
    if thread:
        headers += [("In-Reply-To", thread[-1]), ("References", _header(" ".join(thread)))]
    headers += [
        ("List-Unsubscribe", ", ".join(targets)),
        ("List-Unsubscribe-Post", "List-Unsubscribe=One-Click"),
    ]
    return OutgoingEmail(
        envelope_from=envelope_sender(account, message_pk, secret=secret),
        recipient=recipient_email,
        data=build_message(headers, text, html),
    )
