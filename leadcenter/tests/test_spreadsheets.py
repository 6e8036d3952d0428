from __future__ import annotations

import datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from leadcenter.spreadsheets import safe_cell, unquote_cell


@pytest.mark.parametrize(
    "value",
    [
        "=1+2",
        '=HYPERLINK("http://evil.test","x")',
        "+31 20 123",
        "-2+3",
        "@SUM(A1)",
        "\t=1",
        "\r=1",
    ],
)
def test_it_neutralises_text_that_a_spreadsheet_would_run(value):
    assert safe_cell(value) == "'" + value


@pytest.mark.parametrize("value", ["Ada", "ada@example.test", "", "O'Brien", " =1", "a=b"])
def test_it_leaves_plain_text_alone(value):
    assert safe_cell(value) == value


@pytest.mark.parametrize("value", [None, 42, -3, 2.5, True, datetime.date(2024, 1, 5)])
def test_it_leaves_values_that_are_not_text_alone(value):
    assert safe_cell(value) is value


def test_unquote_keeps_an_apostrophe_that_is_part_of_a_name():
    assert unquote_cell("'t Hooft") == "'t Hooft"
    assert unquote_cell("'") == "'"


@given(st.text())
def test_unquote_undoes_safe_cell_for_any_text(value):
    assert unquote_cell(safe_cell(value)) == value
