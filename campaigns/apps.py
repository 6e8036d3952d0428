from django.apps import AppConfig
from django.db.models.signals import post_migrate


def ensure_schedules(sender, using="default", **kwargs) -> None:
    """The dispatch runs every minute on the django-q2 cluster (idempotent, after migrate)."""
    from django_q.models import Schedule

    Schedule.objects.using(using).update_or_create(
        name="leadcenter.dispatch",
        defaults={
            "func": "campaigns.tasks.dispatch",
            "schedule_type": Schedule.MINUTES,
            "minutes": 1,
            "repeats": -1,
        },
    )


class CampaignsConfig(AppConfig):
    name = "campaigns"

    def ready(self) -> None:
        post_migrate.connect(ensure_schedules, sender=self)
