from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from datetime import datetime, timedelta

from django.db.models import CharField, Count, Exists, OuterRef, QuerySet
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


# Link scanners, security gateways, previewers and HTTP libraries: their requests are not a
# person reading or clicking. (Gmail's and Yahoo's image proxies fetch when a person opens, so
# they are not here.)
_MACHINE_AGENTS = re.compile(
    r"bot\b|spider|crawl|preview|scanner|barracuda|mimecast|proofpoint|safelinks|fireeye|"
    r"forcepoint|trendmicro|symantec|sophos|messagelabs|ironport|cisco|zscaler|"
    r"python-requests|python-urllib|go-http-client|curl/|wget/|java/|okhttp|headlesschrome|"
    r"phantomjs|libwww|httpclient|axios|node-fetch",
    re.IGNORECASE,
)
# A click this soon after the email left us is a scanner following every link on arrival.
MACHINE_CLICK_WINDOW = timedelta(seconds=10)


def is_machine_agent(user_agent: str) -> bool:
    """A user agent that is a scanner, previewer or HTTP library, or none at all."""
    return not user_agent.strip() or bool(_MACHINE_AGENTS.search(user_agent))


def is_too_soon_after_sending(*, message_pk: int, when: datetime) -> bool:
    """An open or click within seconds of the email leaving us is a scanner on arrival."""
    sent_at = Message.objects.filter(pk=message_pk).values_list("sent_at", flat=True).first()
    return bool(sent_at and when - sent_at < MACHINE_CLICK_WINDOW)


def messages_match(events: Sequence[InboundEvent]) -> list[int | None]:
    """`message_match` for a batch, in at most four queries: the message of each event (or
    None), by the same evidence in the same order, the same message chosen among several."""
    found: list[int | None] = [None] * len(events)
    tokens = {e.message_pk for e in events if e.message_pk is not None}
    if tokens:
        existing = set(Message.objects.filter(pk__in=tokens).values_list("pk", flat=True))
        for n, event in enumerate(events):
            if event.message_pk in existing:
                found[n] = event.message_pk

    # Among several messages with one Message-ID or ESP id, the newest (Message's ordering).
    wanted: dict[int, set[str]] = {}
    for n, event in enumerate(events):
        ids = [i.strip() for i in event.header_message_ids if i and i.strip()]
        if found[n] is None and ids:
            wanted[n] = {*ids, *(f"<{i.strip('<>')}>" for i in ids)}
    if wanted:
        newest: dict[str, tuple] = {}
        rows = Message.objects.filter(message_id__in=set().union(*wanted.values()))
        for pk, message_id, created in rows.values_list("pk", "message_id", "created"):
            newest[message_id] = max(newest.get(message_id, (created, pk)), (created, pk))
        for n, variants in wanted.items():
            if hits := [newest[v] for v in variants if v in newest]:
                found[n] = max(hits)[1]

    wanted_esp = {n: e.esp_message_id for n, e in enumerate(events) if found[n] is None}
    wanted_esp = {n: i for n, i in wanted_esp.items() if i}
    if wanted_esp:
        newest = {}
        rows = Message.objects.filter(esp_message_id__in=set(wanted_esp.values()))
        for pk, esp_id, created in rows.values_list("pk", "esp_message_id", "created"):
            newest[esp_id] = max(newest.get(esp_id, (created, pk)), (created, pk))
        for n, esp_id in wanted_esp.items():
            if esp_id in newest:
                found[n] = newest[esp_id][1]

    wanted_address = {
        n: e.recipient.strip().lower()
        for n, e in enumerate(events)
        if found[n] is None and e.recipient
    }
    if wanted_address:
        latest: dict[str, tuple] = {}
        rows = (
            Message.objects.filter(
                recipient__email__lower__in=set(wanted_address.values()),
                status__in=_LEFT_US,
                sent_at__gte=timezone.now() - timedelta(days=30),
            )
            .annotate(address=Lower("recipient__email"))
            .values_list("pk", "address", "sent_at")
        )
        for pk, address, sent_at in rows:
            latest[address] = max(latest.get(address, (sent_at, pk)), (sent_at, pk))
        for n, address in wanted_address.items():
            if address in latest:
                found[n] = latest[address][1]
    return found


def contacts_with_repeated_soft_bounces(*, days: int = 30, minimum: int = 3) -> QuerySet:
    """The ids of contacts with `minimum` or more soft rejections in the last `days` days: for
    a person to review (issue #4). Their address stays valid: soft means it may work again."""
    from tracking.models import Rejection

    return (
        Rejection.objects.filter(
            kind=Rejection.Kind.SOFT,
            created__gte=timezone.now() - timedelta(days=days),
            message__isnull=False,
        )
        .values("message__recipient__contact_id")
        .annotate(soft=Count("pk"))
        .filter(soft__gte=minimum)
        .values("message__recipient__contact_id")
    )


def contacts_hard_bounced_since(message_ids: Iterable[int]) -> set[int]:
    """The contacts of these messages whose address hard-bounced on a message sent after
    it: engagement with an older email does not prove the address still works."""
    from tracking.models import Rejection

    later = Rejection.objects.filter(
        kind=Rejection.Kind.HARD,
        message__recipient__contact=OuterRef("recipient__contact"),
        message__sent_at__gt=OuterRef("sent_at"),
    )
    return set(
        Message.objects.filter(pk__in=list(message_ids))
        .filter(Exists(later))
        .values_list("recipient__contact_id", flat=True)
    )
