"""Excel exports: the summary as on the page, the Sent emails and Recipients lists exactly as
filtered, formulas kept inert, large exports written by a worker with their progress, and
`manage.py export_summary`."""

from __future__ import annotations

import io
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from django.core.management import call_command
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone
from django_q.models import OrmQ
from openpyxl import load_workbook

from campaigns import exports, reports
from campaigns.models import ExportJob, Message, Recipient
from campaigns.tests.test_reports import figure_links, send_mixed_run, summary_url
from contacts.models import Contact
from leadcenter.factories import UserFactory

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _media_in_tmp(settings, tmp_path):
    # Export jobs write their files to the default storage: keep them out of the project.
    settings.MEDIA_ROOT = tmp_path / "media"


@pytest.fixture
def scenario(smtp_server, make_campaign, add_contacts):
    # Contacts whose names a spreadsheet would run as formulas.
    add_contacts(
        "formula1@example.test", first_name='=HYPERLINK("http://evil.test","x")', last_name=""
    )
    add_contacts("formula2@example.test", first_name="+1", last_name="-2", company="@SUM(A1)")
    add_contacts("formula3@example.test", first_name="Tab", last_name="\t=1+1", company="\rReturn")
    return send_mixed_run(make_campaign, add_contacts)


def workbook(response):
    assert response.status_code == 200
    assert response["Content-Type"] == exports.XLSX
    assert "attachment" in response["Content-Disposition"]
    return load_workbook(io.BytesIO(b"".join(response.streaming_content)))


def table(sheet) -> tuple[list[str], list[list]]:
    rows = [list(row) for row in sheet.iter_rows(values_only=True)]
    return rows[0], rows[1:]


def export_url(model: str, query: str = "") -> str:
    url = reverse(f"admin:campaigns_{model}_export")
    return f"{url}?{query}" if query else url


def changelist(client, model: str, query: str):
    response = client.get(reverse(f"admin:campaigns_{model}_changelist") + f"?{query}")
    assert response.status_code == 200
    return response.context["cl"]


# --- the summary ---------------------------------------------------------------------------------


def test_the_summary_export_is_the_page_overall_then_each_owner(manager_client, scenario):
    page = manager_client.get(summary_url(scenario.campaign))
    sections = [item["section"] for item in page.context["sections"]]

    book = workbook(manager_client.get(page.context["export_url"]))

    assert book.sheetnames == ["Summary", "Overall", "Ann Archer", "Bob Baker", "No owner", "About"]
    header, rows = table(book["Summary"])
    assert header[0] == "Section"
    assert [row[0] for row in rows] == [s.title for s in sections]
    for section, flat in zip(sections, rows, strict=True):
        sheet_header, sheet_rows = table(book[section.title])
        assert sheet_header == ["Figure", "Count", "% of Sent"]
        assert [r[0].strip() for r in sheet_rows] == [r.label for r in section.rows]
        for page_row, (_label, count, share) in zip(section.rows, sheet_rows, strict=True):
            assert count == page_row.count
            expected = None if page_row.percent is None else page_row.percent / 100
            assert share == pytest.approx(expected)
        assert flat[1] == section.counts["attempted"]
    # Every count on the page is in the file.
    page_counts = sorted(
        int(n)
        for _u, label, n in figure_links(page.content.decode())
        if not label.endswith(": Recipients")
    )
    file_counts = sorted(r[1] for s in sections for r in table(book[s.title])[1])
    assert file_counts == page_counts


def test_the_summary_export_follows_the_pages_filters(manager_client, scenario):
    query = f"run={scenario.run.pk}&owner={scenario.ann.pk}"
    page = manager_client.get(summary_url(scenario.campaign, query))

    assert f"?{query}" in page.context["export_url"]
    book = workbook(manager_client.get(page.context["export_url"]))

    assert book.sheetnames == ["Summary", "Overall", "Ann Archer", "About"]
    about = dict(table(book["About"])[1])
    assert about["Run"] == f"#{scenario.run.pk}"
    assert about["Owner"] == "Ann Archer"


def test_the_summary_sheets_are_formatted(manager_client, scenario):
    book = workbook(manager_client.get(reverse(
        "admin:campaigns_campaign_summary_export", args=[scenario.campaign.pk])))  # fmt: skip

    for name in ("Summary", "Overall"):
        sheet = book[name]
        assert sheet.freeze_panes == "A2"
        assert sheet["A1"].font.b
        assert (
            sheet.auto_filter.ref
            == f"A1:{sheet.cell(1, sheet.max_column).column_letter}{sheet.max_row}"
        )
        assert sheet.column_dimensions["A"].width >= 20
    overall = book["Overall"]
    assert overall["B2"].number_format == "#,##0"
    assert overall["C3"].number_format == "0.0%"


def test_manage_py_export_summary_writes_the_same_workbook(manager_client, scenario, tmp_path):
    view = workbook(manager_client.get(reverse(
        "admin:campaigns_campaign_summary_export", args=[scenario.campaign.pk])))  # fmt: skip
    by_name, by_run = tmp_path / "by-name.xlsx", tmp_path / "by-run.xlsx"

    call_command("export_summary", "--campaign", "Spring launch", "-o", str(by_name))
    call_command("export_summary", "--run", str(scenario.run.pk), "-o", str(by_run))

    command = load_workbook(by_name)
    assert command.sheetnames == view.sheetnames
    for name in view.sheetnames[:-1]:  # "About" says when it was written
        assert table(command[name]) == table(view[name])
    run_book = load_workbook(by_run)
    assert dict(table(run_book["About"])[1])["Run"] == f"#{scenario.run.pk}"
    assert table(run_book["Overall"]) == table(view["Overall"])  # the campaign has one run


def test_manage_py_export_summary_refuses_an_unknown_campaign(db, tmp_path):
    from django.core.management import CommandError

    with pytest.raises(CommandError, match="No campaign"):
        call_command("export_summary", "--campaign", "Nope", "-o", str(tmp_path / "x.xlsx"))


# --- list exports ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "query",
    [
        "",
        "status__exact=bounced",
        "status__exact=sent&run__id__exact={run}",
        "recipient__contact__owner__id__exact={bob}",
        "owner__id__exact={bob}",
        "owner__id__exact={bob}&status__exact=bounced",
        "owner__id__exact={bob}&rejection=soft",
        "rejection=mailbox_full",
        "q=ok1",
        "o=-2",
    ],
)
def test_the_sent_emails_export_has_exactly_the_rows_of_the_filtered_list(
    manager_client, scenario, query
):
    query = query.format(run=scenario.run.pk, bob=scenario.bob.pk)
    cl = changelist(manager_client, "message", query)
    expected = [m.message_id for m in cl.queryset]

    book = workbook(manager_client.get(export_url("message", query)))

    header, rows = table(book["Sent emails"])
    assert header[0] == "Contact" and header[-1] == "Message-ID"
    assert [row[-1] for row in rows] == expected  # the same rows, in the list's order
    assert len(rows) == cl.result_count


def test_the_sent_emails_export_values(manager_client, scenario, settings):
    settings.TIME_ZONE = "Europe/Paris"
    book = workbook(manager_client.get(export_url("message", "q=user-unknown")))

    header, [row] = table(book["Sent emails"])
    values = dict(zip(header, row, strict=True))
    message = Message.objects.select_related("recipient__contact__owner").get(
        recipient__email="user-unknown@example.test"
    )
    assert values["Email"] == "user-unknown@example.test"
    assert values["Owner"] == "Ann Archer"
    assert values["Campaign"] == "Spring launch"
    assert values["Status"] == "Bounced"
    assert values["Rejection"] == "User not found"
    assert values["SMTP code"] == 550
    assert values["Enhanced status"] == "5.1.1"
    # A date as a date, naive, in the admin's time zone.
    local = message.created.astimezone(ZoneInfo("Europe/Paris")).replace(tzinfo=None)
    assert isinstance(values["Created"], datetime)
    assert abs(values["Created"] - local) < timedelta(milliseconds=1)
    sheet = book["Sent emails"]
    assert sheet.freeze_panes == "A2" and sheet["A1"].font.b
    assert sheet.auto_filter.ref == f"A1:Y{sheet.max_row}"
    created_cell = sheet.cell(2, header.index("Created") + 1)
    assert created_cell.is_date


def test_the_recipients_export_has_exactly_the_rows_of_the_filtered_list(manager_client, scenario):
    query = f"run__id__exact={scenario.run.pk}&rejection=soft&contact__owner__id__exact={scenario.bob.pk}"
    cl = changelist(manager_client, "recipient", query)

    book = workbook(manager_client.get(export_url("recipient", query)))

    header, rows = table(book["Recipients"])
    assert [row[1] for row in rows] == [r.email for r in cl.queryset]
    assert len(rows) == cl.result_count == 2
    values = dict(zip(header, rows[0], strict=True))
    assert (
        "No answer from email server" in values["Rejections"]
        or "Mailbox full" in values["Rejections"]
    )


def test_every_figure_of_the_summary_exports_its_recipients(manager_client, scenario):
    html = manager_client.get(summary_url(scenario.campaign)).content.decode()
    for url, label, count in figure_links(html)[:6]:
        query = url.split("?", 1)[1]
        book = workbook(manager_client.get(export_url("recipient", query)))
        assert len(table(book["Recipients"])[1]) == count, label


def test_formulas_in_contact_fields_stay_inert_text(manager_client, scenario):
    for model, sheet_name in (("message", "Sent emails"), ("recipient", "Recipients")):
        book = workbook(manager_client.get(export_url(model, "q=formula")))
        sheet = book[sheet_name]
        cells = [cell for row in sheet.iter_rows(min_row=2) for cell in row]
        texts = [c.value for c in cells if isinstance(c.value, str)]
        assert '\'=HYPERLINK("http://evil.test","x")' in texts
        assert "'+1 -2" in texts
        assert "'@SUM(A1)" in texts
        assert "Tab \t=1+1" in texts  # not at the start: nothing to run
        assert "'\nReturn" in texts  # (a CR reads back as LF)
        # Not one cell is a formula, nor text a spreadsheet would take for one.
        assert all(c.data_type != "f" for c in cells)
        assert not [t for t in texts if t.startswith(("=", "+", "-", "@", "\t", "\r", "\n"))]


def test_an_xml_illegal_character_in_a_reply_does_not_break_the_export(manager_client, scenario):
    Message.objects.filter(recipient__email="ok9@example.test").update(
        smtp_response="250 ok\x07\x1b queued"  # (PostgreSQL text cannot hold NUL)
    )
    book = workbook(manager_client.get(export_url("message", "q=ok9")))

    header, [row] = table(book["Sent emails"])
    assert row[header.index("SMTP reply")] == "250 ok queued"


def test_an_export_with_filters_the_list_refuses_goes_back_to_the_list(manager_client, scenario):
    response = manager_client.get(export_url("message", "nonsense__field=1"))

    assert response.status_code == 302
    assert response["Location"] == reverse("admin:campaigns_message_changelist")


def test_the_export_queries_do_not_grow_with_rows(manager_client, scenario):
    with CaptureQueriesContext(__import__("django.db").db.connection) as few:
        workbook(manager_client.get(export_url("message", "q=ok1")))
    with CaptureQueriesContext(__import__("django.db").db.connection) as many:
        book = workbook(manager_client.get(export_url("message", "q=ok")))
    assert len(table(book["Sent emails"])[1]) > 1
    assert len(many) == len(few)


# --- large exports: a worker writes them -------------------------------------------------------------


def test_a_large_export_asks_first_then_a_worker_writes_it_with_its_progress(
    manager_client, manager_user, scenario, monkeypatch, django_capture_on_commit_callbacks
):
    monkeypatch.setattr(exports, "EXPORT_SYNC_MAX_ROWS", 5)
    monkeypatch.setattr(exports, "PROGRESS_EVERY", 4)
    query = f"run__id__exact={scenario.run.pk}"
    expected = [m.message_id for m in changelist(manager_client, "message", query).queryset]

    # GET changes nothing: it only offers the background export.
    page = manager_client.get(export_url("message", query))
    assert page.status_code == 200
    assert "Prepare the Excel file" in page.content.decode()
    assert not ExportJob.objects.exists()

    with django_capture_on_commit_callbacks(execute=True):
        response = manager_client.post(export_url("message", query))
    job = ExportJob.objects.get()
    assert response.status_code == 302
    assert response["Location"] == reverse("admin:campaigns_exportjob_status", args=[job.pk])
    assert (job.kind, job.query, job.total, job.status) == (
        "messages",
        query,
        len(expected),
        "queued",
    )
    assert job.requested_by == manager_user
    [task] = OrmQ.objects.all()
    assert task.task["func"] == "campaigns.exports.export_job_run"
    assert task.task["args"] == (job.pk,)
    status = manager_client.get(response["Location"])
    assert status.context["refresh"]
    assert f"0 of {len(expected)} rows" in status.content.decode()

    exports.export_job_run(job.pk)  # what the worker does

    job.refresh_from_db()
    assert job.status == ExportJob.Status.DONE and job.progress == job.total == len(expected)
    status = manager_client.get(reverse("admin:campaigns_exportjob_status", args=[job.pk]))
    assert not status.context["refresh"]
    assert "Download the Excel file" in status.content.decode()
    download = manager_client.get(reverse("admin:campaigns_exportjob_download", args=[job.pk]))
    _header, rows = table(workbook(download)["Sent emails"])
    assert [row[-1] for row in rows] == expected

    exports.export_job_run(job.pk)  # a task may run twice: the finished file is kept
    job.refresh_from_db()
    assert job.status == ExportJob.Status.DONE


def test_a_job_is_refused_when_its_requester_lost_the_export_permission(manager_user, scenario):
    job = ExportJob.objects.create(kind="recipients", query="", total=1, requested_by=manager_user)
    manager_user.groups.clear()

    with pytest.raises(PermissionError):
        exports.export_job_run(job.pk)

    job.refresh_from_db()
    assert job.status == ExportJob.Status.FAILED
    assert "no longer allowed" in job.error


def test_another_managers_export_file_is_not_theirs_to_download(
    manager_client, manager_user, roles, scenario
):
    from django.contrib.auth.models import Group
    from django.test import Client

    job = ExportJob.objects.create(kind="recipients", query="", total=1, requested_by=manager_user)
    exports.export_job_run(job.pk)
    other = UserFactory(username="other-manager", is_staff=True)
    other.groups.add(Group.objects.get(name="Managers"))
    client = Client()
    client.force_login(other)

    assert (
        client.get(reverse("admin:campaigns_exportjob_download", args=[job.pk])).status_code == 403
    )
    assert (
        manager_client.get(reverse("admin:campaigns_exportjob_download", args=[job.pk])).status_code
        == 200
    )


def test_old_export_files_are_removed(manager_user, scenario):
    from django.core.files.storage import default_storage

    job = ExportJob.objects.create(kind="recipients", query="", total=1, requested_by=manager_user)
    exports.export_job_run(job.pk)
    job.refresh_from_db()
    assert default_storage.exists(job.file)
    ExportJob.objects.filter(pk=job.pk).update(created=timezone.now() - timedelta(days=8))

    assert exports.export_jobs_prune() == 1

    assert not default_storage.exists(job.file)
    assert not ExportJob.objects.exists()


def test_a_list_export_reports_its_progress_as_it_writes(scenario):
    seen: list[int] = []
    with io.BytesIO() as fh:
        written = exports.list_export_write(
            exports.MESSAGES, Message.objects.order_by("pk"), fh, progress=seen.append
        )
    assert written == Message.objects.count() == 18
    assert seen == [5_000 * n for n in range(1, written // 5_000 + 1)] == []


def test_a_job_writes_its_progress_every_so_many_rows(manager_user, scenario, monkeypatch):
    monkeypatch.setattr(exports, "PROGRESS_EVERY", 4)
    job = ExportJob.objects.create(kind="messages", query="", total=18, requested_by=manager_user)
    updates: list[int] = []
    real = exports.list_export_write

    def watched(spec, queryset, fh, *, progress=None):
        def spy(rows: int) -> None:
            progress(rows)
            updates.append(ExportJob.objects.get(pk=job.pk).progress)

        return real(spec, queryset, fh, progress=spy)

    monkeypatch.setattr(exports, "list_export_write", watched)
    exports.export_job_run(job.pk)

    assert updates == [4, 8, 12, 16]
    job.refresh_from_db()
    assert (job.status, job.progress, job.total) == ("done", 18, 18)


def test_recipient_rejection_labels(db):
    assert exports.rejection_labels(0) == ""
    assert exports.rejection_labels(1 | 16) == "User not found, Email blocked by spam filter"


def test_the_export_counts_match_the_counters(manager_client, scenario):
    """The recipients behind the summary's Sent figure, exported, are as many as it says."""
    sent = reports.run_counts(run=scenario.run)["attempted"]
    book = workbook(
        manager_client.get(export_url("recipient", f"run__id__exact={scenario.run.pk}&result=sent"))
    )
    assert len(table(book["Recipients"])[1]) == sent
    assert Recipient.objects.filter(reports.FIGURES["attempted"].q).count() == sent
    assert Contact.objects.filter(email__startswith="formula").count() == 3
