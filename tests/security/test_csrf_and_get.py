"""Side effects refuse GET, and every form needs its CSRF token (STYLE.md habit 5).

A GET of any admin URL, by a superuser (who may do everything), changes no row; the pages
with side effects answer a GET with 405; an action cannot be run by a GET. A client that
enforces CSRF checks gets 403 from every admin URL when it POSTs without the token, and every
POST form the admin renders carries the token.
"""

from __future__ import annotations

import re

import pytest
from django.apps import apps
from django.contrib.admin.helpers import ACTION_CHECKBOX_NAME
from django.test import Client
from django.urls import reverse

from tests.security.test_permission_matrix import GET_MATRIX, NA, POST_MATRIX, url_for

pytestmark = pytest.mark.django_db

# Logging out forgets the session the other pages need: it goes last.
LAST = "logout"


def snapshot() -> dict[str, list]:
    """Every row of every model of ours and of the admin's, except the sessions."""
    state = {}
    for model in apps.get_models():
        if model._meta.label in ("sessions.Session",):
            continue
        state[model._meta.label] = sorted(
            model._default_manager.values_list("pk", flat=True).order_by()
        ) + [tuple(sorted(map(str, row.values()))) for row in model._default_manager.values()]
    return state


def _ordered(keys) -> list[str]:
    return sorted(keys, key=lambda key: (key == LAST, key))


def test_pages_with_side_effects_refuse_get_with_405(superuser_client, world):
    for key in POST_MATRIX:
        if key.endswith("_export"):
            continue  # a GET of an export is the download itself (no row is written)
        assert superuser_client.get(url_for(key, world)).status_code == NA, key


def test_an_admin_action_cannot_be_run_by_a_get(superuser_client, world):
    before = snapshot()
    for label in ("contacts.suppression", "campaigns.campaignstep", "contacts.topic"):
        obj = world[label]
        url = reverse(f"admin:{label.replace('.', '_')}_changelist")
        for action in ("delete_selected", "lift_suppressions"):
            superuser_client.get(
                url, {"action": action, ACTION_CHECKBOX_NAME: obj.pk, "post": "yes"}
            )

    assert snapshot() == before


@pytest.fixture
def csrf_client(superuser) -> Client:
    client = Client(enforce_csrf_checks=True)
    client.force_login(superuser)
    return client


def test_every_admin_url_refuses_a_post_without_the_csrf_token(csrf_client, world):
    before = snapshot()
    allowed = {}
    for key in _ordered(GET_MATRIX):
        url = url_for(key, world)
        response = csrf_client.post(url, {"action": "delete_selected", ACTION_CHECKBOX_NAME: 1})
        if response.status_code != 403:
            allowed[key] = response.status_code

    assert allowed == {}
    assert snapshot() == before


def test_the_login_form_refuses_a_post_without_the_csrf_token(superuser):
    client = Client(enforce_csrf_checks=True)
    response = client.post(
        reverse("admin:login"),
        {"username": superuser.username, "password": "correct horse battery staple"},
    )

    assert response.status_code == 403
    assert "_auth_user_id" not in client.session


FORM = re.compile(r"<form\b[^>]*>.*?</form>", re.IGNORECASE | re.DOTALL)
POST_FORM = re.compile(r"""method\s*=\s*["']?post""", re.IGNORECASE)


def test_no_get_changes_anything_and_every_post_form_carries_the_csrf_token(csrf_client, world):
    """One pass over every admin URL by a superuser: nothing changes, and every POST form on
    the pages carries the token."""
    before = snapshot()
    forms_seen = 0
    missing = []
    for key in _ordered(GET_MATRIX):
        response = csrf_client.get(url_for(key, world))
        if response.get("Content-Type", "").startswith("text/html") and not getattr(
            response, "streaming", False
        ):
            for form in FORM.findall(response.content.decode()):
                opening = form[: form.index(">")]
                if POST_FORM.search(opening):
                    forms_seen += 1
                    if "csrfmiddlewaretoken" not in form:
                        missing.append((key, opening))

    assert snapshot() == before
    assert missing == []
    assert forms_seen > 40  # the change forms, delete pages, actions, import, export, ...
