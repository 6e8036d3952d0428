"""Fixtures for every test: fast password hashing; a shared cast of admin users, one per
role, each also logged into its own test client; a check that an admin page's query count
does not grow with its rows; a real SMTP server (the simulated internet) with a sending account
and a campaign over an audience."""

from __future__ import annotations

import os
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import pytest
from django.contrib.auth.models import Group
from django.db import connection, connections
from django.test import Client
from django.test.utils import CaptureQueriesContext

from campaigns.models import Campaign
from campaigns.simulator import SimulatedInternet, SimulatorServer
from leadcenter.factories import (
    CampaignFactory,
    CampaignStepFactory,
    ContactFactory,
    ContactListFactory,
    SendingAccountFactory,
    UserFactory,
)
from leadcenter.roles import MANAGERS, STAFF, SUPPORT, roles_setup

PASSWORD = "correct horse battery staple"  # noqa: S105  (UserFactory's)


def pytest_configure(config) -> None:
    # The SQLite test database is a file under var/ (leadcenter/settings.py), which a fresh
    # clone does not have: make its folder, or no test can open its database.
    from django.conf import settings

    name = settings.DATABASES["default"].get("TEST", {}).get("NAME")
    if name:
        Path(name).parent.mkdir(parents=True, exist_ok=True)


def _member_of(group_name: str, username: str):
    user = UserFactory(username=username, is_staff=True)
    user.groups.add(Group.objects.get(name=group_name))
    return user


def _logged_in(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


@pytest.fixture
def roles(db) -> dict[str, int]:
    return roles_setup()


@pytest.fixture
def superuser(db):
    return UserFactory(username="superuser", is_staff=True, is_superuser=True)


@pytest.fixture
def staff_user(roles):
    return _member_of(STAFF, "staff")


@pytest.fixture
def manager_user(roles):
    return _member_of(MANAGERS, "manager")


@pytest.fixture
def support_user(roles):
    return _member_of(SUPPORT, "support")


@pytest.fixture
def superuser_client(superuser) -> Client:
    return _logged_in(superuser)


@pytest.fixture
def staff_client(staff_user) -> Client:
    return _logged_in(staff_user)


@pytest.fixture
def manager_client(manager_user) -> Client:
    return _logged_in(manager_user)


@pytest.fixture
def support_client(support_user) -> Client:
    return _logged_in(support_user)


@pytest.fixture
def assert_bounded_queries(
    django_assert_max_num_queries,
) -> Callable[[Client, str, Callable[[int], object]], None]:
    """Check that GET `url` costs no more queries with 30 rows than with 10.

    `make(n)` creates n more rows, each with its own related objects, so a missing
    select_related shows up as extra queries.
    """

    def check(client: Client, url: str, make: Callable[[int], object]) -> None:
        make(10)
        assert client.get(url).status_code == 200  # warm per-process caches (content types)
        with CaptureQueriesContext(connection) as ten_rows:
            assert client.get(url).status_code == 200
        make(20)
        with django_assert_max_num_queries(len(ten_rows)):
            response = client.get(url)
        assert response.status_code == 200

    return check


@pytest.fixture(autouse=True)
def _fast_password_hashing(settings):
    # Tests log in many users; PBKDF2 at full strength would dominate the suite's time.
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


# --- sending: a real SMTP server and a campaign over an audience ---


@pytest.fixture
def smtp_server():
    """A real SMTP server on 127.0.0.1 that answers by address (see campaigns.simulator)."""
    with SimulatorServer(SimulatedInternet()) as server:
        yield server


@pytest.fixture
def account(smtp_server):
    return SendingAccountFactory(
        name="Sales",
        from_email="sales@leadcenter.test",
        smtp_port=smtp_server.port,
        return_path="bounces@leadcenter.test",
        smtp_timeout=5,
        daily_limit=1000,
        per_minute_limit=1000,
    )


@pytest.fixture
def audience():
    return ContactListFactory(name="Audience")


@pytest.fixture
def make_campaign(account, audience):
    def make(
        *, steps: int = 1, delay: timedelta = timedelta(0), accounts=None, **kwargs
    ) -> Campaign:
        campaign = CampaignFactory(**kwargs)
        campaign.lists.add(audience)
        campaign.accounts.add(*(accounts or [account]))
        for position in range(1, steps + 1):
            CampaignStepFactory(
                campaign=campaign,
                position=position,
                subject=f"Step {position} for {{{{ contact.first_name }}}}",
                delay=delay if position > 1 else timedelta(0),
            )
        return campaign

    return make


@pytest.fixture
def add_contacts(audience):
    def add(*emails: str, **fields):
        return [ContactFactory(email=email, lists=[audience], **fields) for email in emails]

    return add


@pytest.fixture
def clients(roles, staff_client, manager_client, support_client, superuser_client):
    """A logged-in client per role of DESIGN.md, and an anonymous one."""
    return {
        "anonymous": Client(),
        "staff": staff_client,
        "manager": manager_client,
        "support": support_client,
        "superuser": superuser_client,
    }


CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
]


@pytest.fixture
def page(monkeypatch):
    """A Playwright page in Debian's Chromium; `page.outside_requests` lists every request
    that went anywhere but the server under test (nothing may)."""
    # Playwright's sync API runs an event loop in this thread; the test's own ORM calls would
    # otherwise be refused as "async unsafe". Set for the browser tests only, so the rest of
    # the suite still catches real async misuse.
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
    if not CHROMIUM.exists():
        if os.environ.get("LEADCENTER_REQUIRE_BROWSER"):
            pytest.fail(f"{CHROMIUM} is missing and LEADCENTER_REQUIRE_BROWSER is set")
        pytest.skip(f"{CHROMIUM} is not installed (apt-get install chromium)")
    sync_playwright = pytest.importorskip("playwright.sync_api").sync_playwright
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1440, "height": 1000})
            page.set_default_timeout(15_000)
            outside: list[str] = []
            page.on(
                "request",
                lambda request: (
                    outside.append(request.url)
                    if not request.url.startswith(("http://localhost", "http://127.0.0.1", "data:"))
                    else None
                ),
            )
            page.outside_requests = outside
            yield page
        finally:
            browser.close()
            # Playwright runs the test in a greenlet with its own context, so ORM calls made
            # there get their own database connection; close it, or PostgreSQL refuses to drop
            # the test database at the end of the session ("being accessed by other users").
            connections.close_all()
