"""Inference options travel as one settings object, from the command line down."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from cloudpipe.cli import main
from cloudpipe.engine.settings import InferenceSettings


def test_commands_build_one_settings_object(monkeypatch, tmp_path):
    seen = {}

    def fake(seg, run_dir, data_dir, out, **kwargs):
        seen.update(kwargs)
        raise SystemExit(0)

    monkeypatch.setattr("cloudpipe.pipeline.predict.predict_submission", fake)
    seg = tmp_path / "seg.csv"
    seg.write_text("Image_Label,EncodedPixels\n")
    CliRunner().invoke(main, ["predict", "--seg", str(seg), "--run", str(tmp_path), "--data", str(tmp_path),
                              "--tta", "--workers", "0", "--batch-size", "3", "--device", "cpu", "--quiet"])
    assert seen["settings"] == InferenceSettings(device="cpu", batch_size=3, workers=0, tta=True, progress=False)
    CliRunner().invoke(main, ["predict", "--seg", str(seg), "--run", str(tmp_path), "--data", str(tmp_path),
                              "--decode", "device", "--compile"])
    assert seen["settings"] == InferenceSettings(workers="auto", decode="device", compile=True)
    CliRunner().invoke(main, ["predict", "--seg", str(seg), "--run", str(tmp_path), "--data", str(tmp_path),
                              "--tta-views", "4"])
    assert seen["settings"] == InferenceSettings(tta=True, tta_views=4)  # choosing the views turns TTA on
    CliRunner().invoke(main, ["predict", "--seg", str(seg), "--run", str(tmp_path), "--data", str(tmp_path), "--tta"])
    assert seen["settings"] == InferenceSettings(tta=True, tta_views=3)  # --tta alone: today's three views


@pytest.mark.parametrize("workers", ["-1", "some", "100000"])
def test_bad_workers_is_a_usage_error(tmp_path, workers):
    seg = tmp_path / "seg.csv"
    seg.write_text("Image_Label,EncodedPixels\n")
    result = CliRunner().invoke(main, ["predict", "--seg", str(seg), "--run", str(tmp_path), "--data", str(tmp_path),
                                       "--workers", workers])
    assert result.exit_code == 2 and "is not auto or a number in [0, 256]" in result.output


def test_tta_only_where_it_means_something():
    assert "--tta" in CliRunner().invoke(main, ["predict-seg", "--help"]).output
    assert "--tta" not in CliRunner().invoke(main, ["tune-threshold", "--help"]).output


@pytest.mark.parametrize("scales", [(0.0,), (-1.0,), (float("nan"),), (1.0, float("inf")), (), (1.0, 1.0), (8.0,)])
def test_tta_scales_no_model_can_run_at_are_refused(scales):
    """segment_image ran tta_scales (0,) and (-1,) at 32 x 32; the library now refuses what --tta-scales refuses."""
    with pytest.raises(ValueError, match=r"^tta_scales must be distinct factors in \[0.25, 4\], e.g. .*; got"):
        InferenceSettings(device="cpu", tta_scales=scales)
    with pytest.raises(TypeError, match="tta_scales must be a tuple of numbers"):
        InferenceSettings(tta_scales=1.0)
    assert InferenceSettings(tta_scales=[0.75, 1]).tta_scales == (0.75, 1.0)
