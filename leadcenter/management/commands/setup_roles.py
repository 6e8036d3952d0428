from __future__ import annotations

from typing import Any

from django.core.exceptions import ImproperlyConfigured
from django.core.management.base import BaseCommand, CommandError

from leadcenter.roles import roles_setup


class Command(BaseCommand):
    help = "Create or update the Staff, Managers and Support groups and their permissions."

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            counts = roles_setup()
        except ImproperlyConfigured as exc:
            raise CommandError(str(exc)) from exc
        for name, count in counts.items():
            self.stdout.write(f"{name}: {count} permissions")
