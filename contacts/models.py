from __future__ import annotations

from django.conf import settings
from django.db import models
from django.db.models import Q
from django.db.models.functions import Lower


class Topic(models.Model):
    """A kind of mail (newsletter, events, ...) a contact can opt out of on its own."""

    name = models.CharField(max_length=100, unique=True)
    description = models.CharField(max_length=255, blank=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name


class ContactList(models.Model):
    """A static list of contacts; campaigns send to the union of their lists."""

    name = models.CharField(max_length=150, unique=True)
    description = models.CharField(max_length=255, blank=True)
    created = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name


class Contact(models.Model):
    class EmailStatus(models.TextChoices):
        VALID = "valid", "Valid"
        INVALID = "invalid", "Invalid"

    class Stage(models.TextChoices):
        SUBSCRIBER = "subscriber", "Subscriber"
        LEAD = "lead", "Lead"
        OPPORTUNITY = "opportunity", "Opportunity"
        CUSTOMER = "customer", "Customer"

    # Blank is allowed: contacts arrive from CRMs without an address and are filtered out of
    # runs as `no_email` rather than refused at import.
    email = models.EmailField(max_length=254, blank=True)
    first_name = models.CharField(max_length=100, blank=True)
    last_name = models.CharField(max_length=100, blank=True)
    company = models.CharField(max_length=200, blank=True)
    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="owned_contacts",
        help_text="The record owner; summaries are broken down by it.",
    )
    email_status = models.CharField(
        max_length=10, choices=EmailStatus.choices, default=EmailStatus.VALID
    )
    invalid_reason = models.CharField(max_length=255, blank=True)
    invalid_at = models.DateTimeField(null=True, blank=True)
    do_not_email = models.BooleanField(default=False)
    do_not_mass_email = models.BooleanField(default=False)
    unsubscribed_at = models.DateTimeField(null=True, blank=True)
    stage = models.CharField(max_length=12, choices=Stage.choices, default=Stage.SUBSCRIBER)
    lead_at = models.DateTimeField("became a lead", null=True, blank=True)
    opportunity_at = models.DateTimeField("became an opportunity", null=True, blank=True)
    lists = models.ManyToManyField(ContactList, blank=True, related_name="contacts")
    opted_out_topics = models.ManyToManyField(Topic, blank=True, related_name="opted_out_contacts")
    created = models.DateTimeField(auto_now_add=True)
    updated = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["last_name", "first_name", "id"]
        constraints = [
            models.UniqueConstraint(
                Lower("email"),
                condition=~Q(email=""),
                name="contact_email_ci_unique",
                violation_error_message="A contact with this email address already exists.",
            ),
        ]
        indexes = [
            models.Index(fields=["owner", "stage"], name="contact_owner_stage"),
            models.Index(fields=["last_name", "first_name"], name="contact_name"),
            # The Sent emails and Recipients search: names, case-insensitively, by index.
            models.Index(Lower("last_name"), Lower("first_name"), name="contact_last_name_ci"),
            models.Index(Lower("first_name"), name="contact_first_name_ci"),
        ]

    def __str__(self) -> str:
        name = f"{self.first_name} {self.last_name}".strip()
        if name and self.email:
            return f"{name} <{self.email}>"
        return name or self.email or f"Contact #{self.pk}"

    @property
    def full_name(self) -> str:
        return f"{self.first_name} {self.last_name}".strip()


class Suppression(models.Model):
    """The blocked email list. A lifted entry stays as history; only active ones block."""

    class Reason(models.TextChoices):
        HARD_BOUNCE = "hard_bounce", "Hard bounce"
        COMPLAINT = "complaint", "Spam complaint"
        UNSUBSCRIBE = "unsubscribe", "Unsubscribed"
        MANUAL = "manual", "Added by a person"

    # Stored lower-cased (enforced below) so audience preparation can join on it directly.
    email = models.EmailField(max_length=254)
    reason = models.CharField(max_length=20, choices=Reason.choices)
    source = models.CharField(
        max_length=100, blank=True, help_text="What added it: smtp, dsn, webhook:<esp>, a person..."
    )
    note = models.TextField(blank=True)
    created = models.DateTimeField(auto_now_add=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    lifted_at = models.DateTimeField(null=True, blank=True)
    lifted_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    lift_reason = models.CharField(max_length=255, blank=True)

    class Meta:
        ordering = ["-created"]
        constraints = [
            models.CheckConstraint(
                condition=Q(email=Lower("email")), name="suppression_email_lowercase"
            ),
            models.UniqueConstraint(
                fields=["email", "reason"],
                condition=Q(lifted_at__isnull=True),
                name="suppression_active_unique",
            ),
        ]
        indexes = [
            models.Index(
                fields=["email"], condition=Q(lifted_at__isnull=True), name="suppression_active"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.email} ({self.get_reason_display()})"

    @property
    def is_active(self) -> bool:
        return self.lifted_at is None
