"""Checkpoints: tensors and plain values only, written atomically, read with weights_only."""

from __future__ import annotations

import pickle

import pytest
import torch

from cloudpipe.core.errors import CloudpipeError
from cloudpipe.engine.checkpoint import load_checkpoint, save_checkpoint


def test_round_trip_and_no_leftovers(tmp_path):
    state = {"model": {"w": torch.ones(2)}, "config": {"task": "classifier"}, "classes": ["Fish"], "epoch": 3}
    save_checkpoint(state, tmp_path / "best.pt")
    assert [p.name for p in tmp_path.iterdir()] == ["best.pt"]
    loaded = load_checkpoint(tmp_path / "best.pt")
    assert loaded["epoch"] == 3 and torch.equal(loaded["model"]["w"], torch.ones(2))


class Evil:
    def __reduce__(self):
        return (print, ("pwned",))


@pytest.mark.parametrize("content, message", [
    (None, "checkpoint not found"),
    (b"garbage", "cannot read checkpoint"),
    ("pickle", "cannot read checkpoint"),
    ({"model": {}}, "not a cloudpipe checkpoint"),
])
def test_bad_checkpoints(tmp_path, content, message):
    path = tmp_path / "x.pt"
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content == "pickle":
        path.write_bytes(pickle.dumps({"model": Evil(), "config": {}, "classes": []}))
    elif content is not None:
        torch.save(content, path)
    with pytest.raises(CloudpipeError, match=message):
        load_checkpoint(path)
