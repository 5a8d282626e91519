"""Fixed-width text tables: a header row and data rows, each column as wide as its widest cell.

Cells may be strings or values; a column's format spec (e.g. ".2f", ".1%") formats its
values, and None prints as "-". Alignment per column: "<" left, ">" right; by default the first
column is left-aligned (names) and the others right-aligned (numbers)."""

from __future__ import annotations

from collections.abc import Sequence

MISSING = "-"


def format_table(
    header: Sequence[str],
    rows: Sequence[Sequence[object]],
    formats: Sequence[str] | None = None,
    align: str | None = None,
    sep: str = "  ",
) -> str:
    """The table as lines joined by newlines (no trailing spaces)."""
    n = len(header)
    if any(len(r) != n for r in rows):
        raise ValueError(f"every row of the table needs {n} cells")
    formats = formats or [""] * n
    align = align or "<" + ">" * (n - 1)
    cells = [list(header)] + [[_cell(v, f) for v, f in zip(r, formats)] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(n)]
    return "\n".join(sep.join(f"{c:{a}{w}}" for c, a, w in zip(row, align, widths)).rstrip() for row in cells)


def _cell(value: object, spec: str) -> str:
    if value is None:
        return MISSING
    return value if isinstance(value, str) else format(value, spec)
