"""Templates escape contact data: contacts, owners, campaigns, lists, topics, accounts, SMTP
replies and events carrying HTML are shown as text on every admin page, the email preview,
the import preview and the unsubscribe page; the markup itself never reaches a page."""

from __future__ import annotations

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.urls import reverse

from campaigns.models import Recipient
from contacts.models import Contact
from tests.security.conftest import body
from tests.security.test_permission_matrix import GET_MATRIX, url_for
from tracking import tokens
from tracking.models import TrackingEvent

pytestmark = pytest.mark.django_db

SCRIPT = "<script>alert('xss')</script>"
ATTRIBUTE = '"><img src=x onerror=alert(1)>'
PAYLOADS = (SCRIPT, ATTRIBUTE, "<b>bold</b>")


def assert_escaped(html: str, where: str) -> None:
    for payload in PAYLOADS:
        assert payload not in html, f"unescaped markup in {where}"


@pytest.fixture
def html_world(world):
    """The permission matrix's world, with markup in every text a person can type or an
    outsider can send."""
    message = world["campaigns.message"]
    contact = world["contacts.contact"]
    Contact.objects.filter(pk=contact.pk).update(
        first_name=SCRIPT, last_name=ATTRIBUTE, company="<b>bold</b>", invalid_reason=SCRIPT
    )
    Recipient.objects.filter(pk=message.recipient_id).update(email=f"x{ATTRIBUTE}@example.test")
    for label, fields in {
        "contacts.topic": {"name": SCRIPT},
        "contacts.contactlist": {"name": ATTRIBUTE},
        "campaigns.campaign": {"name": SCRIPT},
        "campaigns.sendingaccount": {"from_name": ATTRIBUTE, "last_error": SCRIPT},
        "campaigns.campaignrun": {"error": SCRIPT},
        "campaigns.message": {"smtp_response": f"550 {SCRIPT}"},
        "tracking.trackingevent": {"detail": SCRIPT, "user_agent": ATTRIBUTE, "raw": SCRIPT},
        "tracking.rejection": {"diagnostic": SCRIPT},
        "contacts.suppression": {"note": SCRIPT, "source": ATTRIBUTE},
    }.items():
        obj = world[label]
        type(obj).objects.filter(pk=obj.pk).update(**fields)
    owner = world["auth.user"]
    type(owner).objects.filter(pk=owner.pk).update(first_name=SCRIPT, last_name=ATTRIBUTE)
    Contact.objects.filter(pk=contact.pk).update(owner=owner)
    step = world["campaigns.campaignstep"]
    type(step).objects.filter(pk=step.pk).update(
        subject="Hi {{ contact.first_name }}",
        html_body="<p>Dear {{ contact.first_name }} {{ contact.last_name }}</p>",
        text_body="Dear {{ contact.first_name }}",
    )
    TrackingEvent.objects.create(
        message=message,
        type=TrackingEvent.Type.CLICKED,
        source="click",
        occurred_at=message.created,
        dedupe_key="security:html:click",
        url=f"https://example.test/?q={ATTRIBUTE}",
        email=contact.email,
    )
    return world


def test_every_admin_page_shows_markup_as_text(superuser_client, html_world):
    shown = 0
    for key in GET_MATRIX:
        if key == "logout":
            continue
        response = superuser_client.get(url_for(key, html_world))
        if not response.get("Content-Type", "").startswith("text/html"):
            continue  # JSON for select2 (which shows it as text), files, the GIF
        html = body(response).decode("utf-8", "replace")
        assert_escaped(html, key)
        shown += "&lt;script&gt;" in html
    # The contact, recipient, message, event, campaign pages... did show the names.
    assert shown >= 15


def test_the_pages_about_one_contact_and_its_emails_escape_it(superuser_client, html_world):
    message = html_world["campaigns.message"]
    campaign = html_world["campaigns.campaign"]
    run = html_world["campaigns.campaignrun"]
    contact = html_world["contacts.contact"]
    pages = {
        "preview": reverse("admin:campaigns_campaign_preview", args=[campaign.pk])
        + f"?contact={contact.pk}",
        "summary of the run": reverse("admin:campaigns_campaign_summary", args=[campaign.pk])
        + f"?run={run.pk}",
        "compare": reverse("admin:campaigns_campaign_compare") + f"?ids={campaign.pk}",
        "contacts search": reverse("admin:contacts_contact_changelist") + "?q=script",
        "sent emails search": reverse("admin:campaigns_message_changelist") + "?q=alert",
        "recipients of the run": reverse("admin:campaigns_recipient_changelist")
        + f"?run__id__exact={run.pk}",
        "message": reverse("admin:campaigns_message_change", args=[message.pk]),
    }
    for name, url in pages.items():
        response = superuser_client.get(url)
        assert response.status_code == 200, name
        html = response.content.decode()
        assert_escaped(html, name)
        assert "&lt;" in html or "&amp;lt;" in html, f"{name} did not show the contact's name"


def test_the_unsubscribe_page_escapes_the_address_and_the_topic(client, html_world):
    message = html_world["campaigns.message"]
    url = f"/t/u/{tokens.make_token(tokens.UNSUBSCRIBE, message.pk)}/"

    shown = client.get(url).content.decode()
    done = client.post(url, {"scope": "topic"}).content.decode()

    for html in (shown, done):
        assert_escaped(html, "the unsubscribe page")
        assert "&lt;script&gt;" in html  # the topic's name, as text


def test_the_import_preview_escapes_the_rows(superuser_client, world):
    data = (
        "email,first_name,last_name,company\n"
        f'good@example.test,"{SCRIPT}",x,y\n'
        f'"{ATTRIBUTE}","{SCRIPT}",x,"<b>bold</b>"\n'
    ).encode()
    response = superuser_client.post(
        reverse("admin:contacts_contact_import"),
        {"import_file": SimpleUploadedFile("people.csv", data), "format": "0", "resource": "0"},
    )

    assert response.status_code == 200
    html = response.content.decode()
    assert_escaped(html, "the import preview")
    assert "&lt;script&gt;" in html or "&lt;b&gt;" in html or "&quot;&gt;" in html
