"""cloudpipe bundle: a Kaggle dataset folder whose notebook installs offline and writes submission.csv."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pandas as pd

from cloudpipe.pipeline.bundle import KAGGLE_EXTRAS, _wheel_name, notebook
from tests.conftest import CPU_QUIET, cli, copy_run


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


def test_a_bundle_installs_offline_and_its_notebook_writes_the_submission(seg_run, tiny_classifier_run, tiny_data, tmp_path):
    seg, classifier = copy_run(seg_run, tmp_path, "seg"), copy_run(tiny_classifier_run, tmp_path, "classifier")
    for args in (["predict-seg", "--run", seg, "--data", tiny_data, "--split", "val", "--out", tmp_path / "val.csv", *CPU_QUIET],
                 ["tune-threshold", "--run", classifier, "--data", tiny_data, "--seg", tmp_path / "val.csv", *CPU_QUIET]):
        result = cli(*args)
        assert result.exit_code == 0, result.output
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
        "runs/classifier/best.pt", "runs/classifier/config.yaml", "runs/classifier/splits.csv",
        "runs/classifier/thresholds.json", "runs/classifier/val_probs.csv",
        "runs/seg/best.pt", "runs/seg/config.yaml", "runs/seg/seg_postprocess.json", "runs/seg/splits.csv"]
    again = cli("bundle", "--seg-run", seg, "--classifier-run", classifier, "--out", out, "--wheels-from", out / "wheels", "--no-download")
    assert again.exit_code == 2 and "--overwrite" in again.stderr
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
