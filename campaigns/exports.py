"""Excel exports: the campaign summary, and the Sent emails and Recipients lists as filtered.

openpyxl in write-only mode: rows stream to a temporary file as they are read from a server-side
cursor (`QuerySet.iterator`), so memory stays flat whatever the number of rows. Every sheet has a
bold, frozen header row with an autofilter, number and percentage formats and set column widths;
dates are written as dates, naive, in the admin's time zone. Every text cell goes through
`leadcenter.spreadsheets.safe_cell`, so a contact named "=HYPERLINK(...)" stays text.

A list export gives exactly what the person was looking at: its queryset is rebuilt from the
changelist's own query string by the changelist itself (`get_changelist_instance`), as
django-import-export does. Above EXPORT_SYNC_MAX_ROWS rows, a worker writes it
(`export_job_run`, enqueued as "campaigns.exports.export_job_run").
"""

from __future__ import annotations

import logging
import re
import tempfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import IO, Any

from django.contrib import admin
from django.core.files import File
from django.core.files.storage import default_storage
from django.db import connections, transaction
from django.db.models import OuterRef, QuerySet, Subquery
from django.http import HttpRequest, QueryDict
from django.utils import timezone
from openpyxl import Workbook
from openpyxl.cell import WriteOnlyCell
from openpyxl.styles import Alignment, Font
from openpyxl.utils import get_column_letter
from openpyxl.utils.exceptions import IllegalCharacterError

from campaigns import reports
from campaigns.models import REJECTION_BITS, ExportJob, Message, Recipient
from leadcenter.spreadsheets import FORMULA_TRIGGERS, safe_cell
from tracking.models import Rejection

logger = logging.getLogger(__name__)

EXPORT_PERMISSION = "campaigns.export_reports"
# Above this many rows a list export is written by a worker, not in the request.
EXPORT_SYNC_MAX_ROWS = 50_000
CHUNK_SIZE = 2_000
PROGRESS_EVERY = 5_000
JOB_FILES_KEPT_DAYS = 7
XLSX = "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"

COUNT_FORMAT = "#,##0"
PERCENT_FORMAT = "0.0%"
# Characters XML 1.0 cannot hold (openpyxl refuses them); an SMTP reply may carry one.
_ILLEGAL = re.compile(r"[\000-\010]|[\013-\014]|[\016-\037]")
_TRIGGERS = (*FORMULA_TRIGGERS, "'")


@dataclass(frozen=True)
class Column:
    title: str
    width: float
    # text; number (General: ids, codes); date (openpyxl's date format); count; percent
    kind: str = "text"


def _text(value: str) -> str:
    """A text cell: inert if a spreadsheet would run it, and free of XML-illegal characters."""
    if value and value[0] in _TRIGGERS:
        value = safe_cell(value)
    if _ILLEGAL.search(value):
        value = _ILLEGAL.sub("", value)
    return value


def _naive(value: datetime, zone: Any) -> datetime:
    return value.astimezone(zone).replace(tzinfo=None)


def sheet_title(title: str, taken: set[str]) -> str:
    """A valid, unique worksheet name (31 characters, none of []:*?/\\)."""
    cleaned = re.sub(r"[\[\]:*?/\\]", " ", title).strip().strip("'") or "Sheet"
    base = cleaned[:31]
    candidate, n = base, 2
    while candidate.lower() in taken:
        suffix = f" ({n})"
        candidate = base[: 31 - len(suffix)] + suffix
        n += 1
    taken.add(candidate.lower())
    return candidate


def write_table(
    workbook: Workbook,
    title: str,
    columns: Sequence[Column],
    rows: Iterable[Sequence[Any]],
    *,
    taken: set[str] | None = None,
    progress: Callable[[int], None] | None = None,
) -> int:
    """One sheet: a bold frozen header, then the rows as given (already converted), an
    autofilter over all of them. Returns the number of rows written."""
    ws = workbook.create_sheet(sheet_title(title, taken if taken is not None else set()))
    ws.freeze_panes = "A2"
    for index, column in enumerate(columns, 1):
        ws.column_dimensions[get_column_letter(index)].width = column.width
    bold = Font(bold=True)
    header = []
    for column in columns:
        cell = WriteOnlyCell(ws, value=column.title)
        cell.font = bold
        cell.alignment = Alignment(vertical="top", wrap_text=True)
        header.append(cell)
    ws.append(header)
    formats = {
        i: {"count": COUNT_FORMAT, "percent": PERCENT_FORMAT}[c.kind]
        for i, c in enumerate(columns)
        if c.kind in ("count", "percent")
    }
    styled = _Styler(ws, formats)
    written = 0
    for row in rows:
        ws.append(styled(row))
        written += 1
        if progress and written % PROGRESS_EVERY == 0:
            progress(written)
    ws.auto_filter.ref = f"A1:{get_column_letter(len(columns))}{written + 1}"
    return written


class _Styler:
    """Gives count and percentage cells their format (a styled cell each). Dates need nothing:
    openpyxl gives a datetime a date format by itself; codes and ids stay General."""

    def __init__(self, ws: Any, formats: dict[int, str]) -> None:
        self.ws = ws
        self.formats = formats

    def __call__(self, row: Sequence[Any]) -> Sequence[Any]:
        if not self.formats:
            return row
        row = list(row)
        for i, number_format in self.formats.items():
            value = row[i]
            if value is not None and not isinstance(value, str):
                cell = WriteOnlyCell(self.ws, value=value)
                cell.number_format = number_format
                row[i] = cell
        return row


def _save(workbook: Workbook, fh: IO[bytes]) -> None:
    try:
        workbook.save(fh)
    except IllegalCharacterError:  # pragma: no cover - every text cell is cleaned first
        logger.exception("export cell with an illegal character")
        raise


# --- list exports --------------------------------------------------------------------------


@dataclass(frozen=True)
class ListExport:
    """How one changelist is exported: its columns, the values read per row, and the row
    built from them."""

    kind: str
    title: str
    filename: str
    columns: list[Column]
    fields: list[str]
    build: Callable[[tuple, Any], list[Any]]
    annotate: Callable[[QuerySet], QuerySet] = lambda qs: qs


def _name(first: str | None, last: str | None) -> str:
    return f"{first or ''} {last or ''}".strip()


def _owner(first: str | None, last: str | None, username: str | None) -> str:
    return _name(first, last) or (username or "")


MESSAGE_STATUS = dict(Message.Status.choices)
RECIPIENT_STATUS = dict(Recipient.Status.choices)
FILTER_REASON = dict(Recipient.FilterReason.choices)
CATEGORY = dict(Rejection.Category.choices)


def _dates(values: tuple, start: int, end: int, zone: Any) -> list[Any]:
    return [_naive(v, zone) if v is not None else None for v in values[start:end]]


def _message_row(v: tuple, zone: Any) -> list[Any]:
    return [
        _text(_name(v[0], v[1])),
        _text(v[2]),
        _text(v[3] or ""),
        _text(_owner(v[4], v[5], v[6])),
        _text(v[7]),
        v[8],
        v[9],
        _text(v[10] or ""),
        MESSAGE_STATUS.get(v[11], v[11]),
        CATEGORY.get(v[12], "") if v[12] else "",
        v[13],
        _text(v[14]),
        _text(v[15]),
        v[16],
        *_dates(v, 17, 25, zone),
        v[25],
        v[26],
        _text(v[27]),
    ]


def _latest_rejection(qs: QuerySet) -> QuerySet:
    latest = Rejection.objects.filter(message=OuterRef("pk")).order_by("-created", "-pk")
    return qs.annotate(_rejection=Subquery(latest.values("category")[:1]))


MESSAGES = ListExport(
    kind="messages",
    title="Sent emails",
    filename="sent-emails",
    columns=[
        Column("Contact", 24),
        Column("Email", 30),
        Column("Company", 22),
        Column("Owner", 18),
        Column("Campaign", 24),
        Column("Run", 7, "number"),
        Column("Step", 6, "number"),
        Column("Account", 16),
        Column("Status", 13),
        Column("Rejection", 24),
        Column("SMTP code", 7, "number"),
        Column("Enhanced status", 10),
        Column("SMTP reply", 40),
        Column("Attempts", 9, "number"),
        Column("Created", 17, "date"),
        Column("Sent", 17, "date"),
        Column("Delivered", 17, "date"),
        Column("Opened", 17, "date"),
        Column("Clicked", 17, "date"),
        Column("Replied", 17, "date"),
        Column("Unsubscribed", 17, "date"),
        Column("Marked as spam", 17, "date"),
        Column("Opens", 7, "number"),
        Column("Clicks", 7, "number"),
        Column("Message-ID", 40),
    ],
    fields=[
        "recipient__contact__first_name",
        "recipient__contact__last_name",
        "recipient__email",
        "recipient__contact__company",
        "recipient__contact__owner__first_name",
        "recipient__contact__owner__last_name",
        "recipient__contact__owner__username",
        "run__campaign__name",
        "run_id",
        "step__position",
        "account__name",
        "status",
        "_rejection",
        "smtp_code",
        "smtp_status",
        "smtp_response",
        "attempts",
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
        "message_id",
    ],
    build=_message_row,
    annotate=_latest_rejection,
)


def rejection_labels(mask: int) -> str:
    return ", ".join(CATEGORY[c] for c, bit in REJECTION_BITS.items() if mask & bit)


def _recipient_row(v: tuple, zone: Any) -> list[Any]:
    return [
        _text(_name(v[0], v[1])),
        _text(v[2]),
        _text(v[3] or ""),
        _text(_owner(v[4], v[5], v[6])),
        _text(v[7]),
        v[8],
        _text(v[9] or ""),
        RECIPIENT_STATUS.get(v[10], v[10]),
        FILTER_REASON.get(v[11], "") if v[11] else "",
        v[12],
        rejection_labels(v[13]) if v[13] else "",
        *_dates(v, 14, 24, zone),
    ]


RECIPIENTS = ListExport(
    kind="recipients",
    title="Recipients",
    filename="recipients",
    columns=[
        Column("Contact", 24),
        Column("Email", 30),
        Column("Company", 22),
        Column("Owner", 18),
        Column("Campaign", 24),
        Column("Run", 7, "number"),
        Column("Account", 16),
        Column("Status", 10),
        Column("Filter reason", 22),
        Column("Steps sent", 8, "number"),
        Column("Rejections", 26),
        Column("Last action", 17, "date"),
        Column("Delivered", 17, "date"),
        Column("Opened", 17, "date"),
        Column("Clicked", 17, "date"),
        Column("Replied", 17, "date"),
        Column("Unsubscribed", 17, "date"),
        Column("Marked as spam", 17, "date"),
        Column("Bounced", 17, "date"),
        Column("Became a lead", 17, "date"),
        Column("Became an opportunity", 17, "date"),
    ],
    fields=[
        "contact__first_name",
        "contact__last_name",
        "email",
        "contact__company",
        "contact__owner__first_name",
        "contact__owner__last_name",
        "contact__owner__username",
        "run__campaign__name",
        "run_id",
        "account__name",
        "status",
        "filter_reason",
        "steps_sent",
        "rejections",
        "last_action_at",
        "delivered_at",
        "opened_at",
        "clicked_at",
        "replied_at",
        "unsubscribed_at",
        "complained_at",
        "bounced_at",
        "lead_at",
        "opportunity_at",
    ],
    build=_recipient_row,
)

LIST_EXPORTS: dict[type, ListExport] = {Message: MESSAGES, Recipient: RECIPIENTS}
BY_KIND: dict[str, tuple[type, ListExport]] = {e.kind: (m, e) for m, e in LIST_EXPORTS.items()}


def list_rows(spec: ListExport, queryset: QuerySet) -> Iterator[list[Any]]:
    """The export's rows, read in chunks from a server-side cursor, in the list's order."""
    zone = timezone.get_current_timezone()
    values = spec.annotate(queryset).values_list(*spec.fields)
    build = spec.build
    with _one_pass_read(queryset.db):
        for row in values.iterator(chunk_size=CHUNK_SIZE):
            yield build(row, zone)


@contextmanager
def _one_pass_read(alias: str) -> Iterator[None]:
    """On PostgreSQL, read in one transaction (one snapshot) without JIT: compiling the plan
    of a query with this many joins takes seconds and never pays back on a single pass. (Not on
    SQLite, where a transaction here would take the write lock for the whole export.)"""
    connection = connections[alias]
    if connection.vendor != "postgresql":
        yield
        return
    with transaction.atomic(using=alias):
        with connection.cursor() as cursor:
            cursor.execute("SET LOCAL jit = off")
        yield


def list_export_write(
    spec: ListExport,
    queryset: QuerySet,
    fh: IO[bytes],
    *,
    progress: Callable[[int], None] | None = None,
) -> int:
    workbook = Workbook(write_only=True)
    written = write_table(
        workbook, spec.title, spec.columns, list_rows(spec, queryset), progress=progress
    )
    _save(workbook, fh)
    return written


def export_filename(spec: ListExport) -> str:
    return f"{spec.filename}-{timezone.localtime():%Y-%m-%d-%H%M}.xlsx"


def changelist_queryset(
    model_admin: admin.ModelAdmin, request: HttpRequest
) -> tuple[Any, QuerySet]:
    """The changelist as the person sees it (filters, search, ordering; every page), and its
    queryset: the ChangeList is built from the request exactly as the list page builds it."""
    changelist = model_admin.get_changelist_instance(request)
    return changelist, changelist.get_queryset(request)


# --- summary export ------------------------------------------------------------------------

SUMMARY_COLUMNS = [
    Column("Figure", 34),
    Column("Count", 11, "count"),
    Column("% of Sent", 11, "percent"),
]


def summary_export_write(
    sections: list[reports.SummarySection], scope: reports.SummaryScope, fh: IO[bytes]
) -> None:
    """The summary as on the page: a "Summary" sheet with one row per section (overall first,
    then each record owner) and a column per figure, then one sheet per section laid out as the
    page shows it (figure, count, % of Sent), and an "About" sheet saying what was selected."""
    workbook = Workbook(write_only=True)
    taken: set[str] = set()
    keys = [key for key, _indent in reports.SUMMARY_ROWS]
    flat_columns = [Column("Section", 24)]
    for key in keys:
        label = reports.FIGURES[key].label
        flat_columns.append(Column(label, max(10, len(label) + 2), "count"))
        if key != "attempted":
            flat_columns.append(Column(f"{label} %", max(10, len(label) + 4), "percent"))

    def flat(section: reports.SummarySection) -> list[Any]:
        row: list[Any] = [_text(section.title)]
        for summary_row in section.rows:
            row.append(summary_row.count)
            if summary_row.figure.key != "attempted":
                row.append(_fraction(summary_row.percent))
        return row

    write_table(workbook, "Summary", flat_columns, (flat(s) for s in sections), taken=taken)
    for section in sections:
        rows = (
            [_text("    " * r.indent + r.label), r.count, _fraction(r.percent)]
            for r in section.rows
        )
        write_table(workbook, section.title, SUMMARY_COLUMNS, rows, taken=taken)
    about = [
        ["Campaign", _text(scope.campaign.name)],
        ["Run", f"#{scope.run.pk}" if scope.run else "All runs"],
        ["Owner", _text(_owner_label(scope, sections))],
        ["First emailed from", scope.sent_from],
        ["First emailed to", scope.sent_to],
        *([["Date range", reports.DATE_RANGE_HELP]] if scope.dated else []),
        ["Written", timezone.localtime().replace(tzinfo=None, microsecond=0)],
        ["Sent", reports.FIGURES["attempted"].help],
        ["Counts", "Each count is a number of contacts (recipients); % is of Sent."],
    ]
    write_table(workbook, "About", [Column("", 14), Column("", 80)], about, taken=taken)
    _save(workbook, fh)


def _fraction(percent: float | None) -> float | None:
    return None if percent is None else percent / 100.0


def _owner_label(scope: reports.SummaryScope, sections: list[reports.SummarySection]) -> str:
    if scope.owner_key is None:
        return "All owners"
    titles = [s.title for s in sections if s.owner_key == scope.owner_key]
    return titles[0] if titles else ("No owner" if scope.owner_key == reports.NO_OWNER else "-")


def summary_filename(scope: reports.SummaryScope) -> str:
    base = re.sub(r"[^A-Za-z0-9]+", "-", scope.campaign.name).strip("-").lower() or "campaign"
    run = f"-run-{scope.run.pk}" if scope.run else ""
    return f"summary-{base}{run}-{timezone.localdate():%Y-%m-%d}.xlsx"


# --- export jobs (large list exports) --------------------------------------------------------


def export_job_create(*, kind: str, query: str, total: int, user: Any) -> ExportJob:
    """A job for a worker; enqueued once the transaction commits. Old jobs' files go."""
    export_jobs_prune()
    job = ExportJob.objects.create(kind=kind, query=query, total=total, requested_by=user)

    def enqueue() -> None:
        from django_q.tasks import async_task

        async_task("campaigns.exports.export_job_run", job.pk, group="leadcenter-exports")

    transaction.on_commit(enqueue)
    return job


def export_jobs_prune(*, days: int = JOB_FILES_KEPT_DAYS) -> int:
    cutoff = timezone.now() - timezone.timedelta(days=days)
    old = list(ExportJob.objects.filter(created__lt=cutoff))
    for job in old:
        if job.file and default_storage.exists(job.file):
            default_storage.delete(job.file)
    ExportJob.objects.filter(pk__in=[job.pk for job in old]).delete()
    return len(old)


def replay_request(*, user: Any, query: str) -> HttpRequest:
    """The changelist request a job was asked from, rebuilt for a worker."""
    request = HttpRequest()
    request.method = "GET"
    request.GET = QueryDict(query)
    request.user = user
    request.META["SERVER_NAME"] = "worker"
    request.META["SERVER_PORT"] = "80"
    return request


def export_job_run(job_id: int) -> None:
    """The django-q2 task: write a large list export to the default storage. Idempotent: a
    finished job is left alone; a job started by a worker that died starts over."""
    job = ExportJob.objects.select_related("requested_by").filter(pk=job_id).first()
    if job is None or job.status in (ExportJob.Status.DONE, ExportJob.Status.FAILED):
        return
    ExportJob.objects.filter(pk=job.pk).update(status=ExportJob.Status.RUNNING, progress=0)
    try:
        model, spec = BY_KIND[job.kind]
        model_admin = admin.site._registry[model]
        request = replay_request(user=job.requested_by, query=job.query)
        # The person may have lost the permission since asking.
        if not (
            job.requested_by.is_active
            and job.requested_by.has_perm(EXPORT_PERMISSION)
            and model_admin.has_view_permission(request)
        ):
            raise PermissionError("no longer allowed to export this list")
        _changelist, queryset = changelist_queryset(model_admin, request)

        def progress(rows: int) -> None:
            ExportJob.objects.filter(pk=job.pk).update(progress=rows)

        with tempfile.TemporaryFile() as tmp:
            written = list_export_write(spec, queryset, tmp, progress=progress)
            tmp.seek(0)
            name = default_storage.save(f"exports/{job.pk}-{export_filename(spec)}", File(tmp))
        ExportJob.objects.filter(pk=job.pk).update(
            status=ExportJob.Status.DONE,
            progress=written,
            total=written,
            file=name,
            finished_at=timezone.now(),
        )
    except Exception as exc:
        logger.exception("export job %s failed", job_id)
        ExportJob.objects.filter(pk=job.pk).update(
            status=ExportJob.Status.FAILED, error=str(exc)[:1000], finished_at=timezone.now()
        )
        raise
