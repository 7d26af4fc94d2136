"""The JSON formats' models: one error line per bad file, writers built from the readers' models."""

from __future__ import annotations

from typing import Annotated, Literal

import pytest
from pydantic import Field, ValidationError

from cloudpipe.core.errors import CloudpipeError
from cloudpipe.core.models import SHOWN, WHOLE_KEPT, FileModel, cut, dump_model, error_line, read_model, shown


class Record(FileModel):
    format: Literal[1] = Field(description="must be 1")
    kind: Literal["a", "b"] = "a"
    size: Annotated[float, Field(ge=0), WHOLE_KEPT] = Field(0.0, description="must be a number >= 0")
    note: str | None = None


def test_a_long_value_is_cut_in_the_error_line():
    assert shown("x" * 10) == "'xxxxxxxxxx'" and cut("y" * 1000) == "y" * SHOWN + "..."
    with pytest.raises(CloudpipeError) as info:
        read_model(Record, {"format": 1, "size": "9" * 100_000}, "record")
    assert str(info.value) == f"record: size: must be a number >= 0, got '{'9' * (SHOWN - 1)}..."


def test_a_value_of_named_choices_says_them():
    with pytest.raises(ValidationError) as info:
        Record.model_validate({"format": 1, "kind": "c"})
    assert error_line("record", info.value, Record) == "record: kind: must be one of 'a' or 'b', got 'c'"


def test_a_writer_writes_what_the_reader_reads_in_its_order():
    assert list(dump_model(Record, {"size": 5, "format": 1}, "record")) == ["format", "size"]  # unset fields left out
    assert dump_model(Record, {"format": 1, "size": 5}, "record")["size"] == 5  # a whole number stays one...
    assert isinstance(dump_model(Record, {"format": 1, "size": 5}, "record")["size"], int)
    assert read_model(Record, {"format": 1, "size": 2.5}, "record").size == 2.5  # ...and a float a float
    with pytest.raises(CloudpipeError, match=r"^record: size: must be a number >= 0, got -1$"):
        dump_model(Record, {"format": 1, "size": -1}, "record")
    with pytest.raises(TypeError, match="Record names no sise"):  # a writer's typo is a bug, not a file
        dump_model(Record, {"format": 1, "sise": 5}, "record")
