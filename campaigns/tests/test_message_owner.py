"""Message.owner: every email carries its contact's record owner, whoever created it (run
preparation, follow-ups), and keeps it when the contact changes owner or the owner is deleted
(database triggers, migration 0012); the Sent emails list's owner filter lists exactly the
emails of the contacts of that owner, alone and with a status or rejection filter."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.urls import reverse
from django.utils import timezone

from campaigns.models import Message
from campaigns.services import campaign_launch, dispatch_due, follow_ups_queue, run_prepare
from campaigns.tests.test_reports import send_mixed_run
from contacts.models import Contact
from leadcenter.factories import UserFactory

pytestmark = pytest.mark.django_db


def assert_every_email_has_its_contacts_owner() -> None:
    rows = Message.objects.values_list("pk", "owner_id", "recipient__contact__owner_id")
    assert rows.exists()
    wrong = [(pk, kept, truth) for pk, kept, truth in rows if kept != truth]
    assert wrong == []


def listed_ids(client, query: str) -> set[int]:
    response = client.get(reverse("admin:campaigns_message_changelist") + f"?{query}")
    assert response.status_code == 200
    return {m.pk for m in response.context["cl"].queryset}


@pytest.fixture
def scenario(smtp_server, make_campaign, add_contacts):
    return send_mixed_run(make_campaign, add_contacts)


def test_run_preparation_gives_each_email_its_contacts_owner(scenario):
    assert_every_email_has_its_contacts_owner()
    assert Message.objects.filter(owner=scenario.bob).exists()
    assert Message.objects.filter(owner__isnull=True).exists()


def test_follow_ups_get_their_contacts_owner(smtp_server, make_campaign, add_contacts):
    ann = UserFactory()
    add_contacts("a@example.test", "b@example.test", owner=ann)
    add_contacts("c@example.test")
    campaign = make_campaign(steps=2, delay=timedelta(days=1))
    run = campaign_launch(campaign=campaign, enqueue=False)
    run_prepare(run=run)
    dispatch_due()

    queued = follow_ups_queue(now=timezone.now() + timedelta(days=2))

    assert queued == 3
    assert Message.objects.filter(step__position=2, owner=ann).count() == 2
    assert_every_email_has_its_contacts_owner()


def test_a_contact_changing_owner_moves_its_emails_in_the_owner_filter(superuser_client, scenario):
    contact = Contact.objects.get(email="mailbox-full@example.test")  # Ann's, soft bounced
    emails = set(Message.objects.filter(recipient__contact=contact).values_list("pk", flat=True))
    ann, bob = scenario.ann.pk, scenario.bob.pk
    assert emails <= listed_ids(superuser_client, f"owner__id__exact={ann}")
    bob_before = listed_ids(superuser_client, f"owner__id__exact={bob}")

    contact.owner = scenario.bob
    contact.save()

    assert_every_email_has_its_contacts_owner()
    assert not emails & listed_ids(superuser_client, f"owner__id__exact={ann}")
    assert listed_ids(superuser_client, f"owner__id__exact={bob}") == bob_before | emails
    # With a rejection or a status filter too (the indexes that hold both).
    assert emails <= listed_ids(superuser_client, f"owner__id__exact={bob}&rejection=soft")
    assert emails <= listed_ids(superuser_client, f"owner__id__exact={bob}&rejection=mailbox_full")
    status = Message.objects.get(pk=min(emails)).status
    assert min(emails) in listed_ids(
        superuser_client, f"owner__id__exact={bob}&status__exact={status}"
    )

    Contact.objects.filter(pk=contact.pk).update(owner=None)  # a bulk update, no save()

    assert_every_email_has_its_contacts_owner()
    assert emails <= listed_ids(superuser_client, "owner__isnull=True")


def test_deleting_an_owner_leaves_their_contacts_emails_without_one(superuser_client, scenario):
    emails = set(Message.objects.filter(owner=scenario.ann).values_list("pk", flat=True))
    assert emails

    scenario.ann.delete()

    assert_every_email_has_its_contacts_owner()
    assert emails <= listed_ids(superuser_client, "owner__isnull=True")


@pytest.mark.parametrize(
    "extra", ["", "&status__exact=bounced", "&status__exact=sent", "&rejection=hard",
              "&rejection=soft", "&rejection=mailbox_full"],
)  # fmt: skip
def test_the_owner_filter_lists_exactly_the_emails_of_that_owners_contacts(
    superuser_client, scenario, extra
):
    for owner in (scenario.ann, scenario.bob):
        by_join = listed_ids(
            superuser_client, f"recipient__contact__owner__id__exact={owner.pk}{extra}"
        )
        assert listed_ids(superuser_client, f"owner__id__exact={owner.pk}{extra}") == by_join
    expected = set(
        Message.objects.filter(recipient__contact__owner=scenario.bob).values_list("pk", flat=True)
    )
    assert listed_ids(superuser_client, f"owner__id__exact={scenario.bob.pk}") == expected
