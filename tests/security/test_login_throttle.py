"""Admin log-in attempts are throttled (leadcenter.throttle): the attempt after
LEADCENTER_LOGIN_FAILURES failures is refused (429) without checking the password, even a
correct one; once the lock-out window has passed a correct log-in works again."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from leadcenter.factories import UserFactory
from leadcenter.models import LoginFailure

pytestmark = pytest.mark.django_db

PASSWORD = "correct horse battery staple"
LIMIT = 5


@pytest.fixture(autouse=True)
def _limits(settings):
    settings.LEADCENTER_LOGIN_FAILURES = LIMIT
    settings.LEADCENTER_LOGIN_IP_FAILURES = 12
    settings.LEADCENTER_LOGIN_LOCKOUT = timedelta(minutes=15)


@pytest.fixture
def manager(db):
    return UserFactory(username="manager", is_staff=True)


def log_in(client: Client, username: str, password: str, ip: str = "203.0.113.7"):
    return client.post(
        reverse("admin:login"),
        {"username": username, "password": password, "next": reverse("admin:index")},
        REMOTE_ADDR=ip,
    )


def logged_in(client: Client) -> bool:
    return "_auth_user_id" in client.session


def test_the_attempt_after_the_limit_is_refused_even_with_the_right_password(manager):
    client = Client()
    for _ in range(LIMIT):
        response = log_in(client, "manager", "wrong")
        assert response.status_code == 200  # the form again, with its error

    response = log_in(client, "manager", PASSWORD)

    assert response.status_code == 429
    assert "Too many failed log-in attempts" in response.content.decode()
    assert not logged_in(client)


def test_a_correct_log_in_after_the_lock_out_window_works(manager):
    client = Client()
    for _ in range(LIMIT):
        log_in(client, "manager", "wrong")
    assert log_in(client, "manager", PASSWORD).status_code == 429

    # The window passes (the failures age; nothing else changes).
    LoginFailure.objects.update(created=timezone.now() - timedelta(minutes=15, seconds=1))
    response = log_in(client, "manager", PASSWORD)

    assert response.status_code == 302
    assert logged_in(client)
    assert not LoginFailure.objects.filter(username="manager").exists()


def test_the_username_is_locked_whatever_its_case(manager):
    client = Client()
    for name in ("manager", "Manager", "MANAGER", " manager", "manageR"):
        log_in(client, name, "wrong")

    assert log_in(client, "manager", PASSWORD).status_code == 429


def test_a_stranger_failing_elsewhere_does_not_lock_the_owner_out(manager):
    for _ in range(LIMIT + 2):
        log_in(Client(), "manager", "wrong", ip="198.51.100.66")

    client = Client()
    assert log_in(client, "manager", PASSWORD, ip="203.0.113.7").status_code == 302
    assert logged_in(client)


def test_one_address_trying_many_usernames_is_locked(manager):
    for i in range(12):
        log_in(Client(), f"guess{i}", "wrong")

    client = Client()
    assert log_in(client, "manager", PASSWORD).status_code == 429
    assert not logged_in(client)


def test_a_successful_log_in_clears_the_failures(manager):
    client = Client()
    for _ in range(LIMIT - 1):
        log_in(client, "manager", "wrong")
    assert log_in(client, "manager", PASSWORD).status_code == 302

    for _ in range(LIMIT - 1):
        log_in(Client(), "manager", "wrong")
    assert log_in(Client(), "manager", PASSWORD).status_code == 302
