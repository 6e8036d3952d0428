"""System checks that warn about a dangerous production configuration.

`check --deploy` covers Django's own settings; these cover LeadCenter's.
"""

from __future__ import annotations

from django.conf import settings
from django.core.checks import Tags, Warning, register


@register(Tags.security, deploy=True)
def check_production_configuration(app_configs=None, **kwargs) -> list[Warning]:
    warnings: list[Warning] = []
    engine = settings.DATABASES["default"]["ENGINE"]
    if not settings.DEBUG and settings.SECRET_KEY == settings.DEV_SECRET_KEY:
        warnings.append(
            Warning(
                "DEBUG is off but SECRET_KEY is the public development key.",
                hint="Set SECRET_KEY to a long random value; tracking links are signed with it.",
                id="leadcenter.W001",
            )
        )
    if not settings.DEBUG and engine == "django.db.backends.sqlite3":
        warnings.append(
            Warning(
                "DEBUG is off but the database is SQLite.",
                hint="Set DATABASE_URL to PostgreSQL: several workers sharing a SQLite file "
                "serialise every write.",
                id="leadcenter.W002",
            )
        )
    if not settings.DEBUG and settings.LEADCENTER_BASE_URL.startswith("http://"):
        warnings.append(
            Warning(
                "LEADCENTER_BASE_URL is plain http while DEBUG is off.",
                hint="Tracking and unsubscribe links should be https (RFC 8058 requires it for "
                "one-click unsubscribe).",
                id="leadcenter.W003",
            )
        )
    if not settings.DEBUG and not settings.ANYMAIL.get("WEBHOOK_SECRET"):
        warnings.append(
            Warning(
                "ANYMAIL_WEBHOOK_SECRET is empty while DEBUG is off.",
                hint="Webhook endpoints refuse every call without it; set it to 'user:password'.",
                id="leadcenter.W004",
            )
        )
    return warnings


@register(Tags.security)
def check_debug_exposure(app_configs=None, **kwargs) -> list[Warning]:
    warnings: list[Warning] = []
    if settings.DEBUG and "*" in settings.ALLOWED_HOSTS:
        warnings.append(
            Warning(
                "DEBUG is on and ALLOWED_HOSTS accepts any host.",
                hint="DEBUG pages show settings and data; never expose them to the network.",
                id="leadcenter.W005",
            )
        )
    return warnings
