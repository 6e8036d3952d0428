from __future__ import annotations

import uuid
from typing import Any

import pytest
from django.urls import reverse
from django.utils import timezone

from leadcenter.factories import MessageFactory
from tracking.models import Rejection, TrackingEvent

pytestmark = pytest.mark.django_db


def event(**fields: Any) -> TrackingEvent:
    defaults: dict[str, Any] = {
        "type": TrackingEvent.Type.SENT,
        "source": TrackingEvent.Source.SMTP,
        "occurred_at": timezone.now(),
        "dedupe_key": uuid.uuid4().hex,
    }
    defaults.update(fields)
    if "message" not in defaults:
        defaults["message"] = MessageFactory()
    return TrackingEvent.objects.create(**defaults)


def rejection(**fields: Any) -> Rejection:
    defaults: dict[str, Any] = {
        "kind": Rejection.Kind.HARD,
        "category": Rejection.Category.USER_NOT_FOUND,
        "smtp_code": 550,
        "smtp_status": "5.1.1",
        "diagnostic": "550 5.1.1 <nobody@example.test>: user unknown",
        "source": "smtp",
    }
    defaults.update(fields)
    if "message" not in defaults:
        defaults["message"] = MessageFactory()
    return Rejection.objects.create(**defaults)


def make_events(n: int) -> None:
    for _ in range(n):
        event()


def make_rejections(n: int) -> None:
    for _ in range(n):
        rejection(event=event(type=TrackingEvent.Type.BOUNCED))


MODELS = [(TrackingEvent, make_events), (Rejection, make_rejections)]


def admin_url(model: Any, view: str, *args: Any) -> str:
    return reverse(f"admin:tracking_{model._meta.model_name}_{view}", args=args)


@pytest.mark.parametrize(("model", "make"), MODELS, ids=lambda m: getattr(m, "__name__", ""))
def test_changelist_and_change_page_answer_200(superuser_client, model, make):
    make(3)
    obj = model.objects.first()

    assert superuser_client.get(admin_url(model, "changelist")).status_code == 200
    assert superuser_client.get(admin_url(model, "change", obj.pk)).status_code == 200


@pytest.mark.parametrize(("model", "make"), MODELS, ids=lambda m: getattr(m, "__name__", ""))
def test_changelist_queries_do_not_grow_with_rows(
    superuser_client, assert_bounded_queries, model, make
):
    assert_bounded_queries(superuser_client, admin_url(model, "changelist"), make)


@pytest.mark.parametrize(("model", "make"), MODELS, ids=lambda m: getattr(m, "__name__", ""))
def test_history_cannot_be_added_changed_or_deleted_even_by_a_superuser(
    superuser_client, model, make
):
    make(1)
    obj = model.objects.get()

    assert superuser_client.get(admin_url(model, "add")).status_code == 403
    assert superuser_client.post(admin_url(model, "change", obj.pk), {}).status_code == 403
    assert superuser_client.get(admin_url(model, "delete", obj.pk)).status_code == 403
    response = superuser_client.post(
        admin_url(model, "changelist"),
        {"action": "delete_selected", "_selected_action": [obj.pk], "post": "yes"},
    )
    assert response.status_code in (200, 302)
    assert model.objects.filter(pk=obj.pk).exists()


@pytest.mark.parametrize(("model", "make"), MODELS, ids=lambda m: getattr(m, "__name__", ""))
def test_history_pages_are_read_only(superuser_client, model, make):
    make(1)

    page = superuser_client.get(admin_url(model, "change", model.objects.get().pk)).text
    changelist = superuser_client.get(admin_url(model, "changelist")).text

    assert 'name="_save"' not in page
    assert "delete_selected" not in changelist
    assert admin_url(model, "add") not in changelist


def test_support_can_view_events_and_rejections(support_client):
    make_rejections(1)

    assert support_client.get(admin_url(TrackingEvent, "changelist")).status_code == 200
    assert support_client.get(admin_url(Rejection, "changelist")).status_code == 200


def test_events_filter_by_webhook_source(superuser_client):
    wanted = event(source="webhook:mailgun", type=TrackingEvent.Type.DELIVERED)
    event(source="smtp")

    response = superuser_client.get(admin_url(TrackingEvent, "changelist"), {"source": "webhook"})

    assert list(response.context["cl"].result_list) == [wanted]


def test_events_search_by_message_id(superuser_client):
    message = MessageFactory(message_id="<abc123@leadcenter.test>")
    wanted = event(message=message)
    event()

    response = superuser_client.get(admin_url(TrackingEvent, "changelist"), {"q": "abc123"})

    assert list(response.context["cl"].result_list) == [wanted]


def test_rejections_filter_by_kind_and_category(superuser_client):
    wanted = rejection(kind="soft", category="mailbox_full")
    rejection()

    response = superuser_client.get(
        admin_url(Rejection, "changelist"),
        {"kind__exact": "soft", "category__exact": "mailbox_full"},
    )

    assert list(response.context["cl"].result_list) == [wanted]


def test_a_message_page_shows_its_events(superuser_client):
    message = MessageFactory()
    event(message=message, type=TrackingEvent.Type.DEFERRED, detail="421 try again later")

    response = superuser_client.get(reverse("admin:campaigns_message_change", args=[message.pk]))

    assert "421 try again later" in response.text


def test_the_bounce_mailbox_password_is_never_shown_back(superuser_client):
    from leadcenter.factories import SendingAccountFactory
    from tracking.models import BounceMailbox

    box = BounceMailbox.objects.create(
        account=SendingAccountFactory(),
        protocol="pop3",
        host="pop.example.test",
        username="bounces",
        password="pop-s3cret-pw",
    )

    page = superuser_client.get(f"/admin/tracking/bouncemailbox/{box.pk}/change/")

    assert page.status_code == 200
    assert b"pop-s3cret-pw" not in page.content


def test_contacts_with_three_soft_bounces_in_30_days_are_listed_for_review(superuser_client):
    from datetime import timedelta

    from django.utils import timezone

    from contacts.models import Contact
    from leadcenter.factories import MessageFactory
    from tracking.models import Rejection

    def soft_bounces(message, n: int, days_ago: int = 1) -> None:
        for _ in range(n):
            rejection = Rejection.objects.create(
                message=message, kind="soft", category="mailbox_full", source="dsn"
            )
            Rejection.objects.filter(pk=rejection.pk).update(
                created=timezone.now() - timedelta(days=days_ago)
            )

    flagged, twice, long_ago = MessageFactory(), MessageFactory(), MessageFactory()
    soft_bounces(flagged, 3)
    soft_bounces(twice, 2)
    soft_bounces(long_ago, 3, days_ago=40)

    page = superuser_client.get("/admin/contacts/contact/?soft_bounces=review")

    assert page.status_code == 200
    assert list(page.context["cl"].result_list) == [flagged.recipient.contact]
    # Flagged for a person, not marked invalid.
    assert flagged.recipient.contact.email_status == Contact.EmailStatus.VALID
