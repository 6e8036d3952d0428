"""Run details, campaign summary and comparison: figures equal the truth computed from the rows,
every figure's link lists exactly that many recipients, and the pages' query counts do not grow
with the number of recipients. The counters behind them are kept by database triggers; they are
checked against the rows after every kind of write that can change them."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import timedelta
from html import unescape
from itertools import count

import pytest
from django.db.models import Count, F, Sum
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from campaigns import reports
from campaigns.models import (
    MESSAGE_REJECTION_FLAGS,
    REJECTION_BITS,
    Campaign,
    CampaignRun,
    Message,
    Recipient,
    RunActivity,
    RunTally,
    SendingAccount,
)
from campaigns.selectors import account_capacity, in_doubt_cutoff, run_progress
from campaigns.services import (
    account_usage_add,
    campaign_launch,
    dispatch_due,
    follow_ups_queue,
    run_prepare,
)
from contacts.models import Contact, Suppression
from leadcenter.factories import (
    MessageFactory,
    RecipientFactory,
    SendingAccountFactory,
    UserFactory,
)
from tracking.events import InboundEvent
from tracking.models import Rejection, TrackingEvent
from tracking.services import event_record, messages_transition

pytestmark = pytest.mark.django_db

S = Message.Status
E = TrackingEvent.Type
_keys = count()


# --- a real run with a mix of outcomes ---------------------------------------------------------


@dataclass
class Scenario:
    campaign: Campaign
    run: CampaignRun
    ann: object
    bob: object


def record(message: Message, event_type: str, *, minutes_ago: int = 0, **fields) -> None:
    result = event_record(
        InboundEvent(
            type=event_type,
            source=fields.pop("source", "pixel"),
            occurred_at=timezone.now() - timedelta(minutes=minutes_ago),
            dedupe_key=f"test:{next(_keys)}",
            message_pk=message.pk,
            user_agent=fields.pop("user_agent", "Mozilla/5.0 (Macintosh) AppleWebKit"),
            **fields,
        )
    )
    assert result.event is not None


def message_to(email: str) -> Message:
    return Message.objects.get(recipient__email=email)


def send_mixed_run(make_campaign, add_contacts, *, name: str = "Spring launch") -> Scenario:
    """A run sent through the simulated internet: accepted, hard-bounced (user, domain), soft
    (mailbox full, no answer: still retrying), refused as spam, and every filter reason; then
    opens and clicks by people and machines, a reply, an unsubscribe, a complaint, a delivery
    webhook, a late bounce, leads and opportunities, and one email left in doubt."""
    ann = UserFactory(username="ann", first_name="Ann", last_name="Archer")
    bob = UserFactory(username="bob", first_name="Bob", last_name="Baker")
    owners = [ann, bob, None]
    for i in range(1, 10):
        add_contacts(f"ok{i}@example.test", owner=owners[i % 3], first_name=f"Ok{i}")
    add_contacts("user-unknown@example.test", owner=ann)
    add_contacts("someone@no-domain.example.test", owner=bob)
    add_contacts("mailbox-full@example.test", owner=ann)
    add_contacts("mailbox-full-2@example.test", owner=bob)
    add_contacts("spam-block@example.test")
    add_contacts("no-answer@example.test", owner=bob)
    add_contacts("dne@example.test", owner=ann, do_not_email=True)
    add_contacts("unsub@example.test", owner=bob, unsubscribed_at=timezone.now())
    add_contacts("", owner=ann, first_name="NoAddress")
    add_contacts("invalid@example.test", email_status=Contact.EmailStatus.INVALID)
    add_contacts("blocked@example.test", owner=bob)
    Suppression.objects.create(email="blocked@example.test", reason=Suppression.Reason.MANUAL)
    add_contacts("OK1@example.test ", owner=ann)  # a duplicate of ok1

    campaign = make_campaign(name=name)
    run = campaign_launch(campaign=campaign, enqueue=False)
    run_prepare(run=run)
    dispatch_due()
    # The emails left six hours ago (an open seconds after sending is a scanner's).
    Message.objects.filter(run=run, sent_at__isnull=False).update(
        sent_at=timezone.now() - timedelta(hours=6)
    )

    record(message_to("ok1@example.test"), E.OPENED, minutes_ago=300)
    record(message_to("ok1@example.test"), E.OPENED, minutes_ago=200)
    record(message_to("ok1@example.test"), E.CLICKED, minutes_ago=190, source="click",
           url="https://example.test/")  # fmt: skip
    record(message_to("ok2@example.test"), E.OPENED, minutes_ago=120)
    record(message_to("ok2@example.test"), E.REPLIED, minutes_ago=100, source="reply")
    record(message_to("ok3@example.test"), E.OPENED, minutes_ago=60)
    record(message_to("ok3@example.test"), E.UNSUBSCRIBED, minutes_ago=59, source="unsubscribe")
    record(message_to("ok4@example.test"), E.OPENED, minutes_ago=61, is_machine=True,
           user_agent="GoogleImageProxy")  # fmt: skip
    record(message_to("ok5@example.test"), E.CLICKED, minutes_ago=5, is_machine=True,
           source="click", user_agent="Mimecast")  # fmt: skip
    record(message_to("ok5@example.test"), E.DELIVERED, source="webhook:postmark")
    record(message_to("ok6@example.test"), E.DELIVERED, source="webhook:postmark")
    record(message_to("ok6@example.test"), E.COMPLAINED, source="arf")
    # A bounce that arrives after the email was accepted: the address does not exist.
    record(message_to("ok7@example.test"), E.BOUNCED, source="dsn", smtp_code=550,
           smtp_status="5.1.1", diagnostic="550 5.1.1 user unknown")  # fmt: skip
    Recipient.objects.filter(email__in=["ok1@example.test", "ok2@example.test"]).update(
        lead_at=timezone.now()
    )
    Recipient.objects.filter(email="ok1@example.test").update(opportunity_at=timezone.now())
    # A worker died after claiming this retry: it is in doubt.
    stuck = message_to("mailbox-full-2@example.test")
    old = timezone.now() - timedelta(hours=2)
    messages_transition(
        message_ids=[stuck.pk],
        from_status=S.SOFT_BOUNCED,
        status=S.SENDING,
        event_type=E.CLAIMED,
        source=TrackingEvent.Source.SYSTEM,
        occurred_at=old,
        fields={"claimed_at": old},
    )
    run.refresh_from_db()
    return Scenario(campaign=campaign, run=run, ann=ann, bob=bob)


@pytest.fixture
def scenario(smtp_server, make_campaign, add_contacts) -> Scenario:
    return send_mixed_run(make_campaign, add_contacts)


# --- the truth, computed from the rows in Python (independently of the report's Q objects) ----


def truth_for(recipients) -> dict[str, int]:
    recipients = list(recipients)
    ids = {r.pk for r in recipients}
    categories: dict[int, set[str]] = {}
    for rid, category in Rejection.objects.filter(message__recipient__in=ids).values_list(
        "message__recipient_id", "category"
    ):
        categories.setdefault(rid, set()).add(category)
    statuses: dict[int, list[tuple[str, object]]] = {}
    for rid, status, claimed in Message.objects.filter(recipient__in=ids).values_list(
        "recipient_id", "status", "claimed_at"
    ):
        statuses.setdefault(rid, []).append((status, claimed))
    cutoff = in_doubt_cutoff()
    t: dict[str, int] = dict.fromkeys(reports.TALLY_KEYS, 0)
    t["soft_bounced_now"] = t["in_doubt"] = 0
    hard = set(Rejection.HARD_CATEGORIES)
    for r in recipients:
        cats = categories.get(r.pk, set())
        t["recipients"] += 1
        t[r.status] += 1
        if r.filter_reason:
            t[f"filtered_{r.filter_reason}"] += 1
        t["attempted"] += bool(r.steps_sent > 0 or cats)
        t["accepted"] += r.steps_sent > 0
        for key, field in [
            ("delivered", "delivered_at"), ("opened", "opened_at"), ("clicked", "clicked_at"),
            ("replied", "replied_at"), ("unsubscribed", "unsubscribed_at"),
            ("complained", "complained_at"), ("bounced", "bounced_at"), ("leads", "lead_at"),
            ("opportunities", "opportunity_at"),
        ]:  # fmt: skip
            t[key] += getattr(r, field) is not None
        t["rejected"] += bool(cats)
        t["rejected_hard"] += bool(cats & hard)
        t["rejected_soft"] += bool(cats - hard)
        for category in cats:
            t[f"rejected_{category}"] += 1
        mine = statuses.get(r.pk, [])
        t["soft_bounced_now"] += any(s == S.SOFT_BOUNCED for s, _ in mine)
        t["in_doubt"] += any(s == S.SENDING and c and c < cutoff for s, c in mine)
    return t


def tally_of(run: CampaignRun) -> dict[str, int]:
    return reports.run_counts(run=run)


def assert_tallies_match_rows() -> None:
    """Every run's counters, per owner and per day first emailed, equal a live count of its
    recipients."""
    for run in CampaignRun.objects.all():
        live = reports.live_by_owner(Recipient.objects.filter(run=run))
        kept = {
            key: counts
            for key, counts in reports.tallies_by_owner(RunTally.objects.filter(run=run)).items()
            if any(counts.values())
        }
        assert kept == live, f"run #{run.pk}"
        live_days = {
            (row["contact__owner"] or 0, row["first_sent_on"] or RunTally.NO_DAY): {
                key: row[key] for key in reports.TALLY_KEYS
            }
            for row in Recipient.objects.filter(run=run)
            .values("contact__owner", "first_sent_on")
            .annotate(**{k: Count("pk", filter=f.q) for k, f in reports.FIGURES.items()})
            .order_by()
        }
        kept_days = {
            (row["owner_key"], row["day"]): {key: row[key] for key in reports.TALLY_KEYS}
            for row in RunTally.objects.filter(run=run)
            .values("owner_key", "day")
            .annotate(**{k: Sum(k) for k in reports.TALLY_KEYS})
            .order_by()
            if any(row[key] for key in reports.TALLY_KEYS)
        }
        assert kept_days == live_days, f"run #{run.pk} per day"


# --- helpers for pages and links ---------------------------------------------------------------

FIGURE_LINK = re.compile(
    r'<a href="([^"]+)" class="lc-figure" data-figure="([^"]*)" data-count="(\d+)"'
)
FUNNEL_LINK = re.compile(r'<a href="([^"]+)">\s*<title>([^:<]+): (\d+)')


def figure_links(html: str) -> list[tuple[str, str, int]]:
    links = [(unescape(u), unescape(label), int(n)) for u, label, n in FIGURE_LINK.findall(html)]
    links += [
        (unescape(u), f"funnel: {label}", int(n)) for u, label, n in FUNNEL_LINK.findall(html)
    ]
    return links


def listed(client, url: str) -> int:
    response = client.get(url)
    assert response.status_code == 200, url
    assert "?e=1" not in response.get("Location", ""), url
    return response.context["cl"].result_count


def details_url(run: CampaignRun) -> str:
    return reverse("admin:campaigns_campaignrun_details", args=[run.pk])


def summary_url(campaign: Campaign, query: str = "") -> str:
    url = reverse("admin:campaigns_campaign_summary", args=[campaign.pk])
    return f"{url}?{query}" if query else url


# --- run details -------------------------------------------------------------------------------


def test_the_run_details_figures_equal_the_truth_from_the_rows(superuser_client, scenario):
    response = superuser_client.get(details_url(scenario.run))

    assert response.status_code == 200
    truth = truth_for(Recipient.objects.filter(run=scenario.run))
    report = response.context["report"]
    assert report.counts == {key: truth[key] for key in reports.TALLY_KEYS}
    assert report.soft_bounced_now == truth["soft_bounced_now"] == 2
    assert report.in_doubt == truth["in_doubt"] == 1
    # The mix really is a mix.
    assert truth["filtered"] == 6
    assert all(truth[f"filtered_{r}"] == 1 for r in (
        "do_not_email", "unsubscribed", "no_email", "invalid_email", "blocked", "duplicate"))  # fmt: skip
    assert truth["rejected_user_not_found"] == 2  # at RCPT, and the late bounce
    assert truth["rejected_domain_not_found"] == truth["rejected_spam_blocked"] == 1
    assert truth["rejected_mailbox_full"] == 2 and truth["rejected_no_answer"] == 1
    assert truth["opened"] == 3 and truth["clicked"] == 1  # machine activity is not a person
    assert truth["delivered"] == 5 and truth["bounced"] == 3
    assert truth["leads"] == 2 and truth["opportunities"] == 1


def test_the_progress_is_the_one_of_run_progress(superuser_client, scenario):
    response = superuser_client.get(details_url(scenario.run))

    progress = response.context["report"].progress
    expected = run_progress(run=scenario.run)
    assert (progress.total, progress.done, progress.counts) == (
        expected.total,
        expected.done,
        expected.counts,
    )
    assert f"Progress {expected.percent:.1f}%" in response.content.decode()


def test_every_figure_on_the_run_details_links_to_exactly_its_recipients(
    superuser_client, scenario
):
    html = superuser_client.get(details_url(scenario.run)).content.decode()

    links = figure_links(html)
    assert len(links) >= 30
    for url, label, expected in links:
        assert listed(superuser_client, url) == expected, label


def test_the_run_details_explain_sent_delivered_and_open_tracking(superuser_client, scenario):
    html = superuser_client.get(details_url(scenario.run)).content.decode()

    assert "Completed" in html or "Waiting on queue" in html or "Running" in html
    assert (
        "recipient&#x27;s own server confirmed" in html
        or "recipient's own server confirmed" in html
    )
    assert "Open tracking is not reliable" in html
    assert "privacy proxies" in html


def test_the_run_details_chart_shows_opens_and_clicks_by_people_and_machines(
    superuser_client, scenario
):
    response = superuser_client.get(details_url(scenario.run))

    chart = response.context["chart"]
    assert chart["unit"] == "hour"
    assert chart["totals"] == {
        "human_opens": 4, "machine_opens": 1, "human_clicks": 1, "machine_clicks": 1,
    }  # fmt: skip
    html = response.content.decode()
    assert '<svg class="lc-chart" id="activity-chart"' in html
    assert "by machines" in html
    # Nothing is loaded from elsewhere.
    assert not re.search(r'(src|href)="(https?:)?//', html)


def test_the_status_of_a_waiting_run_is_shown_with_its_meaning(superuser_client, scenario):
    CampaignRun.objects.filter(pk=scenario.run.pk).update(status=CampaignRun.Status.WAITING)

    html = superuser_client.get(details_url(scenario.run)).content.decode()

    assert "Waiting on queue" in html
    assert "no worker, daily quota or active hours" in html


def test_the_run_list_and_the_run_page_link_to_the_details(superuser_client, scenario):
    url = details_url(scenario.run)

    changelist = superuser_client.get(reverse("admin:campaigns_campaignrun_changelist"))
    change = superuser_client.get(
        reverse("admin:campaigns_campaignrun_change", args=[scenario.run.pk])
    )

    assert url in changelist.content.decode()
    assert url in change.content.decode()


def _grow_run(run: CampaignRun, account: SendingAccount, owners: list) -> callable:
    """make(n): n more recipients of the run, each with its contact, an email and events."""

    def make(n: int) -> None:
        for i in range(n):
            recipient = RecipientFactory(
                run=run, account=account, contact__owner=owners[i % len(owners)]
            )
            message = MessageFactory(recipient=recipient, account=account)
            record(message, E.OPENED, minutes_ago=i)
            if i % 3 == 0:
                Rejection.objects.create(
                    message=message, email=recipient.email, kind="soft",
                    category="mailbox_full", source="smtp",
                )  # fmt: skip

    return make


def queries_of(client, url: str) -> int:
    from django.db import connection

    client.get(url)  # warm per-process caches (content types, permissions)
    with CaptureQueriesContext(connection) as queries:
        assert client.get(url).status_code == 200
    return len(queries)


def test_the_run_details_queries_do_not_grow_with_recipients(superuser_client):
    run = CampaignRun.objects.create(campaign=Campaign.objects.create(name="Big"))
    make = _grow_run(run, SendingAccountFactory(), [UserFactory(), UserFactory(), None])
    url = details_url(run)

    make(10)
    with_10 = queries_of(superuser_client, url)
    make(30)
    with_40 = queries_of(superuser_client, url)

    assert with_40 == with_10 <= 15
    assert reports.run_counts(run=run)["recipients"] == 40


# --- summary -------------------------------------------------------------------------------------


def test_the_summary_has_the_overall_section_then_one_per_owner(superuser_client, scenario):
    response = superuser_client.get(summary_url(scenario.campaign))

    assert response.status_code == 200
    sections = [item["section"] for item in response.context["sections"]]
    assert [s.title for s in sections] == ["Overall", "Ann Archer", "Bob Baker", "No owner"]
    recipients = Recipient.objects.filter(run__campaign=scenario.campaign)
    expected = {
        "Overall": truth_for(recipients),
        "Ann Archer": truth_for(recipients.filter(contact__owner=scenario.ann)),
        "Bob Baker": truth_for(recipients.filter(contact__owner=scenario.bob)),
        "No owner": truth_for(recipients.filter(contact__owner__isnull=True)),
    }
    for section in sections:
        truth = expected[section.title]
        for row in section.rows:
            assert row.count == truth[row.figure.key], (section.title, row.label)
            sent = truth["attempted"]
            assert row.percent == (100.0 * row.count / sent if sent else None)
    labels = [row.label for row in sections[0].rows]
    assert labels == [
        "Sent", "Opened", "Clicks", "Unsubscribed", "Rejected", "Hard rejections",
        "User not found", "Domain not found", "Soft rejections", "Mailbox full",
        "No answer from email server", "Email blocked by spam filter", "Unspecified error",
        "Leads", "Opportunities",
    ]  # fmt: skip


def test_every_count_on_the_summary_links_to_exactly_its_recipients(superuser_client, scenario):
    html = superuser_client.get(summary_url(scenario.campaign)).content.decode()

    links = figure_links(html)
    assert len(links) == 4 * (len(reports.SUMMARY_ROWS) + 1)  # and each section's recipients
    for url, label, expected in links:
        assert listed(superuser_client, url) == expected, label


def test_the_summary_of_one_run_and_one_owner(
    superuser_client, scenario, smtp_server, make_campaign, add_contacts
):
    # A second run of the same campaign, to the same contacts: the filter keeps one.
    CampaignRun.objects.filter(pk=scenario.run.pk).update(status=CampaignRun.Status.COMPLETED)
    second = campaign_launch(campaign=scenario.campaign, enqueue=False)
    run_prepare(run=second)
    dispatch_due()

    query = f"run={scenario.run.pk}&owner={scenario.bob.pk}"
    response = superuser_client.get(summary_url(scenario.campaign, query))

    sections = [item["section"] for item in response.context["sections"]]
    assert [s.title for s in sections] == ["Overall", "Bob Baker"]
    truth = truth_for(Recipient.objects.filter(run=scenario.run, contact__owner=scenario.bob))
    assert {r.figure.key: r.count for r in sections[1].rows} == {
        key: truth[key] for key, _ in reports.SUMMARY_ROWS
    }
    for url, label, expected in figure_links(response.content.decode()):
        assert listed(superuser_client, url) == expected, label


def test_the_summary_of_contacts_without_an_owner(superuser_client, scenario):
    response = superuser_client.get(summary_url(scenario.campaign, "owner=null"))

    sections = [item["section"] for item in response.context["sections"]]
    assert [s.title for s in sections] == ["Overall", "No owner"]
    truth = truth_for(Recipient.objects.filter(run__campaign=scenario.campaign,
                                               contact__owner__isnull=True))  # fmt: skip
    assert sections[1].counts["attempted"] == truth["attempted"] > 0


def _sent_ten_days_ago_and_today(make_campaign, add_contacts, monkeypatch):
    """The mixed run, sent ten days ago (the sender's clock set back), then a second run of
    the same campaign sent today to the same contacts and two new ones; and engagement today
    by a contact first emailed ten days ago."""
    real_now = timezone.now
    monkeypatch.setattr(timezone, "now", lambda: real_now() - timedelta(days=10))
    scenario = send_mixed_run(make_campaign, add_contacts)
    monkeypatch.setattr(timezone, "now", real_now)
    record(message_to("ok4@example.test"), E.CLICKED, source="click",
           url="https://example.test/")  # fmt: skip
    add_contacts("new1@example.test", "new2@example.test", owner=scenario.bob)
    CampaignRun.objects.filter(pk=scenario.run.pk).update(status=CampaignRun.Status.COMPLETED)
    second = campaign_launch(campaign=scenario.campaign, enqueue=False)
    run_prepare(run=second)
    dispatch_due()
    return scenario, second


def emailed(run: CampaignRun):
    """The run's recipients that were emailed (an email accepted or refused), from the rows
    of their emails, independently of Recipient.first_sent_on."""
    tried = Message.objects.filter(run=run).exclude(status__in=[S.QUEUED, S.CANCELLED])
    ids = set(tried.values_list("recipient_id", flat=True))
    recipients = Recipient.objects.filter(pk__in=ids)
    return [r for r in recipients if r.steps_sent > 0 or r.rejections]


def test_a_date_range_counts_the_contacts_first_emailed_on_those_days(
    superuser_client, smtp_server, make_campaign, add_contacts, monkeypatch
):
    scenario, second = _sent_ten_days_ago_and_today(make_campaign, add_contacts, monkeypatch)
    today = timezone.localdate()
    first_cohort, second_cohort = emailed(scenario.run), emailed(second)
    assert first_cohort and second_cohort
    ranges = {
        (today - timedelta(days=12), today - timedelta(days=8)): first_cohort,
        (today - timedelta(days=1), today): second_cohort,
        (None, today - timedelta(days=5)): first_cohort,
        (today - timedelta(days=5), None): second_cohort,
        (today - timedelta(days=7), today - timedelta(days=2)): [],
        (today - timedelta(days=30), today): first_cohort + second_cohort,
    }
    for (start, end), cohort in ranges.items():
        query = f"sent_after={start or ''}&sent_before={end or ''}"

        response = superuser_client.get(summary_url(scenario.campaign, query))

        overall = response.context["sections"][0]["section"]
        truth = truth_for(cohort)
        assert overall.counts == {key: truth[key] for key in reports.TALLY_KEYS}, query
        links = figure_links(response.content.decode())
        assert links or not cohort
        for url, label, expected in links:
            assert "sent_date=" in url
            assert listed(superuser_client, url) == expected, (query, label)
    # Ten days ago's cohort counts today's click; the undated summary is both cohorts.
    dated = reports.campaign_summary(reports.SummaryScope(
        campaign=scenario.campaign, sent_from=today - timedelta(days=12),
        sent_to=today - timedelta(days=8)))[0]  # fmt: skip
    assert dated.counts["clicked"] == truth_for(first_cohort)["clicked"] >= 2
    everything = reports.campaign_summary(reports.SummaryScope(campaign=scenario.campaign))[0]
    assert everything.counts == {
        key: truth_for(Recipient.objects.filter(run__campaign=scenario.campaign))[key]
        for key in reports.TALLY_KEYS
    }
    assert_tallies_match_rows()


def test_a_recipient_first_emailed_keeps_its_day_through_retries_and_follow_ups(
    smtp_server, make_campaign, add_contacts, monkeypatch
):
    add_contacts("ok@example.test", "mailbox-full@example.test", "user-unknown@example.test")
    campaign = make_campaign(steps=2, delay=timedelta(days=1))
    real_now = timezone.now
    monkeypatch.setattr(timezone, "now", lambda: real_now() - timedelta(days=3))
    run = campaign_launch(campaign=campaign, enqueue=False)
    run_prepare(run=run)
    dispatch_due()
    monkeypatch.setattr(timezone, "now", real_now)
    three_days_ago = timezone.localdate() - timedelta(days=3)
    days = dict(Recipient.objects.values_list("email", "first_sent_on"))
    assert days == dict.fromkeys(days, three_days_ago)  # sent, soft bounced, bounced

    follow_ups_queue(now=timezone.now())
    Message.objects.filter(status=S.SOFT_BOUNCED).update(next_attempt_at=timezone.now())
    dispatch_due()

    assert Message.objects.filter(step__position=2, status=S.SENT).exists()
    assert dict(Recipient.objects.values_list("email", "first_sent_on")) == days
    assert_tallies_match_rows()


def test_a_recipient_not_emailed_has_no_day(smtp_server, make_campaign, add_contacts):
    add_contacts("ok@example.test")
    add_contacts("dne@example.test", do_not_email=True)
    run = campaign_launch(campaign=make_campaign(), enqueue=False)
    run_prepare(run=run)

    assert not Recipient.objects.filter(first_sent_on__isnull=False).exists()
    assert RunTally.objects.get(run=run).day == RunTally.NO_DAY

    dispatch_due()

    assert Recipient.objects.get(email="ok@example.test").first_sent_on == timezone.localdate()
    assert Recipient.objects.get(email="dne@example.test").first_sent_on is None
    assert_tallies_match_rows()


def test_the_summary_queries_do_not_grow_with_recipients(superuser_client):
    campaign = Campaign.objects.create(name="Big")
    run = CampaignRun.objects.create(campaign=campaign)
    make = _grow_run(run, SendingAccountFactory(), [UserFactory(), UserFactory(), None])
    urls = [summary_url(campaign), summary_url(campaign, f"run={run.pk}")]

    make(10)
    with_10 = [queries_of(superuser_client, url) for url in urls]
    make(30)
    with_40 = [queries_of(superuser_client, url) for url in urls]

    assert with_40 == with_10
    assert max(with_40) <= 15


def test_the_summary_with_bad_filters_still_answers(superuser_client, scenario):
    response = superuser_client.get(summary_url(scenario.campaign, "run=999999&sent_after=x"))

    assert response.status_code == 200
    assert response.context["filterset"].errors


# --- comparison ----------------------------------------------------------------------------------


def test_the_comparison_shows_each_campaigns_rates_side_by_side(
    superuser_client, scenario, make_campaign, add_contacts
):
    other = send_other_campaign(make_campaign, add_contacts)
    url = reverse("admin:campaigns_campaign_compare") + f"?ids={scenario.campaign.pk},{other.pk}"

    response = superuser_client.get(url)

    assert response.status_code == 200
    html = response.content.decode()
    by_name = {
        c["comparison"].campaign.name: c["comparison"] for c in response.context["comparisons"]
    }
    assert list(by_name) == ["Spring launch", "Autumn"]
    for campaign in (scenario.campaign, other):
        truth = truth_for(Recipient.objects.filter(run__campaign=campaign))
        rates = by_name[campaign.name].rates
        sent = truth["attempted"]
        assert rates["delivery"] == pytest.approx(100 * truth["delivered"] / sent)
        assert rates["open"] == pytest.approx(100 * truth["opened"] / sent)
        assert rates["click"] == pytest.approx(100 * truth["clicked"] / sent)
        assert rates["response"] == pytest.approx(100 * truth["replied"] / sent)
        assert rates["leads"] == pytest.approx(100 * truth["leads"] / sent)
        assert rates["opportunities"] == pytest.approx(100 * truth["opportunities"] / sent)
        assert rates["unsubscribe"] == pytest.approx(100 * truth["unsubscribed"] / sent)
        assert rates["spam"] == pytest.approx(100 * truth["complained"] / sent)
    # Spring launch had a complaint (1 of 14 sent, far above 0.3%); Autumn none.
    assert by_name["Spring launch"].spam_warning
    assert not by_name["Autumn"].spam_warning
    for link, label, expected in figure_links(html):
        assert listed(superuser_client, link) == expected, label
    spam_row = re.search(r'<tr data-rate="spam">(.*?)</tr>', html, re.S).group(1)
    assert spam_row.count("lc-warning") == 1
    assert "high" in spam_row


def send_other_campaign(make_campaign, add_contacts) -> Campaign:
    add_contacts("autumn1@example.test", "autumn2@example.test", "user-unknown-2@example.test")
    other = make_campaign(name="Autumn")
    Campaign.objects.exclude(pk=other.pk).update(state=Campaign.State.FINISHED)
    run = campaign_launch(campaign=other, enqueue=False)
    run_prepare(run=run)
    dispatch_due()
    return other


@pytest.mark.parametrize(
    ("complaints", "sent", "warning"),
    [(2, 1000, False), (3, 1000, True), (4, 1000, True), (0, 0, False)],
)
def test_a_spam_rate_at_or_above_three_per_thousand_stands_out(complaints, sent, warning):
    counts = dict.fromkeys(reports.TALLY_KEYS, 0) | {"attempted": sent, "complained": complaints}
    comparison = reports.Comparison(
        campaign=Campaign(name="x"), counts=counts, rates=reports.rates_from_counts(counts)
    )
    assert comparison.spam_warning is warning


def test_the_compare_action_redirects_to_the_comparison_without_changing_anything(
    superuser_client,
):
    first, second = Campaign.objects.create(name="A"), Campaign.objects.create(name="B")
    before = list(Campaign.objects.values())

    response = superuser_client.post(
        reverse("admin:campaigns_campaign_changelist"),
        {"action": "compare_selected", "_selected_action": [first.pk, second.pk]},
    )

    assert response.status_code == 302
    assert response["Location"] == (
        reverse("admin:campaigns_campaign_compare") + f"?ids={first.pk},{second.pk}"
    )
    assert list(Campaign.objects.values()) == before
    assert superuser_client.get(response["Location"]).status_code == 200


def test_the_comparison_without_campaigns_offers_a_choice(superuser_client):
    Campaign.objects.create(name="Lonely")

    response = superuser_client.get(reverse("admin:campaigns_campaign_compare"))

    assert response.status_code == 200
    assert "Compare selected campaigns" in response.content.decode()
    assert "Lonely" in response.content.decode()


def test_the_comparison_queries_do_not_grow_with_campaigns(superuser_client, scenario):
    ids = [Campaign.objects.create(name=f"C{i}").pk for i in range(8)]
    url = reverse("admin:campaigns_campaign_compare") + "?ids=" + ",".join(map(str, ids))
    with CaptureQueriesContext(__import__("django.db").db.connection) as queries:
        assert superuser_client.get(url).status_code == 200
    assert len(queries) <= 10


# --- sending accounts ------------------------------------------------------------------------------


def test_the_accounts_list_shows_volume_success_rate_and_todays_quota(superuser_client, scenario):
    account = SendingAccount.objects.get(name="Sales")
    messages = Message.objects.filter(account=account)
    attempted = messages.exclude(status__in=[S.QUEUED, S.SENDING, S.CANCELLED]).count()
    succeeded = messages.filter(status__in=reports.SUCCESS_STATUSES).count()
    SendingAccountFactory(name="Idle", last_error="535 authentication failed")

    response = superuser_client.get(reverse("admin:campaigns_sendingaccount_changelist"))

    html = response.content.decode()
    rows = {a.name: a for a in response.context["cl"].result_list}
    sales = rows["Sales"]
    assert sales._sent_total == messages.filter(sent_at__isnull=False).count() > 0
    assert sales._sent_30_days == sales._sent_total
    assert sales._attempted == attempted
    assert sales._succeeded == succeeded
    rate = 100 * succeeded / attempted
    assert sales._success_rate == pytest.approx(rate)
    assert f"{rate:.1f}% {reports.success_band(rate)}" in html
    from django.utils import timezone

    from campaigns.selectors import account_day_start

    today = account_day_start(account, timezone.now())
    assert sales._used_today == messages.filter(claimed_at__gte=today).count()
    assert f"{sales._used_today} / {account.daily_limit}" in html
    assert rows["Idle"]._success_rate is None
    assert "535 authentication failed" in html


@pytest.mark.parametrize(
    ("rate", "band"),
    [(100.0, "healthy"), (95.1, "healthy"), (95.0, "moderate"), (80.0, "moderate"),
     (79.9, "low"), (None, "")],
)  # fmt: skip
def test_the_success_rate_bands(rate, band):
    assert reports.success_band(rate) == band


def test_todays_quota_counts_from_midnight_in_the_accounts_time_zone(superuser_client):
    # 23:30 UTC yesterday is already today in Tokyo, not in UTC.
    tokyo = SendingAccountFactory(name="Tokyo", timezone="Asia/Tokyo", per_minute_limit=10_000)
    utc = SendingAccountFactory(name="London", timezone="UTC", per_minute_limit=10_000)
    now = timezone.now().replace(hour=12, minute=0)
    late = (now - timedelta(days=1)).replace(hour=23, minute=30)
    for account in (tokyo, utc):
        # One email claimed at 23:30 UTC yesterday (as the sender counts a claim).
        account_usage_add(account=account, now=late, claimed=1)

    rows = {a.name: a for a in reports.accounts_with_stats(SendingAccount.objects.all(), now=now)}

    assert rows["Tokyo"]._used_today == 1
    assert rows["London"]._used_today == 0
    # The page and the dispatcher read the same counter.
    assert account_capacity(tokyo, now) == tokyo.daily_limit - 1
    assert account_capacity(utc, now) == utc.daily_limit


# --- the counters follow every write ---------------------------------------------------------------


def test_the_counters_follow_the_sending_and_tracking_of_a_run(
    scenario, make_campaign, add_contacts
):
    assert_tallies_match_rows()
    truth = truth_for(Recipient.objects.filter(run=scenario.run))
    assert tally_of(scenario.run) == {key: truth[key] for key in reports.TALLY_KEYS}


def test_the_counters_follow_a_contact_changing_owner(scenario):
    contact = Contact.objects.get(email="ok1@example.test")
    Contact.objects.filter(pk=contact.pk).update(owner=scenario.bob)
    Contact.objects.filter(owner=scenario.ann).update(owner=None)
    assert_tallies_match_rows()
    scenario.ann.delete()  # contacts' owner is set to NULL by Django
    scenario.bob.delete()
    assert_tallies_match_rows()


def test_the_counters_follow_rejections_events_and_recipients_being_removed(scenario):
    Rejection.objects.filter(category="mailbox_full").first().delete()
    TrackingEvent.objects.filter(type=E.OPENED).first().delete()
    Recipient.objects.filter(email="ok1@example.test").delete()
    Contact.objects.filter(email="ok2@example.test").delete()
    assert_tallies_match_rows()
    expected = RunActivity.objects.none()
    assert expected.count() == 0
    opens = TrackingEvent.objects.filter(type=E.OPENED, message__run=scenario.run).count()
    counted = sum(
        RunActivity.objects.filter(run=scenario.run, type=E.OPENED).values_list("count", flat=True)
    )
    assert counted == opens


def test_a_rejection_moved_to_another_email_moves_its_bit(scenario):
    rejection = Rejection.objects.filter(category="spam_blocked").get()
    target = message_to("ok9@example.test")

    Rejection.objects.filter(pk=rejection.pk).update(message=target)

    assert (
        Recipient.objects.get(email="ok9@example.test").rejections == REJECTION_BITS["spam_blocked"]
    )
    assert Recipient.objects.get(email="spam-block@example.test").rejections == 0
    assert_tallies_match_rows()


def test_deleting_a_run_deletes_its_counters(scenario):
    run_id = scenario.run.pk
    scenario.run.delete()

    assert not RunTally.objects.filter(run_id=run_id).exclude(recipients=0).exists()
    assert not RunActivity.objects.filter(run_id=run_id).exists()


def test_the_recipients_rejection_bits_follow_its_rejections(scenario):
    for recipient in Recipient.objects.all():
        bits = 0
        for category in Rejection.objects.filter(message__recipient=recipient).values_list(
            "category", flat=True
        ):
            bits |= REJECTION_BITS[category]
        assert recipient.rejections == bits, recipient.email


def message_flags_truth() -> dict[int, int]:
    """Every email's rejection flags, computed from its rejections in Python."""
    flags = dict.fromkeys(Message.objects.values_list("pk", flat=True), 0)
    for message_id, kind, category in Rejection.objects.filter(message__isnull=False).values_list(
        "message_id", "kind", "category"
    ):
        flags[message_id] |= MESSAGE_REJECTION_FLAGS[kind] | MESSAGE_REJECTION_FLAGS[category]
    return flags


def message_flags() -> dict[int, int]:
    return dict(Message.objects.values_list("pk", "rejection_flags"))


def test_the_emails_rejection_flags_follow_their_rejections(scenario):
    assert any(message_flags().values())
    assert message_flags() == message_flags_truth()

    # A later rejection of the same email adds its category and kind to the first one's.
    message = message_to("no-answer@example.test")
    first = message.rejection_flags
    Rejection.objects.create(message=message, kind="hard", category="user_not_found", source="dsn")
    message.refresh_from_db()
    assert message.rejection_flags == (
        first | MESSAGE_REJECTION_FLAGS["hard"] | MESSAGE_REJECTION_FLAGS["user_not_found"]
    )

    # Moved, changed and deleted rejections: the flags are rebuilt from what is left.
    spam = Rejection.objects.filter(category="spam_blocked").get()
    Rejection.objects.filter(pk=spam.pk).update(message=message_to("ok9@example.test"))
    Rejection.objects.filter(category="mailbox_full").update(category="unspecified")
    Rejection.objects.filter(message=message, category="user_not_found").delete()
    assert message_flags() == message_flags_truth()
    assert message_to("spam-block@example.test").rejection_flags == 0


def test_the_migrations_backfill_sets_the_flags_the_triggers_set(scenario):
    import importlib

    from django.db import connection

    migration = importlib.import_module("campaigns.migrations.0011_message_rejection_flags")
    kept = message_flags()
    Message.objects.update(rejection_flags=0)

    with connection.cursor() as cursor:
        cursor.execute(migration.BACKFILL)

    assert message_flags() == kept == message_flags_truth()


def test_a_bulk_update_of_recipients_keeps_the_counters(scenario):
    Recipient.objects.filter(run=scenario.run, status="pending").update(status="failed")
    Recipient.objects.filter(run=scenario.run).update(steps_sent=F("steps_sent") + 1)
    Recipient.objects.filter(run=scenario.run).update(next_step_at=None)  # counts nothing

    assert_tallies_match_rows()


def _migration(name: str = "campaigns.migrations.0007_report_triggers"):
    import importlib

    return importlib.import_module(name)


def test_the_migrations_backfill_counts_what_the_triggers_count(scenario):
    from django.db import connection

    migration = _migration()
    kept_tallies = {r: reports.run_counts(run=r) for r in CampaignRun.objects.all()}
    kept_activity = sorted(
        RunActivity.objects.values_list("run_id", "hour", "type", "is_machine", "count")
    )
    hour = migration.PG_HOUR if connection.vendor == "postgresql" else migration.SQLITE_HOUR

    RunTally.objects.all().delete()
    RunActivity.objects.all().delete()
    with connection.cursor() as cursor:
        # The counters per day of migration 0013 (0007's BACKFILL[1] is per owner only).
        cursor.execute(_migration(DAYS_MIGRATION).tally_backfill(connection.vendor))
        cursor.execute(migration.activity_backfill(hour))

    assert {r: reports.run_counts(run=r) for r in CampaignRun.objects.all()} == kept_tallies
    assert_tallies_match_rows()
    assert (
        sorted(RunActivity.objects.values_list("run_id", "hour", "type", "is_machine", "count"))
        == kept_activity
    )


DAYS_MIGRATION = "campaigns.migrations.0013_tally_by_first_sent_day"


@pytest.mark.parametrize("zone", ["UTC", "Pacific/Auckland", "America/Los_Angeles"])
def test_the_migration_gives_each_emailed_recipient_the_day_of_its_earliest_email(
    scenario, settings, zone
):
    from types import SimpleNamespace
    from zoneinfo import ZoneInfo

    from django.apps import apps
    from django.db import connection

    settings.TIME_ZONE = zone
    # Emails of one recipient on two days: the earliest counts.
    ok1 = message_to("ok1@example.test")
    early = timezone.now() - timedelta(days=4, hours=5)
    Message.objects.filter(pk=ok1.pk).update(sent_at=early)
    Recipient.objects.update(first_sent_on=None)

    _migration(DAYS_MIGRATION).first_sent_backfill(apps, SimpleNamespace(connection=connection))

    expected = {}
    for recipient in Recipient.objects.filter(run=scenario.run):
        times = [
            m.sent_at or m.claimed_at for m in recipient.messages.all() if m.sent_at or m.claimed_at
        ]
        emailed = recipient.steps_sent > 0 or recipient.rejections
        day = min(times).astimezone(ZoneInfo(zone)).date() if emailed and times else None
        expected[recipient.email] = day
    assert dict(Recipient.objects.values_list("email", "first_sent_on")) == expected
    assert expected["ok1@example.test"] == early.astimezone(ZoneInfo(zone)).date()
    assert sum(day is not None for day in expected.values()) > 5
    assert_tallies_match_rows()


@pytest.mark.skipif("not __import__('django.db').db.connection.vendor == 'postgresql'")
def test_truncating_rejections_or_recipients_resets_what_was_counted_from_them(scenario):
    from django.db import connection

    with connection.cursor() as cursor:
        # The test's transaction holds deferred foreign key checks; TRUNCATE wants none.
        cursor.execute("SET CONSTRAINTS ALL IMMEDIATE")
        cursor.execute("TRUNCATE tracking_rejection")
    assert not Recipient.objects.exclude(rejections=0).exists()
    assert not Message.objects.exclude(rejection_flags=0).exists()
    assert_tallies_match_rows()

    with connection.cursor() as cursor:
        cursor.execute("TRUNCATE campaigns_recipient CASCADE")
    assert not RunTally.objects.exists()
    assert not RunActivity.objects.exists()


@pytest.mark.parametrize(
    "query",
    ["", "run={run}", "owner={bob}", "owner=null", "sent_after={today}", "sent_before={today}"],
)
def test_the_summary_filterset_selects_the_recipients_the_summary_counts(scenario, query):
    from django.http import QueryDict

    from campaigns.filters import CampaignSummaryFilter

    today = timezone.localdate().isoformat()
    data = QueryDict(query.format(run=scenario.run.pk, bob=scenario.bob.pk, today=today))
    filterset = CampaignSummaryFilter(data or None, campaign=scenario.campaign)

    assert filterset.is_valid() or not data
    scope = filterset.scope() if data else reports.SummaryScope(campaign=scenario.campaign)
    assert sorted(filterset.qs.values_list("pk", flat=True)) == sorted(
        reports.summary_recipients(scope).values_list("pk", flat=True)
    )


def test_a_dated_summary_of_one_owner_counts_that_owners_contacts(superuser_client, scenario):
    today = timezone.localdate()
    query = f"owner={scenario.bob.pk}&sent_after={today - timedelta(days=2)}&sent_before={today}"

    response = superuser_client.get(summary_url(scenario.campaign, query))

    sections = [item["section"] for item in response.context["sections"]]
    assert [s.title for s in sections] == ["Overall", "Bob Baker"]
    # Everything went out in the last two days: Bob's contacts that were emailed at all.
    emailed = Recipient.objects.filter(
        run=scenario.run, contact__owner=scenario.bob, messages__isnull=False
    ).distinct()
    truth = truth_for(emailed)
    assert sections[1].counts == {key: truth[key] for key in reports.TALLY_KEYS}
    assert truth["recipients"] == 6 and truth["filtered"] == 0
    for url, label, expected in figure_links(response.content.decode()):
        assert listed(superuser_client, url) == expected, label


def test_the_summary_says_open_tracking_is_not_reliable(superuser_client, scenario):
    response = superuser_client.get(summary_url(scenario.campaign))

    assert b"Open tracking is not reliable" in response.content


def test_the_counters_follow_small_and_bulk_recipient_updates(make_campaign, audience):
    # PostgreSQL's trigger looks a small statement's owners up by id (the sender's batch of
    # 50) and hash-joins a bulk one's (over 1,000 rows): both count the same.
    owners = [UserFactory(), UserFactory(), None]
    Contact.objects.bulk_create(
        Contact(email=f"bulk{i}@example.test", owner=owners[i % 3]) for i in range(1_005)
    )
    audience.contacts.add(*Contact.objects.values_list("pk", flat=True))
    run = run_prepare(run=campaign_launch(campaign=make_campaign(), enqueue=False))
    recipients = Recipient.objects.filter(run=run).order_by("pk")
    assert recipients.count() == 1_005
    today = timezone.localdate()

    small = recipients.values_list("pk", flat=True)[:50]
    Recipient.objects.filter(pk__in=list(small)).update(
        status=Recipient.Status.PARTIAL, steps_sent=1, first_sent_on=today
    )
    assert_tallies_match_rows()
    recipients.update(status=Recipient.Status.SENT, steps_sent=1, first_sent_on=today)
    assert_tallies_match_rows()
    assert reports.tallies_by_owner(RunTally.objects.filter(run=run))  # counted at all
