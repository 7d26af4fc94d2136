import os
from pathlib import Path

import pandas as pd
import pytest

from cloudpipe.core.errors import CloudpipeError
from cloudpipe.data.outputs import atomic_path, check_output, write_csv, write_text


class Boom(RuntimeError):
    pass


def test_check_output_new_file_creates_folder(tmp_path):
    target = tmp_path / "a" / "b" / "sub.csv"
    assert check_output(target) == target
    assert target.parent.is_dir()
    assert not target.exists()  # only the folder is made


def test_check_output_accepts_str(tmp_path):
    assert check_output(str(tmp_path / "x.csv")) == tmp_path / "x.csv"


def test_check_output_existing(tmp_path):
    target = tmp_path / "sub.csv"
    target.write_text("old")
    with pytest.raises(CloudpipeError, match="--overwrite") as info:
        check_output(target)
    assert str(target) in str(info.value)
    assert check_output(target, overwrite=True) == target
    assert target.read_text() == "old"  # checking never touches the file


def test_check_output_equal_to_input(tmp_path):
    source = tmp_path / "in.csv"
    source.write_text("data")
    (tmp_path / "sub").mkdir()
    for spelling in (source, tmp_path / "sub" / ".." / "in.csv"):
        with pytest.raises(CloudpipeError, match="also an input"):
            check_output(spelling, overwrite=True, inputs=[tmp_path / "other.csv", source])
    # A not-yet-existing output equal to an input path is refused too; None inputs are skipped.
    with pytest.raises(CloudpipeError, match="also an input"):
        check_output(tmp_path / "new.csv", inputs=[None, tmp_path / "new.csv"])
    assert check_output(tmp_path / "out.csv", inputs=[None, source]) == tmp_path / "out.csv"


def test_check_output_folder(tmp_path):
    with pytest.raises(CloudpipeError, match="folder"):
        check_output(tmp_path, overwrite=True)


def test_check_output_parent_is_a_file(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(CloudpipeError, match="cannot create output folder"):
        check_output(tmp_path / "file" / "sub.csv")


def test_check_output_unwritable(tmp_path, monkeypatch):
    locked = tmp_path / "locked"
    locked.mkdir()
    # chmod does not stop root, so make the access check itself say "no".
    monkeypatch.setattr(os, "access", lambda path, mode: not (Path(path) == locked and mode == os.W_OK))
    with pytest.raises(CloudpipeError, match="not writable") as info:
        check_output(locked / "sub.csv")
    assert str(locked) in str(info.value)
    assert check_output(tmp_path / "sub.csv") == tmp_path / "sub.csv"


def test_atomic_path_success(tmp_path):
    target = tmp_path / "out.txt"
    with atomic_path(target) as tmp:
        assert tmp.parent == target.parent and tmp != target
        tmp.write_text("complete")
        assert not target.exists()  # nothing at the destination until the body finishes
    assert target.read_text() == "complete"
    assert os.listdir(tmp_path) == ["out.txt"]


def test_atomic_path_failure_leaves_nothing(tmp_path):
    target = tmp_path / "out.txt"
    with pytest.raises(Boom):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise Boom
    assert os.listdir(tmp_path) == []


def test_atomic_path_failure_keeps_old_file(tmp_path):
    target = tmp_path / "out.txt"
    target.write_text("old")
    with pytest.raises(Boom):
        with atomic_path(target) as tmp:
            tmp.write_text("new but broken")
            raise Boom
    assert target.read_text() == "old"
    assert os.listdir(tmp_path) == ["out.txt"]


def test_atomic_path_body_writes_nothing(tmp_path):
    with pytest.raises(FileNotFoundError):
        with atomic_path(tmp_path / "out.txt"):
            pass
    assert os.listdir(tmp_path) == []


def test_write_csv(tmp_path):
    frame = pd.DataFrame({"Image_Label": ["a.jpg_Fish", "a.jpg_Flower"], "EncodedPixels": ["1 3", ""]})
    target = tmp_path / "sub.csv"
    write_csv(frame, target)
    assert target.read_text() == "Image_Label,EncodedPixels\na.jpg_Fish,1 3\na.jpg_Flower,\n"
    write_csv(frame.iloc[:1], target)  # replaces
    assert target.read_text() == "Image_Label,EncodedPixels\na.jpg_Fish,1 3\n"
    write_csv(frame.set_index("Image_Label"), target, index=True)
    assert target.read_text().splitlines()[0] == "Image_Label,EncodedPixels"
    assert os.listdir(tmp_path) == ["sub.csv"]


def test_write_csv_failure_keeps_old_file(tmp_path, monkeypatch):
    target = tmp_path / "sub.csv"
    target.write_text("old")

    def broken(self, path, **kwargs):
        with open(path, "w") as f:
            f.write("Image_Label,Encoded")
        raise Boom

    monkeypatch.setattr(pd.DataFrame, "to_csv", broken)
    with pytest.raises(Boom):
        write_csv(pd.DataFrame({"a": [1]}), target)
    assert target.read_text() == "old"
    assert os.listdir(tmp_path) == ["sub.csv"]


def test_write_text(tmp_path):
    write_text("hello\n", tmp_path / "t.json")
    assert (tmp_path / "t.json").read_text() == "hello\n"
    assert os.listdir(tmp_path) == ["t.json"]
