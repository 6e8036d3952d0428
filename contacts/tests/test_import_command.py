"""manage.py import_contacts FILE [--owner USER] [--list NAME] [--dry-run] [--rejects PATH]"""

from __future__ import annotations

import io
from pathlib import Path

import openpyxl
import pytest
from django.core.management import CommandError, call_command

from contacts.models import Contact, ContactList, Suppression
from leadcenter.factories import ContactFactory, UserFactory

pytestmark = pytest.mark.django_db

MESSY = (
    "\ufeffemail,first_name,last_name,owner,unsubscribed,Notes\n"
    "ann@example.com,Ann,Ångström,,yes,x\n"
    "\n"
    "Ann@Example.com,Ann,Twice,,,\n"
    "bob@,Bob,Broken,,,\n"
    "cy@example.com,Cy,Owned,ghost,,\n"
    "di@example.com,=SUM(A1),Formula,,,,,\n"
    "ed@example.com,Ed,Extra,,,,,surplus\n"
)


def write(tmp_path: Path, text: str, name: str = "contacts.csv") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def run(*args: str, **options) -> tuple[str, str]:
    out, err = io.StringIO(), io.StringIO()
    call_command("import_contacts", *args, stdout=out, stderr=err, **options)
    return out.getvalue(), err.getvalue()


def test_it_imports_the_good_rows_and_reports_each_bad_one_with_its_line(tmp_path):
    path = write(tmp_path, MESSY)

    out, err = run(str(path))

    assert err.splitlines() == [
        "line 4: duplicate: the same address as line 2",
        "line 5: 'bob@' is not a valid email address",
        "line 6: unknown owner 'ghost' (no user with that username or email)",
        "line 8: too many columns: 8 values, the header has 6 columns",
    ]
    assert "Columns ignored (unknown): Notes." in out
    assert "1 blank line skipped." in out
    assert "6 rows read; created 2; updated 0; left 0 unchanged; 4 bad rows skipped." in out
    assert sorted(Contact.objects.values_list("email", flat=True)) == [
        "ann@example.com",
        "di@example.com",
    ]
    assert Contact.objects.get(email="ann@example.com").last_name == "Ångström"
    assert Suppression.objects.get().email == "ann@example.com"
    rejects = tmp_path / "contacts-rejects.csv"
    assert f"Bad rows written to {rejects}" in out
    lines = rejects.read_text(encoding="utf-8-sig").splitlines()
    assert lines[0] == "import_error,email,first_name,last_name,owner,unsubscribed,Notes,,"
    assert len(lines) == 5


def test_the_rejects_file_imports_again_once_fixed(tmp_path):
    path = write(tmp_path, MESSY)
    run(str(path))
    UserFactory(username="ghost")
    rejects = tmp_path / "contacts-rejects.csv"

    out, err = run(str(rejects), rejects=str(tmp_path / "second.csv"))

    assert "line 4: unknown owner" not in err
    assert len(err.splitlines()) == 2  # the bad address and the extra column remain
    assert Contact.objects.get(email="cy@example.com").owner.username == "ghost"
    assert Contact.objects.get(email="ann@example.com").last_name == "Twice"
    assert "Notes" in out  # still unknown, but the reason column is not


def test_a_dry_run_changes_nothing_and_prints_what_would_happen(tmp_path):
    ContactFactory(email="known@example.com", company="Old Co")
    path = write(
        tmp_path,
        "email,company,lists\nknown@example.com,New Co,\nnew@example.com,,Fresh\nnope,,\n",
    )

    out, err = run(str(path), "--dry-run", verbosity=2)

    assert "line 2: update known@example.com (company: 'Old Co' -> 'New Co')" in out
    assert "line 3: create new@example.com" in out
    assert "Lists that would be created: Fresh." in out
    assert "Dry run, nothing changed: 3 rows read; would create 1; would update 1" in out
    assert err == "line 4: 'nope' is not a valid email address\n"
    assert Contact.objects.get().company == "Old Co"
    assert not ContactList.objects.exists()
    assert not (tmp_path / "contacts-rejects.csv").exists()


def test_a_dry_run_writes_the_rejects_file_only_when_asked(tmp_path):
    path = write(tmp_path, "email\nnope\n")

    run(str(path), "--dry-run", "--rejects", str(tmp_path / "bad.csv"))

    assert (tmp_path / "bad.csv").read_text(encoding="utf-8-sig").splitlines()[1] == (
        "line 2: 'nope' is not a valid email address,nope"
    )


def test_owner_and_list_options(tmp_path):
    olivia = UserFactory(username="olivia", email="olivia@corp.test")
    bob = UserFactory(username="bob")
    path = write(tmp_path, "email,owner\na@example.com,\nb@example.com,bob\n")

    run(str(path), "--owner", "OLIVIA@corp.test", "--list", "Trade fair 2025")

    owners = dict(Contact.objects.values_list("email", "owner_id"))
    assert owners == {"a@example.com": olivia.pk, "b@example.com": bob.pk}
    fair = ContactList.objects.get(name="Trade fair 2025")
    assert fair.contacts.count() == 2


def test_an_unknown_owner_option_stops_before_anything_is_read(tmp_path):
    path = write(tmp_path, "email\na@example.com\n")

    with pytest.raises(CommandError, match="--owner nobody: no user has that username"):
        run(str(path), "--owner", "nobody")
    assert not Contact.objects.exists()


def test_a_file_that_cannot_be_read_fails_and_changes_nothing(tmp_path):
    path = write(tmp_path, "name,company\nAnn,Acme\n")

    with pytest.raises(CommandError, match="Nothing imported: The file has no email column"):
        run(str(path))
    with pytest.raises(CommandError, match="No such file"):
        run(str(tmp_path / "missing.csv"))


def test_importing_the_same_file_twice_is_idempotent(tmp_path):
    path = write(tmp_path, "email,first_name,lists,unsubscribed\nx@example.com,X,L1;L2,yes\n")

    run(str(path))
    out, _ = run(str(path))

    assert "created 0; updated 0; left 1 unchanged" in out
    assert Contact.objects.count() == 1
    assert Contact.lists.through.objects.count() == 2
    assert Suppression.objects.count() == 1


def test_an_xlsx_file(tmp_path):
    book = openpyxl.Workbook()
    for row in (["Email", "First Name", "Do Not Email"], ["x@example.com", "X", 1], ["bad", 2, 0]):
        book.active.append(row)
    path = tmp_path / "people.xlsx"
    book.save(path)

    out, err = run(str(path))

    assert "people.xlsx: XLSX" in out
    assert err == "line 3: 'bad' is not a valid email address\n"
    assert Contact.objects.get().do_not_email is True
    assert (tmp_path / "people-rejects.xlsx").exists()


def test_a_progress_bar_is_drawn_when_asked(tmp_path):
    rows = "\n".join(f"p{i}@example.com" for i in range(3000))
    path = write(tmp_path, f"email\n{rows}\n")

    _, err = run(str(path), "--progress")

    assert "Checking  [" in err
    assert "Importing [##############################] 100%  3,000/3,000 rows\n" in err


def test_no_progress_bar_when_the_output_is_not_a_terminal(tmp_path):
    path = write(tmp_path, "email\na@example.com\n")

    _, err = run(str(path))

    assert err == ""
