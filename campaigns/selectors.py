from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from django.conf import settings
from django.db import connection
from django.db.models import Count, Q, QuerySet
from django.utils import timezone

from campaigns.models import AccountUsage, CampaignRun, Message, Recipient, SendingAccount
from leadcenter.database import prepared_cursor

S = Message.Status


def _zone(account: SendingAccount) -> ZoneInfo:
    try:
        return ZoneInfo(account.timezone or "UTC")
    except (ZoneInfoNotFoundError, ValueError):
        return ZoneInfo("UTC")


def account_is_within_hours(account: SendingAccount, now: datetime) -> bool:
    """Inside the account's active weekdays and hours, in its own time zone."""
    local = now.astimezone(_zone(account))
    weekdays = account.active_weekdays or "1234567"
    if str(local.isoweekday()) not in weekdays:
        return False
    start, end = account.active_from, account.active_until
    current = local.time()
    if start and end and end <= start:  # a window across midnight, e.g. 22:00-06:00
        return current >= start or current < end
    if start and current < start:
        return False
    return not (end and current >= end)


def account_day_start(account: SendingAccount, now: datetime) -> datetime:
    local = now.astimezone(_zone(account))
    return local.replace(hour=0, minute=0, second=0, microsecond=0)


def account_capacity(account: SendingAccount, now: datetime) -> int:
    """How many messages the account may still attempt right now (daily and per-minute limits,
    counted from the database so a restart cannot reset them): two reads of the counters the
    sender keeps as it claims (AccountUsage, services.account_usage_add), whatever the day's
    volume. The minute counts the seconds that began within the last 61 seconds: a claim counts
    for up to a second longer than a minute, never shorter, so the limit is never passed."""
    daily, per_minute = max(0, account.daily_limit), max(0, account.per_minute_limit)
    if not daily or not per_minute:
        return 0
    (today_sql, today_params), (minute_sql, minute_params) = _used_sql(account, now)
    with prepared_cursor(connection) as cursor:
        cursor.execute(f"SELECT {today_sql}, {minute_sql}", [*today_params, *minute_params])
        today, minute = cursor.fetchone()
    return max(0, min(daily - (today or 0), per_minute - (minute or 0)))


def account_capacity_sql(account: SendingAccount, now: datetime) -> tuple[str, list]:
    """account_capacity() as an SQL expression, for a statement that claims: read by that
    statement, after the lock it waited for (campaigns.services.messages_claim)."""
    daily, per_minute = max(0, account.daily_limit), max(0, account.per_minute_limit)
    if not daily or not per_minute:
        return "0", []
    (today_sql, today_params), (minute_sql, minute_params) = _used_sql(account, now)
    return (
        f"GREATEST(0, LEAST(%s - COALESCE({today_sql}, 0), %s - COALESCE({minute_sql}, 0)))",
        [daily, *today_params, per_minute, *minute_params],
    )


def _used_sql(account: SendingAccount, now: datetime):
    """SQL of what the account claimed today, and in the last minute's seconds, each with its
    parameters."""
    table = connection.ops.quote_name(AccountUsage._meta.db_table)
    ops = connection.ops
    day = ops.adapt_datetimefield_value(account_day_start(account, now))
    since = ops.adapt_datetimefield_value(now - MINUTE_COUNTED)
    return (
        (
            f"(SELECT claimed FROM {table} WHERE account_id = %s AND span = %s AND start = %s)",
            [account.pk, AccountUsage.Span.DAY, day],
        ),
        (
            f"(SELECT SUM(claimed) FROM {table} WHERE account_id = %s AND span = %s "
            "AND start > %s)",
            [account.pk, AccountUsage.Span.SECOND, since],
        ),
    )


# The seconds whose claims count against the per-minute limit: those that began within this
# much of now (a claim at 12:00:00.9 is in the second of 12:00:00, counted until 12:01:00.999).
MINUTE_COUNTED = timedelta(seconds=61)


def accounts_with_due_messages(now: datetime) -> list[SendingAccount]:
    """Active accounts that have a message due now in a run that may send."""
    due = Message.objects.filter(
        status__in=Message.DUE_STATUSES,
        next_attempt_at__lte=now,
        run__status__in=[CampaignRun.Status.WAITING, CampaignRun.Status.RUNNING],
    )
    return list(
        SendingAccount.objects.filter(is_active=True, pk__in=due.values("account_id")).order_by(
            "pk"
        )
    )


def in_doubt_cutoff(now: datetime | None = None) -> datetime:
    return (now or timezone.now()) - settings.LEADCENTER_IN_DOUBT_AFTER


def messages_in_doubt(now: datetime | None = None):
    """Claimed by a worker that never recorded an outcome: a person decides, never a resend."""
    return Message.objects.filter(status=S.SENDING, claimed_at__lt=in_doubt_cutoff(now))


@dataclass(frozen=True)
class RunProgress:
    total: int  # recipients that were not filtered
    done: int  # sent + failed
    counts: dict[str, int]

    @property
    def percent(self) -> float:
        return 100.0 * self.done / self.total if self.total else 100.0


def run_progress(*, run: CampaignRun) -> RunProgress:
    """Progress = (sent + failed) / (recipients not filtered) x 100, with the lead-level counts."""
    R = Recipient.Status
    counts = run.recipients.aggregate(
        **{status.label: Count("pk", filter=Q(status=status)) for status in R}
    )
    total = sum(n for label, n in counts.items() if label != R.FILTERED.label)
    done = counts[R.SENT.label] + counts[R.FAILED.label]
    return RunProgress(total=total, done=done, counts=counts)


# The contact page shows this many emails (newest first), each with this many latest events;
# the rest are a click away on the Sent emails list and the email's own page.
HISTORY_EMAILS = 100
HISTORY_EVENTS_PER_EMAIL = 25


@dataclass
class DeliveryHistory:
    emails: list[Message]  # each with .recent_events and .rejection_list
    total: int  # every email sent to the contact


def contact_delivery_history(
    contact_id: int, *, limit: int = HISTORY_EMAILS, events: int = HISTORY_EVENTS_PER_EMAIL
) -> DeliveryHistory:
    """Every email a contact was sent, newest first, with its campaign, step, account, latest
    events and rejections: what support agents read. Four queries, whatever the history."""
    from django.db.models import Prefetch

    from tracking.models import Rejection, TrackingEvent

    emails = Message.objects.filter(recipient__contact_id=contact_id)
    shown = list(
        emails.select_related("run__campaign", "step", "account")
        .prefetch_related(
            Prefetch(
                "events",
                queryset=TrackingEvent.objects.order_by("-occurred_at", "-id").defer("raw")[
                    :events
                ],
                to_attr="recent_events",
            ),
            Prefetch(
                "rejections",
                queryset=Rejection.objects.order_by("-created", "-id"),
                to_attr="rejection_list",
            ),
        )
        .order_by("-created", "-id")[:limit]
    )
    total = len(shown) if len(shown) < limit else emails.count()
    return DeliveryHistory(emails=shown, total=total)


def search_by_contact(
    queryset: QuerySet[Any], term: str, *, recipient: str, message_id: str | None = None
) -> QuerySet:
    """The Sent emails and Recipients search, fast at millions of rows because every branch is
    an index lookup (no `LIKE '%...%'` over the table): a whole address (case-insensitive: the
    address the email went to, or the contact's address today), a whole Message-ID (with or
    without its angle brackets), or a contact's name: first name, last name, or "first last",
    case-insensitively. `recipient` and `message_id` name the fields of the queryset's model
    that hold its Recipient (or "pk" for recipients themselves) and its Message-ID."""
    from django.db.models.functions import Lower
    from django.db.models.lookups import Exact

    from contacts.models import Contact

    term = " ".join(term.split())
    if not term:
        return queryset
    lowered = term.lower()
    if "@" in term:
        # An address names a few contacts and recipients: their ids, read by index first,
        # let the database combine plain index lookups (a join or a sub-select inside an OR
        # would make it read the whole table).
        contacts = list(
            Contact.objects.filter(Exact(Lower("email"), lowered), ~Q(email="")).values_list(
                "pk", flat=True
            )
        )
        recipients = list(
            Recipient.objects.filter(
                Q(Exact(Lower("email"), lowered)) | Q(contact_id__in=contacts)
            ).values_list("pk", flat=True)[:RECIPIENTS_PER_ADDRESS]
        )
        matches = Q(**{f"{recipient}__in": recipients})
        if message_id:
            matches |= Q(**{message_id: f"<{term.strip('<>')}>"})
        return queryset.filter(matches)
    first, _, rest = lowered.partition(" ")
    names = Q(Exact(Lower("last_name"), lowered)) | Q(Exact(Lower("first_name"), lowered))
    if rest:
        names |= Q(Exact(Lower("first_name"), first)) & Q(Exact(Lower("last_name"), rest))
    # IN (a handful of contacts found by index), not a correlated EXISTS: the database starts
    # from those contacts and follows their indexes to the rows. Their ids are read first when
    # there are few (a rare name, a first and last name): a sub-select is planned for as many
    # contacts as an average name has (a thousand at a million contacts), enough for the
    # database to start parallel workers to find one email. A common name keeps the sub-select.
    people: Any = Contact.objects.filter(names).values_list("pk", flat=True)
    found = list(people[: PEOPLE_PER_NAME + 1])
    if 0 < len(found) <= PEOPLE_PER_NAME:  # none: the caller's own search runs as before
        people = found
    contact = "contact" if recipient == "pk" else f"{recipient}__contact"
    return queryset.filter(**{f"{contact}__in": people})


# One address is a recipient once per run it was in; more than this many is not a person.
RECIPIENTS_PER_ADDRESS = 10_000
# Contacts of one name whose ids a search reads first (above, a sub-select; see search_by_contact).
PEOPLE_PER_NAME = 1_000
