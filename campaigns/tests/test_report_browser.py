"""The report pages in a real browser: Debian's Chromium driven by Playwright against
live_server. A manager logs in, opens a run's details, clicks a figure and lands on the list of
exactly that many recipients; reads the campaign summary; compares campaigns. Screenshots are
kept in /tmp/report_*.png for a person to look at."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from campaigns import reports
from campaigns.tests.test_reports import send_mixed_run, send_other_campaign
from conftest import PASSWORD
from leadcenter.factories import SendingAccountFactory, UserFactory

SHOTS = Path("/tmp")  # noqa: S108  (copies for a person to look at)

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def manager(roles):
    from django.contrib.auth.models import Group

    from leadcenter.roles import MANAGERS

    user = UserFactory(username="mia", first_name="Mia", last_name="Manager", is_staff=True)
    user.groups.add(Group.objects.get(name=MANAGERS))
    return user


def log_in(page, live_server, username: str) -> None:
    page.goto(f"{live_server.url}/admin/login/?next=/admin/")
    page.fill("#id_username", username)
    page.fill("#id_password", PASSWORD)
    page.click("input[type=submit]")
    page.wait_for_selector("#site-name")


def shoot(page, tmp_path: Path, name: str) -> Path:
    shot = tmp_path / f"report_{name}.png"
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 10_000
    shutil.copy(shot, SHOTS / shot.name)
    return shot


def result_count(page) -> int:
    """The changelist's '12 results' (or '1 result') line."""
    text = page.locator("#changelist-form .paginator, .paginator").first.inner_text()
    return int(text.split()[0].replace(",", ""))


def test_a_manager_opens_a_runs_details_and_follows_a_figure_to_its_recipients(
    live_server, page, tmp_path, manager, smtp_server, make_campaign, add_contacts
):
    scenario = send_mixed_run(make_campaign, add_contacts)
    log_in(page, live_server, "mia")

    page.goto(f"{live_server.url}/admin/campaigns/campaignrun/")
    page.get_by_role("link", name="Details").first.click()
    page.wait_for_url(f"**/admin/campaigns/campaignrun/{scenario.run.pk}/details/")
    assert page.locator("#run-status .lc-status").inner_text() in ("Completed", "Running",
                                                                    "Waiting on queue")  # fmt: skip
    assert page.locator("#funnel-chart rect").count() == 7
    assert page.locator("#activity-chart rect").count() > 0
    assert "Open tracking is not reliable" in page.content()
    shoot(page, tmp_path, "run_details")

    for label in ("Opened", "Soft bounced", "Email blocked by spam filter"):
        link = page.locator(f'#run-figures a.lc-figure[data-figure="{label}"]')
        expected = int(link.get_attribute("data-count"))
        assert expected > 0, label
        link.click()
        page.wait_for_url("**/admin/campaigns/recipient/?*")
        assert result_count(page) == expected, label
        assert page.locator("#result_list tbody tr").count() == expected
        if label == "Opened":
            shoot(page, tmp_path, "opened_recipients")
        page.go_back()
        page.wait_for_selector("#run-figures")

    # The funnel's bars are links too.
    page.locator("#funnel-chart a").nth(2).click()
    page.wait_for_url("**/admin/campaigns/recipient/?*result=accepted*")
    accepted = scenario.run.recipients.filter(reports.FIGURES["accepted"].q).count()
    assert result_count(page) == accepted > 0
    assert page.outside_requests == []


def test_a_manager_reads_the_campaign_summary_and_compares_campaigns(
    live_server, page, tmp_path, manager, smtp_server, make_campaign, add_contacts
):
    scenario = send_mixed_run(make_campaign, add_contacts)
    other = send_other_campaign(make_campaign, add_contacts)
    log_in(page, live_server, "mia")

    page.goto(f"{live_server.url}/admin/campaigns/campaign/")
    page.get_by_role("link", name="Summary").first.click()
    page.wait_for_selector(".lc-sections")
    titles = page.locator(".lc-section").evaluate_all("els => els.map(e => e.dataset.title)")
    if titles[0] != "Overall" or page.url.endswith(f"/{other.pk}/summary/"):
        page.goto(f"{live_server.url}/admin/campaigns/campaign/{scenario.campaign.pk}/summary/")
        titles = page.locator(".lc-section").evaluate_all("els => els.map(e => e.dataset.title)")
    assert titles == ["Overall", "Ann Archer", "Bob Baker", "No owner"]
    assert page.locator("#summary-export").is_visible()
    shoot(page, tmp_path, "summary")

    link = page.locator('a.lc-figure[data-figure="Bob Baker: Sent"]')
    expected = int(link.get_attribute("data-count"))
    link.click()
    page.wait_for_url("**/admin/campaigns/recipient/?*")
    assert result_count(page) == expected > 0

    page.goto(f"{live_server.url}/admin/campaigns/campaign/{scenario.campaign.pk}/summary/")
    page.select_option("#id_owner", label="Ann Archer")
    page.click("#summary-filters input[type=submit]")
    page.wait_for_url("**/summary/?*owner=*")
    titles = page.locator(".lc-section").evaluate_all("els => els.map(e => e.dataset.title)")
    assert titles == ["Overall", "Ann Archer"]

    # Compare through the action on the campaign list.
    page.goto(f"{live_server.url}/admin/campaigns/campaign/")
    page.locator("input.action-select").nth(0).check()
    page.locator("input.action-select").nth(1).check()
    page.select_option("select[name=action]", "compare_selected")
    page.click("button[name=index]")
    page.wait_for_url("**/admin/campaigns/campaign/compare/?ids=*")
    assert page.locator("#compare-table thead th").count() == 3
    assert page.locator('tr[data-rate="spam"] .lc-warning').count() == 1
    shoot(page, tmp_path, "compare")
    assert page.outside_requests == []


def test_a_manager_sees_the_sending_accounts_health(
    live_server, page, tmp_path, manager, smtp_server, make_campaign, add_contacts
):
    send_mixed_run(make_campaign, add_contacts)
    SendingAccountFactory(name="Broken relay", last_error="535 5.7.8 Authentication failed")
    log_in(page, live_server, "mia")
    page.set_viewport_size({"width": 1920, "height": 900})

    page.goto(f"{live_server.url}/admin/campaigns/sendingaccount/")

    rows = page.locator("#result_list tbody tr")
    assert "535 5.7.8 Authentication failed" in rows.nth(0).inner_text()
    sales = rows.nth(1).inner_text()
    assert "/ 1000" in sales
    assert page.locator(".lc-band").count() == 1
    # Every column is on screen, none hidden behind a scroll bar.
    last = page.locator("#result_list thead th").last.bounding_box()
    assert last["x"] + last["width"] <= page.locator("#result_list").bounding_box()["x"] + 1920
    shoot(page, tmp_path, "accounts")
