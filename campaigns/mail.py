"""Builds the email for one message: renders the step for the contact, adds our headers, the
open pixel and rewritten links."""

from __future__ import annotations

import binascii
import functools
import html
import itertools
import re
import secrets
import time
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
    _tracked: dict[tuple, _TrackedHtml | None] = field(default_factory=dict)

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

    def tracked_html(
        self, step: CampaignStep, base: str, clicks: bool, opens: bool
    ) -> _TrackedHtml | None:
        """The step's HTML body with its tracking laid out once (_TrackedHtml), or None when
        each email's HTML must be searched for its links and end of body."""
        key = (step.pk, step.html_body, base, clicks, opens)
        if key not in self._tracked:
            self.get(step, "html_body")
            plan = self._plans[(step.pk, "html_body", step.html_body)]
            self._tracked[key] = _TrackedHtml.lay_out(plan, base, clicks, opens)
        return self._tracked[key]


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
        value = _value(piece, context)
        if value is None:
            return None
        out.append(value)
    return "".join(out)


def _value(piece: tuple, context: dict) -> str | None:
    """A plain variable's text, escaped when its template escapes, as _render_plan renders it."""
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
        return value.__html__() if hasattr(value, "__html__") else html.escape(value)
    return value


def tracking_url(kind: str, token: str, base: str | None = None) -> str:
    """`base`: settings.LEADCENTER_BASE_URL, when the caller has read it already."""
    base = settings.LEADCENTER_BASE_URL if base is None else base
    return f"{base}/t/o/{token}.gif" if kind == tokens.OPEN else f"{base}/t/{kind}/{token}/"


def _rewrite_links(html: str, signer: tokens.MessageTokens, base: str) -> str:
    """Every absolute http(s) link but our own, as a click-tracking URL."""
    own = base + "/t/"
    found = _HREF_LOWER.finditer(html.lower()) if html.isascii() else _HREF.finditer(html)
    pieces, done = [], 0
    for match in found:
        start, end = match.span(3)
        url = html[start:end]
        if url.startswith(own):
            continue
        pieces += (html[done:start], tracking_url(tokens.CLICK, signer.click(url), base))
        done = end
    if not pieces:
        return html
    pieces.append(html[done:])
    return "".join(pieces)


def _pixel(signer: tokens.MessageTokens, base: str) -> str:
    src = tracking_url(tokens.OPEN, signer.token(tokens.OPEN), base)
    return f'<img src="{src}" width="1" height="1" alt="" style="display:none">'


def _add_pixel(html: str, signer: tokens.MessageTokens, base: str) -> str:
    """The open pixel, before the first </body>, or at the end."""
    end = _BODY_END_LOWER.search(html.lower()) if html.isascii() else _BODY_END.search(html)
    if end:
        return html[: end.start()] + _pixel(signer, base) + html[end.start() :]
    return html + _pixel(signer, base)


# Where a variable's value stands while a template's links and end of body are found.
_SLOT = "\x01"
# Text after a value that would make the value part of a link: the rest of "href=" and a quote.
_LINK_AFTER = re.compile(r"""[a-z]*\s*(?:=\s*)?["']""", re.IGNORECASE)
# Text before a value that would put the value in a link's URL.
_LINK_BEFORE = re.compile(r"""href\s*=\s*["'][^"']*\Z""", re.IGNORECASE)
# A URL that escaping leaves as it is, without quotes, spaces or markup.
_PLAIN_URL = re.compile(r"https?://[A-Za-z0-9._~:/?#\[\]@!$()*+,;=%-]+")


@dataclass(frozen=True)
class _Click:
    url: str


_PIXEL = object()


@dataclass(frozen=True)
class _TrackedHtml:
    """An HTML body made of text and plain variables, with its tracked links and the place
    of its open pixel found once, in the template, instead of in every email: an email's HTML
    is then its pieces joined, each link's click URL and the pixel made for its message. The
    same HTML as rendering it and then tracking it (_rewrite_links, _add_pixel) gives; a
    template where a value could change what is a link, or where the body ends, is not laid
    out (lay_out gives None) and each email is searched."""

    items: tuple  # str: text; tuple: a variable (_value); _Click: a link's URL; _PIXEL

    @classmethod
    def lay_out(cls, plan: list | None, base: str, clicks: bool, opens: bool):
        if plan is None:
            return None
        # Our unsubscribe URL, in a link or in the text: the same for every email but its
        # token's URL-safe letters, and a link of ours, which is never rewritten.
        unsubscribe = f"{base}/t/{tokens.UNSUBSCRIBE}/{'A' * 24}/"
        if not _PLAIN_URL.fullmatch(unsubscribe):
            return None
        text, spans, length = [], [], 0
        for piece in plan:
            if type(piece) is str:
                if _SLOT in piece:
                    return None
                stand_in = piece
            elif not piece[1]:  # not escaped: a value may hold markup
                return None
            else:
                stand_in = unsubscribe if piece[0] == ("unsubscribe_url",) else _SLOT
                spans.append((length, length + len(stand_in), piece))
            text.append(stand_in)
            length += len(stand_in)
        html = "".join(text)
        if not html.isascii() or not html.replace(_SLOT, ""):
            # Only ASCII text is searched as it is; an empty text may render empty, which is
            # not tracked at all.
            return None
        for at, _end, _piece in spans:
            if html[at] == _SLOT and (
                html.rfind("<", 0, at) > html.rfind(">", 0, at)  # inside a tag
                or _LINK_BEFORE.search(html, 0, at)
                or _LINK_AFTER.match(html, at + 1)
                or html.startswith(_SLOT, at + 1)
            ):
                return None
        lowered = html.lower()
        inserts = []
        if clicks:
            own = base + "/t/"
            for match in _HREF_LOWER.finditer(lowered):
                start, end = match.span(3)
                url = html[start:end]
                if url.startswith(own):
                    continue
                if any(at < end and start < stop for at, stop, _piece in spans):
                    return None  # a link made with a value: searched in each email
                inserts.append((start, end, _Click(url)))
        if opens:
            # The first end of body left once the links are rewritten: not one in a link's URL.
            at = next(
                (
                    end.start()
                    for end in _BODY_END_LOWER.finditer(lowered)
                    if not any(start <= end.start() < stop for start, stop, _ in inserts)
                ),
                len(html),
            )
            inserts.append((at, at, _PIXEL))
        items, done = [], 0
        for start, end, item in sorted(inserts + spans, key=lambda insert: insert[:2]):
            if start > done:
                items.append(html[done:start])
            items.append(item)
            done = end
        if done < len(html):
            items.append(html[done:])
        return cls(tuple(items))

    def render(self, context: dict, signer: tokens.MessageTokens, base: str) -> str | None:
        """The email's HTML, tracked; None when a value is not plain text (_value)."""
        out: list[str] = []
        for item in self.items:
            kind = type(item)
            if kind is str:
                out.append(item)
            elif kind is tuple:
                value = _value(item, context)
                if value is None:
                    return None
                out.append(value)
            elif item is _PIXEL:
                out.append(_pixel(signer, base))
            else:
                out.append(tracking_url(tokens.CLICK, signer.click(item.url), base))
        return "".join(out)


def envelope_sender(account: SendingAccount, signer: tokens.MessageTokens) -> str:
    """MAIL FROM: the account's VERP address for the message, when it has a return path."""
    if account.return_path:
        return signer.verp(account.return_path)
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
    name = " ".join(name.split())
    if not name:
        return address
    if name.isascii() and address.isascii() and not _SPECIALS.search(name):
        return f"{name} <{address}>"  # what formataddr() gives such a name, without its work
    return formataddr((name, address), charset="utf-8")


# The characters that make formataddr() quote a display name (email.utils.specialsre).
_SPECIALS = re.compile(r'[][\\()<>@,:;".]')


def _text_part(subtype: str, text: str, boundary: str = "") -> bytes:
    """A text part, its line ends CRLF (a lone CR too: it would go bare even through
    quoted-printable). As it is (7bit, RFC 2045 2.7) when it can go so: ASCII, no NUL, no
    line over 998 characters (RFC 5322 2.1.1), and without the multipart boundary. Otherwise
    quoted-printable, which holds anything (and never "=_", the boundary's start). Most
    rendered emails are plain ASCII HTML: encoding them costs more than the rest of building
    the message, and makes them bigger."""
    if "\r" in text:
        text = text.replace("\r\n", "\n").replace("\r", "\n")
    if (
        text.isascii()
        and "\0" not in text
        and (not boundary or boundary not in text)
        and (len(text) <= 998 or max(map(len, text.split("\n"))) <= 998)
    ):
        encoding, body = "7bit", text.encode("ascii")
    else:
        encoding, body = "quoted-printable", binascii.b2a_qp(text.encode("utf-8"))
    return _part_head(subtype, encoding) + body.replace(b"\n", b"\r\n")


@functools.lru_cache(maxsize=8)
def _part_head(subtype: str, encoding: str) -> bytes:
    return (
        f'Content-Type: text/{subtype}; charset="utf-8"\r\n'
        f"Content-Transfer-Encoding: {encoding}\r\n\r\n"
    ).encode()


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
    second = int(time.time())
    if _date_cache[0] != second:
        now = timezone.now()
        _date_cache = (int(now.timestamp()), format_datetime(now.replace(microsecond=0)))
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
    base = settings.LEADCENTER_BASE_URL
    signer = tokens.MessageTokens(message_pk, settings.SECRET_KEY)
    unsubscribe_token = signer.token(tokens.UNSUBSCRIBE)
    unsubscribe = tracking_url(tokens.UNSUBSCRIBE, unsubscribe_token, base)
    context = {"contact": contact, "unsubscribe_url": unsubscribe, "step": step}
    tracked = (
        cache.tracked_html(step, base, track_clicks, track_opens)
        if step.html_body and (track_clicks or track_opens)
        else None
    )
    try:
        subject = cache.render(step, "subject", context).strip()
        text = cache.render(step, "text_body", context)
        html = tracked.render(context, signer, base) if tracked else None
        if html is None:
            html = cache.render(step, "html_body", context)
            if html and track_clicks:
                html = _rewrite_links(html, signer, base)
            if html and track_opens:
                html = _add_pixel(html, signer, base)
    except RenderError:
        raise
    except Exception as exc:  # a template tag failing at render time
        raise RenderError(f"step {step.position}: {exc}") from exc

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
        envelope_from=envelope_sender(account, signer),
        recipient=recipient_email,
        data=build_message(headers, text, html),
    )
