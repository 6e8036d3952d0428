"""Report selectors: run details, campaign summary, campaign comparison, account health.

Every figure is a number of recipients (contacts in runs) that meet one condition, defined once
here as a `Figure`: the Q object that selects them, and the admin changelist query parameters
that list exactly them (the Recipient list filters in campaigns.admin apply the same Q). The
pages read the figures from maintained counters (`RunTally`, kept by database triggers, see
migration 0007) so they cost the same for ten thousand recipients as for a million. The
counters are kept per day the recipients were first emailed (migration 0013), so a summary
restricted to a date range sums the counters of its days: it covers the recipients first
emailed on those days (a cohort), with their results to date, and links to exactly them
(`first_emailed_q`, the Recipients list's `sent_date` filter).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta
from typing import Any

from django.contrib.auth import get_user_model
from django.db.models import (
    Case,
    Count,
    Exists,
    ExpressionWrapper,
    F,
    FloatField,
    OuterRef,
    Q,
    QuerySet,
    Subquery,
    Sum,
    Value,
    When,
)
from django.db.models.functions import Coalesce
from django.utils import timezone

from campaigns.models import (
    HARD_REJECTION_MASK,
    REJECTION_BITS,
    SOFT_REJECTION_MASK,
    AccountUsage,
    Campaign,
    CampaignRun,
    Message,
    Recipient,
    RunActivity,
    RunTally,
    SendingAccount,
)
from campaigns.selectors import RunProgress, account_day_start, in_doubt_cutoff
from tracking.models import Rejection, TrackingEvent

R = Recipient.Status
S = Message.Status
NO_OWNER = 0  # RunTally.owner_key of contacts without an owner


def _with_bits(mask: int) -> list[int]:
    """Every value of Recipient.rejections that has one of `mask`'s bits: an IN list is plain,
    portable SQL, unlike a bitwise test."""
    return [value for value in range(64) if value & mask]


@dataclass(frozen=True)
class Figure:
    key: str  # the RunTally column
    label: str
    q: Q  # the recipients it counts
    params: dict[str, str]  # Recipient changelist query parameters listing exactly them
    help: str = ""


def _figures() -> dict[str, Figure]:
    figures = [
        Figure("recipients", "Recipients", Q(), {}, "Every contact of the audience."),
        Figure(
            "filtered",
            "Filtered",
            Q(status=R.FILTERED),
            {"status__exact": R.FILTERED},
            "Left out of the run; the reasons follow.",
        ),
        *(
            Figure(
                f"filtered_{reason.value}",
                reason.label,
                Q(filter_reason=reason.value),
                {"filter_reason__exact": reason.value},
            )
            for reason in Recipient.FilterReason
        ),
        Figure("pending", "Pending", Q(status=R.PENDING), {"status__exact": R.PENDING},
               "Nothing sent yet (a soft bounce being retried stays pending)."),
        Figure("partial", "Partial", Q(status=R.PARTIAL), {"status__exact": R.PARTIAL},
               "Some steps sent, follow-ups still due."),
        Figure("sent", "Sent", Q(status=R.SENT), {"status__exact": R.SENT},
               "Every due step accepted by the next mail server."),
        Figure("failed", "Failed", Q(status=R.FAILED), {"status__exact": R.FAILED},
               "Bounced, refused, or dropped; no more email goes to it in this run."),
        Figure(
            "attempted",
            "Sent",
            Q(steps_sent__gt=0) | Q(rejections__in=_with_bits(63)),
            {"result": "sent"},
            "Contacts we handed an email to a mail server for: it was accepted, or refused "
            "(see Rejected).",
        ),
        Figure("accepted", "Accepted", Q(steps_sent__gt=0), {"result": "accepted"},
               "At least one of its emails was accepted by the next mail server."),
        Figure("delivered", "Delivered", Q(delivered_at__isnull=False),
               {"result": "delivered"},
               "The recipient's server confirmed it (webhook, or an account that connects to "
               "it directly), or the contact engaged."),
        Figure("opened", "Opened", Q(opened_at__isnull=False), {"result": "opened"},
               "Opened by a person (machine opens by privacy proxies are not counted)."),
        Figure("clicked", "Clicks", Q(clicked_at__isnull=False), {"result": "clicked"},
               "Clicked a link."),
        Figure("replied", "Replied", Q(replied_at__isnull=False), {"result": "replied"}),
        Figure("unsubscribed", "Unsubscribed", Q(unsubscribed_at__isnull=False),
               {"result": "unsubscribed"}),
        Figure("complained", "Spam complaints", Q(complained_at__isnull=False),
               {"result": "complained"}, "Marked the email as spam."),
        Figure("bounced", "Bounced", Q(bounced_at__isnull=False), {"result": "bounced"},
               "A hard bounce: the address does not exist; it is now marked invalid."),
        Figure("leads", "Leads", Q(lead_at__isnull=False), {"result": "leads"},
               "Became a lead after engaging with this run."),
        Figure("opportunities", "Opportunities", Q(opportunity_at__isnull=False),
               {"result": "opportunities"}, "Became an opportunity after engaging with this run."),
        Figure("rejected", "Rejected", Q(rejections__in=_with_bits(63)),
               {"rejection": "any"}, "A mail server refused at least one of its emails."),
        Figure("rejected_hard", "Hard rejections",
               Q(rejections__in=_with_bits(HARD_REJECTION_MASK)),
               {"rejection": "hard"}, "No more email is sent to these addresses."),
        Figure("rejected_soft", "Soft rejections",
               Q(rejections__in=_with_bits(SOFT_REJECTION_MASK)),
               {"rejection": "soft"}, "Future campaigns send to these addresses as normal."),
        *(
            Figure(
                f"rejected_{category.value}",
                category.label,
                Q(rejections__in=_with_bits(REJECTION_BITS[category.value])),
                {"rejection": category.value},
            )
            for category in Rejection.Category
        ),
    ]  # fmt: skip
    return {figure.key: figure for figure in figures}


FIGURES: dict[str, Figure] = _figures()
TALLY_KEYS: list[str] = list(FIGURES)

# First-seen figures the Recipient list's "result" filter offers (parameter value -> figure).
RESULT_FILTER = {f.params["result"]: f for f in FIGURES.values() if "result" in f.params}
REJECTION_FILTER = {f.params["rejection"]: f for f in FIGURES.values() if "rejection" in f.params}


# --- what a figure's email looks like right now (live, small: index range scans) ------------


def recipients_with_email_q(status: str, now: datetime | None = None) -> Q:
    """Recipients with an email now soft bounced (retrying) or in doubt."""
    messages = Message.objects.filter(recipient=OuterRef("pk"))
    if status == "in_doubt":
        messages = messages.filter(status=S.SENDING, claimed_at__lt=in_doubt_cutoff(now))
    else:
        messages = messages.filter(status=S.SOFT_BOUNCED)
    return Q(Exists(messages))


EMAIL_NOW_FILTER = {
    "soft_bounced": "Soft bounced, being retried",
    "in_doubt": "In doubt (a worker stopped while sending)",
}


# --- first emailed (the date range of the summary) --------------------------------------------

DATE_RANGE_HELP = (
    "The contacts first emailed on these days (their first email of the run sent or refused, "
    "in the admin's time zone), with everything that has happened to them since, whenever it "
    "happened: opens, clicks, rejections, leads."
)


def first_emailed_q(start: date | None, end: date | None) -> Q:
    """Recipients first emailed between the two days (inclusive; Recipient.first_sent_on, in
    the admin's time zone). The counters' rows of those days count exactly them."""
    q = Q(first_sent_on__isnull=False)
    if start:
        q &= Q(first_sent_on__gte=start)
    if end:
        q &= Q(first_sent_on__lte=end)
    return q


def tally_days_q(start: date | None, end: date | None) -> Q:
    """The counter rows (RunTally) of the recipients of first_emailed_q(start, end)."""
    q = Q(day__gt=RunTally.NO_DAY)
    if start:
        q &= Q(day__gte=start)
    if end:
        q &= Q(day__lte=end)
    return q


def parse_day_range(value: str) -> tuple[date | None, date | None] | None:
    """'2024-05-01..2024-05-31' (either side may be empty) -> the two days; None if invalid."""
    if ".." not in value:
        return None
    left, right = value.split("..", 1)
    try:
        start = date.fromisoformat(left) if left else None
        end = date.fromisoformat(right) if right else None
    except ValueError:
        return None
    return (start, end) if start or end else None


def day_range_param(start: date | None, end: date | None) -> str:
    return f"{start.isoformat() if start else ''}..{end.isoformat() if end else ''}"


# --- counters --------------------------------------------------------------------------------


def _sums() -> dict[str, Sum]:
    return {key: Sum(key) for key in TALLY_KEYS}


def _zero() -> dict[str, int]:
    return dict.fromkeys(TALLY_KEYS, 0)


def _add(into: dict[str, int], counts: dict[str, Any]) -> dict[str, int]:
    for key in TALLY_KEYS:
        into[key] += counts.get(key) or 0
    return into


def tallies_by_owner(tallies: QuerySet[RunTally]) -> dict[int, dict[str, int]]:
    """owner key -> counts, in one grouped query over the counter rows."""
    rows = tallies.values("owner_key").annotate(**_sums()).order_by()
    return {row["owner_key"]: _add(_zero(), row) for row in rows}


def live_by_owner(recipients: QuerySet[Recipient]) -> dict[int, dict[str, int]]:
    """The same counts as the counters, counted from the rows: one grouped query."""
    rows = (
        recipients.values("contact__owner")
        .annotate(**{key: Count("pk", filter=FIGURES[key].q) for key in TALLY_KEYS})
        .order_by()
    )
    return {row["contact__owner"] or NO_OWNER: _add(_zero(), row) for row in rows}


def run_counts(*, run: CampaignRun) -> dict[str, int]:
    counts = RunTally.objects.filter(run=run).aggregate(**_sums())
    return {key: counts[key] or 0 for key in TALLY_KEYS}


def progress_from_counts(counts: dict[str, int]) -> RunProgress:
    """campaigns.selectors.run_progress, from the counters instead of a count of the rows."""
    by_label = {status.label: counts[status.value] for status in R}
    total = counts["recipients"] - counts["filtered"]
    return RunProgress(total=total, done=counts["sent"] + counts["failed"], counts=by_label)


# --- run details -------------------------------------------------------------------------------

RUN_STATUS_HELP = {
    CampaignRun.Status.INITIALIZED: "Created; the audience is being prepared.",
    CampaignRun.Status.WAITING: "Queued: email is due, but no worker, daily quota or active "
    "hours of its accounts are free right now. It goes on by itself.",
    CampaignRun.Status.RUNNING: "Sending now.",
    CampaignRun.Status.PAUSED: "Paused by a person: nothing is sent until it is resumed; "
    "progress is kept.",
    CampaignRun.Status.COMPLETED: "Every email processed, no retry pending.",
    CampaignRun.Status.FAILED: "An error stopped it (shown below).",
    CampaignRun.Status.TERMINATED: "Stopped by a person; emails not yet sent were cancelled.",
    CampaignRun.Status.FILTERED: "Every contact was filtered out; nothing was sent.",
}


@dataclass
class ActivityBucket:
    start: datetime  # in the admin's time zone
    label: str
    human_opens: int = 0
    machine_opens: int = 0
    human_clicks: int = 0
    machine_clicks: int = 0

    @property
    def total(self) -> int:
        return self.human_opens + self.machine_opens + self.human_clicks + self.machine_clicks


@dataclass
class Activity:
    unit: str  # "hour" or "day"
    buckets: list[ActivityBucket]

    @property
    def peak(self) -> int:
        return max(
            [max(b.human_opens + b.machine_opens, b.human_clicks + b.machine_clicks)
             for b in self.buckets] or [0]
        )  # fmt: skip

    def totals(self) -> dict[str, int]:
        keys = ("human_opens", "machine_opens", "human_clicks", "machine_clicks")
        return {k: sum(getattr(b, k) for b in self.buckets) for k in keys}


HOURLY_SPAN = timedelta(hours=72)
MAX_DAYS = 400  # a longer history shows its last MAX_DAYS days


def run_activity(*, run: CampaignRun) -> Activity:
    """Opens and clicks per hour (activity within three days) or per day, human and machine,
    in the admin's time zone, from the maintained RunActivity counters."""
    rows = list(
        RunActivity.objects.filter(run=run, count__gt=0)
        .values_list("hour", "type", "is_machine", "count")
        .order_by("hour")
    )
    if not rows:
        return Activity(unit="hour", buckets=[])
    zone = timezone.get_current_timezone()
    first, last = rows[0][0], rows[-1][0]
    hourly = last - first <= HOURLY_SPAN
    step = timedelta(hours=1) if hourly else timedelta(days=1)

    def bucket_start(moment: datetime) -> datetime:
        local = moment.astimezone(zone)
        if hourly:
            return local.replace(minute=0, second=0, microsecond=0)
        return datetime.combine(local.date(), time.min, tzinfo=zone)

    start, end = bucket_start(first), bucket_start(last)
    if not hourly and (end - start).days > MAX_DAYS:
        start = end - timedelta(days=MAX_DAYS)
    buckets: dict[datetime, ActivityBucket] = {}
    cursor = start
    while cursor <= end:
        label = f"{cursor:%d %b %H:00}" if hourly else f"{cursor:%a %d %b}"
        buckets[cursor] = ActivityBucket(start=cursor, label=label)
        # Step in UTC and re-localise, so a daylight-saving change cannot skip a bucket.
        cursor = bucket_start(cursor.astimezone(zone) + step)
    for hour, kind, is_machine, count in rows:
        bucket = buckets.get(bucket_start(hour))
        if bucket is None:
            continue
        who = "machine" if is_machine else "human"
        what = "opens" if kind == TrackingEvent.Type.OPENED else "clicks"
        setattr(bucket, f"{who}_{what}", getattr(bucket, f"{who}_{what}") + count)
    return Activity(unit="hour" if hourly else "day", buckets=list(buckets.values()))


@dataclass
class RunReport:
    run: CampaignRun
    counts: dict[str, int]
    soft_bounced_now: int
    in_doubt: int
    progress: RunProgress
    activity: Activity
    status_help: str

    @property
    def emailed(self) -> int:
        """Recipients that were not filtered: the base of most shares."""
        return self.counts["recipients"] - self.counts["filtered"]


def run_report(*, run: CampaignRun, now: datetime | None = None) -> RunReport:
    """Everything the run details page shows, in four queries whatever the run's size."""
    counts = run_counts(run=run)
    # A recipient has at most one email retrying or in flight at a time (the next step is
    # queued only once the previous one went out), so counting emails counts recipients, and
    # the soft-bounced count is an index-only scan of message_run_status.
    emails = Message.objects.filter(run=run)
    soft_bounced = emails.filter(status=S.SOFT_BOUNCED).count()
    in_doubt = emails.filter(status=S.SENDING, claimed_at__lt=in_doubt_cutoff(now)).count()
    return RunReport(
        run=run,
        counts=counts,
        soft_bounced_now=soft_bounced,
        in_doubt=in_doubt,
        progress=progress_from_counts(counts),
        activity=run_activity(run=run),
        status_help=RUN_STATUS_HELP.get(run.status, ""),
    )


# --- campaign summary ------------------------------------------------------------------------

# (figure key, indent) rows of each summary section, as StructuredWeb's campaign summary.
SUMMARY_ROWS: list[tuple[str, int]] = [
    ("attempted", 0),
    ("opened", 0),
    ("clicked", 0),
    ("unsubscribed", 0),
    ("rejected", 0),
    ("rejected_hard", 1),
    ("rejected_user_not_found", 2),
    ("rejected_domain_not_found", 2),
    ("rejected_soft", 1),
    ("rejected_mailbox_full", 2),
    ("rejected_no_answer", 2),
    ("rejected_spam_blocked", 2),
    ("rejected_unspecified", 2),
    ("leads", 0),
    ("opportunities", 0),
]


@dataclass
class SummaryRow:
    figure: Figure
    indent: int
    count: int
    percent: float | None  # of Sent

    @property
    def label(self) -> str:
        return self.figure.label


@dataclass
class SummarySection:
    title: str
    owner_key: int | None  # None: the overall section
    counts: dict[str, int]
    rows: list[SummaryRow] = field(default_factory=list)

    @property
    def sent(self) -> int:
        return self.counts["attempted"]


@dataclass(frozen=True)
class SummaryScope:
    """What a summary covers: a campaign, or one of its runs; optionally one owner's contacts
    (owner_key, NO_OWNER for none) and a range of days on which they were first emailed
    (sent_from, sent_to: first_emailed_q)."""

    campaign: Campaign
    run: CampaignRun | None = None
    owner_key: int | None = None
    sent_from: date | None = None
    sent_to: date | None = None

    @property
    def dated(self) -> bool:
        return bool(self.sent_from or self.sent_to)

    def recipient_params(self) -> dict[str, str]:
        """Recipient changelist parameters selecting this scope's recipients."""
        params = (
            {"run__id__exact": str(self.run.pk)}
            if self.run
            else {"run__campaign__id__exact": str(self.campaign.pk)}
        )
        if self.dated:
            params["sent_date"] = day_range_param(self.sent_from, self.sent_to)
        return params


def owner_params(owner_key: int) -> dict[str, str]:
    if owner_key == NO_OWNER:
        return {"contact__owner__isnull": "True"}
    return {"contact__owner__id__exact": str(owner_key)}


def owner_name(user: Any) -> str:
    return user.get_full_name() or user.get_username()


def _section(title: str, owner_key: int | None, counts: dict[str, int]) -> SummarySection:
    section = SummarySection(title=title, owner_key=owner_key, counts=counts)
    sent = counts["attempted"]
    for key, indent in SUMMARY_ROWS:
        count = counts[key]
        section.rows.append(
            SummaryRow(
                figure=FIGURES[key],
                indent=indent,
                count=count,
                percent=100.0 * count / sent if sent else None,
            )
        )
    return section


def summary_recipients(scope: SummaryScope) -> QuerySet[Recipient]:
    # The run ids as values, not a subquery: the planner then knows how big each run is and
    # reads a small one through its indexes.
    if scope.run:
        runs = [scope.run.pk]
    else:
        runs = list(scope.campaign.runs.values_list("pk", flat=True))
    recipients = Recipient.objects.filter(run_id__in=runs)
    if scope.owner_key == NO_OWNER:
        recipients = recipients.filter(contact__owner__isnull=True)
    elif scope.owner_key is not None:
        recipients = recipients.filter(contact__owner_id=scope.owner_key)
    if scope.dated:
        recipients = recipients.filter(first_emailed_q(scope.sent_from, scope.sent_to))
    return recipients


def campaign_summary(scope: SummaryScope) -> list[SummarySection]:
    """The overall section, then one per record owner (by name; contacts without an owner
    last). From the counters in one grouped query; with a date range, from the counters of
    the days in it (the recipients first emailed on those days)."""
    tallies = RunTally.objects.filter(run__campaign=scope.campaign)
    if scope.run:
        tallies = tallies.filter(run=scope.run)
    if scope.owner_key is not None:
        tallies = tallies.filter(owner_key=scope.owner_key)
    if scope.dated:
        tallies = tallies.filter(tally_days_q(scope.sent_from, scope.sent_to))
    by_owner = tallies_by_owner(tallies)
    by_owner = {key: counts for key, counts in by_owner.items() if counts["recipients"]}
    users = {
        user.pk: user for user in get_user_model().objects.filter(pk__in=[k for k in by_owner if k])
    }
    overall = _zero()
    for counts in by_owner.values():
        _add(overall, counts)
    sections = [_section("Overall", None, overall)]
    owners = sorted(
        by_owner,
        key=lambda k: (k not in users, owner_name(users[k]).lower() if k in users else ""),
    )
    for key in owners:
        title = owner_name(users[key]) if key in users else "No owner"
        sections.append(_section(title, key, by_owner[key]))
    return sections


def summary_owner_choices(campaign: Campaign) -> QuerySet:
    """Users who own contacts in the campaign's runs, from the counters (not a scan of the
    contacts)."""
    keys = RunTally.objects.filter(run__campaign=campaign, recipients__gt=0).values("owner_key")
    return get_user_model().objects.filter(pk__in=keys).order_by("first_name", "username")


# --- campaign comparison -----------------------------------------------------------------------

SPAM_RATE_WARNING = 0.3  # percent: at or above this, mailbox providers start filtering

# (label, numerator figure keys, help)
RATES: list[tuple[str, str, tuple[str, ...], str]] = [
    ("delivery", "Delivery", ("delivered",),
     "Delivered (confirmed by the recipient's server, or engaged) over Sent."),
    ("bounce", "Bounce", ("bounced",), "Hard bounces over Sent."),
    ("open", "Open", ("opened",), "Opened by a person over Sent; open tracking misses many."),
    ("click", "Click", ("clicked",), "Clicked a link over Sent."),
    ("response", "Response", ("replied",), "Replied over Sent."),
    ("leads", "Conversion to leads", ("leads",), "Became a lead over Sent."),
    ("opportunities", "Conversion to opportunities", ("opportunities",),
     "Became an opportunity over Sent."),
    ("unsubscribe", "Unsubscribe", ("unsubscribed",), "Unsubscribed over Sent."),
    ("spam", "Spam complaints", ("complained",),
     f"Marked as spam over Sent; {SPAM_RATE_WARNING}% or more hurts delivery."),
]  # fmt: skip


@dataclass
class Comparison:
    campaign: Campaign
    counts: dict[str, int]
    rates: dict[str, float | None]

    @property
    def sent(self) -> int:
        return self.counts["attempted"]

    @property
    def spam_warning(self) -> bool:
        spam = self.rates.get("spam")
        return spam is not None and spam >= SPAM_RATE_WARNING


def rates_from_counts(counts: dict[str, int]) -> dict[str, float | None]:
    sent = counts["attempted"]
    return {
        key: (100.0 * sum(counts[k] for k in keys) / sent if sent else None)
        for key, _label, keys, _help in RATES
    }


def campaigns_compare(*, campaigns: Iterable[Campaign]) -> list[Comparison]:
    """Rates of each campaign over all its runs, from the counters in one grouped query."""
    campaigns = list(campaigns)
    rows = (
        RunTally.objects.filter(run__campaign__in=campaigns)
        .values("run__campaign")
        .annotate(**_sums())
        .order_by()
    )
    by_campaign = {row["run__campaign"]: _add(_zero(), row) for row in rows}
    result = []
    for campaign in campaigns:
        counts = by_campaign.get(campaign.pk, _zero())
        result.append(Comparison(campaign=campaign, counts=counts, rates=rates_from_counts(counts)))
    return result


# --- sending accounts --------------------------------------------------------------------------

# Of the emails an account attempted, those that got through (DESIGN.md "Sending accounts").
ATTEMPTED_STATUSES = (
    S.SENT, S.DELIVERED, S.OPENED, S.CLICKED, S.REPLIED, S.SOFT_BOUNCED, S.BOUNCED, S.FAILED,
)  # fmt: skip
SUCCESS_STATUSES = (S.SENT, S.DELIVERED, S.OPENED, S.CLICKED, S.REPLIED)
HEALTH_BANDS = ((95.0, "healthy"), (80.0, "moderate"))  # over 95 healthy, 80 to 95 moderate


def success_band(rate: float | None) -> str:
    if rate is None:
        return ""
    if rate > HEALTH_BANDS[0][0]:
        return "healthy"
    return "moderate" if rate >= HEALTH_BANDS[1][0] else "low"


def accounts_with_stats(
    accounts: QuerySet[SendingAccount], *, now: datetime | None = None
) -> QuerySet[SendingAccount]:
    """Each account with its sent emails (lifetime, last 30 days), attempts and successes, and
    the claims counted against today's quota (since midnight in the account's own time zone:
    the counter the dispatcher reads, AccountUsage): one query, whatever the page shows."""
    now = now or timezone.now()
    zones = set(SendingAccount.objects.values_list("timezone", flat=True).distinct())
    probe = SendingAccount(timezone="UTC")
    day_starts = {}
    for zone in zones:
        probe.timezone = zone
        day_starts[zone] = account_day_start(probe, now)
    # The daily limit's counter (AccountUsage): the row of the account's own today.
    today = Case(
        *(When(timezone=zone, then=Value(start)) for zone, start in day_starts.items()),
        default=Value(account_day_start(SendingAccount(timezone="UTC"), now)),
    )
    used_today = AccountUsage.objects.filter(
        account=OuterRef("pk"), span=AccountUsage.Span.DAY, start=OuterRef("_today")
    ).values("claimed")[:1]
    attempted = Count("messages", filter=Q(messages__status__in=ATTEMPTED_STATUSES))
    succeeded = Count("messages", filter=Q(messages__status__in=SUCCESS_STATUSES))
    return accounts.alias(_today=today).annotate(
        _sent_total=Count("messages", filter=Q(messages__sent_at__isnull=False)),
        _sent_30_days=Count("messages", filter=Q(messages__sent_at__gte=now - timedelta(days=30))),
        _attempted=attempted,
        _succeeded=succeeded,
        _used_today=Coalesce(Subquery(used_today), 0),
        _success_rate=Case(
            When(_attempted=0, then=Value(None, output_field=FloatField())),
            default=ExpressionWrapper(
                100.0 * F("_succeeded") / F("_attempted"), output_field=FloatField()
            ),
            output_field=FloatField(),
        ),
    )
