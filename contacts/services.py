from __future__ import annotations

from collections.abc import Iterable

from django.db import IntegrityError, transaction
from django.utils import timezone

from contacts.models import Contact, Suppression


def suppression_add(*, email: str, reason: str, source: str = "", note: str = "") -> Suppression:
    """Block an address (idempotent: an active entry for the same reason is reused)."""
    address = email.strip().lower()
    existing = Suppression.objects.filter(email=address, reason=reason, lifted_at__isnull=True)
    if found := existing.first():
        return found
    try:
        with transaction.atomic():
            return Suppression.objects.create(
                email=address, reason=reason, source=source, note=note
            )
    except IntegrityError:  # added concurrently
        return existing.get()


def contact_mark_invalid(*, contact_id: int, reason: str, source: str) -> None:
    """A hard rejection: the address is invalid and blocked from every later email."""
    now = timezone.now()
    contact = Contact.objects.filter(pk=contact_id).only("email").first()
    if contact is None:
        return
    Contact.objects.filter(pk=contact_id, email_status=Contact.EmailStatus.VALID).update(
        email_status=Contact.EmailStatus.INVALID, invalid_reason=reason[:255], invalid_at=now
    )
    if contact.email:
        suppression_add(
            email=contact.email, reason=Suppression.Reason.HARD_BOUNCE, source=source, note=reason
        )


def contact_revalidate(*, contact_id: int, reason: str) -> None:
    """Undo a hard rejection that later engagement proved wrong (the person opened, clicked or
    replied): the address is valid again and its hard-bounce suppression is lifted, with the
    reason kept in the suppression's history."""
    now = timezone.now()
    contact = Contact.objects.filter(pk=contact_id).only("email").first()
    if contact is None:
        return
    Contact.objects.filter(pk=contact_id, email_status=Contact.EmailStatus.INVALID).update(
        email_status=Contact.EmailStatus.VALID, invalid_reason="", invalid_at=None
    )
    if contact.email:
        Suppression.objects.filter(
            email=contact.email.strip().lower(),
            reason=Suppression.Reason.HARD_BOUNCE,
            lifted_at__isnull=True,
        ).update(lifted_at=now, lift_reason=reason[:255])


def suppressions_add_bulk(
    *, emails: Iterable[str], reason: str, source: str = "", note: str = ""
) -> int:
    """`suppression_add` for many addresses at once (imports): blocks each address that has
    no active entry for `reason` yet; returns how many entries it added."""
    addresses = sorted({e.strip().lower() for e in emails if e and e.strip()})
    added = 0
    for start in range(0, len(addresses), 1000):
        batch = addresses[start : start + 1000]
        active = set(
            Suppression.objects.filter(
                email__in=batch, reason=reason, lifted_at__isnull=True
            ).values_list("email", flat=True)
        )
        new = [
            Suppression(email=address, reason=reason, source=source, note=note)
            for address in batch
            if address not in active
        ]
        # ignore_conflicts: an entry added concurrently wins, as in suppression_add.
        Suppression.objects.bulk_create(new, ignore_conflicts=True)
        added += len(new)
    return added


def suppressions_lift(*, ids: Iterable[int], by, reason: str) -> list[Suppression]:
    """Lift the active entries among `ids`: the address may be emailed again for that reason.
    Conditional on still being active, so a concurrent lift keeps its own who, when and why.
    Returns the entries this call lifted (each stays as history)."""
    reason = reason.strip()[:255]
    if not reason:
        raise ValueError("A lift needs a reason.")
    with transaction.atomic():
        lifted = list(
            Suppression.objects.select_for_update()
            .filter(pk__in=list(ids), lifted_at__isnull=True)
            .order_by("pk")
        )
        Suppression.objects.filter(pk__in=[s.pk for s in lifted]).update(
            lifted_at=timezone.now(), lifted_by=by, lift_reason=reason
        )
    return lifted


def suppressions_add_entries(*, entries: Iterable[tuple[str, str, str, str]]) -> int:
    """`suppression_add` for many (email, reason, source, note) entries at once, in order (the
    first entry for an address and reason is the one kept): two statements for the lot.
    Returns how many entries it added."""
    wanted: dict[tuple[str, str], tuple[str, str]] = {}
    for email, reason, source, note in entries:
        address = email.strip().lower()
        if address:
            wanted.setdefault((address, reason), (source, note))
    if not wanted:
        return 0
    active = set(
        Suppression.objects.filter(
            email__in={address for address, _reason in wanted},
            reason__in={reason for _address, reason in wanted},
            lifted_at__isnull=True,
        ).values_list("email", "reason")
    )
    new = [
        Suppression(email=address, reason=reason, source=source, note=note)
        for (address, reason), (source, note) in wanted.items()
        if (address, reason) not in active
    ]
    # ignore_conflicts: an entry added concurrently wins, as in suppression_add.
    Suppression.objects.bulk_create(new, ignore_conflicts=True)
    return len(new)
