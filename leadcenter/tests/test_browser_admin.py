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

    page.goto(f"{live_server.url}/admin/login/?next=/admin/")
    page.fill("#id_username", "boss")
    page.fill("#id_password", PASSWORD)
    page.click("input[type=submit]")

    assert page.locator("#site-name").inner_text() == "LeadCenter"
    assert "LeadCenter" in page.title()

    page.get_by_role("link", name="Sent emails").first.click()
    page.wait_for_url("**/admin/campaigns/message/")
    page.fill("#searchbar", "Lovelace")
    page.press("#searchbar", "Enter")
    page.wait_for_url("**/admin/campaigns/message/?q=Lovelace")

    rows = page.locator("#result_list tbody tr")
    assert rows.count() == 1
    row = rows.first.inner_text()
    assert "Ada Lovelace" in row
    assert "ada@analytical.test" in row
    assert "Spring launch" in row
    assert "queued as 4ABC" in row  # the SMTP reply column (scrolled to on narrow screens)
    assert "Babbage" not in page.locator("#result_list").inner_text()

    assert shoot(page, tmp_path, "sent_emails").stat().st_size > 0
