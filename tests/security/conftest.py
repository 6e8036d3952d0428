"""The security suite's shared cast: one row of every model the admin shows (so every admin URL
has an object to open), a client per role, and the hypothesis profiles of the fuzzers."""

from __future__ import annotations

import io
import zipfile
from datetime import timedelta

import pytest
from django.contrib.auth.models import Group
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client
from django.utils import timezone
from django_q.models import OrmQ, Schedule, Task

from campaigns import exports
from campaigns.models import CampaignRun, ExportJob
from contacts.imports import ImportJob
from contacts.resources import ContactResource
from leadcenter.factories import (
    CampaignStepFactory,
    ContactListFactory,
    MessageFactory,
    SuppressionFactory,
    TopicFactory,
)
from tests.security import fuzz
from tracking.models import BounceMailbox, Rejection, TrackingEvent

ROLES = ("anonymous", "staff", "manager", "support", "superuser")
SMTP_PASSWORD = "smtp-Pa55word-that-must-never-leak-7f3a"
MAILBOX_PASSWORD = "imap-Pa55word-that-must-never-leak-91c2"


@pytest.fixture(autouse=True)
def _media_in_tmp(settings, tmp_path):
    # Import and export jobs write files to the default storage: keep them out of the project.
    settings.MEDIA_ROOT = tmp_path / "media"


@pytest.fixture
def world(roles, superuser, manager_user):
    """One object of every model registered in the admin, plus an export job (the
    manager's) and a contact import job with a rejects file (the superuser's)."""
    topic = TopicFactory(name="Newsletter")
    audience = ContactListFactory(name="Audience")
    message = MessageFactory(
        recipient__email="someone@example.test",
        recipient__contact__email="someone@example.test",
        recipient__run__campaign__name="Spring",
        recipient__run__campaign__topic=topic,
        recipient__run__status=CampaignRun.Status.RUNNING,
        recipient__account__smtp_password=SMTP_PASSWORD,
        recipient__account__smtp_username="relay-user",
    )
    run = message.run
    campaign = run.campaign
    account = message.account
    campaign.lists.add(audience)
    campaign.accounts.add(account)
    contact = message.recipient.contact
    contact.lists.add(audience)
    step = message.step
    CampaignStepFactory(campaign=campaign, position=2, subject="Follow-up")
    suppression = SuppressionFactory(email="blocked@example.test")
    event = TrackingEvent.objects.create(
        message=message,
        type=TrackingEvent.Type.BOUNCED,
        source="smtp",
        occurred_at=timezone.now(),
        dedupe_key="security:world:1",
        email=message.recipient.email,
    )
    rejection = Rejection.objects.create(
        message=message,
        event=event,
        email=message.recipient.email,
        kind=Rejection.Kind.SOFT,
        category=Rejection.Category.MAILBOX_FULL,
        smtp_code=452,
        smtp_status="4.2.2",
        source="smtp",
    )
    mailbox = BounceMailbox.objects.create(
        account=account, host="imap.example.test", username="bounces", password=MAILBOX_PASSWORD
    )
    job = ExportJob.objects.create(kind="messages", query="", total=1, requested_by=manager_user)
    exports.export_job_run(job.pk)
    now = timezone.now()
    schedule = Schedule.objects.create(name="security-probe", func="math.copysign")
    success = Task.objects.create(
        id="a" * 32, name="ok", func="math.floor", started=now, stopped=now, success=True
    )
    failure = Task.objects.create(
        id="b" * 32, name="ko", func="math.floor", started=now, stopped=now, success=False
    )
    ormq = OrmQ.objects.create(key="leadcenter", payload="x", lock=now - timedelta(hours=1))
    import_job = _import_job(superuser)
    return {
        "auth.group": Group.objects.get(name="Staff"),
        "auth.user": manager_user,
        "django_q.schedule": schedule,
        "django_q.success": success,
        "django_q.failure": failure,
        "django_q.ormq": ormq,
        "contacts.topic": topic,
        "contacts.contactlist": audience,
        "contacts.contact": contact,
        "contacts.suppression": suppression,
        "campaigns.sendingaccount": account,
        "campaigns.campaign": campaign,
        "campaigns.campaignstep": step,
        "campaigns.campaignrun": run,
        "campaigns.recipient": message.recipient,
        "campaigns.message": message,
        "tracking.trackingevent": event,
        "tracking.rejection": rejection,
        "tracking.bouncemailbox": mailbox,
        "export_job": job,
        "import_job": import_job,
    }


def assert_no_secret(data: bytes | str, where: str) -> None:
    text = data.decode("utf-8", "replace") if isinstance(data, bytes) else data
    for secret in (SMTP_PASSWORD, MAILBOX_PASSWORD):
        assert secret not in text, f"a password shows in {where}"


def file_text(data: bytes) -> str:
    """A download as text: an XLSX file's XML parts, or the bytes of a CSV or a page."""
    if data[:2] == b"PK":
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            return "".join(
                archive.read(name).decode("utf-8", "replace") for name in archive.namelist()
            )
    return data.decode("utf-8", "replace")


def body(response) -> bytes:
    if getattr(response, "streaming", False):
        return b"".join(response.streaming_content)
    return response.content


CONTACT_EXPORT_FIELDS = (
    "email", "first_name", "last_name", "company", "owner", "stage", "email_status",
    "do_not_email", "do_not_mass_email", "unsubscribed", "lists", "opted_out_topics",
)  # fmt: skip


def contacts_export(client: Client, file_format: str):
    """Download every contact with every column, as the admin's export form does
    (django-import-export: format 0 is CSV, 1 is XLSX)."""
    from django.urls import reverse

    data = {"format": {"csv": "0", "xlsx": "1"}[file_format], "resource": "0"}
    data.update({f"contactresource_{name}": "on" for name in CONTACT_EXPORT_FIELDS})
    response = client.post(reverse("admin:contacts_contact_export"), data)
    assert "attachment" in response.get("Content-Disposition", ""), "no file came back"
    return response


def _import_job(user) -> ImportJob:
    """An admin import job with a preview that has one bad row (so a rejects file)."""
    data = b"email,first_name\ngood@example.test,Good\nnot-an-address,Bad\n"
    upload = SimpleUploadedFile("people.csv", data, content_type="text/csv")
    job = ImportJob.create(user_id=user.pk, upload=upload, file_name="people.csv")
    report = ContactResource().import_file(
        io.BytesIO(data), file_name="people.csv", dry_run=True, preview_rows=10
    )
    job.rows = report.rows
    job.save()
    job.save_report("preview", report)
    return job


def pytest_terminal_summary(terminalreporter) -> None:
    """How many inputs each fuzzer tried in this session (RELIABILITY.md quotes them)."""
    if fuzz.TRIED:
        terminalreporter.section("security fuzzing: inputs tried")
        for name, count in sorted(fuzz.TRIED.items()):
            terminalreporter.write_line(f"{name}: {count}")
        terminalreporter.write_line(f"total: {sum(fuzz.TRIED.values())}")
