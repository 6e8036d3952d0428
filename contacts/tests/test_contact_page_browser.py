"""A support agent in a real browser (Debian's Chromium through Playwright, against
live_server): finds a contact, reads its delivery history, lifts its suppression with a reason,
and follows the history to the Sent emails list. Screenshot kept in /tmp/report_contact_*.png."""

from __future__ import annotations

import pytest

from campaigns.models import Message
from campaigns.tests.test_report_browser import result_count, shoot
from contacts.models import Suppression
from contacts.tests.test_contact_page import send

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def test_a_support_agent_reads_a_contacts_history_and_lifts_its_suppression(
    live_server, page, tmp_path, support_user, make_campaign, add_contacts
):
    (bo,) = add_contacts("user-unknown-bo@example.test", first_name="Bo", last_name="Berg")
    send(make_campaign, "Spring launch")
    support_user.set_password("s3cret-pass-for-tests")
    support_user.save()

    page.goto(f"{live_server.url}/admin/login/?next=/admin/")
    page.fill("#id_username", support_user.username)
    page.fill("#id_password", "s3cret-pass-for-tests")
    page.click("input[type=submit]")
    page.wait_for_selector("#site-name")
    page.goto(f"{live_server.url}/admin/contacts/contact/?q=berg")
    page.click("#result_list a:has-text('user-unknown-bo@example.test')")

    # The click navigates: wait for the new page's history before reading it.
    page.wait_for_url("**/change/**")
    history = page.locator(".lc-contact-extra")
    history.get_by_text("Hard rejection: User not found").wait_for()
    assert "Hard rejection: User not found" in history.inner_text()
    assert page.locator(".lc-email-head .lc-msg-status").all_inner_texts() == ["Bounced"]
    shoot(page, tmp_path, "contact_history")

    page.fill("input[name=lift_reason]", "The person says the mailbox exists again")
    page.click(".lc-lift button")
    page.wait_for_selector(".messagelist .success")
    assert "Lifted the hard bounce suppression" in page.locator(".messagelist").inner_text()
    entry = Suppression.objects.get(email=bo.email)
    assert entry.lifted_by_id == support_user.pk
    assert entry.lift_reason == "The person says the mailbox exists again"

    page.click("text=All of them in Sent emails")
    page.wait_for_selector("#result_list")
    assert result_count(page) == Message.objects.filter(recipient__contact=bo).count() == 1
    assert page.outside_requests == []
