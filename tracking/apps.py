from django.apps import AppConfig
from django.db.models.signals import post_migrate


def ensure_schedules(sender, using="default", **kwargs) -> None:
    """Bounce mailboxes are polled every 5 minutes on the django-q2 cluster (idempotent, after
    migrate)."""
    from django_q.models import Schedule

    Schedule.objects.using(using).update_or_create(
        name="leadcenter.bounces_poll",
        defaults={
            "func": "tracking.tasks.bounces_poll",
            "schedule_type": Schedule.MINUTES,
            "minutes": 5,
            "repeats": -1,
        },
    )


class TrackingConfig(AppConfig):
    name = "tracking"

    def ready(self) -> None:
        post_migrate.connect(ensure_schedules, sender=self)
        from tracking import webhooks  # noqa: F401  (connects anymail's signals)
