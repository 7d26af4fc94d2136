"""Gating: blank exactly the pairs below their class threshold, leave every other mask as is."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from cloudpipe.algorithms.gating import GateSpec, gate, keep, keep_most_probable, thresholds_file
from cloudpipe.algorithms.presence import PixelStats
from cloudpipe.core.errors import CloudpipeError
from cloudpipe.pipeline.sources import registry
from tests.conftest import CLASSES


def test_gate_blanks_exactly_below_threshold():
    seg = pd.DataFrame({"Image_Label": [f"a.jpg_{c}" for c in CLASSES], "EncodedPixels": ["1 2", "3 4", "", "9 1"],
                        "image": "a.jpg", "class_name": list(CLASSES)})
    probs = pd.DataFrame([[0.2, 0.5, 0.9, 0.49]], index=["a.jpg"], columns=list(CLASSES))
    out = gate(seg, probs, {c: 0.5 for c in CLASSES})
    assert list(out["EncodedPixels"]) == ["", "3 4", "", ""]
    assert list(out["absent"]) == [True, False, False, True]
    assert list(out["blanked"]) == [True, False, False, True]
    empty_below = seg.assign(EncodedPixels=["", "3 4", "", "9 1"])
    assert list(gate(empty_below, probs, {c: 0.5 for c in CLASSES})["blanked"]) == [False, False, False, True]


def test_at_least_one_keeps_the_most_probable_drawn_class():
    absent = np.array([[True, True, True, True], [True, False, True, True], [True, True, True, True]])
    probs = np.array([[0.1, 0.3, 0.2, 0.4], [0.9, 0.1, 0.2, 0.3], [0.1, 0.2, 0.3, 0.4]])
    drawn = np.array([[True, True, True, False], [True, True, True, True], [False, False, False, False]])
    out = keep_most_probable(absent, probs, drawn)
    assert out[0].tolist() == [True, False, True, True]  # Sugar is more probable but has no mask
    assert (out[1:] == absent[1:]).all()  # one class kept already; nothing drawn
    seg = pd.DataFrame({"Image_Label": [f"a.jpg_{c}" for c in CLASSES] + [f"b.jpg_{c}" for c in CLASSES],
                        "EncodedPixels": ["1 2", "3 4", "", "9 1", "1 2", "", "", ""],
                        "image": ["a.jpg"] * 4 + ["b.jpg"] * 4, "class_name": list(CLASSES) * 2}).iloc[::-1]
    frame = pd.DataFrame([[0.2, 0.45, 0.9, 0.3], [0.7, 0.1, 0.1, 0.1]], index=["a.jpg", "b.jpg"], columns=list(CLASSES))
    out = gate(seg, frame, {c: 0.95 for c in CLASSES}, at_least_one=True).set_index("Image_Label")
    assert out.loc["a.jpg_Flower", "EncodedPixels"] == "3 4" and out.loc["b.jpg_Fish", "EncodedPixels"] == "1 2"
    assert out["EncodedPixels"].ne("").sum() == 2
    assert gate(seg, frame, {c: 0.95 for c in CLASSES})["EncodedPixels"].eq("").all()


def test_keep_applies_thresholds_then_the_rule():
    probs = np.array([[0.2, 0.4, 0.1, 0.3],    # all below: the most probable drawn mask (Sugar; Flower is empty) is kept
                      [0.9, 0.1, 0.1, 0.1],    # one kept already: unchanged
                      [0.1, 0.1, 0.1, 0.1]])   # nothing drawn: nothing to keep
    drawn = np.array([[True, False, True, True], [True, True, True, True], [False, False, False, False]])
    plain = keep(probs, 0.5)
    ruled = keep(probs, 0.5, drawn)
    assert plain.sum() == 1 and ruled[0].tolist() == [False, False, False, True]
    assert (ruled[1:] == plain[1:]).all()
    per_class = keep(probs, {"Fish": 0.15, "Flower": 0.5, "Gravel": 0.5, "Sugar": 0.5})
    assert per_class[:, 0].tolist() == [True, True, False] and not per_class[:, 1:].any()
    spec = GateSpec(dict.fromkeys(CLASSES, 0.5), at_least_one=True)
    assert (spec.keep(probs, drawn) == ruled).all()
    assert (GateSpec(dict.fromkeys(CLASSES, 0.5)).keep(probs, drawn) == plain).all()  # no rule: drawn is not used


KNOWN = tuple(registry())


def test_gate_spec_round_trip_and_errors():
    spec = GateSpec({c: 0.4 for c in CLASSES}, {**{c: {"classifier": 1.0} for c in CLASSES},
                                                 "Sugar": {"classifier": 0.25, "top_mean": 0.75}}, True, PixelStats(9000, 0.4))
    data = json.loads(json.dumps(spec.to_json()))
    assert GateSpec.from_json(data, KNOWN) == spec and spec.sources == ["classifier", "top_mean"]
    assert data["top_k"] == 9000 and data["at_least_one"] is True
    old = GateSpec.from_json({c: 0.5 for c in CLASSES}, KNOWN)  # a file from before sources: the classifier alone
    assert old.sources == ["classifier"] and not old.at_least_one
    with pytest.raises(CloudpipeError, match="gate.Fish: unknown source"):
        GateSpec.from_json({**data, "gate": {c: {"oracle": 1.0} for c in CLASSES}}, KNOWN)
    with pytest.raises(CloudpipeError, match="gate.Fish: gate weights must sum to 1"):
        GateSpec.from_json({**data, "gate": {c: {"classifier": 0.5} for c in CLASSES}}, KNOWN)


def test_thresholds_json_carries_its_format_version():
    spec = GateSpec({c: 0.5 for c in CLASSES}, at_least_one=True)
    assert spec.to_json()["format"] == 1 and GateSpec.from_json(spec.to_json(), KNOWN) == spec
    assert GateSpec.from_json({c: 0.5 for c in CLASSES}, KNOWN).at_least_one is False  # hand-written, no version: fine


def test_thresholds_json_is_written_by_the_model_that_reads_it():
    """The writer's keys and values are thresholds_file()'s: in its order, whole numbers as given,
    and nothing the reader would refuse (a gate whose weights do not sum to 1 was written, then
    refused by predict)."""
    spec = GateSpec(dict(zip(CLASSES, (0, 1, 0.25, 0.5))), pixel=PixelStats(5, 1))
    data = spec.to_json()
    assert list(data) == list(thresholds_file(CLASSES).model_fields) == ["format", *CLASSES, "gate", "at_least_one", "top_k", "area_threshold"]
    assert json.dumps(data).startswith('{"format": 1, "Fish": 0, "Flower": 1, "Gravel": 0.25, "Sugar": 0.5, "gate"')
    assert "top_k" not in GateSpec(spec.thresholds).to_json()  # no pixel statistic: not written
    with pytest.raises(CloudpipeError, match=r"^thresholds: gate.Fish: gate weights must sum to 1, got \{'classifier': 0.5\}$"):
        GateSpec(spec.thresholds, {c: {"classifier": 0.5} for c in CLASSES}).to_json()


@pytest.mark.parametrize("bad, message", [
    ({"at_least_one": "false"}, "at_least_one: must be true or false, got 'false'"),  # bool("false") would turn it on
    ({"at_least_one": 1}, "at_least_one: must be true or false, got 1"),
    ({"format": 2}, "format: must be 1 .*, got 2"),
    ({"top_k": 0}, "top_k: must be a whole number >= 1, got 0"),
    ({"top_k": "18000"}, "top_k: must be a whole number >= 1, got '18000'"),
    ({"top_k": True}, "top_k: must be a whole number >= 1, got True"),
    ({"area_threshold": 2.0}, r"area_threshold: must be a number in \[0, 1\], got 2.0"),
    ({"Gravel": 1.5}, r"^thresholds: Gravel: must be a number in \[0, 1\], got 1.5$"),
    ({"Sugar": None}, "Sugar: must be a number in"),
    ({"gate": None}, "gate: must give every class {source: weight}, got None"),
    ({"gate": {"Fish": {"classifier": 1.0}}}, "gate.Flower: missing"),
    ({"gate": {c: {"classifier": -1.0} for c in CLASSES}}, "gate.Fish.classifier: .* weights >= 0 .*, got -1.0"),
])
def test_a_garbled_thresholds_file_is_refused(bad, message):
    with pytest.raises(CloudpipeError, match=message):
        GateSpec.from_json({**GateSpec({c: 0.5 for c in CLASSES}).to_json(), **bad}, KNOWN)


def test_a_thresholds_file_that_is_no_object_or_lacks_a_class_is_refused():
    with pytest.raises(CloudpipeError, match=r"^thresholds: must be a JSON object, got \[0.5, 0.5, 0.5, 0.5\]$"):
        GateSpec.from_json([0.5] * 4, KNOWN)
    with pytest.raises(CloudpipeError, match=r"^thresholds: Sugar: missing \(must be a number in \[0, 1\]\)$"):
        GateSpec.from_json({"Fish": 0, "Flower": 1, "Gravel": 0.25}, KNOWN)


def test_thresholds_that_are_not_in_0_1_are_refused_not_applied():
    """keep(scores, nan) blanked every pair; GateSpec took 2.0 and -1.0; both are refused now,
    as ValueErrors to Python code (CloudpipeErrors to the commands)."""
    scores = np.full((2, 4), 0.7)
    for bad in (float("nan"), 2.0, -1.0, "0.5"):
        with pytest.raises(ValueError, match=f"threshold {bad!r} is not a number in"):
            keep(scores, bad)
        with pytest.raises(CloudpipeError, match=f"Fish threshold {bad!r} is not a number in"):
            GateSpec({"Fish": bad, "Flower": 0.5, "Gravel": 0.5, "Sugar": 0.5})
    with pytest.raises(ValueError, match="no threshold for Sugar"):
        keep(scores, {"Fish": 0.5, "Flower": 0.5, "Gravel": 0.5})
    assert keep(scores, np.float32(0.5)).all()


def test_wrongly_shaped_inputs_are_told_the_shape_wanted():
    with pytest.raises(ValueError, match=r"scores must be \(n, 4\): one column per class .*got shape \(4,\)"):
        keep(np.zeros(4), 0.5)
    with pytest.raises(ValueError, match="scores hold NaN"):
        keep(np.full((1, 4), np.nan), 0.5)
    seg = pd.DataFrame({"Image_Label": ["a.jpg_Fish"], "EncodedPixels": ["1 2"]})
    probs = pd.DataFrame([[0.9] * 4], index=["a.jpg"], columns=CLASSES)
    with pytest.raises(ValueError, match="seg must be a long frame with columns Image_Label, EncodedPixels, image, "
                                         r"class_name .*got \['Image_Label', 'EncodedPixels'\]"):
        gate(seg, probs, dict.fromkeys(CLASSES, 0.5))
    seg = seg.assign(image=["a.jpg"], class_name=["Fish"])
    with pytest.raises(ValueError, match="probs must be a frame indexed by image with columns Fish, Flower, Gravel, Sugar, "
                                         "got ndarray"):
        gate(seg, probs.to_numpy(), dict.fromkeys(CLASSES, 0.5))
    assert gate(seg, probs, dict.fromkeys(CLASSES, 0.5))["EncodedPixels"].tolist() == ["1 2"]


@pytest.mark.parametrize("value, found", [(1.5, "1.5"), (-0.1, "-0.1"), (np.nan, "nan"), (np.inf, "inf")])
def test_a_probability_that_is_no_probability_is_refused_naming_its_image_and_class(value, found):
    """gate kept a pair of probability 1.5, and read NaN as "no probabilities for some images"."""
    seg = pd.DataFrame({"Image_Label": [f"{i}_{c}" for i in ("a.jpg", "b.jpg") for c in CLASSES], "EncodedPixels": "1 2",
                        "image": [i for i in ("a.jpg", "b.jpg") for _ in CLASSES], "class_name": list(CLASSES) * 2})
    probs = pd.DataFrame([[0.9] * 4, [0.9, 0.9, value, 0.9]], index=["a.jpg", "b.jpg"], columns=list(CLASSES))
    with pytest.raises(ValueError, match=rf"^gate: probs holds {found} at row 'b.jpg', column 'Gravel'"):
        gate(seg, probs, dict.fromkeys(CLASSES, 0.5))
    with pytest.raises(TypeError, match="gate: probs must be numbers, got dtype object"):
        gate(seg, probs.astype(object).assign(Fish="high"), dict.fromkeys(CLASSES, 0.5))
    with pytest.raises(CloudpipeError, match="no probabilities for some segmentation images"):
        gate(seg, probs.loc[["a.jpg"]], dict.fromkeys(CLASSES, 0.5))
