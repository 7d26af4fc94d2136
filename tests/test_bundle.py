"""cloudpipe bundle: a Kaggle dataset folder whose notebook installs offline and writes submission.csv."""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from cloudpipe.pipeline.bundle import KAGGLE_EXTRAS, _wheel_name, notebook
from tests.conftest import CPU_QUIET, cli, copy_run, finished_meanwhile


@pytest.fixture(scope="module")
def tuned(seg_run, tiny_classifier_run, tiny_data, tmp_path_factory):
    """Copies of the session's seg and classifier runs, tuned (seg_postprocess.json, thresholds.json)
    and read-only to the tests (copy before changing)."""
    root = tmp_path_factory.mktemp("tuned")
    seg, classifier = copy_run(seg_run, root, "seg"), copy_run(tiny_classifier_run, root, "classifier")
    for args in (["predict-seg", "--run", seg, "--data", tiny_data, "--split", "val", "--out", root / "val.csv", *CPU_QUIET],
                 ["tune-threshold", "--run", classifier, "--data", tiny_data, "--seg", root / "val.csv", *CPU_QUIET]):
        result = cli(*args)
        assert result.exit_code == 0, result.output
    wheels = root / "wheels"
    wheels.mkdir()
    (wheels / "cloudpipe-0.1.0-py3-none-any.whl").write_bytes(b"a stand-in: bundle copies wheels, never opens them")
    return seg, classifier, wheels


def _bundle(tuned, out, *options, seg=None, classifier=None):
    """``cloudpipe bundle`` of the tuned runs (or ``seg``, ``classifier``) to ``out``, offline, with the
    stand-in wheel (no pip runs)."""
    return cli("bundle", "--seg-run", seg or tuned[0], "--classifier-run", classifier or tuned[1], "--out", out,
               "--wheels-from", tuned[2], "--no-download", *options)


def _refused(result) -> str:
    """The one ``error:`` line of a command that exited with status 2."""
    assert result.exit_code == 2, (result.exit_code, result.output, result.exception)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


def _hidden(folder: Path) -> list[str]:
    """The hidden leftovers beside outputs (staging folders, old folders, locks)."""
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def test_wheel_names_of_requirements():
    assert [_wheel_name(s) for s in KAGGLE_EXTRAS] == ["segmentation_models_pytorch", "simplejpeg", "albumentations", "albucore",
                                                        "stringzilla", "simsimd"]


def test_the_notebook_passes_what_the_gate_reads():
    def code(gates):
        return "".join("".join(c["source"]) for c in notebook(gates)["cells"] if c["cell_type"] == "code")

    assert "--no-keep-store" in code(set()) and "--presence" not in code(set()) and "--seg-store" not in code(set())
    assert "'--presence', str(WORK / 'test_seg_presence.csv')" in code({"presence"})
    pixels = code({"seg_store"})
    assert "'--seg-store', str(WORK / 'test_seg_probs.npy')" in pixels and "--no-keep-store" not in pixels


def test_a_bundle_installs_offline_and_its_notebook_writes_the_submission(seg_run, tiny_classifier_run, tuned, tiny_data,
                                                                           tmp_path):
    seg, classifier = copy_run(tuned[0], tmp_path, "seg"), copy_run(tuned[1], tmp_path, "classifier")
    untuned = cli("bundle", "--seg-run", seg_run, "--classifier-run", tiny_classifier_run, "--out", tmp_path / "b0", "--no-download")
    assert untuned.exit_code == 2 and not (tmp_path / "b0").exists()
    out = tmp_path / "bundle"
    result = cli("bundle", "--seg-run", seg, "--classifier-run", classifier, "--out", out, "--no-download")  # builds cloudpipe's wheel
    assert result.exit_code == 0, result.output
    assert "note: no wheel in the bundle for segmentation-models-pytorch" in result.output
    wheels = sorted(p.name for p in (out / "wheels").iterdir())
    assert len(wheels) == 1 and wheels[0].startswith("cloudpipe-0.1.0-")
    holds_a_run = cli("bundle", "--seg-run", seg, "--classifier-run", classifier, "--out", seg, "--no-download", "--overwrite")
    assert holds_a_run.exit_code == 2 and "output folder holds an input" in holds_a_run.stderr, holds_a_run.output
    assert (seg / "best.pt").exists()  # an --out that is an input run is refused, never replaced
    assert sorted(p.relative_to(out).as_posix() for p in (out / "runs").rglob("*") if p.is_file()) == [
        "runs/classifier/best.pt", "runs/classifier/config.yaml", "runs/classifier/profile.yaml", "runs/classifier/splits.csv",
        "runs/classifier/thresholds.json", "runs/classifier/val_probs.csv",
        "runs/seg/best.pt", "runs/seg/config.yaml", "runs/seg/profile.yaml", "runs/seg/seg_postprocess.json", "runs/seg/splits.csv"]
    again = cli("bundle", "--seg-run", seg, "--classifier-run", classifier, "--out", out, "--wheels-from", out / "wheels", "--no-download",
                "--overwrite")
    assert again.exit_code == 2 and "output folder holds an input" in again.stderr  # its own wheels: never replaced
    # The notebook's code, as Kaggle would run it: wheels installed with pip --no-index (into a folder of
    # their own, first on the path), the competition data and the working folder where Kaggle has them.
    target, work = tmp_path / "site", tmp_path / "working"
    work.mkdir()
    code = "\n".join("".join(c["source"]) for c in json.loads((out / "submit.ipynb").read_text())["cells"]
                     if c["cell_type"] == "code")
    env = {**os.environ, "CLOUDPIPE_BUNDLE": str(out), "CLOUDPIPE_DATA": str(tiny_data), "CLOUDPIPE_WORKING": str(work),
           "PIP_TARGET": str(target), "PYTHONPATH": str(target), "PIP_NO_INDEX": "1", "CUDA_VISIBLE_DEVICES": "",
           "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    where = subprocess.run([sys.executable, "-c", "import cloudpipe; print(cloudpipe.__file__)"], cwd=tmp_path, env=env,
                           capture_output=True, text=True, check=True).stdout
    assert where.startswith(str(target / "cloudpipe"))  # the notebook's commands ran the wheel's cloudpipe
    submission = pd.read_csv(work / "submission.csv")
    assert submission["Image_Label"].tolist() == pd.read_csv(tiny_data / "sample_submission.csv")["Image_Label"].tolist()
    assert not (work / "test_seg_probs.npy").exists()  # no store: the gate needs none
    shutil.rmtree(target)


def test_a_bundle_carries_the_runs_own_regular_files_only(tuned, tmp_path):
    """A run file that is a link (to a credentials file, say) or a hard link is refused in one line,
    and nothing is written: the bundle is made to be uploaded."""
    secret = tmp_path / "credentials"
    secret.write_text("token")
    for name, plant in (("splits.csv", lambda path: path.symlink_to(secret)),
                        ("val_probs.csv", lambda path: os.link(secret, path))):
        classifier = copy_run(tuned[1], tmp_path, f"classifier_{name}")
        (classifier / name).unlink()
        plant(classifier / name)
        line = _refused(_bundle(tuned, tmp_path / "bundle", classifier=classifier))
        assert str(classifier / name) in line and "own regular files only" in line, line
        assert not (tmp_path / "bundle").exists() and _hidden(tmp_path) == []


def test_a_bundle_that_would_fail_on_kaggle_is_refused_before_anything_is_written(tuned, tmp_path):
    """Every packed file is checked as the notebook's commands read it: a stale seg_postprocess.json,
    a threshold out of [0, 1], malformed gates, a huge thresholds.json."""
    seg = copy_run(tuned[0], tmp_path, "seg")
    post = json.loads((seg / "seg_postprocess.json").read_text())
    (seg / "seg_postprocess.json").write_text(json.dumps({**post, "fingerprints": ["f" * 64]}))
    assert "were tuned for runs" in _refused(_bundle(tuned, tmp_path / "bundle", seg=seg))
    tuned_file = json.loads((tuned[1] / "thresholds.json").read_text())
    for bad, says in (({**tuned_file, "Fish": 2.0}, "Fish: must be a number in [0, 1], got 2.0"),
                      ({**tuned_file, "gate": [1]}, "gate"),
                      (None, "larger than 64 MiB")):
        classifier = copy_run(tuned[1], tmp_path, "classifier")
        if bad is None:
            os.truncate(classifier / "thresholds.json", 3 * 2**30)  # sparse: 3 GB that take no disk
        else:
            (classifier / "thresholds.json").write_text(json.dumps(bad))
        line = _refused(_bundle(tuned, tmp_path / "bundle", classifier=classifier))
        assert "thresholds.json" in line and says in line, line
        shutil.rmtree(classifier)
    assert not (tmp_path / "bundle").exists() and _hidden(tmp_path) == []


def test_a_full_disk_is_one_line_and_leaves_nothing(tuned, tmp_path, monkeypatch):
    def full(*args):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("cloudpipe.pipeline.bundle.notebook", full)
    assert "No space left on device" in _refused(_bundle(tuned, tmp_path / "bundle"))
    assert os.listdir(tmp_path) == []


def test_overwrite_replaces_only_a_bundle_never_a_link_or_a_file(tuned, tmp_path):
    precious = tmp_path / "home"
    precious.mkdir()
    (precious / "thesis.tex").write_text("years of work")
    assert "refusing to delete" in _refused(_bundle(tuned, precious, "--overwrite"))  # a mistyped --out
    assert os.listdir(precious) == ["thesis.tex"]
    link, empty = tmp_path / "link", tmp_path / "empty"
    empty.mkdir()
    link.symlink_to(empty)
    for options in ((), ("--overwrite",)):
        assert "symbolic link" in _refused(_bundle(tuned, link, *options))
        assert link.is_symlink() and os.listdir(empty) == []
    plain = tmp_path / "notes.txt"
    plain.write_text("mine")
    assert "not a folder" in _refused(_bundle(tuned, plain, "--overwrite"))
    assert plain.read_text() == "mine"
    out = tmp_path / "bundle"
    assert _bundle(tuned, out).exit_code == 0
    assert "--overwrite" in _refused(_bundle(tuned, out))
    (out / "stale.txt").write_text("from the earlier bundle")
    assert _bundle(tuned, out, "--overwrite").exit_code == 0  # a bundle is replaced whole
    assert not (out / "stale.txt").exists() and (out / "bundle.json").is_file()
    assert _hidden(tmp_path) == []


def test_two_bundles_started_together_never_replace_one_without_overwrite(tuned, tmp_path, monkeypatch):
    """The other bundle finishes between this one's start and its lock: the check under the lock sees it."""
    out = tmp_path / "bundle"
    finished_meanwhile(monkeypatch, out, "bundle", "bundle.json")
    assert "already exists; pass --overwrite" in _refused(_bundle(tuned, out))
    assert (out / "bundle.json").read_text() == "the other's"


def test_what_a_bundle_killed_with_9_leaves_blocks_nothing(tuned, tmp_path, dead_pid):
    """A killed build leaves its staging folder (partly filled, a link in it) and, killed while
    replacing a bundle, the old one moved aside and none in place: the next bundle removes them."""
    out, outside = tmp_path / "bundle", tmp_path / "outside.txt"
    outside.write_text("not the bundle's")
    for leftover in (f".bundle.{dead_pid}.tmp", f".bundle.{dead_pid}.old"):
        (tmp_path / leftover / "runs").mkdir(parents=True)
        (tmp_path / leftover / "runs" / "link").symlink_to(outside)
    result = _bundle(tuned, out)
    assert result.exit_code == 0, result.output
    assert (out / "bundle.json").is_file() and _hidden(tmp_path) == [] and outside.read_text() == "not the bundle's"
