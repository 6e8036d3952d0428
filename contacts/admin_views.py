"""Contact import pages of the admin: upload and preview, confirm, progress and result, and
the rejects file.

The forms are django-import-export's (ImportForm, ConfirmImportForm) and so are the templates
they extend; the import itself goes through ContactResource.import_file, which keeps the
file's line numbers and imports the good rows when others are bad. A file of more than
LEADCENTER_IMPORT_BACKGROUND_ROWS data rows (default 5,000) is imported by a django-q2 worker
while the job page shows its progress. Every view checks the import permissions on the
server, and a job is only visible to the person who uploaded it (and superusers).
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any, Literal

from django.conf import settings
from django.contrib import admin, messages
from django.contrib.admin.models import CHANGE, LogEntry
from django.core.exceptions import PermissionDenied
from django.db import transaction
from django.db.models import F
from django.http import FileResponse, Http404, HttpRequest, HttpResponse, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import reverse
from django.utils import timezone
from django.utils.dateparse import parse_datetime
from django.views.decorators.http import require_GET, require_POST

from contacts.forms import LiftForm
from contacts.imports import ImportJob, ImportReport, rejects_extension
from contacts.models import Contact, Suppression
from contacts.services import suppressions_lift
from contacts.tasks import contact_import_run

IMPORT_PERMISSIONS = ("contacts.add_contact", "contacts.change_contact")
# DESIGN.md: managers export, support does not; the same permission as the reports' exports.
EXPORT_PERMISSIONS = ("contacts.view_contact", "campaigns.export_reports")
PREVIEW_ROWS = 100
ERRORS_SHOWN = 200
REPORT_KINDS = ("preview", "result")
# No worker took the job, or the worker stopped reporting progress (it writes every half
# second while it works): the page says so instead of refreshing for ever.
QUEUED_TOO_LONG = timedelta(seconds=30)
SILENT_TOO_LONG = timedelta(minutes=2)


def background_rows() -> int:
    return settings.LEADCENTER_IMPORT_BACKGROUND_ROWS


def _require_import(request: HttpRequest, model_admin: admin.ModelAdmin) -> None:
    if not model_admin.has_import_permission(request):
        raise PermissionDenied


def _job_or_404(request: HttpRequest, job_id: str) -> ImportJob:
    job = ImportJob.load(job_id)
    if job is None or (job.user_id != request.user.pk and not request.user.is_superuser):
        raise Http404("No such import.")
    return job


def _job_url(job: ImportJob) -> str:
    return reverse("admin:contacts_contact_import_job", args=[job.id])


def _rejects_url(job: ImportJob, kind: str) -> str:
    return reverse("admin:contacts_contact_import_rejects", args=[job.id, kind])


def _report_context(report: ImportReport | None, job: ImportJob, kind: str) -> dict[str, Any]:
    if report is None:
        return {}
    return {
        "report": report,
        "errors_shown": report.errors[:ERRORS_SHOWN],
        "errors_hidden": max(report.error_count - ERRORS_SHOWN, 0),
        "rejects_url": _rejects_url(job, kind) if report.error_count else "",
    }


def contact_import_view(request: HttpRequest, *, model_admin: admin.ModelAdmin) -> HttpResponse:
    """Step 1: the upload form; on POST, a dry run of the whole file shown as a preview, with
    the bad rows and the confirm button for the good ones."""
    _require_import(request, model_admin)
    form = model_admin.create_import_form(request)
    context: dict[str, Any] = {}
    if request.method == "POST" and form.is_valid():
        upload = form.cleaned_data["import_file"]
        job = ImportJob.create(
            user_id=request.user.pk,
            upload=upload,
            file_name=upload.name,
            create_lists=request.user.has_perm("contacts.add_contactlist"),
        )
        resource = model_admin.choose_import_resource_class(form, request)(
            **model_admin.get_import_resource_kwargs(request, form=form)
        )
        with job.open_source() as fh:
            report = resource.import_file(
                fh,
                file_name=job.file_name,
                dry_run=True,
                preview_rows=PREVIEW_ROWS,
                create_lists=job.create_lists,
            )
        job.rows = report.rows
        job.save()
        job.save_report("preview", report)
        context.update(_report_context(report, job, "preview"))
        context["job"] = job
        context["background"] = report.rows > background_rows()
        if report.good_rows:
            # Unbound: the request's POST is the upload form's, not this one's.
            context["confirm_form"] = model_admin.get_confirm_form_class(request)(
                initial={
                    "import_file_name": job.id,
                    "original_file_name": job.file_name,
                    "format": form.cleaned_data["format"],
                    "resource": form.cleaned_data.get("resource", ""),
                }
            )
    resources = [
        cls(**model_admin.get_import_resource_kwargs(request, form=form))
        for cls in model_admin.get_import_resource_classes(request)
    ]
    context.update(
        {
            **model_admin.admin_site.each_context(request),
            "title": "Import contacts",
            "form": form,
            "opts": model_admin.model._meta,
            "media": model_admin.media + form.media,
            "fields_list": [
                (r.get_display_name(), [f.column_name for f in r.get_user_visible_fields()])
                for r in resources
            ],
            "background_rows": background_rows(),
        }
    )
    request.current_app = model_admin.admin_site.name
    return TemplateResponse(request, [model_admin.import_template_name], context)


@require_POST
def contact_import_confirm_view(
    request: HttpRequest, *, model_admin: admin.ModelAdmin
) -> HttpResponse:
    """Step 2: import the previewed file: at once when it is small, by a worker otherwise."""
    _require_import(request, model_admin)
    confirm_form = model_admin.create_confirm_form(request)
    if not confirm_form.is_valid():
        raise Http404("No such import.")
    job = _job_or_404(request, confirm_form.cleaned_data["import_file_name"])
    if job.status()["state"] != "preview":
        # Confirmed already (a double click, the back button): show what became of it.
        return HttpResponseRedirect(_job_url(job))
    if job.rows > background_rows():
        from django_q.tasks import async_task

        job.set_status("queued")
        transaction.on_commit(
            lambda: async_task(
                "contacts.tasks.contact_import_run",
                job.id,
                group="leadcenter",
                task_name=f"contact import {job.id}",
            )
        )
    else:
        contact_import_run(job.id)
    return HttpResponseRedirect(_job_url(job))


@require_GET
def contact_import_job_view(
    request: HttpRequest, job_id: str, *, model_admin: admin.ModelAdmin
) -> HttpResponse:
    """Step 3: progress while a worker imports, then the result and its rejects file."""
    _require_import(request, model_admin)
    job = _job_or_404(request, job_id)
    status = job.status()
    since = parse_datetime(status.get("at", "")) if status.get("at") else None
    context: dict[str, Any] = {
        **model_admin.admin_site.each_context(request),
        "title": f"Import of {job.file_name}",
        "opts": model_admin.model._meta,
        "job": job,
        "status": status,
        "working": status["state"] in ("queued", "running"),
        "percent": int(100 * status["done"] / status["total"]) if status.get("total") else 0,
        "stalled": since is not None
        and (
            (status["state"] == "queued" and timezone.now() - since > QUEUED_TOO_LONG)
            or (status["state"] == "running" and timezone.now() - since > SILENT_TOO_LONG)
        ),
    }
    if status["state"] == "done":
        context.update(_report_context(job.report("result"), job, "result"))
    request.current_app = model_admin.admin_site.name
    return TemplateResponse(request, "admin/contacts/contact/import_job.html", context)


@require_GET
def contact_import_rejects_view(
    request: HttpRequest,
    job_id: str,
    kind: Literal["preview", "result"],
    *,
    model_admin: admin.ModelAdmin,
) -> HttpResponse:
    """The bad rows of a preview or a result as a file to fix and import again."""
    _require_import(request, model_admin)
    job = _job_or_404(request, job_id)
    if kind not in REPORT_KINDS or (report := job.report(kind)) is None or not report.errors:
        raise Http404("No rejects file.")
    stem = job.file_name.rsplit(".", 1)[0] or "contacts"
    try:
        fh = job.storage().open(job.rejects_name(kind, report), "rb")
    except FileNotFoundError as exc:
        raise Http404("No rejects file.") from exc
    return FileResponse(
        fh, as_attachment=True, filename=f"{stem}-rejects.{rejects_extension(report)}"
    )


# --- The contact page: suppression entries and delivery history ---------------------------


def contact_page_context(request: HttpRequest, contact: Contact) -> dict[str, Any]:
    """What the contact's change page shows below its fields (support agents' page)."""
    from campaigns.selectors import HISTORY_EVENTS_PER_EMAIL, contact_delivery_history

    suppressions = (
        Suppression.objects.filter(email=contact.email.strip().lower())
        .select_related("created_by", "lifted_by")
        .order_by(F("lifted_at").desc(nulls_first=True), "-created")
        if contact.email
        else Suppression.objects.none()
    )
    return {
        "suppressions": list(suppressions),
        "can_lift": request.user.has_perm("contacts.change_suppression"),
        "lift_form": LiftForm(),
        "history": contact_delivery_history(contact.pk),
        "history_events_shown": HISTORY_EVENTS_PER_EMAIL,
        "can_view_emails": request.user.has_perm("campaigns.view_message"),
    }


@require_POST
def contact_suppression_lift_view(
    request: HttpRequest, object_id: str, suppression_id: int, *, model_admin: admin.ModelAdmin
) -> HttpResponse:
    """Lift one suppression entry of this contact, with a reason (the contact page's button)."""
    if not request.user.has_perm("contacts.change_suppression"):
        raise PermissionDenied
    contact = model_admin.get_object(request, object_id)
    if contact is None or not model_admin.has_view_or_change_permission(request, contact):
        raise Http404("No such contact.")
    entry = Suppression.objects.filter(
        pk=suppression_id, email=contact.email.strip().lower()
    ).first()
    if entry is None:
        raise Http404("No such suppression entry for this contact.")
    page = reverse("admin:contacts_contact_change", args=[contact.pk]) + "#suppressions"
    form = LiftForm(request.POST)
    if not form.is_valid():
        messages.error(request, "Say why the suppression is lifted: the reason is required.")
        return HttpResponseRedirect(page)
    lifted = suppressions_lift(
        ids=[entry.pk], by=request.user, reason=form.cleaned_data["lift_reason"]
    )
    if lifted:
        log_lifts(request, lifted)
        messages.success(
            request,
            f"Lifted the {entry.get_reason_display().lower()} suppression of {entry.email}.",
        )
    else:
        messages.warning(request, "That suppression was already lifted.")
    return HttpResponseRedirect(page)


def log_lifts(request: HttpRequest, lifted: list[Suppression]) -> None:
    if lifted:
        LogEntry.objects.log_actions(
            user_id=request.user.pk,
            queryset=lifted,
            action_flag=CHANGE,
            change_message="Lifted the suppression.",
        )
