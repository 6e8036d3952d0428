from __future__ import annotations

from datetime import timedelta

from django.db.models import CharField
from django.db.models.functions import Lower
from django.utils import timezone

from campaigns.models import Message
from tracking.events import InboundEvent

CharField.register_lookup(Lower)

# Statuses of a message that left us, so an event can be about it.
_LEFT_US = [
    Message.Status.SENT,
    Message.Status.SOFT_BOUNCED,
    Message.Status.BOUNCED,
    Message.Status.FAILED,
    Message.Status.DELIVERED,
    Message.Status.OPENED,
    Message.Status.CLICKED,
    Message.Status.REPLIED,
]


def message_match(event: InboundEvent) -> int | None:
    """The message an event is about: our VERP or tracking token, then our Message-ID in the
    returned headers, then the ESP's message id, then the latest message sent to the address
    in the last 30 days. None when nothing matches."""
    if event.message_pk is not None:
        if Message.objects.filter(pk=event.message_pk).exists():
            return event.message_pk
    ids = [i.strip() for i in event.header_message_ids if i and i.strip()]
    if ids:
        variants = {*ids, *(f"<{i.strip('<>')}>" for i in ids)}
        found = Message.objects.filter(message_id__in=variants).values_list("pk", flat=True)
        if pk := found.first():
            return pk
    if event.esp_message_id:
        found = Message.objects.filter(esp_message_id=event.esp_message_id)
        if pk := found.values_list("pk", flat=True).first():
            return pk
    if event.recipient:
        since = timezone.now() - timedelta(days=30)
        latest = (
            Message.objects.filter(
                recipient__email__lower=event.recipient.strip().lower(),
                status__in=_LEFT_US,
                sent_at__gte=since,
            )
            .order_by("-sent_at", "-pk")
            .values_list("pk", flat=True)
        )
        return latest.first()
    return None
