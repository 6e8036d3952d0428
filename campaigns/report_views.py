"""Report pages of the admin: run details, campaign summary and comparison, Excel exports.

Each view is registered by a ModelAdmin's get_urls(), wrapped in admin_site.admin_view (login,
CSRF, no caching), and checks its permission itself: the reports need view permission on
campaigns and their runs (Staff, Managers; not Support), every export also
`campaigns.export_reports` (Managers). Figures come from campaigns.reports and link into the
Recipients list filtered to exactly the recipients they count. The charts are inline SVG drawn
here, with no script or outside resource.
"""

from __future__ import annotations

import re
import tempfile
from dataclasses import dataclass
from datetime import timedelta
from typing import Any
from urllib.parse import urlencode

from django.contrib import admin, messages
from django.contrib.admin.options import IncorrectLookupParameters
from django.core.exceptions import PermissionDenied
from django.core.files.storage import default_storage
from django.http import FileResponse, HttpRequest, HttpResponse, HttpResponseRedirect
from django.shortcuts import get_object_or_404
from django.template.response import TemplateResponse
from django.urls import reverse
from django.utils import timezone

from campaigns import exports, reports
from campaigns.filters import CampaignSummaryFilter
from campaigns.models import Campaign, CampaignRun, ExportJob, Recipient

EXPORT_PERMISSION = exports.EXPORT_PERMISSION


# --- permissions -----------------------------------------------------------------------------


def can_view_reports(request: HttpRequest) -> bool:
    """Reports show campaigns and their runs: Staff and Managers, not Support (who may only
    see campaign names on the Sent emails page)."""
    user = request.user
    return (
        user.is_active
        and user.is_staff
        and all(
            user.has_perm(f"campaigns.view_{model}") or user.has_perm(f"campaigns.change_{model}")
            for model in ("campaign", "campaignrun")
        )
    )


def can_export(request: HttpRequest) -> bool:
    return request.user.is_active and request.user.has_perm(EXPORT_PERMISSION)


def _require(allowed: bool) -> None:
    if not allowed:
        raise PermissionDenied


# --- links -----------------------------------------------------------------------------------


def recipients_url(*param_sets: dict[str, str]) -> str:
    params: dict[str, str] = {}
    for extra in param_sets:
        params.update(extra)
    url = _recipients_changelist()
    return f"{url}?{urlencode(params)}" if params else url


def _recipients_changelist() -> str:
    # reverse() once per URLconf and prefix: a summary builds a few hundred of these links.
    from django.urls import get_script_prefix, get_urlconf

    key = (get_urlconf(), get_script_prefix())
    if key not in _CHANGELIST_URLS:
        _CHANGELIST_URLS[key] = reverse("admin:campaigns_recipient_changelist")
    return _CHANGELIST_URLS[key]


_CHANGELIST_URLS: dict[Any, str] = {}


def _share(count: int, base: int) -> float | None:
    return 100.0 * count / base if base else None


def number(value: int) -> str:
    return f"{value:,}"


def percent(value: float | None, digits: int = 1) -> str:
    return "\u2013" if value is None else f"{value:.{digits}f}%"


# --- run details -------------------------------------------------------------------------------


@dataclass
class FigureLine:
    label: str
    count: int
    share: float | None
    url: str
    help: str = ""
    indent: int = 0
    group: str = ""  # a heading row before this line


def _run_lines(report: reports.RunReport) -> list[FigureLine]:
    run_params = {"run__id__exact": str(report.run.pk)}
    counts = report.counts
    total, emailed = counts["recipients"], report.emailed
    F = reports.FIGURES

    def line(key: str, base: int, *, label: str = "", indent: int = 0, group: str = "",
             help: str | None = None) -> FigureLine:  # fmt: skip
        figure = F[key]
        return FigureLine(
            label=label or figure.label,
            count=counts[key],
            share=_share(counts[key], base),
            url=recipients_url(run_params, figure.params),
            help=figure.help if help is None else help,
            indent=indent,
            group=group,
        )

    lines = [
        line("recipients", total, group=f"Audience: share of all {total:,} recipients"),
        line("filtered", total),
        *(
            line(f"filtered_{reason.value}", total, indent=1, help="")
            for reason in Recipient.FilterReason
        ),
        line(
            "pending",
            emailed,
            group=f"Progress and results: share of the {emailed:,} recipients emailed "
            "(not filtered)",
        ),
        line("partial", emailed),
        line(
            "sent",
            emailed,
            help="Every due step was accepted by the next mail server (our relay or the "
            "recipient's). That is not yet delivery.",
        ),
        line("delivered", emailed),
        line("opened", emailed),
        line("clicked", emailed, label="Clicked"),
        line("replied", emailed),
        line("unsubscribed", emailed),
        line("complained", emailed),
        FigureLine(
            label="Soft bounced",
            count=report.soft_bounced_now,
            share=_share(report.soft_bounced_now, emailed),
            url=recipients_url(run_params, {"email_now": "soft_bounced"}),
            help="A temporary failure; we are still trying (they count as pending).",
            group=f"Problems: share of the {emailed:,} recipients emailed",
        ),
        line("bounced", emailed),
        line("rejected_user_not_found", emailed, indent=1, help="Hard rejection."),
        line("rejected_domain_not_found", emailed, indent=1, help="Hard rejection."),
        line(
            "rejected_soft",
            emailed,
            label="Soft rejections",
            help="Refused for now: full mailbox, no answer, spam filter... Future campaigns "
            "send to them as normal.",
        ),
        *(
            line(f"rejected_{c}", emailed, indent=1, help="")
            for c in ("mailbox_full", "no_answer", "spam_blocked", "unspecified")
        ),
        line("failed", emailed),
        FigureLine(
            label="In doubt",
            count=report.in_doubt,
            share=_share(report.in_doubt, emailed),
            url=recipients_url(run_params, {"email_now": "in_doubt"}),
            help="A worker stopped while sending to them: they are never resent "
            "automatically; a person decides.",
        ),
    ]
    return lines


@dataclass
class Bar:
    label: str
    count: int
    share: float | None
    url: str
    x: float
    y: float
    width: float
    height: float
    color: str
    text_x: float

    @property
    def label_x(self) -> float:
        return self.x - 8

    @property
    def text_y(self) -> float:
        return self.y + 15


FUNNEL_WIDTH, FUNNEL_LABEL, FUNNEL_BAR, FUNNEL_ROW = 440, 84, 250, 28


def _funnel(report: reports.RunReport) -> dict[str, Any]:
    """Horizontal bars, each as wide as its share of the recipients."""
    counts = report.counts
    run_params = {"run__id__exact": str(report.run.pk)}
    F = reports.FIGURES
    not_filtered = {"status__in": "pending,partial,sent,failed"}
    steps = [
        ("Recipients", counts["recipients"], {}),
        ("Not filtered", report.emailed, not_filtered),
        ("Accepted", counts["accepted"], F["accepted"].params),
        ("Delivered", counts["delivered"], F["delivered"].params),
        ("Opened", counts["opened"], F["opened"].params),
        ("Clicked", counts["clicked"], F["clicked"].params),
        ("Replied", counts["replied"], F["replied"].params),
    ]
    colors = ["#8aa4bf", "#6f8fb0", "#417690", "#2f6f4f", "#3d8b5a", "#5aa469", "#7cbf7c"]
    top = max(counts["recipients"], 1)
    bars = []
    for i, (label, count, params) in enumerate(steps):
        width = max(FUNNEL_BAR * count / top, 1.5 if count else 0)
        bars.append(
            Bar(
                label=label,
                count=count,
                share=_share(count, counts["recipients"]),
                url=recipients_url(run_params, params),
                x=FUNNEL_LABEL,
                y=8 + i * FUNNEL_ROW,
                width=round(width, 1),
                height=FUNNEL_ROW - 8,
                color=colors[i],
                text_x=round(FUNNEL_LABEL + width + 6, 1),
            )
        )
    return {"bars": bars, "width": FUNNEL_WIDTH, "height": 16 + len(steps) * FUNNEL_ROW}


CHART_W, CHART_H, CHART_LEFT, CHART_BOTTOM, CHART_TOP = 440, 220, 36, 40, 14
COLORS = {
    "human_opens": "#417690",
    "machine_opens": "#b7cddd",
    "human_clicks": "#2f7d4f",
    "machine_clicks": "#b9dcc3",
}


def _nice_max(value: int) -> int:
    """The smallest of 1, 2, 5, 10, 20, 50, ... at or above `value`: the chart's top line."""
    for power in range(0, 12):
        for step in (1, 2, 5):
            if step * 10**power >= value:
                return step * 10**power
    return value  # pragma: no cover


def _activity_chart(activity: reports.Activity) -> dict[str, Any]:
    """Per bucket, two stacked bars: opens (person, then machine on top) and clicks."""
    buckets = activity.buckets
    if not buckets:
        return {}
    plot_w = CHART_W - CHART_LEFT - 10
    plot_h = CHART_H - CHART_BOTTOM - CHART_TOP
    peak = _nice_max(max(activity.peak, 1))
    slot = plot_w / len(buckets)
    bar_w = max(min(slot * 0.38, 18), 0.8)
    base_y = CHART_TOP + plot_h
    rects, labels = [], []
    label_every = max(1, -(-len(buckets) // 5))
    for i, bucket in enumerate(buckets):
        x0 = CHART_LEFT + i * slot + (slot - 2 * bar_w) / 2
        for j, (kind, noun) in enumerate((("opens", "opens"), ("clicks", "clicks"))):
            y = base_y
            for who in ("human", "machine"):
                value = getattr(bucket, f"{who}_{kind}")
                if not value:
                    continue
                h = plot_h * value / peak
                y -= h
                rects.append(
                    {
                        "x": round(x0 + j * bar_w, 2),
                        "y": round(y, 2),
                        "w": round(bar_w, 2),
                        "h": round(h, 2),
                        "color": COLORS[f"{who}_{kind}"],
                        "title": f"{bucket.label}: {value} {noun} by "
                        f"{'people' if who == 'human' else 'machines'}",
                    }
                )
        if i % label_every == 0:
            labels.append({"x": round(CHART_LEFT + i * slot + slot / 2, 1), "text": bucket.label})
    ticks = [{"y": round(base_y - plot_h * f, 1), "value": round(peak * f)} for f in (0, 0.5, 1)]
    return {
        "width": CHART_W,
        "height": CHART_H,
        "left": CHART_LEFT,
        "tick_x": CHART_LEFT - 6,
        "right": CHART_W - 10,
        "base_y": base_y,
        "label_y": base_y + 16,
        "rects": rects,
        "labels": labels,
        "ticks": ticks,
        "unit": activity.unit,
        "totals": activity.totals(),
        "colors": COLORS,
    }


def run_details_view(
    request: HttpRequest, object_id: int, model_admin: admin.ModelAdmin
) -> HttpResponse:
    run = get_object_or_404(
        CampaignRun.objects.select_related("campaign", "started_by"), pk=object_id
    )
    _require(model_admin.has_view_permission(request, run))
    report = reports.run_report(run=run)
    finished = run.finished_at or (timezone.now() if run.started_at else None)
    context = {
        **model_admin.admin_site.each_context(request),
        "opts": CampaignRun._meta,
        "original": run,
        "title": f"Run #{run.pk} of {run.campaign}",
        "report": report,
        "lines": _run_lines(report),
        "funnel": _funnel(report),
        "chart": _activity_chart(report.activity),
        "duration": _duration(finished - run.started_at) if finished and run.started_at else "",
        "progress_percent": f"{report.progress.percent:.1f}",
        "progress_width": f"{min(report.progress.percent, 100):.1f}",
        "summary_url": reverse("admin:campaigns_campaign_summary", args=[run.campaign_id])
        + f"?run={run.pk}",
        "can_view_campaigns": can_view_reports(request),
    }
    return TemplateResponse(request, "admin/campaigns/campaignrun/details.html", context)


def _duration(delta: timedelta) -> str:
    seconds = int(delta.total_seconds())
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, seconds = divmod(rest, 60)
    if days:
        return f"{days} d {hours} h"
    if hours:
        return f"{hours} h {minutes} min"
    return f"{minutes} min {seconds} s"


# --- campaign summary ------------------------------------------------------------------------


def _summary(request: HttpRequest, object_id: int, model_admin: admin.ModelAdmin):
    _require(can_view_reports(request))
    campaign = get_object_or_404(Campaign, pk=object_id)
    _require(model_admin.has_view_permission(request, campaign))
    filterset = CampaignSummaryFilter(request.GET or None, campaign=campaign)
    scope = filterset.scope() if filterset.is_bound and filterset.is_valid() else (
        reports.SummaryScope(campaign=campaign)
    )  # fmt: skip
    return campaign, filterset, scope, reports.campaign_summary(scope)


def campaign_summary_view(
    request: HttpRequest, object_id: int, model_admin: admin.ModelAdmin
) -> HttpResponse:
    campaign, filterset, scope, sections = _summary(request, object_id, model_admin)
    scope_params = scope.recipient_params()
    rendered = []
    for section in sections:
        params = dict(scope_params)
        if section.owner_key is not None:
            params.update(reports.owner_params(section.owner_key))
        elif scope.owner_key is not None:
            params.update(reports.owner_params(scope.owner_key))
        rendered.append(
            {
                "section": section,
                "rows": [
                    {
                        "row": row,
                        "url": recipients_url(params, row.figure.params),
                        "count": number(row.count),
                        "percent": percent(row.percent),
                    }
                    for row in section.rows
                ],
                "recipients": section.counts["recipients"],
                "recipients_url": recipients_url(params),
            }
        )
    query = request.GET.urlencode()
    context = {
        **model_admin.admin_site.each_context(request),
        "opts": Campaign._meta,
        "original": campaign,
        "title": f"Summary of {campaign}" + (f", run #{scope.run.pk}" if scope.run else ""),
        "filterset": filterset,
        "scope": scope,
        "sections": rendered,
        "sent_help": reports.FIGURES["attempted"].help,
        "can_export": can_export(request),
        "export_url": reverse("admin:campaigns_campaign_summary_export", args=[campaign.pk])
        + (f"?{query}" if query else ""),
        "compare_url": reverse("admin:campaigns_campaign_compare") + f"?ids={campaign.pk}",
    }
    return TemplateResponse(request, "admin/campaigns/campaign/summary.html", context)


def campaign_summary_export_view(
    request: HttpRequest, object_id: int, model_admin: admin.ModelAdmin
) -> HttpResponse:
    """The summary as on the page, as an Excel file (a download: GET, nothing changes)."""
    _require(can_export(request))
    _campaign, _filterset, scope, sections = _summary(request, object_id, model_admin)
    fh = tempfile.TemporaryFile()
    exports.summary_export_write(sections, scope, fh)
    fh.seek(0)
    return FileResponse(
        fh, as_attachment=True, filename=exports.summary_filename(scope), content_type=exports.XLSX
    )


# --- comparison ------------------------------------------------------------------------------

COMPARE_MAX = 12
_ID = re.compile(r"[0-9]{1,18}")


def _ids(request: HttpRequest) -> list[int]:
    ids: list[int] = []
    for value in request.GET.getlist("ids"):
        for part in value.split(","):
            part = part.strip()
            # ASCII digits that fit a 64-bit id: str.isdigit() also takes "²", which int()
            # refuses, and a longer number overflows the database's integer (both were 500s).
            if _ID.fullmatch(part) and int(part) not in ids:
                ids.append(int(part))
    return ids[:COMPARE_MAX]


def campaign_compare_view(request: HttpRequest, model_admin: admin.ModelAdmin) -> HttpResponse:
    _require(can_view_reports(request) and model_admin.has_view_permission(request))
    ids = _ids(request)
    found = Campaign.objects.in_bulk(ids)
    campaigns = [found[pk] for pk in ids if pk in found]
    comparisons = reports.campaigns_compare(campaigns=campaigns)
    rows = []
    for key, label, _keys, help_text in reports.RATES:
        values = [c.rates[key] for c in comparisons]
        top = max([v for v in values if v is not None] or [0])
        cells = []
        for comparison, value in zip(comparisons, values, strict=True):
            cells.append(
                {
                    "value": value,
                    "width": f"{(100 * value / top) if value and top else 0:.1f}",
                    "warning": key == "spam" and comparison.spam_warning,
                }
            )
        rows.append({"key": key, "label": label, "help": help_text, "cells": cells})
    context = {
        **model_admin.admin_site.each_context(request),
        "opts": Campaign._meta,
        "title": "Compare campaigns",
        "comparisons": [
            {
                "comparison": c,
                "summary_url": reverse("admin:campaigns_campaign_summary", args=[c.campaign.pk]),
                "sent_url": recipients_url(
                    {"run__campaign__id__exact": str(c.campaign.pk)},
                    reports.FIGURES["attempted"].params,
                ),
            }
            for c in comparisons
        ],
        "rows": rows,
        "spam_warning": reports.SPAM_RATE_WARNING,
        "choices": Campaign.objects.order_by("-created")[:50] if not campaigns else [],
        "changelist_url": reverse("admin:campaigns_campaign_changelist"),
    }
    return TemplateResponse(request, "admin/campaigns/campaign/compare.html", context)


# --- list exports ----------------------------------------------------------------------------


def changelist_export_view(request: HttpRequest, model_admin: admin.ModelAdmin) -> HttpResponse:
    """Export the list exactly as filtered (the query string is the changelist's own). Up to
    EXPORT_SYNC_MAX_ROWS rows: the file, at once (GET, a download). More: a page offering to
    have a worker write it, which is a POST (it creates a job)."""
    _require(can_export(request) and model_admin.has_view_permission(request))
    spec = exports.LIST_EXPORTS[model_admin.model]
    changelist_url = reverse(
        f"admin:{model_admin.opts.app_label}_{model_admin.opts.model_name}_changelist"
    )
    query = request.GET.urlencode()
    try:
        changelist, queryset = exports.changelist_queryset(model_admin, request)
    except IncorrectLookupParameters:
        messages.error(request, "These filters cannot be exported; choose them again.")
        return HttpResponseRedirect(changelist_url)
    total = changelist.result_count
    if request.method == "POST":
        job = exports.export_job_create(kind=spec.kind, query=query, total=total, user=request.user)
        return HttpResponseRedirect(reverse("admin:campaigns_exportjob_status", args=[job.pk]))
    if total > exports.EXPORT_SYNC_MAX_ROWS:
        context = {
            **model_admin.admin_site.each_context(request),
            "opts": model_admin.opts,
            "title": f"Export {total:,} {spec.title.lower()} to Excel",
            "total": total,
            "limit": exports.EXPORT_SYNC_MAX_ROWS,
            "query": query,
            "changelist_url": changelist_url + (f"?{query}" if query else ""),
        }
        return TemplateResponse(request, "admin/campaigns/export_confirm.html", context)
    fh = tempfile.TemporaryFile()
    exports.list_export_write(spec, queryset, fh)
    fh.seek(0)
    return FileResponse(
        fh, as_attachment=True, filename=exports.export_filename(spec), content_type=exports.XLSX
    )


def _job(request: HttpRequest, job_id: int) -> ExportJob:
    _require(can_export(request))
    job = get_object_or_404(ExportJob.objects.select_related("requested_by"), pk=job_id)
    # The file holds what one person filtered; it is theirs (and a superuser's).
    _require(job.requested_by_id == request.user.pk or request.user.is_superuser)
    return job


def export_job_view(
    request: HttpRequest, job_id: int, model_admin: admin.ModelAdmin
) -> HttpResponse:
    job = _job(request, job_id)
    model, spec = exports.BY_KIND[job.kind]
    opts = model._meta
    context = {
        **model_admin.admin_site.each_context(request),
        "opts": opts,
        "title": f"Excel export of {spec.title.lower()}",
        "job": job,
        "spec": spec,
        "percent": f"{min(job.percent, 100):.0f}",
        "changelist_url": reverse(f"admin:{opts.app_label}_{opts.model_name}_changelist")
        + (f"?{job.query}" if job.query else ""),
        "refresh": job.status in (ExportJob.Status.QUEUED, ExportJob.Status.RUNNING),
    }
    return TemplateResponse(request, "admin/campaigns/export_job.html", context)


def export_job_download_view(
    request: HttpRequest, job_id: int, model_admin: admin.ModelAdmin
) -> HttpResponse:
    job = _job(request, job_id)
    if job.status != ExportJob.Status.DONE or not job.file:
        return HttpResponseRedirect(reverse("admin:campaigns_exportjob_status", args=[job.pk]))
    name = job.file.rsplit("/", 1)[-1].split("-", 1)[-1]
    return FileResponse(
        default_storage.open(job.file, "rb"),
        as_attachment=True,
        filename=name,
        content_type=exports.XLSX,
    )
