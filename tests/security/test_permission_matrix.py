"""The permission matrix of every admin URL (DESIGN.md "Roles"), for anonymous visitors,
Staff, Managers, Support and superusers.

The URLs are enumerated from the URL resolver (every ModelAdmin's changelist, add, change,
delete and history pages, every custom view, the site's own pages) and every admin action from
the ModelAdmins, so a new page or action fails `test_the_matrix_covers_every_admin_url` until
someone writes down who may use it. The expected table is written out by hand from DESIGN.md:

- Staff view campaigns, runs, recipients, sent emails, contacts, accounts;
- Managers also create and change campaigns and accounts, launch, pause, resume and terminate,
  and export;
- Support see contacts, their history and Sent emails, change consent and lift suppressions; no
  export, no campaign control, no reports;
- superusers do everything; nobody edits what the pipeline writes (runs, recipients, messages)
  or the append-only history (events, rejections).
"""

from __future__ import annotations

import pytest
from django.contrib import admin
from django.contrib.admin.helpers import ACTION_CHECKBOX_NAME
from django.contrib.contenttypes.models import ContentType
from django.db import transaction
from django.urls import URLPattern, URLResolver, reverse
from django_q.models import OrmQ

from campaigns.models import Campaign, CampaignRun
from contacts.models import Suppression
from tests.security.conftest import ROLES, assert_no_secret, body, file_text

pytestmark = pytest.mark.django_db

L = "login"  # 302 to the admin's login page
R = "redirect"  # 302 elsewhere
OK, NO, NF, NA = 200, 403, 404, 405

APP_LABELS = ("auth", "django_q", "contacts", "campaigns", "tracking")

# --- the expected table: GET of every admin URL --------------------------------------------
#             anonymous staff manager support superuser
EVERYONE = (L, OK, OK, OK, OK)
SUPERUSER = (L, NO, NO, NO, OK)
NOBODY = (L, NO, NO, NO, NO)
POST_ONLY = (L, NA, NA, NA, NA)  # side effects: a GET is refused before anything else
TO_CHANGE = (L, R, R, R, R)  # <id>/ redirects to <id>/change/


def _model(prefix: str, changelist, add, change, delete, history) -> dict[str, tuple]:
    return {
        f"{prefix}_changelist": changelist,
        f"{prefix}_add": add,
        f"{prefix}_change": change,
        f"{prefix}_delete": delete,
        f"{prefix}_history": history,
        f"{prefix}_redirect": TO_CHANGE,
    }


# fmt: off
GET_MATRIX: dict[str, tuple] = {
    # The site's own pages.
    "index":                       EVERYONE,
    "login":                       (OK, R, R, R, R),
    "logout":                      (R, NA, NA, NA, NA),  # Django's logout is POST-only
    "password_change":             EVERYONE,
    "password_change_done":        EVERYONE,
    "autocomplete":                EVERYONE,  # topics, for the campaign form
    "jsi18n":                      EVERYONE,
    "view_on_site":                (L, NF, NF, NF, NF),  # no model has get_absolute_url
    "app_list:auth":               (L, NF, NF, NF, OK),
    "app_list:django_q":           (L, NF, NF, NF, OK),
    "app_list:contacts":           EVERYONE,
    "app_list:campaigns":          EVERYONE,
    "app_list:tracking":           EVERYONE,
    "catch_all":                   (L, NF, NF, NF, NF),
    # Users, groups and the task queue: superusers only.
    **_model("auth_group",         SUPERUSER, SUPERUSER, SUPERUSER, SUPERUSER, SUPERUSER),
    **_model("auth_user",          SUPERUSER, SUPERUSER, SUPERUSER, SUPERUSER, SUPERUSER),
    "auth_user_password_change":   SUPERUSER,
    **_model("django_q_schedule",  SUPERUSER, SUPERUSER, SUPERUSER, SUPERUSER, SUPERUSER),
    **_model("django_q_success",   SUPERUSER, NOBODY, SUPERUSER, SUPERUSER, SUPERUSER),
    **_model("django_q_failure",   SUPERUSER, NOBODY, SUPERUSER, SUPERUSER, SUPERUSER),
    **_model("django_q_ormq",      SUPERUSER, NOBODY, SUPERUSER, SUPERUSER, SUPERUSER),
    # Contacts: everyone looks; Support changes consent and suppressions; Managers add lists.
    **_model("contacts_topic",     EVERYONE, SUPERUSER, EVERYONE, SUPERUSER, EVERYONE),
    **_model("contacts_contactlist", EVERYONE, (L, NO, OK, NO, OK), EVERYONE, SUPERUSER,
             EVERYONE),
    **_model("contacts_contact",   EVERYONE, SUPERUSER, EVERYONE, SUPERUSER, EVERYONE),
    "contacts_contact_import":     SUPERUSER,  # needs add_contact (nobody's role has it)
    "contacts_contact_process_import": POST_ONLY,
    "contacts_contact_import_job": SUPERUSER,  # the superuser's own job
    "contacts_contact_import_rejects": SUPERUSER,
    "contacts_contact_export":     (L, NO, OK, NO, OK),
    "contacts_contact_lift_suppression": POST_ONLY,
    **_model("contacts_suppression", EVERYONE, (L, NO, NO, OK, OK), EVERYONE, SUPERUSER,
             EVERYONE),
    # Sending accounts and campaigns: Staff look, Managers change and control.
    **_model("campaigns_sendingaccount", (L, OK, OK, NO, OK), (L, NO, OK, NO, OK),
             (L, OK, OK, NO, OK), SUPERUSER, (L, OK, OK, NO, OK)),
    # Support sees campaign names (the Sent emails page links them), not the reports.
    **_model("campaigns_campaign", EVERYONE, (L, NO, OK, NO, OK), EVERYONE, SUPERUSER,
             EVERYONE),
    "campaigns_campaign_launch":   POST_ONLY,
    "campaigns_campaign_pause":    POST_ONLY,
    "campaigns_campaign_resume":   POST_ONLY,
    "campaigns_campaign_test_email": POST_ONLY,
    "campaigns_campaign_preview":  EVERYONE,
    "campaigns_campaign_summary":  (L, OK, OK, NO, OK),
    "campaigns_campaign_summary_export": (L, NO, OK, NO, OK),
    "campaigns_campaign_compare":  (L, OK, OK, NO, OK),
    **_model("campaigns_campaignstep", (L, OK, OK, NO, OK), (L, NO, OK, NO, OK),
             (L, OK, OK, NO, OK), (L, NO, OK, NO, OK), (L, OK, OK, NO, OK)),
    # What the pipeline writes: looked at, never added or edited by hand.
    **_model("campaigns_campaignrun", (L, OK, OK, NO, OK), NOBODY, (L, OK, OK, NO, OK),
             SUPERUSER, (L, OK, OK, NO, OK)),
    "campaigns_campaignrun_terminate": POST_ONLY,
    "campaigns_campaignrun_details": (L, OK, OK, NO, OK),
    **_model("campaigns_recipient", EVERYONE, NOBODY, EVERYONE, SUPERUSER, EVERYONE),
    "campaigns_recipient_export":  (L, NO, OK, NO, OK),
    **_model("campaigns_message",  EVERYONE, NOBODY, EVERYONE, SUPERUSER, EVERYONE),
    "campaigns_message_export":    (L, NO, OK, NO, OK),
    "campaigns_exportjob_status":  (L, NO, OK, NO, OK),  # the manager's job
    "campaigns_exportjob_download": (L, NO, OK, NO, OK),
    # Append-only history: nobody adds, edits or deletes it.
    **_model("tracking_trackingevent", EVERYONE, NOBODY, EVERYONE, NOBODY, EVERYONE),
    **_model("tracking_rejection", EVERYONE, NOBODY, EVERYONE, NOBODY, EVERYONE),
    # Holds a mailbox password: superusers only.
    **_model("tracking_bouncemailbox", SUPERUSER, SUPERUSER, SUPERUSER, SUPERUSER, SUPERUSER),
}

# --- the expected table: every admin action, by POST ---------------------------------------
RAN, REFUSED = "ran", "refused"
SUPERUSER_RUNS = (L, REFUSED, REFUSED, REFUSED, RAN)
NOBODY_RUNS = (L, REFUSED, REFUSED, REFUSED, REFUSED)

ACTION_MATRIX: dict[str, tuple] = {
    "auth.group:delete_selected":             SUPERUSER_RUNS,
    "auth.user:delete_selected":              SUPERUSER_RUNS,
    "django_q.schedule:delete_selected":      SUPERUSER_RUNS,
    "django_q.success:delete_selected":       SUPERUSER_RUNS,
    "django_q.success:resubmit_task":         SUPERUSER_RUNS,
    "django_q.failure:delete_selected":       SUPERUSER_RUNS,
    "django_q.failure:resubmit_task":         SUPERUSER_RUNS,
    "django_q.ormq:delete_selected":          SUPERUSER_RUNS,
    "contacts.topic:delete_selected":         SUPERUSER_RUNS,
    "contacts.contactlist:delete_selected":   SUPERUSER_RUNS,
    "contacts.contact:delete_selected":       SUPERUSER_RUNS,
    "contacts.suppression:delete_selected":   SUPERUSER_RUNS,
    "contacts.suppression:lift_suppressions": (L, REFUSED, REFUSED, RAN, RAN),
    "campaigns.sendingaccount:delete_selected": SUPERUSER_RUNS,
    "campaigns.campaign:delete_selected":     SUPERUSER_RUNS,
    "campaigns.campaign:compare_selected":    (L, RAN, RAN, REFUSED, RAN),  # a report
    "campaigns.campaignstep:delete_selected": (L, REFUSED, RAN, REFUSED, RAN),
    "campaigns.campaignrun:delete_selected":  SUPERUSER_RUNS,
    "campaigns.recipient:delete_selected":    SUPERUSER_RUNS,
    "campaigns.message:delete_selected":      SUPERUSER_RUNS,
    "tracking.trackingevent:delete_selected": NOBODY_RUNS,
    "tracking.rejection:delete_selected":     NOBODY_RUNS,
    "tracking.bouncemailbox:delete_selected": SUPERUSER_RUNS,
}

# --- the expected table: the custom pages with side effects, by POST -----------------------
#                                anonymous staff manager support superuser
POST_MATRIX: dict[str, tuple] = {
    "campaigns_campaign_launch":     (L, NO, R, NO, R),
    "campaigns_campaign_pause":      (L, NO, R, NO, R),
    "campaigns_campaign_resume":     (L, NO, R, NO, R),
    "campaigns_campaign_test_email": (L, NO, R, NO, R),
    "campaigns_campaignrun_terminate": (L, NO, R, NO, R),
    "campaigns_message_export":      (L, NO, R, NO, R),  # starts a background export job
    "campaigns_recipient_export":    (L, NO, R, NO, R),
    "contacts_contact_process_import": (L, NO, NO, NO, R),
    "contacts_contact_lift_suppression": (L, NO, NO, R, R),
}
# fmt: on


# --- the URLs, from the resolver ---------------------------------------------------------


def admin_url_keys() -> dict[str, str]:
    """Every admin URL pattern as {key: route}: its name, or for the unnamed ones what they
    are (`<prefix>_redirect` for `<id>/`, `catch_all`), and one `app_list:<label>` per app."""
    patterns, _app_name, _namespace = admin.site.urls
    found: dict[str, str] = {}

    def walk(entries, prefix: str = "") -> None:
        for entry in entries:
            route = prefix + str(entry.pattern)
            if isinstance(entry, URLResolver):
                walk(entry.url_patterns, route)
            elif isinstance(entry, URLPattern):
                if entry.name == "app_list":
                    for label in APP_LABELS:
                        found[f"app_list:{label}"] = route
                elif entry.name:
                    found[entry.name] = route
                elif route.endswith("<path:object_id>/"):
                    app_label, model_name = route.split("/")[:2]
                    found[f"{app_label}_{model_name}_redirect"] = route
                else:
                    found["catch_all"] = route

    walk(patterns)
    return found


def admin_actions() -> list[str]:
    """Every action of every ModelAdmin (the site's delete_selected included), as
    "<app_label>.<model_name>:<action name>"."""
    keys = []
    for model, model_admin in admin.site._registry.items():
        for _func, name, _description in model_admin._get_base_actions():
            keys.append(f"{model._meta.label_lower}:{name}")
    return sorted(keys)


def _object_for(key: str, world: dict):
    for label, obj in world.items():
        if "." in label and key.startswith(label.replace(".", "_") + "_"):
            return obj
    raise KeyError(key)


def url_for(key: str, world: dict) -> str:
    if key.startswith("app_list:"):
        return reverse("admin:app_list", kwargs={"app_label": key.partition(":")[2]})
    if key == "catch_all":
        return "/admin/no-such-page/"
    if key == "autocomplete":
        return (
            reverse("admin:autocomplete")
            + "?app_label=campaigns&model_name=campaign&field_name=topic&term="
        )
    if key == "view_on_site":
        contact = world["contacts.contact"]
        content_type = ContentType.objects.get_for_model(contact)
        return reverse("admin:view_on_site", args=[content_type.pk, contact.pk])
    if key == "auth_user_password_change":
        return reverse("admin:auth_user_password_change", args=[world["auth.user"].pk])
    if key.startswith("campaigns_exportjob_"):
        return reverse(f"admin:{key}", args=[world["export_job"].pk])
    if key == "contacts_contact_lift_suppression":
        # The contact page lifts the entries of the contact's own address (the POST test
        # adds one; another address's entry is refused as not found).
        contact = world["contacts.contact"]
        entry = Suppression.objects.filter(email=contact.email.lower()).first()
        return reverse(
            f"admin:{key}", args=[contact.pk, (entry or world["contacts.suppression"]).pk]
        )
    if key == "contacts_contact_import_job":
        return reverse(f"admin:{key}", args=[world["import_job"].id])
    if key == "contacts_contact_import_rejects":
        return reverse(f"admin:{key}", args=[world["import_job"].id, "preview"])
    if key.endswith("_redirect"):
        obj = _object_for(key, world)
        return reverse(f"admin:{key.removesuffix('_redirect')}_change", args=[obj.pk])[
            : -len("change/")
        ]
    try:
        return reverse(f"admin:{key}")
    except Exception:
        return reverse(f"admin:{key}", args=[_object_for(key, world).pk])


def outcome(response) -> str | int:
    if response.status_code == 302:
        return L if response["Location"].startswith(reverse("admin:login")) else R
    return response.status_code


def test_the_matrix_covers_every_admin_url_and_action():
    urls = set(admin_url_keys())
    actions = set(admin_actions())

    assert urls - GET_MATRIX.keys() == set(), "admin URLs missing from GET_MATRIX"
    assert GET_MATRIX.keys() - urls == set(), "GET_MATRIX names URLs that do not exist"
    assert actions - ACTION_MATRIX.keys() == set(), "actions missing from ACTION_MATRIX"
    assert ACTION_MATRIX.keys() - actions == set(), "ACTION_MATRIX names unknown actions"
    assert POST_MATRIX.keys() <= urls


def _area(key: str) -> str:
    """The model a URL belongs to ("site" for the site's own pages): one test per area, so
    the world is built two dozen times rather than once per URL."""
    for label in WORLD_MODELS:
        if key.startswith(label.replace(".", "_") + "_"):
            return label
    if key.startswith("campaigns_exportjob_"):
        return "campaigns.message"
    return "site"


WORLD_MODELS = sorted(
    (f"{model._meta.label_lower}" for model in admin.site._registry), key=len, reverse=True
)
AREAS: dict[str, list[str]] = {}
for _key in sorted(GET_MATRIX):
    AREAS.setdefault(_area(_key), []).append(_key)


@pytest.mark.parametrize("area", sorted(AREAS))
def test_who_may_open_each_admin_url(clients, world, area):
    """And, while each page is open, that it shows no password (test_secrets.py has the
    rest of that story)."""
    wrong = {}
    for key in AREAS[area]:
        url = url_for(key, world)
        got = []
        for role in ROLES:
            response = clients[role].get(url)
            got.append(outcome(response))
            assert_no_secret(file_text(body(response)), f"{url} as {role}")
        got = tuple(got)
        if got != GET_MATRIX[key]:
            wrong[key] = {"url": url, "expected": GET_MATRIX[key], "got": got}

    assert wrong == {}


def _action_target(label: str, world: dict):
    return world[label]


def _action_ran(label: str, name: str, obj, response, queued_before: int) -> bool:
    model = type(obj)
    if name == "delete_selected":
        # Gone, or the action's own page listing the protected rows that stop it (a runs's
        # messages, a campaign's runs): either way the action ran for this person.
        templates = {t.name for t in getattr(response, "templates", [])}
        return (
            not model._default_manager.filter(pk=obj.pk).exists()
            or "admin/delete_selected_confirmation.html" in templates
        )
    if name == "compare_selected":
        return reverse("admin:campaigns_campaign_compare") in response.get("Location", "")
    if name == "lift_suppressions":
        obj.refresh_from_db()
        return obj.lifted_at is not None
    if name == "resubmit_task":
        return OrmQ.objects.count() > queued_before
    raise AssertionError(f"no effect check for the action {label}:{name}")


@pytest.mark.parametrize("key", sorted(ACTION_MATRIX))
def test_who_may_run_each_admin_action(clients, world, key):
    label, _, name = key.partition(":")
    obj = _action_target(label, world)
    app_label, model_name = label.split(".")
    url = reverse(f"admin:{app_label}_{model_name}_changelist")
    # delete_selected answers with its confirmation page, which only shows when the person
    # may delete (it lists the protected rows that stop it, if any).
    data = {"action": name, ACTION_CHECKBOX_NAME: [str(obj.pk)]}
    if name == "lift_suppressions":  # the action asks for the reason first
        data.update(confirm="yes", lift_reason="Checked with the person")
    got = []
    for role in ROLES:
        # Each role on the same world: what one role's action did is rolled back.
        with transaction.atomic():
            queued_before = OrmQ.objects.count()
            response = clients[role].post(url, data)
            if outcome(response) == L:
                got.append(L)
            elif response.status_code == NO:  # no access to the list at all
                got.append(REFUSED)
            else:
                assert response.status_code in (200, 302), (role, response.status_code)
                ran = _action_ran(label, name, obj, response, queued_before)
                got.append(RAN if ran else REFUSED)
            transaction.set_rollback(True)

    assert tuple(got) == ACTION_MATRIX[key], dict(zip(ROLES, got, strict=True))


@pytest.mark.parametrize("key", sorted(POST_MATRIX))
def test_who_may_post_to_each_page_with_side_effects(clients, world, key):
    if key == "contacts_contact_lift_suppression":
        Suppression.objects.create(
            email=world["contacts.contact"].email.lower(), reason=Suppression.Reason.MANUAL
        )
    if key == "campaigns_campaign_resume":
        Campaign.objects.filter(pk=world["campaigns.campaign"].pk).update(state="paused")
        CampaignRun.objects.filter(pk=world["campaigns.campaignrun"].pk).update(status="paused")
    data = {
        "campaigns_campaign_test_email": {
            "step": world["campaigns.campaignstep"].pk,
            "account": world["campaigns.sendingaccount"].pk,
            "contact": world["contacts.contact"].pk,
            "to": "tester@example.test",
        },
        "contacts_contact_lift_suppression": {"lift_reason": "Checked with the person"},
        "contacts_contact_process_import": {
            "import_file_name": world["import_job"].id,
            "original_file_name": "people.csv",
            "format": "0",
            "resource": "0",
        },
    }.get(key, {})
    url = url_for(key, world)
    got = []
    for role in ROLES:
        with transaction.atomic():
            got.append(outcome(clients[role].post(url, data)))
            transaction.set_rollback(True)

    assert tuple(got) == POST_MATRIX[key], dict(zip(ROLES, got, strict=True))
