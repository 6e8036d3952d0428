from __future__ import annotations

from functools import partial
from typing import Any

from django import forms
from django.contrib import admin, messages
from django.contrib.admin import helpers
from django.contrib.admin.utils import unquote
from django.db.models import Count, QuerySet
from django.http import HttpRequest, HttpResponse
from django.template.response import TemplateResponse
from django.urls import path
from import_export.admin import ImportExportMixin
from import_export.formats.base_formats import CSV, XLSX

from contacts import admin_views
from contacts.admin_views import log_lifts
from contacts.forms import LiftForm
from contacts.models import Contact, ContactList, Suppression, Topic
from contacts.resources import ContactResource, XLSXWriteOnly
from contacts.services import suppressions_lift


@admin.register(Topic)
class TopicAdmin(admin.ModelAdmin):
    list_display = ["name", "description"]
    search_fields = ["name"]


@admin.register(ContactList)
class ContactListAdmin(admin.ModelAdmin):
    list_display = ["name", "description", "contact_count", "created"]
    search_fields = ["name"]
    readonly_fields = ["created"]

    def get_queryset(self, request: HttpRequest) -> QuerySet[ContactList]:
        # One grouped query for the whole page instead of a COUNT per row.
        return super().get_queryset(request).annotate(_contact_count=Count("contacts"))

    @admin.display(description="contacts", ordering="_contact_count")
    def contact_count(self, obj: ContactList) -> int:
        return obj._contact_count


class SoftBounceReviewFilter(admin.SimpleListFilter):
    """Contacts whose mail keeps failing softly (3 or more soft rejections in 30 days): their
    address is not marked invalid, but a person should look (issue #4)."""

    title = "repeated soft bounces (30 days)"
    parameter_name = "soft_bounces"

    def lookups(self, request: HttpRequest, model_admin: admin.ModelAdmin) -> list[tuple[str, str]]:
        return [("review", "3 or more: to review")]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Contact]) -> QuerySet:
        from tracking.selectors import contacts_with_repeated_soft_bounces

        if self.value() == "review":
            return queryset.filter(pk__in=contacts_with_repeated_soft_bounces())
        return queryset


@admin.register(Contact)
class ContactAdmin(ImportExportMixin, admin.ModelAdmin):
    list_display = [
        "email",
        "first_name",
        "last_name",
        "company",
        "owner",
        "stage",
        "email_status",
        "do_not_email",
        "do_not_mass_email",
        "unsubscribed_at",
    ]
    list_filter = [
        "email_status",
        "do_not_email",
        "do_not_mass_email",
        "stage",
        "owner",
        "lists",
        SoftBounceReviewFilter,
    ]
    search_fields = ["email", "first_name", "last_name", "company"]
    list_select_related = ["owner"]
    autocomplete_fields = ["owner", "lists", "opted_out_topics"]
    # Written by the delivery pipeline (hard rejections, unsubscribes) or by the stage change
    # itself; a person changes the flags, not the record of when they changed.
    readonly_fields = [
        "invalid_at",
        "unsubscribed_at",
        "lead_at",
        "opportunity_at",
        "created",
        "updated",
    ]
    fieldsets = [
        (None, {"fields": ["email", "first_name", "last_name", "company", "owner"]}),
        ("Address status", {"fields": ["email_status", "invalid_reason", "invalid_at"]}),
        (
            "Consent",
            {
                "fields": [
                    "do_not_email",
                    "do_not_mass_email",
                    "unsubscribed_at",
                    "opted_out_topics",
                ]
            },
        ),
        ("Stage", {"fields": ["stage", "lead_at", "opportunity_at"]}),
        ("Lists", {"fields": ["lists"]}),
        ("Record", {"fields": ["created", "updated"]}),
    ]
    # Support agents change a contact's consent flags and address, not its record.
    RECORD_FIELDS = ["first_name", "last_name", "company", "owner", "stage", "lists"]

    def get_readonly_fields(self, request: HttpRequest, obj: Contact | None = None) -> list[str]:
        readonly = list(super().get_readonly_fields(request, obj))
        if not request.user.has_perm("contacts.add_contact"):
            readonly += self.RECORD_FIELDS
        return readonly

    # Import and export (django-import-export; the import pages are in admin_views).
    resource_classes = [ContactResource]
    import_formats = [CSV, XLSX]
    export_formats = [CSV, XLSXWriteOnly]
    # A BOM, or Excel on Windows reads a UTF-8 CSV as Windows-1252 and garbles the names.
    to_encoding = "utf-8-sig"
    import_template_name = "admin/contacts/contact/import.html"
    change_form_template = "admin/contacts/contact/change_form.html"

    def has_import_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perms(admin_views.IMPORT_PERMISSIONS)

    def has_export_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perms(admin_views.EXPORT_PERMISSIONS)

    def get_urls(self) -> list:
        wrap = self.admin_site.admin_view
        return [
            path("<path:object_id>/suppressions/<int:suppression_id>/lift/",
                 wrap(partial(admin_views.contact_suppression_lift_view, model_admin=self)),
                 name="contacts_contact_lift_suppression"),
            path("import/<str:job_id>/",
                 wrap(partial(admin_views.contact_import_job_view, model_admin=self)),
                 name="contacts_contact_import_job"),
            path("import/<str:job_id>/<str:kind>-rejects/",
                 wrap(partial(admin_views.contact_import_rejects_view, model_admin=self)),
                 name="contacts_contact_import_rejects"),
            *super().get_urls(),
        ]  # fmt: skip

    def change_view(
        self,
        request: HttpRequest,
        object_id: str,
        form_url: str = "",
        extra_context: dict[str, Any] | None = None,
    ) -> HttpResponse:
        # Below the fields: the contact's suppression entries and its delivery history.
        contact = self.get_object(request, unquote(object_id))
        if contact is not None and self.has_view_or_change_permission(request, contact):
            extra_context = {
                **admin_views.contact_page_context(request, contact),
                **(extra_context or {}),
            }
        return super().change_view(request, object_id, form_url, extra_context)

    def import_action(self, request: HttpRequest, **kwargs: Any) -> HttpResponse:
        return admin_views.contact_import_view(request, model_admin=self)

    def process_import(self, request: HttpRequest, **kwargs: Any) -> HttpResponse:
        return admin_views.contact_import_confirm_view(request, model_admin=self)


class ActiveSuppressionFilter(admin.SimpleListFilter):
    title = "state"
    parameter_name = "active"

    def lookups(self, request: HttpRequest, model_admin: admin.ModelAdmin) -> list[tuple[str, str]]:
        return [("yes", "Active"), ("no", "Lifted")]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Suppression]) -> QuerySet:
        if self.value() == "yes":
            return queryset.filter(lifted_at__isnull=True)
        if self.value() == "no":
            return queryset.filter(lifted_at__isnull=False)
        return queryset


class SuppressionForm(forms.ModelForm):
    class Meta:
        model = Suppression
        fields = ["email", "reason", "source", "note", "lift_reason"]

    def clean_email(self) -> str:
        # The table is lower-case only (a check constraint) so audience preparation can join on
        # it; normalise here rather than let the constraint refuse a typed capital.
        return self.cleaned_data["email"].strip().lower()

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean()
        # Django skips the "one active entry per address and reason" constraint here because
        # lifted_at is not a form field; without this check the insert fails with a 500.
        if (
            self.instance.pk is None
            and Suppression.objects.filter(
                email=cleaned.get("email"), reason=cleaned.get("reason"), lifted_at__isnull=True
            ).exists()
        ):
            raise forms.ValidationError("This address is already suppressed for this reason.")
        return cleaned


@admin.register(Suppression)
class SuppressionAdmin(admin.ModelAdmin):
    form = SuppressionForm
    list_display = [
        "email",
        "reason",
        "source",
        "created",
        "created_by",
        "is_active",
        "lifted_at",
        "lifted_by",
    ]
    list_filter = [ActiveSuppressionFilter, "reason"]
    search_fields = ["email"]
    list_select_related = ["created_by", "lifted_by"]
    date_hierarchy = "created"
    readonly_fields = ["created", "created_by", "lifted_at", "lifted_by"]
    fieldsets = [
        (None, {"fields": ["email", "reason", "source", "note", "created", "created_by"]}),
        ("Lifted", {"fields": ["lifted_at", "lifted_by", "lift_reason"]}),
    ]
    actions = ["lift_suppressions"]

    def get_readonly_fields(self, request: HttpRequest, obj: Suppression | None = None) -> list:
        fields = list(super().get_readonly_fields(request, obj))
        if obj is not None:
            # An entry is history: what was blocked and why stays as recorded; lift it instead.
            fields += ["email", "reason", "source"]
        return fields

    def save_model(self, request: HttpRequest, obj: Suppression, form, change: bool) -> None:
        if not change:
            obj.created_by = request.user
            obj.source = obj.source or "admin"
        super().save_model(request, obj, form, change)

    @admin.display(boolean=True, description="active", ordering="lifted_at")
    def is_active(self, obj: Suppression) -> bool:
        return obj.is_active

    @admin.action(description="Lift selected suppressions", permissions=["change"])
    def lift_suppressions(
        self, request: HttpRequest, queryset: QuerySet[Suppression]
    ) -> HttpResponse | None:
        """Asks for the reason first (an intermediate page), then lifts the active entries."""
        form = LiftForm(request.POST if "confirm" in request.POST else None)
        if form.is_valid():
            lifted = suppressions_lift(
                ids=queryset.values_list("pk", flat=True),
                by=request.user,
                reason=form.cleaned_data["lift_reason"],
            )
            log_lifts(request, lifted)
            self.message_user(
                request,
                f"Lifted {len(lifted)} suppression{'s' if len(lifted) != 1 else ''}.",
                messages.SUCCESS,
            )
            return None
        return TemplateResponse(
            request,
            "admin/contacts/suppression/lift_confirm.html",
            {
                **self.admin_site.each_context(request),
                "title": "Lift suppressions",
                "opts": self.model._meta,
                "entries": queryset.order_by("email", "reason"),
                "form": form,
                "action_checkbox_name": helpers.ACTION_CHECKBOX_NAME,
            },
        )
