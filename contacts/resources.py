"""The django-import-export resource for contacts: the columns of a contact file, both ways.

Export goes through django-import-export as usual (the admin rebuilds the filtered changelist
queryset), with every cell neutralised against spreadsheet formulas. Import goes through
`contacts.imports`, which keeps the file's line numbers, imports the good rows when others are
bad and writes in bulk; `import_file` is what the admin, the background task and
`manage.py import_contacts` call, and `import_data` keeps django-import-export's own API
(its `import` command, a Dataset) on the same rules.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import IO, Any

import tablib
from django.contrib.auth import get_user_model
from django.core.exceptions import ValidationError
from django.db.models import QuerySet
from import_export import fields, resources, widgets
from import_export.exceptions import ImportError as ImportExportError
from import_export.formats import base_formats
from import_export.results import Error, Result, RowResult

from contacts.imports import (
    COLUMNS,
    FileError,
    ImportReport,
    Progress,
    RowPlan,
    TableSource,
    cell_text,
    contacts_import,
    parse_flag,
)
from contacts.models import Contact, ContactList, Topic
from leadcenter.spreadsheets import safe_cell

EXPORT_COLUMNS = (*COLUMNS, "email_status")


class RowRejected(Exception):
    """A bad row, as django-import-export's row errors carry it."""


class FlagWidget(widgets.Widget):
    """A consent flag as yes/no; reads every spelling the import accepts."""

    def clean(self, value: Any, row: Any = None, **kwargs: Any) -> bool | None:
        return parse_flag(cell_text(value))

    def render(self, value: Any, obj: Any = None, **kwargs: Any) -> str:
        return "yes" if value else "no"


class XLSXWriteOnly(base_formats.XLSX):
    """XLSX export in openpyxl's write-only mode: a large export streams its rows instead of
    holding an object per cell (tablib's own XLSX writer does that)."""

    def export_data(self, dataset: tablib.Dataset, **kwargs: Any) -> bytes:
        import io

        import openpyxl

        book = openpyxl.Workbook(write_only=True)
        sheet = book.create_sheet(dataset.title or "Contacts")
        sheet.append(dataset.headers or [])
        for row in dataset:
            sheet.append(list(row))
        out = io.BytesIO()
        book.save(out)
        return out.getvalue()


def _names_widget(model: type) -> widgets.ManyToManyWidget:
    # "; " is what CRMs write for multi-value fields, and what the import splits on first.
    return widgets.ManyToManyWidget(model, field="name", separator="; ")


class ContactResource(resources.ModelResource):
    owner = fields.Field(
        attribute="owner",
        column_name="owner",
        widget=widgets.ForeignKeyWidget(get_user_model(), field=get_user_model().USERNAME_FIELD),
    )
    do_not_email = fields.Field(
        attribute="do_not_email", column_name="do_not_email", widget=FlagWidget()
    )
    do_not_mass_email = fields.Field(
        attribute="do_not_mass_email", column_name="do_not_mass_email", widget=FlagWidget()
    )
    unsubscribed = fields.Field(column_name="unsubscribed", widget=FlagWidget())
    lists = fields.Field(attribute="lists", column_name="lists", widget=_names_widget(ContactList))
    opted_out_topics = fields.Field(
        attribute="opted_out_topics",
        column_name="opted_out_topics",
        widget=_names_widget(Topic),
    )
    # Export only: the import leaves the address status to the delivery pipeline.
    email_status = fields.Field(attribute="email_status", column_name="email_status", readonly=True)

    class Meta:
        model = Contact
        fields = EXPORT_COLUMNS
        export_order = EXPORT_COLUMNS
        import_id_fields = ("email",)
        chunk_size = 2000
        name = "Contacts"

    # --- export ----------------------------------------------------------------------------

    def filter_export(self, queryset: QuerySet[Contact], **kwargs: Any) -> QuerySet[Contact]:
        # One query per chunk for owners, lists and topics, not one per contact.
        return queryset.select_related("owner").prefetch_related("lists", "opted_out_topics")

    def get_user_visible_fields(self) -> list[fields.Field]:
        # What the import page lists: the columns an import reads, not the export-only ones.
        return [f for f in super().get_user_visible_fields() if f.column_name in COLUMNS]

    def dehydrate_unsubscribed(self, contact: Contact) -> str:
        return "yes" if contact.unsubscribed_at else "no"

    def export_field(self, field: fields.Field, instance: Contact, **kwargs: Any) -> Any:
        return safe_cell(super().export_field(field, instance, **kwargs))

    # --- import ----------------------------------------------------------------------------

    def import_file(
        self,
        fh: IO[bytes],
        *,
        file_name: str = "",
        default_owner_id: int | None = None,
        list_name: str = "",
        dry_run: bool = False,
        progress: Progress | None = None,
        preview_rows: int = 0,
        on_plan: Callable[[RowPlan], None] | None = None,
        create_lists: bool = True,
    ) -> ImportReport:
        """Import a CSV or XLSX file (binary, seekable); see `contacts.imports`."""
        return contacts_import(
            fh=fh,
            file_name=file_name,
            default_owner_id=default_owner_id,
            list_name=list_name,
            dry_run=dry_run,
            progress=progress,
            preview_rows=preview_rows,
            on_plan=on_plan,
            create_lists=create_lists,
        )

    def import_data(
        self,
        dataset: tablib.Dataset,
        dry_run: bool = False,
        raise_errors: bool = False,
        use_transactions: bool | None = None,
        collect_failed_rows: bool = False,
        rollback_on_validation_errors: bool = False,
        **kwargs: Any,
    ) -> Result:
        """django-import-export's entry point, on the same rules as a file import.

        Good rows are imported; each bad row is both an invalid row (its reason as a
        validation error) and an error of the result, so django-import-export's own `import`
        command prints it rather than passing over it. With `raise_errors` or
        `rollback_on_validation_errors` nothing is written when a row is bad, as
        django-import-export promises. A Dataset has lost the file's blank lines, so row
        numbers count data rows (the first is 2).
        """
        headers = list(dataset.headers or [])

        def run(dry: bool) -> ImportReport:
            return contacts_import(
                source=TableSource(headers, dataset),
                file_name=str(kwargs.get("file_name") or ""),
                dry_run=dry,
                preview_rows=100,
            )

        all_or_nothing = raise_errors or rollback_on_validation_errors
        report = run(True) if all_or_nothing or dry_run else run(False)
        if all_or_nothing and not dry_run and not (report.fatal or report.errors):
            report = run(False)
        if raise_errors and (report.fatal or report.errors):
            first = report.errors[0] if report.errors else None
            raise ImportExportError(
                report.fatal or first.reason,  # type: ignore[union-attr]
                number=first.line if first else None,
            )
        result = self.get_result_class()()
        result.diff_headers = list(EXPORT_COLUMNS)
        result.total_rows = report.rows
        result.report = report  # the full report, for callers that know it
        if report.fatal:
            result.append_base_error(Error(FileError(report.fatal)))
        written = not (dry_run or (all_or_nothing and report.errors))
        result.totals[RowResult.IMPORT_TYPE_NEW] = report.created if written else 0
        result.totals[RowResult.IMPORT_TYPE_UPDATE] = report.updated if written else 0
        result.totals[RowResult.IMPORT_TYPE_SKIP] = report.unchanged if written else 0
        result.totals[RowResult.IMPORT_TYPE_INVALID] = report.error_count
        if collect_failed_rows:
            result.add_dataset_headers(headers)
        for reject in report.errors:
            values = dict(zip(headers, reject.cells, strict=False))
            error = ValidationError(reject.reason)
            result.append_invalid_row(reject.line, values, error)
            # Also an error of the whole result, so has_errors() is true and
            # django-import-export's `import` command prints the line and its reason.
            result.append_base_error(
                Error(RowRejected(f"line {reject.line}: {reject.reason}"), number=reject.line)
            )
            if collect_failed_rows:
                result.append_failed_row(values, error)
        for plan in report.preview:
            row_result = self.get_row_result_class()()
            row_result.import_type = {
                "create": RowResult.IMPORT_TYPE_NEW,
                "update": RowResult.IMPORT_TYPE_UPDATE,
                "unchanged": RowResult.IMPORT_TYPE_SKIP,
            }[plan.action]
            row_result.object_repr = plan.email or plan.name
            result.append_row_result(row_result)
        return result
