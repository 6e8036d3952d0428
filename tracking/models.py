from __future__ import annotations

from django.db import models
from django.db.models import Q


class TrackingEvent(models.Model):
    """Append-only history of everything that happened to a message (or to an address we could
    not match to one). Stored even when it changes nothing."""

    class Type(models.TextChoices):
        QUEUED = "queued", "Queued"
        CLAIMED = "claimed", "Claimed by a worker"
        SENT = "sent", "Sent"
        DEFERRED = "deferred", "Soft bounce / deferred"
        BOUNCED = "bounced", "Bounced"
        FAILED = "failed", "Failed"
        DELIVERED = "delivered", "Delivered"
        OPENED = "opened", "Opened"
        CLICKED = "clicked", "Clicked"
        REPLIED = "replied", "Replied"
        UNSUBSCRIBED = "unsubscribed", "Unsubscribed"
        COMPLAINED = "complained", "Marked as spam"
        CANCELLED = "cancelled", "Cancelled"
        IN_DOUBT = "in_doubt", "In doubt"
        AUTOREPLY = "autoreply", "Auto-reply"
        UNKNOWN = "unknown", "Unknown"

    class Source(models.TextChoices):
        SMTP = "smtp", "SMTP reply"
        DSN = "dsn", "Bounce message (DSN)"
        ARF = "arf", "Feedback report (ARF)"
        PIXEL = "pixel", "Open pixel"
        CLICK = "click", "Click redirect"
        UNSUBSCRIBE = "unsubscribe", "Unsubscribe page"
        REPLY = "reply", "Reply"
        MANUAL = "manual", "A person"
        SYSTEM = "system", "LeadCenter"

    message = models.ForeignKey(
        "campaigns.Message",
        null=True,
        blank=True,
        on_delete=models.CASCADE,
        related_name="events",
        help_text="Empty when the event matched no message.",
        db_index=False,  # event_message_time (message, -occurred_at) serves every lookup
    )
    type = models.CharField(max_length=20, choices=Type.choices)
    # One of Source, or "webhook:<esp>" for anymail webhooks.
    source = models.CharField(max_length=40)
    occurred_at = models.DateTimeField(help_text="When it happened, as the source says.")
    received_at = models.DateTimeField(auto_now_add=True, help_text="When we learned it.")
    # Unique by a constraint, not unique=True: that would add a second index for LIKE queries
    # on PostgreSQL, which nothing makes, kept up to date on every one of the sender's inserts.
    dedupe_key = models.CharField(max_length=255)
    email = models.CharField(max_length=254, blank=True, help_text="Address the event was about.")
    from_status = models.CharField(max_length=12, blank=True)
    to_status = models.CharField(
        max_length=12, blank=True, help_text="The status it moved the message to; empty if none."
    )
    url = models.URLField(max_length=2000, blank=True)
    user_agent = models.CharField(max_length=500, blank=True)
    is_machine = models.BooleanField(
        default=False, help_text="An open or click made by a privacy proxy or link scanner."
    )
    detail = models.TextField(blank=True)
    raw = models.TextField(blank=True, help_text="The payload or message as received.")

    class Meta:
        ordering = ["-occurred_at", "-id"]
        indexes = [
            models.Index(fields=["message", "-occurred_at"], name="event_message_time"),
            models.Index(
                fields=["-received_at"], condition=Q(message__isnull=True), name="event_unmatched"
            ),
            models.Index(fields=["type", "occurred_at"], name="event_type_time"),
        ]
        constraints = [
            models.UniqueConstraint(fields=["dedupe_key"], name="event_dedupe_key_unique"),
        ]

    def __str__(self) -> str:
        return f"{self.get_type_display()} via {self.source} at {self.occurred_at:%Y-%m-%d %H:%M}"


class Rejection(models.Model):
    """A failure reply for a message, classified as hard or soft by the rejection table."""

    class Kind(models.TextChoices):
        HARD = "hard", "Hard"
        SOFT = "soft", "Soft"

    class Category(models.TextChoices):
        USER_NOT_FOUND = "user_not_found", "User not found"
        DOMAIN_NOT_FOUND = "domain_not_found", "Domain not found"
        MAILBOX_FULL = "mailbox_full", "Mailbox full"
        NO_ANSWER = "no_answer", "No answer from email server"
        SPAM_BLOCKED = "spam_blocked", "Email blocked by spam filter"
        UNSPECIFIED = "unspecified", "Unspecified error"

    HARD_CATEGORIES = (Category.USER_NOT_FOUND, Category.DOMAIN_NOT_FOUND)

    message = models.ForeignKey(
        "campaigns.Message",
        null=True,
        blank=True,
        on_delete=models.CASCADE,
        related_name="rejections",
    )
    event = models.OneToOneField(
        TrackingEvent, null=True, blank=True, on_delete=models.CASCADE, related_name="rejection"
    )
    email = models.CharField(max_length=254, blank=True)
    kind = models.CharField(max_length=4, choices=Kind.choices)
    category = models.CharField(max_length=20, choices=Category.choices)
    smtp_code = models.PositiveSmallIntegerField("SMTP code", null=True, blank=True)
    smtp_status = models.CharField("enhanced status", max_length=16, blank=True)
    diagnostic = models.TextField(blank=True)
    source = models.CharField(max_length=40)
    created = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created", "-id"]
        indexes = [
            models.Index(fields=["message", "kind", "category"], name="rejection_message"),
            models.Index(fields=["kind", "category"], name="rejection_kind_category"),
        ]

    def __str__(self) -> str:
        return f"{self.get_kind_display()}: {self.get_category_display()}"


class BounceMailbox(models.Model):
    """The IMAP or POP3 mailbox a sending account's bounces (its return path) arrive in, polled
    every few minutes by `tracking.tasks.bounces_poll`."""

    class Protocol(models.TextChoices):
        IMAP = "imap", "IMAP"
        POP3 = "pop3", "POP3"

    DEFAULT_PORTS = {(Protocol.IMAP, True): 993, (Protocol.IMAP, False): 143,
                     (Protocol.POP3, True): 995, (Protocol.POP3, False): 110}  # fmt: skip

    account = models.OneToOneField(
        "campaigns.SendingAccount", on_delete=models.CASCADE, related_name="bounce_mailbox"
    )
    protocol = models.CharField(max_length=4, choices=Protocol.choices, default=Protocol.IMAP)
    host = models.CharField(max_length=255)
    port = models.PositiveIntegerField(
        null=True, blank=True, help_text="Empty: 993 for IMAP, 995 for POP3 (143/110 without SSL)."
    )
    username = models.CharField(max_length=255)
    # Never rendered back by the admin.
    password = models.CharField(max_length=255, blank=True)
    use_ssl = models.BooleanField("use SSL/TLS", default=True)
    folder = models.CharField(max_length=255, default="INBOX", help_text="IMAP only.")
    delete_after = models.BooleanField(
        default=False,
        help_text="Delete each message once recorded. Otherwise IMAP marks it seen and skips it "
        "next time; POP3 reads it again each poll (recording nothing new).",
    )
    is_active = models.BooleanField(default=True)
    last_polled_at = models.DateTimeField(null=True, blank=True, editable=False)
    last_error = models.TextField(blank=True, editable=False)

    class Meta:
        ordering = ["account__name"]

    def __str__(self) -> str:
        return f"{self.get_protocol_display()} {self.username}@{self.host}"

    @property
    def effective_port(self) -> int:
        return self.port or self.DEFAULT_PORTS[(self.protocol, self.use_ssl)]
