"""The gate as the commands see it: one precedence for predict and report, and the inputs of
every presence source read for the right images, split and options."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest

from cloudpipe.algorithms.presence import PixelStats
from cloudpipe.core.errors import CloudpipeError
from cloudpipe.data.probstore import read_store
from cloudpipe.pipeline.gate import GateInputs, load_gate, resolve_gate
from tests.conftest import CLASSES, write_store


def test_precedence_file_then_threshold_then_the_runs_own_file(tiny_classifier_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(tiny_classifier_run, run)
    assert resolve_gate(run) == (None, "")  # nothing tuned: the caller's fallback
    tuned = {"Fish": 0.1, "Flower": 0.2, "Gravel": 0.3, "Sugar": 0.4}
    (run / "thresholds.json").write_text(json.dumps({**tuned, "objective": "dice", "at_least_one": True}))
    spec, source = resolve_gate(run)
    assert spec.thresholds == tuned and spec.at_least_one and source == str(run / "thresholds.json")
    assert resolve_gate(run, 0.7)[0].thresholds == {c: 0.7 for c in CLASSES}  # explicit beats the run's file
    other = tmp_path / "other.json"
    other.write_text(json.dumps({c: 0.9 for c in CLASSES}))
    assert resolve_gate(run, other)[0].thresholds == {c: 0.9 for c in CLASSES}
    assert resolve_gate(None, other) == (load_gate(other), str(other))  # no run to check it against (report --probs)
    assert resolve_gate(None) == (None, "")
    with pytest.raises(CloudpipeError, match=r"threshold 1.5 is not a number in \[0, 1\]"):
        resolve_gate(run, 1.5)
    with pytest.raises(CloudpipeError, match="needs --thresholds FILE"):
        resolve_gate([run, tiny_classifier_run])  # an ensemble has no own file


def test_inputs_name_require_and_read_every_source(tmp_path):
    images = ["a.jpg", "b.jpg", "c.jpg"]
    store = write_store(tmp_path / "s.npy", images, "val", seed=1)
    head = tmp_path / "head.csv"
    frame = pd.DataFrame(np.linspace(0, 1, 12).reshape(3, 4), index=pd.Index(images, name="image"), columns=list(CLASSES))
    frame.reset_index().to_csv(head, index=False)
    assert GateInputs().names() == ["classifier"]
    inputs = GateInputs({"presence": head, "seg_store": store}, PixelStats(100, 0.4))
    assert inputs.names() == ["classifier", "head", "max", "top_mean", "area"]
    assert GateInputs(sources=["area", "area", "head"]).names() == ["area", "head"]
    with pytest.raises(CloudpipeError, match="unknown source.*oracle"):
        GateInputs(sources=["oracle"]).names()
    with pytest.raises(CloudpipeError, match="--seg-store FILE"):
        GateInputs({"presence": head}).require(["head", "top_mean"])
    with pytest.raises(ValueError, match="unknown source input"):
        GateInputs({"oracle": head})
    with pytest.raises(CloudpipeError, match="--run RUN"):
        inputs.require(["classifier"], classifier=False)

    order = ["c.jpg", "a.jpg"]
    scores = inputs.scores(order, ["classifier", "head", "area", "max"], "val", classifier=frame)
    np.testing.assert_allclose(scores["classifier"], frame.loc[order].to_numpy())
    np.testing.assert_allclose(scores["head"], frame.loc[order].to_numpy())
    pixels = read_store(store)[0][[2, 0]].astype(np.float64)
    np.testing.assert_allclose(scores["area"], (pixels >= round(0.4 * 255)).mean(axis=(2, 3)))
    np.testing.assert_allclose(scores["max"], pixels.max(axis=(2, 3)) / 255)
    other = inputs.scores(order, ["area"], "val", pixel=PixelStats(100, 0.9))["area"]  # predict: the tuned file's
    assert (other <= scores["area"]).all() and (other < scores["area"]).any()
    with pytest.raises(CloudpipeError, match="holds val probabilities; test images need a test store"):
        inputs.scores(order, ["max"], "test")
    with pytest.raises(CloudpipeError, match="lacks 1 image"):
        inputs.scores(["a.jpg", "zzz.jpg"], ["max"], "val")
    assert {p.name for p in inputs.reads().files} >= {"head.csv", "s.npy"}
