"""Admin search and filter parameters fuzzed with hypothesis: random `q`, ordering, paging and
filter query strings (every list_filter's parameters, lookups the admin does not allow,
unknown keys, values with NULs, quotes, huge numbers) on every changelist and every custom
report page. Never a 500 or an unhandled exception (a bad filter is a redirect with `?e=1`, a
400 or a 404), and nothing changes."""

from __future__ import annotations

from urllib.parse import quote, urlencode

import pytest
from django.contrib import admin
from django.contrib.admin import SimpleListFilter
from django.db import models
from django.urls import reverse
from hypothesis import given
from hypothesis import strategies as st

from campaigns.models import Message
from contacts.models import Contact
from tests.security.fuzz import fuzz_settings, tried

pytestmark = pytest.mark.django_db


def filter_parameters(model_admin) -> list[str]:
    """The query parameters a changelist's filters read, plus lookups next to them."""
    names = []
    for entry in model_admin.list_filter:
        if isinstance(entry, type) and issubclass(entry, SimpleListFilter):
            names.append(entry.parameter_name)
            continue
        path = entry if isinstance(entry, str) else entry[0]
        field = model_admin.model._meta.get_field(path.split("__")[0])
        if isinstance(field, models.ForeignKey | models.ManyToManyField) or "__" in path:
            names += [f"{path}__id__exact", f"{path}__isnull", f"{path}__id__in"]
        elif isinstance(field, models.DateTimeField | models.DateField):
            names += [f"{path}__gte", f"{path}__lt", f"{path}__isnull", f"{path}__day"]
        else:
            names += [f"{path}__exact", f"{path}__in", f"{path}__isnull"]
    return names


CHANGELISTS = {
    f"{model._meta.app_label}_{model._meta.model_name}_changelist": filter_parameters(ma)
    for model, ma in admin.site._registry.items()
}
GENERIC = ["q", "o", "p", "e", "all", "_to_field", "_popup", "_changelist_filters"]
# Keys the admin must refuse (not in list_filter, or through a relation it does not show).
FORBIDDEN = [
    "recipient__contact__owner__password__startswith",
    "account__smtp_password__startswith",
    "id__gt",
    "pk",
    "status__regex",
    "created__year__gt",
]
REPORT_PAGES = {
    "summary": ["run", "owner", "sent_after", "sent_before", "sent_min", "sent_max"],
    "details": ["x"],
    "compare": ["ids"],
    "preview": ["contact"],
    "recipient export": CHANGELISTS["campaigns_recipient_changelist"],
    "message export": CHANGELISTS["campaigns_message_changelist"],
}

values = st.one_of(
    st.text(max_size=30),
    st.sampled_from(["", "0", "1", "-1", "yes", "no", "True", "1,2,3", "a,b", "2026-13-45",
                     "2026-01-01..2026-02-01", "..", "9" * 30, "'", '"', "%", "\\", "\x00",
                     "bounced", "hard", "any", "user_not_found", "in_doubt", "webhook",
                     "\u00b2", "1\u00b2", "\u0661", str(2**63), str(2**64 + 1)]),
    st.integers(-(2**70), 2**70).map(str),
)  # fmt: skip


def params(keys: list[str]):
    key = st.one_of(st.sampled_from(keys + GENERIC + FORBIDDEN), st.text(max_size=15))
    return st.lists(st.tuples(key, values), max_size=6)


@pytest.fixture
def report_urls(world):
    campaign, run = world["campaigns.campaign"], world["campaigns.campaignrun"]
    return {
        "summary": reverse("admin:campaigns_campaign_summary", args=[campaign.pk]),
        "details": reverse("admin:campaigns_campaignrun_details", args=[run.pk]),
        "compare": reverse("admin:campaigns_campaign_compare"),
        "preview": reverse("admin:campaigns_campaign_preview", args=[campaign.pk]),
        "recipient export": reverse("admin:campaigns_recipient_export"),
        "message export": reverse("admin:campaigns_message_export"),
    }


def counts() -> tuple:
    return Contact.objects.count(), Message.objects.count()


def assert_handled(response, url: str) -> None:
    assert response.status_code in (200, 302, 400, 403, 404), (url, response.status_code)


@fuzz_settings(scale=3)
@given(data=st.data(), page=st.sampled_from(sorted(CHANGELISTS)))
def test_fuzzed_changelist_parameters_never_500(superuser_client, world, data, page):
    tried("admin search and filter parameters: changelists")
    query = urlencode(data.draw(params(CHANGELISTS[page])))
    url = f"{reverse(f'admin:{page}')}?{query}"
    before = counts()

    assert_handled(superuser_client.get(url), url)
    assert counts() == before


@fuzz_settings(scale=1.5)
@given(data=st.data(), page=st.sampled_from(sorted(REPORT_PAGES)))
def test_fuzzed_report_page_parameters_never_500(superuser_client, world, report_urls, data, page):
    tried("admin search and filter parameters: report pages")
    query = urlencode(data.draw(params(REPORT_PAGES[page])))
    url = f"{report_urls[page]}?{query}"
    before = counts()

    assert_handled(superuser_client.get(url), url)
    assert counts() == before


@pytest.mark.parametrize("page", sorted(CHANGELISTS))
def test_a_search_with_a_nul_character_is_not_a_server_error(superuser_client, world, page):
    # PostgreSQL text cannot hold NUL; the fuzzers draw it rarely, so every list gets it here.
    url = reverse(f"admin:{page}") + "?" + urlencode({"q": "a\x00b"})

    assert_handled(superuser_client.get(url), url)


# Digits Python's str.isdigit() accepts but int() does not ("²"), digits of other scripts, and
# ids past the database's 64-bit integers: each was a 500 on a page that read an id by hand.
CRAFTED_IDS = ["\u00b2", "1\u00b2", "\u0661", "99999999999999999999999", str(2**63), "-1", "0"]


@pytest.mark.parametrize("value", CRAFTED_IDS)
def test_pages_that_read_ids_by_hand_refuse_crafted_ones_without_a_500(
    superuser_client, world, report_urls, value
):
    for url in (
        f"{report_urls['compare']}?{urlencode({'ids': value})}",
        f"{report_urls['compare']}?{urlencode({'ids': f'1,{value}'})}",
        f"{report_urls['preview']}?{urlencode({'contact': value})}",
        f"{report_urls['summary']}?{urlencode({'run': value, 'owner': value})}",
    ):
        assert_handled(superuser_client.get(url), url)


@fuzz_settings(scale=0.5)
@given(job_id=st.text(max_size=40).filter(lambda t: "/" not in t and t.strip()))
def test_fuzzed_job_ids_never_500(superuser_client, world, job_id):
    tried("admin job ids")
    quoted = quote(job_id, safe="")
    for url in (
        f"/admin/contacts/contact/import/{quoted}/",
        f"/admin/contacts/contact/import/{quoted}/preview-rejects/",
        f"/admin/campaigns/message/exports/{quoted}/",
        f"/admin/campaigns/message/exports/{quoted}/download/",
    ):
        assert_handled(superuser_client.get(url), url)
