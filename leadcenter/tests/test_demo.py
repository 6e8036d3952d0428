from __future__ import annotations

import re
from datetime import timedelta
from io import StringIO

import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.core.management import call_command
from django.test import Client

from campaigns.models import Campaign, SendingAccount
from contacts.models import Contact, ContactList, Suppression, Topic

pytestmark = pytest.mark.django_db

PASSWORD = "demo-password-for-tests"


def run_demo(*args: str) -> str:
    out = StringIO()
    call_command("demo", "--contacts", "300", "--no-send", *args, stdout=out)
    return out.getvalue()


def printed_password(output: str) -> str:
    match = re.search(r"Password: (\S+)", output)
    assert match, output
    return match.group(1)


def contact_counts() -> dict[str, int]:
    return {
        "contacts": Contact.objects.count(),
        "suppressions": Suppression.objects.count(),
        "list_links": Contact.lists.through.objects.count(),
        "topic_links": Contact.opted_out_topics.through.objects.count(),
        "users": get_user_model().objects.count(),
        "lists": ContactList.objects.count(),
        "topics": Topic.objects.count(),
        "accounts": SendingAccount.objects.count(),
        "campaigns": Campaign.objects.count(),
        "steps": Campaign.objects.filter(steps__isnull=False).count(),
    }


def test_it_prints_the_admin_login_that_works(client: Client) -> None:
    output = run_demo("--password", PASSWORD)

    assert "http://127.0.0.1:8000/admin/" in output
    assert "Username: admin" in output
    assert printed_password(output) == PASSWORD
    admin = get_user_model().objects.get(username="admin")
    assert admin.is_superuser and admin.is_staff
    assert client.login(username="admin", password=PASSWORD)


def test_it_puts_a_demo_user_with_the_same_password_in_each_role(client: Client) -> None:
    run_demo("--password", PASSWORD)

    for group_name, username in [
        ("Managers", "maria.manager"),
        ("Staff", "sam.staff"),
        ("Support", "sofia.support"),
    ]:
        group = Group.objects.get(name=group_name)
        user = group.user_set.get(username=username)
        assert user.is_staff and not user.is_superuser
        assert client.login(username=username, password=PASSWORD)


def test_it_spreads_contacts_over_sales_reps_who_are_managers_or_staff() -> None:
    run_demo("--password", PASSWORD)

    owners = get_user_model().objects.filter(owned_contacts__isnull=False).distinct()
    assert owners.count() >= 3
    for owner in owners:
        assert owner.groups.filter(name__in=["Managers", "Staff"]).exists()
    assert not Contact.objects.filter(owner__isnull=True).exists()


def test_it_loads_contacts_with_every_kind_of_flag() -> None:
    run_demo("--password", PASSWORD)

    assert Contact.objects.count() == 300
    unsubscribed = Contact.objects.filter(unsubscribed_at__isnull=False)
    assert unsubscribed.exists()
    for contact in unsubscribed:
        assert Suppression.objects.filter(
            email=contact.email.lower(), reason="unsubscribe"
        ).exists()
    assert Contact.objects.filter(do_not_email=True).exists()
    assert Contact.objects.filter(do_not_mass_email=True).exists()
    invalid = Contact.objects.filter(email_status="invalid")
    assert invalid.exists()
    for contact in invalid:
        assert contact.invalid_reason and contact.invalid_at
        assert Suppression.objects.filter(
            email=contact.email.lower(), reason="hard_bounce"
        ).exists()
    assert Contact.objects.filter(email="").exists()
    assert Contact.objects.filter(opted_out_topics__name="Newsletter").exists()


def test_contacts_have_realistic_unique_example_addresses_and_stages() -> None:
    run_demo("--password", PASSWORD)

    emails = list(Contact.objects.exclude(email="").values_list("email", flat=True))
    assert len({e.lower() for e in emails}) == len(emails)
    assert all(e.endswith(".example") for e in emails)
    assert not Contact.objects.filter(first_name="").exists()
    assert not Contact.objects.filter(company="").exists()
    assert Contact.objects.filter(stage="subscriber").count() > 150
    for stage in ("lead", "opportunity", "customer"):
        assert Contact.objects.filter(stage=stage, lead_at__isnull=False).exists()
    assert not Contact.objects.filter(stage="opportunity", opportunity_at__isnull=True).exists()
    for name in ("Prospects EMEA", "Prospects Americas", "Webinar attendees", "Customers"):
        assert ContactList.objects.get(name=name).contacts.exists()


def test_it_creates_both_sending_accounts_on_the_simulator_port() -> None:
    run_demo("--password", PASSWORD, "--smtp-port", "2600")

    eu = SendingAccount.objects.get(name="Sales EU")
    us = SendingAccount.objects.get(name="Sales US")
    assert (eu.from_email, eu.timezone) == ("sales-eu@leadcenter.example", "Europe/Berlin")
    assert (us.from_email, us.timezone) == ("sales-us@leadcenter.example", "America/New_York")
    for account in (eu, us):
        assert (account.smtp_host, account.smtp_port) == ("127.0.0.1", 2600)
        assert account.smtp_security == "none"
        assert account.active_weekdays == "1234567"
        assert account.return_path == "bounces@leadcenter.example"
        assert account.is_active


def test_it_creates_draft_campaigns_with_their_steps() -> None:
    run_demo("--password", PASSWORD)

    launch = Campaign.objects.get(name="Spring product launch")
    assert launch.state == "draft"
    assert launch.owner.username == "maria.manager"
    assert launch.topic.name == "Product updates"
    assert launch.track_opens and launch.track_clicks
    assert set(launch.lists.values_list("name", flat=True)) == {
        "Prospects EMEA",
        "Prospects Americas",
    }
    assert launch.accounts.count() == 2
    steps = list(launch.steps.order_by("position"))
    assert [s.position for s in steps] == [1, 2]
    assert steps[1].delay == timedelta(days=3)
    assert "{{ contact.first_name" in steps[0].html_body
    assert "https://leadcenter.example/" in steps[0].html_body
    assert steps[0].text_body

    webinar = Campaign.objects.get(name="Webinar invitation")
    assert webinar.steps.count() == 3
    assert webinar.topic.name == "Events"
    assert list(webinar.lists.values_list("name", flat=True)) == ["Webinar attendees"]

    newsletter = Campaign.objects.get(name="Customer newsletter November")
    assert newsletter.steps.count() == 1
    assert newsletter.topic.name == "Newsletter"
    assert list(newsletter.lists.values_list("name", flat=True)) == ["Customers"]


def test_step_bodies_render_with_the_contact_in_the_context() -> None:
    from django.template import Context, Template

    run_demo("--password", PASSWORD)

    contact = Contact.objects.exclude(email="").first()
    for campaign in Campaign.objects.all():
        for step in campaign.steps.all():
            for source in (step.subject, step.html_body, step.text_body):
                rendered = Template(source).render(Context({"contact": contact}))
                assert "{{" not in rendered
            assert contact.first_name in Template(step.text_body).render(
                Context({"contact": contact})
            )


def test_running_twice_duplicates_nothing_and_prints_a_new_password(client: Client) -> None:
    first = run_demo()
    counts = contact_counts()
    second = run_demo()

    assert contact_counts() == counts
    assert "none added" in second
    old, new = printed_password(first), printed_password(second)
    assert old != new
    assert not client.login(username="admin", password=old)
    assert client.login(username="admin", password=new)
    assert client.login(username="sam.staff", password=new)


def test_the_random_password_is_printed_and_works(client: Client) -> None:
    output = run_demo()

    password = printed_password(output)
    assert len(password) >= 16
    assert client.login(username="admin", password=password)


def test_it_accepts_no_send() -> None:
    output = run_demo("--password", PASSWORD, "--no-send")

    assert "--no-send" in output
    assert not Campaign.objects.exclude(state="draft").exists()


def test_it_leaves_existing_contacts_with_a_demo_address_alone() -> None:
    # The same seed generates the same addresses; one already taken must not break the load.
    run_demo("--password", PASSWORD)
    taken = Contact.objects.exclude(email="").order_by("id").first().email
    Contact.objects.all().delete()
    Contact.objects.create(email=taken.upper(), first_name="Existing")

    run_demo("--password", PASSWORD)

    assert Contact.objects.filter(email__iexact=taken).count() == 1
    assert Contact.objects.count() == 301


def test_it_sends_demo_runs_through_the_simulated_internet(tmp_path) -> None:
    from campaigns.models import CampaignRun, Message
    from campaigns.simulator import _free_port
    from tracking.models import TrackingEvent

    out = StringIO()
    call_command(
        "demo",
        "--contacts",
        "300",
        "--password",
        PASSWORD,
        "--smtp-port",
        str(_free_port()),
        "--bounce-maildir",
        str(tmp_path / "bounces"),
        stdout=out,
    )

    runs = dict(CampaignRun.objects.values_list("campaign__name", "status"))
    assert runs == {
        "Customer newsletter November": "completed",
        "Webinar invitation": "paused",
        "Spring product launch": "running",  # follow-ups are due in three days
    }
    assert "Demo runs sent through the simulated internet:" in out.getvalue()
    assert CampaignRun.objects.get(status="completed").messages.filter(status="sent").exists()
    # Accepted, then bounced through a DSN the demo read from the simulator's Maildir; the
    # demo names have accents, which the DSN quotes as they went out.
    bounced_later = TrackingEvent.objects.filter(type="bounced", source="dsn")
    assert bounced_later.exists()
    assert not Message.objects.filter(
        pk__in=bounced_later.values("message_id"), status=Message.Status.SENT
    ).exists()
    assert f"Bounces of accepted mail, read from {tmp_path / 'bounces'}: " in out.getvalue()
    # Run again: the runs are kept, nothing is sent twice.
    again = StringIO()
    call_command("demo", "--contacts", "300", "--password", PASSWORD, stdout=again)
    assert "Demo runs were already sent; none added." in again.getvalue()
    assert CampaignRun.objects.count() == 3
