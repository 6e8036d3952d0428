"""Who may see the report pages and export (DESIGN.md "Roles"): Staff and Managers see the
reports, only Managers (and superusers) export; Support searches sent emails but sees no
report and exports nothing. What is hidden is also refused on the server."""

from __future__ import annotations

import pytest
from django.urls import reverse

from campaigns import exports
from campaigns.models import Campaign, CampaignRun, ExportJob
from leadcenter.factories import MessageFactory

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _media_in_tmp(settings, tmp_path):
    # Export jobs write their files to the default storage: keep them out of the project.
    settings.MEDIA_ROOT = tmp_path / "media"


ROLES = ["anonymous", "staff", "manager", "support", "superuser"]
LOGIN = 302  # the admin sends an anonymous visitor to its login page


@pytest.fixture
def world(manager_user):
    message = MessageFactory(recipient__email="someone@example.test")
    run = message.run
    job = ExportJob.objects.create(kind="messages", query="", total=1, requested_by=manager_user)
    exports.export_job_run(job.pk)
    return {"run": run, "campaign": run.campaign, "job": job}


def url_of(page: str, world: dict) -> str:
    run, campaign, job = world["run"], world["campaign"], world["job"]
    return {
        "run details": reverse("admin:campaigns_campaignrun_details", args=[run.pk]),
        "summary": reverse("admin:campaigns_campaign_summary", args=[campaign.pk]),
        "summary of a run": reverse("admin:campaigns_campaign_summary", args=[campaign.pk])
        + f"?run={run.pk}",
        "compare": reverse("admin:campaigns_campaign_compare") + f"?ids={campaign.pk}",
        "summary export": reverse("admin:campaigns_campaign_summary_export", args=[campaign.pk]),
        "sent emails export": reverse("admin:campaigns_message_export"),
        "recipients export": reverse("admin:campaigns_recipient_export")
        + f"?run__id__exact={run.pk}",
        "export job": reverse("admin:campaigns_exportjob_status", args=[job.pk]),
        "export download": reverse("admin:campaigns_exportjob_download", args=[job.pk]),
        "sent emails list": reverse("admin:campaigns_message_changelist"),
    }[page]


#                      anonymous staff manager support superuser
MATRIX = {
    "run details":        (LOGIN, 200, 200, 403, 200),
    "summary":            (LOGIN, 200, 200, 403, 200),
    "summary of a run":   (LOGIN, 200, 200, 403, 200),
    "compare":            (LOGIN, 200, 200, 403, 200),
    "summary export":     (LOGIN, 403, 200, 403, 200),
    "sent emails export": (LOGIN, 403, 200, 403, 200),
    "recipients export":  (LOGIN, 403, 200, 403, 200),
    # The job is the manager's: its file holds what they filtered.
    "export job":         (LOGIN, 403, 200, 403, 200),
    "export download":    (LOGIN, 403, 200, 403, 200),
    "sent emails list":   (LOGIN, 200, 200, 200, 200),
}  # fmt: skip
CASES = [
    (page, role, expected)
    for page, statuses in MATRIX.items()
    for role, expected in zip(ROLES, statuses, strict=True)
]


@pytest.mark.parametrize(("page", "role", "expected"), CASES, ids=lambda v: str(v))
def test_who_may_open_each_report_page(clients, world, page, role, expected):
    response = clients[role].get(url_of(page, world))

    assert response.status_code == expected
    if expected == LOGIN:
        assert response["Location"].startswith(reverse("admin:login"))


#                       anonymous staff manager support superuser
POST_MATRIX = (LOGIN, 403, 302, 403, 302)


@pytest.mark.parametrize(
    ("role", "expected"), list(zip(ROLES, POST_MATRIX, strict=True)), ids=ROLES
)
def test_only_exporters_may_start_a_background_export(clients, world, role, expected):
    response = clients[role].post(reverse("admin:campaigns_message_export"))

    assert response.status_code == expected
    started = ExportJob.objects.exclude(pk=world["job"].pk).exists()
    assert started is (role in ("manager", "superuser"))


@pytest.mark.parametrize(
    ("role", "visible"),
    [("staff", False), ("manager", True), ("support", False), ("superuser", True)],
)
def test_the_export_buttons_show_only_to_those_who_may_export(clients, world, role, visible):
    client = clients[role]
    pages = ["sent emails list"]
    if role != "support":
        pages += ["summary"]
        recipients = client.get(reverse("admin:campaigns_recipient_changelist"))
        assert ("Export to Excel" in recipients.content.decode()) is visible
    for page in pages:
        html = client.get(url_of(page, world)).content.decode()
        assert ("Export to Excel" in html) is visible, page


def test_support_sees_no_way_to_the_reports(clients, world):
    support = clients["support"]
    change = support.get(reverse("admin:campaigns_campaign_change", args=[world["campaign"].pk]))
    changelist = support.get(reverse("admin:campaigns_campaign_changelist"))

    assert change.status_code == changelist.status_code == 200
    assert url_of("summary", world) not in change.content.decode()
    assert "compare_selected" not in changelist.content.decode()


def test_support_cannot_use_the_compare_action_by_posting_it(clients, world):
    response = clients["support"].post(
        reverse("admin:campaigns_campaign_changelist"),
        {"action": "compare_selected", "_selected_action": [world["campaign"].pk]},
    )

    assert "compare" not in response.get("Location", "")


def test_staff_see_the_reports_and_the_way_to_them(clients, world):
    staff = clients["staff"]
    changelist = staff.get(reverse("admin:campaigns_campaign_changelist")).content.decode()
    runs = staff.get(reverse("admin:campaigns_campaignrun_changelist")).content.decode()

    assert "compare_selected" in changelist
    assert url_of("summary", world) in changelist
    assert url_of("run details", world) in runs


def test_report_pages_change_nothing_on_get(clients, world):
    before = (
        list(Campaign.objects.values()),
        list(CampaignRun.objects.values()),
        list(ExportJob.objects.values()),
    )
    for page in MATRIX:
        clients["superuser"].get(url_of(page, world))

    after = (
        list(Campaign.objects.values()),
        list(CampaignRun.objects.values()),
        list(ExportJob.objects.values()),
    )
    assert after == before
