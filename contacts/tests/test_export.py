"""The admin's contact export (django-import-export): the filtered changelist, as CSV or XLSX,
safe to open in a spreadsheet, and importable again as it is."""

from __future__ import annotations

import csv
import io

import openpyxl
import pytest
from django.urls import reverse

from contacts.imports import COLUMNS, contacts_import
from contacts.models import Contact
from contacts.resources import EXPORT_COLUMNS
from leadcenter.factories import ContactFactory, ContactListFactory, TopicFactory, UserFactory

pytestmark = pytest.mark.django_db

EXPORT_URL = reverse("admin:contacts_contact_export")
CHANGELIST_URL = reverse("admin:contacts_contact_changelist")
CSV_FORMAT, XLSX_FORMAT = "0", "1"
DANGEROUS = ['=HYPERLINK("http://evil.test","x")', "+1+2", "-2+3", "@SUM(A1)", "\t=1", "\r=1"]


def export(client, file_format: str = CSV_FORMAT, query: str = "", fields=EXPORT_COLUMNS):
    data = {"format": file_format, "resource": "0"}
    data.update({f"contactresource_{name}": "on" for name in fields})
    return client.post(EXPORT_URL + query, data)


def csv_rows(response) -> list[dict[str, str]]:
    assert response.content.startswith(b"\xef\xbb\xbf")  # the BOM Excel needs to read UTF-8
    return list(csv.DictReader(io.StringIO(response.content.decode("utf-8-sig"))))


def xlsx_rows(response) -> list[list[object]]:
    sheet = openpyxl.load_workbook(io.BytesIO(response.content)).active
    return [[cell.value for cell in row] for row in sheet.iter_rows()]


def test_a_manager_exports_the_filtered_changelist_as_csv(manager_client):
    owner = UserFactory(username="olivia")
    fairs = ContactListFactory(name="Fairs")
    news = TopicFactory(name="News")
    lead = ContactFactory(
        email="lead@example.com", first_name="Lee", stage="lead", owner=owner, lists=[fairs],
        do_not_email=True,
    )  # fmt: skip
    lead.opted_out_topics.add(news)
    ContactFactory(email="sub@example.com", stage="subscriber")

    response = export(manager_client, query="?stage__exact=lead")

    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/csv")
    assert response["Content-Disposition"].startswith('attachment; filename="Contact-')
    rows = csv_rows(response)
    assert list(rows[0]) == list(EXPORT_COLUMNS)
    assert rows == [
        {
            "email": "lead@example.com",
            "first_name": "Lee",
            "last_name": lead.last_name,
            "company": lead.company,
            "owner": "olivia",
            "stage": "lead",
            "do_not_email": "yes",
            "do_not_mass_email": "no",
            "unsubscribed": "no",
            "lists": "Fairs",
            "opted_out_topics": "News",
            "email_status": "valid",
        }
    ]


def test_a_search_is_exported_as_shown(manager_client):
    ContactFactory(email="ada@example.com", last_name="Lovelace")
    ContactFactory(email="charles@example.com", last_name="Babbage")

    rows = csv_rows(export(manager_client, query="?q=Lovelace"))

    assert [row["email"] for row in rows] == ["ada@example.com"]


def test_chosen_columns_only(manager_client):
    ContactFactory(email="few@example.com", first_name="Few")

    rows = csv_rows(export(manager_client, fields=["email", "first_name"]))

    assert rows == [{"email": "few@example.com", "first_name": "Few"}]


@pytest.mark.parametrize("file_format", [CSV_FORMAT, XLSX_FORMAT])
def test_cells_a_spreadsheet_would_run_are_neutralised(manager_client, file_format):
    for i, name in enumerate(DANGEROUS):
        ContactFactory(email=f"f{i}@example.com", first_name=name, last_name=f"{i:02}")

    response = export(manager_client, file_format, fields=["first_name", "last_name"])

    if file_format == CSV_FORMAT:
        names = [row["first_name"] for row in csv_rows(response)]
    else:
        names = [row[0] for row in xlsx_rows(response)[1:]]
        sheet = openpyxl.load_workbook(io.BytesIO(response.content)).active
        assert all(cell.data_type == "s" for cell in sheet["A"][1:])
        # XML reads a carriage return as a line feed; the cell is text either way.
        names = [name.replace("\n", "\r") for name in names]
    assert names == ["'" + name for name in DANGEROUS]


def test_an_xlsx_export_is_a_workbook_with_the_same_columns(manager_client):
    ContactFactory(email="x@example.com", first_name="Xenia", company="Ümlaut GmbH")

    response = export(manager_client, XLSX_FORMAT)

    assert response["Content-Disposition"].endswith('.xlsx"')
    rows = xlsx_rows(response)
    assert rows[0] == list(EXPORT_COLUMNS)
    assert rows[1][:4] == ["x@example.com", "Xenia", rows[1][2], "Ümlaut GmbH"]


@pytest.mark.parametrize("file_format", [CSV_FORMAT, XLSX_FORMAT])
def test_an_export_imports_back_unchanged(manager_client, file_format, tmp_path):
    owner = UserFactory(username="olivia")
    TopicFactory(name="News")
    fairs = ContactListFactory(name="Fairs, EMEA")
    contact = ContactFactory(
        email="Round.Trip@Example.com", first_name="=1+2", last_name="Ångström",
        company="-minus Ltd", owner=owner,
        lists=[fairs, ContactListFactory(name="Second")], stage="opportunity",
    )  # fmt: skip
    contact.opted_out_topics.add(*contact.opted_out_topics.model.objects.all())
    ContactFactory(email="other@example.com", do_not_mass_email=True)
    before = list(Contact.objects.order_by("pk").values())

    response = export(manager_client, file_format)
    path = tmp_path / ("export.csv" if file_format == CSV_FORMAT else "export.xlsx")
    path.write_bytes(response.content)
    with path.open("rb") as fh:
        report = contacts_import(fh=fh, file_name=path.name)

    assert report.errors == []
    assert report.unknown_columns == []  # email_status is known, export only
    assert (report.created, report.updated, report.unchanged) == (0, 0, 2)
    assert list(Contact.objects.order_by("pk").values()) == before


@pytest.mark.parametrize("who", ["support_client", "staff_client"])
def test_support_and_staff_cannot_export(request, who):
    client = request.getfixturevalue(who)
    ContactFactory()

    assert client.get(EXPORT_URL).status_code == 403
    assert export(client).status_code == 403
    changelist = client.get(CHANGELIST_URL)
    assert changelist.status_code == 200
    assert changelist.context["has_export_permission"] is False
    assert EXPORT_URL not in changelist.text


def test_a_manager_sees_the_export_button_keeping_the_filters(manager_client):
    changelist = manager_client.get(CHANGELIST_URL + "?stage__exact=lead")

    assert changelist.context["has_export_permission"] is True
    assert f"{EXPORT_URL}?stage__exact=lead" in changelist.text


def test_the_export_costs_the_same_queries_for_more_contacts(
    manager_client, django_assert_max_num_queries
):
    def make(n: int) -> None:
        for _ in range(n):
            contact = ContactFactory(owner=UserFactory(), lists=[ContactListFactory()])
            contact.opted_out_topics.add(TopicFactory())

    make(5)
    export(manager_client)  # warm per-process caches (content types, permissions)
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    with CaptureQueriesContext(connection) as five:
        export(manager_client)
    make(20)
    with django_assert_max_num_queries(len(five)):
        assert len(csv_rows(export(manager_client))) == 25


def test_export_columns_are_the_import_columns_and_the_address_status():
    assert EXPORT_COLUMNS == (*COLUMNS, "email_status")
