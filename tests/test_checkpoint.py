"""Checkpoints: tensors and plain values only, written atomically, read with weights_only."""

from __future__ import annotations

import errno
import io
import os
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


def test_full_disk_keeps_the_old_checkpoint(tmp_path, monkeypatch):
    import cloudpipe.engine.checkpoint

    class FullAfter100Bytes(io.FileIO):
        def write(self, data):
            if self.tell() + len(data) > 100:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            return super().write(data)

    path = tmp_path / "last.pt"
    save_checkpoint({"epoch": 1}, path)
    before = path.read_bytes()
    monkeypatch.setattr(cloudpipe.engine.checkpoint, "open", lambda p, mode: FullAfter100Bytes(p, "w"), raising=False)
    with pytest.raises(CloudpipeError) as info:
        save_checkpoint({"epoch": 2, "weights": torch.zeros(1000)}, path)
    assert str(info.value) == f"{path}: cannot write (No space left on device)"
    assert path.read_bytes() == before and os.listdir(tmp_path) == ["last.pt"]


@pytest.mark.parametrize("change, message", [
    ({"model": "weights"}, "checkpoint's model is not tensors by name (str)"),
    ({"model": {"w": [1.0]}}, "checkpoint's model is not tensors by name (dict)"),
    ({"config": ["task"]}, "checkpoint's config is not dict (list)"),
    ({"classes": 4}, "checkpoint's classes is not a list of class names (int)"),
    ({"classes": [1, 2]}, "checkpoint's classes is not a list of class names (list)"),
])
def test_right_keys_with_wrong_kinds_of_value_are_one_line(tmp_path, change, message):
    path = tmp_path / "x.pt"
    torch.save({"model": {"w": torch.ones(2)}, "config": {"task": "classifier"}, "classes": ["Fish"], **change}, path)
    with pytest.raises(CloudpipeError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_checkpoint(path)


def test_needed_keys_are_named_and_checked(tmp_path):
    path = tmp_path / "x.pt"
    torch.save({"model": {}, "config": {}, "classes": [], "epoch": "3"}, path)
    with pytest.raises(CloudpipeError, match="checkpoint has no optimizer, history"):
        load_checkpoint(path, needs=("epoch", "optimizer", "history"))
    with pytest.raises(CloudpipeError, match=r"checkpoint's epoch is not int \(str\)"):
        load_checkpoint(path, needs=("epoch",))


def test_a_refused_pickle_prints_no_torch_warning(tmp_path, recwarn):
    path = tmp_path / "best.pt"
    path.write_bytes(pickle.dumps({"model": {}, "config": {}, "classes": []}, protocol=4))
    with pytest.raises(CloudpipeError, match="cannot read checkpoint"):
        load_checkpoint(path)
    assert not recwarn.list
