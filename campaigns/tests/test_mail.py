"""campaigns.mail and campaigns.smtp shortcuts give what Django and smtplib give."""

from __future__ import annotations

import smtplib

import pytest
from django.template import Context

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

    tracked = _add_pixel(_rewrite_links(html, 42, base, "s3cret"), 42, base, "s3cret")

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
