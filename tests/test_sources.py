"""The registry of presence sources: every command reads it, so a new source is one module."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

import cloudpipe.pipeline.sources as sources
from cloudpipe.core.errors import CloudpipeError
from cloudpipe.data.kaggle import frame_rows, read_probs_csv
from cloudpipe.data.outputs import csv_writer
from cloudpipe.pipeline.gate import GateInputs
from cloudpipe.pipeline.sources import PREDICT_SEG, Producer, Source, SourceInput, produced_by, register, registry, source_inputs
from tests.conftest import CLASSES, CPU_QUIET, cli, copy_run, load


def test_the_packaged_sources_in_order():
    assert list(registry()) == ["classifier", "head", "max", "top_mean", "area"]
    assert list(source_inputs()) == ["presence", "seg_store"]
    assert [i.name for i in produced_by(PREDICT_SEG)] == ["seg_store", "presence"]  # the store's files first, as listed
    assert [p.name for p in source_inputs()["seg_store"].files_beside(Path("val.csv"))] == ["val_probs.npy", "val_probs.json"]
    assert registry()["classifier"].input is None and [s for s, v in registry().items() if v.pixel] == ["max", "top_mean", "area"]
    with pytest.raises(ValueError, match="registered twice"):
        register(registry()["head"])


@pytest.fixture()
def with_new_source(monkeypatch, tmp_path):
    """A source that needs an input no other source reads: registered as a module of the package would."""
    monkeypatch.setattr(sources, "_REGISTRY", dict(registry()))
    counts = tmp_path / "counts.csv"
    pd.DataFrame({"image": ["a.jpg", "b.jpg"], **{c: [0, 9] for c in CLASSES}}).to_csv(counts, index=False)

    def read(path, images, split):
        frame = pd.read_csv(path).set_index("image")
        return frame.loc[images, list(CLASSES)].to_numpy(np.float64)

    register(Source("blobs", "the share of blobs found", SourceInput("blob_counts", "--blob-counts", "blob counts", read),
                    lambda counts, pixel: counts / 10))
    return counts


def test_a_new_source_with_a_new_input_is_seen_by_the_gate_and_the_commands(with_new_source):
    inputs = GateInputs({"blob_counts": with_new_source})
    assert inputs.names() == ["classifier", "blobs"]
    np.testing.assert_allclose(inputs.scores(["b.jpg", "a.jpg"], ["blobs"], "val")["blobs"], [[0.9] * 4, [0.0] * 4])
    with pytest.raises(CloudpipeError, match="gating on blobs needs --blob-counts FILE"):
        GateInputs().require(["blobs"])
    assert with_new_source in inputs.reads().files
    import click

    from cloudpipe.cli import source_input_options  # the commands' options are made by it from the registry

    @click.command()
    @source_input_options("val")
    def command(gate_files):
        click.echo(sorted(gate_files))

    help_text = " ".join(CliRunner().invoke(command, ["--help"]).output.split())
    assert "--blob-counts FILE Blob counts of the validation images: gate on blobs." in help_text
    assert CliRunner().invoke(command, ["--blob-counts", str(with_new_source)]).output == "['blob_counts']\n"


def coverage_source() -> Source:
    """A source whose new input predict-seg writes: per image and class, the share of pixels whose
    probability is at least 0.5, computed from what predict-seg predicted (``<stem>_coverage.csv``)."""

    def write(made):
        share = (np.asarray(made.store) >= 128).mean(axis=(2, 3))
        return (csv_writer(pd.DataFrame(share, index=pd.Index(made.info.images, name="image"), columns=list(CLASSES)).reset_index()),)

    def read(path, images, split):
        return frame_rows(read_probs_csv(path), images, str(path))

    coverage = SourceInput("coverage", "--coverage", "the masks' coverage (predict-seg's <stem>_coverage.csv)", read,
                           Producer(lambda csv: csv.with_name(f"{csv.stem}_coverage.csv"), write))
    return Source("coverage", "the share of pixels at or above 0.5", coverage, lambda rows, pixel: rows)


SITECUSTOMIZE = "from cloudpipe.pipeline.sources import register, registry\nfrom tests.test_sources import coverage_source\n\n" \
                "registry()\nregister(coverage_source())\n"
"""Registers the source in every Python the notebook starts, as a module of the package would."""


def test_a_new_source_whose_input_predict_seg_writes_goes_through_tuning_predict_and_the_bundle(
        monkeypatch, seg_run, tiny_classifier_run, tiny_data, tmp_path):
    from cloudpipe.pipeline.predict import predict_submission
    from cloudpipe.pipeline.tune import tune_thresholds

    monkeypatch.setattr(sources, "_REGISTRY", dict(registry()))
    register(coverage_source())
    seg, classifier = copy_run(seg_run, tmp_path, "seg"), copy_run(tiny_classifier_run, tmp_path, "classifier")
    val, test = tmp_path / "val.csv", tmp_path / "test.csv"
    for split, out, keep in (("val", val, []), ("test", test, ["--no-keep-store"])):
        result = cli("predict-seg", "--run", seg, "--data", tiny_data, "--split", split, "--out", out, *keep, *CPU_QUIET)
        assert result.exit_code == 0, result.output
        assert f"{tmp_path / (out.stem + '_coverage.csv')}" in result.output  # in the "wrote" line
    store, info = load(tmp_path / "val_probs.npy")
    coverage = read_probs_csv(tmp_path / "val_coverage.csv")
    assert coverage.index.tolist() == info.images
    np.testing.assert_allclose(coverage.to_numpy(), (np.asarray(store) >= 128).mean(axis=(2, 3)), atol=1e-12)
    assert not (tmp_path / "test_probs.npy").exists()  # --no-keep-store drops the store, not an input made without it

    tuned = tune_thresholds(classifier, tiny_data, seg=val, inputs=GateInputs({"coverage": tmp_path / "val_coverage.csv"},
                                                                                sources=["coverage"]))
    assert json.loads((classifier / "thresholds.json").read_text())["gate"] == {c: {"coverage": 1.0} for c in CLASSES}
    assert "segmentation" not in tuned.to_json()  # the coverage CSV records no runs
    with pytest.raises(CloudpipeError, match="gating on coverage needs --coverage FILE"):
        predict_submission(test, classifier, tiny_data)
    summary = predict_submission(test, classifier, tiny_data, tmp_path / "sub.csv",
                                 inputs=GateInputs({"coverage": tmp_path / "test_coverage.csv"}))
    pd.testing.assert_frame_equal(summary.probs, read_probs_csv(tmp_path / "test_coverage.csv"), check_names=False)

    # The bundle gates on it; its notebook's commands (after its install cell, which test_bundle runs) make it
    # with predict-seg and pass it to predict, in Pythons where the source is registered.
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    (wheels / "cloudpipe-0.1.0-py3-none-any.whl").write_bytes(b"")  # a stand-in: the install cell is not run here
    result = cli("bundle", "--seg-run", seg, "--classifier-run", classifier, "--out", tmp_path / "bundle", "--wheels-from", wheels,
                 "--no-download")
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "bundle" / "bundle.json").read_text())["gates_on"] == ["coverage"]
    setup, *commands = ["".join(c["source"]) for c in json.loads((tmp_path / "bundle" / "submit.ipynb").read_text())["cells"]
                        if c["cell_type"] == "code"]
    site, work = tmp_path / "site", tmp_path / "working"
    site.mkdir(), work.mkdir()
    (site / "sitecustomize.py").write_text(SITECUSTOMIZE)
    code = "\n".join([setup[:setup.index("subprocess.run([sys.executable, '-m', 'pip'")], *commands])
    env = {**os.environ, "CLOUDPIPE_BUNDLE": str(tmp_path / "bundle"), "CLOUDPIPE_DATA": str(tiny_data),
           "CLOUDPIPE_WORKING": str(work), "PYTHONPATH": os.pathsep.join([str(site), str(Path(__file__).parents[1])]),
           "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert (work / "test_seg_coverage.csv").read_bytes() == (tmp_path / "test_coverage.csv").read_bytes()
    assert (work / "submission.csv").read_bytes() == (tmp_path / "sub.csv").read_bytes()
    assert not (work / "test_seg_probs.npy").exists()  # no store: the gate needs none
