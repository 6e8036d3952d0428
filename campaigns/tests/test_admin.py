from __future__ import annotations

from datetime import time
from typing import Any

import pytest
from django.urls import reverse

from campaigns.admin import active_hours_display, weekdays_display
from campaigns.models import Campaign, CampaignRun, CampaignStep, Message, Recipient, SendingAccount
from leadcenter.factories import (
    CampaignFactory,
    CampaignRunFactory,
    CampaignStepFactory,
    ContactFactory,
    MessageFactory,
    RecipientFactory,
    SendingAccountFactory,
    TopicFactory,
    UserFactory,
)
from tracking.models import Rejection

pytestmark = pytest.mark.django_db

RELAY_PASSWORD = "s3cret-relay-pw"


def make_accounts(n: int) -> None:
    SendingAccountFactory.create_batch(n)


def make_campaigns(n: int) -> None:
    for _ in range(n):
        CampaignStepFactory(campaign=CampaignFactory(owner=UserFactory(), topic=TopicFactory()))


def make_steps(n: int) -> None:
    CampaignStepFactory.create_batch(n)


def make_runs(n: int) -> None:
    CampaignRunFactory.create_batch(n, started_by=UserFactory())


def make_recipients(n: int) -> None:
    RecipientFactory.create_batch(n)


def make_messages(n: int) -> None:
    MessageFactory.create_batch(n)


MODELS = [
    (SendingAccount, make_accounts),
    (Campaign, make_campaigns),
    (CampaignStep, make_steps),
    (CampaignRun, make_runs),
    (Recipient, make_recipients),
    (Message, make_messages),
]
INSPECT_ONLY = [CampaignRun, Recipient, Message]


def admin_url(model: Any, view: str, *args: Any) -> str:
    return reverse(f"admin:{model._meta.app_label}_{model._meta.model_name}_{view}", args=args)


def account_form_data(account: SendingAccount, **overrides: Any) -> dict[str, Any]:
    data = {
        "name": account.name,
        "from_email": account.from_email,
        "from_name": account.from_name,
        "is_active": "on",
        "smtp_host": account.smtp_host,
        "smtp_port": account.smtp_port,
        "smtp_security": account.smtp_security,
        "smtp_username": account.smtp_username,
        "smtp_password": "",
        "smtp_timeout": account.smtp_timeout,
        "esp": "",
        "return_path": "",
        "daily_limit": account.daily_limit,
        "per_minute_limit": account.per_minute_limit,
        "active_from": "",
        "active_until": "",
        "active_weekdays": account.active_weekdays,
        "timezone": account.timezone,
    }
    data.update(overrides)
    return data


def campaign_form_data(campaign: Campaign, **overrides: Any) -> dict[str, Any]:
    steps = list(campaign.steps.order_by("position"))
    data: dict[str, Any] = {
        "name": campaign.name,
        "owner": "",
        "topic": "",
        "track_opens": "on",
        "track_clicks": "on",
        "steps-TOTAL_FORMS": len(steps),
        "steps-INITIAL_FORMS": len(steps),
        "steps-MIN_NUM_FORMS": 0,
        "steps-MAX_NUM_FORMS": 1000,
    }
    for i, step in enumerate(steps):
        data.update(
            {
                f"steps-{i}-id": step.pk,
                f"steps-{i}-campaign": campaign.pk,
                f"steps-{i}-position": step.position,
                f"steps-{i}-subject": step.subject,
                f"steps-{i}-delay": "0",
                f"steps-{i}-stop_on_reply": "on",
                f"steps-{i}-html_body": step.html_body,
                f"steps-{i}-text_body": step.text_body,
            }
        )
    data.update(overrides)
    return data


# --- every page answers ---------------------------------------------------------------------


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


@pytest.mark.parametrize("model", [SendingAccount, Campaign, CampaignStep])
def test_add_page_answers_200(superuser_client, model):
    assert superuser_client.get(admin_url(model, "add")).status_code == 200


@pytest.mark.parametrize("model", INSPECT_ONLY)
def test_runs_recipients_and_messages_cannot_be_added_in_the_admin(superuser_client, model):
    assert superuser_client.get(admin_url(model, "add")).status_code == 403


def test_a_message_is_shown_read_only(superuser_client):
    message = MessageFactory(smtp_code=550, smtp_response="5.1.1 user unknown")
    url = admin_url(Message, "change", message.pk)

    response = superuser_client.get(url)

    assert "5.1.1 user unknown" in response.text
    assert 'name="_save"' not in response.text
    assert superuser_client.post(url, {"smtp_code": "250"}).status_code == 403


# --- Sent emails ----------------------------------------------------------------------------


def test_messages_are_called_sent_emails(superuser_client):
    response = superuser_client.get(reverse("admin:index"))

    assert "Sent emails" in response.text


@pytest.mark.parametrize(
    "term", ["Ada Lovelace", "Lovelace", "ada@analytical.test", "ada@new-address.test"]
)
def test_sent_emails_search_finds_a_message_by_contact_name_and_email(superuser_client, term):
    contact = ContactFactory(first_name="Ada", last_name="Lovelace", email="ada@new-address.test")
    wanted = MessageFactory(recipient__contact=contact, recipient__email="ada@analytical.test")
    MessageFactory(
        recipient__contact__first_name="Charles", recipient__contact__last_name="Babbage"
    )

    response = superuser_client.get(admin_url(Message, "changelist"), {"q": term})

    assert list(response.context["cl"].result_list) == [wanted]
    assert "ada@analytical.test" in response.text


@pytest.mark.parametrize("people_per_name", [1, 1_000])
def test_sent_emails_search_by_a_name_many_contacts_share_finds_them_all(
    superuser_client, monkeypatch, people_per_name
):
    from campaigns import selectors

    monkeypatch.setattr(selectors, "PEOPLE_PER_NAME", people_per_name)
    wanted = {MessageFactory(recipient__contact__first_name="Grace") for _ in range(3)}
    MessageFactory(recipient__contact__first_name="Ada")

    response = superuser_client.get(admin_url(Message, "changelist"), {"q": "grace"})

    assert set(response.context["cl"].result_list) == wanted


def test_sent_emails_can_be_narrowed_to_one_run_by_a_link(superuser_client):
    # Run dashboards link into this list with the run's id in the query string.
    wanted = MessageFactory()
    MessageFactory(recipient__run__campaign=wanted.run.campaign)

    response = superuser_client.get(
        admin_url(Message, "changelist"), {"run__id__exact": wanted.run_id}
    )

    assert list(response.context["cl"].result_list) == [wanted]


@pytest.mark.parametrize("term", ["<abc123@leadcenter.test>", "abc123@leadcenter.test"])
def test_sent_emails_search_finds_a_message_by_message_id(superuser_client, term):
    wanted = MessageFactory(message_id="<abc123@leadcenter.test>")
    MessageFactory()

    response = superuser_client.get(admin_url(Message, "changelist"), {"q": term})

    assert list(response.context["cl"].result_list) == [wanted]


@pytest.mark.parametrize("term", ["LOVELACE", "ada", "  Ada   lovelace ", "ADA@ANALYTICAL.TEST"])
def test_sent_emails_search_ignores_case_and_spacing(superuser_client, term):
    contact = ContactFactory(first_name="Ada", last_name="Lovelace")
    wanted = MessageFactory(recipient__contact=contact, recipient__email="ada@analytical.test")
    MessageFactory(recipient__contact__first_name="Adam", recipient__contact__last_name="Ada-Smith")

    response = superuser_client.get(admin_url(Message, "changelist"), {"q": term})

    assert list(response.context["cl"].result_list) == [wanted]


def test_a_list_of_more_than_the_cap_counts_only_up_to_it_and_says_so(
    superuser_client, monkeypatch
):
    from leadcenter.paginator import CappedCountPaginator

    first = MessageFactory()
    for _ in range(6):
        MessageFactory(recipient__run=first.run)
    monkeypatch.setattr(CappedCountPaginator, "cap", 5)

    response = superuser_client.get(admin_url(Message, "changelist"))
    within = superuser_client.get(admin_url(Message, "changelist"), {"q": "nobody@x.test"})

    assert response.context["cl"].result_count == 5
    assert "More than 5 sent emails match" in response.text
    assert within.context["cl"].result_count == 0
    assert "More than" not in within.text


@pytest.mark.parametrize("kind", ["hard", "soft"])
def test_sent_emails_filter_by_rejection_kind(superuser_client, kind):
    hard, soft = MessageFactory(), MessageFactory()
    MessageFactory()
    for message, k, category in ((hard, "hard", "user_not_found"), (soft, "soft", "mailbox_full")):
        Rejection.objects.create(message=message, kind=k, category=category, source="smtp")

    response = superuser_client.get(admin_url(Message, "changelist"), {"rejection": kind})

    assert list(response.context["cl"].result_list) == [hard if kind == "hard" else soft]


def test_sent_emails_filter_by_status_campaign_and_account(superuser_client):
    wanted = MessageFactory()
    Message.objects.filter(pk=wanted.pk).update(status=Message.Status.BOUNCED)
    MessageFactory(recipient__run=wanted.run)  # same campaign and run, still queued
    other = MessageFactory()
    Message.objects.filter(pk=other.pk).update(status=Message.Status.BOUNCED)

    response = superuser_client.get(
        admin_url(Message, "changelist"),
        {
            "status__exact": "bounced",
            "run__campaign__id__exact": wanted.run.campaign_id,
            "account__id__exact": wanted.account_id,
        },
    )

    assert list(response.context["cl"].result_list) == [wanted]


def test_sent_emails_filter_by_rejection_category_lists_each_message_once(superuser_client):
    wanted = MessageFactory()
    for _ in range(2):
        Rejection.objects.create(
            message=wanted, kind="soft", category="mailbox_full", source="smtp"
        )
    Rejection.objects.create(
        message=MessageFactory(), kind="hard", category="user_not_found", source="smtp"
    )

    response = superuser_client.get(admin_url(Message, "changelist"), {"rejection": "mailbox_full"})

    assert list(response.context["cl"].result_list) == [wanted]


def _reject(message: Message, kind: str, category: str) -> None:
    Rejection.objects.create(message=message, kind=kind, category=category, source="smtp")


def test_sent_emails_filter_finds_an_email_by_each_rejection_it_got(superuser_client):
    message = MessageFactory()
    _reject(message, "soft", "no_answer")
    _reject(MessageFactory(), "hard", "user_not_found")
    url = admin_url(Message, "changelist")

    def found(value: str) -> bool:
        response = superuser_client.get(url, {"rejection": value})
        return message in response.context["cl"].result_list

    assert found("no_answer") and found("soft")
    assert not found("user_not_found") and not found("hard")

    # A later rejection of another category and kind adds them; the first ones stay.
    _reject(message, "hard", "domain_not_found")

    assert found("no_answer") and found("soft")
    assert found("domain_not_found") and found("hard")
    assert not found("user_not_found")


def test_sent_emails_rejection_filter_counts_equal_the_truth(superuser_client):
    outcomes = [
        [("hard", "user_not_found")],
        [("hard", "domain_not_found"), ("soft", "no_answer")],
        [("soft", "mailbox_full"), ("soft", "mailbox_full")],
        [("soft", "spam_blocked"), ("soft", "unspecified"), ("hard", "user_not_found")],
        [("soft", "no_answer")],
        [],
    ]
    for rejections in outcomes * 3:
        message = MessageFactory()
        for kind, category in rejections:
            _reject(message, kind, category)
    # One rejection moved to another email and one deleted: the flags follow.
    moved = Rejection.objects.filter(category="spam_blocked").first()
    Rejection.objects.filter(pk=moved.pk).update(message=MessageFactory())
    Rejection.objects.filter(category="unspecified").first().delete()
    url = admin_url(Message, "changelist")

    for value in [*Rejection.Kind.values, *Rejection.Category.values]:
        field = "kind" if value in Rejection.Kind.values else "category"
        truth = set(Rejection.objects.filter(**{field: value}).values_list("message_id", flat=True))
        cl = superuser_client.get(url, {"rejection": value}).context["cl"]

        assert cl.result_count == len(truth), value
        assert {m.pk for m in cl.result_list} == truth, value


@pytest.mark.parametrize(
    "query", ["", "rejection=no_answer&status__exact=queued", "status__exact=queued&p=1"]
)
def test_sent_emails_rows_link_and_select_as_django_admin_does(superuser_client, query):
    from django.contrib import admin as django_admin
    from django.contrib.admin.templatetags.admin_urls import add_preserved_filters
    from django.test import RequestFactory
    from django.utils.html import escape

    message = MessageFactory(message_id='<a&"b"@example.test>')
    Rejection.objects.create(message=message, kind="soft", category="no_answer", source="smtp")
    url = f"{admin_url(Message, 'changelist')}?{query}"
    model_admin = django_admin.site._registry[Message]
    request = RequestFactory().get(url)
    request.resolver_match = __import__("django.urls").urls.resolve(request.path)

    link = add_preserved_filters(
        {"preserved_filters": model_admin.get_preserved_filters(request), "opts": Message._meta},
        admin_url(Message, "change", message.pk),
    )
    checkbox = django_admin.ModelAdmin.action_checkbox(model_admin, message)
    html = superuser_client.get(url).text

    assert f'href="{escape(link)}"' in html
    assert model_admin.action_checkbox(message) == checkbox
    assert checkbox in html


@pytest.mark.parametrize("query", ["", "rejection=soft", "o=-3.1"])
def test_sent_emails_rows_are_the_cells_django_admin_writes(superuser, query):
    from django.contrib import admin as django_admin
    from django.contrib.admin.templatetags.admin_list import result_list
    from django.test import RequestFactory
    from django.urls import resolve

    from campaigns.templatetags.sent_emails import sent_emails_result_list

    MessageFactory(
        message_id='<x&"y"@example.test>', smtp_code=452, smtp_response="4.2.2 <full> " + "x" * 90,
        recipient__contact__first_name="<Ada>", recipient__contact__last_name="Lovelace",
    )  # fmt: skip
    MessageFactory(recipient__contact__first_name="", recipient__contact__last_name="  ")
    blank = MessageFactory(smtp_code=None, smtp_response="   ", account=None)
    Message.objects.filter(pk=blank.pk).update(status=Message.Status.SOFT_BOUNCED)
    _reject(blank, "soft", "mailbox_full")
    request = RequestFactory().get(f"{admin_url(Message, 'changelist')}?{query}")
    request.user = superuser
    request.resolver_match = resolve(request.path)
    cl = django_admin.site._registry[Message].get_changelist_instance(request)
    cl.formset = None  # as changelist_view sets it

    ours, theirs = sent_emails_result_list(cl), result_list(cl)

    assert len(theirs["results"]) == len(cl.result_list) > 0
    assert ["".join(map(str, row)) for row in ours["results"]] == [
        "".join(map(str, row)) for row in theirs["results"]
    ]
    assert {k: v for k, v in ours.items() if k != "results"} == {
        k: v for k, v in theirs.items() if k != "results"
    }


def test_sent_emails_columns_show_contact_campaign_step_and_reply(superuser_client):
    message = MessageFactory(
        recipient__contact__first_name="Ada",
        recipient__contact__last_name="Lovelace",
        recipient__run__campaign__name="Spring launch",
        smtp_code=452,
        smtp_response="4.2.2 mailbox full " + "x" * 200,
    )

    response = superuser_client.get(admin_url(Message, "changelist"))

    for text in ["Ada Lovelace", message.recipient.email, "Spring launch", "452", "4.2.2 mailbox"]:
        assert text in response.text
    assert "x" * 100 not in response.text  # the reply is cut short in the list


# --- sending accounts -----------------------------------------------------------------------


def test_the_smtp_password_is_never_shown(superuser_client):
    account = SendingAccountFactory(smtp_password=RELAY_PASSWORD)

    response = superuser_client.get(admin_url(SendingAccount, "change", account.pk))

    assert response.status_code == 200
    assert RELAY_PASSWORD not in response.text
    assert 'type="password"' in response.text


def test_a_blank_password_keeps_the_stored_one(superuser_client):
    account = SendingAccountFactory(smtp_password=RELAY_PASSWORD)

    response = superuser_client.post(
        admin_url(SendingAccount, "change", account.pk),
        account_form_data(account, daily_limit=250),
    )

    assert response.status_code == 302
    account.refresh_from_db()
    assert account.smtp_password == RELAY_PASSWORD
    assert account.daily_limit == 250


def test_a_typed_password_replaces_the_stored_one(superuser_client):
    account = SendingAccountFactory(smtp_password=RELAY_PASSWORD)

    superuser_client.post(
        admin_url(SendingAccount, "change", account.pk),
        account_form_data(account, smtp_password="new-pw"),
    )

    account.refresh_from_db()
    assert account.smtp_password == "new-pw"


def test_the_stored_password_can_be_removed(superuser_client):
    account = SendingAccountFactory(smtp_password=RELAY_PASSWORD)

    superuser_client.post(
        admin_url(SendingAccount, "change", account.pk),
        account_form_data(account, clear_smtp_password="on"),
    )

    account.refresh_from_db()
    assert account.smtp_password == ""


def test_the_password_is_not_shown_back_when_the_form_has_errors(superuser_client):
    account = SendingAccountFactory(smtp_password=RELAY_PASSWORD)

    response = superuser_client.post(
        admin_url(SendingAccount, "change", account.pk),
        account_form_data(account, smtp_password="typed-pw", timezone="Mars/Olympus"),
    )

    assert response.status_code == 200
    assert "Not a known time zone" in response.text
    assert "typed-pw" not in response.text
    assert RELAY_PASSWORD not in response.text


def test_a_new_account_gets_the_typed_password(superuser_client):
    data = account_form_data(
        SendingAccount(name="Relay", from_email="sales@leadcenter.test"),
        smtp_password=RELAY_PASSWORD,
    )

    response = superuser_client.post(admin_url(SendingAccount, "add"), data)

    assert response.status_code == 302
    assert SendingAccount.objects.get(name="Relay").smtp_password == RELAY_PASSWORD


def test_accounts_list_shows_active_hours(superuser_client):
    SendingAccountFactory(
        active_from=time(9), active_until=time(17), active_weekdays="12345", timezone="UTC"
    )

    response = superuser_client.get(admin_url(SendingAccount, "changelist"))

    assert "09:00\u201317:00 Mon\u2013Fri" in response.text


@pytest.mark.parametrize(
    ("weekdays", "shown"),
    [
        ("12345", "Mon\u2013Fri"),
        ("1234567", "every day"),
        ("135", "Mon, Wed, Fri"),
        ("67", "Sat, Sun"),
        ("12367", "Mon\u2013Wed, Sat, Sun"),
        ("", "every day"),
    ],
)
def test_weekdays_are_shown_compactly(weekdays, shown):
    assert weekdays_display(weekdays) == shown


def test_active_hours_default_to_the_whole_day_and_name_a_non_utc_zone():
    account = SendingAccount(active_weekdays="1234567", timezone="Europe/Paris")

    assert active_hours_display(account) == "00:00\u201324:00 every day (Europe/Paris)"


# --- campaigns and roles --------------------------------------------------------------------


def test_campaign_steps_are_shown_in_position_order(superuser_client):
    campaign = CampaignFactory()
    for position in (3, 1, 2):
        CampaignStepFactory(
            campaign=campaign, position=position, subject=f"Subject number {position}"
        )

    text = superuser_client.get(admin_url(Campaign, "change", campaign.pk)).text

    positions = [text.index(f"Subject number {p}") for p in (1, 2, 3)]
    assert positions == sorted(positions)


def test_support_cannot_add_campaigns(support_client):
    assert support_client.get(admin_url(Campaign, "add")).status_code == 403


def test_support_cannot_change_sending_accounts(support_client):
    account = SendingAccountFactory(smtp_password=RELAY_PASSWORD)

    response = support_client.post(
        admin_url(SendingAccount, "change", account.pk), account_form_data(account, name="Hijacked")
    )

    assert response.status_code == 403
    account.refresh_from_db()
    assert account.name != "Hijacked"


def test_support_can_search_sent_emails(support_client):
    message = MessageFactory(recipient__contact__last_name="Lovelace")

    response = support_client.get(admin_url(Message, "changelist"), {"q": "Lovelace"})

    assert list(response.context["cl"].result_list) == [message]


def test_staff_can_view_but_not_change_a_campaign(staff_client):
    campaign = CampaignFactory(name="Spring launch")
    CampaignStepFactory(campaign=campaign)
    url = admin_url(Campaign, "change", campaign.pk)

    assert staff_client.get(url).status_code == 200
    response = staff_client.post(url, campaign_form_data(campaign, name="Renamed"))

    assert response.status_code == 403
    campaign.refresh_from_db()
    assert campaign.name == "Spring launch"


def test_managers_can_change_a_campaign(manager_client):
    campaign = CampaignFactory(name="Spring launch")
    CampaignStepFactory(campaign=campaign)

    response = manager_client.post(
        admin_url(Campaign, "change", campaign.pk), campaign_form_data(campaign, name="Renamed")
    )

    assert response.status_code == 302
    campaign.refresh_from_db()
    assert campaign.name == "Renamed"
    assert campaign.state == Campaign.State.DRAFT


def test_the_campaign_state_cannot_be_set_by_editing(superuser_client):
    campaign = CampaignFactory()
    CampaignStepFactory(campaign=campaign)

    superuser_client.post(
        admin_url(Campaign, "change", campaign.pk), campaign_form_data(campaign, state="finished")
    )

    campaign.refresh_from_db()
    assert campaign.state == Campaign.State.DRAFT


@pytest.mark.parametrize(
    "term", ["Grace Hopper", "hopper", "GRACE@NAVY.TEST", "grace@new.test", "hopp"]
)
def test_recipients_search_by_address_name_and_part_of_one(superuser_client, term):
    # "hopp" finds nothing by index and falls back to Django's search for a part.
    contact = ContactFactory(first_name="Grace", last_name="Hopper", email="grace@new.test")
    wanted = RecipientFactory(contact=contact, email="grace@navy.test")
    RecipientFactory(contact__first_name="Alan", contact__last_name="Turing")

    response = superuser_client.get(admin_url(Recipient, "changelist"), {"q": term})

    assert list(response.context["cl"].result_list) == [wanted]


def test_sent_emails_show_each_emails_latest_event(superuser_client):
    from datetime import UTC, datetime

    from tracking.models import TrackingEvent

    opened, quiet = MessageFactory(), MessageFactory()
    for minute, kind in ((1, "sent"), (9, "opened"), (5, "delivered")):
        TrackingEvent.objects.create(
            message=opened,
            type=kind,
            source="test",
            occurred_at=datetime(2026, 3, 2, 10, minute, tzinfo=UTC),
            dedupe_key=f"{kind}:{opened.pk}",
        )

    response = superuser_client.get(admin_url(Message, "changelist"))

    rows = {m.pk: m for m in response.context["cl"].result_list}
    admin_ = response.context["cl"].model_admin
    assert admin_.last_event(rows[opened.pk]) == datetime(2026, 3, 2, 10, 9, tzinfo=UTC)
    assert admin_.last_event(rows[quiet.pk]) == quiet.created
