"""Contact imports fuzzed with hypothesis: random bytes, CSV files of random cells under
known and unknown columns with every delimiter, XLSX workbooks of random cell types, and
byte-mutated XLSX files, through `contacts_import` (what `import_contacts` and the admin's
background import run) and through the admin's upload page. Never an unhandled exception or a
500; an unreadable file changes nothing; every row is accounted for (imported, unchanged or
rejected with its line and reason); what is stored is a well-formed contact."""

from __future__ import annotations

import csv
import io
from datetime import date, datetime

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.core.validators import validate_email
from django.urls import reverse
from hypothesis import given
from hypothesis import strategies as st
from openpyxl import Workbook
from openpyxl.cell.cell import ILLEGAL_CHARACTERS_RE

from contacts.imports import COLUMNS, contacts_import
from contacts.models import Contact, Suppression
from tests.security.fuzz import fuzz_settings, tried

pytestmark = pytest.mark.django_db

cell_text = st.one_of(
    st.text(max_size=40),
    st.emails(),
    st.sampled_from(["yes", "no", "1", "0", "lead", "customer", "=1+1", "-", "@x", "", " "]),
    st.text(st.characters(codec="ascii"), max_size=300),  # longer than the columns
)
header = st.lists(
    st.one_of(
        st.sampled_from([*COLUMNS, "Email Address", "E-mail", "sep=,"]), st.text(max_size=12)
    ),
    min_size=1,
    max_size=8,
)


@st.composite
def csv_files(draw) -> bytes:
    columns = draw(header)
    rows = draw(st.lists(st.lists(cell_text, max_size=len(columns) + 2), max_size=8))
    buffer = io.StringIO()
    writer = csv.writer(buffer, delimiter=draw(st.sampled_from([",", ";", "\t", "|"])))
    writer.writerow(columns)
    writer.writerows(rows)
    encoding = draw(st.sampled_from(["utf-8", "utf-8-sig", "utf-16", "cp1252"]))
    return buffer.getvalue().encode(encoding, "replace")


def xml_safe(value):
    """What openpyxl can write: no XML-illegal control characters."""
    return ILLEGAL_CHARACTERS_RE.sub("", value) if isinstance(value, str) else value


xlsx_cell = st.one_of(
    cell_text.map(xml_safe),
    st.integers(-(10**12), 10**12),
    st.floats(allow_nan=False, allow_infinity=False),
    st.booleans(),
    st.none(),
    st.dates(min_value=date(1900, 3, 1)),
    st.datetimes(min_value=datetime(1900, 3, 1)),
)


@st.composite
def xlsx_files(draw) -> bytes:
    workbook = Workbook()
    sheet = workbook.active
    sheet.append([xml_safe(name) for name in draw(header)])
    for row in draw(st.lists(st.lists(xlsx_cell, max_size=9), max_size=6)):
        sheet.append(row)
    out = io.BytesIO()
    workbook.save(out)
    return out.getvalue()


@st.composite
def mutated(draw, source) -> bytes:
    data = bytearray(draw(source))
    for _ in range(draw(st.integers(1, 8))):
        # A position as a fraction: an XLSX file's length varies with the time it was saved.
        i = int(draw(st.floats(0, 1, exclude_max=True)) * len(data))
        data[i] = draw(st.integers(0, 255))
    return bytes(data)


files = st.one_of(
    st.binary(max_size=800),
    # A byte-order mark, then bytes that are not in its encoding (found by the full profile).
    st.tuples(
        st.sampled_from([b"\xef\xbb\xbf", b"\xff\xfe", b"\xfe\xff"]), st.binary(max_size=60)
    ).map(b"".join),
    csv_files(),
    xlsx_files(),
    mutated(xlsx_files()),
    mutated(csv_files().filter(bool)),
)


def contacts_state() -> tuple:
    return list(Contact.objects.order_by("pk").values()), Suppression.objects.count()


def assert_well_formed_contacts() -> None:
    for contact in Contact.objects.all():
        if contact.email:
            validate_email(contact.email)
            assert contact.email == contact.email.strip()
        for name in ("email", "first_name", "last_name", "company"):
            assert "\x00" not in getattr(contact, name)


@fuzz_settings(scale=3)
@given(data=files, dry_run=st.booleans())
def test_fuzzed_import_files_never_raise_and_account_for_every_row(db, data, dry_run):
    tried("import files")
    before = contacts_state()

    report = contacts_import(fh=io.BytesIO(data), file_name="fuzz", dry_run=dry_run)

    if report.fatal or dry_run:
        assert contacts_state() == before
    if not report.fatal:
        assert report.good_rows + report.error_count == report.rows
        for reject in report.errors:
            assert reject.line >= 2 and reject.reason
    assert_well_formed_contacts()


@fuzz_settings(scale=0.5)
@given(data=files, extension=st.sampled_from(["csv", "xlsx", "txt"]))
def test_fuzzed_uploads_to_the_admin_import_page_never_500(superuser_client, data, extension):
    tried("import uploads (admin)")
    before = contacts_state()

    response = superuser_client.post(
        reverse("admin:contacts_contact_import"),
        {
            "import_file": SimpleUploadedFile(f"fuzz.{extension}", data),
            "format": "1" if extension == "xlsx" else "0",
            "resource": "0",
        },
    )

    assert response.status_code == 200
    assert contacts_state() == before  # the upload is only a preview


@pytest.mark.parametrize(
    "data", [b"\xef\xbb\xbf\x80", b"\xef\xbb\xbfemail\n\xff\xfe", b"\xff\xfeA", b"\xfe\xff\xd8\x00"]
)
def test_a_byte_order_mark_before_bytes_not_in_its_encoding_is_not_a_crash(superuser_client, data):
    report = contacts_import(fh=io.BytesIO(data), file_name="bom.csv")
    response = superuser_client.post(
        reverse("admin:contacts_contact_import"),
        {"import_file": SimpleUploadedFile("bom.csv", data), "format": "0", "resource": "0"},
    )

    assert report.fatal or report.rows == report.good_rows + report.error_count
    assert response.status_code == 200
