"""campaigns.mail and campaigns.smtp shortcuts give what Django and smtplib give."""

from __future__ import annotations

import smtplib

import pytest
from django.template import Context
from hypothesis import given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from campaigns.mail import TemplateCache
from campaigns.models import CampaignStep
from campaigns.smtp import _DOT_ATOM
from contacts.models import Contact

TEMPLATES = [
    "Hi {{ contact.first_name }} at {{ contact.company }}!",
    "{{ contact.full_name }}",
    "{{ contact.first_name|upper }}",
    "{% if contact.company %}{{ contact.company }}{% endif %}",
    "{{ contact.pk }} {{ contact.id }} {{ contact.owner }} {{ contact.unsubscribed_at }}",
    "{{ nothing.here }}{{ contact.nothing }}",
    "{{ unsubscribe_url }}",
    "{{ step.subject }} {{ step.position }}",
    "{{ 'a literal' }} {{ True }}",
    "{% autoescape on %}{{ contact.company }}{% endautoescape %}",
    "plain text",
    "",
]


@pytest.mark.parametrize("source", TEMPLATES)
@pytest.mark.parametrize("part", ["subject", "text_body", "html_body"])
def test_a_template_renders_as_django_renders_it(source, part):
    contact = Contact(
        pk=3, email="a@b.test", first_name='Jo & "Al" <x>', last_name="O'Neil", company="A&B"
    )
    step = CampaignStep(pk=7, position=2, subject="S & <s>", html_body="", text_body="")
    setattr(step, part, source)
    context = {"contact": contact, "unsubscribe_url": "https://x.test/?a=1&b=2", "step": step}
    cache = TemplateCache()

    expected = cache.get(step, part).render(Context(context))

    assert cache.render(step, part, context) == expected


def test_an_edited_step_is_compiled_again():
    step = CampaignStep(pk=7, position=1, subject="Old", html_body="", text_body="")
    cache = TemplateCache()
    assert cache.render(step, "subject", {}) == "Old"

    step.subject = "New"

    assert cache.render(step, "subject", {}) == "New"


@pytest.mark.parametrize(
    "address",
    [
        "ada@example.test",
        "bounces+abcdef234@leadcenter.example.com",
        "o'neil.x-y_z@sub-domain.example.com",
        "a#b$c%d&e*f+g/h=i?j^k`l{m|n}o~p@x.test",
        "a..b@x.test",
    ],
)
def test_a_plain_address_goes_to_the_server_as_smtplib_quotes_it(address):
    assert _DOT_ATOM.match(address)
    assert smtplib.quoteaddr(address) == f"<{address}>"


@pytest.mark.parametrize(
    "address", ["a b@x.test", "a@[127.0.0.1]", "Ada <a@x.test>", "a(b)@x.test"]
)
def test_any_other_address_goes_through_smtplib(address):
    assert not _DOT_ATOM.match(address)


PLAIN_HTML = '<p>Hi Ada,</p>\n<p><a href="https://x.test/?a=1&amp;b=2">Read</a></p>\n'


@pytest.mark.parametrize(
    ("text", "html", "encodings"),
    [
        # Plain ASCII with short lines: as it is.
        ("Hi Ada,\r\nSee you.\n", PLAIN_HTML, ["7bit", "7bit"]),
        # Anything else: quoted-printable, for that part only.
        ("Hi Zoë,\nSee you.\n", PLAIN_HTML, ["quoted-printable", "7bit"]),
        ("Hi Ada,\n" + "x" * 999 + "\n", PLAIN_HTML, ["quoted-printable", "7bit"]),
        ("Hi Ada,\n" + "x" * 998 + "\n", PLAIN_HTML, ["7bit", "7bit"]),
        # A lone CR is a line end, as in the other parts (it went bare through b2a_qp).
        ("a lone\rcarriage return", PLAIN_HTML, ["7bit", "7bit"]),
        ("Zoë alone\rcarriage return", PLAIN_HTML, ["quoted-printable", "7bit"]),
        ("a NUL\0", PLAIN_HTML, ["quoted-printable", "7bit"]),
        ("Hi Ada", "<p>Grüße</p>", ["7bit", "quoted-printable"]),
        ("Hi Ada,\nSee you.\n", "", ["7bit"]),
        ("Hi Zoë,\nSee you.", "", ["quoted-printable"]),
    ],
)
def test_a_part_goes_as_it_is_only_when_it_can_and_reads_back_the_same(text, html, encodings):
    from email import message_from_bytes, policy

    from campaigns.mail import build_message

    data = build_message([("Subject", "Hello")], text, html)

    email = message_from_bytes(data, policy=policy.default)
    parts = list(email.iter_parts()) if html else [email]
    assert [part["Content-Transfer-Encoding"] for part in parts] == encodings
    expected = [text, html] if html else [text]
    for part, source in zip(parts, expected, strict=True):
        # What a mail reader shows: the text, its line ends CRLF.
        read = part.get_payload(decode=True).decode("utf-8")
        # (A message of one part ends with a line end.)
        shown = source.replace("\r\n", "\n").replace("\r", "\n")
        assert read.replace("\r\n", "\n").rstrip("\n") == shown.rstrip("\n")
    for line in data.split(b"\r\n"):
        assert len(line) <= 998
        assert b"\r" not in line and b"\n" not in line


def test_a_part_holding_the_boundary_is_quoted_printable(monkeypatch):
    from email import message_from_bytes, policy

    from campaigns import mail

    monkeypatch.setattr(mail, "_boundaries", iter([42]))
    boundary = f"{mail._BOUNDARY_PREFIX}42"
    text = f"line one\n--{boundary}\nline three\n"

    data = mail.build_message([("Subject", "Hello")], text, PLAIN_HTML)

    email = message_from_bytes(data, policy=policy.default)
    plain, html = email.iter_parts()
    assert plain["Content-Transfer-Encoding"] == "quoted-printable"
    assert html["Content-Transfer-Encoding"] == "7bit"
    assert plain.get_content().replace("\r\n", "\n") == text


@pytest.mark.parametrize("accent", ["", " Café"], ids=["ASCII", "non-ASCII"])
def test_links_are_tracked_and_the_pixel_placed_whatever_the_case_of_the_markup(accent, settings):
    # ASCII HTML is searched lower-cased (a faster search); any other the case-insensitive way:
    # the same links found, the same text kept around them, the pixel before the first </body>.
    from campaigns.mail import _add_pixel, _rewrite_links
    from tracking import tokens

    base = settings.LEADCENTER_BASE_URL
    own = f"{base}/t/u/kept/"
    html = (
        f"<HTML><Body><p>Hi{accent}</p>"
        "<A HREF = 'HTTPS://Example.test/Path?Q=A'>one</A>"
        '<a href="http://x.test/">two</a> <a href="mailto:a@b.test">mail</a>'
        f'<a href="{own}">own</a> <a href="/relative">rel</a>'
        "</BODY ><p>after</p></body></HTML>"
    )

    signer = tokens.MessageTokens(42, "s3cret")
    tracked = _add_pixel(_rewrite_links(html, signer, base), signer, base)

    def click(url: str) -> str:
        token = tokens.make_click_token(42, url, secret="s3cret")
        return f"{base}/t/c/{token}/"

    open_src = f"{base}/t/o/{tokens.make_token(tokens.OPEN, 42, secret='s3cret')}.gif"
    assert tracked == (
        f"<HTML><Body><p>Hi{accent}</p>"
        f"<A HREF = '{click('HTTPS://Example.test/Path?Q=A')}'>one</A>"
        f'<a href="{click("http://x.test/")}">two</a> <a href="mailto:a@b.test">mail</a>'
        f'<a href="{own}">own</a> <a href="/relative">rel</a>'
        f'<img src="{open_src}" width="1" height="1" alt="" style="display:none">'
        "</BODY ><p>after</p></body></HTML>"
    )


# HTML bodies whose tracking is laid out once per step (campaigns.mail._TrackedHtml) or, when
# a value could change what is a link or where the body ends, searched in every email.
BODY = (
    "<html><body><p>Hi {{ contact.first_name }},</p>"
    '<p><a href="https://example.test/pricing?a=1&amp;b=2">Pricing</a> and '
    "<A HREF = 'HTTP://Example.test/Case'>case</A>, "
    '<a href="mailto:a@b.test">mail</a> <a href="{own}x/">own</a></p>'
    "<p>{{ contact.company }}</p></BODY ></html>"
)
LAID_OUT = [
    BODY,
    "<p>{{ contact.first_name }}</p> no end of body",
    "{{ contact.first_name }} at the start, {{ contact.company }} in the text",
    '<p>a quote after a value, apart: {{ contact.first_name }}, "x"</p></body>',
    '<a href="{{ unsubscribe_url }}">ours</a> {{ unsubscribe_url }}</body>',
]
SEARCHED = [
    '<a href="https://x.test/?u={{ contact.first_name }}">in a URL</a>',
    '<a href="https://x.test/?next={{ unsubscribe_url }}">ours in another</a>',
    '<p>{{ contact.first_name }}"https://x.test/"</p>',  # the value could end in href=
    '<p>{{ contact.first_name }}ef = "https://x.test/"</p>',
    '<p>href="{{ contact.first_name }}"</p>',  # the value could start a URL
    '<img alt="{{ contact.first_name }}"></body>',
    "</bo{{ contact.first_name }}dy>",
    "<p>{{ contact.first_name }}{{ contact.company }}</p>",
    "{% autoescape off %}<p>{{ contact.first_name }}</p>{% endautoescape %}",
    "{{ contact.first_name }}",  # may render empty: then nothing is tracked
    '<p>Café <a href="https://x.test/">x</a></p>',
    "<p>{{ contact.first_name|upper }}</p>",
]
VALUES = [
    "Ada",
    "href=",
    "hr",
    "https://evil.test/",
    '"https://evil.test/"',
    "</body>",
    "Zoë",
    " = ",
    "",
    "two\nlines",
    "<b>&amp;",
]


def _tracked_both_ways(source: str, first_name: str, clicks: bool, opens: bool, settings):
    """(the HTML as laid out, or None; the HTML as rendered then searched) for one email."""
    from campaigns.mail import TemplateCache, _add_pixel, _rewrite_links
    from tracking import tokens

    base = settings.LEADCENTER_BASE_URL
    source = source.replace("{own}", f"{base}/t/u/")
    step = CampaignStep(pk=1, position=1, subject="s", html_body=source, text_body="")
    contact = Contact(pk=5, email="a@b.test", first_name=first_name, company="A&B <Ltd>")
    signer = tokens.MessageTokens(77, "s3cret")
    unsubscribe = f"{base}/t/u/{signer.token(tokens.UNSUBSCRIBE)}/"
    context = {"contact": contact, "unsubscribe_url": unsubscribe, "step": step}
    cache = TemplateCache()
    tracked = cache.tracked_html(step, base, clicks, opens)
    laid_out = tracked.render(context, signer, base) if tracked else None
    html = cache.render(step, "html_body", context)
    if html and clicks:
        html = _rewrite_links(html, signer, base)
    if html and opens:
        html = _add_pixel(html, signer, base)
    return laid_out, html, tracked


@pytest.mark.parametrize("source", LAID_OUT + SEARCHED)
@pytest.mark.parametrize("first_name", VALUES)
@pytest.mark.parametrize(("clicks", "opens"), [(True, True), (True, False), (False, True)])
def test_a_laid_out_body_tracks_what_searching_each_email_tracks(
    source, first_name, clicks, opens, settings
):
    laid_out, searched, tracked = _tracked_both_ways(source, first_name, clicks, opens, settings)

    if clicks:
        assert (tracked is not None) == (source in LAID_OUT)
    if laid_out is not None:
        assert laid_out == searched


FRAGMENTS = [
    "{{ unsubscribe_url }}",
    '<a href="{{ unsubscribe_url }}">',
    "{{ contact.first_name }}",
    "{{ contact.first_name }}",
    "{{ contact.first_name }}",
    '<a href="https://x.test/p">',
    "<a href='http://y.test/'>",
    '"',
    "'",
    "href",
    "=",
    " ",
    "<",
    ">",
    "</body>",
    "</BODY >",
    "https://",
    'href="',
    "href='https://z.test/",
    "ef=",
    "</bo",
    "dy>",
    "text",
    "<p>",
]


@hypothesis_settings(max_examples=600, deadline=None)
@given(
    st.lists(st.sampled_from(FRAGMENTS), min_size=1, max_size=10),
    st.one_of(st.sampled_from(VALUES), st.text(max_size=12)),
)
def test_any_body_laid_out_tracks_what_searching_tracks(fragments, first_name):
    from django.conf import settings as django_settings

    source = "".join(fragments)
    laid_out, searched, _ = _tracked_both_ways(source, first_name, True, True, django_settings)

    if laid_out is not None:
        assert laid_out == searched


def test_an_email_is_the_same_bytes_laid_out_or_searched(monkeypatch):
    from campaigns import mail
    from campaigns.models import SendingAccount

    account = SendingAccount(
        pk=1, from_email="dana@x.test", from_name="Dana", return_path="bounces@x.test"
    )
    step = CampaignStep(
        pk=2, position=1, subject="Hi {{ contact.first_name }}", text_body="Hi", html_body=BODY
    )
    contact = Contact(pk=5, email="ada@b.test", first_name="Ada", company="A&B")
    monkeypatch.setattr(mail, "_date_header", lambda: "Tue, 24 Nov 2026 10:00:00 +0000")

    def email(cache):
        monkeypatch.setattr(mail, "_boundaries", iter([7]))
        return mail.compose(
            message_pk=9,
            message_id="<9@x.test>",
            step=step,
            contact=contact,
            recipient_email="ada@b.test",
            account=account,
            track_opens=True,
            track_clicks=True,
            cache=cache,
        )

    class Searching(mail.TemplateCache):
        def tracked_html(self, *args):
            return None

    laid_out = mail.TemplateCache()
    assert laid_out.tracked_html(step, mail.settings.LEADCENTER_BASE_URL, True, True)
    assert email(laid_out) == email(Searching())


@pytest.mark.parametrize(
    "name",
    [
        "Ada Lovelace",
        "  Ada \n Lovelace ",
        "",
        "   ",
        "A. Byron",
        'Jo "Al"',
        "O'Neil",
        "a\\b",
        "Zoë",
    ],
)
def test_a_display_name_goes_as_formataddr_writes_it(name):
    from email.utils import formataddr

    from campaigns.mail import _address

    expected = formataddr((" ".join(name.split()), "ada@x.test"), charset="utf-8")
    assert _address(name, "ada@x.test") == (expected if name.strip() else "ada@x.test")
