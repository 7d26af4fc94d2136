"""The one user-facing error type: file, line and what is wrong, on one line."""

from __future__ import annotations

from cloudpipe.core.errors import CloudpipeError, RLEError


def test_message_names_file_and_line():
    assert str(CloudpipeError("bad value")) == "bad value"
    assert str(CloudpipeError("bad value", path="x.csv")) == "x.csv: bad value"
    assert str(CloudpipeError("bad value", path="x.csv", line=7)) == "x.csv, line 7: bad value"
    assert issubclass(RLEError, CloudpipeError) and issubclass(RLEError, ValueError)
