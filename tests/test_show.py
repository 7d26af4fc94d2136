"""cloudpipe show: an image with its truth and predicted masks, one panel per class."""

from __future__ import annotations

import pandas as pd
from click.testing import CliRunner

from cloudpipe.cli import main
from cloudpipe.core.competition import CLASSES


def test_show_draws_truth_and_prediction(tiny_data, tmp_path):
    image = pd.read_csv(tiny_data / "train.csv")["Image_Label"].iloc[0].rsplit("_", 1)[0]
    pred = tmp_path / "pred.csv"
    pd.DataFrame({"Image_Label": [f"{image}_{c}" for c in CLASSES], "EncodedPixels": ["1 5000", "", "", ""]}).to_csv(pred, index=False)
    out = tmp_path / "overlay.png"
    result = CliRunner().invoke(main, ["show", "--data", str(tiny_data), "--image", image, "--pred", str(pred), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 10_000
    test_image = sorted((tiny_data / "test_images").iterdir())[0].name
    no_truth = CliRunner().invoke(main, ["show", "--data", str(tiny_data), "--image", test_image, "--out", str(tmp_path / "t.png")])
    assert no_truth.exit_code == 2 and "--pred" in no_truth.stderr
    unknown = CliRunner().invoke(main, ["show", "--data", str(tiny_data), "--image", "nope.jpg", "--out", str(tmp_path / "n.png")])
    assert unknown.exit_code == 2 and "nope.jpg" in unknown.stderr
