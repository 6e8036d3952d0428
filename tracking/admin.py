from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import admin
from django.db.models import QuerySet
from django.http import HttpRequest
from django.utils.text import Truncator

from tracking.models import BounceMailbox, Rejection, TrackingEvent


class HistoryAdmin(admin.ModelAdmin):
    """Append-only history: viewable, never added, edited or deleted by hand."""

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


class EventSourceFilter(admin.SimpleListFilter):
    """Fixed choices instead of the default SELECT DISTINCT over the whole event table."""

    title = "source"
    parameter_name = "source"
    WEBHOOK = "webhook"

    def lookups(self, request: HttpRequest, model_admin: admin.ModelAdmin) -> list[tuple[str, str]]:
        return [*TrackingEvent.Source.choices, (self.WEBHOOK, "ESP webhook")]

    def queryset(self, request: HttpRequest, queryset: QuerySet[TrackingEvent]) -> QuerySet:
        if self.value() == self.WEBHOOK:
            # Stored as "webhook:<esp>".
            return queryset.filter(source__startswith="webhook:")
        if self.value():
            return queryset.filter(source=self.value())
        return queryset


class MatchedFilter(admin.SimpleListFilter):
    """Events that matched no message (a bounce for an address we never wrote to, a garbled
    report) are kept for a person to read."""

    title = "matched"
    parameter_name = "matched"

    def lookups(self, request, model_admin):
        return [("yes", "Matched to a message"), ("no", "Unmatched")]

    def queryset(self, request, queryset):
        if self.value() == "yes":
            return queryset.filter(message__isnull=False)
        if self.value() == "no":
            return queryset.filter(message__isnull=True)
        return queryset


@admin.register(TrackingEvent)
class TrackingEventAdmin(HistoryAdmin):
    list_display = [
        "occurred_at",
        "type",
        "source",
        "email",
        "message",
        "to_status",
        "is_machine",
        "received_at",
    ]
    # A date filter rather than date_hierarchy: the hierarchy runs a DISTINCT over every event's
    # date on each page view.
    list_filter = ["type", EventSourceFilter, MatchedFilter, "is_machine", "occurred_at"]
    search_fields = ["email", "=dedupe_key", "message__message_id"]
    list_select_related = ["message"]
    show_full_result_count = False
    raw_id_fields = ["message"]
    fieldsets = [
        (None, {"fields": ["message", "email", "type", "source", "occurred_at", "received_at"]}),
        ("Status change", {"fields": ["from_status", "to_status"]}),
        ("Detail", {"fields": ["url", "user_agent", "is_machine", "detail", "dedupe_key", "raw"]}),
    ]


@admin.register(Rejection)
class RejectionAdmin(HistoryAdmin):
    list_display = [
        "created",
        "email",
        "kind",
        "category",
        "smtp_code",
        "smtp_status",
        "diagnostic_text",
        "source",
        "message",
    ]
    list_filter = ["kind", "category", "created"]
    search_fields = ["email", "message__message_id", "smtp_status"]
    list_select_related = ["message"]
    show_full_result_count = False
    raw_id_fields = ["message", "event"]
    fields = [
        "message",
        "event",
        "email",
        "kind",
        "category",
        "smtp_code",
        "smtp_status",
        "diagnostic",
        "source",
        "created",
    ]

    @admin.display(description="diagnostic")
    def diagnostic_text(self, obj: Rejection) -> str:
        return Truncator(obj.diagnostic).chars(80)


class BounceMailboxForm(forms.ModelForm):
    """The mailbox password is write-only: never rendered back; blank keeps the stored one."""

    password = forms.CharField(
        required=False,
        widget=forms.PasswordInput(render_value=False),
        help_text="Leave blank to keep the stored password.",
    )

    class Meta:
        model = BounceMailbox
        fields = [
            "account", "protocol", "host", "port", "username", "password", "use_ssl", "folder",
            "delete_after", "is_active",
        ]  # fmt: skip

    def clean_password(self) -> str:
        password = self.cleaned_data.get("password", "")
        if not password and self.instance.pk:
            return self.instance.password
        return password


@admin.register(BounceMailbox)
class BounceMailboxAdmin(admin.ModelAdmin):
    form = BounceMailboxForm
    list_display = ["account", "protocol", "host", "username", "is_active", "last_polled_at"]
    list_filter = ["protocol", "is_active"]
    list_select_related = ["account"]
    autocomplete_fields = ["account"]
    readonly_fields = ["last_polled_at", "last_error"]

    def get_fieldsets(self, request: HttpRequest, obj: BounceMailbox | None = None) -> list:
        fieldsets = super().get_fieldsets(request, obj)
        if obj is None or self.has_change_permission(request, obj):
            return fieldsets
        # View only: the admin would show the stored password as text.
        return [
            (name, {**options, "fields": [
                "password_stored" if f == "password" else f for f in options["fields"]
            ]})
            for name, options in fieldsets
        ]  # fmt: skip

    @admin.display(description="password")
    def password_stored(self, obj: BounceMailbox) -> str:
        return "stored (never shown)" if obj.password else "none"
