"""Campaign runs: launch, audience preparation, dispatch, follow-ups, pause, resume, terminate.

Statuses of messages change only through tracking.services (the state machine); this module
decides what to send and when, talks SMTP, and reports each outcome to the state machine.
"""

from __future__ import annotations

import functools
import logging
import secrets
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import OperationalError, connection, transaction
from django.db.models import Count, DateField, Exists, F, Model, OuterRef, Q, Value, signals
from django.db.models.base import ModelState
from django.db.models.functions import Coalesce
from django.utils import timezone
from psycopg.types.datetime import TimestamptzLoader

from campaigns import selectors
from campaigns.mail import OutgoingEmail, RenderError, TemplateCache, compose
from campaigns.models import (
    AccountUsage,
    Campaign,
    CampaignRun,
    CampaignStep,
    Message,
    Recipient,
    SendingAccount,
)
from campaigns.smtp import AccountError, EspSession, Reply, SmtpSession, session_for
from contacts.models import Contact, Suppression
from leadcenter.database import prepared_cursor, relax_commit
from tracking.classification import classify_rejection
from tracking.models import TrackingEvent
from tracking.services import (
    Accepted,
    claim_picking,
    is_connection_lost,
    is_write_conflict,
    message_reject,
    message_transition,
    messages_record_accepted,
    messages_transition,
)
from tracking.services import messages_claim as tracking_claim

logger = logging.getLogger(__name__)

S = Message.Status
R = Recipient.Status
RunStatus = CampaignRun.Status
E = TrackingEvent.Type
SENDING_RUNS = (RunStatus.WAITING, RunStatus.RUNNING)


class CampaignError(Exception):
    """A campaign cannot be launched, paused, resumed or terminated as asked."""


def _enqueue(func: str, *args) -> None:
    """Hand work to the django-q2 cluster once the current transaction has committed."""
    from django_q.tasks import async_task

    transaction.on_commit(lambda: async_task(func, *args, group="leadcenter"))


# --- launch and audience -------------------------------------------------------------------


def campaign_launch(*, campaign: Campaign, started_by=None, enqueue: bool = True) -> CampaignRun:
    """Start a run of the campaign over its audience. The audience is prepared by a task
    (or by the caller, with enqueue=False, as `launch_campaign --wait` does)."""
    if not campaign.steps.exists():
        raise CampaignError(f"{campaign} has no steps to send.")
    if not campaign.lists.exists():
        raise CampaignError(f"{campaign} has no contact lists.")
    if not campaign.accounts.filter(is_active=True).exists():
        raise CampaignError(f"{campaign} has no active sending account.")
    with transaction.atomic():
        locked = Campaign.objects.select_for_update().get(pk=campaign.pk)
        if locked.runs.filter(status__in=CampaignRun.IN_PROGRESS).exists():
            raise CampaignError(f"{campaign} already has a run in progress.")
        run = CampaignRun.objects.create(
            campaign=campaign,
            status=RunStatus.INITIALIZED,
            started_by=started_by,
            started_at=timezone.now(),
        )
        Campaign.objects.filter(pk=campaign.pk).update(state=Campaign.State.ACTIVE)
        if enqueue:
            _enqueue("campaigns.tasks.run_prepare", run.pk)
    campaign.state = Campaign.State.ACTIVE
    return run


def _message_id(recipient_id: int, position: int, salt: str) -> str:
    return f"<lc.{recipient_id}.{position}.{salt}@{settings.LEADCENTER_MESSAGE_ID_DOMAIN}>"


def run_prepare(*, run: CampaignRun) -> CampaignRun:
    """One Recipient per contact of the campaign's lists, with its filter reason, the others
    assigned round-robin to the accounts, and a queued Message for step 1: set-wise in SQL."""
    with transaction.atomic():
        # A task can run twice, even at once: the second waits for the first's lock here and
        # then finds the work done.
        locked = CampaignRun.objects.select_for_update().filter(pk=run.pk).first()
        if locked is None or locked.status != RunStatus.INITIALIZED:
            run.refresh_from_db()
            return run
        return _run_prepare_locked(run=locked)


def _run_prepare_locked(*, run: CampaignRun) -> CampaignRun:
    campaign = run.campaign
    accounts = list(
        campaign.accounts.filter(is_active=True).order_by("pk").values_list("pk", flat=True)
    )
    first_step = campaign.steps.order_by("position").first()
    if not accounts or first_step is None:
        return run_fail(run=run, error="No active sending account or no step to send.")
    now = timezone.now()
    ops = connection.ops
    account_case = " ".join(f"WHEN {i} THEN %s" for i in range(len(accounts)))
    contact = Contact._meta.db_table
    contact_lists = Contact.lists.through._meta.db_table
    opted_out = Contact.opted_out_topics.through._meta.db_table
    campaign_lists = Campaign.lists.through._meta.db_table
    recipient = Recipient._meta.db_table
    message = Message._meta.db_table
    reasons = Recipient.FilterReason
    # The order of the WHENs is the order of precedence of the reasons. Only table names and
    # our own constants are interpolated; every value is a parameter. The account goes
    # round-robin by a running count of the contacts kept, in contact order, which is the order
    # the rows come out and are written in: each recipient's entry in the (contact, run) index
    # goes at its right edge (a count per kept/filtered partition wrote them in two passes).
    audience_sql = f"""
        INSERT INTO {recipient}
            (run_id, contact_id, email, account_id, status, filter_reason, steps_sent)
        SELECT %s, f.id, f.email,
               CASE WHEN f.reason = '' THEN
                   CASE (COUNT(*) FILTER (WHERE f.reason = '')
                         OVER (ORDER BY f.id ROWS UNBOUNDED PRECEDING) - 1) %% %s
                   {account_case} END
               END,
               CASE WHEN f.reason = '' THEN 'pending' ELSE 'filtered' END,
               f.reason, 0
        FROM (
            SELECT c.id, c.email,
                CASE
                    WHEN TRIM(c.email) = '' THEN '{reasons.NO_EMAIL}'
                    WHEN c.email_status = 'invalid' OR c.email NOT LIKE '%%_@_%%._%%'
                         OR TRIM(c.email) LIKE '%% %%' THEN '{reasons.INVALID_EMAIL}'
                    WHEN c.unsubscribed_at IS NOT NULL THEN '{reasons.UNSUBSCRIBED}'
                    WHEN c.do_not_email THEN '{reasons.DO_NOT_EMAIL}'
                    WHEN c.do_not_mass_email THEN '{reasons.DO_NOT_MASS_EMAIL}'
                    WHEN {_suppressed_sql("c.email")} THEN '{reasons.BLOCKED}'
                    WHEN EXISTS (
                        SELECT 1 FROM {opted_out} t WHERE t.contact_id = c.id AND t.topic_id = %s
                    ) THEN '{reasons.NO_EMAIL_SELECTED}'
                    WHEN ROW_NUMBER() OVER (PARTITION BY LOWER(TRIM(c.email)) ORDER BY c.id) > 1
                        THEN '{reasons.DUPLICATE}'
                    ELSE ''
                END AS reason
            FROM {contact} c
            WHERE c.id IN (
                SELECT cl.contact_id FROM {contact_lists} cl
                JOIN {campaign_lists} ccl ON ccl.contactlist_id = cl.contactlist_id
                WHERE ccl.campaign_id = %s
            )
        ) f
    """
    salt = secrets.token_hex(4)
    message_sql = f"""
        INSERT INTO {message}
            (recipient_id, run_id, step_id, account_id, message_id, esp_message_id, status,
             attempts, next_attempt_at, smtp_status, smtp_response, created, open_count,
             click_count, owner_id)
        SELECT r.id, r.run_id, %s, r.account_id,
               '<lc.' || CAST(r.id AS TEXT) || '.{first_step.position}.{salt}@' || %s || '>',
               '', 'queued', 0, %s, '', '', %s, 0, 0, c.owner_id
        FROM {recipient} r JOIN {contact} c ON c.id = r.contact_id
        WHERE r.run_id = %s AND r.status = 'pending'
    """
    stamp = ops.adapt_datetimefield_value(now)
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(
            audience_sql,
            [run.pk, len(accounts), *accounts, campaign.topic_id or -1, campaign.pk],
        )
        cursor.execute(
            message_sql,
            [first_step.pk, settings.LEADCENTER_MESSAGE_ID_DOMAIN, stamp, stamp, run.pk],
        )
        totals = run.recipients.aggregate(
            total=Count("pk"), filtered=Count("pk", filter=Q(status=R.FILTERED))
        )
        status = RunStatus.FILTERED if totals["total"] == totals["filtered"] else RunStatus.WAITING
        CampaignRun.objects.filter(pk=run.pk, status=RunStatus.INITIALIZED).update(
            status=status,
            total_recipients=totals["total"],
            total_filtered=totals["filtered"],
            finished_at=now if status == RunStatus.FILTERED else None,
        )
        if status == RunStatus.FILTERED:
            _campaign_refresh_state(campaign.pk)
    run.refresh_from_db()
    return run


def run_fail(*, run: CampaignRun, error: str) -> CampaignRun:
    """An error stopped the run before it sent anything (only an initialized run fails so)."""
    CampaignRun.objects.filter(pk=run.pk, status=RunStatus.INITIALIZED).update(
        status=RunStatus.FAILED, error=error, finished_at=timezone.now()
    )
    _campaign_refresh_state(run.campaign_id)
    run.refresh_from_db()
    return run


def _campaign_refresh_state(campaign_id: int) -> None:
    """A campaign is active while a run sends, paused while its run is paused, finished after."""
    in_progress = set(
        CampaignRun.objects.filter(
            campaign_id=campaign_id, status__in=CampaignRun.IN_PROGRESS
        ).values_list("status", flat=True)
    )
    if not in_progress:
        state = Campaign.State.FINISHED
    elif in_progress == {RunStatus.PAUSED}:
        state = Campaign.State.PAUSED
    else:
        state = Campaign.State.ACTIVE
    Campaign.objects.filter(pk=campaign_id).exclude(state=Campaign.State.DRAFT).update(state=state)


# --- pause, resume, terminate --------------------------------------------------------------


def campaign_pause(*, campaign: Campaign) -> int:
    """Stop claims at once; everything is kept. Returns the number of runs paused."""
    with transaction.atomic():
        paused = CampaignRun.objects.filter(
            campaign=campaign, status__in=[RunStatus.INITIALIZED, *SENDING_RUNS]
        ).update(status=RunStatus.PAUSED)
        if not paused and campaign.state != Campaign.State.ACTIVE:
            raise CampaignError(f"{campaign} has no run to pause.")
        Campaign.objects.filter(pk=campaign.pk).update(state=Campaign.State.PAUSED)
    campaign.state = Campaign.State.PAUSED
    return paused


def campaign_resume(*, campaign: Campaign) -> int:
    """Go on where the runs stopped; nothing already sent is sent again."""
    with transaction.atomic():
        resumed = CampaignRun.objects.filter(campaign=campaign, status=RunStatus.PAUSED).update(
            status=RunStatus.RUNNING, error=""
        )
        if not resumed:
            raise CampaignError(f"{campaign} has no paused run.")
        Campaign.objects.filter(pk=campaign.pk).update(state=Campaign.State.ACTIVE)
        # A run paused before its audience was prepared is prepared now.
        for run in CampaignRun.objects.filter(
            campaign=campaign, total_recipients=0, status=RunStatus.RUNNING
        ):
            if not run.recipients.exists():
                CampaignRun.objects.filter(pk=run.pk).update(status=RunStatus.INITIALIZED)
                _enqueue("campaigns.tasks.run_prepare", run.pk)
        _enqueue("campaigns.tasks.dispatch")
    campaign.state = Campaign.State.ACTIVE
    return resumed


def run_terminate(*, run: CampaignRun) -> int:
    """Stop the run for good: what has not gone out is cancelled. Returns messages cancelled."""
    if run.status not in CampaignRun.IN_PROGRESS:
        raise CampaignError(
            f"Run #{run.pk} is {run.get_status_display().lower()}, not in progress."
        )
    now = timezone.now()
    with transaction.atomic():
        CampaignRun.objects.filter(pk=run.pk).update(status=RunStatus.TERMINATED, finished_at=now)
        cancelled = 0
        for from_status in (S.QUEUED, S.SOFT_BOUNCED):
            ids = run.messages.filter(status=from_status).values_list("pk", flat=True)
            cancelled += len(
                messages_transition(
                    message_ids=ids,
                    from_status=from_status,
                    status=S.CANCELLED,
                    event_type=E.CANCELLED,
                    source=TrackingEvent.Source.MANUAL,
                    occurred_at=now,
                    detail="run terminated",
                )
            )
        run.recipients.filter(next_step_at__isnull=False).update(next_step_at=None)
        _campaign_refresh_state(run.campaign_id)
    run.refresh_from_db()
    return cancelled


# --- dispatch ------------------------------------------------------------------------------


@dataclass
class DispatchReport:
    claimed: int = 0
    sent: int = 0
    soft_bounced: int = 0
    bounced: int = 0
    failed: int = 0
    released: int = 0
    follow_ups: int = 0
    account_errors: list[str] = field(default_factory=list)
    runs: set[int] = field(default_factory=set)  # runs that had email claimed

    @property
    def attempted(self) -> int:
        return self.sent + self.soft_bounced + self.bounced + self.failed

    def merge(self, other: DispatchReport) -> None:
        for name in (
            "claimed",
            "sent",
            "soft_bounced",
            "bounced",
            "failed",
            "released",
            "follow_ups",
        ):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.account_errors += other.account_errors
        self.runs |= other.runs


def dispatch_due(
    *,
    now: datetime | None = None,
    deadline: float | None = None,
    account_ids: list[int] | None = None,
    max_messages: int | None = None,
) -> DispatchReport:
    """Send every message that is due now, account by account, until nothing is due, the
    accounts' limits are reached or the deadline (a time.monotonic() value) passes."""
    now = now or timezone.now()
    report = DispatchReport()
    report.follow_ups = follow_ups_queue(now=now)
    for account in selectors.accounts_with_due_messages(now):
        if account_ids is not None and account.pk not in account_ids:
            continue
        left = None if max_messages is None else max_messages - report.claimed
        if left is not None and left <= 0:
            break
        report.merge(
            account_send(account=account, deadline=deadline, due_by=now, max_messages=left)
        )
    runs_refresh(sending=report.runs)
    return report


def account_send(
    *,
    account: SendingAccount,
    deadline: float | None = None,
    batch_size: int | None = None,
    due_by: datetime | None = None,
    max_messages: int | None = None,
) -> DispatchReport:
    """Claim and send the account's due messages batch after batch. Only messages due by
    `due_by` (the start of this pass) are taken, so a retry scheduled during the pass waits
    for the next one."""
    report = DispatchReport()
    due_by = due_by or timezone.now()
    batch_size = batch_size or settings.LEADCENTER_BATCH_SIZE
    # One SMTP session and one set of compiled templates for the whole pass: the batches of an
    # account go over the same connection (the session reconnects when the server drops it).
    session: SmtpSession | EspSession | None = None
    cache = TemplateCache()
    run_status = _RunStatusCache()
    known = _StepsAndRuns()
    try:
        while deadline is None or time.monotonic() < deadline:
            now = timezone.now()
            if not selectors.account_is_within_hours(account, now):
                break
            if session is None or not _claims_capped():
                capacity = min(batch_size, selectors.account_capacity(account, now))
            else:
                # The claim itself reads the limits, after its lock (messages_claim): the
                # read here is only for the first batch, which it keeps from connecting to
                # the relay of an account that may send nothing now.
                capacity = batch_size
            if max_messages is not None:
                capacity = min(capacity, max_messages - report.claimed)
            if capacity <= 0:
                break
            if session is None:
                session = session_for(account)
                try:
                    # Connect before claiming: when our relay is down nothing is claimed.
                    session.open()
                except AccountError as exc:
                    report.account_errors.append(str(exc))
                    account_record_failure(account=account, error=str(exc))
                    break
            batch = messages_claim(
                account=account, limit=capacity, now=now, due_by=due_by, known=known
            )
            if not batch:
                break
            report.claimed += len(batch)
            report.runs |= {m.run_id for m in batch}
            report.merge(_send_batch(account, session, batch, cache, run_status))
            if report.account_errors:
                break
    finally:
        if session is not None:
            session.close()
    return report


def messages_claim(
    *,
    account: SendingAccount,
    limit: int,
    now: datetime,
    due_by: datetime | None = None,
    known: _StepsAndRuns | None = None,
) -> list[Message]:
    """Claim up to `limit` due messages of the account for this worker, committed before any
    SMTP call (tracking.services.messages_claim: FOR UPDATE SKIP LOCKED on PostgreSQL; SQLite
    serialises write transactions). Returns them with what the send reads: recipient, contact,
    step and run (with its campaign)."""
    due_by = due_by or now
    if _claims_capped():
        # One transaction in one round trip (see tracking.services._accepted_at_once): a lock
        # that the claims of the account take in turn, then the claim, with its events and its
        # count against the limits, taking no more than the limits leave. The claim's
        # statement starts once the lock is had, so it reads the count of the claim before it
        # committed: two workers of one account never pass its limits together. The claimed
        # rows are read after it.
        with transaction.atomic():  # compiling FOR UPDATE wants a transaction; none is begun
            picking = _claim_picking(connection.alias, account.pk, due_by, limit)
        claimed = tracking_claim(
            due=None,
            limit=limit,
            occurred_at=now,
            picking=picking,
            counted=_account_usage_sql(account, now, claimed="(SELECT count(*) FROM moved)"),
            capped=selectors.account_capacity_sql(account, now),
            before=[(_CLAIM_LOCK_SQL, [_CLAIM_LOCK, account.pk])],
        )
        if not claimed:
            return []
        messages, runs, steps = _claimed_ready(claimed, known)
    else:
        with transaction.atomic():
            if connection.vendor == "postgresql":
                # The picking query, compiled once per pass: the queryset is not needed.
                due, picking = None, _claim_picking(connection.alias, account.pk, due_by, limit)
            else:
                due, picking = _due(account.pk, due_by), None
                # SQLite's transactions begin IMMEDIATE (settings): one claimer at a time, and
                # the limits read again here count every claim committed before this one.
                limit = min(limit, selectors.account_capacity(account, now))
                if limit <= 0:
                    return []
            claimed = tracking_claim(due=due, limit=limit, occurred_at=now, picking=picking)
            if not claimed:
                return []
            account_usage_add(account=account, now=now, claimed=len(claimed))
            messages, runs, steps = _claimed_ready(claimed, known)
    for message in messages:
        _attach(message, "step", steps[message.step_id])
        _attach(message, "run", runs[message.run_id])
    return messages


def _claims_capped() -> bool:
    """The claim reads the limits itself, under a lock per account (PostgreSQL, outside a
    transaction of the caller's). Elsewhere the sender reads them before each claim, and on
    SQLite again inside the claim's transaction, which has the database's write lock."""
    return connection.vendor == "postgresql" and not connection.in_atomic_block


# The claims of an account take this advisory lock in turn, for their transaction.
_CLAIM_LOCK = 0x1EAD  # the lock's first key: the sender's claims; the second: the account
_CLAIM_LOCK_SQL = "SELECT pg_advisory_xact_lock(CAST(%s AS integer), CAST(%s AS integer))"


def _claimed_ready(claimed: list[int], known: _StepsAndRuns | None):
    """The claimed messages read (_claimed_load), with their steps and runs; their runs that
    were waiting marked running."""
    messages = _claimed_load(claimed)
    # Steps and runs are few per batch: one instance each, shared by the batch's messages.
    run_ids = {m.run_id for m in messages}
    steps, runs = (known or _StepsAndRuns()).get({m.step_id for m in messages}, run_ids)
    waiting = [pk for pk in run_ids if runs[pk].status == RunStatus.WAITING]
    if waiting:
        CampaignRun.objects.filter(status=RunStatus.WAITING, pk__in=waiting).update(
            status=RunStatus.RUNNING
        )
        for pk in waiting:
            runs[pk].status = RunStatus.RUNNING
    return messages, runs, steps


def _attach(instance: Model, name: str, related: Model) -> None:
    """`instance.<name> = related` for a foreign key whose id was read with the instance's
    row, as select_related() sets it: into the relation's cache. The descriptor's __set__
    checks the type and the database router and sets the id again (2 us, four times an
    email)."""
    _foreign_key(type(instance), name).set_cached_value(instance, related)


@functools.cache
def _foreign_key(model: type[Model], name: str):
    return model._meta.get_field(name)


class _StepsAndRuns:
    """The steps and runs (with their campaigns) of a pass's batches, read again at most once a
    second: batch after batch shares them, and a step's bodies are most of what a batch reads.
    An edited step or a run's new status is seen within a second, as a pause is
    (_RunStatusCache)."""

    ttl = 1.0

    def __init__(self) -> None:
        self.steps: dict[int, CampaignStep] = {}
        self.runs: dict[int, CampaignRun] = {}
        self._read_at = -self.ttl

    _now = staticmethod(time.monotonic)

    def get(
        self, step_ids: set[int], run_ids: set[int]
    ) -> tuple[dict[int, CampaignStep], dict[int, CampaignRun]]:
        if self._now() - self._read_at >= self.ttl:
            self.steps, self.runs, self._read_at = {}, {}, self._now()
        if missing := step_ids - self.steps.keys():
            self.steps.update(_load_by_id([(CampaignStep, None)], missing))
        if missing := run_ids - self.runs.keys():
            self.runs.update(_load_by_id([(CampaignRun, None), (Campaign, "campaign")], missing))
        return self.steps, self.runs


def account_usage_add(*, account: SendingAccount, now: datetime, claimed: int) -> None:
    """Count a claim against the account's limits (selectors.account_capacity reads them): its
    day's row and its second's, in the claim's transaction, so a claim and its count commit
    together. Seconds older than two minutes go (the per-minute limit reads the last 61)."""
    table = connection.ops.quote_name(AccountUsage._meta.db_table)
    with prepared_cursor(connection) as cursor:
        if connection.vendor == "postgresql":
            # One round trip; the old seconds first, then the two rows in one order.
            ctes, params = _account_usage_sql(account, now, claimed="%s")
            cursor.execute(f"WITH {ctes} SELECT 1", [*params, claimed])
            return
        day, second, old = _usage_times(account, now)
        cursor.execute(
            f"DELETE FROM {table} WHERE account_id = %s AND span = %s AND start < %s",
            [account.pk, AccountUsage.Span.SECOND, old],
        )
        cursor.execute(
            f"INSERT INTO {table} (account_id, span, start, claimed) VALUES (%s, %s, %s, %s), "
            "(%s, %s, %s, %s) ON CONFLICT (account_id, span, start) "
            f"DO UPDATE SET claimed = {table}.claimed + excluded.claimed",
            [
                *(account.pk, AccountUsage.Span.DAY, day, claimed),
                *(account.pk, AccountUsage.Span.SECOND, second, claimed),
            ],
        )


def _usage_times(account: SendingAccount, now: datetime) -> tuple[Any, Any, Any]:
    """The start of the account's day, the second of `now`, and the oldest second kept."""
    ops = connection.ops
    return (
        ops.adapt_datetimefield_value(selectors.account_day_start(account, now)),
        ops.adapt_datetimefield_value(now.replace(microsecond=0)),
        ops.adapt_datetimefield_value(now - _SECONDS_KEPT),
    )


def _account_usage_sql(account: SendingAccount, now: datetime, *, claimed: str):
    """PostgreSQL: account_usage_add as WITH clauses, for a statement of their own or for the
    claim's (`claimed`: the SQL of how many were claimed; nothing is counted when none)."""
    table = connection.ops.quote_name(AccountUsage._meta.db_table)
    day, second, old = _usage_times(account, now)
    dated = AccountUsage._meta.get_field("start").cast_db_type(connection)
    span = AccountUsage._meta.get_field("span").cast_db_type(connection)
    ctes = (
        f"usage_gone AS (DELETE FROM {table} WHERE account_id = %s AND span = %s "
        "AND start < %s), "
        f"usage_counted AS (INSERT INTO {table} (account_id, span, start, claimed) "
        f"SELECT %s, u.span, u.start, n.claimed FROM (VALUES (CAST(%s AS {span}), "
        f"CAST(%s AS {dated})), (CAST(%s AS {span}), CAST(%s AS {dated}))) AS u (span, start), "
        f"(SELECT {claimed} AS claimed) AS n WHERE n.claimed > 0 "
        "ON CONFLICT (account_id, span, start) "
        f"DO UPDATE SET claimed = {table}.claimed + excluded.claimed)"
    )
    params = [account.pk, AccountUsage.Span.SECOND, old, account.pk]
    params += [AccountUsage.Span.DAY, day, AccountUsage.Span.SECOND, second]
    return ctes, params


_SECONDS_KEPT = timedelta(minutes=2)


def _due(account_id: int, due_by: datetime):
    """The account's messages due by `due_by` in runs that may send, the oldest first."""
    return Message.objects.filter(
        account_id=account_id, next_attempt_at__lte=due_by, run__status__in=SENDING_RUNS
    ).order_by("next_attempt_at", "pk")


@functools.lru_cache(maxsize=32)
def _claim_picking(alias: str, account_id: int, due_by: datetime, limit: int):
    """The claim's picking query, compiled once per account, pass (`due_by`) and batch size."""
    return claim_picking(_due(account_id, due_by), limit)


# What a claimed message's send reads of the message and its recipient (the contact comes
# whole: its template may use any field). Anything else would be read on first use.
_CLAIMED_MESSAGE = frozenset(
    "id message_id recipient_id run_id step_id account_id status attempts created claimed_at "
    "status_changed_at".split()
)
_CLAIMED_RECIPIENT = frozenset("id run_id contact_id email status first_sent_on".split())


def _claimed_load(ids: list[int]) -> list[Message]:
    """The claimed messages with their recipients and contacts, in id order, in one query of
    the columns the send reads, plus whether each address is suppressed now and the delay of
    the step after its own (none for a last step)."""
    quote = connection.ops.quote_name
    steps = quote(CampaignStep._meta.db_table)
    extra = (
        f"{_suppressed_sql('r.email')}, "
        f"(SELECT n.delay FROM {steps} st JOIN {steps} n ON n.campaign_id = st.campaign_id "
        "AND n.position > st.position WHERE st.id = m.step_id ORDER BY n.position LIMIT 1)"
    )
    joins = (
        f"JOIN {quote(Recipient._meta.db_table)} r ON r.id = m.recipient_id "
        f"JOIN {quote(Contact._meta.db_table)} c ON c.id = r.contact_id"
    )
    [delay] = _row_converters(CampaignStep, ("delay",)) or [None]
    messages = []
    rows = _rows_load(
        [
            (Message, "m", _CLAIMED_MESSAGE),
            (Recipient, "r", _CLAIMED_RECIPIENT),
            (Contact, "c", None),
        ],
        ids,
        joins=joins,
        extra=extra,
    )
    for (message, recipient, contact), (suppressed, next_delay) in rows:
        _attach(recipient, "contact", contact)
        _attach(message, "recipient", recipient)
        message.suppressed = bool(suppressed)
        message.next_step_delay = (
            delay(next_delay) if delay and next_delay is not None else next_delay
        )
        messages.append(message)
    return messages


def _suppressed_sql(email: str) -> str:
    """SQL: the address in the column `email` is on the suppression list (an active entry, by
    their index), as the audience's "blocked" filter and the send's last check read it."""
    table = connection.ops.quote_name(Suppression._meta.db_table)
    return (
        f"EXISTS (SELECT 1 FROM {table} s "
        f"WHERE s.email = LOWER(TRIM({email})) AND s.lifted_at IS NULL)"
    )


def _load_by_id(models: list[tuple[type, str | None]], ids: Iterable[int]) -> dict[int, Any]:
    """id -> instance of the first model, each next model joined in by the foreign key named
    (CampaignRun with its Campaign), in one query without the ORM compiling one."""
    quote = connection.ops.quote_name
    parts = [(models[0][0], "t0", None)]
    joins = []
    for n, (model, via) in enumerate(models[1:], start=1):
        column = models[0][0]._meta.get_field(via).column
        joins.append(f"JOIN {quote(model._meta.db_table)} t{n} ON t{n}.id = t0.{quote(column)}")
        parts.append((model, f"t{n}", None))
    loaded = {}
    for instances, _extra in _rows_load(parts, list(ids), joins=" ".join(joins)):
        first = instances[0]
        for (_model, via), instance in zip(models[1:], instances[1:], strict=True):
            _attach(first, via, instance)
        loaded[first.pk] = first
    return loaded


def _columns(model, wanted: frozenset[str] | None) -> tuple[str, ...]:
    """The wanted fields' attnames (all when None) in the model's field order, the order
    Model.from_db takes a subset of the columns in."""
    fields = model._meta.concrete_fields
    return tuple(f.attname for f in fields if wanted is None or f.attname in wanted)


def _rows_load(parts, ids: list[int], *, joins: str = "", extra: str = ""):
    """Model instances made from one query's rows: `parts` lists (model, alias, fields or
    None for all), the first one's table read by id (`ids`, in id order) and the others
    through `joins`; `extra`, more columns, given apart. Yields (instances, extra values)."""
    sql, columns = _select_plan(connection.vendor, tuple(parts), joins, extra)
    if connection.vendor == "postgresql":
        param = "{" + ",".join(map(str, ids)) + "}"
    else:
        param = f"[{','.join(map(str, ids))}]"
    db = connection.alias
    converters = [
        (_instance_maker(model), names, convert)
        for (model, _a, _w), (names, convert) in zip(parts, columns, strict=True)
    ]
    with prepared_cursor(connection) as cursor:
        _utc_timestamps(cursor)
        cursor.execute(sql, [param])
        rows = cursor.fetchall()
    for row in rows:
        instances, at = [], 0
        for make, names, convert in converters:
            values = row[at : at + len(names)]
            at += len(names)
            if convert:
                values = [f(v) if f else v for f, v in zip(convert, values, strict=True)]
            instances.append(make(db, names, values))
        yield instances, row[at:]


@functools.lru_cache(maxsize=64)
def _select_plan(vendor: str, parts: tuple, joins: str, extra: str):
    """_rows_load's statement (the ids its one parameter) and, per part, the attnames it reads
    and their converters: the same for every batch, made once (reading the models' fields
    and the backend's converters costs a fifth of a millisecond a batch)."""
    quote = connection.ops.quote_name
    named = [(model, alias, _columns(model, wanted)) for model, alias, wanted in parts]
    columns = ", ".join(
        f"{alias}.{quote(model._meta.get_field(name).column)}"
        for model, alias, names in named
        for name in names
    )
    first_model, first, _names = named[0]
    if vendor == "postgresql":
        wanted = f"{first}.id = ANY(CAST(%s AS bigint[]))"
    else:
        wanted = f"{first}.id IN (SELECT value FROM json_each(%s))"
    sql = (
        f"SELECT {columns}{', ' + extra if extra else ''} "
        f"FROM {quote(first_model._meta.db_table)} {first} {joins} "
        f"WHERE {wanted} ORDER BY {first}.id"
    )
    return sql, [(names, _row_converters(model, names)) for model, _alias, names in named]


def _instance_maker(model):
    """model.from_db, or what it amounts to when the model keeps Django's from_db and
    __init__ and nothing listens to its pre_init or post_init: the values set as its fields'
    attributes (a field not read stays deferred, as from_db leaves it), without __init__'s
    walk over every field and its two signals. A batch makes three instances per email."""
    plain = (
        model.__init__ is Model.__init__
        and model.from_db.__func__ is Model.from_db.__func__
        and not signals.pre_init.has_listeners(model)
        and not signals.post_init.has_listeners(model)
    )
    if not plain:
        return model.from_db

    def make(db, names, values):
        instance = model.__new__(model)
        instance.__dict__.update(zip(names, values, strict=True))
        state = instance._state = ModelState()
        state.adding = False
        state.db = db
        return instance

    return make


def _utc_timestamps(cursor) -> None:
    """PostgreSQL in UTC: this cursor reads timestamps with psycopg's own loader (compiled,
    from psycopg[binary]), which gives the same values as Django's (a Python subclass of it
    that sets the connection's time zone) ten times faster; a claimed batch reads a dozen
    per email. Any other zone keeps Django's."""
    if connection.vendor != "postgresql" or connection.timezone is not UTC:
        return
    raw = cursor.cursor
    if raw.connection.info.parameter_status("TimeZone") == "UTC":
        raw.adapters.register_loader("timestamptz", TimestamptzLoader)


def _row_converters(model, names: tuple[str, ...]) -> list | None:
    """Per column, what the ORM applies to a raw value of that field when it reads it
    (SQLite's text dates, booleans stored as integers), or None when nothing is."""
    convert = []
    for name in names:
        column = model._meta.get_field(name).get_col(model._meta.db_table)
        functions = connection.ops.get_db_converters(column) + column.get_db_converters(connection)
        convert.append(
            (lambda value, fs=functions, c=column: _converted(value, fs, c)) if functions else None
        )
    return convert if any(convert) else None


def _converted(value, functions, column):
    for function in functions:
        value = function(value, column, connection)
    return value


def _send_batch(
    account: SendingAccount,
    session: SmtpSession | EspSession,
    batch: list[Message],
    cache: TemplateCache | None = None,
    run_status: _RunStatusCache | None = None,
) -> DispatchReport:
    """Send a claimed batch. Rejections and our own failures are recorded one message at a
    time as they come (they are rare); the accepted messages are recorded together after the
    batch, in one transaction (_record_sent). A crash before that leaves them `sending`, in
    doubt, never resent: no more than the batch, which is what the claim bounds anyway."""
    report = DispatchReport()
    cache = cache or TemplateCache()
    run_status = run_status or _RunStatusCache()
    accepted: list[tuple[Message, Reply, datetime]] = []
    try:
        _send_each(account, session, batch, cache, run_status, report, accepted)
    finally:
        _record_sent(account, accepted)
    report.sent += len(accepted)
    if report.sent:
        account_record_success(account=account)
    return report


def _send_each(
    account: SendingAccount,
    session: SmtpSession | EspSession,
    batch: list[Message],
    cache: TemplateCache,
    run_status: _RunStatusCache,
    report: DispatchReport,
    accepted: list[tuple[Message, Reply, datetime]],
) -> None:
    # One message composed ahead: its MAIL, RCPT and DATA go with the content of the one
    # before it (SmtpSession.submit), and the one after it is composed while the server reads.
    emails = _composed(account, batch, cache, run_status, report)
    current = next(emails, None)
    while current is not None:
        at, message, email = current
        following = next(emails, None)
        if _stopped(message, run_status, report):
            # Paused or terminated since it was composed (its DATA may have gone ahead: the
            # session then closes the connection before its content, and nothing of it goes).
            current = following
            continue
        try:
            # The reply comes later (SmtpSession.submit): this one's, or the one before's.
            session.submit(
                email.envelope_from,
                email.recipient,
                email.data,
                message,
                (following[2].envelope_from, following[2].recipient) if following else None,
                next_ready=following is not None,
            )
        except AccountError as exc:
            # Our sender refused: give this and the rest of the batch back, unsent.
            _replies_record(account, session.completed(), report, accepted)
            report.account_errors.append(str(exc))
            account_record_failure(account=account, error=str(exc))
            rest = [m.pk for m in batch[at:]]
            report.released += len(
                messages_transition(
                    message_ids=rest,
                    from_status=S.SENDING,
                    status=S.QUEUED,
                    event_type=E.QUEUED,
                    source=TrackingEvent.Source.SYSTEM,
                    detail=str(exc),
                )
            )
            return
        _replies_record(account, session.completed(), report, accepted)
        current = following
    session.flush()
    _replies_record(account, session.completed(), report, accepted)


def _composed(
    account: SendingAccount,
    batch: list[Message],
    cache: TemplateCache,
    run_status: _RunStatusCache,
    report: DispatchReport,
) -> Iterator[tuple[int, Message, OutgoingEmail]]:
    """The batch's messages that may go out, each composed, with its place in the batch. The
    others are recorded on the way: given back when their run was paused or terminated while
    the batch was in hand, failed when their address went bad or their template fails."""
    threads = _threads(batch)
    for at, message in enumerate(batch):
        if _stopped(message, run_status, report):
            continue
        contact = message.recipient.contact
        reason = _drop_reason(message, contact)
        if reason:
            _record_failure(message, reason)
            report.failed += 1
            continue
        try:
            email = compose(
                message_pk=message.pk,
                message_id=message.message_id,
                step=message.step,
                contact=contact,
                recipient_email=message.recipient.email.strip(),
                account=account,
                track_opens=message.run.campaign.track_opens,
                track_clicks=message.run.campaign.track_clicks,
                thread=threads.get(message.recipient_id),
                cache=cache,
            )
        except RenderError as exc:
            _record_failure(message, f"template error: {exc}")
            report.failed += 1
            continue
        yield at, message, email


def _stopped(message: Message, run_status: _RunStatusCache, report: DispatchReport) -> bool:
    """The message's run was paused or terminated while the batch was in hand: its claim is
    given back (queued again, or cancelled)."""
    status = run_status.get(message.run_id)
    if status in SENDING_RUNS:
        return False
    target = S.CANCELLED if status == RunStatus.TERMINATED else S.QUEUED
    messages_transition(
        message_ids=[message.pk],
        from_status=S.SENDING,
        status=target,
        event_type=E.CANCELLED if target == S.CANCELLED else E.QUEUED,
        source=TrackingEvent.Source.SYSTEM,
        detail=f"run {status}",
    )
    report.released += 1
    return True


def _replies_record(
    account: SendingAccount,
    replies: list[tuple[Message, Reply]],
    report: DispatchReport,
    accepted: list[tuple[Message, Reply, datetime]],
) -> None:
    """Accepted messages wait for the batch's end (_record_sent); the others are recorded now."""
    for message, reply in replies:
        if reply.accepted:
            accepted.append((message, reply, timezone.now()))
            continue
        outcome = message_record_reply(message=message, account=account, reply=reply)
        setattr(report, outcome, getattr(report, outcome) + 1)


def _record_sent(account: SendingAccount, accepted: list[tuple[Message, Reply, datetime]]) -> None:
    """The accepted messages of a batch through the state machine, set-wise, in one
    transaction: `sent` (`delivered` for an account that confirms delivery), one event each,
    and their recipients' lead-level view (_recipient_sent_fields)."""
    if not accepted:
        return
    confirms = account.confirms_delivery
    rows = []
    for message, reply, when in accepted:
        fields: dict[str, object] = {
            "smtp_code": reply.code,
            "smtp_status": reply.status,
            "smtp_response": reply.text[:1000],
        }
        if reply.esp_message_id:
            fields["esp_message_id"] = reply.esp_message_id
        if confirms:
            fields["sent_at"] = when
        rows.append(
            Accepted(
                message_id=message.pk,
                recipient_id=message.recipient_id,
                occurred_at=when,
                fields=fields,
                recipient_fields=_recipient_sent_fields(message, when),
                detail=reply.text,
            )
        )
    # In id order, as the tracking writers lock them, so the two rarely wait on each other.
    rows.sort(key=lambda row: row.message_id)

    def record() -> None:
        messages_record_accepted(
            accepted=rows,
            from_status=S.SENDING,
            status=S.DELIVERED if confirms else S.SENT,
            event_type=E.DELIVERED if confirms else E.SENT,
            source=TrackingEvent.Source.SMTP,
            relaxed_commit=True,
        )

    def pending() -> bool:
        # After a lost connection: only those our last attempt did not record.
        sending = set(
            Message.objects.filter(
                pk__in=[row.message_id for row in rows], status=S.SENDING
            ).values_list("pk", flat=True)
        )
        rows[:] = [row for row in rows if row.message_id in sending]
        return bool(rows)

    _outcome_retried(record, f"recording {len(rows)} sent messages", pending=pending)


def _outcome_retried(record, what: str, pending=None) -> None:
    """Run `record` (one transaction recording what a server answered) again when it loses a
    deadlock or serialization failure to another writer (the tracking writers lock the same
    rows), or when the database connection was lost (a restart, a failover, a terminated
    backend): then on a new connection, for what `pending()` says is still unrecorded (a
    commit can succeed just before its connection goes). These emails left us: giving up
    would leave them in doubt."""
    lost = False
    for attempt in range(1, OUTCOME_ATTEMPTS + 1):
        try:
            if lost and pending is not None and not pending():
                return
            record()
            return
        except OperationalError as exc:
            if attempt == OUTCOME_ATTEMPTS:
                raise
            if is_write_conflict(exc):
                logger.warning("%s: %s; again", what, exc)
                time.sleep(0.05 * attempt)
                continue
            if connection.in_atomic_block or not is_connection_lost(exc):
                raise
            lost = True
            logger.warning("%s: %s; again on a new connection", what, exc)
            connection.close()  # the next statement connects again
            time.sleep(0.2 * attempt)


OUTCOME_ATTEMPTS = 5


class _RunStatusCache:
    """Run statuses re-read at most once a second, so a pause takes effect mid-batch."""

    ttl = 1.0

    def __init__(self) -> None:
        self._statuses: dict[int, str] = {}
        self._read_at = 0.0

    def get(self, run_id: int) -> str:
        if run_id not in self._statuses or time.monotonic() - self._read_at >= self.ttl:
            self._statuses = dict(
                CampaignRun.objects.filter(pk__in={run_id, *self._statuses}).values_list(
                    "pk", "status"
                )
            )
            self._read_at = time.monotonic()
        return self._statuses.get(run_id, "")


def _drop_reason(message: Message, contact: Contact) -> str:
    """Why a claimed message must not go out after all (the address went bad meanwhile)."""
    if contact.email_status == Contact.EmailStatus.INVALID:
        return f"dropped: address marked invalid ({contact.invalid_reason})"
    if message.suppressed:
        return "dropped: address on the suppression list"
    if contact.unsubscribed_at or contact.do_not_email:
        return "dropped: the contact asked not to be emailed"
    return ""


def _threads(batch: list[Message]) -> dict[int, list[str]]:
    """Message-IDs of earlier steps per recipient, for In-Reply-To and References."""
    follow_ups = [m for m in batch if m.step.position > 1]
    if not follow_ups:
        return {}
    threads: dict[int, list[str]] = {}
    earlier = (
        Message.objects.filter(recipient_id__in=[m.recipient_id for m in follow_ups])
        .exclude(pk__in=[m.pk for m in follow_ups])
        .order_by("step__position")
        .values_list("recipient_id", "message_id")
    )
    for recipient_id, message_id in earlier:
        threads.setdefault(recipient_id, []).append(message_id)
    return threads


def _record_failure(message: Message, detail: str) -> None:
    with transaction.atomic():
        message_transition(
            message_id=message.pk,
            event_type=E.FAILED,
            source=TrackingEvent.Source.SYSTEM,
            status=S.FAILED,
            detail=detail,
            fields={"smtp_response": detail[:1000]},
        )
        _recipient_after(message, S.FAILED, emailed=False)  # it never left us


def message_record_reply(*, message: Message, account: SendingAccount, reply: Reply) -> str:
    """Apply one SMTP reply through the state machine. Returns the report field it counts in."""
    now = timezone.now()
    smtp_fields = {
        "smtp_code": reply.code,
        "smtp_status": reply.status,
        "smtp_response": reply.text[:1000],
    }
    if reply.esp_message_id:
        smtp_fields["esp_message_id"] = reply.esp_message_id
    classification = None
    if reply.accepted:
        status, outcome = S.SENT, "sent"
    else:
        classification = classify_rejection(
            smtp_code=reply.code, smtp_status=reply.status, text=reply.text
        )
        temporary = reply.code is None or 400 <= reply.code < 500
        if temporary:
            age = now - message.created
            if age >= settings.LEADCENTER_SOFT_BOUNCE_MAX_AGE:
                status, outcome = S.FAILED, "failed"
            else:
                status, outcome = S.SOFT_BOUNCED, "soft_bounced"
                delay = settings.LEADCENTER_RETRY_BASE * (2 ** max(0, message.attempts - 1))
                smtp_fields["next_attempt_at"] = now + min(delay, timedelta(hours=6))
        elif classification.is_hard:
            status, outcome = S.BOUNCED, "bounced"
        else:
            status, outcome = S.FAILED, "failed"

    def record() -> None:
        with transaction.atomic():
            relax_commit()
            if classification is None:
                confirms = account.confirms_delivery
                message_transition(
                    message_id=message.pk,
                    event_type=E.DELIVERED if confirms else E.SENT,
                    source=TrackingEvent.Source.SMTP,
                    status=S.DELIVERED if confirms else S.SENT,
                    occurred_at=now,
                    fields={**smtp_fields, "sent_at": now} if confirms else smtp_fields,
                    detail=reply.text,
                    expected_status=S.SENDING,
                )
            else:
                message_reject(
                    message_id=message.pk,
                    classification=classification,
                    status=status,
                    source=TrackingEvent.Source.SMTP,
                    smtp_code=reply.code,
                    smtp_status=reply.status,
                    diagnostic=reply.text,
                    occurred_at=now,
                    fields=smtp_fields,
                )
            _recipient_after(message, status, now=now)

    _outcome_retried(
        record,
        f"recording the reply to message {message.pk}",
        pending=lambda: Message.objects.filter(pk=message.pk, status=S.SENDING).exists(),
    )
    return outcome


def _recipient_after(
    message: Message, status: str, *, now: datetime | None = None, emailed: bool = True
) -> None:
    """The lead-level view after a step's outcome: partial with the next step scheduled, sent
    when no step is left, failed when the step failed or bounced; a soft bounce (retried)
    leaves it as it is. `emailed`: the email reached a mail server (accepted or refused), so
    the recipient has been emailed (first_sent_on, set once)."""
    now = now or timezone.now()
    recipient = Recipient.objects.filter(pk=message.recipient_id)
    first = (
        {"first_sent_on": Coalesce(F("first_sent_on"), Value(_emailed_on(now), DateField()))}
        if emailed
        else {}
    )
    if status == S.SOFT_BOUNCED:
        if emailed:
            recipient.filter(first_sent_on__isnull=True).update(first_sent_on=_emailed_on(now))
        return
    if status in (S.FAILED, S.BOUNCED):
        fields = {"status": R.FAILED, "next_step_at": None}
        if status == S.BOUNCED:
            fields["bounced_at"] = now
        recipient.update(last_action_at=now, **fields, **first)
        return
    recipient.update(**{**_recipient_sent_fields(message, now), **first})


def _emailed_on(now: datetime) -> date:
    """The day of Recipient.first_sent_on: in the admin's time zone (settings.TIME_ZONE)."""
    return timezone.localtime(now, timezone.get_default_timezone()).date()


def _recipient_sent_fields(message: Message, now: datetime) -> dict[str, object]:
    """The recipient after its step went out: partial with the next step scheduled, or sent
    when no step is left."""
    delay = getattr(message, "next_step_delay", _UNKNOWN)
    if delay is _UNKNOWN:
        delay = _next_step_delays([message.step]).get(message.step_id)
    fields: dict[str, object] = {
        "status": R.PARTIAL if delay is not None else R.SENT,
        "steps_sent": message.step.position,
        "next_step_at": now + delay if delay is not None else None,
        "last_action_at": now,
    }
    # Its first email: the day it was first emailed (set once; the batch writer takes plain
    # values, so only when the claim read the recipient without one).
    if Message.recipient.is_cached(message) and message.recipient.first_sent_on is None:
        fields["first_sent_on"] = _emailed_on(now)
    return fields


_UNKNOWN = object()


def recipients_restore(*, message_ids: Iterable[int]) -> int:
    """Recipients failed by a hard bounce that engagement has since disproved (an open, a
    click or a reply to the bounced message): back to where the send left them, as if the
    bounce had arrived after the engagement (then it changes nothing): partial with the next
    step scheduled from the message's sending, or sent when no step is left or the run is over.
    Only a recipient whose failure is that message's: its latest step, and still failed.
    Returns the number of recipients restored."""
    messages = (
        Message.objects.filter(
            pk__in=list(message_ids),
            recipient__status=R.FAILED,
            status__in=[S.OPENED, S.CLICKED, S.REPLIED],
        )
        .exclude(
            Exists(
                Message.objects.filter(
                    recipient=OuterRef("recipient"), step__position__gt=OuterRef("step__position")
                )
            )
        )
        .select_related("step")
        .annotate(run_status=F("run__status"))
    )
    messages = list(messages)
    _next_step_delays_attach(messages)
    restored = 0
    for message in messages:
        sent_at = message.sent_at or message.status_changed_at or timezone.now()
        fields = _recipient_sent_fields(message, sent_at)
        if message.run_status not in (*SENDING_RUNS, RunStatus.PAUSED):
            fields.update(status=R.SENT, next_step_at=None)  # nothing more goes out in it
        fields.pop("last_action_at")  # the engagement's own time is the last action
        fields.pop("first_sent_on", None)  # set when it was first emailed, never moved
        restored += Recipient.objects.filter(pk=message.recipient_id, status=R.FAILED).update(
            **fields
        )
    return restored


def _next_step_delays_attach(messages: list[Message]) -> None:
    """Each message's `next_step_delay` (read by _recipient_sent_fields), in one query."""
    delays = _next_step_delays(list({m.step_id: m.step for m in messages}.values()))
    for message in messages:
        message.next_step_delay = delays.get(message.step_id)


def _next_step_delays(steps: list[CampaignStep]) -> dict[int, timedelta | None]:
    """Step id -> the delay of the step after it (None for a last step), in one query."""
    later = CampaignStep.objects.filter(campaign_id__in={s.campaign_id for s in steps})
    by_campaign: dict[int, list[tuple[int, timedelta]]] = {}
    for campaign_id, position, delay in later.order_by("position").values_list(
        "campaign_id", "position", "delay"
    ):
        by_campaign.setdefault(campaign_id, []).append((position, delay))
    delays: dict[int, timedelta | None] = {}
    for step in steps:
        after = [d for p, d in by_campaign.get(step.campaign_id, []) if p > step.position]
        delays[step.pk] = after[0] if after else None
    return delays


# --- follow-ups and run completion ---------------------------------------------------------


def follow_ups_queue(*, now: datetime, limit: int = 5000) -> int:
    """Queue the next step for recipients whose delay has passed and who have not replied,
    unsubscribed, complained or bounced; close the sequence for those who have."""
    due = Recipient.objects.filter(next_step_at__lte=now, run__status__in=[*SENDING_RUNS]).order_by(
        "next_step_at"
    )
    stopped = due.filter(
        Q(unsubscribed_at__isnull=False)
        | Q(complained_at__isnull=False)
        | Q(bounced_at__isnull=False)
        | Q(contact__email_status=Contact.EmailStatus.INVALID)
    )
    Recipient.objects.filter(pk__in=list(stopped.values_list("pk", flat=True)[:limit])).update(
        status=R.SENT, next_step_at=None
    )
    columns = ("pk", "run_id", "account_id", "steps_sent", "replied_at", "run__campaign_id",
               "contact__owner_id")  # fmt: skip
    candidates = list(due.values_list(*columns)[:limit])
    if not candidates:
        return 0
    steps = {
        (s.campaign_id, s.position): s
        for s in CampaignStep.objects.filter(campaign_id__in={c[5] for c in candidates})
    }
    salt = secrets.token_hex(4)
    to_create: list[Message] = []
    finished: list[int] = []
    for pk, run_id, account_id, steps_sent, replied_at, campaign_id, owner_id in candidates:
        step = steps.get((campaign_id, steps_sent + 1))
        if step is None or (replied_at and step.stop_on_reply):
            finished.append(pk)
            continue
        to_create.append(
            Message(
                recipient_id=pk,
                run_id=run_id,
                step=step,
                account_id=account_id,
                message_id=_message_id(pk, step.position, salt),
                next_attempt_at=now,
                owner_id=owner_id,
            )
        )
    with transaction.atomic():
        Message.objects.bulk_create(to_create, ignore_conflicts=True)
        Recipient.objects.filter(pk__in=[m.recipient_id for m in to_create]).update(
            next_step_at=None
        )
        Recipient.objects.filter(pk__in=finished).update(status=R.SENT, next_step_at=None)
    return len(to_create)


def runs_refresh(*, now: datetime | None = None, sending: set[int] | None = None) -> list[int]:
    """Complete the runs with nothing left to do: no message due or in flight (except those in
    doubt, which wait for a person) and no follow-up scheduled. A running run with email due
    now that no worker could send (outside active hours, out of quota, no active account) is
    shown as waiting on the queue. `sending`: the runs this pass sent for. Returns the runs
    completed."""
    now = now or timezone.now()
    messages = Message.objects.filter(run=OuterRef("pk"))
    runs = CampaignRun.objects.filter(status__in=SENDING_RUNS).annotate(
        # A soft bounce without a next attempt is retried by the ESP, not by us: it does not
        # hold the run open (the ESP's final word arrives by webhook).
        due=Exists(
            messages.filter(
                Q(status=S.QUEUED) | Q(status=S.SOFT_BOUNCED, next_attempt_at__isnull=False)
            )
        ),
        due_now=Exists(messages.filter(status__in=Message.DUE_STATUSES, next_attempt_at__lte=now)),
        in_flight=Exists(
            messages.filter(status=S.SENDING, claimed_at__gte=selectors.in_doubt_cutoff(now))
        ),
        follow_ups=Exists(Recipient.objects.filter(run=OuterRef("pk"), next_step_at__isnull=False)),
    )
    completed = []
    for run in runs.only("pk", "status", "campaign_id"):
        if not (run.due or run.in_flight or run.follow_ups):
            if CampaignRun.objects.filter(pk=run.pk, status__in=SENDING_RUNS).update(
                status=RunStatus.COMPLETED, finished_at=now
            ):
                completed.append(run.pk)
                _campaign_refresh_state(run.campaign_id)
        elif (
            run.status == RunStatus.RUNNING
            and run.due_now
            and not run.in_flight
            and run.pk not in (sending or set())
        ):
            CampaignRun.objects.filter(pk=run.pk, status=RunStatus.RUNNING).update(
                status=RunStatus.WAITING
            )
    return completed


# --- accounts ------------------------------------------------------------------------------


def account_record_failure(*, account: SendingAccount, error: str) -> None:
    """Our side failed for this account. After LEADCENTER_ACCOUNT_MAX_FAILURES in a row it is
    switched off until a person switches it on again; its runs show the error."""
    now = timezone.now()
    SendingAccount.objects.filter(pk=account.pk).update(
        consecutive_failures=F("consecutive_failures") + 1, last_error=error, last_error_at=now
    )
    account.refresh_from_db(
        fields=["consecutive_failures", "is_active", "last_error", "last_error_at"]
    )
    message = f"Account {account.name}: {error}"
    if (
        account.consecutive_failures >= settings.LEADCENTER_ACCOUNT_MAX_FAILURES
        and account.is_active
    ):
        SendingAccount.objects.filter(pk=account.pk).update(is_active=False)
        account.is_active = False
        message = (
            f"Account {account.name} switched off after {account.consecutive_failures} "
            f"failures in a row; switch it on again once fixed. Last error: {error}"
        )
        logger.error(message)
    CampaignRun.objects.filter(
        status__in=[*SENDING_RUNS, RunStatus.PAUSED], recipients__account=account
    ).distinct().update(error=message)


def account_record_success(*, account: SendingAccount) -> None:
    if account.consecutive_failures:
        SendingAccount.objects.filter(pk=account.pk).update(consecutive_failures=0)
        account.consecutive_failures = 0


# --- test emails ---------------------------------------------------------------------------


def step_send_test(
    *, step: CampaignStep, contact: Contact, to: str, account: SendingAccount
) -> Reply:
    """Send one step, rendered for `contact`, to an address outside any run (no tracking)."""
    email = compose(
        message_pk=0,
        message_id=_message_id(0, step.position, secrets.token_hex(6)),
        step=step,
        contact=contact,
        recipient_email=to,
        account=account,
        track_opens=False,
        track_clicks=False,
        cache=TemplateCache(),
        subject_prefix="[Test] ",
    )
    with session_for(account) as session:
        return session.send(account.from_email, to, email.data)


__all__ = [
    "CampaignError",
    "DispatchReport",
    "account_send",
    "campaign_launch",
    "campaign_pause",
    "campaign_resume",
    "dispatch_due",
    "follow_ups_queue",
    "messages_claim",
    "run_prepare",
    "run_terminate",
    "runs_refresh",
]
