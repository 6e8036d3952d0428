from __future__ import annotations

from typing import Any

import pytest
from django.urls import reverse

from contacts.models import Contact, ContactList, Suppression, Topic
from leadcenter.factories import (
    ContactFactory,
    ContactListFactory,
    SuppressionFactory,
    TopicFactory,
    UserFactory,
)

pytestmark = pytest.mark.django_db


def make_contacts(n: int) -> None:
    for _ in range(n):
        ContactFactory(owner=UserFactory(), lists=[ContactListFactory()])


def make_lists(n: int) -> None:
    for _ in range(n):
        ContactFactory(lists=[ContactListFactory()])


def make_topics(n: int) -> None:
    TopicFactory.create_batch(n)


def make_suppressions(n: int) -> None:
    for _ in range(n):
        SuppressionFactory(created_by=UserFactory(), lifted_by=UserFactory())


MODELS = [
    (Contact, make_contacts),
    (ContactList, make_lists),
    (Topic, make_topics),
    (Suppression, make_suppressions),
]


def changelist_url(model: Any) -> str:
    return reverse(f"admin:{model._meta.app_label}_{model._meta.model_name}_changelist")


def change_url(obj: Any) -> str:
    return reverse(f"admin:{obj._meta.app_label}_{obj._meta.model_name}_change", args=[obj.pk])


def contact_form_data(contact: Contact, **overrides: Any) -> dict[str, Any]:
    data = {
        "email": contact.email,
        "first_name": contact.first_name,
        "last_name": contact.last_name,
        "company": contact.company,
        "owner": contact.owner_id or "",
        "email_status": contact.email_status,
        "invalid_reason": contact.invalid_reason,
        "stage": contact.stage,
    }
    data.update(overrides)
    return data


@pytest.mark.parametrize(("model", "make"), MODELS, ids=lambda m: getattr(m, "__name__", ""))
def test_changelist_and_change_page_answer_200(superuser_client, model, make):
    make(3)
    obj = model.objects.first()

    assert superuser_client.get(changelist_url(model)).status_code == 200
    assert superuser_client.get(change_url(obj)).status_code == 200
    add_url = reverse(f"admin:{model._meta.app_label}_{model._meta.model_name}_add")
    assert superuser_client.get(add_url).status_code == 200


@pytest.mark.parametrize(("model", "make"), MODELS, ids=lambda m: getattr(m, "__name__", ""))
def test_changelist_queries_do_not_grow_with_rows(
    superuser_client, assert_bounded_queries, model, make
):
    assert_bounded_queries(superuser_client, changelist_url(model), make)


@pytest.mark.parametrize("term", ["ada@analytical.test", "Lovelace", "Ada", "Analytical Engines"])
def test_contact_search_finds_by_email_name_and_company(superuser_client, term):
    ContactFactory(
        email="ada@analytical.test",
        first_name="Ada",
        last_name="Lovelace",
        company="Analytical Engines",
    )
    ContactFactory(first_name="Charles", last_name="Babbage", company="Difference Ltd")

    response = superuser_client.get(changelist_url(Contact), {"q": term})

    assert response.context["cl"].result_count == 1
    assert "Lovelace" in response.text


def test_contact_filters_by_email_status_and_list(superuser_client):
    customers = ContactListFactory(name="Customers")
    wanted = ContactFactory(email_status=Contact.EmailStatus.INVALID, lists=[customers])
    ContactFactory(email_status=Contact.EmailStatus.INVALID)
    ContactFactory(lists=[customers])

    response = superuser_client.get(
        changelist_url(Contact),
        {"email_status__exact": "invalid", "lists__id__exact": customers.pk},
    )

    assert list(response.context["cl"].result_list) == [wanted]


def test_contact_list_shows_its_contact_count(superuser_client):
    customers = ContactListFactory(name="Customers")
    ContactFactory.create_batch(3, lists=[customers])

    response = superuser_client.get(changelist_url(ContactList))

    assert response.context["cl"].result_list[0]._contact_count == 3


def test_support_can_change_a_contacts_consent_flags(support_client):
    contact = ContactFactory()

    response = support_client.post(
        change_url(contact), contact_form_data(contact, do_not_mass_email="on")
    )

    assert response.status_code == 302
    contact.refresh_from_db()
    assert contact.do_not_mass_email is True


def test_staff_cannot_change_a_contact(staff_client):
    contact = ContactFactory()

    assert staff_client.get(change_url(contact)).status_code == 200
    response = staff_client.post(change_url(contact), contact_form_data(contact, do_not_email="on"))

    assert response.status_code == 403
    contact.refresh_from_db()
    assert contact.do_not_email is False


def test_suppression_active_filter_separates_active_from_lifted(superuser_client, superuser):
    active = SuppressionFactory()
    lifted = SuppressionFactory(lifted_at="2025-01-01T00:00:00Z", lifted_by=superuser)
    url = changelist_url(Suppression)

    assert list(superuser_client.get(url, {"active": "yes"}).context["cl"].result_list) == [active]
    assert list(superuser_client.get(url, {"active": "no"}).context["cl"].result_list) == [lifted]
    assert superuser_client.get(url).context["cl"].result_count == 2


def test_suppression_search_finds_by_email(superuser_client):
    SuppressionFactory(email="gone@example.test")
    SuppressionFactory(email="other@example.test")

    response = superuser_client.get(changelist_url(Suppression), {"q": "gone@"})

    assert response.context["cl"].result_count == 1


def lift(client, *suppressions: Suppression):
    return client.post(
        changelist_url(Suppression),
        {
            "action": "lift_suppressions",
            "_selected_action": [s.pk for s in suppressions],
            "confirm": "yes",
            "lift_reason": "Checked with the person",
        },
    )


def test_lift_action_lifts_and_records_who(support_client, support_user):
    first, second = SuppressionFactory(), SuppressionFactory()
    untouched = SuppressionFactory()

    response = lift(support_client, first, second)

    assert response.status_code == 302
    for suppression in (first, second):
        suppression.refresh_from_db()
        assert suppression.lifted_at is not None
        assert suppression.lifted_by == support_user
    untouched.refresh_from_db()
    assert untouched.is_active


def test_lift_action_keeps_an_earlier_lift_as_it_was(superuser_client, staff_user):
    earlier = SuppressionFactory(lifted_at="2025-01-01T00:00:00Z", lifted_by=staff_user)

    lift(superuser_client, earlier)

    earlier.refresh_from_db()
    assert earlier.lifted_by == staff_user
    assert earlier.lifted_at.year == 2025


def test_staff_cannot_lift_suppressions(staff_client):
    suppression = SuppressionFactory()

    response = staff_client.get(changelist_url(Suppression))
    assert "lift_suppressions" not in response.text
    lift(staff_client, suppression)

    suppression.refresh_from_db()
    assert suppression.is_active


def test_support_adds_a_suppression_lower_cased_and_signed(support_client, support_user):
    url = reverse("admin:contacts_suppression_add")

    response = support_client.post(url, {"email": "Someone@Example.TEST", "reason": "manual"})

    assert response.status_code == 302
    suppression = Suppression.objects.get()
    assert suppression.email == "someone@example.test"
    assert suppression.created_by == support_user
    assert suppression.source == "admin"


def test_suppression_add_refuses_a_second_active_entry_for_the_same_reason(superuser_client):
    SuppressionFactory(email="twice@example.test", reason=Suppression.Reason.MANUAL)

    response = superuser_client.post(
        reverse("admin:contacts_suppression_add"),
        {"email": "twice@example.test", "reason": "manual"},
    )

    assert response.status_code == 200  # the form again, with the error
    assert Suppression.objects.count() == 1


def test_support_changes_consent_and_address_but_not_the_record(support_client):
    from django.urls import reverse

    from contacts.models import Contact
    from leadcenter.factories import ContactFactory

    contact = ContactFactory(email="old@example.test", first_name="Ada", company="Acme")
    url = reverse("admin:contacts_contact_change", args=[contact.pk])

    response = support_client.post(
        url,
        {
            "email": "new@example.test",
            "first_name": "Mallory",
            "company": "Evil",
            "email_status": "valid",
            "do_not_email": "on",
            "stage": "customer",
        },
    )

    assert response.status_code == 302, response.content.decode()[:2000]
    contact.refresh_from_db()
    assert contact.email == "new@example.test"
    assert contact.do_not_email is True
    assert (contact.first_name, contact.company, contact.stage) == ("Ada", "Acme", "subscriber")
    assert Contact.objects.count() == 1
