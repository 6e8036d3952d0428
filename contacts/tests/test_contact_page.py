"""The contact page as support agents use it: suppression entries (lift one, with a reason) and
the whole delivery history, built from real sends over SMTP and real tracking requests."""

from __future__ import annotations

import re
from datetime import timedelta

import pytest
from django.contrib.admin.models import LogEntry
from django.urls import reverse
from django.utils import timezone

from campaigns.models import Message
from campaigns.services import campaign_launch, dispatch_due, run_prepare
from contacts.models import Contact, Suppression
from leadcenter.factories import (
    MessageFactory,
    RecipientFactory,
    SuppressionFactory,
    UserFactory,
)
from tracking import tokens
from tracking.models import TrackingEvent

pytestmark = pytest.mark.django_db

BROWSER = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 Chrome/120.0 Safari/537.36"


def page_url(contact: Contact) -> str:
    return reverse("admin:contacts_contact_change", args=[contact.pk])


def lift_url(contact: Contact, entry: Suppression) -> str:
    return reverse("admin:contacts_contact_lift_suppression", args=[contact.pk, entry.pk])


def send(make_campaign, name: str) -> None:
    campaign = make_campaign(name=name)
    run_prepare(run=campaign_launch(campaign=campaign, enqueue=False))
    dispatch_due()


@pytest.fixture
def history(make_campaign, add_contacts, client):
    """Ada got two campaigns and opened the first; Bo's address was refused as unknown."""
    ada, bo = add_contacts("ada@example.test", "user-unknown-bo@example.test")
    send(make_campaign, "Spring launch")
    first = Message.objects.get(recipient__contact=ada)
    # A person opens it a minute later (the pixel, through the real view).
    Message.objects.filter(pk=first.pk).update(sent_at=timezone.now() - timedelta(minutes=1))
    pixel = f"/t/o/{tokens.make_token(tokens.OPEN, first.pk)}.gif"
    assert client.get(pixel, HTTP_USER_AGENT=BROWSER).status_code == 200
    send(make_campaign, "Autumn webinar")
    return ada, bo


def history_rows(html: str) -> list[tuple[str, str]]:
    """(campaign, status) of each email in the history table, top to bottom."""
    section = html[html.index('id="history"') :]
    return re.findall(
        r'<tr class="lc-email-head">.*?<a href="[^"]+">([^<]+)</a>.*?'
        r'class="lc-msg-status [^"]+">([^<]+)</span>',
        section,
        re.S,
    )


def test_the_history_lists_every_email_newest_first_with_its_events(support_client, history):
    ada, _bo = history

    response = support_client.get(page_url(ada))

    html = response.content.decode()
    assert response.status_code == 200
    assert history_rows(html) == [("Autumn webinar", "Sent"), ("Spring launch", "Opened")]
    spring = html[html.index("Spring launch") :]
    assert "Opened" in spring and "via pixel" in spring and "via smtp" in spring
    assert "2 emails" in html
    assert "No suppression entry" in html


def test_a_refused_address_shows_its_rejection_and_its_suppression(support_client, history):
    _ada, bo = history

    html = support_client.get(page_url(bo)).content.decode()

    assert [status for _c, status in history_rows(html)] == ["Bounced"]
    assert "Hard rejection: User not found" in html
    assert "550" in html
    suppressions = html[html.index('id="suppressions"') : html.index('id="history"')]
    assert "Hard bounce" in suppressions and "Active" in suppressions
    assert 'name="lift_reason"' in suppressions


def test_support_lifts_a_suppression_from_the_contact_page_with_a_reason(
    support_client, support_user, history
):
    _ada, bo = history
    entry = Suppression.objects.get(email=bo.email)

    response = support_client.post(lift_url(bo, entry), {"lift_reason": "Mailbox exists again"})

    assert response.status_code == 302
    assert response["Location"].startswith(page_url(bo))
    entry.refresh_from_db()
    assert entry.lifted_at is not None
    assert entry.lifted_by == support_user
    assert entry.lift_reason == "Mailbox exists again"
    assert LogEntry.objects.filter(object_id=str(entry.pk)).exists()
    html = support_client.get(page_url(bo)).content.decode()
    assert "Lifted" in html and "Mailbox exists again" in html


def test_a_lift_without_a_reason_lifts_nothing(support_client, history):
    _ada, bo = history
    entry = Suppression.objects.get(email=bo.email)

    response = support_client.post(lift_url(bo, entry), {"lift_reason": "  "}, follow=True)

    assert "the reason is required" in response.content.decode()
    entry.refresh_from_db()
    assert entry.is_active


@pytest.mark.parametrize("role", ["staff_client", "manager_client"])
def test_roles_without_the_permission_cannot_lift(request, role, history):
    client = request.getfixturevalue(role)
    _ada, bo = history
    entry = Suppression.objects.get(email=bo.email)

    page = client.get(page_url(bo)).content.decode()
    response = client.post(lift_url(bo, entry), {"lift_reason": "Because"})

    assert 'name="lift_reason"' not in page
    assert response.status_code == 403
    entry.refresh_from_db()
    assert entry.is_active


def test_lifting_refuses_get_and_another_contacts_entry(support_client, history):
    ada, bo = history
    entry = Suppression.objects.get(email=bo.email)

    assert support_client.get(lift_url(bo, entry)).status_code == 405
    # Ada's page cannot lift Bo's entry.
    assert support_client.post(lift_url(ada, entry), {"lift_reason": "x"}).status_code == 404
    entry.refresh_from_db()
    assert entry.is_active


def test_the_sent_emails_link_lists_exactly_the_contacts_emails(superuser_client, history):
    ada, _bo = history
    html = superuser_client.get(page_url(ada)).content.decode()
    link = re.search(r'href="([^"]+recipient__contact__id__exact=\d+)"', html).group(1)

    listed = superuser_client.get(link.replace("&amp;", "&")).context["cl"]

    assert sorted(m.pk for m in listed.result_list) == sorted(
        Message.objects.filter(recipient__contact=ada).values_list("pk", flat=True)
    )


def test_the_contact_page_costs_the_same_queries_with_more_history(
    superuser_client, assert_bounded_queries
):
    recipient = RecipientFactory()
    contact = recipient.contact

    def make(n: int) -> None:
        for _ in range(n):
            message = MessageFactory(recipient=RecipientFactory(contact=contact))
            TrackingEvent.objects.create(
                message=message,
                type=TrackingEvent.Type.SENT,
                source="smtp",
                occurred_at=timezone.now(),
                dedupe_key=f"sent:{message.pk}",
            )
            # Lifted entries stay as history; each names who added and who lifted it.
            SuppressionFactory(
                email=contact.email.lower(),
                created_by=UserFactory(),
                lifted_at=timezone.now(),
                lifted_by=UserFactory(),
            )

    assert_bounded_queries(superuser_client, page_url(contact), make)


def test_the_lift_action_asks_for_a_reason_first(support_client, support_user):
    first, second = SuppressionFactory(), SuppressionFactory()
    url = reverse("admin:contacts_suppression_changelist")
    chosen = {"action": "lift_suppressions", "_selected_action": [first.pk, second.pk]}

    asked = support_client.post(url, chosen)

    assert asked.status_code == 200
    assert 'name="lift_reason"' in asked.content.decode()
    first.refresh_from_db()
    assert first.is_active

    done = support_client.post(url, {**chosen, "confirm": "yes", "lift_reason": "Bulk clean-up"})

    assert done.status_code == 302
    for entry in (first, second):
        entry.refresh_from_db()
        assert (entry.lifted_by, entry.lift_reason) == (support_user, "Bulk clean-up")
