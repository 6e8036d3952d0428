"""Contact import: read a CSV or XLSX file as other systems export it, check every row, and
write the good ones in bulk.

Three steps, so a file that cannot be read changes nothing and a big one stays fast:

1. read: rows stream from the file with their physical line numbers (the header is line 1;
   blank lines and quoted line breaks are counted, so "line 7" is what an editor shows);
2. check: every row is validated in Python; a bad row becomes a `Reject` with its line and
   reason and keeps its original cells, for the rejects file; owners and topics are looked up
   once for the whole file;
3. write: the good rows go in chunks: one query matches a chunk to existing contacts by
   lower(email), then bulk_create, bulk_update and the many-to-many through tables, one
   transaction per chunk.

Matching is by address, case-insensitively; rows without an address are matched by name and
company among contacts without one, so importing a file twice never duplicates. Blank cells
leave the existing value alone. An unsubscribe is never undone by an import: it is lifted by a
person, on the suppression list.
"""

from __future__ import annotations

import codecs
import csv
import datetime
import gc
import io
import itertools
import json
import operator
import re
import struct
import zipfile
import zlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from typing import IO, Any, Literal
from xml.etree import ElementTree

from django.contrib.auth import get_user_model
from django.core.exceptions import ValidationError
from django.core.validators import EmailValidator
from django.db import DatabaseError, IntegrityError, transaction
from django.db.models import Q
from django.db.models.functions import Lower
from django.utils import timezone

from contacts.models import Contact, ContactList, Suppression, Topic
from contacts.services import suppressions_add_bulk
from leadcenter.spreadsheets import safe_cell, unquote_cell

# The columns a file may have, in the order the export writes them.
COLUMNS: tuple[str, ...] = (
    "email",
    "first_name",
    "last_name",
    "company",
    "owner",
    "stage",
    "do_not_email",
    "do_not_mass_email",
    "unsubscribed",
    "lists",
    "opted_out_topics",
)
FLAG_COLUMNS = ("do_not_email", "do_not_mass_email", "unsubscribed")
# The rejects file's reason column, and export-only columns: read back without a complaint.
REASON_COLUMN = "import_error"
QUIET_COLUMNS = frozenset({REASON_COLUMN, "email_status"})
# Header spellings seen in other systems' exports, after normalising (lower case, spaces and
# hyphens as underscores).
ALIASES = {
    "e_mail": "email",
    "email_address": "email",
    "e_mail_address": "email",
    "firstname": "first_name",
    "given_name": "first_name",
    "lastname": "last_name",
    "surname": "last_name",
    "family_name": "last_name",
    "company_name": "company",
    "organization": "company",
    "organisation": "company",
    "contact_owner": "owner",
    "record_owner": "owner",
    "list": "lists",
    "contact_lists": "lists",
    "topics": "opted_out_topics",
    "opted_out": "opted_out_topics",
}

TRUE_WORDS = frozenset({"yes", "y", "true", "1"})
FALSE_WORDS = frozenset({"no", "n", "false", "0"})
# The usual spellings, looked up as written before the general parse_flag.
_FLAG_WORDS = {
    **{w: True for w in TRUE_WORDS | {w.upper() for w in TRUE_WORDS} | {"Yes", "True"}},
    **{w: False for w in FALSE_WORDS | {w.upper() for w in FALSE_WORDS} | {"No", "False"}},
}
FLAG_HELP = "yes/no, true/false, 1/0, y/n or blank"

CHUNK_SIZE = 2000
MAX_ERRORS_KEPT = 1000  # in the stored JSON report; the rejects file has every one

_TEXT_FIELDS = ("email", "first_name", "last_name", "company")
_TEXT_LIMITS = {name: Contact._meta.get_field(name).max_length for name in _TEXT_FIELDS}
_LIST_NAME_LIMIT = ContactList._meta.get_field("name").max_length
_STAGES = {
    **{choice.value: choice.value for choice in Contact.Stage},
    **{str(choice.label).lower(): choice.value for choice in Contact.Stage},
}
_STAGE_HELP = ", ".join(choice.value for choice in Contact.Stage)
# Fields a chunk may change on an existing contact; loaded together so bulk_update never
# touches a deferred field (one query per contact).
_UPDATABLE = (
    "first_name",
    "last_name",
    "company",
    "owner_id",
    "stage",
    "lead_at",
    "opportunity_at",
    "do_not_email",
    "do_not_mass_email",
    "unsubscribed_at",
)
_LISTS_THROUGH = Contact.lists.through
_TOPICS_THROUGH = Contact.opted_out_topics.through

Progress = Callable[[str, int, int], None]  # (stage, done, total)


class FileError(Exception):
    """The file as a whole cannot be read (not CSV or XLSX, no header, broken): nothing is
    imported."""


class FastEmailValidator(EmailValidator):
    """Django's EmailValidator, same rules, fit for 100,000 rows.

    Django keeps its regexes behind lazy proxies that cost microseconds per use; they are
    resolved once here. A file has few distinct domains, so each is checked once.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        for name in ("user_regex", "domain_regex", "literal_regex"):
            lazy = getattr(self, name)
            setattr(self, name, re.compile(lazy.pattern, lazy.flags))
        self._domains: dict[str, bool] = {}

    def validate_domain_part(self, domain_part: str) -> bool:
        known = self._domains.get(domain_part)
        if known is None:
            known = self._domains[domain_part] = super().validate_domain_part(domain_part)
        return known


def column_key(header: object) -> str:
    """The column a header cell names: "E-mail Address" and "email" are the same column."""
    text = str(header if header is not None else "").replace("\ufeff", "").strip().lower()
    key = re.sub(r"[\s\-]+", "_", text)
    return ALIASES.get(key, key)


def parse_flag(text: str) -> bool | None:
    """yes/no, true/false, 1/0, y/n in any case; blank is None (leave the value alone)."""
    value = text.strip().lower()
    if not value:
        return None
    if value in TRUE_WORDS:
        return True
    if value in FALSE_WORDS:
        return False
    raise ValueError(f"'{text}' is not {FLAG_HELP}")


# --- 1. read -------------------------------------------------------------------------------


@dataclass(slots=True)
class SourceRow:
    line: int
    cells: list[str]


class Source:
    """A table read from a file: its header and its data rows, each with its line number."""

    kind: str = ""
    encoding: str = ""
    delimiter: str = ""
    header: list[str]
    header_line: int = 1
    blank_lines: int = 0
    notes: list[str]

    def rows(self) -> Iterator[SourceRow]:
        raise NotImplementedError

    def fraction(self) -> float:
        """How much of the file has been read, 0 to 1, for progress bars."""
        return 0.0

    def close(self) -> None:
        pass

    def describe(self) -> str:
        if self.kind == "csv":
            name = {"\t": "tab", ",": "comma", ";": "semicolon", "|": "bar"}[self.delimiter]
            return f"CSV, {_ENCODING_NAMES.get(self.encoding, self.encoding)}, {name}-separated"
        return self.kind.upper()


_ENCODING_NAMES = {
    "utf-8": "UTF-8",
    "utf-8-sig": "UTF-8 with BOM",
    "utf-16": "UTF-16",
    "cp1252": "Windows-1252 (Latin-1)",
    "latin-1": "Latin-1",
}
_DELIMITERS = (",", ";", "\t", "|")


def open_source(fh: IO[bytes]) -> Source:
    """Read `fh` (binary, seekable) as XLSX when it is a zip file, as CSV otherwise."""
    start = fh.read(8)
    fh.seek(0)
    if start.startswith(b"PK\x03\x04"):
        return XlsxSource(fh)
    if start.startswith(b"\xd0\xcf\x11\xe0"):
        raise FileError(
            "This is an old Excel (.xls) file; save it as .xlsx or CSV and import that."
        )
    return CsvSource(fh)


def _detect_encoding(fh: IO[bytes]) -> str:
    """UTF-8 (with or without BOM) or UTF-16 with a BOM; otherwise Windows-1252, what Excel on
    Windows writes as "CSV", and Latin-1 when even that does not fit (it always decodes)."""
    fh.seek(0)
    head = fh.read(4)
    candidates = ["utf-8", "cp1252"]
    # A byte-order mark names the encoding, but only a file that then decodes is believed:
    # a BOM followed by bytes invalid in it failed later with a UnicodeDecodeError (a 500).
    if head.startswith(codecs.BOM_UTF8):
        candidates.insert(0, "utf-8-sig")
    elif head.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        candidates.insert(0, "utf-16")
    for encoding in candidates:
        fh.seek(0)
        decoder = codecs.getincrementaldecoder(encoding)()
        try:
            while chunk := fh.read(1 << 20):
                decoder.decode(chunk)
            decoder.decode(b"", final=True)
        except UnicodeDecodeError:
            continue
        return encoding
    return "latin-1"


class CsvSource(Source):
    def __init__(self, fh: IO[bytes]) -> None:
        self.kind = "csv"
        self.notes = []
        self._fh = fh
        fh.seek(0, io.SEEK_END)
        self._size = fh.tell() or 1
        self.encoding = _detect_encoding(fh)
        fh.seek(0)
        # newline="" hands line endings to the csv module, which needs them to read quoted
        # line breaks, and counts \r\n, \n and \r alike as one line.
        self._text = io.TextIOWrapper(fh, encoding=self.encoding, newline="")
        lines = iter(self._text)
        skipped = 0
        first = ""
        for first in lines:
            if first.strip():
                break
            skipped += 1
        else:
            raise FileError("The file is empty.")
        # Excel writes and honours a first line "sep=;" naming the delimiter.
        if match := re.fullmatch(r"sep=(.)\r?\n?", first, flags=re.IGNORECASE):
            self.delimiter = match[1]
            skipped += 1
            first = ""
        else:
            # The header's most frequent candidate, outside quotes ("Name, first";email).
            bare = re.sub(r'"[^"]*"', "", first)
            self.delimiter = max(_DELIMITERS, key=bare.count)
            if not bare.count(self.delimiter):
                self.delimiter = ","
        self._offset = skipped
        self._reader = csv.reader(
            itertools.chain([first] if first else [], lines), delimiter=self.delimiter
        )
        for cells in self._reader_rows():
            if any(cell.strip() for cell in cells):
                self.header = cells
                self.header_line = self._offset + self._reader.line_num
                break
        else:
            raise FileError("The file has no header row.")

    def _reader_rows(self) -> Iterator[list[str]]:
        try:
            yield from self._reader
        except csv.Error as exc:
            line = self._offset + self._reader.line_num
            raise FileError(f"Line {line} cannot be read as CSV ({exc}).") from exc

    def rows(self) -> Iterator[SourceRow]:
        previous = self._reader.line_num
        for cells in self._reader_rows():
            line = self._offset + previous + 1
            previous = self._reader.line_num
            if not "".join(cells).strip():
                self.blank_lines += 1
                continue
            yield SourceRow(line, cells)

    def fraction(self) -> float:
        return min(self._fh.tell() / self._size, 1.0)


def cell_text(value: object) -> str:
    """A spreadsheet value as the text a person sees in the cell."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() else repr(value)
    if isinstance(value, datetime.datetime):
        if value.time() == datetime.time(0):
            return value.date().isoformat()
        return value.isoformat(sep=" ")
    if isinstance(value, datetime.date | datetime.time):
        return value.isoformat()
    return str(value)


class XlsxSource(Source):
    def __init__(self, fh: IO[bytes]) -> None:
        import openpyxl
        from openpyxl.utils.exceptions import InvalidFileException

        self.kind = "xlsx"
        self.notes = []
        try:
            # data_only: a formula cell gives the value Excel shows, not the formula.
            self._book = openpyxl.load_workbook(fh, read_only=True, data_only=True)
        except (InvalidFileException, *_BROKEN_ZIP) as exc:
            raise FileError(f"The file cannot be read as an Excel workbook ({exc}).") from exc
        sheets = self._book.worksheets
        if not sheets:
            raise FileError("The workbook has no sheet.")
        sheet = sheets[0]
        if len(sheets) > 1:
            self.notes.append(
                f"Only the first sheet ({sheet.title}) was read; the workbook has "
                f"{len(sheets)} sheets."
            )
        self._estimate = sheet.max_row or 0
        # Some programs write a wrong sheet size; read what is really there.
        sheet.reset_dimensions()
        self._rows = _readable(enumerate(sheet.iter_rows(values_only=True), start=1))
        self._line = 0
        for line, values in self._rows:
            cells = [cell_text(v) for v in values]
            if any(cell.strip() for cell in cells):
                self.header = cells
                self.header_line = line
                break
        else:
            raise FileError("The first sheet is empty.")

    def rows(self) -> Iterator[SourceRow]:
        for line, values in self._rows:
            self._line = line
            cells = [cell_text(v) for v in values]
            if not "".join(cells).strip():
                self.blank_lines += 1
                continue
            yield SourceRow(line, cells)

    def fraction(self) -> float:
        return min(self._line / self._estimate, 1.0) if self._estimate else 0.0

    def close(self) -> None:
        self._book.close()


# What a damaged zip archive or sheet raises from the standard library while openpyxl reads
# it: the archive's directory or a compressed part is broken, or the XML inside is.
_BROKEN_ZIP = (
    zipfile.BadZipFile,
    KeyError,
    OSError,
    ValueError,
    EOFError,
    NotImplementedError,
    RuntimeError,  # a member flagged as encrypted
    zlib.error,
    struct.error,
    ElementTree.ParseError,
)


def _readable(rows: Iterator[Any]) -> Iterator[Any]:
    """The sheet's rows, read lazily from the archive; damage found on the way is a FileError
    (the import then reports the file as unreadable and changes nothing)."""
    try:
        yield from rows
    except _BROKEN_ZIP as exc:
        raise FileError(f"The file cannot be read as an Excel workbook ({exc}).") from exc


class TableSource(Source):
    """Rows already in memory (a tablib Dataset handed to the resource's import_data): the
    header is line 1 and each row the next line, as the file's blank lines are gone."""

    def __init__(self, header: Iterable[object], rows: Iterable[Iterable[object]]) -> None:
        self.kind = "table"
        self.notes = []
        self.header = [cell_text(v) for v in header]
        self._rows = list(rows)
        self._done = 0

    def rows(self) -> Iterator[SourceRow]:
        for line, values in enumerate(self._rows, start=2):
            self._done += 1
            cells = [cell_text(v) for v in values]
            if not "".join(cells).strip():
                self.blank_lines += 1
                continue
            yield SourceRow(line, cells)

    def fraction(self) -> float:
        return self._done / len(self._rows) if self._rows else 1.0


# --- 2. check ------------------------------------------------------------------------------


@dataclass(slots=True)
class Reject:
    line: int
    reason: str
    cells: list[str] = field(default_factory=list)
    email: str = ""


@dataclass(slots=True, eq=False)
class ContactRow:
    """One good row, parsed. Blank text and None mean "leave the existing value alone"."""

    line: int
    cells: list[str]
    email: str
    key: str
    first_name: str
    last_name: str
    company: str
    owner: str
    stage: str
    do_not_email: bool | None
    do_not_mass_email: bool | None
    unsubscribed: bool | None
    lists: tuple[str, ...]
    topics: tuple[str, ...]
    owner_id: int | None = None
    topic_ids: tuple[int, ...] = ()


def _split_names(text: str, known: set[str]) -> list[str]:
    """List or topic names in one cell. ";" (what the export writes and most CRMs use), "|"
    and line breaks always separate; a comma separates too, unless the part is the name of an
    existing list, so "Partners, EMEA" still round-trips."""
    names: list[str] = []
    seen: set[str] = set()
    for part in re.split(r"[;|\n]", text):
        part = part.strip()
        pieces = [part] if part.lower() in known else part.split(",")
        for piece in pieces:
            name = piece.strip()
            if name and name.lower() not in seen:
                seen.add(name.lower())
                names.append(name)
    return names


class RowChecker:
    """Turns the header into a column map and each row into a ContactRow or a Reject."""

    def __init__(self, header: list[str]) -> None:
        self.width = len(header)
        while self.width and not str(header[self.width - 1]).strip():
            self.width -= 1
        self.columns: dict[str, int] = {}
        self.unknown: list[str] = []
        self.notes: list[str] = []
        for index, name in enumerate(header[: self.width]):
            key = column_key(name)
            if key in COLUMNS:
                if key in self.columns:
                    self.notes.append(
                        f"The column {key} appears twice; only the first one "
                        f"(column {_column_letter(self.columns[key])}) was read."
                    )
                    self.unknown.append(f"{name} (column {_column_letter(index)})")
                else:
                    self.columns[key] = index
            elif key not in QUIET_COLUMNS:
                self.unknown.append(
                    str(name).strip() or f"(no name, column {_column_letter(index)})"
                )
        if "email" not in self.columns:
            raise FileError(
                "The file has no email column. The header row must name its columns: "
                + ", ".join(COLUMNS)
                + "."
            )
        # The mapped cells of a row, in one C-level call (itemgetter of one index returns the
        # cell itself, not a tuple).
        self._keys = tuple(self.columns)
        indices = tuple(self.columns.values())
        self._pick: Callable[[list[str]], tuple[str, ...]] = (
            operator.itemgetter(*indices) if len(indices) > 1 else lambda c: (c[indices[0]],)
        )
        self._email = FastEmailValidator()
        self._seen: dict[str, int] = {}
        self._known_lists = {n.lower() for n in ContactList.objects.values_list("name", flat=True)}
        self._known_topics = {n.lower() for n in Topic.objects.values_list("name", flat=True)}
        self._split_cache: dict[str, tuple[str, ...]] = {}

    def check(self, row: SourceRow) -> ContactRow | Reject:
        cells = row.cells
        count = len(cells)
        if count > self.width and "".join(cells[self.width :]).strip():
            while not cells[count - 1].strip():
                count -= 1
            return Reject(
                row.line,
                f"too many columns: {count} values, the header has {self.width} columns",
                cells,
                cells[self.columns["email"]].strip(),
            )
        if count < self.width:
            cells = [*cells, *[""] * (self.width - count)]
        values = dict(zip(self._keys, map(str.strip, self._pick(cells)), strict=True))
        for name, text in values.items():
            if text[:1] == "'":
                values[name] = unquote_cell(text)
        cells = row.cells
        get = values.get
        problems: list[str] = []
        email = get("email", "")
        texts = (get("first_name", ""), get("last_name", ""), get("company", ""))
        for name, text in zip(_TEXT_FIELDS, (email, *texts), strict=True):
            if len(text) > _TEXT_LIMITS[name]:
                problems.append(f"{name} is longer than {_TEXT_LIMITS[name]} characters")
            elif "\x00" in text:
                problems.append(f"{name} contains a NUL character")
        address_ok = not problems
        if email and address_ok:
            try:
                self._email(email)
            except ValidationError:
                address_ok = False
                problems.append(f"'{email}' is not a valid email address")
        flags: list[bool | None] = []
        for name in FLAG_COLUMNS:
            text = get(name, "")
            flag = _FLAG_WORDS.get(text) if text else None
            if flag is None and text:
                try:
                    flag = parse_flag(text)
                except ValueError as exc:
                    problems.append(f"{name}: {exc}")
            flags.append(flag)
        stage = get("stage", "")
        if stage:
            if (found := _STAGES.get(stage.lower())) is None:
                problems.append(f"stage: '{stage}' is not one of {_STAGE_HELP}")
            stage = found or ""
        lists = self._names(get("lists", ""), self._known_lists)
        for name in lists:
            if len(name) > _LIST_NAME_LIMIT:
                problems.append(f"list name longer than {_LIST_NAME_LIMIT} characters: {name}")
        topics = self._names(get("opted_out_topics", ""), self._known_topics)

        if email:
            key = email.lower()
        elif any(texts):
            key = "\x00" + "\x1f".join(t.lower() for t in texts)
        else:
            key = ""
            problems.append("no email address, and no name or company to know the contact by")
        if key and address_ok:
            if (first := self._seen.get(key)) is not None:
                what = "address" if email else "name and company, without an address,"
                problems.append(f"duplicate: the same {what} as line {first}")
            else:
                self._seen[key] = row.line
        if problems:
            return Reject(row.line, "; ".join(problems), cells, email)
        return ContactRow(
            row.line,
            cells,
            email,
            key,
            *texts,
            get("owner", ""),
            stage,
            *flags,
            lists,
            topics,
        )

    def _names(self, text: str, known: set[str]) -> tuple[str, ...]:
        # A file repeats the same few list cells; split each once.
        if not text:
            return ()
        names = self._split_cache.get(text)
        if names is None:
            names = self._split_cache[text] = tuple(_split_names(text, known))
        return names


# Keys per lookup query: a whole chunk, in one round trip, on PostgreSQL. Planned as they
# come, lookups with this many keys were sequential scans (50 ms a query instead of 1,
# growing with the table, so a large import became quadratic); _prefer_index_scans keeps
# them on the indexes. On SQLite, half its parameter limit (999 before 3.32).
LOOKUP_BATCH = CHUNK_SIZE


# After writing this many contacts, PostgreSQL's statistics of the contact tables are
# refreshed at once rather than whenever autovacuum gets to it: planned on the old sizes, the
# next import's lookups of list memberships scanned the whole table (16 ms a query instead of
# under 1 right after 100,000 rows). ANALYZE samples at most 30,000 rows, so it costs a
# fraction of a second whatever the size.
ANALYZE_AFTER_ROWS = 1_000


def _analyze() -> None:
    from django.db import connection

    if connection.vendor != "postgresql":
        return
    tables = [
        Contact._meta.db_table,
        _LISTS_THROUGH._meta.db_table,
        _TOPICS_THROUGH._meta.db_table,
    ]
    try:
        with connection.cursor() as cursor:
            cursor.execute("ANALYZE " + ", ".join(connection.ops.quote_name(t) for t in tables))
    except DatabaseError:  # statistics are an optimisation; never fail an import over them
        pass


def _prefer_index_scans() -> None:
    """Plan the rest of the current transaction's statements with index scans on
    PostgreSQL: a chunk's lookups (contacts by lower(email) or by name, their list and topic
    memberships) and its writes, which find rows by primary key or a unique index.

    With 250 keys a query, the planner took a sequential scan for cheaper until the contact
    table held about 35,000 rows: it counts lower(email) and the hashed comparison with the
    keys at a fraction of what they cost per row. That scan grew with every chunk the import
    had written (140 ms a chunk at 38,000 rows, against 12 ms by the unique index), so the
    first 19 chunks of a 100,000-row import cost quadratically; more keys a query move the
    switch to a larger table, fewer make each query dearer. Every such lookup has an index,
    and turning sequential scans off only makes them very expensive to the planner, never
    impossible. SET LOCAL ends with the transaction.
    """
    from django.db import connection

    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("SET LOCAL enable_seqscan = off")


def _batches(items: list[Any]) -> Iterator[list[Any]]:
    from django.db import connection

    size = min(LOOKUP_BATCH, (connection.features.max_query_params or LOOKUP_BATCH) // 2)
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _column_letter(index: int) -> str:
    from openpyxl.utils import get_column_letter

    return get_column_letter(index + 1)


def _resolve_owners(rows: list[ContactRow]) -> dict[str, int | str]:
    """Owner cell (lower case) -> user id, or the reason it names nobody. A cell names a user
    by username or, failing that, by email address."""
    wanted = {row.owner.lower() for row in rows if row.owner}
    if not wanted:
        return {}
    User = get_user_model()
    username_field = User.USERNAME_FIELD
    found = (
        User.objects.annotate(_u=Lower(username_field), _e=Lower("email"))
        .filter(Q(_u__in=wanted) | Q(_e__in=wanted))
        .values_list("pk", "_u", "_e")
    )
    by_username: dict[str, int] = {}
    by_email: dict[str, list[int]] = {}
    for pk, username, email in found:
        by_username[username] = pk
        by_email.setdefault(email, []).append(pk)
    resolved: dict[str, int | str] = {}
    for name in wanted:
        if name in by_username:
            resolved[name] = by_username[name]
        elif len(matches := by_email.get(name, [])) == 1:
            resolved[name] = matches[0]
        elif matches:
            resolved[name] = f"owner '{name}' is the email address of {len(matches)} users"
        else:
            resolved[name] = f"unknown owner '{name}' (no user with that username or email)"
    return resolved


# --- report --------------------------------------------------------------------------------


@dataclass(slots=True)
class RowPlan:
    """What the import does (or would do) with one good row, for previews."""

    line: int
    action: Literal["create", "update", "unchanged"]
    email: str
    name: str
    changes: dict[str, list[str]] = field(default_factory=dict)  # field -> [old, new]


@dataclass
class ImportReport:
    file_name: str = ""
    file_format: str = ""
    dry_run: bool = False
    rows: int = 0  # data rows read, blank lines not counted
    blank_lines: int = 0
    created: int = 0
    updated: int = 0
    unchanged: int = 0
    error_count: int = 0
    errors: list[Reject] = field(default_factory=list)
    unknown_columns: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    lists_created: list[str] = field(default_factory=list)
    suppressions_added: int = 0
    kept_unsubscribed: int = 0
    fatal: str = ""  # the file could not be read; nothing was imported
    preview: list[RowPlan] = field(default_factory=list)
    # What the rejects file needs: the original header and the source's format.
    header: list[str] = field(default_factory=list)
    kind: str = ""
    delimiter: str = ""

    @property
    def good_rows(self) -> int:
        return self.created + self.updated + self.unchanged

    def summary(self) -> str:
        if self.fatal:
            return f"Nothing imported: {self.fatal}"
        verb = (
            ("would create", "would update", "would leave")
            if self.dry_run
            else ("created", "updated", "left")
        )
        parts = [
            f"{self.rows:,} rows read",
            f"{verb[0]} {self.created:,}",
            f"{verb[1]} {self.updated:,}",
            f"{verb[2]} {self.unchanged:,} unchanged",
            f"{self.error_count:,} bad row{'s' if self.error_count != 1 else ''} "
            + ("would be skipped" if self.dry_run else "skipped"),
        ]
        return "; ".join(parts) + "."

    def remarks(self) -> list[str]:
        """Everything about the file as a whole that a person should know, once each."""
        remarks = list(self.notes)
        if self.unknown_columns:
            remarks.append("Columns ignored (unknown): " + ", ".join(self.unknown_columns) + ".")
        if self.blank_lines:
            s = "s" if self.blank_lines != 1 else ""
            remarks.append(f"{self.blank_lines:,} blank line{s} skipped.")
        if self.lists_created:
            verb = "Lists that would be created" if self.dry_run else "Lists created"
            remarks.append(f"{verb}: " + ", ".join(self.lists_created) + ".")
        if self.suppressions_added:
            verb = "would be added" if self.dry_run else "added"
            what = "address" if self.suppressions_added == 1 else "addresses"
            remarks.append(
                f"{self.suppressions_added:,} unsubscribed {what} {verb} to the suppression list."
            )
        if self.kept_unsubscribed:
            remarks.append(
                f"{self.kept_unsubscribed:,} rows say unsubscribed = no for contacts who "
                "unsubscribed; they stay unsubscribed (a person lifts an unsubscribe on the "
                "suppression list, an import does not)."
            )
        return remarks

    def to_json(self) -> str:
        """The report for storage; the errors without their cells and at most
        MAX_ERRORS_KEPT of them (the rejects file has them all)."""
        data = asdict(self)
        data["errors"] = [
            {"line": e.line, "reason": e.reason, "email": e.email}
            for e in self.errors[:MAX_ERRORS_KEPT]
        ]
        return json.dumps(data)

    @classmethod
    def from_json(cls, text: str) -> ImportReport:
        data = json.loads(text)
        data["errors"] = [Reject(**e) for e in data["errors"]]
        data["preview"] = [RowPlan(**p) for p in data["preview"]]
        return cls(**data)


def write_rejects(report: ImportReport, out: IO[bytes]) -> None:
    """The bad rows as a file of their own, in the format they came in (XLSX stays XLSX; CSV
    keeps its delimiter, in UTF-8 with a BOM so Excel reads it right), with the reason in a
    first column that a re-import ignores. Cells are neutralised against formulas."""
    width = max([len(report.header), *(len(r.cells) for r in report.errors)], default=0)
    # A rejects file imported again has a reason column of its own: the new reason replaces it.
    kept = [
        i
        for i in range(width)
        if i >= len(report.header) or column_key(report.header[i]) != REASON_COLUMN
    ]

    def pick(cells: list[str]) -> list[str]:
        # Cells as read, except that a cell we neutralised earlier is not quoted twice.
        return [unquote_cell(cells[i]) if i < len(cells) else "" for i in kept]

    header = [REASON_COLUMN, *pick(report.header)]
    rows = ([f"line {r.line}: {r.reason}", *pick(r.cells)] for r in report.errors)
    if report.kind == "xlsx":
        import openpyxl

        book = openpyxl.Workbook(write_only=True)
        sheet = book.create_sheet("Rejects")
        sheet.append([safe_cell(cell) for cell in header])
        for row in rows:
            sheet.append([safe_cell(cell) for cell in row])
        book.save(out)
        return
    text = io.TextIOWrapper(out, encoding="utf-8-sig", newline="", write_through=True)
    writer = csv.writer(text, delimiter=report.delimiter or ",")
    writer.writerow([safe_cell(cell) for cell in header])
    for row in rows:
        writer.writerow([safe_cell(cell) for cell in row])
    text.flush()
    text.detach()  # the caller owns `out`


def rejects_extension(report: ImportReport) -> str:
    return "xlsx" if report.kind == "xlsx" else "csv"


# --- 3. write ------------------------------------------------------------------------------


@dataclass
class _Chunk:
    new: list[tuple[ContactRow, Contact]] = field(default_factory=list)
    changed: list[Contact] = field(default_factory=list)
    fields: set[str] = field(default_factory=set)
    list_links: list[tuple[Contact, int]] = field(default_factory=list)
    topic_links: list[tuple[Contact, int]] = field(default_factory=list)
    unsubscribed: list[str] = field(default_factory=list)
    plans: list[RowPlan] = field(default_factory=list)
    created: int = 0
    updated: int = 0
    unchanged: int = 0
    kept_unsubscribed: int = 0


class ContactImporter:
    """Runs one import: `run(source)` reads, checks and writes, returning the report."""

    def __init__(
        self,
        *,
        file_name: str = "",
        default_owner_id: int | None = None,
        list_name: str = "",
        dry_run: bool = False,
        progress: Progress | None = None,
        preview_rows: int = 0,
        on_plan: Callable[[RowPlan], None] | None = None,
        chunk_size: int = CHUNK_SIZE,
        suppression_source: str = "import",
        create_lists: bool = True,
    ) -> None:
        self.file_name = file_name
        self.default_owner_id = default_owner_id
        self.list_name = list_name.strip()
        self.dry_run = dry_run
        self.progress = progress or (lambda stage, done, total: None)
        self.preview_rows = preview_rows
        self.on_plan = on_plan
        self.chunk_size = chunk_size
        self.suppression_source = suppression_source[:100]
        self.create_lists = create_lists
        self.report = ImportReport(file_name=file_name, dry_run=dry_run)
        self._list_ids: dict[str, int] = {}  # lower(name) -> id (negative: not created yet)
        self._owner_names: dict[int, str] = {}  # for previews
        self._list_display: dict[int, str] = {}  # list id -> name, for previews
        self._now = timezone.now()

    def run(self, source: Source) -> ImportReport:
        # The rows read stay alive until the end, a few objects each; a full garbage
        # collection walks every object the collector tracks, and the collector runs more of
        # them as objects accumulate, so without this 100,000 rows cost 27 times the GC time
        # of 10,000 while writing, and 38 times while reading. Frozen objects (what exists
        # now, and the rows as they are checked: see _read) are left alone until
        # gc.unfreeze(); the garbage of each row and chunk is collected as before.
        gc.freeze()
        try:
            return self._run(source)
        finally:
            gc.unfreeze()

    def _run(self, source: Source) -> ImportReport:
        report = self.report
        report.file_format = source.describe()
        report.header = [str(h) for h in source.header]
        report.kind = source.kind
        report.delimiter = source.delimiter
        report.notes.extend(source.notes)
        try:
            checker = RowChecker(source.header)
            report.notes.extend(checker.notes)
            report.unknown_columns = checker.unknown
            rows = self._read(source, checker)
        except FileError as exc:
            report.fatal = str(exc)
            return report
        finally:
            report.blank_lines = source.blank_lines
            source.close()
        rows = self._prepare_lists(self._resolve(rows))
        total = len(rows)
        done = 0
        self.progress("importing", 0, total)
        for start in range(0, total, self.chunk_size):
            chunk = rows[start : start + self.chunk_size]
            self._import_chunk(chunk)
            done += len(chunk)
            self.progress("importing", done, total)
        if not self.dry_run and report.created + report.updated >= ANALYZE_AFTER_ROWS:
            _analyze()
        report.errors.sort(key=lambda r: r.line)
        report.error_count = len(report.errors)
        return report

    def _read(self, source: Source, checker: RowChecker) -> list[ContactRow]:
        rows: list[ContactRow] = []
        errors = self.report.errors
        self.progress("checking", 0, 1000)
        for count, source_row in enumerate(source.rows(), start=1):
            result = checker.check(source_row)
            if isinstance(result, Reject):
                errors.append(result)
            else:
                rows.append(result)
            if count % 5000 == 0:
                gc.freeze()  # the rows checked so far: see run()
                self.progress("checking", int(source.fraction() * 1000), 1000)
        self.report.rows = len(rows) + len(errors)
        self.progress("checking", 1000, 1000)
        return rows

    def _resolve(self, rows: list[ContactRow]) -> list[ContactRow]:
        """Owners and topics, looked up once for the file; rows naming an unknown one are
        rejected with the others."""
        owners = _resolve_owners(rows)
        topics = {name.lower(): pk for pk, name in Topic.objects.values_list("pk", "name")}
        good: list[ContactRow] = []
        for row in rows:
            problems: list[str] = []
            if row.owner:
                owner = owners[row.owner.lower()]
                if isinstance(owner, str):
                    problems.append(owner)
                else:
                    row.owner_id = owner
            if row.topics:
                ids = []
                for name in row.topics:
                    if (pk := topics.get(name.lower())) is None:
                        problems.append(f"unknown topic '{name}'")
                    else:
                        ids.append(pk)
                row.topic_ids = tuple(ids)
            if problems:
                self.report.errors.append(
                    Reject(row.line, "; ".join(problems), row.cells, row.email)
                )
            else:
                good.append(row)
        return good

    def _prepare_lists(self, rows: list[ContactRow]) -> list[ContactRow]:
        """Lists named in the file (or by --list) that do not exist are created, once; or,
        for someone who may not create lists, the rows naming one are rejected."""
        wanted: dict[str, str] = {}
        if self.list_name:
            wanted[self.list_name.lower()] = self.list_name
        for row in rows:
            for name in row.lists:
                wanted.setdefault(name.lower(), name)
        if not wanted:
            return rows
        self._load_lists(wanted)
        missing = [name for key, name in wanted.items() if key not in self._list_ids]
        if not missing:
            return rows
        if not self.create_lists:
            good = []
            for row in rows:
                unknown = [n for n in row.lists if n.lower() not in self._list_ids]
                if unknown:
                    reason = "; ".join(
                        f"unknown list '{n}' (you may not create lists)" for n in unknown
                    )
                    self.report.errors.append(Reject(row.line, reason, row.cells, row.email))
                else:
                    good.append(row)
            return good
        self.report.lists_created = missing
        if self.dry_run:
            for number, name in enumerate(missing, 1):
                self._list_ids[name.lower()] = -number
                self._list_display[-number] = name
            return rows
        ContactList.objects.bulk_create(
            [ContactList(name=name) for name in missing], ignore_conflicts=True
        )
        self._load_lists(wanted)
        return rows

    def _load_lists(self, wanted: dict[str, str]) -> None:
        query = ContactList.objects.annotate(_n=Lower("name")).filter(_n__in=list(wanted))
        for pk, key, name in query.order_by("pk").values_list("pk", "_n", "name"):
            self._list_ids.setdefault(key, pk)
            self._list_display[pk] = name

    def _import_chunk(self, rows: list[ContactRow]) -> None:
        if self.dry_run:
            # A transaction only for _prefer_index_scans' setting: a dry run writes nothing.
            with transaction.atomic():
                _prefer_index_scans()
                chunk = self._plan(rows, lock=False)
            self._count(chunk)
            return
        for _attempt in range(2):
            try:
                with transaction.atomic():
                    _prefer_index_scans()
                    chunk = self._plan(rows, lock=True)
                    self._write(chunk)
            except IntegrityError as exc:
                # Another import or a person added one of these addresses since the chunk was
                # matched: match again; the second time it is an update.
                error: DatabaseError = exc
                continue
            except DatabaseError as exc:
                error = exc
                break
            self._count(chunk)
            return
        if len(rows) > 1:
            # Still refused: one row at a time, so only the rows the database refuses are
            # rejected, not the whole chunk with them.
            for row in rows:
                self._import_chunk([row])
            return
        row = rows[0]
        self.report.errors.append(
            Reject(row.line, f"could not be saved: {error}".strip(), row.cells, row.email)
        )

    def _count(self, chunk: _Chunk) -> None:
        report = self.report
        report.created += chunk.created
        report.updated += chunk.updated
        report.unchanged += chunk.unchanged
        report.kept_unsubscribed += chunk.kept_unsubscribed
        report.suppressions_added += len(chunk.unsubscribed)
        for plan in chunk.plans:
            if len(report.preview) < self.preview_rows:
                report.preview.append(plan)
            if self.on_plan:
                self.on_plan(plan)

    def _existing(self, rows: list[ContactRow], *, lock: bool) -> dict[str, Contact]:
        """The chunk's existing contacts by row key: one query for the addresses (on the
        lower(email) unique index), one for rows without an address."""
        found: dict[str, Contact] = {}
        keys = [row.key for row in rows if row.email]
        nameless = [row for row in rows if not row.email]
        fields = ("pk", "email", *_UPDATABLE)
        for batch in _batches(keys):
            # email <> '' lets the planner use the partial unique index on lower(email).
            query = (
                Contact.objects.exclude(email="")
                .annotate(_key=Lower("email"))
                .filter(_key__in=batch)
                .only(*fields)
            )
            if lock:
                query = query.select_for_update()
            found.update((contact._key, contact) for contact in query)
        if nameless:
            # Last names as written, so the (last_name, first_name) index finds the candidates;
            # the whole key is then compared without regard to case.
            query = (
                Contact.objects.filter(email="", last_name__in={row.last_name for row in nameless})
                .annotate(_f=Lower("first_name"), _l=Lower("last_name"), _c=Lower("company"))
                .order_by("pk")
                .only(*fields)
            )
            if lock:
                query = query.select_for_update()
            for contact in query:
                key = "\x00" + "\x1f".join((contact._f, contact._l, contact._c))
                found.setdefault(key, contact)
        return found

    def _plan(self, rows: list[ContactRow], *, lock: bool) -> _Chunk:
        chunk = _Chunk()
        existing = self._existing(rows, lock=lock)
        contact_ids = [c.pk for c in existing.values()]
        want_plans = self.on_plan is not None or self.preview_rows > len(self.report.preview)
        if want_plans:
            self._learn_owner_names(
                {c.owner_id for c in existing.values()}
                | {row.owner_id for row in rows}
                | {self.default_owner_id}
            )
        default_list = self._list_ids.get(self.list_name.lower()) if self.list_name else None
        list_ids = {self._list_ids[n.lower()] for row in rows for n in row.lists}
        if default_list is not None:
            list_ids.add(default_list)
        topic_ids = {pk for row in rows for pk in row.topic_ids}
        members: set[tuple[int, int]] = set()
        opted_out: set[tuple[int, int]] = set()
        for ids in _batches(contact_ids):
            if list_ids:
                members.update(
                    _LISTS_THROUGH.objects.filter(
                        contact_id__in=ids, contactlist_id__in=list_ids
                    ).values_list("contact_id", "contactlist_id")
                )
            if topic_ids:
                opted_out.update(
                    _TOPICS_THROUGH.objects.filter(
                        contact_id__in=ids, topic_id__in=topic_ids
                    ).values_list("contact_id", "topic_id")
                )
        for row in rows:
            contact = existing.get(row.key)
            is_new = contact is None
            if contact is None:
                contact = Contact(email=row.email)
            changes: dict[str, list[str]] = {}
            changed = False
            for name, new in self._wanted(row, contact, chunk).items():
                old = getattr(contact, name)
                if new is None or old == new:
                    continue
                setattr(contact, name, new)
                if not is_new:
                    changed = True
                    chunk.fields.add(name)
                    if want_plans and not name.endswith("_at"):
                        label = name.removesuffix("_id")
                        changes[label] = [self._shown(name, old), self._shown(name, new)]
            row_lists = [self._list_ids[n.lower()] for n in row.lists]
            if default_list is not None:
                row_lists.append(default_list)
            added_lists = [pk for pk in dict.fromkeys(row_lists) if (contact.pk, pk) not in members]
            added_topics = [pk for pk in row.topic_ids if (contact.pk, pk) not in opted_out]
            chunk.list_links.extend((contact, pk) for pk in added_lists)
            chunk.topic_links.extend((contact, pk) for pk in added_topics)
            action: Literal["create", "update", "unchanged"]
            if is_new:
                chunk.new.append((row, contact))
                chunk.created += 1
                action = "create"
            elif changed or added_lists or added_topics:
                if changed:
                    chunk.changed.append(contact)
                chunk.updated += 1
                action = "update"
            else:
                chunk.unchanged += 1
                action = "unchanged"
            if want_plans:
                if action == "update" and added_lists:
                    changes["lists"] = ["", "+ " + ", ".join(self._list_names(added_lists))]
                if action == "update" and added_topics:
                    changes["opted_out_topics"] = ["", f"+ {len(added_topics)} topic(s)"]
                chunk.plans.append(
                    RowPlan(
                        line=row.line,
                        action=action,
                        email=row.email,
                        name=f"{contact.first_name} {contact.last_name}".strip(),
                        changes=changes,
                    )
                )
        return chunk

    def _wanted(self, row: ContactRow, contact: Contact, chunk: _Chunk) -> dict[str, Any]:
        """The values the row asks for; None leaves a field as it is."""
        if row.owner_id is not None:
            owner_id = row.owner_id
        elif contact.owner_id is None:
            # The default owner (--owner) fills a gap; it never takes a contact from its owner.
            owner_id = self.default_owner_id
        else:
            owner_id = None
        wanted: dict[str, Any] = {
            "first_name": row.first_name or None,
            "last_name": row.last_name or None,
            "company": row.company or None,
            "owner_id": owner_id,
            "do_not_email": row.do_not_email,
            "do_not_mass_email": row.do_not_mass_email,
        }
        if row.stage and (contact.pk is None or row.stage != contact.stage):
            # The contact becomes a lead or an opportunity now, unless it was one before.
            wanted["stage"] = row.stage
            if row.stage in (Contact.Stage.LEAD, Contact.Stage.OPPORTUNITY):
                wanted["lead_at"] = contact.lead_at or self._now
            if row.stage == Contact.Stage.OPPORTUNITY:
                wanted["opportunity_at"] = contact.opportunity_at or self._now
        if row.unsubscribed and contact.unsubscribed_at is None:
            wanted["unsubscribed_at"] = self._now
            if row.email:
                chunk.unsubscribed.append(row.email)
        elif row.unsubscribed is False and contact.unsubscribed_at is not None:
            chunk.kept_unsubscribed += 1
        return wanted

    def _learn_owner_names(self, ids: set[int | None]) -> None:
        missing = {pk for pk in ids if pk is not None and pk not in self._owner_names}
        if missing:
            User = get_user_model()
            self._owner_names.update(
                User.objects.filter(pk__in=missing).values_list("pk", User.USERNAME_FIELD)
            )

    def _shown(self, name: str, value: object) -> str:
        if value is None:
            return ""
        if name == "owner_id":
            return self._owner_names.get(value, f"user #{value}")  # type: ignore[arg-type]
        if isinstance(value, bool):
            return "yes" if value else "no"
        return str(value)

    def _list_names(self, ids: list[int]) -> list[str]:
        return [self._list_display.get(pk, "?") for pk in ids]

    def _write(self, chunk: _Chunk) -> None:
        if chunk.new:
            Contact.objects.bulk_create([contact for _, contact in chunk.new])
        if chunk.changed:
            for contact in chunk.changed:
                contact.updated = self._now
            Contact.objects.bulk_update(chunk.changed, [*sorted(chunk.fields), "updated"])
        if chunk.list_links:
            _LISTS_THROUGH.objects.bulk_create(
                [_LISTS_THROUGH(contact_id=c.pk, contactlist_id=pk) for c, pk in chunk.list_links],
                ignore_conflicts=True,
            )
        if chunk.topic_links:
            _TOPICS_THROUGH.objects.bulk_create(
                [_TOPICS_THROUGH(contact_id=c.pk, topic_id=pk) for c, pk in chunk.topic_links],
                ignore_conflicts=True,
            )
        if chunk.unsubscribed:
            suppressions_add_bulk(
                emails=chunk.unsubscribed,
                reason=Suppression.Reason.UNSUBSCRIBE,
                source=self.suppression_source,
            )


def contacts_import(
    *,
    fh: IO[bytes] | None = None,
    source: Source | None = None,
    file_name: str = "",
    default_owner_id: int | None = None,
    list_name: str = "",
    dry_run: bool = False,
    progress: Progress | None = None,
    preview_rows: int = 0,
    on_plan: Callable[[RowPlan], None] | None = None,
    chunk_size: int = CHUNK_SIZE,
    create_lists: bool = True,
) -> ImportReport:
    """Import contacts from a binary file (`fh`, CSV or XLSX, sniffed) or a `Source`.

    Good rows are written even when others are bad; every bad row is in `report.errors` with
    its line and reason (write them out with `write_rejects`). With `dry_run` nothing is
    written and the report says what would happen. A file that cannot be read at all sets
    `report.fatal` and changes nothing.
    """
    importer = ContactImporter(
        file_name=file_name,
        default_owner_id=default_owner_id,
        list_name=list_name,
        dry_run=dry_run,
        progress=progress,
        preview_rows=preview_rows,
        on_plan=on_plan,
        chunk_size=chunk_size,
        suppression_source=f"import: {file_name}" if file_name else "import",
        create_lists=create_lists,
    )
    if source is None:
        if fh is None:
            raise TypeError("contacts_import needs fh or source")
        try:
            source = open_source(fh)
        except FileError as exc:
            importer.report.fatal = str(exc)
            return importer.report
    return importer.run(source)


# --- admin imports: a job's files ----------------------------------------------------------

JOB_ROOT = "contact_imports"
JOB_KEPT = datetime.timedelta(days=7)
_JOB_ID = re.compile(r"[0-9a-f]{32}")
JobState = Literal["preview", "queued", "running", "done", "failed"]


@dataclass
class ImportJob:
    """One upload in the admin, from its preview to its result.

    Its files live in Django's default storage (MEDIA_ROOT unless configured otherwise), under
    contact_imports/<id>/, because the background worker that imports a large file may run in
    another process or on another machine: the uploaded file, the preview's and the result's
    reports and rejects files, and the progress the worker writes as it goes.
    """

    id: str
    user_id: int
    file_name: str
    source: str  # storage name of the uploaded file
    created: str = ""
    rows: int = 0  # data rows, counted by the preview
    create_lists: bool = True  # the uploader may create contact lists

    @staticmethod
    def storage() -> Any:
        from django.core.files.storage import default_storage

        return default_storage

    @classmethod
    def create(
        cls, *, user_id: int, upload: Any, file_name: str, create_lists: bool = True
    ) -> ImportJob:
        import uuid

        job_id = uuid.uuid4().hex
        suffix = re.sub(r"[^a-z0-9]", "", file_name.rpartition(".")[2].lower())[:8]
        source = cls.storage().save(f"{JOB_ROOT}/{job_id}/source.{suffix or 'bin'}", upload)
        job = cls(
            id=job_id,
            user_id=user_id,
            file_name=file_name[:255],
            source=source,
            created=timezone.now().isoformat(),
            create_lists=create_lists,
        )
        job.save()
        cls.purge()
        return job

    @classmethod
    def purge(cls, *, older_than: datetime.timedelta = JOB_KEPT) -> int:
        """Delete the files of jobs created more than `older_than` ago (their uploads and
        rejects files hold personal data); returns how many jobs it deleted."""
        storage = cls.storage()
        try:
            folders, _ = storage.listdir(JOB_ROOT)
        except FileNotFoundError:
            return 0
        cutoff = timezone.now() - older_than
        purged = 0
        for job_id in folders:
            job = cls.load(job_id)
            if job is None or datetime.datetime.fromisoformat(job.created) >= cutoff:
                continue  # a job still being created has no job.json yet: leave it
            folder = f"{JOB_ROOT}/{job_id}"
            for name in storage.listdir(folder)[1]:
                storage.delete(f"{folder}/{name}")
            storage.delete(folder)  # the file system storage removes the empty folder
            purged += 1
        return purged

    @classmethod
    def load(cls, job_id: str) -> ImportJob | None:
        if not _JOB_ID.fullmatch(job_id or ""):
            return None
        data = cls._read(f"{JOB_ROOT}/{job_id}/job.json")
        return cls(**data) if data else None

    def save(self) -> None:
        self._write("job.json", json.dumps(asdict(self)))

    def _path(self, name: str) -> str:
        return f"{JOB_ROOT}/{self.id}/{name}"

    def _write(self, name: str, content: str | bytes) -> None:
        from django.core.files.base import ContentFile

        storage = self.storage()
        path = self._path(name)
        # Storage.save never overwrites (it picks another name), so the old file goes first;
        # a reader in between finds nothing and shows the job as still working.
        storage.delete(path)
        storage.save(path, ContentFile(content.encode() if isinstance(content, str) else content))

    @classmethod
    def _read(cls, path: str) -> dict[str, Any] | None:
        try:
            with cls.storage().open(path, "rb") as fh:
                return json.loads(fh.read().decode())
        except (FileNotFoundError, ValueError):
            return None

    def open_source(self) -> Any:
        return self.storage().open(self.source, "rb")

    def delete_source(self) -> None:
        self.storage().delete(self.source)

    # Progress, written by whoever runs the import.

    def status(self) -> dict[str, Any]:
        return self._read(self._path("status.json")) or {"state": "preview"}

    def set_status(
        self, state: JobState, *, stage: str = "", done: int = 0, total: int = 0, error: str = ""
    ) -> None:
        status = {
            "state": state,
            "stage": stage,
            "done": done,
            "total": total,
            "error": error,
            "at": timezone.now().isoformat(),
        }
        self._write("status.json", json.dumps(status))

    # Reports and rejects files: "preview" (the dry run) and "result" (the import).

    def save_report(self, kind: Literal["preview", "result"], report: ImportReport) -> None:
        if report.errors:
            out = io.BytesIO()
            write_rejects(report, out)
            self._write(f"{kind}-rejects.{rejects_extension(report)}", out.getvalue())
        self._write(f"{kind}.json", report.to_json())

    def report(self, kind: Literal["preview", "result"]) -> ImportReport | None:
        try:
            with self.storage().open(self._path(f"{kind}.json"), "rb") as fh:
                return ImportReport.from_json(fh.read().decode())
        except (FileNotFoundError, ValueError):
            return None

    def rejects_name(self, kind: Literal["preview", "result"], report: ImportReport) -> str:
        return self._path(f"{kind}-rejects.{rejects_extension(report)}")
