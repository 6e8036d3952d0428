from django.apps import AppConfig
from django.contrib.admin import apps as admin_apps
from django.db.models.signals import post_migrate


class LeadCenterAdminConfig(admin_apps.AdminConfig):
    default = False
    default_site = "leadcenter.admin_site.LeadCenterAdminSite"


class LeadCenterConfig(AppConfig):
    default = True
    name = "leadcenter"
    verbose_name = "LeadCenter"

    def ready(self) -> None:
        from leadcenter import checks  # noqa: F401  (registers the system checks)

        post_migrate.connect(ensure_tracking_drain, sender=self)


def ensure_tracking_drain(sender, using="default", **kwargs) -> None:
    """Queued opens and clicks (tracking.buffer) are applied every minute (idempotent)."""
    from django_q.models import Schedule

    Schedule.objects.using(using).update_or_create(
        name="leadcenter.tracking_drain",
        defaults={
            "func": "tracking.buffer.events_drain",
            "schedule_type": Schedule.MINUTES,
            "minutes": 1,
            "repeats": -1,
        },
    )
