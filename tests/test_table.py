"""The one text table: aligned columns, fixed decimals, n/a for a figure that does not exist."""

from __future__ import annotations

from cloudpipe.core.table import format_table


def test_columns_align_and_figures_print_fixed():
    table = format_table([{"submission": "capture share", "mean": float("nan")}, {"submission": "alone", "mean": 0.5}])
    lines = table.splitlines()
    assert lines[0].split() == ["submission", "mean"] and "nan" not in table
    assert lines[1].endswith("n/a") and lines[2].endswith("0.5000")
    assert len({len(line) for line in lines}) == 1  # right-aligned: every line as wide
    assert format_table([{"a": 1.23456}], digits=2) == "   a\n1.23"


def test_left_columns_and_missing_cells():
    table = format_table([{"name": "x", "value": 1, "note": "long note"}, {"name": "longer", "value": 22}], left=("name", "note"))
    lines = table.splitlines()
    assert lines[1].startswith("x     ") and lines[1].endswith("long note")
    assert lines[2] == "longer     22"  # a missing cell is empty; trailing space trimmed
