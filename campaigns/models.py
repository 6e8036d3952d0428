from __future__ import annotations

from datetime import date, timedelta

from django.conf import settings
from django.core.validators import MinValueValidator, RegexValidator
from django.db import models
from django.db.models import F, Q
from django.db.models.functions import Lower
from django.db.models.lookups import GreaterThan


class SendingAccount(models.Model):
    """A mailbox or relay we send from, with its limits and active hours."""

    class Security(models.TextChoices):
        NONE = "none", "None"
        STARTTLS = "starttls", "STARTTLS"
        SSL = "ssl", "SSL/TLS"

    name = models.CharField(max_length=100, unique=True)
    from_email = models.EmailField()
    from_name = models.CharField(max_length=100, blank=True)
    smtp_host = models.CharField("SMTP host", max_length=255, blank=True)
    smtp_port = models.PositiveIntegerField("SMTP port", default=587)
    smtp_username = models.CharField("SMTP username", max_length=255, blank=True)
    # Never rendered back by the admin (see SendingAccountForm).
    smtp_password = models.CharField("SMTP password", max_length=255, blank=True)
    smtp_security = models.CharField(
        "SMTP security", max_length=10, choices=Security.choices, default=Security.STARTTLS
    )
    smtp_timeout = models.PositiveIntegerField(
        "SMTP time-out (seconds)", default=30, validators=[MinValueValidator(1)]
    )
    esp = models.CharField(
        "anymail ESP",
        max_length=50,
        blank=True,
        help_text="Send through this anymail backend (e.g. 'amazon_ses', 'mailgun') instead of "
        "SMTP.",
    )
    return_path = models.EmailField(
        blank=True,
        help_text="Bounce address. With a '+' tag-able local part (bounces@example.com), each "
        "email gets a VERP envelope sender bounces+<token>@example.com.",
    )
    daily_limit = models.PositiveIntegerField(default=500)
    per_minute_limit = models.PositiveIntegerField(default=60)
    active_from = models.TimeField(null=True, blank=True, help_text="Empty: from midnight.")
    active_until = models.TimeField(null=True, blank=True, help_text="Empty: until midnight.")
    active_weekdays = models.CharField(
        max_length=7,
        default="12345",
        blank=True,
        validators=[
            RegexValidator(r"^[1-7]{0,7}$", "ISO weekdays as digits: 1 Monday ... 7 Sunday.")
        ],
        help_text="ISO weekdays as digits, 1 Monday ... 7 Sunday: '12345' for Monday to Friday.",
    )
    timezone = models.CharField(max_length=64, default="UTC")
    confirms_delivery = models.BooleanField(
        default=False,
        help_text="On when a 250 reply means the recipient's own server took the mail (a direct "
        "MX connection): sent emails then count as delivered.",
    )
    is_active = models.BooleanField(default=True)
    consecutive_failures = models.PositiveIntegerField(default=0, editable=False)
    last_error = models.TextField(blank=True)
    last_error_at = models.DateTimeField(null=True, blank=True)
    created = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name

    @property
    def from_header(self) -> str:
        from email.utils import formataddr

        return formataddr((self.from_name, self.from_email)) if self.from_name else self.from_email


class AccountUsage(models.Model):
    """What a sending account has claimed (attempts: a retry counts again, as it does at the
    provider), counted by the sender in the transaction of each claim, so that its limits cost
    two small reads whatever the day's volume instead of a count of the day's emails. One row
    per day (`start`: midnight in the account's time zone) for the daily limit, kept as the
    account's history; one per second for the per-minute limit, dropped after two minutes."""

    class Span(models.TextChoices):
        DAY = "day", "Day"
        SECOND = "second", "Second"

    account = models.ForeignKey(SendingAccount, on_delete=models.CASCADE, related_name="usage")
    span = models.CharField(max_length=6, choices=Span.choices)
    start = models.DateTimeField()
    claimed = models.PositiveIntegerField(default=0)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["account", "span", "start"], name="account_usage_unique"
            )
        ]

    def __str__(self) -> str:
        return f"{self.account_id} {self.span} {self.start:%Y-%m-%d %H:%M:%S}: {self.claimed}"


class Campaign(models.Model):
    class State(models.TextChoices):
        DRAFT = "draft", "Draft"
        ACTIVE = "active", "Active"
        PAUSED = "paused", "Paused"
        FINISHED = "finished", "Finished"

    name = models.CharField(max_length=200, unique=True)
    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="owned_campaigns",
    )
    topic = models.ForeignKey(
        "contacts.Topic",
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="campaigns",
        help_text="Contacts who opted out of this topic are left out.",
    )
    lists = models.ManyToManyField("contacts.ContactList", related_name="campaigns", blank=True)
    accounts = models.ManyToManyField(SendingAccount, related_name="campaigns", blank=True)
    track_opens = models.BooleanField(default=True)
    track_clicks = models.BooleanField(default=True)
    state = models.CharField(max_length=10, choices=State.choices, default=State.DRAFT)
    created = models.DateTimeField(auto_now_add=True)
    updated = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["-created"]
        permissions = [
            ("launch_campaign", "Can launch, pause, resume and terminate campaigns"),
            ("export_reports", "Can export summaries and result lists to Excel"),
        ]

    def __str__(self) -> str:
        return self.name


class CampaignStep(models.Model):
    campaign = models.ForeignKey(Campaign, on_delete=models.CASCADE, related_name="steps")
    position = models.PositiveSmallIntegerField(
        default=1, validators=[MinValueValidator(1)], help_text="1 for the first email."
    )
    subject = models.CharField(max_length=255)
    html_body = models.TextField("HTML body", blank=True)
    text_body = models.TextField("text body", blank=True)
    delay = models.DurationField(
        default=timedelta(0), help_text="Wait after the previous step, e.g. '3 days, 0:00:00'."
    )
    stop_on_reply = models.BooleanField(default=True)

    class Meta:
        ordering = ["campaign", "position"]
        constraints = [
            models.UniqueConstraint(fields=["campaign", "position"], name="step_position_unique"),
        ]

    def __str__(self) -> str:
        return f"{self.campaign} · step {self.position}: {self.subject}"


class CampaignRun(models.Model):
    class Status(models.TextChoices):
        INITIALIZED = "initialized", "Initialized"
        WAITING = "waiting", "Waiting on queue"
        RUNNING = "running", "Running"
        PAUSED = "paused", "Paused"
        COMPLETED = "completed", "Completed"
        FAILED = "failed", "Failed"
        TERMINATED = "terminated", "Terminated"
        FILTERED = "filtered", "Filtered"

    # Runs in these statuses still have work that a worker may pick up.
    IN_PROGRESS = (Status.INITIALIZED, Status.WAITING, Status.RUNNING, Status.PAUSED)

    campaign = models.ForeignKey(Campaign, on_delete=models.CASCADE, related_name="runs")
    status = models.CharField(max_length=12, choices=Status.choices, default=Status.INITIALIZED)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    started_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    error = models.TextField(blank=True)
    total_recipients = models.PositiveIntegerField(default=0)
    total_filtered = models.PositiveIntegerField(default=0)
    created = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created"]
        indexes = [
            models.Index(
                fields=["status"],
                condition=Q(status__in=["initialized", "waiting", "running", "paused"]),
                name="run_in_progress",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.campaign} · run #{self.pk}"


class Recipient(models.Model):
    """One contact in one run: the lead-level view of what the run did for it."""

    class Status(models.TextChoices):
        PENDING = "pending", "Pending"
        PARTIAL = "partial", "Partial"
        SENT = "sent", "Sent"
        FAILED = "failed", "Failed"
        FILTERED = "filtered", "Filtered"

    class FilterReason(models.TextChoices):
        UNSUBSCRIBED = "unsubscribed", "Unsubscribed"
        DO_NOT_EMAIL = "do_not_email", "Do not email"
        DO_NOT_MASS_EMAIL = "do_not_mass_email", "Do not mass email"
        NO_EMAIL = "no_email", "No email address"
        INVALID_EMAIL = "invalid_email", "Invalid email address"
        BLOCKED = "blocked", "Blocked (suppression list)"
        DUPLICATE = "duplicate", "Duplicate address in this run"
        NO_EMAIL_SELECTED = "no_email_selected", "Opted out of this topic"

    # No single-column indexes on run and contact: the unique (contact, run) and the
    # (run, ...) indexes lead with them, and every index costs on each write.
    run = models.ForeignKey(
        CampaignRun, on_delete=models.CASCADE, related_name="recipients", db_index=False
    )
    contact = models.ForeignKey(
        "contacts.Contact", on_delete=models.CASCADE, related_name="recipients", db_index=False
    )
    email = models.CharField(
        max_length=254, blank=True, help_text="The address when the run began."
    )
    account = models.ForeignKey(
        SendingAccount, null=True, blank=True, on_delete=models.PROTECT, related_name="recipients"
    )
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.PENDING)
    filter_reason = models.CharField(
        max_length=20, choices=FilterReason.choices, blank=True, default=""
    )
    last_action_at = models.DateTimeField(null=True, blank=True)
    steps_sent = models.PositiveSmallIntegerField(
        default=0, help_text="Position of the last step that went out."
    )
    next_step_at = models.DateTimeField(
        null=True, blank=True, help_text="When the next follow-up falls due; empty if none."
    )
    # First-seen times, so report counts are plain filtered COUNTs.
    delivered_at = models.DateTimeField(null=True, blank=True)
    opened_at = models.DateTimeField(null=True, blank=True)
    clicked_at = models.DateTimeField(null=True, blank=True)
    replied_at = models.DateTimeField(null=True, blank=True)
    unsubscribed_at = models.DateTimeField(null=True, blank=True)
    complained_at = models.DateTimeField(null=True, blank=True)
    bounced_at = models.DateTimeField(null=True, blank=True)
    lead_at = models.DateTimeField(null=True, blank=True)
    opportunity_at = models.DateTimeField(null=True, blank=True)
    # Which rejection categories its emails got, as bits (REJECTION_BITS). Kept by a database
    # trigger on tracking_rejection (migration 0006), so "recipients rejected for spam" is a
    # plain column test and the report counters can follow it.
    rejections = models.SmallIntegerField(default=0, db_default=0, editable=False)
    # The day (admin time zone) its first email was sent or refused; set once by the sender
    # (campaigns.services) and never moved. A summary's date range selects recipients by it,
    # and the report counters are kept per day of it (RunTally.day, migration 0013).
    first_sent_on = models.DateField(
        null=True,
        blank=True,
        editable=False,
        help_text="The day its first email was sent or refused (admin time zone).",
    )

    class Meta:
        ordering = ["run", "id"]
        constraints = [
            # Also the contact's recipients, by index (migration 0016).
            models.UniqueConstraint(fields=["contact", "run"], name="recipient_contact_run_unique"),
            models.CheckConstraint(
                condition=Q(status="filtered", filter_reason__gt="")
                | (~Q(status="filtered") & Q(filter_reason="")),
                name="recipient_filter_reason_iff_filtered",
            ),
        ]
        indexes = [
            models.Index(fields=["run", "status"], name="recipient_run_status"),
            # A run's filtered contacts by reason. Filtered ones only: the others (nine in ten)
            # have no reason to look up, and leaving them out spares run preparation an index
            # entry per recipient, written away from the index's right edge ('' sorts first).
            models.Index(
                fields=["run", "filter_reason"],
                condition=Q(filter_reason__gt=""),
                name="recipient_run_filter",
            ),
            # Matching a bounce or complaint that names only the address.
            models.Index(Lower("email"), name="recipient_email_ci"),
            # The follow-up scheduler's poll and "does this run still have follow-ups".
            models.Index(
                fields=["run", "next_step_at"],
                condition=Q(next_step_at__isnull=False),
                name="recipient_follow_up_due",
            ),
        ]

    def __str__(self) -> str:
        return self.email or f"Recipient #{self.pk}"


# Rejection category -> its bit in Recipient.rejections (fixed: stored in rows and triggers).
REJECTION_BITS: dict[str, int] = {
    "user_not_found": 1,
    "domain_not_found": 2,
    "mailbox_full": 4,
    "no_answer": 8,
    "spam_blocked": 16,
    "unspecified": 32,
}
HARD_REJECTION_MASK = 1 | 2
SOFT_REJECTION_MASK = 4 | 8 | 16 | 32
# Message.rejection_flags: the bits of its rejections' categories (as above) and of their
# kinds. A kind has a bit of its own so that "hard (any category)" keeps Rejection.kind's meaning.
REJECTION_KIND_BITS: dict[str, int] = {"hard": 64, "soft": 128}
MESSAGE_REJECTION_FLAGS: dict[str, int] = {**REJECTION_KIND_BITS, **REJECTION_BITS}


def rejection_flag(bit: int) -> GreaterThan:
    """Messages with this bit in rejection_flags, written exactly as the condition of its
    partial index (message_rej_*): PostgreSQL uses a partial index only for a query whose
    condition is the index's own."""
    return GreaterThan(F("rejection_flags").bitand(bit), 0)


class Message(models.Model):
    """One email: one step to one recipient. Its status is written only by tracking.services."""

    class Status(models.TextChoices):
        QUEUED = "queued", "Unsent"
        SENDING = "sending", "Sending"
        SENT = "sent", "Sent"
        SOFT_BOUNCED = "soft_bounced", "Soft bounced"
        BOUNCED = "bounced", "Bounced"
        FAILED = "failed", "Failed"
        DELIVERED = "delivered", "Delivered"
        OPENED = "opened", "Opened"
        CLICKED = "clicked", "Clicked"
        REPLIED = "replied", "Replied"
        CANCELLED = "cancelled", "Cancelled"

    # Waiting for a worker: the dispatcher's queue.
    DUE_STATUSES = (Status.QUEUED, Status.SOFT_BOUNCED)

    # recipient, run and account have no single-column index of their own: the indexes below
    # lead with them (message_recipient_step, message_run_status, message_account_claimed).
    # A status change rewrites an entry in every index of this table, twice per email sent.
    recipient = models.ForeignKey(
        Recipient, on_delete=models.CASCADE, related_name="messages", db_index=False
    )
    # Denormalised from the recipient so the Sent emails list and the dispatcher filter by run
    # without a join.
    run = models.ForeignKey(
        CampaignRun, on_delete=models.CASCADE, related_name="messages", db_index=False
    )
    step = models.ForeignKey(CampaignStep, on_delete=models.PROTECT, related_name="messages")
    account = models.ForeignKey(
        SendingAccount,
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="messages",
        db_index=False,
    )
    # Unique through Meta.constraints: a unique=True CharField also gets a LIKE-pattern index on
    # PostgreSQL, which nothing here uses (the admin's search is a case-insensitive contains).
    message_id = models.CharField("Message-ID", max_length=255)
    esp_message_id = models.CharField("ESP message id", max_length=255, blank=True)
    status = models.CharField(
        max_length=12, choices=Status.choices, default=Status.QUEUED, editable=False
    )
    attempts = models.PositiveSmallIntegerField(default=0)
    next_attempt_at = models.DateTimeField(null=True, blank=True)
    smtp_code = models.PositiveSmallIntegerField("SMTP code", null=True, blank=True)
    smtp_status = models.CharField("enhanced status", max_length=16, blank=True)
    smtp_response = models.TextField("SMTP reply", blank=True)
    created = models.DateTimeField(auto_now_add=True)
    status_changed_at = models.DateTimeField(null=True, blank=True)
    claimed_at = models.DateTimeField(null=True, blank=True)
    sent_at = models.DateTimeField(null=True, blank=True)
    delivered_at = models.DateTimeField(null=True, blank=True)
    opened_at = models.DateTimeField(null=True, blank=True)
    clicked_at = models.DateTimeField(null=True, blank=True)
    replied_at = models.DateTimeField(null=True, blank=True)
    unsubscribed_at = models.DateTimeField(null=True, blank=True)
    complained_at = models.DateTimeField(null=True, blank=True)
    open_count = models.PositiveIntegerField(default=0)
    click_count = models.PositiveIntegerField(default=0)
    # Which rejection categories and kinds it got, as bits (MESSAGE_REJECTION_FLAGS). Kept by a
    # database trigger on tracking_rejection (migration 0011), as Recipient.rejections is, so the
    # Sent emails list's rejection filter reads a small partial index instead of probing the
    # rejections of every email.
    rejection_flags = models.SmallIntegerField(default=0, db_default=0, editable=False)
    # The record owner of its contact, copied here so that the Sent emails list's owner filter,
    # alone or with a status or rejection filter, is a test of the email's own column served
    # by an index (message_owner_status, msg_rej_owner_*), not a join through every recipient.
    # Set by the writers that create emails (campaigns.services); kept by database triggers
    # when the contact's owner changes (migration 0012). No constraint: the contact holds it.
    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.DO_NOTHING,
        db_constraint=False,
        db_index=False,
        editable=False,
        related_name="+",
        help_text="The record owner of the email's contact (kept by a trigger).",
    )

    class Meta:
        # The admin's "Sent emails" page, as support agents and the help pages call it.
        verbose_name = "sent email"
        verbose_name_plural = "sent emails"
        ordering = ["-created", "-id"]
        constraints = [
            models.UniqueConstraint(fields=["recipient", "step"], name="message_recipient_step"),
            models.UniqueConstraint(fields=["message_id"], name="message_message_id_unique"),
        ]
        indexes = [
            # The dispatcher's poll: due messages per account, oldest first. With the id, the
            # index has the claim's exact order (next_attempt_at, id): a claim reads its batch
            # off the index instead of sorting every due message of the account.
            models.Index(
                fields=["account", "next_attempt_at", "id"],
                condition=Q(status__in=["queued", "soft_bounced"]),
                name="message_due",
            ),
            # In-doubt detection.
            models.Index(
                fields=["account", "claimed_at"],
                condition=Q(status="sending"),
                name="message_in_flight",
            ),
            # The account's foreign key index (deleting an account, the Sent emails list
            # filtered by account), and a day's attempts by claim time (migration 0014 counted
            # them so; the limits read AccountUsage since).
            models.Index(fields=["account", "claimed_at"], name="message_account_claimed"),
            models.Index(fields=["run", "status"], name="message_run_status"),
            # The indexes in the Sent emails list's order (newest first) are ascending and read
            # backwards: a new email's entry then goes at the index's right edge, where
            # PostgreSQL appends without searching the tree and fills its pages. In descending
            # order every entry went to the left edge: a search from the root each, and pages
            # split half empty (migration 0017).
            models.Index(fields=["status", "created"], name="message_status_created"),
            # The list's order: any page of it, filtered or not, reads the index instead of
            # sorting the table.
            models.Index(fields=["created", "id"], name="message_created"),
            models.Index(
                fields=["esp_message_id"], condition=~Q(esp_message_id=""), name="message_esp_id"
            ),
            # The Sent emails list filtered by a rejection kind or category, newest first: one
            # small index per flag, over the emails that have it only, in the list's order, so a
            # rare category's page and count read a few hundred entries at any table size.
            *(
                models.Index(
                    fields=["-created", "-id"],
                    condition=Q(rejection_flag(bit)),
                    name=f"message_rej_{flag}",
                )
                for flag, bit in MESSAGE_REJECTION_FLAGS.items()
            ),
            # The list filtered by owner and status, or by owner and a rejection flag, in its
            # order: a page and its capped count read only the entries they show or count.
            models.Index(fields=["owner", "status", "created", "id"], name="message_owner_status"),
            *(
                models.Index(
                    fields=["owner", "-created", "-id"],
                    condition=Q(rejection_flag(bit)),
                    name=f"msg_rej_owner_{flag}",
                )
                for flag, bit in MESSAGE_REJECTION_FLAGS.items()
            ),
        ]

    def __str__(self) -> str:
        return self.message_id


class RunTally(models.Model):
    """Maintained report counters: how many recipients of a run, per record owner and per day
    they were first emailed, are in each status, were filtered for each reason, reached each
    first-seen stage and got each rejection category. Written only by database triggers on
    campaigns_recipient, contacts_contact and tracking_rejection (migrations 0007, 0013), in
    the same transaction as the rows they count, so report pages read a few rows instead of
    counting a million recipients; a date range sums the rows of its days."""

    # The day of recipients not emailed yet (Recipient.first_sent_on is NULL): a real date,
    # because a NULL would not match itself in the unique key the triggers upsert on.
    NO_DAY = date(1, 1, 1)

    # No foreign key constraints: the triggers may write a counter while Django's deletion
    # collector is removing the run or the owner; a trigger on the run cleans up instead.
    # Indexed by runtally_run_owner_day (run, owner_key, day).
    run = models.ForeignKey(
        CampaignRun,
        on_delete=models.DO_NOTHING,
        db_constraint=False,
        related_name="+",
        db_index=False,
    )
    owner_key = models.IntegerField(help_text="The contacts' owner id; 0 when they have none.")
    day = models.DateField(
        default=NO_DAY,
        help_text="The recipients' first_sent_on; 0001-01-01 for those not emailed yet.",
    )
    recipients = models.IntegerField(default=0)
    filtered = models.IntegerField(default=0)
    filtered_unsubscribed = models.IntegerField(default=0)
    filtered_do_not_email = models.IntegerField(default=0)
    filtered_do_not_mass_email = models.IntegerField(default=0)
    filtered_no_email = models.IntegerField(default=0)
    filtered_invalid_email = models.IntegerField(default=0)
    filtered_blocked = models.IntegerField(default=0)
    filtered_duplicate = models.IntegerField(default=0)
    filtered_no_email_selected = models.IntegerField(default=0)
    pending = models.IntegerField(default=0)
    partial = models.IntegerField(default=0)
    sent = models.IntegerField(default=0)
    failed = models.IntegerField(default=0)
    attempted = models.IntegerField(default=0)
    accepted = models.IntegerField(default=0)
    delivered = models.IntegerField(default=0)
    opened = models.IntegerField(default=0)
    clicked = models.IntegerField(default=0)
    replied = models.IntegerField(default=0)
    unsubscribed = models.IntegerField(default=0)
    complained = models.IntegerField(default=0)
    bounced = models.IntegerField(default=0)
    leads = models.IntegerField(default=0)
    opportunities = models.IntegerField(default=0)
    rejected = models.IntegerField(default=0)
    rejected_hard = models.IntegerField(default=0)
    rejected_soft = models.IntegerField(default=0)
    rejected_user_not_found = models.IntegerField(default=0)
    rejected_domain_not_found = models.IntegerField(default=0)
    rejected_mailbox_full = models.IntegerField(default=0)
    rejected_no_answer = models.IntegerField(default=0)
    rejected_spam_blocked = models.IntegerField(default=0)
    rejected_unspecified = models.IntegerField(default=0)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["run", "owner_key", "day"], name="runtally_run_owner_day"
            ),
        ]

    def __str__(self) -> str:
        day = "not emailed" if self.day == self.NO_DAY else self.day.isoformat()
        return f"run #{self.run_id}, owner {self.owner_key or '-'}, {day}"


class RunActivity(models.Model):
    """Maintained counts of opens and clicks per run and hour (UTC), human or machine, for the
    run's activity chart. Written only by a trigger on tracking_trackingevent (migration 0006)."""

    run = models.ForeignKey(
        CampaignRun, on_delete=models.DO_NOTHING, db_constraint=False, related_name="+"
    )
    hour = models.DateTimeField()
    type = models.CharField(max_length=20)  # TrackingEvent.Type: opened or clicked
    is_machine = models.BooleanField(default=False)
    count = models.IntegerField(default=0)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["run", "hour", "type", "is_machine"], name="runactivity_unique"
            ),
        ]

    def __str__(self) -> str:
        return f"run #{self.run_id} {self.hour:%Y-%m-%d %H}h {self.type}: {self.count}"


class ExportJob(models.Model):
    """A large Excel export prepared by a worker (campaigns.exports.export_job_run): which list,
    filtered how, for whom, how far it got, and the file once written."""

    class Status(models.TextChoices):
        QUEUED = "queued", "Queued"
        RUNNING = "running", "Writing"
        DONE = "done", "Ready"
        FAILED = "failed", "Failed"

    kind = models.CharField(max_length=20)  # the list: "messages" or "recipients"
    query = models.TextField(blank=True, help_text="The list's filters, as its query string.")
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.QUEUED)
    total = models.PositiveIntegerField(default=0)
    progress = models.PositiveIntegerField(default=0, help_text="Rows written so far.")
    file = models.CharField(max_length=255, blank=True, help_text="Path in the default storage.")
    error = models.TextField(blank=True)
    requested_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="+"
    )
    created = models.DateTimeField(auto_now_add=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created"]

    def __str__(self) -> str:
        return f"Export #{self.pk} ({self.kind})"

    @property
    def percent(self) -> float:
        return 100.0 * self.progress / self.total if self.total else 0.0
