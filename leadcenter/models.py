from __future__ import annotations

from django.db import models
from django.utils import timezone


class LoginFailure(models.Model):
    """One failed log-in to the admin, kept for the lock-out window (leadcenter.throttle).

    In the database rather than a cache: every web process and machine counts the same
    failures, and a restart does not reset them."""

    username = models.CharField(max_length=150, help_text="As typed, lower-cased.")
    ip = models.GenericIPAddressField(null=True, blank=True)
    created = models.DateTimeField(default=timezone.now)

    class Meta:
        indexes = [
            models.Index(fields=["username", "ip", "created"], name="loginfailure_user_ip"),
            models.Index(fields=["ip", "created"], name="loginfailure_ip"),
            models.Index(fields=["created"], name="loginfailure_created"),
        ]

    def __str__(self) -> str:
        return f"{self.username} from {self.ip} at {self.created:%Y-%m-%d %H:%M:%S}"
