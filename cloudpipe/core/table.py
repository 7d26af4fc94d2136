"""Rows of dicts as a plain aligned text table: what the commands print and the benchmarks report."""

from __future__ import annotations

from collections.abc import Sequence


def format_table(rows: Sequence[dict], digits: int = 4, left: Sequence[str] = ()) -> str:
    """Plain aligned text table of dict rows (columns of the first row): floats with ``digits``
    decimals, NaN (a figure that does not exist, such as a share of no room) as ``n/a``; the
    columns in ``left`` aligned left, the others right."""
    columns = list(rows[0])

    def cell(value) -> str:
        if isinstance(value, float):
            return "n/a" if value != value else f"{value:.{digits}f}"
        return str(value)

    cells = [[cell(r.get(c, "")) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]

    def line(values: Sequence[str]) -> str:
        return "  ".join(v.ljust(w) if c in left else v.rjust(w) for c, v, w in zip(columns, values, widths)).rstrip()

    return "\n".join([line(columns), *(line(row) for row in cells)])
