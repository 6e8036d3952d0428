"""The admin in a real browser: Debian's Chromium driven by Playwright against live_server."""

from __future__ import annotations

import pytest

from campaigns.tests.test_report_browser import shoot
from conftest import PASSWORD
from leadcenter.factories import ContactFactory, MessageFactory, UserFactory

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def test_a_superuser_logs_in_and_finds_a_contacts_sent_email(live_server, page, tmp_path):
    UserFactory(username="boss", is_superuser=True, is_staff=True)
    ada = ContactFactory(first_name="Ada", last_name="Lovelace", email="ada@analytical.test")
    MessageFactory(
        recipient__contact=ada,
        recipient__run__campaign__name="Spring launch",
        smtp_code=250,
        smtp_response="2.0.0 Ok: queued as 4ABC",
    )
    MessageFactory(
        recipient__contact__first_name="Charles", recipient__contact__last_name="Babbage"
    )
    # Long ones, on the page before the search: the list must still fit the screen.
    for n in range(3):
        MessageFactory(
            recipient__contact=ContactFactory(
                first_name="Grace",
                last_name="Brewster Murray Hopper",
                email=f"grace.brewster.murray.hopper{n}@computing-laboratory.test",
            ),
            recipient__run__campaign__name="Spring launch follow-up campaign",
            smtp_code=550,
            smtp_response=(
                f"5.1.1 <grace.brewster.murray.hopper{n}@computing-laboratory.test>: Recipient address "
                "rejected: User unknown in virtual mailbox table"
            ),
        )

    page.goto(f"{live_server.url}/admin/login/?next=/admin/")
    page.fill("#id_username", "boss")
    page.fill("#id_password", PASSWORD)
    page.click("input[type=submit]")

    assert page.locator("#site-name").inner_text() == "LeadCenter"
    assert "LeadCenter" in page.title()

    page.get_by_role("link", name="Sent emails").first.click()
    page.wait_for_url("**/admin/campaigns/message/")
    # Every column, the SMTP reply last, fits beside the navigation and the filters on a
    # 1440 px screen: no scrolling sideways to read why an email was refused.
    results = page.locator("#changelist .results")
    assert results.evaluate("r => r.scrollWidth <= r.clientWidth"), results.evaluate(
        "r => [r.scrollWidth, r.clientWidth]"
    )
    assert "550 5.1.1 <grace.brewster" in page.locator("#result_list").inner_text()
    page.fill("#searchbar", "Lovelace")
    page.press("#searchbar", "Enter")
    page.wait_for_url("**/admin/campaigns/message/?q=Lovelace")

    rows = page.locator("#result_list tbody tr")
    assert rows.count() == 1
    row = rows.first.inner_text()
    assert "Ada Lovelace" in row
    assert "ada@analytical.test" in row
    assert "Spring launch" in row
    assert "250 2.0.0 Ok: queued as 4ABC" in row  # the SMTP reply column: code and words
    assert "Babbage" not in page.locator("#result_list").inner_text()

    assert shoot(page, tmp_path, "sent_emails").stat().st_size > 0
