"""Admin log-in throttling: after LEADCENTER_LOGIN_FAILURES failed attempts for one username
from one address within LEADCENTER_LOGIN_LOCKOUT, or LEADCENTER_LOGIN_IP_FAILURES from one
address whatever the usernames, further attempts are refused without checking the password,
until the oldest of those failures is older than the window. A successful log-in clears the
username's failures from that address.

Keyed on the username *and* the address, so a stranger who types a manager's name five times
does not lock the manager out of their own office; the per-address limit stops one address
from trying many usernames. The address is REMOTE_ADDR: behind a reverse proxy every visitor
shares the proxy's, so the per-address limit is then a site-wide one (keep it generous).
"""

from __future__ import annotations

from datetime import timedelta

from django.conf import settings
from django.http import HttpRequest
from django.utils import timezone

from leadcenter.models import LoginFailure


def window() -> timedelta:
    return settings.LEADCENTER_LOGIN_LOCKOUT


def client_ip(request: HttpRequest) -> str | None:
    return request.META.get("REMOTE_ADDR") or None


def _key(username: str) -> str:
    return username.strip().lower()[:150]


def login_locked(*, username: str, ip: str | None) -> bool:
    since = timezone.now() - window()
    recent = LoginFailure.objects.filter(ip=ip, created__gte=since)
    return (
        recent.filter(username=_key(username)).count() >= settings.LEADCENTER_LOGIN_FAILURES
        or recent.count() >= settings.LEADCENTER_LOGIN_IP_FAILURES
    )


def login_failure_record(*, username: str, ip: str | None) -> None:
    now = timezone.now()
    LoginFailure.objects.create(username=_key(username), ip=ip, created=now)
    # Nothing older than the window counts any more.
    LoginFailure.objects.filter(created__lt=now - window()).delete()


def login_failures_clear(*, username: str, ip: str | None) -> None:
    LoginFailure.objects.filter(username=_key(username), ip=ip).delete()
