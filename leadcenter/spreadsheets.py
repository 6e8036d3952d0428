"""Cells for the spreadsheets LeadCenter writes (contact exports, rejects files, reports).

Spreadsheet programs read a cell that starts with `=`, `+`, `-` or `@` as a formula, and a
leading tab or carriage return can hide one; a contact named `=HYPERLINK(...)` would then run
in the manager's Excel ("CSV injection", OWASP). Every cell we write goes through
`safe_cell`, which makes such a value text by prefixing a single quote, as OWASP recommends.
`unquote_cell` undoes exactly that when one of our files is imported again, so an export or a
rejects file round-trips.
"""

from __future__ import annotations

from typing import TypeVar

# OWASP "CSV Injection": the characters that make a cell a formula or hide one.
FORMULA_TRIGGERS = ("=", "+", "-", "@", "\t", "\r")

T = TypeVar("T")


def safe_cell(value: T) -> T | str:
    """The value as it should be written to a CSV or XLSX cell: text that a spreadsheet would
    run as a formula gets a leading single quote; anything else (numbers, dates, None, plain
    text) is returned unchanged."""
    # Text that already looks neutralised ("'=x") gets a quote too, so unquote_cell can tell
    # it from our own prefix and every text value round-trips.
    if isinstance(value, str) and value.lstrip("'").startswith(FORMULA_TRIGGERS):
        return "'" + value
    return value


def unquote_cell(value: str) -> str:
    """Undo `safe_cell` on a value read back from a spreadsheet. Only a quote in front of a
    formula character is removed; a name such as "'t Hooft" keeps its apostrophe."""
    if value.startswith("'") and value.lstrip("'").startswith(FORMULA_TRIGGERS):
        return value[1:]
    return value
