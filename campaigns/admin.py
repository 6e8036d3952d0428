from __future__ import annotations

from datetime import datetime, timedelta
from functools import partial
from typing import Any
from urllib.parse import parse_qsl, urlencode
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from django import forms
from django.contrib import admin
from django.contrib.admin import helpers
from django.contrib.admin.utils import quote
from django.contrib.admin.views.main import ChangeList
from django.db.models import Count, Prefetch, QuerySet, prefetch_related_objects
from django.http import HttpRequest, HttpResponseRedirect
from django.urls import path, reverse
from django.utils import timezone
from django.utils.html import format_html
from django.utils.text import Truncator
from django.utils.translation import gettext as _

from campaigns import admin_views, report_views, reports
from campaigns.models import (
    MESSAGE_REJECTION_FLAGS,
    Campaign,
    CampaignRun,
    CampaignStep,
    Message,
    Recipient,
    SendingAccount,
    rejection_flag,
)
from campaigns.selectors import messages_in_doubt, run_progress, search_by_contact
from leadcenter.paginator import CappedCountPaginator
from tracking.classification import parse_smtp_reply
from tracking.models import Rejection, TrackingEvent

WEEKDAY_NAMES = {"1": "Mon", "2": "Tue", "3": "Wed", "4": "Thu", "5": "Fri", "6": "Sat", "7": "Sun"}
# Ranges read as ranges ("Mon\u2013Fri"), not as a minus sign.
EN_DASH = "\u2013"


def weekdays_display(weekdays: str) -> str:
    """ISO weekday digits as names: '12345' is Mon to Fri as a range, '1357' a list of four,
    '12367' a range of three then Sat, Sun."""
    days = sorted({int(d) for d in weekdays if d in WEEKDAY_NAMES})
    # Empty means no restriction, as the dispatcher reads it (campaigns.selectors).
    if len(days) == 7 or not days:
        return "every day"
    runs: list[list[int]] = []
    for day in days:
        if runs and day == runs[-1][-1] + 1:
            runs[-1].append(day)
        else:
            runs.append([day])
    parts: list[str] = []
    for run in runs:
        names = [WEEKDAY_NAMES[str(d)] for d in run]
        parts.append(f"{names[0]}{EN_DASH}{names[-1]}" if len(names) > 2 else ", ".join(names))
    return ", ".join(parts)


def active_hours_display(account: SendingAccount) -> str:
    """A compact '09:00-17:00 Mon-Fri' (with en dashes), plus the time zone when not UTC."""
    start = account.active_from.strftime("%H:%M") if account.active_from else "00:00"
    end = account.active_until.strftime("%H:%M") if account.active_until else "24:00"
    text = f"{start}{EN_DASH}{end} {weekdays_display(account.active_weekdays)}"
    if account.timezone and account.timezone != "UTC":
        text += f" ({account.timezone})"
    return text


class InspectOnlyAdmin(admin.ModelAdmin):
    """Rows the pipeline writes (runs by launching, messages by the sender): people look at them
    here; adding or editing them by hand would bypass the one writer of their state."""

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


class SendingAccountForm(forms.ModelForm):
    # Write-only: the stored password is never sent back to the browser.
    smtp_password = forms.CharField(
        label="SMTP password",
        required=False,
        strip=False,
        widget=forms.PasswordInput(render_value=False, attrs={"autocomplete": "new-password"}),
        help_text="Never shown again. Leave empty to keep the stored password.",
    )
    clear_smtp_password = forms.BooleanField(
        label="Remove the stored SMTP password", required=False
    )

    class Meta:
        model = SendingAccount
        fields = [
            "name",
            "from_email",
            "from_name",
            "is_active",
            "smtp_host",
            "smtp_port",
            "smtp_security",
            "smtp_username",
            "smtp_password",
            "smtp_timeout",
            "esp",
            "return_path",
            "confirms_delivery",
            "daily_limit",
            "per_minute_limit",
            "active_from",
            "active_until",
            "active_weekdays",
            "timezone",
        ]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # Not even as the initial value: it would also make every save look like a password
        # change in the history.
        self.initial["smtp_password"] = ""

    def clean_timezone(self) -> str:
        value = self.cleaned_data["timezone"]
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise forms.ValidationError("Not a known time zone, e.g. 'Europe/Paris'.") from exc
        return value

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean()
        if cleaned.get("clear_smtp_password"):
            cleaned["smtp_password"] = ""
        elif not cleaned.get("smtp_password") and self.instance.pk:
            # The instance still holds the stored value here (the form writes into it later).
            cleaned["smtp_password"] = self.instance.smtp_password
        return cleaned


@admin.register(SendingAccount)
class SendingAccountAdmin(admin.ModelAdmin):
    form = SendingAccountForm
    list_display = [
        "name",
        "from_email",
        "smtp_host",
        "daily_limit",
        "active_hours",
        "is_active",
        "last_error_at",
        "sent_total",
        "sent_30_days",
        "success_rate",
        "quota_today",
        "last_error_short",
    ]
    list_filter = ["is_active", "smtp_security", "confirms_delivery"]
    search_fields = ["name", "from_email", "smtp_host", "smtp_username"]
    # Written by the sender when the account fails; cleared by it when it works again.
    readonly_fields = ["consecutive_failures", "last_error", "last_error_at", "created"]
    fieldsets = [
        (None, {"fields": ["name", "from_email", "from_name", "is_active"]}),
        (
            "SMTP",
            {
                "fields": [
                    "smtp_host",
                    "smtp_port",
                    "smtp_security",
                    "smtp_username",
                    "smtp_password",
                    "clear_smtp_password",
                    "smtp_timeout",
                ]
            },
        ),
        ("ESP", {"fields": ["esp"]}),
        ("Bounces and delivery", {"fields": ["return_path", "confirms_delivery"]}),
        (
            "Limits and active hours",
            {
                "fields": [
                    "daily_limit",
                    "per_minute_limit",
                    "active_from",
                    "active_until",
                    "active_weekdays",
                    "timezone",
                ]
            },
        ),
        ("Health", {"fields": ["consecutive_failures", "last_error", "last_error_at", "created"]}),
    ]

    def get_fieldsets(self, request: HttpRequest, obj: SendingAccount | None = None) -> list:
        fieldsets = super().get_fieldsets(request, obj)
        if obj is None or self.has_change_permission(request, obj):
            return fieldsets
        # View only (Staff): the admin shows every field as text, the stored password too;
        # say whether there is one instead.
        shown = {"smtp_password": "smtp_password_stored", "clear_smtp_password": None}
        return [
            (name, {**options, "fields": [
                shown.get(f, f) for f in options["fields"] if shown.get(f, f) is not None
            ]})
            for name, options in fieldsets
        ]  # fmt: skip

    @admin.display(description="SMTP password")
    def smtp_password_stored(self, obj: SendingAccount) -> str:
        return "stored (never shown)" if obj.smtp_password else "none"

    @admin.display(description="active hours")
    def active_hours(self, obj: SendingAccount) -> str:
        return active_hours_display(obj)

    def get_queryset(self, request: HttpRequest) -> QuerySet[SendingAccount]:
        queryset = super().get_queryset(request)
        match = getattr(request, "resolver_match", None)
        if match and match.url_name == "campaigns_sendingaccount_changelist":
            # One grouped query for the whole list (reports.accounts_with_stats), never per
            # row; the change form and autocomplete do without.
            return reports.accounts_with_stats(queryset)
        return queryset

    @admin.display(description="sent", ordering="_sent_total")
    def sent_total(self, obj: SendingAccount) -> int | None:
        return getattr(obj, "_sent_total", None)

    @admin.display(description="last 30 d", ordering="_sent_30_days")
    def sent_30_days(self, obj: SendingAccount) -> int | None:
        return getattr(obj, "_sent_30_days", None)

    @admin.display(description="success", ordering="_success_rate")
    def success_rate(self, obj: SendingAccount) -> str:
        rate = getattr(obj, "_success_rate", None)
        if rate is None:
            return "-"
        band = reports.success_band(rate)
        return format_html(
            '<span class="lc-band lc-band-{}" title="{} of {} attempted emails got through '
            '(sent, delivered or engaged)">{}% {}</span>',
            band,
            obj._succeeded,
            obj._attempted,
            f"{rate:.1f}",
            band,
        )

    @admin.display(description="today / limit")
    def quota_today(self, obj: SendingAccount) -> str:
        used = getattr(obj, "_used_today", None)
        if used is None:
            return "-"
        return f"{used} / {obj.daily_limit}"

    @admin.display(description="last error")
    def last_error_short(self, obj: SendingAccount) -> str:
        return Truncator(obj.last_error).chars(60) if obj.last_error else ""


class CampaignStepInline(admin.StackedInline):
    model = CampaignStep
    ordering = ["position"]
    fields = ["position", "subject", "delay", "stop_on_reply", "html_body", "text_body"]

    def get_extra(self, request: HttpRequest, obj: Campaign | None = None, **kwargs: Any) -> int:
        # A new campaign needs its first email; an existing one already shows its steps.
        return 1 if obj is None else 0


@admin.register(Campaign)
class CampaignAdmin(admin.ModelAdmin):
    list_display = [
        "name",
        "state",
        "owner",
        "topic",
        "step_count",
        "track_opens",
        "track_clicks",
        "created",
        "summary_link",
    ]
    list_filter = ["state", "owner", "topic"]
    actions = ["compare_selected"]
    search_fields = ["name"]
    list_select_related = ["owner", "topic"]
    autocomplete_fields = ["owner", "topic", "lists", "accounts"]
    # The state moves by launching, pausing, resuming and finishing, never by editing.
    readonly_fields = ["state", "created", "updated"]
    inlines = [CampaignStepInline]

    def get_queryset(self, request: HttpRequest) -> QuerySet[Campaign]:
        return super().get_queryset(request).annotate(_step_count=Count("steps"))

    def get_urls(self) -> list:
        wrap = self.admin_site.admin_view
        return [
            path("<int:object_id>/launch/", wrap(admin_views.campaign_launch_view),
                 name="campaigns_campaign_launch"),
            path("<int:object_id>/pause/", wrap(admin_views.campaign_pause_view),
                 name="campaigns_campaign_pause"),
            path("<int:object_id>/resume/", wrap(admin_views.campaign_resume_view),
                 name="campaigns_campaign_resume"),
            path("<int:object_id>/preview/",
                 wrap(partial(admin_views.campaign_preview_view, model_admin=self)),
                 name="campaigns_campaign_preview"),
            path("<int:object_id>/test-email/", wrap(admin_views.campaign_test_email_view),
                 name="campaigns_campaign_test_email"),
            path("<int:object_id>/summary/",
                 wrap(partial(report_views.campaign_summary_view, model_admin=self)),
                 name="campaigns_campaign_summary"),
            path("<int:object_id>/summary/export/",
                 wrap(partial(report_views.campaign_summary_export_view, model_admin=self)),
                 name="campaigns_campaign_summary_export"),
            path("compare/", wrap(partial(report_views.campaign_compare_view, model_admin=self)),
                 name="campaigns_campaign_compare"),
            *super().get_urls(),
        ]  # fmt: skip

    def change_view(self, request, object_id, form_url="", extra_context=None):
        extra_context = {
            **(extra_context or {}),
            "can_control": request.user.has_perm("campaigns.launch_campaign"),
        }
        return super().change_view(request, object_id, form_url, extra_context)

    @admin.display(description="steps", ordering="_step_count")
    def step_count(self, obj: Campaign) -> int:
        return obj._step_count

    def has_report_permission(self, request: HttpRequest) -> bool:
        return report_views.can_view_reports(request)

    @admin.display(description="reports")
    def summary_link(self, obj: Campaign) -> str:
        return format_html(
            '<a href="{}">Summary</a>', reverse("admin:campaigns_campaign_summary", args=[obj.pk])
        )

    @admin.action(description="Compare selected campaigns", permissions=["report"])
    def compare_selected(self, request: HttpRequest, queryset: QuerySet[Campaign]):
        # Only a redirect: the comparison is a GET page with no side effect.
        ids = ",".join(str(pk) for pk in queryset.order_by("pk").values_list("pk", flat=True))
        return HttpResponseRedirect(f"{reverse('admin:campaigns_campaign_compare')}?ids={ids}")


@admin.register(CampaignStep)
class CampaignStepAdmin(admin.ModelAdmin):
    list_display = ["campaign", "position", "subject", "delay", "stop_on_reply"]
    list_filter = ["campaign"]
    search_fields = ["subject", "campaign__name"]
    list_select_related = ["campaign"]
    autocomplete_fields = ["campaign"]


@admin.register(CampaignRun)
class CampaignRunAdmin(InspectOnlyAdmin):
    list_display = [
        "__str__",
        "campaign",
        "status",
        "started_at",
        "finished_at",
        "started_by",
        "total_recipients",
        "total_filtered",
        "details_link",
    ]
    list_filter = ["status", "campaign"]
    search_fields = ["campaign__name"]
    list_select_related = ["campaign", "started_by"]
    date_hierarchy = "created"
    readonly_fields = [
        "status",
        "progress",
        "in_doubt",
        "started_at",
        "finished_at",
        "started_by",
        "error",
        "total_recipients",
        "total_filtered",
        "created",
    ]

    @admin.display(description="progress")
    def progress(self, obj: CampaignRun) -> str:
        progress = run_progress(run=obj)
        counts = ", ".join(f"{label.lower()} {n}" for label, n in progress.counts.items() if n)
        return f"{progress.percent:.0f}% ({progress.done} of {progress.total}): {counts}"

    @admin.display(description="in doubt")
    def in_doubt(self, obj: CampaignRun) -> str:
        count = messages_in_doubt().filter(run=obj).count()
        if not count:
            return "none"
        url = reverse("admin:campaigns_message_changelist")
        return format_html(
            '<a href="{}?run__id__exact={}&status__exact=sending">{} emails</a>: a worker '
            "stopped while sending them; they are not resent automatically.",
            url,
            obj.pk,
            count,
        )

    def get_urls(self) -> list:
        return [
            path(
                "<int:object_id>/terminate/",
                self.admin_site.admin_view(admin_views.run_terminate_view),
                name="campaigns_campaignrun_terminate",
            ),
            path(
                "<int:object_id>/details/",
                self.admin_site.admin_view(
                    partial(report_views.run_details_view, model_admin=self)
                ),
                name="campaigns_campaignrun_details",
            ),
            *super().get_urls(),
        ]

    @admin.display(description="details")
    def details_link(self, obj: CampaignRun) -> str:
        url = reverse("admin:campaigns_campaignrun_details", args=[obj.pk])
        return format_html('<a href="{}">Details</a>', url)

    def change_view(self, request, object_id, form_url="", extra_context=None):
        extra_context = {
            **(extra_context or {}),
            "can_control": request.user.has_perm("campaigns.launch_campaign"),
        }
        return super().change_view(request, object_id, form_url, extra_context)


class ContactSearchMixin:
    """Search of the big lists (Sent emails, Recipients): whole addresses, Message-IDs and
    names by index (selectors.search_by_contact), so a search costs the same at millions of
    rows; only when that finds nothing, Django's own search for a part of one (a scan)."""

    search_by: dict[str, str] = {}

    def get_search_results(
        self, request: HttpRequest, queryset: QuerySet, search_term: str
    ) -> tuple[QuerySet, bool]:
        found = search_by_contact(queryset, search_term, **self.search_by)
        if found is queryset or found.exists():
            return found, False
        return super().get_search_results(request, queryset, search_term)


class RecipientResultFilter(admin.SimpleListFilter):
    """What became of the recipient: the report figures' first-seen conditions
    (campaigns.reports.FIGURES), so a figure's link lists exactly the recipients it counts."""

    title = "result"
    parameter_name = "result"

    def lookups(self, request: HttpRequest, model_admin: admin.ModelAdmin) -> list[tuple[str, str]]:
        labels = {
            "attempted": "Sent (accepted or refused)",
            "clicked": "Clicked",
            "complained": "Marked as spam",
        }
        return [(value, labels.get(f.key, f.label)) for value, f in reports.RESULT_FILTER.items()]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Recipient]) -> QuerySet:
        figure = reports.RESULT_FILTER.get(self.value() or "")
        return queryset.filter(figure.q) if figure else queryset


class RecipientRejectionFilter(admin.SimpleListFilter):
    """Recipients whose emails got a rejection of a kind or category (Recipient.rejections)."""

    title = "rejection"
    parameter_name = "rejection"

    def lookups(self, request: HttpRequest, model_admin: admin.ModelAdmin) -> list[tuple[str, str]]:
        labels = {"any": "Any", "hard": "Hard (any)", "soft": "Soft (any)"}
        return [
            (value, labels.get(value, figure.label))
            for value, figure in reports.REJECTION_FILTER.items()
        ]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Recipient]) -> QuerySet:
        figure = reports.REJECTION_FILTER.get(self.value() or "")
        return queryset.filter(figure.q) if figure else queryset


class RecipientEmailNowFilter(admin.SimpleListFilter):
    title = "email now"
    parameter_name = "email_now"

    def lookups(self, request: HttpRequest, model_admin: admin.ModelAdmin) -> list[tuple[str, str]]:
        return list(reports.EMAIL_NOW_FILTER.items())

    def queryset(self, request: HttpRequest, queryset: QuerySet[Recipient]) -> QuerySet:
        if self.value() in reports.EMAIL_NOW_FILTER:
            return queryset.filter(reports.recipients_with_email_q(self.value()))
        return queryset


class RecipientSentDateFilter(admin.SimpleListFilter):
    """Recipients first emailed between two days (Recipient.first_sent_on, admin time zone):
    `?sent_date=FROM..TO` (either side may be empty), as the campaign summary's date range
    links here; the summary counts the same recipients (reports.first_emailed_q)."""

    title = "first emailed"
    parameter_name = "sent_date"

    def lookups(self, request: HttpRequest, model_admin: admin.ModelAdmin) -> list[tuple[str, str]]:
        today = timezone.localdate()
        choices = [
            (today, today, "Today"),
            (today - timedelta(days=6), today, "Past 7 days"),
            (today.replace(day=1), today, "This month"),
            (today.replace(month=1, day=1), today, "This year"),
        ]
        return [(reports.day_range_param(start, end), label) for start, end, label in choices]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Recipient]) -> QuerySet:
        days = reports.parse_day_range(self.value() or "")
        return queryset.filter(reports.first_emailed_q(*days)) if days else queryset


@admin.register(Recipient)
class RecipientAdmin(ContactSearchMixin, InspectOnlyAdmin):
    list_display = [
        "email",
        "contact",
        "run",
        "account",
        "status",
        "filter_reason",
        "last_action_at",
    ]
    list_filter = [
        "status",
        "filter_reason",
        "run__campaign",
        "account",
        "contact__owner",
        RecipientResultFilter,
        RecipientRejectionFilter,
        RecipientEmailNowFilter,
        RecipientSentDateFilter,
    ]
    search_fields = ["email", "contact__first_name", "contact__last_name"]
    search_help_text = (
        "A whole email address or a contact's name (first, last, or both) is found at once; "
        "a part of one is looked for everywhere, which takes longer."
    )

    search_by = {"recipient": "pk"}
    list_select_related = ["contact", "run__campaign", "account"]
    # Big table: a COUNT of all of it on every filtered page view is not worth its cost.
    show_full_result_count = False
    # At millions of rows, count at most CappedCountPaginator.cap of them per page.
    paginator = CappedCountPaginator
    # Should editing ever be allowed, never render a <select> over every contact or run.
    raw_id_fields = ["contact", "run"]
    readonly_fields = [
        "status",
        "filter_reason",
        "last_action_at",
        "steps_sent",
        "next_step_at",
        "delivered_at",
        "opened_at",
        "clicked_at",
        "replied_at",
        "unsubscribed_at",
        "complained_at",
        "bounced_at",
        "lead_at",
        "opportunity_at",
        "first_sent_on",
    ]
    fieldsets = [
        (None, {"fields": ["run", "contact", "email", "account"]}),
        (
            "Progress",
            {
                "fields": [
                    "status",
                    "filter_reason",
                    "first_sent_on",
                    "last_action_at",
                    "steps_sent",
                    "next_step_at",
                ]
            },
        ),
        (
            "First seen",
            {
                "fields": [
                    "delivered_at",
                    "opened_at",
                    "clicked_at",
                    "replied_at",
                    "unsubscribed_at",
                    "complained_at",
                    "bounced_at",
                    "lead_at",
                    "opportunity_at",
                ]
            },
        ),
    ]

    def get_urls(self) -> list:
        return [
            path(
                "export/",
                self.admin_site.admin_view(
                    partial(report_views.changelist_export_view, model_admin=self)
                ),
                name="campaigns_recipient_export",
            ),
            *super().get_urls(),
        ]


class RejectionCategoryFilter(admin.SimpleListFilter):
    title = "rejection"
    parameter_name = "rejection"

    def lookups(self, request: HttpRequest, model_admin: admin.ModelAdmin) -> list[tuple[str, str]]:
        kinds = [(kind, f"{label} (any category)") for kind, label in Rejection.Kind.choices]
        return kinds + list(Rejection.Category.choices)

    def queryset(self, request: HttpRequest, queryset: QuerySet[Message]) -> QuerySet:
        # The email's own flags (kept by a trigger on its rejections), not an EXISTS over
        # them: each flag's partial index lists exactly its emails in the list's order.
        bit = MESSAGE_REJECTION_FLAGS.get(self.value() or "")
        return queryset.filter(rejection_flag(bit)) if bit else queryset


class TrackingEventInline(admin.TabularInline):
    model = TrackingEvent
    fields = ["occurred_at", "type", "source", "from_status", "to_status", "is_machine", "detail"]
    readonly_fields = fields
    ordering = ["occurred_at", "id"]
    extra = 0
    can_delete = False
    show_change_link = True

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


class SentEmailsChangeList(ChangeList):
    """The Sent emails list: the latest event of each email of the page, in one query (the
    newest event per email, read from the event_message_time index), after the page is read.

    Its rows' links are written from one pattern: Django's admin reverses the change URL of
    every row and then resolves that URL again to decide how to add the list's filters to it
    (add_preserved_filters), which is a sizeable share of a page of a hundred rows. The links
    are the same: the filters are added here, in the form add_preserved_filters gives them (a
    row's URL is never the list's own), and it is given none to add a second time."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        kept = dict(parse_qsl(self.preserved_filters))
        self.preserved_filters = ""
        marker = "0"
        pattern = reverse(
            f"admin:{self.opts.app_label}_{self.opts.model_name}_change",
            args=(marker,),
            current_app=self.model_admin.admin_site.name,
        )
        start = pattern.rindex(f"/{marker}/") + 1
        self._link_head = pattern[:start]
        self._link_tail = pattern[start + len(marker) :] + (f"?{urlencode(kept)}" if kept else "")

    def url_for_result(self, result: Message) -> str:
        return f"{self._link_head}{quote(result.pk)}{self._link_tail}"

    # What the list's columns show (MessageAdmin.list_display), and nothing else: loading and
    # converting every column of seven joined tables was a third of a page's query time.
    # An export rebuilds this queryset and reads its own fields (values_list drops these).
    SHOWN = (
        "created", "status", "smtp_code", "smtp_response", "message_id",
        "recipient__email",
        "recipient__contact__first_name", "recipient__contact__last_name",
        "recipient__contact__email",
        "run__campaign__name", "step__position", "account__name",
    )  # fmt: skip

    def get_queryset(self, request: HttpRequest, exclude_parameters: Any = None) -> QuerySet:
        return super().get_queryset(request, exclude_parameters).only(*self.SHOWN)

    def get_results(self, request: HttpRequest) -> None:
        super().get_results(request)
        rows = list(self.result_list)
        prefetch_related_objects(
            rows,
            Prefetch(
                "events",
                queryset=TrackingEvent.objects.only("message_id", "occurred_at").order_by(
                    "-occurred_at", "-id"
                )[:1],
                to_attr="latest_events",
            ),
        )
        # A refusal that came after the SMTP conversation (a bounce message, an ESP's event):
        # the email's reply at sending was a 250, and the refusal is what explains its status.
        # One plain query for the page whatever its rows (a sliced Prefetch, as for the events,
        # costs a few milliseconds more to build; an email has few rejections).
        rejections = (
            Rejection.objects.filter(message_id__in=[row.pk for row in rows])
            .exclude(source=TrackingEvent.Source.SMTP)
            .only("message_id", "source", "smtp_code", "smtp_status", "diagnostic")
            .order_by("created", "id")
        )
        later = {rejection.message_id: rejection for rejection in rejections}  # the latest
        for row in rows:
            row.later_rejection = later.get(row.pk)
        self.result_list = rows


def _source_label(source: str) -> str:
    """Where a refusal came from, in a few words: "Bounce message", "Mailgun webhook"."""
    if source == TrackingEvent.Source.DSN:
        return "Bounce message"
    if source.startswith("webhook:"):
        return f"{source.removeprefix('webhook:').title()} webhook"
    return dict(TrackingEvent.Source.choices).get(source, source)


@admin.register(Message)
class MessageAdmin(ContactSearchMixin, InspectOnlyAdmin):
    """The Sent emails page."""

    list_display = [
        "contact",
        "address",
        "campaign",
        "step_position",
        "account",
        "status",
        "last_event",
        "smtp_reply",
    ]
    list_filter = [
        "status",
        "run__campaign",
        "account",
        # The email's own copy of its contact's owner (Message.owner, kept by a trigger), so
        # that with a status or rejection filter an index holds both.
        "owner",
        RejectionCategoryFilter,
        "created",
    ]
    search_fields = [
        "recipient__email",
        "recipient__contact__email",
        "recipient__contact__first_name",
        "recipient__contact__last_name",
        "message_id",
    ]
    list_select_related = ["recipient__contact", "run__campaign", "step", "account"]
    show_full_result_count = False
    # At millions of rows, count at most CappedCountPaginator.cap of them per page.
    paginator = CappedCountPaginator
    raw_id_fields = ["recipient", "run", "step"]
    # Everything here is written by the sender and the tracking state machine.
    readonly_fields = [
        "status",
        "status_changed_at",
        "attempts",
        "next_attempt_at",
        "claimed_at",
        "smtp_code",
        "smtp_status",
        "smtp_response",
        "created",
        "sent_at",
        "delivered_at",
        "opened_at",
        "clicked_at",
        "replied_at",
        "unsubscribed_at",
        "complained_at",
        "open_count",
        "click_count",
    ]
    fieldsets = [
        (None, {"fields": ["recipient", "run", "step", "account", "message_id", "esp_message_id"]}),
        (
            "Delivery",
            {
                "fields": [
                    "status",
                    "status_changed_at",
                    "attempts",
                    "next_attempt_at",
                    "claimed_at",
                    "smtp_code",
                    "smtp_status",
                    "smtp_response",
                ]
            },
        ),
        (
            "Timeline",
            {
                "fields": [
                    "created",
                    "sent_at",
                    "delivered_at",
                    "opened_at",
                    "clicked_at",
                    "replied_at",
                    "unsubscribed_at",
                    "complained_at",
                    "open_count",
                    "click_count",
                ]
            },
        ),
    ]
    inlines = [TrackingEventInline]

    search_help_text = (
        "A whole email address, a Message-ID, or a contact's name (first, last, or both) is "
        "found at once; a part of one is looked for everywhere, which takes longer."
    )

    search_by = {"recipient": "recipient", "message_id": "message_id"}

    def lookup_allowed(self, lookup: str, value: str, request: HttpRequest | None = None) -> bool:
        # A contact's emails: the link from the contact page's delivery history; and links
        # made before the owner filter read the email's own owner (same emails, by a join).
        return lookup in (
            "recipient__contact__id__exact",
            "recipient__contact__owner__id__exact",
        ) or super().lookup_allowed(lookup, value, request)

    @admin.display(description="contact", ordering="recipient__contact__last_name")
    def contact(self, obj: Message) -> str:
        contact = obj.recipient.contact
        return contact.full_name or str(contact)

    @admin.display(description="address", ordering="recipient__email")
    def address(self, obj: Message) -> str:
        return obj.recipient.email

    @admin.display(description="campaign", ordering="run__campaign__name")
    def campaign(self, obj: Message) -> str:
        return obj.run.campaign.name

    @admin.display(description="step", ordering="step__position")
    def step_position(self, obj: Message) -> int:
        return obj.step.position

    @admin.display(description="last event")
    def last_event(self, obj: Message) -> datetime | None:
        # Set by SentEmailsChangeList for the rows of the page; an email with no event yet
        # shows when it was created.
        latest = getattr(obj, "latest_events", None)
        return latest[0].occurred_at if latest else obj.created

    def get_changelist(self, request: HttpRequest, **kwargs: Any) -> type[ChangeList]:
        return SentEmailsChangeList

    def action_checkbox(self, obj: Message) -> str:
        # The markup of Django's own (a CheckboxInput rendered through the form templates, a
        # template render per row: a fifth of a page of a hundred rows), written directly.
        label = format_html(_("Select this object for an action - {}"), str(obj))
        return format_html(
            '<input type="checkbox" name="{}" value="{}" class="action-select" aria-label="{}">',
            helpers.ACTION_CHECKBOX_NAME,
            str(obj.pk),
            label,
        )

    @admin.display(description="SMTP reply", ordering="smtp_code")
    def smtp_reply(self, obj: Message) -> str:
        # The code and the server's words in one column (the email's page has them apart), so
        # that the list fits a laptop's screen beside the navigation and the filters.
        reply = f"{obj.smtp_code or ''} {obj.smtp_response}"
        later = getattr(obj, "later_rejection", None)
        if later is not None:
            # The diagnostic often starts with the code and enhanced status already.
            code, status, text = parse_smtp_reply(later.diagnostic)
            code, status = later.smtp_code or code or "", later.smtp_status or status
            reply = f"{_source_label(later.source)}: {code} {status} {text}"
        return Truncator(" ".join(reply.split())).chars(64)

    def get_urls(self) -> list:
        wrap = self.admin_site.admin_view
        return [
            path("export/", wrap(partial(report_views.changelist_export_view, model_admin=self)),
                 name="campaigns_message_export"),
            # Export jobs of either list (Sent emails, Recipients) live here.
            path("exports/<int:job_id>/",
                 wrap(partial(report_views.export_job_view, model_admin=self)),
                 name="campaigns_exportjob_status"),
            path("exports/<int:job_id>/download/",
                 wrap(partial(report_views.export_job_download_view, model_admin=self)),
                 name="campaigns_exportjob_download"),
            *super().get_urls(),
        ]  # fmt: skip
