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
