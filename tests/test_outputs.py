import errno
import os
from pathlib import Path

import pandas as pd
import pytest

from cloudpipe.core.errors import CloudpipeError
from cloudpipe.data.outputs import (
    FOLDER_MARK,
    atomic_path,
    build_folder,
    check_output,
    claim_output,
    csv_writer,
    lock_path,
    output_lock,
    remove_stale_temporaries,
    write_csv,
    write_files,
    write_text,
)


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
    with pytest.raises(CloudpipeError, match="No such file"):
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


def full_disk(*args, **kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_full_disk_is_one_line_naming_the_file(tmp_path, monkeypatch):
    target = tmp_path / "sub.csv"
    target.write_text("old")

    def half_then_full(self, path, **kwargs):
        Path(path).write_text("Image_Label,Enc")
        full_disk()

    monkeypatch.setattr(pd.DataFrame, "to_csv", half_then_full)
    with pytest.raises(CloudpipeError) as info:
        write_csv(pd.DataFrame({"a": [1]}), target)
    assert str(info.value) == f"{target}: cannot write (No space left on device)"
    assert target.read_text() == "old" and os.listdir(tmp_path) == ["sub.csv"]
    with pytest.raises(CloudpipeError, match="No space left on device"):
        with atomic_path(tmp_path / "plot.png") as tmp:
            tmp.write_bytes(b"\x89PNG")
            full_disk()
    assert os.listdir(tmp_path) == ["sub.csv"]


def test_failed_rename_is_one_line(tmp_path, monkeypatch):
    monkeypatch.setattr(os, "replace", full_disk)
    with pytest.raises(CloudpipeError, match="t.json: cannot write"):
        write_text("{}", tmp_path / "t.json")
    assert os.listdir(tmp_path) == []


def test_write_files_all_new(tmp_path):
    (tmp_path / "sub.csv").write_text("old")
    frame = pd.DataFrame({"a": [1]})
    write_files({tmp_path / "sub.csv": csv_writer(frame), tmp_path / "sub_probs.csv": csv_writer(frame, index=True)})
    assert (tmp_path / "sub.csv").read_text() == "a\n1\n"
    assert (tmp_path / "sub_probs.csv").read_text() == ",a\n0,1\n"
    assert sorted(os.listdir(tmp_path)) == ["sub.csv", "sub_probs.csv"]


@pytest.mark.parametrize("existing", [True, False])
def test_write_files_failure_on_second_file_keeps_the_old_pair(tmp_path, existing):
    first, second = tmp_path / "sub.csv", tmp_path / "sub_probs.csv"
    if existing:
        first.write_text("old sub")
        second.write_text("old probs")
    written = []

    def write_first(tmp):
        tmp.write_text("new sub")
        written.append(tmp)

    def write_second(tmp):
        assert written[0].read_text() == "new sub"  # the first temporary file is complete...
        tmp.write_text("new pr")
        full_disk()  # ...when the disk fills during the second

    with pytest.raises(CloudpipeError) as info:
        write_files({first: write_first, second: write_second})
    assert str(info.value) == f"{second}: cannot write (No space left on device)"
    if existing:
        assert first.read_text() == "old sub" and second.read_text() == "old probs"
        assert sorted(os.listdir(tmp_path)) == ["sub.csv", "sub_probs.csv"]
    else:
        assert os.listdir(tmp_path) == []


def test_output_lock_refuses_a_second_writer(tmp_path):
    target = tmp_path / "sub.csv"
    with output_lock(target):
        assert lock_path(target).read_text() == f"{os.getpid()}\n"
        with pytest.raises(CloudpipeError) as info:
            with output_lock(target):
                pytest.fail("two writers")
        assert str(info.value).startswith(f"{target}: is being written by another cloudpipe process (pid {os.getpid()})")
        with pytest.raises(CloudpipeError, match="another cloudpipe process"):
            with claim_output(target):
                pass
    assert os.listdir(tmp_path) == []  # the lock is removed at the end
    with output_lock(target):
        pass


def test_stale_lock_of_a_dead_process_is_taken_over(tmp_path, dead_pid):
    target = tmp_path / "sub.csv"
    lock_path(target).write_text(f"{dead_pid}\n")  # left by a writer killed with -9
    with claim_output(target) as path:
        assert lock_path(target).read_text() == f"{os.getpid()}\n"
        write_text("new", path)
    assert os.listdir(tmp_path) == ["sub.csv"]


def test_claim_output_checks_again_under_the_lock(tmp_path, monkeypatch):
    import cloudpipe.data.outputs

    target = tmp_path / "sub.csv"
    real = cloudpipe.data.outputs._acquire

    def meanwhile(lock, path):
        target.write_text("written by a process that finished first")
        return real(lock, path)

    monkeypatch.setattr(cloudpipe.data.outputs, "_acquire", meanwhile)
    with pytest.raises(CloudpipeError, match="already exists"):
        with claim_output(target):
            pytest.fail("overwrote")
    assert sorted(os.listdir(tmp_path)) == ["sub.csv"]


def test_check_output_inside_an_input_folder(tmp_path):
    images = tmp_path / "train_images"
    images.mkdir()
    (images / "a.jpg").write_bytes(b"jpeg")
    for out in (images / "a.jpg", images / "new.png", images / "sub" / "x.png"):
        with pytest.raises(CloudpipeError, match="inside the input folder"):
            check_output(out, overwrite=True, input_dirs=[images])
    assert check_output(tmp_path / "x.png", input_dirs=[images]) == tmp_path / "x.png"
    assert not (images / "sub").exists()


# --- every file a command reads is an input, however it was reached ------------------------------


def _snapshot(root: Path) -> dict[str, bytes]:
    """Every file and folder under ``root`` with its content (folders: b"/")."""
    return {str(p.relative_to(root)): (b"/" if p.is_dir() else p.read_bytes()) for p in sorted(root.rglob("*"))}


def _one_line_refusal(result) -> str:
    assert result.exit_code == 2, (result.exit_code, result.output, result.exception)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


@pytest.fixture(scope="module")
def workspace(tiny_data, tiny_classifier_run, tmp_path_factory, noisy_segmentation):
    """A copy of the data and of a tuned classifier run, validation masks, a thresholds file."""
    import shutil

    from click.testing import CliRunner

    from cloudpipe.cli import main

    root = tmp_path_factory.mktemp("reads")
    data, run = root / "data", root / "runs" / "cls"
    shutil.copytree(tiny_data, data)
    shutil.copytree(tiny_classifier_run, run)
    splits = pd.read_csv(run / "splits.csv", dtype=str, keep_default_na=False)
    seg = root / "val_seg.csv"
    noisy_segmentation(data, list(splits.loc[splits["fold"] == "0", "image"])).to_csv(seg, index=False)
    tuned = CliRunner().invoke(main, ["tune-threshold", "--run", str(run), "--data", str(data), "--seg", str(seg)])
    assert tuned.exit_code == 0, tuned.output
    (root / "t.json").write_bytes((run / "thresholds.json").read_bytes())
    return root


def _commands(root: Path) -> dict[str, list[str]]:
    data, run, seg = root / "data", root / "runs" / "cls", root / "val_seg.csv"
    image = min((data / "train_images").glob("*.jpg"), default=data / "train_images" / "none.jpg")
    report = ["report", "--data", data, "--seg", seg, "--run", run, "--quiet", "--overwrite", "--out"]
    predict = ["predict", "--seg", data / "sample_submission.csv", "--run", run, "--data", data, "--workers", "0",
               "--quiet", "--device", "cpu", "--overwrite"]
    return {
        "report over the run's checkpoint": [*report, run / "best.pt"],
        "report over the run's thresholds": [*report, run / "thresholds.json"],
        "report over the run's val_probs.csv": [*report, run / "val_probs.csv"],
        "report over a training image": [*report, image],
        "predict whose companion is the run's val_probs.csv": [*predict, "--out", run / "val.csv"],
        "predict over its --thresholds": [*predict, "--thresholds", root / "t.json", "--out", root / "t.json"],
        "tune-threshold --plot over a checkpoint": ["tune-threshold", "--run", run, "--data", data, "--seg", seg,
                                                    "--plot", run / "best.pt", "--overwrite"],
        "predict over the data's train.csv": [*predict, "--out", data / "train.csv"],
        "predict over the data's profile.yaml": [*predict, "--out", data / "profile.yaml"],
        "report over the run's profile.yaml": [*report, run / "profile.yaml"],
    }


@pytest.mark.parametrize("case", list(_commands(Path("."))))
def test_no_output_replaces_a_file_the_command_reads(workspace, case):
    from click.testing import CliRunner

    from cloudpipe.cli import main

    before = _snapshot(workspace)
    result = CliRunner().invoke(main, [str(a) for a in _commands(workspace)[case]])
    line = _one_line_refusal(result)
    assert "is also an input" in line or "inside the input folder" in line, line
    assert _snapshot(workspace) == before  # nothing replaced, nothing left


def test_a_hard_link_to_an_input_is_the_input(tmp_path):
    source = tmp_path / "in.csv"
    source.write_text("x\n")
    os.link(source, tmp_path / "alias.csv")
    with pytest.raises(CloudpipeError, match="also an input"):
        check_output(tmp_path / "alias.csv", overwrite=True, inputs=[source])


# --- what a killed or refused run leaves behind -----------------------------------------------------


def test_the_next_run_of_an_output_removes_a_killed_writers_temporaries(tmp_path, dead_pid):
    target = tmp_path / "val_seg.csv"
    dead = [tmp_path / f".val_seg.csv.{dead_pid}.tmp", tmp_path / f".val_seg.csv.rank1.{dead_pid}.npy"]
    kept = [tmp_path / f".val_seg.csv.{os.getppid()}.tmp",  # a live process's
            tmp_path / f".other.csv.{dead_pid}.tmp", tmp_path / "val_seg.csv.1.tmp"]  # not this output's
    for path in dead + kept:
        path.write_bytes(b"partial")
    with claim_output(target) as path:
        write_text("new", path)
    assert sorted(os.listdir(tmp_path)) == sorted(["val_seg.csv", *(p.name for p in kept)])


def test_a_refused_claim_leaves_no_new_folder(tmp_path):
    source = tmp_path / "in.csv"
    source.write_text("x\n")
    with pytest.raises(CloudpipeError, match="also an input"):
        with claim_output(tmp_path / "new" / "deeper" / "a.csv", inputs=[source]):
            with claim_output(source, inputs=[source], overwrite=True):
                pass
    with pytest.raises(Boom):
        with claim_output(tmp_path / "new" / "a.csv"):
            raise Boom  # a failure after the claim, e.g. a bad image
    assert os.listdir(tmp_path) == ["in.csv"]


def test_a_lock_file_planted_as_a_link_is_never_followed(tmp_path):
    """A ``.<name>.lock`` symlink to any file: refused in one line, the file it points at untouched
    (a lock that followed it truncated the file and wrote a pid into it); a hard link likewise."""
    precious = tmp_path / "precious.txt"
    precious.write_text("keep me\n")
    target = tmp_path / "sub.csv"
    lock_path(target).symlink_to(precious)
    with pytest.raises(CloudpipeError, match="symbolic link, which cloudpipe never follows"):
        with claim_output(target):
            pytest.fail("claimed through a link")
    assert precious.read_text() == "keep me\n" and lock_path(target).is_symlink()
    lock_path(target).unlink()
    os.link(precious, lock_path(target))
    with pytest.raises(CloudpipeError, match="not a plain file of its own"):
        with claim_output(target):
            pytest.fail("claimed through a hard link")
    assert precious.read_text() == "keep me\n"


@pytest.mark.parametrize("write", [lambda f, p: write_files({p: f}), lambda f, p: _atomic(f, p)])
def test_a_temporary_planted_as_a_link_is_replaced_not_followed(tmp_path, write):
    precious = tmp_path / "precious.txt"
    precious.write_text("keep me\n")
    target = tmp_path / "sub.csv"
    target.with_name(f".sub.csv.{os.getpid()}.tmp").symlink_to(precious)
    write(lambda tmp: tmp.write_text("new\n"), target)
    assert precious.read_text() == "keep me\n" and target.read_text() == "new\n"
    assert sorted(os.listdir(tmp_path)) == ["precious.txt", "sub.csv"]


def _atomic(write, path):
    with atomic_path(path) as tmp:
        write(tmp)


def test_a_full_disk_leaves_no_empty_lock_file(tmp_path, monkeypatch):
    monkeypatch.setattr(os, "write", lambda fd, data: full_disk())
    with pytest.raises(CloudpipeError, match="cannot write the lock file .sub.csv.lock"):
        with claim_output(tmp_path / "sub.csv"):
            pass
    assert os.listdir(tmp_path) == []


def test_a_refusal_after_the_claim_leaves_no_new_out_folder(workspace):
    from click.testing import CliRunner

    from cloudpipe.cli import main

    before = _snapshot(workspace)
    result = CliRunner().invoke(main, [str(a) for a in [
        "report", "--data", workspace / "data", "--seg", workspace / "val_seg.csv", "--run", workspace / "runs" / "cls",
        "--thresholds", workspace / "val_seg.csv", "--quiet", "--out", workspace / "new" / "deeper" / "r.html"]])
    assert "not a readable JSON file" in _one_line_refusal(result)
    assert _snapshot(workspace) == before


def test_stale_temporary_folders_are_removed_whole_never_followed(tmp_path, dead_pid):
    """A folder built whole and killed with -9 leaves its staging folder and the old one it was
    replacing (``.<name>.<pid>.tmp``, ``.<name>.<pid>.old``): removed by the next claim, the links
    in them removed, never what they point to; a live process's are left alone."""
    outside = tmp_path / "outside.txt"
    outside.write_text("kept")
    stale = [tmp_path / f".out.{dead_pid}.tmp", tmp_path / f".out.{dead_pid}.old"]
    for folder in stale:
        (folder / "sub").mkdir(parents=True)
        (folder / "sub" / "link").symlink_to(outside)
        (folder / "link_dir").symlink_to(tmp_path, target_is_directory=True)
    live = tmp_path / f".out.{os.getpid()}.tmp"
    live.mkdir()
    assert sorted(remove_stale_temporaries(tmp_path / "out")) == sorted(stale)
    assert sorted(os.listdir(tmp_path)) == [live.name, "outside.txt"] and outside.read_text() == "kept"
    live.rmdir()
    stale[0].mkdir()
    with claim_output(tmp_path / "out", made_by="demo"):
        assert not stale[0].exists()


def test_build_folder_swaps_a_complete_folder_in_or_leaves_the_old_one(tmp_path):
    out = tmp_path / "out"

    def build(folder):
        (folder / "a.txt").write_text("new")
        return "built"

    with claim_output(out, made_by="synth"):
        assert build_folder(out, build, "synth") == "built"
    assert sorted(os.listdir(out)) == [FOLDER_MARK, "a.txt"] and (out / FOLDER_MARK).read_text() == "cloudpipe synth\n"

    def fails(folder):
        (folder / "a.txt").write_text("half")
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(CloudpipeError, match=f"{out}: cannot write \\(No space left on device\\)"):
        build_folder(out, fails, "synth", overwrite=True)
    assert (out / "a.txt").read_text() == "new" and sorted(os.listdir(tmp_path)) == ["out"]
    for made_by, overwrite, says in (("synth", False, "already exists; pass --overwrite"),
                                     ("bundle", True, "was not made by cloudpipe bundle")):
        with pytest.raises(CloudpipeError, match=says):
            with claim_output(out, made_by=made_by, overwrite=overwrite):
                pass
    (out / FOLDER_MARK).unlink()
    (out / FOLDER_MARK).symlink_to(tmp_path / "elsewhere")  # a planted mark is no mark
    with pytest.raises(CloudpipeError, match="refusing to delete it"):
        check_output(out, made_by="synth", overwrite=True)
    assert (out / "a.txt").read_text() == "new" and sorted(os.listdir(tmp_path)) == ["out"]
