"""util/tables.py: the one fixed-width table formatter."""

from __future__ import annotations

import pytest

from skippipe.util.tables import format_table


def test_columns_are_as_wide_as_their_widest_cell():
    text = format_table(["variant", "s"], [["baseline", "1.5"], ["ca", "12.25"]])
    assert text.splitlines() == ["variant       s", "baseline    1.5", "ca        12.25"]


def test_formats_missing_values_alignment_and_separator():
    text = format_table(
        ["n", "ppl", "gap"],
        [[1, 3.14159, None], [10, 2.5, 0.125]],
        formats=["d", ".2f", ".1%"],
        align=">><",
        sep=" ",
    )
    assert text.splitlines() == [" n  ppl gap", " 1 3.14 -", "10 2.50 12.5%"]


def test_strings_are_kept_as_given_and_rows_must_match_the_header():
    assert format_table(["a"], [["x"]], formats=[".2f"]) == "a\nx"
    with pytest.raises(ValueError, match="2 cells"):
        format_table(["a", "b"], [["only one"]])
