"""The contact import engine (contacts.imports) through ContactResource.import_file, on real
files written by the tests: messy CSV and XLSX as other systems export them."""

from __future__ import annotations

import datetime
import io
from pathlib import Path

import openpyxl
import pytest
import tablib
from django.core.exceptions import ValidationError
from django.core.validators import validate_email
from django.db import DatabaseError
from hypothesis import given, settings
from hypothesis import strategies as st
from import_export.exceptions import ImportError as ImportExportError

from contacts import imports
from contacts.imports import FastEmailValidator, ImportReport, write_rejects
from contacts.models import Contact, ContactList, Suppression, Topic
from contacts.resources import ContactResource
from leadcenter.factories import (
    ContactFactory,
    ContactListFactory,
    SuppressionFactory,
    TopicFactory,
    UserFactory,
)

pytestmark = pytest.mark.django_db

HEADER = (
    "email,first_name,last_name,company,owner,stage,do_not_email,do_not_mass_email,"
    "unsubscribed,lists,opted_out_topics"
)


def write(tmp_path: Path, text: str, *, name: str = "contacts.csv", encoding: str = "utf-8",
          bom: bool = False) -> Path:  # fmt: skip
    path = tmp_path / name
    data = text.encode(encoding)
    path.write_bytes((b"\xef\xbb\xbf" if bom else b"") + data)
    return path


def write_xlsx(tmp_path: Path, rows: list[list[object]], name: str = "contacts.xlsx") -> Path:
    book = openpyxl.Workbook()
    sheet = book.active
    for row in rows:
        sheet.append(row)
    path = tmp_path / name
    book.save(path)
    return path


def run(path: Path, **kwargs) -> ImportReport:
    with path.open("rb") as fh:
        return ContactResource().import_file(fh, file_name=path.name, **kwargs)


def reasons(report: ImportReport) -> dict[int, str]:
    return {reject.line: reject.reason for reject in report.errors}


def rejects_bytes(report: ImportReport) -> bytes:
    out = io.BytesIO()
    write_rejects(report, out)
    return out.getvalue()


MESSY = "\r\n".join(
    [
        "Email;First Name;Last Name;Company;Owner;Do Not Email;Unsubscribed;Phone",
        "Zoe@Example.com;Zoë;Ångström;Café Müller;alice;yes;no;+49 30 1234",
        "",
        "ZOE@example.COM;Zoe;Again;;;;;",
        "bob@@example.com;Bob;Broken;;;;;",
        "carl@example.com;Carl;Nobody;;zed;;;",
        'dora@example.com;=HYPERLINK("http://evil.test");Formula;;;;;',
        "  ;  ;  ;  ;  ;  ;  ;  ",
        "erin@example.com;Erin;Extra;Acme;;;;;surplus",
        "finn@example.com;Finn;Flag;;;maybe;;",
        "gus@example.com;Gus;Good;;Alice@Example.COM;N;Y;",
        "",
    ]
)


def test_a_messy_file_imports_its_good_rows_and_reports_every_bad_one_by_line(tmp_path):
    UserFactory(username="alice", email="alice@example.com")
    path = write(tmp_path, MESSY, bom=True)

    report = run(path)

    assert reasons(report) == {
        4: "duplicate: the same address as line 2",
        5: "'bob@@example.com' is not a valid email address",
        6: "unknown owner 'zed' (no user with that username or email)",
        9: "too many columns: 9 values, the header has 8 columns",
        10: "do_not_email: 'maybe' is not yes/no, true/false, 1/0, y/n or blank",
    }
    assert report.created == 3
    assert report.rows == 8
    assert report.blank_lines == 2
    assert report.unknown_columns == ["Phone"]
    assert report.file_format == "CSV, UTF-8 with BOM, semicolon-separated"
    zoe = Contact.objects.get(email="Zoe@Example.com")
    assert (zoe.first_name, zoe.last_name, zoe.company) == ("Zoë", "Ångström", "Café Müller")
    assert zoe.owner.username == "alice"
    assert zoe.do_not_email is True
    # Data is stored as written; it is neutralised where it is exported, not here.
    assert Contact.objects.get(email="dora@example.com").first_name.startswith("=HYPERLINK(")
    gus = Contact.objects.get(email="gus@example.com")
    assert gus.owner.username == "alice"  # found by email address, whatever its case
    assert gus.unsubscribed_at is not None
    assert Contact.objects.count() == 3


def test_unknown_columns_are_reported_once_however_many_rows(tmp_path):
    rows = "\n".join(f"p{i}@example.com,{i},x" for i in range(50))
    report = run(write(tmp_path, f"email,phone,Fax Number\n{rows}\n"))

    assert report.unknown_columns == ["phone", "Fax Number"]
    assert report.remarks() == ["Columns ignored (unknown): phone, Fax Number."]
    assert report.created == 50


def test_line_numbers_count_blank_lines_and_line_breaks_inside_quotes(tmp_path):
    text = (
        "\n"  # a blank line before the header: the header is line 2
        "email,company\n"
        'a@example.com,"Two\nLines Ltd"\n'
        "\n"
        "not-an-address,x\r\n"
        "\r"
        "also bad,y\n"
    )
    report = run(write(tmp_path, text))

    assert sorted(reasons(report)) == [6, 8]
    assert Contact.objects.get().company == "Two\nLines Ltd"


@pytest.mark.parametrize(
    ("cell", "expected"),
    [("yes", True), ("YES", True), ("y", True), ("True", True), ("1", True),
     ("no", False), ("No", False), ("N", False), ("FALSE", False), ("0", False),
     ("", False), ("   ", False)],
)  # fmt: skip
def test_flags_accept_every_spelling_in_any_case(tmp_path, cell, expected):
    report = run(write(tmp_path, f"email,do_not_mass_email\nflag@example.com,{cell}\n"))

    assert report.errors == []
    assert Contact.objects.get().do_not_mass_email is expected


@pytest.mark.parametrize("delimiter", [",", ";", "\t"])
def test_comma_semicolon_and_tab_separated_files_are_read(tmp_path, delimiter):
    text = delimiter.join(["email", "first_name", "company"]) + "\n"
    text += delimiter.join(["d@example.com", "Dee", "Dee, Inc"]) + "\n"
    if delimiter == ",":
        text = text.replace("Dee, Inc", '"Dee, Inc"')

    report = run(write(tmp_path, text))

    assert report.errors == []
    assert Contact.objects.get().company == "Dee, Inc"


def test_a_windows_latin_1_file_is_read_when_it_is_not_utf8(tmp_path):
    text = "email;first_name;last_name;company\nm@example.com;Jürgen;Müller;Straße “€” GmbH\n"

    report = run(write(tmp_path, text, encoding="cp1252"))

    assert report.errors == []
    assert "Windows-1252" in report.file_format
    contact = Contact.objects.get()
    assert (contact.first_name, contact.company) == ("Jürgen", "Straße “€” GmbH")


def test_a_utf16_file_with_a_bom_is_read(tmp_path):
    path = tmp_path / "unicode.txt"
    path.write_bytes("email\tfirst_name\nu@example.com\tŁucja\n".encode("utf-16"))

    report = run(path)

    assert report.errors == []
    assert Contact.objects.get().first_name == "Łucja"


def test_a_delimiter_inside_quotes_in_the_header_does_not_count(tmp_path):
    report = run(write(tmp_path, '"Name, first";email\nAnn;a@example.com\n'))

    assert report.errors == []
    assert report.unknown_columns == ["Name, first"]
    assert Contact.objects.get().email == "a@example.com"


def test_excels_sep_line_names_the_delimiter(tmp_path):
    report = run(write(tmp_path, "sep=;\nemail;company\ns@example.com;A,B\nbad;x\n"))

    assert Contact.objects.get().company == "A,B"
    assert list(reasons(report)) == [4]


def test_an_existing_contact_is_matched_whatever_the_case_and_updated_not_duplicated(tmp_path):
    existing = ContactFactory(email="Mixed.Case@Example.com", first_name="Old", company="Keep")
    path = write(tmp_path, "email,first_name,company\nmixed.case@EXAMPLE.com,New,\n")

    report = run(path)

    assert (report.created, report.updated) == (0, 1)
    existing.refresh_from_db()
    assert existing.first_name == "New"
    assert existing.company == "Keep"  # a blank cell leaves the value alone
    assert existing.email == "Mixed.Case@Example.com"
    assert Contact.objects.count() == 1


def test_importing_the_same_file_again_changes_nothing(tmp_path):
    UserFactory(username="alice")
    TopicFactory(name="Newsletter")
    path = write(
        tmp_path,
        HEADER + "\n"
        "a@example.com,Ann,Lee,Acme,alice,lead,yes,no,yes,Customers; Fairs,newsletter\n"
        "b@example.com,Bo,,,,,,,,Customers,\n"
        ",Nameless,Person,Nowhere Ltd,,,,,,,\n",
    )
    first = run(path)
    counts = (
        Contact.objects.count(),
        Contact.lists.through.objects.count(),
        Contact.opted_out_topics.through.objects.count(),
        Suppression.objects.count(),
        ContactList.objects.count(),
    )
    stamps = dict(Contact.objects.values_list("email", "updated"))

    second = run(path)

    assert (first.created, first.errors) == (3, [])
    assert (second.created, second.updated, second.unchanged) == (0, 0, 3)
    assert second.suppressions_added == 0
    assert second.lists_created == []
    assert counts == (
        Contact.objects.count(),
        Contact.lists.through.objects.count(),
        Contact.opted_out_topics.through.objects.count(),
        Suppression.objects.count(),
        ContactList.objects.count(),
    )
    assert counts == (3, 3, 1, 1, 2)
    assert stamps == dict(Contact.objects.values_list("email", "updated"))


def test_a_dry_run_changes_nothing_and_says_what_would_happen(tmp_path):
    ContactFactory(email="known@example.com", company="Old Co")
    path = write(
        tmp_path,
        "email,company,unsubscribed,lists\n"
        "known@example.com,New Co,,\n"
        "new@example.com,,yes,Brand New List\n"
        "broken,,,\n",
    )
    plans = []

    report = run(path, dry_run=True, on_plan=plans.append)

    assert (report.created, report.updated, report.unchanged) == (1, 1, 0)
    assert list(reasons(report)) == [4]
    assert report.lists_created == ["Brand New List"]
    assert report.suppressions_added == 1
    assert "would create 1" in report.summary()
    assert [(p.line, p.action) for p in plans] == [(2, "update"), (3, "create")]
    assert plans[0].changes == {"company": ["Old Co", "New Co"]}
    assert Contact.objects.get().company == "Old Co"
    assert not ContactList.objects.exists()
    assert not Suppression.objects.exists()


def test_unsubscribed_yes_suppresses_the_address_and_no_never_resubscribes(tmp_path):
    earlier = datetime.datetime(2024, 1, 1, tzinfo=datetime.UTC)
    ContactFactory(email="gone@example.com", unsubscribed_at=earlier)
    path = write(
        tmp_path,
        "email,unsubscribed\nNew.Gone@Example.com,yes\ngone@example.com,no\nstays@example.com,y\n",
    )

    report = run(path)

    assert report.suppressions_added == 2
    assert report.kept_unsubscribed == 1
    assert set(Suppression.objects.values_list("email", "reason")) == {
        ("new.gone@example.com", "unsubscribe"),
        ("stays@example.com", "unsubscribe"),
    }
    assert Contact.objects.get(email="gone@example.com").unsubscribed_at == earlier
    assert Contact.objects.get(email="New.Gone@Example.com").unsubscribed_at is not None
    assert any("stay unsubscribed" in remark for remark in report.remarks())


def test_an_existing_unsubscribe_keeps_its_time_and_a_lifted_suppression_stays_lifted(
    tmp_path, superuser
):
    earlier = datetime.datetime(2024, 1, 1, tzinfo=datetime.UTC)
    ContactFactory(email="lifted@example.com", unsubscribed_at=earlier)
    SuppressionFactory(
        email="lifted@example.com",
        reason=Suppression.Reason.UNSUBSCRIBE,
        lifted_at=earlier,
        lifted_by=superuser,
    )

    report = run(write(tmp_path, "email,unsubscribed\nlifted@example.com,yes\n"))

    assert report.unchanged == 1
    assert Contact.objects.get().unsubscribed_at == earlier
    assert not Suppression.objects.filter(lifted_at__isnull=True).exists()


def test_owner_cells_name_users_by_username_or_email_and_the_default_owner_fills_gaps(tmp_path):
    alice = UserFactory(username="alice", email="a@corp.test")
    bob = UserFactory(username="bob", email="b@corp.test")
    default = UserFactory(username="default")
    owned = ContactFactory(email="owned@example.com", owner=bob)
    ownerless = ContactFactory(email="ownerless@example.com")
    path = write(
        tmp_path,
        "email,owner\nx@example.com,ALICE\ny@example.com,b@corp.test\nz@example.com,\n"
        "owned@example.com,\nownerless@example.com,\n",
    )

    report = run(path, default_owner_id=default.pk)

    assert report.errors == []
    owners = dict(Contact.objects.values_list("email", "owner_id"))
    assert owners == {
        "x@example.com": alice.pk,
        "y@example.com": bob.pk,
        "z@example.com": default.pk,
        "owned@example.com": bob.pk,  # never taken from its owner
        "ownerless@example.com": default.pk,
    }
    assert owned.pk and ownerless.pk


def test_an_owner_email_shared_by_two_users_is_refused(tmp_path):
    UserFactory(username="one", email="shared@corp.test")
    UserFactory(username="two", email="shared@corp.test")

    report = run(write(tmp_path, "email,owner\nx@example.com,shared@corp.test\n"))

    assert reasons(report) == {2: "owner 'shared@corp.test' is the email address of 2 users"}


def test_lists_are_created_once_and_topics_must_exist(tmp_path):
    ContactListFactory(name="Partners, EMEA")
    TopicFactory(name="Events")
    path = write(
        tmp_path,
        "email,lists,opted_out_topics\n"
        'a@example.com,"Partners, EMEA; customers | Fairs",events\n'
        'b@example.com,"Customers, Fairs",\n'
        "c@example.com,,Newsletter\n",
    )

    report = run(path, list_name="Spring fair")

    assert reasons(report) == {4: "unknown topic 'Newsletter'"}
    assert sorted(ContactList.objects.values_list("name", flat=True)) == [
        "Fairs", "Partners, EMEA", "Spring fair", "customers",
    ]  # fmt: skip
    assert report.lists_created == ["Spring fair", "customers", "Fairs"]
    a = Contact.objects.get(email="a@example.com")
    assert sorted(a.lists.values_list("name", flat=True)) == [
        "Fairs", "Partners, EMEA", "Spring fair", "customers",
    ]  # fmt: skip
    assert list(a.opted_out_topics.values_list("name", flat=True)) == ["Events"]
    assert Contact.objects.get(email="b@example.com").lists.count() == 3


def test_lists_are_only_ever_added(tmp_path):
    old = ContactListFactory(name="Old")
    contact = ContactFactory(email="a@example.com", lists=[old])

    report = run(write(tmp_path, "email,lists\na@example.com,New\n"))

    assert report.updated == 1
    assert sorted(contact.lists.values_list("name", flat=True)) == ["New", "Old"]


def test_a_stage_sets_when_the_contact_became_a_lead_or_opportunity(tmp_path):
    report = run(
        write(
            tmp_path,
            "email,stage\nl@example.com,Lead\no@example.com,OPPORTUNITY\n"
            "c@example.com,customer\nx@example.com,prospect\n",
        )
    )

    assert reasons(report) == {
        5: "stage: 'prospect' is not one of subscriber, lead, opportunity, customer"
    }
    lead, opportunity, customer = (Contact.objects.get(email=f"{c}@example.com") for c in "loc")
    assert (lead.stage, lead.lead_at is not None, lead.opportunity_at) == ("lead", True, None)
    assert opportunity.stage == "opportunity"
    assert opportunity.lead_at and opportunity.opportunity_at
    assert (customer.stage, customer.lead_at) == ("customer", None)


def test_rows_without_an_address_are_kept_and_matched_by_name_on_the_next_import(tmp_path):
    path = write(tmp_path, "email,first_name,last_name,company\n,Ann,Lee,Acme\n,,,\n, , ,\n")

    first = run(path)
    second = run(path)

    assert (first.created, second.created, second.unchanged) == (1, 0, 1)
    assert Contact.objects.get().email == ""


def test_a_row_with_nothing_to_know_the_contact_by_is_refused(tmp_path):
    report = run(write(tmp_path, "email,first_name,do_not_email\n,,yes\n"))

    assert reasons(report) == {2: "no email address, and no name or company to know the contact by"}


def test_too_long_values_are_refused_not_truncated(tmp_path):
    report = run(write(tmp_path, f"email,first_name\nlong@example.com,{'x' * 101}\n"))

    assert reasons(report) == {2: "first_name is longer than 100 characters"}
    assert not Contact.objects.exists()


def test_trailing_empty_cells_are_not_too_many_columns(tmp_path):
    report = run(write(tmp_path, "email,first_name\nt@example.com,Tom,,,\n"))

    assert report.errors == []


def test_header_aliases_and_a_repeated_column(tmp_path):
    path = write(tmp_path, "E-mail Address,Surname,Given Name,email\nh@example.com,Hay,Hal,x\n")

    report = run(path)

    assert report.errors == []
    assert report.unknown_columns == ["email (column D)"]
    assert "The column email appears twice" in report.notes[0]
    contact = Contact.objects.get()
    assert (contact.email, contact.first_name, contact.last_name) == ("h@example.com", "Hal", "Hay")


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"first_name,company\nAnn,Acme\n", "no email column"),
        (b"", "empty"),
        (b"\n\n  \n", "empty"),
        (b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1 old excel", "old Excel (.xls)"),
        (b"PK\x03\x04 not really a zip", "cannot be read as an Excel workbook"),
    ],
)
def test_a_file_that_cannot_be_read_changes_nothing(tmp_path, content, message):
    ContactFactory(email="untouched@example.com")
    path = tmp_path / "broken.csv"
    path.write_bytes(content)

    report = run(path)

    assert message in report.fatal
    assert report.summary().startswith("Nothing imported:")
    assert Contact.objects.count() == 1


def test_an_xlsx_with_dates_numbers_and_formulas_is_read_as_shown(tmp_path):
    TopicFactory(name="Events")
    path = write_xlsx(
        tmp_path,
        [
            [
                "Email",
                "First Name",
                "Company",
                "Do Not Email",
                "Unsubscribed",
                "Signed up",
                "Score",
            ],
            ["x1@example.com", "Xavier", 1984, 1, True, datetime.datetime(2024, 3, 1), 9.5],
            [],
            ["x2@example.com", datetime.datetime(2024, 5, 17), 3.25, 0, False, None, 7],
            ["not an address", "Bad", "Row", "yes", None, None, None],
            ["x3@example.com", "Extra", "Cols", None, None, None, None, "surplus"],
            ["X1@EXAMPLE.COM", "Dup", None, None, None, None, None],
        ],
    )

    report = run(path)

    assert report.file_format == "XLSX"
    assert reasons(report) == {
        5: "'not an address' is not a valid email address",
        6: "too many columns: 8 values, the header has 7 columns",
        7: "duplicate: the same address as line 2",
    }
    assert report.blank_lines == 1
    assert report.unknown_columns == ["Signed up", "Score"]
    x1 = Contact.objects.get(email="x1@example.com")
    assert (x1.company, x1.do_not_email, x1.unsubscribed_at is not None) == ("1984", True, True)
    x2 = Contact.objects.get(email="x2@example.com")
    assert (x2.first_name, x2.company, x2.do_not_email) == ("2024-05-17", "3.25", False)


def test_only_the_first_sheet_is_read_and_that_is_said(tmp_path):
    book = openpyxl.Workbook()
    book.active.append(["email"])
    book.active.append(["first@example.com"])
    book.create_sheet("Other").append(["email"])
    path = tmp_path / "two.xlsx"
    book.save(path)

    report = run(path)

    assert report.created == 1
    assert "Only the first sheet" in report.notes[0]


def test_the_rejects_file_round_trips(tmp_path):
    UserFactory(username="alice")
    path = write(
        tmp_path,
        "email;first_name;owner;do_not_email;notes\n"
        "good@example.com;Good;alice;yes;keep me\n"
        "bad@;=cmd|' /C calc'!A0;alice;no;formula\n"
        "fix@example.com;Fixable;nobody;yes;unknown owner\n",
    )
    report = run(path)
    assert sorted(reasons(report)) == [3, 4]
    rejects = tmp_path / "contacts-rejects.csv"
    rejects.write_bytes(rejects_bytes(report))

    text = rejects.read_bytes().decode("utf-8-sig")
    assert text.splitlines()[0] == "import_error;email;first_name;owner;do_not_email;notes"
    assert "line 3: 'bad@' is not a valid email address;bad@;'=cmd|' /C calc'!A0;" in text

    again = run(rejects)  # as it is: the same rows fail for the same reasons

    assert [r.reason for r in again.errors] == [r.reason for r in report.errors]
    assert [r.line for r in again.errors] == [2, 3]
    assert again.unknown_columns == ["notes"]  # the reason column is not "unknown"
    # Written again, a neutralised cell is not quoted twice.
    assert rejects_bytes(again).decode("utf-8-sig").splitlines()[1:] == [
        line.replace("line 3:", "line 2:").replace("line 4:", "line 3:")
        for line in text.splitlines()[1:]
    ]

    fixed = rejects.read_text(encoding="utf-8-sig").replace("bad@;", "bad@example.com;")
    rejects.write_text(fixed.replace(";nobody;", ";alice;"), encoding="utf-8-sig")
    final = run(rejects)

    assert (final.created, final.errors) == (2, [])
    assert Contact.objects.get(email="bad@example.com").first_name == "=cmd|' /C calc'!A0"
    assert Contact.objects.get(email="fix@example.com").owner.username == "alice"


def test_the_rejects_file_of_an_xlsx_is_an_xlsx_that_round_trips(tmp_path):
    book = openpyxl.Workbook()
    for row in (["email", "first_name"], ["ok@example.com", "Ok"], ["nope", "=1+2"]):
        book.active.append(row)
    book.active["B3"].data_type = "s"  # text typed as '=1+2 in Excel, not a formula
    path = tmp_path / "contacts.xlsx"
    book.save(path)
    report = run(path)
    rejects = tmp_path / "rejects.xlsx"
    rejects.write_bytes(rejects_bytes(report))

    sheet = openpyxl.load_workbook(rejects).active
    assert [c.value for c in sheet[1]] == ["import_error", "email", "first_name"]
    assert [c.value for c in sheet[2]] == [
        "line 3: 'nope' is not a valid email address", "nope", "'=1+2",
    ]  # fmt: skip
    assert sheet["C2"].data_type == "s"  # text, not a formula

    again = run(rejects)
    assert [r.reason for r in again.errors] == ["'nope' is not a valid email address"]


def test_many_rows_go_in_chunks_with_progress(tmp_path):
    lines = [f"bulk{i}@example.com,N{i},Customers" for i in range(2500)]
    lines[1200] = "broken-address,N,Customers"
    path = write(tmp_path, "email,first_name,lists\n" + "\n".join(lines) + "\n")
    seen = []

    report = run(path, progress=lambda stage, done, total: seen.append((stage, done, total)))

    assert report.created == 2499
    assert list(reasons(report)) == [1202]
    assert Contact.lists.through.objects.count() == 2499
    assert ("importing", 2499, 2499) in seen
    assert seen[-1] == ("importing", 2499, 2499)
    assert ("checking", 1000, 1000) in seen


def test_chunks_are_matched_and_written_one_at_a_time(tmp_path, django_assert_max_num_queries):
    ContactFactory.create_batch(30)
    path = write(tmp_path, "email\n" + "\n".join(f"c{i}@example.com" for i in range(400)) + "\n")
    # Per chunk: its savepoint, the planner setting (PostgreSQL), the lookup, the insert, and
    # the savepoint's release.
    with path.open("rb") as fh, django_assert_max_num_queries(5 * 8 + 10):
        report = imports.contacts_import(fh=fh, chunk_size=50)
    assert report.created == 400


def test_postgresql_matches_a_chunk_by_index_not_by_reading_the_table(tmp_path):
    from django.db import connection

    if connection.vendor != "postgresql":
        pytest.skip("a PostgreSQL planner choice")
    Contact.objects.bulk_create(Contact(email=f"old{i}@example.com") for i in range(3000))
    path = write(
        tmp_path, "email,lists\n" + "".join(f"c{i}@example.com,Fair\n" for i in range(300))
    )
    path.write_text(path.read_text() + "old7@example.com,Fair\n")
    plans: list[str] = []

    def explain(execute, sql, params, many, context):
        if sql.startswith("SELECT") and 'FROM "contacts_contact"' in sql:
            # The plan the lookup gets in its own transaction, with its own parameters.
            with context["connection"].cursor() as cursor:
                cursor.execute("EXPLAIN " + sql, params)
                plans.append(" ".join(row[0] for row in cursor.fetchall()))
        return execute(sql, params, many, context)

    with connection.execute_wrapper(explain):
        report = run(path)

    assert (report.created, report.updated) == (300, 1)
    assert plans
    assert not [plan for plan in plans if "Seq Scan on contacts_contact " in plan]


def test_an_address_added_meanwhile_is_updated_not_duplicated(tmp_path, monkeypatch):
    path = write(tmp_path, "email,company\nrace@example.com,Imported\n")
    ContactFactory(email="RACE@example.com", company="Theirs")
    real = imports.ContactImporter._existing
    calls = []

    def existing_after_a_concurrent_insert(self, rows, *, lock):
        # The first time, the chunk is matched as if someone else's insert of the same
        # address (in another case) had not committed yet: the bulk insert then collides.
        calls.append(lock)
        return {} if len(calls) == 1 else real(self, rows, lock=lock)

    monkeypatch.setattr(imports.ContactImporter, "_existing", existing_after_a_concurrent_insert)
    report = run(path)

    assert len(calls) == 2
    assert (report.created, report.updated, report.errors) == (0, 1, [])
    assert Contact.objects.get().company == "Imported"


def test_a_row_the_database_refuses_is_rejected_alone(tmp_path, monkeypatch):
    path = write(tmp_path, "email\n" + "\n".join(f"r{i}@example.com" for i in range(5)) + "\n")
    real = imports.ContactImporter._write

    def refuse_r3(self, chunk):
        if any(contact.email == "r3@example.com" for _, contact in chunk.new):
            raise DatabaseError("value refused")
        return real(self, chunk)

    monkeypatch.setattr(imports.ContactImporter, "_write", refuse_r3)
    report = run(path)

    assert reasons(report) == {5: "could not be saved: value refused"}
    assert report.created == 4
    assert Contact.objects.count() == 4


def test_import_data_keeps_django_import_exports_api_on_the_same_rules():
    dataset = tablib.Dataset(headers=["email", "first_name", "owner"])
    dataset.append(["api@example.com", "Api", ""])
    dataset.append(["broken", "Broken", ""])
    dataset.append(["other@example.com", "Other", "ghost"])

    result = ContactResource().import_data(dataset, dry_run=False)

    assert result.totals["new"] == 1
    assert [(row.number, row.error.messages) for row in result.invalid_rows] == [
        (3, ["'broken' is not a valid email address"]),
        (4, ["unknown owner 'ghost' (no user with that username or email)"]),
    ]
    assert result.has_errors()
    assert [str(error.error) for error in result.base_errors] == [
        "line 3: 'broken' is not a valid email address",
        "line 4: unknown owner 'ghost' (no user with that username or email)",
    ]
    assert Contact.objects.get().email == "api@example.com"


def test_import_data_with_raise_errors_writes_nothing_when_a_row_is_bad():
    dataset = tablib.Dataset(headers=["email"])
    dataset.append(["fine@example.com"])
    dataset.append(["broken"])

    with pytest.raises(ImportExportError, match="'broken' is not a valid email address"):
        ContactResource().import_data(dataset, raise_errors=True)
    assert not Contact.objects.exists()

    dataset.pop()
    result = ContactResource().import_data(dataset, raise_errors=True)
    assert result.totals["new"] == 1
    assert Contact.objects.get().email == "fine@example.com"


@settings(max_examples=300, deadline=None)
@given(
    st.one_of(
        st.emails(),
        st.text(max_size=40),
        st.builds(lambda a, b: f"{a}@{b}", st.text(max_size=12), st.text(max_size=15)),
    )
)
def test_the_fast_email_validator_agrees_with_djangos(address):
    def accepted(validate) -> bool:
        try:
            validate(address)
        except ValidationError:
            return False
        return True

    assert accepted(FastEmailValidator()) is accepted(validate_email)


def test_topics_are_matched_whatever_the_case(tmp_path):
    TopicFactory(name="Product News")

    report = run(write(tmp_path, "email,opted out topics\nt@example.com,product news\n"))

    assert report.errors == []
    assert Topic.objects.get().opted_out_contacts.get().email == "t@example.com"


def test_an_xlsx_shows_its_progress_while_it_is_checked(tmp_path):
    rows = [["email"], *([f"x{i}@example.com"] for i in range(6000))]
    seen = []

    report = run(
        write_xlsx(tmp_path, rows), progress=lambda stage, done, total: seen.append((stage, done))
    )

    assert report.created == 6000
    checking = [done for stage, done in seen if stage == "checking"]
    assert any(0 < done < 1000 for done in checking), checking  # the share read so far
