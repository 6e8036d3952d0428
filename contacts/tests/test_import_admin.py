"""The admin's contact import: upload, preview, confirm, progress, result, rejects file; real
POSTs through the test client, as a browser sends them."""

from __future__ import annotations

import io
import json
from pathlib import Path

import openpyxl
import pytest
from django.contrib.auth.models import Permission
from django.core.files.uploadedfile import SimpleUploadedFile
from django.urls import reverse
from django_q.conf import Conf
from django_q.models import OrmQ

from contacts.imports import ImportJob
from contacts.models import Contact
from leadcenter.factories import ContactFactory, UserFactory

pytestmark = pytest.mark.django_db

IMPORT_URL = reverse("admin:contacts_contact_import")
CONFIRM_URL = reverse("admin:contacts_contact_process_import")
CHANGELIST_URL = reverse("admin:contacts_contact_changelist")

MESSY = (
    "\ufeffEmail;First Name;Owner;Do Not Email;Fax\r\n"
    "ann@example.com;Ann;;yes;1\r\n"
    "\r\n"
    "ANN@example.com;Ann again;;;\r\n"
    "bob@@example.com;Bob;;;\r\n"
    "carl@example.com;Carl;nobody;;\r\n"
    "dora@example.com;=1+2;;;\r\n"
    "erin@example.com;Erin;;maybe;\r\n"
)


@pytest.fixture(autouse=True)
def _media_root(settings, tmp_path):
    # Jobs keep their files in the default storage; each test gets its own.
    settings.MEDIA_ROOT = tmp_path / "media"


def upload(client, content: bytes | str, name: str = "contacts.csv"):
    data = content.encode() if isinstance(content, str) else content
    return client.post(
        IMPORT_URL,
        {"import_file": SimpleUploadedFile(name, data), "format": "0", "resource": "0"},
    )


def confirm(client, preview):
    form = preview.context["confirm_form"]
    return client.post(CONFIRM_URL, {name: form.initial[name] for name in form.fields})


def test_the_upload_form_lists_the_columns(superuser_client):
    response = superuser_client.get(IMPORT_URL)

    assert response.status_code == 200
    assert "email, first_name, last_name, company, owner, stage" in response.text


def test_a_messy_file_is_previewed_then_confirmed_and_its_bad_rows_downloaded(
    superuser_client, tmp_path
):
    preview = upload(superuser_client, MESSY)

    assert preview.status_code == 200
    report = preview.context["report"]
    assert (report.created, report.error_count, report.dry_run) == (2, 4, True)
    assert [(e.line, e.reason) for e in report.errors] == [
        (4, "duplicate: the same address as line 2"),
        (5, "'bob@@example.com' is not a valid email address"),
        (6, "unknown owner 'nobody' (no user with that username or email)"),
        (8, "do_not_email: 'maybe' is not yes/no, true/false, 1/0, y/n or blank"),
    ]
    assert "Import 2 good rows, skip 4 bad" in preview.text
    assert "Columns ignored (unknown): Fax." in preview.text
    assert not Contact.objects.exists()  # a preview writes nothing

    done = confirm(superuser_client, preview)

    job_url = done["Location"]
    assert done.status_code == 302
    result = superuser_client.get(job_url)
    assert result.context["status"]["state"] == "done"
    assert (result.context["report"].created, result.context["report"].error_count) == (2, 4)
    assert "Download the bad rows" in result.text
    assert sorted(Contact.objects.values_list("email", flat=True)) == [
        "ann@example.com",
        "dora@example.com",
    ]
    assert Contact.objects.get(email="dora@example.com").first_name == "=1+2"

    rejects = superuser_client.get(result.context["rejects_url"])
    content = b"".join(rejects.streaming_content)
    assert rejects["Content-Disposition"] == 'attachment; filename="contacts-rejects.csv"'
    lines = content.decode("utf-8-sig").splitlines()
    assert lines[0] == "import_error;Email;First Name;Owner;Do Not Email;Fax"
    assert lines[3] == "line 6: unknown owner 'nobody' (no user with that username or email);" \
        "carl@example.com;Carl;nobody;;"  # fmt: skip

    # Import the rejects file again once its unknown owner exists: the "duplicate" row now
    # updates the contact imported meanwhile; the rows still bad come back with their reason.
    UserFactory(username="nobody")
    again = upload(superuser_client, content, name="contacts-rejects.csv")
    assert [e.line for e in again.context["report"].errors] == [3, 5]
    assert (again.context["report"].created, again.context["report"].updated) == (1, 1)
    assert again.context["report"].unknown_columns == ["Fax"]
    confirm(superuser_client, again)
    assert Contact.objects.get(email="carl@example.com").owner.username == "nobody"


def test_the_preview_shows_what_would_change(superuser_client):
    ContactFactory(email="known@example.com", company="Old Co")

    preview = upload(
        superuser_client, "email,company\nknown@example.com,New Co\nnew@example.com,\n"
    )

    plans = preview.context["report"].preview
    assert [(p.line, p.action, p.changes) for p in plans] == [
        (2, "update", {"company": ["Old Co", "New Co"]}),
        (3, "create", {}),
    ]
    assert "<del>Old Co</del>" in preview.text
    assert Contact.objects.get().company == "Old Co"


def test_an_xlsx_upload_gets_an_xlsx_rejects_file(superuser_client):
    book = openpyxl.Workbook()
    for row in (["email", "first_name"], ["x@example.com", "X"], ["nope", "N"]):
        book.active.append(row)
    data = io.BytesIO()
    book.save(data)

    preview = upload(superuser_client, data.getvalue(), name="people.xlsx")
    rejects = superuser_client.get(reverse(
        "admin:contacts_contact_import_rejects", args=[preview.context["job"].id, "preview"]
    ))  # fmt: skip

    assert rejects["Content-Disposition"] == 'attachment; filename="people-rejects.xlsx"'
    sheet = openpyxl.load_workbook(io.BytesIO(b"".join(rejects.streaming_content))).active
    assert [c.value for c in sheet[2]] == ["line 3: 'nope' is not a valid email address",
                                           "nope", "N"]  # fmt: skip


def test_a_file_that_cannot_be_read_gets_no_confirm_button(superuser_client):
    preview = upload(superuser_client, "name,company\nAnn,Acme\n")

    assert "Nothing can be imported: The file has no email column." in preview.text
    assert "confirm_form" not in preview.context
    assert 'name="import_file"' in preview.text  # the upload form, to try another file


def test_confirming_twice_imports_once(superuser_client):
    preview = upload(superuser_client, "email\nonce@example.com\n")

    first = confirm(superuser_client, preview)
    second = confirm(superuser_client, preview)

    assert first["Location"] == second["Location"]
    assert Contact.objects.count() == 1


def test_a_large_file_is_imported_by_a_worker_while_the_page_shows_progress(
    superuser_client, settings, django_capture_on_commit_callbacks
):
    settings.LEADCENTER_IMPORT_BACKGROUND_ROWS = 3
    rows = "\n".join(f"w{i}@example.com,W{i}" for i in range(5))
    preview = upload(superuser_client, f"email,first_name\n{rows}\nbroken,B\n")
    assert "a background worker" in preview.text

    with django_capture_on_commit_callbacks(execute=True):
        response = confirm(superuser_client, preview)

    job = ImportJob.load(preview.context["job"].id)
    waiting = superuser_client.get(response["Location"])
    assert waiting.context["status"]["state"] == "queued"
    assert '<meta http-equiv="refresh"' in waiting.text
    assert "Waiting for a worker" in waiting.text
    assert not Contact.objects.exists()
    task = OrmQ.objects.get()
    assert task.func() == "contacts.tasks.contact_import_run"
    assert task.task["args"] == (job.id,)

    # Half way through, as the worker reports it.
    job.set_status("running", stage="importing", done=2, total=5)
    running = superuser_client.get(response["Location"])
    assert running.context["percent"] == 40
    assert "2 of 5 good rows" in running.text

    from contacts.tasks import contact_import_run

    contact_import_run(job.id)  # what the worker runs

    finished = superuser_client.get(response["Location"])
    assert finished.context["status"]["state"] == "done"
    assert "refresh" not in finished.text
    assert finished.context["report"].created == 5
    assert finished.context["rejects_url"]
    assert Contact.objects.count() == 5


def test_the_background_task_runs_through_django_q(
    superuser_client, settings, monkeypatch, django_capture_on_commit_callbacks
):
    settings.LEADCENTER_IMPORT_BACKGROUND_ROWS = 1
    monkeypatch.setattr(Conf, "SYNC", True)  # django-q2 runs the task in this process
    preview = upload(superuser_client, "email\nq1@example.com\nq2@example.com\n")

    with django_capture_on_commit_callbacks(execute=True):
        response = confirm(superuser_client, preview)

    assert superuser_client.get(response["Location"]).context["status"]["state"] == "done"
    assert Contact.objects.count() == 2
    job = ImportJob.load(preview.context["job"].id)
    assert not job.storage().exists(job.source)  # the upload is gone once imported


def test_the_task_is_idempotent(superuser_client):
    from contacts.tasks import contact_import_run

    preview = upload(superuser_client, "email\nonce@example.com\n")
    job_id = preview.context["job"].id

    assert contact_import_run(job_id)["created"] == 1
    assert contact_import_run(job_id) == {"job": job_id, "state": "done"}
    assert contact_import_run("0" * 32) == {"job": "0" * 32, "state": "missing"}


@pytest.mark.parametrize(
    ("state", "message"),
    [("queued", "is the task cluster"), ("running", "has not reported progress for minutes")],
)
def test_a_job_nobody_works_on_is_pointed_out(superuser_client, state, message):
    preview = upload(superuser_client, "email\nq@example.com\n")
    job = ImportJob.load(preview.context["job"].id)
    job.set_status(state)
    url = reverse("admin:contacts_contact_import_job", args=[job.id])
    assert message not in superuser_client.get(url).text

    status = job.status()
    status["at"] = "2020-01-01T00:00:00+00:00"
    job._write("status.json", json.dumps(status))

    assert message in superuser_client.get(url).text


@pytest.mark.parametrize("who", ["support_client", "staff_client", "manager_client"])
def test_people_without_add_and_change_contact_cannot_import(request, who, superuser_client):
    client = request.getfixturevalue(who)
    preview = upload(superuser_client, "email\nx@example.com\n")

    assert client.get(IMPORT_URL).status_code == 403
    assert upload(client, "email\nx@example.com\n").status_code == 403
    assert confirm(client, preview).status_code == 403
    job_url = reverse("admin:contacts_contact_import_job", args=[preview.context["job"].id])
    assert client.get(job_url).status_code == 403
    assert client.get(CHANGELIST_URL).context["has_import_permission"] is False
    assert not Contact.objects.exists()


def importer_client(client, username: str):
    user = UserFactory(username=username, is_staff=True)
    user.user_permissions.add(
        *Permission.objects.filter(
            content_type__app_label="contacts",
            codename__in=["add_contact", "change_contact", "view_contact"],
        )
    )
    client.force_login(user)
    return client


def test_someone_with_add_and_change_contact_imports_and_sees_only_their_own_jobs(client):
    from django.test import Client

    mine = importer_client(client, "importer")
    other = importer_client(Client(), "someone_else")
    preview = upload(mine, "email\nmine@example.com\n")
    job_id = preview.context["job"].id

    assert mine.get(CHANGELIST_URL).context["has_import_permission"] is True
    assert confirm(other, preview).status_code == 404
    assert other.get(reverse("admin:contacts_contact_import_job", args=[job_id])).status_code == 404
    rejects = reverse("admin:contacts_contact_import_rejects", args=[job_id, "preview"])
    assert other.get(rejects).status_code == 404
    assert confirm(mine, preview).status_code == 302
    assert Contact.objects.get().email == "mine@example.com"


def test_an_importer_who_may_not_create_lists_gets_an_error_for_a_new_list(client):
    from contacts.models import ContactList

    ContactList.objects.create(name="Existing")
    importer = importer_client(client, "importer")
    preview = upload(importer, "email,lists\na@example.com,existing\nb@example.com,Brand new\n")

    assert [(e.line, e.reason) for e in preview.context["report"].errors] == [
        (3, "unknown list 'Brand new' (you may not create lists)")
    ]
    confirm(importer, preview)
    assert list(ContactList.objects.values_list("name", flat=True)) == ["Existing"]
    assert Contact.objects.get().lists.get().name == "Existing"


@pytest.mark.parametrize("job_id", ["..", "x" * 32, "0" * 31, "0" * 32])
def test_a_made_up_job_id_is_not_found(superuser_client, job_id):
    url = reverse("admin:contacts_contact_import_job", args=[job_id])

    assert superuser_client.get(url).status_code == 404


def test_the_import_writes_no_file_outside_its_job_folder(superuser_client, settings):
    preview = upload(superuser_client, "email\nx@example.com\n", name="../../evil.csv")
    confirm(superuser_client, preview)

    files = sorted(p.relative_to(settings.MEDIA_ROOT) for p in Path(settings.MEDIA_ROOT).rglob("*")
                   if p.is_file())  # fmt: skip
    assert files and all(str(f).startswith("contact_imports/") for f in files)


def test_jobs_older_than_a_week_are_deleted_when_a_new_one_starts(superuser_client, settings):
    old = ImportJob.load(upload(superuser_client, "email\nold@example.com\n").context["job"].id)
    old.created = "2020-01-01T00:00:00+00:00"
    old.save()

    new = upload(superuser_client, "email\nnew@example.com\n").context["job"]

    assert ImportJob.load(old.id) is None
    assert not (Path(settings.MEDIA_ROOT) / "contact_imports" / old.id).exists()
    assert ImportJob.load(new.id) is not None
